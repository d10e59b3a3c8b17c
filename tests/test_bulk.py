"""Bulk commands (`send_commands`, `send_commands_async`): outcomes in the order of the pairs;
per entity the commands run in order, one at a time; a rejected or failed command fills only
its own slot; bad pairs get typed errors without stopping the rest; timeouts; empty and very
large lists."""

from __future__ import annotations

import asyncio
import collections
import threading
from pathlib import Path
from typing import Any

import pytest

import ego
from ego import errors

from bank_pb2 import Account, Credit, Debit, OpenAccount
from domain import AccountBehavior, InsufficientFunds
from egotest.messages_pb2 import Counter, Note

WAIT = 30.0  # seconds: an upper bound for things that happen at once, never expected


def opened(engine: ego.Engine, ids: list[str]) -> None:
    engine.register_entity_type(AccountBehavior)
    for outcome in engine.send_commands([(i, OpenAccount(initial_balance=0)) for i in ids]):
        assert isinstance(outcome, tuple), outcome


def test_outcomes_come_in_the_order_of_the_pairs_and_each_entity_runs_in_order(make_store: Any) -> None:
    with ego.Engine("bulk-order", store=make_store()) as engine:
        ids = ["a", "b", "c"]
        opened(engine, ids)
        # Interleaved: a debit only succeeds if the credits before it (same entity) ran first.
        pairs: list[tuple[str, Any]] = []
        for k in range(1, 21):
            for i in ids:
                pairs.append((i, Credit(amount=k)))
        pairs += [(i, Debit(amount=210)) for i in ids]
        outcomes = engine.send_commands(pairs)
        assert len(outcomes) == len(pairs)
        for n, (pair, outcome) in enumerate(zip(pairs, outcomes, strict=True)):
            assert isinstance(outcome, tuple), (n, outcome)
            state, revision = outcome
            assert isinstance(state, Account)
            k = n // 3 + 1  # the k-th command of its entity after the opening
            assert revision == k + 1
            assert state.account_id == pair[0]
            assert state.balance == (k * (k + 1) // 2 if k <= 20 else 0)
        for i in ids:
            assert engine.get_state(i)[1] == 22


def test_a_rejected_command_in_the_middle_fills_only_its_slot(make_store: Any) -> None:
    with ego.Engine("bulk-reject", store=make_store()) as engine:
        opened(engine, ["a", "b"])
        pairs = [
            ("a", Credit(amount=5)),
            ("b", Credit(amount=1)),
            ("a", Debit(amount=100)),
            ("b", Credit(amount=1)),
            ("a", Credit(amount=1)),
        ]
        outcomes = engine.send_commands(pairs)
        assert isinstance(outcomes[2], InsufficientFunds)
        assert [o[1] for n, o in enumerate(outcomes) if n != 2] == [2, 2, 3, 3]  # type: ignore[index]
        assert outcomes[4][0].balance == 6  # type: ignore[index]

        with pytest.raises(InsufficientFunds):
            engine.send_commands(pairs, return_exceptions=False)
        # Every command still ran (the exception is raised once all have their outcome).
        assert engine.get_state("a")[0].balance == 12
        assert engine.get_state("b")[0].balance == 4


def test_bad_pairs_get_typed_errors_and_the_rest_runs(engine: ego.Engine) -> None:
    opened(engine, ["a"])
    pairs: list[Any] = [
        ("a", Credit(amount=1)),
        42,
        ("a",),
        (7, Credit(amount=1)),
        ("a", "not a message"),
        ("", Credit(amount=1)),
        ("nobody-\x00", Credit(amount=1)),
        ["a", Credit(amount=1)],
        ("a", Credit(amount=1), "key", "extra"),
        ("a", Credit(amount=1), 5),
        ("a", Credit(amount=1), ""),
    ]
    outcomes = engine.send_commands(pairs)
    assert outcomes[0][1] == 2  # type: ignore[index]
    assert isinstance(outcomes[1], errors.ValidationError) and "pair" in str(outcomes[1])
    assert isinstance(outcomes[2], errors.ValidationError)
    assert isinstance(outcomes[3], errors.InvalidEntityIdError)
    assert isinstance(outcomes[4], errors.InvalidMessageError)
    assert isinstance(outcomes[5], errors.InvalidEntityIdError)
    assert isinstance(outcomes[6], errors.InvalidEntityIdError)
    assert outcomes[7][1] == 3  # type: ignore[index]
    assert isinstance(outcomes[8], errors.ValidationError)
    assert isinstance(outcomes[9], errors.ValidationError) and "key" in str(outcomes[9])
    assert isinstance(outcomes[10], errors.ValidationError)
    assert engine.get_state("a")[0].balance == 2
    with pytest.raises(errors.ValidationError, match="iterable"):
        engine.send_commands(42)  # type: ignore[arg-type]


def test_triples_carry_idempotency_keys(make_store: Any) -> None:
    with ego.Engine("bulk-keys", store=make_store()) as engine:
        opened(engine, ["a", "b"])
        first = engine.send_commands([("a", Credit(amount=5), "k-1"), ("b", Credit(amount=1)), ("a", Credit(amount=5), None)])
        assert [o[1] for o in first] == [2, 2, 3]  # type: ignore[index]
        # Sent again under the same keys (as after a lost reply): applied once.
        again = engine.send_commands(
            [("a", Credit(amount=5), "k-1"), ["a", Credit(amount=5), "k-1"], ("b", Credit(amount=2), "k-2")]
        )
        assert [o[1] for o in again] == [2, 2, 3]  # type: ignore[index]
        assert engine.get_state("a") == (Account(account_id="a", balance=10, open=True), 3)
        reused = engine.send_commands([("a", Credit(amount=6), "k-1")])
        assert isinstance(reused[0], errors.IdempotencyKeyReusedError) and reused[0].idempotency_key == "k-1"

        async def in_a_loop() -> list[Any]:
            return await engine.send_commands_async([("b", Credit(amount=2), "k-2"), ("b", Credit(amount=3), "k-3")])

        assert [o[1] for o in asyncio.run(in_a_loop())] == [3, 4]  # type: ignore[index]
        assert engine.get_state("b")[0].balance == 6


def test_an_unknown_entity_fills_its_slot_with_entity_not_found(engine: ego.Engine) -> None:
    # No registered type: nothing activates.
    outcomes = engine.send_commands([("ghost", Credit(amount=1))])
    assert isinstance(outcomes[0], errors.EntityNotFoundError)


def test_empty_lists() -> None:
    with ego.Engine("bulk-empty") as engine:
        assert engine.send_commands([]) == []
        assert engine.send_commands(iter(())) == []

        async def run() -> list[Any]:
            return await engine.send_commands_async([])

        assert asyncio.run(run()) == []


def test_a_stopped_engine_refuses_the_call() -> None:
    engine = ego.Engine("bulk-stopped")
    with pytest.raises(errors.EngineClosedError):
        engine.send_commands([("a", Credit(amount=1))])

    async def run() -> None:
        await engine.send_commands_async([("a", Credit(amount=1))])

    with pytest.raises(errors.EngineClosedError):
        asyncio.run(run())


def test_a_very_large_list(make_store: Any) -> None:
    with ego.Engine("bulk-large", store=make_store()) as engine:
        ids = [f"acc-{i}" for i in range(1000)]
        opened(engine, ids)
        credit = Credit(amount=1)
        pairs = [(i, credit) for _ in range(100) for i in ids]
        outcomes = engine.send_commands(pairs)
        assert len(outcomes) == 100_000
        assert all(isinstance(o, tuple) for o in outcomes)
        assert [o[1] for o in outcomes[-1000:]] == [101] * 1000  # type: ignore[index]

        async def run() -> list[Any]:
            return await engine.send_commands_async(pairs)

        outcomes = asyncio.run(run())
        assert len(outcomes) == 100_000
        assert [o[1] for o in outcomes[:1000]] == [102] * 1000  # type: ignore[index]
        assert engine.get_state("acc-999") == (outcomes[-1][0], 201)  # type: ignore[index]


def test_async_bulk_matches_sync(make_store: Any) -> None:
    with ego.Engine("bulk-async", store=make_store()) as engine:
        opened(engine, ["a", "b"])

        async def run() -> list[Any]:
            first = engine.send_commands_async([("a", Credit(amount=1)), ("a", Debit(amount=50)), ("b", Credit(amount=2))])
            second = engine.send_commands_async([("a", Credit(amount=3)), ("b", Credit(amount=4))])
            return list(await asyncio.gather(first, second))

        first, second = asyncio.run(run())
        assert first[0][1] == 2 and isinstance(first[1], InsufficientFunds) and first[2][1] == 2
        assert [(o[0].balance, o[1]) for o in second] == [(4, 3), (6, 3)]

        async def failing() -> None:
            await engine.send_commands_async([("a", Debit(amount=500))], return_exceptions=False)

        with pytest.raises(InsufficientFunds):
            asyncio.run(failing())


class FailingFor:
    """An events store (in memory) whose writes of one entity fail after its first event."""

    def __init__(self, bad: str) -> None:
        self._store = ego.MemoryStore()
        self.bad = bad
        #: Per entity, the number of its events in each write (successful or not).
        self.writes: dict[str, list[int]] = {}

    def write_events(self, events: Any) -> None:
        for pid, n in collections.Counter(e.persistence_id for e in events).items():
            self.writes.setdefault(pid, []).append(n)
        if any(e.persistence_id == self.bad and e.sequence_number > 1 for e in events):
            raise OSError("disk unplugged")
        self._store.write_events(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_failed_write_fails_exactly_its_commands() -> None:
    store = FailingFor("bad")
    with ego.Engine("bulk-fail", events_store=store) as engine:
        engine.register_entity_type(AccountBehavior)
        pairs: list[tuple[str, Any]] = []
        for _ in range(3):
            pairs += [("good-1", Credit(amount=1)), ("bad", Credit(amount=1)), ("good-2", Credit(amount=1))]
        opens = engine.send_commands([(i, OpenAccount(initial_balance=0)) for i in ("good-1", "bad", "good-2")])
        assert all(isinstance(o, tuple) for o in opens)
        # An entity's commands of one call are one write: "bad"'s three credits fail together,
        # the others' are written.
        outcomes = engine.send_commands(pairs)
        for n, outcome in enumerate(outcomes):
            if pairs[n][0] == "bad":
                assert isinstance(outcome, errors.StoreError), outcome
            else:
                assert isinstance(outcome, tuple), outcome
        assert engine.get_state("good-1") == (outcomes[-3][0], 4)  # type: ignore[index]
        assert store.writes["bad"] == [1, 3]
        assert store.writes["good-1"] == [1, 3]
        assert engine.get_state("good-2")[1] == 4
        assert engine.get_state("bad")[1] == 1


class Gated(ego.EventSourcedBehavior[Note, Note, Counter]):
    """`Note(text="slow")` blocks in the handler until the test opens the gate."""

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


def test_a_timeout_reports_started_and_unstarted_commands_and_drops_the_unstarted(tmp_path: Path) -> None:
    Gated.entered, Gated.gate = threading.Event(), threading.Event()
    with ego.Engine("bulk-timeout") as engine:
        engine.register_entity_type(Gated, inline=False)
        assert engine.send_commands([("g", Note(n=0))])[0][1] == 1  # type: ignore[index]
        try:
            outcomes = engine.send_commands([("fast", Note(n=1)), ("g", Note(text="slow")), ("g", Note(n=2))], timeout=0.5)
        finally:
            Gated.gate.set()
        # The fast entity's command may or may not have finished within the timeout.
        assert isinstance(outcomes[0], (tuple, errors.CommandTimeoutError))
        assert isinstance(outcomes[1], errors.CommandTimeoutError) and outcomes[1].started
        assert isinstance(outcomes[2], errors.CommandTimeoutError) and not outcomes[2].started
        # The slow command completes; the one behind it never runs (its caller gave up).
        state, revision = engine.get_state("g", timeout=WAIT)
        assert (state.value, revision) == (2, 2)
