"""The engine's life cycle: configure, then start; a restart keeps the configuration; waiting
for a projection to catch up."""

from __future__ import annotations

import asyncio
import threading

import pytest

import ego
from ego import errors

from bank_pb2 import Credit, OpenAccount
from domain import AccountBehavior


class Totals:
    """A projection handler that keeps the last sequence number seen per entity."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, events: list[ego.PersistedEvent]) -> None:
        with self.lock:
            for e in events:
                self.last[e.persistence_id] = e.sequence_number


def test_entity_types_and_projections_configured_before_start_begin_with_it() -> None:
    # Given an engine configured before it starts
    engine = ego.Engine("configured")
    totals = Totals()
    engine.register_entity_type(AccountBehavior, prefix="account-")
    engine.add_projection("totals", totals)
    assert not engine.running
    # When it starts and takes commands
    with engine:
        engine.send_command("account-1", OpenAccount(initial_balance=10))
        engine.send_command("account-1", Credit(amount=5))
        engine.wait_for_projection("totals", timeout=10)
        # Then the type routes commands and the projection saw every event
        assert engine.projection_names() == ["totals"]
        assert totals.last == {"account-1": 2}


def test_a_restart_keeps_entity_types_projections_and_spawned_entities() -> None:
    store = ego.MemoryStore()
    totals = Totals()
    engine = ego.Engine("restarted", store=store)
    with engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.add_projection("totals", totals)
        engine.entity(AccountBehavior("spawned-1"))
        engine.send_command("spawned-1", OpenAccount(initial_balance=1))
        engine.send_command("account-1", OpenAccount(initial_balance=10))
        engine.wait_for_projection("totals", timeout=10)
    # When the engine is stopped and started again
    with engine:
        # Then the entity type still activates entities, the spawned entity is known
        state, revision = engine.send_command("account-1", Credit(amount=5))
        assert (state.balance, revision) == (15, 2)
        state, revision = engine.send_command("spawned-1", Credit(amount=2))
        assert (state.balance, revision) == (3, 2)
        # and the projection resumed from its offsets
        engine.wait_for_projection("totals", timeout=10)
        assert engine.is_projection_running("totals")
        assert totals.last == {"account-1": 2, "spawned-1": 2}


def test_a_stopped_entity_and_a_removed_projection_stay_gone_after_a_restart() -> None:
    engine = ego.Engine("forgetful")
    with engine:
        engine.entity(AccountBehavior("spawned-1"))
        engine.add_projection("totals", Totals())
        engine.stop_entity("spawned-1")
        engine.remove_projection("totals")
    with engine:
        with pytest.raises(errors.EntityNotFoundError):
            engine.send_command("spawned-1", OpenAccount(initial_balance=1))
        assert engine.projection_names() == []


def test_configuration_errors_before_start_are_raised_at_once() -> None:
    engine = ego.Engine("early")
    engine.add_projection("totals", Totals())
    with pytest.raises(errors.ConfigurationError, match="already added"):
        engine.add_projection("totals", Totals())
    with pytest.raises(errors.ValidationError):
        engine.register_entity_type(AccountBehavior, prefix="bad\x01")
    with pytest.raises(errors.ValidationError):
        engine.remove_projection("unknown")
    engine.remove_projection("totals")
    # Spawning needs the stores: it still asks for a started engine.
    with pytest.raises(errors.EngineClosedError):
        engine.entity(AccountBehavior("spawned-1"))


def test_wait_for_projection_reports_a_failed_projection() -> None:
    def broken(events: list[ego.PersistedEvent]) -> None:
        raise RuntimeError("read model is down")

    with ego.Engine("failing") as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.add_projection("broken", broken)
        engine.send_command("account-1", OpenAccount(initial_balance=10))
        with pytest.raises(errors.ProjectionFailedError, match="read model is down"):
            engine.wait_for_projection("broken", timeout=10)
        with pytest.raises(errors.ValidationError):
            engine.wait_for_projection("unknown")


def test_wait_for_projection_times_out_on_a_projection_that_stays_behind() -> None:
    release = threading.Event()

    def slow(events: list[ego.PersistedEvent]) -> None:
        release.wait(10)

    with ego.Engine("slow") as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.add_projection("slow", slow)
        engine.send_command("account-1", OpenAccount(initial_balance=10))
        with pytest.raises(errors.ProjectionTimeoutError) as caught:
            engine.wait_for_projection("slow", timeout=0.2)
        assert isinstance(caught.value, TimeoutError)
        release.set()
        engine.wait_for_projection("slow", timeout=10)


def test_wait_for_projection_async() -> None:
    totals = Totals()

    async def scenario() -> None:
        async with ego.Engine("async-wait") as engine:
            engine.register_entity_type(AccountBehavior, prefix="account-")
            engine.add_projection("totals", totals)
            await engine.send_command_async("account-1", OpenAccount(initial_balance=10))
            await engine.wait_for_projection_async("totals", timeout=10)

    asyncio.run(scenario())
    assert totals.last == {"account-1": 1}
