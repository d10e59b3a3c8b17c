"""Child process of test_projection_leases.py: an engine on a shared PostgreSQL database that
runs one transactional projection (or one event publisher) named "counts", and reports how it
stands.

    python lease_child.py URL TABLE_PREFIX LEASE_TTL projection|publisher OUT_FILE

The projection counts events per entity in the table ``<prefix>counts`` and adds each batch to
this process's row of ``<prefix>runs``, both in the transaction of the offset (the test creates
the tables). The publisher appends one line per record to OUT_FILE.

Lines printed: ``READY <pid>``, ``STATUS <status>`` at start and on every change, ``STOPPED``.
A line ``stop`` on stdin stops the engine (which releases the lease) and ends the process.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ego


class FileSink:
    """A publisher that appends each record's id to a file (flushed before it acknowledges)."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a")  # noqa: SIM115 - closed by close()

    def publish(self, records: list[Any]) -> None:
        self.file.write("".join(f"{r.id}\n" for r in records))
        self.file.flush()
        time.sleep(0.005)

    def close(self) -> None:
        self.file.close()


def main() -> None:
    url, prefix, ttl, mode, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
    runner = str(os.getpid())
    store = ego.PostgresStore(url, table_prefix=prefix)
    engine = ego.Engine(f"lease-{runner}", store=store)
    engine.start()

    def count(events: list[ego.PersistedEvent]) -> list[ego.Sql]:
        time.sleep(0.02)  # a read model that takes some time: room to be stopped with a batch in hand
        writes = [
            ego.Sql(
                f"INSERT INTO {prefix}counts (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = {prefix}counts.n + 1",
                (e.persistence_id,),
            )
            for e in events
        ]
        writes.append(
            ego.Sql(
                f"INSERT INTO {prefix}runs (runner, n) VALUES ($1, $2) ON CONFLICT (runner) DO UPDATE SET n = {prefix}runs.n + $2",
                (runner, len(events)),
            )
        )
        return writes

    if mode == "projection":
        engine.add_projection("counts", count, transactional=True, batch_size=5, poll_interval=0.05, lease_ttl=ttl)

        def status() -> str:
            return engine.projection_status("counts")[0]
    else:
        engine.add_event_publisher(FileSink(out), name="counts", batch_size=5, poll_interval=0.05, lease_ttl=ttl)

        def status() -> str:
            return engine.publisher_status("counts")[0]

    print(f"READY {runner}", flush=True)
    stopping = threading.Event()

    def report() -> None:
        last = None
        while not stopping.is_set():
            now = status()
            if now != last:
                print(f"STATUS {now}", flush=True)
                last = now
            time.sleep(0.01)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stopping.set()
    reporter.join()
    engine.stop()
    store.close()
    print("STOPPED", flush=True)


if __name__ == "__main__":
    main()
