"""The runner: one engine per cluster that runs its projections and publishers (readers of
the journal), apart from the shards. It serves no entity. Ray restarts it wherever there is
room when its process or node dies; it opens its store with ``fence="runner"``, so once a
new incarnation opened it, an earlier one can no longer commit offsets (nor a transactional
projection's read-model writes, which share the offsets' transaction)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ego.cluster.settings import resolve
from ego.cluster.shard import supports_fence
from ego.engine import Engine
from ego.stores import PostgresStore

#: The fence of the runner's store.
RUNNER_FENCE = "runner"


@dataclass(frozen=True)
class RunnerSettings:
    """What the runner is built from.

    - ``setup``: called with the runner's (started) :class:`ego.Engine` to add projections
      and publishers (``engine.add_projection(...)``, ``engine.add_event_publisher(...)``);
      a function, or its import path ``"package.module:name"``. It runs again in each new
      incarnation.
    - ``store_options`` / ``engine_options``: as for the shards.
    """

    setup: Callable[[Engine], Any] | str
    store_options: Mapping[str, Any] = field(default_factory=dict)
    engine_options: Mapping[str, Any] = field(default_factory=dict)


class RunnerHost:
    """One runner incarnation (made a Ray actor by the client)."""

    def __init__(self, name: str, postgres_url: str, settings: RunnerSettings, fence: bool) -> None:
        self.incarnation = uuid.uuid4().hex
        self.pid = os.getpid()
        store_options = {"pool_size": 2, **dict(settings.store_options)}
        if fence and supports_fence():
            store_options["fence"] = RUNNER_FENCE
        self.store = PostgresStore(postgres_url, **store_options)
        self.engine = Engine(f"{name}-runner", store=self.store, **dict(settings.engine_options))
        self.engine.start()
        resolve(settings.setup)(self.engine)

    async def info(self) -> dict[str, Any]:
        """pid, node id, incarnation id, the projections' and publishers' statuses."""
        import ray

        return {
            "pid": self.pid,
            "node_id": ray.get_runtime_context().get_node_id(),
            "incarnation": self.incarnation,
        }

    async def projection_status(self, name: str) -> tuple[str, str | None]:
        """``engine.projection_status(name)``."""
        return self.engine.projection_status(name)

    async def wait_for_projection(self, name: str, timeout: float | None = 30.0) -> None:
        """``engine.wait_for_projection_async(name, timeout)``."""
        await self.engine.wait_for_projection_async(name, timeout)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stops the engine and closes the store."""
        await asyncio.get_running_loop().run_in_executor(None, self.engine.stop, timeout)
        self.store.close()
