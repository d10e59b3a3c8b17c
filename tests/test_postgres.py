"""The engine on PostgreSQL: entities, several engines sharing one database, losing the
server under load, and a connection cut after COMMIT was sent (RELIABILITY.md #4, #5)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from pgcluster import Cluster
from proxy import Proxy
from test_durable_state import CounterBehavior
from waiting import wait_until

import ego
from ego import errors
from ego.testkit.conformance import make_event

from bank_pb2 import Credit, OpenAccount
from domain import AccountBehavior
from egotest.messages_pb2 import Counter, Increment

#: Seconds the server stays down in the outage test.
OUTAGE = 1.0


@pytest.fixture
def prefix(pg_url: str) -> Iterator[str]:
    p = f"t{uuid.uuid4().hex[:10]}_"
    yield p
    ego.PostgresStore(pg_url, table_prefix=p).drop_tables()


def test_entities_on_postgres_survive_a_restart(pg_url: str, prefix: str) -> None:
    with ego.Engine("pg", store=ego.PostgresStore(pg_url, table_prefix=prefix)) as engine:
        engine.register_entity_type(AccountBehavior, prefix="acc-", snapshot_interval=3)
        engine.register_entity_type(CounterBehavior, prefix="counter-")
        engine.send_command("acc-1", OpenAccount(initial_balance=10))
        for _ in range(7):
            engine.send_command("acc-1", Credit(amount=1))
        engine.send_command("counter-1", Increment(by=5))
    with ego.Engine("pg", store=ego.PostgresStore(pg_url, table_prefix=prefix)) as engine:
        engine.register_entity_type(AccountBehavior, prefix="acc-")
        engine.register_entity_type(CounterBehavior, prefix="counter-")
        state, revision = engine.get_state("acc-1")
        assert (state.balance, revision) == (17, 8)
        assert engine.get_state("counter-1") == (Counter(value=5), 1)
        (store,) = engine.stores
        assert store.latest_snapshot("acc-1").sequence_number == 6


def test_two_engines_sharing_a_database_refuse_a_stale_copy(pg_url: str, prefix: str) -> None:
    # Two engines (as two processes would) with their own store objects on one database.
    with (
        ego.Engine("one", store=ego.PostgresStore(pg_url, table_prefix=prefix)) as one,
        ego.Engine("two", store=ego.PostgresStore(pg_url, table_prefix=prefix)) as two,
    ):
        for e in (one, two):
            e.register_entity_type(AccountBehavior)
        one.send_command("shared", OpenAccount(initial_balance=0))
        assert two.get_state("shared")[1] == 1  # two's copy is live at revision 1
        one.send_command("shared", Credit(amount=5))  # revision 2, behind two's back
        with pytest.raises(errors.ConcurrencyError):
            two.send_command("shared", Credit(amount=1))
        # two reloaded the stored history and continues after it.
        state, revision = two.send_command("shared", Credit(amount=1))
        assert (state.balance, revision) == (6, 3)


def test_immediate_stop_of_the_server_under_load_loses_nothing_acknowledged() -> None:
    cluster = Cluster()
    try:
        cluster.start()
        store = ego.PostgresStore(cluster.url, retry_for=30.0)
        names = [f"acc-{i}" for i in range(4)]
        acked: dict[str, int] = {}
        failures: list[BaseException] = []
        stop = threading.Event()
        after_restart = threading.Event()
        in_flight: set[str] = set()
        acked_after_restart: dict[str, int] = dict.fromkeys(names, 0)

        with ego.Engine("crash", store=store) as engine:
            engine.register_entity_type(AccountBehavior)

            def load(name: str) -> None:
                engine.send_command(name, OpenAccount(initial_balance=0))
                while not stop.is_set():
                    restarted = after_restart.is_set()
                    in_flight.add(name)
                    try:
                        _, revision = engine.send_command(name, Credit(amount=1))
                        acked[name] = revision
                        if restarted:
                            acked_after_restart[name] += 1
                    except errors.EgoError as e:
                        failures.append(e)
                    finally:
                        in_flight.discard(name)

            threads = [threading.Thread(target=load, args=(name,)) for name in names]
            for t in threads:
                t.start()
            try:
                wait_until(lambda: sum(acked.values()) >= 100, what="the load to run")
                cluster.stop("immediate")
                # Every writer has a command waiting on the stopped server; the server then
                # stays down for OUTAGE seconds (the length of the fault, not a wait for anything).
                wait_until(lambda: len(in_flight) == len(names), what="every writer to wait on the stopped server")
                time.sleep(OUTAGE)
                cluster.start()
                after_restart.set()
                wait_until(lambda: min(acked_after_restart.values()) >= 20, what="every writer's commands after the restart")
            finally:
                stop.set()
                for t in threads:
                    t.join()
            print(
                f"acked {sum(acked.values())} commands, {sum(acked_after_restart.values())} after the restart; failures: {[type(f).__name__ for f in failures]}"
            )
            assert min(acked_after_restart.values()) > 0, "the engine did not reconnect"
            for f in failures:
                # Only a write whose COMMIT was in flight may fail, and it says so.
                assert isinstance(f, (errors.OutcomeUnknownError, errors.StoreError)), f
        with ego.PostgresStore(cluster.url) as check:
            for name, revision in acked.items():
                events = check.replay_events(name)
                assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
                assert len(events) >= revision, f"{name}: acknowledged revision {revision} lost"
    finally:
        cluster.destroy()


def test_connection_cut_after_commit_is_outcome_unknown_and_a_retry_neither_duplicates_nor_gaps(pg_url: str, prefix: str) -> None:
    port = int(pg_url.rsplit(":", 1)[1].split("/")[0])
    proxy = Proxy(port)
    try:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{pg_url.rsplit('/', 1)[1]}"
        store = ego.PostgresStore(url, table_prefix=prefix, retry_for=5.0)
        batch = [make_event("cut", 1), make_event("cut", 2)]
        proxy.cut_after_commit.set()
        with pytest.raises(errors.OutcomeUnknownError):
            store.write_events(batch)
        assert proxy.cuts == 1
        # Retry the same write: applied once, whichever way the first one went.
        with contextlib.suppress(errors.ConcurrencyError):
            store.write_events(batch)
        assert [e.sequence_number for e in store.replay_events("cut")] == [1, 2]

        # Through the engine: the caller is told the outcome is unknown; the entity reloads
        # and the stream stays gapless.
        with ego.Engine("cut", store=store) as engine:
            engine.register_entity_type(AccountBehavior)
            engine.send_command("acc", OpenAccount(initial_balance=0))
            proxy.cut_after_commit.set()
            with pytest.raises(errors.OutcomeUnknownError):
                engine.send_command("acc", Credit(amount=5))
            state, revision = engine.get_state("acc")
            assert (state.balance, revision) in {(5, 2), (0, 1)}
            # The cut COMMIT may still complete on the server after the entity reloaded: the
            # next write then conflicts once (the entity reloads again) and the retry lands.
            for _ in range(3):
                try:
                    state, revision = engine.send_command("acc", Credit(amount=1))
                    break
                except errors.ConcurrencyError:
                    continue
            assert state.balance in (1, 6)
            assert [e.sequence_number for e in store.replay_events("acc")] == list(range(1, revision + 1))
    finally:
        proxy.close()


def test_bad_schema_and_prefix_names_are_refused(pg_url: str) -> None:
    for kwargs in ({"schema": "x; DROP TABLE y"}, {"table_prefix": 'a"b'}, {"schema": "9lives"}):
        with pytest.raises(errors.ConfigurationError):
            ego.PostgresStore(pg_url, **kwargs)  # type: ignore[arg-type]


def test_head_reads_that_arrive_together_each_get_their_own_ids_head(pg_url: str, prefix: str) -> None:
    # Concurrent reads of the journal head share queries (store/postgres/heads.rs); each
    # caller still gets the head of the id it asked for, 0 for an id never written.
    store = ego.PostgresStore(pg_url, table_prefix=prefix, pool_size=2)
    try:
        for i in range(60):
            store.write_events([make_event(f"h-{i}", seq) for seq in range(1, i % 7 + 2)])
        wrong: list[tuple[str, int]] = []

        def read(worker: int) -> None:
            for round_ in range(20):
                i = (worker * 7 + round_) % 70
                head = store.highest_sequence_number(f"h-{i}")
                if head != (i % 7 + 1 if i < 60 else 0):
                    wrong.append((f"h-{i}", head))

        threads = [threading.Thread(target=read, args=(w,)) for w in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wrong == []
    finally:
        store.close()
