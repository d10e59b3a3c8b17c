"""Real data for the command-line and migration tests: the demo's bank accounts written by an
engine (with snapshots, retention on some accounts, a projection's offsets), plus durable-state
accounts, so every kind of record a store holds is there."""

from __future__ import annotations

import random
import time
from typing import Any

from google.protobuf.message import Message

import ego

from bank_pb2 import Account, AccountOpened, Credit, Debit, OpenAccount
from domain import AccountBehavior, InsufficientFunds


class DurableAccount(ego.DurableStateBehavior[Message, Account]):
    """A bank account kept as a durable state (no events)."""

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id

    def id(self) -> str:
        return self.account_id

    def initial_state(self) -> Account:
        return Account(account_id=self.account_id)

    def handle_command(self, command: Message, state: Account) -> Account:
        if isinstance(command, OpenAccount):
            return Account(account_id=self.account_id, balance=command.initial_balance, open=True)
        if isinstance(command, Credit):
            return Account(account_id=self.account_id, balance=state.balance + command.amount, open=True)
        raise TypeError(type(command).__name__)


def fill(store: Any, *, accounts: int = 20, commands: int = 200, durable: int = 5, seed: int = 7) -> dict[str, int]:
    """Writes bank data into ``store`` with an engine; returns every account's balance.

    Accounts ``account-*`` snapshot every 5 events; ``retained-*`` also delete the events a
    snapshot covers (their streams start after 1). A projection ``balances`` handles every
    event and one ``late`` is paused halfway, so offsets differ. ``durable-*`` are durable
    states.
    """
    rng = random.Random(seed)
    balances: dict[str, int] = {}
    with ego.Engine("fill", store=store) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-", snapshot_interval=5)
        engine.register_entity_type(
            AccountBehavior,
            prefix="retained-",
            snapshot_interval=4,
            retention=ego.RetentionPolicy(delete_events_on_snapshot=True, ignore_projections=True),
        )
        engine.add_projection("balances", lambda events: None, poll_interval=0.05)
        ids = [f"account-{i:03d}" for i in range(accounts)] + [f"retained-{i:02d}" for i in range(max(1, accounts // 5))]
        for pid in ids:
            engine.send_command(pid, OpenAccount(initial_balance=100))
            balances[pid] = 100
        for n in range(commands):
            pid = rng.choice(ids)
            amount = rng.randint(1, 60)
            if n % 3 == 0:
                try:
                    engine.send_command(pid, Debit(amount=amount))
                    balances[pid] -= amount
                except InsufficientFunds:
                    pass
            else:
                engine.send_command(pid, Credit(amount=amount))
                balances[pid] += amount
        for i in range(durable):
            pid = f"durable-{i}"
            engine.durable_state_entity(DurableAccount(pid))
            engine.send_command(pid, OpenAccount(initial_balance=10 * i))
            engine.send_command(pid, Credit(amount=5))
            balances[pid] = 10 * i + 5
        # Give the projection time to handle what was written (its offsets are part of what a
        # migration copies). Not an assertion: with retention deleting covered events
        # (ignore_projections=True) its lag need not reach 0, and the tests do not need it to.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sum(lag.events_behind for lag in engine.projection_lag("balances").values()) == 0:
                break
            time.sleep(0.02)  # a poll's step, bounded by the deadline
    # A projection that lags: it has handled only the first events of each shard.
    if hasattr(store, "write_offsets"):
        store.write_offsets("late", [(shard, max(0, head // 2)) for shard, head, _ in store.shard_heads()])
    return balances


def recovered(store: Any, balances: dict[str, int]) -> dict[str, int]:
    """Every account's balance as an engine on ``store`` recovers it."""
    found: dict[str, int] = {}
    with ego.Engine("check", store=store) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.register_entity_type(AccountBehavior, prefix="retained-")
        for pid in balances:
            if pid.startswith("durable-"):
                state, _ = engine.durable_state_entity(DurableAccount(pid))
            else:
                state, _ = engine.get_state(pid)
            found[pid] = state.balance
    return found


__all__ = ["AccountOpened", "DurableAccount", "fill", "recovered"]
