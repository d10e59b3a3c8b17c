"""The engine: hosts entities, routes commands to them, persists what they produce."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from ego import _ego
from ego.behaviors import DurableStateBehavior, EventSourcedBehavior
from ego.errors import ConfigurationError
from ego.stores import MemoryStore, Store

__all__ = ["Engine"]

S = TypeVar("S", bound=Message)
Behavior = EventSourcedBehavior[Any, Any, Any] | DurableStateBehavior[Any, Any]

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - runs at interpreter exit
    for engine in list(_engines):
        with contextlib.suppress(Exception):
            engine.stop(timeout=5.0)


def _entity_options(
    snapshot_interval: int,
    passivate_after: float | None,
    batch_threshold: int,
    batch_flush_window: float,
    mailbox_capacity: int,
) -> tuple[int, float | None, int, float, int]:
    for name, value in (("snapshot_interval", snapshot_interval), ("batch_threshold", batch_threshold)):
        if not isinstance(value, int) or value < 0:
            raise ConfigurationError(f"{name} must be a non-negative int, got {value!r}")
    if not isinstance(mailbox_capacity, int) or mailbox_capacity < 1:
        raise ConfigurationError(f"mailbox_capacity must be a positive int, got {mailbox_capacity!r}")
    if passivate_after is not None and not passivate_after > 0:
        raise ConfigurationError(f"passivate_after must be a positive number of seconds or None, got {passivate_after!r}")
    if not batch_flush_window >= 0:
        raise ConfigurationError(f"batch_flush_window must be a non-negative number of seconds, got {batch_flush_window!r}")
    return snapshot_interval, passivate_after, batch_threshold, float(batch_flush_window), mailbox_capacity


class Engine(_ego.EngineCore):
    """Runs entities on stores.

    ``store`` serves as events, snapshot and state store at once; the three can also be given
    separately. Each is one of ego's stores (:class:`~ego.RocksDBStore`,
    :class:`~ego.PostgresStore`, :class:`~ego.MemoryStore`) or a store written in Python
    (:mod:`ego.stores`). With no store at all the engine runs on a fresh
    :class:`~ego.MemoryStore`.

    Example::

        with ego.Engine("bank", store=ego.RocksDBStore("data/bank")) as engine:
            engine.register_entity_type(AccountBehavior, prefix="account-")
            state, revision = engine.send_command("account-1", OpenAccount(initial_balance=100))

    The engine is started by :meth:`start` (or by entering it as a context manager) and
    stopped by :meth:`stop`. Commands to one entity run one at a time, in the order they
    were sent; different entities run independently.

    Hot methods come straight from the Rust core (no Python frame in between):

    - ``send_command(entity_id, command, timeout=None) -> (state, revision)``
    - ``send_command_async(entity_id, command) -> asyncio.Future[(state, revision)]``
    - ``get_state(entity_id, timeout=None)`` / ``get_state_async(entity_id)``: the confirmed
      state, after the commands sent before the query.
    - ``stop_entity(entity_id)``, ``is_live(entity_id)``, ``live_count()``.
    """

    #: The stores the engine runs on (each once).
    stores: tuple[Store, ...]

    def __new__(
        cls,
        name: str = "ego",
        *,
        store: Store | None = None,
        events_store: Store | None = None,
        snapshot_store: Store | None = None,
        state_store: Store | None = None,
        shards: int = 8,
        max_message_bytes: int = 1 << 20,
        replay_page_size: int = 1024,
        io_threads: int = 2,
    ) -> Engine:
        if store is None and events_store is None and snapshot_store is None and state_store is None:
            store = MemoryStore()
        events_store = events_store if events_store is not None else store
        snapshot_store = snapshot_store if snapshot_store is not None else store
        state_store = state_store if state_store is not None else store
        self = super().__new__(
            cls, name, events_store, snapshot_store, state_store, shards, max_message_bytes, replay_page_size, io_threads
        )
        distinct: list[Store] = []
        for s in (events_store, snapshot_store, state_store):
            if s is not None and all(s is not d for d in distinct):
                distinct.append(s)
        self.stores = tuple(distinct)
        _engines.add(self)
        return self

    def __init__(self, name: str = "ego", **settings: Any) -> None:
        # Everything happens in __new__ (the Rust base class is built there).
        pass

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Engine:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    # -- entities --------------------------------------------------------------------------

    def entity(
        self,
        behavior: Behavior,
        *,
        snapshot_interval: int = 0,
        passivate_after: float | None = None,
        batch_threshold: int = 0,
        batch_flush_window: float = 0.005,
        mailbox_capacity: int = 10_000,
    ) -> tuple[Any, int]:
        """Spawns an entity with this behaviour (its id is ``behavior.id()``), recovers its
        state from the stores and returns ``(state, revision)``. Idempotent: if the entity
        exists, it is kept and its current state returned.

        Options:

        - ``snapshot_interval``: snapshot the state each time the revision crosses a multiple
          of it (0: never).
        - ``passivate_after``: seconds without commands after which the entity leaves memory;
          the next command brings it back transparently (None: never).
        - ``batch_threshold`` / ``batch_flush_window``: write the events of several commands
          in one write, when this many events are pending or after this many seconds.
        - ``mailbox_capacity``: commands that may wait for the entity; more are refused with
          ``MailboxFullError``.
        """
        options = _entity_options(snapshot_interval, passivate_after, batch_threshold, batch_flush_window, mailbox_capacity)
        return self._spawn(_entity_id(behavior), behavior, *options)

    def durable_state_entity(
        self,
        behavior: DurableStateBehavior[Any, Any],
        *,
        passivate_after: float | None = None,
        batch_threshold: int = 0,
        batch_flush_window: float = 0.005,
        mailbox_capacity: int = 10_000,
    ) -> tuple[Any, int]:
        """Spawns a durable-state entity (the Go library's ``DurableStateEntity``): like
        :meth:`entity`, but only for :class:`~ego.DurableStateBehavior` (snapshots do not
        apply: the whole state is stored on every change)."""
        if not isinstance(behavior, DurableStateBehavior):
            raise ConfigurationError(f"durable_state_entity() needs an ego.DurableStateBehavior, got {type(behavior).__name__}")
        return self.entity(
            behavior,
            passivate_after=passivate_after,
            batch_threshold=batch_threshold,
            batch_flush_window=batch_flush_window,
            mailbox_capacity=mailbox_capacity,
        )

    def register_entity_type(
        self,
        factory: Callable[[str], Behavior],
        *,
        prefix: str = "",
        snapshot_interval: int = 0,
        passivate_after: float | None = None,
        batch_threshold: int = 0,
        batch_flush_window: float = 0.005,
        mailbox_capacity: int = 10_000,
    ) -> None:
        """Lets entities activate on their first command: a command (or ``get_state``) for an
        id that is not in memory and starts with ``prefix`` creates the entity with
        ``factory(entity_id)`` and recovers it from the stores. The longest matching prefix
        wins; ``prefix=""`` matches every id. The options are those of :meth:`entity`.

        The factory may return a new behaviour per entity or one shared instance (ego does not
        call ``id()`` on it: the entity id is the one the command was sent to).
        """
        options = _entity_options(snapshot_interval, passivate_after, batch_threshold, batch_flush_window, mailbox_capacity)
        if not callable(factory):
            raise ConfigurationError(f"factory must be callable, got {factory!r}")
        self._register(prefix, factory, *options)


def _entity_id(behavior: object) -> str:
    if not isinstance(behavior, (EventSourcedBehavior, DurableStateBehavior)):
        raise ConfigurationError(
            f"a behaviour must be an ego.EventSourcedBehavior or an ego.DurableStateBehavior, got {type(behavior).__name__}"
        )
    entity_id = behavior.id()
    if not isinstance(entity_id, str):
        raise ConfigurationError(f"{type(behavior).__name__}.id() must return a str, got {entity_id!r}")
    return entity_id
