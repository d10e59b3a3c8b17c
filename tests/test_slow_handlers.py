"""Slow handlers and asyncio replies: a handler that blocks (releasing the GIL) holds up
neither other entities' queued work nor ``stop(timeout)``; every caller learns the truth;
asyncio replies keep memory bounded and survive a failed loop wake-up."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from pathlib import Path

import pytest

import ego

from egotest.messages_pb2 import Counter, Note

WAIT = 30.0  # seconds: an upper bound for things that happen at once, never expected


class Gated(ego.EventSourcedBehavior[Note, Note, Counter]):
    """`Note(text="slow")` blocks in the handler until the test opens the gate; any other note
    is handled at once. Each note becomes one event."""

    entered = threading.Event()
    gate = threading.Event()

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Counter:
        return Counter()

    def handle_command(self, command: Note, state: Counter) -> list[Note]:
        if command.text == "slow":
            Gated.entered.set()
            assert Gated.gate.wait(WAIT), "the test never opened the gate"
        return [Note(n=command.n)]

    def handle_event(self, event: Note, state: Counter) -> Counter:
        state.value += 1
        return state


@pytest.fixture(autouse=True)
def fresh_gate() -> None:
    Gated.entered = threading.Event()
    Gated.gate = threading.Event()


def test_a_slow_handler_does_not_hold_up_other_entities() -> None:
    with ego.Engine("slow-others") as engine, concurrent.futures.ThreadPoolExecutor(4) as pool:
        engine.register_entity_type(Gated, inline=False)
        slow = pool.submit(engine.send_command, "slow-1", Note(text="slow"))
        assert Gated.entered.wait(WAIT)
        try:
            # The only bridge thread that ran so far is stuck in the handler: these queued
            # commands must be run by another one, while the gate is still closed.
            for i in range(20):
                state, revision = engine.send_command(f"fast-{i}", Note(n=i), timeout=WAIT)
                assert (state.value, revision) == (1, 1)
            assert not slow.done()
        finally:
            Gated.gate.set()
        assert slow.result(WAIT)[1] == 1


def test_one_bridge_thread_runs_everything_in_order() -> None:
    # bridge_threads=1 is the old single-thread bridge: still correct, just not isolated.
    with ego.Engine("one-bridge", bridge_threads=1) as engine:
        engine.register_entity_type(Gated, inline=False)
        for i in range(50):
            assert engine.send_command(f"e-{i % 5}", Note(n=i))[1] == i // 5 + 1


def test_bridge_threads_must_be_positive() -> None:
    with pytest.raises(ego.errors.ConfigurationError, match="bridge_threads"):
        ego.Engine("no-bridge", bridge_threads=0)


async def test_stop_returns_by_its_timeout_and_every_caller_learns_the_truth(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    store = ego.RocksDBStore(tmp_path / "db")
    engine = ego.Engine("slow-stop", store=store)
    engine.start()
    engine.register_entity_type(Gated, inline=False)
    slow = engine.send_command_async("slow-1", Note(text="slow", n=1))
    assert await loop.run_in_executor(None, Gated.entered.wait, WAIT)
    # Queued behind the slow command in the entity's mailbox; it never starts.
    behind = engine.send_command_async("slow-1", Note(n=2))
    # stop() must return while the handler is still blocked (the gate is closed): if it
    # waited for the handler, this would time out.
    await asyncio.wait_for(loop.run_in_executor(None, engine.stop, 0.2), WAIT)
    assert not slow.done()
    with pytest.raises(ego.errors.EngineClosedError):
        await asyncio.wait_for(behind, WAIT)
    Gated.gate.set()
    # The running command finishes in the background; its caller gets its real outcome.
    state, revision = await asyncio.wait_for(slow, WAIT)
    assert (state.value, revision) == (1, 1)
    store.close()
    with ego.RocksDBStore(tmp_path / "db") as reopened:
        assert [e.sequence_number for e in reopened.replay_events("slow-1")] == [1]


async def test_a_blocking_handler_with_inline_off_does_not_block_the_event_loop() -> None:
    with ego.Engine("slow-async") as engine:
        engine.register_entity_type(Gated, inline=False)
        future = engine.send_command_async("slow-1", Note(text="slow"))
        # The call returned a pending future: the handler runs on a bridge thread.
        entered = await asyncio.get_running_loop().run_in_executor(None, Gated.entered.wait, WAIT)
        assert entered and not future.done()
        Gated.gate.set()
        _, revision = await asyncio.wait_for(future, WAIT)
        assert revision == 1


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_awaiting_completed_commands_back_to_back_keeps_memory_bounded() -> None:
    with ego.Engine("replies") as engine:
        engine.register_entity_type(Gated)
        await engine.send_command_async("r-1", Note(n=1))
        for _ in range(20_000):  # warm-up
            await engine.get_state_async("r-1")
        before = rss_bytes()
        # Each read completes inline, so the loop never gets a turn in between.
        for _ in range(300_000):
            state, revision = await engine.get_state_async("r-1")
        grown = rss_bytes() - before
        assert revision == 1 and state.value == 1
        # Holding each settled future until the loop ran cost about 1 KiB per read.
        assert grown < 64 << 20, f"memory grew by {grown >> 20} MiB over 300,000 completed reads"


async def test_a_failed_wake_up_does_not_stop_later_replies() -> None:
    from ego import _runtime
    from ego._ego import LoopDrain

    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    broken = 900  # the waker writes here; nothing is open there yet, so the first write fails
    with pytest.raises(OSError):
        os.fstat(broken)
    drain = LoopDrain(read_fd, broken)
    _runtime._wakers[loop] = drain
    loop.add_reader(read_fd, drain)
    try:
        with ego.Engine("wake") as engine:
            engine.register_entity_type(Gated, inline=False)
            first = engine.send_command_async("w-1", Note(n=1))
            # Blocks this thread (not the loop's work): when it returns, the first reply was
            # queued and its wake-up write failed.
            assert engine.get_state("w-1")[1] == 1
            assert not first.done()
            os.dup2(write_fd, broken)
            second = engine.send_command_async("w-1", Note(n=2))
            assert (await asyncio.wait_for(second, WAIT))[1] == 2
            assert (await asyncio.wait_for(first, WAIT))[1] == 1
    finally:
        loop.remove_reader(read_fd)
        del _runtime._wakers[loop]
        for fd in (read_fd, write_fd, broken):
            with contextlib.suppress(OSError):
                os.close(fd)
