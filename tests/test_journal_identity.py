"""A store records its journal's identity and shard count: an engine with another shard count
is refused once the journal has events, and a projection never resumes from offsets that
belong to another journal."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ego
from ego import errors

from bank_pb2 import Credit, OpenAccount
from domain import AccountBehavior


@pytest.fixture(params=["memory", "rocksdb", "postgres"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Opens the same journal again on each call (close the previous store first)."""
    if request.param == "memory":
        shared = ego.MemoryStore()
        yield lambda: shared
        return
    if request.param == "rocksdb":
        yield lambda: ego.RocksDBStore(tmp_path / "journal")
        return
    url = request.getfixturevalue("pg_url")
    prefix = f"j{uuid.uuid4().hex[:8]}_"
    yield lambda: ego.PostgresStore(url, table_prefix=prefix)
    cleanup = ego.PostgresStore(url, table_prefix=prefix)
    cleanup.drop_tables()
    cleanup.close()


def close(store: Any) -> None:
    if not isinstance(store, ego.MemoryStore):
        store.close()


def test_an_engine_with_another_shard_count_is_refused_once_the_journal_has_events(journal: Callable[[], Any]) -> None:
    # An empty journal takes whatever shard count comes first, and a new one after it.
    store = journal()
    with ego.Engine("first", store=store, shards=4):
        pass
    with ego.Engine("second", store=store, shards=8) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.send_command("account-1", OpenAccount(initial_balance=1))
    close(store)
    # Once it holds events written with 8 shards, 16 would put an entity's later events in
    # another shard than its earlier ones.
    store = journal()
    engine = ego.Engine("third", store=store, shards=16)
    with pytest.raises(errors.ConfigurationError, match="written with 8 shards"):
        engine.start()
    assert not engine.running
    with ego.Engine("fourth", store=store, shards=8) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        assert engine.send_command("account-1", Credit(amount=1))[1] == 2
    close(store)


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def __call__(self, events: list[ego.PersistedEvent]) -> None:
        with self.lock:
            self.events.extend((e.persistence_id, e.sequence_number) for e in events)


def test_a_projection_does_not_resume_from_another_journals_offsets(tmp_path: Path) -> None:
    offsets = ego.RocksDBStore(tmp_path / "read-model")
    try:
        # Given a projection that handled three events of the old journal
        with ego.RocksDBStore(tmp_path / "old") as old, ego.Engine("old", events_store=old, state_store=old) as engine:
            engine.register_entity_type(AccountBehavior, prefix="account-")
            engine.send_command("account-1", OpenAccount(initial_balance=1))
            engine.send_command("account-1", Credit(amount=1))
            engine.send_command("account-2", OpenAccount(initial_balance=1))
            engine.add_projection("totals", Seen(), offset_store=offsets)
            engine.wait_for_projection("totals", timeout=10)
        # When the journal moves to a new store and the offsets stay
        with ego.RocksDBStore(tmp_path / "new") as new, ego.Engine("new", events_store=new, state_store=new) as engine:
            engine.register_entity_type(AccountBehavior, prefix="account-")
            engine.send_command("account-9", OpenAccount(initial_balance=1))
            # Then resuming from them is refused, with a typed error
            with pytest.raises(errors.JournalMismatchError) as refused:
                engine.add_projection("totals", Seen(), offset_store=offsets)
            assert refused.value.projection == "totals"
            assert refused.value.recorded_journal != refused.value.journal
            assert isinstance(refused.value, errors.ConfigurationError)
            # unless told to start over: then it sees the new journal from its beginning
            seen = Seen()
            engine.add_projection("totals", seen, offset_store=offsets, on_other_journal="start_over")
            engine.wait_for_projection("totals", timeout=10)
            assert seen.events == [("account-9", 1)]
        # and from then on its offsets belong to the new journal.
        with ego.RocksDBStore(tmp_path / "new") as new, ego.Engine("again", events_store=new, state_store=new) as engine:
            engine.register_entity_type(AccountBehavior, prefix="account-")
            engine.send_command("account-9", Credit(amount=1))
            seen = Seen()
            engine.add_projection("totals", seen, offset_store=offsets)
            engine.wait_for_projection("totals", timeout=10)
            assert seen.events == [("account-9", 2)]
    finally:
        offsets.close()


def test_the_same_journal_reopened_keeps_its_identity(journal: Callable[[], Any]) -> None:
    store = journal()
    seen = Seen()
    with ego.Engine("one", store=store) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.send_command("account-1", OpenAccount(initial_balance=1))
        engine.add_projection("p", seen)
        engine.wait_for_projection("p", timeout=10)
    close(store)
    store = journal()
    with ego.Engine("two", store=store) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.send_command("account-1", Credit(amount=1))
        engine.add_projection("p", seen)  # same journal: resumes, no error
        engine.wait_for_projection("p", timeout=10)
    close(store)
    assert seen.events == [("account-1", 1), ("account-1", 2)]
