"""Several processes serving one entity on one PostgreSQL database (issue 18, item 1).

The scenario: a product (a bank account here: the balance is the stock on hand) is opened and
restocked to 5 (revision 2) through engine B; engine A restocks 5 more (revision 3). A
reservation of 8 on B must see the 10 on hand.

- By default each entity id is served by one process. When another process wrote anyway, the
  next write of B is refused by the journal: the command fails with ``ConcurrencyError``, the
  engine logs a warning that names the rule, and the entity reloads, so the command after it
  sees A's events.

Engine A is a second engine in this process, or a real second process
(``shared_child.py``).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_until

import ego
from ego.errors import ConcurrencyError

from bank_pb2 import Credit, Debit, OpenAccount
from domain import AccountBehavior

CHILD = Path(__file__).resolve().parent / "shared_child.py"


class Collecting:
    """A logger that keeps every record."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []

    def _keep(self, level: str, msg: str) -> None:
        self.records.append((level, msg))

    def debug(self, msg: str, **fields: Any) -> None:
        self._keep("debug", msg)

    def info(self, msg: str, **fields: Any) -> None:
        self._keep("info", msg)

    def warning(self, msg: str, **fields: Any) -> None:
        self._keep("warning", msg)

    def error(self, msg: str, **fields: Any) -> None:
        self._keep("error", msg)

    def warnings(self) -> list[str]:
        return [m for level, m in self.records if level == "warning"]


@pytest.fixture
def prefix(pg_url: str) -> Iterator[str]:
    """A fresh table prefix on the test database, dropped afterwards."""
    p = f"sh{uuid.uuid4().hex[:8]}_"
    yield p
    cleanup = ego.PostgresStore(pg_url, table_prefix=p)
    cleanup.drop_tables()
    cleanup.close()


def restock_in_another_process(pg_url: str, prefix: str, entity_id: str, amount: int) -> tuple[int, int]:
    """Engine A in a child process credits ``amount``; returns its (balance, revision)."""
    out = subprocess.run(
        [sys.executable, str(CHILD), pg_url, prefix, entity_id, str(amount)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    balance, revision = out.split()[-2:]
    return int(balance), int(revision)


class TwoEngines:
    """Engines A and B on one PostgreSQL database (tables under ``prefix``)."""

    def __init__(self, pg_url: str, prefix: str) -> None:
        self.logger_b = Collecting()
        self.stores = [ego.PostgresStore(pg_url, table_prefix=prefix) for _ in range(2)]
        self.a = ego.Engine("engine-a", store=self.stores[0])
        self.b = ego.Engine("engine-b", store=self.stores[1], logger=self.logger_b)
        for engine in (self.a, self.b):
            engine.start()
            engine.register_entity_type(AccountBehavior)

    def close(self) -> None:
        for engine in (self.a, self.b):
            engine.stop()
        for s in self.stores:
            s.close()


@pytest.fixture
def default_mode(pg_url: str, prefix: str) -> Iterator[TwoEngines]:
    engines = TwoEngines(pg_url, prefix)
    yield engines
    engines.close()


def given_b_served_revision_2(b: ego.Engine) -> None:
    b.send_command("product-1", OpenAccount(initial_balance=0))
    state, revision = b.send_command("product-1", Credit(amount=5))
    assert (state.balance, revision) == (5, 2)


def then_b_refuses_its_stale_write_warns_and_reloads(engines: TwoEngines) -> None:
    with pytest.raises(ConcurrencyError) as refused:
        engines.b.send_command("product-1", Credit(amount=1))
    assert refused.value.persistence_id == "product-1"
    assert (refused.value.expected, refused.value.actual) == (2, 3)
    warning = wait_until(lambda: [w for w in engines.logger_b.warnings() if "product-1" in w], what="the warning")[0]
    assert "one process" in warning
    assert "shared=True" in warning
    assert "docs/cluster.md" in warning
    # The entity reloaded: the next command sees A's restock (10 on hand) and is accepted.
    state, revision = engines.b.send_command("product-1", Debit(amount=8))
    assert (state.balance, revision) == (2, 4)
    assert engines.b.get_state("product-1")[1] == 4


def test_default_mode_a_write_refused_because_another_engine_wrote_warns_and_the_next_command_sees_its_events(
    default_mode: TwoEngines,
) -> None:
    given_b_served_revision_2(default_mode.b)
    state, revision = default_mode.a.send_command("product-1", Credit(amount=5))
    assert (state.balance, revision) == (10, 3)
    then_b_refuses_its_stale_write_warns_and_reloads(default_mode)


def test_default_mode_the_same_with_the_other_writer_in_another_process(
    default_mode: TwoEngines, pg_url: str, prefix: str
) -> None:
    given_b_served_revision_2(default_mode.b)
    assert restock_in_another_process(pg_url, prefix, "product-1", 5) == (10, 3)
    then_b_refuses_its_stale_write_warns_and_reloads(default_mode)


def test_default_mode_a_single_writer_never_warns(default_mode: TwoEngines) -> None:
    given_b_served_revision_2(default_mode.b)
    default_mode.b.send_command("product-1", Debit(amount=5))
    default_mode.b.stop()
    assert default_mode.logger_b.warnings() == []
