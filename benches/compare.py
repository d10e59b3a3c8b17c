"""Runs the workloads of BENCHMARKS.md on ego and on the `eventsourcing` library, interleaved
in the same run, and prints medians (min-max) and the ratio ego / peer.

    python benches/compare.py [--runs 5] [--only A,B,C] [--json out.json]

Each measurement runs in its own process, so one workload's garbage or caches never weigh on
the next. The machine's fdatasync rate is measured in the same run (durable workloads are
bounded by it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    workload: str
    ego_label: str
    ego_call: str
    peer_label: str
    peer_call: str
    metric: str = "cmds_per_s"

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "cmds_per_s"


CASES = [
    Case("A", "memory", "ego.workload_a('memory')", "POPO, best", "peer.workload_a('memory', 'best')"),
    Case("A", "RocksDB durable", "ego.workload_a('rocksdb')", "SQLite, best", "peer.workload_a('sqlite', 'best')"),
    Case("B", "memory", "ego.workload_b('memory')", "POPO, best", "peer.workload_b('memory', 'best')"),
    Case("B", "memory, batching 16", "ego.workload_b('memory', batch=16)", "POPO, best", "peer.workload_b('memory', 'best')"),
    Case("B", "RocksDB durable", "ego.workload_b('rocksdb')", "SQLite, best", "peer.workload_b('sqlite', 'best')"),
    Case(
        "B",
        "RocksDB durable, batching 16",
        "ego.workload_b('rocksdb', batch=16)",
        "SQLite, best",
        "peer.workload_b('sqlite', 'best')",
    ),
    Case("C", "memory, no snapshot", "ego.workload_c('memory')", "POPO", "peer.workload_c('memory')", "ms_per_load"),
    Case("C", "RocksDB, no snapshot", "ego.workload_c('rocksdb')", "SQLite", "peer.workload_c('sqlite')", "ms_per_load"),
    Case(
        "C",
        "RocksDB, snapshot every 100",
        "ego.workload_c('rocksdb', 100)",
        "SQLite, snapshot every 100",
        "peer.workload_c('sqlite', 100)",
        "ms_per_load",
    ),
]


def measure(call: str) -> dict[str, float]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(HERE)!r}); "
        "import ego_workloads as ego, peer_workloads as peer; "
        f"print('RESULT', json.dumps({call}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"{call} failed:\n{out.stderr[-2000:]}")


def fdatasync_rate(seconds: float = 1.0) -> float:
    with tempfile.NamedTemporaryFile(dir=HERE.parent) as f:
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            os.write(f.fileno(), b"x" * 100)
            os.fdatasync(f.fileno())
            n += 1
        return n / (time.perf_counter() - started)


def fmt(values: list[float], metric: str) -> str:
    med = statistics.median(values)
    if metric == "cmds_per_s":
        return f"{med:,.0f} ({min(values):,.0f}-{max(values):,.0f})"
    return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated workloads (A,B,C)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    cases = [c for c in CASES if not only or c.workload in only]

    results: dict[int, dict[str, list[float]]] = {i: {"ego": [], "peer": []} for i in range(len(cases))}
    fsyncs: list[float] = []
    peer_cache: dict[str, list[float]] = {}
    for run in range(args.runs):
        fsyncs.append(fdatasync_rate())
        for i, case in enumerate(cases):
            results[i]["ego"].append(measure(case.ego_call)[case.metric])
            # Identical peer calls are measured once per run.
            if case.peer_call not in peer_cache or len(peer_cache[case.peer_call]) <= run:
                peer_cache.setdefault(case.peer_call, []).append(measure(case.peer_call)[case.metric])
            results[i]["peer"].append(peer_cache[case.peer_call][run])
            print(f"run {run + 1}/{args.runs}: {case.workload} {case.ego_label} done", file=sys.stderr)

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; {args.runs} runs")
    print(f"fdatasync rate in this run: {statistics.median(fsyncs):,.0f}/s (min {min(fsyncs):,.0f}, max {max(fsyncs):,.0f})\n")
    print("| workload | ego | ego median (min-max) | eventsourcing | peer median (min-max) | ego / peer |")
    print("|---|---|---|---|---|---|")
    rows = []
    for i, case in enumerate(cases):
        e, p = results[i]["ego"], results[i]["peer"]
        ratio = (
            statistics.median(e) / statistics.median(p) if case.higher_is_better else statistics.median(p) / statistics.median(e)
        )
        unit = "cmds/s" if case.higher_is_better else "ms/load"
        print(
            f"| {case.workload} | {case.ego_label} | {fmt(e, case.metric)} {unit} | {case.peer_label} | {fmt(p, case.metric)} | {ratio:,.1f}x |"
        )
        rows.append(
            {
                "workload": case.workload,
                "ego": case.ego_label,
                "peer": case.peer_label,
                "metric": case.metric,
                "ego_values": e,
                "peer_values": p,
            }
        )
    if args.json:
        args.json.write_text(json.dumps({"fdatasync_per_s": fsyncs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
