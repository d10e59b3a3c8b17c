"""A saga as an event-sourced entity: its commands decide (calling the user's behaviour) and
its events fold into a :class:`SagaRecord`. Every decision is an event of its journal, so a
saga recovered after a crash is where it was. Not public API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from google.protobuf.message import Message

from ego.behaviors import EventSourcedBehavior
from ego.errors import ConfigurationError
from ego.sagas.behavior import SagaAction, SagaBehavior, SagaCommand, SagaStepError
from ego.sagas.records import now_ns, pack, unpack
from ego.v1.sagas_pb2 import (
    SAGA_STATUS_COMPENSATED,
    SAGA_STATUS_COMPENSATING,
    SAGA_STATUS_COMPLETED,
    SAGA_STATUS_FAILED,
    SAGA_STATUS_RUNNING,
    SagaDeadline,
    SagaDeadlineFired,
    SagaDeadlineSet,
    SagaEnded,
    SagaEventObserved,
    SagaEventRecorded,
    SagaFire,
    SagaObserve,
    SagaRecord,
    SagaStart,
    SagaStarted,
    SagaStatusChanged,
    SagaStep,
    SagaStepDone,
    SagaStepOutcome,
    SagaStepsPlanned,
)

__all__ = ["FINAL", "SagaEntity", "SagaTypes"]

FINAL = (SAGA_STATUS_COMPLETED, SAGA_STATUS_COMPENSATED, SAGA_STATUS_FAILED)
COMPLETE, COMPENSATE = 1, 2


class SagaTypes(Protocol):
    """What the entity needs from the runtime."""

    def behavior(self, saga_type: str, saga_id: str) -> SagaBehavior[Any]: ...

    def take_live(self, saga_id: str, step: int) -> Any: ...


class SagaEntity(EventSourcedBehavior[Message, Message, SagaRecord]):
    """The entity behind one saga (persistence id ``ego.saga:<saga id>``)."""

    __slots__ = ("decided", "saga_id", "types")

    def __init__(self, saga_id: str, types: SagaTypes) -> None:
        self.saga_id = saga_id
        self.types = types
        # The events the last command decided (not yet folded by the engine) and the record
        # they fold into, built while deciding: folding them again would do the work twice.
        self.decided: tuple[list[Message], SagaRecord] | None = None

    def id(self) -> str:  # pragma: no cover - registered by prefix, never asked
        return self.saga_id

    def initial_state(self) -> SagaRecord:
        return SagaRecord(saga_id=self.saga_id)

    def handle_command(self, command: Message, state: SagaRecord) -> Sequence[Message]:
        work = SagaRecord()
        work.CopyFrom(state)
        decide = _Decision(work, self.types)
        if isinstance(command, SagaStepOutcome):
            decide.outcome(command)
        elif isinstance(command, SagaObserve):
            decide.observe(command)
        elif isinstance(command, SagaFire):
            decide.fire(command.deadline)
        elif isinstance(command, SagaStart):
            decide.start(command.saga_type, command.initial_state, command.timeout)
        else:
            raise TypeError(f"a saga takes no {type(command).__name__}")
        if work.status in FINAL and state.status not in FINAL:
            decide.emit(SagaEnded())
        self.decided = (decide.events, work) if decide.events else None
        return decide.events

    def handle_event(self, event: Message, state: SagaRecord) -> SagaRecord:
        decided = self.decided
        if decided is not None:
            events, record = decided
            if events and event is events[0]:
                # The engine folds the events the command just decided, in order: the first
                # gives the record built while deciding, the others are in it already.
                self.decided = (events[1:], record) if len(events) > 1 else None
                return record
            self.decided = None
        fold(event, state, self.types)
        return state


def fold(event: Message, rec: SagaRecord, types: SagaTypes) -> None:
    """Applies one of a saga's events to its record, in place."""
    if isinstance(event, SagaStepsPlanned):
        steps = list(event.steps)
        if event.first:
            rest = list(rec.pending)
            del rec.pending[:]
            rec.pending.extend(steps + rest)
        else:
            rec.pending.extend(steps)
        rec.next_step = max([rec.next_step] + [s.step + 1 for s in steps])
    elif isinstance(event, SagaStepDone):
        if rec.pending and rec.pending[0].step == event.step:
            step = rec.pending[0]
            if event.ok and not step.compensation:
                rec.done.append(step)
            del rec.pending[0]
    elif isinstance(event, SagaEventRecorded):
        behavior = types.behavior(rec.saga_type, rec.saga_id)
        state = behavior.apply_event(unpack(event.event), unpack(rec.state))
        rec.state.Pack(state)
    elif isinstance(event, SagaEventObserved):
        if event.source_sequence > rec.seen.get(event.source_id, 0):
            rec.seen[event.source_id] = event.source_sequence
        if not rec.started and event.HasField("event"):
            rec.buffered.append(event)
            if not rec.saga_type:
                rec.saga_type = event.saga_type
    elif isinstance(event, SagaStatusChanged):
        rec.status = event.status
        rec.reason = event.reason
        if event.status == SAGA_STATUS_COMPENSATING:
            keep = [s for s in rec.pending[:1] if event.keep_first and not s.finish]
            del rec.pending[:]
            rec.pending.extend(keep)
        elif event.status in FINAL:
            del rec.pending[:]
            del rec.deadlines[:]
    elif isinstance(event, SagaStarted):
        rec.started = True
        rec.saga_type = event.saga_type
        rec.state.CopyFrom(event.initial_state)
        rec.status = SAGA_STATUS_RUNNING
        del rec.buffered[:]
    elif isinstance(event, SagaDeadlineSet):
        rec.deadlines.append(event.deadline)
        rec.next_deadline = max(rec.next_deadline, event.deadline.id + 1)
    elif isinstance(event, SagaEnded):
        pass  # the final status change before it said everything
    elif isinstance(event, SagaDeadlineFired):
        if rec.pending:
            rec.timed_out = True
        left = [d for d in rec.deadlines if d.id != event.deadline]
        del rec.deadlines[:]
        rec.deadlines.extend(left)
    else:
        raise TypeError(f"a saga's journal holds no {type(event).__name__}")


class _Decision:
    """One command's decisions: events are folded into ``work`` (a copy of the record) as they
    are made, so later decisions of the same command see them."""

    def __init__(self, work: SagaRecord, types: SagaTypes) -> None:
        self.work = work
        self.types = types
        self.events: list[Message] = []
        # The rejection being handled: the reason when the behaviour answers it by compensating.
        self.cause: str | None = None

    def emit(self, event: Message) -> None:
        fold(event, self.work, self.types)
        self.events.append(event)

    def behavior(self) -> SagaBehavior[Any]:
        return self.types.behavior(self.work.saga_type, self.work.saga_id)

    # -- commands --------------------------------------------------------------------------

    def start(self, saga_type: str, initial_state: Any, timeout: float) -> None:
        work = self.work
        if work.started:
            return
        if work.saga_type and work.saga_type != saga_type:
            raise ConfigurationError(f"saga {work.saga_id!r} observed events as a {work.saga_type}, not a {saga_type}")
        buffered = [SagaEventObserved(source_id=b.source_id, event=b.event) for b in work.buffered]
        self.emit(SagaStarted(saga_type=saga_type, initial_state=initial_state))
        if timeout > 0:
            due = now_ns() + int(timeout * 1e9)
            self.emit(SagaDeadlineSet(deadline=SagaDeadline(id=work.next_deadline, due=due)))
        for b in buffered:
            if work.status != SAGA_STATUS_RUNNING:
                break
            self.handle_event(b.event, b.source_id)

    def observe(self, observe: SagaObserve) -> None:
        work = self.work
        if observe.source_sequence <= work.seen.get(observe.source_id, 0):
            return  # seen before (the journal reader hands an event over again after a crash)
        if (work.saga_type and observe.saga_type != work.saga_type) or work.status in FINAL:
            return  # another type's saga of the same id, or a saga that is over
        if not work.started:
            if observe.starts:
                self.emit(SagaEventObserved(source_id=observe.source_id, source_sequence=observe.source_sequence))
                self.start(observe.saga_type, observe.initial_state, observe.timeout)
                self.handle_event(observe.event, observe.source_id)
            else:
                self.emit(
                    SagaEventObserved(
                        source_id=observe.source_id,
                        source_sequence=observe.source_sequence,
                        event=observe.event,
                        saga_type=observe.saga_type,
                    )
                )
            return
        self.emit(SagaEventObserved(source_id=observe.source_id, source_sequence=observe.source_sequence))
        if work.status == SAGA_STATUS_RUNNING:
            self.handle_event(observe.event, observe.source_id)

    def fire(self, deadline: int) -> None:
        work = self.work
        if work.status != SAGA_STATUS_RUNNING or all(d.id != deadline for d in work.deadlines):
            return  # fired before, or the saga is over: a late timer does nothing
        in_flight = bool(work.pending) and not work.pending[0].finish
        self.emit(SagaDeadlineFired(deadline=deadline))
        if not in_flight:
            self.compensate("timed out")
        # Else the step at the head may be in flight: its answer is handled first (it may
        # complete the saga); then, if the saga still runs, it compensates (see outcome).

    def outcome(self, outcome: SagaStepOutcome) -> None:
        work = self.work
        if not work.pending or work.pending[0].step != outcome.step or work.status in FINAL:
            return  # answered before
        step = SagaStep()
        step.CopyFrom(work.pending[0])
        live = self.types.take_live(work.saga_id, step.step)
        error = "" if outcome.ok else f"{outcome.error_type}: {outcome.error}"
        self.emit(SagaStepDone(step=step.step, ok=outcome.ok, error=error))
        if step.compensation:
            if not outcome.ok:
                self.emit(
                    SagaStatusChanged(
                        status=SAGA_STATUS_FAILED,
                        reason=f"compensating command {_type_name(step.command)} to {step.entity_id!r} was rejected: {error}",
                    )
                )
            elif not work.pending:
                self.emit(SagaStatusChanged(status=SAGA_STATUS_COMPENSATED, reason=work.reason))
            return
        behavior = self.behavior()
        state = unpack(work.state)
        if outcome.ok:
            result = live if isinstance(live, Message) else unpack(outcome.result_state)
            action = self.call("handle_result", behavior.handle_result, step.entity_id, result, state)
        else:
            exc = live if isinstance(live, BaseException) else SagaStepError(outcome.error_type, outcome.error)
            self.cause = f"{_type_name(step.command)} to {step.entity_id!r} was rejected: {error}"
            action = self.call("handle_error", behavior.handle_error, step.entity_id, exc, state)
        if action is not None:
            self.act(action, first=True)
        if work.status == SAGA_STATUS_COMPENSATING and not work.pending:
            self.plan_compensation()
        self.advance()
        if work.timed_out and work.status == SAGA_STATUS_RUNNING:
            self.compensate("timed out")

    # -- actions ---------------------------------------------------------------------------

    def handle_event(self, event: Any, source_id: str) -> None:
        behavior = self.behavior()
        action = self.call("handle_event", behavior.handle_event, unpack(event), unpack(self.work.state))
        if action is not None:
            self.act(action, first=False)
        self.advance()

    def call(self, name: str, method: Any, *args: Any) -> SagaAction | None:
        """Calls a handler of the behaviour; one that raises or answers with something else than
        an action makes the saga compensate (the error is its reason)."""
        try:
            action = method(*args)
        except Exception as e:
            self.compensate(f"{name} raised {type(e).__name__}: {e}")
            return None
        if action is not None and not isinstance(action, SagaAction):
            self.compensate(f"{name} returned {type(action).__name__}, not an ego.SagaAction or None")
            return None
        return action

    def act(self, action: SagaAction, first: bool) -> None:
        work = self.work
        for event in action.events:
            if not isinstance(event, Message):
                self.compensate(f"a saga event must be a protobuf message, got {type(event).__name__}")
                return
            try:
                self.emit(SagaEventRecorded(event=pack(event)))
            except Exception as e:  # apply_event raised: the event is not recorded
                self.compensate(f"apply_event raised {type(e).__name__}: {e}")
                return
        if work.status != SAGA_STATUS_RUNNING:
            return  # compensating: only the events of an answer to a step in flight count
        steps = []
        for command in action.commands:
            if not isinstance(command, SagaCommand) or not isinstance(command.command, Message):
                self.compensate(f"a saga command must be an ego.SagaCommand of a protobuf message, got {command!r}")
                return
            steps.append(self.step(command, compensation=False))
        if not steps and (first or not work.pending) and (action.complete or action.compensate):
            # Nothing to wait for: it takes effect now.
            if action.complete:
                self.emit(SagaStatusChanged(status=SAGA_STATUS_COMPLETED))
            else:
                self.compensate(self.cause or "the saga asked to compensate")
            return
        if action.complete or action.compensate:
            steps.append(SagaStep(step=work.next_step + len(steps), finish=COMPLETE if action.complete else COMPENSATE))
        if steps:
            self.emit(SagaStepsPlanned(steps=steps, first=first))

    def step(self, command: SagaCommand, compensation: bool, offset: int = 0) -> SagaStep:
        step = SagaStep(
            step=self.work.next_step + offset,
            entity_id=command.entity_id,
            command=pack(command.command),
            timeout=float(command.timeout),
            compensation=compensation,
        )
        if command.undo is not None:
            step.undo.CopyFrom(pack(command.undo))
        return step

    def advance(self) -> None:
        """Runs the complete / compensate markers that reached the head of the steps."""
        work = self.work
        while work.status == SAGA_STATUS_RUNNING and work.pending and work.pending[0].finish:
            if work.pending[0].finish == COMPLETE:
                self.emit(SagaStatusChanged(status=SAGA_STATUS_COMPLETED))
            else:
                self.compensate(self.cause or "the saga asked to compensate")

    def compensate(self, reason: str, keep_first: bool = False) -> None:
        work = self.work
        if work.status != SAGA_STATUS_RUNNING:
            return  # compensating already, or over
        self.emit(SagaStatusChanged(status=SAGA_STATUS_COMPENSATING, reason=reason, keep_first=keep_first))
        if not work.pending:
            self.plan_compensation()

    def plan_compensation(self) -> None:
        work = self.work
        behavior = self.behavior()
        try:
            commands = behavior.compensate(unpack(work.state))
        except Exception as e:
            self.emit(SagaStatusChanged(status=SAGA_STATUS_FAILED, reason=f"compensate raised {type(e).__name__}: {e}"))
            return
        steps: list[SagaStep] = []
        if commands is None:
            for done in reversed(work.done):
                if done.HasField("undo"):
                    steps.append(
                        SagaStep(
                            step=work.next_step + len(steps),
                            entity_id=done.entity_id,
                            command=done.undo,
                            timeout=done.timeout,
                            compensation=True,
                        )
                    )
        else:
            for command in commands:
                if not isinstance(command, SagaCommand) or not isinstance(command.command, Message):
                    self.emit(
                        SagaStatusChanged(
                            status=SAGA_STATUS_FAILED,
                            reason=f"compensate must return ego.SagaCommand objects, got {command!r}",
                        )
                    )
                    return
                steps.append(self.step(command, compensation=True, offset=len(steps)))
        if steps:
            self.emit(SagaStepsPlanned(steps=steps))
        else:
            self.emit(SagaStatusChanged(status=SAGA_STATUS_COMPENSATED, reason=work.reason))


def _type_name(packed: Any) -> str:
    return str(packed.type_url.rsplit("/", 1)[-1].rsplit(".", 1)[-1])
