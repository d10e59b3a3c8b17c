"""Snapshots: taken on crossing each multiple of the interval (multi-event commands never skip
one); recovery = latest snapshot + the events after it."""

from __future__ import annotations

from test_event_sourced import Multi

import ego

from bank_pb2 import Account, Credit


def snapshot_seqs(store: ego.stores.NativeStore, pid: str) -> list[int]:
    seqs = []
    criteria = ego.SnapshotCriteria()
    while (s := store.latest_snapshot(pid, criteria)) is not None:
        seqs.append(s.sequence_number)
        criteria = ego.SnapshotCriteria(max_sequence_number=s.sequence_number - 1)
    return sorted(seqs)


def test_snapshots_on_each_boundary_crossed(store_kind: str, make_store) -> None:
    store = make_store()
    with ego.Engine(store=store) as engine:
        engine.entity(Multi("m"), snapshot_interval=10)
        # Revisions after each command: 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31.
        for amount in [3] * 10 + [1]:
            engine.send_command("m", Credit(amount=amount))
    assert snapshot_seqs(store, "m") == [12, 21, 30]
    latest = store.latest_snapshot("m")
    assert Account.FromString(latest.state.value).balance == 30
    assert latest.state.type_url == "type.googleapis.com/bank.v1.Account"


def test_single_event_commands_snapshot_on_multiples(engine: ego.Engine) -> None:
    engine.entity(Multi("m"), snapshot_interval=4)
    for _ in range(9):
        engine.send_command("m", Credit(amount=1))
    (store,) = engine.stores
    assert snapshot_seqs(store, "m") == [4, 8]


def test_recovery_from_snapshot_plus_events_equals_recovery_from_events(store_kind: str, make_store) -> None:
    store = make_store()
    with ego.Engine(store=store) as engine:
        engine.entity(Multi("m"), snapshot_interval=5)
        for amount in (1, 2, 3, 4, 5, 6, 7):
            engine.send_command("m", Credit(amount=amount))
    assert snapshot_seqs(store, "m")  # there are snapshots to recover from
    with ego.Engine(store=store) as engine:
        with_snapshot = engine.entity(Multi("m"))
    with ego.Engine(events_store=store) as engine:  # no snapshot store: events only
        events_only = engine.entity(Multi("m"))
    assert with_snapshot == events_only == (Account(account_id="m", balance=28), 28)


def test_long_history_recovers_in_pages(store_kind: str, make_store) -> None:
    store = make_store()
    with ego.Engine(store=store, replay_page_size=16) as engine:
        engine.entity(Multi("m"))
        for _ in range(50):
            engine.send_command("m", Credit(amount=7))
    if store_kind == "rocksdb":
        store.close()
        store = make_store()
    with ego.Engine(store=store, replay_page_size=16) as engine:
        assert engine.entity(Multi("m")) == (Account(account_id="m", balance=350), 350)
