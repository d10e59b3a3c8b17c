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
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from child_run import result_of

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    workload: str
    ego_label: str
    ego_call: str
    peer_label: str = ""
    peer_call: str | None = None
    metric: str = "cmds_per_s"

    @property
    def higher_is_better(self) -> bool:
        return self.metric in ("cmds_per_s", "events_per_s")


def _cases(big: int) -> list[Case]:
    cases = [
        Case("A", "memory", "ego.workload_a('memory')", "POPO, best", "peer.workload_a('memory', 'best')"),
        Case("A", "RocksDB durable", "ego.workload_a('rocksdb')", "SQLite, best", "peer.workload_a('sqlite', 'best')"),
        Case("A", "PostgreSQL", "ego.workload_a('postgres')", "PostgreSQL, best", "peer.workload_a('postgres', 'best')"),
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
        Case("B", "PostgreSQL", "ego.workload_b('postgres')", "PostgreSQL, best", "peer.workload_b('postgres', 'best')"),
        Case(
            "B",
            "PostgreSQL, batching 16",
            "ego.workload_b('postgres', batch=16)",
            "PostgreSQL, best",
            "peer.workload_b('postgres', 'best')",
        ),
        Case("B telemetry", "memory, telemetry off", "ego.workload_b('memory')"),
        Case("B telemetry", "memory, metrics", "ego.workload_b('memory', telemetry='metrics')"),
        Case("B telemetry", "memory, traces + metrics", "ego.workload_b('memory', telemetry='all')"),
        Case("B telemetry", "memory, traces sampled 1% + metrics", "ego.workload_b('memory', telemetry='sampled')"),
        Case("B burst", "memory", "ego.workload_b('memory', burst=True)", "POPO, best", "peer.workload_b('memory', 'best')"),
        Case(
            "B burst",
            "RocksDB durable",
            "ego.workload_b('rocksdb', burst=True)",
            "SQLite, best",
            "peer.workload_b('sqlite', 'best')",
        ),
        Case(
            "B burst",
            "RocksDB durable, batching 20",
            "ego.workload_b('rocksdb', batch=20, burst=True)",
            "SQLite, best",
            "peer.workload_b('sqlite', 'best')",
        ),
        Case(
            "B burst",
            "PostgreSQL, batching 20",
            "ego.workload_b('postgres', batch=20, burst=True)",
            "PostgreSQL, best",
            "peer.workload_b('postgres', 'best')",
        ),
        Case("C", "memory, no snapshot", "ego.workload_c('memory')", "POPO", "peer.workload_c('memory')", "ms_per_load"),
        Case("C", "RocksDB, no snapshot", "ego.workload_c('rocksdb')", "SQLite", "peer.workload_c('sqlite')", "ms_per_load"),
        Case(
            "C",
            "PostgreSQL, no snapshot",
            "ego.workload_c('postgres')",
            "PostgreSQL",
            "peer.workload_c('postgres')",
            "ms_per_load",
        ),
        Case(
            "C",
            "RocksDB, snapshot every 100",
            "ego.workload_c('rocksdb', 100)",
            "SQLite, snapshot every 100",
            "peer.workload_c('sqlite', 100)",
            "ms_per_load",
        ),
        Case(
            "D",
            "RocksDB, 1,000,000 events",
            "ego.workload_d('rocksdb')",
            "POPO follower, 100,000 events",
            "peer.workload_d('memory')",
            "events_per_s",
        ),
        Case(
            "D",
            "PostgreSQL, 200,000 events",
            "ego.workload_d('postgres', 200_000)",
            "PostgreSQL follower, 20,000 events",
            "peer.workload_d('postgres', 20_000)",
            "events_per_s",
        ),
        Case(
            "E",
            "100,000 accounts",
            "ego.workload_e(100_000)",
            "100,000 in its cache",
            "peer.workload_e(100_000)",
            "bytes_per_entity",
        ),
    ]
    if big >= 1_000_000:
        cases.append(Case("E", "1,000,000 accounts", "ego.workload_e(1_000_000)", metric="bytes_per_entity"))
    for n in (1_000, 10_000, 100_000, 1_000_000):
        if n <= big:
            peer = f"peer.workload_f({n})" if n <= 100_000 else None
            cases.append(Case("F", f"{n:,} accounts", f"ego.workload_f({n})", f"{n:,} accounts" if peer else "", peer))
    return cases


def measure(call: str) -> dict[str, float]:
    code = (
        f"import sys, json; sys.path.insert(0, {str(HERE)!r}); "
        "import ego_workloads as ego, peer_workloads as peer; "
        f"print('RESULT', json.dumps({call}))"
    )
    return dict(result_of(sys.executable, code, what=call, cwd=None))


def fdatasync_rate(seconds: float = 1.0) -> float:
    with tempfile.NamedTemporaryFile(dir=HERE.parent) as f:
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            os.write(f.fileno(), b"x" * 100)
            os.fdatasync(f.fileno())
            n += 1
        return n / (time.perf_counter() - started)


UNITS = {"cmds_per_s": "cmds/s", "ms_per_load": "ms/load", "bytes_per_entity": "B/entity", "events_per_s": "events/s"}


def fmt(values: list[float], metric: str) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if metric == "ms_per_load":
        return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"
    return f"{med:,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated workloads (A,B,C)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--big", type=int, default=1_000_000, help="largest account count of E and F")
    args = parser.parse_args()
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    cases = [c for c in _cases(args.big) if not only or c.workload.split()[0] in only or c.workload in only]

    results: dict[int, dict[str, list[float]]] = {i: {"ego": [], "peer": []} for i in range(len(cases))}
    fsyncs: list[float] = []
    peer_cache: dict[str, list[float]] = {}
    for run in range(args.runs):
        fsyncs.append(fdatasync_rate())
        for i, case in enumerate(cases):
            results[i]["ego"].append(measure(case.ego_call)[case.metric])
            # Identical peer calls are measured once per run.
            if case.peer_call is not None:
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
        if p:
            better = statistics.median(e) / statistics.median(p)
            ratio = f"{(better if case.higher_is_better else 1 / better):,.1f}x"
        else:
            ratio = "-"
        unit = UNITS[case.metric]
        peer = case.peer_label or "-"
        print(f"| {case.workload} | {case.ego_label} | {fmt(e, case.metric)} {unit} | {peer} | {fmt(p, case.metric)} | {ratio} |")
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
