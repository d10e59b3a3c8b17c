"""Child process of the publisher crash tests: writes bank events to a RocksDB journal as fast
as it can while a publisher sends them to a broker, until it is killed.

    python publisher_child.py KIND STORE_DIR PARAMS_JSON BATCH_SIZE
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent / "examples" / "bank", HERE):
    sys.path.insert(0, str(path))

from publishing import make_publisher  # noqa: E402

import ego  # noqa: E402

from bank_pb2 import Credit, OpenAccount  # noqa: E402
from domain import AccountBehavior  # noqa: E402

ACCOUNTS = [f"account-{i}" for i in range(100)]


async def account(engine: ego.Engine, account_id: str) -> None:
    _, revision = await engine.get_state_async(account_id)
    while True:
        command = OpenAccount(initial_balance=100) if revision == 0 else Credit(amount=revision + 1)
        _, revision = await engine.send_command_async(account_id, command)


async def main() -> None:
    kind, store_dir, params, batch_size = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    engine = ego.Engine("crash", store=ego.RocksDBStore(store_dir))
    engine.start()
    engine.register_entity_type(AccountBehavior, prefix="account-")
    engine.add_event_publisher(make_publisher(kind, params), name="crash", batch_size=batch_size, max_backoff=0.2)
    print("writing", flush=True)
    await asyncio.gather(*(account(engine, a) for a in ACCOUNTS))


if __name__ == "__main__":
    asyncio.run(main())
