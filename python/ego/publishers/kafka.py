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
from collections.abc import Mapping, Sequence
from typing import Any

from ego.errors import BrokerUnavailableError, ConfigurationError, PublisherClosedError, PublishRefusedError
from ego.publishers._optional import require
from ego.publishers.formats import PayloadFormat
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


class _Waiting:
    """How many records of the current ``publish`` call still wait for their delivery report."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = 0


class _Pending:
    """One produced record until its delivery report comes."""

    __slots__ = ("done", "error", "waiting")

    def __init__(self, waiting: _Waiting) -> None:
        self.done = False
        self.error: Any = None
        self.waiting = waiting

    def delivered(self, error: Any, _message: Any) -> None:
        self.error = error
        self.done = True
        self.waiting.left -= 1


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
        self._pending: dict[str, _Pending] = {}
        self._closed = threading.Event()
        self._transient = {getattr(self._ck.KafkaError, c) for c in _TRANSIENT_CODES if hasattr(self._ck.KafkaError, c)}

    def publish(self, records: Sequence[Record]) -> list[BaseException | None] | None:
        """Produces the records not already in flight and waits for their acknowledgements."""
        if self._closed.is_set():
            raise PublisherClosedError("the Kafka publisher is closed")
        producer, pending, topic = self._producer, self._pending, self.topic
        waiting = _Waiting()
        handles: list[_Pending] = []
        append = handles.append
        for r in records:
            # A record still queued from a call that gave up waiting is not produced again
            # (that would duplicate it and could reorder its key): its report is awaited.
            p = pending.pop(r.id, None) if pending else None
            if p is not None and not (p.done and p.error is not None):
                p.waiting = waiting
                if not p.done:
                    waiting.left += 1
                append(p)
                continue
            p = _Pending(waiting)
            waiting.left += 1
            value = None if r.erased else r.value
            while True:
                try:
                    producer.produce(topic, value, r.key, headers=r.headers, on_delivery=p.delivered)
                    break
                except BufferError:
                    producer.poll(0.01)
                except self._ck.KafkaException as e:
                    p.error = e.args[0] if e.args else e
                    p.done = True
                    waiting.left -= 1
                    break
            append(p)
        deadline = time.monotonic() + self.ack_timeout
        producer.poll(0)
        while waiting.left > 0 and not self._closed.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            producer.flush(min(left, 0.05))
        if self._closed.is_set() and waiting.left > 0:
            raise PublisherClosedError("the Kafka publisher was closed before the broker acknowledged")
        if waiting.left == 0 and all(p.error is None for p in handles):
            return None
        results: list[BaseException | None] = []
        for r, p in zip(records, handles, strict=True):
            if not p.done:
                pending[r.id] = p
                results.append(BrokerUnavailableError(f"not acknowledged within {self.ack_timeout} s"))
            elif p.error is None:
                results.append(None)
            else:
                results.append(self._failure(p.error))
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
