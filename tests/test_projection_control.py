"""A running projection's offsets moved by the operator (engine.set_projection_offset), and
pause / resume."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from waiting import wait_until

import ego

from bank_pb2 import Credit, OpenAccount
from domain import AccountBehavior


class Poison(Exception):
    pass


def test_skip_an_event_the_handler_cannot_handle(store_kind: str, make_store: Callable[[], ego.stores.NativeStore]) -> None:
    """The handler fails on one event (policy: fail); moving the offset past it lets the
    projection go on with the next one."""
    handled: list[tuple[str, int]] = []
    lock = threading.Lock()

    def handler(events: list[ego.PersistedEvent]) -> None:
        for e in events:
            if e.persistence_id == "account-bad" and e.sequence_number == 2:
                raise Poison("cannot handle this one")
            with lock:
                handled.append((e.persistence_id, e.sequence_number))

    with ego.Engine("ctl", store=make_store(), shards=1) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.send_command("account-ok", OpenAccount(initial_balance=1))
        engine.send_command("account-bad", OpenAccount(initial_balance=1))
        engine.send_command("account-bad", Credit(amount=1))
        engine.send_command("account-ok", Credit(amount=1))
        engine.add_projection("p", handler, batch_size=1, poll_interval=0.02)
        wait_until(lambda: engine.projection_status("p")[0] == "failed")
        assert handled == [("account-ok", 1), ("account-bad", 1)]
        bad = engine.projection_lag("p")[0].offset + 1  # the position of the event it failed on
        engine.set_projection_offset("p", 0, bad)
        wait_until(lambda: len(handled) == 3)
        assert handled[-1] == ("account-ok", 2)
        assert engine.projection_status("p") == ("running", None)
        # Back to an earlier point: the events after it are handed again (not the poison one:
        # replay from after it).
        engine.set_projection_offset("p", 0, bad)
        with pytest.raises(ego.errors.ValidationError, match="beyond the head"):
            engine.set_projection_offset("p", 0, 10**6)
        with pytest.raises(ego.errors.ValidationError, match="no projection"):
            engine.set_projection_offset("nope", 0, 0)
        with pytest.raises(ego.errors.ValidationError, match="shard 1 does not exist"):
            engine.set_projection_offset("p", 1, 0)
        with pytest.raises(ego.errors.ValidationError):
            engine.set_projection_offset("p", -1, 0)
        wait_until(lambda: len(handled) == 4)
        assert handled[-1] == ("account-ok", 2)


def test_pause_and_resume(store_kind: str, make_store: Callable[[], ego.stores.NativeStore]) -> None:
    seen: list[int] = []
    with ego.Engine("ctl", store=make_store(), shards=2) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.add_projection("p", lambda events: seen.extend(e.sequence_number for e in events), poll_interval=0.02)
        engine.send_command("account-1", OpenAccount(initial_balance=1))
        wait_until(lambda: len(seen) == 1)
        engine.pause_projection("p")
        engine.pause_projection("p")  # idempotent
        assert engine.projection_status("p") == ("paused", None)
        assert not engine.is_projection_running("p")
        for _ in range(3):
            engine.send_command("account-1", Credit(amount=1))
        lag = engine.projection_lag("p")
        assert sum(s.events_behind for s in lag.values()) == 3
        assert len(seen) == 1
        # Moving the offset of a paused projection keeps it paused.
        engine.set_projection_offset("p", ego._ego.shard_of("account-1", 2), 2)
        assert engine.projection_status("p")[0] == "paused"
        engine.resume_projection("p")
        engine.resume_projection("p")  # a running one is left alone
        wait_until(lambda: len(seen) == 3)
        assert seen == [1, 3, 4]
        assert engine.projection_status("p") == ("running", None)
        with pytest.raises(ego.errors.ValidationError):
            engine.pause_projection("nope")
