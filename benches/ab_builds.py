"""Runs one workload on two builds of ego, alternating, and prints medians (min-max) and the
difference: the way to show that a feature costs nothing when it is switched off.

    python benches/ab_builds.py --baseline ../ego-old [--runs 9] [--call "ego.workload_b('memory')"]

`--baseline` is another checkout of this repository with its own `.venv` where that build is
installed (`make build` there); this checkout is the candidate. Each run is its own process,
and the two builds take turns, so drift of the machine (heat, other load) weighs on both.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from child_run import result_of

HERE = Path(__file__).resolve().parent


def measure(checkout: Path, call: str, metric: str) -> float:
    benches = checkout / "benches"
    code = (
        f"import sys, json; sys.path.insert(0, {str(benches)!r}); "
        f"import ego_workloads as ego; print('RESULT', json.dumps({call}))"
    )
    python = checkout / ".venv" / "bin" / "python"
    return float(result_of(str(python), code, what=f"{call} in {checkout}", cwd=benches)[metric])


def summary(values: list[float]) -> str:
    digits = 0 if statistics.median(values) >= 100 else 2
    return f"{statistics.median(values):>12,.{digits}f}  ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="checkout of the baseline build")
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--call", default="ego.workload_b('memory')", help="workload call, as in compare.py")
    parser.add_argument("--metric", default="cmds_per_s")
    args = parser.parse_args()
    builds = {"baseline": args.baseline.resolve(), "candidate": HERE.parent}
    results: dict[str, list[float]] = {name: [] for name in builds}
    for run in range(args.runs):
        order = list(builds) if run % 2 == 0 else list(reversed(builds))
        for name in order:
            results[name].append(measure(builds[name], args.call, args.metric))
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{n} {results[n][-1]:,.0f}" for n in builds), flush=True)
    print(f"\n{args.call}  [{args.metric}, median (min-max) of {args.runs} runs]")
    for name in builds:
        print(f"  {name:<10} {summary(results[name])}")
    base, cand = statistics.median(results["baseline"]), statistics.median(results["candidate"])
    print(f"  candidate / baseline: {cand / base:.3f}")


if __name__ == "__main__":
    main()
