"""The `ego` command line on RocksDB and PostgreSQL with the demo's bank accounts: every
subcommand, --json parsed back, and what a new user meets (help, bad input)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bank_data import fill

import ego
from ego.cli import main

ROOT = Path(__file__).resolve().parent.parent
BANK = ROOT / "examples" / "bank"
COMMANDS = [
    "entities",
    "events",
    "state",
    "projections",
    "keys",
    "check",
    "set-offset",
    "rebuild",
    "migrate",
    "verify",
    "import-go",
]


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # tables not folded in the captured output


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    status, out, err = run(capsys, *args, "--json")
    assert status == 0, err
    return json.loads(out)


@pytest.fixture(scope="module", params=["rocksdb", "postgres"])
def bank(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, int]]]:
    """A store URL holding the bank data, and the balances."""
    if request.param == "rocksdb":
        path = tmp_path_factory.mktemp("bank") / "db"
        store = ego.RocksDBStore(path)
        balances = fill(store)
        store.close()
        yield f"rocksdb://{path}", balances
        return
    url = request.getfixturevalue("pg_url")
    prefix = f"cli{uuid.uuid4().hex[:8]}_"
    store = ego.PostgresStore(url, table_prefix=prefix)
    balances = fill(store)
    yield f"{url}?table_prefix={prefix}", balances
    store.drop_tables()
    store.close()


def test_entities_lists_every_entity_with_paging_and_a_prefix(
    capsys: pytest.CaptureFixture[str], bank: tuple[str, dict[str, int]]
) -> None:
    url, balances = bank
    seen: list[dict[str, Any]] = []
    after: list[str] = []
    while True:
        page = run_json(capsys, "entities", url, "--limit", "7", *after)
        seen.extend(page["entities"])
        if page["next"] is None:
            break
        assert len(page["entities"]) == 7
        after = ["--after", page["next"]]
    assert sorted(e["id"] for e in seen) == sorted(balances)
    assert [e["id"] for e in seen] == sorted((e["id"] for e in seen), key=str.encode)
    kinds = {e["id"]: e["kind"] for e in seen}
    assert kinds["durable-1"] == "durable-state" and kinds["account-001"] == "event-sourced"
    account = next(e for e in seen if e["id"] == "account-001")
    assert account["sequence_number"] >= 1
    retained = run_json(capsys, "entities", url, "--prefix", "retained-")["entities"]
    assert [e["id"] for e in retained] == sorted(p for p in balances if p.startswith("retained-"))
    assert all(e["snapshot"] is None or e["snapshot"] <= e["sequence_number"] for e in retained)
    status, out, _ = run(capsys, "entities", url, "--prefix", "durable-")
    assert status == 0 and "durable-0" in out and "account-" not in out


def test_events_decoded_with_the_generated_module_or_raw(
    capsys: pytest.CaptureFixture[str], bank: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = bank
    monkeypatch.chdir(BANK)
    decoded = run_json(capsys, "events", url, "account-001", "--proto-module", "bank_pb2")
    first = decoded["events"][0]
    assert first["sequence_number"] == 1 and first["type"] == "bank.v1.AccountOpened"
    assert first["data"] == {"account_id": "account-001", "balance": "100"}
    assert all(e["timestamp"] > 0 and e["position"] > 0 for e in decoded["events"])
    assert [e["sequence_number"] for e in decoded["events"]] == list(range(1, decoded["highest"] + 1))
    window = run_json(capsys, "events", url, "account-001", "--from", "2", "--limit", "1", "--proto-module", "bank_pb2")
    assert [e["sequence_number"] for e in window["events"]] == [2]
    monkeypatch.chdir(ROOT)
    # Without the module (a new process has not imported it): raw.
    done = _ego("events", url, "account-001", "--json")
    raw = json.loads(done.stdout)
    assert raw["events"][0]["type"] == "bank.v1.AccountOpened" and "raw" in raw["events"][0] and "data" not in raw["events"][0]
    status, out, _ = run(capsys, "events", url, "account-001")
    assert status == 0 and "AccountOpened" in out


def test_events_decoded_with_a_descriptor_set(
    capsys: pytest.CaptureFixture[str], bank: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    from google.protobuf import descriptor_pb2

    import bank_pb2

    files = descriptor_pb2.FileDescriptorSet()
    bank_pb2.DESCRIPTOR.CopyToProto(files.file.add())
    path = tmp_path / "bank.pb"
    path.write_bytes(files.SerializeToString())
    url, _ = bank
    found = run_json(capsys, "events", url, "account-002", "--descriptor-set", str(path))
    assert found["events"][0]["data"]["balance"] == "100"


def test_state_of_an_event_sourced_and_a_durable_entity(
    capsys: pytest.CaptureFixture[str], bank: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, balances = bank
    monkeypatch.chdir(BANK)
    durable = run_json(capsys, "state", url, "durable-3", "--proto-module", "bank_pb2")
    assert durable["kind"] == "durable-state" and durable["version"] == 2
    assert durable["state"]["data"]["balance"] == str(balances["durable-3"])
    entity = next(e for e in run_json(capsys, "entities", url, "--prefix", "account-")["entities"] if e["snapshot"] is not None)
    es = run_json(capsys, "state", url, entity["id"], "--proto-module", "bank_pb2")
    assert es["kind"] == "event-sourced" and es["snapshot"]["sequence_number"] == entity["snapshot"]
    assert es["events_after_snapshot"] == es["sequence_number"] - entity["snapshot"]
    assert es["snapshot"]["state"]["type"] == "bank.v1.Account"


def test_projections_show_offsets_and_lag(capsys: pytest.CaptureFixture[str], bank: tuple[str, dict[str, int]]) -> None:
    url, _ = bank
    found = {p["name"]: p for p in run_json(capsys, "projections", url)["projections"]}
    assert found["balances"]["lag"] == 0
    assert found["late"]["lag"] > 0
    assert all(s["offset"] + s["lag"] == s["head"] for s in found["late"]["shards"])
    status, out, _ = run(capsys, "projections", url)
    assert status == 0 and "late" in out


def test_set_offset_and_rebuild(capsys: pytest.CaptureFixture[str], bank: tuple[str, dict[str, int]]) -> None:
    url, _ = bank
    shards = run_json(capsys, "projections", url)["projections"][0]["shards"]
    shard = next(s for s in shards if s["head"] > 2)
    moved = run_json(capsys, "set-offset", url, "ops", str(shard["shard"]), "2")
    assert (moved["previous"], moved["offset"]) == (None, 2)
    ops = next(p for p in run_json(capsys, "projections", url)["projections"] if p["name"] == "ops")
    assert next(s for s in ops["shards"] if s["shard"] == shard["shard"])["lag"] == shard["head"] - 2
    status, _, err = run(capsys, "set-offset", url, "ops", str(shard["shard"]), str(shard["head"] + 1))
    assert status == 1 and "beyond the head" in err and "Traceback" not in err
    rebuilt = run_json(capsys, "rebuild", url, "ops")
    assert all(o["offset"] == 0 for o in rebuilt["offsets"])
    later = run_json(capsys, "rebuild", url, "ops", "--from", "2100-01-01T00:00:00+00:00")
    heads = {s["shard"]: s["head"] for s in shards}
    assert {o["shard"]: o["offset"] for o in later["offsets"]} == heads


def test_check_passes_on_sound_data(
    capsys: pytest.CaptureFixture[str], bank: tuple[str, dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, balances = bank
    monkeypatch.chdir(BANK)
    report = run_json(capsys, "check", url, "--proto-module", "bank_pb2")
    assert report["ok"] and report["faults"] == []
    assert report["streams"] == sum(1 for p in balances if not p.startswith("durable-"))
    assert report["states"] == 5 and report["unknown_types"] == []
    status, out, _ = run(capsys, "check", url)
    assert status == 0 and "ego check" in out


def test_check_finds_faults_and_exits_non_zero(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from ego.testkit.conformance import make_event

    store = ego.RocksDBStore(tmp_path / "db")
    store.write_events([make_event("gone", seq) for seq in (1, 2, 3)])
    store.delete_events("gone", 2)  # no snapshot covers events 1 and 2
    store.write_events([make_event("ahead", 1)])
    snap = ego.v1.Snapshot(persistence_id="ahead", sequence_number=5, timestamp=1)
    snap.state.type_url = "type.googleapis.com/bank.v1.Account"
    snap.state.value = b"\xff\xff"  # does not parse as an Account either
    store.write_snapshot(snap)
    store.close()
    sys.path.insert(0, str(BANK))
    status, out, _ = run(capsys, "check", f"rocksdb://{tmp_path / 'db'}", "--json", "--proto-module", "bank_pb2")
    assert status == 1
    faults = json.loads(out)["faults"]
    assert any("'gone': events 1..2 were deleted" in f for f in faults)
    assert any("'ahead': snapshot at seq 5 is past" in f for f in faults)
    assert any("does not parse as bank.v1.Account" in f for f in faults)


def test_keys_and_erasures(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from bank_pb2 import OpenAccount
    from domain import AccountBehavior

    store = ego.RocksDBStore(tmp_path / "db")
    with ego.Engine("keys", store=store, encryption=ego.Encryption(master_key=b"k" * 32)) as engine:
        engine.register_entity_type(AccountBehavior, prefix="account-")
        for i in range(3):
            engine.send_command(f"account-{i}", OpenAccount(initial_balance=1))
        engine.erase_entity("account-1")
    store.close()
    url = f"rocksdb://{tmp_path / 'db'}"
    keys = run_json(capsys, "keys", url)["keys"]
    assert [k["id"] for k in keys] == ["account-0", "account-2"]
    assert all(k["master_key_id"] == "master-1" and "wrapped_key" not in k for k in keys)
    erasures = run_json(capsys, "keys", url, "--erasures")["erasures"]
    assert [e["id"] for e in erasures] == ["account-1"] and erasures[0]["erased_at"] > 0
    found = run_json(capsys, "events", url, "account-0")
    assert found["events"][0]["encrypted"] is True


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_subcommand(capsys: pytest.CaptureFixture[str], command: str) -> None:
    status, out, _ = run(capsys, command, "--help")
    assert status == 0
    assert out.startswith(f"Usage: ego {command} ")
    assert len(out.splitlines()) > 5


def _ego(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The command line as a user runs it: a new process."""
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "ego.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path: Path, bank: tuple[str, dict[str, int]]) -> None:
    url, _ = bank
    cases = [
        (["entities", "mysql://host/db"], "not a store URL"),
        (["entities", "memory:"], "lives in one process"),
        (["entities", f"rocksdb://{tmp_path / 'missing'}"], "does not exist"),
        (["entities", "rocksdb://"], "names no directory"),
        (["entities", "postgresql://postgres@127.0.0.1:1/nothing"], ""),
        (["events", url, "no-such-account"], "no events of 'no-such-account'"),
        (["state", url, "no-such-account"], "no entity 'no-such-account'"),
        (["events", url, "account-001", "--proto-module", "no_such_module_pb2"], "cannot import --proto-module"),
        (["rebuild", url, "ops", "--from", "yesterday"], "not an ISO 8601 time"),
    ]
    for args, text in cases:
        done = _ego(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ego: error: "), (args, done.stderr)
        assert text in lines[0], (args, lines[0])
        assert done.stdout == ""
    usage = _ego("entities")
    assert usage.returncode == 2 and "Missing argument 'STORE'" in usage.stderr and "Traceback" not in usage.stderr
    top = _ego("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in COMMANDS)
