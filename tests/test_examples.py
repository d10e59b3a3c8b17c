"""The examples' behaviours, tested with ego.testkit (as a user of ego would), and the
examples themselves run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hypothesis import strategies as st

import ego
from ego.testkit import EventSourcedScenario, assert_deterministic, check_invariant

from bank_pb2 import Account, AccountCredited, AccountDebited, AccountOpened, Credit, Debit, OpenAccount
from domain import AccountBehavior, AccountNotOpen, InsufficientFunds

ROOT = Path(__file__).resolve().parent.parent
OPENED = AccountOpened(account_id="acc-1", balance=10)


def test_opening_an_account() -> None:
    (
        EventSourcedScenario(AccountBehavior("acc-1"))
        .when(OpenAccount(initial_balance=10))
        .then_events(OPENED)
        .then_state(Account(account_id="acc-1", balance=10, open=True))
        .then_revision(1)
    )


def test_credits_and_debits() -> None:
    (
        EventSourcedScenario(AccountBehavior("acc-1"))
        .given(OPENED)
        .when(Credit(amount=5))
        .then_events(AccountCredited(amount=5))
        .when(Debit(amount=15))
        .then_events(AccountDebited(amount=15))
        .then_state(Account(account_id="acc-1", balance=0, open=True))
        .then_revision(3)
    )


def test_rejections_change_nothing() -> None:
    s = EventSourcedScenario(AccountBehavior("acc-1")).given(OPENED)
    s.when(Debit(amount=11)).then_rejected(InsufficientFunds, match="balance 10 < 11").then_revision(1)
    s.when(OpenAccount(initial_balance=1)).then_rejected(AccountNotOpen, match="already open")
    EventSourcedScenario(AccountBehavior("acc-2")).when(Credit(amount=1)).then_rejected(AccountNotOpen)


def test_replaying_the_history_is_deterministic() -> None:
    history = [OPENED, AccountCredited(amount=3), AccountDebited(amount=2)]
    assert assert_deterministic(AccountBehavior("acc-1"), history) == Account(account_id="acc-1", balance=11, open=True)


def test_no_command_sequence_makes_a_balance_negative() -> None:
    commands = st.one_of(st.builds(Credit, amount=st.integers(1, 100)), st.builds(Debit, amount=st.integers(1, 100)))
    check_invariant(
        lambda: AccountBehavior("acc-1"),
        commands,
        lambda state, revision: state.balance >= 0,
        setup=[OpenAccount(initial_balance=50)],
        max_examples=100,
    )


def test_the_bank_on_the_testkit_fixtures(ego_engine: ego.Engine, ego_rocksdb_engine: ego.Engine) -> None:
    for engine in (ego_engine, ego_rocksdb_engine):
        engine.register_entity_type(AccountBehavior)
        engine.send_command("acc-1", OpenAccount(initial_balance=10))
        assert engine.send_command("acc-1", Debit(amount=3))[0].balance == 7


def test_the_upcasting_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, "upcasting.py"], cwd=ROOT / "examples" / "upcasting", capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "recovered from v1 events: 1975 cents in 2 deposits (revision 2)",
        "after a new deposit: 2075 cents (revision 3)",
        "the projection saw: Deposited(1250 EUR), Deposited(725 EUR), Deposited(100 EUR)",
        "the store still holds: MoneyDeposited, MoneyDeposited, Deposited",
    ]


def test_the_several_processes_example_runs(pg_url: str) -> None:
    """examples/inventory: two worker processes and the main one serve the same products
    (shared=True) and add the same transactional projection (leased) on one database."""

    result = subprocess.run(
        [sys.executable, "run.py", pg_url], cwd=ROOT / "examples" / "inventory", capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(each once)" in result.stdout and "never below zero" in result.stdout, result.stdout


def test_the_inventory_example_passes_mypy_strict() -> None:
    """The example app is typed end to end: its commands are the behaviour's command types and
    the state comes back as ``Product`` from a typed entity handle (tests/test_typing.py shows
    mypy catching the mistakes)."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--no-error-summary", "inventory.py", "run.py"],
        cwd=ROOT / "examples" / "inventory",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
