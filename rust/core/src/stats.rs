//! Counters of what an engine did, kept with relaxed atomics (nothing on the hot path but an
//! increment). Telemetry exports them; tests read them.

use std::sync::atomic::{AtomicU64, Ordering};

/// The counters.
#[derive(Default, Debug)]
pub struct Stats {
    /// Commands handed to a behaviour.
    pub commands: AtomicU64,
    /// Commands that failed before any write (rejected by the handler, invalid output).
    pub rejected: AtomicU64,
    /// Events (or durable states) written.
    pub events: AtomicU64,
    /// Successful store writes (one per batch).
    pub writes: AtomicU64,
    /// Failed store writes.
    pub write_failures: AtomicU64,
    /// Snapshots written (counted once the store acknowledged them).
    pub snapshots: AtomicU64,
    /// Entities recovered (activations and reloads).
    pub recoveries: AtomicU64,
    /// Entities passivated.
    pub passivations: AtomicU64,
    /// Background writes (snapshots, retention deletes) that still failed after their retries
    /// (each is logged as a warning).
    pub background_failures: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as (name, value) pairs.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("commands", get(&self.commands)),
            ("rejected", get(&self.rejected)),
            ("events", get(&self.events)),
            ("writes", get(&self.writes)),
            ("write_failures", get(&self.write_failures)),
            ("snapshots", get(&self.snapshots)),
            ("recoveries", get(&self.recoveries)),
            ("passivations", get(&self.passivations)),
            ("background_failures", get(&self.background_failures)),
        ]
    }
}
