"""Event batching (batch_threshold / batch_flush_window): the Go library's semantics, with a
failed batch failing exactly its commands and the entity recovering."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from test_bad_input import Configurable
from test_blocking import Slow

import ego
from ego import errors

from bank_pb2 import Credit, Debit, OpenAccount
from domain import AccountBehavior, InsufficientFunds
from egotest.messages_pb2 import Note


def gather(engine: ego.Engine, entity_id: str, commands: list) -> list:  # type: ignore[type-arg]
    """Sends all `commands` at once through the asyncio API; results or exceptions, in order."""

    async def main() -> list:  # type: ignore[type-arg]
        futures = [engine.send_command_async(entity_id, c) for c in commands]
        return await asyncio.gather(*futures, return_exceptions=True)

    return asyncio.run(main())


def test_threshold_zero_writes_every_command(engine: ego.Engine) -> None:
    engine.entity(AccountBehavior("a"))
    engine.send_command("a", OpenAccount(initial_balance=0))
    before = engine.stats()["writes"]
    results = gather(engine, "a", [Credit(amount=1)] * 10)
    assert [r[1] for r in results] == list(range(2, 12))
    assert engine.stats()["writes"] - before == 10


def test_replies_in_order_and_each_command_sees_the_pending_state(engine: ego.Engine) -> None:
    engine.entity(AccountBehavior("a"), batch_threshold=5, batch_flush_window=5.0)
    engine.send_command("a", OpenAccount(initial_balance=0))
    before = engine.stats()["writes"]
    results = gather(
        engine,
        "a",
        [
            Credit(amount=10),
            Debit(amount=6),
            Debit(amount=4),
            Debit(amount=1),
            Credit(amount=3),
            Credit(amount=1),
            Credit(amount=1),
        ],
    )
    # The third debit is rejected against the pending (unwritten) balance of 0.
    assert isinstance(results[3], InsufficientFunds)
    assert [(r[0].balance, r[1]) if isinstance(r, tuple) else "rejected" for r in results] == [
        (10, 2),
        (4, 3),
        (0, 4),
        "rejected",
        (3, 5),
        (4, 6),
        (5, 7),
    ]
    # Five events reached the threshold: one write, and the last command's event waits in the
    # next batch... until the window; here every future resolved, so a second write happened.
    assert engine.stats()["writes"] - before == 2
    assert engine.get_state("a")[1] == 7


def test_a_single_command_is_written_when_the_window_expires(engine: ego.Engine) -> None:
    engine.entity(AccountBehavior("a"), batch_threshold=100, batch_flush_window=0.2)
    engine.send_command("a", OpenAccount(initial_balance=0))
    started = time.perf_counter()
    state, revision = engine.send_command("a", Credit(amount=5))
    waited = time.perf_counter() - started
    assert (state.balance, revision) == (5, 2)
    assert waited >= 0.15, "the partial batch was written before its window expired"
    (store,) = engine.stores
    assert store.highest_sequence_number("a") == 2


def test_commands_arriving_during_a_write_are_stashed_then_processed(tmp_path: Path) -> None:
    with ego.RocksDBStore(tmp_path / "db") as store, ego.Engine(store=store) as engine:
        engine.entity(AccountBehavior("a"), batch_threshold=2, batch_flush_window=5.0)
        engine.send_command("a", OpenAccount(initial_balance=0))
        before = engine.stats()["writes"]
        results = gather(engine, "a", [Credit(amount=i) for i in range(1, 7)])
        assert [(r[0].balance, r[1]) for r in results] == [(1, 2), (3, 3), (6, 4), (10, 5), (15, 6), (21, 7)]
        assert engine.stats()["writes"] - before == 3
        assert [e.sequence_number for e in store.replay_events("a")] == list(range(1, 8))


def test_a_failed_batch_write_fails_exactly_its_commands_and_the_entity_recovers(tmp_path: Path) -> None:
    # The store refuses events over 1,000 bytes; the engine would accept them: the whole batch
    # write fails in the store.
    with ego.RocksDBStore(tmp_path / "db", max_event_bytes=1000) as store, ego.Engine(store=store) as engine:
        engine.entity(Configurable("c"), batch_threshold=3, batch_flush_window=5.0)
        engine.send_command("c", Note(text="ok"))
        results = gather(engine, "c", [Note(text="ok"), Note(text="big", n=2000), Note(text="ok")])
        assert all(isinstance(r, errors.MessageTooLargeError) for r in results), results
        assert engine.stats()["write_failures"] == 1
        # Nothing of the batch was kept, in the store or in memory.
        assert store.highest_sequence_number("c") == 1
        assert engine.get_state("c")[1] == 1
        # The entity serves again.
        results = gather(engine, "c", [Note(text="ok")] * 3)
        assert [r[1] for r in results] == [2, 3, 4]
        assert engine.get_state("c")[0].balance == 4


def test_a_concurrent_writer_fails_the_batch_and_the_entity_reloads(engine: ego.Engine) -> None:
    engine.entity(AccountBehavior("a"), batch_threshold=2, batch_flush_window=5.0)
    engine.send_command("a", OpenAccount(initial_balance=0))
    (store,) = engine.stores
    # Another process appends event 2 behind the entity's back.
    stolen = ego.v1.Event(persistence_id="a", sequence_number=2)
    from bank_pb2 import AccountCredited

    stolen.event.Pack(AccountCredited(amount=100))
    store.write_events([stolen])
    results = gather(engine, "a", [Credit(amount=1), Credit(amount=1)])
    assert all(isinstance(r, errors.ConcurrencyError) for r in results), results
    # Reloaded with the other writer's event; the next batch lands after it.
    results = gather(engine, "a", [Credit(amount=1), Credit(amount=1)])
    assert [(r[0].balance, r[1]) for r in results] == [(101, 3), (102, 4)]
    # Each reply kept the state of its own revision, although the behaviour updates in place.


def test_a_full_mailbox_refuses_the_command_with_a_typed_error(engine: ego.Engine) -> None:
    running = threading.Event()
    engine.entity(Slow("s", running), mailbox_capacity=3)
    busy = threading.Thread(target=engine.send_command, args=("s", Credit(amount=400)))
    busy.start()
    assert running.wait(30)  # the slow command runs; the next ones queue behind it

    async def main() -> list:  # type: ignore[type-arg]
        futures = [engine.send_command_async("s", Credit(amount=0)) for _ in range(5)]
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(main())
    busy.join()
    assert [type(r).__name__ for r in results] == ["tuple"] * 3 + ["MailboxFullError"] * 2
    assert "is full (3 commands waiting)" in str(results[3])
    # Nothing was dropped silently: the accepted three ran, in order.
    assert [r[1] for r in results[:3]] == [2, 3, 4]


@pytest.mark.parametrize("threshold", [0, 4])
def test_durable_state_batching_writes_the_latest_state(engine: ego.Engine, threshold: int) -> None:
    from test_durable_state import CounterBehavior

    from egotest.messages_pb2 import Counter, Increment

    engine.entity(CounterBehavior("c"), batch_threshold=threshold, batch_flush_window=5.0)
    results = gather(engine, "c", [Increment(by=1)] * 8)
    assert [r[1] for r in results] == list(range(1, 9))
    assert results[-1][0] == Counter(value=8)
    (store,) = engine.stores
    assert store.read_state("c").version_number == 8
