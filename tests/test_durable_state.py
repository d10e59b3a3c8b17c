"""Durable-state entities: versions, no-op commands, expected-version writes."""

from __future__ import annotations

import pytest

import ego

from egotest.messages_pb2 import Counter, Increment, Other


class CounterBehavior(ego.DurableStateBehavior):
    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Counter:
        return Counter()

    def handle_command(self, command: Increment, state: Counter) -> Counter | None:
        if command.by < 0:
            raise ValueError("negative increment")
        if command.by == 0:
            return None
        if command.by == 13:
            return Other(x="unlucky")  # type: ignore[return-value]
        return Counter(value=state.value + command.by)


def test_versions_increment_by_one_per_change(engine: ego.Engine) -> None:
    state, version = engine.entity(CounterBehavior("c"))
    assert (state.value, version) == (0, 0)
    assert engine.send_command("c", Increment(by=2)) == (Counter(value=2), 1)
    assert engine.send_command("c", Increment(by=3)) == (Counter(value=5), 2)


def test_none_is_a_no_op(engine: ego.Engine) -> None:
    engine.entity(CounterBehavior("c"))
    engine.send_command("c", Increment(by=2))
    assert engine.send_command("c", Increment(by=0)) == (Counter(value=2), 1)
    (store,) = engine.stores
    assert store.read_state("c").version_number == 1


def test_rejection_and_wrong_type_leave_state_and_version(engine: ego.Engine) -> None:
    engine.entity(CounterBehavior("c"))
    engine.send_command("c", Increment(by=2))
    with pytest.raises(ValueError, match="negative"):
        engine.send_command("c", Increment(by=-1))
    with pytest.raises(ego.errors.HandlerContractError, match="Counter"):
        engine.send_command("c", Increment(by=13))
    assert engine.get_state("c") == (Counter(value=2), 1)


def test_state_survives_a_restart(tmp_path) -> None:
    with ego.RocksDBStore(tmp_path / "db") as store, ego.Engine(store=store) as engine:
        engine.entity(CounterBehavior("c"))
        for _ in range(4):
            engine.send_command("c", Increment(by=1))
    with ego.RocksDBStore(tmp_path / "db") as store, ego.Engine(store=store) as engine:
        assert engine.entity(CounterBehavior("c")) == (Counter(value=4), 4)


def test_a_stale_expected_version_is_refused_and_the_entity_reloads(engine: ego.Engine) -> None:
    engine.entity(CounterBehavior("c"))
    engine.send_command("c", Increment(by=1))
    (store,) = engine.stores
    # Another writer (another process, say) moves the stored state to version 2.
    other = ego.v1.DurableState(persistence_id="c", version_number=2)
    other.resulting_state.Pack(Counter(value=100))
    store.write_state(other, 1)
    with pytest.raises(ego.errors.ConcurrencyError) as info:
        engine.send_command("c", Increment(by=1))
    assert (info.value.expected, info.value.actual) == (1, 2)
    # Memory was not left ahead of the store: the entity reloaded the stored state.
    assert engine.send_command("c", Increment(by=1)) == (Counter(value=101), 3)


def test_a_stored_state_of_an_unknown_type_names_the_entity_and_version(engine: ego.Engine) -> None:
    (store,) = engine.stores
    stored = ego.v1.DurableState(persistence_id="c", version_number=3)
    stored.resulting_state.type_url = "type.googleapis.com/gone.v1.Counter"
    stored.resulting_state.value = b"\x08\x01"
    store.write_state(stored, 0)
    with pytest.raises(ego.errors.UnknownEventTypeError) as info:
        engine.entity(CounterBehavior("c"))
    err = info.value
    assert (err.persistence_id, err.sequence_number, err.type_url) == ("c", 3, "type.googleapis.com/gone.v1.Counter")
    # The engine still serves other entities.
    assert engine.entity(CounterBehavior("d")) == (Counter(value=0), 0)
