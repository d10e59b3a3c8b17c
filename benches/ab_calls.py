"""Runs two workload calls of this build, alternating, and prints medians (min-max) and their
ratio: the way to state what an option costs (encryption on vs off, idempotency keys vs none).

    python benches/ab_calls.py --a "ego.workload_b('rocksdb')" --b "ego.workload_b('rocksdb', encrypt=True)" [--runs 11] [--metric cmds_per_s]

Each run is its own process, and the two calls take turns, so drift of the machine (heat,
other load) weighs on both. The calls are those of benches/ego_workloads.py (as `ego.`).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from ab_builds import measure, summary

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="the reference call")
    parser.add_argument("--b", required=True, help="the call compared with it")
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--metric", default="cmds_per_s")
    args = parser.parse_args()
    calls = {"a": args.a, "b": args.b}
    results: dict[str, list[float]] = {"a": [], "b": []}
    for run in range(args.runs):
        order = ["a", "b"] if run % 2 == 0 else ["b", "a"]
        for name in order:
            results[name].append(measure(HERE.parent, calls[name], args.metric))
        print(f"run {run + 1}/{args.runs}: a {results['a'][-1]:,.2f}, b {results['b'][-1]:,.2f}", flush=True)
    print(f"\n[{args.metric}, median (min-max) of {args.runs} runs, alternating]")
    for name in calls:
        print(f"  {name}: {calls[name]}\n     {summary(results[name])}")
    a, b = statistics.median(results["a"]), statistics.median(results["b"])
    print(f"  b / a: {b / a:.3f}")


if __name__ == "__main__":
    main()
