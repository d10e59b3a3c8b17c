"""ego.cluster when processes and nodes fail: a worker node killed under load (every
acknowledged command present, none applied twice, serving again within 10 s), and a shard
process frozen (SIGSTOP), replaced, then resumed (none of its writes lands)."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_domain import HeldNotes
from cluster_support import NODE, SHARD_RESOURCE, cluster_name, journal, node_of, ray_cluster
from waiting import wait_until

from ego.cluster import Cluster, EntityType
from ego.cluster.shard import COMMAND, supports_fence
from ego.cluster.wire import pack

from bank_pb2 import Credit, OpenAccount
from domain import AccountBehavior
from egotest.messages_pb2 import Note

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[Any]:
    with ray_cluster(worker_nodes=2) as nodes:
        yield nodes


def test_a_node_killed_under_load_loses_no_acknowledged_command_and_applies_none_twice(ray_nodes: Any, pg_url: str) -> None:
    with journal(pg_url) as store_options:
        cluster = Cluster(
            cluster_name(),
            pg_url,
            [EntityType(AccountBehavior, prefix="acc-")],
            shards=4,
            store_options=store_options,
            actor_options={"resources": {SHARD_RESOURCE: 1}},
        )
        with cluster:
            ids = [f"acc-{i}" for i in range(32)]
            cluster.send_commands([(i, OpenAccount(initial_balance=0)) for i in ids], return_exceptions=False)
            before = {i.index: i for i in cluster.shard_info()}
            victim = before[0].node_id
            moved = {i for i, info in before.items() if info.node_id == victim}
            acked: collections.Counter[str] = collections.Counter()
            failures: list[BaseException] = []
            slowest: dict[int, float] = collections.defaultdict(float)
            stop = threading.Event()

            async def one(entity_id: str) -> None:
                shard = cluster.shard_of(entity_id)
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        await cluster.send_command_async(entity_id, Credit(amount=1))
                    except Exception as e:
                        failures.append(e)
                        return
                    acked[entity_id] += 1
                    slowest[shard] = max(slowest[shard], time.monotonic() - started)

            load = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(_gather(one, ids), 300)))
            load.start()
            try:
                wait_until(lambda: sum(acked.values()) >= 300, timeout=120, what="load before the kill")
                ray_nodes.remove_node(node_of(ray_nodes, victim), allow_graceful=False)
                # Served by new incarnations on the surviving node.
                wait_until(lambda: all(i.node_id != victim for i in cluster.shard_info()), timeout=60, what="the shards to move")
                settled = sum(acked.values())
                wait_until(lambda: sum(acked.values()) >= settled + 300, timeout=120, what="load after the failover")
            finally:
                stop.set()
                load.join(timeout=120)
            assert not failures, failures[:3]
            # Each command is sent again until a live incarnation answers: the longest wait
            # of any command is how long its shard was not serving.
            assert max(slowest[s] for s in moved) < 10.0, dict(slowest)

            after = {i.index: i for i in cluster.shard_info()}
            assert all(after[s].node_id != victim for s in after)
            assert all(after[s].incarnation != before[s].incarnation for s in moved)
            assert cluster.stats()["retries"] > 0, "commands in flight on the lost node were sent again"
            # Every acknowledged credit is in the journal, and none twice (a credit applied
            # twice would make the balance larger than the count of acknowledgements).
            states = cluster.send_commands([(i, Credit(amount=0)) for i in ids], return_exceptions=False)
            balances = {i: s[0].balance for i, s in zip(ids, states, strict=True)}  # type: ignore[index]
            assert balances == {i: acked[i] for i in ids}
        cluster.shutdown()
    ray_nodes.add_node(**NODE)
    ray_nodes.wait_for_nodes()


async def _gather(one: Any, ids: list[str]) -> None:
    await asyncio.gather(*(one(i) for i in ids))


@pytest.mark.skipif(not supports_fence(), reason="PostgresStore(fence=...) is not in this build yet")
def test_a_frozen_shard_process_replaced_then_resumed_writes_nothing(ray_nodes: Any, pg_url: str, tmp_path: Path) -> None:
    with journal(pg_url) as store_options:
        cluster = Cluster(
            cluster_name(),
            pg_url,
            [EntityType(HeldNotes, prefix="note-", options={"inline": False})],
            shards=2,
            store_options=store_options,
            actor_options={"resources": {SHARD_RESOURCE: 1}},
        )
        with cluster:
            entity = "note-x"
            shard = cluster.shard_of(entity)
            state, revision = cluster.send_command(entity, Note(text="first"))
            assert revision == 1
            old = cluster.shard_info()[shard]
            raylet = _raylet_pid(node_of(ray_nodes, old.node_id))

            # Sent straight to the actor (not retried by the client): the old incarnation
            # takes it, and its handler holds until released.
            type_url, payload = pack(Note(text=f"hold:{tmp_path}"))
            ref = cluster._handles[shard].call.remote([(COMMAND, entity, type_url, payload, "held-1", None)])
            wait_until(lambda: (tmp_path / "held").exists(), what="the handler to hold")
            os.kill(old.pid, signal.SIGSTOP)
            os.kill(raylet, signal.SIGSTOP)
            try:
                # The node stops answering its health checks: Ray declares it dead and starts
                # the shard on the other node; that incarnation opens the shard's fence.
                wait_until(
                    lambda: cluster.shard_info(timeout=60)[shard].incarnation != old.incarnation,
                    timeout=60,
                    what="a new incarnation of the shard",
                )
                assert cluster.get_state(entity)[1] == 1
                (tmp_path / "release").write_text("go")
                os.kill(old.pid, signal.SIGCONT)
                # The old incarnation finishes its handler and tries to write: refused.
                wait_until(lambda: (tmp_path / "done").exists(), what="the old handler to finish")
                wait_until(lambda: not _alive(old.pid), timeout=60, what="the fenced process to leave")
            finally:
                for pid in (old.pid, raylet):
                    if _alive(pid):
                        os.kill(pid, signal.SIGCONT)
            with pytest.raises(Exception):  # noqa: B017 - whatever Ray says about the lost call
                ray_get(ref)
            state, revision = cluster.get_state(entity)
            assert (revision, state.text) == (1, f"pid {old.pid}"), "the frozen incarnation's write did not land"
            state, revision = cluster.send_command(entity, Note(text="after"))
            assert revision == 2 and state.text != f"pid {old.pid}"
        cluster.shutdown()


def ray_get(ref: Any) -> Any:
    import ray

    return ray.get(ref, timeout=60)


def _raylet_pid(node: Any) -> int:
    return int(node.all_processes["raylet"][0].process.pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
