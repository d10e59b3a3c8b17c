"""OpenTelemetry for ego (the Go library's ``WithTelemetry``).

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.metrics import MeterProvider

    engine = ego.Engine("bank", store=store,
                        telemetry=ego.Telemetry(tracer_provider=TracerProvider(), meter_provider=MeterProvider()))

Without providers, the global ones are used (``opentelemetry.trace.set_tracer_provider``).
It needs the ``opentelemetry-api`` package (``pip install ego-cqrs[otel]``).

**Traces.** ``ego.send_command`` (the caller's side, from the call to the reply) is a child of
the caller's current span; ``ego.command`` (the behaviour's handler, current while it runs, so
spans opened inside the handler nest under it) is its child; ``ego.persist`` (the write to the
store; with batching, the first traced command of the batch is its parent) is a child of the
command. Projections give ``ego.projection.batch`` per handled batch (current while the handler
runs); publishers give ``ego.publisher.batch`` (``ego.publisher``, ``ego.shard``,
``ego.events``). Attributes:

- ``ego.send_command``: ``ego.entity_id``, ``ego.command_type``, ``ego.revision`` and
  ``ego.outcome``: ``ok``, ``rejected`` (the behaviour raised, or its output was refused) or
  ``failed`` (the engine or the store failed); the exception is recorded on the span.
- ``ego.command``: ``ego.entity_id``, ``ego.entity_type`` (the behaviour's class),
  ``ego.command_type``, ``ego.revision`` (after the command) and ``ego.outcome``:
  ``accepted`` (events or a new state to write), ``no_change`` or ``rejected``.
- ``ego.persist``: ``ego.entity_id``, ``ego.events``, ``ego.revision``; error status when the
  write failed.
- ``ego.projection.batch``: ``ego.projection``, ``ego.shard``, ``ego.events``.

**Metrics.** Everything is counted in the Rust core with atomic counters and read when the
metric reader collects (observable instruments), so commands never call into OpenTelemetry to
count:

- ``ego.commands`` (counter; ``ego.entity_type``, ``ego.outcome``: ``accepted``,
  ``no_change``, ``rejected``, ``failed``)
- ``ego.command.duration.count`` / ``.sum`` (ms) / ``.bucket`` (``le``: cumulative counts per
  upper bound in ms): the command latency histogram, from the call to the reply. (The
  OpenTelemetry Python API has no asynchronous histogram, so the histogram is exported as its
  Prometheus-style parts.)
- ``ego.events.persisted`` (counter), ``ego.writes`` (counter), ``ego.write.failures`` (counter)
- ``ego.background.failures`` (counter): snapshot and retention writes that still failed after
  their retries (each is also logged as a warning)
- ``ego.entities.active`` (gauge)
- ``ego.projection.events``, ``ego.projection.failures`` (handler calls that failed, refused
  read-model writes included), ``ego.projection.dead_letters`` (counters; ``ego.projection``)
- ``ego.projection.events_behind``, ``ego.projection.lag`` (seconds),
  ``ego.projection.offset`` (gauges; ``ego.projection``, ``ego.shard``)
- ``ego.publisher.published``, ``ego.publisher.failures`` (counters; ``ego.publisher``),
  ``ego.publisher.events_behind``, ``ego.publisher.lag`` (seconds) (gauges; ``ego.publisher``,
  ``ego.shard``)

With ``telemetry=None`` (the default) nothing is created: ``send_command`` is the plain Rust
method and the core skips every hook.

**Sampling.** With a sampler ego knows (``ParentBased`` with its default delegates over
``ALWAYS_ON``, ``ALWAYS_OFF`` or ``TraceIdRatioBased``, or one of those alone; SDK tracer,
random id generator), the Rust send methods take the SDK's sampling decision themselves: a
sampled-out command creates no span and calls no Python function (its handler runs under a
non-recording span of a new trace id, or in the caller's context). Other samplers go through
a Python wrapper of the send methods that asks the SDK for every command. The spans exported
are the same either way (docs/observability.md, "Cost").
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from ego import _ego
from ego.errors import ConfigurationError

__all__ = ["Telemetry"]


class Telemetry:
    """OpenTelemetry settings of an engine: a tracer and a meter, from the given providers or
    the global ones. ``traces=False`` or ``metrics=False`` turns one of them off."""

    def __init__(
        self, tracer_provider: Any = None, meter_provider: Any = None, *, traces: bool = True, metrics: bool = True
    ) -> None:
        for name, value in (("traces", traces), ("metrics", metrics)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"{name} must be True or False, got {value!r}")
        for name, value, method in (
            ("tracer_provider", tracer_provider, "get_tracer"),
            ("meter_provider", meter_provider, "get_meter"),
        ):
            if value is not None and not callable(getattr(value, method, None)):
                raise ConfigurationError(
                    f"{name} must be an OpenTelemetry {name.replace('_', ' ')} (with {method}()), got {type(value).__name__}"
                )
        try:
            from opentelemetry import metrics as otel_metrics
            from opentelemetry import trace
        except ImportError as e:
            raise ConfigurationError("telemetry needs the opentelemetry-api package: pip install 'ego-cqrs[otel]'") from e

        from ego._ego import __version__

        #: The tracer spans come from (None: no traces).
        self.tracer: Any = trace.get_tracer("ego", __version__, tracer_provider) if traces else None
        #: The meter instruments come from (None: no metrics).
        self.meter: Any = otel_metrics.get_meter("ego", __version__, meter_provider=meter_provider) if metrics else None
        self._instrumented: set[int] = set()
        # With a sampler ego knows, the Rust sends take the sampling decisions (None: the
        # Python wrappers ask the SDK for every command).
        self._sampling_rule: tuple[bool, int] | None = None
        if self.tracer is not None:
            from ego._telemetry import sampling_rule

            self._sampling_rule = sampling_rule(self.tracer)

    def _attach(self, engine: Any) -> None:
        """Called by a starting engine: with traces on and a sampler ego does not know, wraps
        its sends in a caller span; once per engine, creates its observable instruments. (The
        Rust sends count latency themselves when metrics are on, and trace themselves with a
        known sampler.)"""
        if self.tracer is not None and self._sampling_rule is None:
            engine.send_command, engine.send_command_async = _senders(engine, self.tracer)
        if self.meter is not None and id(engine) not in self._instrumented:
            self._instrumented.add(id(engine))
            _instrument(self.meter, engine)


def _senders(engine: Any, tracer: Any) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``send_command`` and ``send_command_async`` of an engine whose sampler ego does not
    know: the Rust methods wrapped in a caller span (the SDK takes every sampling decision),
    whose context they carry to the handler."""
    observed = types.MethodType(_ego.EngineCore.send_command, engine)
    observed_async = types.MethodType(_ego.EngineCore.send_command_async, engine)
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    from ego._telemetry import _outcome, _type_name, settle

    def send_command(
        entity_id: str,
        command: Any,
        timeout: float | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> tuple[Any, int]:
        attributes = {"ego.entity_id": entity_id, "ego.command_type": _type_name(command)}
        with tracer.start_as_current_span("ego.send_command", attributes=attributes) as span:
            try:
                state, revision = observed(
                    entity_id, command, timeout, trace.set_span_in_context(span), idempotency_key, metadata
                )
            except BaseException as e:
                span.set_attribute("ego.outcome", _outcome(e))
                raise
            span.set_attribute("ego.outcome", "ok")
            span.set_attribute("ego.revision", revision)
            return state, revision

    def send_command_async(
        entity_id: str,
        command: Any,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Any:
        attributes = {"ego.entity_id": entity_id, "ego.command_type": _type_name(command)}
        span = tracer.start_span("ego.send_command", attributes=attributes)
        try:
            future = observed_async(entity_id, command, trace.set_span_in_context(span), idempotency_key, timeout, metadata)
        except BaseException as e:
            span.set_attribute("ego.outcome", _outcome(e))
            span.record_exception(e)
            span.set_status(Status(StatusCode.ERROR, str(e)))
            span.end()
            raise
        if span.is_recording():
            future.add_done_callback(lambda f: settle(span, f))
        return future

    return send_command, send_command_async


def _instrument(meter: Any, engine: Any) -> None:
    """Creates the observable instruments of `engine`; each reads the Rust counters when the
    metric reader collects."""
    from opentelemetry.metrics import CallbackOptions, Observation

    from ego._ego import LATENCY_BOUNDS_MS

    Callback = Callable[[CallbackOptions], list[Observation]]

    def snapshot() -> dict[str, Any]:
        return engine._telemetry_snapshot() if engine.running else {}

    def commands(_: CallbackOptions) -> list[Observation]:
        return [
            Observation(n, {"ego.entity_type": entity_type, "ego.outcome": outcome})
            for (entity_type, outcome), n in snapshot().get("outcomes", {}).items()
        ]

    def simple(key: str) -> Callback:
        def observe(_: CallbackOptions) -> list[Observation]:
            s = snapshot()
            return [Observation(s[key])] if key in s else []

        return observe

    def duration(part: str) -> Callback:
        def observe(_: CallbackOptions) -> list[Observation]:
            latency = snapshot().get("latency")
            if latency is None:
                return []
            counts, total_ms = latency
            if part == "count":
                return [Observation(sum(counts))]
            if part == "sum":
                return [Observation(total_ms)]
            cumulative, out = 0, []
            for bound, n in zip((*LATENCY_BOUNDS_MS, float("inf")), counts, strict=True):
                cumulative += n
                out.append(Observation(cumulative, {"le": str(bound)}))
            return out

        return observe

    def projections() -> list[str]:
        # Publishers read the journal as projections named "publisher:<name>"; they have
        # instruments of their own.
        return [n for n in engine.projection_names() if not n.startswith("publisher:")] if engine.running else []

    def publishers() -> list[str]:
        return list(engine.publisher_names()) if engine.running else []

    def projection_counter(key: str) -> Callback:
        def observe(_: CallbackOptions) -> list[Observation]:
            return [Observation(engine._projection_stats(name)[key], {"ego.projection": name}) for name in projections()]

        return observe

    def lag(field: str) -> Callback:
        def observe(_: CallbackOptions) -> list[Observation]:
            out = []
            for name in projections():
                for shard, s in engine.projection_lag(name).items():
                    out.append(Observation(getattr(s, field), {"ego.projection": name, "ego.shard": shard}))
            return out

        return observe

    def publisher_counter(key: str) -> Callback:
        def observe(_: CallbackOptions) -> list[Observation]:
            return [Observation(engine.publisher_stats(name)[key], {"ego.publisher": name}) for name in publishers()]

        return observe

    def publisher_lag(field: str) -> Callback:
        def observe(_: CallbackOptions) -> list[Observation]:
            out = []
            for name in publishers():
                for shard, s in engine.publisher_lag(name).items():
                    out.append(Observation(getattr(s, field), {"ego.publisher": name, "ego.shard": shard}))
            return out

        return observe

    m = meter
    m.create_observable_counter("ego.commands", [commands], description="Commands handled, by entity type and outcome")
    m.create_observable_counter("ego.command.duration.count", [duration("count")], description="Commands timed (call to reply)")
    m.create_observable_counter("ego.command.duration.sum", [duration("sum")], unit="ms", description="Total command latency")
    m.create_observable_counter(
        "ego.command.duration.bucket", [duration("bucket")], description="Commands with a latency of at most `le` ms (cumulative)"
    )
    m.create_observable_counter("ego.events.persisted", [simple("events")], description="Events and durable states written")
    m.create_observable_counter("ego.writes", [simple("writes")], description="Store writes")
    m.create_observable_counter("ego.write.failures", [simple("write_failures")], description="Failed store writes")
    m.create_observable_counter(
        "ego.background.failures",
        [simple("background_failures")],
        description="Snapshot and retention writes that failed after their retries",
    )
    m.create_observable_gauge("ego.entities.active", [simple("active_entities")], description="Entities in memory")
    m.create_observable_counter(
        "ego.projection.events", [projection_counter("events")], description="Events handled by projections"
    )
    m.create_observable_counter(
        "ego.projection.failures",
        [projection_counter("failures")],
        description="Handler calls that failed, refused read-model writes included (before retries, skips or a stop)",
    )
    m.create_observable_counter(
        "ego.projection.dead_letters", [projection_counter("dead_letters")], description="Events a skipping policy skipped"
    )
    m.create_observable_gauge("ego.projection.events_behind", [lag("events_behind")], description="Events not handled yet")
    m.create_observable_gauge("ego.projection.lag", [lag("time_behind")], unit="s", description="Time behind the newest event")
    m.create_observable_gauge("ego.projection.offset", [lag("offset")], description="Last handled position")
    m.create_observable_counter(
        "ego.publisher.published", [publisher_counter("published")], description="Events the broker acknowledged"
    )
    m.create_observable_counter(
        "ego.publisher.failures", [publisher_counter("failures")], description="Publish calls that failed (retried or refused)"
    )
    m.create_observable_gauge(
        "ego.publisher.events_behind", [publisher_lag("events_behind")], description="Events not acknowledged by the broker yet"
    )
    m.create_observable_gauge(
        "ego.publisher.lag", [publisher_lag("time_behind")], unit="s", description="Time behind the newest event"
    )
