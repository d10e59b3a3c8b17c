"""What a saga is made of: its behaviour, the actions it takes and what it reports."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

from google.protobuf.message import Message

__all__ = ["SagaAction", "SagaBehavior", "SagaCommand", "SagaInfo", "SagaStatus", "SagaStepError"]

S = TypeVar("S", bound=Message)

DEFAULT_STEP_TIMEOUT = 5.0


@dataclass(frozen=True)
class SagaCommand:
    """A command a saga sends to an entity.

    - ``entity_id``: the target entity (any entity the engine can route to).
    - ``command``: a protobuf message.
    - ``timeout``: seconds to wait for the reply (a timeout with the outcome unknown is
      retried under the same idempotency key; it never counts as a failure).
    - ``undo``: the command that undoes this one, sent to the same entity when the saga
      compensates and :meth:`SagaBehavior.compensate` returns ``None`` (steps undone in the
      reverse order they completed).

    Example::

        ego.SagaCommand("account-1", Debit(amount=10), undo=Credit(amount=10))
    """

    entity_id: str
    command: Message
    timeout: float = DEFAULT_STEP_TIMEOUT
    undo: Message | None = None


@dataclass(frozen=True)
class SagaAction:
    """What a saga does in answer to an event, a result or an error.

    - ``events``: the saga's own events, persisted and folded into its state with
      :meth:`SagaBehavior.apply_event` before anything else happens.
    - ``commands``: sent one after the other, in order; each reply goes to
      :meth:`SagaBehavior.handle_result` (or ``handle_error``) before the next is sent, and the
      commands of that answer go first (depth first, as in the Go library).
    - ``complete``: the saga is completed once the commands of this action were answered.
    - ``compensate``: the saga compensates once the commands of this action were answered
      (give no commands to compensate at once).

    Example::

        ego.SagaAction(events=[CreditRequested()], commands=[ego.SagaCommand("account-2", Credit(amount=10))])
    """

    commands: Sequence[SagaCommand] = field(default_factory=tuple)
    events: Sequence[Message] = field(default_factory=tuple)
    complete: bool = False
    compensate: bool = False


class SagaStatus(str, enum.Enum):
    """Where a saga is. ``completed``, ``compensated`` and ``failed`` are final."""

    RUNNING = "running"
    COMPLETED = "completed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """Whether the saga is over."""
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)


@dataclass(frozen=True)
class SagaInfo:
    """A saga's status as its journal says it is (``engine.saga_status``)."""

    id: str
    status: SagaStatus
    state: Message
    """The behaviour's state."""
    reason: str | None = None
    """Why it compensated or failed (the timeout, the error of a rejected command)."""
    revision: int = 0
    """The revision of the saga's own journal."""


class SagaStepError(Exception):
    """A step's error as the saga's journal recorded it (``handle_error`` gets this when the
    original exception object is gone, e.g. after a restart)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}" if error_type else message)
        self.error_type = error_type
        self.message = message


class SagaBehavior(ABC, Generic[S]):
    """A saga (process manager): reacts to events of the journal by sending commands to
    entities, and to their answers; compensates when asked to or when it times out.

    A saga is an event-sourced entity of its own: everything it decides (its events, the
    commands it plans, their answers, its status, its deadlines) is in its journal, so it
    resumes after a restart where it was. Its commands carry idempotency keys made from the
    saga id and the step, so sending one again after a crash never applies it twice.

    Example::

        class Transfer(ego.SagaBehavior[TransferState]):
            started_by = (TransferRequested,)

            def __init__(self, saga_id: str) -> None:
                self.saga_id = saga_id

            def id(self) -> str:
                return self.saga_id

            @classmethod
            def correlate(cls, event, persistence_id):
                return event.transfer_id if isinstance(event, TransferRequested) else None

            def initial_state(self) -> TransferState:
                return TransferState()

            def handle_event(self, event, state):
                return ego.SagaAction(
                    events=[event],
                    commands=[ego.SagaCommand(event.source, Debit(amount=event.amount), undo=Credit(amount=event.amount))],
                )

            def handle_result(self, entity_id, result_state, state):
                if entity_id == state.source:
                    return ego.SagaAction(commands=[ego.SagaCommand(state.target, Credit(amount=state.amount))])
                return ego.SagaAction(complete=True)

            def handle_error(self, entity_id, error, state):
                return ego.SagaAction(compensate=True)

            def apply_event(self, event, state):
                return TransferState(source=event.source, target=event.target, amount=event.amount)

    The engine makes a type's behaviours with ``cls(saga_id)`` (or the factory given to
    ``engine.register_saga_type``) when it resumes a saga after a restart or starts one from
    an event; ``initial_state`` of that instance is used only when the saga starts.
    """

    #: Event types that start a saga of this type (with the id :meth:`correlate` gives) when
    #: the journal has one: a process manager. Empty: sagas start with ``engine.saga``.
    started_by: ClassVar[tuple[type[Message], ...]] = ()

    @abstractmethod
    def id(self) -> str:
        """The saga id: 1 to 200 bytes of UTF-8 without control characters."""

    @abstractmethod
    def initial_state(self) -> S:
        """The state of the saga when it starts."""

    @classmethod
    def correlate(cls, event: Message, persistence_id: str) -> str | None:
        """The id of the saga of this type that ``event`` (written by entity
        ``persistence_id``) concerns, or ``None`` (the default: no saga of this type sees
        journal events). Sagas read the journal from its beginning, so an event written
        before its saga started is seen too."""
        return None

    def handle_event(self, event: Message, state: S) -> SagaAction | None:
        """What the saga does about an event of the journal that concerns it (``None``:
        nothing)."""
        return None

    def handle_result(self, entity_id: str, result_state: Message, state: S) -> SagaAction | None:
        """What the saga does when entity ``entity_id`` accepted its command and replied with
        ``result_state``."""
        return None

    def handle_error(self, entity_id: str, error: BaseException, state: S) -> SagaAction | None:
        """What the saga does when entity ``entity_id`` rejected its command with ``error``
        (default: compensate)."""
        return SagaAction(compensate=True)

    def apply_event(self, event: Message, state: S) -> S:
        """The state after one of the saga's own events. Pure: it runs again on recovery.
        The default keeps the state (for sagas without events of their own)."""
        return state

    def compensate(self, state: S) -> Sequence[SagaCommand] | None:
        """The commands that undo what the saga did, sent one after the other; a command the
        target rejects makes the saga ``failed``. ``None`` (the default): the ``undo``
        commands of the steps that completed, in reverse order."""
        return None
