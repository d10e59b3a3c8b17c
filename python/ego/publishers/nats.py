"""NATS JetStream publisher, on nats-py: ``pip install 'ego-cqrs[nats]'``.

Each record is one JetStream message on a subject per entity type (configurable), with the
headers of the format and ``Nats-Msg-Id`` = the event id (``persistence_id:sequence_number``),
so the stream drops a record published twice within its duplicate window: a consumer of the
stream sees each event once, even across restarts of the publisher.

Order: JetStream has no per-key ordering of its own across reconnects, so a batch goes out in
waves (the first record of every entity in the batch, then the second, ...), each wave
acknowledged before the next is sent: a record never reaches the stream before the earlier
records of its entity. A batch of many entities is one or two waves.

Example::

    engine.add_event_publisher(NatsPublisher("nats://127.0.0.1:4222"), name="nats")
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ego._loop_thread import LoopThread
from ego.errors import BrokerUnavailableError, ConfigurationError, PublisherClosedError, PublishRefusedError
from ego.publishers._optional import require
from ego.publishers.formats import PayloadFormat
from ego.publishers.records import Record

__all__ = ["NatsPublisher", "entity_type"]

_NOT_A_TOKEN = re.compile(r"[\s.*>]")
_TYPE_END = re.compile(r"[-:/]")


def entity_type(persistence_id: str) -> str:
    """The entity type a persistence id names: its text before the first ``-``, ``:`` or
    ``/`` (``account-42`` -> ``account``), made a valid subject token."""
    return _NOT_A_TOKEN.sub("_", _TYPE_END.split(persistence_id, 1)[0]) or "_"


class NatsPublisher:
    """Publishes records to a JetStream stream.

    - ``servers``: a ``nats://`` URL or a list of them.
    - ``subject``: a template with ``{entity_type}`` (see :func:`entity_type`) and
      ``{event_type}`` (the message's full name), or a callable ``record -> subject``
      (default ``"ego.events.{entity_type}"``).
    - ``stream``: the stream name; with ``create_stream`` (default) it is created when missing,
      on ``stream_subjects`` (default: the template's fixed prefix followed by ``>``), with a
      ``duplicate_window`` in seconds (default 120).
    - ``format``: a payload format (default :class:`~ego.publishers.ProtobufEnvelope`);
      CloudEvents binary attributes go out as ``ce-*`` headers (the NATS binding).
    - ``ack_timeout``: seconds to wait for a wave's acknowledgements.
    - ``connect_options``: more ``nats.connect`` keywords (credentials, TLS, ...).

    Raises :class:`~ego.errors.ConfigurationError` when nats-py is missing or a setting is
    invalid.
    """

    id = "ego-nats"

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        subject: str | Callable[[Record], str] = "ego.events.{entity_type}",
        stream: str = "EGO_EVENTS",
        stream_subjects: Sequence[str] | None = None,
        create_stream: bool = True,
        duplicate_window: float = 120.0,
        format: PayloadFormat | None = None,
        ack_timeout: float = 5.0,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._nats = require("nats", "nats")
        require("nats.js", "nats")
        urls = [servers] if isinstance(servers, str) else list(servers)
        if not urls or not all(isinstance(u, str) and u.startswith(("nats://", "tls://")) for u in urls):
            raise ConfigurationError(f"servers must be nats:// or tls:// URLs, got {servers!r}")
        if not ack_timeout > 0:
            raise ConfigurationError(f"ack_timeout must be a positive number of seconds, got {ack_timeout!r}")
        if isinstance(subject, str):
            if not subject or subject.startswith(".") or subject.endswith("."):
                raise ConfigurationError(f"invalid subject template {subject!r}")
            template = subject
            fixed = template.split("{", 1)[0].rstrip(".")
            if stream_subjects is None:
                stream_subjects = [f"{fixed}.>" if fixed else ">"]
            self._subject: Callable[[Record], str] = lambda r: template.format(
                entity_type=entity_type(r.key), event_type=r.source.type_url.rsplit("/", 1)[-1]
            )
        elif callable(subject):
            self._subject = subject
        else:
            raise ConfigurationError(f"subject must be a template str or a callable, got {subject!r}")
        if create_stream and not stream_subjects:
            raise ConfigurationError("create_stream needs stream_subjects when subject is a callable")
        self.servers = urls
        self.stream = stream
        self.stream_subjects = list(stream_subjects or [])
        self.create_stream = create_stream
        self.duplicate_window = float(duplicate_window)
        self.format = format
        self.ack_timeout = float(ack_timeout)
        self._connect_options = dict(connect_options or {})
        self._loop = LoopThread(f"ego-nats-{stream}")
        self._nc: Any = None
        self._js: Any = None
        self._closed = False
        errors, js_errors = self._nats.errors, self._nats.js.errors
        self._transient = (
            errors.TimeoutError,
            errors.NoRespondersError,
            errors.StaleConnectionError,
            errors.OutboundBufferLimitError,
            errors.ConnectionClosedError,
            errors.NoServersError,
            errors.ConnectionReconnectingError,
            errors.ConnectionDrainingError,
            js_errors.NoStreamResponseError,
            js_errors.TooManyStalledMsgsError,
            js_errors.ServiceUnavailableError,
            js_errors.ServerError,
            asyncio.TimeoutError,
            # nats-py cancels the pending acknowledgements of a connection it lost.
            asyncio.CancelledError,
            OSError,
        )

    def publish(self, records: Sequence[Record]) -> list[BaseException | None] | None:
        """Publishes the records wave by wave and waits for the stream's acknowledgements."""
        if self._closed:
            raise PublisherClosedError("the NATS publisher is closed")
        return self._loop.run(self._publish(list(records)))

    async def _connect(self) -> Any:
        if self._nc is not None and not self._nc.is_closed:
            return self._js
        options = {
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
            "connect_timeout": 2,
            **self._connect_options,
        }
        try:
            # nats-py retries a first connection forever with max_reconnect_attempts=-1: bound
            # it, so a publish while the server is down fails (and is retried) instead of hanging.
            limit = max(5.0, 2 * float(options["connect_timeout"]))
            self._nc = await asyncio.wait_for(self._nats.connect(servers=self.servers, **options), timeout=limit)
        except Exception as e:
            self._nc = None
            raise BrokerUnavailableError(f"cannot connect to NATS at {self.servers}: {type(e).__name__}: {e}") from e
        self._js = self._nc.jetstream(timeout=self.ack_timeout)
        if self.create_stream:
            try:
                await self._js.stream_info(self.stream)
            except self._nats.js.errors.NotFoundError:
                await self._js.add_stream(name=self.stream, subjects=self.stream_subjects, duplicate_window=self.duplicate_window)
        return self._js

    async def _publish(self, records: list[Record]) -> list[BaseException | None] | None:
        try:
            js = await self._connect()
        except BaseException as e:
            raise self._failure(e) from e
        waves: list[list[int]] = []
        seen: dict[str, int] = {}
        for i, r in enumerate(records):
            n = seen.get(r.key, 0)
            seen[r.key] = n + 1
            if n == len(waves):
                waves.append([])
            waves[n].append(i)
        results: list[BaseException | None] = [None] * len(records)
        failed = False
        for wave in waves:
            if failed or self._closed:
                for i in wave:
                    results[i] = BrokerUnavailableError("not sent: an earlier record of the batch is not acknowledged")
                continue
            futures: list[Any] = []
            for i in wave:
                r = records[i]
                headers = dict(r.headers)
                headers["Nats-Msg-Id"] = r.id
                if any(k.startswith("ce_") for k in headers):
                    headers = {("ce-" + k[3:] if k.startswith("ce_") else k): v for k, v in headers.items()}
                try:
                    futures.append(await js.publish_async(self._subject(r), r.value, headers=headers))
                except BaseException as e:
                    futures.append(e)
            pending = [f for f in futures if isinstance(f, asyncio.Future)]
            if pending:
                await asyncio.wait(pending, timeout=self.ack_timeout)
            for i, f in zip(wave, futures, strict=True):
                if isinstance(f, BaseException):
                    results[i] = self._failure(f)
                elif not f.done():
                    f.cancel()
                    results[i] = BrokerUnavailableError(f"not acknowledged within {self.ack_timeout} s")
                elif f.cancelled():
                    results[i] = BrokerUnavailableError("the acknowledgement was cancelled: the connection was lost")
                elif f.exception() is not None:
                    results[i] = self._failure(f.exception())
                if results[i] is not None:
                    failed = True
        if failed and any(isinstance(r, BrokerUnavailableError) for r in results):
            # Start the next attempt on a fresh connection (and stream check) rather than on
            # one nats-py may still be reconnecting: a restarted server is then used at once.
            await self._drop_connection()
        return results if failed else None

    async def _drop_connection(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):  # the connection is being given up
                await asyncio.wait_for(nc.close(), timeout=2)

    def _failure(self, error: BaseException) -> BaseException:
        if isinstance(error, (BrokerUnavailableError, PublishRefusedError)):
            return error
        if isinstance(error, self._transient):
            return BrokerUnavailableError(f"NATS: {type(error).__name__}: {error}")
        return PublishRefusedError(f"NATS refused the record: {type(error).__name__}: {error}")

    def reopen(self) -> None:
        """Makes a closed publisher usable again (``Engine.start()`` calls it when it restores
        the publisher after a restart): the next publish connects anew. Nothing when open."""
        if not self._closed:
            return
        self._loop = LoopThread(f"ego-nats-{self.stream}")
        self._nc, self._js = None, None
        self._closed = False

    def close(self) -> None:
        """Closes the connection and its thread. Idempotent."""
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.close()

        with contextlib.suppress(Exception):  # closing is best effort
            self._loop.run(shut(), timeout=5)
        self._loop.stop()
