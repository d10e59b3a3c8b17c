"""Sagas killed with SIGKILL at random moments (RELIABILITY.md #16): a child process runs money
transfers on RocksDB, 1,000 more requested at once every few rounds, and is killed again and
again (at least 20 times while sagas run), each time started again; in the end every transfer
is completed or compensated, money is conserved, no debit or credit was applied twice, and
every status saga_status reports is the one its journal folds to."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import ego
from ego.sagas.entity import fold
from ego.sagas.records import unpack
from ego.v1.sagas_pb2 import SagaRecord

from bank_pb2 import AccountCredited, AccountDebited
from domain import AccountBehavior
from saga_child import INITIAL, plan
from transfer_saga import DeskBehavior, TransferSaga

HERE = Path(__file__).resolve().parent
ACCOUNTS, TRANSFERS, WAVES, SEED = 100, 1000, 12, 5
STATUS_NAMES = {1: "running", 2: "completed", 3: "compensating", 4: "compensated", 5: "failed"}


def run_child(db: Path, wave: int, seconds: float | None) -> str:
    """Runs the child; kills it `seconds` after it is ready (None: lets it finish)."""
    child = subprocess.Popen(
        [sys.executable, str(HERE / "saga_child.py"), str(db), str(ACCOUNTS), str(TRANSFERS), str(wave), str(SEED)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "READY"
        if seconds is not None:
            try:
                child.wait(seconds)
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=180)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return out


class _Types:
    """Folds saga journals without an engine (the transfer saga's apply_event)."""

    def behavior(self, saga_type: str, saga_id: str) -> Any:
        return TransferSaga(saga_id)

    def take_live(self, saga_id: str, step: int) -> Any:
        return None


@pytest.mark.slow
def test_sigkill_during_a_thousand_concurrent_transfers(tmp_path: Path) -> None:
    db = tmp_path / "db"
    rng = random.Random(SEED)
    kills = rounds = wave = 0
    while kills < 20:
        rounds += 1
        assert rounds <= 60, f"the child finished before it was killed in {rounds - 1 - kills} rounds"
        if "DONE" in run_child(db, wave, rng.uniform(0.05, 1.0)):
            # Finished before the kill: the next child gets a new wave to work on (a child of
            # a finished wave has nothing left to do, so it would hardly ever be killed).
            assert wave < WAVES - 1, f"every wave finished before its kill ({kills} kills)"
            wave += 1
        else:
            kills += 1
            if kills % 4 == 0 and wave < WAVES - 1:
                wave += 1  # a new wave of 1,000 transfers every 4 kills
    assert "DONE" in run_child(db, wave, None)

    requests = [r for w in range(wave + 1) for r in plan(ACCOUNTS, TRANSFERS, w, SEED)]
    store = ego.RocksDBStore(db)
    with ego.Engine("check", store=store) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        engine.register_entity_type(DeskBehavior, prefix="request-")
        engine.register_saga_type(TransferSaga, timeout=30.0)
        expected = Counter({f"account-{a}": INITIAL for a in range(ACCOUNTS)})
        statuses = Counter()
        for r in requests:
            info = engine.saga_status(r.transfer_id)
            statuses[info.status.value] += 1
            # The status read is the one the saga's journal folds to.
            record = SagaRecord(saga_id=r.transfer_id)
            for event in store.replay_events(f"ego.saga:{r.transfer_id}"):
                fold(unpack(event.event), record, _Types())
            assert STATUS_NAMES[record.status] == info.status.value
            assert info.status in (ego.SagaStatus.COMPLETED, ego.SagaStatus.COMPENSATED), (r.transfer_id, info)
            if info.status is ego.SagaStatus.COMPLETED:
                expected[r.source] -= r.amount
                expected[r.target] += r.amount
        balances = {f"account-{a}": int(engine.get_state(f"account-{a}")[0].balance) for a in range(ACCOUNTS)}
    # No step applied twice: every debit and credit carries its step's key, each key once.
    keys: Counter[str] = Counter()
    for a in range(ACCOUNTS):
        for event in store.replay_events(f"account-{a}")[1:]:
            assert unpack(event.event).__class__ in (AccountDebited, AccountCredited)
            keys[event.idempotency_key or ""] += 1
    store.close()
    assert max(keys.values()) == 1
    assert sum(balances.values()) == ACCOUNTS * INITIAL  # money conserved
    assert balances == dict(expected)  # and each account has exactly what the sagas say
    assert statuses["completed"] > 0 and statuses["compensated"] > 0, statuses
