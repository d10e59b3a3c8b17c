"""Activation on first command (registered entity types) and idle passivation."""

from __future__ import annotations

import time

import pytest
from test_durable_state import CounterBehavior
from waiting import wait_until

import ego

from bank_pb2 import Credit, OpenAccount
from domain import AccountBehavior
from egotest.messages_pb2 import Counter, Increment


def test_registered_type_activates_on_first_command(engine: ego.Engine) -> None:
    engine.register_entity_type(AccountBehavior, prefix="account-")
    assert not engine.is_live("account-1")
    state, revision = engine.send_command("account-1", OpenAccount(initial_balance=3))
    assert (state.account_id, state.balance, revision) == ("account-1", 3, 1)
    assert engine.is_live("account-1")


def test_longest_prefix_wins_and_unknown_ids_are_not_found(engine: ego.Engine) -> None:
    engine.register_entity_type(AccountBehavior, prefix="a-")
    engine.register_entity_type(CounterBehavior, prefix="a-counter-")
    assert engine.send_command("a-counter-1", Increment(by=2)) == (Counter(value=2), 1)
    assert engine.send_command("a-1", OpenAccount(initial_balance=1))[1] == 1
    with pytest.raises(ego.errors.EntityNotFoundError):
        engine.send_command("b-1", Credit(amount=1))


def test_catch_all_prefix(engine: ego.Engine) -> None:
    engine.register_entity_type(AccountBehavior)
    assert engine.send_command("anything", OpenAccount(initial_balance=1))[1] == 1


def test_a_factory_that_fails_raises_its_error(engine: ego.Engine) -> None:
    def factory(entity_id: str) -> AccountBehavior:
        raise RuntimeError(f"no behaviour for {entity_id}")

    engine.register_entity_type(factory)
    with pytest.raises(RuntimeError, match="no behaviour for x"):
        engine.send_command("x", Credit(amount=1))
    assert not engine.is_live("x")


def test_passivation_frees_the_entity_and_the_next_command_reactivates_it(store_kind: str, make_store) -> None:
    with ego.Engine(store=make_store()) as engine:
        engine.entity(AccountBehavior("sleepy"), passivate_after=0.05)
        engine.register_entity_type(AccountBehavior, prefix="lazy-", passivate_after=0.05)
        engine.send_command("sleepy", OpenAccount(initial_balance=5))
        engine.send_command("lazy-1", OpenAccount(initial_balance=6))
        assert engine.live_count() == 2
        wait_until(lambda: engine.live_count() == 0, what="both entities to passivate")
        # Transparent re-activation with the recovered state.
        assert engine.send_command("sleepy", Credit(amount=1))[0].balance == 6
        assert engine.send_command("lazy-1", Credit(amount=1))[0].balance == 7
        assert engine.live_count() == 2


def test_an_active_entity_is_not_passivated(engine: ego.Engine) -> None:
    engine.entity(AccountBehavior("busy"), passivate_after=0.2)
    engine.send_command("busy", OpenAccount(initial_balance=0))
    end = time.monotonic() + 0.6
    while time.monotonic() < end:
        engine.send_command("busy", Credit(amount=1))
        assert engine.is_live("busy")
        time.sleep(0.02)  # pacing: a command every 20 ms, well inside passivate_after (not a wait)
    assert engine.stats()["passivations"] == 0
