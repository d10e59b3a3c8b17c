"""The cost of durable-state writes on two builds of ego, alternating: what writing the
durable-state change log (one more record per write, in the same atomic write) costs.

    python benches/state_writes.py --baseline-python ../ego-old/.venv/bin/python [--runs 7] [--stores memory,rocksdb,postgres]
    python benches/state_writes.py --baseline-python ../ego-old/.venv/bin/python --instructions [--stores memory,rocksdb]
    python benches/state_writes.py --baseline-python ../ego-old/.venv/bin/python --stores postgres --shared [--state-bytes 1000]

The workload (here, the same code for both builds): 200 durable-state entities (a balance),
`rounds` rounds of one command to every entity through the asyncio API, each round gathered
(200 concurrent callers), so every command is one version written. Each run is its own
process; the builds take turns, so drift of the machine weighs on both. Prints commands/s
per build and store: median (min-max), and the candidate/baseline ratio of the medians.

`--instructions` counts instructions per command instead (valgrind's callgrind: the same
whatever else loads the machine), with the commands sent one after another through the sync
API (RocksDB without sync: the syncs' waiting is no instruction count): the run with
`--large` commands minus the run with `--small`, divided by the difference, so start-up
cancels out.

`--shared` registers the type ``shared=True`` (a read of the stored state, or of its version,
before each command); `--state-bytes` pads each state to about that many bytes.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from child_run import result_of, take_turns

HERE = Path(__file__).resolve().parent
PG_URL = os.environ.get("EGO_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

PROGRAM = r"""
import asyncio, json, os, shutil, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, {bank!r})
import ego
from bank_pb2 import AccountOpened, Credit

class Wallet(ego.DurableStateBehavior):
    def __init__(self, entity_id):
        self.entity_id = entity_id
    def id(self):
        return self.entity_id
    def initial_state(self):
        return AccountOpened(account_id=self.entity_id + PAD)
    def handle_command(self, command, state):
        return AccountOpened(account_id=self.entity_id + PAD, balance=state.balance + command.amount)

kind, rounds, entities, sequential, shared = {kind!r}, {rounds}, {entities}, {sequential!r}, {shared!r}
PAD = "x" * {state_bytes}
tmp = tempfile.mkdtemp(prefix="ego-bench-")
if kind == "memory":
    store = ego.MemoryStore()
elif kind == "rocksdb":
    store = ego.RocksDBStore(Path(tmp) / "db", sync=not sequential)
else:
    store = ego.PostgresStore({pg!r}, table_prefix=f"sw{{os.getpid()}}_")

async def run():
    with ego.Engine("bench", store=store) as engine:
        engine.register_entity_type(Wallet, shared=shared)
        ids = [f"w-{{i}}" for i in range(entities)]
        credit = Credit(amount=1)
        send = engine.send_command_async
        await asyncio.gather(*(send(i, credit) for i in ids))
        started = time.perf_counter()
        for _ in range(rounds):
            if sequential:
                for i in ids:
                    engine.send_command(i, credit)
            else:
                await asyncio.gather(*(send(i, credit) for i in ids))
        elapsed = time.perf_counter() - started
        assert engine.get_state(ids[0])[1] == rounds + 1
    return rounds * entities / elapsed

try:
    print("RESULT", json.dumps(asyncio.run(run())))
finally:
    if kind == "postgres":
        store.drop_tables()
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
"""

ROUNDS = {"memory": 300, "rocksdb": 150, "postgres": 60}


def program(kind: str, rounds: int, entities: int, sequential: bool = False, shared: bool = False, state_bytes: int = 0) -> str:
    bank = str(HERE.parent / "examples" / "bank")
    return PROGRAM.format(
        bank=bank,
        kind=kind,
        rounds=rounds,
        entities=entities,
        pg=PG_URL,
        sequential=sequential,
        shared=shared,
        state_bytes=state_bytes,
    )


def instructions(python: str, kind: str, rounds: int, entities: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, "-c", program(kind, rounds, entities, True)],
            capture_output=True,
            text=True,
            timeout=3600,
            cwd=HERE,
        )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or not found:
        raise RuntimeError(f"callgrind failed with {python}:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def measure(python: str, kind: str, entities: int, shared: bool = False, state_bytes: int = 0) -> float:
    code = program(kind, ROUNDS[kind], entities, shared=shared, state_bytes=state_bytes)
    return float(result_of(python, code, what=kind))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-python", required=True, help="the python of a venv where the baseline build is installed")
    parser.add_argument("--candidate-python", default=sys.executable)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--stores", default="memory,rocksdb,postgres")
    parser.add_argument("--entities", type=int, default=200)
    parser.add_argument("--shared", action="store_true", help="register the type shared=True")
    parser.add_argument("--state-bytes", type=int, default=0, help="pad each state to about this many bytes")
    parser.add_argument("--instructions", action="store_true", help="count instructions per command (callgrind)")
    parser.add_argument("--small", type=int, default=5, help="rounds of the small run (--instructions)")
    parser.add_argument("--large", type=int, default=15, help="rounds of the large run (--instructions)")
    args = parser.parse_args()
    builds = {"baseline": args.baseline_python, "candidate": args.candidate_python}
    if args.instructions:
        for kind in args.stores.split(","):
            per: dict[str, float] = {}
            for name, python in builds.items():
                small = instructions(python, kind, args.small, args.entities)
                large = instructions(python, kind, args.large, args.entities)
                per[name] = (large - small) / ((args.large - args.small) * args.entities)
                print(f"{kind:9} {name:9} {per[name]:>12,.0f} instructions/command")
            print(f"{kind:9} candidate/baseline {per['candidate'] / per['baseline']:.3f}")
        return
    for kind in args.stores.split(","):

        def one(name: str, kind: str = kind) -> float:
            return measure(builds[name], kind, args.entities, args.shared, args.state_bytes)

        results = take_turns(list(builds), args.runs, one)
        medians = {name: statistics.median(v) for name, v in results.items()}
        for name, values in results.items():
            print(f"{kind:9} {name:9} {medians[name]:>10,.0f} cmds/s  ({min(values):,.0f}-{max(values):,.0f})")
        print(f"{kind:9} candidate/baseline {medians['candidate'] / medians['baseline']:.3f}")


if __name__ == "__main__":
    main()
