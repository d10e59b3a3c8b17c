"""Importing a database of the Go library: the test lays out PostgreSQL tables as the Go
library's contrib stores do (events_store in the v3 layout with the resulting state, snapshots,
durable states, offsets; Any-packed payloads with the manifest google.protobuf.Any; nanosecond
timestamps and, for old rows, seconds; Go shard numbers), imports them, and recovers every
entity with an engine."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from bank_data import DurableAccount
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import Message

import ego
from ego.cli import main
from ego.migration import import_go

from bank_pb2 import Account, AccountCredited, AccountDebited, AccountOpened
from domain import AccountBehavior

T0 = 1_750_000_000_000_000_000  # ns


def packed(message: Message) -> bytes:
    """What the Go store writes to event_payload: proto.Marshal of the anypb.Any."""
    any_ = AnyMessage()
    any_.Pack(message)
    return any_.SerializeToString()


def go_schema(db: psycopg.Connection[Any], schema: str) -> None:
    db.execute(f"""
        CREATE SCHEMA {schema};
        CREATE TABLE {schema}.events_store (
            persistence_id VARCHAR(255) NOT NULL, sequence_number BIGINT NOT NULL,
            is_deleted BOOLEAN DEFAULT FALSE NOT NULL, event_payload BYTEA NOT NULL,
            event_manifest VARCHAR(255) NOT NULL, state_payload BYTEA NOT NULL,
            state_manifest VARCHAR(255) NOT NULL, timestamp BIGINT NOT NULL, shard_number BIGINT NOT NULL,
            PRIMARY KEY (persistence_id, sequence_number));
        CREATE TABLE {schema}.snapshots_store (
            persistence_id VARCHAR(255) NOT NULL, sequence_number BIGINT NOT NULL, state_payload BYTEA NOT NULL,
            state_manifest VARCHAR(255) NOT NULL, timestamp BIGINT NOT NULL,
            encryption_key_id VARCHAR(255) DEFAULT '' NOT NULL, is_encrypted BOOLEAN DEFAULT FALSE NOT NULL,
            PRIMARY KEY (persistence_id, sequence_number));
        CREATE TABLE {schema}.states_store (
            persistence_id VARCHAR(255) NOT NULL, version_number BIGINT NOT NULL, state_payload BYTEA NOT NULL,
            state_manifest VARCHAR(255) NOT NULL, timestamp BIGINT NOT NULL, shard_number BIGINT NOT NULL,
            PRIMARY KEY (persistence_id, version_number), CONSTRAINT {schema}_unique UNIQUE (persistence_id));
        CREATE TABLE {schema}.offsets_store (
            projection_name VARCHAR(255) NOT NULL, shard_number BIGINT NOT NULL, current_offset BIGINT NOT NULL,
            timestamp BIGINT NOT NULL, PRIMARY KEY (projection_name, shard_number));
    """)  # type: ignore[arg-type]


def go_account(db: psycopg.Connection[Any], schema: str, pid: str, n: int, *, v3_upto: int, deleted_upto: int, old: bool) -> int:
    """Events 1..n of an account (v3 rows carry the resulting state up to ``v3_upto``); rows
    up to ``deleted_upto`` removed as the Go retention does. Returns the balance."""
    state = Account(account_id=pid, balance=0, open=False)
    ts = T0 + sum(pid.encode()) * 1000
    for seq in range(1, n + 1):
        if seq == 1:
            event: Message = AccountOpened(account_id=pid, balance=100)
            state.balance, state.open = 100, True
        elif seq % 4 == 0:
            event = AccountDebited(amount=3)
            state.balance -= 3
        else:
            event = AccountCredited(amount=seq)
            state.balance += seq
        ts += 1_000_000
        stamp = ts // 1_000_000_000 if old else ts  # before v4.2.0: seconds
        state_payload, state_manifest = (packed(state), "google.protobuf.Any") if seq <= v3_upto else (b"", "")
        if seq > deleted_upto:
            db.execute(
                f"INSERT INTO {schema}.events_store VALUES (%s, %s, false, %s, 'google.protobuf.Any', %s, %s, %s, %s)",
                (pid, seq, packed(event), state_payload, state_manifest, stamp, 5),
            )
    return state.balance


@pytest.fixture
def go_db(pg_url: str) -> Iterator[tuple[str, str, dict[str, int]]]:
    schema = f"go_{uuid.uuid4().hex[:8]}"
    balances: dict[str, int] = {}
    with psycopg.connect(pg_url, autocommit=True) as db:
        go_schema(db, schema)
        for i in range(8):  # v4 rows, nanoseconds, a Go snapshot for some
            pid = f"account-{i}"
            balances[pid] = go_account(db, schema, pid, 6 + i, v3_upto=0, deleted_upto=0, old=False)
        snapshot = Account(account_id="account-7", open=True)
        snapshot.balance = 100 + 2 + 3  # after events 1..3
        db.execute(
            f"INSERT INTO {schema}.snapshots_store VALUES ('account-7', 3, %s, 'google.protobuf.Any', %s)",
            (packed(snapshot), T0),
        )
        for i in range(4):  # v3 rows with the resulting state; the first events deleted by retention
            pid = f"legacy-{i}"
            balances[pid] = go_account(db, schema, pid, 9, v3_upto=6, deleted_upto=4 if i % 2 else 0, old=True)
        for i in range(3):
            pid = f"durable-{i}"
            state = Account(account_id=pid, balance=7 * i, open=True)
            db.execute(
                f"INSERT INTO {schema}.states_store VALUES (%s, 2, %s, 'google.protobuf.Any', %s, 2)", (pid, packed(state), T0)
            )
            balances[pid] = 7 * i
        db.execute(f"INSERT INTO {schema}.offsets_store VALUES ('go-proj', 5, %s, 0)", (T0 + 5_000_000,))
    yield pg_url, schema, balances
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[arg-type]


def recover(store: Any, balances: dict[str, int]) -> dict[str, int]:
    found = {}
    with ego.Engine("go", store=store) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.register_entity_type(AccountBehavior, prefix="legacy-")
        for pid in balances:
            if pid.startswith("durable-"):
                found[pid] = engine.durable_state_entity(DurableAccount(pid))[0].balance
            else:
                found[pid] = engine.get_state(pid)[0].balance
    return found


def test_import_recovers_every_entity(tmp_path: Path, go_db: tuple[str, str, dict[str, int]]) -> None:
    url, schema, balances = go_db
    target = ego.RocksDBStore(tmp_path / "db")
    report = import_go(url, target, schema=schema, v3_state_snapshots=True)
    assert report.migration.verification is not None and report.migration.verification.ok
    assert report.migration.streams == 12 and report.migration.states == 3
    events = target.replay_events("legacy-0")
    assert events[0].timestamp > 10**18  # seconds became nanoseconds
    assert {e.shard for e in events} == {ego._ego.shard_of("legacy-0", 8)}
    snap = target.latest_snapshot("legacy-1")
    assert snap is not None and snap.sequence_number == 6  # the v3 state of event 6
    assert target.latest_snapshot("account-7").sequence_number == 3  # type: ignore[union-attr]
    assert set(report.projections) == {"go-proj"}
    assert recover(target, balances) == balances
    again = import_go(url, target, schema=schema, v3_state_snapshots=True)
    assert again.migration.events == 0 and again.migration.verification.ok  # type: ignore[union-attr]
    target.close()


def test_without_the_v3_step_deleted_history_is_a_fault(
    tmp_path: Path, go_db: tuple[str, str, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, schema, _ = go_db
    target = f"rocksdb://{tmp_path / 'db'}"
    capsys.readouterr()
    assert main(["import-go", f"{url}", target, "--schema", schema, "--keep-shards", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["streams"] == 12 and result["verification"]["ok"]
    assert main(["check", target, "--json"]) == 1
    faults = json.loads(capsys.readouterr().out)["faults"]
    assert sorted(f.split(":")[0] for f in faults) == ["'legacy-1'", "'legacy-3'"]
    store = ego.RocksDBStore(tmp_path / "db")
    assert {e.shard for e in store.replay_events("account-1")} == {5}
    store.close()


def test_a_database_that_is_not_the_go_layout(pg_url: str, tmp_path: Path) -> None:
    with pytest.raises(ego.errors.MigrationError, match="not a Go library database"):
        import_go(pg_url, ego.MemoryStore(), schema="no_such_schema")
