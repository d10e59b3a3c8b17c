"""The publisher runtime with publishers written in Python: acknowledgements, transient
failures retried without limit, refusals under the failure policy, start points, payload
formats, settings that are refused, and stop while a broker is away."""

from __future__ import annotations

import base64
import datetime
import gc
import json
import threading
import time
from typing import Any

import pytest
from publishing import bank_engine, caught_up, check_delivery, expected_event, write_history
from waiting import clock_past, wait_until

import ego
from ego import errors
from ego.publishers import CloudEventsBinary, CloudEventsStructured, ProtobufEnvelope, ProtobufJson, Record
from ego.timestamps import to_nanos
from ego.v1 import Event

from bank_pb2 import AccountCredited, AccountOpened
from domain import AccountBehavior


class Collect:
    """Acknowledges everything; fails transiently while `down` is set; refuses ids in `refuse`."""

    def __init__(self, format: Any = None) -> None:
        self.format = format
        self.records: list[Record] = []
        self.down = threading.Event()
        self.refuse: set[str] = set()
        self.calls = 0
        self.lock = threading.Lock()

    def publish(self, records: list[Record]) -> list[BaseException | None] | None:
        with self.lock:
            self.calls += 1
            if self.down.is_set():
                raise ConnectionError("broker away")
            out: list[BaseException | None] = []
            for r in records:
                if r.id in self.refuse:
                    out.append(ValueError(f"refused {r.id}"))
                else:
                    self.records.append(r)
                    out.append(None)
            return out

    def received(self) -> list[tuple[str, bytes]]:
        with self.lock:
            return [(r.id, r.value) for r in self.records]


class AsyncCollect(Collect):
    async def publish(self, records: list[Record]) -> None:  # type: ignore[override]
        super().publish(records)


class Closable(Collect):
    """A publisher whose close() is final (it has no reopen())."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class Reopenable(Closable):
    def __init__(self) -> None:
        super().__init__()
        self.reopened = 0

    def reopen(self) -> None:
        self.reopened += 1


def test_a_restart_restores_the_publishers_that_can_be_reused() -> None:
    """stop() closes the publishers; start() adds again those with reopen() (called first)
    and those without close(); they resume from their checkpoints. One whose close() is final
    is left out (logged)."""
    engine = bank_engine("py-restart", ego.MemoryStore())
    plain, reopenable, final = Collect(), Reopenable(), Closable()
    names = ["final", "plain", "reopenable"]
    try:
        accounts = [f"account-{i}" for i in range(5)]
        write_history(engine, accounts, credits=2)
        for name, sink in zip(names, (final, plain, reopenable), strict=True):
            engine.add_event_publisher(sink, name=name)
        for name in names:
            wait_until(lambda name=name: caught_up(engine, name), what=name)  # type: ignore[misc]
        engine.stop()
        assert (final.closed, reopenable.closed, reopenable.reopened) == (1, 1, 0)
        engine.start()
        assert engine.publisher_names() == ["plain", "reopenable"]
        assert reopenable.reopened == 1
        write_history(engine, accounts, credits=4, first_credit=4)
        for name in ("plain", "reopenable"):
            wait_until(lambda name=name: caught_up(engine, name), what=name)  # type: ignore[misc]
        for sink in (plain, reopenable):
            assert check_delivery(sink.received(), {a: 5 for a in accounts}, exactly_once=True) == 0
        assert len(final.received()) == 5 * 3
        # A kept publisher removed while the engine is stopped stays out.
        engine.stop()
        engine.remove_publisher("plain")
        engine.start()
        assert engine.publisher_names() == ["reopenable"]
    finally:
        engine.stop()


@pytest.mark.parametrize("kind", [Collect, AsyncCollect])
def test_a_python_publisher_gets_every_event_in_order(kind: type[Collect]) -> None:
    engine = bank_engine("py-pub", ego.MemoryStore())
    try:
        accounts = [f"account-{i}" for i in range(50)]
        write_history(engine, accounts, credits=3)
        sink = kind()
        engine.add_event_publisher(sink, name="py", batch_size=64)
        wait_until(lambda: caught_up(engine, "py"))
        assert check_delivery(sink.received(), {a: 4 for a in accounts}) == 0
        assert all(r.key == r.source.persistence_id and r.headers["ego-event-id"] == r.id for r in sink.records)
    finally:
        engine.stop()


class TwoPhase(Collect):
    """A publisher with ``send``: the acknowledgements of a send are given only once another
    send is outstanding too (or after 10 s, when the batch is reported unacknowledged), so the
    records arrive only if ego hands over a batch while another one waits for its
    acknowledgements; while `down` is set every wait fails transiently."""

    def __init__(self) -> None:
        super().__init__()
        self.outstanding = 0
        self.most_outstanding = 0
        self.company = threading.Condition(self.lock)

    def send(self, records: list[Record]) -> Any:
        with self.lock:
            self.outstanding += 1
            self.most_outstanding = max(self.most_outstanding, self.outstanding)
            self.company.notify_all()

        def acknowledged() -> list[BaseException | None] | None:
            with self.lock:
                together = self.company.wait_for(lambda: self.most_outstanding >= 2, timeout=10)
                self.outstanding -= 1
            if not together:
                raise errors.BrokerUnavailableError("no second batch was handed over while this one waited")
            return self.publish(records)

        return acknowledged


def test_a_publisher_with_send_has_one_batch_in_flight_per_shard() -> None:
    engine = bank_engine("py-two-phase", ego.MemoryStore())
    try:
        accounts = [f"account-{i}" for i in range(200)]
        write_history(engine, accounts, credits=3)
        sink = TwoPhase()
        engine.add_event_publisher(sink, name="py", batch_size=50)
        wait_until(lambda: caught_up(engine, "py"), what="the two-phase publisher to catch up")
        assert sink.most_outstanding >= 2
        assert sink.most_outstanding <= 8, "more than one batch of a shard in flight (8 shards)"
        assert check_delivery(sink.received(), {a: 4 for a in accounts}, exactly_once=True) == 0
        assert engine.publisher_stats("py")["published"] == 800
    finally:
        engine.stop()


def test_transient_failures_are_retried_without_limit_and_never_skip() -> None:
    engine = bank_engine("py-transient", ego.MemoryStore())
    sink = Collect()
    dead: list[str] = []
    try:
        sink.down.set()
        engine.add_event_publisher(
            sink,
            name="py",
            on_refused=ego.RecoveryPolicy.SKIP,
            dead_letter=lambda *a: dead.append(a[2].event_id),
            backoff=0.01,
            max_backoff=0.02,
        )
        write_history(engine, ["account-1", "account-2"], credits=2)
        wait_until(lambda: engine.publisher_stats("py")["failures"] >= 20, what="many failed attempts")
        assert engine.publisher_status("py") == ("running", None)
        assert sum(lag.events_behind for lag in engine.publisher_lag("py").values()) == 6
        sink.down.clear()
        wait_until(lambda: caught_up(engine, "py"))
        check_delivery(sink.received(), {"account-1": 3, "account-2": 3}, exactly_once=True)
        assert dead == []
        assert engine.publisher_stats("py")["refused"] == 0
    finally:
        engine.stop()


def test_a_refused_record_stops_the_publisher_under_fail() -> None:
    engine = bank_engine("py-refused", ego.MemoryStore())
    sink = Collect()
    sink.refuse.add("account-1:2")
    try:
        write_history(engine, ["account-1"], credits=2)
        engine.add_event_publisher(sink, name="py")
        wait_until(lambda: engine.publisher_status("py")[0] == "failed")
        _, error = engine.publisher_status("py")
        assert error is not None and "account-1:2" in error
        # The checkpoint never passed the refused record: the whole batch is still behind.
        assert sum(lag.events_behind for lag in engine.publisher_lag("py").values()) == 3
        assert [r.id for r in sink.records] == ["account-1:1", "account-1:3"]
    finally:
        engine.stop()


def test_a_refused_record_goes_to_the_dead_letter_handler_under_skip() -> None:
    engine = bank_engine("py-skip", ego.MemoryStore())
    sink = Collect()
    sink.refuse.add("account-1:2")
    dead: list[tuple[str, str, int]] = []
    try:
        write_history(engine, ["account-1", "account-2"], credits=2)
        engine.add_event_publisher(
            sink,
            name="py",
            on_refused=ego.RecoveryPolicy.SKIP,
            dead_letter=lambda name, pid, event, seq, error: dead.append((name, event.event_id, seq)),
        )
        wait_until(lambda: caught_up(engine, "py"))
        assert dead == [("py", "account-1:2", 2)]  # the publisher's name
        ids = [r.id for r in sink.records]
        assert "account-1:2" not in ids and len(ids) == len(set(ids)) == 5
        assert engine.publisher_stats("py")["dead_letters"] == 1
    finally:
        engine.stop()


def test_start_latest_and_at_a_point_in_time() -> None:
    store = ego.MemoryStore()
    engine = bank_engine("py-start", store)
    try:
        write_history(engine, ["account-1"], credits=1)
        # A point strictly between the two writes' timestamps.
        clock_past(store.replay_events("account-1")[-1].timestamp)
        middle = datetime.datetime.now(datetime.timezone.utc)
        clock_past(to_nanos(middle))
        write_history(engine, ["account-1"], credits=3, first_credit=3)
        latest, since = Collect(), Collect()
        engine.add_event_publisher(latest, name="latest", start="latest")
        engine.add_event_publisher(since, name="since", start=middle)
        wait_until(lambda: caught_up(engine, "since") and caught_up(engine, "latest"))
        assert [r.id for r in since.records] == ["account-1:3", "account-1:4"]
        write_history(engine, ["account-1"], credits=4, first_credit=5)
        wait_until(lambda: [r.id for r in latest.records] == ["account-1:5"])
    finally:
        engine.stop()


def test_payload_formats() -> None:
    engine = bank_engine("py-formats", ego.MemoryStore())
    sinks = {
        "json": Collect(ProtobufJson()),
        "binary": Collect(CloudEventsBinary(source="//bank")),
        "structured": Collect(CloudEventsStructured(source="//bank")),
        "structured-bytes": Collect(CloudEventsStructured(source="//bank", data="protobuf")),
    }
    try:
        write_history(engine, ["account-7"], credits=1)
        for name, sink in sinks.items():
            engine.add_event_publisher(sink, name=name)
        wait_until(lambda: all(caught_up(engine, n) for n in sinks))
        opened = AccountOpened(account_id="account-7", balance=100)
        j = json.loads(sinks["json"].records[0].value)
        assert j["persistenceId"] == "account-7" and j["event"]["@type"].endswith("bank.v1.AccountOpened")
        b = sinks["binary"].records[1]
        assert AccountCredited.FromString(b.value) == AccountCredited(amount=2)
        assert b.headers["ce_id"] == "account-7:2" and b.headers["ce_type"] == "bank.v1.AccountCredited"
        assert b.headers["ce_subject"] == "account-7" and b.headers["ce_sequence"] == "2"
        s = json.loads(sinks["structured"].records[0].value)
        assert (
            s["specversion"] == "1.0" and s["id"] == "account-7:1" and s["data"] == {"accountId": "account-7", "balance": "100"}
        )
        raw = json.loads(sinks["structured-bytes"].records[0].value)
        assert AccountOpened.FromString(base64.b64decode(raw["data_base64"])) == opened
    finally:
        engine.stop()


def test_bad_settings_are_refused() -> None:
    engine = bank_engine("py-bad", ego.MemoryStore())
    try:
        with pytest.raises(errors.ConfigurationError):
            engine.add_event_publisher(object(), name="x")  # type: ignore[arg-type]
        with pytest.raises(errors.ConfigurationError):
            engine.add_event_publisher(Collect(), name="x", start="tomorrow")
        with pytest.raises(errors.ConfigurationError):
            engine.add_event_publisher(Collect(), name="x", batch_size=0)
        engine.add_event_publisher(Collect(), name="x")
        with pytest.raises(errors.ValidationError):
            engine.add_event_publisher(Collect(), name="x")
        with pytest.raises(errors.ValidationError):
            engine.publisher_lag("nope")
        with pytest.raises(errors.ConfigurationError):
            CloudEventsStructured(source="")
        with pytest.raises(errors.ConfigurationError):
            ego.publishers.KafkaPublisher("127.0.0.1:1", config={"acks": "1"})
        with pytest.raises(errors.ConfigurationError):
            ego.publishers.NatsPublisher("http://x")
        with pytest.raises(errors.ConfigurationError):
            ego.publishers.WebSocketPublisher("ws://x", format=CloudEventsBinary(source="s"))
    finally:
        engine.stop()


def test_stop_returns_while_the_broker_is_away() -> None:
    engine = bank_engine("py-stop", ego.MemoryStore())
    sink = Collect()
    sink.down.set()
    engine.add_event_publisher(sink, name="py", backoff=0.05)
    write_history(engine, ["account-1"], credits=1)
    wait_until(lambda: sink.calls > 0)
    started = time.monotonic()
    engine.stop(timeout=10)
    assert time.monotonic() - started < 10
    assert sink.records == []


def test_an_erased_entitys_records_go_out_as_tombstones() -> None:
    engine = ego.Engine("py-erased", store=ego.MemoryStore(), encryption=ego.Encryption(master_key=bytes(range(32))))
    engine.start()
    engine.register_entity_type(AccountBehavior, prefix="account-")
    try:
        write_history(engine, ["account-0", "account-1"], credits=2)
        engine.erase_entity("account-0")
        sink = Collect()
        engine.add_event_publisher(sink, name="py", batch_size=64)
        wait_until(lambda: len(sink.records) == 6, what="the six records")
        erased = {r.id: (r.erased, r.headers.get("ego-erased")) for r in sink.records}
        assert erased == {
            **{f"account-0:{n}": (True, "true") for n in (1, 2, 3)},
            **{f"account-1:{n}": (False, None) for n in (1, 2, 3)},
        }
    finally:
        engine.stop()


def check_envelope_records(records: list[Record]) -> None:
    """The records the engine builds for the default format are what the format's own
    `render` gives for their sources, and are out of the cyclic collector's view."""
    assert records
    for r in records:
        value, headers = ProtobufEnvelope().render(r.source)
        if r.source.erased:
            headers["ego-erased"] = "true"
        assert type(r) is Record
        assert (r.id, r.key, r.value, r.headers) == (r.source.event_id, r.source.persistence_id, value, headers)
        assert (r.shard, r.position, r.erased) == (r.source.shard, r.source.position, r.source.erased)
        assert not gc.is_tracked(r) and not gc.is_tracked(r.source)


def test_encrypted_events_are_published_as_stored_unless_decrypt() -> None:
    """Also: the records the engine builds for the default format (tombstones, ciphertext as
    stored, decrypted) are what its `render` gives (check_envelope_records)."""
    engine = ego.Engine("py-as-stored", store=ego.MemoryStore(), encryption=ego.Encryption(master_key=bytes(range(32))))
    engine.start()
    engine.register_entity_type(AccountBehavior, prefix="account-")
    try:
        write_history(engine, ["account-0", "account-1"], credits=1)
        engine.erase_entity("account-0")
        stored, plain = Collect(), Collect()
        engine.add_event_publisher(stored, name="stored")
        engine.add_event_publisher(plain, name="plain", decrypt=True)
        wait_until(lambda: len(stored.records) == 4 and len(plain.records) == 4, what="four records in each")
        for sink, encrypted in ((stored, True), (plain, False)):
            check_envelope_records(sink.records)
            by_id = {r.id: r for r in sink.records}
            for n in (1, 2):
                tombstone = Event.FromString(by_id[f"account-0:{n}"].value)
                assert by_id[f"account-0:{n}"].erased and tombstone.is_erased and not tombstone.event.value
                live = by_id[f"account-1:{n}"]
                envelope = Event.FromString(live.value)
                original = expected_event("account-1", n)
                assert envelope.is_encrypted is encrypted
                assert ("ego-encryption-key-id" in live.headers) is encrypted
                if encrypted:
                    assert envelope.encryption_key_id == live.headers["ego-encryption-key-id"]
                    assert envelope.event.value != original.SerializeToString()
                else:
                    assert type(original).FromString(envelope.event.value) == original
    finally:
        engine.stop()
