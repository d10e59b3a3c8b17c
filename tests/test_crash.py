"""Crash safety: a writer process is SIGKILLed at random moments; after reopening, every
acknowledged event is present and byte-identical, streams are gapless, and no command is
half-persisted (RELIABILITY.md #1)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import ego

from egotest.messages_pb2 import Note

HERE = Path(__file__).resolve().parent
ENTITIES = 4
ROUNDS = int(os.environ.get("EGO_CRASH_ROUNDS", "24"))


def verify(db: Path, acked: dict[str, tuple[int, int]]) -> dict[str, list[bytes]]:
    """Checks the store against the acknowledgements; returns every event's bytes."""
    seen: dict[str, list[bytes]] = {}
    with ego.RocksDBStore(db) as store:
        for i in range(ENTITIES):
            name = f"crash-{i}"
            events = store.replay_events(name)
            seqs = [e.sequence_number for e in events]
            assert seqs == list(range(1, len(seqs) + 1)), f"{name}: gap in {seqs[:5]}..."
            assert store.highest_sequence_number(name) == len(seqs)
            notes = [Note.FromString(e.event.value) for e in events]
            # Every command's events are all there, in order, or none is.
            groups: dict[int, list[Note]] = defaultdict(list)
            for note in notes:
                groups[note.n].append(note)
            for k, group in groups.items():
                count = 1 + k % 3
                assert [n.text for n in group] == [f"{name}:{k}:{j}:{count}" for j in range(count)], (
                    f"{name} command {k} half-persisted"
                )
            assert sorted(groups) == list(range(1, len(groups) + 1)), f"{name}: a command is missing"
            # Every acknowledged command is present.
            if name in acked:
                k, revision = acked[name]
                assert k in groups and len(seqs) >= revision, f"{name}: acknowledged command {k} (revision {revision}) lost"
            seen[name] = [e.SerializeToString(deterministic=True) for e in events]
    return seen


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "db"
    rng = random.Random(int(os.environ.get("EGO_CRASH_SEED", "7")))
    acked: dict[str, tuple[int, int]] = {}
    total_acks = 0
    for _ in range(ROUNDS):
        child = subprocess.Popen(
            [sys.executable, str(HERE / "crash_child.py"), str(db), str(ENTITIES)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY"
        time.sleep(rng.uniform(0.02, 0.4))  # a random moment to kill it, not a wait for something
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        for line in out.splitlines():
            if line.startswith("ACK "):
                _, name, k, revision = line.split()
                acked[name] = (int(k), int(revision))
                total_acks += 1
        first = verify(db, acked)
        # Reopening twice changes nothing.
        assert verify(db, acked) == first
    assert total_acks > ROUNDS, "the child acknowledged too little to test anything"
