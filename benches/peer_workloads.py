"""The same workloads on the `eventsourcing` library (9.5), the peer of BENCHMARKS.md.

Modes: "cache" (its LRU aggregate cache with default settings) and "best" (the cache trusted
as the only writer, no deep copy: its fastest setting, closest to an actor holding state).
Stores: "memory" (POPO), "sqlite" (a file in WAL mode, synchronous=FULL), "postgres"
(PostgreSQL over TCP on loopback, psycopg 3, fresh tables per run).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples" / "bank"))

from eventsourcing.application import Application  # noqa: E402
from eventsourcing.domain import Aggregate, event  # noqa: E402

from bank_pb2 import Credit, Debit  # noqa: E402

PG = {"host": "127.0.0.1", "port": "5432", "user": "postgres", "dbname": "test"}


def psycopg_connect():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(host=PG["host"], port=PG["port"], user=PG["user"], dbname=PG["dbname"], autocommit=True)


class InsufficientFunds(Exception):
    pass


class BankAccount(Aggregate):
    @event("Opened")
    def __init__(self, initial_balance: int) -> None:
        self.balance = initial_balance

    @event("Credited")
    def credit(self, amount: int) -> None:
        self.balance += amount

    def debit(self, amount: int) -> None:
        if amount > self.balance:
            raise InsufficientFunds(amount)
        self._debit(amount)

    @event("Debited")
    def _debit(self, amount: int) -> None:
        self.balance -= amount


class Bank(Application[UUID]):
    snapshotting_intervals: dict[type[Aggregate], int] = {}  # noqa: RUF012

    def open_account(self, initial_balance: int) -> UUID:
        account = BankAccount(initial_balance)
        self.save(account)
        return account.id

    def handle(self, account_id: UUID, command: Any) -> tuple[int, int]:
        account: BankAccount = self.repository.get(account_id)
        if isinstance(command, Credit):
            account.credit(command.amount)
        elif isinstance(command, Debit):
            account.debit(command.amount)
        self.save(account)
        return account.balance, account.version


class _Env:
    def __init__(self, store: str, mode: str, snapshot_every: int = 0) -> None:
        self.tmp = tempfile.mkdtemp(prefix="es-bench-")
        env = {"AGGREGATE_CACHE_MAXSIZE": "100000"}
        if mode == "best":
            env.update({"AGGREGATE_CACHE_FASTFORWARD": "n", "DEEPCOPY_FROM_AGGREGATE_CACHE": "n"})
        elif mode == "nocache":
            env = {}
        if store == "sqlite":
            env.update({"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(Path(self.tmp) / "es.db")})
        if store == "postgres":
            self.schema = f"es{os.getpid()}{uuid4().hex[:6]}"
            with psycopg_connect() as conn:
                conn.execute(f"CREATE SCHEMA {self.schema}")
            env.update(
                {
                    "PERSISTENCE_MODULE": "eventsourcing.postgres",
                    "POSTGRES_DBNAME": PG["dbname"],
                    "POSTGRES_HOST": PG["host"],
                    "POSTGRES_PORT": PG["port"],
                    "POSTGRES_USER": PG["user"],
                    "POSTGRES_PASSWORD": "",
                    "POSTGRES_SCHEMA": self.schema,
                    "CREATE_TABLE": "y",
                }
            )
        if snapshot_every:
            env["IS_SNAPSHOTTING_ENABLED"] = "y"
        bank_cls = (
            type("SnapBank", (Bank,), {"snapshotting_intervals": {BankAccount: snapshot_every}}) if snapshot_every else Bank
        )
        self.app = bank_cls(env=env)

    def close(self) -> None:
        self.app.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if getattr(self, "schema", None):
            with psycopg_connect() as conn:
                conn.execute(f"DROP SCHEMA {self.schema} CASCADE")


def workload_a(store: str, mode: str, commands: int = 20_000) -> dict[str, float]:
    if store != "memory":
        commands = min(commands, 2_000 if store == "sqlite" else 1_000)
    env = _Env(store, mode)
    try:
        app = env.app
        account = app.open_account(0)
        credit = Credit(amount=1)
        started = time.perf_counter()
        for _ in range(commands):
            app.handle(account, credit)
        elapsed = time.perf_counter() - started
        return {"cmds_per_s": commands / elapsed}
    finally:
        env.close()


def workload_b(store: str, mode: str, accounts: int = 1000, credits: int = 20) -> dict[str, float]:
    if store != "memory":
        credits = min(credits, 2 if store == "sqlite" else 1)
    env = _Env(store, mode)
    try:
        app = env.app
        ids = [app.open_account(0) for _ in range(accounts)]
        credit = Credit(amount=1)
        started = time.perf_counter()
        for _ in range(credits):
            for account in ids:
                app.handle(account, credit)
        elapsed = time.perf_counter() - started
        return {"cmds_per_s": accounts * credits / elapsed}
    finally:
        env.close()


def workload_c(store: str, snapshot_every: int = 0, events: int = 10_000, loads: int = 5) -> dict[str, float]:
    env = _Env(store, "nocache", snapshot_every)
    try:
        app = env.app
        # Built in one save (without a cache every command would replay the whole history).
        created = BankAccount(0)
        for _ in range(events - 1):
            created.credit(1)
        app.save(created)
        account = created.id
        times = []
        for _ in range(loads):
            started = time.perf_counter()
            loaded = app.repository.get(account)
            times.append(time.perf_counter() - started)
            assert loaded.version == events
        return {"ms_per_load": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3}
    finally:
        env.close()


def workload_e(accounts: int = 100_000) -> dict[str, float]:
    """Memory per aggregate held in the peer's cache (its equivalent of an activated entity)."""
    import gc

    from ego_workloads import rss_bytes

    env = _Env("memory", "best")
    try:
        app = env.app
        gc.collect()
        before = rss_bytes()
        ids = [app.open_account(1000) for _ in range(accounts)]
        gc.collect()
        after = rss_bytes()
        del ids
        return {"bytes_per_entity": (after - before) / accounts}
    finally:
        env.close()


def workload_f(accounts: int, commands: int | None = None) -> dict[str, float]:
    """Workload B with `accounts` accounts (its aggregate cache holds them all)."""
    commands = commands or max(20_000, accounts)
    env = _Env("memory", "best")
    try:
        app = env.app
        ids = [app.open_account(0) for _ in range(accounts)]
        credit = Credit(amount=1)
        started = time.perf_counter()
        for k in range(commands):
            app.handle(ids[k % accounts], credit)
        return {"cmds_per_s": commands / (time.perf_counter() - started)}
    finally:
        env.close()


def workload_d(store: str = "memory", events: int = 100_000) -> dict[str, float]:
    """The peer's follower (a ProcessApplication pulling the leader's notification log, one
    tracking record per event) catching up on `events` events, with a counting policy."""
    from eventsourcing.system import ProcessApplication

    counted = 0

    class Counter(ProcessApplication[UUID]):
        def policy(self, domain_event: Any, processing_event: Any) -> None:
            nonlocal counted
            counted += 1

    env = _Env(store, "best")
    try:
        leader = env.app
        per = 100
        for _ in range(events // per):
            account = BankAccount(0)
            for _ in range(per - 1):
                account.credit(1)
            leader.save(account)
        follower_env = {k: v for k, v in env.app.env.items()}
        follower = Counter(env=follower_env)
        follower.follow(leader.name, leader.notification_log)
        started = time.perf_counter()
        follower.pull_and_process(leader.name)
        elapsed = time.perf_counter() - started
        assert counted == events, counted
        follower.close()
        return {"events_per_s": events / elapsed}
    finally:
        env.close()
