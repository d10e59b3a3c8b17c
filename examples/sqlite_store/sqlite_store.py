"""A store written in Python on the standard library's sqlite3: an example of the store
protocol (ego.stores.StoreProtocol) that passes ego's conformance suite.

    store = SqliteStore("data/ego.sqlite3")
    engine = ego.Engine("bank", store=store)

One file holds events (with a per-shard position), snapshots, durable states with their
change log (every version written, with a per-shard position: the optional methods
``shard_state_changes`` and ``state_shard_heads`` that projections and publishers over states
read) and projection offsets. Writes run in `BEGIN IMMEDIATE` transactions, so they are serialized and positions
become visible in commit order. Methods may be called from several threads. SQLite integers
are 64-bit signed: bounds are read through `ego.stores.clamp_bound` (a huge limit means all,
a negative one is a ValidationError) and written numbers checked with `check_storable`, as
every store of ego does.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

from ego.errors import ConcurrencyError, MessageTooLargeError, ValidationError
from ego.stores import MAX_STORED, SnapshotCriteria, check_shard, check_storable, clamp_bound
from ego.v1 import DurableState, Event, Snapshot

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    persistence_id TEXT NOT NULL, sequence_number INTEGER NOT NULL,
    shard INTEGER NOT NULL, position INTEGER NOT NULL, envelope BLOB NOT NULL,
    PRIMARY KEY (persistence_id, sequence_number));
CREATE UNIQUE INDEX IF NOT EXISTS events_by_position ON events (shard, position);
CREATE TABLE IF NOT EXISTS heads (persistence_id TEXT PRIMARY KEY, highest INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS shards (shard INTEGER PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
    persistence_id TEXT NOT NULL, sequence_number INTEGER NOT NULL, timestamp INTEGER NOT NULL,
    envelope BLOB NOT NULL, PRIMARY KEY (persistence_id, sequence_number));
CREATE TABLE IF NOT EXISTS states (persistence_id TEXT PRIMARY KEY, version INTEGER NOT NULL, envelope BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (projection TEXT NOT NULL, shard INTEGER NOT NULL, position INTEGER NOT NULL,
    PRIMARY KEY (projection, shard));
CREATE TABLE IF NOT EXISTS state_changes (
    shard INTEGER NOT NULL, position INTEGER NOT NULL, persistence_id TEXT NOT NULL, envelope BLOB NOT NULL,
    PRIMARY KEY (shard, position));
CREATE INDEX IF NOT EXISTS state_changes_by_id ON state_changes (persistence_id);
CREATE TABLE IF NOT EXISTS state_shards (shard INTEGER PRIMARY KEY, position INTEGER NOT NULL);
"""


class SqliteStore:
    """Events, snapshots, durable state and offsets in one SQLite file."""

    def __init__(self, path: str, *, max_event_bytes: int = 8 << 20) -> None:
        self.max_event_bytes = max_event_bytes
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- events -------------------------------------------------------------------------------

    def write_events(self, events: Sequence[Event]) -> None:
        if not events:
            raise ValidationError("write_events needs at least one event")
        pid = events[0].persistence_id
        first = events[0].sequence_number
        for i, e in enumerate(events):
            if e.persistence_id != pid or e.sequence_number != first + i:
                raise ValidationError("write_events takes contiguous events of one persistence id")
            check_storable(e.sequence_number, "sequence number")
            if len(e.event.value) > self.max_event_bytes:
                raise MessageTooLargeError(
                    f"event of {len(e.event.value)} bytes exceeds the limit of {self.max_event_bytes} bytes"
                )
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT highest FROM heads WHERE persistence_id = ?", (pid,)).fetchone()
                highest = row[0] if row else 0
                if first != highest + 1:
                    err = ConcurrencyError(f"concurrency conflict on {pid!r}: expected {first - 1}, found {highest}")
                    err.persistence_id, err.expected, err.actual = pid, first - 1, highest
                    raise err
                db.execute(
                    "INSERT INTO heads VALUES (?, ?) ON CONFLICT (persistence_id) DO UPDATE SET highest = excluded.highest",
                    (pid, events[-1].sequence_number),
                )
                for e in events:
                    row = db.execute(
                        "INSERT INTO shards VALUES (?, 1) ON CONFLICT (shard) DO UPDATE SET position = position + 1 RETURNING position",
                        (e.shard,),
                    ).fetchone()
                    stored = Event()
                    stored.CopyFrom(e)
                    stored.position = row[0]
                    db.execute(
                        "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                        (pid, e.sequence_number, e.shard, row[0], stored.SerializeToString()),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def replay_events(
        self,
        persistence_id: str,
        from_sequence_number: int = 1,
        to_sequence_number: int = MAX_STORED,
        max_count: int = MAX_STORED,
    ) -> list[Event]:
        first = clamp_bound(from_sequence_number, "from_sequence_number", MAX_STORED + 1)
        last = clamp_bound(to_sequence_number, "to_sequence_number")
        limit = clamp_bound(max_count, "max_count")
        if first > MAX_STORED:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT envelope FROM events WHERE persistence_id = ? AND sequence_number BETWEEN ? AND ? ORDER BY sequence_number LIMIT ?",
                (persistence_id, first, last, limit),
            ).fetchall()
        return [Event.FromString(r[0]) for r in rows]

    def highest_sequence_number(self, persistence_id: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT highest FROM heads WHERE persistence_id = ?", (persistence_id,)).fetchone()
        return row[0] if row else 0

    def delete_events(self, persistence_id: str, to_sequence_number: int) -> None:
        last = clamp_bound(to_sequence_number, "to_sequence_number")
        with self._lock:
            self._db.execute("DELETE FROM events WHERE persistence_id = ? AND sequence_number <= ?", (persistence_id, last))

    def persistence_ids(self, page_size: int, after: str | None = None) -> tuple[list[str], str | None]:
        page_size = clamp_bound(page_size, "page_size", MAX_STORED - 1)
        if page_size == 0:
            raise ValidationError("page_size must be at least 1")
        with self._lock:
            rows = self._db.execute(
                "SELECT persistence_id FROM heads WHERE persistence_id > ? ORDER BY persistence_id LIMIT ?",
                (after or "", page_size + 1),
            ).fetchall()
        ids = [r[0] for r in rows[:page_size]]
        return ids, (ids[-1] if len(rows) > page_size else None)

    def shard_events(self, shard: int, after_position: int = 0, max_count: int = 1000) -> list[Event]:
        params = (check_shard(shard), clamp_bound(after_position, "after_position"), clamp_bound(max_count, "max_count"))
        with self._lock:
            rows = self._db.execute(
                "SELECT envelope FROM events WHERE shard = ? AND position > ? ORDER BY position LIMIT ?", params
            ).fetchall()
        return [Event.FromString(r[0]) for r in rows]

    def shard_heads(self) -> list[tuple[int, int, int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT s.shard, s.position, e.envelope FROM shards s LEFT JOIN events e ON e.shard = s.shard AND e.position = s.position ORDER BY s.shard"
            ).fetchall()
        return [(shard, position, Event.FromString(env).timestamp if env else 0) for shard, position, env in rows]

    # -- snapshots ----------------------------------------------------------------------------

    def write_snapshot(self, snapshot: Snapshot) -> None:
        check_storable(snapshot.sequence_number, "snapshot sequence number")
        with self._lock:
            self._db.execute(
                "INSERT INTO snapshots VALUES (?, ?, ?, ?) ON CONFLICT (persistence_id, sequence_number) "
                "DO UPDATE SET timestamp = excluded.timestamp, envelope = excluded.envelope",
                (snapshot.persistence_id, snapshot.sequence_number, snapshot.timestamp, snapshot.SerializeToString()),
            )

    def _select(self, criteria: SnapshotCriteria | None) -> tuple[int, int, int, int]:
        # SnapshotCriteria keeps timestamps in int64 and sequence numbers in uint64: a lower
        # bound above what is stored selects nothing.
        c = criteria or SnapshotCriteria()
        if c.min_sequence_number > MAX_STORED:
            return (1, 0, 0, 0)
        return (c.min_sequence_number, min(c.max_sequence_number, MAX_STORED), c.min_timestamp, c.max_timestamp)

    def latest_snapshot(self, persistence_id: str, criteria: SnapshotCriteria | None = None) -> Snapshot | None:
        with self._lock:
            row = self._db.execute(
                "SELECT envelope FROM snapshots WHERE persistence_id = ? AND sequence_number BETWEEN ? AND ? "
                "AND timestamp BETWEEN ? AND ? ORDER BY sequence_number DESC LIMIT 1",
                (persistence_id, *self._select(criteria)),
            ).fetchone()
        return Snapshot.FromString(row[0]) if row else None

    def delete_snapshots(self, persistence_id: str, criteria: SnapshotCriteria | None = None) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM snapshots WHERE persistence_id = ? AND sequence_number BETWEEN ? AND ? AND timestamp BETWEEN ? AND ?",
                (persistence_id, *self._select(criteria)),
            )

    # -- durable state ------------------------------------------------------------------------

    def write_state(self, state: DurableState, expected_version: int) -> None:
        check_storable(state.version_number, "durable state version")
        expected_version = clamp_bound(expected_version, "expected_version", 2**64 - 1)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT version FROM states WHERE persistence_id = ?", (state.persistence_id,)).fetchone()
                actual = row[0] if row else 0
                if actual != expected_version:
                    err = ConcurrencyError(
                        f"concurrency conflict on {state.persistence_id!r}: expected {expected_version}, found {actual}"
                    )
                    err.persistence_id, err.expected, err.actual = state.persistence_id, expected_version, actual
                    raise err
                db.execute(
                    "INSERT INTO states VALUES (?, ?, ?) ON CONFLICT (persistence_id) DO UPDATE SET version = excluded.version, envelope = excluded.envelope",
                    (state.persistence_id, state.version_number, state.SerializeToString()),
                )
                # The change record, in the same transaction: the state without its
                # idempotency keys, at the next position of its shard.
                row = db.execute(
                    "INSERT INTO state_shards VALUES (?, 1) ON CONFLICT (shard) DO UPDATE SET position = position + 1 RETURNING position",
                    (state.shard,),
                ).fetchone()
                record = DurableState()
                record.CopyFrom(state)
                record.ClearField("idempotency_keys")
                record.position = row[0]
                db.execute(
                    "INSERT INTO state_changes VALUES (?, ?, ?, ?)",
                    (state.shard, row[0], state.persistence_id, record.SerializeToString()),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def read_state(self, persistence_id: str) -> DurableState | None:
        with self._lock:
            row = self._db.execute("SELECT envelope FROM states WHERE persistence_id = ?", (persistence_id,)).fetchone()
        return DurableState.FromString(row[0]) if row else None

    def state_version(self, persistence_id: str) -> int:
        """Optional (entities declared ``shared=True``): the stored version, 0 when none,
        read without the state."""
        with self._lock:
            row = self._db.execute("SELECT version FROM states WHERE persistence_id = ?", (persistence_id,)).fetchone()
        return int(row[0]) if row else 0

    def delete_state(self, persistence_id: str) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM states WHERE persistence_id = ?", (persistence_id,))
                db.execute("DELETE FROM state_changes WHERE persistence_id = ?", (persistence_id,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def shard_state_changes(self, shard: int, after_position: int = 0, max_count: int = 1000) -> list[DurableState]:
        """Optional (projections and publishers over states): the change log of ``shard``."""
        params = (check_shard(shard), clamp_bound(after_position, "after_position"), clamp_bound(max_count, "max_count"))
        with self._lock:
            rows = self._db.execute(
                "SELECT envelope FROM state_changes WHERE shard = ? AND position > ? ORDER BY position LIMIT ?", params
            ).fetchall()
        return [DurableState.FromString(r[0]) for r in rows]

    def state_shard_heads(self) -> list[tuple[int, int, int]]:
        """Optional (projections and publishers over states): the newest change of each shard."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.shard, s.position, c.envelope FROM state_shards s "
                "LEFT JOIN state_changes c ON c.shard = s.shard AND c.position = s.position ORDER BY s.shard"
            ).fetchall()
        return [(shard, position, DurableState.FromString(env).timestamp if env else 0) for shard, position, env in rows]

    def state_ids(self, page_size: int, after: str | None = None) -> tuple[list[str], str | None]:
        """Optional (for tools: ``ego entities``, migration): ids of stored states in byte order."""
        page_size = clamp_bound(page_size, "page_size", MAX_STORED - 1)
        if page_size == 0:
            raise ValidationError("page_size must be at least 1")
        with self._lock:
            rows = self._db.execute(
                "SELECT persistence_id FROM states WHERE persistence_id > ? ORDER BY persistence_id LIMIT ?",
                (after or "", page_size + 1),
            ).fetchall()
        ids = [r[0] for r in rows[:page_size]]
        return ids, (ids[-1] if len(rows) > page_size else None)

    # -- offsets ------------------------------------------------------------------------------

    def write_offsets(self, projection: str, offsets: list[tuple[int, int]]) -> None:
        for shard, position in offsets:
            check_shard(shard)
            check_storable(clamp_bound(position, "position", 2**64), "position")
        with self._lock:
            self._db.executemany(
                "INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT (projection, shard) DO UPDATE SET position = excluded.position",
                [(projection, shard, position) for shard, position in offsets],
            )

    def read_offsets(self, projection: str) -> list[tuple[int, int]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT shard, position FROM offsets WHERE projection = ? ORDER BY shard", (projection,)
            ).fetchall()
        return [(s, p) for s, p in rows]

    def reset_offsets(self, projection: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM offsets WHERE projection = ?", (projection,))

    def projection_names(self) -> list[str]:
        """Optional (for tools: ``ego projections``, migration): projections with offsets."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT projection FROM offsets ORDER BY projection").fetchall()
        return [r[0] for r in rows]
