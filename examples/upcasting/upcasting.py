"""Evolving an event schema with an event adapter.

The first release of this application stored `MoneyDeposited(amount="12.50")`. The current
one only knows `Deposited(cents=1250, currency="EUR")`. An adapter upcasts the old events when
they are read back (recovery, projections), so the current code never sees them and the stored
history stays as it was written.

    python upcasting.py
"""

from __future__ import annotations

import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from wallet_pb2 import Deposit, Deposited, MoneyDeposited, Wallet

import ego


class MoneyDepositedToDeposited:
    """`MoneyDeposited` (v1) -> `Deposited` (v2); every other event passes unchanged."""

    def adapt(self, type_url: str, payload: bytes, sequence_number: int) -> Any:
        if type_url.endswith("/wallet.v1.MoneyDeposited"):
            old = MoneyDeposited.FromString(payload)
            return Deposited(cents=int(Decimal(old.amount) * 100), currency="EUR")
        return None


class WalletBehavior(ego.EventSourcedBehavior):
    """Today's behaviour: knows `Deposited` only."""

    def __init__(self, wallet_id: str) -> None:
        self.wallet_id = wallet_id

    def id(self) -> str:
        return self.wallet_id

    def initial_state(self) -> Wallet:
        return Wallet()

    def handle_command(self, command: Deposit, state: Wallet) -> list[Deposited]:
        return [Deposited(cents=command.cents, currency="EUR")]

    def handle_event(self, event: Deposited, state: Wallet) -> Wallet:
        return Wallet(cents=state.cents + event.cents, deposits=state.deposits + 1)


def write_history(store: ego.stores.NativeStore) -> None:
    """What release 1 left in the store."""
    events = []
    for seq, amount in enumerate(["12.50", "7.25"], start=1):
        e = ego.v1.Event(persistence_id="wallet-1", sequence_number=seq, timestamp=time.time_ns())
        e.event.Pack(MoneyDeposited(amount=amount))
        events.append(e)
    store.write_events(events)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, ego.RocksDBStore(Path(tmp) / "db") as store:
        write_history(store)
        seen: list[Any] = []
        with ego.Engine("wallets", store=store, event_adapters=[MoneyDepositedToDeposited()]) as engine:
            engine.register_entity_type(WalletBehavior, prefix="wallet-")
            state, revision = engine.get_state("wallet-1")
            print(f"recovered from v1 events: {state.cents} cents in {state.deposits} deposits (revision {revision})")
            state, revision = engine.send_command("wallet-1", Deposit(cents=100))
            print(f"after a new deposit: {state.cents} cents (revision {revision})")
            # Release 1 wrote its events to shard 0, this one to the entity's shard; shards are
            # read in parallel, so the events are put in order by sequence number.
            engine.add_projection("ledger", lambda events: seen.extend((e.sequence_number, e.event) for e in events))
            while len(seen) < 3:
                time.sleep(0.01)
        print("the projection saw:", ", ".join(f"{type(e).__name__}({e.cents} {e.currency})" for _, e in sorted(seen)))
        stored = [e.event.type_url.rsplit(".", 1)[1] for e in store.replay_events("wallet-1")]
        print("the store still holds:", ", ".join(stored))


if __name__ == "__main__":
    main()
