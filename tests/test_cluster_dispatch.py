"""The cluster client's dispatcher (no Ray needed: it takes the call to a shard as a
function): commands that a lost shard incarnation left are sent again before any later
command of that shard, in their order, so a retry never reorders one entity's commands."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from ego.cluster.batching import Dispatcher
from ego.cluster.shard import COMMAND, Item
from ego.errors import EngineClosedError, OutcomeUnknownError


class Lost(Exception):
    """What a call to a lost incarnation raises (Ray's actor errors, in the client)."""


class Shard:
    """A shard that loses its first incarnation while the first call is in flight: that call
    waits until ``release`` is set (while later commands queue), then fails as lost. Later
    calls are served and logged in the order the shard ran them."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0
        self.ran: list[str] = []

    async def call(self, shard: int, items: list[Item]) -> list[Any]:
        self.calls += 1
        if self.calls == 1:
            while not self.release.is_set():
                await asyncio.sleep(0.001)
            raise Lost("the incarnation died")
        self.ran.extend(item[3].decode() for item in items)
        return [("ok", None, b"", n) for n, _ in enumerate(items)]


def item(text: str) -> Item:
    return (COMMAND, "acc-1", "type.googleapis.com/x", text.encode(), f"key-{text}", None)


def test_commands_left_by_a_lost_incarnation_go_again_first_and_in_order() -> None:
    shard = Shard()
    dispatcher = Dispatcher(1, shard.call, lambda e: isinstance(e, Lost), retry_for=30.0, max_batch=3)
    try:
        first = [dispatcher.submit(0, item(f"c{i}"), None) for i in range(3)]
        # These queue behind the call in flight (and would have gone out during the retry's
        # backoff before the fix).
        later = [dispatcher.submit(0, item(f"c{i}"), None) for i in range(3, 10)]
        shard.release.set()
        for f in first + later:
            f.result(timeout=10)
        assert shard.ran == [f"c{i}" for i in range(10)]
        assert dispatcher.retries >= 1
    finally:
        dispatcher.close()


@pytest.mark.parametrize("wait_for_the_call", [False, True])
def test_close_fails_what_is_in_flight_or_queued_and_closes_its_event_loop(wait_for_the_call: bool) -> None:
    # close() used to stop the dispatcher's loop without closing it (the collector reported
    # an unclosed event loop in whichever later test collected the client) and without
    # failing the call in flight (its callers waited for ever).
    shard = Shard()
    dispatcher = Dispatcher(1, shard.call, lambda e: isinstance(e, Lost), retry_for=30.0, max_batch=3)
    # One drain, one call of three (max_batch); the first call never returns.
    in_flight = dispatcher.submit_many([(0, item(f"c{i}")) for i in range(3)], None)
    if wait_for_the_call:
        deadline = time.monotonic() + 10
        while shard.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert shard.calls == 1
    queued = [dispatcher.submit(0, item(f"c{i}"), None) for i in range(3, 5)]
    dispatcher.close()
    # Sent: the shard may have applied them. Not sent: refused.
    sent, waiting = (in_flight, queued) if wait_for_the_call else ([], in_flight + queued)
    for i, f in enumerate(sent):
        with pytest.raises(OutcomeUnknownError) as unknown:
            f.result(timeout=0)
        assert unknown.value.idempotency_key == f"key-c{i}"  # type: ignore[attr-defined]
    for f in waiting:
        with pytest.raises((EngineClosedError, OutcomeUnknownError)):
            f.result(timeout=0)
    assert dispatcher._loop.is_closed()  # (closed only once it stopped running)
    dispatcher.close()  # a second close does nothing
    with pytest.raises(EngineClosedError):
        dispatcher.submit(0, item("c5"), None)
