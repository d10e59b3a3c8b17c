"""Every counter of ``engine.stats()`` and every metric instrument docs/observability.md lists
moves as documented: each step of a known workload is checked against the exact change of
every counter (the ones that must not move included)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from test_durable_state import CounterBehavior
from test_logging import FailingSnapshots
from test_python_store import Broken
from test_telemetry import Otel
from waiting import wait_until

import ego
from ego.errors import ConcurrencyError, StoreError
from ego.v1 import Event

from bank_pb2 import AccountCredited, Credit, Debit, OpenAccount
from domain import AccountBehavior, InsufficientFunds
from egotest.messages_pb2 import Increment

OBSERVABILITY = Path(__file__).resolve().parent.parent / "docs" / "observability.md"
STATS = {
    "commands",
    "rejected",
    "events",
    "writes",
    "write_failures",
    "snapshots",
    "recoveries",
    "passivations",
    "background_failures",
}


class Counters:
    """Reads the change of every counter since the last look."""

    def __init__(self, engine: ego.Engine) -> None:
        self.engine = engine
        self.last = engine.stats()

    def moved(self) -> dict[str, int]:
        now = self.engine.stats()
        changed = {k: now[k] - self.last[k] for k in now if now[k] != self.last[k]}
        self.last = now
        return changed


def competing_credit(store: Any, pid: str) -> None:
    """Another writer appends to `pid` behind the engine's back."""
    event = Event(persistence_id=pid, sequence_number=store.highest_sequence_number(pid) + 1, timestamp=time.time_ns())
    event.event.Pack(AccountCredited(amount=1))
    store.write_events([event])


def test_every_stats_counter_moves_as_documented() -> None:
    store = ego.MemoryStore()
    with ego.Engine("counted", store=store) as engine:
        assert set(engine.stats()) == STATS, "a counter without a case here"
        engine.register_entity_type(AccountBehavior, prefix="acc-", snapshot_interval=5)
        engine.register_entity_type(AccountBehavior, prefix="idle-", passivate_after=0.05)
        engine.register_entity_type(CounterBehavior, prefix="c-")
        c = Counters(engine)

        # A command to a new entity: activated (a recovery), handled, one event, one write.
        engine.send_command("acc-1", OpenAccount(initial_balance=0))
        assert c.moved() == {"commands": 1, "events": 1, "writes": 1, "recoveries": 1}

        # The case: a snapshot every 5 events, 30 commands in all -> 6 snapshots.
        for _ in range(29):
            engine.send_command("acc-1", Credit(amount=1))
        wait_until(lambda: engine.stats()["snapshots"] == 6, what="6 snapshots")
        assert c.moved() == {"commands": 29, "events": 29, "writes": 29, "snapshots": 6}
        snapshot = store.latest_snapshot("acc-1")
        assert snapshot is not None and snapshot.sequence_number == 30

        # A rejected command: handled, nothing written.
        with pytest.raises(InsufficientFunds):
            engine.send_command("acc-1", Debit(amount=10**6))
        assert c.moved() == {"commands": 1, "rejected": 1}

        # A command with no events: handled, nothing written, not rejected.
        engine.send_command("c-1", Increment(by=0))
        assert c.moved() == {"commands": 1, "recoveries": 1}

        # A durable state change counts as one event and one write.
        engine.send_command("c-1", Increment(by=2))
        assert c.moved() == {"commands": 1, "events": 1, "writes": 1}

        # A refused write (another writer got there first) is a write failure, and the entity
        # reloads at once (a recovery); its next command is written.
        competing_credit(store, "acc-1")
        with pytest.raises(ConcurrencyError):
            engine.send_command("acc-1", Credit(amount=1))
        assert c.moved() == {"commands": 1, "write_failures": 1, "recoveries": 1}
        assert engine.send_command("acc-1", Credit(amount=1))[1] == 32
        assert c.moved() == {"commands": 1, "events": 1, "writes": 1}

        # Stopping and reactivating: one more recovery.
        engine.stop_entity("acc-1")
        assert engine.get_state("acc-1")[1] == 32
        assert c.moved() == {"recoveries": 1}

        # Passivation after the idle time.
        engine.send_command("idle-1", OpenAccount(initial_balance=0))
        wait_until(lambda: not engine.is_live("idle-1"), what="passivation")
        assert c.moved() == {"commands": 1, "events": 1, "writes": 1, "recoveries": 1, "passivations": 1}

    # A snapshot that fails after its retries.
    with ego.Engine("counted", store=FailingSnapshots()) as engine:
        engine.register_entity_type(AccountBehavior, snapshot_interval=1)
        c = Counters(engine)
        engine.send_command("a", OpenAccount(initial_balance=0))
        wait_until(lambda: engine.stats()["background_failures"] == 1, what="the failed snapshot")  # retries: 0.7 s
        assert c.moved() == {"commands": 1, "events": 1, "writes": 1, "recoveries": 1, "background_failures": 1}

    # A store that fails writes: the activation and the reload after the failure.
    with ego.Engine("counted", store=Broken()) as engine:
        engine.register_entity_type(AccountBehavior)
        c = Counters(engine)
        with pytest.raises(StoreError):
            engine.send_command("a", OpenAccount(initial_balance=0))
        wait_until(lambda: engine.stats()["recoveries"] == 2, what="the reload")
        assert c.moved() == {"commands": 1, "write_failures": 1, "recoveries": 2}


def documented_instruments() -> set[str]:
    """The instrument names of the metrics table in docs/observability.md (`.sum` after
    `ego.command.duration.count` is `ego.command.duration.sum`)."""
    text = OBSERVABILITY.read_text()
    table = text[text.index("| instrument | kind |") : text.index("The latency histogram")]
    names: set[str] = set()
    for line in [line for line in table.splitlines() if line.startswith("|")][2:]:
        first_cell = line.split("|")[1]
        previous = ""
        for token in re.findall(r"`([^`]+)`", first_cell):
            name = previous.rsplit(".", 1)[0] + token if token.startswith(".") else token
            names.add(name)
            previous = name
    return names


def test_every_documented_metric_moves_as_documented() -> None:
    checked: set[str] = set()
    entities = Otel()
    store = FailingSnapshots()
    with ego.Engine("metered", store=store, telemetry=entities.telemetry(traces=False)) as engine:
        engine.register_entity_type(AccountBehavior, prefix="acc-")
        engine.register_entity_type(AccountBehavior, prefix="snap-", snapshot_interval=1)
        engine.register_entity_type(CounterBehavior, prefix="c-")
        engine.send_command("acc-1", OpenAccount(initial_balance=0))  # accepted
        engine.send_command("acc-1", Credit(amount=1))  # accepted
        with pytest.raises(InsufficientFunds):
            engine.send_command("acc-1", Debit(amount=100))  # rejected
        engine.send_command("c-1", Increment(by=0))  # no change
        competing_credit(store._store, "acc-1")
        with pytest.raises(ConcurrencyError):
            engine.send_command("acc-1", Credit(amount=1))  # failed: refused write
        engine.send_command("snap-1", OpenAccount(initial_balance=0))  # accepted; its snapshot fails
        wait_until(lambda: engine.stats()["background_failures"] == 1, what="the failed snapshot")
        m = entities.metrics()

        def commands(entity_type: str, outcome: str) -> Any:
            return m.get(("ego.commands", (("ego.entity_type", entity_type), ("ego.outcome", outcome))))

        assert (commands("AccountBehavior", "accepted"), commands("AccountBehavior", "rejected")) == (3, 1)
        assert (commands("AccountBehavior", "failed"), commands("CounterBehavior", "no_change")) == (1, 1)
        assert m[("ego.command.duration.count", ())] == 6
        assert m[("ego.command.duration.sum", ())] > 0
        buckets = [v for k, v in m.items() if k[0] == "ego.command.duration.bucket"]
        assert max(buckets) == 6 and m[("ego.command.duration.bucket", (("le", "inf"),))] == 6
        assert m[("ego.events.persisted", ())] == 3
        assert (m[("ego.writes", ())], m[("ego.write.failures", ())]) == (3, 1)
        assert m[("ego.background.failures", ())] == 1
        assert m[("ego.entities.active", ())] == 3
        engine.stop_entity("c-1")
        assert entities.metrics()[("ego.entities.active", ())] == 2
        checked |= {
            "ego.commands",
            "ego.command.duration.count",
            "ego.command.duration.sum",
            "ego.command.duration.bucket",
            "ego.events.persisted",
            "ego.writes",
            "ego.write.failures",
            "ego.background.failures",
            "ego.entities.active",
        }
    entities.meter_provider.shutdown()

    # Projections: events 1-3 of one entity in shard 0, 2.5 s apart; the handler fails on 3.
    projections = Otel()
    journal = ego.MemoryStore()
    base = 1_767_268_800_000_000_000
    for seq in (1, 2, 3):
        event = Event(persistence_id="p-1", sequence_number=seq, timestamp=base + (seq - 1) * 2_500_000_001, shard=0)
        event.event.Pack(AccountCredited(amount=seq))
        journal.write_events([event])

    def handler(events: list[ego.PersistedEvent]) -> None:
        if any(e.sequence_number == 3 for e in events):
            raise RuntimeError("stop at 3")

    class Publisher:
        """Refuses the record of event 3 (not a broker outage: the publisher stops)."""

        def publish(self, records: list[Any]) -> None:
            if any(r.id == "p-1:3" for r in records):
                raise RuntimeError("refused")

    with ego.Engine("metered", store=journal, telemetry=projections.telemetry(traces=False)) as engine:
        engine.add_projection("p", handler, batch_size=1)
        engine.add_projection("s", handler, batch_size=1, recovery=ego.Recovery(ego.RecoveryPolicy.SKIP))
        engine.add_event_publisher(Publisher(), name="pub", batch_size=1)
        wait_until(lambda: not engine.is_projection_running("p"), what="the projection to stop at event 3")
        engine.wait_for_projection("s", timeout=10)
        wait_until(lambda: engine.publisher_status("pub")[0] == "failed", what="the publisher to stop at event 3")
        m = projections.metrics()
        shard0 = (("ego.projection", "p"), ("ego.shard", 0))
        assert m[("ego.projection.events", (("ego.projection", "p"),))] == 2
        assert m[("ego.projection.events_behind", shard0)] == 1
        assert m[("ego.projection.offset", shard0)] == journal.replay_events("p-1", 2, 2)[0].position
        assert m[("ego.projection.lag", shard0)] == pytest.approx(2.500000001, abs=1e-9)
        assert m[("ego.projection.events_behind", (("ego.projection", "p"), ("ego.shard", 1)))] == 0
        assert m[("ego.projection.failures", (("ego.projection", "p"),))] == 1
        assert m[("ego.projection.dead_letters", (("ego.projection", "p"),))] == 0
        skipping = (("ego.projection", "s"),)
        assert (m[("ego.projection.failures", skipping)], m[("ego.projection.dead_letters", skipping)]) == (1, 1)
        checked |= {"ego.projection.events", "ego.projection.events_behind", "ego.projection.offset", "ego.projection.lag"}
        checked |= {"ego.projection.failures", "ego.projection.dead_letters"}
        publisher = (("ego.publisher", "pub"),)
        pub0 = (("ego.publisher", "pub"), ("ego.shard", 0))
        assert (m[("ego.publisher.published", publisher)], m[("ego.publisher.failures", publisher)]) == (2, 1)
        assert m[("ego.publisher.events_behind", pub0)] == 1
        assert m[("ego.publisher.lag", pub0)] == pytest.approx(2.500000001, abs=1e-9)
        # A publisher is not a projection in the projection metrics.
        assert not any(dict(k[1]).get("ego.projection", "").startswith("publisher:") for k in m)
        checked |= {"ego.publisher.published", "ego.publisher.failures", "ego.publisher.events_behind", "ego.publisher.lag"}
    projections.meter_provider.shutdown()
    assert documented_instruments() == checked, "a documented metric without a check here (or one not documented)"
