"""Spans of saga steps (``ego.saga.step``), through the engine's OpenTelemetry tracer. The
command's own ``ego.send_command`` / ``ego.command`` spans nest under it. Not public API."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["step_span"]


class _Span:
    def __init__(self, span: Any) -> None:
        self.span = span

    def rejected(self, error: BaseException) -> None:
        if self.span is not None:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_attribute("ego.outcome", "rejected")
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


@contextlib.contextmanager
def step_span(engine: Any, saga_id: str, saga_type: str, step: Any, command: Any) -> Iterator[_Span]:
    telemetry = getattr(engine, "telemetry", None)
    tracer = getattr(telemetry, "tracer", None)
    if tracer is None:
        yield _Span(None)
        return
    attributes = {
        "ego.saga_id": saga_id,
        "ego.saga_type": saga_type,
        "ego.step": int(step.step),
        "ego.entity_id": step.entity_id,
        "ego.command_type": type(command).__name__,
        "ego.compensation": bool(step.compensation),
    }
    with tracer.start_as_current_span("ego.saga.step", attributes=attributes) as span:
        span.set_attribute("ego.outcome", "accepted")
        yield _Span(span)
