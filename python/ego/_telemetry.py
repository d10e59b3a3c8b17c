"""Span helpers the Rust core calls when tracing is on. Not public API.

A command's handle is ``(span, token)``: the span, and the token of the context attached while
the handler runs (so spans the handler opens nest under it). When the caller's span is not
recording (its trace was sampled out), no span is created, but the caller's context is still
attached, so the handler's own spans join that trace (and are sampled out with it).

With a sampler whose rule is known (`sampling_rule`), the Rust send methods take the sampling
decision themselves (rust/py/src/telemetry.rs): a sampled-out command calls none of these
helpers. A sampled one gets its three spans made in Rust (rust/py/src/spans.rs) when the
tracer allows it (`_light`), with `replay` and `fail_send` for what is rare (a handler that
touches its span, a failed send); otherwise its caller span comes from `start_send` (with the
trace id the decision was taken on, when it has no parent) and ends with `end_send` or
`watch_send`, and the helpers below make SDK spans.
"""

from __future__ import annotations

import functools
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace.propagation import _SPAN_KEY

from ego.errors import EgoError, HandlerContractError, ValidationError

_INTERNAL = trace.SpanKind.INTERNAL

#: The key of the current span in an OpenTelemetry context.
SPAN_KEY = _SPAN_KEY
#: The context variable the API keeps the current context in (None: another runtime context).
CURRENT_CONTEXT: Any = getattr(getattr(context, "_RUNTIME_CONTEXT", None), "_current_context", None)
# A dropped root span's flags: not sampled; the trace id is random (RandomIdGenerator).
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT | getattr(TraceFlags, "RANDOM_TRACE_ID", 0))
_RANDOM = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED | _RANDOM)
_SAMPLED_PLAIN = TraceFlags(TraceFlags.SAMPLED)
# The tracer's attributes a root span made here reads (see `_root_span`).
_TRACER_PARTS = (
    "sampler",
    "resource",
    "span_processor",
    "id_generator",
    "instrumentation_info",
    "_span_limits",
    "_instrumentation_scope",
)


def sampling_rule(tracer: Any) -> tuple[bool, int] | None:
    """``(parent_based, bound)`` when ego can take the sampling decisions of `tracer` itself,
    None otherwise (the SDK is then asked for every command). Known: an SDK tracer with the
    random id generator and the contextvars runtime context, whose sampler is
    ``ParentBased(root)`` with the default delegates, or a root alone, the root being
    ``ALWAYS_ON``, ``ALWAYS_OFF`` or ``TraceIdRatioBased``. `bound`: a trace is sampled when the
    low 64 bits of its id are below it (``2**64``: always, 0: never)."""
    try:
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.sdk.trace import Tracer
        from opentelemetry.sdk.trace import sampling as s
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    except ImportError:
        return None
    if type(tracer) is not Tracer or type(getattr(context, "_RUNTIME_CONTEXT", None)) is not ContextVarsRuntimeContext:
        return None
    if CURRENT_CONTEXT is None or not all(hasattr(tracer, a) for a in _TRACER_PARTS):
        return None
    if type(tracer.id_generator) is not RandomIdGenerator or not getattr(tracer, "_is_enabled", lambda: True)():
        return None
    sampler = tracer.sampler
    parent_based = type(sampler) is s.ParentBased
    if parent_based:
        delegates = [getattr(sampler, f"_{d}", None) for d in ("remote_parent_sampled", "local_parent_sampled")]
        dropping = [getattr(sampler, f"_{d}", None) for d in ("remote_parent_not_sampled", "local_parent_not_sampled")]
        if any(_static(d) is not True for d in delegates) or any(_static(d) is not False for d in dropping):
            return None
        sampler = sampler._root  # type: ignore[attr-defined]
    static = _static(sampler)
    if static is not None:
        return parent_based, (1 << 64) if static else 0
    if type(sampler) is s.TraceIdRatioBased:
        return parent_based, int(sampler.bound)
    return None


def _static(sampler: Any) -> bool | None:
    """True or False for a sampler that always samples or always drops, None otherwise."""
    from opentelemetry.sdk.trace import sampling as s

    if type(sampler) is not s.StaticSampler:
        return None
    decision = getattr(sampler, "_decision", None)
    if decision is s.Decision.RECORD_AND_SAMPLE:
        return True
    if decision is s.Decision.DROP:
        return False
    return None


def unsampled_context(trace_id: int, span_id: int) -> SpanContext:
    """The span context of a root span sampled out in Rust (the SDK's for a dropped span)."""
    return SpanContext(trace_id, span_id, is_remote=False, trace_flags=_UNSAMPLED)


def _type_name(command: Any) -> str:
    descriptor = getattr(command, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", type(command).__qualname__))


def _outcome(error: BaseException) -> str:
    if isinstance(error, (ValidationError, HandlerContractError)) or not isinstance(error, EgoError):
        return "rejected"
    return "failed"


def _root_span(tracer: Any, trace_id: int, name: str, attributes: dict[str, Any]) -> Any:
    """A root span with `trace_id`, sampled (the Rust decision), made as the SDK's
    ``Tracer.start_span`` makes it (which would draw a trace id of its own)."""
    from opentelemetry.sdk.trace import _Span

    sampling = tracer.sampler.should_sample(None, trace_id, name, _INTERNAL, attributes, ())
    span_context = SpanContext(
        trace_id,
        tracer.id_generator.generate_span_id(),
        is_remote=False,
        trace_flags=_SAMPLED,
        trace_state=sampling.trace_state,
    )
    extra: dict[str, Any] = {}
    metrics = getattr(tracer, "_tracer_metrics", None)
    if metrics is not None:
        extra["record_end_metrics"] = metrics.start_span(None, sampling.decision)
    span = _Span(
        name=name,
        context=span_context,
        parent=None,
        sampler=tracer.sampler,
        resource=tracer.resource,
        attributes=sampling.attributes,
        span_processor=tracer.span_processor,
        kind=_INTERNAL,
        links=(),
        instrumentation_info=tracer.instrumentation_info,
        record_exception=True,
        set_status_on_exception=True,
        limits=tracer._span_limits,
        instrumentation_scope=tracer._instrumentation_scope,
        **extra,
    )
    span.start(start_time=None, parent_context=None)
    return span


_UNSET = Status(StatusCode.UNSET)
_NO_TRACE_STATE = TraceState()


class _Light:
    """What a tracer's spans are made with when ego makes them itself (`_light`)."""

    __slots__ = ("info", "processor", "processors", "random", "readable", "resource", "scope", "tracer")

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.processor = tracer.span_processor
        self.processors = tracer.span_processor._span_processors
        self.resource = tracer.resource
        self.scope = tracer._instrumentation_scope
        self.info = tracer.instrumentation_info
        self.random = bool(getattr(tracer.id_generator, "is_trace_id_random", lambda: False)())
        from opentelemetry.sdk.trace import ReadableSpan

        self.readable = ReadableSpan


# Per tracer (by id; the tracer is kept with it): how ego makes its spans, or None.
_LIGHT: dict[int, tuple[Any, _Light | None]] = {}


def _light(tracer: Any) -> _Light | None:
    """How ego makes the spans of `tracer` itself (as finished `ReadableSpan`s handed to the
    provider's processors), or None when it cannot be sure to export what the SDK would: a
    processor that does something at a span's start (``on_start``, ``_on_ending``), span
    limits that could cut ego's attributes, the SDK's own tracer metrics."""
    cached = _LIGHT.get(id(tracer))
    if cached is not None and cached[0] is tracer:
        known = cached[1]
        if known is None or known.processors is tracer.span_processor._span_processors:
            return known
    light = None
    try:
        from opentelemetry.sdk.trace import SpanProcessor, SynchronousMultiSpanProcessor
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        pass
    else:
        quiet = {SpanProcessor.on_start, SimpleSpanProcessor.on_start, BatchSpanProcessor.on_start}
        ending = {getattr(c, "_on_ending", None) for c in (SpanProcessor, SimpleSpanProcessor, BatchSpanProcessor)}
        limits = tracer._span_limits
        metrics = getattr(tracer, "_tracer_metrics", None)
        if (
            type(tracer.span_processor) is SynchronousMultiSpanProcessor
            and all(
                type(p).on_start in quiet and getattr(type(p), "_on_ending", None) in ending
                for p in tracer.span_processor._span_processors
            )
            and limits.max_span_attribute_length is None
            and (limits.max_span_attributes is None or limits.max_span_attributes >= 8)
            and (metrics is None or type(metrics).__name__ == "NoOpTracerMetrics")
        ):
            light = _Light(tracer)
    _LIGHT[id(tracer)] = (tracer, light)
    return light


def error_status(description: str) -> Status:
    """ego's ERROR status (for the spans made in Rust, rust/py/src/spans.rs)."""
    return Status(StatusCode.ERROR, description)


def replay(
    light: _Light,
    name: str,
    context: SpanContext,
    parent: SpanContext | None,
    attributes: dict[str, Any],
    status: Status | None,
    start: int,
    end: int,
    ops: list[tuple[str, tuple[Any, ...]]],
) -> None:
    """Ends a span made in Rust that the handler did something to (`ops`: ``(SDK method,
    args)`` in order, ego's own attributes after the first of them): the same span made
    as an SDK span and the operations replayed on it, so it is exported as the SDK would
    export it."""
    from opentelemetry.sdk.trace import _Span

    tracer = light.tracer
    span = _Span(
        name=name,
        context=context,
        parent=parent,
        sampler=tracer.sampler,
        resource=light.resource,
        attributes=attributes,
        span_processor=light.processor,
        kind=_INTERNAL,
        links=(),
        instrumentation_info=light.info,
        record_exception=True,
        set_status_on_exception=True,
        limits=tracer._span_limits,
        instrumentation_scope=light.scope,
    )
    span.start(start_time=start)
    if status is not None:
        span.set_status(status)
    ended = False
    for op, args in ops:
        if op == "end":
            span.end(end_time=args[0])
            ended = True
        else:
            getattr(span, op)(*args)
    if not ended:
        span.end(end_time=end)


def fail_send(span: Any, error: BaseException, how: str) -> None:
    """Ends the caller span (made in Rust) of a send that failed: `how` is "sync" (raised
    out of ``send_command``: recorded as ``start_as_current_span`` records it), "call" (out
    of ``send_command_async`` before any future existed) or "future" (its future's)."""
    span._set("ego.outcome", _outcome(error))
    if how == "call":
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, str(error)))
    elif how == "future" or isinstance(error, Exception):
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span._finish()


def start_send(tracer: Any, trace_id: int | None, entity_id: str, command: Any) -> tuple[Any, Any]:
    """The caller span of a command sampled in Rust, made by the SDK (when the tracer does not
    let ego make its spans, `_light`; otherwise rust/py/src/spans.rs makes them), and the
    context to carry: a child of the caller's current span, or (`trace_id` given) a root
    span with that trace id."""
    attributes = {"ego.entity_id": entity_id, "ego.command_type": _type_name(command)}
    if trace_id is None:
        span = tracer.start_span("ego.send_command", attributes=attributes)
    else:
        span = _root_span(tracer, trace_id, "ego.send_command", attributes)
    return span, trace.set_span_in_context(span)


def end_send(span: Any, result: Any, error: BaseException | None, sync: bool) -> None:
    """Ends a caller span: `result` is ``(state, revision)``, or `error` what the call raised
    (`sync`: out of ``send_command``, recorded as ``start_as_current_span`` records it;
    otherwise out of ``send_command_async`` before any future existed)."""
    if error is None:
        span.set_attribute("ego.outcome", "ok")
        span.set_attribute("ego.revision", result[1])
    else:
        span.set_attribute("ego.outcome", _outcome(error))
        if not sync:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        elif isinstance(error, Exception):
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


def settle(span: Any, future: Any) -> None:
    """Ends the caller span of an asyncio send when its future is done."""
    if future.cancelled():
        span.set_attribute("ego.outcome", "cancelled")
    elif (error := future.exception()) is not None:
        span.set_attribute("ego.outcome", _outcome(error))
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    else:
        span.set_attribute("ego.outcome", "ok")
        span.set_attribute("ego.revision", future.result()[1])
    span.end()


def watch_send(span: Any, future: Any) -> None:
    """Ends `span` (a sampled asyncio send's) when `future` is done."""
    future.add_done_callback(functools.partial(settle, span))


def start_command(tracer: Any, parent: Any, entity_id: str, entity_type: str, command_type: str) -> tuple[Any, Any]:
    caller = trace.get_current_span(parent)
    if not caller.is_recording():
        return None, context.attach(parent)
    attributes = {"ego.entity_id": entity_id, "ego.entity_type": entity_type, "ego.command_type": command_type}
    span = tracer.start_span("ego.command", context=parent, kind=_INTERNAL, attributes=attributes)
    return span, context.attach(trace.set_span_in_context(span, parent))


def end_command(handle: tuple[Any, Any], outcome: str, revision: int) -> None:
    span, token = handle
    context.detach(token)
    if span is None:
        return
    span.set_attribute("ego.outcome", outcome)
    span.set_attribute("ego.revision", revision)
    if outcome == "rejected":
        span.set_status(Status(StatusCode.ERROR, "the command was rejected"))
    span.end()


def start_write(tracer: Any, parent: tuple[Any, Any], entity_id: str, events: int, revision: int) -> Any:
    command = parent[0]
    if command is None:
        return None
    attributes = {"ego.entity_id": entity_id, "ego.events": events, "ego.revision": revision}
    return tracer.start_span("ego.persist", context=trace.set_span_in_context(command), kind=_INTERNAL, attributes=attributes)


def end_write(span: Any, error: str | None, end_ns: int) -> None:
    if span is None:
        return
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end(end_time=end_ns)


def start_batch(tracer: Any, name: str, shard: int, events: int, kind: str = "projection") -> tuple[Any, Any]:
    if kind == "publisher":
        name = name.removeprefix("publisher:")
    span = tracer.start_span(
        f"ego.{kind}.batch",
        kind=_INTERNAL,
        attributes={f"ego.{kind}": name, "ego.shard": shard, "ego.events": events},
    )
    return span, context.attach(trace.set_span_in_context(span))


def end_batch(handle: tuple[Any, Any], error: str | None) -> None:
    span, token = handle
    context.detach(token)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()
