"""The exceptions ego raises.

Every error of the engine and its stores is an :class:`EgoError`. An exception raised by your
own behaviour code (``handle_command`` rejecting a command, say) is *not* wrapped: it reaches
the caller of ``send_command`` with its own type and message.
"""

from __future__ import annotations

__all__ = [
    "CommandTimeoutError",
    "ConcurrencyError",
    "ConfigurationError",
    "CorruptDataError",
    "EgoError",
    "EngineClosedError",
    "EntityNotFoundError",
    "EntityStoppedError",
    "HandlerContractError",
    "InternalError",
    "InvalidEntityIdError",
    "InvalidMessageError",
    "MailboxFullError",
    "MessageTooLargeError",
    "OutcomeUnknownError",
    "RecoveryError",
    "StorageFullError",
    "StoreError",
    "SubscriptionOverflowError",
    "UnknownEventTypeError",
    "ValidationError",
]


class EgoError(Exception):
    """Base class of every error raised by ego itself."""


class EngineClosedError(EgoError):
    """The engine is not started, or it is stopping or stopped."""


class EntityNotFoundError(EgoError, LookupError):
    """No entity with this id: none was spawned and no registered entity type matches it."""


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
    """A store failed. Unless it is an :class:`OutcomeUnknownError`, nothing was written."""


class ConcurrencyError(StoreError):
    """A write lost an optimistic-concurrency race: the stored sequence number or version was
    not the expected one. Nothing was written."""

    persistence_id: str | None = None
    expected: int | None = None
    actual: int | None = None


class CorruptDataError(StoreError):
    """Stored bytes that cannot be decoded, or a gap in an entity's events."""

    persistence_id: str | None = None
    sequence_number: int | None = None


class StorageFullError(StoreError):
    """The store ran out of space. Nothing was written."""


class OutcomeUnknownError(StoreError):
    """The write may or may not have been applied (the connection was lost after the commit
    was sent). Read the entity's state before retrying."""


class MailboxFullError(EgoError):
    """The entity already has the configured maximum of commands waiting. The command was not
    accepted."""


class CommandTimeoutError(EgoError, TimeoutError):
    """The caller stopped waiting. ``started`` tells whether the command may have run (its
    outcome is then unknown) or was dropped before it started."""

    entity_id: str | None = None
    started: bool = False


class InternalError(EgoError):
    """ego itself failed (a bug, or the interpreter refused something ego needs), not your
    code. Please report it with the message."""


class SubscriptionOverflowError(EgoError):
    """A subscriber of the event stream fell behind by more than its capacity and was closed
    (it received everything queued before this)."""
