"""Span helpers the Rust core calls when tracing is on. Not public API.

A command's handle is ``(span, token)``: the span, and the token of the context attached while
the handler runs (so spans the handler opens nest under it). When the caller's span is not
recording (its trace was sampled out), no span is created, but the caller's context is still
attached, so the handler's own spans join that trace (and are sampled out with it).

With a sampler whose rule is known (`sampling_rule`), the Rust send methods take the sampling
decision themselves (rust/py/src/telemetry.rs): a sampled-out command calls none of these
helpers; a sampled one gets its caller span from `start_send` (with the trace id the decision
was taken on, when it has no parent) and ends it with `end_send` or `watch_send`.
"""

from __future__ import annotations

import functools
from time import time_ns
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


class LightSpan(trace.Span):
    """A sampled span of ego's (``ego.send_command``, ``ego.command``, ``ego.persist``) made
    without the SDK's span machinery: ego's attributes go to a dict, and at the end one
    `ReadableSpan` goes to the provider's processors. Whatever else is done to it (the
    handler annotating its current span, an exception recorded) is kept in order and replayed
    on an SDK span at the end, so the exported span is the SDK's."""

    __slots__ = ("_attributes", "_context", "_ended", "_light", "_name", "_ops", "_parent", "_start", "_status")

    def __init__(self, light: _Light, name: str, context: SpanContext, parent: Any, attributes: dict[str, Any]) -> None:
        self._light = light
        self._name = name
        self._context = context
        self._parent = parent
        self._attributes = attributes
        self._start = time_ns()
        # What was done to the span other than ego's attributes and status, in order: (SDK
        # method, args), replayed at the end. Once there is any, ego's own go there too.
        self._ops: list[tuple[str, tuple[Any, ...]]] = []
        self._status = _UNSET
        self._ended = False

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self._ended

    def _op(self, name: str, *args: Any) -> None:
        if not self._ended:
            self._ops.append((name, args))

    def set_attributes(self, attributes: Any) -> None:
        self._op("set_attributes", dict(attributes))

    def set_attribute(self, key: str, value: Any) -> None:
        self._op("set_attribute", key, value)

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        self._op("add_event", name, attributes, time_ns() if timestamp is None else timestamp)

    def add_link(self, context: Any, attributes: Any = None) -> None:
        self._op("add_link", context, attributes)

    def update_name(self, name: str) -> None:
        self._op("update_name", name)

    def set_status(self, status: Any, description: str | None = None) -> None:
        self._op("set_status", status, description)

    def record_exception(
        self, exception: BaseException, attributes: Any = None, timestamp: int | None = None, escaped: bool = False
    ) -> None:
        self._op("record_exception", exception, attributes, time_ns() if timestamp is None else timestamp, escaped)

    def end(self, end_time: int | None = None) -> None:
        # Ended by the handler: the SDK span ends then (ego's later attributes are refused,
        # with the SDK's warning, as they were).
        self._op("end", time_ns() if end_time is None else end_time)

    def __exit__(self, exc_type: Any, exc_val: BaseException | None, exc_tb: Any) -> None:
        if exc_val is not None and self.is_recording():
            self.record_exception(exc_val, escaped=True)
            self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        self.end()

    def __repr__(self) -> str:
        return f'LightSpan(name="{self._name}", context={self._context})'

    def _set(self, key: str, value: Any) -> None:
        if self._ops:
            self._ops.append(("set_attribute", (key, value)))
        else:
            self._attributes[key] = value

    def _fail(self, description: str) -> None:
        status = Status(StatusCode.ERROR, description)
        if self._ops:
            self._ops.append(("set_status", (status,)))
        else:
            self._status = status

    def _settle(self, future: Any) -> None:
        """`settle` for an asyncio send's caller span, the usual outcome first."""
        if not future.cancelled() and future.exception() is None:
            self._set("ego.outcome", "ok")
            self._set("ego.revision", future.result()[1])
            self._finish()
        else:
            settle(self, future)

    def _finish(self, end_time: int | None = None) -> None:
        end = time_ns() if end_time is None else end_time
        self._ended = True
        light = self._light
        if not self._ops:
            light.processor.on_end(
                light.readable(
                    name=self._name,
                    context=self._context,
                    parent=self._parent,
                    resource=light.resource,
                    attributes=self._attributes,
                    kind=_INTERNAL,
                    instrumentation_info=light.info,
                    status=self._status,
                    start_time=self._start,
                    end_time=end,
                    instrumentation_scope=light.scope,
                )
            )
            return
        from opentelemetry.sdk.trace import _Span

        tracer = light.tracer
        span = _Span(
            name=self._name,
            context=self._context,
            parent=self._parent,
            sampler=tracer.sampler,
            resource=light.resource,
            attributes=self._attributes,
            span_processor=light.processor,
            kind=_INTERNAL,
            links=(),
            instrumentation_info=light.info,
            record_exception=True,
            set_status_on_exception=True,
            limits=tracer._span_limits,
            instrumentation_scope=light.scope,
        )
        span.start(start_time=self._start)
        if self._status is not _UNSET:
            span.set_status(self._status)
        ended = False
        for name, args in self._ops:
            if name == "end":
                span.end(end_time=args[0])
                ended = True
            else:
                getattr(span, name)(*args)
        if not ended:
            span.end(end_time=end)


# A SpanContext without the checks of its constructor (ids made here are valid).
_span_context = functools.partial(tuple.__new__, SpanContext)


def _child(parent: LightSpan, name: str, attributes: dict[str, Any]) -> LightSpan:
    c = parent._context
    span_id = parent._light.tracer.id_generator.generate_span_id()
    return LightSpan(parent._light, name, _span_context((c[0], span_id, False, c[3], c[4], True)), c, attributes)


def start_send(tracer: Any, trace_id: int | None, entity_id: str, command: Any) -> tuple[Any, Any]:
    """The caller span of a command sampled in Rust and the context to carry: a child of the
    caller's current span, or (`trace_id` given) a root span with that trace id. A
    `LightSpan` when the tracer allows (`_light`), an SDK span otherwise."""
    attributes = {"ego.entity_id": entity_id, "ego.command_type": _type_name(command)}
    light = _light(tracer)
    if light is not None:
        generate = tracer.id_generator.generate_span_id
        if trace_id is None:
            parent = trace.get_current_span().get_span_context()
            flags = _SAMPLED if parent.trace_flags & _RANDOM else TraceFlags(TraceFlags.SAMPLED)
            span_context = _span_context((parent.trace_id, generate(), False, flags, parent.trace_state, True))
        else:
            parent = None
            flags = _SAMPLED if light.random else TraceFlags(TraceFlags.SAMPLED)
            span_context = _span_context((trace_id, generate(), False, flags, _NO_TRACE_STATE, True))
        span = LightSpan(light, "ego.send_command", span_context, parent, attributes)
    elif trace_id is None:
        span = tracer.start_span("ego.send_command", attributes=attributes)
    else:
        span = _root_span(tracer, trace_id, "ego.send_command", attributes)
    return span, trace.set_span_in_context(span)


def end_send(span: Any, result: Any, error: BaseException | None, sync: bool) -> None:
    """Ends a caller span: `result` is ``(state, revision)``, or `error` what the call raised
    (`sync`: out of ``send_command``, recorded as ``start_as_current_span`` records it;
    otherwise out of ``send_command_async`` before any future existed)."""
    light = type(span) is LightSpan
    if error is None:
        if light:
            span._set("ego.outcome", "ok")
            span._set("ego.revision", result[1])
        else:
            span.set_attribute("ego.outcome", "ok")
            span.set_attribute("ego.revision", result[1])
    else:
        if light:
            span._set("ego.outcome", _outcome(error))
        else:
            span.set_attribute("ego.outcome", _outcome(error))
        if not sync:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
        elif isinstance(error, Exception):
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    if light:
        span._finish()
    else:
        span.end()


def settle(span: Any, future: Any) -> None:
    """Ends the caller span of an asyncio send when its future is done."""
    light = type(span) is LightSpan
    if future.cancelled():
        span._set("ego.outcome", "cancelled") if light else span.set_attribute("ego.outcome", "cancelled")
    elif (error := future.exception()) is not None:
        span._set("ego.outcome", _outcome(error)) if light else span.set_attribute("ego.outcome", _outcome(error))
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    elif light:
        span._set("ego.outcome", "ok")
        span._set("ego.revision", future.result()[1])
    else:
        span.set_attribute("ego.outcome", "ok")
        span.set_attribute("ego.revision", future.result()[1])
    if light:
        span._finish()
    else:
        span.end()


def watch_send(span: Any, future: Any) -> None:
    """Ends `span` (a sampled asyncio send's) when `future` is done."""
    if type(span) is LightSpan:
        future.add_done_callback(span._settle)
    else:
        future.add_done_callback(functools.partial(settle, span))


def start_command(tracer: Any, parent: Any, entity_id: str, entity_type: str, command_type: str) -> tuple[Any, Any]:
    caller = parent.get(SPAN_KEY) if parent is not None else None
    if type(caller) is not LightSpan:
        caller = trace.get_current_span(parent)
    attributes = {"ego.entity_id": entity_id, "ego.entity_type": entity_type, "ego.command_type": command_type}
    if type(caller) is LightSpan:
        span = _child(caller, "ego.command", attributes)
        return span, CURRENT_CONTEXT.set(trace.set_span_in_context(span, parent))
    if not caller.is_recording():
        return None, context.attach(parent)
    span = tracer.start_span("ego.command", context=parent, kind=_INTERNAL, attributes=attributes)
    return span, context.attach(trace.set_span_in_context(span, parent))


def end_command(handle: tuple[Any, Any], outcome: str, revision: int) -> None:
    span, token = handle
    if type(span) is LightSpan:
        CURRENT_CONTEXT.reset(token)
        span._set("ego.outcome", outcome)
        span._set("ego.revision", revision)
        if outcome == "rejected":
            span._fail("the command was rejected")
        span._finish()
        return
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
    if type(command) is LightSpan:
        return _child(command, "ego.persist", attributes)
    return tracer.start_span("ego.persist", context=trace.set_span_in_context(command), kind=_INTERNAL, attributes=attributes)


def end_write(span: Any, error: str | None, end_ns: int) -> None:
    if span is None:
        return
    if type(span) is LightSpan:
        if error is not None:
            span._fail(error)
        span._finish(end_ns)
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
