//! The seam between the core and the language that runs behaviours.
//!
//! The core never looks inside user messages. Commands, states and replies are opaque host
//! values; events cross as encoded bytes ([`Any`]). Everything that runs behaviour code takes a
//! context `Cx` (for Python: the GIL token), which the core only obtains through
//! [`Host::enter`] on its bridge threads, or receives from a caller that already holds it.

use crate::envelope::{Any, Event};
use crate::error::Error;

/// The two kinds of behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Commands produce events; state is the fold of the events.
    EventSourced,
    /// Commands produce the next state; only the latest state is stored.
    DurableState,
}

/// Why a command or a recovery failed: the behaviour's own error (handed back to the caller
/// unchanged) or an engine error.
#[derive(Debug)]
pub enum Fail<F> {
    /// Raised by user code.
    Handler(F),
    /// Raised by the engine or a store.
    Engine(Error),
}

impl<F> From<Error> for Fail<F> {
    fn from(e: Error) -> Self {
        Fail::Engine(e)
    }
}

/// How a command ended, for telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its events (or new state) were written.
    Accepted,
    /// The handler produced nothing to write.
    NoChange,
    /// The handler raised, or its output was refused (wrong type, too large).
    Rejected,
    /// The write failed.
    Failed,
}

impl Outcome {
    /// Every outcome, in the order of [`Outcome::index`].
    pub const ALL: [Outcome; 4] = [Outcome::Accepted, Outcome::NoChange, Outcome::Rejected, Outcome::Failed];

    /// The outcome's name as telemetry reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::NoChange => "no_change",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }

    /// A dense index (0..4), for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a host provides. See the module docs.
pub trait Host: Send + Sync + Sized + 'static {
    /// The context behaviour code runs in (the GIL token for Python).
    type Cx<'a>: Copy;
    /// One entity's behaviour.
    type Behavior: Send + Sync + 'static;
    /// Creates behaviours for entities that activate on their first command.
    type Factory: Send + Sync + 'static;
    /// The live state of an entity.
    type State: Send + 'static;
    /// A command (or nothing, for a state query).
    type Command: Send + 'static;
    /// The events a command handler returned, before they are checked and encoded.
    type Events<'a>;
    /// An error raised by user code.
    type Failure: Send + 'static;
    /// Where a queued command's outcome goes (a waiting thread, an asyncio future, ...).
    type Reply: Send + 'static;
    /// A successful outcome: the state and revision as handed to the caller.
    type Output: Send + 'static;
    /// A tracing span the host keeps (only used when [`Host::tracing`] is on).
    type Trace: Send + 'static;

    /// Runs `f` with a context. Called on a bridge thread once per run of jobs.
    fn enter<R>(&self, f: impl for<'a> FnOnce(Self::Cx<'a>) -> R) -> R;

    /// Called after each batch of work done in a context, to deliver replies in bulk.
    fn end_batch(&self, cx: Self::Cx<'_>);

    /// The behaviour for entity `id`, made by `factory`, and its kind.
    fn create(&self, cx: Self::Cx<'_>, factory: &Self::Factory, id: &str) -> Result<(Self::Behavior, Kind), Fail<Self::Failure>>;

    /// The state of an entity that has no stored history.
    fn initial_state(&self, cx: Self::Cx<'_>, behavior: &Self::Behavior) -> Result<Self::State, Fail<Self::Failure>>;

    /// Metadata the caller attached to `command`, stored with each of its events (None:
    /// none, the usual case).
    fn command_metadata<'c>(&self, command: &'c Self::Command) -> Option<&'c std::collections::HashMap<String, String>> {
        let _ = command;
        None
    }

    /// Runs an event-sourced command handler.
    fn handle_command<'a>(
        &self,
        cx: Self::Cx<'a>,
        behavior: &Self::Behavior,
        command: &Self::Command,
        state: &Self::State,
    ) -> Result<Self::Events<'a>, Fail<Self::Failure>>
    where
        Self: 'a;

    /// Checks and encodes the events of one command, appending one [`Any`] per event.
    /// `max_bytes` is the per-event size limit.
    fn encode_events(
        &self,
        cx: Self::Cx<'_>,
        events: &Self::Events<'_>,
        max_bytes: usize,
        out: &mut Vec<Any>,
    ) -> Result<(), Fail<Self::Failure>>;

    /// Applies freshly produced events to the state, in order.
    fn apply_events(
        &self,
        cx: Self::Cx<'_>,
        behavior: &Self::Behavior,
        events: Self::Events<'_>,
        state: Self::State,
    ) -> Result<Self::State, Fail<Self::Failure>>;

    /// Applies one stored event during recovery.
    fn apply_stored(
        &self,
        cx: Self::Cx<'_>,
        behavior: &Self::Behavior,
        event: &Event,
        state: Self::State,
    ) -> Result<Self::State, Fail<Self::Failure>>;

    /// Runs a durable-state command handler: `Some(new state)`, or `None` for no change.
    fn handle_durable(
        &self,
        cx: Self::Cx<'_>,
        behavior: &Self::Behavior,
        command: &Self::Command,
        state: &Self::State,
    ) -> Result<Option<Self::State>, Fail<Self::Failure>>;

    /// The state, or a copy of it when anybody but the entity still holds it (a caller kept an
    /// earlier reply, a reply of the batch is not delivered yet). Called right before a handler
    /// that may update the state in place, so a state handed out never changes afterwards.
    fn exclusive_state(&self, cx: Self::Cx<'_>, state: Self::State) -> Result<Self::State, Fail<Self::Failure>>;

    /// Encodes a state (for snapshots and durable state).
    fn encode_state(&self, cx: Self::Cx<'_>, state: &Self::State, max_bytes: usize) -> Result<Any, Fail<Self::Failure>>;

    /// Decodes the state stored for `persistence_id` at `revision` (errors name both).
    fn decode_state(
        &self,
        cx: Self::Cx<'_>,
        behavior: &Self::Behavior,
        persistence_id: &str,
        revision: u64,
        state: &Any,
    ) -> Result<Self::State, Fail<Self::Failure>>;

    /// The caller's view of a state at a revision.
    fn output(&self, cx: Self::Cx<'_>, state: &Self::State, revision: u64) -> Self::Output;

    /// Called right before a queued command runs: `false` when its caller gave up waiting (then
    /// the command is dropped without running).
    fn begin(&self, cx: Self::Cx<'_>, reply: &Self::Reply) -> bool;

    /// Delivers an outcome. Must not need the context: completions of writes deliver replies
    /// from whatever thread finished the write (a blocked caller's slot, an event loop's
    /// wake-up queue), so no thread hop is needed just to reply.
    fn reply(&self, reply: Self::Reply, outcome: Result<Self::Output, Fail<Self::Failure>>);

    /// A copy of a user error, to hand the same failure to several callers.
    fn clone_failure(&self, cx: Self::Cx<'_>, failure: &Self::Failure) -> Self::Failure;

    /// Wraps a user error raised while an entity recovered (so callers can tell it from an
    /// error of their own command).
    fn recovery_failure(&self, cx: Self::Cx<'_>, id: &str, failure: Self::Failure) -> Self::Failure;

    /// Reports something that went wrong off any caller's path (a failed snapshot write, ...).
    /// May be called without the context; the engine wakes its bridge afterwards so a host
    /// that queues records can write them at the end of the next batch.
    fn log_warning(&self, message: &str) {
        eprintln!("ego: {message}");
    }

    // -- telemetry (every hook is a no-op by default) -------------------------------------

    /// Whether commands and writes are traced. Read once, when the engine starts; when
    /// `false` the tracing hooks are never called.
    fn tracing(&self) -> bool {
        false
    }

    /// Starts the span of one command, current while its handler runs.
    fn trace_command(&self, _cx: Self::Cx<'_>, _id: &str, _behavior: &Self::Behavior, _command: &Self::Command) -> Option<Self::Trace> {
        None
    }

    /// Ends a command's span (the handler returned): the outcome so far and the revision the
    /// command led to. The span stays the parent of the write that persists the command.
    fn end_command_trace(&self, _cx: Self::Cx<'_>, _trace: &Self::Trace, _outcome: Outcome, _revision: u64) {}

    /// Starts the span of a write, as a child of the span of a command it persists.
    fn trace_write(&self, _cx: Self::Cx<'_>, _parent: &Self::Trace, _id: &str, _events: usize, _revision: u64) -> Option<Self::Trace> {
        None
    }

    /// Ends a write's span at `end_nanos` (Unix time; the write may have finished earlier on
    /// a thread without the context).
    fn end_write_trace(&self, _cx: Self::Cx<'_>, _trace: Self::Trace, _error: Option<&Error>, _end_nanos: i64) {}

    /// Counts `n` commands of `behavior` that ended with `outcome`. Called without the
    /// context, on any thread: keep it to an atomic increment.
    fn observe(&self, _behavior: &Self::Behavior, _outcome: Outcome, _n: u64) {}
}
