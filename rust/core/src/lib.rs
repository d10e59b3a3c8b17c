//! ego-core: the engine of ego without any Python.
//!
//! Entities (event-sourced and durable-state) process commands one at a time and persist what
//! they produce to a store before replying. The language that runs behaviours (Python, via the
//! `ego-py` crate; plain Rust in tests and benches) plugs in through [`host::Host`]; everything
//! else (mailboxes, the bridge thread, batching, snapshots, recovery, stores) lives here.
//!
//! Map of the crate:
//! - [`envelope`]: the persisted protobuf envelopes (`protos/ego/v1`).
//! - [`error`]: the one error type; the bindings map it to Python exceptions in one place.
//! - [`ids`]: entity id validation and the stable shard hash.
//! - [`store`]: store traits, the in-memory and RocksDB stores.
//! - [`host`], [`engine`], [`entity`], [`bridge`], [`recovery`]: the entity runtime.

pub mod bridge;
pub mod clock;
pub mod engine;
pub mod entity;
pub mod envelope;
pub mod error;
pub mod host;
pub mod ids;
pub mod options;
pub mod poll;
pub mod projection;
pub mod publish;
pub mod recovery;
pub mod registry;
pub mod stats;
pub mod store;
pub mod testing;
mod waiter;

pub use engine::Engine;
pub use error::{Error, Result};
