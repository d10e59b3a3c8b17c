"""How tests wait: poll a condition until it holds or a deadline passes.

A test never sleeps to let something happen (a guess that is too short under load and wastes
time otherwise); it waits for the thing itself with :func:`wait_until`, or for an event or a
barrier the code under test sets.

    wait_until(lambda: engine.projection_lag("totals")[0].events_behind == 0, what="the projection")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds between two checks of the condition.
INTERVAL = 0.01


def wait_until(predicate: Callable[[], T], timeout: float = 30.0, what: str | Callable[[], object] = "the condition") -> T:
    """Calls ``predicate`` until it returns a true value, and returns that value; raises
    ``AssertionError`` naming ``what`` (a string, or a function called then for one) when
    ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(timeout, what))
        time.sleep(INTERVAL)


def _timed_out(timeout: float, what: str | Callable[[], object]) -> str:
    return f"timed out after {timeout} s waiting for {what if isinstance(what, str) else what()}"


async def wait_until_async(
    predicate: Callable[[], T], timeout: float = 30.0, what: str | Callable[[], object] = "the condition"
) -> T:
    """:func:`wait_until` for coroutines: the event loop runs between the checks."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timed_out(timeout, what))
        await asyncio.sleep(INTERVAL)


def clock_past(timestamp_ns: int, timeout: float = 30.0) -> None:
    """Waits until the wall clock (``time.time_ns()``, which event timestamps come from) is
    later than ``timestamp_ns``: how a test gets two distinct points in time."""
    wait_until(lambda: time.time_ns() > timestamp_ns, timeout, what=f"the clock to pass {timestamp_ns} ns")
