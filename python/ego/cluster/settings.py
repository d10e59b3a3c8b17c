"""The settings of a cluster: what its shard actors host and how they open the journal."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ego.errors import ConfigurationError


@dataclass(frozen=True)
class EntityType:
    """An entity type every shard registers (``engine.register_entity_type``).

    - ``factory``: the behaviour class (or any callable taking the entity id), or its import
      path as ``"package.module:Name"``. A class or function is sent to the shards by
      reference (pickled by name): its module must be importable there.
    - ``prefix``: the ids it serves (``""``: every id).
    - ``options``: the keyword options of ``register_entity_type`` (``snapshot_interval``,
      ``passivate_after``, ``inline``, ...).

    Example::

        EntityType(AccountBehavior, prefix="account-", options={"snapshot_interval": 100})
    """

    factory: Callable[[str], Any] | str
    prefix: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self) -> Callable[[str], Any]:
        """The factory itself (an import path is imported here).

        :raises ConfigurationError: the path cannot be imported or names no callable.
        """
        return resolve(self.factory)


def resolve(target: Callable[..., Any] | str) -> Callable[..., Any]:
    """A callable, or the one an import path ``"package.module:Name"`` names."""
    if not isinstance(target, str):
        if not callable(target):
            raise ConfigurationError(f"expected a callable or an import path, got {target!r}")
        return target
    module, _, name = target.partition(":")
    if not module or not name:
        raise ConfigurationError(f'an import path is "package.module:Name", got {target!r}')
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigurationError(f"cannot import {target!r}: {e}") from e
    if not callable(obj):
        raise ConfigurationError(f"{target!r} is not callable")
    return obj  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ShardSettings:
    """What every shard incarnation is built from (sent to the actors when they are created)."""

    name: str
    postgres_url: str
    shards: int
    entity_types: tuple[EntityType, ...]
    store_options: Mapping[str, Any]
    engine_options: Mapping[str, Any]
    fence: bool
