"""Encryption at rest and erasure (crypto-shredding), on the in-memory, RocksDB and PostgreSQL
stores: round trips, records bound to their place, failing closed, erasure of live entities,
tombstones for readers, master-key rotation, key stores written in Python."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import ego
from ego.testkit import InMemoryKeyStore

from bank_pb2 import Account, Credit, Debit, OpenAccount
from domain import AccountBehavior
from egotest.messages_pb2 import Note

MASTER = bytes(range(32))
OTHER_MASTER = bytes(reversed(range(32)))


def encryption(master: bytes = MASTER, **kw: Any) -> ego.Encryption:
    return ego.Encryption(master_key=master, **kw)


class Wallet(ego.DurableStateBehavior[Any, Account]):
    """A durable-state account: the whole state is stored on every change."""

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Account:
        return Account(account_id=self.entity_id)

    def handle_command(self, command: Any, state: Account) -> Account | None:
        if isinstance(command, Credit):
            return Account(account_id=state.account_id, balance=state.balance + command.amount, open=True)
        if isinstance(command, Debit):
            if command.amount > state.balance:
                raise ValueError("insufficient funds")
            return Account(account_id=state.account_id, balance=state.balance - command.amount, open=True)
        return None


StoreFactory = Callable[[], ego.stores.NativeStore]


def engine_on(store: Any, enc: ego.Encryption | None = None, **kw: Any) -> ego.Engine:
    engine = ego.Engine("enc", store=store, encryption=enc if enc is not None else encryption(), **kw)
    engine.start()
    engine.register_entity_type(AccountBehavior, prefix="account-", snapshot_interval=kw.pop("snapshot_interval", 0))
    engine.register_entity_type(Wallet, prefix="wallet-")
    return engine


def close(engine: ego.Engine, store: Any) -> None:
    engine.stop()
    if not isinstance(store, ego.MemoryStore):
        store.close()


def test_round_trip_and_restart_both_behaviour_kinds(reopenable: StoreFactory) -> None:
    store = reopenable()
    engine = engine_on(store)
    engine.send_command("account-1", OpenAccount(initial_balance=100))
    for _ in range(5):
        engine.send_command("account-1", Credit(amount=10))
    engine.send_command("wallet-1", Credit(amount=7))
    assert engine.send_command("wallet-1", Credit(amount=3))[0].balance == 10
    raw = store.replay_events("account-1")
    assert all(e.is_encrypted and e.encryption_key_id for e in raw)
    assert len({e.encryption_key_id for e in raw}) == 1
    assert store.read_state("wallet-1").is_encrypted
    close(engine, store)

    store = reopenable()
    engine = engine_on(store)
    state, revision = engine.get_state("account-1")
    assert (state.balance, revision) == (150, 6)
    state, version = engine.get_state("wallet-1")
    assert (state.balance, version) == (10, 2)
    close(engine, store)


def test_snapshots_batching_and_retention_work_encrypted(tmp_path: Path) -> None:
    store = ego.RocksDBStore(tmp_path / "db")
    with ego.Engine("enc", store=store, encryption=encryption()) as engine:
        engine.register_entity_type(
            AccountBehavior,
            prefix="account-",
            snapshot_interval=5,
            batch_threshold=4,
            retention=ego.RetentionPolicy(delete_events_on_snapshot=True, events_retention_count=2),
        )
        engine.send_command("account-1", OpenAccount(initial_balance=1))
        for _ in range(11):
            engine.send_command("account-1", Credit(amount=1))
        snapshot = store.latest_snapshot("account-1")
        assert snapshot is not None and snapshot.is_encrypted and snapshot.sequence_number == 10
    store.close()
    store = ego.RocksDBStore(tmp_path / "db")
    with ego.Engine("enc", store=store, encryption=encryption()) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-", snapshot_interval=5)
        assert engine.get_state("account-1") == (Account(account_id="account-1", balance=12, open=True), 12)
    store.close()


def _recover(store: Any, entity_id: str, enc: ego.Encryption | None = None) -> Any:
    with ego.Engine("enc", store=store, encryption=enc or encryption()) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.register_entity_type(Wallet, prefix="wallet-")
        return engine.get_state(entity_id)


def test_a_ciphertext_moved_or_changed_fails_naming_the_entity_and_sequence_number(reopenable: StoreFactory) -> None:
    store = reopenable()
    engine = engine_on(store)
    engine.send_command("account-1", OpenAccount(initial_balance=100))
    engine.send_command("account-1", Credit(amount=1))
    engine.send_command("account-2", OpenAccount(initial_balance=5))
    engine.stop()
    one = store.replay_events("account-1")
    two = store.replay_events("account-2")

    # Event 2 of account-1 copied to sequence number 3 of the same entity (same key).
    moved = type(one[1])()
    moved.CopyFrom(one[1])
    moved.sequence_number = 3
    store.write_events([moved])
    with pytest.raises(ego.errors.DecryptionError) as caught:
        _recover(store, "account-1")
    assert (caught.value.entity_id, caught.value.sequence_number) == ("account-1", 3)

    # account-1's opening event written as account-2's event 2, under account-2's key id.
    stolen = type(one[0])()
    stolen.CopyFrom(one[0])
    stolen.persistence_id, stolen.sequence_number = "account-2", 2
    stolen.encryption_key_id = two[0].encryption_key_id
    store.write_events([stolen])
    with pytest.raises(ego.errors.DecryptionError) as caught:
        _recover(store, "account-2")
    assert (caught.value.entity_id, caught.value.sequence_number) == ("account-2", 2)

    # A flipped bit in a durable state.
    engine = engine_on(store)
    engine.send_command("wallet-9", Credit(amount=5))
    engine.stop()
    state = store.read_state("wallet-9")
    value = bytearray(state.resulting_state.value)
    value[len(value) // 2] ^= 0x01
    state.resulting_state.value = bytes(value)
    store.delete_state("wallet-9")
    store.write_state(state, 0)
    with pytest.raises(ego.errors.DecryptionError) as caught:
        _recover(store, "wallet-9")
    assert (caught.value.entity_id, caught.value.sequence_number) == ("wallet-9", 1)
    if not isinstance(store, ego.MemoryStore):
        store.close()


def test_the_wrong_master_key_or_a_lost_key_store_fails_closed(reopenable: StoreFactory) -> None:
    store = reopenable()
    engine = engine_on(store)
    engine.send_command("account-1", OpenAccount(initial_balance=100))
    engine.stop()
    with pytest.raises(ego.errors.MasterKeyError):
        _recover(store, "account-1", encryption(OTHER_MASTER))
    with pytest.raises(ego.errors.MasterKeyError, match="master key"):
        _recover(store, "account-1", encryption(MASTER, master_key_id="another-id"))
    # Another key store (empty): the key is missing, and there is no erasure record.
    with pytest.raises(ego.errors.KeyNotFoundError) as caught:
        _recover(store, "account-1", ego.Encryption(key_store=InMemoryKeyStore()))
    assert caught.value.entity_id == "account-1" and caught.value.sequence_number == 1
    # Nothing was lost: the right settings read it.
    assert _recover(store, "account-1")[0].balance == 100
    if not isinstance(store, ego.MemoryStore):
        store.close()


def test_erase_a_live_entity_with_commands_in_flight(reopenable: StoreFactory) -> None:
    store = reopenable()
    engine = engine_on(store)
    engine.send_command("account-1", OpenAccount(initial_balance=100))
    engine.send_command("account-2", OpenAccount(initial_balance=100))
    outcomes: list[Any] = []

    async def flood() -> None:
        futures = [engine.send_command_async("account-1", Credit(amount=1)) for _ in range(200)]
        erased = asyncio.get_running_loop().run_in_executor(None, engine.erase_entity, "account-1")
        outcomes.extend(await asyncio.gather(*futures, return_exceptions=True))
        await erased

    asyncio.run(flood())
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert all(isinstance(e, ego.errors.EntityErasedError) for e in errors), {type(e) for e in errors}
    with pytest.raises(ego.errors.EntityErasedError):
        engine.send_command("account-1", Credit(amount=1))
    with pytest.raises(ego.errors.EntityErasedError):
        engine.get_state("account-1")
    # Erasure is idempotent, and other entities are untouched.
    engine.erase_entity("account-1")
    assert engine.send_command("account-2", Credit(amount=1))[0].balance == 101
    close(engine, store)

    store = reopenable()
    raw = store.replay_events("account-1")
    assert raw and all(e.is_encrypted for e in raw)  # still there, unreadable for good
    engine = engine_on(store)
    with pytest.raises(ego.errors.EntityErasedError):
        engine.get_state("account-1")
    with pytest.raises(ego.errors.EntityErasedError):
        engine.send_command("account-1", OpenAccount(initial_balance=1))
    assert engine.get_state("account-2")[0].balance == 101
    close(engine, store)


def test_erase_with_delete_data_and_of_a_durable_state_entity(reopenable: StoreFactory) -> None:
    store = reopenable()
    engine = engine_on(store)
    engine.send_command("account-1", OpenAccount(initial_balance=100))
    engine.send_command("wallet-1", Credit(amount=5))
    engine.erase_entity("account-1", delete_data=True)
    engine.erase_entity("wallet-1")
    assert store.replay_events("account-1") == []
    with pytest.raises(ego.errors.EntityErasedError):
        engine.send_command("wallet-1", Credit(amount=5))
    with pytest.raises(ego.errors.EntityErasedError):
        engine.get_state("wallet-1")
    # An id that never had data can be erased too, and is never used afterwards.
    engine.erase_entity("account-never")
    with pytest.raises(ego.errors.EntityErasedError):
        engine.send_command("account-never", OpenAccount(initial_balance=1))
    close(engine, store)


def test_projections_see_tombstones_and_run_to_the_end(tmp_path: Path) -> None:
    store = ego.RocksDBStore(tmp_path / "db")
    engine = engine_on(store)
    for i in range(10):
        engine.send_command(f"account-{i}", OpenAccount(initial_balance=i))
    engine.erase_entity("account-3")
    seen: dict[str, str] = {}
    done = threading.Event()

    def handler(events: list[ego.PersistedEvent]) -> None:
        for e in events:
            if e.erased:
                with pytest.raises(ego.errors.EntityErasedError):
                    _ = e.event
                seen[e.persistence_id] = "erased"
            else:
                seen[e.persistence_id] = e.event.account_id
        if len(seen) == 10:
            done.set()

    engine.add_projection("balances", handler)
    assert done.wait(10), seen
    assert seen["account-3"] == "erased"
    assert all(seen[f"account-{i}"] == f"account-{i}" for i in range(10) if i != 3)
    assert engine.is_projection_running("balances")
    close(engine, store)


def test_master_key_rotation_under_load_loses_nothing(reopenable: StoreFactory) -> None:
    store = reopenable()
    engine = engine_on(store, encryption(MASTER, master_key_id="old"))
    for i in range(50):
        engine.send_command(f"account-{i}", OpenAccount(initial_balance=i))
    close(engine, store)

    store = reopenable()
    rotated = encryption(OTHER_MASTER, master_key_id="new", previous_master_keys={"old": MASTER})
    engine = engine_on(store, rotated)
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        i = 0
        while not stop.is_set():
            try:
                engine.send_command(f"account-{i % 50}", Credit(amount=1))
                engine.send_command(f"account-new-{i}", OpenAccount(initial_balance=1))
            except BaseException as e:
                errors.append(e)
            i += 1

    writer = threading.Thread(target=load)
    writer.start()
    try:
        first = engine.rewrap_data_keys()
        second = engine.rewrap_data_keys()
    finally:
        stop.set()
        writer.join()
    assert errors == []
    assert first >= 50 and second == 0
    expected = {f"account-{i}": engine.get_state(f"account-{i}") for i in range(50)}
    close(engine, store)

    # The old master key can be retired: everything reads with the new one alone.
    store = reopenable()
    engine = engine_on(store, encryption(OTHER_MASTER, master_key_id="new"))
    for entity_id, outcome in expected.items():
        assert engine.get_state(entity_id) == outcome
    close(engine, store)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_key_store_written_in_python(asynchronous: bool) -> None:
    keys = InMemoryKeyStore()
    key_store: Any = keys
    if asynchronous:

        class AsyncKeys:
            async def get_or_create_key(self, pid: str) -> tuple[str, bytes]:
                return keys.get_or_create_key(pid)

            async def get_key(self, pid: str, key_id: str) -> bytes | None:
                return keys.get_key(pid, key_id)

            async def erase_key(self, pid: str) -> None:
                keys.erase_key(pid)

        key_store = AsyncKeys()
    store = ego.MemoryStore()
    engine = engine_on(store, ego.Encryption(key_store=key_store))
    engine.send_command("account-1", OpenAccount(initial_balance=10))
    engine.send_command("account-1", Credit(amount=1))
    assert keys.created == 1
    engine.erase_entity("account-1")
    assert keys.is_erased("account-1")
    with pytest.raises(ego.errors.EntityErasedError):
        engine.send_command("account-1", Credit(amount=1))
    engine.stop()


class Notebook(ego.EventSourcedBehavior[Any, Any, Note]):
    """Each command is a note; the state keeps the last one (so snapshots carry text too)."""

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Note:
        return Note()

    def handle_command(self, command: Any, state: Note) -> list[Note]:
        return [Note(text=command.text, n=state.n + 1)]

    def handle_event(self, event: Note, state: Note) -> Note:
        return Note(text=event.text, n=event.n)


class Page(ego.DurableStateBehavior[Any, Note]):
    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Note:
        return Note()

    def handle_command(self, command: Any, state: Note) -> Note:
        return Note(text=command.text, n=state.n + 1)


def write_marker_everywhere(store: Any, marker: str) -> None:
    """Events, snapshots and durable states whose payloads hold `marker` (the ids do not)."""
    with ego.Engine("enc", store=store, encryption=encryption()) as engine:
        engine.register_entity_type(Notebook, prefix="notebook-", snapshot_interval=2)
        engine.register_entity_type(Page, prefix="page-")
        for i in range(20):
            engine.send_command(f"notebook-{i % 4}", Note(text=f"{marker} #{i}"))
            engine.send_command(f"page-{i % 3}", Note(text=f"{marker} #{i}"))
        assert marker in engine.get_state("notebook-1")[0].text


def test_no_plaintext_on_disk_in_rocksdb(tmp_path: Path) -> None:
    marker = "MARKER-" + uuid.uuid4().hex
    store = ego.RocksDBStore(tmp_path / "db")
    write_marker_everywhere(store, marker)
    store.close()
    files = [p for p in (tmp_path / "db").rglob("*") if p.is_file()]
    assert any(p.suffix == ".sst" for p in files) or any(p.suffix == ".log" for p in files)
    leaks = [p.name for p in files if marker.encode() in p.read_bytes()]
    assert leaks == []
    # The same scan finds the marker when encryption is off (the scan can fail).
    plain = ego.RocksDBStore(tmp_path / "plain")
    with ego.Engine("plain", store=plain) as engine:
        engine.register_entity_type(Page, prefix="page-")
        engine.send_command("page-1", Note(text=marker))
    plain.close()
    assert any(marker.encode() in p.read_bytes() for p in (tmp_path / "plain").rglob("*") if p.is_file())


def test_no_plaintext_in_the_postgresql_table_files(pg_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    marker = "MARKER-" + uuid.uuid4().hex
    prefix = f"leak{uuid.uuid4().hex[:8]}_"
    store = ego.PostgresStore(pg_url, table_prefix=prefix)
    try:
        write_marker_everywhere(store, marker)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
            data_dir = conn.execute("SHOW data_directory").fetchone()[0]
            paths = []
            for table in ("events", "snapshots", "states"):
                rel = f"public.{prefix}{table}"
                paths.append(conn.execute("SELECT pg_relation_filepath(%s)", (rel,)).fetchone()[0])
                toast = conn.execute(
                    "SELECT pg_relation_filepath(reltoastrelid) FROM pg_class WHERE oid = %s::regclass AND reltoastrelid <> 0",
                    (rel,),
                ).fetchone()
                if toast and toast[0]:
                    paths.append(toast[0])
        raw = b"".join(Path(data_dir, p).read_bytes() for p in paths)
        assert len(raw) > 0
        assert marker.encode() not in raw
        assert b"notebook-1" in raw  # ids are in clear, as documented: the scan sees the tables
    finally:
        store.drop_tables()
        store.close()


def test_opening_an_engine_on_an_encrypted_view_is_refused() -> None:
    store = ego.MemoryStore()
    with pytest.raises(ego.errors.ConfigurationError, match="plain store"):
        ego.Engine("x", store=store.encrypted(encryption()))


def test_bad_settings_are_configuration_errors() -> None:
    with pytest.raises(ego.errors.ConfigurationError, match="32 bytes"):
        ego.Encryption(master_key=b"short")
    with pytest.raises(ego.errors.ConfigurationError, match="master_key"):
        ego.Encryption()
    with pytest.raises(ego.errors.ConfigurationError, match="not a key store"):
        ego.Encryption(key_store=object())
    with pytest.raises(ego.errors.ConfigurationError, match="both current and previous"):
        ego.Encryption(master_key=MASTER, master_key_id="a", previous_master_keys={"a": MASTER})
    with ego.Engine("plain") as engine, pytest.raises(ego.errors.ConfigurationError, match="encryption"):
        engine.erase_entity("x")


def test_a_master_key_from_a_callable_is_read_when_the_engine_starts() -> None:
    calls: list[int] = []

    def kms() -> bytes:
        calls.append(1)
        return os.urandom(32)

    store = ego.MemoryStore()
    engine = engine_on(store, ego.Encryption(master_key=kms))
    assert calls == [1]
    engine.send_command("account-1", OpenAccount(initial_balance=1))
    engine.stop()
