"""Storage faults on the RocksDB store: a failing fdatasync (RELIABILITY.md #2), a full disk
(#3), flipped or truncated bytes in every kind of store file (#10). Each caller must be told
the truth: success, "nothing written", or "outcome unknown"; nothing acknowledged is lost and
no wrong byte is ever read back.

The fdatasync tests need Debian's fiu-utils and the disk-full test needs root (a tmpfs);
scripts/bootstrap.sh installs fiu-utils, and CI runs as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ego

from bank_pb2 import Account, AccountCredited, AccountOpened
from domain import AccountBehavior
from egotest.messages_pb2 import Counter, Note

HERE = Path(__file__).resolve().parent
CHILD = HERE / "fault_child.py"
HAS_FIU = shutil.which("fiu-run") is not None and shutil.which("fiu-ctrl") is not None
needs_fiu = pytest.mark.skipif(not HAS_FIU, reason="fiu-utils is not installed (scripts/bootstrap.sh installs it as root)")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def child_with_failing_sync(db: Path, mode: str, count: int) -> list[str]:
    """Runs fault_child.py under fiu, makes every fdatasync fail once its accounts are open,
    lets it send its commands and returns its output lines."""
    child = subprocess.Popen(
        ["fiu-run", "-x", sys.executable, str(CHILD), str(db), mode, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "READY"
    subprocess.run(["fiu-ctrl", "-c", "enable name=posix/io/sync/fdatasync", str(child.pid)], check=True)
    out, _ = child.communicate("go\n", timeout=120)
    assert child.returncode == 0, out
    lines = out.splitlines()
    assert lines[-1] == "CLOSED", out
    return lines[:-1]


def stored_account(db: Path, entity: str) -> tuple[Account, int]:
    """The account as a fresh engine recovers it from the store, and its revision."""
    with ego.RocksDBStore(db) as store, ego.Engine("check", store=store) as engine:
        engine.register_entity_type(AccountBehavior)
        state, revision = engine.get_state(entity)
        assert isinstance(state, Account)
        return state, revision


@needs_fiu
def test_failed_fdatasync_is_outcome_unknown_and_fences_the_store(tmp_path: Path) -> None:
    db = tmp_path / "db"
    first, second = child_with_failing_sync(db, "sync", 1)
    # The credit may be in the log: its caller must not be told "nothing written".
    assert first.startswith("ERR a OutcomeUnknownError "), first
    assert "refuses writes until it is closed and reopened" in first
    # The store refuses every later write until reopened: definitely not applied.
    assert second.startswith("ERR a StoreError "), second
    assert "close and reopen" in second
    state, revision = stored_account(db, "a")
    # After reopening without the fault the store tells what happened; the refused write is
    # not in it.
    assert (revision, state.balance) in {(1, 100), (2, 150)}, (revision, state.balance)


@needs_fiu
def test_failed_fdatasync_under_a_hundred_callers_tells_each_the_truth(tmp_path: Path) -> None:
    db = tmp_path / "db"
    lines = child_with_failing_sync(db, "group", 100)
    assert len(lines) == 100
    told: dict[str, str] = {}
    for line in lines:
        kind, entity, *rest = line.split(" ", 3)
        told[entity] = "OK" if kind == "OK" else rest[0]
    assert "OutcomeUnknownError" in told.values(), told
    assert set(told.values()) <= {"OK", "OutcomeUnknownError", "StoreError"}, told
    with ego.RocksDBStore(db) as store:
        for entity, what in told.items():
            applied = store.highest_sequence_number(entity) == 2
            if what == "OK":
                assert applied, f"{entity}: acknowledged credit lost"
            elif what == "StoreError":
                assert not applied, f"{entity}: told nothing was written, yet the credit is stored"


class Blobs(ego.EventSourcedBehavior[Note, Note, Counter]):
    """Each command `Note(n, blob)` is stored as one event carrying the blob."""

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Counter:
        return Counter()

    def handle_command(self, command: Note, state: Counter) -> list[Note]:
        return [Note(n=command.n, blob=command.blob)]

    def handle_event(self, event: Note, state: Counter) -> Counter:
        state.value = event.n
        return state


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path) -> None:
    """Writes `path` until the file system is full."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\xa5" * chunk)


def blob(n: int) -> bytes:
    return n.to_bytes(4, "big") * (64 << 10)


@needs_root
def test_disk_full_is_storage_full_and_writes_resume_when_space_is_back(tmp_path: Path) -> None:
    # RocksDB resumes once the free space could hold its memtables (64 MiB with ego's
    # settings): the file system is larger than that, then filled.
    with small_tmpfs(tmp_path / "mnt", "160m") as mnt:
        store = ego.RocksDBStore(mnt / "db")
        try:
            with ego.Engine("full", store=store) as engine:
                engine.register_entity_type(Blobs)
                acked: list[int] = []
                refused: list[int] = []
                fill(mnt / "filler")
                n = 0
                while not refused:
                    n += 1
                    assert n < 2000, "the disk never filled up"
                    try:
                        engine.send_command("big", Note(n=n, blob=blob(n)))
                        acked.append(n)
                    except ego.errors.StorageFullError:
                        refused.append(n)
                # Still full: still refused, at once and with the same type.
                for _ in range(3):
                    n += 1
                    with pytest.raises(ego.errors.StorageFullError):
                        engine.send_command("big", Note(n=n, blob=blob(n)))
                    refused.append(n)
                (mnt / "filler").unlink()
                # The same engine and store resume by themselves (RocksDB checks the space
                # every few seconds).
                deadline = time.monotonic() + 60
                while True:
                    n += 1
                    try:
                        engine.send_command("big", Note(n=n, blob=blob(n)))
                        acked.append(n)
                        break
                    except ego.errors.StorageFullError:
                        refused.append(n)
                        assert time.monotonic() < deadline, "writes did not resume after space was freed"
                        time.sleep(0.2)  # between two tries of a poll with a deadline
                for _ in range(5):
                    n += 1
                    engine.send_command("big", Note(n=n, blob=blob(n)))
                    acked.append(n)
        finally:
            store.close()
        with ego.RocksDBStore(mnt / "db") as reopened:
            events = reopened.replay_events("big")
            stored = [Note.FromString(e.event.value) for e in events]
            assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
            assert [s.n for s in stored] == acked, "acknowledged writes lost, or refused ones stored"
            assert all(s.blob == blob(s.n) for s in stored)


# --- corruption (RELIABILITY.md #10) -------------------------------------------------------

ACCOUNTS = 10
COMMANDS = 600


def expected_payloads() -> dict[str, list[bytes]]:
    """The event payloads fault_child.py's write mode acknowledges, per account."""
    out: dict[str, list[bytes]] = {f"acct-{j}": [] for j in range(ACCOUNTS)}
    for i in range(COMMANDS):
        name = f"acct-{i % ACCOUNTS}"
        event = AccountOpened(account_id=name, balance=100) if i < ACCOUNTS else AccountCredited(amount=i)
        out[name].append(event.SerializeToString())
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two stores holding the same acknowledged events: "wal" as a crash left it (the events
    only in the write-ahead log), "tables" closed cleanly (the events in table files)."""
    base = tmp_path_factory.mktemp("written")
    out = subprocess.run(
        [sys.executable, str(CHILD), str(base / "wal"), "write", str(COMMANDS)], capture_output=True, text=True, check=True
    ).stdout
    assert out.count("ACKED") == COMMANDS
    shutil.copytree(base / "wal", base / "tables")
    with ego.RocksDBStore(base / "tables"):
        pass  # opening replays the log; closing flushes everything into table files
    return {"wal": base / "wal", "tables": base / "tables"}


def damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(max(0, size - max(1, size // 3)))
        return
    at = size // 2 if how == "flip-middle" else max(0, size - 24)
    with open(path, "r+b") as f:
        f.seek(at)
        data = f.read(8)
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in data))


def read_everything(db: Path, **options: str) -> dict[str, list[bytes]]:
    """Every account's event payloads, read from its journal; the per-shard logs are read too
    and must hold exactly the same events."""
    with ego.RocksDBStore(db, **options) as store:  # type: ignore[arg-type]
        read = {name: [e.event.value for e in store.replay_events(name)] for name in expected_payloads()}
        logged: dict[str, list[bytes]] = {name: [] for name in read}
        for shard, _, _ in store.shard_heads():
            for e in store.shard_events(shard, 0, 10_000):
                logged[e.persistence_id].append(e.event.value)
        assert logged == read, "the shard logs and the journals disagree"
        return read


def check_prefix(read: dict[str, list[bytes]]) -> int:
    """Every account holds a prefix of its acknowledged events, byte for byte; returns how
    many events are missing."""
    missing = 0
    for name, events in expected_payloads().items():
        assert read[name] == events[: len(read[name])], f"{name}: wrong bytes read back"
        missing += len(events) - len(read[name])
    return missing


FILES = {
    "wal": ("wal", "*.log"),
    "table": ("tables", "*.sst"),
    "manifest": ("tables", "MANIFEST-*"),
    "current": ("tables", "CURRENT"),
    "options": ("tables", "OPTIONS-*"),
}


@pytest.mark.parametrize("how", ["flip-middle", "flip-end", "truncate"])
@pytest.mark.parametrize("kind", sorted(FILES))
def test_damaged_store_file_gives_a_prefix_or_a_corruption_error(
    written: dict[str, Path], tmp_path: Path, kind: str, how: str
) -> None:
    source, pattern = FILES[kind]
    files = sorted(p.name for p in written[source].glob(pattern))
    assert files, f"no {pattern} in the {source} store"
    for name in files:
        db = tmp_path / f"{name}-{how}"
        shutil.copytree(written[source], db)
        damage(db / name, how)
        try:
            missing = check_prefix(read_everything(db))
        except ego.errors.CorruptDataError as e:
            assert str(e), "a corruption error says what is damaged"
        else:
            # A cleanly closed store has no torn tail: losing anything silently is wrong.
            assert source == "wal" or missing == 0, f"{name}: {missing} events lost without an error"


def test_wal_damaged_in_the_middle_refuses_to_open_unless_told(written: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "db"
    shutil.copytree(written["wal"], db)
    (log,) = db.glob("*.log")
    damage(log, "flip-middle")
    with pytest.raises(ego.errors.CorruptDataError) as info:
        read_everything(db)
    message = str(info.value)
    assert log.name in message and "point_in_time" in message, message
    # The operator's explicit choice: keep what precedes the damage.
    missing = check_prefix(read_everything(db, wal_recovery="point_in_time"))
    assert 0 < missing < COMMANDS
    # Once opened that way, the store is consistent again.
    assert check_prefix(read_everything(db)) == missing


def test_torn_wal_tail_recovers_silently_to_a_prefix(written: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "db"
    shutil.copytree(written["wal"], db)
    (log,) = db.glob("*.log")
    with open(log, "r+b") as f:
        f.truncate(log.stat().st_size - 5)  # the last record cut short, as by a crash mid-write
    missing = check_prefix(read_everything(db))
    assert missing == 1


def test_unknown_wal_recovery_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ego.errors.ConfigurationError, match="wal_recovery"):
        ego.RocksDBStore(tmp_path / "db", wal_recovery="tolerant")  # type: ignore[arg-type]


def test_second_open_in_one_process_is_refused_plainly(tmp_path: Path) -> None:
    with ego.RocksDBStore(tmp_path / "db"):
        with pytest.raises(ego.errors.StoreError, match="open in this process") as info:
            ego.RocksDBStore(tmp_path / "db")
        assert not isinstance(info.value, ego.errors.CorruptDataError)
    # Closed: it opens again.
    with ego.RocksDBStore(tmp_path / "db"):
        pass
