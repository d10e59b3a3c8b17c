"""The cost of fencing on PostgreSQL: workload B (1,000 accounts, rounds of one credit to every
account through `send_command_async`, the 1,000 futures gathered) on a `PostgresStore` without
and with `fence=`, alternating in the same run (the machine may be loaded: only same-run
ratios mean something).

Each run also counts the transactions the database committed (`pg_stat_database.xact_commit`
of the bench's database, so other databases' load does not count), which gives the time per
group commit under B; and times `--sequential` commands to one account sent one after another
(one transaction each), where the difference per command between the two modes is the fence's
cost per group commit, undiluted.

    python benches/fence.py [--runs 5] [--accounts 1000] [--credits 10] [--sequential 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples" / "bank"))

import psycopg  # noqa: E402

import ego  # noqa: E402

from bank_pb2 import Credit, OpenAccount  # noqa: E402
from domain import AccountBehavior  # noqa: E402

PG_URL = os.environ.get("EGO_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def commits(db: psycopg.Connection) -> int:
    row = db.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0])


def run_b(fence: str | None, accounts: int, credits: int, sequential: int, db: psycopg.Connection) -> dict[str, float]:
    prefix = f"benchfence{os.getpid()}_"
    store = ego.PostgresStore(PG_URL, table_prefix=prefix, fence=fence)

    async def run() -> dict[str, float]:
        with ego.Engine("bench", store=store) as engine:
            engine.register_entity_type(AccountBehavior)
            ids = [f"acc-{i}" for i in range(accounts)]
            await asyncio.gather(*(engine.send_command_async(i, OpenAccount(initial_balance=0)) for i in ids))
            credit = Credit(amount=1)
            send = engine.send_command_async
            db.execute("SELECT pg_stat_clear_snapshot()")
            before = commits(db)
            started = time.perf_counter()
            for _ in range(credits):
                await asyncio.gather(*[send(i, credit) for i in ids])
            elapsed = time.perf_counter() - started
            # A backend reports its statistics at the end of a transaction at least a second
            # after its last report (or 10 s later when idle): one more write a second later
            # makes the writer's connection report; then wait until the count stops moving.
            time.sleep(1.1)
            await send(ids[0], credit)
            groups, last = -1, commits(db)
            while groups != last:
                time.sleep(0.3)
                db.execute("SELECT pg_stat_clear_snapshot()")
                groups, last = last, commits(db)
            groups -= before + 1
            state, revision = await engine.get_state_async(ids[-1])
            assert (state.balance, revision) == (credits, credits + 1)
            started = time.perf_counter()
            for _ in range(sequential):
                await send("acc-0", credit)
            per_command = (time.perf_counter() - started) / sequential
            return {"cmds_per_s": accounts * credits / elapsed, "elapsed": elapsed, "groups": groups, "sequential": per_command}

    try:
        return asyncio.run(run())
    finally:
        store.drop_tables()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--credits", type=int, default=10)
    parser.add_argument("--sequential", type=int, default=1000)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"plain": [], "fenced": []}
    with psycopg.connect(PG_URL, autocommit=True) as db:
        for i in range(args.runs):
            order = ("plain", "fenced") if i % 2 == 0 else ("fenced", "plain")
            for mode in order:
                r = run_b("bench" if mode == "fenced" else None, args.accounts, args.credits, args.sequential, db)
                results[mode].append(r)
                print(
                    f"run {i + 1} {mode:6}: B {r['cmds_per_s']:>9,.0f} cmds/s, {r['groups']:,} transactions; "
                    f"sequential {r['sequential'] * 1e6:,.0f} us per command",
                    flush=True,
                )
    med = {m: statistics.median(r["cmds_per_s"] for r in rs) for m, rs in results.items()}
    per_group = {m: statistics.median(r["elapsed"] / max(r["groups"], 1) for r in rs) for m, rs in results.items()}
    print(f"median plain  {med['plain']:,.0f} cmds/s, {per_group['plain'] * 1e6:,.0f} us per transaction")
    print(f"median fenced {med['fenced']:,.0f} cmds/s, {per_group['fenced'] * 1e6:,.0f} us per transaction")
    print(f"fenced / plain throughput: {med['fenced'] / med['plain']:.3f}")
    print(f"cost per transaction under B: {(per_group['fenced'] - per_group['plain']) * 1e6:+,.0f} us")
    seq = {m: statistics.median(r["sequential"] for r in rs) for m, rs in results.items()}
    print(
        f"sequential: plain {seq['plain'] * 1e6:,.0f} us, fenced {seq['fenced'] * 1e6:,.0f} us per command "
        f"(one transaction each): {(seq['fenced'] - seq['plain']) * 1e6:+,.0f} us, ratio {seq['fenced'] / seq['plain']:.3f}"
    )


if __name__ == "__main__":
    main()
