"""Idempotent commands: a command sent under a key is applied once; a repeat gets the original
revision and writes nothing, after restarts and passivation too; another command under a used
key is refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from waiting import wait_until

import ego

from bank_pb2 import Account, Credit, Debit, OpenAccount
from domain import AccountBehavior
from egotest.messages_pb2 import Tag

Factory = Callable[[], Any]


class Wallet(ego.DurableStateBehavior[Any, Account]):
    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Account:
        return Account(account_id=self.entity_id)

    def handle_command(self, command: Any, state: Account) -> Account:
        return Account(account_id=state.account_id, balance=state.balance + command.amount, open=True)


def start(store: Any, **options: Any) -> ego.Engine:
    engine = ego.Engine("idem", store=store)
    engine.start()
    engine.register_entity_type(AccountBehavior, prefix="account-", **options)
    engine.register_entity_type(
        Wallet, prefix="wallet-", **{k: v for k, v in options.items() if k not in ("snapshot_interval", "retention")}
    )
    return engine


def close(engine: ego.Engine, store: Any) -> None:
    engine.stop()
    if not isinstance(store, ego.MemoryStore):
        store.close()


def test_a_repeat_is_answered_with_the_original_revision_and_writes_nothing(reopenable: Factory) -> None:
    store = reopenable()
    engine = start(store)
    engine.send_command("account-1", OpenAccount(initial_balance=100), idempotency_key="open")
    state, revision = engine.send_command("account-1", Credit(amount=5), idempotency_key="credit-1")
    assert (state.balance, revision) == (105, 2)
    engine.send_command("account-1", Credit(amount=1))  # another command, no key
    state, repeat = engine.send_command("account-1", Credit(amount=5), idempotency_key="credit-1")
    assert repeat == 2 and state.balance == 106  # the original revision; the state as it is now
    assert len(store.replay_events("account-1")) == 3
    close(engine, store)

    # After a restart: the key is read back from the journal.
    store = reopenable()
    engine = start(store)
    assert engine.send_command("account-1", Credit(amount=5), idempotency_key="credit-1")[1] == 2
    assert engine.send_command("account-1", OpenAccount(initial_balance=100), idempotency_key="open")[1] == 1
    assert engine.get_state("account-1") == (Account(account_id="account-1", balance=106, open=True), 3)
    assert len(store.replay_events("account-1")) == 3
    close(engine, store)


def test_the_key_is_in_the_last_event_of_its_command(reopenable: Factory) -> None:
    store = reopenable()
    engine = start(store)
    engine.send_command("account-1", OpenAccount(initial_balance=100), idempotency_key="open")
    engine.send_command("account-1", Credit(amount=5), idempotency_key="credit-1", metadata={"correlation_id": "c"})
    engine.send_command("account-1", Credit(amount=1))
    seen: list[tuple[str | None, dict[str, str]]] = []
    engine.add_projection("keys", lambda events: seen.extend((e.idempotency_key, e.metadata) for e in events))
    engine.wait_for_projection("keys", timeout=30)
    # In the envelope's own fields, not in the caller's metadata.
    assert seen == [("open", {}), ("credit-1", {"correlation_id": "c"}), (None, {})]
    events = store.replay_events("account-1")
    assert [e.idempotency_key for e in events] == ["open", "credit-1", ""]
    assert events[0].command_hash != 0 and events[0].command_hash != events[1].command_hash
    close(engine, store)


def test_records_of_the_metadata_layout_are_still_read(reopenable: Factory) -> None:
    """Records written before the envelope had its idempotency fields carry the key in their
    metadata ("ego.idempotency_key", and "ego.command_hash" as 16 hex digits)."""
    source = ego.MemoryStore()
    engine = start(source)
    engine.send_command("account-1", OpenAccount(initial_balance=100), idempotency_key="open")
    engine.send_command("account-1", Credit(amount=5), idempotency_key="credit-1")
    engine.stop()
    old = []
    for e in source.replay_events("account-1"):
        e.metadata["ego.idempotency_key"] = e.idempotency_key
        e.metadata["ego.command_hash"] = f"{e.command_hash:016x}"
        e.ClearField("idempotency_key")
        e.ClearField("command_hash")
        e.position = 0
        old.append(e)
    store = reopenable()
    store.write_events(old)
    assert [e.idempotency_key for e in store.replay_events("account-1")] == ["", ""]
    engine = start(store)
    seen: list[str | None] = []
    engine.add_projection("keys", lambda events: seen.extend(e.idempotency_key for e in events))
    engine.wait_for_projection("keys", timeout=30)
    assert seen == ["open", "credit-1"]
    assert engine.send_command("account-1", Credit(amount=5), idempotency_key="credit-1") == (
        Account(account_id="account-1", balance=105, open=True),
        2,
    )
    with pytest.raises(ego.errors.IdempotencyKeyReusedError):
        engine.send_command("account-1", Credit(amount=5), idempotency_key="open")
    assert len(store.replay_events("account-1")) == 2
    close(engine, store)


def test_another_command_under_a_used_key_is_refused(reopenable: Factory) -> None:
    store = reopenable()
    engine = start(store)
    engine.send_command("account-1", OpenAccount(initial_balance=100), idempotency_key="k")
    with pytest.raises(ego.errors.IdempotencyKeyReusedError) as caught:
        engine.send_command("account-1", Credit(amount=5), idempotency_key="k")
    assert (caught.value.entity_id, caught.value.idempotency_key) == ("account-1", "k")
    with pytest.raises(ego.errors.IdempotencyKeyReusedError):
        engine.send_command("account-1", OpenAccount(initial_balance=99), idempotency_key="k")
    assert engine.get_state("account-1")[1] == 1
    # The same key on another entity is another key.
    assert engine.send_command("account-2", OpenAccount(initial_balance=1), idempotency_key="k")[1] == 1
    close(engine, store)


def test_keys_survive_snapshots_retention_and_passivation(reopenable: Factory) -> None:
    store = reopenable()
    retention = ego.RetentionPolicy(delete_events_on_snapshot=True)
    engine = start(store, snapshot_interval=3, retention=retention, passivate_after=0.05)
    engine.send_command("account-1", OpenAccount(initial_balance=0), idempotency_key="open")
    for i in range(10):
        engine.send_command("account-1", Credit(amount=1), idempotency_key=f"c{i}")
    # Passivated, then back: the keys come from the latest snapshot and the events after it.
    wait_until(lambda: not engine.is_live("account-1"), what="the entity to passivate")
    assert engine.send_command("account-1", Credit(amount=1), idempotency_key="c2")[1] == 4
    assert engine.send_command("account-1", Credit(amount=1), idempotency_key="c9")[1] == 11
    assert engine.send_command("account-1", OpenAccount(initial_balance=0), idempotency_key="open")[1] == 1
    assert engine.get_state("account-1")[1] == 11
    close(engine, store)
    store = reopenable()
    engine = start(store, snapshot_interval=3)
    assert engine.send_command("account-1", Credit(amount=1), idempotency_key="c0")[1] == 2
    assert engine.get_state("account-1") == (Account(account_id="account-1", balance=10, open=True), 11)
    close(engine, store)


def test_durable_state_entities(reopenable: Factory) -> None:
    store = reopenable()
    engine = start(store)
    assert engine.send_command("wallet-1", Credit(amount=5), idempotency_key="a")[1] == 1
    assert engine.send_command("wallet-1", Credit(amount=5), idempotency_key="a")[1] == 1
    assert engine.send_command("wallet-1", Credit(amount=7), idempotency_key="b")[0].balance == 12
    with pytest.raises(ego.errors.IdempotencyKeyReusedError):
        engine.send_command("wallet-1", Credit(amount=8), idempotency_key="b")
    close(engine, store)
    store = reopenable()
    engine = start(store)
    assert engine.send_command("wallet-1", Credit(amount=5), idempotency_key="a")[1] == 1
    assert engine.get_state("wallet-1") == (Account(account_id="wallet-1", balance=12, open=True), 2)
    close(engine, store)


@pytest.mark.parametrize("batch", [0, 8])
def test_repeats_sent_together_are_applied_once(batch: int) -> None:
    store = ego.MemoryStore()
    engine = start(store, batch_threshold=batch, batch_flush_window=0.01)
    engine.send_command("account-1", OpenAccount(initial_balance=0))

    async def burst() -> list[Any]:
        futures = [engine.send_command_async("account-1", Credit(amount=1), idempotency_key=f"k{i % 5}") for i in range(50)]
        return await asyncio.gather(*futures)

    outcomes = asyncio.run(burst())
    assert sorted({revision for _, revision in outcomes}) == [2, 3, 4, 5, 6]
    assert engine.get_state("account-1")[0].balance == 5
    assert len(store.replay_events("account-1")) == 6
    engine.stop()


def test_a_rejected_command_leaves_its_key_unused() -> None:
    engine = start(ego.MemoryStore())
    engine.send_command("account-1", OpenAccount(initial_balance=1))
    with pytest.raises(Exception, match="balance"):
        engine.send_command("account-1", Debit(amount=5), idempotency_key="d")
    engine.send_command("account-1", Credit(amount=10))
    assert engine.send_command("account-1", Debit(amount=5), idempotency_key="d")[0].balance == 6
    engine.stop()


def test_the_window_keeps_the_most_recent_keys() -> None:
    engine = start(ego.MemoryStore(), idempotency_window=2)
    engine.send_command("account-1", OpenAccount(initial_balance=0))
    for key in ("a", "b", "c"):
        engine.send_command("account-1", Credit(amount=1), idempotency_key=key)
    assert engine.send_command("account-1", Credit(amount=1), idempotency_key="c")[1] == 4
    # "a" left the window: a repeat of it is applied again (documented).
    assert engine.send_command("account-1", Credit(amount=1), idempotency_key="a")[1] == 5
    engine.stop()


def test_bad_keys_are_validation_errors() -> None:
    engine = start(ego.MemoryStore())
    for bad in ("", "x" * 256, "a\nb"):
        with pytest.raises(ego.errors.ValidationError):
            engine.send_command("account-1", OpenAccount(initial_balance=0), idempotency_key=bad)
    with pytest.raises(ego.errors.ConfigurationError):
        engine.register_entity_type(AccountBehavior, prefix="other-", idempotency_window=0)
    engine.stop()


def test_a_command_with_a_map_is_the_same_command_whatever_order_its_map_was_filled_in() -> None:
    # Given a command with a map field sent under a key
    keys = [f"label-{i}" for i in range(50)]
    first, again = Tag(amount=5), Tag(amount=5)
    for k in keys:
        first.labels[k] = k.upper()
    for k in reversed(keys):
        again.labels[k] = k.upper()
    # (protobuf writes these two equal messages' maps in different orders)
    assert first == again and first.SerializeToString() != again.SerializeToString()
    store = ego.MemoryStore()
    engine = start(store)
    assert engine.send_command("wallet-1", first, idempotency_key="tagged")[1] == 1
    # When the retry rebuilt the map in another order
    state, revision = engine.send_command("wallet-1", again, idempotency_key="tagged")
    # Then it is the same command: the original revision, nothing applied twice
    assert (state.balance, revision) == (5, 1)
    # And a different map under the same key is another command
    again.labels["label-0"] = "changed"
    with pytest.raises(ego.errors.IdempotencyKeyReusedError):
        engine.send_command("wallet-1", again, idempotency_key="tagged")
    close(engine, store)
