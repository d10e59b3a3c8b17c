"""One entity processes one command at a time, in the order each sender sent them, however
many threads and coroutines send concurrently."""

from __future__ import annotations

import asyncio
import threading
from typing import ClassVar

import ego

from bank_pb2 import Account, AccountCredited, Credit


class Recording(ego.EventSourcedBehavior):
    """Records the order it handles commands in and detects overlapping calls."""

    seen: ClassVar[list[tuple[int, int]]] = []
    overlapped: ClassVar[bool] = False
    _busy: ClassVar[bool] = False

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Account:
        return Account(account_id=self.entity_id)

    def handle_command(self, command: Credit, state: Account) -> list[AccountCredited]:
        cls = type(self)
        if cls._busy:
            cls.overlapped = True
        cls._busy = True
        # amount encodes (sender, index)
        cls.seen.append(divmod(command.amount, 100_000))
        cls._busy = False
        return [AccountCredited(amount=1)]

    def handle_event(self, event: AccountCredited, state: Account) -> Account:
        state.balance += event.amount
        return state


def check(senders: int, per: int, engine: ego.Engine) -> None:
    assert not Recording.overlapped
    state, revision = engine.get_state("hot")
    assert (state.balance, revision) == (senders * per, senders * per)
    for s in range(senders):
        assert [i for (x, i) in Recording.seen if x == s] == list(range(per))
    (store,) = engine.stores
    assert [e.sequence_number for e in store.replay_events("hot")] == list(range(1, senders * per + 1))


def test_many_threads_one_entity(store_kind: str, make_store) -> None:
    Recording.seen, Recording.overlapped = [], False
    senders, per = 8, 300
    with ego.Engine(store=make_store()) as engine:
        engine.entity(Recording("hot"))
        barrier = threading.Barrier(senders)

        def send(s: int) -> None:
            barrier.wait()
            for i in range(per):
                engine.send_command("hot", Credit(amount=s * 100_000 + i))

        threads = [threading.Thread(target=send, args=(s,)) for s in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        check(senders, per, engine)


def test_many_coroutines_one_entity(store_kind: str, make_store) -> None:
    Recording.seen, Recording.overlapped = [], False
    senders, per = 20, 100

    async def main() -> None:
        async with ego.Engine(store=make_store()) as engine:
            engine.entity(Recording("hot"))

            async def send(s: int) -> None:
                for i in range(per):
                    await engine.send_command_async("hot", Credit(amount=s * 100_000 + i))

            await asyncio.gather(*(send(s) for s in range(senders)))
            check(senders, per, engine)

    asyncio.run(main())


def test_async_fire_many_then_gather_keeps_per_entity_order(store_kind: str, make_store) -> None:
    Recording.seen, Recording.overlapped = [], False

    async def main() -> None:
        async with ego.Engine(store=make_store()) as engine:
            engine.entity(Recording("hot"))
            futures = [engine.send_command_async("hot", Credit(amount=i)) for i in range(500)]
            results = await asyncio.gather(*futures)
            assert [r[1] for r in results] == list(range(1, 501))
            assert [i for (_, i) in Recording.seen] == list(range(500))

    asyncio.run(main())
