"""Live entities are out of CPython's cyclic collector's view (a million of them must not
make every full collection walk two million objects), and a behaviour goes back to the
collector once its entity leaves memory, so cycles through it are still collected."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from google.protobuf.internal import api_implementation

import ego

from bank_pb2 import Account, Credit, Debit, OpenAccount
from domain import AccountBehavior


class Cyclic(AccountBehavior):
    """A behaviour that puts itself in a reference cycle."""

    def handle_command(self, command: Any, state: Account) -> Any:
        self.me = [self]
        return super().handle_command(command, state)


def test_live_behaviours_and_states_are_not_tracked() -> None:
    made: list[AccountBehavior] = []

    def factory(entity_id: str) -> AccountBehavior:
        made.append(AccountBehavior(entity_id))
        return made[-1]

    with ego.Engine("untracked") as engine:
        engine.register_entity_type(factory)
        state, _ = engine.send_command("a", OpenAccount(initial_balance=5))
        state, _ = engine.send_command("a", Credit(amount=1))
        assert state.balance == 6
        assert [gc.is_tracked(b) for b in made] == [False]
        assert not gc.is_tracked(state)
        assert not gc.is_tracked(engine.get_state("a")[0])
        # An explicit behaviour too; a plain object the user keeps stays as it was.
        engine.entity(AccountBehavior("b"))
        engine.send_command("b", OpenAccount(initial_balance=1))
        assert not gc.is_tracked(engine.get_state("b")[0])


def test_a_behaviour_in_a_cycle_is_collected_once_its_entity_is_gone() -> None:
    refs: list[weakref.ref[Cyclic]] = []

    def factory(entity_id: str) -> Cyclic:
        b = Cyclic(entity_id)
        refs.append(weakref.ref(b))
        return b

    engine = ego.Engine("cycles")
    with engine:
        engine.register_entity_type(factory)
        engine.send_command("a", OpenAccount(initial_balance=5))
        behaviour = refs[0]()
        assert behaviour is not None and not gc.is_tracked(behaviour)
        del behaviour
        engine.stop_entity("a")
    gc.collect()
    # Untracked for good, the cycle would never be collected.
    assert refs[0]() is None


def test_gc_freeze_and_collections_leave_live_entities_working() -> None:
    with ego.Engine("collections") as engine:
        engine.register_entity_type(AccountBehavior)
        engine.send_commands([(f"acc-{i}", OpenAccount(initial_balance=0)) for i in range(100)])
        gc.collect()
        gc.freeze()
        try:
            outcomes = engine.send_commands([(f"acc-{i}", Credit(amount=i)) for i in range(100)])
            gc.collect()
            assert [o[0].balance for o in outcomes] == list(range(100))  # type: ignore[index]
        finally:
            gc.unfreeze()


@pytest.mark.skipif(api_implementation.Type() != "upb", reason="replies are untracked only with upb states")
def test_replies_are_not_tracked() -> None:
    """A bulk call's thousand `(state, revision)` replies are not walked by the collections
    they trigger: a reply holds an untracked message and an int, so it can never be in a cycle."""
    with ego.Engine("replies") as engine:
        engine.register_entity_type(AccountBehavior)
        one = engine.send_command("a", OpenAccount(initial_balance=5))
        many = engine.send_commands([("a", Credit(amount=1)), ("b", OpenAccount(initial_balance=1))])

        async def both() -> tuple[Any, list[Any]]:
            one = await engine.send_command_async("a", Credit(amount=1))
            many = await engine.send_commands_async([("a", Credit(amount=1)), ("b", Credit(amount=1))])
            return one, many

        one_async, many_async = asyncio.run(both())
        replies = [one, *many, one_async, *many_async]
        assert [r[1] for r in replies] == [1, 2, 1, 3, 4, 2]
        assert [gc.is_tracked(r) for r in replies] == [False] * 6
        assert replies[-1][0].balance == 2
        # A rejected command's slot is its exception, tracked as any exception is.
        rejected = engine.send_commands([("a", Debit(amount=1000))])[0]
        assert isinstance(rejected, BaseException)
