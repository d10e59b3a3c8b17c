"""An entity never reports a revision it has not applied (RELIABILITY.md, test 13).

A store written in Python over ``ego.MemoryStore`` lets another writer append to the entity's
journal (or write its durable state) right before the engine's next call of one store method:
every read of a recovery, every write, every compare-and-set. After every reply the state must
be the fold of the journal up to the reported revision; a refused write is a
``ConcurrencyError`` and the entity reloads. Then two engines crediting one account on one
PostgreSQL database, with a balance check on every reply.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from test_durable_state import CounterBehavior

import ego
from ego.errors import ConcurrencyError
from ego.stores import SnapshotCriteria
from ego.v1 import DurableState, Event, Snapshot

from bank_pb2 import Account, AccountCredited, AccountDebited, AccountOpened, Credit, OpenAccount
from domain import AccountBehavior
from egotest.messages_pb2 import Counter, Increment

ES_POINTS = ("highest_sequence_number", "latest_snapshot", "replay_events", "write_events", "write_snapshot")
DS_POINTS = ("read_state", "write_state")


class Competing:
    """A Python store over a MemoryStore that lets another writer in right before its next
    call of the armed method, and keeps every event and state ever written (whatever retention
    deletes), to fold the journal independently of the engine."""

    def __init__(self) -> None:
        # The engine calls a store written in Python from a thread per role (events,
        # snapshots, states): this object is called from several threads at once.
        self.inner = ego.MemoryStore()
        self.lock = threading.Lock()
        self.armed: str | None = None
        self.fired: dict[str, int] = {}
        #: Per armed method, the other writer's writes completed (counted after the write).
        self.landed: dict[str, int] = {}
        self.log: dict[str, dict[int, Event]] = {}
        self.states: dict[str, dict[int, bytes]] = {}
        self.credit = 1000

    def arm(self, point: str) -> None:
        with self.lock:
            self.armed = point

    def _compete(self, point: str, pid: str) -> None:
        with self.lock:
            if self.armed != point:
                return
            self.armed = None
            self.fired[point] = self.fired.get(point, 0) + 1
            self.credit += 1
            amount = self.credit
        if point in DS_POINTS:
            current = self.inner.read_state(pid)
            version = current.version_number if current else 0
            value = Counter.FromString(current.resulting_state.value).value if current else 0
            state = DurableState(persistence_id=pid, version_number=version + 1, timestamp=time.time_ns())
            state.resulting_state.Pack(Counter(value=value + amount))
            self.write_state(state, version)
        else:
            head = self.inner.highest_sequence_number(pid)
            event = Event(persistence_id=pid, sequence_number=head + 1, timestamp=time.time_ns())
            event.event.Pack(AccountCredited(amount=amount))
            self.write_events([event])
        with self.lock:
            self.landed[point] = self.landed.get(point, 0) + 1

    # -- the store protocol: the engine's calls, each after the competitor's turn ----------------

    def write_events(self, events: Sequence[Event]) -> None:
        self._compete("write_events", events[0].persistence_id)
        # The write and its record in the log together: a reader of the journal (on another
        # thread) must never see an event the log does not have yet.
        with self.lock:
            self.inner.write_events(events)
            self.log.setdefault(events[0].persistence_id, {}).update((e.sequence_number, e) for e in events)

    def replay_events(self, pid: str, from_sequence_number: int, to_sequence_number: int, max_count: int) -> list[Event]:
        self._compete("replay_events", pid)
        return self.inner.replay_events(pid, from_sequence_number, to_sequence_number, max_count)

    def highest_sequence_number(self, pid: str) -> int:
        self._compete("highest_sequence_number", pid)
        return self.inner.highest_sequence_number(pid)

    def delete_events(self, pid: str, to_sequence_number: int) -> None:
        self.inner.delete_events(pid, to_sequence_number)

    def persistence_ids(self, page_size: int, after: str | None) -> tuple[list[str], str | None]:
        return self.inner.persistence_ids(page_size, after)

    def shard_events(self, shard: int, after_position: int, max_count: int) -> list[Event]:
        return self.inner.shard_events(shard, after_position, max_count)

    def shard_heads(self) -> list[tuple[int, int, int]]:
        return self.inner.shard_heads()

    def write_snapshot(self, snapshot: Snapshot) -> None:
        self._compete("write_snapshot", snapshot.persistence_id)
        self.inner.write_snapshot(snapshot)

    def latest_snapshot(self, pid: str, criteria: SnapshotCriteria) -> Snapshot | None:
        self._compete("latest_snapshot", pid)
        return self.inner.latest_snapshot(pid, criteria)

    def delete_snapshots(self, pid: str, criteria: SnapshotCriteria) -> None:
        self.inner.delete_snapshots(pid, criteria)

    def write_state(self, state: DurableState, expected_version: int) -> None:
        self._compete("write_state", state.persistence_id)
        with self.lock:
            self.inner.write_state(state, expected_version)
            self.states.setdefault(state.persistence_id, {})[state.version_number] = state.resulting_state.value

    def read_state(self, pid: str) -> DurableState | None:
        self._compete("read_state", pid)
        return self.inner.read_state(pid)

    def delete_state(self, pid: str) -> None:
        self.inner.delete_state(pid)

    # -- the invariant --------------------------------------------------------------------------

    def check_event_sourced(self, pid: str, state: Account, revision: int) -> None:
        with self.lock:
            log = dict(self.log.get(pid, {}))
        assert all(seq in log for seq in range(1, revision + 1)), f"revision {revision} is ahead of the journal"
        behavior = AccountBehavior(pid)
        folded = behavior.initial_state()
        for e in (log[seq] for seq in range(1, revision + 1)):
            (cls,) = [c for c in (AccountOpened, AccountCredited, AccountDebited) if e.event.Is(c.DESCRIPTOR)]
            message = cls()
            e.event.Unpack(message)
            folded = behavior.handle_event(message, folded)
        assert state == folded, f"revision {revision}: state {state} is not the fold of the journal {folded}"

    def check_durable(self, pid: str, state: Counter, version: int) -> None:
        """With batching only the last state of a batch is written: the versions in between
        are the engine's own increments of 1 on the latest stored version below them."""
        with self.lock:
            stored = dict(self.states.get(pid, {}))
        below = [v for v in stored if v <= version]
        base = max(below, default=0)
        value = Counter.FromString(stored[base]).value if base else 0
        expected = Counter(value=value + (version - base))
        assert state == expected, f"version {version}: state {state} is not the stored history's {expected}"


def _send_all(engine: ego.Engine, pid: str, commands: list[Any]) -> list[Any]:
    """Sends the commands concurrently (they batch when batching is on); outcomes in order."""

    async def go() -> list[Any]:
        futures = [engine.send_command_async(pid, c) for c in commands]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    return asyncio.run(go())


def _cases() -> list[Any]:
    cases = []
    for batching in (False, True):
        for snapshots in (False, True):
            for point in ES_POINTS:
                if point in ("latest_snapshot", "write_snapshot") and not snapshots:
                    continue
                cases.append(
                    pytest.param("event_sourced", batching, snapshots, point, id=f"es-{point}-b{int(batching)}-s{int(snapshots)}")
                )
        for point in DS_POINTS:
            cases.append(pytest.param("durable", batching, False, point, id=f"ds-{point}-b{int(batching)}"))
    return cases


@pytest.mark.parametrize(("kind", "batching", "snapshots", "point"), _cases())
def test_a_competing_write_at_every_store_call_never_puts_the_revision_ahead_of_the_state(
    kind: str, batching: bool, snapshots: bool, point: str
) -> None:
    store = Competing()
    pid = "race-1"
    durable = kind == "durable"
    options: dict[str, Any] = {"batch_threshold": 3 if batching else 0, "batch_flush_window": 0.002}
    if snapshots:
        options["snapshot_interval"] = 2
        options["retention"] = ego.RetentionPolicy(delete_events_on_snapshot=True, delete_snapshots_on_snapshot=True)
    refused = 0

    def check(outcome: Any) -> bool:
        if isinstance(outcome, ConcurrencyError):
            return False
        if isinstance(outcome, BaseException):
            raise outcome
        state, revision = outcome
        if durable:
            store.check_durable(pid, state, revision)
        else:
            store.check_event_sourced(pid, state, revision)
        return True

    with ego.Engine("compete", store=store) as engine:
        engine.register_entity_type(CounterBehavior if durable else AccountBehavior, **options)
        command: Any = Increment(by=1) if durable else Credit(amount=1)
        check(engine.send_command(pid, Increment(by=1) if durable else OpenAccount(initial_balance=0)))
        for round_ in range(12):
            store.arm(point)
            if round_ % 2 == 0:
                engine.stop_entity(pid)  # the next message recovers the entity
            outcomes = _send_all(engine, pid, [command] * (4 if batching else 1))
            refused += sum(not check(o) for o in outcomes)
            check(engine.get_state(pid))
            # A refused write made the entity reload: the next command is accepted.
            for _ in range(3):
                try:
                    assert check(engine.send_command(pid, command))
                    break
                except ConcurrencyError:
                    refused += 1
            else:
                pytest.fail("the entity kept failing after a refused write")
    assert store.fired.get(point, 0) >= 6, f"the competing writer got in at {point} only {store.fired.get(point, 0)} times"
    if point in ("write_events", "write_state"):
        assert refused >= 12  # every armed write lost its race


def test_the_issue_case_an_event_appended_while_recovery_reads_the_head_is_folded() -> None:
    # Events 1-3 of race-1 are stored; when recovery asks for the highest sequence number,
    # another writer appends event 4 first, then the store answers 4.
    store = Competing()
    for seq in (1, 2, 3):
        event = Event(persistence_id="race-1", sequence_number=seq, timestamp=time.time_ns())
        event.event.Pack(AccountCredited(amount=1))
        store.write_events([event])
    store.credit = 0  # the competitor credits 1
    store.arm("highest_sequence_number")
    with ego.Engine("issue", store=store) as engine:
        engine.register_entity_type(AccountBehavior)
        state, revision = engine.get_state("race-1")
        assert (state.balance, revision) == (4, 4)
        assert store.fired == {"highest_sequence_number": 1}


def test_two_engines_crediting_one_account_on_postgres_never_reply_a_state_missing_an_event(pg_url: str) -> None:
    prefix = f"race{uuid.uuid4().hex[:8]}_"
    stores = [ego.PostgresStore(pg_url, table_prefix=prefix) for _ in range(2)]
    engines = [ego.Engine(f"node-{i}", store=s) for i, s in enumerate(stores)]
    bad: list[tuple[int, int, int]] = []
    accepted = [0, 0]
    try:
        for e in engines:
            e.start()
            e.register_entity_type(AccountBehavior)
        engines[0].send_command("acct", OpenAccount(initial_balance=0))

        def credit(i: int) -> None:
            engine = engines[i]
            while accepted[i] < 80:
                try:
                    state, revision = engine.send_command("acct", Credit(amount=1))
                except ConcurrencyError:
                    continue
                accepted[i] += 1
                # Opened at revision 1 with 0, then one credit of 1 per revision.
                if state.balance != revision - 1:
                    bad.append((i, revision, state.balance))
                state, revision = engine.get_state("acct")
                if state.balance != revision - 1:
                    bad.append((i, revision, state.balance))

        threads = [threading.Thread(target=credit, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert bad == []
        journal = stores[0].replay_events("acct")
        assert [e.sequence_number for e in journal] == list(range(1, 162))
    finally:
        for e in engines:
            e.stop()
        stores[0].drop_tables()
        for s in stores:
            s.close()
