"""An in-memory key store written in Python, for tests (and as a model of a key store of your
own: see :class:`ego.KeyStoreProtocol`)."""

from __future__ import annotations

import os
import threading

from ego.errors import EntityErasedError

__all__ = ["InMemoryKeyStore"]


class InMemoryKeyStore:
    """Data keys in a dict: one random 32-byte key per entity, created on first use; erasure
    deletes it and remembers the id, so the key is never created again. Nothing survives the
    process. Thread-safe.

    Example::

        encryption = ego.Encryption(key_store=InMemoryKeyStore())
        engine = ego.Engine("test", encryption=encryption)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, bytes]] = {}
        self._erased: set[str] = set()
        #: How many keys were created and erased (tests read them).
        self.created = 0
        self.erasures = 0

    def get_or_create_key(self, persistence_id: str) -> tuple[str, bytes]:
        with self._lock:
            if persistence_id in self._erased:
                raise _erased(persistence_id)
            if persistence_id not in self._keys:
                self._keys[persistence_id] = (os.urandom(8).hex(), os.urandom(32))
                self.created += 1
            return self._keys[persistence_id]

    def get_key(self, persistence_id: str, key_id: str) -> bytes | None:
        with self._lock:
            if persistence_id in self._erased:
                raise _erased(persistence_id)
            found = self._keys.get(persistence_id)
            return found[1] if found is not None and found[0] == key_id else None

    def erase_key(self, persistence_id: str) -> None:
        with self._lock:
            self._keys.pop(persistence_id, None)
            if persistence_id not in self._erased:
                self._erased.add(persistence_id)
                self.erasures += 1

    def is_erased(self, persistence_id: str) -> bool:
        """Whether the entity was erased."""
        with self._lock:
            return persistence_id in self._erased


def _erased(persistence_id: str) -> EntityErasedError:
    error = EntityErasedError(f"entity {persistence_id!r} was erased")
    error.entity_id = persistence_id
    return error
