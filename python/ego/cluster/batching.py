"""The client's dispatcher: one private event loop thread that sends each shard its commands,
those in flight at the same time in one Ray call, and retries what a lost incarnation left.

Per shard, one call is in flight at a time; commands that arrive meanwhile wait and go
together in the next call (up to ``max_batch``). So a shard's commands reach its engine in
the order they were sent, and under load a call carries many commands (the Ray hop is paid
once for them). Commands that a lost incarnation left without an outcome are sent again
first, in their order, before any later command of the shard (after a backoff during which
the shard gets nothing else): a retry never reorders one entity's commands.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ego._loop_thread import LoopThread
from ego.cluster.shard import Item
from ego.cluster.wire import Outcome, error_from_wire
from ego.errors import CommandTimeoutError, EngineClosedError, OutcomeUnknownError

#: Errors that mean "this incarnation cannot serve": the command is sent again (same key).
RETRIED = frozenset({"FencedError", "EngineClosedError"})


@dataclass
class Pending:
    """One command or query waiting for its outcome."""

    item: Item
    future: concurrent.futures.Future[Any]
    give_up: float
    """Monotonic time after which a lost call is not retried."""
    attempts: int = 0
    last_error: BaseException | None = field(default=None, repr=False)


class Dispatcher:
    """Sends items to shards through ``call(shard, items) -> awaitable list of outcomes``.

    ``is_lost(exc)`` tells the exceptions of a call that mean the incarnation was lost (the
    outcome of its commands is unknown): those commands are sent again, with their keys,
    until ``retry_for`` seconds after they were first sent.
    """

    def __init__(
        self,
        shards: int,
        call: Callable[[int, list[Item]], Any],
        is_lost: Callable[[BaseException], bool],
        retry_for: float,
        max_batch: int,
        name: str = "ego-cluster",
    ) -> None:
        self.shards = shards
        self._call = call
        self._is_lost = is_lost
        self.retry_for = retry_for
        self.max_batch = max_batch
        self._pending: list[list[Pending]] = [[] for _ in range(shards)]
        self._in_flight = [False] * shards
        self._inbox: list[tuple[int, Pending]] = []
        self._lock = threading.Lock()
        self._woken = False
        self.calls = 0
        self.retries = 0
        self._closed = False
        self._loop_thread = LoopThread(name)
        self._loop = self._loop_thread.loop

    # -- from any thread -------------------------------------------------------------------

    def submit(self, shard: int, item: Item, timeout: float | None) -> concurrent.futures.Future[Any]:
        """Queues ``item`` for ``shard``; the future gets ``(state, revision)`` or the error."""
        if self._closed:
            raise EngineClosedError("the cluster client is closed")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        now = time.monotonic()
        pending = Pending(item, future, now + self.retry_for)
        if timeout is not None:
            pending.give_up = min(pending.give_up, now + timeout)
        with self._lock:
            self._inbox.append((shard, pending))
            wake = not self._woken
            self._woken = True
        if wake:
            self._loop.call_soon_threadsafe(self._drain)
        if timeout is not None:
            self._loop.call_soon_threadsafe(self._loop.call_later, timeout, self._expire, pending, timeout)
        return future

    def submit_many(self, items: Sequence[tuple[int, Item]], timeout: float | None) -> list[concurrent.futures.Future[Any]]:
        """:meth:`submit` for many items, with one wake-up of the dispatcher."""
        if self._closed:
            raise EngineClosedError("the cluster client is closed")
        now = time.monotonic()
        give_up = now + self.retry_for if timeout is None else min(now + self.retry_for, now + timeout)
        pendings = [(shard, Pending(item, concurrent.futures.Future(), give_up)) for shard, item in items]
        with self._lock:
            self._inbox.extend(pendings)
            wake = not self._woken
            self._woken = True
        if wake:
            self._loop.call_soon_threadsafe(self._drain)
        if timeout is not None:

            def arm() -> None:
                for _, p in pendings:
                    self._loop.call_later(timeout, self._expire, p, timeout)

            self._loop.call_soon_threadsafe(arm)
        return [p.future for _, p in pendings]

    def close(self) -> None:
        """Fails what is still queued with ``EngineClosedError`` and what is in flight with
        ``OutcomeUnknownError`` (its shard may have applied it), stops the thread and closes
        its event loop."""
        if self._closed:
            return
        self._closed = True
        # Cancels the dispatcher's tasks first: a cancelled call fails its commands (_run).
        with contextlib.suppress(TimeoutError):
            self._loop_thread.stop()
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for pending in [p for queue in self._pending for p in queue] + [p for _, p in inbox]:
            _settle_error(pending, _closed())
        for queue in self._pending:
            queue.clear()

    # -- on the dispatcher's loop ----------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
            self._woken = False
        if self._closed:
            for _, pending in inbox:
                _settle_error(pending, _closed())
            return
        for shard, pending in inbox:
            self._pending[shard].append(pending)
        for shard in {s for s, _ in inbox}:
            self._kick(shard)

    def _kick(self, shard: int) -> None:
        if not self._in_flight[shard] and self._pending[shard]:
            self._in_flight[shard] = True
            self._loop.create_task(self._run(shard))

    async def _run(self, shard: int) -> None:
        queue = self._pending[shard]
        batch: list[Pending] = []
        try:
            while queue:
                batch = [p for p in queue[: self.max_batch] if not p.future.done()]
                del queue[: self.max_batch]
                if not batch:
                    continue
                self.calls += 1
                retried: list[tuple[Pending, BaseException]] = []
                try:
                    outcomes: list[Outcome] = await self._call(shard, [p.item for p in batch])
                except Exception as e:
                    if not self._is_lost(e):
                        for p in batch:
                            _settle_error(p, e)
                        continue
                    retried = [(p, e) for p in batch]
                else:
                    for p, outcome in zip(batch, outcomes, strict=True):
                        if outcome[0] == "err" and outcome[1][1] in RETRIED:
                            retried.append((p, error_from_wire(outcome[1])))
                        else:
                            _settle(p, outcome)
                if retried:
                    await self._retry(shard, retried)
        except asyncio.CancelledError:
            # close(): the commands of the call in flight (or of a retry waiting for its
            # backoff) were sent, so their shard may have applied them.
            for p in batch:
                _settle_error(p, _unknown(p, f"the cluster client was closed while shard {shard} had the command"))
            raise
        finally:
            self._in_flight[shard] = False
        self._kick(shard)

    async def _retry(self, shard: int, retried: list[tuple[Pending, BaseException]]) -> None:
        """Puts the commands a lost incarnation left back at the head of the shard's queue, in
        their order, after a backoff (the shard is sent nothing meanwhile); those whose
        ``give_up`` time would pass first fail with ``OutcomeUnknownError``."""
        attempts = max(p.attempts for p, _ in retried) + 1
        delay = min(0.02 * 2 ** min(attempts, 6), 0.5) * (0.5 + random.random())
        again: list[Pending] = []
        for pending, error in retried:
            if pending.future.done():
                continue
            pending.attempts = attempts
            pending.last_error = error
            if time.monotonic() + delay > pending.give_up:
                why = f"shard {shard} could not be reached for {self.retry_for} s (last: {type(error).__name__}: {error})"
                _settle_error(pending, _unknown(pending, why, error))
                continue
            again.append(pending)
        if not again:
            return
        self.retries += len(again)
        await asyncio.sleep(delay)
        self._pending[shard][:0] = again

    def _expire(self, pending: Pending, timeout: float) -> None:
        if not pending.future.done():
            exc = CommandTimeoutError(f"no reply from the cluster within {timeout} s")
            exc.entity_id = pending.item[1]
            exc.started = True
            _settle_error(pending, exc)


def _closed() -> EngineClosedError:
    """The error of a command the client was closed before sending."""
    return EngineClosedError("the cluster client was closed")


def _unknown(pending: Pending, why: str, cause: BaseException | None = None) -> OutcomeUnknownError:
    """The error of a command that was sent but whose outcome is not known; its
    ``idempotency_key`` is the key to send it again with."""
    key = pending.item[4]
    exc = OutcomeUnknownError(f"{why}; the command may have been applied: send it again with idempotency_key={key!r}")
    exc.idempotency_key = key  # type: ignore[attr-defined]
    exc.__cause__ = cause
    return exc


def _settle(pending: Pending, outcome: Outcome) -> None:
    if not pending.future.done():
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            pending.future.set_result(outcome)


def _settle_error(pending: Pending, error: BaseException) -> None:
    if not pending.future.done():
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            pending.future.set_exception(error)
