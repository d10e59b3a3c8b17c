"""Logging: the default logger writes to the standard `logging` module under "ego"; a custom
logger (or structlog) receives the same records, including those produced in the Rust core."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import structlog
from waiting import wait_until

import ego
from ego.logs import Logger, StdLogger

from bank_pb2 import OpenAccount
from domain import AccountBehavior


class Collect:
    """A Logger that keeps its records."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def debug(self, msg: str, **fields: Any) -> None:
        self.records.append(("debug", msg, fields))

    def info(self, msg: str, **fields: Any) -> None:
        self.records.append(("info", msg, fields))

    def warning(self, msg: str, **fields: Any) -> None:
        self.records.append(("warning", msg, fields))

    def error(self, msg: str, **fields: Any) -> None:
        self.records.append(("error", msg, fields))


class FailingSnapshots:
    """A store whose snapshot writes fail (the engine logs it from a runtime thread)."""

    def __init__(self) -> None:
        self._store = ego.MemoryStore()

    def __getattr__(self, name: str) -> Any:
        if name == "write_snapshot":

            def fail(snapshot: Any) -> None:
                raise OSError("snapshot disk unplugged")

            return fail
        return getattr(self._store, name)


def failing_projection(events: list[ego.PersistedEvent]) -> None:
    raise RuntimeError("the read model is down")


def workload(logger: Logger | None) -> None:
    """Produces records from Python (start, stop) and from the Rust core: a projection that
    stops on a failure (its thread), a snapshot that fails after its retries (a runtime
    thread, without the GIL)."""
    with ego.Engine("logged", store=FailingSnapshots(), logger=logger) as engine:
        engine.register_entity_type(AccountBehavior, snapshot_interval=1)
        engine.add_projection("p", failing_projection, offset_store=ego.MemoryStore())
        engine.send_command("acc-1", OpenAccount(initial_balance=1))
        wait_until(lambda: not engine.is_projection_running("p"), what="the projection to stop")
        # The snapshot is retried 3 times (0.1 + 0.2 + 0.4 s) before the warning.
        wait_until(lambda: engine.stats()["background_failures"] != 0, what="the failed snapshot")


EXPECTED = [
    ("info", "engine started"),
    ("error", 'projection "p" stopped: the handler failed after 1 attempt(s): RuntimeError: the read model is down'),
    ("warning", 'snapshot of "acc-1" at 1 failed after retries'),
    ("info", "engine stopped"),
]


def matches(records: list[tuple[str, str]]) -> None:
    assert len(records) == len(EXPECTED), records
    for (level, msg), (want_level, want_prefix) in zip(sorted(records), sorted(EXPECTED), strict=True):
        assert level == want_level and msg.startswith(want_prefix), (level, msg)


def test_the_default_logger_writes_to_the_logging_module(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ego")
    workload(None)
    records = [r for r in caplog.records if r.name == "ego"]
    matches([(r.levelname.lower(), r.getMessage()) for r in records])
    assert all(r.ego == {"engine": "logged"} for r in records)  # type: ignore[attr-defined]
    assert "snapshot disk unplugged" in next(r.getMessage() for r in records if r.levelname == "WARNING")


def test_a_custom_logger_receives_the_same_records() -> None:
    log = Collect()
    workload(log)
    matches([(level, msg) for level, msg, _ in log.records])
    assert all(fields == {"engine": "logged"} for _, _, fields in log.records)


def test_structlog_fits_the_protocol() -> None:
    with structlog.testing.capture_logs() as logs, ego.Engine("structured", logger=structlog.get_logger("ego")):
        pass
    assert [(e["log_level"], e["event"], e["engine"]) for e in logs] == [
        ("info", "engine started", "structured"),
        ("info", "engine stopped", "structured"),
    ]


def test_a_logger_that_raises_falls_back_to_logging(caplog: pytest.LogCaptureFixture) -> None:
    class Raising(Collect):
        def error(self, msg: str, **fields: Any) -> None:
            raise ValueError("the log backend is down")

    caplog.set_level(logging.ERROR, logger="ego")
    with ego.Engine("fallback", logger=Raising()) as engine:
        engine.add_projection("p", failing_projection, offset_store=ego.MemoryStore())
        engine.register_entity_type(AccountBehavior)
        engine.send_command("acc-1", OpenAccount(initial_balance=1))
        wait_until(lambda: any("read model is down" in r.getMessage() for r in caplog.records), what="the record")
    message = next(r.getMessage() for r in caplog.records if "read model is down" in r.getMessage())
    assert "the log backend is down" in message


def test_a_logger_must_have_the_four_methods() -> None:
    class Half:
        def info(self, msg: str) -> None: ...

    with pytest.raises(ego.errors.ConfigurationError, match="lacks debug, warning, error"):
        ego.Engine(logger=Half())  # type: ignore[arg-type]


def test_std_logger_is_a_logger() -> None:
    assert isinstance(StdLogger(), Logger)
    assert isinstance(Collect(), Logger)
