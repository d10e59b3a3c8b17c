//! Recovery never reports a revision it has not folded: the journal's head is read first and
//! the replay goes up to it, whatever other writers and retention do meanwhile; events missing
//! below the head are covered by a newer snapshot, count as deleted (a prefix), or are a gap
//! (a typed corruption error).

use std::sync::Arc;

use bytes::Bytes;
use ego_core::envelope::{Any, Event, Snapshot};
use ego_core::error::Error;
use ego_core::future::{block_on, BoxFuture};
use ego_core::host::{Fail, Kind};
use ego_core::options::{EngineConfig, EntityOptions};
use ego_core::store::memory::MemoryStore;
use ego_core::store::{EventsStore, IdPage, ShardHead, SnapshotCriteria, SnapshotStore, Stores};
use ego_core::testing::{ask, state_of, Account, Bank, BankRef, Cmd, TestHost};
use ego_core::Engine;
use parking_lot::Mutex;

/// What the store does right before answering a read: the in-memory store behind it, and the
/// read's name (`highest`, `replay`).
type Before = dyn Fn(&MemoryStore, &str) + Send + Sync;

/// An in-memory store that runs a hook before each read (a competing writer, retention), and
/// may hide events from replays (a lost event).
#[derive(Clone)]
struct Meddling {
    inner: MemoryStore,
    before: Arc<Mutex<Option<Box<Before>>>>,
    hidden: Arc<Mutex<Vec<u64>>>,
}

impl Meddling {
    fn new() -> Self {
        Meddling { inner: MemoryStore::new(), before: Arc::new(Mutex::new(None)), hidden: Arc::new(Mutex::new(Vec::new())) }
    }
    fn on_read(&self, hook: impl Fn(&MemoryStore, &str) + Send + Sync + 'static) {
        *self.before.lock() = Some(Box::new(hook));
    }
    fn run(&self, read: &str) {
        if let Some(hook) = &*self.before.lock() {
            hook(&self.inner, read);
        }
    }
}

impl EventsStore for Meddling {
    fn write_events(&self, events: Vec<Event>) -> BoxFuture<'static, ego_core::Result<()>> {
        self.inner.write_events(events)
    }
    fn replay_events(&self, p: &str, f: u64, t: u64, m: u64) -> BoxFuture<'static, ego_core::Result<Vec<Event>>> {
        self.run("replay");
        let hidden = self.hidden.lock().clone();
        let events = block_on(self.inner.replay_events(p, f, t, m));
        ego_core::future::ready(events.map(|v| v.into_iter().filter(|e| !hidden.contains(&e.sequence_number)).collect()))
    }
    fn highest_sequence_number(&self, p: &str) -> BoxFuture<'static, ego_core::Result<u64>> {
        self.run("highest");
        self.inner.highest_sequence_number(p)
    }
    fn delete_events(&self, p: &str, t: u64) -> BoxFuture<'static, ego_core::Result<()>> {
        self.inner.delete_events(p, t)
    }
    fn persistence_ids(&self, n: usize, a: Option<String>) -> BoxFuture<'static, ego_core::Result<IdPage>> {
        self.inner.persistence_ids(n, a)
    }
    fn shard_events(&self, s: u32, a: u64, m: usize) -> BoxFuture<'static, ego_core::Result<Vec<Event>>> {
        self.inner.shard_events(s, a, m)
    }
    fn shard_heads(&self) -> BoxFuture<'static, ego_core::Result<Vec<ShardHead>>> {
        self.inner.shard_heads()
    }
}

fn credited(pid: &str, seq: u64, amount: i64) -> Event {
    Event {
        persistence_id: pid.into(),
        sequence_number: seq,
        event: Some(Any::new("type.googleapis.com/test.Credited", Bytes::from(amount.to_le_bytes().to_vec()))),
        ..Default::default()
    }
}

fn snapshot(pid: &str, seq: u64, balance: i64) -> Snapshot {
    Snapshot {
        persistence_id: pid.into(),
        sequence_number: seq,
        state: Some(Any::new("type.googleapis.com/test.Account", Bytes::from(balance.to_le_bytes().to_vec()))),
        ..Default::default()
    }
}

/// An engine on `store` for events and `snapshots` (if any) for snapshots.
fn engine(store: &Meddling, snapshots: Option<&MemoryStore>, page: u64) -> Engine<TestHost> {
    let stores = Stores {
        events: Some(Arc::new(store.clone())),
        snapshots: snapshots.map(|s| Arc::new(s.clone()) as Arc<dyn SnapshotStore>),
        states: None,
    };
    let config = EngineConfig { replay_page_size: page, ..Default::default() };
    let engine = Engine::start(TestHost, config, stores).unwrap();
    engine
        .register(String::new(), BankRef { bank: Arc::new(Bank::default()), kind: Kind::EventSourced }, EntityOptions::default())
        .unwrap();
    engine
}

fn ok(r: Result<(Account, u64), Fail<String>>) -> (i64, u64) {
    match r {
        Ok((a, rev)) => (a.balance, rev),
        Err(Fail::Handler(h)) => panic!("handler failed: {h}"),
        Err(Fail::Engine(e)) => panic!("engine failed: {e}"),
    }
}

fn write(store: &MemoryStore, events: Vec<Event>) {
    block_on(store.write_events(events)).unwrap();
}

#[test]
fn an_event_written_during_recovery_is_folded_or_left_for_later_never_counted_unapplied() {
    // The case: events 1-3 stored; another writer appends event 4 at each read of the
    // recovery in turn. Whatever revision the entity reports, its state holds exactly the
    // credits up to it; the next command folds the rest (after a refused write and a reload).
    for read in ["highest", "replay"] {
        let store = Meddling::new();
        write(&store.inner, (1..=3).map(|s| credited("race-1", s, 1)).collect());
        let fired = Arc::new(Mutex::new(false));
        let f = fired.clone();
        store.on_read(move |inner, name| {
            let mut fired = f.lock();
            if name == read && !*fired {
                *fired = true;
                write(inner, vec![credited("race-1", 4, 1)]);
            }
        });
        let engine = engine(&store, None, 1024);
        let (balance, revision) = ok(state_of(&engine, "race-1"));
        assert!(*fired.lock(), "the competing write happened during the {read} read");
        assert_eq!(balance, revision as i64, "{read}: revision {revision} with {balance} credits");
        // A command: written at 5 after the entity folded 4 (directly or through a reload).
        let after = match ask(&engine, "race-1", Cmd::Credit(1)) {
            Err(Fail::Engine(Error::Concurrency { .. })) => ok(ask(&engine, "race-1", Cmd::Credit(1))),
            other => ok(other),
        };
        assert_eq!(after, (5, 5), "{read}");
    }
}

#[test]
fn events_deleted_without_a_snapshot_count_as_deleted_and_numbers_never_repeat() {
    let store = Meddling::new();
    write(&store.inner, (1..=5).map(|s| credited("d", s, 10 * s as i64)).collect());
    block_on(store.inner.delete_events("d", 3)).unwrap();
    let engine = engine(&store, None, 2);
    // Events 1-3 are gone: their credits are not in the state; the revision still counts them.
    assert_eq!(ok(state_of(&engine, "d")), (40 + 50, 5));
    assert_eq!(ok(ask(&engine, "d", Cmd::Credit(1))), (91, 6));
    // Everything deleted: the initial state at the head.
    block_on(store.inner.delete_events("d", u64::MAX)).unwrap();
    let engine2 = self::engine(&store, None, 2);
    assert_eq!(ok(state_of(&engine2, "d")), (0, 6));
}

#[test]
fn a_snapshot_covers_deleted_events_and_events_deleted_beyond_it_count_as_deleted() {
    let store = Meddling::new();
    let snapshots = MemoryStore::new();
    write(&store.inner, (1..=10).map(|s| credited("s", s, 1)).collect());
    block_on(snapshots.write_snapshot(snapshot("s", 6, 6))).unwrap();
    block_on(store.inner.delete_events("s", 6)).unwrap();
    assert_eq!(ok(state_of(&engine(&store, Some(&snapshots), 3), "s")), (10, 10));
    // Deleting beyond the snapshot (what the engine's retention never does) loses 7 and 8.
    block_on(store.inner.delete_events("s", 8)).unwrap();
    assert_eq!(ok(state_of(&engine(&store, Some(&snapshots), 3), "s")), (8, 10));
}

#[test]
fn retention_during_recovery_restarts_the_replay_from_the_newer_snapshot() {
    // The recovery read no snapshot (or an old one); before its replay, a snapshot at 8 is
    // written and events up to 8 are deleted, as retention does.
    let store = Meddling::new();
    let snapshots = MemoryStore::new();
    write(&store.inner, (1..=12).map(|s| credited("ret", s, 1)).collect());
    let (snaps, fired) = (snapshots.clone(), Arc::new(Mutex::new(false)));
    let f = fired.clone();
    store.on_read(move |inner, name| {
        let mut fired = f.lock();
        if name == "replay" && !*fired {
            *fired = true;
            block_on(snaps.write_snapshot(snapshot("ret", 8, 8))).unwrap();
            block_on(inner.delete_events("ret", 8)).unwrap();
        }
    });
    let engine = engine(&store, Some(&snapshots), 1024);
    assert_eq!(ok(state_of(&engine, "ret")), (12, 12));
    assert!(*fired.lock());
}

#[test]
fn a_gap_after_a_folded_event_is_a_corruption_error_naming_the_missing_number() {
    for missing in [5, 10] {
        let store = Meddling::new();
        write(&store.inner, (1..=10).map(|s| credited("gap", s, 1)).collect());
        store.hidden.lock().push(missing);
        match state_of(&engine(&store, None, 3), "gap") {
            Err(Fail::Engine(Error::Corrupt { persistence_id, sequence_number, .. })) => {
                assert_eq!((&*persistence_id, sequence_number), ("gap", missing));
            }
            other => panic!("expected a corruption error, got {:?}", other.map(|(a, r)| (a.balance, r))),
        }
    }
}

#[test]
fn a_snapshot_above_the_head_is_not_used() {
    // A snapshot store ahead of the events store (e.g. another writer snapshotted after the
    // head was read): the recovery folds up to the head it read.
    let store = Meddling::new();
    let snapshots = MemoryStore::new();
    write(&store.inner, (1..=4).map(|s| credited("ahead", s, 1)).collect());
    block_on(snapshots.write_snapshot(snapshot("ahead", 9, 100))).unwrap();
    assert_eq!(ok(state_of(&engine(&store, Some(&snapshots), 1024), "ahead")), (4, 4));
    assert!(block_on(snapshots.latest_snapshot("ahead", SnapshotCriteria::up_to(4))).unwrap().is_none());
}
