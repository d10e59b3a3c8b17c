"""Migration rate RocksDB -> PostgreSQL, and `ego check` on the result.

    python benches/migration.py --events 1000000 --postgres postgresql://postgres@127.0.0.1:5432/bench

Builds a RocksDB store of bank-like streams (``--per-stream`` events each, written by commands
of one to three events, a snapshot every 20), migrates it into fresh PostgreSQL tables with
`ego.migration.migrate` (verification timed separately), then runs `ego check` on the target
and prints events/s for each step. The tables are dropped at the end.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from pathlib import Path

import ego
from ego.cli import main as ego_cli
from ego.migration import migrate, verify
from ego.testkit.conformance import make_event


def build(path: Path, events: int, per_stream: int) -> int:
    rng = random.Random(1)
    store = ego.RocksDBStore(path, sync=False)
    streams = events // per_stream
    ts = 1_760_000_000_000_000_000
    for i in range(streams):
        pid = f"account-{i:07d}"
        seq = 1
        while seq <= per_stream:
            n = min(rng.randint(1, 3), per_stream - seq + 1)
            ts += 1000
            batch = [
                make_event(pid, s, timestamp=ts, shard=i % 8, payload=b"\x08" + bytes([s % 100 + 1])) for s in range(seq, seq + n)
            ]
            store.write_events(batch)
            seq += n
        if per_stream >= 20:
            snap = ego.v1.Snapshot(persistence_id=pid, sequence_number=20, timestamp=ts)
            snap.state.type_url = "type.googleapis.com/bank.v1.Account"
            snap.state.value = b"\x10\x05"
            store.write_snapshot(snap)
    store.close()
    return streams * per_stream


def run(events: int, per_stream: int, url: str, workers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "source"
        t = time.perf_counter()
        total = build(path, events, per_stream)
        print(f"built {total:,} events in {time.perf_counter() - t:.1f} s")
        prefix = f"bench{uuid.uuid4().hex[:6]}_"
        source = ego.RocksDBStore(path)
        target = ego.PostgresStore(url, table_prefix=prefix)
        try:
            t = time.perf_counter()
            report = migrate(source, target, verify=False, workers=workers)
            copy = time.perf_counter() - t
            print(
                f"migrate: {report.events:,} events, {report.streams:,} streams in {copy:.1f} s = {report.events / copy:,.0f} events/s"
            )
            t = time.perf_counter()
            checked = verify(source, target)
            took = time.perf_counter() - t
            print(f"verify: {checked.events:,} events in {took:.1f} s = {checked.events / took:,.0f} events/s (ok={checked.ok})")
            source.close()
            t = time.perf_counter()
            status = ego_cli(["check", f"{url}?table_prefix={prefix}", "--json"])
            took = time.perf_counter() - t
            print(f"ego check (PostgreSQL): exit {status}, {total:,} events in {took:.1f} s = {total / took:,.0f} events/s")
        finally:
            target.drop_tables()
            target.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--per-stream", type=int, default=50)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", type=int, default=16, help="streams copied at once")
    args = parser.parse_args()
    run(args.events, args.per_stream, args.postgres, args.workers)
