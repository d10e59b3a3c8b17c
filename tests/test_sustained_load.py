"""Sustained load (RELIABILITY.md #12): 1,000,000 commands over 10,000 entities on a durable
RocksDB store, with a projection running. No error, no lost event, memory flat after the
warm-up, and the projection's lag back to 0. Runs in CI (about a minute on two cores).

Publishers are not part of it yet (they come with their own feature)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import pytest
from waiting import wait_until_async

import ego

from bank_pb2 import Account, Credit, OpenAccount
from domain import AccountBehavior

ACCOUNTS = int(os.environ.get("EGO_LOAD_ACCOUNTS", "10000"))
ROUNDS = int(os.environ.get("EGO_LOAD_ROUNDS", "99"))  # credits per account; + 1 open = 100 commands
WAIT = 120.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
async def test_a_million_commands_over_ten_thousand_entities_with_a_projection(tmp_path: Path) -> None:
    seen: Counter[str] = Counter()
    sequence: dict[str, int] = {}
    out_of_order: list[str] = []

    def project(events: list[ego.PersistedEvent]) -> None:
        for e in events:
            seen[e.persistence_id] += 1
            if e.sequence_number != sequence.get(e.persistence_id, 0) + 1:
                out_of_order.append(f"{e.persistence_id}#{e.sequence_number}")
            sequence[e.persistence_id] = e.sequence_number

    store = ego.RocksDBStore(tmp_path / "db")
    try:
        with ego.Engine("load", store=store) as engine:
            engine.register_entity_type(AccountBehavior, prefix="acct-")
            engine.add_projection("counts", project, offset_store=store, batch_size=4096, poll_interval=0.05)
            ids = [f"acct-{i}" for i in range(ACCOUNTS)]
            send = engine.send_command_async
            await asyncio.gather(*(send(i, OpenAccount(initial_balance=0)) for i in ids))
            credit = Credit(amount=1)
            samples: list[int] = []
            for _ in range(ROUNDS):
                replies = await asyncio.gather(*(send(i, credit) for i in ids))
                assert len(replies) == ACCOUNTS
                samples.append(rss_bytes())
            commands = ACCOUNTS * (ROUNDS + 1)
            assert engine.stats()["commands"] == commands
            assert engine.stats()["rejected"] == 0
            # Every command's event is durable and in its account's state.
            for i in ids[:: max(1, ACCOUNTS // 500)]:
                state, revision = await send(i, Credit(amount=0))
                assert isinstance(state, Account)
                assert (state.balance, revision) == (ROUNDS, ROUNDS + 2)
            # The projection catches up: lag back to 0, every event seen once, in order.
            await wait_until_async(
                lambda: not any(lag.events_behind for lag in engine.projection_lag("counts").values()),
                WAIT,
                what=lambda: f"the projection to catch up: {engine.projection_lag('counts')}",
            )
            total = commands + len(ids[:: max(1, ACCOUNTS // 500)])
            assert sum(seen.values()) == total and not out_of_order, out_of_order[:5]
            assert all(store.highest_sequence_number(i) == seen[i] for i in ids[:: max(1, ACCOUNTS // 100)])
        # Memory is flat after the warm-up: the last third of the run needs no more than the
        # second third (RocksDB's memtables and caches fill during the first rounds).
        third = len(samples) // 3
        middle, last = max(samples[third : 2 * third]), max(samples[2 * third :])
        assert last <= middle + (48 << 20), f"memory grew from {middle >> 20} MiB to {last >> 20} MiB after the warm-up"
    finally:
        store.close()
