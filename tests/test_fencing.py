"""Fencing of the PostgreSQL store (`PostgresStore(url, fence=NAME)`): once another store
opened the same fence, none of the old store's writes commits, whatever it writes and however
its process was stopped; the old store gets `FencedError` and stays fenced.

The two-process cases run `fence_child.py` as the old incarnation: it keeps writing after the
new one opened (none of its writes lands), and it is stopped with SIGSTOP in the middle of a
write, replaced, then resumed (its write is refused).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from waiting import wait_until

import ego
from ego.v1.envelopes_pb2 import DataKey

from egotest.messages_pb2 import Note
from tally import Tally

HERE = Path(__file__).resolve().parent


@pytest.fixture
def prefix(pg_url: str) -> Iterator[str]:
    """Fresh table names, dropped afterwards."""
    name = f"f{uuid.uuid4().hex[:8]}_"
    yield name
    cleanup = ego.PostgresStore(pg_url, table_prefix=name)
    cleanup.drop_tables()
    cleanup.close()


def test_a_newer_store_fences_the_older_off(pg_url: str, prefix: str) -> None:
    old = ego.PostgresStore(pg_url, table_prefix=prefix, fence="shard-1")
    other = ego.PostgresStore(pg_url, table_prefix=prefix, fence="shard-2")
    assert old.fence == ("shard-1", 1)
    with ego.Engine("old", store=old) as engine:
        engine.register_entity_type(Tally)
        assert engine.send_command("t-1", Note())[1] == 1
        old.write_offsets("p", [(0, 5)])

        new = ego.PostgresStore(pg_url, table_prefix=prefix, fence="shard-1")
        assert new.fence == ("shard-1", 2)
        with pytest.raises(ego.errors.FencedError) as refused:
            engine.send_command("t-1", Note())
        assert (refused.value.fence, refused.value.epoch, refused.value.current_epoch) == ("shard-1", 1, 2)
        assert "not applied" in str(refused.value)
        # It stays fenced, for every kind of write; reads still work.
        with pytest.raises(ego.errors.FencedError):
            engine.send_command("t-2", Note())
        with pytest.raises(ego.errors.FencedError):
            old.write_offsets("p", [(0, 6)])
        with pytest.raises(ego.errors.FencedError):
            old.reset_offsets("p")
        with pytest.raises(ego.errors.FencedError):
            old.delete_events("t-1", 1)
        with pytest.raises(ego.errors.FencedError):
            old.record_erasure("t-1", 1)
        with pytest.raises(ego.errors.FencedError):
            old._put_key(DataKey(persistence_id="t-1", key_id="k", master_key_id="m", wrapped_key=b"x").SerializeToString())
        assert old.read_offsets("p") == [(0, 5)]
        assert old.highest_sequence_number("t-1") == 1
        # Another fence name is not concerned.
        other.write_offsets("q", [(0, 1)])

    with ego.Engine("new", store=new) as engine:
        engine.register_entity_type(Tally)
        assert engine.send_command("t-1", Note())[1] == 2
        new.write_offsets("p", [(0, 7)])
        assert new.read_offsets("p") == [(0, 7)]
    for s in (old, new, other):
        s.close()


def test_a_store_without_fence_is_not_fenced(pg_url: str, prefix: str) -> None:
    plain = ego.PostgresStore(pg_url, table_prefix=prefix)
    fenced = ego.PostgresStore(pg_url, table_prefix=prefix, fence="shard-1")
    ego.PostgresStore(pg_url, table_prefix=prefix, fence="shard-1").close()
    assert plain.fence is None
    plain.write_offsets("p", [(0, 1)])
    with pytest.raises(ego.errors.FencedError):
        fenced.write_offsets("p", [(0, 2)])
    assert plain.read_offsets("p") == [(0, 1)]
    plain.close()
    fenced.close()


def test_fence_settings_are_checked(pg_url: str, prefix: str, tmp_path: Path) -> None:
    with pytest.raises(ego.errors.ConfigurationError):
        ego.PostgresStore(pg_url, table_prefix=prefix, fence="")
    with pytest.raises(ego.errors.ConfigurationError):
        ego.PostgresStore(pg_url, table_prefix=prefix, fence="a\nb")
    with pytest.raises(ego.errors.ConfigurationError):
        ego.PostgresStore(pg_url, table_prefix=prefix, fence="x", fence_timeout=0)
    with pytest.raises(ego.errors.ConfigurationError):
        ego.stores.NativeStore("rocksdb", tmp_path / "db", fence="x")


class Child:
    """`fence_child.py` running, its output lines collected as they come."""

    def __init__(self, url: str, prefix: str, fence: str, fence_timeout: float, entities: int, refusals: int) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "fence_child.py"), url, prefix, fence, str(fence_timeout), str(entities), str(refusals)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def acks(self) -> list[tuple[str, int]]:
        return [(p[1], int(p[2])) for p in (line.split() for line in list(self.lines)) if p[0] == "ACK"]

    def errors(self) -> list[str]:
        return [line.split()[2] for line in list(self.lines) if line.startswith("ERR ")]

    def finish(self) -> None:
        try:
            assert self.proc.wait(timeout=120) == 0, self.lines[-5:]
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(timeout=10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def heads(store: ego.stores.NativeStore, entities: int) -> dict[str, int]:
    return {f"fenced-{i}": store.highest_sequence_number(f"fenced-{i}") for i in range(entities)}


def check_none_landed(child: Child, at_open: dict[str, int], new: ego.stores.NativeStore, entities: int) -> None:
    """Nothing the old process wrote after the new store opened is in the journal; what it
    acknowledged is; every refusal is a FencedError."""
    for name, revision in child.acks():
        assert revision <= at_open[name], f"{name} revision {revision} acknowledged after the fence moved"
    assert heads(new, entities) == at_open
    assert child.errors(), "the old process saw no refusal"
    assert set(child.errors()) == {"FencedError"}, child.errors()


def test_the_old_process_keeps_writing_and_nothing_lands(pg_url: str, prefix: str) -> None:
    entities = 3
    child = Child(pg_url, prefix, "svc", 5.0, entities, refusals=30)
    try:
        wait_until(lambda: child.lines and child.lines[0].startswith("READY"), what="the child to start")
        epoch = int(child.lines[0].split()[1])
        wait_until(lambda: len(child.acks()) >= 30, what="30 acknowledged commands")
        new = ego.PostgresStore(pg_url, table_prefix=prefix, fence="svc")
        assert new.fence == ("svc", epoch + 1)
        at_open = heads(new, entities)
        assert sum(at_open.values()) >= 30
    finally:
        child.finish()
    check_none_landed(child, at_open, new, entities)
    # The new holder carries on from what the journal has.
    with ego.Engine("new", store=new) as engine:
        engine.register_entity_type(Tally)
        assert engine.send_command("fenced-0", Note())[1] == at_open["fenced-0"] + 1
    new.close()


def with_application_name(url: str, name: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"application_name": name})) if q)
    return urlunsplit(parts._replace(query=query))


def test_a_process_stopped_mid_write_is_refused_when_it_resumes(pg_url: str, prefix: str) -> None:
    entities, fence_timeout = 4, 1.0
    app = f"fence-{uuid.uuid4().hex[:8]}"
    child = Child(with_application_name(pg_url, app), prefix, "stopped", fence_timeout, entities, refusals=20)
    caught = False
    try:
        wait_until(lambda: child.lines and child.lines[0].startswith("READY"), what="the child to start")
        wait_until(lambda: len(child.acks()) >= 10, what="10 acknowledged commands")
        with psycopg.connect(pg_url, autocommit=True) as db:

            def mid_write() -> bool:
                # A session of the child inside a write transaction (it stays so while stopped).
                row = db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'idle in transaction'",
                    (app,),
                ).fetchone()
                return bool(row and row[0])

            for _ in range(200):
                child.proc.send_signal(signal.SIGSTOP)
                try:
                    wait_until(mid_write, timeout=0.3, what="a write in flight")
                    caught = True
                    break
                except AssertionError:
                    acked = len(child.acks())
                    child.proc.send_signal(signal.SIGCONT)
                    wait_until(lambda acked=acked: len(child.acks()) > acked, what="the child to go on")  # type: ignore[misc]
            assert caught, "never stopped the child in the middle of a write"
            started = time.monotonic()
            new = ego.PostgresStore(pg_url, table_prefix=prefix, fence="stopped")
            waited = time.monotonic() - started
            at_open = heads(new, entities)
            # The server ended the stopped transaction after fence_timeout; not much more.
            assert waited < fence_timeout + 10, waited
            # Every stopped write transaction of the child is ended by the server within its
            # idle timeout: the one holding the fence row ended before the open returned;
            # another one (the child has several sessions) that had not reached the fence row
            # yet ends on its own timer, possibly just after.
            wait_until(lambda: not mid_write(), timeout=fence_timeout + 5, what="the stopped transactions to end")
    finally:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGCONT)
        child.finish()
    check_none_landed(child, at_open, new, entities)
    new.close()


def test_the_fence_waits_for_writes_in_flight(pg_url: str, prefix: str) -> None:
    """Opening a fence while the old holder writes in this process: every write either
    committed before the new epoch (and is in the journal) or was refused."""
    old = ego.PostgresStore(pg_url, table_prefix=prefix, fence="busy")
    results: dict[str, list[int | str]] = {}
    with ego.Engine("old", store=old) as engine:
        engine.register_entity_type(Tally)

        def run(name: str) -> None:
            out: list[int | str] = []
            results[name] = out
            while True:
                try:
                    out.append(engine.send_command(name, Note())[1])
                except ego.errors.FencedError:
                    out.append("fenced")
                    return

        threads = [threading.Thread(target=run, args=(f"busy-{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(len(v) for v in results.values()) >= 200, what="200 writes")
        new = ego.PostgresStore(pg_url, table_prefix=prefix, fence="busy")
        at_open = {name: new.highest_sequence_number(name) for name in results}
        for t in threads:
            t.join()
    for name, out in results.items():
        acked = [r for r in out if r != "fenced"]
        assert out[-1] == "fenced", name
        assert acked == list(range(1, len(acked) + 1))
        assert at_open[name] == len(acked), (name, at_open[name], len(acked))
        assert new.highest_sequence_number(name) == at_open[name]
    old.close()
    new.close()
