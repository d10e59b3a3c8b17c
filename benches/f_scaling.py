"""Workload F's target in one run: B over 1,000,000 accounts against B over 1,000 accounts
(issue 14: >= 85%), the collector left as it is; both send as many credits as there are
large accounts (1,000,000 credits cycle over 1,000 accounts, or touch each of 1,000,000 once),
so start-up costs weigh the same on both. Each measurement is its own process and the
two sizes take turns, so drift of a shared machine weighs on both. Reports commands per
second of wall clock and per second of the process's CPU time (all its threads): on a loaded
machine the wall-clock ratio is mostly noise, the CPU-time ratio much less so.

    python benches/f_scaling.py [--runs 3] [--large 1000000] [--small 1000] [--id-list]
    python benches/f_scaling.py --baseline-python ../ego-old/.venv/bin/python [--runs 3]

With `--baseline-python`, each run measures both sizes on both builds (this one and the
baseline, taking turns) and prints each build's table and the ratios of this build to the
baseline.

The benchmark keeps its ids in a tuple: the collector untracks a tuple of strings, while it
walks every item of a list on each full collection (a million cache misses per collection at
1,000,000 accounts: the benchmark's own cost, not the engine's). `--id-list` measures with the
list, as before 2026-12-01.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from child_run import IMPORT_WORKLOADS, result_of, take_turns

HERE = Path(__file__).resolve().parent


def measure(accounts: int, commands: int, id_list: bool = False, python: str = sys.executable) -> dict[str, float]:
    code = (
        IMPORT_WORKLOADS
        + f"import ego_workloads as ego; print('RESULT', json.dumps(ego.workload_f({accounts}, {commands}, id_list={id_list})))"
    )
    return dict(result_of(python, code, what=f"workload_f({accounts})", timeout=3600))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument(
        "--id-list", action="store_true", help="the benchmark's ids in a list (as before 2026-12-01), not a tuple"
    )
    parser.add_argument("--baseline-python", help="also measure the build installed for this python, taking turns")
    args = parser.parse_args()
    builds = {"this build": sys.executable}
    if args.baseline_python:
        builds["baseline"] = args.baseline_python

    def one(case: tuple[str, int]) -> dict[str, float]:
        build, n = case
        r = measure(n, args.large, args.id_list, builds[build])
        print(f"{build}: {n:,} accounts: {r['cmds_per_s']:,.0f} cmds/s, {r['cmds_per_cpu_s']:,.0f} cmds/CPU-s", flush=True)
        return r

    runs = take_turns([(b, n) for b in builds for n in (args.small, args.large)], args.runs, one)
    found = {b: {n: runs[(b, n)] for n in (args.small, args.large)} for b in builds}
    for build, results in found.items():
        print(f"\n{build}:")
        table(results, args.small, args.large)
    if args.baseline_python:
        print()
        for n in (args.small, args.large):
            for key, label in (("cmds_per_s", "wall clock"), ("cmds_per_cpu_s", "CPU time")):
                mine = statistics.median(r[key] for r in found["this build"][n])
                theirs = statistics.median(r[key] for r in found["baseline"][n])
                print(f"this build / baseline, {n:,} accounts, {label}: {mine / theirs:.3f}")


def table(results: dict[int, list[dict[str, float]]], small_n: int, large_n: int) -> None:
    """Prints the medians per size and the large/small ratios."""
    print("| accounts | cmds/s, median (min-max) | cmds per CPU-second, median (min-max) |")
    print("|---|---|---|")
    for n, rs in results.items():
        wall = [r["cmds_per_s"] for r in rs]
        cpu = [r["cmds_per_cpu_s"] for r in rs]
        print(
            f"| {n:,} | {statistics.median(wall):,.0f} ({min(wall):,.0f}-{max(wall):,.0f}) "
            f"| {statistics.median(cpu):,.0f} ({min(cpu):,.0f}-{max(cpu):,.0f}) |"
        )
    small, large = results[small_n], results[large_n]
    for key, label in (("cmds_per_s", "wall clock"), ("cmds_per_cpu_s", "CPU time")):
        ratio = statistics.median(r[key] for r in large) / statistics.median(r[key] for r in small)
        print(f"{large_n:,} / {small_n:,} accounts, {label}: {ratio:.2f}")


if __name__ == "__main__":
    main()
