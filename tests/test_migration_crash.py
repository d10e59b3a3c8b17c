"""kill -9 during a migration, at random moments, then resume: the target ends identical to
the source, and no stream was ever visible in part at a command boundary it never had."""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_migration import streams

import ego
from ego.migration import verify
from ego.testkit.conformance import make_event

CHILD = Path(__file__).resolve().parent / "migration_child.py"


def build_source(path: Path, streams_count: int) -> None:
    """Streams of 4 to 30 events written by 'commands' of 1 to 3 events (one timestamp each),
    snapshots, a few streams whose first events retention deleted, durable states."""
    rng = random.Random(3)
    store = ego.RocksDBStore(path, sync=False)
    for i in range(streams_count):
        pid = f"s-{i:05d}"
        seq, ts = 1, 1_700_000_000_000_000_000 + i
        total = rng.randint(4, 30)
        while seq <= total:
            n = rng.randint(1, 3)
            ts += 1000
            store.write_events([make_event(pid, s, timestamp=ts, shard=i % 4) for s in range(seq, seq + n)])
            seq += n
        if i % 7 == 0:
            snap = ego.v1.Snapshot(persistence_id=pid, sequence_number=3, timestamp=ts)
            snap.state.type_url = "type.googleapis.com/test.State"
            snap.state.value = pid.encode()
            store.write_snapshot(snap)
            if i % 14 == 0:
                store.delete_events(pid, 3)
    for i in range(50):
        state = ego.v1.DurableState(persistence_id=f"d-{i:03d}", version_number=1, timestamp=1, shard=1)
        state.resulting_state.type_url = "type.googleapis.com/test.State"
        store.write_state(state, 0)
    store.write_offsets("p", [(0, 10), (1, 2), (2, 10**9 % 7), (3, 0)])
    store.close()


def assert_cut_between_commands(source_dir: Path, url: str, prefix: str) -> None:
    """Every stream in the target is the source's, or a part of it that ends where a command
    ended (the next event has another timestamp): never a command in half."""
    source = ego.RocksDBStore(source_dir)
    target = ego.PostgresStore(url, table_prefix=prefix)
    try:
        after = None
        while True:
            ids, after = target.persistence_ids(500, after)
            for pid in ids:
                have, high = target.highest_sequence_number(pid), source.highest_sequence_number(pid)
                assert have <= high
                if have < high:
                    last, following = source.replay_events(pid, have, have + 1)
                    assert last.timestamp != following.timestamp, (pid, have)
            if after is None:
                break
    finally:
        source.close()
        target.close()


@pytest.mark.slow
def test_kill_9_during_migration_then_resume(tmp_path: Path, pg_url: str) -> None:
    source_dir = tmp_path / "source"
    build_source(source_dir, 1500)
    prefix = f"k{uuid.uuid4().hex[:8]}_"
    prefixes = [prefix]
    rng = random.Random()
    killed = 0
    try:
        rounds = 0
        while killed < 10:
            rounds += 1
            assert rounds <= 60, f"only {killed} of {rounds} rounds were killed during a migration"
            child = subprocess.Popen(
                [sys.executable, str(CHILD), str(source_dir), pg_url, prefix], stdout=subprocess.PIPE, text=True
            )
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "started"
            time.sleep(rng.uniform(0.0, 1.5))  # a random moment, not an ordering
            child.kill()
            child.communicate(timeout=30)  # waits, and closes its stdout
            killed += child.returncode == -9
            assert_cut_between_commands(source_dir, pg_url, prefix)
            if child.returncode == 0:
                # It finished before the kill (a fast machine): migrate again into a new target.
                prefix = f"k{uuid.uuid4().hex[:8]}_"
                prefixes.append(prefix)
        final = subprocess.run(
            [sys.executable, str(CHILD), str(source_dir), pg_url, prefix], capture_output=True, text=True, timeout=600
        )
        assert final.returncode == 0 and final.stdout.splitlines()[-1] == "done", final.stderr
        source = ego.RocksDBStore(source_dir)
        target = ego.PostgresStore(pg_url, table_prefix=prefix)
        report = verify(source, target)
        assert report.ok, report.differences[:5]
        assert report.streams == 1500 and report.states == 50
        assert streams(target) == streams(source)
        assert [n for n in target.projection_names()] == ["p"]
        source.close()
    finally:
        for p in prefixes:
            cleanup = ego.PostgresStore(pg_url, table_prefix=p)
            cleanup.drop_tables()
            cleanup.close()
