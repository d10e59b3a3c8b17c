"""Sagas: money transfers per second with many sagas at once, in memory and on RocksDB
(durable: the write-ahead log is synced before each reply).

Each transfer is a TransferSaga of examples/transfers started by a TransferRequested event (a
process manager): the journal reader starts it, it debits the source and credits the target
(two idempotent commands), and completes. Timed: from sending the requests to the last saga
over; the figure also shows the writes per transfer (desk 1, saga 4, accounts 2).

    python benches/sagas.py [--transfers 1000] [--accounts 1000] [--stores memory,rocksdb] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent / "examples" / "bank", HERE.parent / "examples" / "transfers"):
    sys.path.insert(0, str(path))

import ego  # noqa: E402

from bank_pb2 import OpenAccount  # noqa: E402
from domain import AccountBehavior  # noqa: E402
from transfer_saga import DeskBehavior, TransferSaga  # noqa: E402
from transfers_pb2 import RequestTransfer  # noqa: E402

FINAL = (2, 4, 5)  # ego.v1.SagaStatus: completed, compensated, failed


async def transfers_per_second(kind: str, transfers: int, accounts: int) -> dict[str, float]:
    tmp = tempfile.mkdtemp(prefix="ego-bench-sagas-")
    store = ego.MemoryStore() if kind == "memory" else ego.RocksDBStore(Path(tmp) / "db")
    try:
        with ego.Engine("bench", store=store) as engine:
            engine.register_entity_type(AccountBehavior, prefix="account-")
            engine.register_entity_type(DeskBehavior, prefix="request-")
            engine.register_saga_type(TransferSaga)
            await asyncio.gather(
                *(engine.send_command_async(f"account-{a}", OpenAccount(initial_balance=10**9)) for a in range(accounts))
            )
            requests = [
                RequestTransfer(
                    transfer_id=f"t{i}", source=f"account-{i % accounts}", target=f"account-{(i + 1) % accounts}", amount=1
                )
                for i in range(transfers)
            ]
            # The sagas' status changes, from the in-process event stream (polling 1,000
            # statuses would load the engine it measures).
            over = 0
            with engine.subscribe(maxsize=1_000_000) as stream:
                started = time.perf_counter()
                await asyncio.gather(*(engine.send_command_async(f"request-{r.transfer_id}", r) for r in requests))
                async for item in stream:
                    if item.persistence_id.startswith("ego.saga:") and item.type_url.endswith("SagaStatusChanged"):
                        over += item.event.status in FINAL
                        if over == transfers:
                            break
                elapsed = time.perf_counter() - started
            completed = sum(engine.saga_status(r.transfer_id).status is ego.SagaStatus.COMPLETED for r in requests)
            assert completed == transfers, f"{completed} of {transfers} completed"
        return {"transfers_per_s": transfers / elapsed, "seconds": elapsed}
    finally:
        store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transfers", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--stores", default="memory,rocksdb")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for kind in args.stores.split(","):
        figures = [
            asyncio.run(transfers_per_second(kind, args.transfers, args.accounts))["transfers_per_s"] for _ in range(args.runs)
        ]
        print(
            f"{kind:8s} {args.transfers} concurrent transfers: {statistics.median(figures):,.0f} transfers/s "
            f"(median of {args.runs}; min {min(figures):,.0f}, max {max(figures):,.0f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
