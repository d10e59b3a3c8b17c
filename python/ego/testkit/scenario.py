"""Given/When/Then scenarios for behaviours, run directly (no engine, no store), with the
engine's own contract checks.

    from ego.testkit import EventSourcedScenario

    def test_a_debit_over_the_balance_is_rejected():
        (EventSourcedScenario(AccountBehavior("acc-1"))
            .given(AccountOpened(account_id="acc-1", balance=10))
            .when(Debit(amount=11))
            .then_rejected(InsufficientFunds, match="balance 10"))

    def test_a_credit():
        (EventSourcedScenario(AccountBehavior("acc-1"))
            .given(AccountOpened(account_id="acc-1", balance=10))
            .when(Credit(amount=5))
            .then_events(AccountCredited(amount=5))
            .then_state(Account(account_id="acc-1", balance=15, open=True))
            .then_revision(2))

A scenario can go on: each `when` starts from the state the previous one left.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message

from ego.behaviors import DurableStateBehavior, EventSourcedBehavior
from ego.errors import HandlerContractError, InvalidMessageError

__all__ = ["DurableStateScenario", "EventSourcedScenario", "ScenarioError", "assert_deterministic", "describe_message"]


class ScenarioError(AssertionError):
    """A scenario's expectation did not hold."""


def describe_message(m: Any) -> str:
    """One line per message: its type and its fields in text format."""
    if not isinstance(m, Message):
        return repr(m)
    body = text_format.MessageToString(m, as_one_line=True)
    return f"{m.DESCRIPTOR.full_name} {{ {body} }}" if body else f"{m.DESCRIPTOR.full_name} {{}}"


def _listing(messages: Sequence[Any]) -> str:
    if not messages:
        return "    (none)"
    return "\n".join(f"    [{i}] {describe_message(m)}" for i, m in enumerate(messages))


def _check_message(what: str, value: Any) -> None:
    if not isinstance(value, Message):
        raise HandlerContractError(f"{what} must be a protobuf message, got {type(value).__name__}")


def _copy(state: Message) -> Message:
    copy = type(state)()
    copy.CopyFrom(state)
    return copy


class _Scenario:
    def __init__(self) -> None:
        self._error: BaseException | None = None
        self._ran = False

    def _require_run(self) -> None:
        if not self._ran:
            raise ScenarioError("call when(command) before then_*()")

    @property
    def rejection(self) -> BaseException | None:
        """The exception that rejected the last command (None when it was accepted), to check
        its attributes after :meth:`then_rejected`::

            error = scenario.when(Debit(amount=50)).then_rejected(InsufficientFunds).rejection
            assert error.args == ("balance 10 < 50",)
        """
        self._require_run()
        return self._error

    def then_rejected(
        self,
        error: type[BaseException] = Exception,
        match: str | None = None,
        check: Callable[[Any], object] | None = None,
    ) -> Any:
        """The last command was rejected with `error` (a subclass counts); `match` is a regex
        searched in its message; `check(exception)` runs your own assertions on it (or take it
        from :attr:`rejection`). State and revision are unchanged."""
        self._require_run()
        if self._error is None:
            raise ScenarioError(f"expected the command to be rejected with {error.__name__}, but it was accepted")
        if not isinstance(self._error, error):
            raise ScenarioError(
                f"expected a rejection with {error.__name__}, got {type(self._error).__name__}: {self._error}"
            ) from self._error
        if match is not None and not re.search(match, str(self._error)):
            raise ScenarioError(f"the rejection {type(self._error).__name__}: {self._error!s} does not match {match!r}")
        if check is not None:
            check(self._error)
        return self

    def _accepted(self) -> None:
        self._require_run()
        if self._error is not None:
            raise ScenarioError(
                f"expected the command to be accepted, it was rejected with {type(self._error).__name__}: {self._error}"
            ) from self._error


class EventSourcedScenario(_Scenario):
    """A Given/When/Then scenario for an :class:`~ego.EventSourcedBehavior`."""

    def __init__(self, behavior: EventSourcedBehavior[Any, Any, Any]) -> None:
        super().__init__()
        self.behavior = behavior
        self.state: Message = behavior.initial_state()
        _check_message("initial_state", self.state)
        self.revision = 0
        self.events: list[Message] = []

    def given(self, *events: Message) -> EventSourcedScenario:
        """Events that happened before (applied with handle_event)."""
        for e in events:
            _check_message("a given event", e)
            self.state = self._apply(e, self.state)
            self.revision += 1
        return self

    def given_state(self, state: Message, revision: int = 0) -> EventSourcedScenario:
        """Starts from this state (as if recovered from a snapshot at `revision`)."""
        _check_message("a given state", state)
        self.state, self.revision = _copy(state), revision
        return self

    def _apply(self, event: Message, state: Message) -> Message:
        new = self.behavior.handle_event(event, state)
        if type(new) is not type(state):
            raise HandlerContractError(f"handle_event must return the state (a {type(state).__name__}), got {type(new).__name__}")
        return new

    def when(self, command: Message) -> EventSourcedScenario:
        """Handles `command` the way the engine does: on a rejection nothing changes."""
        if not isinstance(command, Message):
            raise InvalidMessageError(f"a command must be a protobuf message, got {type(command).__name__}")
        self._ran, self._error, self.events = True, None, []
        before = _copy(self.state)
        try:
            events = self.behavior.handle_command(command, self.state)
            if not isinstance(events, (list, tuple)):
                raise HandlerContractError(
                    f"handle_command must return a list of events (return [] for none), got {type(events).__name__}"
                )
            for e in events:
                _check_message("an event", e)
        except HandlerContractError:
            raise
        except Exception as e:
            self._error = e
            if self.state != before:
                raise ScenarioError(
                    "handle_command changed the state while rejecting the command: it must not modify state"
                ) from e
            return self
        if self.state != before:
            raise ScenarioError("handle_command modified the state: it must only return events")
        state = self.state
        for event in events:
            state = self._apply(event, state)
        self.state, self.revision, self.events = state, self.revision + len(events), list(events)
        return self

    def then_events(self, *expected: Message) -> EventSourcedScenario:
        """The last command produced exactly these events, in order."""
        self._accepted()
        if list(expected) != self.events:
            raise ScenarioError(f"events differ\n  expected:\n{_listing(expected)}\n  actual:\n{_listing(self.events)}")
        return self

    def then_no_events(self) -> EventSourcedScenario:
        """The last command was accepted and produced no event."""
        return self.then_events()

    def then_state(self, expected: Message) -> EventSourcedScenario:
        """The state is now `expected`."""
        self._require_run()
        _check_state(expected, self.state)
        return self

    def then_revision(self, expected: int) -> EventSourcedScenario:
        """The revision (sequence number of the last event) is now `expected`."""
        self._require_run()
        if expected != self.revision:
            raise ScenarioError(f"revision differs: expected {expected}, actual {self.revision}")
        return self


def _check_state(expected: Message, actual: Message) -> None:
    if expected != actual:
        raise ScenarioError(f"state differs\n  expected: {describe_message(expected)}\n  actual:   {describe_message(actual)}")


class DurableStateScenario(_Scenario):
    """A Given/When/Then scenario for a :class:`~ego.DurableStateBehavior`."""

    def __init__(self, behavior: DurableStateBehavior[Any, Any]) -> None:
        super().__init__()
        self.behavior = behavior
        self.state: Message = behavior.initial_state()
        _check_message("initial_state", self.state)
        self.version = 0

    def given(self, state: Message, version: int = 1) -> DurableStateScenario:
        """Starts from this stored state and version."""
        _check_message("a given state", state)
        self.state, self.version = _copy(state), version
        return self

    def when(self, command: Message) -> DurableStateScenario:
        """Handles `command` the way the engine does: None changes nothing; a rejection
        changes nothing."""
        if not isinstance(command, Message):
            raise InvalidMessageError(f"a command must be a protobuf message, got {type(command).__name__}")
        self._ran, self._error = True, None
        try:
            new = self.behavior.handle_command(command, _copy(self.state))
        except Exception as e:
            self._error = e
            return self
        if new is None:
            return self
        if type(new) is not type(self.state):
            raise HandlerContractError(
                f"handle_command must return the state (a {type(self.state).__name__}), got {type(new).__name__}"
            )
        self.state, self.version = new, self.version + 1
        return self

    def then_state(self, expected: Message) -> DurableStateScenario:
        """The state is now `expected`."""
        self._accepted()
        _check_state(expected, self.state)
        return self

    def then_version(self, expected: int) -> DurableStateScenario:
        """The version is now `expected`."""
        self._require_run()
        if expected != self.version:
            raise ScenarioError(f"version differs: expected {expected}, actual {self.version}")
        return self

    def then_unchanged(self) -> DurableStateScenario:
        """The last command was accepted and changed nothing (it returned None)."""
        self._accepted()
        return self


def assert_deterministic(behavior: EventSourcedBehavior[Any, Any, Any], events: Sequence[Message]) -> Message:
    """Replays `events` twice from the initial state and checks both give the same state, and
    that replay leaves the events themselves untouched. Returns the state."""
    originals = [_copy(e) for e in events]

    def replay() -> Message:
        state = behavior.initial_state()
        for e in events:
            new = behavior.handle_event(e, state)
            if type(new) is not type(state):
                raise HandlerContractError(
                    f"handle_event must return the state (a {type(state).__name__}), got {type(new).__name__}"
                )
            state = new
        return _copy(state)

    first, second = replay(), replay()
    if first != second:
        raise ScenarioError(
            f"handle_event is not deterministic: two replays of {len(events)} events differ\n"
            f"  first:  {describe_message(first)}\n  second: {describe_message(second)}"
        )
    changed = [i for i, (a, b) in enumerate(zip(originals, events, strict=True)) if a != b]
    if changed:
        raise ScenarioError(f"handle_event modified the events it was given (at {changed}): events must stay as stored")
    return first
