"""pytest fixtures for ego (a pytest plugin, loaded automatically once ego is installed):

- ``ego_engine``: a started engine on a fresh in-memory store;
- ``ego_rocksdb_engine``: a started engine on a RocksDB store in a temporary directory.

Register your behaviours on them in the test (``ego_engine.register_entity_type(...)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import ego


@pytest.fixture
def ego_engine() -> Iterator[ego.Engine]:
    """A started engine on a fresh in-memory store."""
    with ego.Engine("test") as engine:
        yield engine


@pytest.fixture
def ego_rocksdb_engine(tmp_path: Path) -> Iterator[ego.Engine]:
    """A started engine on a RocksDB store in a temporary directory."""
    with ego.RocksDBStore(tmp_path / "ego-rocksdb") as store, ego.Engine("test", store=store) as engine:
        yield engine
