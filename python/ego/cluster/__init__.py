"""Scale-out: entities sharded over Ray actors, PostgreSQL as the shared journal.

Install with ``pip install 'ego-cqrs[ray]'``; see docs/cluster.md. ``import ego`` does not
import this package, and this package imports Ray only when a cluster starts.

Example::

    import ray
    from ego.cluster import Cluster, EntityType

    ray.init(address="auto")
    with Cluster("bank", "postgresql://db/bank", [EntityType(AccountBehavior)], shards=8) as bank:
        bank.send_command("account-1", OpenAccount(initial_balance=100))
"""

from ego.cluster.client import AUTO_KEY_PREFIX, Cluster, ShardInfo
from ego.cluster.hashing import shard_for
from ego.cluster.runner import RunnerSettings
from ego.cluster.settings import EntityType

__all__ = ["AUTO_KEY_PREFIX", "Cluster", "EntityType", "RunnerSettings", "ShardInfo", "shard_for"]
