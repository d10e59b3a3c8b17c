"""A small Ray cluster on this machine for the cluster tests (ray.cluster_utils.Cluster: a head
node and worker nodes, each its own raylet), with failure detection tuned to be quick."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import ego

try:
    import ray
    from ray.cluster_utils import Cluster as RayCluster
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs the ray extra (scripts/bootstrap.sh): these tests must run there
    pytest.skip("the cluster tests need Ray: pip install 'ego-cqrs[ray]'", allow_module_level=True)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

#: Health checks every 500 ms, a node dead after 3 missed: a lost node is noticed in ~2 s.
SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}
#: Worker nodes offer this resource; shard actors ask for one unit of it, so they run on
#: worker nodes only (the head, where the test process is the driver, is never killed).
SHARD_RESOURCE = "ego_shard"
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20, "resources": {SHARD_RESOURCE: 100}}


@contextmanager
def ray_cluster(worker_nodes: int = 2) -> Iterator[RayCluster]:
    """A head node and ``worker_nodes`` worker nodes, and this process connected as driver.
    Ray's workers import the tests' modules (the bank domain, the test behaviours) from the
    paths put on PYTHONPATH here."""
    paths = [str(TESTS), str(ROOT / "examples" / "bank"), str(ROOT / "examples" / "transfers")]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    cluster = RayCluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "object_store_memory": 80 * 2**20,
            "include_dashboard": False,
            "_system_config": SYSTEM_CONFIG,
        },
    )
    try:
        for _ in range(worker_nodes):
            cluster.add_node(**NODE)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@contextmanager
def journal(pg_url: str) -> Iterator[dict[str, Any]]:
    """Store options for a fresh set of tables, dropped afterwards."""
    prefix = f"cl{uuid.uuid4().hex[:8]}_"
    try:
        yield {"table_prefix": prefix}
    finally:
        store = ego.PostgresStore(pg_url, table_prefix=prefix)
        store.drop_tables()
        store.close()


def cluster_name() -> str:
    """A cluster name no other test uses (actor names are per cluster)."""
    return f"t{uuid.uuid4().hex[:8]}"


def node_of(cluster: RayCluster, node_id: str) -> Any:
    """The worker node (of ``cluster.worker_nodes``) with this Ray node id."""
    for node in cluster.worker_nodes:
        if node.node_id == node_id:
            return node
    raise AssertionError(f"no worker node {node_id}")
