"""A money transfer between two bank accounts (../bank) as a saga.

A transfer starts with a ``RequestTransfer`` to a desk entity (``request-<transfer id>``),
whose ``TransferRequested`` event starts a :class:`TransferSaga` (a process manager): debit the
source, credit the target, complete. When the credit is rejected (say the target account is
not open) the saga compensates: the ``undo`` of the debit credits the source back.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

import ego

from bank_pb2 import Credit, Debit
from transfers_pb2 import (
    RequestTransfer,
    SourceDebited,
    TargetCredited,
    Transfer,
    TransferDesk,
    TransferRequested,
)

__all__ = ["DeskBehavior", "TransferSaga"]


class DeskBehavior(ego.EventSourcedBehavior[RequestTransfer, TransferRequested, TransferDesk]):
    """Takes transfer requests: ``request-<transfer id>`` records one ``TransferRequested``."""

    def __init__(self, desk_id: str) -> None:
        self.desk_id = desk_id

    def id(self) -> str:
        return self.desk_id

    def initial_state(self) -> TransferDesk:
        return TransferDesk()

    def handle_command(self, command: RequestTransfer, state: TransferDesk) -> Sequence[TransferRequested]:
        if state.requested:
            return []
        if command.amount <= 0 or command.source == command.target:
            raise ValueError(f"bad transfer {command}")
        return [
            TransferRequested(
                transfer_id=command.transfer_id, source=command.source, target=command.target, amount=command.amount
            )
        ]

    def handle_event(self, event: TransferRequested, state: TransferDesk) -> TransferDesk:
        return TransferDesk(requested=True)


class TransferSaga(ego.SagaBehavior[Transfer]):
    """Debit the source, then credit the target; compensate (credit the source back) when a
    step is rejected or the transfer times out."""

    started_by = (TransferRequested,)

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id

    def id(self) -> str:
        return self.saga_id

    @classmethod
    def correlate(cls, event: Message, persistence_id: str) -> str | None:
        return event.transfer_id if isinstance(event, TransferRequested) else None

    def initial_state(self) -> Transfer:
        return Transfer(transfer_id=self.saga_id)

    def handle_event(self, event: Message, state: Transfer) -> ego.SagaAction | None:
        if not isinstance(event, TransferRequested):
            return None
        debit = ego.SagaCommand(event.source, Debit(amount=event.amount), undo=Credit(amount=event.amount))
        return ego.SagaAction(events=[event], commands=[debit])

    def handle_result(self, entity_id: str, result_state: Message, state: Transfer) -> ego.SagaAction:
        if not state.debited:
            credit = ego.SagaCommand(state.target, Credit(amount=state.amount))
            return ego.SagaAction(events=[SourceDebited()], commands=[credit])
        return ego.SagaAction(events=[TargetCredited()], complete=True)

    def handle_error(self, entity_id: str, error: BaseException, state: Transfer) -> ego.SagaAction:
        return ego.SagaAction(compensate=True)

    def apply_event(self, event: Message, state: Transfer) -> Transfer:
        if isinstance(event, TransferRequested):
            return Transfer(transfer_id=event.transfer_id, source=event.source, target=event.target, amount=event.amount)
        if isinstance(event, SourceDebited):
            state.debited = True
        elif isinstance(event, TargetCredited):
            state.credited = True
        return state
