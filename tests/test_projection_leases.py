"""One runner per projection (and per publisher) across processes on one PostgreSQL database.

Engines in several processes add the same transactional projection: the one holding the
projection's lease runs it, the others stand by ("standby") and take over when the owner dies
(within about the lease's ttl), stops (at once), or is stopped long enough to lose the lease
(then none of its commits lands). The read model counts every event exactly once throughout.

The two-process cases run `lease_child.py`; the test process writes the events.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from waiting import wait_until

import ego

from egotest.messages_pb2 import Note
from tally import Tally

HERE = Path(__file__).resolve().parent
ENTITIES = 10


@pytest.fixture
def prefix(pg_url: str) -> Iterator[str]:
    """Fresh table names (the store's and the read model's), dropped afterwards."""
    name = f"l{uuid.uuid4().hex[:8]}_"
    store = ego.PostgresStore(pg_url, table_prefix=name)  # creates the store's tables
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(f"CREATE TABLE {name}counts (id text PRIMARY KEY, n bigint NOT NULL)")
        db.execute(f"CREATE TABLE {name}runs (runner text PRIMARY KEY, n bigint NOT NULL)")
    yield name
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(f"DROP TABLE IF EXISTS {name}counts, {name}runs")
    cleanup = ego.PostgresStore(pg_url, table_prefix=name)
    cleanup.drop_tables()
    cleanup.close()


class Child:
    """`lease_child.py` running, its output lines collected as they come."""

    def __init__(self, url: str, prefix: str, ttl: float, mode: str = "projection", out: Path | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "lease_child.py"), url, prefix, str(ttl), mode, str(out or "-")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        wait_until(lambda: any(line.startswith("STATUS") for line in self.lines), what="the child to start")
        self.pid = self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def status(self) -> str:
        statuses = [line.split()[1] for line in list(self.lines) if line.startswith("STATUS ")]
        return statuses[-1] if statuses else ""

    def statuses(self) -> list[str]:
        return [line.split()[1] for line in list(self.lines) if line.startswith("STATUS ")]

    def stop(self) -> None:
        """Asks the child to stop its engine (which releases the lease) and waits for it."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self.finish()

    def finish(self) -> None:
        try:
            if self.proc.poll() is None:
                if self.proc.stdin is not None and not self.proc.stdin.closed:
                    self.proc.stdin.close()
                self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(timeout=10)
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None and not stream.closed:
                    stream.close()


class Writer:
    """An engine in the test process that writes the events (it runs no projection)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.store = ego.PostgresStore(url, table_prefix=prefix)
        self.engine = ego.Engine("writer", store=self.store)
        self.engine.start()
        self.engine.register_entity_type(Tally)
        self.written = 0

    def write(self, count: int) -> None:
        for _ in range(count):
            self.engine.send_command(f"e-{self.written % ENTITIES}", Note())
            self.written += 1

    def close(self) -> None:
        self.engine.stop()
        self.store.close()


@pytest.fixture
def writer(pg_url: str, prefix: str) -> Iterator[Writer]:
    w = Writer(pg_url, prefix)
    yield w
    w.close()


def counted(url: str, prefix: str) -> int:
    with psycopg.connect(url) as db:
        row = db.execute(f"SELECT coalesce(sum(n), 0) FROM {prefix}counts").fetchone()
        return int(row[0]) if row else 0


def runs(url: str, prefix: str) -> dict[str, int]:
    with psycopg.connect(url) as db:
        return {r: int(n) for r, n in db.execute(f"SELECT runner, n FROM {prefix}runs").fetchall()}


def caught_up(url: str, prefix: str, reader: str = "counts") -> bool:
    """Whether the reader's committed offsets reach every shard's head."""
    with psycopg.connect(url) as db:
        heads = dict(db.execute(f"SELECT shard, position FROM {prefix}shards").fetchall())
        offsets = dict(db.execute(f"SELECT shard, position FROM {prefix}offsets WHERE projection = %s", (reader,)).fetchall())
    return all(offsets.get(shard, 0) >= head for shard, head in heads.items())


def owner_and_standby(a: Child, b: Child) -> tuple[Child, Child]:
    wait_until(lambda: {a.status(), b.status()} == {"running", "standby"}, what=lambda: f"statuses {a.statuses()} {b.statuses()}")
    return (a, b) if a.status() == "running" else (b, a)


def exact(url: str, prefix: str, writer: Writer, reader: str = "counts") -> None:
    """Waits until the read model has caught up with the journal, then checks every event was
    counted exactly once."""
    wait_until(lambda: caught_up(url, prefix, reader), what="the projection to catch up")
    assert counted(url, prefix) == writer.written
    assert sum(runs(url, prefix).values()) == writer.written


def test_two_processes_count_each_event_once(pg_url: str, prefix: str, writer: Writer) -> None:
    a, b = Child(pg_url, prefix, 2.0), Child(pg_url, prefix, 2.0)
    try:
        owner, standby = owner_and_standby(a, b)
        writer.write(100)
        exact(pg_url, prefix, writer)
        # Only the owner ran it; the other stood by throughout.
        assert set(runs(pg_url, prefix)) == {str(owner.pid)}
        assert standby.statuses() == ["standby"]
        assert owner.statuses() == ["running"]
    finally:
        a.finish()
        b.finish()


def test_the_standby_takes_over_when_the_owner_is_killed(pg_url: str, prefix: str, writer: Writer) -> None:
    ttl = 2.0
    a, b = Child(pg_url, prefix, ttl), Child(pg_url, prefix, ttl)
    try:
        owner, standby = owner_and_standby(a, b)
        writer.write(50)
        wait_until(lambda: counted(pg_url, prefix) > 0, what="the owner to count")
        owner.proc.send_signal(signal.SIGKILL)
        owner.proc.wait()
        writer.write(50)
        # The lease expires at most ttl after its last renewal; the standby looks every ttl/3.
        wait_until(lambda: standby.status() == "running", timeout=ttl * 2 + 3, what="the standby to take over")
        exact(pg_url, prefix, writer)
        assert str(standby.pid) in runs(pg_url, prefix)
    finally:
        a.finish()
        b.finish()


def with_application_name(url: str, name: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"application_name": name})) if q)
    return urlunsplit(parts._replace(query=query))


def test_a_stopped_owner_is_replaced_and_none_of_its_commits_lands(pg_url: str, prefix: str, writer: Writer) -> None:
    """SIGSTOP the owner (in the middle of a commit when the timing allows, else with a batch
    in its handler), let the standby take over and finish, then SIGCONT it: what it had in hand
    is refused, it stands by, and every event is still counted once."""
    ttl = 1.5
    apps = [f"lease-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    a, b = (Child(with_application_name(pg_url, app), prefix, ttl) for app in apps)
    owner, standby = owner_and_standby(a, b)
    app = apps[0] if owner is a else apps[1]
    stopped = False
    try:
        with psycopg.connect(pg_url, autocommit=True) as db:

            def mid_commit() -> bool:
                row = db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'idle in transaction'",
                    (app,),
                ).fetchone()
                return bool(row and row[0])

            for _ in range(100):
                writer.write(5)
                owner.proc.send_signal(signal.SIGSTOP)
                stopped = True
                try:
                    wait_until(mid_commit, timeout=0.1, what="a commit in flight")
                    break
                except AssertionError:
                    if counted(pg_url, prefix) < writer.written - 5:
                        break  # stopped with a batch in hand: good enough
                    owner.proc.send_signal(signal.SIGCONT)
                    stopped = False
            assert stopped
            wait_until(lambda: standby.status() == "running", timeout=ttl * 4 + 5, what="the standby to take over")
            writer.write(20)
            exact(pg_url, prefix, writer)
            before = runs(pg_url, prefix)
            owner.proc.send_signal(signal.SIGCONT)
            stopped = False
            wait_until(lambda: owner.status() == "standby", timeout=ttl * 4 + 5, what="the resumed owner to stand by")
            writer.write(10)
            exact(pg_url, prefix, writer)
            after = runs(pg_url, prefix)
            # The resumed process committed nothing more; the new owner counted the rest.
            # (It may have committed nothing at all if it was stopped before its first commit.)
            assert after.get(str(owner.pid), 0) == before.get(str(owner.pid), 0)
            assert owner.statuses() == ["running", "standby"]
    finally:
        if stopped:
            owner.proc.send_signal(signal.SIGCONT)
        a.finish()
        b.finish()


def test_stopping_the_owner_hands_over_at_once(pg_url: str, prefix: str, writer: Writer) -> None:
    ttl = 60.0  # far longer than the wait below: only a release hands over in time
    a, b = Child(pg_url, prefix, ttl), Child(pg_url, prefix, ttl)
    try:
        owner, standby = owner_and_standby(a, b)
        writer.write(30)
        exact(pg_url, prefix, writer)
        owner.stop()
        assert "STOPPED" in owner.lines
        # The standby looks every ttl/3 = 20 s: it took the released lease at its first look.
        wait_until(lambda: standby.status() == "running", timeout=25, what="the standby to take over")
        writer.write(30)
        exact(pg_url, prefix, writer)
    finally:
        a.finish()
        b.finish()


def test_two_processes_publish_each_event_once(pg_url: str, prefix: str, writer: Writer, tmp_path: Path) -> None:
    outs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    a, b = (Child(pg_url, prefix, 2.0, "publisher", out) for out in outs)
    try:
        owner, standby = owner_and_standby(a, b)
        writer.write(60)
        wait_until(lambda: caught_up(pg_url, prefix, "publisher:counts"), what="the publisher to catch up")
        published = [line for out in outs if out.exists() for line in out.read_text().splitlines()]
        assert len(published) == 60 == len(set(published))
        owner.stop()
        wait_until(lambda: standby.status() == "running", timeout=20, what="the standby publisher to take over")
        writer.write(20)
        wait_until(lambda: caught_up(pg_url, prefix, "publisher:counts"), what="the publisher to catch up")
        published = [line for out in outs if out.exists() for line in out.read_text().splitlines()]
        assert len(published) == 80 == len(set(published))
    finally:
        a.finish()
        b.finish()


def test_two_engines_in_one_process_share_the_lease(pg_url: str, prefix: str) -> None:
    stores = [ego.PostgresStore(pg_url, table_prefix=prefix) for _ in range(2)]
    engines = [ego.Engine(f"e{i}", store=s) for i, s in enumerate(stores)]
    seen: list[list[str]] = [[], []]
    try:
        for i, engine in enumerate(engines):
            engine.start()
            engine.add_projection("p", lambda events, i=i: seen[i].extend(e.persistence_id for e in events), lease_ttl=5)
        assert engines[0].projection_status("p") == ("running", None)
        assert engines[1].projection_status("p") == ("standby", None)
        assert not engines[1].is_projection_running("p")
        engines[0].register_entity_type(Tally)
        for n in range(10):
            engines[0].send_command(f"x-{n}", Note())
        engines[0].wait_for_projection("p", timeout=30)
        # A standby engine waits for the owner's progress (the offsets are shared).
        engines[1].wait_for_projection("p", timeout=30)
        assert sorted(seen[0]) == sorted(f"x-{n}" for n in range(10))
        assert seen[1] == []
        engines[0].remove_projection("p")
        wait_until(lambda: engines[1].projection_status("p")[0] == "running", timeout=10, what="the handover")
    finally:
        for engine in engines:
            engine.stop()
        for s in stores:
            s.close()


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan"), float("inf"), "10", True])
def test_lease_ttl_is_checked(ttl: object) -> None:
    with ego.Engine("e", store=ego.MemoryStore()) as engine, pytest.raises(ego.errors.ConfigurationError, match="lease_ttl"):
        engine.add_projection("p", lambda events: None, lease_ttl=ttl)  # type: ignore[arg-type]


def test_single_process_stores_always_hold_the_lease(tmp_path: Path) -> None:
    for store in (ego.MemoryStore(), ego.RocksDBStore(tmp_path / "db")):
        engines = [ego.Engine(f"e{i}", store=store) for i in range(2)]
        try:
            for engine in engines:
                engine.start()
                engine.add_projection("p", lambda events: None)
            # No lease on a store of one process: each engine runs its projection.
            assert [e.projection_status("p") for e in engines] == [("running", None)] * 2
        finally:
            for engine in engines:
                engine.stop()


def test_offsets_moved_by_hand_go_under_the_lease(pg_url: str, prefix: str) -> None:
    """`set_projection_offset` and `rebuild_projection` write under the projection's lease: the
    owner's process moves them and goes on running (a standby never takes over meanwhile);
    another process is refused with a typed error and nothing changes (before, its write went
    through and the owner overwrote it at its next commit)."""
    stores = [ego.PostgresStore(pg_url, table_prefix=prefix) for _ in range(2)]
    engines = [ego.Engine(f"e{i}", store=s, shards=2) for i, s in enumerate(stores)]
    seen: list[list[str]] = [[], []]
    try:
        for i, engine in enumerate(engines):
            engine.start()
            engine.add_projection(
                "p", lambda events, i=i: seen[i].extend(e.persistence_id for e in events), lease_ttl=5, poll_interval=0.02
            )
        assert [e.projection_status("p")[0] for e in engines] == ["running", "standby"]
        engines[0].register_entity_type(Tally)
        ids = [f"x-{n}" for n in range(10)]
        for entity_id in ids:
            engines[0].send_command(entity_id, Note())
        engines[0].wait_for_projection("p", timeout=30)
        assert sorted(seen[0]) == sorted(ids)
        shard = ego._ego.shard_of(ids[0], 2)
        in_shard = sorted(i for i in ids if ego._ego.shard_of(i, 2) == shard)

        # Another process: refused, nothing changed, both runners as they were.
        with pytest.raises(ego.errors.ProjectionLeaseHeldError) as refused:
            engines[1].set_projection_offset("p", shard, 0)
        assert refused.value.projection == "p"
        with pytest.raises(ego.errors.ProjectionLeaseHeldError):
            engines[1].rebuild_projection("p")
        assert [e.projection_status("p")[0] for e in engines] == ["running", "standby"]
        assert sum(s.events_behind for s in engines[1].projection_lag("p").values()) == 0
        assert sorted(seen[0]) == sorted(ids)

        # The owner's process: the shard is handled again from the start, by the same runner.
        engines[0].set_projection_offset("p", shard, 0)
        wait_until(lambda: len(seen[0]) == len(ids) + len(in_shard), what="the shard's events again")
        assert sorted(seen[0][len(ids) :]) == in_shard
        engines[0].rebuild_projection("p")
        wait_until(lambda: len(seen[0]) == 2 * len(ids) + len(in_shard), what="every event again")
        assert sorted(seen[0][len(ids) + len(in_shard) :]) == sorted(ids)
        assert [e.projection_status("p")[0] for e in engines] == ["running", "standby"]
        assert seen[1] == []

        # The owner paused: its lease is free, so the other process may move the offsets.
        engines[0].pause_projection("p")
        wait_until(lambda: engines[1].projection_status("p")[0] == "running", timeout=10, what="the handover")
        engines[1].set_projection_offset("p", shard, 0)
        wait_until(lambda: sorted(seen[1]) == in_shard, what="the other process handling the shard again")
        with pytest.raises(ego.errors.ProjectionLeaseHeldError):
            engines[0].set_projection_offset("p", shard, 0)
        assert engines[0].projection_status("p")[0] == "paused"
    finally:
        for engine in engines:
            engine.stop()
        for s in stores:
            s.close()
