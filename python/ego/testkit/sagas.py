"""Given/When/Then scenarios for sagas, run directly on the saga's decisions (no engine, no
store): what ego would record and send, step by step.

    from ego.testkit import SagaScenario

    def test_a_rejected_credit_is_compensated():
        (SagaScenario(TransferSaga("t1"))
            .when_event(TransferRequested(transfer_id="t1", source="a", target="b", amount=5))
            .then_commands(ego.SagaCommand("a", Debit(amount=5), undo=Credit(amount=5)))
            .when_result("a", Account(balance=0))
            .then_commands(ego.SagaCommand("b", Credit(amount=5)))
            .when_error("b", AccountNotOpen("b"))
            .then_status(ego.SagaStatus.COMPENSATING)
            .then_commands(ego.SagaCommand("a", Credit(amount=5)))
            .when_result("a", Account(balance=5))
            .then_status(ego.SagaStatus.COMPENSATED))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message

from ego.sagas.behavior import SagaBehavior, SagaCommand, SagaStatus
from ego.sagas.entity import SagaEntity, fold
from ego.sagas.records import pack, unpack
from ego.testkit.scenario import ScenarioError, describe_message
from ego.v1.sagas_pb2 import (
    SagaEventRecorded,
    SagaFire,
    SagaObserve,
    SagaRecord,
    SagaStart,
    SagaStepOutcome,
    SagaStepsPlanned,
)

__all__ = ["SagaScenario"]

_STATUS = {
    1: SagaStatus.RUNNING,
    2: SagaStatus.COMPLETED,
    3: SagaStatus.COMPENSATING,
    4: SagaStatus.COMPENSATED,
    5: SagaStatus.FAILED,
}


class _OneSaga:
    def __init__(self, behavior: SagaBehavior[Any]) -> None:
        self.the_behavior = behavior
        self.live: dict[int, Any] = {}

    def behavior(self, saga_type: str, saga_id: str) -> SagaBehavior[Any]:
        return self.the_behavior

    def take_live(self, saga_id: str, step: int) -> Any:
        return self.live.pop(step, None)


class SagaScenario:
    """A Given/When/Then scenario for an :class:`~ego.SagaBehavior`. The saga is started (with
    ``initial_state()`` and ``timeout`` seconds, 0: none) when the scenario is made; each
    ``when_*`` is one decision of the saga, and ``then_*`` check what it decided."""

    def __init__(self, behavior: SagaBehavior[Any], timeout: float = 0.0) -> None:
        if not isinstance(behavior, SagaBehavior):
            raise TypeError(f"SagaScenario takes an ego.SagaBehavior, got {type(behavior).__name__}")
        self.types = _OneSaga(behavior)
        self.saga_id = behavior.id()
        self.entity = SagaEntity(self.saga_id, self.types)
        self.record = SagaRecord(saga_id=self.saga_id)
        self.last: list[Message] = []
        self.sequence = 0
        self._run(SagaStart(saga_type="scenario", initial_state=pack(behavior.initial_state()), timeout=timeout))

    def _run(self, command: Message) -> SagaScenario:
        self.last = list(self.entity.handle_command(command, self.record))
        for event in self.last:
            fold(event, self.record, self.types)
        return self

    # -- when ------------------------------------------------------------------------------

    def given(self, *events: Message) -> SagaScenario:
        """The saga's own events that happened before (folded with apply_event)."""
        for e in events:
            fold(SagaEventRecorded(event=pack(e)), self.record, self.types)
        return self

    def when_event(self, event: Message, source: str = "source") -> SagaScenario:
        """An event of the journal that concerns the saga (written by entity ``source``)."""
        self.sequence += 1
        return self._run(SagaObserve(saga_type="scenario", source_id=source, source_sequence=self.sequence, event=pack(event)))

    def _head(self, entity_id: str) -> int:
        if not self.record.pending:
            raise ScenarioError(f"no command of the saga waits for an answer (from {entity_id!r})")
        head = self.record.pending[0]
        if head.entity_id != entity_id:
            raise ScenarioError(f"the command waiting for an answer went to {head.entity_id!r}, not {entity_id!r}")
        return int(head.step)

    def when_result(self, entity_id: str, result_state: Message) -> SagaScenario:
        """The entity accepted the command the saga sent it (the one waiting for an answer)."""
        step = self._head(entity_id)
        self.types.live[step] = result_state
        return self._run(SagaStepOutcome(step=step, ok=True, result_state=pack(result_state)))

    def when_error(self, entity_id: str, error: BaseException) -> SagaScenario:
        """The entity rejected the command the saga sent it with ``error``."""
        step = self._head(entity_id)
        self.types.live[step] = error
        return self._run(SagaStepOutcome(step=step, ok=False, error_type=type(error).__name__, error=str(error)))

    def when_timeout(self) -> SagaScenario:
        """The saga's timeout falls due."""
        deadlines = list(self.record.deadlines)
        if not deadlines:
            raise ScenarioError("the saga has no deadline (give SagaScenario a timeout)")
        return self._run(SagaFire(deadline=deadlines[0].id))

    # -- then ------------------------------------------------------------------------------

    def then_commands(self, *commands: SagaCommand) -> SagaScenario:
        """The commands the last ``when`` planned that are still to be sent, in order."""
        waiting = {s.step for s in self.record.pending}
        planned = [
            SagaCommand(
                s.entity_id,
                unpack(s.command),
                s.timeout,
                unpack(s.undo) if s.HasField("undo") else None,
            )
            for e in self.last
            if isinstance(e, SagaStepsPlanned)
            for s in e.steps
            if not s.finish and s.step in waiting
        ]
        if planned != list(commands):
            raise ScenarioError(f"expected the commands\n{_commands(commands)}\ngot\n{_commands(planned)}")
        return self

    def then_events(self, *events: Message) -> SagaScenario:
        """The saga's own events the last ``when`` recorded."""
        recorded = [unpack(e.event) for e in self.last if isinstance(e, SagaEventRecorded)]
        if recorded != list(events):
            listing = "\n".join(describe_message(e) for e in recorded) or "(none)"
            raise ScenarioError(f"expected {len(events)} event(s), got:\n{listing}")
        return self

    def then_status(self, status: SagaStatus, reason: str | None = None) -> SagaScenario:
        """The saga's status; ``reason``: a regex searched in the reason."""
        actual = _STATUS.get(self.record.status)
        if actual is not status:
            raise ScenarioError(
                f"expected the saga {status.value}, it is {actual.value if actual else 'not started'} ({self.record.reason})"
            )
        if reason is not None and not re.search(reason, self.record.reason):
            raise ScenarioError(f"the reason {self.record.reason!r} does not match {reason!r}")
        return self

    def then_state(self, state: Message) -> SagaScenario:
        """The behaviour's state."""
        actual = unpack(self.record.state)
        if actual != state:
            raise ScenarioError(f"expected the state {describe_message(state)}, got {describe_message(actual)}")
        return self

    @property
    def deadlines(self) -> list[int]:
        """Due times (Unix nanoseconds) of the saga's deadlines."""
        return [d.due for d in self.record.deadlines]


def _commands(commands: Sequence[SagaCommand]) -> str:
    if not commands:
        return "    (none)"
    return "\n".join(
        f"    [{i}] {c.entity_id}: {describe_message(c.command)}"
        + (f" (undo {describe_message(c.undo)})" if c.undo is not None else "")
        for i, c in enumerate(commands)
    )
