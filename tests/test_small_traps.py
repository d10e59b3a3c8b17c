"""Small traps a new user hits, each answered plainly: an asyncio timeout, a handler waiting
for its own entity, options that do not apply, projections that want some event types only."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest
from google.protobuf.message import Message
from test_durable_state import CounterBehavior

import ego
from ego import errors

from bank_pb2 import Account, AccountCredited, AccountOpened, Credit, OpenAccount
from domain import AccountBehavior
from egotest.messages_pb2 import Increment


class Gate(ego.EventSourcedBehavior[Message, Message, Account]):
    """Credits that wait for `gate` (set from the test) before they are handled."""

    gate = threading.Event()
    entered = threading.Event()

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Account:
        return Account(account_id=self.entity_id)

    def handle_command(self, command: Message, state: Account) -> Sequence[Message]:
        Gate.entered.set()
        assert Gate.gate.wait(10)
        return [AccountCredited(amount=1)]

    def handle_event(self, event: Message, state: Account) -> Account:
        return Account(account_id=state.account_id, balance=state.balance + 1)


def test_send_command_async_timeout_drops_a_command_that_has_not_started() -> None:
    Gate.gate.clear()
    Gate.entered.clear()

    async def scenario(engine: ego.Engine) -> None:
        first = engine.send_command_async("gate-1", Credit(amount=1), timeout=1.0)
        await asyncio.get_running_loop().run_in_executor(None, Gate.entered.wait, 10)
        second = engine.send_command_async("gate-1", Credit(amount=1), timeout=0.1)
        with pytest.raises(errors.CommandTimeoutError) as queued:
            await second
        with pytest.raises(errors.CommandTimeoutError) as running:
            await first
        assert isinstance(running.value, TimeoutError)
        assert running.value.started is True  # it was being handled: outcome unknown
        assert queued.value.started is False  # never started: dropped
        Gate.gate.set()
        # A command with a timeout it meets completes normally.
        _, revision = await engine.send_command_async("gate-1", Credit(amount=1), timeout=10)
        assert revision == 2  # the first one ran, the dropped one never did

    with ego.Engine("async-timeout") as engine:
        engine.register_entity_type(Gate, prefix="gate-", inline=False)
        asyncio.run(scenario(engine))


def test_cancelling_a_queued_async_command_drops_it() -> None:
    Gate.gate.clear()
    Gate.entered.clear()

    async def scenario(engine: ego.Engine) -> None:
        first = engine.send_command_async("gate-2", Credit(amount=1))
        await asyncio.get_running_loop().run_in_executor(None, Gate.entered.wait, 10)
        queued = engine.send_command_async("gate-2", Credit(amount=1))
        queued.cancel()
        Gate.gate.set()
        assert (await first)[1] == 1
        assert (await engine.send_command_async("gate-2", Credit(amount=1)))[1] == 2  # the cancelled one never ran

    with ego.Engine("async-cancel") as engine:
        engine.register_entity_type(Gate, prefix="gate-", inline=False)
        asyncio.run(scenario(engine))


class SelfSender(ego.EventSourcedBehavior[Message, Message, Account]):
    """Sends a command to its own entity from its handler (a mistake)."""

    engine: ego.Engine

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Account:
        return Account(account_id=self.entity_id)

    def handle_command(self, command: Message, state: Account) -> Sequence[Message]:
        if isinstance(command, OpenAccount):
            SelfSender.engine.send_command(self.entity_id, Credit(amount=1), timeout=30)
        return [AccountOpened(account_id=self.entity_id)]

    def handle_event(self, event: Message, state: Account) -> Account:
        return state


@pytest.mark.parametrize("inline", [True, False])
def test_a_handler_sending_to_its_own_entity_gets_an_immediate_typed_error(inline: bool) -> None:
    with ego.Engine("self") as engine:
        SelfSender.engine = engine
        engine.register_entity_type(SelfSender, prefix="self-", inline=inline)
        with pytest.raises(errors.HandlerContractError, match="its own entity"):
            engine.send_command("self-1", OpenAccount(initial_balance=1), timeout=5)
        # The entity keeps serving, and sending to another entity from a handler still works.
        assert engine.send_command("self-1", Credit(amount=1))[1] == 1


def test_a_durable_state_type_refuses_options_that_do_not_apply(engine: ego.Engine) -> None:
    with pytest.raises(errors.ConfigurationError, match="snapshot_interval do not apply"):
        engine.register_entity_type(CounterBehavior, prefix="counter-", snapshot_interval=10)
    with pytest.raises(errors.ConfigurationError, match="retention do not apply"):
        engine.entity(CounterBehavior("counter-1"), retention=ego.RetentionPolicy(delete_events_on_snapshot=True))
    engine.register_entity_type(CounterBehavior, prefix="counter-")  # without them: fine


def test_a_projection_gets_only_the_event_types_it_asks_for(engine: ego.Engine) -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def handler(events: list[ego.PersistedEvent]) -> None:
        with lock:
            seen.extend(type(e.event).__name__ for e in events)

    engine.register_entity_type(AccountBehavior, prefix="account-")
    engine.add_projection("credits", handler, event_types=[AccountCredited])
    engine.send_command("account-1", OpenAccount(initial_balance=1))
    engine.send_command("account-1", Credit(amount=2))
    engine.send_command("account-2", OpenAccount(initial_balance=1))
    engine.wait_for_projection("credits", timeout=10)
    assert seen == ["AccountCredited"]
    # The offsets moved past the events it did not want.
    assert all(lag.events_behind == 0 for lag in engine.projection_lag("credits").values())
    with pytest.raises(errors.ConfigurationError):
        engine.add_projection("bad", handler, event_types=["bank.v1.AccountCredited"])  # type: ignore[list-item]


def test_metadata_sent_with_a_command_is_stored_with_its_events(engine: ego.Engine) -> None:
    from test_event_sourced import Multi

    seen: list[tuple[int, dict[str, str]]] = []
    engine.register_entity_type(Multi, prefix="multi-")
    engine.register_entity_type(CounterBehavior, prefix="counter-")
    engine.add_projection("meta", lambda events: seen.extend((e.sequence_number, e.metadata) for e in events))
    engine.send_command("multi-1", Credit(amount=2), metadata={"correlation_id": "c-1", "user": "ann"})
    asyncio.run(_send_async(engine))
    engine.send_command("multi-1", Credit(amount=1))
    engine.wait_for_projection("meta", timeout=10)
    assert seen == [
        (1, {"correlation_id": "c-1", "user": "ann"}),
        (2, {"correlation_id": "c-1", "user": "ann"}),
        (3, {"correlation_id": "c-2"}),
        (4, {}),
    ]
    with pytest.raises(errors.ValidationError, match="ego's own"):
        engine.send_command("multi-1", Credit(amount=1), metadata={"ego.idempotency_key": "x"})
    # A durable state has no metadata: refused rather than dropped.
    with pytest.raises(errors.ValidationError, match="durable-state"):
        engine.send_command("counter-1", Increment(by=1), metadata={"k": "v"})


async def _send_async(engine: ego.Engine) -> None:
    await engine.send_command_async("multi-1", Credit(amount=1), metadata={"correlation_id": "c-2"})
