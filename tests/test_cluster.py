"""ego.cluster on a 2-node Ray cluster: commands routed to shard actors and served, the
engine's API and its error types across processes."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_domain import count_credits, create_table, credit_counts, drop_table, run_transfers
from cluster_support import SHARD_RESOURCE, cluster_name, journal, ray_cluster
from waiting import wait_until

import ego
from ego.cluster import Cluster, EntityType, RunnerSettings, shard_for

from bank_pb2 import Credit, Debit, OpenAccount
from domain import AccountBehavior, InsufficientFunds

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[Any]:
    with ray_cluster(worker_nodes=2) as nodes:
        yield nodes


@pytest.fixture
def bank(ray_nodes: Any, pg_url: str) -> Iterator[Cluster]:
    with journal(pg_url) as store_options:
        cluster = Cluster(
            cluster_name(),
            pg_url,
            [EntityType(AccountBehavior, prefix="acc-")],
            shards=4,
            store_options=store_options,
            actor_options={"resources": {SHARD_RESOURCE: 1}},
        )
        with cluster:
            yield cluster
        cluster.shutdown()


def test_shard_for_is_stable_and_spreads() -> None:
    assert shard_for("acc-1", 4) == ego._ego.shard_of("acc-1", 4)
    counts = [0] * 4
    for i in range(400):
        counts[shard_for(f"acc-{i}", 4)] += 1
    assert min(counts) > 50
    with pytest.raises(ego.errors.InvalidEntityIdError):
        shard_for(7, 4)  # type: ignore[arg-type]


def test_commands_are_routed_to_shards_on_both_nodes_and_served(bank: Cluster) -> None:
    infos = bank.shard_info()
    assert [i.index for i in infos] == [0, 1, 2, 3]
    assert len({i.node_id for i in infos}) == 2, "the shards spread over both worker nodes"

    ids = [f"acc-{i}" for i in range(24)]
    for i in ids:
        state, revision = bank.send_command(i, OpenAccount(initial_balance=10))
        assert (state.account_id, state.balance, revision) == (i, 10, 1)
    outcomes = bank.send_commands([(i, Credit(amount=n)) for n, i in enumerate(ids)])
    assert [(s.balance, r) for s, r in outcomes] == [(10 + n, 2) for n in range(len(ids))]  # type: ignore[union-attr]
    for n, i in enumerate(ids):
        state, revision = bank.get_state(i)
        assert (state.balance, revision) == (10 + n, 2)

    # Each entity lives in the shard its id hashes to, and only there.
    live = {info.index: info.live_entities for info in bank.shard_info()}
    expected = [0] * 4
    for i in ids:
        expected[shard_for(i, 4)] += 1
    assert [live[s] for s in range(4)] == expected

    async def concurrently() -> list[Any]:
        return await asyncio.gather(*(bank.send_command_async(i, Credit(amount=1)) for i in ids for _ in range(5)))

    asyncio.run(concurrently())
    assert [bank.get_state(i)[0].balance for i in ids] == [15 + n for n in range(len(ids))]
    assert bank.stats()["calls"] < len(ids) * 5 + 3 * len(ids), "commands in flight together share calls"


def test_errors_cross_with_their_types(bank: Cluster) -> None:
    bank.send_command("acc-e", OpenAccount(initial_balance=5))
    # The behaviour's own exception: its own type and message.
    with pytest.raises(InsufficientFunds, match="balance 5 < 9"):
        bank.send_command("acc-e", Debit(amount=9))
    # ego's errors: the same classes, with their fields.
    with pytest.raises(ego.errors.EntityNotFoundError):
        bank.send_command("nobody-1", Credit(amount=1))
    with pytest.raises(ego.errors.InvalidEntityIdError):
        bank.send_command("acc-\x00", Credit(amount=1))
    bank.send_command("acc-e", Credit(amount=1), idempotency_key="k-1")
    with pytest.raises(ego.errors.IdempotencyKeyReusedError) as info:
        bank.send_command("acc-e", Credit(amount=2), idempotency_key="k-1")
    assert (info.value.entity_id, info.value.idempotency_key) == ("acc-e", "k-1")
    # A repeat under the key is answered without applying it again.
    state, revision = bank.send_command("acc-e", Credit(amount=1), idempotency_key="k-1")
    assert (state.balance, revision) == (6, 2)
    # Raised here, before anything is sent.
    with pytest.raises(ego.errors.InvalidMessageError):
        bank.send_command("acc-e", "not a message")  # type: ignore[arg-type]
    with pytest.raises(ego.errors.InvalidEntityIdError):
        bank.send_command(3, Credit(amount=1))  # type: ignore[arg-type]
    # Bulk: each slot its own outcome.
    outcomes = bank.send_commands([("acc-e", Credit(amount=1)), ("acc-e", Debit(amount=100)), ("nobody-2", Credit(amount=1))])
    assert isinstance(outcomes[0], tuple) and outcomes[0][0].balance == 7
    assert isinstance(outcomes[1], InsufficientFunds)
    assert isinstance(outcomes[2], ego.errors.EntityNotFoundError)
    with pytest.raises(InsufficientFunds):
        bank.send_commands([("acc-e", Debit(amount=100))], return_exceptions=False)

    async def async_errors() -> None:
        with pytest.raises(InsufficientFunds):
            await bank.send_command_async("acc-e", Debit(amount=100))
        with pytest.raises(ego.errors.EntityNotFoundError):
            await bank.get_state_async("nobody-3")

    asyncio.run(async_errors())
    with pytest.raises(ego.errors.CommandTimeoutError) as timeout:
        bank.send_command("acc-e", Credit(amount=1), timeout=0.0)
    assert timeout.value.started


def test_a_second_client_joins_the_running_shards(bank: Cluster, pg_url: str) -> None:
    bank.send_command("acc-j", OpenAccount(initial_balance=3))
    other = Cluster(
        bank.name, pg_url, [EntityType(AccountBehavior, prefix="acc-")], shards=4, store_options=bank.settings.store_options
    )
    with other:
        assert {i.incarnation for i in other.shard_info()} == {i.incarnation for i in bank.shard_info()}
        state, revision = other.send_command("acc-j", Credit(amount=2))
        assert (state.balance, revision) == (5, 2)
    assert bank.get_state("acc-j")[0].balance == 5


def test_the_runner_runs_projections_once_per_cluster_across_its_restarts(ray_nodes: Any, pg_url: str) -> None:
    table = f"credits_{cluster_name()}"
    create_table(pg_url, table)
    try:
        with journal(pg_url) as store_options:
            cluster = Cluster(
                cluster_name(),
                pg_url,
                [EntityType(AccountBehavior, prefix="acc-")],
                shards=2,
                store_options=store_options,
                actor_options={"resources": {SHARD_RESOURCE: 1}},
                runner=RunnerSettings(functools.partial(count_credits, table=table), store_options=store_options),
            )
            with cluster:
                ids = [f"acc-{i}" for i in range(6)]
                cluster.send_commands([(i, OpenAccount(initial_balance=0)) for i in ids])
                for n in range(3):
                    cluster.send_commands([(i, Credit(amount=1)) for i in ids[: n + 4]])
                cluster.wait_for_projection("credits", timeout=60)
                assert credit_counts(pg_url, table) == {"acc-0": 3, "acc-1": 3, "acc-2": 3, "acc-3": 3, "acc-4": 2, "acc-5": 1}
                assert cluster.projection_status("credits") == ("running", None)
                # The runner's process dies: Ray starts it again, the projection resumes from
                # its committed offset, and counts each credit once.
                first = cluster.runner_info()
                os.kill(first["pid"], signal.SIGKILL)
                cluster.send_commands([(i, Credit(amount=1)) for i in ids])
                wait_until(lambda: cluster.runner_info()["incarnation"] != first["incarnation"], what="a new runner")
                cluster.wait_for_projection("credits", timeout=60)
                assert credit_counts(pg_url, table) == {"acc-0": 4, "acc-1": 4, "acc-2": 4, "acc-3": 4, "acc-4": 3, "acc-5": 2}
            cluster.shutdown()
    finally:
        drop_table(pg_url, table)


@pytest.fixture
def transfers(ray_nodes: Any, pg_url: str) -> Iterator[Cluster]:
    """Accounts (``acc-``) and transfer desks (``request-``) in the shards, the transfer saga
    in the runner."""
    from transfer_saga import DeskBehavior

    with journal(pg_url) as store_options:
        cluster = Cluster(
            cluster_name(),
            pg_url,
            [EntityType(AccountBehavior, prefix="acc-"), EntityType(DeskBehavior, prefix="request-")],
            shards=2,
            store_options=store_options,
            actor_options={"resources": {SHARD_RESOURCE: 1}},
            runner=RunnerSettings(run_transfers, store_options=store_options),
        )
        with cluster:
            yield cluster
        cluster.shutdown()


def request(cluster: Cluster, transfer_id: str, source: str, target: str, amount: int) -> None:
    from transfers_pb2 import RequestTransfer

    cluster.send_command(
        f"request-{transfer_id}", RequestTransfer(transfer_id=transfer_id, source=source, target=target, amount=amount)
    )


def settled(cluster: Cluster, transfer_id: str) -> ego.SagaInfo | None:
    try:
        info = cluster.saga_status(transfer_id)
    except ego.errors.SagaNotFoundError:
        return None
    return info if info.status not in (ego.SagaStatus.RUNNING, ego.SagaStatus.COMPENSATING) else None


def test_sagas_run_in_the_runner_and_send_their_steps_to_the_shards(transfers: Cluster) -> None:
    transfers.send_commands([("acc-a", OpenAccount(initial_balance=100)), ("acc-b", OpenAccount(initial_balance=0))])
    request(transfers, "t1", "acc-a", "acc-b", 30)
    done = wait_until(lambda: settled(transfers, "t1"), what="transfer t1 settled", timeout=60)
    assert done.status is ego.SagaStatus.COMPLETED
    assert transfers.get_state("acc-a")[0].balance == 70
    assert transfers.get_state("acc-b")[0].balance == 30
    # The credit is rejected (the target is not open): the debit is compensated.
    request(transfers, "t2", "acc-a", "acc-nobody", 20)
    done = wait_until(lambda: settled(transfers, "t2"), what="transfer t2 settled", timeout=60)
    assert done.status is ego.SagaStatus.COMPENSATED
    assert transfers.get_state("acc-a")[0].balance == 70
    with pytest.raises(ego.errors.SagaNotFoundError):
        transfers.saga_status("t-never")

    async def status() -> ego.SagaInfo:
        return await transfers.saga_status_async("t1")

    assert asyncio.run(status()).status is ego.SagaStatus.COMPLETED


def test_sagas_resume_after_the_runner_is_killed_and_apply_each_step_once(transfers: Cluster) -> None:
    accounts = [f"acc-{i}" for i in range(10)]
    transfers.send_commands([(a, OpenAccount(initial_balance=1_000)) for a in accounts])
    ids = [f"k{i}" for i in range(60)]
    for n, transfer_id in enumerate(ids):
        request(transfers, transfer_id, accounts[n % 10], accounts[(n + 3) % 10], 1 + n % 7)
        if n == 20:
            os.kill(transfers.runner_info()["pid"], signal.SIGKILL)
    infos = [wait_until(lambda t=t: settled(transfers, t), what=f"transfer {t} settled", timeout=120) for t in ids]
    assert {i.status for i in infos} == {ego.SagaStatus.COMPLETED}
    # Each debit and each credit applied once: every balance is exact.
    expected = dict.fromkeys(accounts, 1_000)
    for n in range(len(ids)):
        expected[accounts[n % 10]] -= 1 + n % 7
        expected[accounts[(n + 3) % 10]] += 1 + n % 7
    assert {a: transfers.get_state(a)[0].balance for a in accounts} == expected
