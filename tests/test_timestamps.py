"""Times cross between Python and the stores' integer nanoseconds exactly: rebuild points,
lag, the timestamps of persisted events and states, snapshot criteria. Tests sit on
nanosecond boundaries, where a conversion through a float of seconds goes wrong."""

from __future__ import annotations

import datetime
import doctest
from typing import Any

import pytest
from waiting import wait_until

import ego
from ego import timestamps
from ego.errors import ValidationError
from ego.stores import SnapshotCriteria
from ego.timestamps import I64_MAX, I64_MIN, from_unix_nanos, seconds_to_nanos, to_nanos, unix_nanos
from ego.v1 import Event, Snapshot

from bank_pb2 import AccountCredited

UTC = datetime.timezone.utc
# A microsecond-precise UTC time (the case): 2026-01-01 12:00:00.000054.
T = datetime.datetime(2026, 1, 1, 12, 0, 0, 54, tzinfo=UTC)
T_NS = 1_767_268_800_000_054_000


def event(pid: str, seq: int, timestamp: int, shard: int = 0) -> Event:
    e = Event(persistence_id=pid, sequence_number=seq, timestamp=timestamp, shard=shard)
    e.event.Pack(AccountCredited(amount=seq))
    return e


def test_the_conversions_are_exact_at_nanosecond_boundaries() -> None:
    assert unix_nanos(T) == T_NS
    assert unix_nanos(datetime.datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert unix_nanos(datetime.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == -1_000
    assert unix_nanos(datetime.datetime(2262, 4, 11, 23, 47, 16, 854_775, tzinfo=UTC)) == I64_MAX - 807
    # Other zones: the same instant.
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    assert unix_nanos(T.astimezone(plus_two)) == T_NS
    # Naive datetimes are local time, as datetime.timestamp() takes them.
    assert unix_nanos(T.astimezone().replace(tzinfo=None)) == T_NS
    # Back: floored to the microsecond, before 1970 too.
    assert from_unix_nanos(T_NS + 999) == T
    assert from_unix_nanos(T_NS - 1) == T - datetime.timedelta(microseconds=1)
    assert from_unix_nanos(-1) == datetime.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    assert from_unix_nanos(I64_MIN).year == 1677 and from_unix_nanos(I64_MAX).year == 2262
    # Seconds: ints are exact; a float converts from its exact binary value.
    assert seconds_to_nanos(1_767_268_800) == 1_767_268_800_000_000_000
    assert seconds_to_nanos(0.5) == 500_000_000
    assert seconds_to_nanos(1e-9) == 1
    # A float of today's time is off by up to ~0.2 us: it cannot be exact, and is documented so.
    assert abs(seconds_to_nanos(T_NS / 1e9) - T_NS) < 250
    # Clamped to what stores keep.
    assert to_nanos(datetime.datetime(9999, 1, 1, tzinfo=UTC)) == I64_MAX
    assert to_nanos(datetime.datetime(1, 1, 1, tzinfo=UTC)) == I64_MIN
    for bad in (float("nan"), float("inf"), "12:00", None, True):
        with pytest.raises(ValidationError):
            to_nanos(bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        unix_nanos(datetime.date(2026, 1, 1))  # type: ignore[arg-type]


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(timestamps, raise_on_error=True).attempted >= 5


class Seen:
    def __init__(self) -> None:
        self.seqs: list[int] = []

    def __call__(self, events: list[ego.PersistedEvent]) -> None:
        self.seqs.extend(e.sequence_number for e in events)


def caught_up(engine: ego.Engine, name: str) -> bool:
    return all(lag.events_behind == 0 for lag in engine.projection_lag(name).values())


@pytest.fixture
def around_t() -> tuple[ego.MemoryStore, ego.Engine, Seen]:
    """Events 1-4 of one entity at T - 1 s, T - 100 ns, T + 100 ns, T + 1 s; a projection that
    has handled them all."""
    store = ego.MemoryStore()
    for seq, ts in enumerate((T_NS - 10**9, T_NS - 100, T_NS + 100, T_NS + 10**9), start=1):
        store.write_events([event("timed", seq, ts)])
    engine = ego.Engine("times", store=store)
    engine.start()
    seen = Seen()
    engine.add_projection("p", seen)
    wait_until(lambda: caught_up(engine, "p") and len(seen.seqs) == 4, what="the projection to catch up")
    return store, engine, seen


def rebuilt(engine: ego.Engine, seen: Seen, **point: Any) -> list[int]:
    seen.seqs.clear()
    engine.rebuild_projection("p", **point)
    wait_until(lambda: caught_up(engine, "p"), what="the rebuild to finish")
    return sorted(seen.seqs)


def test_rebuild_from_a_datetime_hands_over_exactly_the_events_after_it(around_t: Any) -> None:
    _, engine, seen = around_t
    try:
        # The case: 100 ns either side of a microsecond-precise UTC datetime.
        assert rebuilt(engine, seen, from_time=T) == [3, 4]
        assert rebuilt(engine, seen, from_time=T.astimezone().replace(tzinfo=None)) == [3, 4]  # naive: local time
        assert rebuilt(engine, seen, from_time=T - datetime.timedelta(microseconds=1)) == [2, 3, 4]
        # Nanoseconds, exactly as events carry them: "after" is exclusive.
        assert rebuilt(engine, seen, from_timestamp_ns=T_NS - 100) == [3, 4]
        assert rebuilt(engine, seen, from_timestamp_ns=T_NS - 101) == [2, 3, 4]
        assert rebuilt(engine, seen, from_timestamp_ns=T_NS + 100) == [4]
        # Unix seconds as an int are exact.
        assert rebuilt(engine, seen, from_time=T_NS // 10**9) == [2, 3, 4]
        assert rebuilt(engine, seen) == [1, 2, 3, 4]
        assert rebuilt(engine, seen, from_time=datetime.datetime(9999, 1, 1, tzinfo=UTC)) == []
        with pytest.raises(ValidationError):
            engine.rebuild_projection("p", T, from_timestamp_ns=T_NS)
        with pytest.raises(ValidationError):
            engine.rebuild_projection("p", "yesterday")  # type: ignore[arg-type]
    finally:
        engine.stop()


def test_persisted_events_and_states_carry_exact_nanoseconds_and_a_datetime() -> None:
    store = ego.MemoryStore()
    store.write_events([event("e", 1, T_NS + 999), event("e", 2, -1)])
    with ego.Engine("times", store=store) as engine:
        seen: list[ego.PersistedEvent] = []
        engine.add_projection("p", seen.extend)
        wait_until(lambda: len(seen) == 2, what="both events")
        first, second = seen
        assert (first.timestamp_ns, first.timestamp, first.datetime) == (T_NS + 999, T_NS + 999, T)
        assert second.timestamp_ns == -1
        assert second.datetime == datetime.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)

        from test_durable_state import CounterBehavior

        from egotest.messages_pb2 import Increment

        engine.register_entity_type(CounterBehavior, prefix="c-")
        with engine.subscribe() as sub:
            engine.send_command("c-1", Increment(by=1))
            item = sub.get(timeout=10)
        assert isinstance(item, ego.PersistedState)
        stored = store.read_state("c-1")
        assert stored is not None
        assert item.timestamp_ns == item.timestamp == stored.timestamp
        assert item.datetime == from_unix_nanos(stored.timestamp)
        assert item.datetime.tzinfo is UTC


def test_lag_time_is_exact_in_nanoseconds() -> None:
    store = ego.MemoryStore()
    gap = 1_234_567_891  # not a float of seconds' exact multiple of a nanosecond
    store.write_events([event("lag", 1, T_NS)])
    store.write_events([event("lag", 2, T_NS + gap)])

    def fail_on_the_second(events: list[ego.PersistedEvent]) -> None:
        if any(e.sequence_number == 2 for e in events):
            raise RuntimeError("stop here")

    with ego.Engine("times", store=store) as engine:
        engine.add_projection("p", fail_on_the_second, batch_size=1)
        wait_until(lambda: not engine.is_projection_running("p"), what="the projection to stop on event 2")
        lag = engine.projection_lag("p")[0]
    assert (lag.events_behind, lag.time_behind_ns) == (1, gap)
    assert lag.time_behind == gap / 1e9


def test_snapshot_criteria_take_datetimes_exactly() -> None:
    store = ego.MemoryStore()
    for seq, ts in ((1, T_NS - 1), (2, T_NS), (3, T_NS + 1)):
        s = Snapshot(persistence_id="s", sequence_number=seq, timestamp=ts)
        s.state.type_url = "type.googleapis.com/egotest.Counter"
        store.write_snapshot(s)

    def latest(**criteria: Any) -> int | None:
        found = store.latest_snapshot("s", SnapshotCriteria(**criteria))
        return None if found is None else found.sequence_number

    assert latest(max_timestamp=T) == 2
    assert latest(max_timestamp=T_NS - 1) == 1
    assert latest(min_timestamp=T, max_timestamp=T) == 2
    assert latest(max_timestamp=T - datetime.timedelta(microseconds=1)) is None
    assert latest(max_timestamp=T.astimezone().replace(tzinfo=None)) == 2
    with pytest.raises(ValidationError):
        SnapshotCriteria(max_timestamp=T_NS / 1e9)  # type: ignore[arg-type]


def test_a_publisher_starting_at_a_datetime_publishes_exactly_the_events_after_it(around_t: Any) -> None:
    _, engine, _ = around_t

    class Collect:
        def __init__(self) -> None:
            self.ids: list[str] = []

        def publish(self, records: list[Any]) -> None:
            self.ids.extend(r.id for r in records)

    try:
        publisher = Collect()
        engine.add_event_publisher(publisher, name="from-t", start=T)
        wait_until(lambda: all(lag.events_behind == 0 for lag in engine.publisher_lag("from-t").values()), what="publishing")
        assert publisher.ids == ["timed:3", "timed:4"]
    finally:
        engine.stop()
