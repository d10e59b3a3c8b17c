"""Projections, read-model writes, the event stream and event adapters.

A projection reads every event the journal holds, shard by shard in position order, and hands
them to a handler in batches; it commits its position (offset) in each shard after each
handled batch. Delivery is at least once (a crash between handling and committing hands the
last batch over again) unless the handler's writes are committed together with the offset
(``transactional=True``), which makes it exactly once.

    def count(events: list[ego.PersistedEvent]) -> None:
        for e in events:
            totals[e.persistence_id] = e.sequence_number

    engine.add_projection("totals", count)
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from google.protobuf.message import Message

from ego import _ego

__all__ = [
    "Delete",
    "EventAdapter",
    "PersistedEvent",
    "PersistedState",
    "Put",
    "Recovery",
    "RecoveryPolicy",
    "RetentionPolicy",
    "Sql",
    "Subscription",
]

PersistedEvent = _ego.PersistedEvent
PersistedState = _ego.PersistedState


class RecoveryPolicy(str, enum.Enum):
    """What a projection does when its handler fails (the Go library's policies)."""

    FAIL = "fail"
    """Stop the projection (``is_projection_running`` turns false)."""
    RETRY_AND_FAIL = "retry_and_fail"
    """Retry ``attempts`` times with backoff, then stop the projection."""
    SKIP = "skip"
    """Hand the failing events to the dead-letter handler and go on."""
    RETRY_AND_SKIP = "retry_and_skip"
    """Retry, then hand the failing events to the dead-letter handler and go on."""


@dataclass(frozen=True)
class Recovery:
    """Recovery settings of a projection. When a batch fails under a skipping policy, its
    events are handed over again one at a time to find the failing ones."""

    policy: RecoveryPolicy = RecoveryPolicy.FAIL
    attempts: int = 5
    """Attempts in all, the first included (retrying policies)."""
    backoff: float = 0.1
    """Seconds before the first retry; doubles after each, up to ``max_backoff``."""
    max_backoff: float = 5.0


@dataclass(frozen=True)
class RetentionPolicy:
    """What to delete after each successful snapshot (the Go library's ``RetentionPolicy``).
    Events a projection of the engine has not handled yet are kept unless
    ``ignore_projections``."""

    delete_events_on_snapshot: bool = False
    events_retention_count: int = 0
    """Events to keep before the snapshot point."""
    delete_snapshots_on_snapshot: bool = False
    ignore_projections: bool = False

    def _args(self) -> tuple[bool, int, bool, bool]:
        return (
            self.delete_events_on_snapshot,
            self.events_retention_count,
            self.delete_snapshots_on_snapshot,
            self.ignore_projections,
        )


@dataclass(frozen=True)
class Sql:
    """An SQL statement a transactional projection handler returns: committed in the same
    transaction as the projection's offset (PostgreSQL offset stores)."""

    sql: str
    params: tuple[Any, ...] = ()
    kind: str = field(default="sql", init=False)


@dataclass(frozen=True)
class Put:
    """Puts a key of the read model, committed with the offset (RocksDB and in-memory offset
    stores; read it back with ``store.read_model_get``)."""

    key: bytes
    value: bytes
    kind: str = field(default="put", init=False)


@dataclass(frozen=True)
class Delete:
    """Deletes a key of the read model, committed with the offset."""

    key: bytes
    kind: str = field(default="delete", init=False)


@runtime_checkable
class EventAdapter(Protocol):
    """Upcasts stored events of old schemas, during recovery and projection consumption.

    Adapters run in order; each gets the stored type URL and bytes (as left by the previous
    one) and the event's sequence number, and returns ``None`` (not mine: unchanged), a new
    ``(type_url, payload)``, or the upcast event message itself.
    """

    def adapt(self, type_url: str, payload: bytes, sequence_number: int) -> Message | tuple[str, bytes] | None: ...


class Subscription:
    """Everything the engine persists from the moment of ``engine.subscribe()``: events
    (:class:`PersistedEvent`, with ``position`` 0: positions are assigned by the store) and
    durable states (:class:`PersistedState`), in commit order per entity.

    Iterate it (``for item in sub``, which blocks with the GIL released) or ``async for item in
    sub``. The queue holds ``maxsize`` items; a subscriber that falls further behind is closed:
    it gets what was queued, then :class:`~ego.errors.SubscriptionOverflowError`. Nothing is
    dropped silently and the engine never waits for a subscriber. ``close()`` (or leaving a
    ``with`` block) stops it.
    """

    def __init__(self, core: Any) -> None:
        self._core = core

    def get(self, timeout: float | None = None) -> PersistedEvent | PersistedState | None:
        """The next item, waiting up to ``timeout`` seconds (None: as long as it takes); None
        on timeout. Raises ``StopIteration`` once closed."""
        item: Any = self._core.next_item(timeout)
        return item  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[PersistedEvent | PersistedState]:
        return self

    def __next__(self) -> PersistedEvent | PersistedState:
        while True:
            item = self._core.next_item(None)
            if item is not None:
                return item  # type: ignore[no-any-return]

    def __aiter__(self) -> AsyncIterator[PersistedEvent | PersistedState]:
        return self

    async def __anext__(self) -> PersistedEvent | PersistedState:
        while True:
            try:
                item = self._core.try_next()
            except StopIteration:
                raise StopAsyncIteration from None
            if item is not None:
                return item  # type: ignore[no-any-return]
            await self._core.wait()

    def __len__(self) -> int:
        return len(self._core)

    def close(self) -> None:
        """Stops the subscription; items already queued can still be taken."""
        self._core.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
