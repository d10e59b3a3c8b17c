"""Workload F's target in one run: B over 1,000,000 accounts against B over 1,000 accounts
(issue 14: >= 85%), the collector left as it is; both send as many credits as there are
large accounts (1,000,000 credits cycle over 1,000 accounts, or touch each of 1,000,000 once),
so start-up costs weigh the same on both. Each measurement is its own process and the
two sizes take turns, so drift of a shared machine weighs on both. Reports commands per
second of wall clock and per second of the process's CPU time (all its threads): on a loaded
machine the wall-clock ratio is mostly noise, the CPU-time ratio much less so.

    python benches/f_scaling.py [--runs 3] [--large 1000000] [--small 1000] [--id-list]

The benchmark keeps its ids in a tuple: the collector untracks a tuple of strings, while it
walks every item of a list on each full collection (a million cache misses per collection at
1,000,000 accounts: the benchmark's own cost, not the engine's). `--id-list` measures with the
list, as before 2026-12-01.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(accounts: int, commands: int, id_list: bool = False) -> dict[str, float]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import ego_workloads as ego; "
        f"print('RESULT', json.dumps(ego.workload_f({accounts}, {commands}, id_list={id_list})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600, cwd=HERE)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"workload_f({accounts}) failed:\n{out.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument(
        "--id-list", action="store_true", help="the benchmark's ids in a list (as before 2026-12-01), not a tuple"
    )
    args = parser.parse_args()
    results: dict[int, list[dict[str, float]]] = {args.small: [], args.large: []}
    for run in range(args.runs):
        order = [args.small, args.large] if run % 2 == 0 else [args.large, args.small]
        for n in order:
            r = measure(n, args.large, args.id_list)
            results[n].append(r)
            print(
                f"run {run + 1}: {n:,} accounts: {r['cmds_per_s']:,.0f} cmds/s, {r['cmds_per_cpu_s']:,.0f} cmds/CPU-s", flush=True
            )
    print()
    print("| accounts | cmds/s, median (min-max) | cmds per CPU-second, median (min-max) |")
    print("|---|---|---|")
    for n, rs in results.items():
        wall = [r["cmds_per_s"] for r in rs]
        cpu = [r["cmds_per_cpu_s"] for r in rs]
        print(
            f"| {n:,} | {statistics.median(wall):,.0f} ({min(wall):,.0f}-{max(wall):,.0f}) "
            f"| {statistics.median(cpu):,.0f} ({min(cpu):,.0f}-{max(cpu):,.0f}) |"
        )
    small, large = results[args.small], results[args.large]
    for key, label in (("cmds_per_s", "wall clock"), ("cmds_per_cpu_s", "CPU time")):
        ratio = statistics.median(r[key] for r in large) / statistics.median(r[key] for r in small)
        print(f"{args.large:,} / {args.small:,} accounts, {label}: {ratio:.2f}")


if __name__ == "__main__":
    main()
