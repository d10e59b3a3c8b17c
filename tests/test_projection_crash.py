"""A projection killed between handling a batch and committing its offset hands over at most
that batch again; with the read model committed together with the offset, not even that
(RELIABILITY.md #8)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from test_event_sourced import Multi

import ego

from bank_pb2 import Credit

HERE = Path(__file__).resolve().parent
BATCH = 25
SHARDS = 8


def prepare(db: Path, entities: int = 60, per: int = 60) -> int:
    with ego.RocksDBStore(db) as store, ego.Engine(store=store) as engine:
        engine.register_entity_type(Multi)
        for i in range(entities):
            engine.send_command(f"e{i}", Credit(amount=per))
    return entities * per


def run_until_done(db: Path, log: Path, total: int, mode: str, rng: random.Random) -> int:
    """Starts the child again and again, killing it at random moments, until it finishes.
    Returns the number of kills."""
    for kills in range(60):
        child = subprocess.Popen(
            [sys.executable, str(HERE / "projection_child.py"), str(db), str(log), str(total), mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY"
        time.sleep(rng.uniform(0.02, 0.3))  # a random moment to kill it, not a wait for something
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        if "DONE" in out:
            return kills  # every earlier round was killed
    pytest.fail("the projection never finished")


@pytest.mark.parametrize("mode", ["plain", "transactional"])
def test_sigkill_between_handling_and_committing(tmp_path: Path, mode: str) -> None:
    db, log = tmp_path / "db", tmp_path / "read-model.log"
    total = prepare(db)
    kills = run_until_done(db, log, total, mode, random.Random(11))
    assert kills >= 3, "the child finished too fast to be killed"
    if mode == "plain":
        lines = Counter(log.read_text().splitlines())
        handled = {tuple(line.split()) for line in lines}
        # Every event handled at least once...
        assert len(handled) == total
        # ...and duplicates only from batches redelivered after a kill: at most the last batch
        # of each shard (shards are handled concurrently) per kill.
        duplicates = sum(n - 1 for n in lines.values())
        assert 0 < duplicates <= kills * BATCH * SHARDS, (duplicates, kills)
        # Per entity the events appear in order the first time.
        first_seen: dict[str, list[int]] = {}
        for line in log.read_text().splitlines():
            pid, seq = line.split()
            seqs = first_seen.setdefault(pid, [])
            if int(seq) not in seqs:
                seqs.append(int(seq))
        assert all(s == sorted(s) for s in first_seen.values())
    else:
        with ego.RocksDBStore(db) as store:
            # Counters incremented per handled event: exactly the number of events.
            counts = {k: int(v) for k, v in store.read_model_scan(b"count/")}
            assert len(counts) == 60 and set(counts.values()) == {60}
            assert sum(counts.values()) == total
