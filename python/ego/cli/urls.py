"""Stores named by URL on the command line.

- ``rocksdb:///absolute/path`` or ``rocksdb://relative/path``: a RocksDB directory. It must
  exist unless the command creates a store (the target of ``migrate`` or ``import-go``).
- ``postgresql://user:password@host:5432/db?schema=public&table_prefix=ego_`` (or
  ``postgres://``): a PostgreSQL database; ``schema`` and ``table_prefix`` are ego's, every
  other parameter goes to libpq. Opening it creates ego's (empty) tables if they are missing.
- ``memory:`` is refused: nothing in it would outlive the command.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ego.errors import ConfigurationError
from ego.stores import NativeStore, PostgresStore, RocksDBStore


def rocksdb_path(url: str) -> str:
    """The directory of a ``rocksdb://`` URL."""
    path = url[len("rocksdb://") :]
    if not path:
        raise ConfigurationError(f"{url!r} names no directory: use rocksdb:///absolute/path or rocksdb://relative/path")
    return path


def postgres_settings(url: str) -> tuple[str, str, str]:
    """``(libpq url, schema, table prefix)`` of a ``postgresql://`` URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    settings = {"schema": "public", "table_prefix": "ego_"}
    rest = []
    for key, value in query:
        if key in settings:
            settings[key] = value
        else:
            rest.append((key, value))
    clean = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
    return clean, settings["schema"], settings["table_prefix"]


def open_store(url: str, *, create: bool = False) -> NativeStore:
    """Opens the store at ``url``. Raises :class:`~ego.errors.ConfigurationError` for a URL
    that names no store (or a RocksDB directory that does not exist, unless ``create``), and
    the store's own errors (a server that cannot be reached, a directory in use)."""
    if url.startswith("rocksdb://"):
        path = rocksdb_path(url)
        if not create and not os.path.isfile(os.path.join(path, "CURRENT")):
            what = "is not a RocksDB store" if os.path.exists(path) else "does not exist"
            raise ConfigurationError(f"{path} {what}")
        return RocksDBStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        clean, schema, prefix = postgres_settings(url)
        return PostgresStore(clean, schema=schema, table_prefix=prefix, retry_for=0.0)
    if url.startswith("memory:"):
        raise ConfigurationError("a memory: store lives in one process; give a rocksdb:// or postgresql:// URL")
    raise ConfigurationError(f"not a store URL: {url!r} (expected rocksdb:///path or postgresql://host/db)")
