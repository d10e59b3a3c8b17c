//! Latency of one synced RocksDB write, measured inside the writer thread and end to end.
//!
//!     cargo run --release -p ego-core --example write_latency -- DIR
use std::time::Instant;

use ego_core::envelope::{Any, Event};
use ego_core::future::block_on;
use ego_core::store::rocks::{RocksOptions, RocksStore};
use ego_core::store::EventsStore;

fn main() {
    let dir = std::env::args().nth(1).expect("a directory");
    for sync in [true, false] {
        let _ = std::fs::remove_dir_all(&dir);
        let store = RocksStore::open(&dir, RocksOptions { sync, ..Default::default() }).unwrap();
        let n = if sync { 3000 } else { 20000 };
        let start = Instant::now();
        for i in 1..=n {
            let e = Event {
                persistence_id: "p".into(),
                sequence_number: i,
                event: Some(Any::new("type.googleapis.com/x.Y", vec![1u8; 16])),
                ..Default::default()
            };
            block_on(store.write_events(vec![e])).unwrap();
        }
        let per = start.elapsed().as_secs_f64() / n as f64;
        println!("sync={sync}: {:.0} writes/s, {:.1} us per write (end to end)", 1.0 / per, per * 1e6);
        store.shutdown().unwrap();
    }
}
