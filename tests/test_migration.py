"""ego.migration and `ego migrate` / `ego verify`: RocksDB -> PostgreSQL -> RocksDB round trip,
resumption, idempotence, offsets, keys and erasures, a Python store, and a tampered event."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bank_data import fill, recovered
from sqlite_store import SqliteStore

import ego
from ego.cli import main
from ego.migration import migrate
from ego.migration.access import StoreAccess
from ego.migration.compare import CHECKPOINT, canonical


@pytest.fixture
def pg(pg_url: str) -> Iterator[Any]:
    """A factory of PostgreSQL stores with fresh tables, dropped afterwards; returns
    ``(store, url with the prefix)``."""
    made: list[Any] = []

    def make() -> tuple[ego.PostgresStore, str]:
        prefix = f"m{uuid.uuid4().hex[:8]}_"
        store = ego.PostgresStore(pg_url, table_prefix=prefix)
        made.append(store)
        return store, f"{pg_url}?table_prefix={prefix}"

    yield make
    for s in made:
        s.drop_tables()
        s.close()


def streams(store: Any) -> dict[str, list[bytes]]:
    """Every stream's events, without their store-assigned positions."""
    access = StoreAccess(store)
    return {pid: [canonical(raw) for raw in access.replay_raw(pid)] for page in access.event_id_pages() for pid in page}


def test_round_trip_rocksdb_postgres_rocksdb_is_byte_identical(tmp_path: Path, pg: Any) -> None:
    source = ego.RocksDBStore(tmp_path / "a")
    balances = fill(source, accounts=25, commands=400)
    middle, _ = pg()
    report = migrate(source, middle)
    assert report.verification is not None and report.verification.ok, report.verification
    assert report.streams == 30 and report.states == 5 and report.events > 300
    back = ego.RocksDBStore(tmp_path / "b")
    again = migrate(middle, back)
    assert again.verification is not None and again.verification.ok
    original = streams(source)
    assert streams(back) == original == streams(middle)
    assert any(events and ego.v1.Event.FromString(events[0]).sequence_number > 1 for events in original.values())
    for pid in ("retained-00", "account-003"):
        a, b = source.latest_snapshot(pid), back.latest_snapshot(pid)
        assert a is not None and a == b
        assert source.highest_sequence_number(pid) == back.highest_sequence_number(pid)
    assert source.read_state("durable-2") == back.read_state("durable-2")
    assert middle.read_offsets(CHECKPOINT) == [] and back.projection_names() == ["balances", "late"]
    source.close()
    assert recovered(back, balances) == balances
    back.close()


def test_offsets_move_to_the_targets_positions(tmp_path: Path, pg: Any) -> None:
    source = ego.RocksDBStore(tmp_path / "a")
    fill(source, accounts=10, commands=150)
    target, _ = pg()
    report = migrate(source, target)
    heads = {shard: head for shard, head, _ in target.shard_heads()}
    # Caught up in the source: at the target's head.
    assert dict(target.read_offsets("balances")) == {s: heads[s] for s, _ in source.read_offsets("balances")}
    # Lagging: just before the first event it had not handled, so none is skipped.
    late = dict(target.read_offsets("late"))
    for shard, position in source.read_offsets("late"):
        unhandled = {(e.persistence_id, e.sequence_number) for e in source.shard_events(shard, position, 10_000)}
        after = {(e.persistence_id, e.sequence_number) for e in target.shard_events(shard, late[shard], 10_000)}
        assert unhandled <= after
    assert report.replays.get("late", 0) >= 0
    source.close()


def test_a_second_run_writes_nothing_and_a_resumed_run_completes(tmp_path: Path) -> None:
    source = ego.RocksDBStore(tmp_path / "a")
    fill(source, accounts=12, commands=120)
    target = ego.RocksDBStore(tmp_path / "b")
    first = migrate(source, target, verify=False)
    second = migrate(source, target)
    assert (second.events, second.snapshots, second.states) == (0, 0, 0)
    assert second.skipped == first.streams + first.states
    assert second.verification is not None and second.verification.ok
    # A checkpoint left by an interrupted run: the streams before it are not looked at again.
    target.write_offsets(CHECKPOINT, [(0, 5)])
    resumed = migrate(source, target)
    assert resumed.resumed_at == 5 and resumed.streams == first.streams - 5
    assert resumed.verification is not None and resumed.verification.ok
    source.close()
    target.close()


def test_a_target_with_other_data_is_refused(tmp_path: Path) -> None:
    from ego.testkit.conformance import make_event

    source = ego.MemoryStore()
    source.write_events([make_event("a", 1), make_event("a", 2)])
    target = ego.MemoryStore()
    target.write_events([make_event("a", 1), make_event("a", 2), make_event("a", 3)])
    with pytest.raises(ego.errors.MigrationError, match="not a copy of this source"):
        migrate(source, target)


def test_keys_and_erasures_travel_and_ciphertext_stays_readable(tmp_path: Path, pg: Any) -> None:
    from bank_pb2 import Credit, OpenAccount
    from domain import AccountBehavior

    encryption = ego.Encryption(master_key=b"m" * 32)
    source = ego.RocksDBStore(tmp_path / "a")
    with ego.Engine("enc", store=source, encryption=encryption) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        for i in range(4):
            engine.send_command(f"account-{i}", OpenAccount(initial_balance=10))
            engine.send_command(f"account-{i}", Credit(amount=i))
        engine.erase_entity("account-2")
    target, _ = pg()
    report = migrate(source, target)
    assert (report.keys, report.erasures) == (3, 1)
    assert report.verification is not None and report.verification.ok
    with ego.Engine("enc2", store=target, encryption=encryption) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        assert engine.get_state("account-3")[0].balance == 13
        with pytest.raises(ego.errors.EntityErasedError):
            engine.get_state("account-2")
    source.close()


def test_to_and_from_a_store_written_in_python(tmp_path: Path) -> None:
    source = ego.MemoryStore()
    balances = fill(source, accounts=6, commands=60, durable=0)
    python_store = SqliteStore(str(tmp_path / "s.db"))
    report = migrate(source, python_store)
    assert report.verification is not None and report.verification.ok
    back = ego.MemoryStore()
    assert migrate(python_store, back).verification.ok  # type: ignore[union-attr]
    assert streams(back) == streams(source)
    assert recovered(back, balances) == balances


def test_verify_catches_one_tampered_event(tmp_path: Path, pg: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import psycopg

    source = ego.RocksDBStore(tmp_path / "a")
    fill(source, accounts=8, commands=80, durable=2)
    source.close()
    _, url = pg()
    src_url = f"rocksdb://{tmp_path / 'a'}"
    capsys.readouterr()
    assert main(["migrate", src_url, url, "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["verification"]["ok"] and done["streams"] == 9
    assert main(["verify", src_url, url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    prefix = url.rsplit("table_prefix=", 1)[1]
    with psycopg.connect(url.split("?")[0], autocommit=True) as db:
        db.execute(
            f"UPDATE \"{prefix}events\" SET payload = payload || '\\x00'::bytea WHERE persistence_id = %s AND sequence_number = 2",
            ("account-004",),
        )
    assert main(["verify", src_url, url, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"]
    [difference] = report["differences"]
    assert "'account-004'" in difference and "same count but different contents" in difference
    assert main(["verify", src_url, url]) == 1
    assert "account-004" in capsys.readouterr().out
