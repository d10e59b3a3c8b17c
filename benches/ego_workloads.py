"""The workloads of BENCHMARKS.md, run on ego. Each function returns a dict of figures.

Store kinds: "memory", "rocksdb" (durable: the write-ahead log is synced before each reply).
`batch` is the entity batch threshold (0: off).
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples" / "bank"))

import ego  # noqa: E402

from bank_pb2 import Credit, OpenAccount  # noqa: E402
from domain import AccountBehavior  # noqa: E402

PG_URL = os.environ.get("EGO_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def make_store(kind: str, tmp: str, sync: bool = True) -> ego.stores.NativeStore:
    """A fresh store: "memory", "rocksdb" (in `tmp`) or "postgres" (fresh tables)."""
    if kind == "memory":
        return ego.MemoryStore()
    if kind == "rocksdb":
        return ego.RocksDBStore(Path(tmp) / "db", sync=sync)
    return ego.PostgresStore(PG_URL, table_prefix=f"bench{os.getpid()}_")


@contextmanager
def engine_on(
    kind: str, batch: int = 0, window: float = 0.0, shared: bool = False, **engine_opts: object
) -> Iterator[ego.Engine]:
    """A started engine with the account type registered for every id (``shared``: declared
    shared by several processes, a journal read before each command)."""
    tmp = tempfile.mkdtemp(prefix="ego-bench-")
    store = make_store(kind, tmp)
    try:
        with ego.Engine("bench", store=store, **engine_opts) as engine:  # type: ignore[arg-type]
            engine.register_entity_type(AccountBehavior, batch_threshold=batch, batch_flush_window=window, shared=shared)
            yield engine
    finally:
        store.drop_tables()
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def workload_a(kind: str, batch: int = 0, commands: int = 20_000) -> dict[str, float]:
    """One account, `commands` credits one after another, each reply awaited (sync API)."""
    if kind != "memory":
        commands = min(commands, 5_000 if kind == "rocksdb" else 2_000)
    with engine_on(kind, batch) as engine:
        engine.send_command("a", OpenAccount(initial_balance=0))
        credit = Credit(amount=1)
        send = engine.send_command
        started = time.perf_counter()
        for _ in range(commands):
            send("a", credit)
        elapsed = time.perf_counter() - started
        assert engine.get_state("a")[1] == commands + 1
    return {"cmds_per_s": commands / elapsed}


def telemetry_settings(which: str) -> dict[str, object]:
    """Engine options for telemetry "off", "metrics" (counters read by a reader that collects
    on demand), "all" (plus traces: an SDK tracer provider exporting in batches to an exporter
    that drops them, so the cost measured is ego's and the SDK's, not an exporter's) or
    "sampled" (as "all", with 1% of traces sampled, as production setups do)."""
    if which == "off":
        return {}
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class Drop(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)) if which == "sampled" else None)
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=65536))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return {
        "telemetry": ego.Telemetry(
            tracer_provider=tracer_provider, meter_provider=meter_provider, traces=which in ("all", "sampled"), metrics=True
        )
    }


def workload_b(
    kind: str,
    batch: int = 0,
    accounts: int = 1000,
    credits: int = 20,
    latency: bool = False,
    burst: bool = False,
    telemetry: str = "off",
    encrypt: bool = False,
    keys: bool | str = False,
    shared: bool = False,
) -> dict[str, float]:
    """`accounts` accounts x `credits` credits, issued concurrently through the asyncio API:
    each round sends one credit to every account and gathers the replies (1,000 concurrent
    callers). With `burst`, all `accounts x credits` commands are sent at once and gathered
    (every account then has `credits` commands waiting: what batching is for). `telemetry`:
    see `telemetry_settings`. `encrypt`: encryption at rest on (the built-in key store).
    `keys`: every credit carries its own idempotency key (True). The key strings are made
    before the timed loop: a caller that retries has its key already (a request id), so
    making one is not what the key costs. `keys="unsent"` makes the same strings and sends
    the credits without them: the baseline of an instruction count (benches/instructions.py
    counts the whole process, so the strings' making cancels out and the difference is what
    ego does with a key). `shared`: the account type is declared shared by several
    processes (a journal head read before each command)."""

    async def run() -> dict[str, float]:
        with engine_on(kind, batch, shared=shared, **telemetry_settings(telemetry), **encryption_settings(encrypt)) as engine:
            ids = [f"acc-{i}" for i in range(accounts)]
            await asyncio.gather(*(engine.send_command_async(i, OpenAccount(initial_balance=0)) for i in ids))
            credit = Credit(amount=1)
            send = engine.send_command_async
            lat: list[float] = []
            key_rounds = [[f"{i}/{round_}" for i in ids] for round_ in range(credits)] if keys else []
            gc.collect()
            started, cpu = time.perf_counter(), time.process_time()
            if burst:
                await asyncio.gather(*[send(i, credit) for _ in range(credits) for i in ids])
            for round_ in range(0 if burst else credits):
                if keys is True:
                    await asyncio.gather(
                        *[send(i, credit, idempotency_key=k) for i, k in zip(ids, key_rounds[round_], strict=True)]
                    )
                    continue
                if latency:
                    t0 = time.perf_counter()
                    futures = [send(i, credit) for i in ids]
                    for f in futures:
                        f.add_done_callback(lambda _f, t0=t0: lat.append(time.perf_counter() - t0))
                    await asyncio.gather(*futures)
                else:
                    await asyncio.gather(*[send(i, credit) for i in ids])
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            state, revision = await engine.get_state_async(ids[-1])
            assert (state.balance, revision) == (credits, credits + 1)
            out = {"cmds_per_s": accounts * credits / elapsed, "cmds_per_cpu_s": accounts * credits / cpu}
            if lat:
                lat.sort()
                out["p50_ms"] = statistics.median(lat) * 1e3
                out["p99_ms"] = lat[int(len(lat) * 0.99)] * 1e3
            return out

    return asyncio.run(run())


def workload_bulk(
    kind: str, api: str = "sync", accounts: int = 1000, credits: int = 20, per_call: int = 1000
) -> dict[str, float]:
    """Workload B's commands (`accounts` accounts x `credits` credits) through the bulk API:
    `send_commands` (api="sync") or `send_commands_async` (api="async"), `per_call` pairs per
    call (1,000: one round of B per call, every account once)."""

    async def run() -> dict[str, float]:
        with engine_on(kind) as engine:
            ids = [f"acc-{i}" for i in range(accounts)]
            await asyncio.gather(*(engine.send_command_async(i, OpenAccount(initial_balance=0)) for i in ids))
            credit = Credit(amount=1)
            pairs = [(i, credit) for _ in range(credits) for i in ids]
            calls = [pairs[k : k + per_call] for k in range(0, len(pairs), per_call)]
            gc.collect()
            started, cpu = time.perf_counter(), time.process_time()
            if api == "sync":
                for call in calls:
                    engine.send_commands(call)
            else:
                for call in calls:
                    await engine.send_commands_async(call)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            state, revision = await engine.get_state_async(ids[-1])
            assert (state.balance, revision) == (credits, credits + 1)
            return {"cmds_per_s": accounts * credits / elapsed, "cmds_per_cpu_s": accounts * credits / cpu}

    return asyncio.run(run())


def encryption_settings(on: bool) -> dict[str, object]:
    """Engine options with encryption at rest on (a fixed master key) or off."""
    return {"encryption": ego.Encryption(master_key=bytes(range(32)))} if on else {}


def workload_c(
    kind: str, snapshot_every: int = 0, events: int = 10_000, loads: int = 15, encrypt: bool = False
) -> dict[str, float]:
    """Load (recover) an account with `events` events, without snapshots or with one every
    `snapshot_every` events: milliseconds per load (median). `encrypt`: encryption at rest on."""
    tmp = tempfile.mkdtemp(prefix="ego-bench-")
    store = make_store(kind, tmp, sync=False)
    try:
        with ego.Engine("bench", store=store, **encryption_settings(encrypt)) as engine:  # type: ignore[arg-type]
            engine.register_entity_type(AccountBehavior, snapshot_interval=snapshot_every)
            engine.send_command("c", OpenAccount(initial_balance=0))
            futures_engine = engine
            credit = Credit(amount=1)
            for _ in range(events - 1):
                futures_engine.send_command("c", credit)
            times = []
            for _ in range(loads):
                engine.stop_entity("c")
                started = time.perf_counter()
                _, revision = engine.get_state("c")
                times.append(time.perf_counter() - started)
                assert revision == events
        return {"ms_per_load": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3}
    finally:
        store.drop_tables()
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def open_all(engine: ego.Engine, ids: Sequence[str], balance: int = 0) -> None:
    """Opens the accounts `ids`, 10,000 concurrently at a time."""
    for start in range(0, len(ids), 10_000):
        await asyncio.gather(
            *(engine.send_command_async(i, OpenAccount(initial_balance=balance)) for i in ids[start : start + 10_000])
        )


def open_accounts(path: str, accounts: int) -> None:
    """Opens `accounts` accounts in a RocksDB store at `path` (workload E's first phase)."""
    ids = [f"acc-{i}" for i in range(accounts)]
    with ego.RocksDBStore(path, sync=False) as store, ego.Engine("e", store=store) as engine:
        engine.register_entity_type(AccountBehavior)
        asyncio.run(open_all(engine, ids, balance=1000))


def workload_e(accounts: int = 100_000) -> dict[str, float]:
    """Memory per idle activated account beyond its state object: accounts are opened by
    another process (so no memory that process freed is reused here), then activated
    (recovered) in this one; the RSS growth minus the size of as many state objects is the
    engine's own cost."""
    from bank_pb2 import Account

    tmp = Path(tempfile.mkdtemp(prefix="ego-bench-e-"))
    ids = [f"acc-{i}" for i in range(accounts)]
    try:
        code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import ego_workloads as w; w.open_accounts({str(tmp / 'db')!r}, {accounts})"
        subprocess.run([sys.executable, "-c", code], check=True)
        with ego.RocksDBStore(tmp / "db", sync=False, cache_bytes=8 << 20) as store, ego.Engine("e", store=store) as engine:
            engine.register_entity_type(AccountBehavior, passivate_after=3600)
            engine.get_state(ids[0])  # warm: first activation loads code paths
            gc.collect()
            before = rss_bytes()
            for i in ids:
                engine.get_state(i)
            gc.collect()
            after = rss_bytes()
            assert engine.live_count() == accounts
        # The state objects alone, built the same way (one Account per account).
        gc.collect()
        base = rss_bytes()
        states = [Account(account_id=i, balance=1000, open=True) for i in ids]
        gc.collect()
        state_bytes = (rss_bytes() - base) / accounts
        del states
        per_entity = (after - before) / accounts
        return {"bytes_per_entity": per_entity - state_bytes, "state_bytes": state_bytes, "total_bytes_per_entity": per_entity}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def workload_f(accounts: int, commands: int | None = None, kind: str = "memory", id_list: bool = False) -> dict[str, float]:
    """Workload B with `accounts` accounts: rounds of 1,000 concurrent credits that cycle over
    every account, `max(20_000, accounts)` credits in all, on accounts opened beforehand.
    `cmds_per_s` (wall clock) and `cmds_per_cpu_s` (per second of the process's CPU time,
    every thread: what a loaded machine moves least). `id_list`: hold the ids in a list, as
    this benchmark did before 2026-12-01 (the collector then walks it on full collections)."""
    commands = commands or max(20_000, accounts)

    async def run() -> dict[str, float]:
        with engine_on(kind) as engine:
            # A tuple, not a list: the collector untracks a tuple of strings, while it walks a
            # list's every item on each full collection; with a million ids that walk (cache
            # misses on every string) is the benchmark's own cost, not the engine's
            # (docs/benchmarks.md, workload F).
            ids: Sequence[str] = [f"acc-{i}" for i in range(accounts)] if id_list else tuple(f"acc-{i}" for i in range(accounts))
            await open_all(engine, ids)
            credit = Credit(amount=1)
            send = engine.send_command_async
            gc.collect()
            started, cpu = time.perf_counter(), time.process_time()
            done = 0
            while done < commands:
                batch = [ids[(done + k) % accounts] for k in range(1000)]
                await asyncio.gather(*[send(i, credit) for i in batch])
                done += 1000
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            return {"cmds_per_s": done / elapsed, "cmds_per_cpu_s": done / cpu}

    return asyncio.run(run())


class _Bulk(ego.EventSourcedBehavior):  # type: ignore[type-arg]
    """Emits `amount` AccountCredited events per Credit (to fill a journal fast)."""

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Any:
        from bank_pb2 import Account

        return Account(account_id=self.entity_id)

    def handle_command(self, command: Any, state: Any) -> list[Any]:
        from bank_pb2 import AccountCredited

        return [AccountCredited(amount=1) for _ in range(command.amount)]

    def handle_event(self, event: Any, state: Any) -> Any:
        state.balance += event.amount
        return state


def workload_d(kind: str = "rocksdb", events: int = 1_000_000, batch_size: int = 1000) -> dict[str, float]:
    """A projection catching up on `events` events with a trivial batch handler (a count)."""
    tmp = tempfile.mkdtemp(prefix="ego-bench-d-")
    store = make_store(kind, tmp, sync=False)
    try:
        per = 100
        with ego.Engine("d", store=store) as engine:
            engine.register_entity_type(_Bulk)

            async def fill() -> None:
                ids = [f"acc-{i}" for i in range(events // per)]
                for start in range(0, len(ids), 1000):
                    await asyncio.gather(*(engine.send_command_async(i, Credit(amount=per)) for i in ids[start : start + 1000]))

            asyncio.run(fill())
        count = 0
        done = threading.Event()

        def handler(batch: list[Any]) -> None:
            nonlocal count
            count += len(batch)
            if count >= events:
                done.set()

        with ego.Engine("d", store=store) as engine:
            gc.collect()
            started = time.perf_counter()
            engine.add_projection("count", handler, batch_size=batch_size)
            assert done.wait(600), f"caught up on {count} of {events}"
            elapsed = time.perf_counter() - started
        return {"events_per_s": events / elapsed}
    finally:
        store.drop_tables()
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)
