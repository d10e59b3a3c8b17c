"""Workload F with CPython's cyclic garbage collector observed during the measured loop: how
many collections of each generation ran and how long they took, with the collector as is,
disabled, or after `gc.freeze()` (both applied once the accounts are loaded).

    python benches/f_gc.py [--accounts 1000000] [--gc on|off|freeze] [--untrack states|all]

`--untrack` takes the live accounts' states (or states and behaviours) out of the
collector's view once they are loaded (through the C API, with ctypes), to measure what an
engine that does so would gain.

Used for docs/performance.md (scaling with the number of entities).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ego_workloads


def untrack(which: str) -> None:
    """Untracks every live account state (and behaviour, with "all")."""
    import ctypes

    from bank_pb2 import Account
    from domain import AccountBehavior

    kinds: tuple[type, ...] = (Account, AccountBehavior) if which == "all" else (Account,)
    gc_untrack = ctypes.pythonapi.PyObject_GC_UnTrack
    gc_untrack.argtypes = [ctypes.py_object]
    n = 0
    for obj in gc.get_objects():
        if isinstance(obj, kinds):
            gc_untrack(obj)
            n += 1
    print(f"untracked {n:,} objects")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--gc", choices=("on", "off", "freeze"), default="on")
    parser.add_argument("--untrack", choices=("none", "states", "all"), default="none")
    args = parser.parse_args()
    stats: dict[str, Any] = {"measuring": False, "runs": [0, 0, 0], "seconds": [0.0, 0.0, 0.0]}
    started = [0.0]

    def observe(phase: str, info: dict[str, int]) -> None:
        if not stats["measuring"]:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            stats["runs"][info["generation"]] += 1
            stats["seconds"][info["generation"]] += time.perf_counter() - started[0]

    collect = gc.collect

    def collect_then_measure(*a: Any) -> int:
        # workload_f calls gc.collect() once, right before its measured loop.
        n = collect(*a)
        if args.untrack != "none":
            untrack(args.untrack)
        if args.gc == "off":
            gc.disable()
        elif args.gc == "freeze":
            gc.freeze()
        stats["measuring"] = True
        return n

    gc.collect = collect_then_measure
    gc.callbacks.append(observe)
    result = ego_workloads.workload_f(args.accounts)
    gc.enable()
    runs, seconds = stats["runs"], stats["seconds"]
    print(f"{args.accounts:,} accounts, gc {args.gc}: {result['cmds_per_s']:,.0f} cmds/s")
    for g in range(3):
        print(f"  generation {g}: {runs[g]:,} collections, {seconds[g]:.2f} s")


if __name__ == "__main__":
    main()
