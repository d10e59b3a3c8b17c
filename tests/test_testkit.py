"""The testkit itself: readable failures, contract checks, determinism, properties."""

from __future__ import annotations

import random

import pytest
from hypothesis import strategies as st
from test_durable_state import CounterBehavior

import ego
from ego.testkit import DurableStateScenario, EventSourcedScenario, ScenarioError, assert_deterministic, check_invariant

from bank_pb2 import Account, AccountCredited, AccountOpened, Credit, Debit, OpenAccount
from domain import AccountBehavior
from egotest.messages_pb2 import Counter, Increment


def test_a_failing_scenario_shows_expected_and_actual_readably() -> None:
    scenario = (
        EventSourcedScenario(AccountBehavior("acc-1")).given(AccountOpened(account_id="acc-1", balance=10)).when(Credit(amount=5))
    )
    with pytest.raises(ScenarioError) as info:
        scenario.then_events(AccountCredited(amount=6), AccountCredited(amount=1))
    assert str(info.value) == (
        "events differ\n"
        "  expected:\n"
        "    [0] bank.v1.AccountCredited { amount: 6 }\n"
        "    [1] bank.v1.AccountCredited { amount: 1 }\n"
        "  actual:\n"
        "    [0] bank.v1.AccountCredited { amount: 5 }"
    )
    with pytest.raises(ScenarioError) as info:
        scenario.then_state(Account(account_id="acc-1", balance=99, open=True))
    assert str(info.value) == (
        "state differs\n"
        '  expected: bank.v1.Account { account_id: "acc-1" balance: 99 open: true }\n'
        '  actual:   bank.v1.Account { account_id: "acc-1" balance: 15 open: true }'
    )
    with pytest.raises(ScenarioError, match="expected the command to be rejected with InsufficientFunds, but it was accepted"):
        from domain import InsufficientFunds

        scenario.then_rejected(InsufficientFunds)


def test_an_unexpected_rejection_is_reported_with_its_error() -> None:
    scenario = EventSourcedScenario(AccountBehavior("acc-1")).when(Debit(amount=1))
    with pytest.raises(ScenarioError, match="it was rejected with AccountNotOpen: acc-1"):
        scenario.then_events()


class Mutating(AccountBehavior):
    def handle_command(self, command, state):  # type: ignore[no-untyped-def]
        state.balance += 1  # wrong: handle_command must not touch the state
        return []


class Random(AccountBehavior):
    def handle_event(self, event, state):  # type: ignore[no-untyped-def]
        state.balance += random.randint(1, 1_000_000)
        return state


def test_contract_violations_are_caught() -> None:
    with pytest.raises(ScenarioError, match="must only return events"):
        EventSourcedScenario(Mutating("x")).when(Credit(amount=1))
    with pytest.raises(ego.errors.InvalidMessageError):
        EventSourcedScenario(AccountBehavior("x")).when({"amount": 1})  # type: ignore[arg-type]
    with pytest.raises(ScenarioError, match="not deterministic"):
        assert_deterministic(Random("x"), [AccountOpened(account_id="x", balance=1)])


def test_durable_state_scenarios() -> None:
    s = DurableStateScenario(CounterBehavior("c"))
    s.when(Increment(by=2)).then_state(Counter(value=2)).then_version(1)
    s.when(Increment(by=0)).then_unchanged().then_version(1)
    s.when(Increment(by=-1)).then_rejected(ValueError, match="negative").then_version(1)
    DurableStateScenario(CounterBehavior("c")).given(Counter(value=40), version=7).when(Increment(by=2)).then_state(
        Counter(value=42)
    ).then_version(8)
    with pytest.raises(ego.errors.HandlerContractError):
        DurableStateScenario(CounterBehavior("c")).when(Increment(by=13))


class Overdraft(AccountBehavior):
    """A buggy account that lets debits through."""

    def handle_command(self, command, state):  # type: ignore[no-untyped-def]
        if isinstance(command, Debit):
            from bank_pb2 import AccountDebited

            return [AccountDebited(amount=command.amount)]
        return super().handle_command(command, state)


def test_check_invariant_finds_a_counterexample() -> None:
    commands = st.one_of(st.builds(Credit, amount=st.integers(1, 10)), st.builds(Debit, amount=st.integers(1, 10)))
    with pytest.raises(ScenarioError) as info:
        check_invariant(
            lambda: Overdraft("a"), commands, lambda state, _: state.balance >= 0, setup=[OpenAccount(initial_balance=0)]
        )
    assert "the invariant does not hold after command 0:\n    [0] bank.v1.Debit { amount: 1 }\n" in str(info.value)


def test_then_rejected_gives_the_exception_to_check() -> None:
    from domain import InsufficientFunds

    scenario = EventSourcedScenario(AccountBehavior("acc-1")).given(AccountOpened(account_id="acc-1", balance=10))
    seen: list[BaseException] = []
    error = scenario.when(Debit(amount=50)).then_rejected(InsufficientFunds, check=seen.append).rejection
    assert isinstance(error, InsufficientFunds)
    assert error.args == ("balance 10 < 50",)
    assert seen == [error]
    # A check that fails fails the scenario with its own assertion.
    with pytest.raises(AssertionError, match="wrong amount"):
        scenario.then_rejected(InsufficientFunds, check=lambda e: _fail("wrong amount"))
    assert scenario.when(Credit(amount=1)).rejection is None


def _fail(message: str) -> None:
    raise AssertionError(message)


def test_a_persisted_event_built_in_a_test_feeds_a_projection_handler() -> None:
    balances: dict[str, int] = {}

    def handler(events: list[ego.PersistedEvent]) -> None:
        for e in events:
            if isinstance(e.event, AccountCredited):
                balances[e.persistence_id] = balances.get(e.persistence_id, 0) + e.event.amount

    event = ego.PersistedEvent(
        "acc-1", 3, AccountCredited(amount=7), shard=2, position=11, timestamp_ns=1_000, metadata={"k": "v"}
    )
    handler([event, ego.PersistedEvent("acc-1", 4, AccountCredited(amount=1))])
    assert balances == {"acc-1": 8}
    assert (event.persistence_id, event.sequence_number, event.shard, event.position) == ("acc-1", 3, 2, 11)
    assert (event.timestamp_ns, event.metadata, event.event_id) == (1_000, {"k": "v"}, "acc-1:3")
    assert event.type_url == "type.googleapis.com/bank.v1.AccountCredited"
    with pytest.raises(ego.errors.InvalidMessageError):
        ego.PersistedEvent("acc-1", 1, {"amount": 1})
    with pytest.raises(ego.errors.ValidationError):
        ego.PersistedEvent("acc-1", 0, AccountCredited(amount=1))
    with pytest.raises(ego.errors.InvalidEntityIdError):
        ego.PersistedEvent("", 1, AccountCredited(amount=1))


def test_the_postgres_fixture_gives_an_engine_on_tables_of_its_own(ego_postgres_engine: ego.Engine, pg_url: str) -> None:
    ego_postgres_engine.register_entity_type(AccountBehavior, prefix="acc-")
    state, revision = ego_postgres_engine.send_command("acc-1", OpenAccount(initial_balance=5))
    assert (state.balance, revision) == (5, 1)
    (store,) = ego_postgres_engine.stores
    assert isinstance(store, ego.PostgresStore)
    assert store.highest_sequence_number("acc-1") == 1
