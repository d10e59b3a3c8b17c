"""The bank-account demo: ego on the embedded RocksDB store.

Opens accounts, runs credits and debits from many concurrent callers (with a progress bar),
stops the engine, starts it again on the same directory, checks that every account recovered
its balance, and prints what it measured.

    python demo.py [--accounts 1000] [--commands 100000] [--callers 1000] [--data ./data]
    python demo.py --postgres postgresql://postgres@127.0.0.1:5432/test   # the same on PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

import ego

from bank_pb2 import AccountCredited, AccountDebited, AccountOpened, Credit, Debit, OpenAccount
from domain import AccountBehavior, InsufficientFunds


class Progress:
    """The commands done, as a rich progress bar on standard error (the same library as the
    `ego` command line's): redrawn in a terminal, printed once when done otherwise."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.done = total, 0
        self.started = self.last_draw = time.perf_counter()
        self.bar = RichProgress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self.task = self.bar.add_task(label, total=total, rate="")
        self.bar.start()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last_draw > 0.1 or self.done == self.total:
            self.last_draw = now
            rate = self.done / max(now - self.started, 1e-9)
            self.bar.update(self.task, completed=self.done, rate=f"{rate:,.0f}/s")
            if self.done == self.total:
                self.bar.stop()


class Balances:
    """A read model built by a projection: every account's balance, from the events."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.events = 0

    def __call__(self, events: list[ego.PersistedEvent]) -> None:
        for e in events:
            event = e.event
            if isinstance(event, AccountOpened):
                self.balances[e.persistence_id] = event.balance
            elif isinstance(event, AccountCredited):
                self.balances[e.persistence_id] += event.amount
            elif isinstance(event, AccountDebited):
                self.balances[e.persistence_id] -= event.amount
        self.events += len(events)


def total_lag(engine: ego.Engine, name: str) -> tuple[int, float]:
    lag = engine.projection_lag(name)
    return sum(s.events_behind for s in lag.values()), max((s.time_behind for s in lag.values()), default=0.0)


async def traffic(engine: ego.Engine, ids: list[str], commands: int, callers: int, seed: int) -> dict[str, object]:
    """`callers` coroutines share `commands` random credits and debits; each awaits its reply
    before sending the next, like the request handlers of a busy service."""
    rng = random.Random(seed)
    balances = dict.fromkeys(ids, 0)
    revisions = dict.fromkeys(ids, 0)
    latencies: list[float] = []
    rejected = 0
    progress = Progress(commands, "commands")

    async def caller(n: int) -> None:
        nonlocal rejected
        for _ in range(n):
            account = rng.choice(ids)
            amount = rng.randint(1, 100)
            command = Credit(amount=amount) if rng.random() < 0.6 else Debit(amount=amount)
            t = time.perf_counter()
            try:
                state, revision = await engine.send_command_async(account, command)
            except InsufficientFunds:
                rejected += 1
            else:
                balances[account] = state.balance
                revisions[account] = max(revisions[account], revision)
            latencies.append(time.perf_counter() - t)
            progress.advance()

    share, extra = divmod(commands, callers)
    started = time.perf_counter()
    await asyncio.gather(*(caller(share + (i < extra)) for i in range(callers)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "elapsed": elapsed,
        "rejected": rejected,
        "p50": statistics.median(latencies),
        "p99": latencies[int(len(latencies) * 0.99)],
        "balances": balances,
        "revisions": revisions,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--commands", type=int, default=100_000)
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--sequential", type=int, default=2000, help="commands of the one-caller run")
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres", metavar="URL", help="run on PostgreSQL (tables demo_*) instead of RocksDB")
    args = parser.parse_args()

    ids = [f"account-{i}" for i in range(args.accounts)]

    def open_store() -> ego.stores.NativeStore:
        # Switching stores is this one line.
        if args.postgres:
            return ego.PostgresStore(args.postgres, table_prefix="demo_")
        return ego.RocksDBStore(args.data)

    if args.postgres:
        ego.PostgresStore(args.postgres, table_prefix="demo_").drop_tables()
        print(f"ego {ego.__version__} bank demo: PostgreSQL store (tables demo_*; each commit durable before its reply)")
    else:
        shutil.rmtree(args.data, ignore_errors=True)
        print(f"ego {ego.__version__} bank demo: RocksDB store in {args.data}/ (every write synced to disk before its reply)")

    store = open_store()
    engine = ego.Engine("bank", store=store)
    balances = Balances()
    async with engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.add_projection("balances", balances, batch_size=1000)

        t = time.perf_counter()
        await asyncio.gather(*(engine.send_command_async(i, OpenAccount(initial_balance=1000)) for i in ids))
        print(f"opened {len(ids):,} accounts with 1,000 each in {time.perf_counter() - t:.2f} s")

        print(f"{args.callers:,} concurrent callers send {args.commands:,} random credits and debits:")
        r = await traffic(engine, ids, args.commands, args.callers, args.seed)
        elapsed = float(r["elapsed"])  # type: ignore[arg-type]
        print(
            f"  {args.commands / elapsed:,.0f} commands/s; latency p50 {float(r['p50']) * 1e3:.2f} ms, "  # type: ignore[arg-type]
            f"p99 {float(r['p99']) * 1e3:.2f} ms; {r['rejected']:,} debits rejected (insufficient funds)"
        )

        behind, seconds = total_lag(engine, "balances")
        t = time.perf_counter()
        while total_lag(engine, "balances")[0]:
            await asyncio.sleep(0.01)
        print(
            f"projection 'balances': {behind:,} events ({seconds * 1e3:.0f} ms) behind right after the load, "
            f"caught up {(time.perf_counter() - t) * 1e3:.0f} ms later; {balances.events:,} events read"
        )

        one = ids[0]
        t = time.perf_counter()
        for _ in range(args.sequential):
            await engine.send_command_async(one, Credit(amount=1))
        seq_rate = args.sequential / (time.perf_counter() - t)
        print(f"one caller, one account, {args.sequential:,} credits each awaited before the next: {seq_rate:,.0f} commands/s")
        expected = {a: engine.get_state(a) for a in ids}
        while total_lag(engine, "balances")[0]:
            await asyncio.sleep(0.01)
        wrong = [a for a in ids if balances.balances.get(a) != expected[a][0].balance]
        print(f"  the read model {'matches every account' if not wrong else f'DIFFERS for {len(wrong)} accounts'}")
        if wrong:
            sys.exit(1)

    store.close()
    print("engine stopped and store closed; starting again on the same data")
    t = time.perf_counter()
    with open_store() as store, ego.Engine("bank", store=store) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        recovered = {a: engine.get_state(a) for a in ids}
        took = time.perf_counter() - t
    mismatched = [a for a in ids if (recovered[a][0].balance, recovered[a][1]) != (expected[a][0].balance, expected[a][1])]
    total = sum(s.balance for s, _ in recovered.values())
    events = sum(rev for _, rev in recovered.values())
    if mismatched:
        print(f"MISMATCH after restart for {len(mismatched)} accounts, e.g. {mismatched[:3]}")
        sys.exit(1)
    print(
        f"restarted and recovered {len(ids):,} accounts ({events:,} events) in {took * 1e3:.0f} ms: "
        f"every balance and revision matches; total balance {total:,}"
    )
    sample = ids[: min(3, len(ids))]
    print("  " + ", ".join(f"{a}: balance {recovered[a][0].balance:,} at revision {recovered[a][1]}" for a in sample))


if __name__ == "__main__":
    asyncio.run(main())
