"""Blocking calls: timeouts, Ctrl-C, and the GIL released while waiting."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import ego
from ego import errors

from bank_pb2 import Account, AccountCredited, Credit

HERE = Path(__file__).resolve().parent


class Slow(ego.EventSourcedBehavior):
    """Sleeps `amount` milliseconds in handle_command (the GIL is released while it sleeps);
    sets `running` (if given) when a command starts."""

    def __init__(self, entity_id: str, running: threading.Event | None = None) -> None:
        self.entity_id = entity_id
        self.running = running

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Account:
        return Account(account_id=self.entity_id)

    def handle_command(self, command: Credit, state: Account) -> list[AccountCredited]:
        if self.running is not None:
            self.running.set()
        time.sleep(command.amount / 1000)  # the slow work itself
        return [AccountCredited(amount=1)]

    def handle_event(self, event: AccountCredited, state: Account) -> Account:
        state.balance += event.amount
        return state


def test_timeout_of_a_queued_command_says_it_did_not_start(engine: ego.Engine) -> None:
    running = threading.Event()
    engine.entity(Slow("slow", running))
    busy = threading.Thread(target=engine.send_command, args=("slow", Credit(amount=600)))
    busy.start()
    assert running.wait(30)  # the slow command is running; the next one queues
    with pytest.raises(errors.CommandTimeoutError) as info:
        engine.send_command("slow", Credit(amount=1), timeout=0.1)
    assert info.value.started is False
    assert isinstance(info.value, TimeoutError)
    busy.join()
    # The abandoned command never ran.
    assert engine.get_state("slow")[1] == 1


def test_a_handler_running_inline_is_not_interrupted_by_the_timeout(engine: ego.Engine) -> None:
    # The entity is idle: the caller runs the handler on its own thread (docs/guide.md,
    # "Timeouts"). The command ran and was written, so its outcome comes back, late.
    engine.entity(Slow("inline"))
    started = time.monotonic()
    state, revision = engine.send_command("inline", Credit(amount=300), timeout=0.05)
    assert time.monotonic() - started >= 0.3
    assert (state.balance, revision) == (1, 1)
    assert engine.get_state("inline")[1] == 1
    # With inline running off, the handler runs on a bridge thread: the timeout bounds the
    # wait, and the command, which started, still finishes.
    engine.entity(Slow("bridged"), inline=False)
    started = time.monotonic()
    with pytest.raises(errors.CommandTimeoutError) as info:
        engine.send_command("bridged", Credit(amount=1000), timeout=0.05)
    assert time.monotonic() - started < 0.9
    assert info.value.started is True
    assert engine.get_state("bridged")[1] == 1


def test_other_threads_run_while_a_caller_waits(engine: ego.Engine) -> None:
    running = threading.Event()
    engine.entity(Slow("slow", running))
    engine.entity(Slow("fast"))
    busy = threading.Thread(target=engine.send_command, args=("slow", Credit(amount=300)))
    busy.start()
    assert running.wait(30)
    waiter = threading.Thread(target=engine.send_command, args=("slow", Credit(amount=0)))
    waiter.start()
    started = time.perf_counter()
    engine.send_command("fast", Credit(amount=0))
    assert time.perf_counter() - started < 0.2
    busy.join()
    waiter.join()


def test_ctrl_c_interrupts_a_blocked_send_command() -> None:
    script = textwrap.dedent(
        f"""
        import os, sys, threading, time
        sys.path[:0] = [{str(HERE)!r}, {str(HERE.parent / "examples" / "bank")!r}]
        import ego
        from bank_pb2 import Credit
        from test_blocking import Slow
        engine = ego.Engine("ctrl-c")
        engine.start()
        running = threading.Event()
        engine.entity(Slow("slow", running))
        threading.Thread(target=engine.send_command, args=("slow", Credit(amount=5000)), daemon=True).start()
        assert running.wait(30)
        main = threading.main_thread().ident

        def announce():
            # WAITING once the main thread is inside the blocked send_command below.
            while sys._current_frames()[main].f_lineno != BLOCKED_LINE:
                time.sleep(0.005)
            print("WAITING", flush=True)

        BLOCKED_LINE = sys._getframe().f_lineno + 3
        threading.Thread(target=announce, daemon=True).start()
        try:
            engine.send_command("slow", Credit(amount=0))
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
            os._exit(3)  # not sys.exit: stopping the engine at exit would wait for the slow command
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "WAITING"
    started = time.perf_counter()
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=4)
    assert "INTERRUPTED" in out
    assert child.returncode == 3
    assert time.perf_counter() - started < 2.0
