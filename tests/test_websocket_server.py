"""WebSocket server mode: clients connect with the positions they resume from. Every event of
1,000 entities reaches a client in order per entity; a client that drops its connection
mid-stream and reconnects from its last checkpoint misses nothing and sees again only events
after that checkpoint; ``from=latest`` starts at the journal's end and follows it; JSON frames;
bad ``from=`` closes with 1008; settings are checked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from publishing import bank_engine, check_delivery, write_history

import ego
from ego.errors import ConfigurationError, ValidationError
from ego.publishers.websocket_server import parse_from
from ego.v1 import Event

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402


def positions_query(checkpoints: dict[int, int]) -> str:
    return ",".join(f"{s}:{p}" for s, p in sorted(checkpoints.items()))


async def read(
    url: str, total: int, *, stop_after: int | None = None, timeout: float = 60.0
) -> tuple[list[tuple[str, bytes]], dict[int, int], int]:
    """Reads frames until `total` events were received (or `stop_after` events, then drops the
    connection). Returns (event id, envelope) pairs, the last checkpoint per shard, and how
    many events came after the last checkpoint (the window a reconnect may repeat)."""
    received: list[tuple[str, bytes]] = []
    checkpoints: dict[int, int] = {}
    since_checkpoint = 0
    async with asyncio.timeout(timeout), connect(url, max_size=None) as ws:
        async for frame in ws:
            if isinstance(frame, bytes):
                e = Event.FromString(frame)
                received.append((f"{e.persistence_id}:{e.sequence_number}", frame))
                since_checkpoint += 1
                if stop_after is not None and len(received) >= stop_after:
                    break
            else:
                mark = json.loads(frame)
                if "from" in mark:
                    continue
                checkpoints[mark["shard"]] = mark["position"]
                since_checkpoint = 0
            if len(received) >= total and since_checkpoint == 0:
                break
    return received, checkpoints, since_checkpoint


def test_every_event_of_1000_entities_reaches_a_client_in_order() -> None:
    engine = bank_engine("ws-server-1000", ego.MemoryStore())
    try:
        accounts = [f"account-{i}" for i in range(1000)]
        write_history(engine, accounts, credits=4)
        with ego.publishers.WebSocketServer(engine, batch_size=300) as server:
            received, _, _ = asyncio.run(read(server.url, 5000))
        assert check_delivery(received, {a: 5 for a in accounts}) == 0
    finally:
        engine.stop()


def test_a_client_resumes_from_its_checkpoint_and_misses_nothing() -> None:
    engine = bank_engine("ws-server-resume", ego.MemoryStore())
    try:
        accounts = [f"account-{i}" for i in range(200)]
        write_history(engine, accounts, credits=9)  # 2,000 events
        with ego.publishers.WebSocketServer(engine, batch_size=128) as server:
            first, checkpoints, window = asyncio.run(read(server.url, 2000, stop_after=1100))
            assert checkpoints, "no checkpoint before the client dropped"
            covered = {s: p for s, p in checkpoints.items()}
            rest, _, _ = asyncio.run(read(f"{server.url}?from={positions_query(covered)}", 2000 - (len(first) - window)))
        # Every event arrives; duplicates are confined to what came after the last checkpoint.
        duplicates = check_delivery(first + rest, {a: 10 for a in accounts})
        assert duplicates <= window
    finally:
        engine.stop()


def test_from_latest_follows_new_events_only() -> None:
    engine = bank_engine("ws-server-latest", ego.MemoryStore())
    try:
        accounts = [f"account-{i}" for i in range(50)]
        write_history(engine, accounts, credits=2)
        with ego.publishers.WebSocketServer(engine, poll_interval=0.02) as server:

            async def scenario() -> list[tuple[str, bytes]]:
                async with connect(f"{server.url}?from=latest") as ws:
                    # The server tells where it starts (the heads when the connection opened).
                    start = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert set(start) == {"from"} and start["from"]
                    await asyncio.to_thread(write_history, engine, accounts, 4, 4)
                    got: list[tuple[str, bytes]] = []
                    async with asyncio.timeout(30):
                        async for frame in ws:
                            if isinstance(frame, bytes):
                                e = Event.FromString(frame)
                                got.append((f"{e.persistence_id}:{e.sequence_number}", frame))
                                if len(got) == 100:
                                    return got
                    return got

            got = asyncio.run(scenario())
        seqs = {Event.FromString(v).sequence_number for _, v in got}
        assert seqs <= {4, 5}, f"events written before the connection were sent: {sorted(seqs)}"
    finally:
        engine.stop()


def test_json_frames_and_a_bad_from_is_closed_with_1008() -> None:
    engine = bank_engine("ws-server-json", ego.MemoryStore())
    try:
        write_history(engine, ["account-1"], credits=1)
        with ego.publishers.WebSocketServer(engine, format=ego.publishers.ProtobufJson()) as server:

            async def scenario() -> tuple[Any, Any]:
                async with connect(server.url) as ws:
                    assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"from": {}}
                    first = json.loads(await asyncio.wait_for(ws.recv(), 10))
                async with connect(f"{server.url}?from=zero") as ws:
                    with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                        await asyncio.wait_for(ws.recv(), 10)
                return first, closed.value.rcvd

            first, close = asyncio.run(scenario())
        assert first["persistenceId"] == "account-1" and first["sequenceNumber"] == "1"
        assert first["event"]["@type"].endswith("AccountOpened")
        assert close.code == 1008 and "SHARD:POSITION" in close.reason
    finally:
        engine.stop()


def test_parse_from_and_settings_are_checked() -> None:
    assert parse_from("") == {}
    assert parse_from("from=latest") is None
    assert parse_from("from=0:120,3:7") == {0: 120, 3: 7}
    for bad in ("from=0", "from=a:1", "from=0:1,0:2", "from=0:-1", "from=1&from=2"):
        with pytest.raises(ValidationError):
            parse_from(bad)
    engine = bank_engine("ws-server-settings", ego.MemoryStore())
    try:
        with pytest.raises(ConfigurationError):
            ego.publishers.WebSocketServer(engine, format=ego.publishers.CloudEventsBinary(source="x"))
        with pytest.raises(ConfigurationError):
            ego.publishers.WebSocketServer(engine, batch_size=0)
        with pytest.raises(ConfigurationError):
            ego.publishers.WebSocketServer(object())
    finally:
        engine.stop()
