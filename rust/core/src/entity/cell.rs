//! The data of one entity: its phase, its mailbox and its working set (state, revision, the
//! batch being built and the write in flight). No logic beyond small accessors: the modules
//! next to this one (dispatch, process, write, snapshot, activation) act on it.
//!
//! An entity is owned by at most one driver at a time (phase `Busy`): either a caller that
//! holds the context and found the entity idle (the inline fast path: no thread hop), or the
//! bridge thread. Everybody else only appends to the mailbox. The mutex guards the phase, the
//! mailbox and the parked [`Work`]; it is never held while behaviour code runs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::clock::monotonic_millis;
use crate::entity::idempotency::{IdempotencyKey, KeyWindow};
use crate::envelope::{DurableState, Event};
use crate::error::Error;
use crate::event_stream::Published;
use crate::host::{Fail, Host, Kind};
use crate::options::EntityOptions;

/// Where an entity is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Known but not in memory: the next message recovers it.
    Dormant,
    /// Reading its state from the stores.
    Recovering,
    /// In memory, nothing to do.
    Idle,
    /// Queued on the bridge.
    Scheduled,
    /// A driver is running its behaviour.
    Busy,
    /// A write is in flight.
    Writing,
    /// Passivated or stopped and out of the registry: look it up again.
    Removed,
}

/// A message in a mailbox.
pub(crate) enum Msg<H: Host> {
    /// A command, with its idempotency key when it has one (boxed: rare, and every message of
    /// every mailbox carries the field), and whether more commands of the same bulk call for
    /// this entity follow it (then its events wait for theirs: one write for all of them).
    Command(H::Command, H::Reply, Option<Box<IdempotencyKey>>, bool),
    /// Read the confirmed state.
    Query(H::Reply),
    /// Stop the entity after the messages before this one. `erased`: it is being erased (the
    /// messages after this one get `EntityErased` rather than `EntityStopped`).
    Stop { reply: H::Reply, erased: bool },
}

impl<H: Host> Msg<H> {
    pub(crate) fn into_reply(self) -> H::Reply {
        match self {
            Msg::Command(_, r, _, _) | Msg::Query(r) | Msg::Stop { reply: r, .. } => r,
        }
    }
}

/// What happened to a message handed to an entity.
pub enum Dispatched<H: Host> {
    /// Processed inline; here is the outcome.
    Done(Result<H::Output, Fail<H::Failure>>),
    /// Queued; the outcome goes to the reply.
    Queued,
}

/// A command whose events wait in the batch, and its precomputed reply.
pub(crate) struct Pending<H: Host> {
    pub(crate) reply: H::Reply,
    pub(crate) output: H::Output,
    /// The inline caller's own command: its outcome is returned, not replied.
    pub(crate) own: bool,
}

/// Processed but not yet written.
pub(crate) struct Batch<H: Host> {
    pub(crate) events: Vec<Event>,
    /// Boxed: it is rarely used and every entity carries a batch.
    pub(crate) durable: Option<Box<DurableState>>,
    pub(crate) replies: Vec<Pending<H>>,
    pub(crate) opened: Option<Instant>,
    /// The span of the first traced command of the batch: the parent of the write's span.
    pub(crate) trace: Option<H::Trace>,
}

impl<H: Host> Default for Batch<H> {
    fn default() -> Self {
        Batch { events: Vec::new(), durable: None, replies: Vec::new(), opened: None, trace: None }
    }
}

impl<H: Host> Batch<H> {
    pub(crate) fn is_empty(&self) -> bool {
        self.replies.is_empty() && self.events.is_empty() && self.durable.is_none()
    }
}

/// The entity's working set, parked in the cell while nobody drives it.
pub(crate) struct Work<H: Host> {
    pub(crate) state: Option<H::State>,
    /// Highest durable revision.
    pub(crate) revision: u64,
    /// Revision including the batch.
    pub(crate) pending: u64,
    pub(crate) batch: Batch<H>,
    pub(crate) inflight: Option<Vec<Pending<H>>>,
    pub(crate) inflight_revision: u64,
    /// The span of the in-flight write (tracing only).
    pub(crate) inflight_trace: Option<H::Trace>,
    /// Copies of the in-flight write for subscribers (only while somebody listens).
    pub(crate) published: Vec<Published>,
    /// The state may be ahead of the store (a handler failed half-way, a write failed).
    pub(crate) broken: bool,
    /// The most recent idempotency keys (only for entities that were sent keyed commands).
    pub(crate) keys: Option<Box<KeyWindow>>,
    /// Shared entities: how many more mailbox messages may be served on the last read of the
    /// journal head (those that were queued when the read started); 0: read it again first.
    pub(crate) credit: usize,
    /// The last command said more of its bulk call follow: the batch waits for them (with
    /// batching off, it would be written now).
    pub(crate) held: bool,
}

impl<H: Host> Work<H> {
    pub(crate) fn new(state: H::State, revision: u64) -> Self {
        Work {
            state: Some(state),
            revision,
            pending: revision,
            batch: Batch::default(),
            inflight: None,
            inflight_revision: 0,
            inflight_trace: None,
            published: Vec::new(),
            broken: false,
            keys: None,
            credit: 0,
            held: false,
        }
    }

    /// Nothing batched or in flight.
    pub(crate) fn is_settled(&self) -> bool {
        self.batch.is_empty() && self.inflight.is_none()
    }
}

/// What the entity's mutex guards.
pub(crate) struct Cell<H: Host> {
    pub(crate) phase: Phase,
    pub(crate) mailbox: VecDeque<Msg<H>>,
    pub(crate) work: Option<Work<H>>,
    pub(crate) last_used: u64,
    pub(crate) timer_armed: bool,
}

/// A live or dormant entity.
pub struct Entity<H: Host> {
    pub(crate) id: Arc<str>,
    pub(crate) shard: u32,
    pub(crate) kind: Kind,
    pub(crate) behavior: H::Behavior,
    pub(crate) options: Arc<EntityOptions>,
    /// Made by a registered factory: passivation forgets it entirely.
    pub(crate) from_factory: bool,
    pub(crate) cell: Mutex<Cell<H>>,
}

impl<H: Host> Entity<H> {
    pub(crate) fn new(
        id: Arc<str>,
        shard: u32,
        kind: Kind,
        behavior: H::Behavior,
        options: Arc<EntityOptions>,
        from_factory: bool,
    ) -> Self {
        Entity {
            id,
            shard,
            kind,
            behavior,
            options,
            from_factory,
            cell: Mutex::new(Cell {
                phase: Phase::Dormant,
                mailbox: VecDeque::new(),
                work: None,
                last_used: monotonic_millis(),
                timer_armed: false,
            }),
        }
    }

    /// The entity id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.cell.lock().phase
    }

    /// Nothing queued, running, batched or in flight.
    pub(crate) fn is_quiet(&self) -> bool {
        let cell = self.cell.lock();
        match cell.phase {
            Phase::Idle => cell.mailbox.is_empty() && cell.work.as_ref().is_none_or(|w| w.batch.is_empty()),
            Phase::Dormant | Phase::Removed => cell.mailbox.is_empty(),
            _ => false,
        }
    }
}

/// Why a message was not taken.
pub(crate) enum DispatchError<H: Host> {
    Removed(Msg<H>),
    Full(Msg<H>, Error),
}
