"""Kafka publisher, on two Kafka-protocol brokers: Tansu (memory-only storage) and noida-db
(keeps its data across restarts). Every event of 1,000 entities arrives in order per entity
(one partition per key) and decodes to the original; a broker stopped under load and started
again loses nothing (noida-db: Tansu forgets everything when it stops); kill -9 of the
publishing process delivers every event at least once, duplicates only from the window the
broker had not acknowledged. Neither stand-in deduplicates across producer sessions, so the
duplicates of the kill test reach the consumer (with the same event id)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import Broker, noida, tansu
from publisher_crash import check_duplicates_in_windows, crash_rounds
from publishing import (
    bank_engine,
    check_delivery,
    check_restart_restores,
    consume_kafka,
    make_publisher,
    wait_caught_up,
    write_history,
)
from waiting import wait_until

import ego

pytest.importorskip("confluent_kafka")


@pytest.fixture(params=["tansu", "noida"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    b = (tansu if request.param == "tansu" else noida)(tmp_path).start()
    yield b
    b.stop(kill=True)


@pytest.fixture
def tansu_broker(tmp_path: Path) -> Iterator[Broker]:
    b = tansu(tmp_path).start()
    yield b
    b.stop(kill=True)


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Broker]:
    b = noida(tmp_path).start()
    yield b
    b.stop(kill=True)


def params(broker: Broker) -> dict[str, object]:
    return {"servers": f"127.0.0.1:{broker.port}", "topic": f"egotest-{uuid.uuid4().hex[:10]}"}


def test_every_event_of_1000_entities_arrives_in_order(broker: Broker) -> None:
    p = params(broker)
    engine = bank_engine("kafka-1000", ego.MemoryStore())
    try:
        accounts = [f"account-{i}" for i in range(1000)]
        write_history(engine, accounts, credits=4)
        engine.add_event_publisher(make_publisher("kafka", p), name="kafka")
        wait_caught_up(engine, "kafka", what="the publisher to catch up")
        received = consume_kafka(str(p["servers"]), str(p["topic"]), 5000)
        assert check_delivery(received, {a: 5 for a in accounts}) == 0
        assert engine.publisher_stats("kafka")["published"] == 5000
    finally:
        engine.stop()


def test_broker_stopped_under_load_loses_nothing(durable_broker: Broker) -> None:
    p = params(durable_broker)
    engine = bank_engine("kafka-outage", ego.MemoryStore())
    accounts = [f"account-{i}" for i in range(200)]
    try:
        engine.add_event_publisher(make_publisher("kafka", {**p, "ack_timeout": 0.5}), name="kafka", max_backoff=0.5)
        write_history(engine, accounts, credits=5)
        wait_caught_up(engine, "kafka", what="the first events to be published")
        durable_broker.stop()
        write_history(engine, accounts, credits=10, first_credit=7)
        wait_until(
            lambda: engine.publisher_stats("kafka")["failures"] > 0, what="a publish left unacknowledged by the stopped broker"
        )
        assert engine.publisher_status("kafka") == ("running", None)
        assert sum(lag.events_behind for lag in engine.publisher_lag("kafka").values()) > 0
        durable_broker.start()
        wait_caught_up(engine, "kafka", what="the publisher to catch up after the outage")
        received = consume_kafka(str(p["servers"]), str(p["topic"]), 200 * 11)
        check_delivery(received, {a: 11 for a in accounts})
    finally:
        engine.stop()


@pytest.mark.slow
def test_kill_9_of_the_publisher_delivers_every_event_at_least_once(tansu_broker: Broker, tmp_path: Path) -> None:
    p = params(tansu_broker)
    expected, windows = crash_rounds("kafka", p, tmp_path)
    received = consume_kafka(str(p["servers"]), str(p["topic"]), sum(expected.values()))
    check_delivery(received, expected)
    check_duplicates_in_windows(received, windows)


def test_after_a_fatal_error_an_outstanding_batch_is_produced_again_on_the_new_producer(tansu_broker: Broker) -> None:
    """A fatal producer error (idempotence state lost) makes the connector start a new
    producer while another shard's batch may still wait for reports from the old one: that
    batch is reported unacknowledged and, handed over again, produced on the new producer
    instead of waiting for reports that will never come."""
    import confluent_kafka as ck

    from ego.publishers import KafkaPublisher, Record

    p = params(tansu_broker)
    publisher = KafkaPublisher(str(p["servers"]), str(p["topic"]), ack_timeout=2.0)
    try:
        records = [
            Record(f"account-{i}:1", f"account-{i}", b"v%d" % i, {"ego-event-id": f"account-{i}:1"}, 0, i + 1, None)  # type: ignore[arg-type]
            for i in range(20)
        ]
        wait = publisher.send(records)  # outstanding on the first producer
        failure = publisher._failure(ck.KafkaError(ck.KafkaError._FATAL, "simulated", fatal=True))
        assert isinstance(failure, ego.errors.BrokerUnavailableError)
        first = wait()
        assert first is not None and all(isinstance(e, ego.errors.BrokerUnavailableError) for e in first)
        assert publisher.publish(records) is None  # the second producer takes all of them
        received = consume_kafka(str(p["servers"]), str(p["topic"]), 20)
        assert {event_id for event_id, _ in received} == {r.id for r in records}
    finally:
        publisher.close()


def test_a_restart_restores_the_publisher(tansu_broker: Broker) -> None:
    """stop() closes the producer; start() reopens the publisher with a new one, and publishing
    resumes from the checkpoint: every event once, before and after the restart."""
    p = params(tansu_broker)
    check_restart_restores("kafka", p, lambda n: consume_kafka(str(p["servers"]), str(p["topic"]), n), exactly_once=True)
