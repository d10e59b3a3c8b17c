"""Glue between the journal reader (the projection runtime) and a publisher: renders each
batch, hands it over, keeps track of what the broker acknowledged, and tells the runtime
whether a failure is transient (retry, as long as it takes) or a refusal (failure policy).
Not public API."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from ego._ego import PersistedEvent
from ego.errors import BrokerUnavailableError, PublisherClosedError, PublishRefusedError
from ego.publishers.formats import EVENT_ID_HEADER, PayloadFormat, ProtobufEnvelope
from ego.publishers.records import Record, Source

__all__ = ["PublisherRunner", "is_transient"]

_TRANSIENT = (BrokerUnavailableError, ConnectionError, TimeoutError)


class EnvelopeLayout(NamedTuple):
    """What the engine needs to build the records of the default format itself
    (``rust/py/src/projection.rs``, ``EnvelopeRecords``): the same ``Record`` tuples, with the
    headers :meth:`ProtobufEnvelope.render` gives, without a Python call per record."""

    record: type[Record]
    event_content_type: str
    state_content_type: str
    content_type_header: str
    event_id_header: str
    key_id_header: str
    erased_header: str
    erased_value: str


ENVELOPE_LAYOUT = EnvelopeLayout(
    Record,
    ProtobufEnvelope._EVENT,
    ProtobufEnvelope._STATE,
    "content-type",
    EVENT_ID_HEADER,
    "ego-encryption-key-id",
    "ego-erased",
    "true",
)


def is_transient(error: BaseException) -> bool:
    """Whether a publisher's error asks for a retry rather than the failure policy."""
    return isinstance(error, _TRANSIENT)


def is_erased(source: Source) -> bool:
    """Whether `source` is the tombstone of an erased entity's record (its entity's data key
    was erased: see docs/encryption.md)."""
    return bool(getattr(source, "erased", False))


class PublisherRunner:
    """The handler a publisher's journal reader calls with each batch of one shard."""

    def __init__(self, publisher: Any, name: str) -> None:
        self.publisher = publisher
        self.name = name
        fmt = getattr(publisher, "format", None)
        self.format: PayloadFormat = fmt if fmt is not None else ProtobufEnvelope()
        # The default format's records are built by the engine, which hands them over
        # instead of the journal entries (see EnvelopeLayout).
        self.envelope_records = ENVELOPE_LAYOUT if type(self.format) is ProtobufEnvelope else None
        self.closed = False
        # Per shard: ids the broker acknowledged in the batch being handled (with their
        # positions), so a batch handed over again after a failure skips them.
        self._acked: dict[int, dict[str, int]] = {}
        self.is_async = inspect.iscoroutinefunction(publisher.publish)
        # A connector with `send` (hand over now, wait later) is driven in two phases: the
        # projection's thread calls `submit`, a second thread the callable it returns, so
        # batches of several shards are in flight at once (rust/py/src/projection.rs).
        self.two_phase = callable(getattr(publisher, "send", None)) and not self.is_async

    def __call__(self, sources: list[Any]) -> Awaitable[None] | None:
        if self.closed:
            raise PublisherClosedError(f"publisher {self.name!r} is closed")
        records, acked = self._records(sources)
        if self.is_async:
            return self._finish_async(records, acked)
        try:
            outcome = self.publisher.publish(records) if records else None
        except BaseException as e:
            raise self._error(e, len(records)) from e
        self._settle(records, acked, outcome)
        return None

    def submit(self, sources: list[Any]) -> Callable[[], None] | None:
        """The first phase of a two-phase publisher: renders the batch and hands it to
        ``publisher.send``; returns None when there is nothing to send, or a callable that
        waits for the acknowledgements and raises as ``__call__`` does."""
        if self.closed:
            raise PublisherClosedError(f"publisher {self.name!r} is closed")
        records, acked = self._records(sources)
        if not records:
            return None
        try:
            wait = self.publisher.send(records)
        except BaseException as e:
            raise self._error(e, len(records)) from e

        def acknowledged() -> None:
            try:
                outcome = wait()
            except BaseException as e:
                raise self._error(e, len(records)) from e
            self._settle(records, acked, outcome)

        return acknowledged

    async def _finish_async(self, records: list[Record], acked: dict[str, int]) -> None:
        try:
            outcome = await self.publisher.publish(records) if records else None
        except BaseException as e:
            raise self._error(e, len(records)) from e
        self._settle(records, acked, outcome)

    def _records(self, sources: list[Any]) -> tuple[list[Record], dict[str, int]]:
        """The batch's records, less those the broker already acknowledged. `sources` are
        the journal entries, or (default format) the records the engine built of them."""
        first = sources[0]
        shard, start = first.shard, _position(first)
        acked = self._acked.setdefault(shard, {})
        if acked:
            for done in [i for i, p in acked.items() if p < start]:
                del acked[done]
        if self.envelope_records is not None:
            return (sources if not acked else [r for r in sources if r.id not in acked]), acked
        render = self.format.render
        records: list[Record] = []
        append = records.append
        for s in sources:
            event_id = s.event_id
            if acked and event_id in acked:
                continue
            if type(s) is PersistedEvent:
                erased, position = s.erased, s.position
            else:
                erased, position = is_erased(s), _position(s)
            value, headers = render(s)
            if erased:
                headers["ego-erased"] = "true"
            append(Record(event_id, s.persistence_id, value, headers, s.shard, position, s, erased))
        return records, acked

    def _error(self, e: BaseException, count: int) -> BaseException:
        if is_transient(e):
            if isinstance(e, BrokerUnavailableError):
                return e
            return BrokerUnavailableError(f"{count} record(s) not acknowledged: {type(e).__name__}: {e}")
        return e

    def _settle(self, records: list[Record], acked: dict[str, int], outcome: Any) -> None:
        # `acked` remembers what the broker took of a batch that failed in part, for when its
        # records are handed over again; a call acknowledged whole is never handed over again,
        # so its records need no entry (entries behind the next batch's start are dropped).
        if outcome is None:
            return
        if not isinstance(outcome, Sequence) or len(outcome) != len(records):
            raise PublishRefusedError(
                f"publisher {self.name!r} returned {outcome!r}: publish() must return None or one entry per record"
            )
        transient: list[BaseException] = []
        refused: list[tuple[Record, BaseException]] = []
        for r, result in zip(records, outcome, strict=True):
            if result is None:
                acked[r.id] = r.position
            elif is_transient(result):
                transient.append(result)
            else:
                refused.append((r, result))
        if transient:
            first = transient[0]
            raise BrokerUnavailableError(
                f"{len(transient)} of {len(records)} record(s) not acknowledged: {type(first).__name__}: {first}"
            ) from first
        if refused:
            record, error = refused[0]
            if isinstance(error, PublishRefusedError) and len(refused) == 1:
                raise error
            raise PublishRefusedError(
                f"the broker refused {len(refused)} record(s), the first {record.id}: {type(error).__name__}: {error}"
            ) from error

    def close(self) -> None:
        """Makes every later call fail as closed, and closes the publisher."""
        self.closed = True
        close = getattr(self.publisher, "close", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                import asyncio

                asyncio.run(_await(result))


async def _await(result: Awaitable[Any]) -> None:
    await result


def _position(source: Source) -> int:
    return int(getattr(source, "position", 0))
