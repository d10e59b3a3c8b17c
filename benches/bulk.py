"""Bulk commands against their references, in the same run: the Python handler floor
(benches/floor.py), workload B (asyncio, rounds of 1,000) and the bulk API on the same
commands (`send_commands` / `send_commands_async`, 1,000 pairs per call), in memory and on
RocksDB durable. Each measurement is its own process; the cases take turns (the order rotates
every run), so drift of a shared machine weighs on all of them.

    python benches/bulk.py [--runs 5] [--only memory|rocksdb]

Targets (issue 14): bulk in memory >= 75% of the handler floor and >= 1.8x B's asyncio
figure; bulk on RocksDB durable >= 1.5x B on RocksDB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASES = {
    "memory": {
        "handler floor": "floor.handler_floor()",
        "B, asyncio": "ego.workload_b('memory')['cmds_per_s']",
        "bulk, send_commands": "ego.workload_bulk('memory', 'sync')['cmds_per_s']",
        "bulk, send_commands_async": "ego.workload_bulk('memory', 'async')['cmds_per_s']",
    },
    "rocksdb": {
        "B, asyncio": "ego.workload_b('rocksdb')['cmds_per_s']",
        "bulk, send_commands": "ego.workload_bulk('rocksdb', 'sync')['cmds_per_s']",
        "bulk, send_commands_async": "ego.workload_bulk('rocksdb', 'async')['cmds_per_s']",
    },
}


def measure(call: str) -> float:
    code = f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import floor, ego_workloads as ego; print('RESULT', json.dumps({call}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, cwd=HERE)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return float(json.loads(line[7:]))
    raise RuntimeError(f"{call} failed:\n{out.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=sorted(CASES))
    args = parser.parse_args()
    for store, cases in CASES.items():
        if args.only and store != args.only:
            continue
        names = list(cases)
        results: dict[str, list[float]] = {n: [] for n in names}
        for run in range(args.runs):
            shift = run % len(names)
            for name in names[shift:] + names[:shift]:
                results[name].append(measure(cases[name]))
            print(f"{store} run {run + 1}/{args.runs}: " + ", ".join(f"{n} {results[n][-1]:,.0f}" for n in names), flush=True)
        med = {n: statistics.median(v) for n, v in results.items()}
        print(f"\n{store} (load average at the end: {os.getloadavg()[0]:.1f}), cmds/s median (min-max) of {args.runs} runs")
        print("| case | cmds/s | vs B | vs handler floor |")
        print("|---|---|---|---|")
        for n in names:
            vs_b = med[n] / med["B, asyncio"]
            vs_floor = f"{med[n] / med['handler floor']:.2f}" if "handler floor" in med else "-"
            print(f"| {n} | {med[n]:,.0f} ({min(results[n]):,.0f}-{max(results[n]):,.0f}) | {vs_b:.2f} | {vs_floor} |")
        print()


if __name__ == "__main__":
    main()
