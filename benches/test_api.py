"""pytest-benchmark suites for the Python API (per-call costs).

python -m pytest benches/test_api.py --benchmark-only
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import ego

from bank_pb2 import Credit, OpenAccount
from domain import AccountBehavior


@pytest.fixture(params=["memory", "rocksdb"])
def engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[ego.Engine]:  # type: ignore[no-untyped-def]
    store = ego.MemoryStore() if request.param == "memory" else ego.RocksDBStore(tmp_path / "db")
    with store, ego.Engine(store=store) as e:
        e.register_entity_type(AccountBehavior)
        e.send_command("a", OpenAccount(initial_balance=0))
        yield e


def test_send_command_sync(benchmark, engine: ego.Engine) -> None:  # type: ignore[no-untyped-def]
    credit = Credit(amount=1)
    benchmark(engine.send_command, "a", credit)


def test_get_state(benchmark, engine: ego.Engine) -> None:  # type: ignore[no-untyped-def]
    benchmark(engine.get_state, "a")


def test_send_1000_async_then_gather(benchmark, engine: ego.Engine) -> None:  # type: ignore[no-untyped-def]
    ids = [f"acc-{i}" for i in range(1000)]
    credit = Credit(amount=1)
    loop = asyncio.new_event_loop()

    async def open_all() -> None:
        await asyncio.gather(*(engine.send_command_async(i, OpenAccount(initial_balance=0)) for i in ids))

    async def round_() -> None:
        await asyncio.gather(*[engine.send_command_async(i, credit) for i in ids])

    loop.run_until_complete(open_all())
    benchmark(lambda: loop.run_until_complete(round_()))
    loop.close()
