"""A private asyncio event loop on a thread of its own: for publishers built on asyncio
clients (nats-py, websockets), whose connection lives there between batches and whose
synchronous ``publish`` hands coroutines to it, and for the cluster client's dispatcher. Not
public API."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An event loop running forever on a daemon thread named `name`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs `coro` on the loop and waits for its result (its exception is raised here)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stops the loop, joins the thread and closes the loop (pending tasks are cancelled).
        Idempotent; a loop that already stopped running is closed too."""
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            if self.loop.is_running():
                self.run(cancel_all(), timeout=5)
        finally:
            # Queued even if run_forever has not started yet: it then stops at once.
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            if not self.loop.is_running():
                self.loop.close()
