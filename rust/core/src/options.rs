//! Engine and entity settings.

use std::time::Duration;

/// Settings of one entity (the Go library's spawn options).
#[derive(Debug, Clone, PartialEq)]
pub struct EntityOptions {
    /// Take a snapshot whenever the revision crosses a multiple of this (0: never).
    pub snapshot_interval: u64,
    /// Stop the entity after this long without commands; the next command re-activates it.
    pub passivate_after: Option<Duration>,
    /// Events to accumulate before one write (0: every command is its own write).
    pub batch_threshold: usize,
    /// Longest wait for more commands before a partial batch is written.
    pub batch_flush_window: Duration,
    /// Most commands that may wait in the mailbox; more is a `MailboxFull` error.
    pub mailbox_capacity: usize,
    /// What to delete after each successful snapshot.
    pub retention: Option<RetentionPolicy>,
    /// Run a command on the caller's thread when the entity is idle (no thread hop). Off,
    /// every command runs on the bridge threads: a handler that blocks never blocks a caller
    /// (or its event loop).
    pub inline: bool,
    /// How many of its most recent idempotency keys an entity remembers.
    pub idempotency_window: usize,
    /// Several processes serve this entity's id on one database: before each command and
    /// each query the entity reads the journal head (or the stored state) and catches up
    /// with what others wrote. Off (the default), each entity id is served by one process.
    pub shared: bool,
}

/// What to delete after a successful snapshot (the Go library's `RetentionPolicy`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Delete the events the snapshot covers...
    pub delete_events_on_snapshot: bool,
    /// ...but keep this many of them before the snapshot point.
    pub events_retention_count: u64,
    /// Delete the snapshots older than the new one.
    pub delete_snapshots_on_snapshot: bool,
    /// Delete events even if a projection of this engine has not handled them yet.
    pub ignore_projections: bool,
}

impl Default for EntityOptions {
    fn default() -> Self {
        EntityOptions {
            snapshot_interval: 0,
            passivate_after: None,
            batch_threshold: 0,
            batch_flush_window: Duration::from_millis(5),
            mailbox_capacity: 10_000,
            retention: None,
            inline: true,
            idempotency_window: 1000,
            shared: false,
        }
    }
}

/// Settings of an engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Engine name (logs, metrics).
    pub name: String,
    /// Number of shards events are spread over (fixed for the life of the data).
    pub shards: u32,
    /// Largest encoded event or state, in bytes.
    pub max_message_bytes: usize,
    /// Events read per page during recovery.
    pub replay_page_size: u64,
    /// Tokio worker threads (store I/O, timers).
    pub worker_threads: usize,
    /// Commands the bridge runs per entity before moving on to the next one.
    pub fairness_budget: usize,
    /// Bridge threads: one runs queued work while it keeps up; another takes over the queue
    /// while every busy one is stuck in a slow job (a handler that sleeps or waits on I/O).
    pub bridge_threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            name: "ego".into(),
            shards: 8,
            max_message_bytes: 1 << 20,
            replay_page_size: 1024,
            worker_threads: 2,
            fairness_budget: 64,
            bridge_threads: 4,
        }
    }
}
