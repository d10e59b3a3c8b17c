"""Floors of the bank workload on this machine, without any engine, to see what ego adds:

- handler floor: the bank behaviour's own work per command (handle_command, handle_event and
  encoding the event), in a tight loop;
- asyncio floor: creating a future per command, resolving it, and gathering 1,000 per round;
- ego: workloads A (sync) and B (asyncio, rounds of 1,000) on the in-memory store.

    python benches/floor.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "examples" / "bank"))

import ego_workloads  # noqa: E402

from bank_pb2 import Credit, OpenAccount  # noqa: E402
from domain import AccountBehavior  # noqa: E402

N = 200_000


def handler_floor() -> float:
    """Commands per second of wall clock (see :func:`handler_floor_rates`)."""
    return handler_floor_rates()["cmds_per_s"]


def handler_floor_rates() -> dict[str, float]:
    """The handler floor per second of wall clock and per second of CPU time."""
    b = AccountBehavior("a")
    state = b.initial_state()
    state = b.handle_event(b.handle_command(OpenAccount(initial_balance=0), state)[0], state)
    credit = Credit(amount=1)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(N):
        events = b.handle_command(credit, state)
        for e in events:
            e.SerializeToString()
            state = b.handle_event(e, state)
    return {"cmds_per_s": N / (time.perf_counter() - started), "cmds_per_cpu_s": N / (time.process_time() - cpu)}


def asyncio_floor() -> float:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        for _ in range(N // 1000):
            futures = [loop.create_future() for _ in range(1000)]
            for f in futures:
                f.set_result((None, 1))
            await asyncio.gather(*futures)
        return N / (time.perf_counter() - started)

    return asyncio.run(main())


def best_of(f, runs: int = 5) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    values = [f() for _ in range(runs)]
    return statistics.median(values), min(values), max(values)


def main() -> None:
    rows = [
        ("handler floor (handle_command + handle_event + encode)", best_of(handler_floor)),
        ("asyncio floor (future per command, gather 1,000)", best_of(asyncio_floor)),
        ("ego A, sync API, memory", best_of(lambda: ego_workloads.workload_a("memory")["cmds_per_s"])),
        ("ego B, asyncio, memory", best_of(lambda: ego_workloads.workload_b("memory")["cmds_per_s"])),
    ]
    print("| what | per second, median (min-max) | us per command |")
    print("|---|---|---|")
    for name, (med, lo, hi) in rows:
        print(f"| {name} | {med:,.0f} ({lo:,.0f}-{hi:,.0f}) | {1e6 / med:.2f} |")


if __name__ == "__main__":
    main()
