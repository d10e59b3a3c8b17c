"""OpenTelemetry: spans with their parent-child links and attributes, metric values after a
known workload, and nothing recorded when telemetry is off. Uses the SDK's in-memory exporter
and reader."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import StatusCode
from test_logging import FailingSnapshots
from test_python_store import Broken
from waiting import wait_until

import ego

from bank_pb2 import Account, Credit, Debit, OpenAccount
from domain import AccountBehavior, AccountNotOpen, InsufficientFunds


class TracedAccount(AccountBehavior):
    """Opens a span of its own inside the handler: it must nest under ego.command."""

    def handle_command(self, command: Any, state: Account) -> Any:
        with trace.get_tracer("test").start_as_current_span("inside the handler"):
            return super().handle_command(command, state)


class Wallet(ego.DurableStateBehavior[Credit, Account]):
    def __init__(self, wallet_id: str) -> None:
        self.wallet_id = wallet_id

    def id(self) -> str:
        return self.wallet_id

    def initial_state(self) -> Account:
        return Account(account_id=self.wallet_id)

    def handle_command(self, command: Credit, state: Account) -> Account | None:
        if command.amount == 0:
            return None
        return Account(account_id=state.account_id, balance=state.balance + command.amount)


# One global tracer provider (OpenTelemetry allows setting it once per process): handlers
# open their spans with trace.get_tracer(), as applications do.
SPANS = InMemorySpanExporter()
TRACER_PROVIDER = TracerProvider()
TRACER_PROVIDER.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(TRACER_PROVIDER)


class Otel:
    def __init__(self) -> None:
        SPANS.clear()
        self.spans = SPANS
        self.tracer_provider = TRACER_PROVIDER
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def telemetry(self, **kw: Any) -> ego.Telemetry:
        return ego.Telemetry(tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kw)

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if name is None or s.name == name]

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, Any], ...]], Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return {}
        return {
            (m.name, tuple(sorted(p.attributes.items()))): p.value
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            for p in m.data.data_points
        }


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    yield o
    o.meter_provider.shutdown()


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    (parent,) = [s for s in spans if s.context.span_id == span.parent.span_id]
    return parent


def test_caller_command_and_persistence_spans_nest(otel: Otel) -> None:
    with ego.Engine("traced", telemetry=otel.telemetry()) as engine:
        engine.register_entity_type(TracedAccount, prefix="acc-")
        tracer = otel.tracer_provider.get_tracer("caller")
        with tracer.start_as_current_span("request") as request:
            engine.send_command("acc-1", OpenAccount(initial_balance=100))
        spans = otel.finished()
    send = otel.finished("ego.send_command")[0]
    command = otel.finished("ego.command")[0]
    persist = otel.finished("ego.persist")[0]
    inner = otel.finished("inside the handler")[0]
    assert parent_of(send, spans).context.span_id == request.get_span_context().span_id
    assert parent_of(command, spans) is send
    assert parent_of(persist, spans) is command
    assert parent_of(inner, spans) is command
    assert len({s.context.trace_id for s in (send, command, persist, inner)}) == 1
    assert send.attributes == {
        "ego.entity_id": "acc-1",
        "ego.command_type": "bank.v1.OpenAccount",
        "ego.outcome": "ok",
        "ego.revision": 1,
    }
    assert command.attributes == {
        "ego.entity_id": "acc-1",
        "ego.entity_type": "TracedAccount",
        "ego.command_type": "bank.v1.OpenAccount",
        "ego.outcome": "accepted",
        "ego.revision": 1,
    }
    assert persist.attributes == {"ego.entity_id": "acc-1", "ego.events": 1, "ego.revision": 1}
    assert persist.status.status_code == StatusCode.UNSET
    # Each span lies within its parent.
    assert send.start_time <= command.start_time <= command.end_time <= send.end_time
    assert command.start_time <= persist.start_time <= persist.end_time <= send.end_time


def test_a_rejection_is_recorded_on_the_caller_and_command_spans(otel: Otel) -> None:
    with ego.Engine("traced", telemetry=otel.telemetry()) as engine:
        engine.register_entity_type(AccountBehavior, prefix="acc-")
        engine.send_command("acc-1", OpenAccount(initial_balance=10))
        otel.spans.clear()
        with pytest.raises(InsufficientFunds):
            engine.send_command("acc-1", Debit(amount=50))
    (send,) = otel.finished("ego.send_command")
    (command,) = otel.finished("ego.command")
    assert otel.finished("ego.persist") == []
    assert send.attributes["ego.outcome"] == "rejected" and send.status.status_code == StatusCode.ERROR
    assert [e.name for e in send.events] == ["exception"]
    assert command.attributes["ego.outcome"] == "rejected" and command.status.status_code == StatusCode.ERROR
    assert command.attributes["ego.revision"] == 1


def test_a_failed_write_is_an_error_on_the_persist_span(otel: Otel) -> None:
    with ego.Engine("traced", store=Broken(), telemetry=otel.telemetry()) as engine:
        engine.register_entity_type(AccountBehavior)
        with pytest.raises(ego.errors.StoreError):
            engine.send_command("a", OpenAccount(initial_balance=0))
    (send,) = otel.finished("ego.send_command")
    (persist,) = otel.finished("ego.persist")
    assert send.attributes["ego.outcome"] == "failed"
    assert persist.status.status_code == StatusCode.ERROR and "disk unplugged" in (persist.status.description or "")


def test_queued_commands_carry_the_callers_context_to_the_bridge(otel: Otel) -> None:
    """Commands that queue behind a write run on the bridge thread, not the caller's: their
    spans still nest under their callers' spans; with batching, the batch's write is a child
    of its first command."""

    async def main(engine: ego.Engine) -> None:
        tracer = otel.tracer_provider.get_tracer("caller")

        async def one(i: int) -> None:
            with tracer.start_as_current_span(f"caller {i}"):
                await engine.send_command_async("acc-1", Credit(amount=1))

        await asyncio.gather(*(one(i) for i in range(50)))

    with ego.Engine("traced", telemetry=otel.telemetry()) as engine:
        engine.register_entity_type(AccountBehavior, prefix="acc-", batch_threshold=10, batch_flush_window=0.001)
        engine.send_command("acc-1", OpenAccount(initial_balance=0))
        otel.spans.clear()
        asyncio.run(main(engine))
        spans = otel.finished()
    callers = {s.context.span_id: s for s in spans if s.name.startswith("caller ")}
    sends = otel.finished("ego.send_command")
    commands = otel.finished("ego.command")
    assert len(sends) == len(commands) == 50
    for send in sends:
        assert parent_of(send, spans).context.span_id in callers
        assert send.attributes["ego.outcome"] == "ok"
    for command in commands:
        assert parent_of(command, spans).name == "ego.send_command"
    assert sorted(c.attributes["ego.revision"] for c in commands) == list(range(2, 52))
    persists = otel.finished("ego.persist")
    assert sum(p.attributes["ego.events"] for p in persists) == 50
    assert len(persists) < 50  # batched
    for p in persists:
        assert parent_of(p, spans).name == "ego.command"


def test_a_sampled_out_trace_creates_no_spans_and_the_handler_joins_it(otel: Otel) -> None:
    """With a sampler that drops the caller's trace, ego creates none of its spans; the
    handler still runs in the caller's (unsampled) context, so its own spans are dropped with
    the trace instead of starting new root traces."""
    unsampled = TracerProvider(sampler=ALWAYS_OFF)
    telemetry = ego.Telemetry(tracer_provider=unsampled, meter_provider=otel.meter_provider)

    async def many(engine: ego.Engine) -> None:
        await asyncio.gather(*(engine.send_command_async("acc-1", Credit(amount=1)) for _ in range(20)))

    with ego.Engine("sampled-out", telemetry=telemetry) as engine:
        engine.register_entity_type(TracedAccount, prefix="acc-", batch_threshold=5)
        engine.send_command("acc-1", OpenAccount(initial_balance=0))
        asyncio.run(many(engine))
        assert engine.get_state("acc-1")[1] == 21
    assert otel.finished() == []


def test_projection_batches_get_spans(otel: Otel) -> None:
    seen: list[Any] = []

    def handler(events: list[ego.PersistedEvent]) -> None:
        with trace.get_tracer("test").start_as_current_span("read model write"):
            seen.extend(events)

    with ego.Engine("traced", telemetry=otel.telemetry()) as engine:
        engine.register_entity_type(AccountBehavior, prefix="acc-")
        for i in range(5):
            engine.send_command(f"acc-{i}", OpenAccount(initial_balance=i))
        engine.add_projection("balances", handler, offset_store=ego.MemoryStore())
        wait_until(lambda: len(seen) >= 5, what="the projection's five events")
        engine.remove_projection("balances")
    batches = otel.finished("ego.projection.batch")
    assert sum(b.attributes["ego.events"] for b in batches) == 5
    assert {b.attributes["ego.projection"] for b in batches} == {"balances"}
    for inner in otel.finished("read model write"):
        assert parent_of(inner, otel.finished()).name == "ego.projection.batch"


def test_metrics_after_a_known_workload(otel: Otel) -> None:
    seen: list[Any] = []
    with ego.Engine("metered", telemetry=otel.telemetry(traces=False)) as engine:
        engine.register_entity_type(AccountBehavior, prefix="acc-")
        engine.register_entity_type(Wallet, prefix="w-")
        engine.send_command("acc-1", OpenAccount(initial_balance=10))
        for _ in range(3):
            engine.send_command("acc-1", Credit(amount=1))
        with pytest.raises(InsufficientFunds):
            engine.send_command("acc-1", Debit(amount=1000))
        with pytest.raises(AccountNotOpen):
            engine.send_command("acc-1", OpenAccount(initial_balance=1))  # rejected: already open

        async def wallet() -> None:
            await engine.send_command_async("w-1", Credit(amount=5))
            await engine.send_command_async("w-1", Credit(amount=5))
            await engine.send_command_async("w-1", Credit(amount=0))

        asyncio.run(wallet())
        engine.add_projection("all", seen.extend, offset_store=ego.MemoryStore())
        wait_until(
            lambda: len(seen) >= 4 and not any(s.events_behind for s in engine.projection_lag("all").values()),
            what="the projection to catch up",
        )
        m = otel.metrics()
    assert otel.finished() == []  # traces off

    def outcome(entity_type: str, o: str) -> Any:
        return m.get(("ego.commands", (("ego.entity_type", entity_type), ("ego.outcome", o))))

    assert outcome("AccountBehavior", "accepted") == 4
    assert outcome("AccountBehavior", "rejected") == 2
    assert outcome("Wallet", "accepted") == 2
    assert outcome("Wallet", "no_change") == 1
    assert m[("ego.command.duration.count", ())] == 9
    assert m[("ego.command.duration.sum", ())] > 0
    buckets = sorted(
        ((float(dict(k[1])["le"]), v) for k, v in m.items() if k[0] == "ego.command.duration.bucket"), key=lambda b: b[0]
    )
    assert buckets[-1] == (float("inf"), 9)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))  # cumulative
    assert m[("ego.events.persisted", ())] == 6  # 4 events + 2 durable states
    assert m[("ego.writes", ())] == 6
    assert m[("ego.write.failures", ())] == 0
    assert m[("ego.entities.active", ())] == 2
    assert m[("ego.projection.events", (("ego.projection", "all"),))] == 4
    behind = [v for k, v in m.items() if k[0] == "ego.projection.events_behind"]
    assert behind and all(v == 0 for v in behind)
    offsets = [v for k, v in m.items() if k[0] == "ego.projection.offset"]
    assert sum(1 for v in offsets if v > 0) >= 1


def test_failed_writes_are_counted(otel: Otel) -> None:
    with ego.Engine("metered", store=Broken(), telemetry=otel.telemetry()) as engine:
        engine.register_entity_type(AccountBehavior)
        for _ in range(2):
            with pytest.raises(ego.errors.StoreError):
                engine.send_command("a", OpenAccount(initial_balance=0))
        m = otel.metrics()
    assert m[("ego.commands", (("ego.entity_type", "AccountBehavior"), ("ego.outcome", "failed")))] == 2
    assert m[("ego.write.failures", ())] == 2


def test_background_failures_are_counted(otel: Otel) -> None:
    with ego.Engine("metered", store=FailingSnapshots(), telemetry=otel.telemetry()) as engine:
        engine.register_entity_type(AccountBehavior, snapshot_interval=1)
        engine.send_command("a", OpenAccount(initial_balance=0))
        assert otel.metrics()[("ego.background.failures", ())] == 0
        # After 3 retries: 0.1 + 0.2 + 0.4 s.
        wait_until(lambda: engine.stats()["background_failures"] != 0, what="the failed snapshot")
        assert otel.metrics()[("ego.background.failures", ())] == 1


def test_nothing_is_recorded_when_telemetry_is_off(otel: Otel) -> None:
    # Even with a global tracer provider set up, an engine without telemetry= reports nothing.
    with ego.Engine("quiet") as engine:
        engine.register_entity_type(AccountBehavior, prefix="acc-")
        engine.send_command("acc-1", OpenAccount(initial_balance=1))
        asyncio.run(_send_async(engine))
        snapshot = engine._telemetry_snapshot()
        # The hot methods are the Rust ones, with no wrapper.
        assert type(engine.send_command).__name__ == "builtin_function_or_method"
        assert "send_command" not in vars(engine)
    assert otel.finished() == []
    assert otel.metrics() == {}
    assert snapshot["outcomes"] == {} and "latency" not in snapshot


async def _send_async(engine: ego.Engine) -> None:
    await engine.send_command_async("acc-1", Credit(amount=1))


def test_telemetry_must_be_a_telemetry() -> None:
    with pytest.raises(ego.errors.ConfigurationError, match=r"telemetry must be an ego\.Telemetry"):
        ego.Engine(telemetry=object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tracer_provider": object()}, "tracer_provider must be an OpenTelemetry tracer provider"),
        ({"meter_provider": object()}, "meter_provider must be an OpenTelemetry meter provider"),
        ({"traces": "yes"}, "traces must be True or False"),
        ({"metrics": 1}, "metrics must be True or False"),
    ],
)
def test_bad_telemetry_settings_are_configuration_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ego.errors.ConfigurationError, match=message):
        ego.Telemetry(**kwargs)
