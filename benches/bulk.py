"""Bulk commands against their references, in the same run: the Python handler floor
(benches/floor.py), workload B (asyncio, rounds of 1,000) and the bulk API on the same
commands (`send_commands` / `send_commands_async`, 1,000 pairs per call: every account once;
and all 20,000 pairs in one call: each account's 20 credits in one write), in memory and on
RocksDB durable. Each measurement is its own process; the cases take turns (the order rotates
every run), so drift of a shared machine weighs on all of them.

    python benches/bulk.py [--runs 5] [--only memory|rocksdb]

Each case is reported per second of wall clock and per second of the process's CPU time
(every thread): on a loaded machine the second moves much less.

Targets (issue 14): bulk in memory >= 75% of the handler floor and >= 1.8x B's asyncio
figure; bulk on RocksDB durable >= 1.5x B on RocksDB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from child_run import IMPORT_WORKLOADS, result_of

HERE = Path(__file__).resolve().parent

CASES = {
    "memory": {
        "handler floor": "floor.handler_floor_rates()",
        "B, asyncio": "ego.workload_b('memory')",
        "bulk, send_commands": "ego.workload_bulk('memory', 'sync')",
        "bulk, send_commands_async": "ego.workload_bulk('memory', 'async')",
        "bulk, one call": "ego.workload_bulk('memory', 'sync', per_call=20000)",
    },
    "rocksdb": {
        "B, asyncio": "ego.workload_b('rocksdb')",
        "bulk, send_commands": "ego.workload_bulk('rocksdb', 'sync')",
        "bulk, send_commands_async": "ego.workload_bulk('rocksdb', 'async')",
        "bulk, one call": "ego.workload_bulk('rocksdb', 'sync', per_call=20000)",
    },
}


def measure(call: str) -> dict[str, float]:
    code = IMPORT_WORKLOADS + f"import floor, ego_workloads as ego; print('RESULT', json.dumps({call}))"
    return dict(result_of(sys.executable, code, what=call))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", choices=sorted(CASES))
    args = parser.parse_args()
    for store, cases in CASES.items():
        if args.only and store != args.only:
            continue
        names = list(cases)
        results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for run in range(args.runs):
            shift = run % len(names)
            for name in names[shift:] + names[:shift]:
                results[name].append(measure(cases[name]))
            print(
                f"{store} run {run + 1}/{args.runs}: "
                + ", ".join(
                    f"{n} {results[n][-1]['cmds_per_s']:,.0f} ({results[n][-1]['cmds_per_cpu_s']:,.0f}/CPU-s)" for n in names
                ),
                flush=True,
            )
        print(f"\n{store} (load average at the end: {os.getloadavg()[0]:.1f}), median (min-max) of {args.runs} runs")
        print("| case | cmds/s | vs B | vs handler floor | cmds per CPU-second | vs B | vs handler floor |")
        print("|---|---|---|---|---|---|---|")
        for n in names:
            cells = []
            for key in ("cmds_per_s", "cmds_per_cpu_s"):
                values = [r[key] for r in results[n]]
                med = {m: statistics.median(r[key] for r in rs) for m, rs in results.items()}
                floor = f"{med[n] / med['handler floor']:.2f}" if "handler floor" in med else "-"
                cells.append(
                    f"{med[n]:,.0f} ({min(values):,.0f}-{max(values):,.0f}) | {med[n] / med['B, asyncio']:.2f} | {floor}"
                )
            print(f"| {n} | {cells[0]} | {cells[1]} |")
        print()


if __name__ == "__main__":
    main()
