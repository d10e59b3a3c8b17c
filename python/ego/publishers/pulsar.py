"""Pulsar publisher, on the official pulsar-client: ``pip install 'ego-cqrs[pulsar]'``.

Each record is one Pulsar message: partition key and ordering key = the persistence id,
properties = the format's headers (``ego-event-id`` among them), and a sequence id for the
broker's deduplication: one producer per journal shard, named ``<producer_name>-<shard>``,
sends the records of that shard with sequence id = their position in the shard (strictly
increasing), so a broker with deduplication on drops a record sent again after a restart.

The producers retry inside the client without a deadline (``send_timeout_millis=0``) and resend
in order after a reconnect; ``publish`` reports records still unacknowledged after
``ack_timeout`` as :class:`~ego.errors.BrokerUnavailableError`, and a retry waits for them
instead of sending them again.

Example::

    engine.add_event_publisher(PulsarPublisher("pulsar://127.0.0.1:6650"), name="pulsar")
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ego.errors import BrokerUnavailableError, ConfigurationError, PublisherClosedError, PublishRefusedError
from ego.publishers._optional import require
from ego.publishers.formats import PayloadFormat
from ego.publishers.records import Record

__all__ = ["PulsarPublisher"]

_TRANSIENT = (
    "AlreadyClosed",
    "BrokerMetadataError",
    "BrokerPersistenceError",
    "ConnectError",
    "Interrupted",
    "LookupError",
    "MemoryBufferIsFull",
    "NotConnected",
    "ProducerBlockedQuotaExceededError",
    "ProducerBlockedQuotaExceededException",
    "ProducerBusy",
    "ProducerNotInitialized",
    "ProducerQueueIsFull",
    "ReadError",
    "ServiceUnitNotReady",
    "Timeout",
    "TooManyLookupRequestException",
    "UnknownError",
)


class _Pending:
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = False
        self.result: Any = None


class PulsarPublisher:
    """Publishes records to one Pulsar topic.

    - ``service_url``: ``pulsar://host:port`` (or ``pulsar+ssl://``).
    - ``topic``: default ``"persistent://public/default/ego-events"``.
    - ``producer_name``: prefix of the per-shard producer names (default: ``"ego-"`` + the
      topic's last part); keep it stable across restarts for deduplication.
    - ``format``: a payload format (default :class:`~ego.publishers.ProtobufEnvelope`).
    - ``ack_timeout``: seconds ``publish`` waits before it reports the rest as pending.
    - ``client_options`` / ``producer_options``: more keywords for ``pulsar.Client`` and
      ``create_producer`` (authentication, TLS, batching, compression).

    Raises :class:`~ego.errors.ConfigurationError` when pulsar-client is missing or a setting
    is invalid.
    """

    id = "ego-pulsar"

    def __init__(
        self,
        service_url: str,
        topic: str = "persistent://public/default/ego-events",
        *,
        producer_name: str | None = None,
        format: PayloadFormat | None = None,
        ack_timeout: float = 5.0,
        client_options: Mapping[str, Any] | None = None,
        producer_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._pulsar = require("pulsar", "pulsar")
        if not isinstance(service_url, str) or not service_url.startswith(("pulsar://", "pulsar+ssl://")):
            raise ConfigurationError(f"service_url must be a pulsar:// or pulsar+ssl:// URL, got {service_url!r}")
        if not isinstance(topic, str) or not topic:
            raise ConfigurationError(f"topic must be a non-empty str, got {topic!r}")
        if not ack_timeout > 0:
            raise ConfigurationError(f"ack_timeout must be a positive number of seconds, got {ack_timeout!r}")
        self.service_url = service_url
        self.topic = topic
        self.producer_name = producer_name or "ego-" + topic.rsplit("/", 1)[-1]
        self.format = format
        self.ack_timeout = float(ack_timeout)
        options: dict[str, Any] = {"operation_timeout_seconds": 10, "connection_timeout_ms": 2000}
        options.update(client_options or {})
        if "logger" not in options:
            import logging

            options["logger"] = logging.getLogger("ego.publishers.pulsar")
        self._producer_options: dict[str, Any] = {
            "send_timeout_millis": 0,
            "block_if_queue_full": True,
            "max_pending_messages": 20_000,
            "batching_enabled": True,
            "batching_max_messages": 1000,
            "batching_max_publish_delay_ms": 1,
        }
        self._producer_options.update(producer_options or {})
        self._client_options = options
        self._client = self._new_client()
        self._producers: dict[int, Any] = {}
        self._pending: dict[str, _Pending] = {}
        self._cond = threading.Condition()
        self._closed = False

    def _new_client(self) -> Any:
        try:
            return self._pulsar.Client(self.service_url, **self._client_options)
        except Exception as e:
            raise ConfigurationError(f"invalid Pulsar settings: {e}") from e

    def _producer(self, shard: int) -> Any:
        producer = self._producers.get(shard)
        if producer is None:
            try:
                producer = self._client.create_producer(
                    self.topic, producer_name=f"{self.producer_name}-{shard}", **self._producer_options
                )
            except Exception as e:
                raise self._failure_of(e) from e
            self._producers[shard] = producer
        return producer

    def publish(self, records: Sequence[Record]) -> list[BaseException | None] | None:
        """Sends the records not already in flight and waits for their acknowledgements."""
        if self._closed:
            raise PublisherClosedError("the Pulsar publisher is closed")
        cond, pending = self._cond, self._pending
        waiting: list[_Pending] = []
        for r in records:
            p = pending.get(r.id)
            if p is None or (p.done and p.result is not None):
                p = _Pending()
                pending[r.id] = p

                def settle(result: Any, _message_id: Any, p: _Pending = p) -> None:
                    with cond:
                        p.result = None if result == self._pulsar.Result.Ok else result
                        p.done = True
                        cond.notify_all()

                try:
                    self._producer(r.shard).send_async(
                        r.value,
                        settle,
                        properties=r.headers,
                        partition_key=r.key,
                        ordering_key=r.key,
                        sequence_id=r.position,
                    )
                except Exception as e:
                    p.result, p.done = e, True
            waiting.append(p)
        deadline = time.monotonic() + self.ack_timeout
        with cond:
            while not self._closed and not all(p.done for p in waiting):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                cond.wait(left)
        results: list[BaseException | None] = []
        failed = False
        for r, p in zip(records, waiting, strict=True):
            if not p.done:
                failed = True
                results.append(BrokerUnavailableError(f"not acknowledged within {self.ack_timeout} s"))
                continue
            del pending[r.id]
            if p.result is None:
                results.append(None)
            else:
                failed = True
                results.append(self._failure_of(p.result))
        if self._closed and failed:
            raise PublisherClosedError("the Pulsar publisher was closed before the broker acknowledged")
        return results if failed else None

    def _failure_of(self, error: Any) -> BaseException:
        if isinstance(error, (BrokerUnavailableError, PublishRefusedError)):
            return error
        name = error.name if isinstance(error, self._pulsar.Result) else type(error).__name__
        if name in _TRANSIENT or isinstance(error, (TimeoutError, ConnectionError)):
            return BrokerUnavailableError(f"Pulsar: {name}: {error}")
        return PublishRefusedError(f"Pulsar refused the record: {name}: {error}")

    def reopen(self) -> None:
        """Makes a closed publisher usable again (``Engine.start()`` calls it when it restores
        the publisher after a restart): a new client, whose producers (same names) are created
        on the next publish; what the old client had in flight was reported unacknowledged, so
        it is sent again from the checkpoint. Nothing when open."""
        if not self._closed:
            return
        self._client = self._new_client()
        self._producers = {}
        self._pending = {}
        self._closed = False

    def close(self) -> None:
        """Stops waiting and closes the producers and the client. Idempotent."""
        if self._closed:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        with contextlib.suppress(Exception):  # closing is best effort
            self._client.close()
