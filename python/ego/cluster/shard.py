"""One shard incarnation: an ego engine on the shared PostgreSQL journal, serving the entities
whose ids hash to its shard. The Ray actor is this class made remote (see ``client``); it is
plain Python so that it can be read and tested without Ray."""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import Sequence
from typing import Any

from ego.cluster.settings import ShardSettings
from ego.cluster.wire import Outcome, outcome_of, unpack
from ego.engine import Engine
from ego.stores import PostgresStore

#: Kinds of item in a call.
COMMAND = 0
STATE = 1

#: An item of a call: (kind, entity id, type URL, bytes, idempotency key, metadata).
Item = tuple[int, str, str, bytes, "str | None", "dict[str, str] | None"]

#: Seconds between learning this incarnation is fenced and leaving (the reply goes first).
_EXIT_AFTER = 0.05


def supports_fence() -> bool:
    """Whether this ego's PostgresStore takes ``fence=`` (store-side fencing of incarnations)."""
    return "fence" in inspect.signature(PostgresStore.__new__).parameters


def fence_name(index: int) -> str:
    """The fence of shard ``index``: each incarnation takes a new epoch under it."""
    return f"shard-{index}"


class ShardHost:
    """Hosts shard ``index`` of a cluster: one engine whose store is fenced under
    ``shard-<index>``, so that once this incarnation opened it, no earlier incarnation of the
    shard can write. An incarnation that finds itself fenced (a later one opened the fence)
    answers what it has with ``FencedError`` and leaves its process; the client retries those
    commands on the live incarnation."""

    def __init__(self, settings: ShardSettings, index: int) -> None:
        self.settings = settings
        self.index = index
        self.incarnation = uuid.uuid4().hex
        self.pid = os.getpid()
        self.fenced = False
        store_options = dict(settings.store_options)
        if settings.fence and supports_fence():
            store_options["fence"] = fence_name(index)
        self.store = PostgresStore(settings.postgres_url, **store_options)
        engine = Engine(f"{settings.name}-shard-{index}", store=self.store, **dict(settings.engine_options))
        for entity_type in settings.entity_types:
            engine.register_entity_type(entity_type.resolve(), prefix=entity_type.prefix, **dict(entity_type.options))
        engine.start()
        self.engine = engine

    async def call(self, items: Sequence[Item]) -> list[Outcome]:
        """Runs a batch of commands and queries; slot ``i`` of the list is item ``i``'s
        outcome. Commands go through ``send_commands_async`` (with their idempotency keys),
        those with metadata one by one, all in flight together (their writes share group
        commits)."""
        loop = asyncio.get_running_loop()
        engine = self.engine
        outcomes: list[Any] = [None] * len(items)
        waits: list[tuple[int, Any]] = []
        bulks: list[tuple[list[int], Any]] = []
        run: list[int] = []
        pairs: list[tuple[str, Any, str | None]] = []

        def flush() -> None:
            # A run of commands (with their keys) goes in one bulk call, dispatched before
            # what follows it (so each entity gets its commands and queries in the batch's
            # order).
            if run:
                bulks.append((run.copy(), engine.send_commands_async(pairs.copy())))
                run.clear()
                pairs.clear()

        for i, (kind, entity_id, type_url, payload, key, metadata) in enumerate(items):
            try:
                if kind == STATE:
                    flush()
                    waits.append((i, engine.get_state_async(entity_id)))
                    continue
                command = unpack(type_url, payload)
                if metadata is None:
                    run.append(i)
                    pairs.append((entity_id, command, key))
                else:
                    flush()
                    waits.append((i, engine.send_command_async(entity_id, command, idempotency_key=key, metadata=metadata)))
            except Exception as e:
                outcomes[i] = e
        flush()
        for indices, future in bulks:
            try:
                results = await future
            except Exception as e:
                results = [e] * len(indices)
            for i, result in zip(indices, results, strict=True):
                outcomes[i] = result
        if waits:
            done = await asyncio.gather(*(w for _, w in waits), return_exceptions=True)
            for (i, _), result in zip(waits, done, strict=True):
                outcomes[i] = result
        wire = [outcome_of(o) for o in outcomes]
        if not self.fenced and any(isinstance(o, Exception) and type(o).__name__ == "FencedError" for o in outcomes):
            self.fenced = True
            loop.call_later(_EXIT_AFTER, _leave)
        return wire

    async def info(self) -> dict[str, Any]:
        """Where and what this incarnation is: index, pid, node id, incarnation id, fenced."""
        import ray

        return {
            "index": self.index,
            "pid": self.pid,
            "node_id": ray.get_runtime_context().get_node_id(),
            "incarnation": self.incarnation,
            "fenced": self.fenced,
            "live_entities": self.engine.live_count(),
        }

    async def stop(self, timeout: float = 10.0) -> None:
        """Stops the engine (queued commands finish first) and closes the store."""
        await asyncio.get_running_loop().run_in_executor(None, self.engine.stop, timeout)
        self.store.close()


def _leave() -> None:
    """Ends a fenced incarnation's process: its shard is served by a later one (or, if this
    was the live one and another process took its fence, Ray restarts it, which fences that
    process in turn)."""
    os._exit(70)
