"""WebSocket publisher, on the websockets library: ``pip install 'ego-cqrs[websocket]'``.

The Go library's shape: the publisher dials a URL and sends each record as one binary frame
(the payload; WebSocket frames have no headers, so CloudEvents binary mode is refused: use
structured mode). Unlike the Go library it reconnects, and it resumes: records the peer has
not acknowledged are sent again on the new connection, in order.

Acknowledgements (``acks``):

- ``"peer"`` (default): the peer acknowledges with text frames holding the number of binary
  frames it has taken on this connection so far (cumulative, e.g. ``"512"``). A record counts
  as delivered only then: nothing is lost when the peer or the connection fails.
- ``"sent"``: a frame written to the connection counts as delivered (a peer that never
  answers, as the Go library's). Records in flight when the connection breaks may be lost.

Example::

    engine.add_event_publisher(WebSocketPublisher("ws://127.0.0.1:8765/events"), name="ws")

A peer that acknowledges::

    async def handler(ws):
        taken = 0
        async for frame in ws:
            event = ego.v1.Event.FromString(frame)
            taken += 1
            await ws.send(str(taken))
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from ego._loop_thread import LoopThread
from ego.errors import BrokerUnavailableError, ConfigurationError, PublisherClosedError
from ego.publishers._optional import require
from ego.publishers.formats import CloudEventsBinary, PayloadFormat
from ego.publishers.records import Record

__all__ = ["WebSocketPublisher"]


class WebSocketPublisher:
    """Publishes records as binary frames to a WebSocket server.

    - ``url``: ``ws://`` or ``wss://``.
    - ``acks``: ``"peer"`` or ``"sent"`` (see the module docs).
    - ``format``: a payload format (default :class:`~ego.publishers.ProtobufEnvelope`; not
      :class:`~ego.publishers.CloudEventsBinary`).
    - ``ack_timeout``: seconds to wait for the peer's acknowledgements (and to connect).
    - ``connect_options``: more keywords for ``websockets.connect`` (headers, TLS, ...).

    Raises :class:`~ego.errors.ConfigurationError` when websockets is missing or a setting is
    invalid.
    """

    id = "ego-websocket"

    def __init__(
        self,
        url: str,
        *,
        acks: str = "peer",
        format: PayloadFormat | None = None,
        ack_timeout: float = 5.0,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._client = require("websockets.asyncio.client", "websocket")
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ConfigurationError(f"url must be a ws:// or wss:// URL, got {url!r}")
        if acks not in ("peer", "sent"):
            raise ConfigurationError(f'acks must be "peer" or "sent", got {acks!r}')
        if isinstance(format, CloudEventsBinary):
            raise ConfigurationError("WebSocket frames have no headers: use CloudEventsStructured, not CloudEventsBinary")
        if not ack_timeout > 0:
            raise ConfigurationError(f"ack_timeout must be a positive number of seconds, got {ack_timeout!r}")
        self.url = url
        self.acks = acks
        self.format = format
        self.ack_timeout = float(ack_timeout)
        self._connect_options = dict(connect_options or {})
        self._loop = LoopThread("ego-websocket")
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._sent = 0
        self._acked = 0
        self._changed: asyncio.Event | None = None
        self._closed = False

    def publish(self, records: Sequence[Record]) -> list[BaseException | None] | None:
        """Sends the records as frames and waits for the peer's acknowledgements."""
        if self._closed:
            raise PublisherClosedError("the WebSocket publisher is closed")
        return self._loop.run(self._publish(list(records)))

    async def _connect(self) -> Any:
        if self._ws is not None:
            return self._ws
        try:
            ws = await asyncio.wait_for(self._client.connect(self.url, **self._connect_options), self.ack_timeout)
        except Exception as e:
            raise BrokerUnavailableError(f"cannot connect to {self.url}: {type(e).__name__}: {e}") from e
        self._ws, self._sent, self._acked = ws, 0, 0
        self._changed = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read_acks(ws))
        return ws

    async def _read_acks(self, ws: Any) -> None:
        try:
            async for message in ws:
                if isinstance(message, str) and message.strip().isdigit():
                    self._acked = max(self._acked, int(message))
                    assert self._changed is not None
                    self._changed.set()
        except Exception:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
            if self._changed is not None:
                self._changed.set()

    async def _publish(self, records: list[Record]) -> list[BaseException | None] | None:
        ws = await self._connect()
        base = self._sent
        sent = 0
        error: BaseException | None = None
        try:
            for r in records:
                await ws.send(r.value)
                sent += 1
                self._sent += 1
        except Exception as e:
            error = e
            self._ws = None
        if self.acks == "sent":
            if error is None:
                return None
            acked_upto = sent
        else:
            target = base + sent
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.ack_timeout
            while self._acked < target and self._ws is ws and not self._closed:
                left = deadline - loop.time()
                if left <= 0:
                    break
                assert self._changed is not None
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except asyncio.TimeoutError:
                    break
            acked_upto = max(0, self._acked - base)
            if acked_upto >= len(records):
                return None
        why = f"{type(error).__name__}: {error}" if error else f"the peer acknowledged {acked_upto} of {len(records)} frames"
        return [None if i < acked_upto else BrokerUnavailableError(f"WebSocket {self.url}: {why}") for i in range(len(records))]

    def reopen(self) -> None:
        """Makes a closed publisher usable again (``Engine.start()`` calls it when it restores
        the publisher after a restart): the next publish connects anew. Nothing when open."""
        if not self._closed:
            return
        self._loop = LoopThread("ego-websocket")
        self._ws, self._reader, self._changed = None, None, None
        self._sent = self._acked = 0
        self._closed = False

    def close(self) -> None:
        """Closes the connection and its thread. Idempotent."""
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            if self._ws is not None:
                await self._ws.close()

        with contextlib.suppress(Exception):  # closing is best effort
            self._loop.run(shut(), timeout=5)
        self._loop.stop()
