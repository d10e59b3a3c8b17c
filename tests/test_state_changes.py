"""Projections over the durable-state change log (``add_projection(..., source="states")``):
every version in order per entity with offsets, restarts that resume from the offsets, rebuild,
lag, recovery and dead letters; erased entities as tombstones; stores without a change log."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from test_durable_state import CounterBehavior
from waiting import wait_until

import ego
from ego import errors
from ego.testkit import InMemoryKeyStore
from ego.v1 import DurableState

from egotest.messages_pb2 import Counter, Increment


class Changes:
    """A batch handler that records (persistence id, version, counter value, position)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, changes: list[ego.PersistedState]) -> None:
        with self.lock:
            for c in changes:
                assert isinstance(c, ego.PersistedState)
                self.seen.append((c.persistence_id, c.version, c.state.value, c.position))

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def per_entity(self) -> dict[str, list[tuple[int, int]]]:
        per: dict[str, list[tuple[int, int]]] = defaultdict(list)
        with self.lock:
            for pid, version, value, _ in self.seen:
                per[pid].append((version, value))
        return per


def caught_up(engine: ego.Engine, name: str) -> bool:
    return all(lag.events_behind == 0 for lag in engine.projection_lag(name).values())


def send_rounds(engine: ego.Engine, ids: list[str], rounds: int) -> None:
    """`rounds` increments of 1 to every id, the ids of a round concurrently."""

    async def run() -> None:
        for _ in range(rounds):
            await asyncio.gather(*(engine.send_command_async(i, Increment(by=1)) for i in ids))

    asyncio.run(run())


def check_every_version_in_order(changes: Changes, final: dict[str, int], after: dict[str, int] | None = None) -> None:
    """Each entity's records: versions strictly increasing, each state the one of its version
    (a counter incremented by 1 per command has value == version), ending at its final
    version; none at or before `after` (what an earlier run handled)."""
    per = changes.per_entity()
    assert set(per) == set(final)
    for pid, records in per.items():
        versions = [v for v, _ in records]
        assert versions == sorted(set(versions)), pid
        assert all(value == version for version, value in records), pid
        assert versions[-1] == final[pid], pid
        if after is not None:
            assert versions[0] > after[pid], pid


def test_every_version_in_order_per_entity_and_a_restart_resumes_from_the_offsets(reopenable: Callable[[], Any]) -> None:
    ids = [f"cart-{i}" for i in range(100)]
    changes = Changes()
    store = reopenable()
    with ego.Engine(store=store) as engine:
        engine.register_entity_type(CounterBehavior, prefix="cart-")
        engine.add_projection("carts", changes, source="states", batch_size=50)
        send_rounds(engine, ids, 12)
        final = {i: engine.get_state(i)[1] for i in ids}
        assert all(v == 12 for v in final.values())
        engine.wait_for_projection("carts", timeout=60)
        check_every_version_in_order(changes, final)
        # No commands were coalesced here (one per entity at a time): every version is there.
        assert changes.count() == 1200
        assert engine.projection_status("carts") == ("running", None)
    store.close()
    first_run = dict(final)
    resumed = Changes()
    store = reopenable()
    with ego.Engine(store=store) as engine:
        engine.register_entity_type(CounterBehavior, prefix="cart-")
        engine.add_projection("carts", resumed, source="states", batch_size=50)
        send_rounds(engine, ids[:10], 3)
        final = {i: engine.get_state(i)[1] for i in ids[:10]}
        engine.wait_for_projection("carts", timeout=60)
        check_every_version_in_order(resumed, final, after=first_run)
        assert resumed.count() == 30
    store.close()


def test_rebuild_lag_and_a_second_projection_from_the_start() -> None:
    store = ego.MemoryStore()
    with ego.Engine(store=store) as engine:
        engine.register_entity_type(CounterBehavior)
        changes = Changes()
        engine.add_projection("p", changes, source="states")
        for _ in range(5):
            engine.send_command("c", Increment(by=1))
        engine.wait_for_projection("p")
        assert [(v, value) for _, v, value, _ in changes.seen] == [(v, v) for v in range(1, 6)]
        lag = engine.projection_lag("p")
        shard = next(s for s, lag in lag.items() if lag.head > 0)
        assert (lag[shard].offset, lag[shard].head, lag[shard].events_behind) == (5, 5, 0)
        engine.rebuild_projection("p")
        engine.wait_for_projection("p")
        assert [v for _, v, _, _ in changes.seen] == [1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
        # A projection over events sees none of this (and the reverse).
        events: list[ego.PersistedEvent] = []
        engine.add_projection("events", events.extend)
        engine.wait_for_projection("events")
        assert events == []
        late = Changes()
        engine.add_projection("late", late, source="states", start="end")
        # Its start (the head when its shard task began) is recorded before anything new.
        wait_until(lambda: engine.projection_lag("late")[shard].offset == 5, what="the start at the end")
        engine.send_command("c", Increment(by=1))
        engine.wait_for_projection("late")
        assert [v for _, v, _, _ in late.seen] == [6]


def test_a_failing_version_goes_to_the_dead_letter_handler() -> None:
    dead: list[tuple[str, str, int, str]] = []
    handled: list[int] = []

    def handler(changes: list[ego.PersistedState]) -> None:
        for c in changes:
            if c.version == 3:
                raise ValueError("version 3 is refused")
        handled.extend(c.version for c in changes)

    def dead_letter(name: str, pid: str, record: Any, version: int, error: BaseException) -> None:
        assert isinstance(record, ego.PersistedState) and record.state == Counter(value=3)
        dead.append((name, pid, version, str(error)))

    with ego.Engine(store=ego.MemoryStore()) as engine:
        engine.register_entity_type(CounterBehavior)
        engine.add_projection(
            "p",
            handler,
            source="states",
            recovery=ego.Recovery(policy=ego.RecoveryPolicy.RETRY_AND_SKIP, attempts=2, backoff=0.01),
            dead_letter=dead_letter,
        )
        for _ in range(5):
            engine.send_command("c", Increment(by=1))
            engine.wait_for_projection("p")
        assert handled == [1, 2, 4, 5]
        assert dead == [("p", "c", 3, "version 3 is refused")]
        assert engine.projection_stats("p")["dead_letters"] == 1


def test_a_refused_or_no_op_command_writes_no_version() -> None:
    with ego.Engine(store=ego.MemoryStore()) as engine:
        engine.register_entity_type(CounterBehavior)
        changes = Changes()
        engine.add_projection("p", changes, source="states")
        engine.send_command("c", Increment(by=2))
        engine.send_command("c", Increment(by=0))  # no change: nothing written
        with pytest.raises(ValueError):
            engine.send_command("c", Increment(by=-1))
        engine.send_command("c", Increment(by=3))
        engine.wait_for_projection("p")
        assert [(v, value) for _, v, value, _ in changes.seen] == [(1, 2), (2, 5)]


class StatesOnly:
    """A Python state store without the change log's optional methods."""

    def __init__(self) -> None:
        self.states: dict[str, DurableState] = {}

    def write_state(self, state: DurableState, expected_version: int) -> None:
        actual = self.states[state.persistence_id].version_number if state.persistence_id in self.states else 0
        if actual != expected_version:
            err = errors.ConcurrencyError("conflict")
            err.persistence_id, err.expected, err.actual = state.persistence_id, expected_version, actual
            raise err
        self.states[state.persistence_id] = state

    def read_state(self, persistence_id: str) -> DurableState | None:
        return self.states.get(persistence_id)

    def delete_state(self, persistence_id: str) -> None:
        self.states.pop(persistence_id, None)


def test_a_state_store_without_a_change_log_is_refused_when_the_projection_is_added() -> None:
    memory = ego.MemoryStore()
    with ego.Engine(events_store=memory, state_store=StatesOnly()) as engine:
        engine.register_entity_type(CounterBehavior)
        # Writes are not affected.
        assert engine.send_command("c", Increment(by=1)) == (Counter(value=1), 1)
        with pytest.raises(errors.ConfigurationError, match="change log"):
            engine.add_projection("p", Changes(), source="states", offset_store=memory)
        with pytest.raises(errors.ConfigurationError, match="source"):
            engine.add_projection("q", Changes(), source="snapshots")


def test_an_erased_entity_s_versions_read_as_tombstones(tmp_path: Any) -> None:
    keys = InMemoryKeyStore()
    store = ego.RocksDBStore(tmp_path / "db")
    with ego.Engine(store=store, encryption=ego.Encryption(key_store=keys)) as engine:
        engine.register_entity_type(CounterBehavior)
        for _ in range(3):
            engine.send_command("gone", Increment(by=1))
        engine.send_command("kept", Increment(by=1))
        # At rest, the change log holds ciphertext only.
        raw = [c for shard in range(8) for c in store.shard_state_changes(shard, 0, 100)]
        assert len(raw) == 4 and all(c.is_encrypted for c in raw)
        engine.erase_entity("gone")
        seen: list[ego.PersistedState] = []
        engine.add_projection("p", seen.extend, source="states")
        engine.wait_for_projection("p")
        gone = [r for r in seen if r.persistence_id == "gone"]
        assert [(r.version, r.erased, r.payload) for r in gone] == [(1, True, b""), (2, True, b""), (3, True, b"")]
        assert gone[0].type_url.endswith("egotest.Counter")
        with pytest.raises(errors.EntityErasedError):
            _ = gone[0].state
        kept = [r for r in seen if r.persistence_id == "kept"]
        assert [(r.version, r.erased, r.state) for r in kept] == [(1, False, Counter(value=1))]
        # Erasing with delete_data removes the records from the log too.
        engine.erase_entity("kept", delete_data=True)
        assert [c.persistence_id for shard in range(8) for c in store.shard_state_changes(shard, 0, 100)] == ["gone"] * 3
    store.close()
