"""The runner: one engine per cluster that runs its projections, publishers and sagas (readers
of the journal), apart from the shards. It serves no entity of the shards: a saga's steps go to
the shards through a cluster client of the runner's own, while the sagas' journals
(``ego.saga:<id>``) are the runner's entities. Ray restarts it wherever there is room when its
process or node dies; it opens its store with ``fence="runner"``, so once a new incarnation
opened it, an earlier one can no longer commit offsets (nor a transactional projection's
read-model writes, which share the offsets' transaction), nor write a saga's journal."""

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

    - ``setup``: called with the runner's (started) :class:`ego.Engine` to add projections,
      publishers and saga types (``engine.add_projection(...)``,
      ``engine.add_event_publisher(...)``, ``engine.register_saga_type(...)``); a function,
      or its import path ``"package.module:name"``. It runs again in each new incarnation
      (which resumes the sagas that are not over). The steps of the runner's sagas are sent
      to the shards.
    - ``store_options`` / ``engine_options``: as for the shards.
    """

    setup: Callable[[Engine], Any] | str
    store_options: Mapping[str, Any] = field(default_factory=dict)
    engine_options: Mapping[str, Any] = field(default_factory=dict)


class RunnerHost:
    """One runner incarnation (made a Ray actor by the client)."""

    def __init__(
        self,
        name: str,
        postgres_url: str,
        settings: RunnerSettings,
        fence: bool,
        client: Callable[[], Any] | None = None,
    ) -> None:
        self.incarnation = uuid.uuid4().hex
        self.pid = os.getpid()
        store_options = {"pool_size": 2, **dict(settings.store_options)}
        if fence and supports_fence():
            store_options["fence"] = RUNNER_FENCE
        self.store = PostgresStore(postgres_url, **store_options)
        self.engine = Engine(f"{name}-runner", store=self.store, **dict(settings.engine_options))
        self.engine.start()
        # ``client`` builds a cluster client of the shards (``Cluster(...)`` without a runner):
        # the sagas' steps go through it.
        self.client = client().start() if client is not None else None
        if self.client is not None:
            self.engine._route_saga_steps(self.client)
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

    async def saga(self, behavior: Any, timeout: float | None = None) -> Any:
        """``engine.saga_async(behavior, timeout=timeout)``: starts a saga here."""
        return await self.engine.saga_async(behavior, timeout=timeout)

    async def saga_status(self, saga_id: str) -> Any:
        """``engine.saga_status_async(saga_id)``."""
        return await self.engine.saga_status_async(saga_id)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stops the engine, the client of the shards and closes the store."""
        await asyncio.get_running_loop().run_in_executor(None, self.engine.stop, timeout)
        if self.client is not None:
            self.client.close()
        self.store.close()
