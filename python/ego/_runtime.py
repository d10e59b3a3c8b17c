"""Helpers the Rust extension calls back into. Not public API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
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


def has_map_fields(cls: type[Message]) -> bool:
    """Whether messages of ``cls`` hold a map field, in themselves or in a nested message
    (their serialization then depends on the order the map was filled in)."""
    seen: set[str] = set()
    todo = [cls.DESCRIPTOR]
    while todo:
        descriptor = todo.pop()
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        for field in descriptor.fields:
            if field.message_type is None:
                continue
            if field.message_type.GetOptions().map_entry:
                return True
            todo.append(field.message_type)
    return False


_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def loop_waker(loop: asyncio.AbstractEventLoop) -> Any:
    """The reply channel of `loop`: a pipe whose read end the loop watches. Rust queues the
    outcomes of futures of this loop and writes one byte; the reader settles them all."""
    waker = _wakers.get(loop)
    if waker is None:
        from ego._ego import LoopDrain

        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        waker = LoopDrain(read_fd, write_fd)
        loop.add_reader(read_fd, waker)
        _wakers[loop] = waker
        weakref.finalize(loop, _close, read_fd, write_fd)
    return waker
