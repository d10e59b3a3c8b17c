//! Criterion benches of the core, without Python (the plain-Rust host of `ego_core::testing`).
//!
//!     cargo bench -p ego-core --bench core
//!
//! - `append`: one event per write, in-memory and RocksDB (synced and not).
//! - `group_commit`: synced RocksDB writes from many threads at once (one sync per group).
//! - `replay`: recovering an entity with 10,000 events.
//! - `batch_threshold`: 64 concurrent senders to one entity on a store with a fixed write
//!   latency, for several thresholds (the tuning table of docs/performance.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ego_core::envelope::{Any, Event};
use ego_core::future::block_on;
use ego_core::host::Kind;
use ego_core::options::{EngineConfig, EntityOptions};
use ego_core::store::memory::MemoryStore;
use ego_core::store::rocks::{RocksOptions, RocksStore};
use ego_core::store::{EventsStore, SnapshotStore, StateStore, Stores};
use ego_core::testing::{ask, Bank, BankRef, Cmd, Slot, TestHost, WriteHook};
use ego_core::Engine;

static DIRS: AtomicU64 = AtomicU64::new(0);

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ego-bench-{}-{}", std::process::id(), DIRS.fetch_add(1, Ordering::Relaxed)));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn event(pid: &str, seq: u64) -> Event {
    Event {
        persistence_id: pid.into(),
        sequence_number: seq,
        event: Some(Any::new("type.googleapis.com/bench.Credited", vec![7u8; 16])),
        timestamp: 1,
        ..Default::default()
    }
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(1));
    let memory = MemoryStore::new();
    let mut seq = 0;
    group.bench_function("memory", |b| {
        b.iter(|| {
            seq += 1;
            block_on(memory.write_events(vec![event("m", seq)])).unwrap()
        })
    });
    for sync in [false, true] {
        let dir = tempdir();
        let store = RocksStore::open(&dir, RocksOptions { sync, ..Default::default() }).unwrap();
        let mut seq = 0;
        group.bench_function(if sync { "rocksdb_synced" } else { "rocksdb_unsynced" }, |b| {
            b.iter(|| {
                seq += 1;
                block_on(store.write_events(vec![event("r", seq)])).unwrap()
            })
        });
        store.shutdown().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
    group.finish();
}

fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_commit");
    group.sample_size(10);
    for writers in [1usize, 8, 64] {
        let per = 50u64;
        group.throughput(Throughput::Elements(writers as u64 * per));
        let dir = tempdir();
        let store = RocksStore::open(&dir, RocksOptions::default()).unwrap();
        let round = AtomicU64::new(0);
        group.bench_with_input(BenchmarkId::new("synced_writers", writers), &writers, |b, &writers| {
            b.iter(|| {
                let r = round.fetch_add(1, Ordering::Relaxed);
                std::thread::scope(|s| {
                    for w in 0..writers {
                        let store = &store;
                        s.spawn(move || {
                            let pid = format!("w{w}-r{r}");
                            for seq in 1..=per {
                                block_on(store.write_events(vec![event(&pid, seq)])).unwrap();
                            }
                        });
                    }
                });
            })
        });
        store.shutdown().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
    group.finish();
}

fn stores<S: EventsStore + SnapshotStore + StateStore + Clone>(s: &S) -> Stores {
    Stores { events: Some(Arc::new(s.clone())), snapshots: Some(Arc::new(s.clone())), states: Some(Arc::new(s.clone())) }
}

fn replay(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    group.sample_size(20);
    group.throughput(Throughput::Elements(10_000));
    let dir = tempdir();
    let rocks = RocksStore::open(&dir, RocksOptions { sync: false, ..Default::default() }).unwrap();
    let memory = MemoryStore::new();
    for (name, st) in [("memory", stores(&memory)), ("rocksdb", stores(&rocks))] {
        let engine = Engine::start(TestHost, EngineConfig::default(), st).unwrap();
        let bank = BankRef { bank: Arc::new(Bank::default()), kind: Kind::EventSourced };
        engine.register(String::new(), bank, EntityOptions::default()).unwrap();
        for _ in 0..100 {
            ask(&engine, "long", Cmd::CreditMany(vec![1; 100])).unwrap();
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                let slot = Arc::new(Slot::default());
                if let Ok(ego_core::engine::Stopped::Dispatched(ego_core::entity::Dispatched::Queued)) =
                    engine.stop_entity((), "long", slot.clone())
                {
                    let _ = slot.wait(Duration::from_secs(10));
                }
                let (state, revision) = ask(&engine, "long", Cmd::Noop).unwrap();
                assert_eq!((state.balance, revision), (10_000, 10_000));
            })
        });
    }
    group.finish();
    rocks.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

fn batch_threshold(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_threshold");
    group.sample_size(10);
    let senders = 64usize;
    let per = 5usize;
    group.throughput(Throughput::Elements((senders * per) as u64));
    for latency_us in [100u64, 1000, 5000] {
        for threshold in [0usize, 5, 10, 25, 50] {
            let latency = Duration::from_micros(latency_us);
            let store = WriteHook::new(move |inner, events| {
                let inner = inner.clone();
                Box::pin(async move {
                    // tokio's timers have a 1 ms resolution: sleep on a blocking thread instead.
                    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(latency)).await;
                    inner.write_events(events).await
                })
            });
            let st = Stores { events: Some(Arc::new(store)), snapshots: None, states: None };
            let engine = Engine::start(TestHost, EngineConfig::default(), st).unwrap();
            let bank = BankRef { bank: Arc::new(Bank::default()), kind: Kind::EventSourced };
            let options = EntityOptions { batch_threshold: threshold, batch_flush_window: Duration::from_millis(5), ..Default::default() };
            engine.register(String::new(), bank, options).unwrap();
            group.bench_with_input(BenchmarkId::new(format!("write_{latency_us}us"), threshold), &threshold, |b, _| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        std::thread::scope(|s| {
                            for _ in 0..senders {
                                s.spawn(|| {
                                    for _ in 0..per {
                                        ask(&engine, "hot", Cmd::Credit(1)).unwrap();
                                    }
                                });
                            }
                        });
                    }
                    start.elapsed()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, append, group_commit, replay, batch_threshold);
criterion_main!(benches);
