"""The engine: hosts entities, routes commands to them, persists what they produce."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from google.protobuf.message import Message

from ego import _ego
from ego._ego import EntityOptions
from ego.adapters import EventAdapter
from ego.behaviors import DurableStateBehavior, EventSourcedBehavior
from ego.encryption import Encryption
from ego.entity_ref import EntityRef
from ego.errors import ConfigurationError, InvalidEntityIdError, ProjectionFailedError, ProjectionTimeoutError, ValidationError
from ego.logs import Logger, StdLogger
from ego.projections import PersistedEvent, PersistedState, Recovery, RecoveryPolicy, Subscription
from ego.publishers.protocol import EventPublisher, StatePublisher
from ego.publishers.runner import PublisherRunner
from ego.retention import RetentionPolicy
from ego.sagas.behavior import SagaBehavior, SagaInfo
from ego.sagas.records import SAGA_PREFIX, saga_entity_id
from ego.sagas.runtime import SagaRuntime, check_saga_id
from ego.stores import MemoryStore, Store
from ego.telemetry import Telemetry
from ego.timestamps import I64_MAX, I64_MIN, to_nanos

__all__ = ["Engine", "EntityOptions", "ShardLag"]

S = TypeVar("S", bound=Message)
C = TypeVar("C", bound=Message)
Behavior = EventSourcedBehavior[Any, Any, Any] | DurableStateBehavior[Any, Any]

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - runs at interpreter exit
    for engine in list(_engines):
        with contextlib.suppress(Exception):
            engine.stop(timeout=5.0)


@dataclass(frozen=True)
class ShardLag:
    """How far a projection is behind in one shard."""

    events_behind: int
    """Events written but not handled yet."""
    time_behind: float
    """Seconds between the newest event and the last handled one (0 when caught up), as a
    float: approximate below the microsecond; ``time_behind_ns`` is exact."""
    offset: int
    """The last handled position."""
    head: int
    """The newest position."""
    time_behind_ns: int = 0
    """``time_behind`` exactly, in nanoseconds (an ``int``)."""


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

    A command to an idle entity runs on the caller's thread (see ``inline`` in
    :meth:`entity`); queued work runs on the engine's ``bridge_threads`` (4 by default): one
    thread does it while it keeps up, and another takes over the queue while every busy one
    has been stuck in one handler for more than 10 ms (a handler that sleeps or waits on I/O),
    so one slow handler does not hold up other entities. ``io_threads`` run store I/O.

    Hot methods come straight from the Rust core (no Python frame in between):

    - ``send_command(entity_id, command, timeout=None) -> (state, revision)``
    - ``send_command_async(entity_id, command) -> asyncio.Future[(state, revision)]``
    - ``send_commands(pairs, timeout=None, return_exceptions=True) -> list`` and
      ``send_commands_async(pairs, return_exceptions=True) -> asyncio.Future[list]``: many
      ``(entity_id, command)`` pairs (or ``(entity_id, command, idempotency_key)`` triples)
      in one call; slot ``i`` of the list is pair ``i``'s
      ``(state, revision)`` or the exception of its rejected or failed command (raises
      ``EngineClosedError`` when stopped, ``ValidationError`` when ``pairs`` is not iterable).
      Example: ``outcomes = engine.send_commands([("a-1", Credit(amount=5)), ("a-2", Credit(amount=7))])``.
    - ``get_state(entity_id, timeout=None)`` / ``get_state_async(entity_id)``: the confirmed
      state, after the commands sent before the query.
    - ``stop_entity(entity_id)``, ``is_live(entity_id)``, ``live_count()``.
    """

    #: The stores the engine runs on (each once).
    stores: tuple[Store, ...]
    #: OpenTelemetry settings (None: off).
    telemetry: Telemetry | None
    #: Where the engine logs.
    logger: Logger
    #: Encryption at rest (None: records are stored in clear).
    encryption: Encryption | None
    _publishers: dict[str, PublisherRunner]
    _publisher_args: dict[str, tuple[Any, ...]]
    # The configuration a restart brings back (see start()).
    _entity_types: dict[str, tuple[Callable[[str], Behavior], EntityOptions]]
    _projection_args: dict[str, tuple[Any, ...]]
    _spawned: dict[str, tuple[Behavior, EntityOptions]]
    _sagas: SagaRuntime | None

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
        bridge_threads: int = 4,
        event_adapters: Sequence[EventAdapter] = (),
        telemetry: Telemetry | None = None,
        logger: Logger | None = None,
        encryption: Encryption | None = None,
    ) -> Engine:
        if store is None and events_store is None and snapshot_store is None and state_store is None:
            store = MemoryStore()
        events_store = events_store if events_store is not None else store
        snapshot_store = snapshot_store if snapshot_store is not None else store
        state_store = state_store if state_store is not None else store
        for adapter in event_adapters:
            if not callable(getattr(adapter, "adapt", None)):
                raise ConfigurationError(
                    f"an event adapter needs an adapt(type_url, payload, sequence_number) method: {adapter!r}"
                )
        if encryption is not None and not isinstance(encryption, Encryption):
            raise ConfigurationError(f"encryption must be an ego.Encryption, got {encryption!r}")
        if telemetry is not None and not isinstance(telemetry, Telemetry):
            raise ConfigurationError(f"telemetry must be an ego.Telemetry, got {telemetry!r}")
        logger = StdLogger() if logger is None else logger
        missing = [m for m in ("debug", "info", "warning", "error") if not callable(getattr(logger, m, None))]
        if missing:
            raise ConfigurationError(
                f"a logger needs debug, info, warning and error methods; {logger!r} lacks {', '.join(missing)}"
            )
        self = super().__new__(
            cls,
            name,
            events_store,
            snapshot_store,
            state_store,
            shards,
            max_message_bytes,
            replay_page_size,
            io_threads,
            list(event_adapters),
            telemetry,
            logger,
            encryption,
            bridge_threads=bridge_threads,
        )
        self.telemetry = telemetry
        self.encryption = encryption
        self.logger = logger
        distinct: list[Store] = []
        for s in (events_store, snapshot_store, state_store):
            if s is not None and all(s is not d for d in distinct):
                distinct.append(s)
        self.stores = tuple(distinct)
        self._publishers = {}
        self._publisher_args = {}
        self._entity_types = {}
        self._projection_args = {}
        self._spawned = {}
        self._sagas = None
        _engines.add(self)
        return self

    def __init__(
        self,
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
        bridge_threads: int = 4,
        event_adapters: Sequence[EventAdapter] = (),
        telemetry: Telemetry | None = None,
        logger: Logger | None = None,
        encryption: Encryption | None = None,
    ) -> None:
        # Everything happens in __new__ (the Rust base class is built there); the signature
        # is repeated so that type checkers check the settings.
        pass

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the engine (its bridge threads and I/O runtime). Idempotent.

        Configure first, then start: entity types registered and projections added before
        ``start()`` begin with it. A restart (``stop()`` then ``start()``) keeps the
        configuration: the entity types, the projections (they resume from their offsets), the
        entities spawned with :meth:`entity` (recovered again here; one that fails to recover
        is logged and left out) and the publishers that can be used again after ``stop()``
        closed them (they resume from their checkpoints): the connectors with ``reopen()``
        (Kafka, NATS, Pulsar, the WebSocket client), and publishers without ``close()``.
        Others (a publisher of your own whose ``close()`` is final) are logged and left out:
        add them again.
        """
        if self.running:
            return
        super().start()
        try:
            for prefix, (factory, options) in self._entity_types.items():
                self._register(prefix, factory, options)
            for args in self._projection_args.values():
                self._add_projection(*args)
            self._restore_publishers()
        except BaseException:
            super().stop(0.0)
            raise
        for entity_id, (behavior, options) in list(self._spawned.items()):
            try:
                self._spawn(entity_id, behavior, options)
            except Exception as e:
                self.logger.warning("a spawned entity failed to recover on start", entity_id=entity_id, error=repr(e))
        if self.telemetry is not None:
            self.telemetry._attach(self)
        self.logger.info("engine started", engine=self.name)

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the engine: refuses new commands, lets queued ones finish (up to ``timeout``
        seconds), then stops its threads. Idempotent."""
        if not self.running:
            super().stop(timeout)
            return
        # Sagas first: their drivers stop sending (what they did is in their journals).
        if self._sagas is not None:
            self._sagas.stop()
            self._sagas = None
            # Saga types are registered again after a restart (their readers belong to the
            # runtime that stopped).
            for name in [n for n in self._projection_args if n.startswith(SAGA_PREFIX)]:
                del self._projection_args[name]
        # Publishers next: a publish waiting for its broker returns at once, unacknowledged.
        for runner in list(self._publishers.values()):
            self._close_publisher(runner)
        self._publishers.clear()
        super().stop(timeout)
        self.logger.info("engine stopped", engine=self.name)

    def _restore_publishers(self) -> None:
        """Adds again the publishers the last ``stop()`` closed, those that can be reused."""
        for name, args in list(self._publisher_args.items()):
            publisher = args[0]
            reopen = getattr(publisher, "reopen", None)
            if callable(reopen):
                reopen()
            elif callable(getattr(publisher, "close", None)):
                self.logger.warning(
                    "a publisher closed by stop() is not restored (its close() is final and it has no reopen()): add it again",
                    publisher=name,
                )
                del self._publisher_args[name]
                continue
            self._add_publisher(*args)

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
        retention: RetentionPolicy | None = None,
        inline: bool = True,
        idempotency_window: int = 1000,
        shared: bool = False,
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
        - ``retention``: what to delete after each successful snapshot (:class:`~ego.RetentionPolicy`).
        - ``inline``: a command to an idle entity runs on the caller's thread (True, the
          fastest: no thread hop; with ``send_command_async`` the handler then runs on the
          event loop's thread). Set it False for behaviours whose handlers block (sleep,
          network or disk I/O): every command then runs on the engine's bridge threads, and
          the caller (or its event loop) only waits for the reply.
        - ``idempotency_window``: how many of its most recent idempotency keys the entity
          remembers (see ``send_command(..., idempotency_key=...)``).
        - ``shared``: several processes serve this entity id on one database (PostgreSQL).
          Before each command and each ``get_state`` the entity reads the journal head (a
          durable-state entity: its stored state) and folds what other processes wrote after
          its revision: one store read per command when nobody else wrote. Off (the default),
          each entity id must be served by one process: a write refused because another
          process wrote fails with :class:`~ego.errors.ConcurrencyError`, logs a warning and
          reloads the entity. Two shared engines writing the same entity at the same moment
          still race: the loser's command fails with ``ConcurrencyError`` (nothing of it was
          written; retry it) and the entity reloads. ``shared=True`` with ``batch_threshold``
          above 0 is a ``ConfigurationError`` (batched commands run on events not yet written).
        """
        if isinstance(behavior, DurableStateBehavior):
            _refuse_snapshot_options(type(behavior), snapshot_interval, retention)
        options = EntityOptions(
            snapshot_interval=snapshot_interval,
            passivate_after=passivate_after,
            batch_threshold=batch_threshold,
            batch_flush_window=batch_flush_window,
            mailbox_capacity=mailbox_capacity,
            retention=retention,
            inline=inline,
            idempotency_window=idempotency_window,
            shared=shared,
        )
        entity_id = _entity_id(behavior)
        outcome = self._spawn(entity_id, behavior, options)
        self._spawned[entity_id] = (behavior, options)
        return outcome

    def stop_entity(self, entity_id: str, timeout: float | None = None) -> None:
        """Stops an entity after the commands already sent to it (those sent later get
        :class:`~ego.errors.EntityStoppedError`). A later command activates it again only
        through a registered entity type; a restart of the engine does not bring it back.

        :raises EntityNotFoundError: no entity with this id is known.
        """
        self._spawned.pop(entity_id, None)
        super().stop_entity(entity_id, timeout)

    def durable_state_entity(
        self,
        behavior: DurableStateBehavior[Any, Any],
        *,
        passivate_after: float | None = None,
        batch_threshold: int = 0,
        batch_flush_window: float = 0.005,
        mailbox_capacity: int = 10_000,
        inline: bool = True,
        idempotency_window: int = 1000,
        shared: bool = False,
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
            inline=inline,
            idempotency_window=idempotency_window,
            shared=shared,
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
        retention: RetentionPolicy | None = None,
        inline: bool = True,
        idempotency_window: int = 1000,
        shared: bool = False,
    ) -> None:
        """Lets entities activate on their first command: a command (or ``get_state``) for an
        id that is not in memory and starts with ``prefix`` creates the entity with
        ``factory(entity_id)`` and recovers it from the stores. The longest matching prefix
        wins; ``prefix=""`` matches every id. The options are those of :meth:`entity`.

        The factory may return a new behaviour per entity or one shared instance (ego does not
        call ``id()`` on it: the entity id is the one the command was sent to).

        :raises ConfigurationError: a bad option, ``snapshot_interval``/``retention`` for a
            durable-state behaviour class (they do not apply: the whole state is stored on
            every change), or ``shared=True`` with ``batch_threshold`` above 0.

        Example (several processes serve the same products on one PostgreSQL database)::

            engine.register_entity_type(ProductBehavior, prefix="product-", shared=True)
        """
        if isinstance(factory, type) and issubclass(factory, DurableStateBehavior):
            _refuse_snapshot_options(factory, snapshot_interval, retention)
        options = EntityOptions(
            snapshot_interval=snapshot_interval,
            passivate_after=passivate_after,
            batch_threshold=batch_threshold,
            batch_flush_window=batch_flush_window,
            mailbox_capacity=mailbox_capacity,
            retention=retention,
            inline=inline,
            idempotency_window=idempotency_window,
            shared=shared,
        )
        if not callable(factory):
            raise ConfigurationError(f"factory must be callable, got {factory!r}")
        if isinstance(prefix, str) and prefix.startswith(SAGA_PREFIX):
            raise ConfigurationError(f'the prefix "{SAGA_PREFIX}" is reserved for sagas')
        if not isinstance(prefix, str) or _has_control(prefix):
            raise ValidationError("an entity type prefix is a str without control characters")
        if self.running:
            self._register(prefix, factory, options)
        self._entity_types[prefix] = (factory, options)

    @overload
    def entity_ref(self, behavior: type[EventSourcedBehavior[C, Any, S]], entity_id: str) -> EntityRef[C, S]: ...
    @overload
    def entity_ref(self, behavior: type[DurableStateBehavior[C, S]], entity_id: str) -> EntityRef[C, S]: ...
    def entity_ref(self, behavior: type[Any], entity_id: str) -> EntityRef[Any, Any]:
        """A typed handle on the entity ``entity_id`` served by ``behavior`` (its class):
        ``send(command)`` and ``get_state()`` return the behaviour's state type, and a type
        checker refuses commands of other types. Nothing is looked up or activated here.

        :raises ConfigurationError: ``behavior`` is not a behaviour class.
        :raises InvalidEntityIdError: the id is not valid.

        Example::

            account = engine.entity_ref(AccountBehavior, "account-1")
            state, revision = account.send(Credit(amount=5))   # state: Account
        """
        if not (isinstance(behavior, type) and issubclass(behavior, (EventSourcedBehavior, DurableStateBehavior))):
            raise ConfigurationError(f"entity_ref() takes a behaviour class, got {behavior!r}")
        if not isinstance(entity_id, str) or not entity_id or len(entity_id.encode()) > 255 or _has_control(entity_id):
            raise InvalidEntityIdError(f"invalid entity id {entity_id!r}: 1 to 255 bytes of UTF-8 without control characters")
        return EntityRef(self, entity_id)

    # -- sagas -----------------------------------------------------------------------------

    def _saga_runtime(self) -> SagaRuntime:
        if self._sagas is None:
            self._sagas = SagaRuntime(self)
        return self._sagas

    def _route_saga_steps(self, sender: Any) -> None:
        """Sends the steps of this engine's sagas through ``sender`` (an object with
        ``send_command_async(entity_id, command, idempotency_key=...)``, such as an
        ``ego.cluster.Cluster`` client) instead of to this engine's own entities. The sagas'
        own journals stay in this engine. Used by a cluster's runner."""
        self._saga_runtime().commands = sender

    def register_saga_type(
        self,
        factory: Callable[[str], SagaBehavior[Any]],
        *,
        name: str | None = None,
        timeout: float | None = None,
        cls: type[SagaBehavior[Any]] | None = None,
    ) -> str:
        """Registers a saga type and returns its name. ``factory`` is an
        :class:`~ego.SagaBehavior` subclass called with the saga id (or any callable doing the
        same; then give the class as ``cls``). The engine uses it to resume the type's sagas
        after a restart (every one the journal has that is not over goes on, and a deadline
        that passed while the process was down fires now), and to start one when the journal
        has an event of a type in ``started_by``.

        - ``name``: the type's name in the journal (default: the class's qualified name);
          keep it stable across releases.
        - ``timeout``: seconds after its start at which a saga of this type compensates if it
          is still running (None or 0: none), for sagas started by events and by
          :meth:`saga` without a timeout.

        Idempotent for the same class. Raises :class:`~ego.errors.ConfigurationError` for a
        bad factory, name or timeout. Example::

            engine.register_saga_type(TransferSaga, timeout=30.0)
        """
        return self._saga_runtime().register(factory, name, timeout, cls)

    def saga(self, behavior: SagaBehavior[Any], *, timeout: float | None = None) -> SagaInfo:
        """Starts a saga (the Go library's ``Engine.Saga``): its id is ``behavior.id()``, its
        state ``behavior.initial_state()``; ``timeout``: seconds after which it compensates if
        it is still running (None: the type's timeout, else none). Idempotent: a saga that was
        started before goes on as it was. Returns its :class:`~ego.SagaInfo`.

        Its class is registered as by :meth:`register_saga_type` if it is not yet (it must
        then be constructible as ``cls(saga_id)``).

        :raises ValidationError: a bad saga id (1 to 200 bytes, no control characters).
        :raises ConfigurationError: not an :class:`~ego.SagaBehavior`, a bad timeout.

        Example::

            info = engine.saga(TransferSaga("transfer-7"), timeout=30.0)
        """
        runtime = self._saga_runtime()
        saga_id, start = runtime.start_command(behavior, timeout)
        record, revision = self.send_command(saga_entity_id(saga_id), start)
        runtime.wake([saga_id], record)
        return runtime.info(saga_id, record, revision)

    async def saga_async(self, behavior: SagaBehavior[Any], *, timeout: float | None = None) -> SagaInfo:
        """:meth:`saga` for asyncio callers."""
        runtime = self._saga_runtime()
        saga_id, start = runtime.start_command(behavior, timeout)
        record, revision = await self.send_command_async(saga_entity_id(saga_id), start)
        runtime.wake([saga_id], record)
        return runtime.info(saga_id, record, revision)

    def saga_status(self, saga_id: str, timeout: float | None = None) -> SagaInfo:
        """The saga's :class:`~ego.SagaInfo` (id, status, reason, state), as its journal says:
        ``running``, ``completed``, ``compensating``, ``compensated`` or ``failed`` (with the
        reason: the error of the compensating command the target rejected, say).

        :raises SagaNotFoundError: no saga with this id was started.

        Example::

            assert engine.saga_status("transfer-7").status is ego.SagaStatus.COMPLETED
        """
        runtime = self._saga_runtime()
        record, revision = self.get_state(saga_entity_id(check_saga_id(saga_id)), timeout)
        return runtime.info(saga_id, record, revision)

    async def saga_status_async(self, saga_id: str) -> SagaInfo:
        """:meth:`saga_status` for asyncio callers."""
        runtime = self._saga_runtime()
        record, revision = await self.get_state_async(saga_entity_id(check_saga_id(saga_id)))
        return runtime.info(saga_id, record, revision)

    # -- encryption and erasure ------------------------------------------------------------

    def erase_entity(self, entity_id: str, delete_data: bool = False, timeout: float | None = None) -> None:
        """Erases an entity (GDPR erasure by crypto-shredding). Needs ``encryption``.

        In order: the entity's writes are refused from now on; the live entity stops after the
        commands already queued for it (those queued behind get
        :class:`~ego.errors.EntityErasedError`); its data key is destroyed and the erasure
        recorded, durably, before this returns. From then on its events read as tombstones
        (:attr:`PersistedEvent.erased`), its snapshots and state cannot be read, and a command
        to its id raises ``EntityErasedError``: an erased id is never used again.
        ``delete_data=True`` also deletes its events, snapshots and durable state.

        Idempotent, and crash-safe: after a crash at any moment the entity is either erased or
        intact, and calling this again finishes the erasure. ``timeout``: seconds to wait for
        the entity's queued commands (None: as long as it takes).

        :raises ConfigurationError: the engine does not encrypt.
        :raises StoreError: the key store failed; nothing was erased, call again.

        Example::

            engine.erase_entity("customer-42")
        """
        super().erase_entity(entity_id, delete_data, timeout)
        self._spawned.pop(entity_id, None)

    async def erase_entity_async(self, entity_id: str, *, delete_data: bool = False, timeout: float | None = None) -> None:
        """:meth:`erase_entity` for asyncio callers (runs in the loop's default executor)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: self.erase_entity(entity_id, delete_data=delete_data, timeout=timeout))

    def rewrap_data_keys(self) -> int:
        """Re-wraps every data key under the current master key (after a master-key rotation:
        the new key is ``master_key``, the old one in ``previous_master_keys``) and returns how
        many were re-wrapped. No event is rewritten. Resumable: after a crash, call it again.
        Once it returned, the previous master keys can be dropped from the settings.

        :raises ConfigurationError: the engine does not encrypt.
        :raises MasterKeyError: a data key is wrapped by a master key the engine was not given.
        """
        return int(super().rewrap_data_keys())

    # -- projections and the event stream ---------------------------------------------------

    def add_projection(
        self,
        name: str,
        handler: Callable[[list[PersistedEvent]], Any] | Any,
        *,
        offset_store: Store | None = None,
        batch_size: int = 512,
        recovery: Recovery | None = None,
        dead_letter: Callable[[str, str, PersistedEvent, int, BaseException], Any] | None = None,
        poll_interval: float = 0.5,
        start: str = "beginning",
        transactional: bool = False,
        event_types: Sequence[type[Message]] | None = None,
        on_other_journal: str = "fail",
        source: str = "events",
        lease_ttl: float = 10.0,
    ) -> None:
        """Starts a projection named ``name``.

        ``handler`` is called with a list of :class:`~ego.PersistedEvent` (a batch of one shard,
        in position order; plain or ``async def``); or give an object with a ``handle(event)``
        method to be called once per event. Shards are read in parallel; handler calls are
        serialized on the projection's own thread. The projection's positions are kept in
        ``offset_store`` (default: the engine's events store).

        - ``recovery``: what to do when the handler raises (:class:`~ego.Recovery`).
        - ``dead_letter(projection, persistence_id, event, sequence_number, error)``: receives
          the events a skipping policy skipped.
        - ``poll_interval``: seconds between looks for events written by other processes (this
          engine's writes wake the projection at once).
        - ``start``: ``"beginning"`` or ``"end"`` (skip the history), for a projection with no
          offsets yet.
        - ``transactional``: the handler returns read-model writes (:class:`~ego.Sql` for a
          PostgreSQL offset store, :class:`~ego.Put`/:class:`~ego.Delete` for RocksDB or
          in-memory ones) that are committed in one transaction with the offset: exactly once.
          A statement the offset store refuses is the handler's failure (``recovery`` decides;
          :class:`~ego.errors.ReadModelWriteError`).
        - ``event_types``: protobuf message classes; the handler gets only events of these
          types (the others are passed over, and the offsets move past them). None: all.
        - ``on_other_journal``: offsets record the journal they belong to. When they belong
          to another journal than the engine's (the journal moved to a new store, the offset
          store stayed), ``"fail"`` raises :class:`~ego.errors.JournalMismatchError`;
          ``"start_over"`` forgets them and starts from ``start`` on this journal.
        - ``source``: ``"events"`` (the event journal) or ``"states"``: the durable-state
          change log, every version of every durable-state entity written from then on, in
          order per entity. The handler then gets :class:`~ego.PersistedState` records
          (``persistence_id``, ``version``, ``state``, ``timestamp_ns``, ``position``; a
          tombstone with ``erased`` set for an erased entity), with the same offsets, recovery,
          dead letters, rebuild and lag. ``event_types`` then filters on state types. A state
          store without a change log (a store written in Python without
          ``shard_state_changes``) raises :class:`~ego.errors.ConfigurationError`. Offsets over
          states do not record a journal identity (``on_other_journal`` does not apply).
        - ``lease_ttl``: seconds. With a PostgreSQL offset store, one runner per projection
          name runs across every process sharing the database: the one holding the
          projection's lease (renewed every ``lease_ttl / 3``; every offset commit checks it in
          its transaction). Engines in other processes report ``"standby"`` in
          :meth:`projection_status` and take the lease over once it expires (within about
          ``lease_ttl`` after its owner died) or at once when its owner stops. Memory,
          RocksDB and Python-written stores serve one process: the lease is always held.
          Raises :class:`~ego.errors.ConfigurationError` unless above 0 (at most a day).

        Entity types and projections may be added before :meth:`start`; they begin with it.

        Example::

            engine.add_projection("credits", count_credits, event_types=[AccountCredited])
            engine.add_projection("carts", lambda changes: print([c.version for c in changes]), source="states")
        """
        if source not in ("events", "states"):
            raise ConfigurationError(f'source must be "events" or "states", got {source!r}')
        if start not in ("beginning", "end"):
            raise ConfigurationError(f'start must be "beginning" or "end", got {start!r}')
        if on_other_journal not in ("fail", "start_over"):
            raise ConfigurationError(f'on_other_journal must be "fail" or "start_over", got {on_other_journal!r}')
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
        per_event = not callable(handler) and callable(getattr(handler, "handle", None))
        target = getattr(handler, "handle") if per_event else handler  # noqa: B009
        if not callable(target):
            raise ConfigurationError(
                "a projection handler is a callable taking a list of events, or an object with handle(event)"
            )
        if offset_store is None:
            offset_store = self.stores[0] if self.stores else None
        type_urls: list[str] | None = None
        if event_types is not None:
            type_urls = []
            for t in event_types:
                if not (isinstance(t, type) and issubclass(t, Message)):
                    raise ConfigurationError(f"event_types takes protobuf message classes, got {t!r}")
                type_urls.append(f"type.googleapis.com/{t.DESCRIPTOR.full_name}")
        recovery = recovery or Recovery()
        args = (
            name,
            target,
            per_event,
            offset_store,
            batch_size,
            recovery.policy.value,
            recovery.attempts,
            recovery.backoff,
            recovery.max_backoff,
            dead_letter,
            poll_interval,
            start == "end",
            transactional,
            None,
            "projection",
            type_urls,
            on_other_journal == "start_over",
            False,
            source,
            _lease_ttl(lease_ttl),
        )
        if self.running:
            self._add_projection(*args)
        elif name in self._projection_args:
            raise ConfigurationError(f"a projection named {name!r} is already added")
        elif not isinstance(name, str) or not name or "\0" in name:
            raise ValidationError("a projection name must be a non-empty str without NUL")
        self._projection_args[name] = args

    def remove_projection(self, name: str) -> None:
        """Stops and forgets a projection (its offsets stay in its offset store); a restart
        does not bring it back. Raises :class:`~ego.errors.ValidationError` for an unknown
        name."""
        if not self.running:
            if self._projection_args.pop(name, None) is None:
                raise ValidationError(f'no projection named "{name}"')
            return
        super().remove_projection(name)
        self._projection_args.pop(name, None)

    def is_projection_running(self, name: str) -> bool:
        """Whether the projection runs (False once a failure stopped it, or unknown)."""
        status = self._projection_status(name)
        return status is not None and status[0] == "running"

    def projection_status(self, name: str) -> tuple[str, str | None]:
        """``("running" | "failed" | "stopped" | "paused" | "standby", error or None)``:
        ``"standby"`` while a runner in another process holds the projection's lease (see
        ``lease_ttl`` in :meth:`add_projection`)."""
        status = self._projection_status(name)
        if status is None:
            raise ValidationError(f'no projection named "{name}"')
        return status

    def projection_lag(self, name: str) -> dict[int, ShardLag]:
        """Events and time behind, per shard."""
        return {
            shard: ShardLag(events_behind=behind, time_behind=nanos / 1e9, offset=offset, head=head, time_behind_ns=nanos)
            for shard, behind, nanos, offset, head in self._projection_lag(name)
        }

    def wait_for_projection(self, name: str, timeout: float | None = 30.0) -> None:
        """Waits until the projection has handled every event the journal held when this was
        called (in every shard), e.g. before reading its read model in a test or after a
        migration. ``timeout`` in seconds (None: as long as it takes).

        :raises ValidationError: no projection with this name.
        :raises ProjectionFailedError: the projection stopped on a failure (the message has
            its error) or was stopped.
        :raises ProjectionTimeoutError: still behind at the deadline (a ``TimeoutError``).

        Example::

            engine.send_command("account-1", Credit(amount=5))
            engine.wait_for_projection("balances", timeout=5)
        """
        targets = {shard: lag.head for shard, lag in self.projection_lag(name).items()}
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while True:
            lag = self.projection_lag(name)
            if all(lag[s].offset >= head for s, head in targets.items() if s in lag):
                return
            self._check_projection_alive(name)
            if deadline is not None and time.monotonic() >= deadline:
                behind = sum(max(0, head - lag[s].offset) for s, head in targets.items() if s in lag)
                raise ProjectionTimeoutError(f"projection {name!r} is still {behind} event(s) behind after {timeout}s")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    async def wait_for_projection_async(self, name: str, timeout: float | None = 30.0) -> None:
        """:meth:`wait_for_projection` for asyncio callers (polls without blocking the loop)."""
        targets = {shard: lag.head for shard, lag in self.projection_lag(name).items()}
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while True:
            lag = self.projection_lag(name)
            if all(lag[s].offset >= head for s, head in targets.items() if s in lag):
                return
            self._check_projection_alive(name)
            if deadline is not None and time.monotonic() >= deadline:
                raise ProjectionTimeoutError(f"projection {name!r} is still behind after {timeout}s")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _check_projection_alive(self, name: str) -> None:
        status, error = self.projection_status(name)
        if status == "failed":
            raise ProjectionFailedError(f"projection {name!r} failed: {error}")
        if status == "stopped":
            raise ProjectionFailedError(f"projection {name!r} is stopped")

    def projection_stats(self, name: str) -> dict[str, int]:
        """Counters of a projection: events, batches, dead_letters, store_retries."""
        return self._projection_stats(name)

    def rebuild_projection(
        self, name: str, from_time: datetime.datetime | float | None = None, *, from_timestamp_ns: int | None = None
    ) -> None:
        """Hands the projection again exactly the events written after a point in time (their
        timestamp is later than it; None: from the beginning). Its read model should be reset
        to that point first.

        - ``from_time``: a :class:`datetime.datetime`, converted exactly (a naive one is local
          time), or Unix seconds: an ``int`` is exact, a ``float`` is approximate (about a
          quarter of a microsecond at today's dates; see :mod:`ego.timestamps`).
        - ``from_timestamp_ns``: the point as Unix nanoseconds, exactly as events carry it
          (``PersistedEvent.timestamp_ns``); give one or the other.

        Raises :class:`~ego.errors.ValidationError` for an unknown projection, a value of
        another type, or both arguments; :class:`~ego.errors.ProjectionLeaseHeldError` when the
        offsets are shared by processes (PostgreSQL) and another process runs the projection
        (the offsets are written under the projection's lease; nothing was changed). Example::

            engine.rebuild_projection("balances", datetime(2026, 11, 1, tzinfo=timezone.utc))
        """
        if from_time is not None and from_timestamp_ns is not None:
            raise ValidationError("give from_time or from_timestamp_ns, not both")
        if from_timestamp_ns is not None:
            if not isinstance(from_timestamp_ns, int):
                raise ValidationError(f"from_timestamp_ns must be an int, got {type(from_timestamp_ns).__name__}")
            after = min(max(from_timestamp_ns, I64_MIN), I64_MAX)
        elif from_time is None:
            after = I64_MIN
        else:
            after = to_nanos(from_time)
        self._rebuild_projection(name, after)

    # -- publishers ------------------------------------------------------------------------

    def add_event_publisher(
        self,
        publisher: EventPublisher,
        *,
        name: str | None = None,
        start: str | datetime.datetime = "earliest",
        offset_store: Store | None = None,
        batch_size: int = 1000,
        on_refused: RecoveryPolicy = RecoveryPolicy.FAIL,
        dead_letter: Callable[[str, str, PersistedEvent, int, BaseException], Any] | None = None,
        poll_interval: float = 0.5,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        decrypt: bool = False,
        lease_ttl: float = 10.0,
    ) -> None:
        """Starts publishing the journal's events through ``publisher`` (a connector of
        :mod:`ego.publishers` or any object with ``publish(records)``).

        A publisher is a named, checkpointed reader of the journal: each shard's events go to
        ``publisher.publish`` in batches of up to ``batch_size``, in position order (so in
        sequence order per entity), and the checkpoint moves past a batch only once the broker
        acknowledged all of it. After a restart it resumes from the checkpoint: duplicates come
        only from the batch that was not acknowledged yet, and carry the same event id.

        - ``name``: the publisher's name (default: the publisher's ``id``, e.g. ``"ego-kafka"``).
        - ``start``: where a publisher with no checkpoint begins: ``"earliest"``, ``"latest"``
          or a ``datetime`` (the first event after it, per shard; converted exactly, a naive
          one is local time: :mod:`ego.timestamps`).
        - ``offset_store``: where the checkpoints are kept (default: the engine's events store).
        - ``on_refused``: what a record the broker refuses for good does:
          ``RecoveryPolicy.FAIL`` (the publisher stops; ``publisher_status`` tells why) or
          ``SKIP`` (it goes to ``dead_letter(publisher, persistence_id, event, seq, error)``,
          ``publisher`` being this publisher's ``name``; plain or ``async def``);
          ``RETRY_AND_*`` retry it 5 times first. Broker outages are not refusals: they are
          retried with backoff (``backoff`` doubling to ``max_backoff`` seconds) for as long as
          they last, and the lag grows meanwhile.
        - ``decrypt``: with ``Engine(..., encryption=...)``, events are published as stored
          (the payload is ciphertext, ``is_encrypted`` set, the key named by the
          ``ego-encryption-key-id`` header) unless ``decrypt=True``, which publishes the
          plaintext: the broker then holds personal data that erasing the entity cannot
          shred. An erased entity's events go out as tombstones either way.
        - ``lease_ttl``: seconds. With a PostgreSQL offset store, one publisher per name runs
          across the processes sharing the database (the one holding its lease); the others
          report ``"standby"`` and take over within about ``lease_ttl`` after it died, or at
          once when it stops (see :meth:`add_projection`).

        Raises :class:`~ego.errors.ConfigurationError` for a bad setting or a publisher without
        ``publish``, and :class:`~ego.errors.ValidationError` when the name is taken.

        Example::

            engine.add_event_publisher(ego.publishers.NatsPublisher("nats://127.0.0.1:4222"), name="nats")
        """
        self._add_publisher(
            publisher,
            "events",
            name,
            start,
            offset_store,
            batch_size,
            on_refused,
            dead_letter,
            poll_interval,
            backoff,
            max_backoff,
            not decrypt,
            lease_ttl,
        )

    def add_state_publisher(
        self,
        publisher: StatePublisher,
        *,
        name: str | None = None,
        start: str | datetime.datetime = "earliest",
        offset_store: Store | None = None,
        batch_size: int = 1000,
        on_refused: RecoveryPolicy = RecoveryPolicy.FAIL,
        dead_letter: Callable[[str, str, PersistedState, int, BaseException], Any] | None = None,
        poll_interval: float = 0.5,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        lease_ttl: float = 10.0,
        decrypt: bool = False,
    ) -> None:
        """Starts publishing every durable-state version through ``publisher``: the same
        connectors and protocol as :meth:`add_event_publisher`, reading the durable-state change
        log instead of the journal (every version written, in order per entity, at least once,
        checkpointed after the broker's acknowledgement).

        Each record carries one version: ``key`` = the persistence id, ``id`` (and the
        brokers' deduplication id) = ``persistence_id:version``, ``value`` = the
        ``ego.v1.DurableState`` envelope in the default format (the state message itself in
        the CloudEvents formats), ``source`` = the :class:`~ego.PersistedState`. Versions of an
        erased entity go out as tombstones (``erased``). With ``Engine(..., encryption=...)``,
        versions go out as stored (the state's bytes are ciphertext, ``is_encrypted`` set, the
        key named by the ``ego-encryption-key-id`` header) unless ``decrypt=True``, as for
        :meth:`add_event_publisher`. Give a connector its own subject,
        topic or stream for states (e.g. ``NatsPublisher(subject="ego.states.{entity_type}",
        stream="EGO_STATES")``). The settings are those of :meth:`add_event_publisher`;
        ``dead_letter`` gets ``(publisher, persistence_id, state, version, error)``, ``publisher``
        being this publisher's ``name``.

        Raises :class:`~ego.errors.ConfigurationError` as :meth:`add_event_publisher` does, and
        when the state store keeps no change log (a Python store without
        ``shard_state_changes``). One publisher per name runs across processes on PostgreSQL,
        as for :meth:`add_event_publisher` (``lease_ttl``).

        Example::

            engine.add_state_publisher(
                ego.publishers.NatsPublisher(subject="ego.states.{entity_type}", stream="EGO_STATES"), name="carts"
            )
        """
        self._add_publisher(
            publisher,
            "states",
            name,
            start,
            offset_store,
            batch_size,
            on_refused,
            dead_letter,
            poll_interval,
            backoff,
            max_backoff,
            not decrypt,
            lease_ttl,
        )

    def _add_publisher(
        self,
        publisher: EventPublisher | StatePublisher,
        source: str,
        name: str | None,
        start: str | datetime.datetime,
        offset_store: Store | None,
        batch_size: int,
        on_refused: RecoveryPolicy,
        dead_letter: Callable[..., Any] | None,
        poll_interval: float,
        backoff: float,
        max_backoff: float,
        as_stored: bool,
        lease_ttl: float,
    ) -> None:
        if not callable(getattr(publisher, "publish", None)):
            raise ConfigurationError(f"a publisher needs a publish(records) method, got {publisher!r}")
        if name is None:
            name = getattr(publisher, "id", None) or type(publisher).__name__
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a publisher name must be a non-empty str, got {name!r}")
        if name in self._publishers:
            raise ValidationError(f'a publisher named "{name}" is already running')
        start_after: int | None = None
        if isinstance(start, datetime.datetime):
            start_after = to_nanos(start)  # exact (a naive datetime is local time)
        elif start not in ("earliest", "latest"):
            raise ConfigurationError(f'start must be "earliest", "latest" or a datetime, got {start!r}')
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
        policy = RecoveryPolicy(on_refused)
        ttl = _lease_ttl(lease_ttl)
        if offset_store is None:
            offset_store = self.stores[0] if self.stores else None
        runner = PublisherRunner(publisher, name)
        args = (
            publisher,
            source,
            name,
            start,
            offset_store,
            batch_size,
            on_refused,
            dead_letter,
            poll_interval,
            backoff,
            max_backoff,
            as_stored,
            lease_ttl,
        )
        if dead_letter is not None:
            # The journal reader behind the publisher is a projection named
            # "publisher:<name>"; the dead-letter handler gets the publisher's own name.
            dead_letter = _named_dead_letter(dead_letter, name)
        self._add_projection(
            _publisher_key(name),
            runner,
            False,
            offset_store,
            batch_size,
            policy.value,
            5,
            backoff,
            max_backoff,
            dead_letter,
            poll_interval,
            start == "latest",
            False,
            start_after,
            "publisher",
            None,
            False,
            as_stored,
            source,
            ttl,
        )
        self._publishers[name] = runner
        self._publisher_args[name] = args

    def remove_publisher(self, name: str) -> None:
        """Stops a publisher and closes it (its checkpoints stay in its offset store).
        Raises :class:`~ego.errors.ValidationError` for an unknown name."""
        runner = self._publishers.pop(name, None)
        kept = self._publisher_args.pop(name, None)
        if runner is None:
            if kept is not None and not self.running:
                return  # a stopped engine's publisher: not restored by the next start()
            raise ValidationError(f'no publisher named "{name}"')
        self._close_publisher(runner)
        self.remove_projection(_publisher_key(name))

    def _close_publisher(self, runner: PublisherRunner) -> None:
        try:
            runner.close()
        except Exception as e:
            self.logger.warning("closing a publisher failed", publisher=runner.name, error=repr(e))

    def publisher_names(self) -> list[str]:
        """Names of the running publishers."""
        return sorted(self._publishers)

    def publisher_status(self, name: str) -> tuple[str, str | None]:
        """``("running" | "failed" | "stopped" | "standby", error or None)``; a publisher
        stops when the broker refused a record under ``on_refused=FAIL``; ``"standby"``: a
        publisher of the same name in another process holds the lease (``lease_ttl``)."""
        status = self._projection_status(_publisher_key(name))
        if status is None:
            raise ValidationError(f'no publisher named "{name}"')
        return status

    def publisher_lag(self, name: str) -> dict[int, ShardLag]:
        """Events and time not yet acknowledged by the broker, per shard."""
        if name not in self._publishers:
            raise ValidationError(f'no publisher named "{name}"')
        return self.projection_lag(_publisher_key(name))

    def publisher_stats(self, name: str) -> dict[str, int]:
        """Counters of a publisher: ``published`` (events the broker acknowledged),
        ``batches``, ``failures`` (publish calls that failed: broker unavailable or a
        refusal), ``refused``, ``dead_letters``, ``store_retries``."""
        if name not in self._publishers:
            raise ValidationError(f'no publisher named "{name}"')
        s = self._projection_stats(_publisher_key(name))
        return {
            "published": s["events"],
            "batches": s["batches"],
            "failures": s["transient_failures"] + s["failures"],
            "refused": s["failures"],
            "dead_letters": s["dead_letters"],
            "store_retries": s["store_retries"],
        }

    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        """The in-process event stream (:class:`~ego.Subscription`) from now on."""
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigurationError(f"maxsize must be a positive int, got {maxsize!r}")
        return Subscription(self._subscribe(maxsize))


def _entity_id(behavior: object) -> str:
    if not isinstance(behavior, (EventSourcedBehavior, DurableStateBehavior)):
        raise ConfigurationError(
            f"a behaviour must be an ego.EventSourcedBehavior or an ego.DurableStateBehavior, got {type(behavior).__name__}"
        )
    entity_id = behavior.id()
    if not isinstance(entity_id, str):
        raise ConfigurationError(f"{type(behavior).__name__}.id() must return a str, got {entity_id!r}")
    return entity_id


def _has_control(text: str) -> bool:
    """Whether `text` has a control character (Unicode category Cc, as the core checks)."""
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def _refuse_snapshot_options(behavior: type, snapshot_interval: int, retention: RetentionPolicy | None) -> None:
    """Durable-state entities store their whole state on every change: snapshots and their
    retention do not apply, so asking for them is a mistake worth saying."""
    given = [n for n, v in (("snapshot_interval", snapshot_interval), ("retention", retention)) if v]
    if given:
        raise ConfigurationError(
            f"{', '.join(given)} do not apply to {behavior.__name__}, a durable-state behaviour "
            "(its whole state is stored on every change)"
        )


def _lease_ttl(value: float) -> float:
    """``lease_ttl`` checked: seconds above 0, at most a day."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86_400:
        raise ConfigurationError(f"lease_ttl must be a number of seconds above 0 (at most a day), got {value!r}")
    return float(value)


def _named_dead_letter(dead_letter: Callable[..., Any], name: str) -> Callable[..., Any]:
    """`dead_letter` called with the publisher's name in place of its journal reader's."""

    def call(_reader: str, persistence_id: str, record: Any, sequence_number: int, error: BaseException) -> Any:
        return dead_letter(name, persistence_id, record, sequence_number, error)

    return call


def _publisher_key(name: str) -> str:
    """The journal reader behind a publisher: its own name space, so a projection and a
    publisher may share a name."""
    return f"publisher:{name}"
