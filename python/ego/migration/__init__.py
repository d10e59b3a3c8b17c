"""Moving data between stores, and from the Go library (Tochemey/ego).

- :func:`migrate`: copies everything one store holds into another (any two stores, stores
  written in Python included), resumable and idempotent, with a verification.
- :func:`verify`: compares two stores stream by stream (counts and a hash per stream).
- :func:`import_go`: reads a PostgreSQL database laid out by the Go library into any store
  (needs ``psycopg``: ``pip install ego-cqrs[cli]``).

Example::

    from ego import PostgresStore, RocksDBStore
    from ego.migration import migrate

    report = migrate(RocksDBStore("data/bank"), PostgresStore("postgresql://localhost/bank"))
    assert report.verification is not None and report.verification.ok

The guide is docs/migration.md.
"""

from __future__ import annotations

from typing import Any

from ego.migration.access import StoreAccess
from ego.migration.compare import VerifyReport
from ego.migration.compare import verify as _verify
from ego.migration.copy import MigrationReport, migrate
from ego.migration.go_import import GoImportReport, import_go

__all__ = ["GoImportReport", "MigrationReport", "VerifyReport", "import_go", "migrate", "verify"]


def verify(source: Any, target: Any, *, max_differences: int = 1000) -> VerifyReport:
    """Compares every event stream (count and SHA-256 of the envelopes without their
    positions), latest snapshot, durable state, wrapped key and erasure record of two stores.
    Returns a :class:`VerifyReport`; ``report.ok`` is ``False`` and ``report.differences``
    says what differs (at most ``max_differences`` lines) when they do not agree.

        assert verify(RocksDBStore("a"), PostgresStore(url)).ok
    """
    src, dst = StoreAccess(source), StoreAccess(target)
    try:
        return _verify(src, dst, max_differences=max_differences)
    finally:
        src.close()
        dst.close()
