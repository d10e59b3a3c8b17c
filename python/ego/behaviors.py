"""Behaviours: what an entity does with its commands.

Two kinds, in the shape of the Go library:

- :class:`EventSourcedBehavior`: a command produces events, which are persisted; the state is
  the fold of the events (``handle_event``) and is rebuilt from them on recovery.
- :class:`DurableStateBehavior`: a command produces the next state, which is persisted (only
  the latest one is kept).

Commands, events and states are protobuf messages. The engine calls one entity's methods one
command at a time, never concurrently.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Generic, TypeVar

from google.protobuf.message import Message

__all__ = ["DurableStateBehavior", "EventSourcedBehavior"]

C = TypeVar("C", bound=Message)
E = TypeVar("E", bound=Message)
S = TypeVar("S", bound=Message)


class EventSourcedBehavior(ABC, Generic[C, E, S]):
    """An event-sourced entity.

    Example::

        class Account(ego.EventSourcedBehavior[Command, Event, AccountState]):
            def __init__(self, account_id: str) -> None:
                self.account_id = account_id

            def id(self) -> str:
                return self.account_id

            def initial_state(self) -> AccountState:
                return AccountState(account_id=self.account_id)

            def handle_command(self, command, state):
                if command.amount <= 0:
                    raise ValueError("amount must be positive")   # rejects the command
                return [Credited(amount=command.amount)]

            def handle_event(self, event, state):
                return AccountState(account_id=state.account_id, balance=state.balance + event.amount)

    Methods are looked up on the class once, so define them on the class (not per instance).
    """

    @abstractmethod
    def id(self) -> str:
        """The entity id (persistence id): 1 to 255 bytes of UTF-8 without control characters."""

    @abstractmethod
    def initial_state(self) -> S:
        """The state of an entity with no history."""

    @abstractmethod
    def handle_command(self, command: C, state: S) -> Sequence[E]:
        """Validates ``command`` against ``state`` and returns the events it produces, in
        order (a list or tuple; ``[]`` for none). Raise any exception to reject the command:
        the caller gets that exception, nothing is persisted and the state is unchanged.
        Must not modify ``state``."""

    @abstractmethod
    def handle_event(self, event: E, state: S) -> S:
        """Returns the state after ``event``. Must be deterministic: it runs again on every
        recovery. It may return a new message or modify ``state`` in place and return it."""


class DurableStateBehavior(ABC, Generic[C, S]):
    """A durable-state entity: each command produces the next state, stored with a version
    that increases by one per change.

    Example::

        class Counter(ego.DurableStateBehavior[Increment, CounterState]):
            def __init__(self, counter_id: str) -> None:
                self.counter_id = counter_id

            def id(self) -> str:
                return self.counter_id

            def initial_state(self) -> CounterState:
                return CounterState()

            def handle_command(self, command, state):
                return CounterState(value=state.value + command.by)
    """

    @abstractmethod
    def id(self) -> str:
        """The entity id (persistence id): 1 to 255 bytes of UTF-8 without control characters."""

    @abstractmethod
    def initial_state(self) -> S:
        """The state of an entity that was never written."""

    @abstractmethod
    def handle_command(self, command: C, state: S) -> S | None:
        """Returns the next state (a message of the same type), or ``None`` to change nothing
        (no write, version unchanged). Raise any exception to reject the command."""
