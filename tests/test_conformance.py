"""The store conformance suite (ego.testkit.conformance) on the stores ego ships."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ego
from ego.testkit import InMemoryKeyStore
from ego.testkit.conformance import (
    EventsStoreConformance,
    OffsetStoreConformance,
    SnapshotStoreConformance,
    StateChangeLogConformance,
    StateStoreConformance,
)

SUITES = (
    EventsStoreConformance,
    SnapshotStoreConformance,
    StateStoreConformance,
    StateChangeLogConformance,
    OffsetStoreConformance,
)


class _Memory:
    def make_store(self) -> ego.MemoryStore:
        return ego.MemoryStore()


class TestMemoryEvents(_Memory, EventsStoreConformance):
    pass


class TestMemorySnapshots(_Memory, SnapshotStoreConformance):
    pass


class TestMemoryStates(_Memory, StateStoreConformance):
    pass


class TestMemoryStateChanges(_Memory, StateChangeLogConformance):
    pass


class TestMemoryOffsets(_Memory, OffsetStoreConformance):
    pass


class _Rocks:
    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.path = tmp_path / f"db-{uuid.uuid4().hex[:8]}"

    def make_store(self) -> ego.RocksDBStore:
        return ego.RocksDBStore(self.path)

    def reopen(self, store: ego.RocksDBStore) -> ego.RocksDBStore:
        store.close()
        return ego.RocksDBStore(self.path)


class TestRocksDBEvents(_Rocks, EventsStoreConformance):
    pass


class TestRocksDBSnapshots(_Rocks, SnapshotStoreConformance):
    pass


class TestRocksDBStates(_Rocks, StateStoreConformance):
    pass


class TestRocksDBStateChanges(_Rocks, StateChangeLogConformance):
    pass


class TestRocksDBOffsets(_Rocks, OffsetStoreConformance):
    pass


class _Postgres:
    """One set of tables per test class (a fresh table prefix), dropped afterwards."""

    url: str
    prefix: str

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _tables(cls, pg_url: str) -> Iterator[None]:
        cls.url = pg_url
        cls.prefix = f"t{uuid.uuid4().hex[:10]}_"
        yield
        ego.PostgresStore(pg_url, table_prefix=cls.prefix).drop_tables()

    def make_store(self) -> Any:
        return ego.PostgresStore(self.url, table_prefix=self.prefix)

    def reopen(self, store: Any) -> Any:
        store.close()
        return ego.PostgresStore(self.url, table_prefix=self.prefix)


class TestPostgresEvents(_Postgres, EventsStoreConformance):
    pass


class TestPostgresSnapshots(_Postgres, SnapshotStoreConformance):
    pass


class TestPostgresStates(_Postgres, StateStoreConformance):
    pass


class TestPostgresStateChanges(_Postgres, StateChangeLogConformance):
    pass


class TestPostgresOffsets(_Postgres, OffsetStoreConformance):
    pass


class _Sqlite:
    """The example store written in Python (examples/sqlite_store)."""

    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / f"ego-{uuid.uuid4().hex[:8]}.sqlite3")

    def make_store(self) -> Any:
        from sqlite_store import SqliteStore

        return SqliteStore(self.path)

    def reopen(self, store: Any) -> Any:
        from sqlite_store import SqliteStore

        store.close()
        return SqliteStore(self.path)


class TestSqliteEvents(_Sqlite, EventsStoreConformance):
    pass


class TestSqliteSnapshots(_Sqlite, SnapshotStoreConformance):
    pass


class TestSqliteStates(_Sqlite, StateStoreConformance):
    pass


class TestSqliteStateChanges(_Sqlite, StateChangeLogConformance):
    pass


class TestSqliteOffsets(_Sqlite, OffsetStoreConformance):
    pass


ENCRYPTION = ego.Encryption(master_key=bytes(range(32)), master_key_id="conformance")


class _EncryptedRocks(_Rocks):
    """RocksDB seen through the encryption layer (what an engine with encryption writes)."""

    def make_store(self) -> Any:
        return super().make_store().encrypted(ENCRYPTION)

    def reopen(self, store: Any) -> Any:
        return super().reopen(store).encrypted(ENCRYPTION)


class TestEncryptedRocksDBEvents(_EncryptedRocks, EventsStoreConformance):
    encrypts = True


class TestEncryptedRocksDBSnapshots(_EncryptedRocks, SnapshotStoreConformance):
    pass


class TestEncryptedRocksDBStates(_EncryptedRocks, StateStoreConformance):
    pass


class TestEncryptedRocksDBStateChanges(_EncryptedRocks, StateChangeLogConformance):
    pass


class _EncryptedPostgres(_Postgres):
    def make_store(self) -> Any:
        return super().make_store().encrypted(ENCRYPTION)

    def reopen(self, store: Any) -> Any:
        return super().reopen(store).encrypted(ENCRYPTION)


class TestEncryptedPostgresEvents(_EncryptedPostgres, EventsStoreConformance):
    encrypts = True


class TestEncryptedPostgresSnapshots(_EncryptedPostgres, SnapshotStoreConformance):
    pass


class TestEncryptedPostgresStates(_EncryptedPostgres, StateStoreConformance):
    pass


class TestEncryptedPostgresStateChanges(_EncryptedPostgres, StateChangeLogConformance):
    pass


class _EncryptedMemory(_Memory):
    def make_store(self) -> Any:
        return super().make_store().encrypted(ego.Encryption(key_store=InMemoryKeyStore()))


class TestEncryptedMemoryEvents(_EncryptedMemory, EventsStoreConformance):
    encrypts = True


class TestEncryptedMemorySnapshots(_EncryptedMemory, SnapshotStoreConformance):
    pass


class TestEncryptedMemoryStates(_EncryptedMemory, StateStoreConformance):
    pass


class TestEncryptedMemoryStateChanges(_EncryptedMemory, StateChangeLogConformance):
    pass
