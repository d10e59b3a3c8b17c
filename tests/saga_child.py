"""The child of test_saga_crash: requests the transfers of waves 0 to WAVE (TRANSFERS each,
all at once; those of earlier waves again, which changes nothing) and runs the sagas on a
RocksDB store until every one is over, printing READY once the engine runs and DONE at the
end. The parent kills it with SIGKILL at random moments and starts it again.

    python saga_child.py DB ACCOUNTS TRANSFERS WAVE SEED
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (ROOT / "examples" / "bank", ROOT / "examples" / "transfers"):
    sys.path.insert(0, str(path))

import ego  # noqa: E402

from bank_pb2 import OpenAccount  # noqa: E402
from domain import AccountBehavior  # noqa: E402
from transfer_saga import DeskBehavior, TransferSaga  # noqa: E402
from transfers_pb2 import RequestTransfer  # noqa: E402

INITIAL = 1000


def plan(accounts: int, transfers: int, wave: int, seed: int) -> list[RequestTransfer]:
    """The transfers of a wave (the same every round): about one in ten goes to an account
    that is not open (its credit is rejected: compensated); some are too large for the source."""
    rng = random.Random(seed * 1000 + wave)
    out = []
    for i in range(transfers):
        source = rng.randrange(accounts)
        target = (source + rng.randrange(1, accounts)) % accounts
        target_id = f"account-{target}" if rng.random() > 0.1 else f"account-closed-{wave}-{i}"
        amount = rng.randrange(1, INITIAL // 2)
        out.append(RequestTransfer(transfer_id=f"w{wave}-t{i}", source=f"account-{source}", target=target_id, amount=amount))
    return out


async def main(db: str, accounts: int, transfers: int, wave: int, seed: int) -> None:
    store = ego.RocksDBStore(db)
    engine = ego.Engine("saga-crash", store=store)
    engine.start()
    engine.register_entity_type(AccountBehavior, prefix="account-")
    engine.register_entity_type(DeskBehavior, prefix="request-")
    engine.register_saga_type(TransferSaga, timeout=30.0)
    print("READY", flush=True)
    # Idempotent setup: a repeat after a crash is answered from the journal.
    await asyncio.gather(
        *(
            engine.send_command_async(f"account-{a}", OpenAccount(initial_balance=INITIAL), idempotency_key="open")
            for a in range(accounts)
        )
    )
    requests = [r for w in range(wave + 1) for r in plan(accounts, transfers, w, seed)]
    await asyncio.gather(*(engine.send_command_async(f"request-{r.transfer_id}", r, idempotency_key="request") for r in requests))
    deadline = time.monotonic() + 120
    waiting = [r.transfer_id for r in requests]
    while waiting:
        infos = await asyncio.gather(*(engine.saga_status_async(t) for t in waiting), return_exceptions=True)
        waiting = [t for t, i in zip(waiting, infos, strict=True) if isinstance(i, BaseException) or not i.status.is_final]
        if time.monotonic() > deadline:
            print(f"STUCK {waiting[:10]}", flush=True)
            sys.exit(2)
        await asyncio.sleep(0.05)
    engine.stop()
    store.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
