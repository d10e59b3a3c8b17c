"""Child process of the publisher crash tests: writes bank events to a RocksDB journal as fast
as it can while a publisher sends them to a broker, until it is killed. With SOURCE "states"
it writes durable-state counters (one increment of 1 per counter at a time, so each version's
counter equals the version) and a state publisher sends every version.

    python publisher_child.py KIND STORE_DIR PARAMS_JSON BATCH_SIZE [SOURCE]
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
from test_durable_state import CounterBehavior  # noqa: E402

import ego  # noqa: E402

from bank_pb2 import Credit, OpenAccount  # noqa: E402
from domain import AccountBehavior  # noqa: E402
from egotest.messages_pb2 import Increment  # noqa: E402

ACCOUNTS = [f"account-{i}" for i in range(100)]
COUNTERS = [f"cart-{i}" for i in range(100)]


async def account(engine: ego.Engine, account_id: str) -> None:
    _, revision = await engine.get_state_async(account_id)
    while True:
        command = OpenAccount(initial_balance=100) if revision == 0 else Credit(amount=revision + 1)
        _, revision = await engine.send_command_async(account_id, command)


async def counter(engine: ego.Engine, counter_id: str) -> None:
    while True:
        await engine.send_command_async(counter_id, Increment(by=1))


async def main() -> None:
    kind, store_dir, params, batch_size = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
    source = sys.argv[5] if len(sys.argv) > 5 else "events"
    engine = ego.Engine("crash", store=ego.RocksDBStore(store_dir))
    engine.start()
    publisher = make_publisher(kind, params)
    if source == "states":
        engine.register_entity_type(CounterBehavior, prefix="cart-")
        engine.add_state_publisher(publisher, name="crash", batch_size=batch_size, max_backoff=0.2)
        print("writing", flush=True)
        await asyncio.gather(*(counter(engine, c) for c in COUNTERS))
    engine.register_entity_type(AccountBehavior, prefix="account-")
    engine.add_event_publisher(publisher, name="crash", batch_size=batch_size, max_backoff=0.2)
    print("writing", flush=True)
    await asyncio.gather(*(account(engine, a) for a in ACCOUNTS))


if __name__ == "__main__":
    asyncio.run(main())
