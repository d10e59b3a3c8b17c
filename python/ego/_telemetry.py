"""Span helpers the Rust core calls when tracing is on. Not public API.

A command's handle is ``(span, token)``: the span, and the token of the context attached while
the handler runs (so spans the handler opens nest under it). When the caller's span is not
recording (its trace was sampled out), no span is created, but the caller's context is still
attached, so the handler's own spans join that trace (and are sampled out with it).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import Status, StatusCode

_INTERNAL = trace.SpanKind.INTERNAL


def start_command(tracer: Any, parent: Any, entity_id: str, entity_type: str, command_type: str) -> tuple[Any, Any]:
    if not trace.get_current_span(parent).is_recording():
        return None, context.attach(parent)
    span = tracer.start_span(
        "ego.command",
        context=parent,
        kind=_INTERNAL,
        attributes={"ego.entity_id": entity_id, "ego.entity_type": entity_type, "ego.command_type": command_type},
    )
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
    if parent[0] is None:
        return None
    return tracer.start_span(
        "ego.persist",
        context=trace.set_span_in_context(parent[0]),
        kind=_INTERNAL,
        attributes={"ego.entity_id": entity_id, "ego.events": events, "ego.revision": revision},
    )


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
