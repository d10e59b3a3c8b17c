"""Instructions per command of a workload, counted by valgrind's callgrind, for this checkout
and optionally a baseline checkout: a comparison that holds on a loaded, noisy machine, where
timings do not (the counts are the same whatever else runs).

    python benches/instructions.py [--baseline ../ego-old] [--workload a|b|c] [--small 2000 --large 6000]
    python benches/instructions.py --workload c --option encrypt --small 2 --large 6
    python benches/instructions.py --workload b --option keys
    python benches/instructions.py --workload b --telemetry sampled
    python benches/instructions.py --workload bulk --floor

`--option` compares this checkout with an option off and on (encryption at rest, an idempotency
key on every command) instead of two builds; `--telemetry` compares telemetry off with
"metrics", "sampled" (1% of traces + metrics) or "all" (every command traced + metrics), as
`ego_workloads.telemetry_settings` sets them up.

Each build runs the workload twice, with `small` and `large` commands; the difference of the
two totals divided by the difference of the sizes is the cost of one command, with start-up
(imports, engine start) cancelled out. Workload "a": one account, commands one after another
(the inline path); "b": 100 accounts, asyncio, concurrent; "c": loads (recoveries) of an
account with 10,000 events, sizes counting loads, not commands; "bulk": workload B's credits
to 1,000 accounts through `send_commands`, 1,000 pairs per call; "floor": the handler floor of
benches/floor.py (no engine). In-memory store. Needs valgrind.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

PROGRAM = """
import sys
sys.path.insert(0, {benches!r})
import ego_workloads as w
n = {n}
options = {options!r}
if {workload!r} == "b":
    w.workload_b("memory", accounts=100, credits=n // 100, **options)
elif {workload!r} == "c":
    w.workload_c("memory", events=10_000, loads=n, **options)
elif {workload!r} == "bulk":
    w.workload_bulk("memory", "sync", accounts=1000, credits=n // 1000)
elif {workload!r} == "floor":
    import floor
    b = floor.AccountBehavior("a")
    state = b.initial_state()
    state = b.handle_event(b.handle_command(floor.OpenAccount(initial_balance=0), state)[0], state)
    credit = floor.Credit(amount=1)
    for _ in range(n):
        for e in b.handle_command(credit, state):
            e.SerializeToString()
            state = b.handle_event(e, state)
else:
    w.workload_a("memory", commands=n, **options)
"""


def instructions(checkout: Path, workload: str, n: int, options: dict[str, object] | None = None) -> int:
    benches = checkout / "benches"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                str(checkout / ".venv" / "bin" / "python"),
                "-c",
                PROGRAM.format(benches=str(benches), n=n, workload=workload, options=options or {}),
            ],
            capture_output=True,
            text=True,
            timeout=3600,
            cwd=benches,
        )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or not found:
        raise RuntimeError(f"callgrind failed in {checkout}:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def per_command(checkout: Path, workload: str, small: int, large: int, options: dict[str, object] | None = None) -> float:
    return (instructions(checkout, workload, large, options) - instructions(checkout, workload, small, options)) / (large - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout with its own .venv (make build there)")
    parser.add_argument("--workload", choices=("a", "b", "c", "bulk", "floor"), default="a")
    parser.add_argument("--floor", action="store_true", help="compare the workload with the handler floor (benches/floor.py)")
    parser.add_argument("--option", choices=("encrypt", "keys"), help="compare this checkout with the option off and on")
    parser.add_argument("--telemetry", choices=("metrics", "sampled", "all"), help="compare telemetry off with this")
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=6000)
    args = parser.parse_args()
    unit = "load" if args.workload == "c" else "command"
    if args.telemetry:
        off = per_command(HERE.parent, args.workload, args.small, args.large)
        on = per_command(HERE.parent, args.workload, args.small, args.large, {"telemetry": args.telemetry})
        print(
            f"workload {args.workload}, in memory: {off:,.0f} instructions per {unit} without telemetry, {on:,.0f} with {args.telemetry}"
        )
        print(f"  off / {args.telemetry}: {off / on:.3f} (the throughput ratio if instructions were all)")
        return
    if args.floor:
        floor = per_command(HERE.parent, "floor", args.small, args.large)
        work = per_command(HERE.parent, args.workload, args.small, args.large)
        print(f"handler floor: {floor:,.0f} instructions per command; workload {args.workload}, in memory: {work:,.0f}")
        print(f"  floor / workload: {floor / work:.3f} (the throughput ratio to the floor if instructions were all)")
        return
    if args.option:
        # Without keys, the key strings are still made (and not sent): see workload_b.
        baseline = {"keys": "unsent"} if args.option == "keys" else None
        off = per_command(HERE.parent, args.workload, args.small, args.large, baseline)
        on = per_command(HERE.parent, args.workload, args.small, args.large, {args.option: True})
        print(f"workload {args.workload}, in memory: {off:,.0f} instructions per {unit} without {args.option}, {on:,.0f} with it")
        print(f"  with / without: {on / off:.4f} (a throughput of about {off / on:.3f}x)")
        return
    candidate = per_command(HERE.parent, args.workload, args.small, args.large)
    print(f"workload {args.workload}, in memory: {candidate:,.0f} instructions per {unit} (this checkout)")
    if args.baseline:
        base = per_command(args.baseline.resolve(), args.workload, args.small, args.large)
        print(f"  baseline: {base:,.0f} instructions per command")
        print(f"  this / baseline: {candidate / base:.4f} (a throughput of about {base / candidate:.3f}x the baseline's)")


if __name__ == "__main__":
    main()
