//! The error type of the core. Cheap to clone: one failed batch write fails every command of
//! that batch with the same error.

use std::sync::Arc;

/// Result with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine and its stores can fail with. The Python bindings map each variant to
/// one class of `ego.errors` (rust/py/src/errors.rs is the only place that does it).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum Error {
    /// The engine is not started, or stopping.
    #[error("the engine is not running")]
    EngineClosed,
    /// No live entity, no dormant one and no registered entity type for this id.
    #[error("no entity with id {0:?} (spawn it with engine.entity() or register an entity type)")]
    EntityNotFound(Arc<str>),
    /// The entity was stopped while the command waited.
    #[error("entity {0:?} was stopped before the command ran")]
    EntityStopped(Arc<str>),
    /// An entity id that is empty, too long or has control characters.
    #[error("invalid entity id {id:?}: {reason}")]
    InvalidEntityId { id: String, reason: &'static str },
    /// A message over the configured size limit.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { what: &'static str, size: usize, limit: usize },
    /// An argument the API cannot accept.
    #[error("{0}")]
    InvalidArgument(Arc<str>),
    /// A write lost an optimistic-concurrency race: the stored sequence number or version is not
    /// the one the writer expected.
    #[error("concurrency conflict on {persistence_id:?}: expected {expected}, found {actual}")]
    Concurrency { persistence_id: Arc<str>, expected: u64, actual: u64 },
    /// Bytes in a store that cannot be decoded, or a gap in a stream.
    #[error("corrupt data for entity {persistence_id:?} at sequence number {sequence_number}: {detail}")]
    Corrupt { persistence_id: Arc<str>, sequence_number: u64, detail: Arc<str> },
    /// A persisted event or state whose type the host cannot resolve (`sequence_number` is the
    /// event's, or the snapshot's or durable state's revision).
    #[error("entity {persistence_id:?}, sequence number {sequence_number}: unknown message type {type_url:?}")]
    UnknownEventType { persistence_id: Arc<str>, sequence_number: u64, type_url: Arc<str> },
    /// The store ran out of space.
    #[error("storage full: {0}")]
    StorageFull(Arc<str>),
    /// The store failed; the write was not applied.
    #[error("storage error: {0}")]
    Storage(Arc<str>),
    /// The write may or may not have been applied (connection lost after commit was sent).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(Arc<str>),
    /// The entity's mailbox is full; the command was not accepted.
    #[error("mailbox of entity {id:?} is full ({capacity} commands waiting)")]
    MailboxFull { id: Arc<str>, capacity: usize },
    /// The caller stopped waiting. `started` tells whether the command may have run.
    #[error("timed out after {seconds:.3}s waiting for entity {id:?} (outcome {})", if *.started { "unknown" } else { "not started" })]
    Timeout { id: Arc<str>, seconds: f64, started: bool },
    /// The store is not configured for this kind of entity.
    #[error("{0}")]
    Configuration(Arc<str>),
    /// A handler broke its contract (wrong return type, state type changed, ...).
    #[error("{0}")]
    Contract(Arc<str>),
    /// An entity could not recover its state; the entity is not started.
    #[error("entity {id:?} failed to recover: {detail}")]
    Recovery { id: Arc<str>, detail: Arc<str> },
    /// The entity was erased (its data key shredded): its records read as tombstones and its id
    /// takes no more commands.
    #[error("entity {0:?} was erased")]
    EntityErased(Arc<str>),
    /// The data key of an encrypted record is missing and no erasure is recorded (a lost key
    /// store, or the wrong one): ego fails closed and never reads it as erased.
    #[error("entity {persistence_id:?}, sequence number {sequence_number}: its data key {key_id:?} is missing and the entity was not erased (is this the right key store?)")]
    KeyNotFound { persistence_id: Arc<str>, sequence_number: u64, key_id: Arc<str> },
    /// A data key could not be unwrapped by the master key it names (the wrong master key, or
    /// one that was retired before its keys were re-wrapped).
    #[error("master key problem: {0}")]
    MasterKey(Arc<str>),
    /// An encrypted record failed authentication: tampered with, damaged, or moved to another
    /// entity, sequence number or kind of record.
    #[error("entity {persistence_id:?}, sequence number {sequence_number}: {detail}")]
    Decryption { persistence_id: Arc<str>, sequence_number: u64, detail: Arc<str> },
    /// A command sent under an idempotency key the entity saw with another command.
    #[error("entity {id:?}: the idempotency key {key:?} was used by another command")]
    IdempotencyKeyReused { id: Arc<str>, key: Arc<str> },
    /// The offset store refused a projection's read-model writes (wrong SQL, a parameter the
    /// column does not take, a write of a kind this store cannot do): nothing of the batch was
    /// committed. Not retried as a store outage: it is the handler's failure, under the
    /// projection's failure policy.
    #[error("the read-model writes were refused: {0}")]
    ReadModelRefused(Arc<str>),
    /// A projection's offsets were recorded against another journal (the journal moved to a
    /// new store, the offsets stayed): their positions mean nothing in this one.
    #[error(
        "the offsets of projection {projection:?} belong to another journal ({recorded}; this engine's journal is {current}): \
             add it with on_other_journal=\"start_over\" to start it over on this journal, or give it the offset store of this journal"
    )]
    JournalChanged { projection: Arc<str>, recorded: Arc<str>, current: Arc<str> },
    /// A store opened with a fence name was fenced off: another process opened the same fence
    /// since (it took epoch `current`, this store holds `epoch`). The write was not applied, and
    /// the store refuses every later write (reads still work).
    #[error(
        "fenced: another process opened the fence {fence:?} (epoch {current}; this store holds epoch {epoch}): \
         the write was not applied, and this store writes no more"
    )]
    Fenced { fence: Arc<str>, epoch: u64, current: u64 },
    /// A projection's runner no longer holds the projection's lease (it expired and another
    /// process took it, or it was released): its commit was refused (nothing of it applied),
    /// and the runner stands by.
    #[error("projection {projection:?} lost its lease (epoch {epoch}): another runner took it; the commit was not applied")]
    LeaseLost { projection: Arc<str>, epoch: u64 },
    /// An offset change by hand (`set_projection_offset`, `rebuild_projection`) was refused:
    /// another process's runner holds the projection's lease, and would overwrite the change
    /// with its own positions. Nothing was changed.
    #[error(
        "projection {projection:?} runs in another process (its runner holds the projection's lease): its offsets \
         can be changed there, or here once that runner stops and the lease comes to this process; nothing was changed"
    )]
    LeaseHeld { projection: Arc<str> },
    /// ego itself failed (a bug, or the interpreter refused something ego needs); never a
    /// user's handler error.
    #[error("internal error: {0}")]
    Internal(Arc<str>),
}

impl Error {
    /// A storage error from any displayable cause.
    pub fn storage(cause: impl std::fmt::Display) -> Self {
        Error::Storage(cause.to_string().into())
    }
    /// An invalid-argument error.
    pub fn invalid(msg: impl std::fmt::Display) -> Self {
        Error::InvalidArgument(msg.to_string().into())
    }
    /// An internal error.
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Error::Internal(msg.to_string().into())
    }
    /// A contract error.
    pub fn contract(msg: impl std::fmt::Display) -> Self {
        Error::Contract(msg.to_string().into())
    }
    /// Whether the failure left the stored data unchanged for sure.
    pub fn is_definite(&self) -> bool {
        !matches!(self, Error::OutcomeUnknown(_) | Error::Timeout { started: true, .. })
    }
}
