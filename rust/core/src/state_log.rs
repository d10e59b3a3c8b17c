//! The durable-state change log as a journal: projections (and publishers) read state changes
//! through the same per-shard machinery as events (offsets, failure policy, dead letters,
//! rebuild, lag). A change record travels as an [`Event`] whose sequence number is the
//! state's version and whose payload is the state ([`change_to_event`]); the bindings turn it
//! back into a [`DurableState`] ([`event_to_change`]) for the handler.

use std::sync::Arc;

use crate::envelope::{DurableState, Event};
use crate::error::{Error, Result};
use crate::future::{poll_once, ready, BoxFuture};
use crate::store::{EventsStore, IdPage, ShardHead, StateStore};

/// What a projection reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// The event journal.
    #[default]
    Events,
    /// The durable-state change log (every version written).
    States,
}

/// A change record as the projection runtime carries it.
pub fn change_to_event(change: DurableState) -> Event {
    Event {
        persistence_id: change.persistence_id,
        sequence_number: change.version_number,
        event: change.resulting_state,
        timestamp: change.timestamp,
        shard: change.shard,
        encryption_key_id: change.encryption_key_id,
        is_encrypted: change.is_encrypted,
        position: change.position,
        is_erased: change.is_erased,
        ..Default::default()
    }
}

/// The change record a projection carried as an event (the inverse of [`change_to_event`]).
pub fn event_to_change(event: Event) -> DurableState {
    DurableState {
        persistence_id: event.persistence_id,
        version_number: event.sequence_number,
        resulting_state: event.event,
        timestamp: event.timestamp,
        shard: event.shard,
        encryption_key_id: event.encryption_key_id,
        is_encrypted: event.is_encrypted,
        position: event.position,
        is_erased: event.is_erased,
        ..Default::default()
    }
}

/// The change log of a state store, read-only, as the journal a projection reads.
pub struct StateChanges {
    states: Arc<dyn StateStore>,
}

impl StateChanges {
    /// The change log of `states`.
    pub fn new(states: Arc<dyn StateStore>) -> Self {
        StateChanges { states }
    }
}

fn read_only() -> Error {
    Error::Configuration("the durable-state change log is read through projections only".into())
}

impl EventsStore for StateChanges {
    fn write_events(&self, _events: Vec<Event>) -> BoxFuture<'static, Result<()>> {
        ready(Err(read_only()))
    }

    fn replay_events(&self, _pid: &str, _from: u64, _to: u64, _max: u64) -> BoxFuture<'static, Result<Vec<Event>>> {
        ready(Err(read_only()))
    }

    fn highest_sequence_number(&self, _pid: &str) -> BoxFuture<'static, Result<u64>> {
        ready(Err(read_only()))
    }

    fn delete_events(&self, _pid: &str, _to: u64) -> BoxFuture<'static, Result<()>> {
        ready(Err(read_only()))
    }

    fn persistence_ids(&self, _page_size: usize, _after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        ready(Err(read_only()))
    }

    fn shard_events(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<Event>>> {
        let convert = |r: Result<Vec<DurableState>>| r.map(|changes| changes.into_iter().map(change_to_event).collect());
        // Embedded stores answer at once: convert inline, without a task.
        match poll_once(self.states.shard_state_changes(shard, after, max)) {
            Ok(r) => ready(convert(r)),
            Err(read) => Box::pin(async move { convert(read.await) }),
        }
    }

    fn shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>> {
        self.states.state_shard_heads()
    }
}
