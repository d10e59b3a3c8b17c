"""A model-based test of the RocksDB store (RELIABILITY.md #9): hypothesis drives appends,
snapshots, deletions, clean reopens and crash-reopens (a child process appends, is
acknowledged, and exits without closing); after every step the store's replay equals the
model, and the highest sequence number never decreases. Erasure comes with encryption."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ego
from ego.stores import SnapshotCriteria
from ego.testkit.conformance import make_event
from ego.v1 import Snapshot

IDS = ["m-a", "m-b", "m-c"]
TYPE_URL = "type.googleapis.com/egotest.Counter"

CRASH_CHILD = """
import os, sys
import ego
from ego.testkit.conformance import make_event
db, pid, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = ego.RocksDBStore(db)
store.write_events([make_event(pid, first + i, payload=f"{pid}:{first + i}".encode(), timestamp=first + i) for i in range(count)])
print("ACK", flush=True)
os._exit(0)  # a crash after the acknowledgement: nothing flushed, nothing closed
"""


def payload(pid: str, seq: int) -> bytes:
    return f"{pid}:{seq}".encode()


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ego-model-"))
        self.db = self.dir / "db"
        self.store: ego.RocksDBStore = ego.RocksDBStore(self.db)
        self.highest = dict.fromkeys(IDS, 0)
        self.deleted_to = dict.fromkeys(IDS, 0)
        self.snapshots: dict[str, dict[int, bytes]] = {pid: {} for pid in IDS}
        self.seen_highest = dict.fromkeys(IDS, 0)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def events(self, pid: str, first: int, count: int) -> list[ego.v1.Event]:
        return [make_event(pid, first + i, payload=payload(pid, first + i), timestamp=first + i) for i in range(count)]

    @rule(pid=st.sampled_from(IDS), count=st.integers(1, 5))
    def append(self, pid: str, count: int) -> None:
        self.store.write_events(self.events(pid, self.highest[pid] + 1, count))
        self.highest[pid] += count

    @rule(pid=st.sampled_from(IDS), back=st.integers(1, 3))
    def append_out_of_order_is_refused(self, pid: str, back: int) -> None:
        if self.highest[pid] == 0:
            return
        first = self.highest[pid] + 1 - min(back, self.highest[pid])
        try:
            self.store.write_events(self.events(pid, first, 1))
        except ego.errors.ConcurrencyError:
            return
        raise AssertionError(f"{pid}: an append at {first} over highest {self.highest[pid]} was accepted")

    @precondition(lambda self: any(self.highest.values()))
    @rule(pid=st.sampled_from(IDS), data=st.data())
    def snapshot(self, pid: str, data: st.DataObject) -> None:
        if self.highest[pid] == 0:
            return
        seq = data.draw(st.integers(1, self.highest[pid]))
        state = f"state {pid}@{seq}".encode()
        snap = Snapshot(persistence_id=pid, sequence_number=seq, timestamp=seq)
        snap.state.type_url = TYPE_URL
        snap.state.value = state
        self.store.write_snapshot(snap)
        self.snapshots[pid][seq] = state

    @rule(pid=st.sampled_from(IDS), data=st.data())
    def delete(self, pid: str, data: st.DataObject) -> None:
        to = data.draw(st.integers(0, self.highest[pid] + 2))
        self.store.delete_events(pid, to)
        self.deleted_to[pid] = max(self.deleted_to[pid], min(to, self.highest[pid]))

    @rule(pid=st.sampled_from(IDS), data=st.data())
    def delete_snapshots(self, pid: str, data: st.DataObject) -> None:
        to = data.draw(st.integers(0, self.highest[pid] + 1))
        self.store.delete_snapshots(pid, SnapshotCriteria(max_sequence_number=to))
        self.snapshots[pid] = {s: v for s, v in self.snapshots[pid].items() if s > to}

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = ego.RocksDBStore(self.db)

    @rule(pid=st.sampled_from(IDS), count=st.integers(1, 3))
    def crash_reopen(self, pid: str, count: int) -> None:
        self.store.close()
        out = subprocess.run(
            [sys.executable, "-c", CRASH_CHILD, str(self.db), pid, str(self.highest[pid] + 1), str(count)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0 and out.stdout.strip() == "ACK", out.stderr[-2000:]
        self.highest[pid] += count
        self.store = ego.RocksDBStore(self.db)

    @invariant()
    def replay_equals_the_model(self) -> None:
        for pid in IDS:
            events = self.store.replay_events(pid)
            expected = list(range(self.deleted_to[pid] + 1, self.highest[pid] + 1))
            assert [e.sequence_number for e in events] == expected, pid
            assert [e.event.value for e in events] == [payload(pid, s) for s in expected], pid
            highest = self.store.highest_sequence_number(pid)
            assert highest == self.highest[pid], pid
            assert highest >= self.seen_highest[pid], f"{pid}: highest sequence number went down"
            self.seen_highest[pid] = highest
            latest = self.store.latest_snapshot(pid)
            if self.snapshots[pid]:
                top = max(self.snapshots[pid])
                assert latest is not None and latest.sequence_number == top, pid
                assert latest.state.value == self.snapshots[pid][top], pid
            else:
                assert latest is None, pid


StoreModel.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreModel = StoreModel.TestCase
