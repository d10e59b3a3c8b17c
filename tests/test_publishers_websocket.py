"""WebSocket publisher against a websockets server that acknowledges what it took. Every event
of 1,000 entities arrives in order per entity and decodes to the original; the peer stopped
under load and started again: nothing lost, order kept (the publisher reconnects and resends
what was not acknowledged); kill -9 of the publishing process delivers every event at least
once, duplicates only from the unacknowledged window."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import free_port
from publisher_crash import check_duplicates_in_windows, crash_rounds
from publishing import Peer, bank_engine, check_delivery, make_publisher, wait_caught_up, write_history
from waiting import wait_until

import ego

pytest.importorskip("websockets")


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer(free_port()).start()
    yield p
    p.close()


def params(peer: Peer) -> dict[str, object]:
    return {"url": f"ws://127.0.0.1:{peer.port}/{uuid.uuid4().hex[:8]}"}


def test_every_event_of_1000_entities_arrives_in_order(peer: Peer) -> None:
    engine = bank_engine("ws-1000", ego.MemoryStore())
    try:
        accounts = [f"account-{i}" for i in range(1000)]
        write_history(engine, accounts, credits=4)
        engine.add_event_publisher(make_publisher("websocket", params(peer)), name="ws")
        wait_caught_up(engine, "ws", what="the publisher to catch up")
        assert check_delivery(peer.frames(), {a: 5 for a in accounts}) == 0
    finally:
        engine.stop()


def test_peer_stopped_under_load_loses_nothing(peer: Peer) -> None:
    engine = bank_engine("ws-outage", ego.MemoryStore())
    accounts = [f"account-{i}" for i in range(200)]
    try:
        engine.add_event_publisher(make_publisher("websocket", {**params(peer), "ack_timeout": 0.5}), name="ws", max_backoff=0.5)
        write_history(engine, accounts, credits=5)
        peer.stop()
        write_history(engine, accounts, credits=10, first_credit=7)
        wait_until(lambda: engine.publisher_stats("ws")["failures"] > 0, what="a publish refused while the peer is down")
        assert engine.publisher_status("ws") == ("running", None)
        peer.start()
        wait_caught_up(engine, "ws", what="the publisher to catch up after the outage")
        check_delivery(peer.frames(), {a: 11 for a in accounts})
    finally:
        engine.stop()


def test_a_restart_restores_the_publisher(peer: Peer) -> None:
    """stop() closes the client; start() reopens it and publishing resumes from the checkpoint."""
    engine = bank_engine("ws-restart", ego.MemoryStore())
    try:
        accounts = [f"account-{i}" for i in range(20)]
        write_history(engine, accounts, credits=2)
        engine.add_event_publisher(make_publisher("websocket", params(peer)), name="ws")
        wait_caught_up(engine, "ws")
        engine.stop()
        engine.start()
        assert engine.publisher_names() == ["ws"]
        write_history(engine, accounts, credits=4, first_credit=4)
        wait_caught_up(engine, "ws")
        assert check_delivery(peer.frames(), {a: 5 for a in accounts}, exactly_once=True) == 0
    finally:
        engine.stop()


@pytest.mark.slow
def test_kill_9_of_the_publisher_delivers_every_event_at_least_once(peer: Peer, tmp_path: Path) -> None:
    expected, windows = crash_rounds("websocket", params(peer), tmp_path)
    received = peer.frames()
    check_delivery(received, expected)
    check_duplicates_in_windows(received, windows)
