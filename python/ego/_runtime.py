"""Helpers the Rust extension calls back into. Not public API."""

from __future__ import annotations

import asyncio
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message


def message_class(full_name: str) -> type[Message] | None:
    """The generated class of a message name, from the default descriptor pool."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    except KeyError:
        return None
    cls: type[Message] = message_factory.GetMessageClass(descriptor)
    return cls


def resolve_many(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Completes many futures at once (one event-loop wake-up for a batch of replies)."""
    for future, ok, value in items:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
