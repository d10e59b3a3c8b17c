"""Erasure is crash-safe (RELIABILITY.md #11): a process that writes and erases entities is
SIGKILLed at random moments; after each reopen every entity whose erasure returned is erased
for good (key gone, its events read as tombstones), an erasure that was cut off left the
entity erased or intact (and erasing it again works), every acknowledged event of the other
entities is present and readable, and a projection runs over the whole journal to its end."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from waiting import wait_until

import ego

from domain import AccountBehavior

HERE = Path(__file__).resolve().parent
ROUNDS = int(os.environ.get("EGO_ERASE_CRASH_ROUNDS", "20"))
MASTER = bytes(range(32))
ENCRYPTION = ego.Encryption(master_key=MASTER)


def run_child(db: Path, round_: int, wait: float) -> list[str]:
    child = subprocess.Popen(
        [sys.executable, str(HERE / "erase_child.py"), str(db), str(round_)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "READY"
    time.sleep(wait)  # a random moment to kill it, not a wait for something
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate()
    assert child.returncode == -signal.SIGKILL
    return out.splitlines()


def verify(db: Path, acked: dict[str, int], erased: set[str], erasing: set[str]) -> set[str]:
    """Checks the store; returns the entities found erased."""
    found_erased: set[str] = set()
    store = ego.RocksDBStore(db)
    try:
        view = store.encrypted(ENCRYPTION)
        with ego.Engine("verify", store=store, encryption=ENCRYPTION) as engine:
            engine.register_entity_type(AccountBehavior, prefix="", snapshot_interval=4)
            for name, revision in sorted(acked.items()):
                events = view.replay_events(name)
                if name in erased or name in erasing:
                    if all(e.is_erased for e in events) and events:
                        found_erased.add(name)
                        with pytest.raises(ego.errors.EntityErasedError):
                            engine.get_state(name)
                        continue
                    assert name not in erased, f"{name}: its erasure returned, yet it reads"
                    # Cut off before the key was destroyed: intact, and erasing it again works.
                    assert not any(e.is_erased for e in events), f"{name}: half erased"
                    assert len(events) >= revision
                    engine.erase_entity(name)
                    found_erased.add(name)
                    continue
                assert not any(e.is_erased for e in events), f"{name} was never erased"
                assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
                assert len(events) >= revision, f"{name}: acknowledged revision {revision} lost"
                state, at = engine.get_state(name)
                assert at >= revision and state.open
            # A projection reads the whole journal, tombstones included, to its end.
            seen = {"events": 0, "tombstones": 0}
            done = threading.Event()

            def count(events: list[ego.PersistedEvent]) -> None:
                for e in events:
                    seen["tombstones" if e.erased else "events"] += 1
                    if not e.erased:
                        _ = e.event  # decodes: the key is there

            # A new name each time: offsets are kept, and the whole journal must be read.
            name = f"all-{uuid.uuid4().hex[:8]}"
            engine.add_projection(name, count, start="beginning")
            wait_until(
                lambda: (
                    all(s.events_behind == 0 for s in engine.projection_lag(name).values()) and engine.is_projection_running(name)
                ),
                what=lambda: f"the projection to read the whole journal ({engine.projection_status(name)})",
            )
            done.set()
            assert seen["tombstones"] > 0 or not found_erased
            engine.remove_projection(name)
    finally:
        store.close()
    return found_erased


@pytest.mark.slow
def test_erase_then_sigkill_at_random_moments(tmp_path: Path) -> None:
    db = tmp_path / "db"
    rng = random.Random(int(os.environ.get("EGO_CRASH_SEED", "11")))
    acked: dict[str, int] = {}
    erased: set[str] = set()
    erasing: set[str] = set()
    cut_off = 0
    for round_ in range(ROUNDS):
        lines = run_child(db, round_, rng.uniform(0.05, 0.6))
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "ACK":
                name, revision = rest.split()
                acked[name] = max(acked.get(name, 0), int(revision))
            elif kind == "ERASING":
                erasing.add(rest)
            elif kind == "ERASED":
                erased.add(rest)
                erasing.discard(rest)
        found = verify(db, acked, erased, erasing)
        cut_off += len(erasing)
        erased |= found
        erasing.clear()
    print(f"erased {len(erased)} entities, {cut_off} erasures cut off by the kill")
    assert len(erased) >= ROUNDS // 2, f"too few erasures to test anything: {len(erased)}"
