"""Sagas: a money transfer (debit, credit, compensation when the credit is rejected) on every
store; a saga's status, progress and deadlines in its own journal (after a restart it goes on,
a deadline that passed while the process was down fires once, a late timer does nothing); a
rejected compensation reports failed; events written before a saga started are seen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from google.protobuf.message import Message
from waiting import wait_until

import ego
from ego.v1 import Event
from ego.v1.sagas_pb2 import SagaDeadlineFired, SagaStarted, SagaStepsPlanned

from bank_pb2 import Account, Credit, Debit, OpenAccount
from domain import AccountBehavior
from transfer_saga import DeskBehavior, TransferSaga
from transfers_pb2 import RequestTransfer, Transfer, TransferRequested

Factory = Callable[[], Any]
FINAL = (ego.SagaStatus.COMPLETED, ego.SagaStatus.COMPENSATED, ego.SagaStatus.FAILED)


def wait_for_saga(engine: ego.Engine, saga_id: str, timeout: float = 20.0) -> ego.SagaInfo:
    """Polls (with a deadline) until the saga is over."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = engine.saga_status(saga_id)
        except ego.errors.SagaNotFoundError:
            info = None
        if info is not None and info.status in FINAL:
            return info
        assert time.monotonic() < deadline, f"saga {saga_id} is not over: {info}"
        time.sleep(0.01)


def open_engine(store: Any, saga: type[ego.SagaBehavior[Any]] = TransferSaga) -> ego.Engine:
    engine = ego.Engine("sagas", store=store)
    engine.start()
    engine.register_entity_type(AccountBehavior, prefix="account-")
    engine.register_entity_type(DeskBehavior, prefix="request-")
    engine.register_saga_type(saga)
    return engine


def close(engine: ego.Engine, store: Any) -> None:
    engine.stop()
    if not isinstance(store, ego.MemoryStore):
        store.close()


def balance(engine: ego.Engine, account: str) -> int:
    state, _ = engine.get_state(account)
    return int(state.balance)


def saga_journal(store: Any, saga_id: str) -> list[Message]:
    from ego.sagas.records import unpack

    return [unpack(e.event) for e in store.replay_events(f"ego.saga:{saga_id}")]


def request(engine: ego.Engine, transfer_id: str, source: str, target: str, amount: int) -> None:
    engine.send_command(
        f"request-{transfer_id}",
        RequestTransfer(transfer_id=transfer_id, source=source, target=target, amount=amount),
    )


def test_a_transfer_completes_and_a_rejected_credit_is_compensated(reopenable: Factory) -> None:
    store = reopenable()
    engine = open_engine(store)
    engine.send_command("account-a", OpenAccount(initial_balance=100))
    engine.send_command("account-b", OpenAccount(initial_balance=0))

    request(engine, "t1", "account-a", "account-b", 30)
    info = wait_for_saga(engine, "t1")
    assert info.status is ego.SagaStatus.COMPLETED and info.reason is None
    assert info.state == Transfer(
        transfer_id="t1", source="account-a", target="account-b", amount=30, debited=True, credited=True
    )
    assert (balance(engine, "account-a"), balance(engine, "account-b")) == (70, 30)

    # The credit is rejected (the target was never opened): the debit is undone.
    request(engine, "t2", "account-a", "account-nobody", 10)
    info = wait_for_saga(engine, "t2")
    assert info.status is ego.SagaStatus.COMPENSATED
    assert info.state.debited and not info.state.credited
    assert info.reason == "Credit to 'account-nobody' was rejected: AccountNotOpen: account-nobody"
    assert balance(engine, "account-a") == 70
    # Debited, then credited back: two events, each under its step's idempotency key.
    events = store.replay_events("account-a")
    keys = [e.idempotency_key for e in events[1:]]
    assert keys == ["ego.saga:t1#0", "ego.saga:t2#0", "ego.saga:t2#2"]

    # The debit is rejected (insufficient funds): nothing to undo.
    request(engine, "t3", "account-b", "account-a", 1000)
    info = wait_for_saga(engine, "t3")
    assert info.status is ego.SagaStatus.COMPENSATED and not info.state.debited
    assert info.reason == "Debit to 'account-b' was rejected: InsufficientFunds: balance 30 < 1000"
    assert (balance(engine, "account-a"), balance(engine, "account-b")) == (70, 30)
    close(engine, store)

    # After a restart the statuses are read back from the sagas' journals.
    store = reopenable()
    engine = open_engine(store)
    assert [engine.saga_status(t).status for t in ("t1", "t2", "t3")] == [
        ego.SagaStatus.COMPLETED,
        ego.SagaStatus.COMPENSATED,
        ego.SagaStatus.COMPENSATED,
    ]
    assert (balance(engine, "account-a"), balance(engine, "account-b")) == (70, 30)
    close(engine, store)


class Waiting(ego.SagaBehavior[Transfer]):
    """Debits its source at once, then waits for an event that never comes."""

    def __init__(self, saga_id: str, source: str = "", amount: int = 0) -> None:
        self.saga_id, self.source, self.amount = saga_id, source, amount

    def id(self) -> str:
        return self.saga_id

    @classmethod
    def correlate(cls, event: Message, persistence_id: str) -> str | None:
        return event.transfer_id if isinstance(event, TransferRequested) else None

    def initial_state(self) -> Transfer:
        return Transfer(transfer_id=self.saga_id, source=self.source, amount=self.amount)

    def handle_event(self, event: Message, state: Transfer) -> ego.SagaAction:
        assert isinstance(event, TransferRequested)
        debit = ego.SagaCommand(state.source, Debit(amount=state.amount), undo=Credit(amount=state.amount))
        return ego.SagaAction(commands=[debit])

    def handle_result(self, entity_id: str, result_state: Message, state: Transfer) -> ego.SagaAction | None:
        return None  # waits: only the timeout ends it


def a_waiting_saga_debits(engine: ego.Engine, saga_id: str, timeout: float) -> None:
    """Starts a :class:`Waiting` saga that debits 25 from account-a (which holds 100), sends
    the event it reacts to, and waits for the debit."""
    engine.saga(Waiting(saga_id, "account-a", 25), timeout=timeout)
    request(engine, saga_id, "account-x", "account-y", 1)
    wait_until(lambda: balance(engine, "account-a") == 75, timeout=10, what=f"saga {saga_id}'s debit")


def test_a_deadline_that_passed_while_the_process_was_down_fires_once_after_restart(reopenable: Factory) -> None:
    store = reopenable()
    engine = open_engine(store, Waiting)
    engine.send_command("account-a", OpenAccount(initial_balance=100))
    a_waiting_saga_debits(engine, "w1", timeout=0.5)
    due = next(e for e in saga_journal(store, "w1") if type(e).__name__ == "SagaDeadlineSet").deadline.due
    close(engine, store)

    while time.time_ns() <= due:  # the process is down while the deadline falls due
        time.sleep(0.05)
    store = reopenable()
    engine = open_engine(store, Waiting)
    info = wait_for_saga(engine, "w1")
    assert info.status is ego.SagaStatus.COMPENSATED and info.reason == "timed out"
    assert balance(engine, "account-a") == 100  # the debit was undone
    close(engine, store)

    store = reopenable()
    engine = open_engine(store, Waiting)
    assert engine.saga_status("w1").status is ego.SagaStatus.COMPENSATED
    journal = saga_journal(store, "w1")
    assert sum(isinstance(e, SagaDeadlineFired) for e in journal) == 1
    assert balance(engine, "account-a") == 100
    close(engine, store)


def test_a_saga_whose_type_is_registered_later_waits_for_it_then_goes_on(reopenable: Factory) -> None:
    # Given a running saga whose deadline falls due while the process is down
    store = reopenable()
    engine = open_engine(store, Waiting)
    engine.send_command("account-a", OpenAccount(initial_balance=100))
    a_waiting_saga_debits(engine, "w2", timeout=0.3)
    close(engine, store)
    time.sleep(0.4)
    # When the engine restarts with another saga type first (the sagas are resumed then)
    store = reopenable()
    engine = open_engine(store, TransferSaga)
    time.sleep(0.5)
    # Then the saga of the unknown type waits, untouched, for its type
    assert engine.saga_status("w2").status is ego.SagaStatus.RUNNING
    assert balance(engine, "account-a") == 75
    # And registering its type wakes it: its deadline fires and the debit is undone
    engine.register_saga_type(Waiting)
    info = wait_for_saga(engine, "w2")
    assert info.status is ego.SagaStatus.COMPENSATED and info.reason == "timed out"
    assert balance(engine, "account-a") == 100
    close(engine, store)


def test_a_restart_leaves_finished_sagas_alone(reopenable: Factory) -> None:
    # Given a saga that is over and a running one whose deadline falls due while the process is down
    store = reopenable()
    engine = open_engine(store, Waiting)
    engine.send_command("account-a", OpenAccount(initial_balance=100))
    engine.saga(Waiting("over", "account-a", 5), timeout=0.1)
    assert wait_for_saga(engine, "over").status is ego.SagaStatus.COMPENSATED
    assert type(saga_journal(store, "over")[-1]).__name__ == "SagaEnded"
    a_waiting_saga_debits(engine, "w3", timeout=0.5)
    close(engine, store)
    time.sleep(0.6)
    # When the engine restarts
    store = reopenable()
    engine = open_engine(store, Waiting)
    # Then the running saga goes on (its deadline fires) and the one that is over is not recovered
    info = wait_for_saga(engine, "w3")
    assert info.status is ego.SagaStatus.COMPENSATED and info.reason == "timed out"
    assert not engine.is_live("ego.saga:over")
    assert engine.saga_status("over").status is ego.SagaStatus.COMPENSATED
    close(engine, store)


class Listed:
    """An ``ego.MemoryStore`` behind a store written in Python that keeps every id
    ``persistence_ids`` listed."""

    def __init__(self) -> None:
        self.inner = ego.MemoryStore()
        self.listed: list[str] = []

    def persistence_ids(self, page_size: int, after: str | None) -> tuple[list[str], str | None]:
        ids, after = self.inner.persistence_ids(page_size, after)
        self.listed.extend(ids)
        return ids, after

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def other_entities(store: ego.MemoryStore, prefix: str, count: int) -> None:
    for i in range(count):
        event = Event(persistence_id=f"{prefix}{i}", sequence_number=1, timestamp=time.time_ns())
        event.event.Pack(Credit(amount=1))
        store.write_events([event])


def test_a_restart_lists_only_the_sagas_not_every_entity_of_the_store() -> None:
    # Given a running saga whose deadline falls due while the process is down, and many other
    # entities whose ids sort before and after the sagas'
    store = Listed()
    engine = open_engine(store, Waiting)
    engine.send_command("account-a", OpenAccount(initial_balance=100))
    a_waiting_saga_debits(engine, "w4", timeout=0.5)
    engine.stop()
    other_entities(store.inner, "aa-", 2500)
    other_entities(store.inner, "zz-", 2500)
    time.sleep(0.6)
    store.listed.clear()
    # When the engine restarts
    engine = open_engine(store, Waiting)
    # Then the saga goes on, and the listing read the sagas' ids and at most one page after them
    info = wait_for_saga(engine, "w4")
    assert info.status is ego.SagaStatus.COMPENSATED and info.reason == "timed out"
    assert "ego.saga:w4" in store.listed
    assert not [i for i in store.listed if i.startswith(("aa-", "account-"))]
    assert len([i for i in store.listed if not i.startswith("ego.saga:")]) <= 1000
    engine.stop()


def test_a_timer_that_falls_due_after_the_saga_ended_does_nothing(engine: ego.Engine) -> None:
    engine.register_entity_type(AccountBehavior, prefix="account-")
    engine.register_entity_type(DeskBehavior, prefix="request-")
    engine.send_command("account-a", OpenAccount(initial_balance=10))
    engine.send_command("account-b", OpenAccount(initial_balance=0))
    engine.register_saga_type(TransferSaga, timeout=0.3)
    request(engine, "quick", "account-a", "account-b", 4)
    info = wait_for_saga(engine, "quick")
    assert info.status is ego.SagaStatus.COMPLETED
    time.sleep(0.5)  # past the timeout: nothing may happen now
    assert engine.saga_status("quick").status is ego.SagaStatus.COMPLETED
    assert (balance(engine, "account-a"), balance(engine, "account-b")) == (6, 4)
    journal = saga_journal(engine.stores[0], "quick")
    assert not any(isinstance(e, SagaDeadlineFired) for e in journal)


class BadUndo(ego.SagaBehavior[Transfer]):
    """Credits an account, then asks to compensate; its compensation goes to an account that is
    not open, which rejects it."""

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id

    def id(self) -> str:
        return self.saga_id

    @classmethod
    def correlate(cls, event: Message, persistence_id: str) -> str | None:
        return event.transfer_id if isinstance(event, TransferRequested) else None

    started_by = (TransferRequested,)

    def initial_state(self) -> Transfer:
        return Transfer()

    def handle_event(self, event: Message, state: Transfer) -> ego.SagaAction:
        return ego.SagaAction(commands=[ego.SagaCommand("account-a", Credit(amount=5))], compensate=True)

    def compensate(self, state: Transfer) -> Sequence[ego.SagaCommand]:
        return [ego.SagaCommand("account-closed", Debit(amount=5))]


def test_a_rejected_compensation_makes_the_saga_failed(engine: ego.Engine) -> None:
    engine.register_entity_type(AccountBehavior, prefix="account-")
    engine.register_entity_type(DeskBehavior, prefix="request-")
    engine.send_command("account-a", OpenAccount(initial_balance=0))
    engine.register_saga_type(BadUndo)
    request(engine, "bad", "account-x", "account-y", 1)
    info = wait_for_saga(engine, "bad")
    assert info.status is ego.SagaStatus.FAILED
    assert "AccountNotOpen" in (info.reason or "") and "account-closed" in (info.reason or "")
    assert balance(engine, "account-a") == 5


def test_an_event_written_before_the_saga_started_is_seen(engine: ego.Engine) -> None:
    engine.register_entity_type(AccountBehavior, prefix="account-")
    engine.register_entity_type(DeskBehavior, prefix="request-")
    engine.send_command("account-a", OpenAccount(initial_balance=50))
    request(engine, "early", "account-q", "account-r", 1)  # written before the saga exists
    engine.register_saga_type(Waiting)
    deadline = time.monotonic() + 10
    # The journal reader may hand the event over before or after the saga starts.
    info = engine.saga(Waiting("early", "account-a", 20))
    assert info.status is ego.SagaStatus.RUNNING
    while balance(engine, "account-a") != 30:
        assert time.monotonic() < deadline, "the saga never saw the event written before it started"
        time.sleep(0.01)
    assert engine.saga(Waiting("early", "account-a", 20)).status is ego.SagaStatus.RUNNING  # idempotent
    assert sum(isinstance(e, SagaStarted) for e in saga_journal(engine.stores[0], "early")) == 1


def test_saga_status_async_and_saga_async(engine: ego.Engine) -> None:
    engine.register_entity_type(AccountBehavior, prefix="account-")
    engine.send_command("account-a", OpenAccount(initial_balance=50))

    async def run() -> ego.SagaInfo:
        info = await engine.saga_async(Waiting("async-1", "account-a", 1))
        assert info.status is ego.SagaStatus.RUNNING
        return await engine.saga_status_async("async-1")

    info = asyncio.run(run())
    assert info.id == "async-1" and info.state == Transfer(transfer_id="async-1", source="account-a", amount=1)


def test_bad_input_gets_typed_errors(engine: ego.Engine) -> None:
    with pytest.raises(ego.errors.SagaNotFoundError):
        engine.saga_status("never-started")
    with pytest.raises(ego.errors.ValidationError):
        engine.saga_status("")
    with pytest.raises(ego.errors.ValidationError):
        engine.saga(Waiting("x" * 201))
    with pytest.raises(ego.errors.ConfigurationError):
        engine.saga(AccountBehavior("account-1"))  # type: ignore[arg-type]
    with pytest.raises(ego.errors.ConfigurationError):
        engine.saga(Waiting("t"), timeout=-1)
    with pytest.raises(ego.errors.ConfigurationError):
        engine.register_entity_type(AccountBehavior, prefix="ego.saga:mine")
    with pytest.raises(ego.errors.ConfigurationError):
        engine.register_saga_type(AccountBehavior)  # type: ignore[arg-type]


def test_steps_are_planned_in_the_journal_before_they_are_sent(engine: ego.Engine) -> None:
    engine.register_entity_type(AccountBehavior, prefix="account-")
    engine.register_entity_type(DeskBehavior, prefix="request-")
    engine.register_saga_type(TransferSaga)
    engine.send_command("account-a", OpenAccount(initial_balance=10))
    engine.send_command("account-b", OpenAccount(initial_balance=0))
    request(engine, "p", "account-a", "account-b", 3)
    wait_for_saga(engine, "p")
    journal = saga_journal(engine.stores[0], "p")
    planned = [s.entity_id for e in journal if isinstance(e, SagaStepsPlanned) for s in e.steps]
    assert planned[:2] == ["account-a", "account-b"]
    assert engine.get_state("account-b")[0] == Account(account_id="account-b", balance=3, open=True)


def test_a_sagas_journal_is_encrypted_when_encryption_is_on() -> None:
    store = ego.MemoryStore()
    with ego.Engine("enc", store=store, encryption=ego.Encryption(master_key=bytes(range(32)))) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.register_entity_type(DeskBehavior, prefix="request-")
        engine.register_saga_type(TransferSaga)
        engine.send_command("account-alice", OpenAccount(initial_balance=10))
        engine.send_command("account-bob", OpenAccount(initial_balance=0))
        request(engine, "secret", "account-alice", "account-bob", 7)
        assert wait_for_saga(engine, "secret").status is ego.SagaStatus.COMPLETED
        assert engine.saga_status("secret").state.source == "account-alice"  # decrypted for the engine
    raw = store.replay_events("ego.saga:secret")
    assert raw and all(e.is_encrypted for e in raw)
    assert not any(b"account-alice" in e.event.value for e in raw)


def test_each_step_is_a_span() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = ego.Telemetry(tracer_provider=provider, metrics=False)
    with ego.Engine("spans", telemetry=telemetry) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.register_entity_type(DeskBehavior, prefix="request-")
        engine.register_saga_type(TransferSaga)
        engine.send_command("account-a", OpenAccount(initial_balance=10))
        request(engine, "traced", "account-a", "account-none", 3)
        assert wait_for_saga(engine, "traced").status is ego.SagaStatus.COMPENSATED
    steps = [s for s in exporter.get_finished_spans() if s.name == "ego.saga.step"]
    assert [(s.attributes["ego.entity_id"], s.attributes["ego.outcome"], s.attributes["ego.compensation"]) for s in steps] == [
        ("account-a", "accepted", False),
        ("account-none", "rejected", False),
        ("account-a", "accepted", True),
    ]
    inner = [s for s in exporter.get_finished_spans() if s.name == "ego.send_command"]
    assert all(any(i.parent is not None and i.parent.span_id == s.context.span_id for i in inner) for s in steps)


def test_the_testkit_runs_a_saga_step_by_step() -> None:
    from ego.testkit import SagaScenario, ScenarioError

    from domain import AccountNotOpen
    from transfers_pb2 import SourceDebited

    requested = TransferRequested(transfer_id="t1", source="a", target="b", amount=5)
    scenario = (
        SagaScenario(TransferSaga("t1"), timeout=30.0)
        .then_status(ego.SagaStatus.RUNNING)
        .when_event(requested)
        .then_events(requested)
        .then_commands(ego.SagaCommand("a", Debit(amount=5), undo=Credit(amount=5)))
        .when_result("a", Account(balance=0))
        .then_events(SourceDebited())
        .then_commands(ego.SagaCommand("b", Credit(amount=5)))
        .when_error("b", AccountNotOpen("b"))
        .then_status(ego.SagaStatus.COMPENSATING, reason="AccountNotOpen")
        .then_commands(ego.SagaCommand("a", Credit(amount=5)))
        .when_result("a", Account(balance=5))
        .then_status(ego.SagaStatus.COMPENSATED)
        .then_state(Transfer(transfer_id="t1", source="a", target="b", amount=5, debited=True))
    )
    with pytest.raises(ScenarioError, match="expected the saga completed"):
        scenario.then_status(ego.SagaStatus.COMPLETED)
    with pytest.raises(ScenarioError, match="no command"):
        scenario.when_result("a", Account())

    timed_out = SagaScenario(TransferSaga("t2"), timeout=1.0).when_event(requested).when_timeout()
    # The debit may be in flight: its answer is handled before the saga compensates.
    timed_out.then_status(ego.SagaStatus.RUNNING).then_commands()
    timed_out.when_result("a", Account()).then_status(ego.SagaStatus.COMPENSATING, reason="timed out")
    timed_out.then_commands(ego.SagaCommand("a", Credit(amount=5)))
    timed_out.when_result("a", Account()).then_status(ego.SagaStatus.COMPENSATED, reason="timed out")
