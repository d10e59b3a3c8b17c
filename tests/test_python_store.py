"""Stores written in Python (the store protocol): the engine runs on them, synchronous or
async, and their errors keep their meaning."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlite_store import SqliteStore
from test_durable_state import CounterBehavior
from waiting import wait_until

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


ROLES = {
    **dict.fromkeys(
        [
            "write_events",
            "replay_events",
            "highest_sequence_number",
            "delete_events",
            "persistence_ids",
            "shard_events",
            "shard_heads",
        ],
        "events",
    ),
    **dict.fromkeys(["write_snapshot", "latest_snapshot", "delete_snapshots"], "snapshots"),
    **dict.fromkeys(["write_state", "read_state", "delete_state"], "state"),
    **dict.fromkeys(["write_offsets", "read_offsets", "reset_offsets"], "offsets"),
}


class Recording:
    """Wraps a store, plain or with `async def` methods; records by role the threads (and event
    loops) its methods are called on."""

    def __init__(self, store: SqliteStore, asynchronous: bool) -> None:
        self._store = store
        self._async = asynchronous
        self.threads: dict[str, set[int]] = {}
        self.loops: dict[str, set[int]] = {}
        self.calls: list[str] = []
        self.thread_names: set[str] = set()

    def _record(self, name: str) -> None:
        tid = threading.get_native_id()
        self.threads.setdefault(ROLES[name], set()).add(tid)
        self.thread_names.add(Path(f"/proc/self/task/{tid}/comm").read_text().strip())
        self.calls.append(name)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name not in ROLES:
            return method
        if not self._async:

            def call(*args: Any) -> Any:
                self._record(name)
                return method(*args)

            return call

        async def call_async(*args: Any) -> Any:
            self._record(name)
            self.loops.setdefault(ROLES[name], set()).add(id(asyncio.get_running_loop()))
            return method(*args)

        return call_async


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_python_store_is_called_from_one_thread_of_its_own_per_role(tmp_path: Path, kind: str) -> None:
    """What docs/stores.md says: one thread per role the object serves (each projection's
    offsets included), none of them the caller's; an async store gets one event loop per role."""
    store = Recording(SqliteStore(str(tmp_path / "ego.sqlite3")), asynchronous=kind == "async")
    handled: list[ego.PersistedEvent] = []
    with ego.Engine("py", store=store) as engine:
        engine.register_entity_type(AccountBehavior, prefix="acc-", snapshot_interval=2)
        engine.register_entity_type(CounterBehavior, prefix="counter-")
        engine.add_projection("seen", handled.extend)
        engine.send_command("acc-1", OpenAccount(initial_balance=1))
        engine.send_command("acc-1", Credit(amount=1))
        engine.send_command("counter-1", Increment(by=1))
        wait_until(lambda: len(handled) == 2 and "write_snapshot" in store.calls, what="the projection and the snapshot")
        wait_until(lambda: "write_offsets" in store.calls, what="the projection's offsets")
    assert set(store.threads) == {"events", "snapshots", "state", "offsets"}
    assert all(len(threads) == 1 for threads in store.threads.values()), store.threads
    threads = [next(iter(t)) for t in store.threads.values()]
    assert len(set(threads)) == 4
    assert threading.get_native_id() not in threads
    assert store.thread_names == {"ego-pystore"}
    if kind == "async":
        assert all(len(loops) == 1 for loops in store.loops.values()), store.loops
        assert len({next(iter(loops)) for loops in store.loops.values()}) == 4
