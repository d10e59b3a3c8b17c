"""WebSocket server mode, on the websockets library: ``pip install 'ego-cqrs[websocket]'``.

Where :class:`~ego.publishers.WebSocketPublisher` dials out and keeps one checkpoint, the
server lets any number of clients connect and read the journal from where *they* are: each
client names its position when it connects and keeps its own checkpoint, as a Kafka
consumer does. Nothing is acknowledged to the server; a client that loses its connection
reconnects with the last checkpoint it received and gets everything after it again.

The protocol, per connection:

- The client connects to ``ws://HOST:PORT/?from=SHARD:POSITION,SHARD:POSITION,...``
  (positions are exclusive: the records *after* them are sent; a shard left out starts at
  its beginning), ``?from=latest`` (only what is written from now on) or with no query
  (everything from the beginning).
- The server first sends a text frame ``{"from": {"SHARD": POSITION, ...}}``: the positions
  it starts from (with ``latest``, the journal's end when the connection opened).
- Then it sends every event of the journal after those positions, in position order per
  shard (so in sequence order per entity), one **binary** frame per event: the stored
  envelope (``ego.v1.Event``) as protobuf bytes (``format=ProtobufEnvelope()``, the default)
  or in protobuf's JSON mapping as a **text** frame (``format=ProtobufJson()``). Encrypted
  entities go out as stored (ciphertext; ``encryption_key_id`` names the key), and so do
  records of erased entities, whose key is gone (unreadable by anyone).
- After the frames of a batch it sends a text frame ``{"shard": S, "position": P}``: a
  checkpoint saying every event of shard ``S`` up to ``P`` has been sent. A client that
  stores the last checkpoint per shard and reconnects with ``?from=`` those positions
  misses nothing; it sees again at most the events after the last checkpoint it stored
  (same envelope, same ``persistence_id`` and ``sequence_number``: dedupe on those).
- It then follows the journal, polling every ``poll_interval`` seconds. A slow client slows
  only its own connection (each send waits for the socket to drain).
- A bad ``from`` closes the connection with code 1008 (policy violation) and the reason.

Example::

    with ego.publishers.WebSocketServer(engine, port=8765) as server:
        ...  # clients connect to ws://127.0.0.1:8765/?from=0:120,1:98

A client::

    async with websockets.connect("ws://127.0.0.1:8765/?from=latest") as ws:
        async for frame in ws:
            if isinstance(frame, bytes):
                event = ego.v1.Event.FromString(frame)
            else:
                checkpoint = json.loads(frame)  # {"shard": 0, "position": 121}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ego._loop_thread import LoopThread
from ego.errors import ConfigurationError, ValidationError
from ego.publishers._optional import require
from ego.publishers.formats import PayloadFormat, ProtobufEnvelope, ProtobufJson, envelope_json
from ego.stores import NativeStore
from ego.v1 import Event

__all__ = ["WebSocketServer", "parse_from"]

_POLICY_VIOLATION = 1008


def parse_from(query: str) -> dict[int, int] | None:
    """The start positions of a connection's query string: ``{shard: position}`` (positions
    exclusive), or ``None`` for ``from=latest``. An empty query starts every shard at 0.

    Raises :class:`~ego.errors.ValidationError` for anything else.

    Example::

        parse_from("from=0:120,3:7")  # {0: 120, 3: 7}
    """
    values = parse_qs(query, keep_blank_values=True).get("from", [])
    if not values:
        return {}
    if len(values) > 1:
        raise ValidationError("give from= once")
    text = values[0].strip()
    if text == "latest":
        return None
    positions: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        shard, sep, position = part.partition(":")
        if not sep or not shard.isdigit() or not position.isdigit():
            raise ValidationError(f"from= takes SHARD:POSITION pairs or 'latest', got {part!r}")
        if int(shard) in positions:
            raise ValidationError(f"shard {shard} is given twice in from=")
        if int(position) >= 2**63:
            raise ValidationError(f"position {position} is out of range")
        positions[int(shard)] = int(position)
    return positions


class WebSocketServer:
    """Serves the journal of an engine's (or a store's) events to WebSocket clients, each
    resuming from positions it gives (see the module docs for the protocol).

    - ``source``: an :class:`~ego.Engine` (its events store is read) or one of ego's stores
      (:class:`~ego.MemoryStore`, :class:`~ego.RocksDBStore`, :class:`~ego.PostgresStore`).
      Reading a RocksDB store needs the process that has it open: serve from the engine's
      process.
    - ``host``, ``port``: where to listen (``port=0``: a free port, see :attr:`port`).
    - ``format``: :class:`~ego.publishers.ProtobufEnvelope` (binary frames, the default) or
      :class:`~ego.publishers.ProtobufJson` (text frames).
    - ``batch_size``: events read per shard per round (and between checkpoints).
    - ``poll_interval``: seconds between looks at the journal when a client is caught up.
    - ``serve_options``: more keywords for ``websockets.serve`` (TLS, limits, ...).

    Raises :class:`~ego.errors.ConfigurationError` when websockets is missing, for a store
    written in Python (serve those from a publisher instead) or a bad setting, and
    ``OSError`` when the address is taken.
    """

    def __init__(
        self,
        source: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        format: PayloadFormat | None = None,
        batch_size: int = 1000,
        poll_interval: float = 0.1,
        serve_options: dict[str, Any] | None = None,
    ) -> None:
        self._server_module = require("websockets.asyncio.server", "websocket")
        store = _events_store(source)
        fmt = format if format is not None else ProtobufEnvelope()
        if not isinstance(fmt, ProtobufEnvelope | ProtobufJson):
            raise ConfigurationError(f"the WebSocket server sends ProtobufEnvelope or ProtobufJson, got {fmt!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
        self._store = store
        self._json = isinstance(fmt, ProtobufJson)
        self._batch = batch_size
        self._poll = float(poll_interval)
        self._loop = LoopThread("ego-websocket-server")
        self._closed = False

        async def listen() -> Any:
            return await self._server_module.serve(self._serve, host, port, **(serve_options or {}))

        try:
            self._server = self._loop.run(listen(), timeout=30)
        except BaseException:
            self._loop.stop()
            raise
        sockets = list(self._server.sockets)
        #: The port listened on (the one chosen when ``port=0``).
        self.port: int = sockets[0].getsockname()[1]
        self.host = host

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/``."""
        return f"ws://{self.host}:{self.port}/"

    async def _serve(self, ws: Any) -> None:
        path = getattr(getattr(ws, "request", None), "path", "/") or "/"
        try:
            start = parse_from(urlsplit(path).query)
        except ValidationError as e:
            await ws.close(_POLICY_VIOLATION, str(e)[:120])
            return
        if start is None:
            start = {shard: position for shard, position, _ in await asyncio.to_thread(self._store.shard_heads)}
        positions = dict(start)
        with contextlib.suppress(Exception):  # a client that goes away ends its task
            await ws.send(json.dumps({"from": {str(s): p for s, p in sorted(positions.items())}}))
            while True:
                sent = 0
                for shard, head, _ in await asyncio.to_thread(self._store.shard_heads):
                    after = positions.get(shard, 0)
                    if head <= after:
                        continue
                    raw = await asyncio.to_thread(self._store._shard_events, shard, after, self._batch)
                    if not raw:
                        continue
                    for frame in raw:
                        await ws.send(self._render(frame))
                    last = Event.FromString(raw[-1]).position
                    positions[shard] = last
                    await ws.send(json.dumps({"shard": shard, "position": last}))
                    sent += len(raw)
                if not sent:
                    await asyncio.sleep(self._poll)

    def _render(self, raw: bytes) -> bytes | str:
        if not self._json:
            return raw
        return json.dumps(envelope_json(Event.FromString(raw)), separators=(",", ":"))

    def close(self) -> None:
        """Stops listening, closes every connection and the server's thread. Idempotent."""
        if self._closed:
            return
        self._closed = True

        async def shut() -> None:
            self._server.close()
            await self._server.wait_closed()

        with contextlib.suppress(Exception):  # closing is best effort
            self._loop.run(shut(), timeout=5)
        self._loop.stop()

    def __enter__(self) -> WebSocketServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _events_store(source: Any) -> NativeStore:
    stores: Iterable[Any] = getattr(source, "stores", None) or [source]
    store = next(iter(stores), None)
    if not isinstance(store, NativeStore):
        raise ConfigurationError(
            f"the WebSocket server reads one of ego's own stores (an Engine on one, or the store), got {store!r}"
        )
    return store
