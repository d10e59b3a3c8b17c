"""Scenario helpers of the publisher tests: a bank journal with a known history, and checks
of what a consumer received (complete, in order per entity, decodable to the original)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import ego
from ego.v1 import Event

from bank_pb2 import AccountCredited, AccountOpened, Credit, OpenAccount
from domain import AccountBehavior


def bank_engine(name: str, store: Any) -> ego.Engine:
    engine = ego.Engine(name, store=store)
    engine.start()
    engine.register_entity_type(AccountBehavior, prefix="account-")
    return engine


def expected_event(persistence_id: str, sequence_number: int) -> Any:
    """The event a bank account written by `write_history` has at `sequence_number`."""
    if sequence_number == 1:
        return AccountOpened(account_id=persistence_id, balance=100)
    return AccountCredited(amount=sequence_number)


def write_history(engine: ego.Engine, accounts: Iterable[str], credits: int, first_credit: int = 2) -> None:
    """Opens each account (if `first_credit` is 2) and credits it with sequence numbers
    first_credit .. credits+1, concurrently over the accounts."""
    import asyncio

    accounts = list(accounts)

    async def run() -> None:
        if first_credit == 2:
            await asyncio.gather(*(engine.send_command_async(a, OpenAccount(initial_balance=100)) for a in accounts))
        for seq in range(first_credit, credits + 2):
            await asyncio.gather(*(engine.send_command_async(a, Credit(amount=seq)) for a in accounts))

    asyncio.run(run())


def check_delivery(received: list[tuple[str, bytes]], expected: dict[str, int], *, exactly_once: bool = False) -> int:
    """`received`: (event id, protobuf envelope) in the order a consumer got them. Every
    expected event is there and decodes to the original; per entity a record never comes
    before all the earlier ones of its entity came (repeats allowed unless `exactly_once`);
    duplicates carry the same id. Returns the number of duplicates."""
    highest: dict[str, int] = defaultdict(int)
    duplicates = 0
    for event_id, value in received:
        envelope = Event.FromString(value)
        pid, seq = envelope.persistence_id, envelope.sequence_number
        assert event_id == f"{pid}:{seq}", f"event id {event_id} on the envelope of {pid}:{seq}"
        original = expected_event(pid, seq)
        assert envelope.event.type_url.endswith(original.DESCRIPTOR.full_name)
        assert type(original).FromString(envelope.event.value) == original, f"{event_id} does not decode to the original"
        if seq <= highest[pid]:
            duplicates += 1
            assert not exactly_once, f"{event_id} delivered twice"
            continue
        assert seq == highest[pid] + 1, f"{pid}: {seq} arrived before {highest[pid] + 1}"
        highest[pid] = seq
    assert dict(highest) == expected, "events missing: " + str(
        {p: (highest.get(p, 0), n) for p, n in expected.items() if highest.get(p, 0) != n}
    )
    return duplicates


def caught_up(engine: ego.Engine, name: str) -> bool:
    return all(lag.events_behind == 0 for lag in engine.publisher_lag(name).values())


def wait_caught_up(
    engine: ego.Engine, name: str, what: str = "the publisher to catch up", stall: float = 60.0, limit: float = 600.0
) -> None:
    """Waits until publisher `name` has published everything written so far. Generous under
    load, never open-ended: it fails when the publisher made no progress (its events behind
    did not go down) for `stall` seconds, or after `limit` seconds in all, with the lag and
    status in the message."""
    start = time.monotonic()
    best, since = None, start
    while True:
        lag = engine.publisher_lag(name)
        behind = sum(s.events_behind for s in lag.values())
        if behind == 0:
            return
        now = time.monotonic()
        if best is None or behind < best:
            best, since = behind, now
        status = engine.publisher_status(name)
        assert status[0] == "running", f"{what}: the publisher stopped: {status}"
        assert now - since < stall, (
            f"{what}: no progress for {stall:.0f} s ({behind} events behind, stats {engine.publisher_stats(name)})"
        )
        assert now - start < limit, f"timed out after {limit:.0f} s waiting for {what} ({behind} events behind)"
        time.sleep(0.05)


def check_restart_restores(
    kind: str, params: dict[str, Any], consume: Callable[[int], list[tuple[str, bytes]]], *, exactly_once: bool
) -> None:
    """A restart (`stop()`, `start()`) restores the `kind` publisher, which resumes from its
    checkpoint: every event of 20 accounts, written before and after the restart, reaches the
    broker (`consume(expected_total)` reads it back), once each when `exactly_once`."""
    engine = bank_engine(f"{kind}-restart", ego.MemoryStore())
    try:
        accounts = [f"account-{i}" for i in range(20)]
        write_history(engine, accounts, credits=2)
        engine.add_event_publisher(make_publisher(kind, params), name=kind)
        wait_caught_up(engine, kind)
        engine.stop()
        engine.start()
        assert engine.publisher_names() == [kind]
        write_history(engine, accounts, credits=4, first_credit=4)
        wait_caught_up(engine, kind)
        assert check_delivery(consume(100), {a: 5 for a in accounts}, exactly_once=exactly_once) == 0
    finally:
        engine.stop()


def make_publisher(kind: str, params: dict[str, Any]) -> Any:
    """A connector of `kind` from JSON-able `params` (shared by the tests and their child
    processes)."""
    from ego import publishers as p

    ack_timeout = params.get("ack_timeout", 2.0)
    if kind == "kafka":
        return p.KafkaPublisher(params["servers"], params["topic"], ack_timeout=ack_timeout)
    if kind == "nats":
        return p.NatsPublisher(
            params["url"], subject=params["prefix"] + ".{entity_type}", stream=params["stream"], ack_timeout=ack_timeout
        )
    if kind == "pulsar":
        return p.PulsarPublisher(params["url"], params["topic"], ack_timeout=ack_timeout)
    if kind == "websocket":
        return p.WebSocketPublisher(params["url"], ack_timeout=ack_timeout)
    raise ValueError(kind)


def consume_nats(url: str, stream: str, expected_total: int, timeout: float = 60.0) -> list[tuple[str, bytes]]:
    """Every message of the stream, in stream order: (Nats-Msg-Id, data)."""
    import asyncio

    import nats

    async def run() -> list[tuple[str, bytes]]:
        nc = await nats.connect(url)
        js = nc.jetstream()
        sub = await js.pull_subscribe("", durable=None, stream=stream)
        out: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = await js.stream_info(stream)
            if len(out) >= info.state.messages and len(out) >= expected_total:
                break
            try:
                msgs = await sub.fetch(1000, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                out.append(((m.headers or {}).get("Nats-Msg-Id", ""), m.data))
                await m.ack()
        await nc.close()
        return out

    return asyncio.run(run())


def consume_kafka(servers: str, topic: str, expected_total: int, timeout: float = 60.0) -> list[tuple[str, bytes]]:
    """Every message of the topic, partition by partition in offset order (the order a
    consumer of one partition sees): (ego-event-id, value)."""
    import uuid

    import confluent_kafka as ck

    consumer = ck.Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": f"test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    per_partition: dict[int, list[tuple[str, bytes]]] = defaultdict(list)
    count, deadline, idle_since = 0, time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            if count >= expected_total and time.monotonic() - idle_since > 2:
                break
            continue
        if msg.error():
            continue
        headers = dict(msg.headers() or [])
        per_partition[msg.partition()].append(
            (headers[b"ego-event-id" if b"ego-event-id" in headers else "ego-event-id"].decode(), msg.value())
        )
        count += 1
        idle_since = time.monotonic()
    consumer.close()
    return [item for p in sorted(per_partition) for item in per_partition[p]]


def consume_pulsar(url: str, topic: str, expected_total: int, timeout: float = 60.0) -> list[tuple[str, bytes]]:
    """Every message of the topic from the earliest: (ego-event-id, value)."""
    import logging

    import pulsar

    client = pulsar.Client(url, logger=logging.getLogger("test.pulsar"))
    reader = client.create_reader(topic, pulsar.MessageId.earliest)
    out: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = reader.read_next(1000)
        except Exception:
            if len(out) >= expected_total:
                break
            continue
        out.append((msg.properties()["ego-event-id"], msg.data()))
    client.close()
    return out


def event_id(frame: bytes) -> str:
    """`persistence_id:sequence_number` of an ``ego.v1.Event`` frame."""
    e = Event.FromString(frame)
    return f"{e.persistence_id}:{e.sequence_number}"


class Peer:
    """A WebSocket server on `port` that records every binary frame as (its id by
    `identify`, frame) and acknowledges each with the number of frames taken on the
    connection."""

    def __init__(self, port: int, identify: Callable[[bytes], str] = event_id) -> None:
        self.port = port
        self.identify = identify
        self.received: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: Any = None

    async def _handle(self, ws: Any) -> None:
        taken = 0
        async for frame in ws:
            record_id = self.identify(frame)
            with self.lock:
                self.received.append((record_id, frame))
            taken += 1
            await ws.send(str(taken))

    def start(self) -> Peer:
        from websockets.asyncio.server import serve

        async def up() -> None:
            # close_timeout bounds stop(): the close handshake with a busy client may not
            # finish, and websockets' default waits 10 s for it before dropping the TCP link.
            self.server = await serve(self._handle, "127.0.0.1", self.port, close_timeout=1)

        asyncio.run_coroutine_threadsafe(up(), self.loop).result(10)
        return self

    def stop(self) -> None:
        async def down() -> None:
            if self.server is not None:
                self.server.close()
                await self.server.wait_closed()
                self.server = None

        asyncio.run_coroutine_threadsafe(down(), self.loop).result(30)

    def frames(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
