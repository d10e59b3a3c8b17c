"""Sagas: money transfers per second with 1,000 sagas at once, in memory and on RocksDB
(durable: the write-ahead log is synced before each reply), against plain commands doing the
same debit and credit in the same run.

Each saga transfer is a TransferSaga of examples/transfers started by a TransferRequested event
(a process manager): the journal reader starts it, it debits the source and credits the target
(two idempotent commands), and completes. ``--concurrent`` transfers are in flight at any time
(a new one is requested when one is over) until ``--transfers`` are over; timed from the first
request to the last saga over. The plain run sends the same debit then credit per transfer
(no saga, no keys), with the same number in flight. Writes per transfer: saga 6 (desk 1, saga 3,
accounts 2), plain 2.

    python benches/sagas.py [--transfers 3000] [--concurrent 1000] [--accounts 1000] [--stores memory,rocksdb] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent / "examples" / "bank", HERE.parent / "examples" / "transfers"):
    sys.path.insert(0, str(path))

import ego  # noqa: E402

from bank_pb2 import Credit, Debit, OpenAccount  # noqa: E402
from domain import AccountBehavior  # noqa: E402
from transfer_saga import DeskBehavior, TransferSaga  # noqa: E402
from transfers_pb2 import RequestTransfer  # noqa: E402

FINAL = (2, 4, 5)  # ego.v1.SagaStatus: completed, compensated, failed


@asynccontextmanager
async def bank(kind: str, accounts: int) -> AsyncIterator[ego.Engine]:
    tmp = tempfile.mkdtemp(prefix="ego-bench-sagas-")
    store = ego.MemoryStore() if kind == "memory" else ego.RocksDBStore(Path(tmp) / "db")
    try:
        with ego.Engine("bench", store=store) as engine:
            engine.register_entity_type(AccountBehavior, prefix="account-")
            await asyncio.gather(
                *(engine.send_command_async(f"account-{a}", OpenAccount(initial_balance=10**9)) for a in range(accounts))
            )
            yield engine
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def saga_transfers(kind: str, transfers: int, concurrent: int, accounts: int) -> float:
    async with bank(kind, accounts) as engine:
        engine.register_entity_type(DeskBehavior, prefix="request-")
        engine.register_saga_type(TransferSaga)
        requests = [
            RequestTransfer(
                transfer_id=f"t{i}", source=f"account-{i % accounts}", target=f"account-{(i + 1) % accounts}", amount=1
            )
            for i in range(transfers)
        ]
        window = asyncio.Semaphore(concurrent)
        # The sagas' status changes, from the in-process event stream (polling 1,000
        # statuses would load the engine it measures).
        with engine.subscribe(maxsize=1_000_000) as stream:

            async def watch() -> None:
                over = 0
                async for item in stream:
                    final = item.type_url.endswith("SagaStatusChanged") and item.event.status in FINAL
                    if final and item.persistence_id.startswith("ego.saga:"):
                        over += 1
                        window.release()
                        if over == transfers:
                            return

            watcher = asyncio.ensure_future(watch())
            started = time.perf_counter()
            sent = []
            for r in requests:
                await window.acquire()
                sent.append(asyncio.ensure_future(engine.send_command_async(f"request-{r.transfer_id}", r)))
            await watcher
            elapsed = time.perf_counter() - started
            await asyncio.gather(*sent)
        statuses = await asyncio.gather(*(engine.saga_status_async(r.transfer_id) for r in requests))
        completed = sum(s.status is ego.SagaStatus.COMPLETED for s in statuses)
        assert completed == transfers, f"{completed} of {transfers} completed"
    return transfers / elapsed


async def plain_transfers(kind: str, transfers: int, concurrent: int, accounts: int) -> float:
    async with bank(kind, accounts) as engine:
        window = asyncio.Semaphore(concurrent)

        async def transfer(i: int) -> None:
            async with window:
                await engine.send_command_async(f"account-{i % accounts}", Debit(amount=1))
                await engine.send_command_async(f"account-{(i + 1) % accounts}", Credit(amount=1))

        started = time.perf_counter()
        await asyncio.gather(*(transfer(i) for i in range(transfers)))
        elapsed = time.perf_counter() - started
        balances = await asyncio.gather(*(engine.get_state_async(f"account-{a}") for a in range(accounts)))
        assert sum(state.balance for state, _ in balances) == accounts * 10**9
    return transfers / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transfers", type=int, default=3000)
    parser.add_argument("--concurrent", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--stores", default="memory,rocksdb")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    shape = (args.transfers, args.concurrent, args.accounts)
    for kind in args.stores.split(","):
        sagas, plain = [], []
        for _ in range(args.runs):  # alternating, so both see the same machine
            sagas.append(asyncio.run(saga_transfers(kind, *shape)))
            plain.append(asyncio.run(plain_transfers(kind, *shape)))
        s, p = statistics.median(sagas), statistics.median(plain)
        print(
            f"{kind:8s} {args.transfers} transfers, {args.concurrent} at once: sagas {s:,.0f}/s "
            f"({min(sagas):,.0f}-{max(sagas):,.0f}), plain debit+credit {p:,.0f}/s ({min(plain):,.0f}-{max(plain):,.0f}); "
            f"sagas / plain {s / p:.3f} (medians of {args.runs})",
            flush=True,
        )


if __name__ == "__main__":
    main()
