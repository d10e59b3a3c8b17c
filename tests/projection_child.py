"""Child process of test_projection_crash.py: runs a projection over a prepared RocksDB store
until it has handled every event, then prints DONE; the test kills it at random moments.

    python projection_child.py DB_DIR LOG_FILE EVENTS transactional|plain
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ego


def main() -> None:
    db, log_path, mode = sys.argv[1], sys.argv[2], sys.argv[4]
    store = ego.RocksDBStore(db)
    done = threading.Event()
    with ego.Engine("proj", store=store) as engine:
        if mode == "plain":
            log = open(log_path, "a")  # noqa: SIM115 - closed by the process exit

            def plain(events: list[ego.PersistedEvent]) -> None:
                # The read model: one line per handled event, written before the offset.
                log.write("".join(f"{e.persistence_id} {e.sequence_number}\n" for e in events))
                log.flush()
                os.fsync(log.fileno())
                time.sleep(0.008)  # a read model that takes some time: room to be killed mid-way

            engine.add_projection("p", plain, batch_size=25)
        else:

            def counted(events: list[ego.PersistedEvent]) -> list[ego.Put]:
                # A non-idempotent read model (a counter per entity), committed with the
                # offset. Keyed by entity: an entity's events all come from one shard, and a
                # shard's batches are handled and committed one after the other.
                counts: dict[str, int] = {}
                for e in events:
                    key = f"count/{e.persistence_id}"
                    if key not in counts:
                        counts[key] = int(store.read_model_get(key.encode()) or b"0")
                    counts[key] += 1
                time.sleep(0.008)  # the same slow read model
                return [ego.Put(k.encode(), str(v).encode()) for k, v in counts.items()]

            engine.add_projection("p", counted, batch_size=25, transactional=True)
        print("READY", flush=True)
        while not done.wait(0.05):
            if all(lag.events_behind == 0 for lag in engine.projection_lag("p").values()):
                done.set()
        print("DONE", flush=True)


if __name__ == "__main__":
    main()
