"""Child process of test_fencing.py: opens a PostgreSQL store with a fence and sends commands
to a few entities from as many threads, printing one line per command's outcome, until it has
seen `refusals` errors (then it prints DONE and exits).

    python fence_child.py URL TABLE_PREFIX FENCE FENCE_TIMEOUT ENTITIES REFUSALS

Lines: ``READY <epoch>``, ``ACK <entity> <revision>``, ``ERR <entity> <error type>``, ``DONE``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ego

from egotest.messages_pb2 import Note
from tally import Tally


def main() -> None:
    url, prefix, fence, fence_timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    entities, refusals = int(sys.argv[5]), int(sys.argv[6])
    store = ego.PostgresStore(url, table_prefix=prefix, fence=fence, fence_timeout=fence_timeout)
    engine = ego.Engine("fence-child", store=store)
    engine.start()
    engine.register_entity_type(Tally)
    lock = threading.Lock()
    errors = 0

    def run(name: str) -> None:
        nonlocal errors
        while True:
            with lock:
                if errors >= refusals:
                    return
            try:
                _, revision = engine.send_command(name, Note(), timeout=60.0)
                line = f"ACK {name} {revision}\n"
            except ego.errors.EgoError as e:
                line = f"ERR {name} {type(e).__name__}\n"
                with lock:
                    errors += 1
            with lock:
                sys.stdout.write(line)
                sys.stdout.flush()

    assert store.fence is not None
    print(f"READY {store.fence[1]}", flush=True)
    threads = [threading.Thread(target=run, args=(f"fenced-{i}",)) for i in range(entities)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.stop()
    store.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
