//! The entity runtime, one concern per module:
//!
//! - [`cell`]: an entity's data (phase, mailbox, working set).
//! - [`dispatch`]: handing a message to an entity (inline or queued) and driving its mailbox.
//! - [`process`]: running the behaviour for one command.
//! - [`idempotency`]: commands applied once under a key (the window of recent keys).
//! - [`write`]: the write path: batches, group writes, completions and replies.
//! - [`snapshot`]: snapshots when the revision crosses an interval.
//! - [`retention`]: what a snapshot lets go (old events and snapshots).
//! - [`activation`]: driving a recovery and parking its result.
//! - [`passivation`]: idle entities leaving memory.
//! - [`jobs`]: what the bridge runs for entities.
//!
//! Processing follows the Go library: a command's events are checked, applied to the state
//! and appended to the pending batch; the batch is written when it reaches the threshold
//! (threshold 0: after every command) or when the flush window expires; replies go out, in
//! order, only after the write is durable. Commands that arrive during a write wait in the
//! mailbox. A failed write fails exactly the commands of that batch and the entity reloads its
//! state from the store before it takes the next command.

pub(crate) mod activation;
pub mod cell;
pub(crate) mod dispatch;
pub mod idempotency;
pub(crate) mod jobs;
pub(crate) mod passivation;
pub(crate) mod process;
pub(crate) mod retention;
pub(crate) mod snapshot;
pub(crate) mod write;

pub use cell::{Dispatched, Entity, Phase};
pub use process::is_handling;
