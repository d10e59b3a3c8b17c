"""One way to read and write any store, built-in or written in Python, for tools.

A built-in store (:class:`ego.stores.NativeStore`) is read and written as encoded envelopes
(no Python protobuf work per event); a store written in Python is called with the ``ego.v1``
messages, and its ``async def`` methods run on a private event loop. Reads are paged.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

from ego.errors import MigrationError
from ego.stores import U64_MAX, NativeStore, SnapshotCriteria
from ego.v1.envelopes_pb2 import DataKey, DurableState, Event, Snapshot

#: Ids read per page when listing.
ID_PAGE = 1000


class StoreAccess:
    """Reads and writes one store for tools (migration, checks, the command line).

    ``store`` is a built-in store or an object with the store protocol's methods. Methods a
    store lacks raise :class:`~ego.errors.MigrationError` when they are needed.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.native = isinstance(store, NativeStore)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _call(self, method: str, *args: Any) -> Any:
        fn = getattr(self.store, method, None)
        if fn is None:
            raise MigrationError(f"{type(self.store).__name__} has no {method}() method")
        value = fn(*args)
        if inspect.isawaitable(value):
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            return self._loop.run_until_complete(value)
        return value

    def has(self, method: str) -> bool:
        """Whether the store has ``method``."""
        return callable(getattr(self.store, method, None))

    def close(self) -> None:
        """Closes the private event loop (not the store)."""
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    # -- listing ------------------------------------------------------------------------

    def _ids(self, method: str, after: str | None, page_size: int) -> Iterator[list[str]]:
        while True:
            ids, after = self._call(method, page_size, after)
            if ids:
                yield list(ids)
            if after is None:
                return

    def event_id_pages(self, after: str | None = None, page_size: int = ID_PAGE) -> Iterator[list[str]]:
        """Pages of the ids with events (in byte order) after ``after``."""
        return self._ids("persistence_ids", after, page_size)

    def state_id_pages(self, after: str | None = None, page_size: int = ID_PAGE) -> Iterator[list[str]]:
        """Pages of the ids with a durable state (in byte order) after ``after``."""
        return self._ids("state_ids", after, page_size)

    # -- events ------------------------------------------------------------------------

    def highest(self, pid: str) -> int:
        return int(self._call("highest_sequence_number", pid))

    def replay_raw(self, pid: str, first: int = 1, last: int = U64_MAX, max_count: int = U64_MAX) -> list[bytes]:
        """Encoded events ``first <= seq <= last``, at most ``max_count``."""
        if self.native:
            return list(self.store._replay_events(pid, first, last, max_count))
        return [e.SerializeToString() for e in self._call("replay_events", pid, first, last, max_count)]

    def pages_raw(self, pid: str, first: int = 1, last: int = U64_MAX, page: int = 5000) -> Iterator[list[bytes]]:
        """Encoded events ``first <= seq <= last`` in pages (bounded memory)."""
        while first <= last:
            events = self.replay_raw(pid, first, last, page)
            if not events:
                return
            yield events
            if len(events) < page:
                return
            first = Event.FromString(events[-1]).sequence_number + 1

    def write_raw(self, events: list[bytes]) -> None:
        """Appends encoded events of one id (the store's contract: contiguous, atomic)."""
        if self.native:
            self.store._write_events(events)
        else:
            self._call("write_events", [Event.FromString(b) for b in events])

    def delete_events(self, pid: str, to: int) -> None:
        self._call("delete_events", pid, to)

    def shard_heads(self) -> dict[int, tuple[int, int]]:
        """``{shard: (head position, newest timestamp)}``."""
        return {shard: (position, ts) for shard, position, ts in self._call("shard_heads")}

    def shard_events(self, shard: int, after: int, max_count: int) -> list[Event]:
        return list(self._call("shard_events", shard, after, max_count))

    # -- snapshots ---------------------------------------------------------------------

    def latest_snapshot(self, pid: str, max_sequence_number: int = U64_MAX) -> Snapshot | None:
        if not self.has("latest_snapshot"):
            return None
        found: Snapshot | None = self._call("latest_snapshot", pid, SnapshotCriteria(max_sequence_number=max_sequence_number))
        return found

    def snapshots(self, pid: str) -> list[Snapshot]:
        """Every snapshot of ``pid``, newest first."""
        out: list[Snapshot] = []
        bound = U64_MAX
        while bound > 0:
            s = self.latest_snapshot(pid, bound)
            if s is None:
                break
            out.append(s)
            bound = s.sequence_number - 1
        return out

    def write_snapshot(self, snapshot: Snapshot) -> None:
        self._call("write_snapshot", snapshot)

    # -- durable state ------------------------------------------------------------------

    def read_state(self, pid: str) -> DurableState | None:
        found: DurableState | None = self._call("read_state", pid)
        return found

    def write_state(self, state: DurableState, expected_version: int) -> None:
        self._call("write_state", state, expected_version)

    # -- offsets -----------------------------------------------------------------------

    def projection_names(self) -> list[str]:
        return list(self._call("projection_names")) if self.has("projection_names") else []

    def read_offsets(self, projection: str) -> list[tuple[int, int]]:
        return [(int(s), int(p)) for s, p in self._call("read_offsets", projection)] if self.has("read_offsets") else []

    def write_offsets(self, projection: str, offsets: list[tuple[int, int]]) -> None:
        self._call("write_offsets", projection, offsets)

    def reset_offsets(self, projection: str) -> None:
        self._call("reset_offsets", projection)

    # -- key vault ---------------------------------------------------------------------

    def key_pages(self, page_size: int = ID_PAGE) -> Iterator[list[DataKey]]:
        """Pages of the wrapped data keys (built-in stores only; nothing for the others)."""
        if not self.native:
            return
        after: str | None = None
        while True:
            keys = self.store.list_keys(after, page_size)
            if not keys:
                return
            yield keys
            after = keys[-1].persistence_id

    def erasure_pages(self, page_size: int = ID_PAGE) -> Iterator[list[tuple[str, int]]]:
        """Pages of erasure records ``(id, erased_at ns)`` (built-in stores only)."""
        if not self.native:
            return
        after: str | None = None
        while True:
            records = self.store.list_erasures(after, page_size)
            if not records:
                return
            yield records
            after = records[-1][0]
