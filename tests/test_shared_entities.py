"""Several processes serving one entity on one PostgreSQL database (issue 18, item 1).

The scenario: a product (a bank account here: the balance is the stock on hand) is opened and
restocked to 5 (revision 2) through engine B; engine A restocks 5 more (revision 3). A
reservation of 8 on B must see the 10 on hand.

- By default each entity id is served by one process. When another process wrote anyway, the
  next write of B is refused by the journal: the command fails with ``ConcurrencyError``, the
  engine logs a warning that names the rule, and the entity reloads, so the command after it
  sees A's events.
- Declared ``shared=True``, B reads the journal head before each command and each
  ``get_state`` and folds what it lacks: its ``get_state`` says revision 3 and the reservation
  is accepted. One store read per command when nobody else wrote.

Engine A is a second engine in this process, or a real second process
(``shared_child.py``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_competing_writers import ES_POINTS, Competing
from test_durable_state import CounterBehavior
from waiting import wait_until

import ego
from ego.errors import ConcurrencyError, ConfigurationError
from ego.v1 import DurableState

from bank_pb2 import Credit, Debit, OpenAccount
from domain import AccountBehavior
from egotest.messages_pb2 import Counter, Increment

CHILD = Path(__file__).resolve().parent / "shared_child.py"


class Collecting:
    """A logger that keeps every record."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def _keep(self, level: str, msg: str) -> None:
        self.records.append((level, msg))

    def debug(self, msg: str, **fields: Any) -> None:
        self._keep("debug", msg)

    def info(self, msg: str, **fields: Any) -> None:
        self._keep("info", msg)

    def warning(self, msg: str, **fields: Any) -> None:
        self._keep("warning", msg)

    def error(self, msg: str, **fields: Any) -> None:
        self._keep("error", msg)

    def warnings(self) -> list[str]:
        return [m for level, m in self.records if level == "warning"]


@pytest.fixture
def prefix(pg_url: str) -> Iterator[str]:
    """A fresh table prefix on the test database, dropped afterwards."""
    p = f"sh{uuid.uuid4().hex[:8]}_"
    yield p
    cleanup = ego.PostgresStore(pg_url, table_prefix=p)
    cleanup.drop_tables()
    cleanup.close()


def restock_in_another_process(pg_url: str, prefix: str, entity_id: str, amount: int, *, shared: bool = False) -> tuple[int, int]:
    """Engine A in a child process credits ``amount``; returns its (balance, revision)."""
    out = subprocess.run(
        [sys.executable, str(CHILD), pg_url, prefix, entity_id, str(amount), *(["shared"] if shared else [])],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    balance, revision = out.split()[-2:]
    return int(balance), int(revision)


class TwoEngines:
    """Engines A and B on one PostgreSQL database (tables under ``prefix``)."""

    def __init__(self, pg_url: str, prefix: str, *, shared: bool = False) -> None:
        self.logger_b = Collecting()
        self.stores = [ego.PostgresStore(pg_url, table_prefix=prefix) for _ in range(2)]
        self.a = ego.Engine("engine-a", store=self.stores[0])
        self.b = ego.Engine("engine-b", store=self.stores[1], logger=self.logger_b)
        for engine in (self.a, self.b):
            engine.start()
            engine.register_entity_type(AccountBehavior, prefix="product-", shared=shared)
            engine.register_entity_type(CounterBehavior, prefix="cart-", shared=shared)

    def close(self) -> None:
        for engine in (self.a, self.b):
            engine.stop()
        for s in self.stores:
            s.close()


@pytest.fixture
def default_mode(pg_url: str, prefix: str) -> Iterator[TwoEngines]:
    engines = TwoEngines(pg_url, prefix)
    yield engines
    engines.close()


def given_b_served_revision_2(b: ego.Engine) -> None:
    b.send_command("product-1", OpenAccount(initial_balance=0))
    state, revision = b.send_command("product-1", Credit(amount=5))
    assert (state.balance, revision) == (5, 2)


def then_b_refuses_its_stale_write_warns_and_reloads(engines: TwoEngines) -> None:
    with pytest.raises(ConcurrencyError) as refused:
        engines.b.send_command("product-1", Credit(amount=1))
    assert refused.value.persistence_id == "product-1"
    assert (refused.value.expected, refused.value.actual) == (2, 3)
    warning = wait_until(lambda: [w for w in engines.logger_b.warnings() if "product-1" in w], what="the warning")[0]
    assert "one process" in warning
    assert "shared=True" in warning
    assert "docs/cluster.md" in warning
    # The entity reloaded: the next command sees A's restock (10 on hand) and is accepted.
    state, revision = engines.b.send_command("product-1", Debit(amount=8))
    assert (state.balance, revision) == (2, 4)
    assert engines.b.get_state("product-1")[1] == 4


def test_default_mode_a_write_refused_because_another_engine_wrote_warns_and_the_next_command_sees_its_events(
    default_mode: TwoEngines,
) -> None:
    given_b_served_revision_2(default_mode.b)
    state, revision = default_mode.a.send_command("product-1", Credit(amount=5))
    assert (state.balance, revision) == (10, 3)
    then_b_refuses_its_stale_write_warns_and_reloads(default_mode)


def test_default_mode_the_same_with_the_other_writer_in_another_process(
    default_mode: TwoEngines, pg_url: str, prefix: str
) -> None:
    given_b_served_revision_2(default_mode.b)
    assert restock_in_another_process(pg_url, prefix, "product-1", 5) == (10, 3)
    then_b_refuses_its_stale_write_warns_and_reloads(default_mode)


def test_default_mode_a_single_writer_never_warns(default_mode: TwoEngines) -> None:
    given_b_served_revision_2(default_mode.b)
    default_mode.b.send_command("product-1", Debit(amount=5))
    default_mode.b.stop()
    assert default_mode.logger_b.warnings() == []


def test_default_mode_many_refusals_log_one_warning_not_one_each(default_mode: TwoEngines) -> None:
    """Two processes fighting over many entities would log a long warning per command: the
    engine logs the first at once and then at most one every 10 s (counting the rest)."""
    ids = [f"product-{n}" for n in range(20)]
    for entity_id in ids:
        default_mode.b.send_command(entity_id, OpenAccount(initial_balance=0))
        default_mode.a.send_command(entity_id, Credit(amount=5))
    for entity_id in ids:
        with pytest.raises(ConcurrencyError):
            default_mode.b.send_command(entity_id, Credit(amount=1))
        # Each entity reloaded: its next command is accepted.
        assert default_mode.b.send_command(entity_id, Credit(amount=1))[1] == 3
    default_mode.b.stop()  # flushes the log
    warnings = [w for w in default_mode.logger_b.warnings() if "another process wrote" in w]
    assert len(warnings) == 1
    assert "product-0" in warnings[0]
    assert "more writes" not in warnings[0]


# -- shared=True ---------------------------------------------------------------------------------


@pytest.fixture
def shared_mode(pg_url: str, prefix: str) -> Iterator[TwoEngines]:
    engines = TwoEngines(pg_url, prefix, shared=True)
    yield engines
    engines.close()


def then_b_sees_revision_3_and_accepts_the_reservation(engines: TwoEngines) -> None:
    state, revision = engines.b.get_state("product-1")
    assert (state.balance, revision) == (10, 3)
    state, revision = engines.b.send_command("product-1", Debit(amount=8))
    assert (state.balance, revision) == (2, 4)
    # And A, in turn, sees B's reservation.
    state, revision = engines.a.get_state("product-1")
    assert (state.balance, revision) == (2, 4)
    assert engines.logger_b.warnings() == []


def test_shared_b_sees_what_engine_a_wrote_before_get_state_and_before_its_next_command(shared_mode: TwoEngines) -> None:
    given_b_served_revision_2(shared_mode.b)
    state, revision = shared_mode.a.send_command("product-1", Credit(amount=5))
    assert (state.balance, revision) == (10, 3)
    then_b_sees_revision_3_and_accepts_the_reservation(shared_mode)


def test_shared_the_same_with_engine_a_in_another_process(shared_mode: TwoEngines, pg_url: str, prefix: str) -> None:
    given_b_served_revision_2(shared_mode.b)
    assert restock_in_another_process(pg_url, prefix, "product-1", 5, shared=True) == (10, 3)
    then_b_sees_revision_3_and_accepts_the_reservation(shared_mode)


def test_shared_a_command_sent_with_send_command_async_catches_up_too(shared_mode: TwoEngines) -> None:
    given_b_served_revision_2(shared_mode.b)
    shared_mode.a.send_command("product-1", Credit(amount=5))

    async def reserve() -> Any:
        return await shared_mode.b.send_command_async("product-1", Debit(amount=8))

    state, revision = asyncio.run(reserve())
    assert (state.balance, revision) == (2, 4)


def test_shared_durable_state_b_reads_the_state_a_stored(shared_mode: TwoEngines) -> None:
    assert shared_mode.b.send_command("cart-1", Increment(by=2)) == (Counter(value=2), 1)
    assert shared_mode.a.send_command("cart-1", Increment(by=3)) == (Counter(value=5), 2)
    assert shared_mode.b.get_state("cart-1") == (Counter(value=5), 2)
    assert shared_mode.b.send_command("cart-1", Increment(by=1)) == (Counter(value=6), 3)
    assert shared_mode.a.get_state("cart-1") == (Counter(value=6), 3)


def test_shared_engines_writing_at_once_lose_races_with_concurrency_error_and_never_reply_a_stale_state(
    shared_mode: TwoEngines,
) -> None:
    shared_mode.a.send_command("product-1", OpenAccount(initial_balance=0))
    accepted = [0, 0]
    bad: list[tuple[int, int, int]] = []

    def credit(i: int, engine: ego.Engine) -> None:
        while accepted[i] < 40:
            try:
                state, revision = engine.send_command("product-1", Credit(amount=1))
            except ConcurrencyError:
                continue  # lost a race with the other engine: nothing was written
            accepted[i] += 1
            if state.balance != revision - 1:
                bad.append((i, revision, state.balance))

    threads = [threading.Thread(target=credit, args=(i, e)) for i, e in enumerate((shared_mode.a, shared_mode.b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []
    assert shared_mode.a.get_state("product-1")[1] == shared_mode.b.get_state("product-1")[1] == 81
    assert shared_mode.logger_b.warnings() == []


class CountingReads(Competing):
    """The competing store, counting the engine's reads and writes by method."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def _compete(self, point: str, pid: str) -> None:
        with self.lock:
            self.calls[point] = self.calls.get(point, 0) + 1
        super()._compete(point, pid)


def test_shared_costs_one_read_of_the_head_per_command_when_nobody_else_wrote() -> None:
    store = CountingReads()
    with ego.Engine("counted", store=store) as engine:
        engine.register_entity_type(AccountBehavior, shared=True)
        engine.send_command("acct", OpenAccount(initial_balance=0))
        for _ in range(9):
            engine.send_command("acct", Credit(amount=1))
        engine.get_state("acct")
    # The activation's recovery reads the head (and serves the first command on that read);
    # then one read before each further command and before the query.
    assert store.calls == {"highest_sequence_number": 1 + 9 + 1, "write_events": 10}


def test_default_mode_reads_nothing_per_command() -> None:
    store = CountingReads()
    with ego.Engine("counted", store=store) as engine:
        engine.register_entity_type(AccountBehavior)
        engine.send_command("acct", OpenAccount(initial_balance=0))
        for _ in range(9):
            engine.send_command("acct", Credit(amount=1))
        engine.get_state("acct")
    assert store.calls == {"highest_sequence_number": 1, "write_events": 10}


@pytest.mark.parametrize("point", ES_POINTS)
def test_shared_another_writer_at_every_store_call_is_folded_before_the_next_reply(point: str) -> None:
    # Before every command the other writer is armed to append a credit right before the
    # armed store call; every reply is the fold of the journal up to its revision, and a
    # command is refused only when the other writer got in between the head read and the
    # write.
    store = Competing()
    options: dict[str, Any] = {}
    if point in ("latest_snapshot", "write_snapshot"):
        options = {"snapshot_interval": 2, "retention": ego.RetentionPolicy(delete_events_on_snapshot=True)}
    with ego.Engine("shared", store=store) as engine:
        engine.register_entity_type(AccountBehavior, shared=True, **options)
        engine.send_command("race-1", OpenAccount(initial_balance=0))
        for _ in range(12):
            landed = store.landed.get(point, 0)
            store.arm(point)
            try:
                state, revision = engine.send_command("race-1", Credit(amount=1))
            except ConcurrencyError:
                # The other writer got in between this command's head read and its write: at
                # its write, or at a snapshot write of an earlier command (a snapshot is
                # written after its command's reply, so it can overlap the next command).
                assert point == "write_events" or store.landed.get(point, 0) > landed, point
            else:
                store.check_event_sourced("race-1", state, revision)
            # get_state sees every write committed before it was called (the other writer may
            # append later still: during a snapshot write, which runs after the reply).
            before = store.inner.highest_sequence_number("race-1")
            state, revision = engine.get_state("race-1")
            store.check_event_sourced("race-1", state, revision)
            assert revision >= before


def test_shared_refuses_batching() -> None:
    with ego.Engine("refused") as engine, pytest.raises(ConfigurationError, match="batch_threshold"):
        engine.register_entity_type(AccountBehavior, shared=True, batch_threshold=10)


def test_shared_spawned_entities_and_durable_state_entities_take_the_option_too() -> None:
    journal = ego.MemoryStore()
    with ego.Engine("a", store=journal) as a, ego.Engine("b", store=journal) as b:
        for engine in (a, b):
            engine.entity(AccountBehavior("acct"), shared=True)
            engine.durable_state_entity(CounterBehavior("cart"), shared=True)
        b.send_command("acct", OpenAccount(initial_balance=3))
        a.send_command("acct", Credit(amount=4))
        assert (b.get_state("acct")[0].balance, b.get_state("acct")[1]) == (7, 2)
        a.send_command("cart", Increment(by=2))
        assert b.send_command("cart", Increment(by=1)) == (Counter(value=3), 2)
    assert ego.EntityOptions(shared=True).shared
    assert not ego.EntityOptions().shared


class CountingStates:
    """A state store written in Python over a MemoryStore that counts whole-state reads and
    answers ``state_version`` from the version alone."""

    def __init__(self) -> None:
        self.inner = ego.MemoryStore()
        self.reads = 0
        self.version_reads = 0

    def write_state(self, state: DurableState, expected_version: int) -> None:
        self.inner.write_state(state, expected_version)

    def read_state(self, persistence_id: str) -> DurableState | None:
        self.reads += 1
        return self.inner.read_state(persistence_id)

    def state_version(self, persistence_id: str) -> int:
        self.version_reads += 1
        return self.inner.state_version(persistence_id)

    def delete_state(self, persistence_id: str) -> None:
        self.inner.delete_state(persistence_id)


def written_by_another_process(store: CountingStates, persistence_id: str, value: int) -> None:
    current = store.inner.read_state(persistence_id)
    version = current.version_number if current else 0
    state = DurableState(persistence_id=persistence_id, version_number=version + 1, timestamp=time.time_ns())
    state.resulting_state.Pack(Counter(value=value))
    store.inner.write_state(state, version)


def test_shared_durable_state_reads_the_whole_state_only_when_another_writer_moved_its_version() -> None:
    store = CountingStates()
    with ego.Engine("shared-versions", store=ego.MemoryStore(), state_store=store) as engine:
        engine.register_entity_type(CounterBehavior, prefix="cart-", shared=True)
        assert engine.send_command("cart-1", Increment(by=1)) == (Counter(value=1), 1)
        reads = store.reads
        for i in range(2, 12):
            assert engine.send_command("cart-1", Increment(by=1)) == (Counter(value=i), i)
        assert engine.get_state("cart-1") == (Counter(value=11), 11)
        assert store.reads == reads  # nobody else wrote: the version told the entity so
        assert store.version_reads >= 11
        written_by_another_process(store, "cart-1", 100)
        assert engine.send_command("cart-1", Increment(by=1)) == (Counter(value=101), 13)
        assert store.reads == reads + 1
        store.inner.delete_state("cart-1")
        assert engine.get_state("cart-1") == (Counter(), 0)
