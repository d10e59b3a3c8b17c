"""The bank-account domain: one behaviour, as an event-sourced entity.

Commands ``OpenAccount``, ``Credit`` and ``Debit``; a debit that would make the balance
negative is rejected; each accepted command emits exactly one event (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

import ego

from bank_pb2 import Account, AccountCredited, AccountDebited, AccountOpened, Credit, Debit, OpenAccount

__all__ = ["AccountBehavior", "AccountNotOpen", "InsufficientFunds"]


class InsufficientFunds(Exception):
    """A debit larger than the balance."""


class AccountNotOpen(Exception):
    """A command to an account that was never opened (or a second open)."""


class AccountBehavior(ego.EventSourcedBehavior[Message, Message, Account]):
    """A bank account. Create one per entity: ``AccountBehavior("account-42")``."""

    __slots__ = ("account_id",)

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id

    def id(self) -> str:
        return self.account_id

    def initial_state(self) -> Account:
        return Account(account_id=self.account_id)

    def handle_command(self, command: Message, state: Account) -> Sequence[Message]:
        if isinstance(command, Credit):
            if not state.open:
                raise AccountNotOpen(state.account_id)
            return [AccountCredited(amount=command.amount)]
        if isinstance(command, Debit):
            if not state.open:
                raise AccountNotOpen(state.account_id)
            if command.amount > state.balance:
                raise InsufficientFunds(f"balance {state.balance} < {command.amount}")
            return [AccountDebited(amount=command.amount)]
        if isinstance(command, OpenAccount):
            if state.open:
                raise AccountNotOpen(f"{state.account_id} is already open")
            return [AccountOpened(account_id=state.account_id, balance=command.initial_balance)]
        raise TypeError(f"unknown command {type(command).__name__}")

    def handle_event(self, event: Message, state: Account) -> Account:
        if isinstance(event, AccountCredited):
            state.balance += event.amount
        elif isinstance(event, AccountDebited):
            state.balance -= event.amount
        elif isinstance(event, AccountOpened):
            state.balance = event.balance
            state.open = True
        return state
