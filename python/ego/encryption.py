"""Encryption at rest and GDPR erasure (crypto-shredding).

With ``Engine(..., encryption=ego.Encryption(master_key=...))`` every event payload, snapshot
and durable state is encrypted with AES-256-GCM under a data key of its entity (one key per
entity id, created on its first write) before it reaches the store, and decrypted when it is
read. ``engine.erase_entity(entity_id)`` destroys that key: the entity's records can never be
read again (backups included), its events read as tombstones, and its id takes no more
commands. docs/encryption.md has the threat model and the guarantees.

Two ways to keep the data keys:

- The built-in key store (``key_store=None``, or one of ego's stores): data keys are wrapped
  by the master key you give (32 bytes, or a callable returning them, read when the engine
  starts: a cloud KMS can supply it) and kept in the same RocksDB directory or PostgreSQL
  database as the data (``key_store=None``: the engine's events store).
- A key store written in Python (:class:`KeyStoreProtocol`, sync or ``async def``), for a KMS
  or Vault that keeps the keys itself.

Example::

    encryption = ego.Encryption(master_key=os.urandom(32), master_key_id="2026-11")
    with ego.Engine("bank", store=store, encryption=encryption) as engine:
        ...
        engine.erase_entity("account-1")
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar, Union, runtime_checkable

from ego import _ego
from ego.errors import ConfigurationError

__all__ = ["Encryption", "KeyStoreProtocol", "MasterKey"]

#: A master key: 32 bytes, or a callable returning them (called when the engine starts).
MasterKey = Union[bytes, Callable[[], bytes]]  # noqa: UP007 - a runtime alias

T = TypeVar("T")
_Maybe = Union[T, Awaitable[T]]  # noqa: UP007 - a generic alias must stay subscriptable


@runtime_checkable
class KeyStoreProtocol(Protocol):
    """A key store written in Python (a KMS, Vault, ...): one data key per entity.

    - ``get_or_create_key(persistence_id)`` returns ``(key_id, key)``, the entity's key (32
      bytes) and a name for it, creating it on first use. It raises
      :class:`~ego.errors.EntityErasedError` for an erased entity: a destroyed key is never
      created again.
    - ``get_key(persistence_id, key_id)`` returns the key's 32 bytes, ``None`` when there is no
      such key (ego then fails closed with :class:`~ego.errors.KeyNotFoundError`), or raises
      :class:`~ego.errors.EntityErasedError` when the entity was erased.
    - ``erase_key(persistence_id)`` destroys the key and records the erasure, durably, before
      it returns; it is idempotent.

    Methods may be ``async def``; they run one at a time on a thread of the key store's own.
    Keys are cached in memory by the engine (see :attr:`Encryption.key_cache_size`).
    """

    def get_or_create_key(self, persistence_id: str) -> _Maybe[tuple[str, bytes]]: ...
    def get_key(self, persistence_id: str, key_id: str) -> _Maybe[bytes | None]: ...
    def erase_key(self, persistence_id: str) -> _Maybe[None]: ...


class Encryption:
    """Encryption settings of an engine.

    :param master_key: the master key of the built-in key store: 32 bytes, or a callable
        returning them. Not needed with a key store written in Python.
    :param master_key_id: its name, recorded with every data key it wraps.
    :param previous_master_keys: ``{id: key}`` of master keys being retired: they still unwrap
        the data keys they wrapped until ``engine.rewrap_data_keys()`` re-wrapped those under
        ``master_key``; then they can be dropped.
    :param key_store: where the data keys are kept: ``None`` (the engine's events store), one of
        ego's stores, or a key store written in Python (:class:`KeyStoreProtocol`).
    :param key_cache_size: how many entities' keys are kept in memory (unwrapped).
    :raises ConfigurationError: for settings that cannot work.
    """

    __slots__ = ("key_cache_size", "key_store", "master_key", "master_key_id", "previous_master_keys")

    def __init__(
        self,
        master_key: MasterKey | None = None,
        *,
        master_key_id: str = "master-1",
        previous_master_keys: Mapping[str, MasterKey] | None = None,
        key_store: object = None,
        key_cache_size: int = 100_000,
    ) -> None:
        self.master_key = master_key
        self.master_key_id = master_key_id
        self.previous_master_keys = dict(previous_master_keys or {})
        self.key_store = key_store
        self.key_cache_size = key_cache_size
        python_key_store = key_store is not None and not isinstance(key_store, _ego.NativeStore)
        if python_key_store:
            missing = [m for m in ("get_or_create_key", "get_key", "erase_key") if not callable(getattr(key_store, m, None))]
            if missing:
                raise ConfigurationError(f"{key_store!r} is not a key store: it lacks {', '.join(missing)}")
        elif master_key is None:
            raise ConfigurationError("the built-in key store needs a master_key (32 bytes, or a callable returning them)")
        for name, key in [("master_key", master_key), *self.previous_master_keys.items()]:
            if isinstance(key, (bytes, bytearray)) and len(key) != 32:
                raise ConfigurationError(f"{name} must be 32 bytes (AES-256), got {len(key)}")
            if key is not None and not isinstance(key, (bytes, bytearray)) and not callable(key):
                raise ConfigurationError(f"{name} must be bytes or a callable returning bytes, got {type(key).__name__}")
        if not isinstance(master_key_id, str) or not master_key_id:
            raise ConfigurationError(f"master_key_id must be a non-empty str, got {master_key_id!r}")
        if master_key_id in self.previous_master_keys:
            raise ConfigurationError(f"master key id {master_key_id!r} is both current and previous")
        if not isinstance(key_cache_size, int) or isinstance(key_cache_size, bool) or key_cache_size < 1:
            raise ConfigurationError(f"key_cache_size must be a positive int, got {key_cache_size!r}")

    def __repr__(self) -> str:
        store = "built-in" if self.key_store is None else type(self.key_store).__name__
        return (
            f"Encryption(master_key_id={self.master_key_id!r}, key_store={store}, previous={sorted(self.previous_master_keys)})"
        )
