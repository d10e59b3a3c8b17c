"""The cost of declaring an entity type shared by several processes (``shared=True``: a read
of the journal head before each command) on PostgreSQL: workload B (1,000 accounts, credits
sent concurrently through the asyncio API, BENCHMARKS.md) with the default mode and with
``shared=True``, alternating in one run, each measurement in a fresh process. Prints the
medians (min-max) and the ratio shared / default.

    python benches/shared.py [--runs 5] [--accounts 1000] [--credits 20]

PostgreSQL from EGO_BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROGRAM = """
import json, sys
sys.path.insert(0, {benches!r})
import ego_workloads as w
print(json.dumps(w.workload_b("postgres", accounts={accounts}, credits={credits}, shared={shared})))
"""


def measure(shared: bool, accounts: int, credits: int) -> float:
    """Workload B on PostgreSQL in a fresh process; commands per second."""
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(benches=str(HERE), accounts=accounts, credits=credits, shared=shared)],
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["cmds_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--credits", type=int, default=20)
    args = parser.parse_args()
    figures: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.runs):
        for shared in (False, True):
            figures[shared].append(measure(shared, args.accounts, args.credits))

    def show(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f}) cmds/s"

    print(f"workload B on PostgreSQL, {args.accounts} accounts x {args.credits} credits, {args.runs} runs each, alternating")
    print(f"  default mode:  {show(figures[False])}")
    print(f"  shared=True:   {show(figures[True])}")
    print(f"  shared / default: {statistics.median(figures[True]) / statistics.median(figures[False]):.2f}x")


if __name__ == "__main__":
    main()
