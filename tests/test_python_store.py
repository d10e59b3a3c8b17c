"""Stores written in Python (the store protocol): the engine runs on them, synchronous or
async, and their errors keep their meaning."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlite_store import SqliteStore
from test_durable_state import CounterBehavior

import ego
from ego import errors

from bank_pb2 import Credit, OpenAccount
from domain import AccountBehavior
from egotest.messages_pb2 import Counter, Increment


class AsyncSqliteStore:
    """The same store with `async def` methods (as a store on an async driver would be)."""

    def __init__(self, path: str) -> None:
        self._store = SqliteStore(path)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def call(*args: Any) -> Any:
            await asyncio.sleep(0)
            return method(*args)

        return call


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_engine_runs_on_a_python_store_and_recovers_from_it(tmp_path: Path, kind: str) -> None:
    path = str(tmp_path / "ego.sqlite3")

    def store() -> Any:
        return SqliteStore(path) if kind == "sync" else AsyncSqliteStore(path)

    with ego.Engine("py", store=store()) as engine:
        engine.register_entity_type(AccountBehavior, prefix="acc-", snapshot_interval=5)
        engine.register_entity_type(CounterBehavior, prefix="counter-")
        engine.send_command("acc-1", OpenAccount(initial_balance=10))
        for _ in range(6):
            engine.send_command("acc-1", Credit(amount=1))

        async def concurrent() -> None:
            await asyncio.gather(*(engine.send_command_async(f"acc-{i}", OpenAccount(initial_balance=i)) for i in range(2, 22)))

        asyncio.run(concurrent())
        assert engine.send_command("counter-1", Increment(by=3)) == (Counter(value=3), 1)
    with ego.Engine("py", store=store()) as engine:
        engine.register_entity_type(AccountBehavior, prefix="acc-")
        engine.register_entity_type(CounterBehavior, prefix="counter-")
        state, revision = engine.get_state("acc-1")
        assert (state.balance, revision) == (16, 7)
        assert engine.get_state("acc-21")[0].balance == 21
        assert engine.get_state("counter-1") == (Counter(value=3), 1)
    check = SqliteStore(path)
    assert check.latest_snapshot("acc-1").sequence_number == 5


def test_a_python_stores_concurrency_error_keeps_its_meaning(tmp_path: Path) -> None:
    path = str(tmp_path / "ego.sqlite3")
    with ego.Engine("py", store=SqliteStore(path)) as engine:
        engine.register_entity_type(AccountBehavior)
        engine.send_command("a", OpenAccount(initial_balance=0))
        # Another writer appends behind the entity's back.
        other = SqliteStore(path)
        e = ego.v1.Event(persistence_id="a", sequence_number=2)
        from bank_pb2 import AccountCredited

        e.event.Pack(AccountCredited(amount=7))
        other.write_events([e])
        with pytest.raises(errors.ConcurrencyError) as info:
            engine.send_command("a", Credit(amount=1))
        assert (info.value.persistence_id, info.value.expected, info.value.actual) == ("a", 1, 2)
        assert engine.send_command("a", Credit(amount=1))[0].balance == 8


class Broken:
    """A store whose writes fail with an exception of its own."""

    def __init__(self) -> None:
        self._store = ego.MemoryStore()

    def __getattr__(self, name: str) -> Any:
        if name == "write_events":

            def fail(events: Any) -> None:
                raise OSError("disk unplugged")

            return fail
        return getattr(self._store, name)


def test_other_exceptions_of_a_python_store_are_store_errors(engine: ego.Engine) -> None:
    with ego.Engine("broken", store=Broken()) as broken:
        broken.register_entity_type(AccountBehavior)
        with pytest.raises(errors.StoreError, match="OSError: disk unplugged"):
            broken.send_command("a", OpenAccount(initial_balance=0))


def test_an_object_that_is_not_a_store_is_refused() -> None:
    with pytest.raises(errors.ConfigurationError, match="lacks write_events"):
        ego.Engine(events_store=object())  # type: ignore[arg-type]
