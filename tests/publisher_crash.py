"""kill -9 of a publishing process at random moments, many rounds (RELIABILITY.md #15), for
event publishers (bank accounts) and state publishers (durable-state counters)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from publishing import caught_up, make_publisher
from waiting import wait_until

import ego
from ego.v1 import DurableState, Event

CHILD = Path(__file__).resolve().parent / "publisher_child.py"
BATCH = 200


def crash_rounds(
    kind: str, params: dict[str, Any], tmp_path: Path, rounds: int = 10, source: str = "events"
) -> tuple[dict[str, int], list[dict[int, int]]]:
    """Runs `rounds` children that write and publish until killed with SIGKILL at a random
    moment, then publishes the rest in-process. `source`: "events" (an event publisher over
    bank accounts) or "states" (a state publisher over durable-state counters, one command per
    counter at a time, so each counter's value is its version). Returns the highest sequence
    number (or version) per entity and, per kill, the publisher's committed checkpoint per
    shard."""
    store_dir = tmp_path / "journal"
    rng = random.Random()
    # The first run starts with no checkpoint: its first batches are a window too.
    windows: list[dict[int, int]] = [{}]
    for _ in range(rounds):
        child = subprocess.Popen(
            [sys.executable, str(CHILD), kind, str(store_dir), json.dumps(params), str(BATCH), source],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip() == "writing", f"the child did not start: {line!r}"
            time.sleep(rng.uniform(0.3, 1.2))  # a random moment to kill it, not a wait for something
        finally:
            child.send_signal(signal.SIGKILL)
            child.communicate(timeout=10)  # waits, and closes its stdout
        with ego.RocksDBStore(store_dir) as store:
            windows.append(dict(store.read_offsets("publisher:crash")))
    store = ego.RocksDBStore(store_dir)
    engine = ego.Engine("crash", store=store)
    engine.start()
    try:
        expected: dict[str, int] = {}
        if source == "states":
            from test_durable_state import CounterBehavior

            engine.register_entity_type(CounterBehavior, prefix="cart-")
            engine.add_state_publisher(make_publisher(kind, params), name="crash", batch_size=BATCH)
            ids, cursor = store.state_ids(1000, None)
            for pid in ids:
                expected[pid] = engine.get_state(pid)[1]
            assert cursor is None or not store.state_ids(1000, cursor)[0]
        else:
            engine.add_event_publisher(make_publisher(kind, params), name="crash", batch_size=BATCH)
            ids, cursor = store.persistence_ids(1000, None)
            for pid in ids:
                expected[pid] = store.highest_sequence_number(pid)
            assert cursor is None or not store.persistence_ids(1000, cursor)[0]
        wait_until(lambda: caught_up(engine, "crash"), timeout=120, what="the last publisher to catch up")
    finally:
        engine.stop()
        store.close()
    return expected, windows


def check_duplicates_in_windows(received: list[tuple[str, bytes]], windows: list[dict[int, int]], source: str = "events") -> int:
    """Each record delivered more than once was, at some kill, after the committed checkpoint
    of its shard by at most one batch: duplicates only from the unacknowledged window.
    `source`: the values are ``ego.v1.Event``s ("events") or ``ego.v1.DurableState``s
    ("states")."""
    seen: set[str] = set()
    duplicates = 0
    envelope = DurableState if source == "states" else Event
    for event_id, value in received:
        if event_id not in seen:
            seen.add(event_id)
            continue
        duplicates += 1
        e = envelope.FromString(value)
        assert any(w.get(e.shard, 0) < e.position <= w.get(e.shard, 0) + BATCH for w in windows), (
            f"{event_id} (shard {e.shard}, position {e.position}) was delivered twice but was never in an unacknowledged window: {windows}"
        )
    return duplicates


def check_duplicates_identical(received: list[tuple[str, bytes]]) -> int:
    """Each record delivered more than once carries the same event id and the same bytes."""
    first: dict[str, bytes] = {}
    duplicates = 0
    for event_id, value in received:
        if event_id in first:
            duplicates += 1
            assert first[event_id] == value, f"{event_id} delivered twice with different payloads"
        else:
            first[event_id] = value
    return duplicates
