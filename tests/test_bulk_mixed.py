"""Large mixed bulk calls (`send_commands`) against the same commands sent one at a time:
nothing a user can see differs (outcomes, order per entity, final states), with the event
stream and snapshots on, a write refused because another engine wrote, handlers that send
commands of their own to entities of the same call (before and after them in it), other
threads sending to the same entities meanwhile, and entities passivating between calls."""

from __future__ import annotations

import collections
import random
import threading
from typing import Any

import ego
from ego import errors

from bank_pb2 import Account, Credit, Debit, OpenAccount
from domain import AccountBehavior, AccountNotOpen
from egotest.messages_pb2 import Counter, Note

WAIT = 30.0  # seconds: an upper bound for things that happen at once, never expected


def described(outcome: Any) -> Any:
    """An outcome in a comparable form: (state fields, revision) or the exception's type."""
    if isinstance(outcome, tuple):
        state, revision = outcome
        return (state.account_id, state.balance, state.open, revision)
    return type(outcome).__name__


def mixed_pairs(seed: int, accounts: int = 300, n: int = 6000) -> list[Any]:
    """A call mixing opens (some twice), credits, debits that may bounce, accounts never
    opened, keyed triples (some repeated), invalid ids and bad items."""
    rng = random.Random(seed)
    ids = [f"acc-{i}" for i in range(accounts)]
    pairs: list[Any] = []
    for k in range(n):
        i = rng.choice(ids)
        roll = rng.random()
        if roll < 0.05:
            pairs.append((i, OpenAccount(initial_balance=rng.randrange(100))))
        elif roll < 0.55:
            pairs.append((i, Credit(amount=rng.randrange(1, 50))))
        elif roll < 0.85:
            pairs.append((i, Debit(amount=rng.randrange(1, 80))))
        elif roll < 0.95:
            pairs.append((i, Credit(amount=3), f"key-{rng.randrange(n // 4)}"))
        elif roll < 0.97:
            pairs.append(("", Credit(amount=1)))
        elif roll < 0.98:
            pairs.append((i,))
        else:
            pairs.append((f"never-{k}", Credit(amount=1)))
    return pairs


def one_by_one(engine: ego.Engine, pairs: list[Any]) -> list[Any]:
    """The reference: each pair sent on its own, in order."""
    out: list[Any] = []
    for pair in pairs:
        try:
            if not isinstance(pair, tuple) or len(pair) not in (2, 3):
                raise errors.ValidationError("a bulk item must be a pair")
            key = pair[2] if len(pair) == 3 else None
            out.append(engine.send_command(pair[0], pair[1], idempotency_key=key))
        except Exception as e:
            out.append(e)
    return out


def test_a_large_mixed_call_matches_the_same_commands_sent_one_by_one() -> None:
    for seed in range(3):
        pairs = mixed_pairs(seed)
        with ego.Engine("mixed-bulk") as bulk, ego.Engine("mixed-ref") as ref:
            bulk.register_entity_type(AccountBehavior)
            ref.register_entity_type(AccountBehavior)
            # Half the accounts are live before the call, the others activate during it.
            warm = [(f"acc-{i}", OpenAccount(initial_balance=10)) for i in range(0, 300, 2)]
            assert bulk.send_commands(warm) == one_by_one(ref, warm)
            got = bulk.send_commands(pairs)
            want = one_by_one(ref, pairs)
            assert [described(o) for o in got] == [described(o) for o in want], seed
            for i in range(300):
                assert bulk.get_state(f"acc-{i}") == ref.get_state(f"acc-{i}")
            # A second call on the entities the first one left live.
            again = mixed_pairs(seed + 100)
            assert [described(o) for o in bulk.send_commands(again)] == [described(o) for o in one_by_one(ref, again)]


def test_the_event_stream_and_snapshots_see_every_write_of_a_large_call() -> None:
    store = ego.MemoryStore()
    with ego.Engine("mixed-stream", store=store) as engine:
        engine.register_entity_type(AccountBehavior, snapshot_interval=4)
        ids = [f"s-{i}" for i in range(200)]
        engine.send_commands([(i, OpenAccount(initial_balance=0)) for i in ids])
        subscription = engine.subscribe()
        outcomes = engine.send_commands([(i, Credit(amount=k)) for k in range(1, 11) for i in ids])
        assert all(isinstance(o, tuple) for o in outcomes)
        seen: dict[str, list[int]] = {}
        for _ in range(2000):
            record = subscription.get(timeout=WAIT)
            assert record is not None
            seen.setdefault(record.persistence_id, []).append(record.sequence_number)
        assert seen == {i: list(range(2, 12)) for i in ids}
        for i in ids:
            assert engine.get_state(i) == (Account(account_id=i, balance=55, open=True), 11)
    # Snapshots were taken along the way (at revisions 4 and 8): a restart recovers from them.
    with ego.Engine("mixed-stream", store=store) as engine:
        engine.register_entity_type(AccountBehavior, snapshot_interval=4)
        assert engine.get_state("s-7") == (Account(account_id="s-7", balance=55, open=True), 11)
        assert engine.send_commands([("s-7", Credit(amount=1))])[0][1] == 12  # type: ignore[index]


def test_a_write_refused_because_another_engine_wrote_fails_exactly_that_entity() -> None:
    store = ego.MemoryStore()
    with ego.Engine("mixed-a", store=store) as a, ego.Engine("mixed-b", store=store) as b:
        a.register_entity_type(AccountBehavior)
        b.register_entity_type(AccountBehavior)
        ids = [f"r-{i}" for i in range(300)]
        a.send_commands([(i, OpenAccount(initial_balance=0)) for i in ids])
        # Another engine writes two of the accounts behind a's back.
        assert b.send_command("r-5", Credit(amount=100))[1] == 2
        assert b.send_command("r-250", Credit(amount=100))[1] == 2
        outcomes = a.send_commands([(i, Credit(amount=1)) for i in ids])
        for i, outcome in zip(ids, outcomes, strict=True):
            if i in ("r-5", "r-250"):
                assert isinstance(outcome, errors.ConcurrencyError), (i, outcome)
            else:
                assert isinstance(outcome, tuple) and outcome[1] == 2, (i, outcome)
        # The two reloaded: their next command sees b's write.
        again = a.send_commands([(i, Credit(amount=1)) for i in ids])
        assert again[5] == (Account(account_id="r-5", balance=101, open=True), 3)
        assert again[250] == (Account(account_id="r-250", balance=101, open=True), 3)
        assert again[6] == (Account(account_id="r-6", balance=2, open=True), 3)


ENGINE: list[ego.Engine] = []


class Relay(ego.EventSourcedBehavior[Note, Note, Counter]):
    """`Note(text="to:<id>")` sends `Note(n=1)` to entity `<id>` and waits for it before
    returning its own event."""

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Counter:
        return Counter()

    def handle_command(self, command: Note, state: Counter) -> list[Note]:
        if command.text.startswith("to:"):
            _, revision = ENGINE[0].send_command(command.text[3:], Note(n=1), timeout=WAIT)
            return [Note(n=revision)]
        return [Note(n=command.n)]

    def handle_event(self, event: Note, state: Counter) -> Counter:
        state.value += 1
        return state


def test_a_handler_may_send_to_entities_of_the_same_call_before_and_after_it() -> None:
    with ego.Engine("mixed-relay") as engine:
        ENGINE[:] = [engine]
        try:
            engine.register_entity_type(Relay)
            ids = [f"t-{i}" for i in range(400)]
            engine.send_commands([(i, Note(n=0)) for i in ids])
            # Relays to an entity already run in this call (its write may still be pending),
            # to the next one, and to one several chunks ahead.
            pairs: list[Any] = []
            for k, i in enumerate(ids):
                pairs.append((i, Note(n=1)))
                if k % 50 == 10:
                    pairs.append((f"relay-{k}-back", Note(text=f"to:{ids[k]}")))
                    pairs.append((f"relay-{k}-next", Note(text=f"to:{ids[k + 1]}")))
                    pairs.append((f"relay-{k}-far", Note(text=f"to:{ids[(k + 200) % 400]}")))
            outcomes = engine.send_commands(pairs, timeout=WAIT)
            assert all(isinstance(o, tuple) for o in outcomes), [o for o in outcomes if not isinstance(o, tuple)]
            relayed = collections.Counter(p[1].text[3:] for p in pairs if p[1].text)
            for i in ids:
                state, revision = engine.get_state(i)
                assert revision == 2 + relayed.get(i, 0) and state.value == revision, i
        finally:
            ENGINE.clear()


def test_other_threads_sending_meanwhile_keep_each_entity_in_order() -> None:
    with ego.Engine("mixed-threads") as engine:
        engine.register_entity_type(AccountBehavior, passivate_after=0.05)
        ids = [f"p-{i}" for i in range(300)]
        engine.send_commands([(i, OpenAccount(initial_balance=0)) for i in ids])
        stop = threading.Event()
        sent: dict[str, int] = {}
        failures: list[BaseException] = []

        def other() -> None:
            rng = random.Random(7)
            try:
                while not stop.is_set():
                    i = rng.choice(ids)
                    engine.send_command(i, Credit(amount=1000), timeout=WAIT)
                    sent[i] = sent.get(i, 0) + 1
            except BaseException as e:
                failures.append(e)

        thread = threading.Thread(target=other)
        thread.start()
        try:
            for _ in range(20):
                outcomes = engine.send_commands([(i, Credit(amount=1)) for i in ids] * 2)
                assert all(isinstance(o, tuple) for o in outcomes)
                # Within the call each entity's two commands ran in order; the other thread's
                # credits (1,000 each) may come between them.
                for k in range(len(ids)):
                    first, second = outcomes[k], outcomes[k + len(ids)]
                    between = second[1] - first[1] - 1  # type: ignore[index]
                    assert between >= 0 and second[0].balance - first[0].balance == 1 + 1000 * between  # type: ignore[index]
        finally:
            stop.set()
            thread.join(WAIT)
        assert not failures, failures
        for i in ids:
            state, revision = engine.get_state(i)
            assert state.balance == 40 + 1000 * sent.get(i, 0)
            assert revision == 1 + 40 + sent.get(i, 0)


def test_rejections_and_unopened_accounts_in_a_large_call() -> None:
    with ego.Engine("mixed-reject") as engine:
        engine.register_entity_type(AccountBehavior)
        ids = [f"q-{i}" for i in range(200)]
        engine.send_commands([(i, OpenAccount(initial_balance=5)) for i in ids[:100]])
        outcomes = engine.send_commands([(i, Debit(amount=3)) for i in ids] + [(i, Debit(amount=3)) for i in ids])
        for k, outcome in enumerate(outcomes):
            n = k % 200
            if n >= 100:
                assert isinstance(outcome, AccountNotOpen)
            elif k < 200:
                assert outcome == (Account(account_id=ids[n], balance=2, open=True), 2)
            else:
                assert type(outcome).__name__ == "InsufficientFunds"
