"""Child process of test_storage_faults.py: runs bank-account commands on a RocksDB store while
the parent injects faults, and prints what each caller was told.

    python fault_child.py DB_DIR sync      one caller: Credit(50), then Credit(1), after "go"
    python fault_child.py DB_DIR group N   N concurrent callers, one Credit(1) each, after "go"
    python fault_child.py DB_DIR write N   N acknowledged credits, then exit without closing

Lines: ``READY`` once the accounts are open; then ``OK <id> <revision>`` or
``ERR <id> <ExceptionType>`` per command; ``ACKED <id> <revision>`` in write mode.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "bank"))

import ego  # noqa: E402

from bank_pb2 import Credit, OpenAccount  # noqa: E402
from domain import AccountBehavior  # noqa: E402


def outcome(engine: ego.Engine, entity: str, command: Credit, lock: threading.Lock) -> None:
    try:
        _, revision = engine.send_command(entity, command)
        line = f"OK {entity} {revision}"
    except ego.errors.EgoError as e:
        line = f"ERR {entity} {type(e).__name__} {str(e)!r}"
    with lock:
        print(line, flush=True)


def main() -> None:
    db, mode = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    store = ego.RocksDBStore(db)
    engine = ego.Engine("faults", store=store)
    engine.start()
    engine.register_entity_type(AccountBehavior)
    lock = threading.Lock()
    if mode == "write":
        for i in range(count):
            name = f"acct-{i % 10}"
            command = OpenAccount(initial_balance=100) if i < 10 else Credit(amount=i)
            _, revision = engine.send_command(name, command)
            print(f"ACKED {name} {revision}", flush=True)
        os._exit(0)  # a crash after the acknowledgements: nothing is flushed or closed
    ids = ["a"] if mode == "sync" else [f"g-{i}" for i in range(count)]
    for entity in ids:
        engine.send_command(entity, OpenAccount(initial_balance=100))
    print("READY", flush=True)
    sys.stdin.readline()
    if mode == "sync":
        outcome(engine, "a", Credit(amount=50), lock)
        outcome(engine, "a", Credit(amount=1), lock)
    else:
        threads = [threading.Thread(target=outcome, args=(engine, e, Credit(amount=1), lock)) for e in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    engine.stop()
    store.close()
    print("CLOSED", flush=True)


if __name__ == "__main__":
    main()
