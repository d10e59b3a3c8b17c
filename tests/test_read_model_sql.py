"""Transactional projections on PostgreSQL: ego.Sql binds the documented Python types, runs
in the store's schema, and a statement PostgreSQL refuses is the handler's failure under the
projection's policy (never a store outage retried forever)."""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import ego
from ego import errors

from bank_pb2 import AccountCredited, Credit, OpenAccount
from domain import AccountBehavior


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    """A schema of its own, dropped afterwards."""
    name = f"s{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def sql(pg_url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description else []


class Color(enum.Enum):
    RED = "red"


def test_sql_binds_the_documented_python_types_in_the_stores_schema(pg_url: str, schema: str) -> None:
    store = ego.PostgresStore(pg_url, schema=schema)
    # The read model lives in the store's schema; a table of the same name in public must
    # stay untouched (the statement says "typed", unqualified).
    sql(
        pg_url,
        f'CREATE TABLE "{schema}".typed (id text primary key, amount numeric, big numeric, doc jsonb, raw json, '
        "at timestamptz, wall timestamp, day date, tod time, span interval, uid uuid, blob bytea, flag boolean, "
        "color text, ratio double precision, n integer)",
    )
    values = (
        "account-1",
        decimal.Decimal("-12345.0067"),
        2**70,
        {"tags": ["a", "b"], "n": 1},
        '{"plain": "json text"}',
        datetime.datetime(2026, 11, 30, 12, 30, 15, 123456, tzinfo=datetime.timezone.utc),
        datetime.datetime(2026, 11, 30, 8, 0, 0, 1),
        datetime.date(1999, 12, 31),
        datetime.time(23, 59, 58, 999999),
        datetime.timedelta(days=2, seconds=3, microseconds=4),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        bytearray(b"\x00\x01"),
        True,
        Color.RED,
        1.5,
        7,
    )

    def project(events: list[ego.PersistedEvent]) -> list[ego.Sql]:
        placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        return [ego.Sql(f"INSERT INTO typed VALUES ({placeholders}) ON CONFLICT (id) DO NOTHING", values)]

    try:
        with ego.Engine("types", store=store) as engine:
            engine.register_entity_type(AccountBehavior, prefix="account-")
            engine.add_projection("typed", project, transactional=True)
            engine.send_command("account-1", OpenAccount(initial_balance=1))
            engine.wait_for_projection("typed", timeout=20)
            assert engine.is_projection_running("typed")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SET TIME ZONE 'UTC'")
            row = conn.execute(
                f'SELECT id, amount, big, doc, raw::text, at, wall, day, tod, span, uid, blob, flag, color, ratio, n FROM "{schema}".typed'
            ).fetchone()
        assert row is not None
        assert row[0] == "account-1"
        assert row[1] == decimal.Decimal("-12345.0067")
        assert row[2] == decimal.Decimal(2**70)
        assert row[3] == {"tags": ["a", "b"], "n": 1}
        assert row[4] == '{"plain": "json text"}'
        assert row[5] == values[5]
        assert row[6] == values[6]
        assert row[7:10] == values[7:10]
        assert row[10] == values[10]
        assert bytes(row[11]) == b"\x00\x01"
        assert row[12:] == (True, "red", 1.5, 7)
    finally:
        store.drop_tables()
        store.close()


@pytest.mark.parametrize("value", ["0", "0.000", "1", "-1", "10000", "0.0001", "123456789.987654321", "-0.5", "1E+3", "NaN"])
def test_decimals_bind_exactly(pg_url: str, schema: str, value: str) -> None:
    store = ego.PostgresStore(pg_url, schema=schema)
    sql(pg_url, f'CREATE TABLE "{schema}".nums (n numeric)')
    try:
        with ego.Engine("nums", store=store) as engine:
            engine.register_entity_type(AccountBehavior, prefix="account-")
            engine.add_projection(
                "n", lambda events: [ego.Sql("INSERT INTO nums VALUES ($1)", (decimal.Decimal(value),))], transactional=True
            )
            engine.send_command("account-1", OpenAccount(initial_balance=1))
            engine.wait_for_projection("n", timeout=20)
        (stored,) = sql(pg_url, f'SELECT n::text FROM "{schema}".nums')[0]
        assert decimal.Decimal(stored) == decimal.Decimal(value) or (value == "NaN" and stored == "NaN")
        if value != "NaN":
            assert stored == format(decimal.Decimal(value), "f")
    finally:
        store.drop_tables()
        store.close()


def refusing_cases() -> list[tuple[str, Any]]:
    return [
        ("a missing table", lambda e: [ego.Sql("INSERT INTO no_such_table VALUES ($1)", (1,))]),
        ("a str that is not JSON into jsonb", lambda e: [ego.Sql("INSERT INTO docs VALUES ($1)", ("not json",))]),
        ("a UUID into an integer column", lambda e: [ego.Sql("INSERT INTO counts VALUES ($1)", (uuid.uuid4(),))]),
        ("a type ego does not bind", lambda e: [ego.Sql("INSERT INTO counts VALUES ($1)", (object(),))]),
        ("a Put to a PostgreSQL offset store", lambda e: [ego.Put(b"k", b"v")]),
    ]


@pytest.mark.parametrize(("case", "handler"), refusing_cases(), ids=[c for c, _ in refusing_cases()])
def test_a_refused_write_fails_the_projection_with_the_error(pg_url: str, schema: str, case: str, handler: Any) -> None:
    store = ego.PostgresStore(pg_url, schema=schema)
    sql(pg_url, f'CREATE TABLE "{schema}".docs (d jsonb); CREATE TABLE "{schema}".counts (n integer)')
    try:
        with ego.Engine("refused", store=store) as engine:
            engine.register_entity_type(AccountBehavior, prefix="account-")
            engine.add_projection(
                "p",
                lambda events: handler(events),
                transactional=True,
                recovery=ego.Recovery(ego.RecoveryPolicy.RETRY_AND_FAIL, attempts=2, backoff=0.01),
            )
            engine.send_command("account-1", OpenAccount(initial_balance=1))
            with pytest.raises(errors.ProjectionFailedError):
                engine.wait_for_projection("p", timeout=20)
            status, error = engine.projection_status("p")
            assert status == "failed" and error is not None and "after 2 attempt(s)" in error
            stats = engine.projection_stats("p")
            assert stats["failures"] == 2 and stats["events"] == 0
            assert store.read_offsets("p") == []  # nothing committed
    finally:
        store.drop_tables()
        store.close()


def test_a_refused_statement_goes_to_the_dead_letter_handler_and_the_rest_commits(pg_url: str, schema: str) -> None:
    store = ego.PostgresStore(pg_url, schema=schema)
    sql(pg_url, f'CREATE TABLE "{schema}".credits (seq integer primary key, amount integer)')
    dead: list[tuple[int, BaseException]] = []

    def project(events: list[ego.PersistedEvent]) -> list[ego.Sql]:
        out = []
        for e in events:
            amount = e.event.amount if isinstance(e.event, AccountCredited) else 0
            # A credit of 13 is bound to a column it does not fit: refused by PostgreSQL.
            value: Any = "thirteen" if amount == 13 else amount
            out.append(ego.Sql("INSERT INTO credits VALUES ($1, $2)", (e.sequence_number, value)))
        return out

    try:
        with ego.Engine("dead", store=store) as engine:
            engine.register_entity_type(AccountBehavior, prefix="account-")
            engine.add_projection(
                "credits",
                project,
                transactional=True,
                batch_size=10,
                recovery=ego.Recovery(ego.RecoveryPolicy.SKIP),
                dead_letter=lambda name, pid, event, seq, error: dead.append((seq, error)),
            )
            engine.send_command("account-1", OpenAccount(initial_balance=0))
            for amount in (5, 13, 7):
                engine.send_command("account-1", Credit(amount=amount))
            engine.wait_for_projection("credits", timeout=20)
            assert engine.is_projection_running("credits")
            assert engine.projection_stats("credits")["dead_letters"] == 1
        assert [seq for seq, _ in dead] == [3]
        assert isinstance(dead[0][1], errors.ReadModelWriteError)
        assert sql(pg_url, f'SELECT seq, amount FROM "{schema}".credits ORDER BY seq') == [(1, 0), (2, 5), (4, 7)]
    finally:
        store.drop_tables()
        store.close()
