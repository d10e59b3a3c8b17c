"""Publishers: ego publishing N events from the journal vs the same client's own publish loop
on the same broker, in the same run; and the end-to-end latency from "write acknowledged" to
"broker acknowledged" at a steady rate.

    python benches/publishers.py [--events 1000000] [--rate 10000] [--seconds 5] [--rounds 1] [--only kafka,nats,pulsar,websocket]
    python benches/publishers.py --baseline-python ../ego-old/.venv/bin/python [--events 300000] [--rounds 5] [--only kafka]

With ``--baseline-python``, two builds of ego publish instead (this one and the one installed for
that python), each round in a fresh process per build, taking turns, on one broker: ego's rate
and its process's CPU time per record for each, and their ratios (no raw loop, no latency).

Brokers (started here on free ports): Tansu (Kafka protocol, memory storage), a throwaway
nats-server with JetStream, pulsar-lite, and a websockets peer that acknowledges every frame.
The raw loop sends the same payloads (the protobuf envelopes ego sends), with the same keys,
headers and producer settings, and waits for every acknowledgement. With ``--rounds N`` the raw
loop and ego alternate N times on the same broker (each on a topic of its own) and the
medians are printed with every round's figures: on a shared machine one pair is noise.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for path in (HERE.parent / "examples" / "bank", HERE.parent / "tests"):
    sys.path.insert(0, str(path))

from brokers import nats_server, pulsar_lite, tansu  # noqa: E402
from publishing import make_publisher  # noqa: E402
from waiting import wait_until  # noqa: E402

import ego  # noqa: E402
from ego.publishers import Record  # noqa: E402

from bank_pb2 import Credit, OpenAccount  # noqa: E402
from domain import AccountBehavior  # noqa: E402

ACCOUNTS = 10_000


def journal(events: int) -> tuple[ego.Engine, list[Record]]:
    """An engine on a memory store holding `events` bank events over 10,000 accounts, and the
    records a publisher gets for them (for the raw loops)."""
    engine = ego.Engine("bench", store=ego.MemoryStore())
    engine.start()
    engine.register_entity_type(AccountBehavior, prefix="account-")
    accounts = [f"account-{i}" for i in range(ACCOUNTS)]

    async def write() -> None:
        await asyncio.gather(*(engine.send_command_async(a, OpenAccount(initial_balance=1)) for a in accounts))
        for seq in range(2, events // ACCOUNTS + 1):
            await asyncio.gather(*(engine.send_command_async(a, Credit(amount=seq)) for a in accounts))

    asyncio.run(write())
    collected: list[Record] = []

    class Grab:
        def publish(self, records: list[Record]) -> None:
            collected.extend(records)

    engine.add_event_publisher(Grab(), name="grab", batch_size=4096)
    wait_until(lambda: len(collected) >= events, timeout=600)
    engine.remove_publisher("grab")
    return engine, collected


Raw = tuple[str, str, bytes, dict[str, str]]
"""What a raw loop sends per event: (event id, key, value, headers), a plain tuple of strings
and bytes, so the million of them held for the raw loops are not tracked by Python's cyclic
garbage collector (holding the records themselves, each with its PersistedEvent, made every
full collection during ego's run walk millions of objects: a cost of the benchmark, not of
publishing)."""


def raw_inputs(records: list[Record]) -> list[Raw]:
    return [(r.id, r.key, r.value, r.headers) for r in records]


def raw_kafka(servers: str, topic: str, records: list[Raw]) -> float:
    import confluent_kafka as ck

    p = ck.Producer(
        {
            "bootstrap.servers": servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    acked = [0]

    def done(err: Any, _msg: Any) -> None:
        if err is None:
            acked[0] += 1

    t = time.perf_counter()
    for _, key, value, headers in records:
        while True:
            try:
                p.produce(topic, value, key, headers=headers, on_delivery=done)
                break
            except BufferError:
                p.poll(0.01)
    p.flush()
    assert acked[0] == len(records)
    return len(records) / (time.perf_counter() - t)


def raw_nats(url: str, stream: str, subject: str, records: list[Raw]) -> float:
    import nats

    async def run() -> float:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{subject}.>"], duplicate_window=120)
        t = time.perf_counter()
        futures = []
        for event_id, _, value, headers in records:
            futures.append(await js.publish_async(f"{subject}.account", value, headers={**headers, "Nats-Msg-Id": event_id}))
        await asyncio.gather(*futures)
        rate = len(records) / (time.perf_counter() - t)
        await nc.close()
        return rate

    return asyncio.run(run())


def raw_pulsar(url: str, topic: str, records: list[Raw]) -> float:
    import logging
    import threading

    import pulsar

    client = pulsar.Client(url, logger=logging.getLogger("bench.pulsar"))
    producer = client.create_producer(
        topic,
        send_timeout_millis=0,
        block_if_queue_full=True,
        max_pending_messages=20_000,
        batching_enabled=True,
        batching_max_messages=1000,
        batching_max_publish_delay_ms=1,
    )
    acked = [0]
    lock = threading.Lock()

    def done(res: Any, _mid: Any) -> None:
        with lock:
            acked[0] += 1

    t = time.perf_counter()
    for i, (_, key, value, headers) in enumerate(records):
        producer.send_async(value, done, properties=headers, partition_key=key, ordering_key=key, sequence_id=i + 1)
    producer.flush()
    rate = len(records) / (time.perf_counter() - t)
    client.close()
    return rate


class Peer:
    """A websockets server that acknowledges every frame with the count so far."""

    def __init__(self) -> None:
        import threading

        from brokers import free_port

        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def handler(ws: Any) -> None:
            n = 0
            async for _ in ws:
                n += 1
                await ws.send(str(n))

        async def up() -> None:
            from websockets.asyncio.server import serve

            self.server = await serve(handler, "127.0.0.1", self.port)

        asyncio.run_coroutine_threadsafe(up(), self.loop).result(10)


def raw_websocket(url: str, records: list[Raw]) -> float:
    from websockets.asyncio.client import connect

    async def run() -> float:
        async with connect(url) as ws:
            done = asyncio.Event()

            async def read() -> None:
                async for m in ws:
                    if int(m) >= len(records):
                        done.set()
                        return

            reader = asyncio.create_task(read())
            t = time.perf_counter()
            for _, _, value, _ in records:
                await ws.send(value)
            await done.wait()
            rate = len(records) / (time.perf_counter() - t)
            await reader
            return rate

    return asyncio.run(run())


def ego_rate(engine: ego.Engine, publisher: Any, events: int, name: str) -> float:
    t = time.perf_counter()
    engine.add_event_publisher(publisher, name=name)
    wait_until(lambda: engine.publisher_stats(name)["published"] >= events, timeout=1800)
    rate = events / (time.perf_counter() - t)
    engine.remove_publisher(name)
    return rate


class Timed:
    """Wraps a publisher: notes when each record's publish call returned (acknowledged). A
    connector with ``send`` (two phases: Kafka) is wrapped as such, so it runs as ego runs it."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.format, self.acked = inner, getattr(inner, "format", None), {}
        if callable(getattr(inner, "send", None)):
            self.send = self._send

    def publish(self, records: list[Record]) -> Any:
        return self._note(records, self.inner.publish(records))

    def _send(self, records: list[Record]) -> Any:
        wait = self.inner.send(records)
        return lambda: self._note(records, wait())

    def _note(self, records: list[Record], out: Any) -> Any:
        now = time.perf_counter()
        for r, res in zip(records, out or [None] * len(records), strict=True):
            if res is None:
                self.acked.setdefault(r.id, now)
        return out

    def close(self) -> None:
        self.inner.close()


def latency(kind: str, params: dict[str, Any], rate: int, seconds: float) -> tuple[float, float]:
    """p50 and p99 (ms) from write acknowledged to broker acknowledged at `rate` events/s."""
    engine = ego.Engine("latency", store=ego.MemoryStore())
    engine.start()
    engine.register_entity_type(AccountBehavior, prefix="account-")
    timed = Timed(make_publisher(kind, params))
    engine.add_event_publisher(timed, name="lat", start="latest")
    written: dict[str, float] = {}
    accounts = [f"account-{i}" for i in range(1000)]

    async def write() -> None:
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        revisions = dict.fromkeys(accounts, 0)
        start = time.perf_counter()
        i = 0
        for n in range(int(seconds / tick)):
            batch = [accounts[(i + k) % len(accounts)] for k in range(per_tick)]
            i += per_tick
            futures = []
            for a in batch:
                cmd = OpenAccount(initial_balance=1) if revisions[a] == 0 else Credit(amount=1)
                revisions[a] += 1
                f = engine.send_command_async(a, cmd)
                f.add_done_callback(lambda f, a=a, r=revisions[a]: written.setdefault(f"{a}:{r}", time.perf_counter()))
                futures.append(f)
            await asyncio.gather(*futures)
            await asyncio.sleep(max(0.0, start + (n + 1) * tick - time.perf_counter()))

    asyncio.run(write())
    wait_until(lambda: len(timed.acked) >= len(written), timeout=120)
    engine.stop()
    delays = sorted((timed.acked[k] - w) * 1000 for k, w in written.items())
    return statistics.median(delays), delays[int(len(delays) * 0.99)]


def build_rate(kind: str, params: dict[str, Any], events: int) -> dict[str, float]:
    """(In a child process of ``--baseline-python``.) Writes the journal, publishes it once
    with this process's build of ego: records per second and CPU microseconds per record of
    this process (ego's threads and the client library's)."""
    engine, written = journal(events)
    del written
    gc.collect()
    cpu = time.process_time()
    rate = ego_rate(engine, make_publisher(kind, params), events, f"ab-{kind}")
    cpu_us = (time.process_time() - cpu) / events * 1e6
    engine.stop()
    return {"rate": rate, "cpu_us_per_record": cpu_us}


def compare_builds(kind: str, baseline_python: str, events: int, rounds: int, work: Path) -> None:
    """This build against the one installed for `baseline_python`, taking turns (one broker)."""
    from child_run import IMPORT_WORKLOADS, result_of, take_turns

    broker = {"kafka": tansu, "nats": nats_server, "pulsar": pulsar_lite}[kind](work / kind).start()
    url = {"kafka": "{}", "nats": "nats://{}", "pulsar": "pulsar://{}"}[kind].format(f"127.0.0.1:{broker.port}")
    builds = {"baseline": baseline_python, "this build": sys.executable}

    def one(build: str) -> dict[str, float]:
        tag = uuid.uuid4().hex[:8]
        params = {
            "kafka": {"servers": url, "topic": f"ab-{tag}"},
            "nats": {"url": url, "prefix": f"ab{tag}", "stream": f"AB{tag}"},
            "pulsar": {"url": url, "topic": f"persistent://public/default/ab-{tag}"},
        }[kind]
        code = (
            IMPORT_WORKLOADS
            + f"import publishers; print('RESULT', json.dumps(publishers.build_rate({kind!r}, {params!r}, {events})))"
        )
        found = result_of(builds[build], code, what=f"{kind} with {build}")
        print(f"{kind:8} {build:10} {found['rate']:10,.0f}/s  {found['cpu_us_per_record']:5.2f} us CPU per record", flush=True)
        return found

    try:
        runs = take_turns(list(builds), rounds, one)
    finally:
        broker.stop(kill=True)
    medians = {b: {k: statistics.median(r[k] for r in runs[b]) for k in ("rate", "cpu_us_per_record")} for b in builds}
    for b, m in medians.items():
        print(f"{kind:8} {b:10} median of {rounds}: {m['rate']:10,.0f}/s  {m['cpu_us_per_record']:5.2f} us CPU per record")
    mine, theirs = medians["this build"], medians["baseline"]
    print(
        f"{kind:8} this build / baseline: rate {mine['rate'] / theirs['rate']:.2f}, "
        f"CPU per record {mine['cpu_us_per_record'] / theirs['cpu_us_per_record']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--only", default="kafka,nats,pulsar,websocket")
    parser.add_argument("--rounds", type=int, default=1, help="raw and ego alternating this many times (medians)")
    parser.add_argument("--baseline-python", help="compare this build with the one installed for this python")
    args = parser.parse_args()
    kinds = args.only.split(",")
    work = Path(tempfile.mkdtemp(prefix="ego-bench-publishers-"))
    if args.baseline_python:
        for kind in kinds:
            compare_builds(kind, args.baseline_python, args.events, args.rounds, work)
        return
    t = time.perf_counter()
    engine, written = journal(args.events)
    records = raw_inputs(written)
    del written
    gc.collect()
    print(f"journal of {len(records):,} events written in {time.perf_counter() - t:.1f} s", flush=True)
    rows = []
    for kind in kinds:
        broker: Any = None
        if kind == "kafka":
            broker = tansu(work / "tansu").start()
        elif kind == "nats":
            broker = nats_server(work / "nats").start()
        elif kind == "pulsar":
            broker = pulsar_lite(work / "pulsar").start()
        else:
            peer = Peer()
        raws, rates = [], []
        for n in range(args.rounds):
            tag = uuid.uuid4().hex[:8]
            if kind == "kafka":
                servers = f"127.0.0.1:{broker.port}"
                raws.append(raw_kafka(servers, f"raw-{tag}", records))
                params: dict[str, Any] = {"servers": servers, "topic": f"ego-{tag}"}
            elif kind == "nats":
                url = f"nats://127.0.0.1:{broker.port}"
                raws.append(raw_nats(url, f"RAW{tag}", f"raw{tag}", records))
                params = {"url": url, "prefix": f"ego{tag}", "stream": f"EGO{tag}"}
            elif kind == "pulsar":
                url = f"pulsar://127.0.0.1:{broker.port}"
                raws.append(raw_pulsar(url, f"persistent://public/default/raw-{tag}", records))
                params = {"url": url, "topic": f"persistent://public/default/ego-{tag}"}
            else:
                raws.append(raw_websocket(f"ws://127.0.0.1:{peer.port}/raw-{tag}", records))
                params = {"url": f"ws://127.0.0.1:{peer.port}/ego-{tag}"}
            rates.append(ego_rate(engine, make_publisher(kind, params), len(records), f"bench-{kind}-{n}"))
            if args.rounds > 1:
                print(
                    f"{kind:10} round {n + 1}: raw {raws[-1]:10,.0f}/s  ego {rates[-1]:10,.0f}/s  ratio {rates[-1] / raws[-1]:5.2f}",
                    flush=True,
                )
        raw, rate = statistics.median(raws), statistics.median(rates)
        lat_params = {**params, "topic": f"{params.get('topic', '')}-lat", "stream": f"{params.get('stream', '')}LAT"}
        lat_params["prefix"] = f"{params.get('prefix', '')}lat"
        p50, p99 = latency(kind, lat_params, args.rate, args.seconds)
        if broker is not None:
            broker.stop(kill=True)
        rows.append((kind, raw, rate, p50, p99))
        ratios = sorted(r / w for r, w in zip(rates, raws, strict=True))
        print(
            f"{kind:10} raw {raw:10,.0f}/s  ego {rate:10,.0f}/s  ratio {rate / raw:5.2f}  p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
            + (
                f"  (median of {args.rounds}; per-round ratios {', '.join(f'{x:.2f}' for x in ratios)})"
                if args.rounds > 1
                else ""
            ),
            flush=True,
        )
    engine.stop()


if __name__ == "__main__":
    main()
