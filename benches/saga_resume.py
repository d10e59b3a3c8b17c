"""What resuming sagas costs at start (the listing of the sagas' journals) on a store that
also holds many other entities, on two builds of ego, alternating.

    python benches/saga_resume.py --baseline-python ../ego-old/.venv/bin/python [--runs 5] [--entities 200000] [--sagas 1000] [--store postgres]

Each run is its own process: a fresh store (RocksDB, or tables of their own on PostgreSQL from
EGO_BENCH_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test) gets `entities` one-event entities (ids
before and after the sagas' ``ego.saga:`` prefix, half each) and `sagas` saga journals that
are over (one ``SagaEnded`` each); then the time of one resume pass (what an engine does when
its first saga type is registered) is measured. Prints the medians (min-max) in milliseconds
per build and the candidate/baseline ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from child_run import result_of, take_turns
from ego_workloads import PG_URL

PROGRAM = r"""
import asyncio, json, os, shutil, sys, tempfile, time
from pathlib import Path
import ego
from ego.v1 import Event
from ego.v1.sagas_pb2 import SagaEnded

entities, sagas, kind = {entities}, {sagas}, {kind!r}
tmp = tempfile.mkdtemp(prefix="ego-bench-")
if kind == "postgres":
    store = ego.PostgresStore({pg!r}, table_prefix=f"sr{{os.getpid()}}_")
else:
    store = ego.RocksDBStore(Path(tmp) / "db", sync=False)
try:
    def put(pid, message):
        e = Event(persistence_id=pid, sequence_number=1, timestamp=time.time_ns())
        e.event.Pack(message)
        store.write_events([e])
    for i in range(entities):
        put(("account-" if i % 2 else "zz-") + str(i), SagaEnded())
    for i in range(sagas):
        put(f"ego.saga:s-{{i}}", SagaEnded())
    with ego.Engine("bench", store=store) as engine:
        runtime = engine._saga_runtime()
        started = time.perf_counter()
        asyncio.run_coroutine_threadsafe(runtime._resume(), runtime.loop).result()
        elapsed = time.perf_counter() - started
    print("RESULT", json.dumps(elapsed * 1000))
finally:
    if kind == "postgres":
        store.drop_tables()
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
"""


def measure(python: str, entities: int, sagas: int, kind: str) -> float:
    code = PROGRAM.format(entities=entities, sagas=sagas, kind=kind, pg=PG_URL)
    return float(result_of(python, code, what="the resume run"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-python", required=True, help="the python of a venv where the baseline build is installed")
    parser.add_argument("--candidate-python", default=sys.executable)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--entities", type=int, default=200_000)
    parser.add_argument("--sagas", type=int, default=1000)
    parser.add_argument("--store", choices=("rocksdb", "postgres"), default="rocksdb")
    args = parser.parse_args()
    builds = {"baseline": args.baseline_python, "candidate": args.candidate_python}
    results = take_turns(list(builds), args.runs, lambda name: measure(builds[name], args.entities, args.sagas, args.store))
    medians = {name: statistics.median(v) for name, v in results.items()}
    print(
        f"resume on {args.store} with {args.entities:,} other entities and {args.sagas:,} sagas that are over, "
        f"{args.runs} runs each"
    )
    for name, values in results.items():
        print(f"  {name:9} {medians[name]:>10,.1f} ms  ({min(values):,.1f}-{max(values):,.1f})")
    print(f"  candidate/baseline {medians['candidate'] / medians['baseline']:.3f}")


if __name__ == "__main__":
    main()
