"""Child process of test_crash.py: sends commands to a few entities on a RocksDB store and
prints one line per acknowledged command, until it is killed.

    python crash_child.py DB_DIR ENTITIES
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ego

from egotest.messages_pb2 import Counter, Note


class Journaled(ego.EventSourcedBehavior):
    """Command `Note(n=k)` = command number k; it emits 1 + k % 3 events."""

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Counter:
        return Counter()

    def handle_command(self, command: Note, state: Counter) -> list[Note]:
        k = command.n
        count = 1 + k % 3
        return [Note(text=f"{self.entity_id}:{k}:{i}:{count}", n=k) for i in range(count)]

    def handle_event(self, event: Note, state: Counter) -> Counter:
        state.value = event.n
        return state


def main() -> None:
    db, entities = sys.argv[1], int(sys.argv[2])
    store = ego.RocksDBStore(db)
    engine = ego.Engine("crash", store=store)
    engine.start()
    engine.register_entity_type(Journaled)
    lock = threading.Lock()

    def run(name: str) -> None:
        state, _ = engine.get_state(name)
        k = state.value + 1
        while True:
            _, revision = engine.send_command(name, Note(n=k))
            with lock:
                sys.stdout.write(f"ACK {name} {k} {revision}\n")
                sys.stdout.flush()
            k += 1

    threads = [threading.Thread(target=run, args=(f"crash-{i}",), daemon=True) for i in range(entities)]
    print("READY", flush=True)
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
