//! ego-core: the engine of ego without any Python.
//!
//! Entities (event-sourced and durable-state) process commands one at a time and persist what
//! they produce to a store before replying. The language that runs behaviours (Python, via the
//! `ego-py` crate; plain Rust in tests and benches) plugs in through [`host::Host`]; everything
//! else (mailboxes, the bridge threads, batching, snapshots, recovery, stores) lives here.
//!
//! Map of the crate, lowest layer first (a module uses only modules of lower layers; `make lint`
//! checks there is no cycle; docs/architecture.md has the whole picture):
//! - leaves: [`error`], [`clock`], [`ids`], [`envelope`], [`options`], [`stats`], [`future`],
//!   [`registry`], [`host`] (the seam to the behaviour language).
//! - [`store`]: the store contracts and the in-memory, RocksDB and PostgreSQL stores;
//!   [`event_stream`]: the in-process fan-out of what is persisted.
//! - [`crypto`]: encryption at rest (AES-256-GCM per entity key, wrapped by a master key) as a
//!   layer around the store contracts, and erasure by crypto-shredding.
//! - [`state_log`]: the durable-state change log read as a journal; [`projection`]: named,
//!   checkpointed readers of the journal (or of the change log).
//! - [`entity::cell`]: an entity's data; [`bridge`]: the thread that runs queued work;
//!   [`shared`]: what the engine's parts share; [`background`]: writes nobody waits for.
//! - [`recovery`]: rebuilding an entity's state; [`entity`]: the runtime (dispatch,
//!   processing, the write path, snapshots, retention, activation, passivation).
//! - [`engine`]: the public entry points.
//! - [`testing`]: a plain-Rust host for the core's own tests and benchmarks.

mod background;
mod bridge;
pub mod clock;
pub mod crypto;
pub mod engine;
pub mod entity;
pub mod envelope;
pub mod error;
pub mod event_stream;
pub mod future;
pub mod host;
pub mod ids;
pub mod options;
pub mod projection;
mod rate_limit;
mod recovery;
pub mod registry;
pub mod shared;
pub mod state_log;
pub mod stats;
pub mod store;
pub mod testing;
mod waiter;

pub use engine::Engine;
pub use error::{Error, Result};
