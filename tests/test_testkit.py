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
