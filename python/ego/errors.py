"""The exceptions ego raises.

Every error of the engine and its stores is an :class:`EgoError`. An exception raised by your
own behaviour code (``handle_command`` rejecting a command, say) is *not* wrapped: it reaches
the caller of ``send_command`` with its own type and message.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailableError",
    "CommandTimeoutError",
    "ConcurrencyError",
    "ConfigurationError",
    "CorruptDataError",
    "DecryptionError",
    "EgoError",
    "EncryptionError",
    "EngineClosedError",
    "EntityErasedError",
    "EntityNotFoundError",
    "EntityStoppedError",
    "FencedError",
    "HandlerContractError",
    "IdempotencyKeyReusedError",
    "InternalError",
    "InvalidEntityIdError",
    "InvalidMessageError",
    "JournalMismatchError",
    "KeyNotFoundError",
    "MailboxFullError",
    "MasterKeyError",
    "MessageTooLargeError",
    "MigrationError",
    "OutcomeUnknownError",
    "ProjectionFailedError",
    "ProjectionLeaseHeldError",
    "ProjectionTimeoutError",
    "PublishError",
    "PublishRefusedError",
    "PublisherClosedError",
    "ReadModelWriteError",
    "RecoveryError",
    "SagaNotFoundError",
    "StorageFullError",
    "StoreError",
    "SubscriptionOverflowError",
    "UnknownEventTypeError",
    "ValidationError",
]


class EgoError(Exception):
    """Base class of every error raised by ego itself."""


class EngineClosedError(EgoError):
    """The engine is not started, or it is stopping or stopped; or the command still waited
    in a mailbox when ``stop(timeout)`` reached its deadline. The command never started:
    nothing was written."""


class EntityNotFoundError(EgoError, LookupError):
    """No entity with this id: none was spawned and no registered entity type matches it."""


class SagaNotFoundError(EntityNotFoundError):
    """No saga with this id was started (``engine.saga_status``)."""


class EntityStoppedError(EgoError):
    """The entity was stopped before the command ran."""


class ValidationError(EgoError, ValueError):
    """An argument ego cannot accept."""


class InvalidEntityIdError(ValidationError):
    """An entity id that is empty, longer than 255 bytes or contains control characters."""


class InvalidMessageError(ValidationError, TypeError):
    """A command, event or state that is not a protobuf message."""


class MessageTooLargeError(ValidationError):
    """An event or state whose encoding is over the configured size limit."""


class IdempotencyKeyReusedError(ValidationError):
    """A command was sent under an idempotency key that the entity saw with another command.
    Nothing was applied. ``entity_id`` and ``idempotency_key`` name them."""

    entity_id: str
    idempotency_key: str


class ConfigurationError(EgoError):
    """The engine is not configured for this (a store is missing, an option is invalid)."""


class HandlerContractError(EgoError, TypeError):
    """A behaviour method returned something it must not (a non-list of events, a state of
    another type, ...)."""


class RecoveryError(EgoError):
    """An entity could not rebuild its state from the stores. ``__cause__`` holds the
    exception raised by the behaviour, if any."""

    entity_id: str | None = None


class UnknownEventTypeError(RecoveryError):
    """A stored event or state whose protobuf type is not known to this process (import the
    module that defines it, or add an event adapter)."""

    persistence_id: str | None = None
    sequence_number: int | None = None
    type_url: str | None = None


class StoreError(EgoError):
    """A store failed, or refused the write. Unless it is an :class:`OutcomeUnknownError`,
    nothing of the command was written, so retrying cannot apply it twice.

    A RocksDB store whose write-ahead log sync failed refuses every later write with this
    error until it is closed and reopened (the message says so)."""


class ConcurrencyError(StoreError):
    """A write lost an optimistic-concurrency race: the stored sequence number or version was
    not the expected one. Nothing was written."""

    persistence_id: str | None = None
    expected: int | None = None
    actual: int | None = None


class CorruptDataError(StoreError):
    """Stored bytes that cannot be decoded, a gap in an entity's events, or a damaged store
    file (``persistence_id`` names the entity, or the store, as ``<RocksDB store PATH>``, when
    the damage is found on opening). Raised by reads: nothing was written."""

    persistence_id: str | None = None
    sequence_number: int | None = None


class StorageFullError(StoreError):
    """The store ran out of space. Nothing was written. A RocksDB store resumes writing by
    itself once enough space is free (it checks every few seconds)."""


class FencedError(StoreError):
    """The store was opened with ``fence=NAME`` and another process opened the same fence since
    (a newer incarnation of this shard or service took over): the write was not applied, and
    this store refuses every later write (reads still work). The process holding the old
    store should stop serving; its callers retry against the new holder.

    ``fence`` is the name, ``epoch`` this store's epoch, ``current_epoch`` the newer one
    (0 when the fence's row was removed)."""

    fence: str | None = None
    epoch: int | None = None
    current_epoch: int | None = None


class OutcomeUnknownError(StoreError):
    """The write may or may not have been applied: bytes may have reached the store before
    the failure. Causes: the connection to PostgreSQL was lost after the commit was sent; a
    sync of the RocksDB write-ahead log failed (the store then refuses writes until it is
    closed and reopened); the store's writer stopped after taking the write; ego lost track of
    the command (an internal error).

    Read the entity's state (after reopening the store, if the message says so) before
    retrying a command that is not idempotent::

        try:
            engine.send_command("account-1", Credit(amount=50))
        except ego.errors.OutcomeUnknownError:
            state, revision = engine.get_state("account-1")  # is the credit in it?
    """


class MailboxFullError(EgoError):
    """The entity already has the configured maximum of commands waiting. The command was not
    accepted."""


class CommandTimeoutError(EgoError, TimeoutError):
    """The caller stopped waiting. ``started`` tells whether the command may have run (its
    outcome is then unknown) or was dropped before it started."""

    entity_id: str | None = None
    started: bool = False


class EntityErasedError(EgoError):
    """The entity was erased (``engine.erase_entity``): its data key is destroyed, its records
    read as tombstones, and its id takes no more commands. ``entity_id`` names it."""

    entity_id: str


class EncryptionError(EgoError):
    """Base class of the failures of encryption at rest."""


class KeyNotFoundError(EncryptionError):
    """The data key of an encrypted record is missing and no erasure is recorded: the key
    store was lost or is not the right one. ego fails closed (it never reads this as an
    erasure). ``entity_id``, ``sequence_number`` and ``key_id`` name the record and its key."""

    entity_id: str
    sequence_number: int
    key_id: str


class MasterKeyError(EncryptionError):
    """A data key could not be unwrapped: the master key is wrong, or the one that wrapped it
    was retired before ``engine.rewrap_data_keys()`` re-wrapped it."""


class DecryptionError(EncryptionError, CorruptDataError):
    """An encrypted record failed authentication: it was tampered with, damaged, or moved to
    another entity, sequence number or kind of record. ``entity_id`` and ``sequence_number``
    name it. Nothing of it is returned."""

    entity_id: str


class InternalError(EgoError):
    """ego itself failed (a bug, or the interpreter refused something ego needs), not your
    code. Please report it with the message."""


class SubscriptionOverflowError(EgoError):
    """A subscriber of the event stream fell behind by more than its capacity and was closed
    (it received everything queued before this)."""


class PublishError(EgoError):
    """A publisher could not hand records to its broker."""


class BrokerUnavailableError(PublishError):
    """The broker did not acknowledge in time, or cannot be reached. Transient: the publisher
    retries the records with backoff, as long as it takes (the lag grows meanwhile); the
    failure policy is not consulted. Raise it from a publisher written in Python to ask for a
    retry (``ConnectionError`` and ``TimeoutError`` are taken the same way).

    Example::

        def publish(self, records):
            try:
                self.client.send_all(records)
            except MyClientDisconnected as e:
                raise ego.errors.BrokerUnavailableError(str(e)) from e
    """


class PublisherClosedError(BrokerUnavailableError):
    """The publisher was closed (the engine is stopping): the records are not acknowledged and
    are published again by the next run."""


class PublishRefusedError(PublishError):
    """The broker refused a record for good (too large, not authorised, no such topic). The
    publisher's failure policy decides: stop, or hand the record to the dead-letter handler and
    go on."""


class MigrationError(EgoError):
    """A migration or import cannot go on: the target holds different data than the source
    for an id (it is not the target of this migration), a store cannot list what must be
    copied, or the source's data is not what the importer expects. ``verify`` reports
    differences instead of raising."""


class ProjectionFailedError(EgoError):
    """A projection waited for (``engine.wait_for_projection``) stopped: a failure its policy
    did not absorb (the message has the error; ``engine.projection_status`` too), or it was
    stopped."""


class ProjectionLeaseHeldError(EgoError):
    """``set_projection_offset`` or ``rebuild_projection`` was refused: the projection's offsets
    are shared by processes (PostgreSQL) and another process's runner holds its lease (it
    would overwrite the change with its own positions). Nothing was changed. Make the change
    in the process that runs the projection, or once it stopped (the lease then comes here).

    ``projection`` is the projection's name."""

    projection: str | None = None


class ProjectionTimeoutError(EgoError, TimeoutError):
    """A projection waited for (``engine.wait_for_projection``) was still behind at the
    deadline. It keeps running."""


class ReadModelWriteError(StoreError):
    """The offset store refused a transactional projection's read-model writes: wrong SQL (a
    missing table, a syntax error), a parameter the column does not take, a broken constraint,
    or a write this store cannot do (a ``Put`` to a PostgreSQL offset store, ``Sql`` to a
    RocksDB one). Nothing of the batch was committed. It is the handler's failure: the
    projection's failure policy decides (retry, stop, or skip to the dead-letter handler, which
    gets this error), and ``projection_status`` shows it once the projection stopped."""


class JournalMismatchError(ConfigurationError):
    """A projection's offsets belong to another journal than the engine's: the journal moved
    to a new store (or was recreated) while the offset store stayed. Their positions mean
    nothing in this journal, so the projection is not started. Add it with
    ``on_other_journal="start_over"`` to start it over on this journal (reset its read model
    first), or give it the offset store that belongs to this journal. ``projection``,
    ``recorded_journal`` and ``journal`` name them."""

    projection: str
    recorded_journal: str
    journal: str
