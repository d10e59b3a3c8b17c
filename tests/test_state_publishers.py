"""State publishers (``engine.add_state_publisher``): every durable-state version arrives, in
order per entity, keyed by the persistence id with the event id ``persistence_id:version``, and
decodes to the state of that version; on a Python publisher (sync and async), NATS JetStream
(the stream deduplicates on the event id: each version exactly once) and WebSocket. Faults, on
NATS JetStream: a broker stopped under load and started again loses nothing and keeps the
order; kill -9 of the publishing process (10 rounds) leaves the deduplicating stream with every
version exactly once; on Kafka (Tansu, no deduplication across producer sessions) every
version at least once, duplicates only from the window the broker had not acknowledged."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from brokers import Broker, free_port, nats_server, tansu
from publisher_crash import check_duplicates_in_windows, crash_rounds
from publishing import Peer, consume_kafka, consume_nats, make_publisher, wait_caught_up
from test_durable_state import CounterBehavior
from test_publishers import AsyncCollect, Collect, check_envelope_records
from waiting import wait_until

import ego
from ego import errors
from ego.v1 import DurableState

from egotest.messages_pb2 import Counter, Increment


def counter_engine(name: str, store: Any) -> ego.Engine:
    engine = ego.Engine(name, store=store)
    engine.start()
    engine.register_entity_type(CounterBehavior, prefix="cart-")
    return engine


def write_versions(engine: ego.Engine, ids: list[str], rounds: int) -> None:
    """`rounds` increments of 1 to every id (one command per entity at a time: every command
    is one version, and the counter's value equals its version)."""

    async def run() -> None:
        for _ in range(rounds):
            await asyncio.gather(*(engine.send_command_async(i, Increment(by=1)) for i in ids))

    asyncio.run(run())


def check_versions(received: list[tuple[str, bytes]], expected: dict[str, int], *, exactly_once: bool = False) -> int:
    """`received`: (event id, DurableState envelope) in the order a consumer got them. Every
    version 1..expected[pid] arrives, in order per entity (repeats allowed unless
    `exactly_once`), under the id ``persistence_id:version``, and decodes to the counter of
    that version. Returns the number of duplicates."""
    highest: dict[str, int] = defaultdict(int)
    duplicates = 0
    for event_id, value in received:
        envelope = DurableState.FromString(value)
        pid, version = envelope.persistence_id, envelope.version_number
        assert event_id == f"{pid}:{version}"
        assert envelope.resulting_state.type_url.endswith("egotest.Counter")
        assert Counter.FromString(envelope.resulting_state.value) == Counter(value=version), event_id
        if version <= highest[pid]:
            duplicates += 1
            assert not exactly_once, f"{event_id} delivered twice"
            continue
        assert version == highest[pid] + 1, f"{pid}: {version} arrived before {highest[pid] + 1}"
        highest[pid] = version
    assert dict(highest) == expected
    return duplicates


@pytest.mark.parametrize("kind", [Collect, AsyncCollect])
def test_a_python_publisher_gets_every_version_in_order(kind: type[Collect]) -> None:
    engine = counter_engine("state-python", ego.MemoryStore())
    try:
        ids = [f"cart-{i}" for i in range(100)]
        write_versions(engine, ids, 5)
        publisher = kind()
        engine.add_state_publisher(publisher, name="carts", batch_size=64)
        write_versions(engine, ids, 3)
        wait_caught_up(engine, "carts")
        assert check_versions(publisher.received(), {i: 8 for i in ids}) == 0
        record = publisher.records[0]
        assert record.key == record.source.persistence_id and isinstance(record.source, ego.PersistedState)
        assert record.headers["ego-event-id"] == record.id
        check_envelope_records(publisher.records)
        assert engine.publisher_stats("carts")["published"] == 800
        # The event journal has nothing of this: an event publisher sends nothing.
        events = Collect()
        engine.add_event_publisher(events, name="events")
        wait_caught_up(engine, "events")
        assert events.records == []
    finally:
        engine.stop()


def test_a_refused_version_goes_to_the_dead_letter_handler() -> None:
    engine = counter_engine("state-refused", ego.MemoryStore())
    dead: list[tuple[str, str, int]] = []
    try:
        publisher = Collect()
        publisher.refuse = {"cart-1:2"}
        engine.add_state_publisher(
            publisher,
            name="carts",
            on_refused=ego.RecoveryPolicy.SKIP,
            dead_letter=lambda name, pid, state, version, error: dead.append((name, pid, version)),
        )
        write_versions(engine, ["cart-1"], 3)
        wait_caught_up(engine, "carts")
        assert [r.id for r in publisher.records] == ["cart-1:1", "cart-1:3"]
        assert dead == [("carts", "cart-1", 2)]  # the publisher's name
    finally:
        engine.stop()


def test_a_state_store_without_a_change_log_is_refused() -> None:
    from test_state_changes import StatesOnly

    memory = ego.MemoryStore()
    engine = ego.Engine("state-none", events_store=memory, state_store=StatesOnly())
    engine.start()
    try:
        with pytest.raises(errors.ConfigurationError, match="change log"):
            engine.add_state_publisher(Collect(), name="carts", offset_store=memory)
        assert engine.publisher_names() == []
    finally:
        engine.stop()


def nats_url() -> str:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 4222), timeout=1).close()
    except OSError:
        from brokers import unavailable

        unavailable("no NATS server on 127.0.0.1:4222")
    return "nats://127.0.0.1:4222"


def test_nats_every_version_of_500_entities_arrives_once_in_order(tmp_path: Any) -> None:
    pytest.importorskip("nats")
    from ego.publishers import NatsPublisher

    url = nats_url()
    tag = uuid.uuid4().hex[:10]
    stream = f"EGOTEST_STATES_{tag.upper()}"
    store = ego.RocksDBStore(tmp_path / "db")
    engine = counter_engine("state-nats", store)
    try:
        ids = [f"cart-{i}" for i in range(500)]
        write_versions(engine, ids, 3)
        publisher = NatsPublisher(url, subject=f"egotest{tag}.states.{{entity_type}}", stream=stream, ack_timeout=2.0)
        engine.add_state_publisher(publisher, name="nats")
        write_versions(engine, ids, 2)
        wait_caught_up(engine, "nats")
        received = consume_nats(url, stream, 2500)
        assert check_versions(received, {i: 5 for i in ids}, exactly_once=True) == 0
    finally:
        engine.stop()
        store.close()


def state_id(frame: bytes) -> str:
    """`persistence_id:version` of an ``ego.v1.DurableState`` frame."""
    s = DurableState.FromString(frame)
    return f"{s.persistence_id}:{s.version_number}"


@pytest.fixture
def peer() -> Iterator[Peer]:
    pytest.importorskip("websockets")
    p = Peer(free_port(), state_id).start()
    yield p
    p.close()


def test_websocket_every_version_arrives_in_order(peer: Peer) -> None:
    from ego.publishers import WebSocketPublisher

    engine = counter_engine("state-ws", ego.MemoryStore())
    try:
        ids = [f"cart-{i}" for i in range(300)]
        engine.add_state_publisher(WebSocketPublisher(f"ws://127.0.0.1:{peer.port}/states", ack_timeout=2.0), name="ws")
        write_versions(engine, ids, 4)
        wait_caught_up(engine, "ws")
        wait_until(lambda: len(peer.frames()) >= 1200, what="the peer to take every frame")
        check_versions(peer.frames(), {i: 4 for i in ids})
    finally:
        engine.stop()


def test_encrypted_versions_are_published_as_stored_unless_decrypt() -> None:
    """With encryption on, a state publisher sends the change log as stored (the state's bytes
    are ciphertext, the key id in the envelope and the ``ego-encryption-key-id`` header) unless
    ``decrypt=True``; an erased entity's versions are tombstones either way."""
    engine = ego.Engine("state-as-stored", store=ego.MemoryStore(), encryption=ego.Encryption(master_key=bytes(range(32))))
    engine.start()
    engine.register_entity_type(CounterBehavior, prefix="cart-")
    try:
        write_versions(engine, ["cart-0", "cart-1"], 2)
        engine.erase_entity("cart-0")
        stored, plain = Collect(), Collect()
        engine.add_state_publisher(stored, name="stored")
        engine.add_state_publisher(plain, name="plain", decrypt=True)
        wait_until(lambda: len(stored.records) == 4 and len(plain.records) == 4, what="four records in each")
        for sink, encrypted in ((stored, True), (plain, False)):
            by_id = {r.id: r for r in sink.records}
            assert sorted(by_id) == ["cart-0:1", "cart-0:2", "cart-1:1", "cart-1:2"]
            for version in (1, 2):
                gone = by_id[f"cart-0:{version}"]
                tombstone = DurableState.FromString(gone.value)
                assert gone.erased and gone.headers["ego-erased"] == "true"
                assert tombstone.is_erased and not tombstone.resulting_state.value
                live = by_id[f"cart-1:{version}"]
                envelope = DurableState.FromString(live.value)
                assert not live.erased and not envelope.is_erased
                assert envelope.is_encrypted is encrypted and live.source.is_encrypted is encrypted
                assert ("ego-encryption-key-id" in live.headers) is encrypted
                if encrypted:
                    assert envelope.encryption_key_id == live.headers["ego-encryption-key-id"] != ""
                    assert envelope.resulting_state.value != Counter(value=version).SerializeToString()
                else:
                    assert Counter.FromString(envelope.resulting_state.value) == Counter(value=version)
    finally:
        engine.stop()


@pytest.fixture
def throwaway_nats(tmp_path: Any) -> Iterator[Broker]:
    pytest.importorskip("nats")
    broker = nats_server(tmp_path / "nats").start()
    yield broker
    broker.stop(kill=True)


def nats_params(url: str) -> dict[str, object]:
    tag = uuid.uuid4().hex[:10].upper()
    return {"url": url, "prefix": f"egotest{tag.lower()}.states", "stream": f"EGOTEST_STATES_{tag}"}


def test_nats_broker_stopped_under_load_loses_no_version(throwaway_nats: Broker) -> None:
    url = f"nats://127.0.0.1:{throwaway_nats.port}"
    p = nats_params(url)
    engine = counter_engine("state-nats-outage", ego.MemoryStore())
    ids = [f"cart-{i}" for i in range(200)]
    try:
        engine.add_state_publisher(make_publisher("nats", {**p, "ack_timeout": 0.5}), name="nats", max_backoff=0.5)
        write_versions(engine, ids, 5)
        throwaway_nats.stop()
        write_versions(engine, ids, 6)
        wait_until(lambda: engine.publisher_stats("nats")["failures"] > 0, what="a failed publish while the broker is down")
        assert engine.publisher_status("nats") == ("running", None)
        assert sum(lag.events_behind for lag in engine.publisher_lag("nats").values()) > 0
        throwaway_nats.start()
        wait_caught_up(engine, "nats", what="the state publisher to catch up after the outage")
        received = consume_nats(url, str(p["stream"]), 200 * 11)
        check_versions(received, {i: 11 for i in ids}, exactly_once=True)
    finally:
        engine.stop()


@pytest.mark.slow
def test_nats_kill_9_of_the_publisher_leaves_every_version_once_in_the_stream(throwaway_nats: Broker, tmp_path: Any) -> None:
    url = f"nats://127.0.0.1:{throwaway_nats.port}"
    p = nats_params(url)
    expected, _ = crash_rounds("nats", p, tmp_path, source="states")
    assert len(expected) == 100 and all(v > 0 for v in expected.values())
    received = consume_nats(url, str(p["stream"]), sum(expected.values()))
    # The stream deduplicates on Nats-Msg-Id (persistence_id:version): each version stored once.
    check_versions(received, expected, exactly_once=True)


@pytest.mark.slow
def test_kafka_kill_9_of_the_publisher_delivers_every_version_at_least_once(tmp_path: Any) -> None:
    pytest.importorskip("confluent_kafka")
    broker = tansu(tmp_path / "tansu").start()
    try:
        p = {"servers": f"127.0.0.1:{broker.port}", "topic": f"egotest-states-{uuid.uuid4().hex[:10]}"}
        expected, windows = crash_rounds("kafka", p, tmp_path, source="states")
        assert len(expected) == 100 and all(v > 0 for v in expected.values())
        received = consume_kafka(p["servers"], p["topic"], sum(expected.values()))
        check_versions(received, expected)
        check_duplicates_in_windows(received, windows, source="states")
    finally:
        broker.stop(kill=True)
