"""Kafka publisher, on confluent-kafka (librdkafka): ``pip install 'ego-cqrs[kafka]'``.

Each record is one Kafka message: key = the persistence id (so an entity's records share a
partition and keep their order), value = the payload (``None`` for a tombstone), headers =
the format's headers, among them ``ego-event-id`` (``persistence_id:sequence_number``).

The producer is idempotent with ``acks=all`` and retries inside librdkafka without a deadline
(``message.timeout.ms=0``), so messages of a partition keep their order across broker outages
and are never sent twice by the producer itself. ``publish`` returns when every message of the
batch is acknowledged, or after ``ack_timeout`` seconds with the ones still pending reported
as :class:`~ego.errors.BrokerUnavailableError`; those stay queued in librdkafka, and a retry
of the batch waits for them instead of producing them again.

Example::

    engine.add_event_publisher(KafkaPublisher("127.0.0.1:9092", topic="bank-events"), name="kafka")
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ego.errors import BrokerUnavailableError, ConfigurationError, PublisherClosedError, PublishRefusedError
from ego.publishers._optional import require
from ego.publishers.formats import EVENT_ID_HEADER, PayloadFormat
from ego.publishers.records import Record

__all__ = ["KafkaPublisher"]

# librdkafka errors that mean "not now" rather than "never" (besides those it marks retriable).
_TRANSIENT_CODES = (
    "_MSG_TIMED_OUT",
    "_TIMED_OUT",
    "_TRANSPORT",
    "_ALL_BROKERS_DOWN",
    "_PURGE_QUEUE",
    "_PURGE_INFLIGHT",
    "_WAIT_COORD",
    "_UNKNOWN_PARTITION",
    "_UNKNOWN_TOPIC",
    "NOT_ENOUGH_REPLICAS",
    "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
    "LEADER_NOT_AVAILABLE",
    "NOT_LEADER_FOR_PARTITION",
    "REQUEST_TIMED_OUT",
    "UNKNOWN_TOPIC_OR_PART",
)


class _Produced:
    """The records one ``send`` produced, until their delivery reports come: one object and
    one callback (``report``, one bound method for every message of the send) per send
    rather than per record, so publishing allocates nothing per record that Python's cyclic
    garbage collector tracks. ``expected`` is set once by ``send`` when it has produced every
    record; ``reports`` counts the reports (on whichever thread serves them); ``failed`` holds
    the event ids of the records the broker did not take, with the error; ``producer`` is the
    producer they went to (after a fatal error it is replaced, and the old one's reports are
    no longer awaited: its records are produced again)."""

    __slots__ = ("expected", "failed", "producer", "reports")

    def __init__(self, producer: Any) -> None:
        self.producer = producer
        self.expected = -1
        self.reports = 0
        self.failed: dict[str, Any] = {}

    def report(self, error: Any, message: Any) -> None:
        if error is not None:
            self.failed[_event_id(message)] = error
        self.reports += 1

    @property
    def complete(self) -> bool:
        return 0 <= self.expected <= self.reports

    def error(self, event_id: str) -> Any:
        """The error of the record `event_id` (None: acknowledged, or no report yet). A
        failed message without the event id header (a format of the user's that leaves it
        out) fails every record of the send."""
        if not self.failed:
            return None
        return self.failed.get(event_id, self.failed.get(""))


def _event_id(message: Any) -> str:
    for key, value in message.headers() or ():
        if key == EVENT_ID_HEADER:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


class KafkaPublisher:
    """Publishes records to one Kafka topic.

    - ``bootstrap_servers``: ``"host:port[,host:port]"``.
    - ``topic``: the topic (default ``"ego-events"``; it must exist unless the broker creates
      topics on first use).
    - ``format``: a payload format (default :class:`~ego.publishers.ProtobufEnvelope`).
    - ``config``: more librdkafka settings (TLS, SASL, ``linger.ms``, ...); they override the
      defaults, except that ``enable.idempotence`` and ``acks=all`` cannot be turned off
      (:class:`~ego.errors.ConfigurationError`).
    - ``ack_timeout``: seconds ``publish`` waits for acknowledgements before it reports the
      rest as not acknowledged (they stay queued).

    Raises :class:`~ego.errors.ConfigurationError` when confluent-kafka is missing or a
    setting is invalid.
    """

    id = "ego-kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = "ego-events",
        *,
        format: PayloadFormat | None = None,
        config: Mapping[str, Any] | None = None,
        ack_timeout: float = 5.0,
    ) -> None:
        self._ck = require("confluent_kafka", "kafka")
        if not isinstance(topic, str) or not topic:
            raise ConfigurationError(f"topic must be a non-empty str, got {topic!r}")
        if not ack_timeout > 0:
            raise ConfigurationError(f"ack_timeout must be a positive number of seconds, got {ack_timeout!r}")
        settings: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": 0,
            "linger.ms": 1,
            "queue.buffering.max.messages": 1_000_000,
        }
        settings.update(config or {})
        if str(settings["enable.idempotence"]).lower() not in ("true", "1") or str(settings["acks"]) not in ("all", "-1"):
            raise ConfigurationError("the Kafka publisher needs enable.idempotence=true and acks=all")
        self.topic = topic
        self.format = format
        self.ack_timeout = float(ack_timeout)
        self._settings = settings
        try:
            self._producer = self._ck.Producer(settings)
        except self._ck.KafkaException as e:
            raise ConfigurationError(f"invalid Kafka settings: {e}") from e
        self._pending: dict[str, _Produced] = {}
        self._closed = threading.Event()
        self._transient = {getattr(self._ck.KafkaError, c) for c in _TRANSIENT_CODES if hasattr(self._ck.KafkaError, c)}

    def publish(self, records: Sequence[Record]) -> list[BaseException | None] | None:
        """Produces the records not already in flight and waits for their acknowledgements."""
        return self.send(records)()

    def send(self, records: Sequence[Record]) -> Callable[[], list[BaseException | None] | None]:
        """Produces the records not already in flight and returns a callable that waits for
        their acknowledgements (up to ``ack_timeout`` seconds from its call) and returns what
        :meth:`publish` returns. Several sends may be outstanding at once (ego has one per
        shard in flight); librdkafka keeps each partition's order."""
        if self._closed.is_set():
            raise PublisherClosedError("the Kafka publisher is closed")
        producer, pending, topic = self._producer, self._pending, self.topic
        produced = _Produced(producer)
        report = produced.report
        # Per record, the send whose delivery report decides it (None: a record already
        # acknowledged in a call that gave up waiting); only built when records are inherited.
        sources: list[_Produced | None] | None = None
        expected = 0
        for i, r in enumerate(records):
            # A record still queued from a call that gave up waiting is not produced again
            # (that would duplicate it and could reorder its key): its report is awaited.
            earlier = pending.pop(r.id, None) if pending else None
            if (
                earlier is not None
                and (earlier.complete or earlier.producer is producer)
                and not (earlier.complete and earlier.error(r.id) is not None)
            ):
                if sources is None:
                    sources = [produced] * i
                sources.append(None if earlier.complete else earlier)
                continue
            if sources is not None:
                sources.append(produced)
            value = None if r.erased else r.value
            while True:
                try:
                    producer.produce(topic, value, r.key, headers=r.headers, on_delivery=report)
                    expected += 1
                    break
                except BufferError:
                    producer.poll(0.01)
                except self._ck.KafkaException as e:
                    produced.failed[r.id] = e.args[0] if e.args else e
                    break
        produced.expected = expected
        return lambda: self._acknowledgements(records, produced, sources)

    def _acknowledgements(
        self, records: Sequence[Record], produced: _Produced, sources: list[_Produced | None] | None
    ) -> list[BaseException | None] | None:
        deadline = time.monotonic() + self.ack_timeout
        waits = [produced] if sources is None else list({id(s): s for s in sources if s is not None}.values())
        # A send to a producer replaced after a fatal error gets no more reports: not awaited.
        while not all(w.complete or w.producer is not self._producer for w in waits) and not self._closed.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # Serves the delivery reports of every outstanding send (each counts its own).
            self._producer.poll(min(left, 0.05))
        if self._closed.is_set() and not all(w.complete for w in waits):
            raise PublisherClosedError("the Kafka publisher was closed before the broker acknowledged")
        if sources is None and produced.complete and not produced.failed:
            return None
        pending = self._pending
        results: list[BaseException | None] = []
        for i, r in enumerate(records):
            source = produced if sources is None else sources[i]
            if source is None:
                results.append(None)
            elif not source.complete:
                pending[r.id] = source
                results.append(BrokerUnavailableError(f"not acknowledged within {self.ack_timeout} s"))
            else:
                error = source.error(r.id)
                results.append(None if error is None else self._failure(error))
        return results

    def _failure(self, error: Any) -> BaseException:
        code = error.code() if hasattr(error, "code") else None
        text = error.str() if hasattr(error, "str") else str(error)
        retriable = bool(getattr(error, "retriable", lambda: False)())
        if retriable or code in self._transient or bool(getattr(error, "fatal", lambda: False)()):
            if getattr(error, "fatal", lambda: False)():
                # A fatal producer error (idempotence state lost): start a new producer.
                self._producer = self._ck.Producer(self._settings)
                self._pending.clear()
            return BrokerUnavailableError(f"Kafka: {text}")
        return PublishRefusedError(f"Kafka refused the record: {text}")

    def reopen(self) -> None:
        """Makes a closed publisher usable again (``Engine.start()`` calls it when it restores
        the publisher after a restart): a new producer. Nothing when open."""
        if not self._closed.is_set():
            return
        self._producer = self._ck.Producer(self._settings)
        self._pending.clear()
        self._closed.clear()

    def close(self) -> None:
        """Stops waiting, drops what is still queued (it was not acknowledged, so it is
        published again by the next run) and closes the producer. Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._producer.purge()
            self._producer.flush(1.0)
        except Exception:  # pragma: no cover - closing is best effort
            pass
