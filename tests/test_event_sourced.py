"""Event-sourced entities: commands, events, rejections, revisions."""

from __future__ import annotations

import asyncio

import pytest

import ego

from bank_pb2 import Account, AccountCredited, Credit, Debit, OpenAccount
from domain import AccountBehavior, AccountNotOpen, InsufficientFunds


def test_commands_produce_events_and_advance_the_revision(engine: ego.Engine) -> None:
    state, revision = engine.entity(AccountBehavior("acc-1"))
    assert (state.balance, state.open, revision) == (0, False, 0)
    state, revision = engine.send_command("acc-1", OpenAccount(initial_balance=100))
    assert (state.balance, state.open, revision) == (100, True, 1)
    state, revision = engine.send_command("acc-1", Credit(amount=50))
    assert (state.balance, revision) == (150, 2)
    state, revision = engine.send_command("acc-1", Debit(amount=30))
    assert (state.balance, revision) == (120, 3)


def test_a_rejected_command_raises_the_handlers_own_exception_and_changes_nothing(engine: ego.Engine) -> None:
    engine.entity(AccountBehavior("acc-1"))
    engine.send_command("acc-1", OpenAccount(initial_balance=10))
    with pytest.raises(InsufficientFunds, match="balance 10 < 11"):
        engine.send_command("acc-1", Debit(amount=11))
    state, revision = engine.get_state("acc-1")
    assert (state.balance, revision) == (10, 1)
    # The entity keeps serving.
    assert engine.send_command("acc-1", Credit(amount=1))[1] == 2


def test_handler_exception_types_are_preserved(engine: ego.Engine) -> None:
    engine.entity(AccountBehavior("acc-1"))
    with pytest.raises(AccountNotOpen):
        engine.send_command("acc-1", Credit(amount=1))
    with pytest.raises(TypeError, match="unknown command Account"):
        engine.send_command("acc-1", Account())


class Multi(ego.EventSourcedBehavior):
    """Emits one event per unit of `amount`, or none for 0."""

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Account:
        return Account(account_id=self.entity_id)

    def handle_command(self, command: Credit, state: Account) -> list[AccountCredited]:
        return [AccountCredited(amount=1) for _ in range(command.amount)]

    def handle_event(self, event: AccountCredited, state: Account) -> Account:
        return Account(account_id=state.account_id, balance=state.balance + event.amount)


def test_zero_events_replies_current_state_and_multi_event_commands_advance_by_count(engine: ego.Engine) -> None:
    engine.entity(Multi("m"))
    assert engine.send_command("m", Credit(amount=3))[1] == 3
    state, revision = engine.send_command("m", Credit(amount=0))
    assert (state.balance, revision) == (3, 3)
    assert engine.send_command("m", Credit(amount=2))[1] == 5


def test_get_state_sees_commands_sent_before(engine: ego.Engine) -> None:
    engine.register_entity_type(AccountBehavior, prefix="acc-")
    engine.send_command("acc-9", OpenAccount(initial_balance=7))
    state, revision = engine.get_state("acc-9")
    assert (state.balance, revision) == (7, 1)


def test_entity_is_idempotent_and_returns_the_current_state(engine: ego.Engine) -> None:
    engine.entity(AccountBehavior("acc-1"))
    engine.send_command("acc-1", OpenAccount(initial_balance=5))
    state, revision = engine.entity(AccountBehavior("acc-1"))
    assert (state.balance, revision) == (5, 1)


def test_stop_entity_then_unknown(engine: ego.Engine) -> None:
    engine.entity(AccountBehavior("acc-1"))
    engine.send_command("acc-1", OpenAccount(initial_balance=5))
    engine.stop_entity("acc-1")
    assert not engine.is_live("acc-1")
    with pytest.raises(ego.errors.EntityNotFoundError):
        engine.send_command("acc-1", Credit(amount=1))
    # Spawning again recovers it from the store.
    state, revision = engine.entity(AccountBehavior("acc-1"))
    assert (state.balance, revision) == (5, 1)


def test_events_are_in_the_store(engine: ego.Engine) -> None:
    engine.entity(AccountBehavior("acc-1"))
    engine.send_command("acc-1", OpenAccount(initial_balance=5))
    engine.send_command("acc-1", Credit(amount=2))
    (store,) = engine.stores
    events = store.replay_events("acc-1")
    assert [e.sequence_number for e in events] == [1, 2]
    assert events[1].event.type_url == "type.googleapis.com/bank.v1.AccountCredited"
    assert AccountCredited.FromString(events[1].event.value).amount == 2
    assert all(e.persistence_id == "acc-1" and e.timestamp > 0 for e in events)
    assert events[0].shard == events[1].shard < 8


def test_a_state_handed_out_never_changes_even_when_handlers_update_in_place(engine: ego.Engine) -> None:
    # AccountBehavior.handle_event updates the state in place.
    engine.entity(AccountBehavior("acc-1"))
    opened, _ = engine.send_command("acc-1", OpenAccount(initial_balance=5))
    first, _ = engine.send_command("acc-1", Credit(amount=1))
    second, _ = engine.send_command("acc-1", Credit(amount=1))
    assert (opened.balance, first.balance, second.balance) == (5, 6, 7)

    async def main() -> None:
        a = await engine.send_command_async("acc-1", Credit(amount=1))
        b = await engine.send_command_async("acc-1", Credit(amount=1))
        assert (a[0].balance, b[0].balance) == (8, 9)

    asyncio.run(main())
    assert engine.get_state("acc-1")[0].balance == 9
