"""What crosses between processes: protobuf messages as (type URL, bytes), outcomes, errors.

Errors of ego itself cross as their class name, message and fields, and are raised again as
the same :mod:`ego.errors` class; any other exception (a behaviour's own) crosses pickled and
is raised again with its own type and message, as the engine does in one process.
"""

from __future__ import annotations

import importlib
import pickle
from typing import Any

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from ego import errors
from ego.errors import ConfigurationError, EgoError, InvalidMessageError

TYPE_PREFIX = "type.googleapis.com/"

#: A message on the wire: its type URL and its bytes.
Packed = tuple[str, bytes]
#: An error on the wire: (kind, class, message, fields, pickled or None, cause or None).
WireError = tuple[str, str, str, dict[str, Any], bytes | None, Any]
#: An outcome on the wire: ("ok", type URL, state bytes, revision) or ("err", WireError).
Outcome = tuple[Any, ...]

_classes: dict[str, type[Message]] = {}


def pack(message: Message) -> Packed:
    """``(type URL, bytes)`` of a protobuf message.

    :raises InvalidMessageError: ``message`` is not a protobuf message.
    """
    if not isinstance(message, Message):
        raise InvalidMessageError(f"a command must be a protobuf message, got {type(message).__name__}")
    return TYPE_PREFIX + message.DESCRIPTOR.full_name, message.SerializeToString()


def unpack(type_url: str, payload: bytes) -> Message:
    """The message of a type URL and bytes; its module must be imported in this process.

    :raises ConfigurationError: no message type of that name is known here.
    """
    cls = _classes.get(type_url)
    if cls is None:
        name = type_url.rsplit("/", 1)[-1]
        try:
            descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
        except KeyError:
            raise ConfigurationError(
                f"unknown protobuf type {name!r}: import the module that defines it in this process"
            ) from None
        cls = message_factory.GetMessageClass(descriptor)
        _classes[type_url] = cls
    message = cls()
    message.ParseFromString(payload)
    return message


def outcome_ok(state: Any, revision: int) -> Outcome:
    """The outcome of a command or query that succeeded."""
    if isinstance(state, Message):
        type_url, payload = pack(state)
        return ("ok", type_url, payload, revision)
    return ("ok", None, pickle.dumps(state), revision)


def outcome_of(result: Any) -> Outcome:
    """An engine's result (``(state, revision)`` or an exception) on the wire."""
    if isinstance(result, BaseException):
        return ("err", error_to_wire(result))
    state, revision = result
    return outcome_ok(state, revision)


def result_of(outcome: Outcome) -> tuple[Any, int]:
    """``(state, revision)`` of an outcome, or raises its error."""
    if outcome[0] == "ok":
        _, type_url, payload, revision = outcome
        state = pickle.loads(payload) if type_url is None else unpack(type_url, payload)
        return state, revision
    raise error_from_wire(outcome[1])


def error_to_wire(exc: BaseException) -> WireError:
    """An exception as plain data."""
    cause = error_to_wire(exc.__cause__) if exc.__cause__ is not None and exc.__cause__ is not exc else None
    cls = type(exc)
    if cls.__module__ == errors.__name__ and getattr(errors, cls.__name__, None) is cls:
        fields = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, bool, type(None)))}
        return ("ego", cls.__name__, str(exc), fields, None, cause)
    try:
        blob: bytes | None = pickle.dumps(exc)
    except Exception:
        blob = None
    return ("user", f"{cls.__module__}:{cls.__qualname__}", str(exc), {}, blob, cause)


def error_from_wire(wire: WireError) -> BaseException:
    """The exception a :func:`error_to_wire` describes: the same ego error class with its
    message and fields, or the user's exception as it was raised."""
    kind, name, message, fields, blob, cause = wire
    exc: BaseException | None = None
    if kind == "ego":
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            exc = cls(message)
            for key, value in fields.items():
                setattr(exc, key, value)
    else:
        if blob is not None:
            try:
                loaded = pickle.loads(blob)
                if isinstance(loaded, BaseException):
                    exc = loaded
            except Exception:
                exc = None
        if exc is None:
            exc = _by_name(name, message)
    if exc is None:
        exc = EgoError(f"{name}: {message}")
    if cause is not None:
        exc.__cause__ = error_from_wire(cause)
    return exc


def _by_name(path: str, message: str) -> BaseException | None:
    module, _, qualname = path.partition(":")
    try:
        target: Any = importlib.import_module(module)
        for part in qualname.split("."):
            target = getattr(target, part)
        if isinstance(target, type) and issubclass(target, BaseException):
            return target(message)
    except Exception:
        return None
    return None
