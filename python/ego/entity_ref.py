"""A typed handle on one entity: ``engine.entity_ref(AccountBehavior, "account-1")``.

The engine's ``send_command`` takes any protobuf message and returns ``(Any, int)``, since an
id alone does not say which behaviour serves it. A handle names the behaviour class, so a type
checker knows which commands the entity takes and which state comes back::

    account = engine.entity_ref(AccountBehavior, "account-1")
    state, revision = account.send(Credit(amount=5))   # state: Account (mypy knows)
    account.send({"amount": 5})                          # mypy: incompatible type "dict[...]"

A handle costs one Python call per command over ``send_command``.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar, cast

from google.protobuf.message import Message

from ego._ego import EngineCore

__all__ = ["EntityRef"]

C = TypeVar("C", bound=Message)
S = TypeVar("S", bound=Message)


class EntityRef(Generic[C, S]):
    """One entity, typed by its behaviour: commands of type ``C``, state of type ``S``. Made by
    :meth:`ego.Engine.entity_ref`; the entity itself activates on its first command as usual
    (through a registered entity type, or an ``entity()`` spawned before)."""

    __slots__ = ("_engine", "entity_id")

    def __init__(self, engine: EngineCore, entity_id: str) -> None:
        self._engine = engine
        self.entity_id = entity_id

    def send(
        self,
        command: C,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> tuple[S, int]:
        """:meth:`ego.Engine.send_command` for this entity: ``(state, revision)``."""
        outcome = self._engine.send_command(self.entity_id, command, timeout, None, idempotency_key, metadata)
        return cast("tuple[S, int]", outcome)

    async def send_async(
        self,
        command: C,
        *,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> tuple[S, int]:
        """``send_command_async`` for this entity, awaited: ``(state, revision)``."""
        future = self._engine.send_command_async(self.entity_id, command, None, idempotency_key, timeout, metadata)
        return cast("tuple[S, int]", await future)

    def get_state(self, *, timeout: float | None = None) -> tuple[S, int]:
        """The confirmed ``(state, revision)``, after the commands sent before."""
        return cast("tuple[S, int]", self._engine.get_state(self.entity_id, timeout))

    async def get_state_async(self) -> tuple[S, int]:
        """:meth:`get_state` for asyncio callers."""
        return cast("tuple[S, int]", await asyncio.ensure_future(self._engine.get_state_async(self.entity_id)))

    def __repr__(self) -> str:
        return f"EntityRef({self.entity_id!r})"
