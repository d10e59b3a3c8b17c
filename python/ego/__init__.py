"""ego: event-sourced and durable-state entities for Python, with a Rust core.

Quick start::

    import ego

    with ego.Engine("bank", store=ego.RocksDBStore("data/bank")) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        state, revision = engine.send_command("account-1", OpenAccount(initial_balance=100))
"""

from ego import errors, publishers
from ego._ego import __version__
from ego.adapters import EventAdapter
from ego.behaviors import DurableStateBehavior, EventSourcedBehavior
from ego.encryption import Encryption, KeyStoreProtocol
from ego.engine import Engine, EntityOptions, ShardLag
from ego.entity_ref import EntityRef
from ego.errors import EgoError
from ego.logs import Logger, StdLogger
from ego.projections import (
    Delete,
    PersistedEvent,
    PersistedState,
    Put,
    Recovery,
    RecoveryPolicy,
    Sql,
    Subscription,
)
from ego.publishers import EventPublisher, StatePublisher
from ego.retention import RetentionPolicy
from ego.sagas import SagaAction, SagaBehavior, SagaCommand, SagaInfo, SagaStatus, SagaStepError
from ego.stores import MemoryStore, PostgresStore, RocksDBStore, SnapshotCriteria
from ego.telemetry import Telemetry

__all__ = [
    "Delete",
    "DurableStateBehavior",
    "EgoError",
    "Encryption",
    "Engine",
    "EntityOptions",
    "EntityRef",
    "EventAdapter",
    "EventPublisher",
    "EventSourcedBehavior",
    "KeyStoreProtocol",
    "Logger",
    "MemoryStore",
    "PersistedEvent",
    "PersistedState",
    "PostgresStore",
    "Put",
    "Recovery",
    "RecoveryPolicy",
    "RetentionPolicy",
    "RocksDBStore",
    "SagaAction",
    "SagaBehavior",
    "SagaCommand",
    "SagaInfo",
    "SagaStatus",
    "SagaStepError",
    "ShardLag",
    "SnapshotCriteria",
    "Sql",
    "StatePublisher",
    "StdLogger",
    "Subscription",
    "Telemetry",
    "__version__",
    "errors",
    "publishers",
]
