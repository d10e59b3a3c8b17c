"""Everything that names Ray: imported lazily, so ``ego.cluster`` loads without it."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ego.errors import ConfigurationError

_actor: Any = None
_runner: Any = None


def ray() -> ModuleType:
    """The ``ray`` module, or a ConfigurationError naming the extra to install."""
    try:
        import ray as module
    except ImportError as e:
        raise ConfigurationError("ego.cluster needs Ray: pip install 'ego-cqrs[ray]'") from e
    return module


def shard_actor_class() -> Any:
    """``ShardHost`` as a Ray actor class (made once)."""
    global _actor
    if _actor is None:
        from ego.cluster.shard import ShardHost

        _actor = ray().remote(ShardHost)
    return _actor


def runner_actor_class() -> Any:
    """``RunnerHost`` as a Ray actor class (made once)."""
    global _runner
    if _runner is None:
        from ego.cluster.runner import RunnerHost

        _runner = ray().remote(RunnerHost)
    return _runner


def is_lost(exc: BaseException) -> bool:
    """Whether a call failed because its shard incarnation was lost or is restarting (the
    outcome of its commands is unknown): they are sent again, with their keys."""
    from ray import exceptions

    return isinstance(exc, (exceptions.RayActorError, exceptions.ActorUnavailableError, exceptions.RaySystemError))
