"""Testing helpers for ego users.

- :mod:`ego.testkit.scenario`: Given/When/Then scenarios for behaviours
  (:class:`EventSourcedScenario`, :class:`DurableStateScenario`) and
  :func:`assert_deterministic`.
- :mod:`ego.testkit.sagas`: :class:`SagaScenario`, Given/When/Then for sagas.
- :mod:`ego.testkit.properties`: :func:`check_invariant`, property-based command sequences
  (needs ``hypothesis``).
- :mod:`ego.testkit.fixtures`: pytest fixtures ``ego_engine`` and ``ego_rocksdb_engine``
  (loaded automatically by pytest).
- :mod:`ego.testkit.conformance`: the store conformance suite.
- :mod:`ego.testkit.keys`: :class:`InMemoryKeyStore`, a key store for encryption in tests.
"""

from ego.testkit.keys import InMemoryKeyStore
from ego.testkit.properties import check_invariant
from ego.testkit.sagas import SagaScenario
from ego.testkit.scenario import DurableStateScenario, EventSourcedScenario, ScenarioError, assert_deterministic, describe_message

__all__ = [
    "DurableStateScenario",
    "EventSourcedScenario",
    "InMemoryKeyStore",
    "SagaScenario",
    "ScenarioError",
    "assert_deterministic",
    "check_invariant",
    "describe_message",
]
