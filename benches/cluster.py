"""ego.cluster on a 2-node Ray cluster on this machine, against one engine, in the same run.

    python benches/cluster.py [--runs 3] [--accounts 1000] [--credits 20]

Cases (each run takes them in turn, the order rotating, so drift of a shared machine weighs on
all of them):

- ``engine``: workload B (``accounts`` accounts x ``credits`` rounds of one credit each,
  ``send_command_async`` futures gathered per round) on one ``ego.Engine`` on PostgreSQL.
- ``cluster``: the same through ``ego.cluster.Cluster`` (4 shards on 2 worker nodes, each an
  engine on the same PostgreSQL database; an automatic idempotency key per command).
- ``cluster, no keys``: the same with ``idempotency=False`` (a shard runs a call's commands
  through one ``send_commands``).
- ``cluster, one call per command``: the same commands, each in its own Ray call to its shard
  actor (all in flight together): the Ray hop without per-shard batching.

Also printed: ``sequential``: one command at a time (``send_command``, each awaited), engine
vs cluster: the latency one Ray round trip adds. PostgreSQL: EGO_BENCH_POSTGRES_URL (default
``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "examples" / "bank"))

import ray  # noqa: E402
from ray.cluster_utils import Cluster as RayCluster  # noqa: E402

import ego  # noqa: E402
from ego.cluster import Cluster, EntityType  # noqa: E402
from ego.cluster.shard import COMMAND  # noqa: E402
from ego.cluster.wire import pack, result_of  # noqa: E402

from bank_pb2 import Credit, OpenAccount  # noqa: E402
from domain import AccountBehavior  # noqa: E402

PG_URL = os.environ.get("EGO_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20, "resources": {"ego_shard": 100}}


def start_ray() -> RayCluster:
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "examples" / "bank"), os.environ.get("PYTHONPATH", "")])
    cluster = RayCluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20, "include_dashboard": False},
    )
    for _ in range(2):
        cluster.add_node(**NODE)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    return cluster


def fresh_cluster(idempotency: bool = True) -> tuple[Cluster, dict[str, Any]]:
    options = {"table_prefix": f"bc{uuid.uuid4().hex[:8]}_"}
    cluster = Cluster(
        f"bench{uuid.uuid4().hex[:6]}",
        PG_URL,
        [EntityType(AccountBehavior)],
        shards=4,
        store_options=options,
        actor_options={"resources": {"ego_shard": 1}},
        idempotency=idempotency,
    )
    return cluster.start(), options


def drop(options: dict[str, Any]) -> None:
    store = ego.PostgresStore(PG_URL, **options)
    store.drop_tables()
    store.close()


async def rounds(send: Any, get: Any, accounts: int, credits: int) -> float:
    ids = [f"acc-{i}" for i in range(accounts)]
    await asyncio.gather(*(send(i, OpenAccount(initial_balance=0)) for i in ids))
    credit = Credit(amount=1)
    started = time.perf_counter()
    for _ in range(credits):
        await asyncio.gather(*[send(i, credit) for i in ids])
    elapsed = time.perf_counter() - started
    state, revision = await get(ids[-1])
    assert (state.balance, revision) == (credits, credits + 1), (state, revision)
    return accounts * credits / elapsed


def engine_b(accounts: int, credits: int) -> float:
    store = ego.PostgresStore(PG_URL, table_prefix=f"be{uuid.uuid4().hex[:8]}_")
    try:
        with ego.Engine("bench", store=store) as engine:
            engine.register_entity_type(AccountBehavior)
            return asyncio.run(rounds(engine.send_command_async, engine.get_state_async, accounts, credits))
    finally:
        store.drop_tables()
        store.close()


def cluster_b(accounts: int, credits: int, idempotency: bool = True) -> tuple[float, float]:
    """cmds/s and commands per Ray call."""
    cluster, options = fresh_cluster(idempotency)
    try:
        rate = asyncio.run(rounds(cluster.send_command_async, cluster.get_state_async, accounts, credits))
        calls = cluster.stats()["calls"]
        return rate, (accounts * (credits + 1) + 1) / calls
    finally:
        cluster.shutdown()
        drop(options)


def cluster_unbatched(accounts: int, credits: int) -> float:
    """Every command its own Ray call to its shard (the client's batching bypassed)."""
    cluster, options = fresh_cluster()
    try:
        handles = cluster._handles

        async def send(entity_id: str, command: Any) -> Any:
            type_url, payload = pack(command)
            item = (COMMAND, entity_id, type_url, payload, f"k-{uuid.uuid4().hex}", None)
            (outcome,) = await handles[cluster.shard_of(entity_id)].call.remote([item])
            return result_of(outcome)

        return asyncio.run(rounds(send, cluster.get_state_async, accounts, credits))
    finally:
        cluster.shutdown()
        drop(options)


def sequential(commands: int = 300) -> tuple[float, float]:
    """Microseconds per command, one at a time: (engine, cluster)."""
    store = ego.PostgresStore(PG_URL, table_prefix=f"bs{uuid.uuid4().hex[:8]}_")
    try:
        with ego.Engine("bench", store=store) as engine:
            engine.register_entity_type(AccountBehavior)
            engine.send_command("a", OpenAccount(initial_balance=0))
            t = time.perf_counter()
            for _ in range(commands):
                engine.send_command("a", Credit(amount=1))
            local = (time.perf_counter() - t) / commands
    finally:
        store.drop_tables()
        store.close()
    cluster, options = fresh_cluster()
    try:
        cluster.send_command("a", OpenAccount(initial_balance=0))
        t = time.perf_counter()
        for _ in range(commands):
            cluster.send_command("a", Credit(amount=1))
        remote = (time.perf_counter() - t) / commands
    finally:
        cluster.shutdown()
        drop(options)
    return local * 1e6, remote * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--credits", type=int, default=20)
    args = parser.parse_args()
    a, c = args.accounts, args.credits
    cases = {
        "engine": lambda: engine_b(a, c),
        "cluster": lambda: cluster_b(a, c),
        "cluster, no keys": lambda: cluster_b(a, c, idempotency=False),
        "cluster, one call per command": lambda: cluster_unbatched(a, c),
    }
    names = list(cases)
    results: dict[str, list[float]] = {n: [] for n in names}
    per_call: dict[str, list[float]] = {"cluster": [], "cluster, no keys": []}
    seq: list[tuple[float, float]] = []
    ray_nodes = start_ray()
    try:
        for run in range(args.runs):
            shift = run % len(names)
            for name in names[shift:] + names[:shift]:
                out = cases[name]()
                if isinstance(out, tuple):
                    results[name].append(out[0])
                    per_call[name].append(out[1])
                else:
                    results[name].append(out)
            seq.append(sequential())
            print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{n} {results[n][-1]:,.0f}" for n in names), flush=True)
    finally:
        ray.shutdown()
        ray_nodes.shutdown()
    med = {n: statistics.median(v) for n, v in results.items()}
    print(f"\nworkload B, {a} accounts x {c} credits; load average at the end: {os.getloadavg()[0]:.1f}")
    print(f"cmds/s, median (min-max) of {args.runs} runs")
    print("| case | cmds/s | vs one engine | commands per Ray call |")
    print("|---|---|---|---|")
    for n in names:
        pc = f"{statistics.median(per_call[n]):,.0f}" if per_call.get(n) else ("1" if "one call" in n else "-")
        print(f"| {n} | {med[n]:,.0f} ({min(results[n]):,.0f}-{max(results[n]):,.0f}) | {med[n] / med['engine']:.2f} | {pc} |")
    hop_batched = 1e6 / med["cluster"] - 1e6 / med["engine"]
    hop_single = 1e6 / med["cluster, one call per command"] - 1e6 / med["engine"]
    print(
        f"\nRay hop per command (cluster time per command minus the engine's): batched {hop_batched:,.1f} us, one call per command {hop_single:,.1f} us"
    )
    local = statistics.median(s[0] for s in seq)
    remote = statistics.median(s[1] for s in seq)
    print(
        f"sequential send_command: engine {local:,.0f} us, cluster {remote:,.0f} us per command ({remote - local:,.0f} us added)"
    )


if __name__ == "__main__":
    main()
