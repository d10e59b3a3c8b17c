"""Importing a PostgreSQL database of the Go library (Tochemey/ego and its contrib stores).

The Go layout: ``events_store`` (persistence_id, sequence_number, is_deleted, event_payload,
event_manifest, timestamp, shard_number, and encryption_key_id / is_encrypted since v4, or
state_payload / state_manifest in v3), ``snapshots_store``, ``states_store`` and
``offsets_store``. Payloads are ``google.protobuf.Any`` messages marshalled whole (the
manifest is then ``google.protobuf.Any``); a row whose manifest names another message holds
that message's bytes and is wrapped in an ``Any`` here. Timestamps are Unix nanoseconds
(seconds before the Go library's v4.2.0: values below 10**11 are read as seconds).

:func:`import_go` reads that database through :class:`GoPostgresSource`, a read-only store,
and copies it with :func:`ego.migration.migrate` (so it is resumable, idempotent and
verified the same way). With ``v3_state_snapshots=True`` it also does the Go library's own
v3 -> v4 step: the resulting state each v3 event carried (field 5 of the v3 ``Event``, the
``state_payload`` column of the v3 table) becomes a snapshot at the highest sequence number
that carried one. Projection offsets (event timestamps in the Go library) become positions:
each shard starts at the first event later than the oldest offset of the projection, so
nothing is skipped and some events may be handled again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.any_pb2 import Any as AnyMessage

from ego import _ego
from ego.errors import ConfigurationError, MigrationError
from ego.migration.access import StoreAccess
from ego.migration.copy import MigrationReport, Progress, migrate
from ego.stores import SnapshotCriteria
from ego.v1.envelopes_pb2 import DurableState, Event, Snapshot

ANY_MANIFEST = "google.protobuf.Any"
#: Timestamps below this are seconds (the Go library before v4.2.0), above nanoseconds.
SECONDS_BELOW = 10**11


def _nanos(value: int) -> int:
    return value * 1_000_000_000 if 0 < value < SECONDS_BELOW else value


def _any(payload: bytes, manifest: str) -> AnyMessage:
    if manifest in (ANY_MANIFEST, ""):
        return AnyMessage.FromString(bytes(payload))
    return AnyMessage(type_url=f"type.googleapis.com/{manifest}", value=bytes(payload))


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ConfigurationError(f"not a plain SQL identifier: {name!r}")
    return f'"{name}"'


class GoPostgresSource:
    """A read-only store over a Go library's PostgreSQL database (see the module).

    ``url`` is a libpq URL; ``schema`` holds the Go tables. ``shards``: the shard count of the
    ego engine that will use the data (events and states get the shard that engine gives
    their id), or ``None`` to keep the Go shard numbers. Needs ``psycopg``.
    """

    def __init__(self, url: str, *, schema: str = "public", shards: int | None = 8, v3_state_snapshots: bool = False) -> None:
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - depends on the installation
            raise ConfigurationError("importing from the Go library needs psycopg: pip install 'ego-cqrs[cli]'") from e
        try:
            self._db = psycopg.connect(url, autocommit=True)
        except psycopg.Error as e:
            raise ConfigurationError(f"cannot connect to the Go library's database: {str(e).strip().splitlines()[0]}") from e
        try:
            self._schema = _ident(schema)
            self._shards = shards
            self._v3 = v3_state_snapshots
            self._columns = {
                t: self._table_columns(t) for t in ("events_store", "snapshots_store", "states_store", "offsets_store")
            }
            if not self._columns["events_store"] and not self._columns["states_store"]:
                raise MigrationError(f"no events_store or states_store table in schema {schema!r}: not a Go library database")
            if v3_state_snapshots and "state_payload" not in self._columns["events_store"]:
                raise MigrationError("v3_state_snapshots: events_store has no state_payload column (not the v3 layout)")
        except BaseException:
            self._db.close()  # a refused database leaves no connection open
            raise

    def _table_columns(self, table: str) -> set[str]:
        rows = self._db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (self._schema.strip('"'), table),
        ).fetchall()
        return {r[0] for r in rows}

    def _t(self, table: str) -> str:
        return f"{self._schema}.{_ident(table)}"

    def _shard(self, pid: str, go_shard: int) -> int:
        return _ego.shard_of(pid, self._shards) if self._shards is not None else int(go_shard)

    def close(self) -> None:
        self._db.close()

    # -- events ------------------------------------------------------------------------

    def _ids(self, table: str, page_size: int, after: str | None) -> tuple[list[str], str | None]:
        if not self._columns[table]:
            return [], None
        rows = self._db.execute(
            f'SELECT DISTINCT persistence_id COLLATE "C" AS p FROM {self._t(table)} '
            f'WHERE persistence_id COLLATE "C" > %s ORDER BY p LIMIT %s',
            (after or "", page_size + 1),
        ).fetchall()
        ids = [r[0] for r in rows[:page_size]]
        return ids, (ids[-1] if len(rows) > page_size else None)

    def persistence_ids(self, page_size: int, after: str | None) -> tuple[list[str], str | None]:
        return self._ids("events_store", page_size, after)

    def highest_sequence_number(self, persistence_id: str) -> int:
        row = self._db.execute(
            f"SELECT max(sequence_number) FROM {self._t('events_store')} WHERE persistence_id = %s", (persistence_id,)
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def replay_events(self, persistence_id: str, first: int, last: int, max_count: int) -> list[Event]:
        cols = self._columns["events_store"]
        encryption = ", is_encrypted" if "is_encrypted" in cols else ", false"
        rows = self._db.execute(
            f"SELECT sequence_number, is_deleted, event_payload, event_manifest, timestamp, shard_number{encryption} "
            f"FROM {self._t('events_store')} WHERE persistence_id = %s AND sequence_number BETWEEN %s AND %s "
            "ORDER BY sequence_number LIMIT %s",
            (persistence_id, min(first, 2**63 - 1), min(last, 2**63 - 1), min(max_count, 2**63 - 1)),
        ).fetchall()
        out = []
        for seq, deleted, payload, manifest, ts, shard, encrypted in rows:
            if encrypted:
                raise MigrationError(
                    f"event {seq} of {persistence_id!r} is encrypted by the Go library, which ego cannot decrypt: decrypt it there first"
                )
            out.append(
                Event(
                    persistence_id=persistence_id,
                    sequence_number=int(seq),
                    is_deleted=bool(deleted),
                    event=_any(payload, manifest),
                    timestamp=_nanos(int(ts)),
                    shard=self._shard(persistence_id, shard),
                )
            )
        return out

    # -- snapshots ---------------------------------------------------------------------

    def latest_snapshot(self, persistence_id: str, criteria: SnapshotCriteria) -> Snapshot | None:
        top = min(criteria.max_sequence_number, 2**63 - 1)
        found: Snapshot | None = None
        if self._columns["snapshots_store"]:
            encrypted = ", is_encrypted" if "is_encrypted" in self._columns["snapshots_store"] else ", false"
            row = self._db.execute(
                f"SELECT sequence_number, state_payload, state_manifest, timestamp{encrypted} FROM {self._t('snapshots_store')} "
                "WHERE persistence_id = %s AND sequence_number <= %s ORDER BY sequence_number DESC LIMIT 1",
                (persistence_id, top),
            ).fetchone()
            if row is not None:
                if row[4]:
                    raise MigrationError(
                        f"the snapshot of {persistence_id!r} is encrypted by the Go library: decrypt it there first"
                    )
                found = Snapshot(
                    persistence_id=persistence_id,
                    sequence_number=int(row[0]),
                    state=_any(row[1], row[2]),
                    timestamp=_nanos(int(row[3])),
                )
        if self._v3:
            row = self._db.execute(
                f"SELECT sequence_number, state_payload, state_manifest, timestamp FROM {self._t('events_store')} "
                "WHERE persistence_id = %s AND sequence_number <= %s AND length(state_payload) > 0 "
                "ORDER BY sequence_number DESC LIMIT 1",
                (persistence_id, top),
            ).fetchone()
            if row is not None and (found is None or int(row[0]) > found.sequence_number):
                found = Snapshot(
                    persistence_id=persistence_id,
                    sequence_number=int(row[0]),
                    state=_any(row[1], row[2]),
                    timestamp=_nanos(int(row[3])),
                )
        if found is not None and not criteria.min_sequence_number <= found.sequence_number:
            return None
        return found

    # -- durable state -----------------------------------------------------------------

    def state_ids(self, page_size: int, after: str | None) -> tuple[list[str], str | None]:
        return self._ids("states_store", page_size, after)

    def read_state(self, persistence_id: str) -> DurableState | None:
        if not self._columns["states_store"]:
            return None
        row = self._db.execute(
            f"SELECT version_number, state_payload, state_manifest, timestamp, shard_number FROM {self._t('states_store')} "
            "WHERE persistence_id = %s ORDER BY version_number DESC LIMIT 1",
            (persistence_id,),
        ).fetchone()
        if row is None:
            return None
        return DurableState(
            persistence_id=persistence_id,
            version_number=int(row[0]),
            resulting_state=_any(row[1], row[2]),
            timestamp=_nanos(int(row[3])),
            shard=self._shard(persistence_id, row[4]),
        )

    # -- offsets -----------------------------------------------------------------------

    def go_offsets(self) -> dict[str, int]:
        """Each projection's oldest offset over its shards (an event timestamp, Unix ns)."""
        if not self._columns["offsets_store"]:
            return {}
        rows = self._db.execute(
            f"SELECT projection_name, min(current_offset) FROM {self._t('offsets_store')} GROUP BY 1"
        ).fetchall()
        return {name: _nanos(int(value)) for name, value in rows}


@dataclass
class GoImportReport:
    """What :func:`import_go` copied, and the projection offsets it set."""

    migration: MigrationReport
    projections: dict[str, list[tuple[int, int]]]


def _start_after(target: StoreAccess, shard: int, after_nanos: int) -> int:
    """The position before the first event of ``shard`` later than ``after_nanos``."""
    position = 0
    while True:
        page = target.shard_events(shard, position, 4096)
        if not page:
            return position
        for e in page:
            if e.timestamp > after_nanos:
                return int(e.position) - 1
        position = int(page[-1].position)


def import_go(
    url: str,
    target: Any,
    *,
    schema: str = "public",
    shards: int | None = 8,
    v3_state_snapshots: bool = False,
    verify: bool = True,
    progress: Progress | None = None,
    on_offsets: Callable[[str, list[tuple[int, int]]], None] | None = None,
) -> GoImportReport:
    """Imports the Go library's PostgreSQL database at ``url`` into ``target`` (any store).

    ``shards``: the shard count of the ego engine that will run on ``target`` (its
    ``Engine(shards=...)``, 8 by default); ``None`` keeps the Go shard numbers.
    ``v3_state_snapshots``: turn the v3 events' resulting states into snapshots (the Go
    library's v3 -> v4 migration). ``verify``: compare source and target afterwards. Raises
    :class:`~ego.errors.MigrationError` for data ego cannot take (encrypted by the Go
    library), :class:`~ego.errors.ConfigurationError` when the database cannot be reached.

        report = import_go("postgresql://localhost/go_app", RocksDBStore("data/app"), v3_state_snapshots=True)
        assert report.migration.verification.ok
    """
    source = GoPostgresSource(url, schema=schema, shards=shards, v3_state_snapshots=v3_state_snapshots)
    try:
        report = migrate(source, target, verify=verify, progress=progress)
        dst = StoreAccess(target)
        heads = dst.shard_heads()
        offsets: dict[str, list[tuple[int, int]]] = {}
        for name, after in sorted(source.go_offsets().items()):
            offsets[name] = [(shard, _start_after(dst, shard, after)) for shard in sorted(heads)]
            dst.write_offsets(name, offsets[name])
            if on_offsets is not None:
                on_offsets(name, offsets[name])
        dst.close()
        return GoImportReport(report, offsets)
    finally:
        source.close()
