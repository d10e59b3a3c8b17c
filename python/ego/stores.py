"""The built-in stores, and the protocol a store must follow.

- :class:`MemoryStore`: everything in memory; for tests and examples.
- :class:`RocksDBStore`: the embedded default; one directory holds events, snapshots and
  durable state. Writes are synced to disk before they are acknowledged (``sync=True``).
- :class:`PostgresStore`: one database shared by many processes and machines.
- Any object with the methods of :class:`EventsStoreProtocol` (and, for those roles,
  :class:`SnapshotStoreProtocol`, :class:`StateStoreProtocol`, :class:`OffsetStoreProtocol`),
  synchronous or ``async def``: a store written in Python. ``examples/sqlite_store`` is one;
  check yours with :mod:`ego.testkit.conformance`.

A store object can serve as events store, snapshot store and state store at once; pass it as
``Engine(..., store=...)``.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Awaitable, Sequence
from typing import Any, Literal, Protocol, TypeVar, Union, runtime_checkable

from ego import _ego
from ego.errors import ValidationError
from ego.timestamps import unix_nanos
from ego.v1.envelopes_pb2 import DataKey, DurableState, Event, Snapshot

__all__ = [
    "MAX_STORED",
    "EncryptedStore",
    "MemoryStore",
    "NativeStore",
    "RocksDBStore",
    "SnapshotCriteria",
    "check_shard",
    "check_storable",
    "clamp_bound",
]

U64_MAX = 2**64 - 1
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
#: The largest sequence number, version or position a store keeps (PostgreSQL's ``bigint``).
MAX_STORED = I64_MAX


def clamp_bound(value: int, name: str, maximum: int = MAX_STORED) -> int:
    """A count or bound given to a store (a limit, page size, sequence number or position),
    checked and clamped the way every store reads it: not an ``int`` or negative is a
    :class:`~ego.errors.ValidationError`; above ``maximum`` (by default the largest number a
    store keeps) it is ``maximum``, which means "all". For stores written in Python over a
    backend with 64-bit signed integers (SQL)::

        rows = db.execute("... LIMIT ?", (clamp_bound(max_count, "max_count"),))
    """
    if not isinstance(value, int):
        raise ValidationError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValidationError(f"{name} must not be negative, got {value}")
    return min(value, maximum)


def check_storable(value: int, what: str) -> int:
    """A sequence number, version or position about to be written: above
    :data:`MAX_STORED` (2**63 - 1) it is a :class:`~ego.errors.ValidationError` on every store
    (none would read it back the same). Returns ``value``.

        check_storable(snapshot.sequence_number, "snapshot sequence number")
    """
    if value > MAX_STORED:
        raise ValidationError(f"a {what} is at most 2**63 - 1, got {value}")
    return value


def check_shard(shard: int) -> int:
    """A shard number given to a store: an ``int`` from 0 to ``2**32 - 1``, otherwise a
    :class:`~ego.errors.ValidationError` (a shard is a name, not a bound: nothing is
    clamped). Returns ``shard``.

        rows = db.execute("... WHERE shard = ?", (check_shard(shard),))
    """
    if not isinstance(shard, int):
        raise ValidationError(f"shard must be an int, got {type(shard).__name__}")
    if not 0 <= shard < 2**32:
        raise ValidationError(f"shard must be from 0 to 2**32 - 1, got {shard}")
    return shard


class SnapshotCriteria:
    """Which snapshots an operation selects (all bounds inclusive).

    Sequence numbers are non-negative ``int`` (negative: :class:`~ego.errors.ValidationError`;
    beyond ``2**64 - 1``: no limit). Timestamps are Unix nanoseconds, as an ``int`` or a
    :class:`datetime.datetime` (converted exactly, see :mod:`ego.timestamps`); a float is
    refused. Bounds outside what stores keep are normalised so that every store gives the same
    answer: a lower bound above every storable value selects nothing.

        SnapshotCriteria(max_sequence_number=100, min_timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc))
    """

    __slots__ = ("_max_sequence_number", "_max_timestamp", "_min_sequence_number", "_min_timestamp")

    def __init__(
        self,
        *,
        min_sequence_number: int = 0,
        max_sequence_number: int = U64_MAX,
        min_timestamp: int | datetime.datetime = I64_MIN,
        max_timestamp: int | datetime.datetime = I64_MAX,
    ) -> None:
        min_seq = _sequence_bound(min_sequence_number, "min_sequence_number")
        max_seq = _sequence_bound(max_sequence_number, "max_sequence_number")
        min_ts = _timestamp_bound(min_timestamp, "min_timestamp")
        max_ts = _timestamp_bound(max_timestamp, "max_timestamp")
        if min_seq > U64_MAX or min_ts > I64_MAX or max_ts < I64_MIN:
            min_seq, max_seq, min_ts, max_ts = U64_MAX, 0, I64_MAX, I64_MIN  # selects nothing
        self._min_sequence_number = min_seq
        self._max_sequence_number = min(max_seq, U64_MAX)
        self._min_timestamp = max(min_ts, I64_MIN)
        self._max_timestamp = min(max_ts, I64_MAX)

    @property
    def min_sequence_number(self) -> int:
        return self._min_sequence_number

    @property
    def max_sequence_number(self) -> int:
        return self._max_sequence_number

    @property
    def min_timestamp(self) -> int:
        return self._min_timestamp

    @property
    def max_timestamp(self) -> int:
        return self._max_timestamp

    def __repr__(self) -> str:
        return (
            f"SnapshotCriteria(min_sequence_number={self._min_sequence_number}, max_sequence_number={self._max_sequence_number}, "
            f"min_timestamp={self._min_timestamp}, max_timestamp={self._max_timestamp})"
        )

    def _args(self) -> tuple[int, int, int, int]:
        return (self._min_sequence_number, self._max_sequence_number, self._min_timestamp, self._max_timestamp)


def _sequence_bound(value: int, name: str) -> int:
    if not isinstance(value, int):
        raise ValidationError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValidationError(f"{name} must not be negative, got {value}")
    return value


def _timestamp_bound(value: int | datetime.datetime, name: str) -> int:
    if isinstance(value, datetime.datetime):
        return unix_nanos(value)
    if not isinstance(value, int):
        raise ValidationError(f"{name} is Unix nanoseconds (an int) or a datetime, got {type(value).__name__}")
    return value


T = TypeVar("T")
#: A store method may return its result or an awaitable of it.
Maybe = Union[T, Awaitable[T]]  # noqa: UP007 - a generic alias must stay subscriptable


@runtime_checkable
class EventsStoreProtocol(Protocol):
    """The journal. Contract (checked by the conformance suite):

    - ``write_events`` takes the events of one persistence id, contiguous and starting right
      after the stored highest sequence number; otherwise it raises
      :class:`~ego.errors.ConcurrencyError` and writes nothing. It is atomic, and gives each
      event a position in its shard, increasing in commit order.
    - "Not found" is a value (``[]``, ``0``), never an exception.
    - Deleting events never lowers the highest sequence number.
    - Bounds (limits, page sizes, sequence numbers, positions): negative is a
      :class:`~ego.errors.ValidationError`, beyond what is stored means "no limit"
      (:func:`clamp_bound`); a page size of 0 is a ``ValidationError``. A sequence number
      written above :data:`MAX_STORED` is a ``ValidationError`` (:func:`check_storable`), a
      shard outside 0 .. 2**32 - 1 too (:func:`check_shard`). The engine itself passes
      ``2**64 - 1`` for "no limit".

    Raise :mod:`ego.errors` exceptions for failures that have a meaning (a
    ``ConcurrencyError``, a ``MessageTooLargeError``); any other exception becomes a
    :class:`~ego.errors.StoreError` for the engine.
    """

    def write_events(self, events: Sequence[Event]) -> Maybe[None]: ...
    def replay_events(
        self, persistence_id: str, from_sequence_number: int, to_sequence_number: int, max_count: int
    ) -> Maybe[list[Event]]: ...
    def highest_sequence_number(self, persistence_id: str) -> Maybe[int]: ...
    def delete_events(self, persistence_id: str, to_sequence_number: int) -> Maybe[None]: ...
    def persistence_ids(self, page_size: int, after: str | None) -> Maybe[tuple[list[str], str | None]]: ...
    def shard_events(self, shard: int, after_position: int, max_count: int) -> Maybe[list[Event]]: ...
    def shard_heads(self) -> Maybe[list[tuple[int, int, int]]]: ...


@runtime_checkable
class SnapshotStoreProtocol(Protocol):
    """Snapshots: a second save at the same sequence number replaces the first."""

    def write_snapshot(self, snapshot: Snapshot) -> Maybe[None]: ...
    def latest_snapshot(self, persistence_id: str, criteria: SnapshotCriteria) -> Maybe[Snapshot | None]: ...
    def delete_snapshots(self, persistence_id: str, criteria: SnapshotCriteria) -> Maybe[None]: ...


@runtime_checkable
class StateStoreProtocol(Protocol):
    """Durable states: ``write_state`` is compare-and-set on the stored version (0: none).

    For projections and publishers over states (``add_projection(..., source="states")``,
    ``add_state_publisher``) a store also implements :class:`StateChangeLogProtocol`; one
    without it still serves durable-state entities, and adding such a reader raises
    :class:`~ego.errors.ConfigurationError`.

    Optional: ``state_version(persistence_id) -> int``, the stored state's version (0: none).
    Entities declared ``shared=True`` read it before each command and read the whole state
    only when it moved; without it they read the whole state each time.
    """

    def write_state(self, state: DurableState, expected_version: int) -> Maybe[None]: ...
    def read_state(self, persistence_id: str) -> Maybe[DurableState | None]: ...
    def delete_state(self, persistence_id: str) -> Maybe[None]: ...


@runtime_checkable
class StateChangeLogProtocol(Protocol):
    """The durable-state change log (optional methods of a state store). Contract (checked by
    the conformance suite's change-log cases):

    - Every successful ``write_state`` appends one record in the same atomic write: the
      ``DurableState`` as written (without ``idempotency_keys``) with ``position`` set to the
      next position of its ``shard``, increasing in commit order; a reader after a position
      never skips a committed record. A refused write appends nothing.
    - Every written version is kept, in order per entity.
    - ``delete_state`` removes the entity's records too (positions are not reused).

    ``shard_state_changes(shard, after_position, max_count)`` gives the records of ``shard``
    with a position above ``after_position``, ascending, at most ``max_count``;
    ``state_shard_heads()`` gives ``(shard, position, timestamp)`` of the newest record of
    every shard that has one. Bounds as in :class:`EventsStoreProtocol`.
    """

    def shard_state_changes(self, shard: int, after_position: int, max_count: int) -> Maybe[list[DurableState]]: ...
    def state_shard_heads(self) -> Maybe[list[tuple[int, int, int]]]: ...


@runtime_checkable
class OffsetStoreProtocol(Protocol):
    """Projection positions per shard."""

    def write_offsets(self, projection: str, offsets: list[tuple[int, int]]) -> Maybe[None]: ...
    def read_offsets(self, projection: str) -> Maybe[list[tuple[int, int]]]: ...
    def reset_offsets(self, projection: str) -> Maybe[None]: ...


class NativeStore(_ego.NativeStore):
    """Methods shared by the stores implemented in Rust. They take and return envelope messages
    (:mod:`ego.v1`) and block with the GIL released. The engine itself never calls them: it
    talks to the store in Rust."""

    def write_events(self, events: Sequence[Event]) -> None:
        """Appends the events of one persistence id atomically. They must be contiguous and
        follow the stored highest sequence number; otherwise ``ConcurrencyError``."""
        self._write_events([e.SerializeToString() for e in events])

    def replay_events(
        self, persistence_id: str, from_sequence_number: int = 1, to_sequence_number: int = U64_MAX, max_count: int = U64_MAX
    ) -> list[Event]:
        """Events with ``from <= sequence_number <= to``, ascending, at most ``max_count``."""
        raw = self._replay_events(persistence_id, from_sequence_number, to_sequence_number, max_count)
        return [Event.FromString(b) for b in raw]

    def shard_events(self, shard: int, after_position: int = 0, max_count: int = 1000) -> list[Event]:
        """Events of ``shard`` after ``after_position``, in position order."""
        return [Event.FromString(b) for b in self._shard_events(shard, after_position, max_count)]

    def write_snapshot(self, snapshot: Snapshot) -> None:
        """Saves a snapshot (replacing one at the same sequence number)."""
        self._write_snapshot(snapshot.SerializeToString())

    def latest_snapshot(self, persistence_id: str, criteria: SnapshotCriteria | None = None) -> Snapshot | None:
        """The matching snapshot with the highest sequence number, or ``None``."""
        raw = self._latest_snapshot(persistence_id, *(criteria or SnapshotCriteria())._args())
        return None if raw is None else Snapshot.FromString(raw)

    def delete_snapshots(self, persistence_id: str, criteria: SnapshotCriteria | None = None) -> None:
        """Deletes every matching snapshot."""
        self._delete_snapshots(persistence_id, *(criteria or SnapshotCriteria())._args())

    def write_state(self, state: DurableState, expected_version: int) -> None:
        """Writes the state if the stored version is ``expected_version`` (0: none stored);
        otherwise ``ConcurrencyError`` and nothing changes."""
        self._write_state(state.SerializeToString(), expected_version)

    def read_state(self, persistence_id: str) -> DurableState | None:
        """The stored durable state, or ``None``."""
        raw = self._read_state(persistence_id)
        return None if raw is None else DurableState.FromString(raw)

    def state_version(self, persistence_id: str) -> int:
        """The stored state's version, 0 when none is stored (what entities declared
        ``shared=True`` read before each command).

        >>> store.state_version("cart-1")
        3
        """
        return self._state_version(persistence_id)

    def shard_state_changes(self, shard: int, after_position: int = 0, max_count: int = 1000) -> list[DurableState]:
        """The durable-state change log: the versions written to ``shard`` after
        ``after_position``, in position order, at most ``max_count`` (each with ``position``
        set). See :class:`StateChangeLogProtocol`."""
        return [DurableState.FromString(b) for b in self._shard_state_changes(shard, after_position, max_count)]

    def list_keys(self, after: str | None = None, max_count: int = 1000) -> list[DataKey]:
        """Wrapped data keys of the store's key vault (encryption at rest), in persistence id
        order after ``after`` (exclusive), at most ``max_count``. The keys stay wrapped by
        their master key: copying them to another store keeps its ciphertext readable."""
        return [DataKey.FromString(b) for b in self._list_keys(after, max_count)]

    def put_key(self, key: DataKey) -> bool:
        """Stores a wrapped data key unless the id has a key or an erasure record already;
        ``True`` when the vault holds this key afterwards (for migration tools)."""
        return self._put_key(key.SerializeToString())

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def encrypted(self, encryption: Any) -> EncryptedStore:
        """A view of this store that encrypts what it writes and decrypts what it reads with
        the keys of ``encryption`` (an :class:`ego.Encryption`), as an engine with that
        setting does: for tools and tests (the conformance suite runs on it). Give an engine
        the plain store and ``encryption=`` instead."""
        return EncryptedStore(self, encryption)


class EncryptedStore(NativeStore):
    """See :meth:`NativeStore.encrypted`. Closing it closes the store it views."""

    def __new__(cls, store: NativeStore, encryption: Any) -> EncryptedStore:
        return super().__new__(cls, "encrypted", inner=store, encryption=encryption)


class MemoryStore(NativeStore):
    """Events, snapshots and durable state in memory. Nothing survives the process."""

    def __new__(cls, *, max_event_bytes: int | None = None) -> MemoryStore:
        return super().__new__(cls, "memory", None, True, max_event_bytes)


class RocksDBStore(NativeStore):
    """The embedded store: RocksDB in directory ``path`` (created if missing).

    ``sync=True`` (the default) syncs the write-ahead log to disk before a write is
    acknowledged, so an acknowledged command survives a power loss. With ``sync=False`` it
    survives a crash of the process but not of the machine or the operating system; writes
    are then much faster for sequential callers. Writes from many entities that arrive together
    share one sync (group commit) either way.

    ``cache_bytes`` sizes RocksDB's block cache (64 MiB by default).

    Only one store object can have a directory open at a time; ``close()`` it (or use it as a
    context manager) before opening the directory again.

    ``wal_recovery`` says what opening does when the write-ahead log is damaged.
    ``"strict"`` (the default) refuses to open with :class:`~ego.errors.CorruptDataError`
    when a record before the end of the log is damaged, since acknowledged writes would be
    lost; a torn last record (a write cut short by a crash, never acknowledged) is dropped
    silently. ``"point_in_time"`` opens with everything before the first damaged record and
    drops the rest: the operator's explicit choice after a strict open failed and no backup
    is at hand. Any other value raises :class:`~ego.errors.ConfigurationError`.

    After a write fails in a way that may have left it in the log (a failed ``fdatasync``),
    its callers get :class:`~ego.errors.OutcomeUnknownError` and the store refuses every
    later write with :class:`~ego.errors.StoreError` until it is closed and reopened: after
    a failed sync the operating system's page cache can no longer be trusted. A full disk
    gives :class:`~ego.errors.StorageFullError` (nothing written); writes resume by
    themselves once space is freed (RocksDB checks every few seconds).

    Example::

        store = RocksDBStore("data/ego", wal_recovery="strict")
    """

    def __new__(
        cls,
        path: str | os.PathLike[str],
        *,
        sync: bool = True,
        max_event_bytes: int | None = None,
        cache_bytes: int | None = None,
        wal_recovery: Literal["strict", "point_in_time"] = "strict",
    ) -> RocksDBStore:
        return super().__new__(cls, "rocksdb", os.fspath(path), sync, max_event_bytes, cache_bytes, wal_recovery=wal_recovery)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sync: bool = True,
        max_event_bytes: int | None = None,
        cache_bytes: int | None = None,
        wal_recovery: Literal["strict", "point_in_time"] = "strict",
    ) -> None:
        self.path = os.fspath(path)


class PostgresStore(NativeStore):
    """PostgreSQL: one database shared by many processes and machines.

    ``url`` is a libpq-style URL (``postgresql://user:password@host:5432/db``) or key=value
    string. The tables (``<schema>.<table_prefix>events``, ``heads``, ``shards``,
    ``snapshots``, ``states``, ``offsets``, ``keys``, ``erasures``, ``meta``, ``fences``, ``leases``, ``migrations``) are created or migrated on first
    use; ``schema`` and ``table_prefix`` must be plain identifiers.

    Writes from every entity of the process that arrive together share one transaction
    (group commit). Positions in each shard become visible in commit order, so projections
    never skip an event. While the server cannot be reached, writes are retried with backoff
    for up to ``retry_for`` seconds; a write whose connection was lost while committing fails
    with :class:`~ego.errors.OutcomeUnknownError`.

    ``fence`` (a name, e.g. ``"shard-3"``): fencing, for a process that must be the only writer
    of its name (one shard, one incarnation). Opening the store takes a new epoch for the name
    (table ``fences``), waiting for the writes of the previous holder in flight; every later
    write of this store (events, snapshots, durable states, offsets, deletes, keys) checks in
    its own transaction that no other store opened the same name since. Once one did, the write
    fails with :class:`~ego.errors.FencedError` (nothing applied) and so does every later
    write of this store; reads still work. ``fence_timeout`` (seconds, default 5): with a fence,
    the server ends a transaction of this store that sits idle longer (rolled back), so a
    process stopped in the middle of a write keeps a new holder waiting at most that long.
    ``store.fence`` is ``(name, epoch)``. The check costs one statement per transaction (one
    per group commit of the writer)::

        store = PostgresStore("postgresql://postgres@127.0.0.1:5432/app", fence="shard-3")
        store.fence  # ("shard-3", 7): the 7th store opened with this name
    """

    def __new__(
        cls,
        url: str,
        *,
        schema: str = "public",
        table_prefix: str = "ego_",
        pool_size: int = 8,
        max_event_bytes: int | None = None,
        retry_for: float = 30.0,
        fence: str | None = None,
        fence_timeout: float = 5.0,
    ) -> PostgresStore:
        return super().__new__(
            cls,
            "postgres",
            None,
            True,
            max_event_bytes,
            None,
            url,
            schema,
            table_prefix,
            pool_size,
            retry_for,
            fence=fence,
            fence_timeout=fence_timeout,
        )


#: Anything the engine accepts as a store.
Store = NativeStore | EventsStoreProtocol | SnapshotStoreProtocol | StateStoreProtocol
