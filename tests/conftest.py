"""Shared fixtures. The bank domain lives in examples/bank; test-only messages in egotest/."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
for path in (
    ROOT / "examples" / "bank",
    ROOT / "examples" / "transfers",
    ROOT / "examples" / "sqlite_store",
    Path(__file__).resolve().parent,
):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import ego  # noqa: E402


@pytest.fixture
def engine() -> Iterator[ego.Engine]:
    """A started engine on a fresh in-memory store."""
    with ego.Engine("test") as e:
        yield e


@pytest.fixture(params=["memory", "rocksdb"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(store_kind: str, tmp_path: Path) -> Iterator[object]:
    """A factory of stores of the parametrized kind; RocksDB stores share one directory
    (close the previous one before making the next)."""
    made: list[ego.stores.NativeStore] = []

    def make() -> ego.stores.NativeStore:
        s: ego.stores.NativeStore = ego.MemoryStore() if store_kind == "memory" else ego.RocksDBStore(tmp_path / "db")
        made.append(s)
        return s

    shared_memory: list[ego.stores.NativeStore] = []

    def make_shared() -> ego.stores.NativeStore:
        # Memory stores must be the same object across "restarts" to keep their data.
        if store_kind == "memory":
            if not shared_memory:
                shared_memory.append(make())
            return shared_memory[0]
        return make()

    yield make_shared
    for s in made:
        s.close()


PG_URL = os.environ.get("EGO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# The testkit's PostgreSQL fixtures read the same variable: they run on this server too.
os.environ.setdefault("EGO_TEST_POSTGRES_URL", PG_URL)


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL server of the tests. Unreachable: skipped locally, a failure in CI."""
    try:
        ego.PostgresStore(PG_URL, table_prefix="probe_", retry_for=2.0).drop_tables()
    except ego.errors.StoreError as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and unreachable at {PG_URL}: {e}")
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {e}")
    return PG_URL


@pytest.fixture(params=["memory", "rocksdb", "postgres"])
def reopenable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """A factory that opens the same data again on each call, on each store kind (close the
    previous store first; an in-memory store is the same object each time). PostgreSQL tables
    get a fresh prefix and are dropped afterwards."""
    if request.param == "memory":
        shared = ego.MemoryStore()
        yield lambda: shared
        return
    if request.param == "rocksdb":
        yield lambda: ego.RocksDBStore(tmp_path / "db")
        return
    url = request.getfixturevalue("pg_url")
    prefix = f"r{uuid.uuid4().hex[:8]}_"
    yield lambda: ego.PostgresStore(url, table_prefix=prefix)
    cleanup = ego.PostgresStore(url, table_prefix=prefix)
    cleanup.drop_tables()
    cleanup.close()
