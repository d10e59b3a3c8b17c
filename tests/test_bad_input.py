"""Bad input: each case gets a typed error, and the engine keeps serving afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import ego
from ego import errors

from bank_pb2 import Account, AccountCredited, Credit, OpenAccount
from domain import AccountBehavior
from egotest.messages_pb2 import Note, Other


def still_serves(engine: ego.Engine, entity_id: str = "healthy") -> None:
    if not engine.is_live(entity_id):
        engine.entity(AccountBehavior(entity_id))
        engine.send_command(entity_id, OpenAccount(initial_balance=0))
    before = engine.get_state(entity_id)[1]
    assert engine.send_command(entity_id, Credit(amount=1))[1] == before + 1


class Configurable(ego.EventSourcedBehavior):
    """`handle_command` returns whatever the Note command's text selects."""

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Account:
        return Account(account_id=self.entity_id)

    def handle_command(self, command: Note, state: Account):  # type: ignore[no-untyped-def]
        return {
            "none": None,
            "dict": {"not": "events"},
            "not-a-message": ["a string"],
            "ok": [AccountCredited(amount=1)],
            "big": [Note(blob=b"x" * command.n)],
            "bad-event": [Other(x="handled badly")],
            "raise": [AccountCredited(amount=-1)],
        }[command.text]

    def handle_event(self, event, state: Account):  # type: ignore[no-untyped-def]
        if isinstance(event, Other):
            return None
        if isinstance(event, Note):
            return state
        if event.amount < 0:
            raise ArithmeticError("negative amount")
        state.balance += event.amount
        return state


@pytest.fixture
def conf(engine: ego.Engine) -> ego.Engine:
    engine.entity(Configurable("conf"))
    return engine


def test_non_protobuf_command(conf: ego.Engine) -> None:
    for bad in ({"amount": 1}, "credit", 42, None, Credit):
        with pytest.raises(errors.InvalidMessageError, match="protobuf message"):
            conf.send_command("conf", bad)  # type: ignore[arg-type]
    assert isinstance(errors.InvalidMessageError("x"), TypeError)
    still_serves(conf)


def test_non_protobuf_command_async(conf: ego.Engine) -> None:
    async def main() -> None:
        with pytest.raises(errors.InvalidMessageError):
            await conf.send_command_async("conf", {"amount": 1})  # type: ignore[arg-type]

    asyncio.run(main())
    still_serves(conf)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("none", "must return a list of events.*got None"),
        ("dict", "must return a list of events.*got dict"),
        ("not-a-message", "event must be a protobuf message, got str"),
        ("bad-event", "handle_event must return the state \\(a Account\\), got None"),
    ],
)
def test_handler_returning_the_wrong_type(conf: ego.Engine, text: str, match: str) -> None:
    conf.send_command("conf", Note(text="ok"))
    with pytest.raises(errors.HandlerContractError, match=match):
        conf.send_command("conf", Note(text=text))
    assert conf.get_state("conf")[1] == 1
    assert conf.send_command("conf", Note(text="ok")) == (Account(account_id="conf", balance=2), 2)
    still_serves(conf)


def test_handle_event_raising_keeps_state_and_revision(conf: ego.Engine) -> None:
    conf.send_command("conf", Note(text="ok"))
    with pytest.raises(ArithmeticError, match="negative amount"):
        conf.send_command("conf", Note(text="raise"))
    assert conf.get_state("conf") == (Account(account_id="conf", balance=1), 1)
    assert conf.send_command("conf", Note(text="ok"))[1] == 2


@pytest.mark.parametrize("bad_id", ["", "x" * 256, "a\nb", "nul\x00byte", "tab\tid", "\x7f"])
def test_bad_entity_ids(engine: ego.Engine, bad_id: str) -> None:
    engine.register_entity_type(AccountBehavior)
    with pytest.raises(errors.InvalidEntityIdError):
        engine.send_command(bad_id, Credit(amount=1))
    with pytest.raises(errors.InvalidEntityIdError):
        engine.get_state(bad_id)
    with pytest.raises(errors.InvalidEntityIdError):
        engine.entity(AccountBehavior(bad_id))
    still_serves(engine)


def test_unicode_and_punctuation_ids_are_fine(engine: ego.Engine) -> None:
    engine.register_entity_type(AccountBehavior)
    for good in ("account:42", "a.b/c", "ünïcödé-✓", "x" * 255):
        assert engine.send_command(good, OpenAccount(initial_balance=1))[1] == 1


def test_event_over_the_size_limit() -> None:
    with ego.Engine(max_message_bytes=1000) as engine:
        engine.entity(Configurable("conf"))
        assert engine.send_command("conf", Note(text="big", n=900))[1] == 1
        with pytest.raises(errors.MessageTooLargeError, match="event of 2003 bytes exceeds the limit of 1000"):
            engine.send_command("conf", Note(text="big", n=2000))
        assert engine.get_state("conf")[1] == 1
        still_serves(engine)


def test_unknown_entity(engine: ego.Engine) -> None:
    with pytest.raises(errors.EntityNotFoundError, match="nobody"):
        engine.send_command("nobody", Credit(amount=1))
    with pytest.raises(LookupError):
        engine.get_state("nobody")
    still_serves(engine)


def test_engine_not_started_or_stopped() -> None:
    engine = ego.Engine("idle")
    with pytest.raises(errors.EngineClosedError):
        engine.send_command("a", Credit(amount=1))
    engine.start()
    engine.register_entity_type(AccountBehavior)
    engine.send_command("a", OpenAccount(initial_balance=1))
    engine.stop()
    with pytest.raises(errors.EngineClosedError):
        engine.send_command("a", Credit(amount=1))

    async def main() -> None:
        with pytest.raises(errors.EngineClosedError):
            await engine.send_command_async("a", Credit(amount=1))

    asyncio.run(main())
    # A stopped engine can be started again and serves (on the same store).
    engine.start()
    engine.register_entity_type(AccountBehavior)
    assert engine.send_command("a", Credit(amount=1)) == (Account(account_id="a", balance=2, open=True), 2)
    engine.stop()


def test_bad_options(engine: ego.Engine) -> None:
    for kwargs in ({"snapshot_interval": -1}, {"passivate_after": 0}, {"mailbox_capacity": 0}, {"batch_flush_window": -1.0}):
        with pytest.raises(errors.ConfigurationError):
            engine.entity(AccountBehavior("x"), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigurationError):
        engine.entity(object())  # type: ignore[arg-type]
    still_serves(engine)


def test_corrupted_rocksdb_bytes_name_the_entity_and_sequence_number(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with ego.RocksDBStore(db) as store, ego.Engine(store=store) as engine:
        engine.entity(AccountBehavior("victim"))
        engine.send_command("victim", OpenAccount(initial_balance=10))
        for _ in range(20):
            engine.send_command("victim", Credit(amount=1))
    # close() flushed everything into table files; the one of the `events` column family has
    # the family's name in its properties block. Flip bytes inside its first data block.
    tables = [t for t in sorted(db.glob("*.sst")) if b"events" in t.read_bytes()]
    assert len(tables) == 1
    for table in tables:
        data = bytearray(table.read_bytes())
        for offset in range(8, 40):
            data[offset] ^= 0xFF
        table.write_bytes(bytes(data))
    with ego.RocksDBStore(db) as store, ego.Engine(store=store) as engine:
        with pytest.raises(errors.CorruptDataError) as info:
            engine.entity(AccountBehavior("victim"))
        assert info.value.persistence_id == "victim"
        assert info.value.sequence_number == 1
        assert "victim" in str(info.value) and "sequence number 1" in str(info.value)
        # The engine keeps serving other entities.
        engine.entity(AccountBehavior("zz-fresh"))
        assert engine.send_command("zz-fresh", OpenAccount(initial_balance=3))[1] == 1
