"""Packing messages into the saga journal's ``Any`` fields and back. Not public API."""

from __future__ import annotations

import time
from typing import Any

from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from ego.errors import UnknownEventTypeError

__all__ = ["SAGA_PREFIX", "now_ns", "pack", "saga_entity_id", "unpack"]

#: Saga entities' persistence ids: this prefix and the saga id. Reserved.
SAGA_PREFIX = "ego.saga:"

_classes: dict[str, type[Message]] = {}


def saga_entity_id(saga_id: str) -> str:
    return SAGA_PREFIX + saga_id


def now_ns() -> int:
    return time.time_ns()


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def unpack(packed: Any) -> Message:
    """The message in ``packed`` (a ``google.protobuf.Any``), as an instance of its generated
    class (its module must have been imported)."""
    url = packed.type_url
    cls = _classes.get(url)
    if cls is None:
        name = url.rsplit("/", 1)[-1]
        try:
            descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
        except KeyError:
            raise UnknownEventTypeError(f"no protobuf message type {name!r} is loaded (import its _pb2 module)") from None
        cls = message_factory.GetMessageClass(descriptor)
        _classes[url] = cls
    message = cls()
    message.ParseFromString(packed.value)
    return message
