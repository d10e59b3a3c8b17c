"""Projections, read-model writes and the event stream.

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

import datetime
import decimal
import enum
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from ego import _ego
from ego.errors import HandlerContractError
from ego.timestamps import to_nanos

__all__ = [
    "Delete",
    "PersistedEvent",
    "PersistedState",
    "Put",
    "Recovery",
    "RecoveryPolicy",
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
class Sql:
    """An SQL statement a transactional projection handler returns: committed in the same
    transaction as the projection's offset (PostgreSQL offset stores).

    ``params`` are bound to ``$1``, ``$2``, ... (never formatted into the text). Python types
    and the column types they bind to:

    ============================== ===========================================================
    ``None``                       NULL (any column)
    ``bool``                       ``boolean``
    ``int``                        ``smallint``, ``integer``, ``bigint``, ``real``, ``double
                                   precision``, ``numeric``, ``json``/``jsonb``; beyond 64 bits:
                                   ``numeric``
    ``float``                      ``real``, ``double precision``, ``numeric``
    ``decimal.Decimal``            ``numeric`` (exactly; NaN and infinities too), ``text``
    ``str``                        ``text``, ``varchar``, ``char``; ``json``/``jsonb`` (the
                                   str is JSON text, checked by PostgreSQL)
    ``dict``, ``list``             ``json``/``jsonb`` (``json.dumps``), ``text``
    ``bytes``, ``bytearray``,      ``bytea``
    ``memoryview``
    ``datetime.datetime``          ``timestamptz`` (an aware one exactly; a naive one is local
                                   time, as in :mod:`ego.timestamps`) and ``timestamp`` (its
                                   wall-clock time; an aware one in UTC); microseconds
    ``datetime.date``              ``date``
    ``datetime.time``              ``time`` (without time zone)
    ``datetime.timedelta``         ``interval``
    ``uuid.UUID``                  ``uuid``, ``bytea``
    ``enum.Enum``                  its value
    ============================== ===========================================================

    Another type, or a type the column does not take, fails the batch under the projection's
    failure policy (:class:`~ego.errors.HandlerContractError` for an unsupported type,
    :class:`~ego.errors.ReadModelWriteError` for a refused statement): nothing is committed.

    Unqualified table names resolve in the store's schema first
    (``PostgresStore(schema=...)``), then in ``public``.

    Example::

        ego.Sql("INSERT INTO balances (id, amount) VALUES ($1, $2)", ("account-1", Decimal("10.50")))
    """

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


_EPOCH = datetime.datetime(1970, 1, 1)
_EPOCH_DATE = datetime.date(1970, 1, 1)


def _micros(delta: datetime.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def sql_param(value: Any) -> tuple[Any, ...]:
    """How the binding sends an :class:`Sql` parameter of a type it does not read itself:
    ``(kind, *fields)``. Internal; :class:`Sql` documents the types. Raises
    :class:`~ego.errors.HandlerContractError` for any other type."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", bool(value))
    if isinstance(value, float):
        return ("float", float(value))
    if isinstance(value, str):
        return ("text", str(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(value))
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return ("int", int(value))
        return ("numeric", str(int(value)))
    if isinstance(value, decimal.Decimal):
        if value.is_nan():
            return ("numeric", "NaN")
        if value.is_infinite():
            return ("numeric", "-Infinity" if value < 0 else "Infinity")
        return ("numeric", format(value, "f"))
    if isinstance(value, (dict, list)):
        return ("json", json.dumps(value))
    if isinstance(value, datetime.datetime):
        utc_micros = to_nanos(value) // 1000
        if value.tzinfo is None or value.utcoffset() is None:
            wall = value
        else:
            wall = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return ("timestamp", utc_micros, _micros(wall - _EPOCH))
    if isinstance(value, datetime.date):
        return ("date", (value - _EPOCH_DATE).days)
    if isinstance(value, datetime.time):
        if value.tzinfo is not None and value.utcoffset() is not None:
            raise HandlerContractError("a time with a time zone cannot be an SQL parameter (timetz is not supported)")
        return ("time", ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond)
    if isinstance(value, datetime.timedelta):
        return ("interval", value.seconds * 1_000_000 + value.microseconds, value.days)
    if isinstance(value, uuid.UUID):
        return ("uuid", value.bytes)
    raise HandlerContractError(
        f"an SQL parameter of type {type(value).__name__} is not supported (see ego.Sql for the types it binds)"
    )
