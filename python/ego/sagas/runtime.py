"""The saga runtime of one engine: the saga types, a driver per running saga (an asyncio task
on the runtime's own thread that sends the saga's steps and fires its deadlines), the journal
readers that hand sagas the events that concern them, and resumption after a restart. Not
public API: the engine's ``saga``, ``saga_status`` and ``register_saga_type`` use it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from ego._ego import EntityOptions
from ego.errors import (
    CommandTimeoutError,
    ConfigurationError,
    EngineClosedError,
    OutcomeUnknownError,
    RecoveryError,
    SagaNotFoundError,
    ValidationError,
)
from ego.projections import PersistedEvent, Recovery, RecoveryPolicy
from ego.sagas.behavior import SagaBehavior, SagaInfo, SagaStatus
from ego.sagas.entity import FINAL, SagaEntity
from ego.sagas.records import SAGA_PREFIX, now_ns, pack, saga_entity_id, unpack
from ego.sagas.spans import step_span
from ego.v1.sagas_pb2 import (
    SAGA_STATUS_COMPENSATED,
    SAGA_STATUS_COMPENSATING,
    SAGA_STATUS_COMPLETED,
    SAGA_STATUS_FAILED,
    SAGA_STATUS_RUNNING,
    SagaEnded,
    SagaFire,
    SagaObserve,
    SagaRecord,
    SagaStart,
    SagaStep,
    SagaStepOutcome,
)

__all__ = ["SagaRuntime", "check_saga_id", "step_key"]

MAX_SAGA_ID_BYTES = 200
_STATUS = {
    SAGA_STATUS_RUNNING: SagaStatus.RUNNING,
    SAGA_STATUS_COMPLETED: SagaStatus.COMPLETED,
    SAGA_STATUS_COMPENSATING: SagaStatus.COMPENSATING,
    SAGA_STATUS_COMPENSATED: SagaStatus.COMPENSATED,
    SAGA_STATUS_FAILED: SagaStatus.FAILED,
}
# Errors after which a step's outcome is unknown: it is sent again under the same key.
_UNKNOWN = (CommandTimeoutError, OutcomeUnknownError, asyncio.TimeoutError, TimeoutError)


@dataclass
class SagaType:
    name: str
    cls: type[SagaBehavior[Any]]
    factory: Callable[[str], SagaBehavior[Any]]
    timeout: float


def check_saga_id(saga_id: object) -> str:
    if not isinstance(saga_id, str) or not saga_id:
        raise ValidationError(f"a saga id is a non-empty str, got {saga_id!r}")
    if len(saga_id.encode()) > MAX_SAGA_ID_BYTES or any(ord(c) < 32 or ord(c) == 127 for c in saga_id):
        raise ValidationError(f"a saga id is at most {MAX_SAGA_ID_BYTES} bytes without control characters: {saga_id!r}")
    return saga_id


def step_key(saga_id: str, step: int) -> str:
    """A step's idempotency key: the same for every send of the step, after crashes too."""
    return f"ego.saga:{saga_id}#{step}"


class SagaRuntime:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        # Where steps go: the engine itself, or (in a cluster's runner) the cluster client,
        # which has the same send_command_async.
        self.commands: Any = engine
        self.types: dict[str, SagaType] = {}
        # Sagas found waiting for a type this engine does not know yet, by type: registering
        # the type wakes them (and only them).
        self.parked: dict[str, set[str]] = {}
        self.resumed = False
        self.names: dict[type[Any], str] = {}
        self.instances: dict[tuple[str, str], SagaBehavior[Any]] = {}
        self.live: dict[tuple[str, int], Any] = {}
        self.drivers: dict[str, asyncio.Task[None]] = {}
        self.wakers: dict[str, asyncio.Event] = {}
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run_loop, name="ego-sagas", daemon=True)
        self.stopped = False
        # Saga entities leave memory a minute after their last message; the next one (a status
        # query, an answer) brings them back from the journal.
        engine._register(
            SAGA_PREFIX,
            lambda entity_id: SagaEntity(entity_id[len(SAGA_PREFIX) :], self),
            EntityOptions(passivate_after=60.0),
        )
        self.thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    # -- what the saga entities ask (on whatever thread runs them) ---------------------------

    def behavior(self, saga_type: str, saga_id: str) -> SagaBehavior[Any]:
        key = (saga_type, saga_id)
        behavior = self.instances.get(key)
        if behavior is None:
            with self.lock:
                kind = self.types.get(saga_type)
                if kind is None:
                    self.parked.setdefault(saga_type, set()).add(saga_id)
            if kind is None:
                raise ConfigurationError(f"saga {saga_id!r} is a {saga_type!r}, a saga type this engine does not know")
            behavior = kind.factory(saga_id)
            if not isinstance(behavior, SagaBehavior):
                raise ConfigurationError(f"the factory of saga type {saga_type!r} made a {type(behavior).__name__}")
            self.instances[key] = behavior
        return behavior

    def take_live(self, saga_id: str, step: int) -> Any:
        return self.live.pop((saga_id, step), None)

    # -- types -----------------------------------------------------------------------------

    def register(
        self, factory: Callable[[str], SagaBehavior[Any]], name: str | None, timeout: float | None, cls: type[Any] | None = None
    ) -> str:
        if not callable(factory):
            raise ConfigurationError(f"a saga factory must be callable, got {factory!r}")
        if cls is None:
            cls = factory if isinstance(factory, type) else None
        if cls is None or not (isinstance(cls, type) and issubclass(cls, SagaBehavior)):
            raise ConfigurationError("register_saga_type takes an ego.SagaBehavior subclass (or a factory and cls=)")
        name = name if name is not None else cls.__qualname__
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a saga type name is a non-empty str, got {name!r}")
        timeout = _timeout(timeout)
        with self.lock:
            known = self.types.get(name)
            if known is not None:
                if known.cls is not cls:
                    raise ConfigurationError(f"saga type {name!r} is registered for {known.cls.__qualname__}")
                return name
            self.types[name] = SagaType(name, cls, factory, timeout)
            self.names.setdefault(cls, name)
            waiting = self.parked.pop(name, set())
            resume, self.resumed = not self.resumed, True
        if _overrides_correlate(cls):
            self.engine.add_projection(
                f"ego.saga:{name}",
                _Reader(self, self.types[name]),
                recovery=Recovery(RecoveryPolicy.RETRY_AND_FAIL, attempts=1_000_000, backoff=0.05, max_backoff=2.0),
                poll_interval=0.2,
            )
        if resume:
            self._submit(self._resume())
        elif waiting:
            self.wake(waiting)
        return name

    def _type_of(self, behavior: SagaBehavior[Any]) -> SagaType:
        name = self.names.get(type(behavior))
        if name is None:
            name = self.register(type(behavior), None, None)
        return self.types[name]

    # -- starting and reading ----------------------------------------------------------------

    def start_command(self, behavior: SagaBehavior[Any], timeout: float | None) -> tuple[str, SagaStart]:
        if not isinstance(behavior, SagaBehavior):
            raise ConfigurationError(f"engine.saga() takes an ego.SagaBehavior, got {type(behavior).__name__}")
        saga_id = check_saga_id(behavior.id())
        kind = self._type_of(behavior)
        state = behavior.initial_state()
        if not isinstance(state, Message):
            raise ConfigurationError(f"{type(behavior).__name__}.initial_state() must return a protobuf message")
        self.instances.setdefault((kind.name, saga_id), behavior)
        seconds = kind.timeout if timeout is None else _timeout(timeout)
        return saga_id, SagaStart(saga_type=kind.name, initial_state=pack(state), timeout=seconds)

    def info(self, saga_id: str, record: SagaRecord, revision: int) -> SagaInfo:
        if not record.started:
            raise SagaNotFoundError(f"no saga {saga_id!r} was started")
        return SagaInfo(
            id=saga_id,
            status=_STATUS[record.status],
            state=unpack(record.state),
            reason=record.reason or None,
            revision=revision,
        )

    # -- drivers -----------------------------------------------------------------------------

    def _submit(self, coro: Any) -> None:
        if self.stopped:
            coro.close()
            return
        asyncio.run_coroutine_threadsafe(coro, self.loop)

    def wake(self, saga_ids: Any, record: SagaRecord | None = None) -> None:
        """Makes sure a driver runs for each of these sagas and looks at its journal again.
        ``record``: the saga's record as a command to it just answered (one saga id), which a
        new driver starts from instead of reading it again."""
        if self.stopped:
            return
        ids = list(saga_ids)
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self.loop.call_soon_threadsafe(self._wake, ids, record)

    def _wake(self, saga_ids: list[str], record: SagaRecord | None = None) -> None:
        for saga_id in saga_ids:
            waker = self.wakers.get(saga_id)
            if waker is not None:
                waker.set()
            elif not self.stopped:
                self.wakers[saga_id] = asyncio.Event()
                self.drivers[saga_id] = self.loop.create_task(self._drive(saga_id, record))

    async def _resume(self) -> None:
        """Starts a driver for each saga the journal has, once per runtime (after a restart:
        the ones that are not over go on, deadlines that passed meanwhile fire now; those of
        a type not registered yet wait for it)."""
        store = self.engine.stores[0] if self.engine.stores else None
        if store is None:
            return
        # Stores list ids in byte order, so the sagas' ids (all with one prefix) come together
        # right after the prefix: the listing starts there and ends at the first other id,
        # whatever else the store holds.
        after: str | None = SAGA_PREFIX
        while True:
            page = await self.loop.run_in_executor(None, store.persistence_ids, 1000, after)
            if asyncio.iscoroutine(page) or isinstance(page, asyncio.Future):
                page = await page
            ids, after = page
            found = [i for i in ids if i.startswith(SAGA_PREFIX)]
            if found:
                # The checks run on the executor's threads at once: a store that answers over
                # the network (PostgreSQL) then has several in flight (and answers the heads
                # read together with one query).
                over = await asyncio.gather(*(self.loop.run_in_executor(None, _is_over, store, i) for i in found))
                self._wake([i[len(SAGA_PREFIX) :] for i, done in zip(found, over, strict=True) if not done])
            if after is None or len(found) < len(ids):
                return

    async def _drive(self, saga_id: str, record: SagaRecord | None = None) -> None:
        engine = self.engine
        entity = saga_entity_id(saga_id)
        waker = self.wakers[saga_id]
        backoff = 0.05
        try:
            while not self.stopped:
                try:
                    if record is None:
                        record, _ = await engine.get_state_async(entity)
                    if not record.started or record.status in FINAL:
                        return
                    now = now_ns()
                    due = [d for d in record.deadlines if d.due <= now]
                    if due and record.status == SAGA_STATUS_RUNNING:
                        record, _ = await engine.send_command_async(entity, SagaFire(deadline=due[0].id))
                    elif record.pending:
                        step = SagaStep()
                        step.CopyFrom(record.pending[0])
                        outcome = await self._send_step(saga_id, record.saga_type, step)
                        record, _ = await engine.send_command_async(entity, outcome)
                    else:
                        if not waker.is_set():
                            wait = None
                            if record.deadlines and record.status == SAGA_STATUS_RUNNING:
                                wait = max(0.0, (min(d.due for d in record.deadlines) - now) / 1e9) + 0.001
                            with contextlib.suppress(asyncio.TimeoutError):
                                await asyncio.wait_for(waker.wait(), wait)
                        waker.clear()
                        record = None
                    backoff = 0.05
                except (EngineClosedError, asyncio.CancelledError):
                    raise
                except (RecoveryError, ConfigurationError) as e:
                    # E.g. its type is not registered (yet): registering it wakes this driver.
                    engine.logger.warning("saga driver waits", saga_id=saga_id, error=repr(e))
                    await waker.wait()
                    waker.clear()
                    record = None
                except Exception as e:  # a store that fails for now: read the journal again
                    engine.logger.warning("saga driver retries", saga_id=saga_id, error=repr(e))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    record = None
        except (EngineClosedError, asyncio.CancelledError):
            pass
        finally:
            self.wakers.pop(saga_id, None)
            self.drivers.pop(saga_id, None)
            for name in list(self.types):
                self.instances.pop((name, saga_id), None)

    async def _send_step(self, saga_id: str, saga_type: str, step: SagaStep) -> SagaStepOutcome:
        """Sends a step under its idempotency key until its outcome is known."""
        engine = self.engine
        command = unpack(step.command)
        key = step_key(saga_id, step.step)
        timeout = step.timeout if step.timeout > 0 else 5.0
        backoff = 0.01
        with step_span(engine, saga_id, saga_type, step, command) as span:
            while True:
                try:
                    if self.commands is engine:  # the engine's own timeout: no task, no timer handle
                        state, _ = await engine.send_command_async(step.entity_id, command, idempotency_key=key, timeout=timeout)
                    else:
                        state, _ = await asyncio.wait_for(
                            self.commands.send_command_async(step.entity_id, command, idempotency_key=key), timeout
                        )
                except _UNKNOWN:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                except EngineClosedError:
                    raise
                except Exception as e:
                    self.live[(saga_id, step.step)] = e
                    span.rejected(e)
                    return SagaStepOutcome(step=step.step, ok=False, error_type=type(e).__name__, error=str(e))
                self.live[(saga_id, step.step)] = state
                return SagaStepOutcome(step=step.step, ok=True, result_state=pack(state))

    def stop(self) -> None:
        """Stops every driver and the runtime's thread (what they did is in the journal)."""
        if self.stopped:
            return
        self.stopped = True

        async def cancel() -> None:
            tasks = list(self.drivers.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


class _Reader:
    """The journal reader of one saga type: hands each event its ``correlate`` maps to a saga
    to that saga's entity (deduplicated there by source and sequence number), in journal order
    per entity, and wakes the sagas' drivers. Checkpointed like any projection.

    The work is done on the runtime's thread, where the drivers run: the projection's thread
    only waits for it (two threads taking turns with the GIL for every event cost more than
    the work)."""

    def __init__(self, runtime: SagaRuntime, kind: SagaType) -> None:
        self.runtime = runtime
        self.kind = kind

    async def __call__(self, events: list[PersistedEvent]) -> None:
        runtime = self.runtime
        if runtime.stopped:
            raise EngineClosedError("the engine's sagas stopped")
        handed = asyncio.run_coroutine_threadsafe(self.observe(events), runtime.loop)
        waiting = asyncio.wrap_future(handed)
        while True:
            try:
                done, _ = await asyncio.wait((waiting,), timeout=1.0)
            except asyncio.CancelledError:
                handed.cancel()
                raise
            if done:
                break
            if runtime.stopped:  # the runtime's loop may be gone with the work in it
                handed.cancel()
                raise EngineClosedError("the engine's sagas stopped")
        if waiting.cancelled():
            raise EngineClosedError("the engine's sagas stopped")
        waiting.result()

    async def observe(self, events: list[PersistedEvent]) -> None:
        runtime, kind = self.runtime, self.kind
        engine = runtime.engine
        sent = []
        for event in events:
            source = event.persistence_id
            if source.startswith(SAGA_PREFIX) or event.erased:
                continue
            message = event.event
            saga_id = kind.cls.correlate(message, source)
            if saga_id is None:
                continue
            check_saga_id(saga_id)
            observe = SagaObserve(
                saga_type=kind.name, source_id=source, source_sequence=event.sequence_number, event=pack(message)
            )
            if kind.cls.started_by and isinstance(message, kind.cls.started_by):
                observe.starts = True
                observe.initial_state.CopyFrom(pack(runtime.behavior(kind.name, saga_id).initial_state()))
                observe.timeout = kind.timeout
            future = engine.send_command_async(saga_entity_id(saga_id), observe)
            # Each saga's driver goes on as soon as its own event is recorded (not when the
            # whole batch is), from the record the saga answered with.
            future.add_done_callback(functools.partial(_recorded, runtime, saga_id))
            sent.append(future)
        for future in sent:
            await future


def _recorded(runtime: SagaRuntime, saga_id: str, future: asyncio.Future[Any]) -> None:
    """(On the runtime's thread.)"""
    if not future.cancelled() and future.exception() is None:
        runtime._wake([saga_id], future.result()[0])


def _is_over(store: Any, persistence_id: str) -> bool:
    """Whether the saga's journal ends with ``SagaEnded``: read from the last event's type (in
    the clear, encrypted or not), without recovering the saga. A store that answers with an
    awaitable, or fails, leaves the saga in (its driver reads it)."""
    try:
        last = store.highest_sequence_number(persistence_id)
        events = store.replay_events(persistence_id, last, last, 1) if isinstance(last, int) and last > 0 else None
        return isinstance(events, list) and bool(events) and events[-1].event.type_url == _ENDED
    except Exception:
        return False


_ENDED = "type.googleapis.com/" + SagaEnded.DESCRIPTOR.full_name


def _overrides_correlate(cls: type[Any]) -> bool:
    return getattr(cls.correlate, "__func__", None) is not SagaBehavior.correlate.__func__  # type: ignore[attr-defined]


def _timeout(timeout: float | None) -> float:
    if timeout is None:
        return 0.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ConfigurationError(f"a saga timeout is seconds >= 0 (0 or None: none), got {timeout!r}")
    return float(timeout)
