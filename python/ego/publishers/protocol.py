"""The publisher protocol: a batch of records in, acknowledgements out.

A publisher is any object with ``publish(records)`` (plain or ``async def``) and, optionally,
``close()``, ``reopen()`` and ``format`` (a :class:`~ego.publishers.PayloadFormat`; default
:class:`~ego.publishers.ProtobufEnvelope`). ``engine.stop()`` calls ``close()``; a restart
(``engine.start()``) calls ``reopen()`` and adds the publisher again (one with ``close()``
but no ``reopen()`` is not restored). ``publish`` returns once the broker acknowledged
the records, with one of:

- ``None``: every record is acknowledged;
- a list as long as ``records``: ``None`` for an acknowledged record, an exception for one
  that is not.

It may also raise, which counts for every record of the call. An exception that is an
:class:`~ego.errors.BrokerUnavailableError`, ``ConnectionError`` or ``TimeoutError`` is
transient: the records not acknowledged are handed over again after a backoff, as long as it
takes. Any other exception means the broker refused the record for good, and the publisher's
failure policy applies (stop, or skip to the dead-letter handler).

A publisher may also have ``send(records)`` (plain, not ``async def``): it hands the records
to the client without waiting and returns a callable that waits for their acknowledgements and
returns (or raises) as ``publish`` would. ego then calls ``send`` on the publisher's thread and
the callable on a second thread, so one batch per shard can be in flight at once instead of
one per publisher (:class:`~ego.publishers.KafkaPublisher` does this); the callables of several
sends may run while another ``send`` is under way, so the client must allow that.

A publisher never sees a record again once it acknowledged it (unless the process stopped
before the checkpoint was written), and records of one entity come in sequence order.

Example::

    class Webhook:
        def publish(self, records: list[ego.publishers.Record]) -> None:
            for r in records:
                try:
                    response = session.post(URL, data=r.value, headers=r.headers, timeout=5)
                except requests.ConnectionError as e:
                    raise ego.errors.BrokerUnavailableError(str(e)) from e
                response.raise_for_status()   # a 4xx: refused for good

    engine.add_event_publisher(Webhook(), name="webhook")
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol, runtime_checkable

from ego.publishers.records import Record

__all__ = ["Acknowledgements", "EventPublisher", "StatePublisher"]

Acknowledgements = Sequence[BaseException | None] | None
"""``None`` (all acknowledged) or one entry per record: ``None`` or the record's error."""


@runtime_checkable
class EventPublisher(Protocol):
    """Publishes events (the Go library's ``EventPublisher``); see the module docs."""

    def publish(self, records: list[Record]) -> Acknowledgements | Awaitable[Acknowledgements]: ...


@runtime_checkable
class StatePublisher(Protocol):
    """Publishes durable-state versions (the Go library's ``StatePublisher``); the same
    protocol as :class:`EventPublisher`."""

    def publish(self, records: list[Record]) -> Acknowledgements | Awaitable[Acknowledgements]: ...
