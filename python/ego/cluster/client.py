"""``ego.cluster.Cluster``: the engine's command API over shard actors on Ray."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ego.cluster import ray_support
from ego.cluster.batching import Dispatcher
from ego.cluster.hashing import shard_for
from ego.cluster.runner import RunnerSettings
from ego.cluster.settings import EntityType, ShardSettings
from ego.cluster.shard import COMMAND, STATE, Item, ShardHost
from ego.cluster.wire import pack, result_of
from ego.errors import (
    CommandTimeoutError,
    ConfigurationError,
    EngineClosedError,
    InvalidEntityIdError,
    ValidationError,
)
from ego.stores import PostgresStore

#: The key the client gives a command sent without one: unique per logical call, reused
#: when the call is sent again after a lost incarnation.
AUTO_KEY_PREFIX = "ego.cluster:"


@dataclass(frozen=True)
class ShardInfo:
    """Where a shard runs now."""

    index: int
    pid: int
    node_id: str
    incarnation: str
    """An id this incarnation drew when it started (a restart draws a new one)."""
    fenced: bool
    live_entities: int


class Cluster:
    """Entities sharded over Ray actors, with the engine's command API.

    Each of ``shards`` named, detached Ray actors (``<name>-shard-<i>``, restarted by Ray
    wherever there is room when its process or node dies) hosts an :class:`ego.Engine` on
    the PostgreSQL journal at ``postgres_url`` and registers ``entity_types``. An entity is
    served by shard ``ego.cluster.shard_for(entity_id, shards)``. Each shard incarnation opens
    its store with ``fence="shard-<i>"`` (when the store supports it): once it opened, no
    earlier incarnation of that shard can write.

    Connect to Ray first (``ray.init(address=...)``). ``start()`` creates the shard actors, or
    joins them if they run (a second client of the same ``name`` and ``namespace`` shares
    them; the settings of the first one stay in force).

    - ``send_command``, ``send_command_async``, ``send_commands``, ``send_commands_async``,
      ``get_state``, ``get_state_async``: as on :class:`ego.Engine`; the same error types are
      raised (a behaviour's own exception with its own type and message).
    - Every command carries an idempotency key: the caller's, or one drawn per call
      (``ego.cluster:<uuid>``). A command whose shard incarnation was lost before it answered
      is sent again with the same key to the next incarnation (for up to ``retry_for``
      seconds), so it is applied once. After ``retry_for`` it fails with
      :class:`~ego.errors.OutcomeUnknownError`, whose ``idempotency_key`` is the key to send it
      again with. ``idempotency=False`` sends commands without keys (they are then not retried
      after a lost incarnation: they fail with ``OutcomeUnknownError``), and lets a shard run
      each call's commands through one ``send_commands``.
    - Commands for one shard in flight at the same time travel in one Ray call (up to
      ``max_batch``); one call per shard is in flight at a time, so a shard gets each
      caller's commands in the order they were sent.

    Settings: ``store_options`` (``PostgresStore`` keywords: ``schema``, ``table_prefix``,
    ``pool_size``, default 2 connections per shard), ``engine_options`` (``Engine``
    keywords), ``actor_options`` (Ray actor options for the shards, e.g. ``num_cpus``,
    ``resources``; default ``num_cpus=0`` and the ``"SPREAD"`` scheduling strategy).

    :raises ConfigurationError: Ray is not installed (``pip install 'ego-cqrs[ray]'``) or not
        initialised, or a bad setting.

    Example::

        ray.init(address="auto")
        with ego.cluster.Cluster("bank", "postgresql://db/bank", [EntityType(AccountBehavior)], shards=8) as bank:
            state, revision = bank.send_command("account-1", OpenAccount(initial_balance=100))
    """

    def __init__(
        self,
        name: str,
        postgres_url: str,
        entity_types: Sequence[EntityType],
        *,
        shards: int = 4,
        namespace: str = "ego",
        store_options: Mapping[str, Any] | None = None,
        engine_options: Mapping[str, Any] | None = None,
        actor_options: Mapping[str, Any] | None = None,
        retry_for: float = 30.0,
        max_batch: int = 1000,
        idempotency: bool = True,
        fence: bool = True,
        start_timeout: float = 120.0,
        runner: RunnerSettings | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigurationError(f"a cluster name is a non-empty str without '/', got {name!r}")
        if not isinstance(shards, int) or shards < 1:
            raise ConfigurationError(f"shards must be a positive int, got {shards!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigurationError(f"max_batch must be a positive int, got {max_batch!r}")
        if retry_for < 0:
            raise ConfigurationError(f"retry_for must be >= 0, got {retry_for!r}")
        types = tuple(entity_types)
        for t in types:
            if not isinstance(t, EntityType):
                raise ConfigurationError(f"entity_types takes ego.cluster.EntityType values, got {t!r}")
        self.name = name
        self.namespace = namespace
        self.shards = shards
        self.idempotency = idempotency
        self.retry_for = retry_for
        self.max_batch = max_batch
        self.start_timeout = start_timeout
        self.settings = ShardSettings(
            name=name,
            postgres_url=postgres_url,
            shards=shards,
            entity_types=types,
            store_options={"pool_size": 2, **(store_options or {})},
            engine_options=dict(engine_options or {}),
            fence=fence,
        )
        self.actor_options = {"num_cpus": 0, "scheduling_strategy": "SPREAD", **(actor_options or {})}
        if runner is not None and not isinstance(runner, RunnerSettings):
            raise ConfigurationError(f"runner takes an ego.cluster.RunnerSettings, got {runner!r}")
        self.runner = runner
        self._handles: list[Any] = []
        self._runner: Any = None
        self._dispatcher: Dispatcher | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Cluster:
        """Creates the shard actors (or joins the running ones) and waits until each serves
        (up to ``start_timeout`` seconds). Idempotent."""
        if self._dispatcher is not None:
            return self
        ray = ray_support.ray()
        if not ray.is_initialized():
            raise ConfigurationError("connect to Ray first: ray.init(address=...)")
        # Create or migrate the tables once, before the shards open them together.
        store_options = {k: v for k, v in self.settings.store_options.items() if k != "pool_size"}
        PostgresStore(self.settings.postgres_url, pool_size=1, **store_options).close()
        actor = ray_support.shard_actor_class()
        handles = []
        for i in range(self.shards):
            handles.append(actor.options(name=self.actor_name(i), **self._actor_options()).remote(self.settings, i))
        waits = [h.info.remote() for h in handles]
        if self.runner is not None:
            self._runner = (
                ray_support.runner_actor_class()
                .options(name=f"{self.name}-runner", **self._actor_options())
                .remote(self.name, self.settings.postgres_url, self.runner, self.settings.fence, self._client_factory())
            )
            waits.append(self._runner.info.remote())
        ray.get(waits, timeout=self.start_timeout)
        self._handles = handles
        self._dispatcher = Dispatcher(
            self.shards, self._call, ray_support.is_lost, self.retry_for, self.max_batch, name=f"ego-cluster-{self.name}"
        )
        return self

    def _client_factory(self) -> Callable[[], Cluster]:
        """What builds a client of these shards in another process (the runner's, which sends
        its sagas' steps to the shards): this client's settings, without a runner."""
        return functools.partial(
            Cluster,
            self.name,
            self.settings.postgres_url,
            self.settings.entity_types,
            shards=self.shards,
            namespace=self.namespace,
            store_options=self.settings.store_options,
            engine_options=self.settings.engine_options,
            actor_options=self.actor_options,
            retry_for=self.retry_for,
            max_batch=self.max_batch,
            idempotency=self.idempotency,
            fence=self.settings.fence,
            start_timeout=self.start_timeout,
        )

    def _actor_options(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "lifetime": "detached",
            "get_if_exists": True,
            "max_restarts": -1,
            "max_task_retries": 0,
            "max_concurrency": 1000,
            **self.actor_options,
        }

    def actor_name(self, index: int) -> str:
        """The Ray actor name of shard ``index``."""
        return f"{self.name}-shard-{index}"

    def close(self) -> None:
        """Stops this client (the shard actors keep running: see :meth:`shutdown`). Commands
        not yet sent fail with ``EngineClosedError``; commands sent and not yet answered fail
        with ``OutcomeUnknownError`` (their shard may have applied them; the error's
        ``idempotency_key`` is the key to send them again with). Idempotent."""
        if self._dispatcher is not None:
            self._dispatcher.close()
            self._dispatcher = None

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stops the shard actors for good (each engine stops after its queued commands, up to
        ``timeout`` seconds), then closes this client."""
        ray = ray_support.ray()
        handles = self._handles or [self._lookup(i) for i in range(self.shards)]
        if self.runner is not None:
            handles.append(self._runner if self._runner is not None else self._lookup_name(f"{self.name}-runner"))
        self.close()
        stops = [h.stop.remote(timeout) for h in handles if h is not None]
        # A shard that is gone or stuck is killed below.
        with contextlib.suppress(Exception):
            ray.get(stops, timeout=timeout + 5)
        for h in handles:
            if h is not None:
                ray.kill(h, no_restart=True)
        self._handles = []

    def _lookup(self, index: int) -> Any:
        return self._lookup_name(self.actor_name(index))

    def _lookup_name(self, name: str) -> Any:
        ray = ray_support.ray()
        try:
            return ray.get_actor(name, namespace=self.namespace)
        except ValueError:
            return None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- routing ---------------------------------------------------------------------------

    def shard_of(self, entity_id: str) -> int:
        """The shard that serves ``entity_id`` (see :func:`ego.cluster.shard_for`)."""
        return shard_for(entity_id, self.shards)

    def shard_info(self, timeout: float = 30.0) -> list[ShardInfo]:
        """Where each shard runs now (asks every shard; a shard that is restarting is asked
        again until it answers, up to ``timeout`` seconds)."""
        return [ShardInfo(**_ask(h.info.remote, timeout)) for h in self._running()]

    def _running(self) -> list[Any]:
        if self._dispatcher is None:
            raise EngineClosedError("the cluster client is not started (call start())")
        return self._handles

    def _call(self, shard: int, items: list[Item]) -> Any:
        return self._handles[shard].call.remote(items)

    def _dispatch(self) -> Dispatcher:
        if self._dispatcher is None:
            raise EngineClosedError("the cluster client is not started (call start())")
        return self._dispatcher

    def _command_item(
        self, entity_id: str, command: Any, idempotency_key: str | None, metadata: dict[str, str] | None
    ) -> tuple[int, Item]:
        shard = shard_for(entity_id, self.shards)
        type_url, payload = pack(command)
        if idempotency_key is None and self.idempotency:
            idempotency_key = AUTO_KEY_PREFIX + uuid.uuid4().hex
        return shard, (COMMAND, entity_id, type_url, payload, idempotency_key, metadata or None)

    # -- the engine's API ------------------------------------------------------------------

    def send_command(
        self,
        entity_id: str,
        command: Any,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> tuple[Any, int]:
        """Sends ``command`` to the entity's shard and returns ``(state, revision)``, as
        ``Engine.send_command``. ``timeout`` (seconds, None: none) raises
        :class:`~ego.errors.CommandTimeoutError` (``started=True``: the command may have run).

        Raises what the engine raises (the behaviour's own exception for a rejected command,
        :class:`~ego.errors.EntityNotFoundError`, ...), and
        :class:`~ego.errors.OutcomeUnknownError` when its shard could not be reached for
        ``retry_for`` seconds.

        Example::

            state, revision = cluster.send_command("account-1", Credit(amount=5))
        """
        shard, item = self._command_item(entity_id, command, idempotency_key, metadata)
        return _wait(self._dispatch().submit(shard, item, timeout), entity_id)

    def send_command_async(
        self,
        entity_id: str,
        command: Any,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> asyncio.Future[tuple[Any, int]]:
        """:meth:`send_command` for asyncio callers: the command is sent now; the returned
        future gets ``(state, revision)`` or the error."""
        shard, item = self._command_item(entity_id, command, idempotency_key, metadata)
        return _bridge(self._dispatch().submit(shard, item, timeout))

    def get_state(self, entity_id: str, timeout: float | None = None) -> tuple[Any, int]:
        """The entity's confirmed state and revision, after the commands sent before (by this
        client) to its shard. Raises as ``Engine.get_state``."""
        item: Item = (STATE, entity_id, "", b"", None, None)
        return _wait(self._dispatch().submit(shard_for(entity_id, self.shards), item, timeout), entity_id)

    def get_state_async(self, entity_id: str, timeout: float | None = None) -> asyncio.Future[tuple[Any, int]]:
        """:meth:`get_state` for asyncio callers."""
        item: Item = (STATE, entity_id, "", b"", None, None)
        return _bridge(self._dispatch().submit(shard_for(entity_id, self.shards), item, timeout))

    def send_commands(
        self, pairs: Iterable[tuple[str, Any]], timeout: float | None = None, return_exceptions: bool = True
    ) -> list[tuple[Any, int] | BaseException]:
        """Many ``(entity_id, command)`` pairs in one go, as ``Engine.send_commands``: slot
        ``i`` of the list is pair ``i``'s ``(state, revision)`` or its exception (with
        ``return_exceptions=False`` the first exception is raised once every command has its
        outcome). Each shard gets its pairs in one call (or a few, beyond ``max_batch``)."""
        slots, futures = self._submit_pairs(pairs, timeout)
        outcomes: list[tuple[Any, int] | BaseException] = []
        for slot in slots:
            if isinstance(slot, BaseException):
                outcomes.append(slot)
                continue
            try:
                outcomes.append(_wait(futures[slot], None))
            except Exception as e:
                outcomes.append(e)
        if not return_exceptions:
            for o in outcomes:
                if isinstance(o, BaseException):
                    raise o
        return outcomes

    async def send_commands_async(
        self, pairs: Iterable[tuple[str, Any]], return_exceptions: bool = True, timeout: float | None = None
    ) -> list[tuple[Any, int] | BaseException]:
        """:meth:`send_commands` for asyncio callers."""
        slots, futures = self._submit_pairs(pairs, timeout)
        bridged = [_bridge(f) for f in futures]
        done = await asyncio.gather(*bridged, return_exceptions=True)
        outcomes: list[tuple[Any, int] | BaseException] = [s if isinstance(s, BaseException) else done[s] for s in slots]
        if not return_exceptions:
            for o in outcomes:
                if isinstance(o, BaseException):
                    raise o
        return outcomes

    def _submit_pairs(
        self, pairs: Iterable[tuple[str, Any]], timeout: float | None
    ) -> tuple[list[int | BaseException], list[concurrent.futures.Future[Any]]]:
        dispatcher = self._dispatch()
        try:
            items = list(pairs)
        except TypeError:
            raise ValidationError(
                f"pairs must be an iterable of (entity_id, command) pairs, got {type(pairs).__name__}"
            ) from None
        slots: list[int | BaseException] = []
        batch: list[tuple[int, Item]] = []
        for pair in items:
            try:
                if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                    raise ValidationError(f"a bulk item must be an (entity_id, command) pair, got {pair!r}")
                if not isinstance(pair[0], str):
                    raise InvalidEntityIdError(f"an entity id must be a str, got {type(pair[0]).__name__}")
                batch.append(self._command_item(pair[0], pair[1], None, None))
                slots.append(len(batch) - 1)
            except Exception as e:
                slots.append(e)
        return slots, dispatcher.submit_many(batch, timeout)

    # -- the runner --------------------------------------------------------------------------

    def runner_info(self, timeout: float = 30.0) -> dict[str, Any]:
        """Where the runner runs now: ``pid``, ``node_id``, ``incarnation``."""
        handle = self._runner_handle()
        return dict(_ask(lambda: handle.info.remote(), timeout))

    def projection_status(self, name: str, timeout: float = 30.0) -> tuple[str, str | None]:
        """The status of a projection of the runner (``Engine.projection_status``)."""
        handle = self._runner_handle()
        status = _ask(lambda: handle.projection_status.remote(name), timeout)
        return (str(status[0]), status[1])

    def wait_for_projection(self, name: str, timeout: float | None = 30.0) -> None:
        """Waits until the runner's projection ``name`` handled every event the journal held
        when this was called (``Engine.wait_for_projection``).

        :raises ProjectionTimeoutError: still behind after ``timeout`` seconds.
        :raises ProjectionFailedError: the projection stopped.
        """
        handle = self._runner_handle()
        _ask(lambda: handle.wait_for_projection.remote(name, timeout), None if timeout is None else timeout + 30.0)

    def saga(self, behavior: Any, *, timeout: float | None = None, ask_timeout: float = 30.0) -> Any:
        """Starts a saga in the runner (``Engine.saga``): ``behavior`` (an
        :class:`ego.SagaBehavior`, pickled to the runner: its class must be importable there)
        gives the saga's id and initial state; its steps go to the shards under idempotency
        keys derived from the saga id and step, so a step sent again after the runner's
        restart is applied once. Idempotent. Returns its :class:`~ego.SagaInfo`.

        The runner resumes the sagas of the types its ``setup`` registers after a restart;
        register the saga's type there (``engine.register_saga_type``).

        :raises ConfigurationError: the cluster has no runner.

        Example::

            info = cluster.saga(TransferSaga("transfer-7"), timeout=30.0)
        """
        handle = self._runner_handle()
        return _ask(lambda: handle.saga.remote(behavior, timeout), ask_timeout)

    async def saga_async(self, behavior: Any, *, timeout: float | None = None) -> Any:
        """:meth:`saga` for asyncio callers."""
        ref = self._runner_handle().saga.remote(behavior, timeout)
        return await asyncio.wrap_future(ref.future())

    def saga_status(self, saga_id: str, timeout: float = 30.0) -> Any:
        """The :class:`~ego.SagaInfo` of a saga of the runner (``Engine.saga_status``).

        :raises SagaNotFoundError: no saga with this id was started.
        """
        handle = self._runner_handle()
        return _ask(lambda: handle.saga_status.remote(saga_id), timeout)

    async def saga_status_async(self, saga_id: str) -> Any:
        """:meth:`saga_status` for asyncio callers."""
        ref = self._runner_handle().saga_status.remote(saga_id)
        return await asyncio.wrap_future(ref.future())

    def _runner_handle(self) -> Any:
        self._running()
        if self._runner is None:
            raise ConfigurationError("this cluster has no runner (Cluster(..., runner=RunnerSettings(setup)))")
        return self._runner

    def stats(self) -> dict[str, int]:
        """Counters of this client: ``calls`` (Ray calls made to shards), ``retries``
        (commands sent again after a lost incarnation)."""
        d = self._dispatch()
        return {"calls": d.calls, "retries": d.retries}


def _ask(call: Callable[[], Any], timeout: float | None) -> Any:
    """``ray.get(call())``, made again while the actor is lost or restarting (backoff up to
    0.5 s), until ``timeout`` seconds passed (None: no limit)."""
    ray = ray_support.ray()
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.02
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return ray.get(call(), timeout=left)
        except Exception as e:
            if not ray_support.is_lost(e) or (deadline is not None and time.monotonic() + pause > deadline):
                raise
        time.sleep(pause)  # a restarting actor: ask again after a backoff
        pause = min(pause * 2, 0.5)


def _wait(future: concurrent.futures.Future[Any], entity_id: str | None) -> tuple[Any, int]:
    try:
        outcome = future.result()
    except concurrent.futures.CancelledError:
        exc = CommandTimeoutError("the call was cancelled")
        exc.entity_id = entity_id
        exc.started = True
        raise exc from None
    return result_of(outcome)


def _bridge(future: concurrent.futures.Future[Any]) -> asyncio.Future[tuple[Any, int]]:
    """An asyncio future (of the running loop) of a dispatcher future, decoded."""
    loop = asyncio.get_running_loop()
    target: asyncio.Future[tuple[Any, int]] = loop.create_future()

    def settle(outcome: Any, error: BaseException | None) -> None:
        if target.done():
            return
        if error is not None:
            target.set_exception(error)
            return
        try:
            target.set_result(result_of(outcome))
        except BaseException as e:
            target.set_exception(e)

    def done(f: concurrent.futures.Future[Any]) -> None:
        error = f.exception()
        loop.call_soon_threadsafe(settle, None if error is not None else f.result(), error)

    future.add_done_callback(done)
    return target


__all__ = ["AUTO_KEY_PREFIX", "Cluster", "ShardHost", "ShardInfo"]
