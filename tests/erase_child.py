"""Child process of test_erase_crash.py: on an encrypted RocksDB store, keeps crediting a few
steady accounts and, meanwhile, opens and erases one victim account after another. Prints
what was acknowledged, until it is killed:

    ACK <id> <revision>       a command was acknowledged at this revision
    ERASING <id>              erase_entity(<id>) is called
    ERASED <id>               erase_entity(<id>) returned

    python erase_child.py DB_DIR ROUND   (victims of a round are named victim-<ROUND>-<n>)
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "examples" / "bank")]

import ego  # noqa: E402

from bank_pb2 import Credit, OpenAccount  # noqa: E402
from domain import AccountBehavior  # noqa: E402

MASTER = bytes(range(32))
STEADY = 3


def main() -> None:
    db, round_ = sys.argv[1], sys.argv[2]
    store = ego.RocksDBStore(db)
    engine = ego.Engine("erase", store=store, encryption=ego.Encryption(master_key=MASTER))
    engine.start()
    engine.register_entity_type(AccountBehavior, prefix="", snapshot_interval=4)
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def steady(name: str) -> None:
        _, revision = engine.get_state(name)
        if revision == 0:
            _, revision = engine.send_command(name, OpenAccount(initial_balance=0))
            say(f"ACK {name} {revision}")
        while True:
            _, revision = engine.send_command(name, Credit(amount=1))
            say(f"ACK {name} {revision}")

    threads = [threading.Thread(target=steady, args=(f"steady-{i}",), daemon=True) for i in range(STEADY)]
    say("READY")
    for t in threads:
        t.start()
    victim = 0
    while True:
        name = f"victim-{round_}-{victim}"
        _, revision = engine.send_command(name, OpenAccount(initial_balance=100))
        say(f"ACK {name} {revision}")
        for _ in range(victim % 4 + 1):
            _, revision = engine.send_command(name, Credit(amount=1))
            say(f"ACK {name} {revision}")
        say(f"ERASING {name}")
        engine.erase_entity(name)
        say(f"ERASED {name}")
        victim += 1


if __name__ == "__main__":
    main()
