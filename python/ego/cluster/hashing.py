"""Which shard serves an entity: a stable hash of its id, the same one the stores use."""

from __future__ import annotations

from ego import _ego
from ego.errors import ConfigurationError, InvalidEntityIdError


def shard_for(entity_id: str, shards: int) -> int:
    """The shard (``0 <= shard < shards``) that serves ``entity_id``: the xxh3-64 hash of its
    UTF-8 bytes modulo ``shards``, as ``ego.shard_of`` (never Python's ``hash()``, which
    differs between processes). The same id always lands on the same shard for one shard count.

    :raises InvalidEntityIdError: ``entity_id`` is not a ``str``.
    :raises ConfigurationError: ``shards`` is not a positive int.

    Example::

        shard_for("account-1", 4)   # always the same shard of 4
    """
    if not isinstance(entity_id, str):
        raise InvalidEntityIdError(f"an entity id must be a str, got {type(entity_id).__name__}")
    if not isinstance(shards, int) or shards < 1:
        raise ConfigurationError(f"shards must be a positive int, got {shards!r}")
    return int(_ego.shard_of(entity_id, shards))
