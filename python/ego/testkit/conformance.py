"""The store conformance suite: every store must pass it (CONFORMANCE.md of the project).

Subclass the suites in a test module, give the subclass a name pytest collects (``Test...``)
and implement :meth:`make_store`::

    from ego.testkit.conformance import EventsStoreConformance

    class TestMyEventsStore(EventsStoreConformance):
        def make_store(self):
            return MyStore(...)

        def reopen(self, store):          # optional: close and open the same data again
            store.close()
            return MyStore(...)

A store follows the protocol of :class:`ego.stores.NativeStore`: the methods take and return
the envelope messages of :mod:`ego.v1`, and fail with the exceptions of :mod:`ego.errors`.
The case numbers in the test names are those of the conformance table.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from ego.errors import ConcurrencyError, MessageTooLargeError, ValidationError
from ego.stores import SnapshotCriteria
from ego.v1 import DurableState, Event, Snapshot

__all__ = [
    "EventsStoreConformance",
    "OffsetStoreConformance",
    "SnapshotStoreConformance",
    "StateChangeLogConformance",
    "StateStoreConformance",
    "make_event",
]

TYPE_URL = "type.googleapis.com/egotest.Note"

#: Bounds beyond anything stored: each means "no limit" (or, as a lower bound, "nothing").
HUGE = (2**63 - 1, 2**63, 2**64 - 1)
#: Every call that takes a bound is held to the same answer at 0, 1, the huge values and
#: negative values (a ``ValidationError``) on every store.
U64_MAX = 2**64 - 1


def make_event(pid: str, seq: int, *, payload: bytes | None = None, timestamp: int | None = None, shard: int = 0) -> Event:
    """An event envelope for tests."""
    e = Event(
        persistence_id=pid, sequence_number=seq, timestamp=timestamp if timestamp is not None else time.time_ns(), shard=shard
    )
    e.event.type_url = TYPE_URL
    e.event.value = payload if payload is not None else f"{pid}#{seq}".encode()
    return e


def _seqs(events: list[Event]) -> list[int]:
    return [e.sequence_number for e in events]


def _close(store: Any) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()


class _Base:
    def make_store(self) -> Any:
        """A fresh store (or one shared by the class: every test uses fresh ids)."""
        raise NotImplementedError

    def reopen(self, store: Any) -> Any | None:
        """Closes `store` and opens the same data again; None when the store cannot."""
        return None

    @pytest.fixture
    def store(self) -> Iterator[Any]:
        s = self.make_store()
        holder = {"store": s}
        self._holder = holder
        yield s
        _close(holder["store"])

    @pytest.fixture
    def pid(self) -> str:
        return f"pid-{uuid.uuid4().hex[:16]}"


class EventsStoreConformance(_Base):
    """Cases for the events store (journal)."""

    @pytest.fixture
    def written(self, store: Any, pid: str) -> str:
        """Events 1..5 of `pid`: 1-3 as single writes, 4 and 5 as one two-event write."""
        for seq in (1, 2, 3):
            store.write_events([make_event(pid, seq)])
        store.write_events([make_event(pid, 4), make_event(pid, 5)])
        return pid

    def test_01_replay_all(self, store: Any, written: str) -> None:
        assert _seqs(store.replay_events(written, 1)) == [1, 2, 3, 4, 5]
        assert store.highest_sequence_number(written) == 5

    def test_02_lower_bound(self, store: Any, written: str) -> None:
        assert _seqs(store.replay_events(written, 3)) == [3, 4, 5]

    def test_03_upper_bound(self, store: Any, written: str) -> None:
        assert _seqs(store.replay_events(written, 1, 3)) == [1, 2, 3]
        assert store.highest_sequence_number(written) == 5

    def test_04_count_limit(self, store: Any, written: str) -> None:
        assert _seqs(store.replay_events(written, 1, max_count=3)) == [1, 2, 3]

    def test_05_lower_and_upper(self, store: Any, written: str) -> None:
        assert _seqs(store.replay_events(written, 2, 3)) == [2, 3]

    def test_06_lower_upper_and_limit(self, store: Any, written: str) -> None:
        assert _seqs(store.replay_events(written, 2, 5, 2)) == [2, 3]

    def test_07_lower_equals_upper(self, store: Any, written: str) -> None:
        assert _seqs(store.replay_events(written, 2, 2)) == [2]

    def test_08_limit_one(self, store: Any, written: str) -> None:
        assert _seqs(store.replay_events(written, 2, 4, 1)) == [2]

    def test_09_limit_zero(self, store: Any, written: str) -> None:
        assert store.replay_events(written, 1, max_count=0) == []
        assert store.highest_sequence_number(written) == 5

    def test_10_lower_above_upper(self, store: Any, written: str) -> None:
        assert store.replay_events(written, 3, 2) == []

    def test_11_unknown_id(self, store: Any, pid: str) -> None:
        assert store.replay_events(pid, 1) == []
        assert store.highest_sequence_number(pid) == 0

    def test_12_highest_without_replay(self, store: Any, written: str) -> None:
        assert store.highest_sequence_number(written) == 5

    def test_13_delete_to(self, store: Any, written: str) -> None:
        store.delete_events(written, 3)
        assert _seqs(store.replay_events(written, 1)) == [4, 5]

    def test_14_delete_keeps_highest(self, store: Any, written: str) -> None:
        store.delete_events(written, 3)
        assert store.highest_sequence_number(written) == 5

    def test_15_delete_everything(self, store: Any, written: str) -> None:
        store.delete_events(written, 2**64 - 1)
        assert store.replay_events(written, 1) == []
        assert store.highest_sequence_number(written) == 5
        # Sequence numbers never repeat: the next write continues after 5.
        with pytest.raises(ConcurrencyError):
            store.write_events([make_event(written, 1)])
        store.write_events([make_event(written, 6)])
        assert _seqs(store.replay_events(written, 1)) == [6]

    def test_16_multi_event_write_is_atomic(self, store: Any, written: str) -> None:
        limit = store.max_event_bytes
        too_big = make_event(written, 7, payload=b"x" * (limit + 1))
        with pytest.raises(MessageTooLargeError):
            store.write_events([make_event(written, 6), too_big])
        assert _seqs(store.replay_events(written, 1)) == [1, 2, 3, 4, 5]
        with pytest.raises(ConcurrencyError):
            # 6 is fine, 5 is a duplicate: nothing of the batch is written.
            store.write_events([make_event(written, 5), make_event(written, 6)])
        assert store.highest_sequence_number(written) == 5
        store.write_events([make_event(written, 6), make_event(written, 7)])
        assert _seqs(store.replay_events(written, 6)) == [6, 7]

    def test_17_duplicate_is_a_concurrency_error(self, store: Any, written: str) -> None:
        before = store.replay_events(written, 1)
        with pytest.raises(ConcurrencyError) as info:
            store.write_events([make_event(written, 3, payload=b"other")])
        assert info.value.persistence_id == written
        assert store.replay_events(written, 1) == before

    def test_17b_gap_is_a_concurrency_error(self, store: Any, written: str) -> None:
        with pytest.raises(ConcurrencyError):
            store.write_events([make_event(written, 7)])
        assert store.highest_sequence_number(written) == 5

    def test_18_concurrent_writers_on_one_id(self, store: Any, pid: str) -> None:
        writers, rounds = 8, 25
        wins = [0] * writers
        barrier = threading.Barrier(writers)

        def race(w: int) -> None:
            barrier.wait()
            for _ in range(rounds):
                seq = store.highest_sequence_number(pid) + 1
                try:
                    store.write_events([make_event(pid, seq, payload=f"w{w}".encode())])
                    wins[w] += 1
                except ConcurrencyError:
                    pass

        threads = [threading.Thread(target=race, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        events = store.replay_events(pid, 1)
        assert _seqs(events) == list(range(1, sum(wins) + 1))
        # Every success took exactly one sequence number: no two writers won the same one.
        assert sum(wins) >= 1

    def test_19_persistence_ids_paging(self, store: Any) -> None:
        prefix = f"page-{uuid.uuid4().hex[:8]}-"
        ids = sorted(f"{prefix}{i:03d}" for i in range(23))
        for i in ids:
            store.write_events([make_event(i, 1)])
        seen: list[str] = []
        after: str | None = None
        while True:
            page, after = store.persistence_ids(5, after)
            seen.extend(i for i in page if i.startswith(prefix))
            if after is None:
                break
        assert seen == ids

    def test_19b_persistence_ids_in_byte_order(self, store: Any) -> None:
        """Ids page in the byte order of their UTF-8 encoding, whatever a database's collation."""
        prefix = f"order-{uuid.uuid4().hex[:8]}-"
        ids = [prefix + suffix for suffix in ("b", "B", "a", "A", "_", "\u00e9", "a-1", "a1", "Z")]
        for i in ids:
            store.write_events([make_event(i, 1)])
        seen: list[str] = []
        after: str | None = prefix
        while after is not None:
            page, after = store.persistence_ids(2, after)
            seen.extend(i for i in page if i.startswith(prefix))
        assert seen == sorted(ids, key=lambda i: i.encode())

    #: True for a store that encrypts what it writes (an encrypted view, :meth:`ego.stores.NativeStore.encrypted`):
    #: it must give back exactly what it was given, but cannot take records encrypted elsewhere.
    encrypts: bool = False

    def test_20_payload_round_trip(self, store: Any, pid: str) -> None:
        e = make_event(pid, 1, payload=bytes(range(256)), timestamp=1_234_567_890_123_456_789, shard=3)
        if not self.encrypts:
            e.encryption_key_id = "key-1"
            e.is_encrypted = True
        e.metadata["correlation_id"] = "c-1"
        # The idempotency key of the command that wrote an event, alone and with metadata.
        keyed = make_event(pid, 2)
        keyed.idempotency_key = "payment-7f3a"
        keyed.command_hash = 0xFEDCBA9876543210
        both = make_event(pid, 3)
        both.idempotency_key = "retry-1"
        both.command_hash = 1
        both.metadata["correlation_id"] = "c-2"
        store.write_events([e, keyed, both])
        replayed = store.replay_events(pid, 1)
        assert len(replayed) == 3
        for back, sent in zip(replayed, (e, keyed, both), strict=True):
            assert back.position > 0
            back.position = 0
            assert back == sent
            assert back.SerializeToString(deterministic=True) == sent.SerializeToString(deterministic=True)

    def test_21_large_payloads(self, store: Any, pid: str) -> None:
        big = make_event(pid, 1, payload=b"\x01" * (1 << 20))
        store.write_events([big])
        assert store.replay_events(pid, 1)[0].event.value == big.event.value
        with pytest.raises(MessageTooLargeError):
            store.write_events([make_event(pid, 2, payload=b"x" * (store.max_event_bytes + 1))])
        assert store.highest_sequence_number(pid) == 1

    def _shard(self) -> int:
        return 1000 + uuid.uuid4().int % 1_000_000

    def test_22_shard_positions_and_equal_timestamps(self, store: Any) -> None:
        shard = self._shard()
        ts = time.time_ns()
        pids = [f"shard-{uuid.uuid4().hex[:8]}-{i}" for i in range(4)]
        written = []
        for round_ in range(3):
            for p in pids:
                written.append((p, round_ + 1))
                store.write_events([make_event(p, round_ + 1, timestamp=ts, shard=shard)])
        seen: list[Event] = []
        after = 0
        while True:
            page = store.shard_events(shard, after, 5)
            if not page:
                break
            seen.extend(page)
            after = page[-1].position
        assert [(e.persistence_id, e.sequence_number) for e in seen] == written
        positions = [e.position for e in seen]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        heads = {h[0]: h for h in store.shard_heads()}
        assert heads[shard][1] == positions[-1]

    def test_23_concurrent_commits_and_a_tailing_reader(self, store: Any) -> None:
        shard = self._shard()
        writers, per_writer, batch = 4, 30, 3
        done = threading.Event()
        seen: list[Event] = []

        def tail() -> None:
            after = 0
            while True:
                finished = done.is_set()
                page = store.shard_events(shard, after, 7)
                seen.extend(page)
                if page:
                    after = page[-1].position
                elif finished:
                    return

        def write(w: int) -> None:
            p = f"tail-{uuid.uuid4().hex[:8]}-{w}"
            for i in range(per_writer):
                first = i * batch + 1
                store.write_events([make_event(p, first + k, shard=shard) for k in range(batch)])

        reader = threading.Thread(target=tail)
        reader.start()
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        reader.join()
        keys = [(e.persistence_id, e.sequence_number) for e in seen]
        assert len(keys) == len(set(keys)) == writers * per_writer * batch
        positions = [e.position for e in seen]
        assert positions == sorted(positions)
        # The events of one write are never interleaved with another write's.
        by_position = sorted(seen, key=lambda e: e.position)
        for i in range(0, len(by_position), batch):
            group = by_position[i : i + batch]
            assert len({e.persistence_id for e in group}) == 1

    def test_24_reopen_keeps_every_write(self, store: Any, written: str) -> None:
        before = [e.SerializeToString(deterministic=True) for e in store.replay_events(written, 1)]
        reopened = self.reopen(store)
        if reopened is None:
            pytest.skip("this store cannot be reopened")
        self._holder["store"] = reopened
        after = [e.SerializeToString(deterministic=True) for e in reopened.replay_events(written, 1)]
        assert after == before
        assert reopened.highest_sequence_number(written) == 5

    # -- bounds at the extremes: the same answer on every store -------------------------------

    @pytest.mark.parametrize(
        ("which", "value", "expected"),
        [
            ("from", 0, [1, 2, 3, 4, 5]),
            ("from", 1, [1, 2, 3, 4, 5]),
            *(("from", v, []) for v in HUGE),
            ("to", 0, []),
            ("to", 1, [1]),
            *(("to", v, [1, 2, 3, 4, 5]) for v in HUGE),
            ("max", 0, []),
            ("max", 1, [1]),
            *(("max", v, [1, 2, 3, 4, 5]) for v in HUGE),
        ],
    )
    def test_25_replay_bounds_at_the_extremes(
        self, store: Any, written: str, which: str, value: int, expected: list[int]
    ) -> None:
        bounds = {"from": 1, "to": U64_MAX, "max": U64_MAX, which: value}
        assert _seqs(store.replay_events(written, bounds["from"], bounds["to"], bounds["max"])) == expected

    @pytest.mark.parametrize(("value", "expected"), [(0, [1, 2, 3, 4, 5]), (1, [2, 3, 4, 5]), *((v, []) for v in HUGE)])
    def test_26_delete_to_at_the_extremes(self, store: Any, written: str, value: int, expected: list[int]) -> None:
        store.delete_events(written, value)
        assert _seqs(store.replay_events(written, 1, U64_MAX, U64_MAX)) == expected
        assert store.highest_sequence_number(written) == 5

    def test_27_negative_bounds_are_validation_errors(self, store: Any, written: str) -> None:
        for args in ((-1, 5, 10), (1, -1, 10), (1, 5, -1)):
            with pytest.raises(ValidationError):
                store.replay_events(written, *args)
        with pytest.raises(ValidationError):
            store.delete_events(written, -1)
        with pytest.raises(ValidationError):
            store.persistence_ids(-1, None)
        for args in ((-1, 0, 10), (0, -1, 10), (0, 0, -1)):
            with pytest.raises(ValidationError):
                store.shard_events(*args)
        assert _seqs(store.replay_events(written, 1, U64_MAX, U64_MAX)) == [1, 2, 3, 4, 5]

    def test_28_persistence_ids_page_size_at_the_extremes(self, store: Any) -> None:
        prefix = f"bound-{uuid.uuid4().hex[:12]}"
        ids = [f"{prefix}-a", f"{prefix}-b"]
        for i in ids:
            store.write_events([make_event(i, 1)])
        with pytest.raises(ValidationError):
            store.persistence_ids(0, prefix)  # a page of 0 could never move its cursor
        assert store.persistence_ids(1, prefix) == ([ids[0]], ids[0])
        assert store.persistence_ids(1, ids[0])[0] == [ids[1]]
        for page_size in HUGE:
            page, cursor = store.persistence_ids(page_size, prefix)
            assert [i for i in page if i.startswith(prefix)] == ids
            assert cursor is None

    def test_29_shard_events_bounds_at_the_extremes(self, store: Any) -> None:
        shard = self._shard()
        pid = f"bounds-{uuid.uuid4().hex[:8]}"
        store.write_events([make_event(pid, s, shard=shard) for s in (1, 2, 3)])
        everything = store.shard_events(shard, 0, U64_MAX)
        assert _seqs(everything) == [1, 2, 3]
        first = everything[0].position
        assert _seqs(store.shard_events(shard, first, U64_MAX)) == [2, 3]
        assert _seqs(store.shard_events(shard, 0, 0)) == []
        assert _seqs(store.shard_events(shard, 0, 1)) == [1]
        for value in HUGE:
            assert store.shard_events(shard, value, U64_MAX) == []
            assert _seqs(store.shard_events(shard, 0, value)) == [1, 2, 3]
        for bad in (-1, 2**32, 2**64):
            with pytest.raises(ValidationError):
                store.shard_events(bad, 0, 10)

    def test_30_numbers_beyond_what_stores_keep_are_refused(self, store: Any, pid: str) -> None:
        with pytest.raises(ValidationError):
            store.write_events([make_event(pid, 2**63)])
        assert store.highest_sequence_number(pid) == 0
        assert store.replay_events(pid, 0, U64_MAX, U64_MAX) == []


def _snapshot(pid: str, seq: int, timestamp: int, state: bytes | None = None) -> Snapshot:
    s = Snapshot(persistence_id=pid, sequence_number=seq, timestamp=timestamp)
    s.state.type_url = "type.googleapis.com/egotest.Counter"
    s.state.value = state if state is not None else f"s{seq}".encode()
    return s


class SnapshotStoreConformance(_Base):
    """Cases for the snapshot store."""

    @pytest.fixture
    def snaps(self, store: Any, pid: str) -> tuple[str, list[Snapshot]]:
        """Snapshots s1..s5 at sequence numbers 11..15, timestamps 1000..5000."""
        made = [_snapshot(pid, 10 + i, 1000 * i) for i in range(1, 6)]
        for s in made:
            store.write_snapshot(s)
        return pid, made

    def test_01_unknown_id(self, store: Any, pid: str) -> None:
        assert store.latest_snapshot(pid) is None

    def test_02_timestamp_matches_nothing(self, store: Any, snaps: tuple[str, list[Snapshot]]) -> None:
        pid, _ = snaps
        assert store.latest_snapshot(pid, SnapshotCriteria(max_timestamp=999)) is None

    def test_03_sequence_matches_nothing(self, store: Any, snaps: tuple[str, list[Snapshot]]) -> None:
        pid, _ = snaps
        assert store.latest_snapshot(pid, SnapshotCriteria(max_sequence_number=7)) is None

    def test_04_latest(self, store: Any, snaps: tuple[str, list[Snapshot]]) -> None:
        pid, made = snaps
        assert store.latest_snapshot(pid) == made[4]

    def test_05_latest_with_upper_bound(self, store: Any, snaps: tuple[str, list[Snapshot]]) -> None:
        pid, made = snaps
        assert store.latest_snapshot(pid, SnapshotCriteria(max_sequence_number=13)) == made[2]

    def test_06_latest_with_sequence_and_timestamp(self, store: Any, snaps: tuple[str, list[Snapshot]]) -> None:
        pid, made = snaps
        assert store.latest_snapshot(pid, SnapshotCriteria(max_sequence_number=14, max_timestamp=2000)) == made[1]

    def test_07_delete_one(self, store: Any, snaps: tuple[str, list[Snapshot]]) -> None:
        pid, made = snaps
        store.delete_snapshots(pid, SnapshotCriteria(min_sequence_number=15, max_sequence_number=15))
        assert store.latest_snapshot(pid) == made[3]

    def test_08_delete_matching(self, store: Any, snaps: tuple[str, list[Snapshot]]) -> None:
        pid, made = snaps
        store.delete_snapshots(pid, SnapshotCriteria(max_sequence_number=14))
        assert store.latest_snapshot(pid, SnapshotCriteria(max_sequence_number=14)) is None
        assert store.latest_snapshot(pid) == made[4]

    def test_09_delete_with_non_matching_timestamp(self, store: Any, snaps: tuple[str, list[Snapshot]]) -> None:
        pid, made = snaps
        store.delete_snapshots(pid, SnapshotCriteria(max_sequence_number=15, max_timestamp=500))
        assert store.latest_snapshot(pid) == made[4]
        assert store.latest_snapshot(pid, SnapshotCriteria(max_sequence_number=11)) == made[0]

    def test_10_save_twice_last_wins(self, store: Any, pid: str) -> None:
        store.write_snapshot(_snapshot(pid, 3, 1, b"first"))
        store.write_snapshot(_snapshot(pid, 3, 2, b"second"))
        found = store.latest_snapshot(pid)
        assert found is not None and found.state.value == b"second"

    @pytest.mark.parametrize("size", [10_000, 1 << 20])
    def test_11_large_snapshot(self, store: Any, pid: str, size: int) -> None:
        s = _snapshot(pid, 1, 1, bytes(i % 251 for i in range(size)))
        store.write_snapshot(s)
        assert store.latest_snapshot(pid) == s

    # -- bounds at the extremes: the same answer on every store -------------------------------

    @pytest.mark.parametrize(
        ("field", "value", "expected"),
        [
            ("max_sequence_number", 0, None),
            ("max_sequence_number", 1, None),
            *(("max_sequence_number", v, 4) for v in (*HUGE, 2**70)),
            ("min_sequence_number", 0, 4),
            ("min_sequence_number", 1, 4),
            *(("min_sequence_number", v, None) for v in (*HUGE, 2**70)),
            ("max_timestamp", 0, None),
            ("max_timestamp", 1, None),
            ("max_timestamp", -(2**63) - 1, None),
            ("max_timestamp", -(2**64), None),
            *(("max_timestamp", v, 4) for v in HUGE),
            ("min_timestamp", -(2**64), 4),
            ("min_timestamp", 0, 4),
            *(("min_timestamp", v, None) for v in HUGE),
        ],
    )
    def test_12_criteria_at_the_extremes(
        self, store: Any, snaps: tuple[str, list[Snapshot]], field: str, value: int, expected: int | None
    ) -> None:
        pid, made = snaps
        found = store.latest_snapshot(pid, SnapshotCriteria(**{field: value}))
        assert found == (None if expected is None else made[expected])

    def test_13_negative_sequence_bounds_and_float_timestamps_are_refused(self) -> None:
        kwargs: dict[str, Any]
        for kwargs in ({"min_sequence_number": -1}, {"max_sequence_number": -1}, {"max_timestamp": 1.5}):
            with pytest.raises(ValidationError):
                SnapshotCriteria(**kwargs)

    def test_14_delete_at_the_extremes(self, store: Any, snaps: tuple[str, list[Snapshot]]) -> None:
        pid, made = snaps
        for value in HUGE:
            store.delete_snapshots(pid, SnapshotCriteria(min_sequence_number=value))
        assert store.latest_snapshot(pid) == made[4]
        store.delete_snapshots(pid, SnapshotCriteria(max_sequence_number=U64_MAX, max_timestamp=2**64))
        assert store.latest_snapshot(pid) is None

    def test_15_sequence_numbers_beyond_what_stores_keep_are_refused(self, store: Any, pid: str) -> None:
        with pytest.raises(ValidationError):
            store.write_snapshot(_snapshot(pid, 2**63, 1))
        assert store.latest_snapshot(pid) is None
        top = _snapshot(pid, 2**63 - 1, 2**63 - 1)
        store.write_snapshot(top)
        assert store.latest_snapshot(pid) == top


def _state(pid: str, version: int, value: bytes) -> DurableState:
    s = DurableState(persistence_id=pid, version_number=version, timestamp=time.time_ns(), shard=2)
    s.resulting_state.type_url = "type.googleapis.com/egotest.Counter"
    s.resulting_state.value = value
    return s


class StateStoreConformance(_Base):
    """Cases for the durable state store."""

    def test_01_write_then_read(self, store: Any, pid: str) -> None:
        s = _state(pid, 1, b"one")
        store.write_state(s, 0)
        assert store.read_state(pid) == s

    def test_02_unknown_id(self, store: Any, pid: str) -> None:
        assert store.read_state(pid) is None

    def test_03_stale_expected_version(self, store: Any, pid: str) -> None:
        store.write_state(_state(pid, 1, b"one"), 0)
        store.write_state(_state(pid, 2, b"two"), 1)
        with pytest.raises(ConcurrencyError) as info:
            store.write_state(_state(pid, 2, b"stale"), 1)
        assert (info.value.expected, info.value.actual) == (1, 2)
        found = store.read_state(pid)
        assert found is not None and found.resulting_state.value == b"two"

    def test_04_concurrent_writers(self, store: Any, pid: str) -> None:
        store.write_state(_state(pid, 1, b"base"), 0)
        writers = 8
        barrier = threading.Barrier(writers)
        wins: list[int] = []

        def race(w: int) -> None:
            barrier.wait()
            try:
                store.write_state(_state(pid, 2, f"w{w}".encode()), 1)
                wins.append(w)
            except ConcurrencyError:
                pass

        threads = [threading.Thread(target=race, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1
        found = store.read_state(pid)
        assert found is not None and found.resulting_state.value == f"w{wins[0]}".encode()

    def test_05_delete(self, store: Any, pid: str) -> None:
        store.write_state(_state(pid, 1, b"one"), 0)
        store.delete_state(pid)
        assert store.read_state(pid) is None

    # -- bounds at the extremes: the same answer on every store -------------------------------

    def test_06_expected_version_at_the_extremes(self, store: Any, pid: str) -> None:
        for expected in HUGE:
            with pytest.raises(ConcurrencyError):
                store.write_state(_state(pid, 1, b"one"), expected)
        assert store.read_state(pid) is None
        with pytest.raises(ValidationError):
            store.write_state(_state(pid, 1, b"one"), -1)
        store.write_state(_state(pid, 1, b"one"), 0)
        for expected in (0, *HUGE):
            with pytest.raises(ConcurrencyError):
                store.write_state(_state(pid, 2, b"two"), expected)
        found = store.read_state(pid)
        assert found is not None and (found.version_number, found.resulting_state.value) == (1, b"one")

    def test_07_versions_beyond_what_stores_keep_are_refused(self, store: Any, pid: str) -> None:
        with pytest.raises(ValidationError):
            store.write_state(_state(pid, 2**63, b"too far"), 0)
        assert store.read_state(pid) is None
        top = _state(pid, 2**63 - 1, b"top")
        store.write_state(top, 0)
        assert store.read_state(pid) == top

    def test_08_state_ids_paging_in_byte_order(self, store: Any, pid: str) -> None:
        """``state_ids`` (optional for stores written in Python): every stored id once, in
        UTF-8 byte order, paged with an exclusive cursor; a deleted state is not listed."""
        if not hasattr(store, "state_ids"):
            pytest.skip("this store does not list its durable states")
        ids = [f"{pid}-{suffix}" for suffix in ("b", "B", "a", "A", "_", "\u00e9", "a-1", "a1", "Z")]
        for i in ids:
            store.write_state(_state(i, 1, b"x"), 0)
        store.delete_state(ids[0])
        seen: list[str] = []
        after: str | None = pid
        while after is not None:
            page, after = store.state_ids(2, after)
            seen.extend(i for i in page if i.startswith(pid))
        assert seen == sorted(ids[1:], key=lambda i: i.encode())
        with pytest.raises(ValidationError):
            store.state_ids(0)

    def test_09_state_version_follows_writes_and_deletes(self, store: Any, pid: str) -> None:
        """``state_version`` (optional for stores written in Python): the stored version, 0
        when none; right when many are asked at once (a store may answer them together)."""
        if not hasattr(store, "state_version"):
            pytest.skip("this store has no state_version (entities read the whole state)")
        assert store.state_version(pid) == 0
        store.write_state(_state(pid, 1, b"one"), 0)
        store.write_state(_state(pid, 2, b"two"), 1)
        assert store.state_version(pid) == 2
        others = [f"{pid}-{i}" for i in range(24)]
        for i, other in enumerate(others):
            if i % 3:
                store.write_state(_state(other, i % 3, b"x"), 0)
        with ThreadPoolExecutor(8) as pool:
            versions = list(pool.map(store.state_version, [pid, *others] * 4))
        assert versions == [2, *(i % 3 for i in range(24))] * 4
        store.delete_state(pid)
        assert store.state_version(pid) == 0


def _record(state: DurableState, position: int) -> DurableState:
    """The change-log record of `state` written at `position`."""
    r = DurableState()
    r.CopyFrom(state)
    r.ClearField("idempotency_keys")
    r.position = position
    return r


class StateChangeLogConformance(_Base):
    """Cases for the durable-state change log (``shard_state_changes``, ``state_shard_heads``;
    optional for stores written in Python: skipped when the store has neither). Each case
    writes to a shard of its own."""

    @pytest.fixture
    def shard(self, store: Any) -> int:
        if not hasattr(store, "shard_state_changes"):
            pytest.skip("this store keeps no durable-state change log")
        return random.randrange(1000, 2**31)

    @staticmethod
    def _state(pid: str, version: int, value: bytes, shard: int) -> DurableState:
        s = _state(pid, version, value)
        s.shard = shard
        return s

    @staticmethod
    def _head(store: Any, shard: int) -> int:
        return next((position for s, position, _ in store.state_shard_heads() if s == shard), 0)

    def test_01_each_write_appends_a_record(self, store: Any, pid: str, shard: int) -> None:
        first = self._state(pid, 1, b"one", shard)
        key = first.idempotency_keys.add()
        key.key, key.revision = "k-1", 1
        store.write_state(first, 0)
        second = self._state(pid, 2, b"two", shard)
        store.write_state(second, 1)
        changes = store.shard_state_changes(shard, 0, 100)
        assert changes == [_record(first, 1), _record(second, 2)]
        heads = [h for h in store.state_shard_heads() if h[0] == shard]
        assert heads == [(shard, 2, second.timestamp)]
        assert store.shard_state_changes(shard, 1, 100) == [_record(second, 2)]
        assert store.shard_state_changes(shard, 0, 1) == [_record(first, 1)]

    def test_02_a_refused_write_appends_nothing(self, store: Any, pid: str, shard: int) -> None:
        store.write_state(self._state(pid, 1, b"one", shard), 0)
        with pytest.raises(ConcurrencyError):
            store.write_state(self._state(pid, 2, b"stale", shard), 0)
        with pytest.raises(ValidationError):
            store.write_state(self._state(pid, 2**63, b"too far", shard), 1)
        assert [c.version_number for c in store.shard_state_changes(shard, 0, 100)] == [1]
        assert self._head(store, shard) == 1

    def test_03_every_version_in_order_per_entity(self, store: Any, pid: str, shard: int) -> None:
        ids = [f"{pid}-{i}" for i in range(3)]
        for version in range(1, 6):
            for i in ids:
                store.write_state(self._state(i, version, f"{i}@{version}".encode(), shard), version - 1)
        changes = store.shard_state_changes(shard, 0, 1000)
        assert [c.position for c in changes] == list(range(1, 16))
        for i in ids:
            mine = [c for c in changes if c.persistence_id == i]
            assert [c.version_number for c in mine] == [1, 2, 3, 4, 5]
            assert [c.resulting_state.value for c in mine] == [f"{i}@{v}".encode() for v in range(1, 6)]
        assert self._head(store, shard) == 15

    def test_04_delete_state_removes_its_records(self, store: Any, pid: str, shard: int) -> None:
        gone, kept = f"{pid}-gone", f"{pid}-kept"
        store.write_state(self._state(gone, 1, b"g1", shard), 0)
        store.write_state(self._state(kept, 1, b"k1", shard), 0)
        store.write_state(self._state(gone, 2, b"g2", shard), 1)
        store.delete_state(gone)
        changes = store.shard_state_changes(shard, 0, 100)
        assert [(c.persistence_id, c.position) for c in changes] == [(kept, 2)]
        # Positions are not reused: the next write goes after the deleted records.
        store.write_state(self._state(kept, 2, b"k2", shard), 1)
        assert [c.position for c in store.shard_state_changes(shard, 2, 100)] == [4]
        assert self._head(store, shard) == 4

    def test_05_concurrent_writers_and_a_tailing_reader(self, store: Any, pid: str, shard: int) -> None:
        """A reader that tails the shard while 6 writers commit never skips a record."""
        writers, versions = 6, 15
        seen: list[DurableState] = []
        done = threading.Event()

        def tail() -> None:
            after = 0
            while True:
                finished = done.is_set()
                page = store.shard_state_changes(shard, after, 7)
                seen.extend(page)
                if page:
                    after = page[-1].position
                elif finished:
                    return

        def write(w: int) -> None:
            for version in range(1, versions + 1):
                store.write_state(self._state(f"{pid}-{w}", version, b"x", shard), version - 1)

        reader = threading.Thread(target=tail)
        reader.start()
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        reader.join()
        assert [c.position for c in seen] == list(range(1, writers * versions + 1))
        for w in range(writers):
            assert [c.version_number for c in seen if c.persistence_id == f"{pid}-{w}"] == list(range(1, versions + 1))

    def test_06_reopen_keeps_the_log(self, store: Any, pid: str, shard: int) -> None:
        written = [self._state(pid, v, f"v{v}".encode(), shard) for v in (1, 2)]
        store.write_state(written[0], 0)
        store.write_state(written[1], 1)
        reopened = self.reopen(store)
        if reopened is None:
            pytest.skip("this store cannot be reopened")
        self._holder["store"] = reopened
        assert reopened.shard_state_changes(shard, 0, 100) == [_record(written[0], 1), _record(written[1], 2)]
        reopened.write_state(self._state(pid, 3, b"v3", shard), 2)
        assert [c.position for c in reopened.shard_state_changes(shard, 0, 100)] == [1, 2, 3]

    def test_07_bounds_at_the_extremes(self, store: Any, pid: str, shard: int) -> None:
        store.write_state(self._state(pid, 1, b"one", shard), 0)
        for after in HUGE:
            assert store.shard_state_changes(shard, after, 10) == []
        for max_count in HUGE:
            assert len(store.shard_state_changes(shard, 0, max_count)) == 1
        assert store.shard_state_changes(shard, 0, 0) == []
        assert store.shard_state_changes(shard + 1, 0, 10) == []
        for bad in ((shard, -1, 10), (shard, 0, -1), (-1, 0, 10)):
            with pytest.raises(ValidationError):
                store.shard_state_changes(*bad)


class OffsetStoreConformance(_Base):
    """Cases for the offset store (projection positions)."""

    @pytest.fixture
    def projection(self) -> str:
        return f"projection-{uuid.uuid4().hex[:12]}"

    def test_01_unknown_projection(self, store: Any, projection: str) -> None:
        assert store.read_offsets(projection) == []

    def test_02_write_then_read(self, store: Any, projection: str) -> None:
        store.write_offsets(projection, [(0, 5), (3, 7)])
        assert store.read_offsets(projection) == [(0, 5), (3, 7)]
        store.write_offsets(projection, [(3, 9)])
        assert store.read_offsets(projection) == [(0, 5), (3, 9)]

    def test_03_reset_one_projection(self, store: Any, projection: str) -> None:
        other = projection + "-other"
        store.write_offsets(projection, [(0, 5), (1, 6)])
        store.write_offsets(other, [(0, 8)])
        store.reset_offsets(projection)
        assert store.read_offsets(projection) == []
        assert store.read_offsets(other) == [(0, 8)]

    def test_03b_names_that_are_prefixes_of_each_other(self, store: Any, projection: str) -> None:
        store.write_offsets(projection, [(0, 1)])
        store.write_offsets(projection + "x", [(0, 2)])
        assert store.read_offsets(projection) == [(0, 1)]
        store.reset_offsets(projection)
        assert store.read_offsets(projection + "x") == [(0, 2)]

    def test_04_positions_at_the_extremes(self, store: Any, projection: str) -> None:
        store.write_offsets(projection, [(0, 0), (1, 1), (2, 2**63 - 1), (2**32 - 1, 7)])
        assert store.read_offsets(projection) == [(0, 0), (1, 1), (2, 2**63 - 1), (2**32 - 1, 7)]
        for bad in ((0, 2**63), (0, 2**64 - 1), (0, -1), (-1, 5), (2**32, 5)):
            with pytest.raises(ValidationError):
                store.write_offsets(projection + "-bad", [bad])
        assert store.read_offsets(projection + "-bad") == []

    def test_05_projection_names(self, store: Any, projection: str) -> None:
        """``projection_names`` (optional for stores written in Python): the projections with
        offsets, in byte order; a reset projection is not listed."""
        if not hasattr(store, "projection_names"):
            pytest.skip("this store does not list its projections")
        names = [projection + "-B", projection + "-a", projection, projection + "x"]
        for n in names:
            store.write_offsets(n, [(0, 1), (1, 2)])
        store.reset_offsets(projection + "x")
        listed = [n for n in store.projection_names() if n.startswith(projection)]
        assert listed == sorted(names[:3], key=lambda n: n.encode())
