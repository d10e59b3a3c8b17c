"""mypy --strict on a small application catches what the engine's types promise: a command
that is not a protobuf message, an engine setting that does not exist, a command of the wrong
type for a typed entity handle; and it reads the state type from the handle."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ego

ROOT = Path(__file__).resolve().parent.parent

APP = """
from __future__ import annotations

from collections.abc import Sequence

import ego
from bank_pb2 import Account, AccountCredited, Credit, Debit, OpenAccount


class Accounts(ego.EventSourcedBehavior[Credit, AccountCredited, Account]):
    def __init__(self, account_id: str) -> None:
        self.account_id = account_id

    def id(self) -> str:
        return self.account_id

    def initial_state(self) -> Account:
        return Account(account_id=self.account_id)

    def handle_command(self, command: Credit, state: Account) -> Sequence[AccountCredited]:
        return [AccountCredited(amount=command.amount)]

    def handle_event(self, event: AccountCredited, state: Account) -> Account:
        return Account(account_id=state.account_id, balance=state.balance + event.amount)


def main() -> None:
    engine = ego.Engine("typed", shard=8)  # line 27: no such setting
    engine.send_command("account-1", {"amount": 1})  # line 28: not a message
    account = engine.entity_ref(Accounts, "account-1")
    state, revision = account.send(Credit(amount=5))
    reveal_type(state)  # line 31
    account.send(Debit(amount=5))  # line 32: a command Accounts does not take
    balance: str = account.get_state()[0].balance  # line 33: an int
"""


def test_mypy_strict_checks_commands_settings_and_the_state_type(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(APP).lstrip())
    env = dict(os.environ, MYPYPATH=str(ROOT / "examples" / "bank"))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--show-error-codes", "--no-error-summary", str(app)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = [line.split("app.py:", 1)[1] for line in result.stdout.splitlines() if "app.py:" in line]
    by_line: dict[int, list[str]] = {}
    for line in lines:
        number, rest = line.split(":", 1)
        by_line.setdefault(int(number), []).append(rest)
    assert sorted(by_line) == [27, 28, 31, 32, 33], result.stdout + result.stderr
    assert 'Unexpected keyword argument "shard"' in " ".join(by_line[27])
    assert '"dict[str, int]"' in " ".join(by_line[28]) and '"Message"' in " ".join(by_line[28])
    assert 'Revealed type is "bank.v1.bank_pb2.Account"' in " ".join(by_line[31]) or '"bank_pb2.Account"' in " ".join(
        by_line[31]
    ), by_line[31]
    assert '"Debit"' in " ".join(by_line[32]) and '"Credit"' in " ".join(by_line[32])
    assert '"int"' in " ".join(by_line[33]) and '"str"' in " ".join(by_line[33])


def test_entity_ref_sends_and_reads_at_runtime() -> None:
    from bank_pb2 import Credit, OpenAccount
    from domain import AccountBehavior

    with ego.Engine("refs") as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        account = engine.entity_ref(AccountBehavior, "account-1")
        account.send(OpenAccount(initial_balance=3))
        state, revision = account.send(Credit(amount=2), timeout=5)
        assert (state.balance, revision) == (5, 2)
        assert account.get_state()[0].balance == 5
        with pytest.raises(ego.errors.ConfigurationError):
            engine.entity_ref(Credit, "account-1")  # type: ignore[call-overload]
        with pytest.raises(ego.errors.InvalidEntityIdError):
            engine.entity_ref(AccountBehavior, "")

        async def twice() -> tuple[int, int]:
            state, _ = await account.send_async(Credit(amount=1), timeout=5)
            return state.balance, (await account.get_state_async())[1]

        import asyncio

        assert asyncio.run(twice()) == (6, 3)
