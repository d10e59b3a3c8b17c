"""NATS JetStream publisher: every event of 1,000 entities arrives once (the stream
deduplicates on Nats-Msg-Id), in order per entity, and decodes to the original; a broker
stopped under load and started again loses nothing and keeps the order; kill -9 of the
publishing process leaves consumers of the deduplicating stream with each event exactly once."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from brokers import Broker, nats_server
from publisher_crash import crash_rounds
from publishing import (
    bank_engine,
    check_delivery,
    check_restart_restores,
    consume_nats,
    make_publisher,
    wait_caught_up,
    write_history,
)
from waiting import wait_until

import ego

pytest.importorskip("nats")

SHARED = "nats://127.0.0.1:4222"


def params(url: str) -> dict[str, object]:
    tag = uuid.uuid4().hex[:10].upper()
    return {"url": url, "prefix": f"egotest{tag.lower()}", "stream": f"EGOTEST_{tag}"}


@pytest.fixture
def throwaway(tmp_path: Path) -> Broker:
    broker = nats_server(tmp_path).start()
    yield broker
    broker.stop(kill=True)


def shared_server() -> str:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=1).close()
    except OSError:
        from brokers import unavailable

        unavailable("no NATS server on 127.0.0.1:4222")
    return SHARED


def test_every_event_of_1000_entities_arrives_once_in_order() -> None:
    url = shared_server()
    p = params(url)
    engine = bank_engine("nats-1000", ego.MemoryStore())
    try:
        accounts = [f"account-{i}" for i in range(1000)]
        write_history(engine, accounts, credits=4)
        engine.add_event_publisher(make_publisher("nats", p), name="nats")
        wait_caught_up(engine, "nats", what="the publisher to catch up")
        received = consume_nats(url, p["stream"], 5000)
        assert check_delivery(received, {a: 5 for a in accounts}, exactly_once=True) == 0
        assert engine.publisher_stats("nats")["published"] == 5000
    finally:
        engine.stop()


def test_broker_stopped_under_load_loses_nothing(throwaway: Broker) -> None:
    url = f"nats://127.0.0.1:{throwaway.port}"
    p = params(url)
    engine = bank_engine("nats-outage", ego.MemoryStore())
    accounts = [f"account-{i}" for i in range(200)]
    try:
        engine.add_event_publisher(make_publisher("nats", {**p, "ack_timeout": 0.5}), name="nats", max_backoff=0.5)
        write_history(engine, accounts, credits=5)
        throwaway.stop()
        write_history(engine, accounts, credits=10, first_credit=7)
        wait_until(lambda: engine.publisher_stats("nats")["failures"] > 0, what="a failed publish while the broker is down")
        assert engine.publisher_status("nats") == ("running", None)
        assert sum(lag.events_behind for lag in engine.publisher_lag("nats").values()) > 0
        throwaway.start()
        wait_caught_up(engine, "nats", what="the publisher to catch up after the outage")
        received = consume_nats(url, p["stream"], 200 * 11)
        check_delivery(received, {a: 11 for a in accounts}, exactly_once=True)
    finally:
        engine.stop()


@pytest.mark.slow
def test_kill_9_of_the_publisher_delivers_every_event_exactly_once_to_stream_consumers(throwaway: Broker, tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{throwaway.port}"
    p = params(url)
    expected, windows = crash_rounds("nats", p, tmp_path)
    received = consume_nats(url, p["stream"], sum(expected.values()))
    # The stream deduplicates on Nats-Msg-Id: what was published twice is stored once.
    check_delivery(received, expected, exactly_once=True)
    assert windows, "the publisher was never killed while behind"


def test_a_restart_restores_the_publisher() -> None:
    """stop() closes the connector; start() reopens it and publishing resumes from the
    checkpoint: every event once, before and after the restart."""
    url = shared_server()
    p = params(url)
    check_restart_restores("nats", p, lambda n: consume_nats(url, str(p["stream"]), n), exactly_once=True)
