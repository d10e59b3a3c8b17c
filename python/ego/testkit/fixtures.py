"""pytest fixtures for ego (a pytest plugin, loaded automatically once ego is installed):

- ``ego_engine``: a started engine on a fresh in-memory store;
- ``ego_rocksdb_engine``: a started engine on a RocksDB store in a temporary directory;
- ``ego_postgres_store`` / ``ego_postgres_engine``: a PostgreSQL store on tables of its own
  (dropped afterwards) and a started engine on it; the server is ``EGO_TEST_POSTGRES_URL``
  (skipped when it is not set or unreachable).

Register your behaviours on them in the test (``ego_engine.register_entity_type(...)``).
"""

from __future__ import annotations

import os
import uuid
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


@pytest.fixture
def ego_postgres_store() -> Iterator[ego.PostgresStore]:
    """A PostgreSQL store on tables of its own (a fresh table prefix), dropped afterwards.

    The server is ``EGO_TEST_POSTGRES_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``);
    the test is skipped when it is not set or the server cannot be reached.
    """
    url = os.environ.get("EGO_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set EGO_TEST_POSTGRES_URL to run tests on PostgreSQL")
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    try:
        store = ego.PostgresStore(url, table_prefix=prefix, retry_for=5.0)
    except ego.errors.StoreError as e:
        pytest.skip(f"PostgreSQL unreachable at {url}: {e}")
    try:
        yield store
    finally:
        store.drop_tables()
        store.close()


@pytest.fixture
def ego_postgres_engine(ego_postgres_store: ego.PostgresStore) -> Iterator[ego.Engine]:
    """A started engine on :func:`ego_postgres_store`."""
    with ego.Engine("test", store=ego_postgres_store) as engine:
        yield engine
