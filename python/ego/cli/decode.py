"""Turning stored payloads (``google.protobuf.Any``) into JSON with the user's message types.

Types come from generated modules (``--proto-module bank_pb2``: importing them registers
their messages) or from descriptor sets (``--descriptor-set app.pb``, as written by
``protoc --include_imports --descriptor_set_out``). A payload whose type is unknown, or that
does not parse, is shown raw (base64).
"""

from __future__ import annotations

import base64
import importlib
import os
import sys
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

from ego.errors import ConfigurationError


class Decoder:
    """Decodes payloads by their type URL. Raises :class:`~ego.errors.ConfigurationError` for
    a module that cannot be imported or a file that is not a descriptor set."""

    def __init__(self, modules: tuple[str, ...] = (), descriptor_sets: tuple[str, ...] = ()) -> None:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as e:
                raise ConfigurationError(f"cannot import --proto-module {name!r}: {type(e).__name__}: {e}") from e
        self._pools = [descriptor_pool.Default()]
        if descriptor_sets:
            pool = descriptor_pool.DescriptorPool()
            for path in descriptor_sets:
                try:
                    with open(path, "rb") as f:
                        files = descriptor_pb2.FileDescriptorSet.FromString(f.read())
                    for fd in files.file:
                        pool.Add(fd)
                except (OSError, DecodeError, TypeError) as e:
                    raise ConfigurationError(f"cannot read --descriptor-set {path!r}: {e}") from e
            self._pools.insert(0, pool)
        self._classes: dict[str, Any] = {}

    def message_class(self, type_url: str) -> Any | None:
        """The generated class for ``type_url``, or None when no pool knows it."""
        name = type_url.rsplit("/", 1)[-1]
        if name in self._classes:
            return self._classes[name]
        found = None
        for pool in self._pools:
            try:
                found = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
                break
            except KeyError:
                continue
        self._classes[name] = found
        return found

    def decode(self, type_url: str, payload: bytes) -> dict[str, Any]:
        """``{"type": name, "data": {...}}`` when the type is known and the bytes parse,
        otherwise ``{"type": name, "raw": base64}`` (with ``"error"`` when parsing failed)."""
        name = type_url.rsplit("/", 1)[-1]
        cls = self.message_class(type_url)
        if cls is None:
            return {"type": name, "raw": base64.b64encode(payload).decode()}
        try:
            msg: Message = cls.FromString(payload)
        except DecodeError as e:
            return {"type": name, "raw": base64.b64encode(payload).decode(), "error": f"does not parse as {name}: {e}"}
        return {"type": name, "data": json_format.MessageToDict(msg, preserving_proto_field_name=True)}

    def parses(self, type_url: str, payload: bytes) -> bool | None:
        """True when the payload parses as its type, False when not, None when the type is unknown."""
        cls = self.message_class(type_url)
        if cls is None:
            return None
        try:
            cls.FromString(payload)
        except DecodeError:
            return False
        return True
