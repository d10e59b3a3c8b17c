"""Pluggable logging (the Go library's ``Logger``).

The engine logs through an object with ``debug``, ``info``, ``warning`` and ``error`` methods
taking a message and keyword fields: the :class:`Logger` protocol. The default,
:class:`StdLogger`, writes to the standard :mod:`logging` module under the ``"ego"`` logger
(fields go to the record as ``record.ego``). A structlog logger fits the protocol as it is::

    engine = ego.Engine("bank", logger=structlog.get_logger("ego"))

Records produced inside the Rust core (a snapshot that failed, a projection that stopped) are
queued without the GIL and written by a thread that holds it; they never slow a command down.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, runtime_checkable

__all__ = ["Logger", "StdLogger"]


@runtime_checkable
class Logger(Protocol):
    """What the engine logs through."""

    def debug(self, msg: str, **fields: Any) -> Any: ...
    def info(self, msg: str, **fields: Any) -> Any: ...
    def warning(self, msg: str, **fields: Any) -> Any: ...
    def error(self, msg: str, **fields: Any) -> Any: ...


class StdLogger:
    """A :class:`Logger` on the standard :mod:`logging` module."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("ego")

    def _log(self, level: int, msg: str, fields: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, msg, extra={"ego": fields} if fields else None, stacklevel=3)

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._log(logging.ERROR, msg, fields)
