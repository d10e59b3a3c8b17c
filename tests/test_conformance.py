"""The store conformance suite (ego.testkit.conformance) on the stores ego ships."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

import ego
from ego.testkit.conformance import EventsStoreConformance, SnapshotStoreConformance, StateStoreConformance


class TestMemoryEvents(EventsStoreConformance):
    def make_store(self) -> ego.MemoryStore:
        return ego.MemoryStore()


class TestMemorySnapshots(SnapshotStoreConformance):
    def make_store(self) -> ego.MemoryStore:
        return ego.MemoryStore()


class TestMemoryStates(StateStoreConformance):
    def make_store(self) -> ego.MemoryStore:
        return ego.MemoryStore()


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
