"""Projections: every event exactly once per entity in order, across restarts and concurrent
writers; recovery policies and dead letters; rebuilds; lag; event adapters; the event stream;
retention that never outruns a projection."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from test_durable_state import CounterBehavior
from test_event_sourced import Multi
from waiting import clock_past, wait_until

import ego
from ego import errors
from ego.timestamps import to_nanos

from bank_pb2 import AccountCredited, AccountOpened, Credit, OpenAccount
from domain import AccountBehavior
from egotest.messages_pb2 import Counter, Increment


class Recorder:
    """A batch handler that records (persistence id, sequence number) per call."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.batches = 0
        self.lock = threading.Lock()

    def __call__(self, events: list[ego.PersistedEvent]) -> None:
        with self.lock:
            self.batches += 1
            self.seen.extend((e.persistence_id, e.sequence_number) for e in events)

    def count(self) -> int:
        with self.lock:
            return len(self.seen)


def caught_up(engine: ego.Engine, name: str) -> bool:
    return all(lag.events_behind == 0 for lag in engine.projection_lag(name).values())


def check_exactly_once_in_order(seen: list[tuple[str, int]], expected: dict[str, int]) -> None:
    per: dict[str, list[int]] = defaultdict(list)
    for pid, seq in seen:
        per[pid].append(seq)
    assert {p: len(s) for p, s in per.items()} == expected
    for pid, seqs in per.items():
        assert seqs == list(range(1, expected[pid] + 1)), pid


def test_every_event_once_in_order_under_concurrent_writers_and_across_restarts(store_kind: str, make_store: Any) -> None:
    rec = Recorder()
    writers, per_writer = 6, 60
    expected: dict[str, int] = {}
    store = make_store()
    with ego.Engine(store=store) as engine:
        engine.register_entity_type(Multi)
        engine.add_projection("audit", rec, batch_size=7)

        def write(w: int) -> None:
            for i in range(per_writer):
                engine.send_command(f"e{w}-{i % 5}", Credit(amount=1 + i % 3))

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for w in range(writers):
            for k in range(5):
                expected[f"e{w}-{k}"] = engine.get_state(f"e{w}-{k}")[1]
        wait_until(lambda: rec.count() == sum(expected.values()), what="the projection to catch up")
        # The handler has seen everything; its offsets commit right after it returns.
        wait_until(lambda: caught_up(engine, "audit"), what="the offsets to be committed")
    if store_kind == "rocksdb":
        store.close()
    # A new engine on the same store: the projection resumes from its offsets.
    with ego.Engine(store=make_store()) as engine:
        engine.register_entity_type(Multi)
        engine.add_projection("audit", rec, batch_size=7)
        engine.send_command("e0-0", Credit(amount=2))
        expected["e0-0"] += 2
        wait_until(lambda: rec.count() == sum(expected.values()), what="the projection to resume")
        # Caught up: its offsets are at the heads, so nothing more is handed over.
        wait_until(lambda: caught_up(engine, "audit"), what="the offsets to be committed")
    check_exactly_once_in_order(rec.seen, expected)


def test_events_of_one_command_share_a_timestamp_and_none_is_lost_at_a_page_boundary(engine: ego.Engine) -> None:
    rec = Recorder()
    engine.register_entity_type(Multi)
    engine.add_projection("pages", rec, batch_size=3)
    engine.send_command("m", Credit(amount=10))  # ten events, one timestamp
    wait_until(lambda: rec.count() == 10)
    assert rec.seen == [("m", i) for i in range(1, 11)]
    assert rec.batches >= 4


class Flaky:
    """Fails on events whose amount is in `bad`, `failures` times each (forever if None)."""

    def __init__(self, bad: set[int], failures: int | None = None) -> None:
        self.bad, self.failures = bad, failures
        self.attempts: dict[tuple[str, int], int] = defaultdict(int)
        self.handled: list[tuple[str, int]] = []

    def __call__(self, events: list[ego.PersistedEvent]) -> None:
        for e in events:
            key = (e.persistence_id, e.sequence_number)
            if isinstance(e.event, AccountCredited) and e.event.amount in self.bad:
                self.attempts[key] += 1
                if self.failures is None or self.attempts[key] <= self.failures:
                    raise ValueError(f"cannot handle {key}")
        self.handled.extend((e.persistence_id, e.sequence_number) for e in events)


def run_policy(engine: ego.Engine, handler: Flaky, policy: ego.RecoveryPolicy, dead: list[Any]) -> None:
    engine.register_entity_type(AccountBehavior)
    engine.add_projection(
        "p",
        handler,
        batch_size=10,
        recovery=ego.Recovery(policy=policy, attempts=3, backoff=0.01),
        dead_letter=lambda *args: dead.append(args),
    )
    engine.send_command("a", OpenAccount(initial_balance=0))
    for amount in (1, 2, 13, 4):
        engine.send_command("a", Credit(amount=amount))


def test_policy_fail_stops_the_projection(engine: ego.Engine) -> None:
    handler, dead = Flaky({13}), []
    run_policy(engine, handler, ego.RecoveryPolicy.FAIL, dead)
    wait_until(lambda: not engine.is_projection_running("p"), what="the projection to stop")
    status, error = engine.projection_status("p")
    assert status == "failed" and "cannot handle ('a', 4)" in error
    assert dict(handler.attempts) == {("a", 4): 1}
    assert dead == []


def test_policy_retry_and_fail_retries_then_stops_or_recovers(engine: ego.Engine) -> None:
    handler, dead = Flaky({13}), []
    run_policy(engine, handler, ego.RecoveryPolicy.RETRY_AND_FAIL, dead)
    wait_until(lambda: not engine.is_projection_running("p"))
    assert handler.attempts[("a", 4)] == 3


def test_policy_retry_and_fail_gets_over_a_transient_failure(engine: ego.Engine) -> None:
    handler, dead = Flaky({13}, failures=2), []
    run_policy(engine, handler, ego.RecoveryPolicy.RETRY_AND_FAIL, dead)
    wait_until(lambda: ("a", 5) in handler.handled)
    assert engine.is_projection_running("p")
    assert handler.attempts[("a", 4)] == 3
    assert dead == []


@pytest.mark.parametrize("policy", [ego.RecoveryPolicy.SKIP, ego.RecoveryPolicy.RETRY_AND_SKIP])
def test_skipping_policies_dead_letter_the_failing_event_and_move_on(engine: ego.Engine, policy: ego.RecoveryPolicy) -> None:
    handler, dead = Flaky({13}), []
    run_policy(engine, handler, policy, dead)
    wait_until(lambda: ("a", 5) in handler.handled and len(dead) == 1)
    assert engine.is_projection_running("p")
    projection, pid, event, seq, error = dead[0]
    assert (projection, pid, seq) == ("p", "a", 4)
    assert event.event == AccountCredited(amount=13)
    assert isinstance(error, ValueError) and "cannot handle" in str(error)
    assert ("a", 4) not in handler.handled
    assert {("a", s) for s in (1, 2, 3, 5)} <= set(handler.handled)
    assert handler.attempts[("a", 4)] >= (3 if policy is ego.RecoveryPolicy.RETRY_AND_SKIP else 1)
    assert engine.projection_stats("p")["dead_letters"] == 1


def test_rebuild_replays_exactly_the_events_after_a_point_in_time(engine: ego.Engine) -> None:
    rec = Recorder()
    engine.register_entity_type(AccountBehavior)
    engine.add_projection("r", rec)
    (store,) = engine.stores
    for i in range(5):
        engine.send_command(f"a{i}", OpenAccount(initial_balance=i))
    # A point strictly between the two rounds' timestamps (a float's rounding, about a quarter
    # of a microsecond, stays inside the microsecond of margin).
    clock_past(max(store.replay_events(f"a{i}")[-1].timestamp for i in range(5)) + 1_000)
    point = time.time()
    clock_past(to_nanos(point) + 1_000)
    for i in range(5):
        engine.send_command(f"a{i}", Credit(amount=1))
    wait_until(lambda: rec.count() == 10)
    rec.seen.clear()
    engine.rebuild_projection("r", point)
    wait_until(lambda: rec.count() == 5)
    wait_until(lambda: caught_up(engine, "r"), what="the rebuild to catch up")
    assert sorted(rec.seen) == [(f"a{i}", 2) for i in range(5)]
    # Events written after the rebuild flow as usual.
    engine.send_command("a0", Credit(amount=1))
    wait_until(lambda: ("a0", 3) in rec.seen)
    engine.rebuild_projection("r")  # from the beginning
    wait_until(lambda: rec.count() == 6 + 11)
    wait_until(lambda: caught_up(engine, "r"), what="the rebuild to catch up")
    assert rec.count() == 17


def test_lag_rises_under_load_and_returns_to_zero(engine: ego.Engine) -> None:
    def slow(events: list[ego.PersistedEvent]) -> None:
        time.sleep(0.02)  # a slow read model

    engine.register_entity_type(Multi)
    engine.add_projection("slow", slow, batch_size=5)
    engine.send_command("m", Credit(amount=200))
    lag = engine.projection_lag("slow")
    assert sum(s.events_behind for s in lag.values()) > 0
    busy = [s for s in lag.values() if s.events_behind]
    assert busy and busy[0].head >= busy[0].offset
    wait_until(lambda: caught_up(engine, "slow"), timeout=20)
    assert all(s.time_behind == 0 for s in engine.projection_lag("slow").values())


def test_store_errors_are_retried_without_stopping_the_projection(engine: ego.Engine) -> None:
    class FlakyOffsets:
        """An offset store (written in Python) whose first writes fail."""

        def __init__(self) -> None:
            self.inner, self.failures = ego.MemoryStore(), 3

        def write_offsets(self, projection: str, offsets: list[tuple[int, int]]) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("offset store down")
            self.inner.write_offsets(projection, offsets)

        def read_offsets(self, projection: str) -> list[tuple[int, int]]:
            return self.inner.read_offsets(projection)

        def reset_offsets(self, projection: str) -> None:
            self.inner.reset_offsets(projection)

    rec = Recorder()
    offsets = FlakyOffsets()
    engine.register_entity_type(Multi)
    engine.add_projection("o", rec, offset_store=offsets)
    engine.send_command("m", Credit(amount=3))
    wait_until(lambda: offsets.inner.read_offsets("o") != [], timeout=15, what="the offset to be committed")
    assert engine.is_projection_running("o")
    assert engine.projection_stats("o")["store_retries"] >= 3


def test_transactional_read_model_with_the_offset(store_kind: str, make_store: Any) -> None:
    store = make_store()
    with ego.Engine(store=store) as engine:
        engine.register_entity_type(Multi)

        def totals(events: list[ego.PersistedEvent]) -> list[ego.Put]:
            current = int(store.read_model_get(b"total") or b"0")
            return [
                ego.Put(b"total", str(current + len(events)).encode()),
                ego.Put(f"last/{events[-1].persistence_id}".encode(), b"x"),
            ]

        engine.add_projection("t", totals, transactional=True, batch_size=4)
        engine.send_command("m", Credit(amount=9))
        wait_until(lambda: store.read_model_get(b"total") == b"9")
        assert store.read_model_scan(b"last/") == [(b"last/m", b"x")]


def test_sql_writes_need_a_postgres_offset_store(engine: ego.Engine) -> None:
    # A write the offset store cannot do is the handler's failure: under the default policy
    # (fail) the projection stops and says why; nothing is retried as a store outage.
    engine.register_entity_type(Multi)
    engine.add_projection("bad", lambda events: [ego.Sql("SELECT 1")], transactional=True)
    engine.send_command("m", Credit(amount=1))
    with pytest.raises(errors.ProjectionFailedError, match="commits key-value writes"):
        engine.wait_for_projection("bad", timeout=10)
    status, error = engine.projection_status("bad")
    assert status == "failed" and error is not None and "read-model writes were refused" in error
    stats = engine.projection_stats("bad")
    assert (stats["failures"], stats["store_retries"], stats["events"]) == (1, 0, 0)


def test_a_refused_write_goes_to_the_dead_letter_handler_under_a_skipping_policy(engine: ego.Engine) -> None:
    engine.register_entity_type(Multi)
    dead: list[tuple[str, int, BaseException]] = []

    def handler(events: list[ego.PersistedEvent]) -> list[Any]:
        # Event 2 asks for a write this (in-memory) offset store cannot do.
        return [ego.Sql("SELECT 1") if e.sequence_number == 2 else ego.Put(b"k", b"v") for e in events]

    engine.add_projection(
        "skip",
        handler,
        transactional=True,
        recovery=ego.Recovery(policy=ego.RecoveryPolicy.RETRY_AND_SKIP, attempts=2, backoff=0.001),
        dead_letter=lambda name, pid, event, seq, error: dead.append((pid, seq, error)),
    )
    engine.send_command("m", Credit(amount=3))  # Multi: one event per unit
    engine.wait_for_projection("skip", timeout=10)
    assert [(pid, seq) for pid, seq, _ in dead] == [("m", 2)]
    assert isinstance(dead[0][2], errors.ReadModelWriteError)
    assert engine.is_projection_running("skip")
    assert engine.projection_stats("skip")["dead_letters"] == 1
    (store,) = engine.stores
    assert store.read_model_get(b"k") == b"v"


class Upcaster:
    """DepositedV1 (cents as a string) -> Deposited (cents as an int, currency)."""

    def adapt(self, type_url: str, payload: bytes, sequence_number: int) -> Any:
        from egotest.versions_pb2 import Deposited, DepositedV1

        if type_url.endswith("/egotest.DepositedV1"):
            old = DepositedV1.FromString(payload)
            return Deposited(cents=int(old.cents), currency="EUR")
        return None


class WalletBehavior(ego.EventSourcedBehavior):
    """Today's code only knows Deposited (v2)."""

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Any:
        from egotest.versions_pb2 import Wallet

        return Wallet()

    def handle_command(self, command: Increment, state: Any) -> list[Any]:
        from egotest.versions_pb2 import Deposited

        return [Deposited(cents=command.by, currency="EUR")]

    def handle_event(self, event: Any, state: Any) -> Any:
        from egotest.versions_pb2 import Deposited

        assert isinstance(event, Deposited), f"unexpected {type(event).__name__}"
        state.cents += event.cents
        state.deposits += 1
        return state


def test_event_adapters_upcast_in_recovery_and_in_projections() -> None:
    from egotest.versions_pb2 import Deposited, DepositedV1, Wallet

    store = ego.MemoryStore()
    # History written by an older version of the application.
    old = []
    for seq, cents in enumerate(["100", "250"], start=1):
        e = ego.v1.Event(persistence_id="w", sequence_number=seq)
        e.event.Pack(DepositedV1(cents=cents))
        old.append(e)
    store.write_events(old)
    seen: list[Any] = []
    with ego.Engine(store=store, event_adapters=[Upcaster()]) as engine:
        engine.register_entity_type(WalletBehavior)
        assert engine.get_state("w") == (Wallet(cents=350, deposits=2), 2)
        assert engine.send_command("w", Increment(by=5)) == (Wallet(cents=355, deposits=3), 3)
        engine.add_projection("deposits", lambda events: seen.extend(e.event for e in events))
        wait_until(lambda: len(seen) == 3)
    # The old events were written in shard 0, the engine's in the shard of "w": two shard
    # tasks hand them over in either order.
    assert sorted(seen, key=lambda d: d.cents) == [
        Deposited(cents=5, currency="EUR"),
        Deposited(cents=100, currency="EUR"),
        Deposited(cents=250, currency="EUR"),
    ]
    # Without the adapter the old events cannot be applied.
    with ego.Engine(store=store) as engine:
        engine.register_entity_type(WalletBehavior)
        with pytest.raises(errors.RecoveryError):
            engine.get_state("w")


def test_subscribe_delivers_events_and_states_in_order(engine: ego.Engine) -> None:
    engine.register_entity_type(AccountBehavior, prefix="acc-")
    engine.register_entity_type(CounterBehavior, prefix="counter-")
    with engine.subscribe() as sub:
        engine.send_command("acc-1", OpenAccount(initial_balance=5))
        engine.send_command("acc-1", Credit(amount=2))
        engine.send_command("counter-1", Increment(by=3))
        items = [sub.get(timeout=2) for _ in range(3)]
    assert [(i.persistence_id, i.sequence_number) for i in items[:2]] == [("acc-1", 1), ("acc-1", 2)]
    assert items[0].event == AccountOpened(account_id="acc-1", balance=5)
    assert isinstance(items[2], ego.PersistedState) and items[2].state == Counter(value=3) and items[2].version == 1


def test_subscribe_async_and_overflow(engine: ego.Engine) -> None:
    engine.register_entity_type(Multi)

    async def main() -> list[int]:
        sub = engine.subscribe()
        got: list[int] = []

        async def consume() -> None:
            async for item in sub:
                got.append(item.sequence_number)
                if len(got) == 20:
                    return

        task = asyncio.ensure_future(consume())
        for _ in range(4):
            await engine.send_command_async("m", Credit(amount=5))
        await asyncio.wait_for(task, 5)
        sub.close()
        return got

    assert asyncio.run(main()) == list(range(1, 21))

    small = engine.subscribe(maxsize=3)
    engine.send_command("m", Credit(amount=5))  # five events for room for three
    with pytest.raises(errors.SubscriptionOverflowError):
        for _ in range(10):
            small.get(timeout=1)


def test_retention_deletes_covered_events_and_old_snapshots_but_not_unprojected_ones(engine: ego.Engine) -> None:
    (store,) = engine.stores
    policy = ego.RetentionPolicy(delete_events_on_snapshot=True, delete_snapshots_on_snapshot=True, events_retention_count=2)
    engine.register_entity_type(Multi, prefix="free-", snapshot_interval=10, retention=policy)
    engine.send_command("free-1", Credit(amount=25))  # snapshot at 25
    wait_until(lambda: [e.sequence_number for e in store.replay_events("free-1")] == list(range(24, 26)), what="retention")
    assert store.latest_snapshot("free-1").sequence_number == 25
    assert store.latest_snapshot("free-1", ego.SnapshotCriteria(max_sequence_number=24)) is None
    # Recovery from the snapshot still works.
    engine.stop_entity("free-1")
    assert engine.get_state("free-1")[1] == 25

    # A projection that has not handled the events holds them back.
    gate = threading.Event()

    def blocked(events: list[ego.PersistedEvent]) -> None:
        gate.wait()

    engine.register_entity_type(Multi, prefix="held-", snapshot_interval=10, retention=policy)
    # The control: the same policy, told to ignore projections.
    loose = dataclasses.replace(policy, ignore_projections=True)
    engine.register_entity_type(Multi, prefix="loose-", snapshot_interval=10, retention=loose)
    engine.add_projection("behind", blocked, batch_size=1000)
    snapshots = engine.stats()["snapshots"]
    try:
        engine.send_command("held-1", Credit(amount=25))
        wait_until(lambda: engine.stats()["snapshots"] == snapshots + 1, what="the snapshot of held-1")
        # Retention runs after each snapshot; the control's, which starts later, has deleted
        # its events although the projection is behind: held-1's ran too, and kept them.
        engine.send_command("loose-1", Credit(amount=25))
        wait_until(lambda: store.replay_events("loose-1")[0].sequence_number == 24, what="the control's retention")
        assert len(store.replay_events("held-1")) == 25
    finally:
        gate.set()
    wait_until(lambda: caught_up(engine, "behind"))
    engine.send_command("held-1", Credit(amount=10))  # next snapshot at 35
    # Now the events the projection handled (up to 25 at least, 33 at most) may go.
    wait_until(lambda: store.replay_events("held-1")[0].sequence_number > 25, what="retention after the projection")
    assert store.replay_events("held-1")[0].sequence_number <= 34


def test_durable_state_changes_and_bad_projection_arguments(engine: ego.Engine) -> None:
    with pytest.raises(errors.ConfigurationError):
        engine.add_projection("x", 42)
    with pytest.raises(errors.ConfigurationError):
        engine.add_projection("x", print, start="middle")
    engine.add_projection("x", print)
    with pytest.raises(errors.ConfigurationError, match="already running"):
        engine.add_projection("x", print)
    engine.remove_projection("x")
    assert not engine.is_projection_running("x")


def test_projection_on_a_rocksdb_store_survives_reopen(tmp_path: Path) -> None:
    rec = Recorder()
    with ego.RocksDBStore(tmp_path / "db") as store, ego.Engine(store=store) as engine:
        engine.register_entity_type(Multi)
        engine.add_projection("p", rec)
        engine.send_command("m", Credit(amount=4))
        wait_until(lambda: rec.count() == 4)
    with ego.RocksDBStore(tmp_path / "db") as store:
        assert store.read_offsets("p") and max(p for _, p in store.read_offsets("p")) == 4


def test_unknown_projection_names_are_validation_errors(engine: ego.Engine) -> None:
    calls = [
        lambda: engine.projection_lag("nope"),
        lambda: engine.projection_stats("nope"),
        lambda: engine.projection_status("nope"),
        lambda: engine.remove_projection("nope"),
        lambda: engine.rebuild_projection("nope"),
    ]
    for call in calls:
        with pytest.raises(ego.errors.ValidationError, match='no projection named "nope"'):
            call()
    assert not engine.is_projection_running("nope")
