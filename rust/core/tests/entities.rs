//! Entity semantics, with the plain-Rust host of `ego_core::testing`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ego_core::error::Error;
use ego_core::future::block_on;
use ego_core::host::{Fail, Kind};
use ego_core::options::{EngineConfig, EntityOptions};
use ego_core::store::memory::MemoryStore;
use ego_core::store::rocks::{RocksOptions, RocksStore};
use ego_core::store::{EventsStore, SnapshotCriteria, SnapshotStore, Stores};
use ego_core::testing::{ask, state_of, Account, Bank, BankRef, Cmd, Slot, TestHost, WriteHook};
use ego_core::Engine;

fn stores_of<S: EventsStore + SnapshotStore + ego_core::store::StateStore + Clone>(s: &S) -> Stores {
    Stores { events: Some(Arc::new(s.clone())), snapshots: Some(Arc::new(s.clone())), states: Some(Arc::new(s.clone())) }
}

fn engine_on(stores: Stores) -> Engine<TestHost> {
    Engine::start(TestHost, EngineConfig::default(), stores).unwrap()
}

fn bank(kind: Kind) -> BankRef {
    BankRef { bank: Arc::new(Bank::default()), kind }
}

fn spawn(engine: &Engine<TestHost>, id: &str, b: BankRef, options: EntityOptions) -> Result<(Account, u64), Fail<String>> {
    let slot = Arc::new(Slot::default());
    let kind = b.kind;
    match engine.spawn((), id, b, kind, options, slot.clone())? {
        ego_core::entity::Dispatched::Done(o) => o,
        ego_core::entity::Dispatched::Queued => slot.wait(Duration::from_secs(10)),
    }
}

fn balance(r: Result<(Account, u64), Fail<String>>) -> (i64, u64) {
    match r {
        Ok((a, rev)) => (a.balance, rev),
        Err(Fail::Handler(h)) => panic!("handler failed: {h}"),
        Err(Fail::Engine(e)) => panic!("engine failed: {e}"),
    }
}

#[test]
fn event_sourced_commands_events_and_rejection() {
    let engine = engine_on(stores_of(&MemoryStore::new()));
    spawn(&engine, "acc-1", bank(Kind::EventSourced), EntityOptions::default()).unwrap();
    assert_eq!(balance(ask(&engine, "acc-1", Cmd::Credit(100))), (100, 1));
    assert_eq!(balance(ask(&engine, "acc-1", Cmd::Debit(30))), (70, 2));
    // Rejected: state and revision unchanged.
    match ask(&engine, "acc-1", Cmd::Debit(1000)) {
        Err(Fail::Handler(msg)) => assert!(msg.contains("insufficient")),
        other => panic!("expected a rejection, got {:?}", other.map(|(a, r)| (a.balance, r))),
    }
    assert_eq!(balance(state_of(&engine, "acc-1")), (70, 2));
    // Zero events: current state, nothing written.
    assert_eq!(balance(ask(&engine, "acc-1", Cmd::Noop)), (70, 2));
    // A multi-event command is one atomic write.
    assert_eq!(balance(ask(&engine, "acc-1", Cmd::CreditMany(vec![1, 2, 3]))), (76, 5));
}

#[test]
fn unknown_entity_and_bad_ids_are_typed_errors() {
    let engine = engine_on(stores_of(&MemoryStore::new()));
    match ask(&engine, "nobody", Cmd::Credit(1)) {
        Err(Fail::Engine(Error::EntityNotFound(id))) => assert_eq!(&*id, "nobody"),
        _ => panic!("expected EntityNotFound"),
    }
    for bad in ["", "a\nb", &"x".repeat(300)] {
        assert!(matches!(ask(&engine, bad, Cmd::Credit(1)), Err(Fail::Engine(Error::InvalidEntityId { .. }))));
    }
}

#[test]
fn commands_of_one_entity_run_one_at_a_time_in_sender_order() {
    let store = MemoryStore::new();
    let engine = Arc::new(engine_on(stores_of(&store)));
    let b = bank(Kind::EventSourced);
    spawn(&engine, "hot", b.clone(), EntityOptions::default()).unwrap();
    let senders = 8;
    let per = 500;
    let threads: Vec<_> = (0..senders)
        .map(|s| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    balance(ask(&engine, "hot", Cmd::Tagged(s, i)));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(!b.bank.overlapped.load(Ordering::Acquire), "two commands of one entity overlapped");
    let total = (senders * per) as i64;
    assert_eq!(balance(state_of(&engine, "hot")), (total, total as u64));
    // Each sender's commands were handled in the order it sent them.
    let seen = b.bank.seen.lock().clone();
    assert_eq!(seen.len(), senders * per);
    for s in 0..senders {
        let order: Vec<usize> = seen.iter().filter(|(x, _)| *x == s).map(|(_, i)| *i).collect();
        assert_eq!(order, (0..per).collect::<Vec<_>>());
    }
    // The journal is gapless.
    let events = block_on(store.replay_events("hot", 1, u64::MAX, u64::MAX)).unwrap();
    assert_eq!(events.iter().map(|e| e.sequence_number).collect::<Vec<_>>(), (1..=total as u64).collect::<Vec<_>>());
}

#[test]
fn snapshots_on_crossing_each_boundary_including_multi_event_commands() {
    let store = MemoryStore::new();
    let engine = engine_on(stores_of(&store));
    let options = EntityOptions { snapshot_interval: 10, ..Default::default() };
    spawn(&engine, "snap", bank(Kind::EventSourced), options).unwrap();
    // Revisions: 3, 6, 9, 12 (crosses 10), 15, 18, 21 (crosses 20), 24, 27, 30 (on 30).
    for _ in 0..10 {
        ask(&engine, "snap", Cmd::CreditMany(vec![1, 1, 1])).unwrap();
    }
    let mut seqs = Vec::new();
    let mut criteria = SnapshotCriteria::default();
    while let Some(s) = block_on(store.latest_snapshot("snap", criteria)).unwrap() {
        seqs.push(s.sequence_number);
        criteria.max_sequence_number = s.sequence_number - 1;
    }
    seqs.reverse();
    assert_eq!(seqs, vec![12, 21, 30]);
}

#[test]
fn recovery_from_snapshot_plus_events_equals_recovery_from_events_alone() {
    let store = MemoryStore::new();
    {
        let engine = engine_on(stores_of(&store));
        spawn(&engine, "r", bank(Kind::EventSourced), EntityOptions { snapshot_interval: 7, ..Default::default() }).unwrap();
        for i in 1..=50 {
            ask(&engine, "r", if i % 5 == 0 { Cmd::Debit(3) } else { Cmd::Credit(i) }).unwrap();
        }
    }
    let with_snapshots = {
        let engine = engine_on(stores_of(&store));
        balance(spawn(&engine, "r", bank(Kind::EventSourced), EntityOptions::default()))
    };
    let events_only = {
        let engine = engine_on(Stores { events: Some(Arc::new(store.clone())), snapshots: None, states: None });
        balance(spawn(&engine, "r", bank(Kind::EventSourced), EntityOptions::default()))
    };
    assert_eq!(with_snapshots, events_only);
    assert_eq!(with_snapshots.1, 50);
    assert!(block_on(store.latest_snapshot("r", SnapshotCriteria::default())).unwrap().is_some());
}

#[test]
fn paged_replay_recovers_long_histories() {
    let store = MemoryStore::new();
    let config = EngineConfig { replay_page_size: 7, ..Default::default() };
    {
        let engine = Engine::start(TestHost, config.clone(), stores_of(&store)).unwrap();
        spawn(&engine, "long", bank(Kind::EventSourced), EntityOptions::default()).unwrap();
        for _ in 0..100 {
            ask(&engine, "long", Cmd::Credit(2)).unwrap();
        }
    }
    let engine = Engine::start(TestHost, config, stores_of(&store)).unwrap();
    assert_eq!(balance(spawn(&engine, "long", bank(Kind::EventSourced), EntityOptions::default())), (200, 100));
}

#[test]
fn passivation_and_transparent_reactivation() {
    let engine = engine_on(stores_of(&MemoryStore::new()));
    let options = EntityOptions { passivate_after: Some(Duration::from_millis(50)), ..Default::default() };
    spawn(&engine, "sleepy", bank(Kind::EventSourced), options).unwrap();
    ask(&engine, "sleepy", Cmd::Credit(5)).unwrap();
    assert!(engine.is_live("sleepy"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while engine.is_live("sleepy") {
        assert!(std::time::Instant::now() < deadline, "never passivated");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(balance(ask(&engine, "sleepy", Cmd::Credit(5))), (10, 2));
    assert!(engine.is_live("sleepy"));
}

#[test]
fn registered_types_activate_on_first_command_by_longest_prefix() {
    let engine = engine_on(stores_of(&MemoryStore::new()));
    let accounts = bank(Kind::EventSourced);
    let wallets = bank(Kind::DurableState);
    engine.register("acct-".into(), accounts.clone(), EntityOptions::default()).unwrap();
    engine.register("acct-wallet-".into(), wallets.clone(), EntityOptions::default()).unwrap();
    assert_eq!(balance(ask(&engine, "acct-1", Cmd::Credit(3))), (3, 1));
    assert_eq!(balance(ask(&engine, "acct-wallet-1", Cmd::Set(9))), (9, 1));
    assert_eq!(accounts.bank.commands.load(Ordering::Relaxed), 1);
    assert!(matches!(ask(&engine, "other-1", Cmd::Credit(1)), Err(Fail::Engine(Error::EntityNotFound(_)))));
}

#[test]
fn durable_state_versions_and_noop() {
    let store = MemoryStore::new();
    let engine = engine_on(stores_of(&store));
    spawn(&engine, "d", bank(Kind::DurableState), EntityOptions::default()).unwrap();
    assert_eq!(balance(ask(&engine, "d", Cmd::Set(10))), (10, 1));
    assert_eq!(balance(ask(&engine, "d", Cmd::Credit(5))), (15, 2));
    assert_eq!(balance(ask(&engine, "d", Cmd::Noop)), (15, 2));
    assert!(matches!(ask(&engine, "d", Cmd::Debit(100)), Err(Fail::Handler(_))));
    assert_eq!(balance(state_of(&engine, "d")), (15, 2));
    drop(engine);
    let engine = engine_on(stores_of(&store));
    assert_eq!(balance(spawn(&engine, "d", bank(Kind::DurableState), EntityOptions::default())), (15, 2));
}

#[test]
fn stale_durable_write_is_refused_and_the_entity_reloads() {
    let store = MemoryStore::new();
    let engine = engine_on(stores_of(&store));
    spawn(&engine, "d", bank(Kind::DurableState), EntityOptions::default()).unwrap();
    ask(&engine, "d", Cmd::Set(1)).unwrap();
    // Someone else writes version 2 behind the entity's back.
    let other = ego_core::envelope::DurableState {
        persistence_id: "d".into(),
        version_number: 2,
        resulting_state: Some(ego_core::envelope::Any::new("type.googleapis.com/test.Account", 77i64.to_le_bytes().to_vec())),
        ..Default::default()
    };
    block_on(ego_core::store::StateStore::write_state(&store, other, 1)).unwrap();
    match ask(&engine, "d", Cmd::Credit(1)) {
        Err(Fail::Engine(Error::Concurrency { expected: 1, actual: 2, .. })) => {}
        other => panic!("expected a concurrency error, got {:?}", other.map(|x| x.1)),
    }
    // Reloaded from the store: the other writer's state.
    assert_eq!(balance(ask(&engine, "d", Cmd::Credit(1))), (78, 3));
}

#[test]
fn a_shared_entity_catches_up_with_another_engine_before_each_command_and_query() {
    let store = MemoryStore::new();
    let (a, b) = (engine_on(stores_of(&store)), engine_on(stores_of(&store)));
    let shared = EntityOptions { shared: true, ..Default::default() };
    for kind in [Kind::EventSourced, Kind::DurableState] {
        let id = if kind == Kind::EventSourced { "es" } else { "ds" };
        spawn(&b, id, bank(kind), shared.clone()).unwrap();
        spawn(&a, id, bank(kind), shared.clone()).unwrap();
        assert_eq!(balance(ask(&b, id, Cmd::Credit(5))), (5, 1));
        assert_eq!(balance(ask(&a, id, Cmd::Credit(5))), (10, 2));
        // B never served revision 2: it reads it before the query and before the command.
        assert_eq!(balance(state_of(&b, id)), (10, 2));
        assert_eq!(balance(ask(&a, id, Cmd::Credit(1))), (11, 3));
        assert_eq!(balance(ask(&b, id, Cmd::Debit(8))), (3, 4));
        assert_eq!(balance(state_of(&a, id)), (3, 4));
    }
}

#[test]
fn a_default_entity_serves_what_it_has_until_its_write_is_refused_then_reloads() {
    let store = MemoryStore::new();
    let (a, b) = (engine_on(stores_of(&store)), engine_on(stores_of(&store)));
    spawn(&b, "es", bank(Kind::EventSourced), EntityOptions::default()).unwrap();
    assert_eq!(balance(ask(&b, "es", Cmd::Credit(5))), (5, 1));
    spawn(&a, "es", bank(Kind::EventSourced), EntityOptions::default()).unwrap();
    assert_eq!(balance(ask(&a, "es", Cmd::Credit(5))), (10, 2));
    assert_eq!(balance(state_of(&b, "es")), (5, 1));
    match ask(&b, "es", Cmd::Credit(1)) {
        Err(Fail::Engine(Error::Concurrency { expected: 1, actual: 2, .. })) => {}
        other => panic!("expected a concurrency error, got {:?}", other.map(|x| x.1)),
    }
    assert_eq!(balance(ask(&b, "es", Cmd::Debit(8))), (2, 3));
}

#[test]
fn a_handler_failing_half_way_reloads_the_state() {
    let engine = engine_on(stores_of(&MemoryStore::new()));
    spawn(&engine, "h", bank(Kind::EventSourced), EntityOptions::default()).unwrap();
    ask(&engine, "h", Cmd::Credit(10)).unwrap();
    assert!(matches!(ask(&engine, "h", Cmd::BreakHalfway), Err(Fail::Handler(_))));
    assert_eq!(balance(ask(&engine, "h", Cmd::Credit(1))), (11, 2));
}

#[test]
fn a_failed_write_fails_that_command_and_the_entity_keeps_serving() {
    // Fails writes on demand; otherwise completes them asynchronously, like a network store.
    let fail = Arc::new(AtomicBool::new(false));
    let fail_next = fail.clone();
    let flaky = WriteHook::new(move |inner, events| {
        if fail_next.swap(false, Ordering::AcqRel) {
            return Box::pin(async { Err(Error::Storage("disk on fire".into())) });
        }
        let inner = inner.clone();
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            inner.write_events(events).await
        })
    });
    let engine = engine_on(Stores { events: Some(Arc::new(flaky)), snapshots: None, states: None });
    spawn(&engine, "f", bank(Kind::EventSourced), EntityOptions::default()).unwrap();
    assert_eq!(balance(ask(&engine, "f", Cmd::Credit(10))), (10, 1));
    fail.store(true, Ordering::Release);
    assert!(matches!(ask(&engine, "f", Cmd::Credit(5)), Err(Fail::Engine(Error::Storage(_)))));
    // Memory was not left ahead of the store.
    assert_eq!(balance(state_of(&engine, "f")), (10, 1));
    assert_eq!(balance(ask(&engine, "f", Cmd::Credit(1))), (11, 2));
}

#[test]
fn rocksdb_survives_reopen_with_state_intact() {
    let dir = tempdir();
    {
        let store = RocksStore::open(&dir, RocksOptions::default()).unwrap();
        let engine = engine_on(stores_of(&store));
        spawn(&engine, "acc", bank(Kind::EventSourced), EntityOptions { snapshot_interval: 4, ..Default::default() }).unwrap();
        for _ in 0..10 {
            ask(&engine, "acc", Cmd::Credit(3)).unwrap();
        }
        spawn(&engine, "dur", bank(Kind::DurableState), EntityOptions::default()).unwrap();
        ask(&engine, "dur", Cmd::Set(42)).unwrap();
        drop(engine);
        store.shutdown().unwrap();
    }
    let store = RocksStore::open(&dir, RocksOptions::default()).unwrap();
    let engine = engine_on(stores_of(&store));
    assert_eq!(balance(spawn(&engine, "acc", bank(Kind::EventSourced), EntityOptions::default())), (30, 10));
    assert_eq!(balance(spawn(&engine, "dur", bank(Kind::DurableState), EntityOptions::default())), (42, 1));
    assert_eq!(balance(ask(&engine, "acc", Cmd::Credit(1))), (31, 11));
    drop(engine);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stopped_engine_refuses_commands() {
    let engine = engine_on(stores_of(&MemoryStore::new()));
    spawn(&engine, "x", bank(Kind::EventSourced), EntityOptions::default()).unwrap();
    engine.shutdown(Duration::from_secs(5)).unwrap();
    assert!(matches!(ask(&engine, "x", Cmd::Credit(1)), Err(Fail::Engine(Error::EngineClosed))));
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ego-core-test-{}-{}", std::process::id(), ego_core::clock::now_nanos()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_batched_command_flushed_by_the_window_gets_its_reply() {
    let engine = engine_on(stores_of(&MemoryStore::new()));
    let options = EntityOptions { batch_threshold: 16, batch_flush_window: Duration::from_millis(3), ..Default::default() };
    spawn(&engine, "b", bank(Kind::EventSourced), options).unwrap();
    for i in 1..=5 {
        assert_eq!(balance(ask(&engine, "b", Cmd::Credit(1))), (i, i as u64));
    }
}
