"""What a publisher is handed: one :class:`Record` per journal entry, already rendered in the
publisher's payload format."""

from __future__ import annotations

from typing import NamedTuple

from ego._ego import PersistedEvent, PersistedState

__all__ = ["Record", "Source"]

Source = PersistedEvent | PersistedState


class Record(NamedTuple):
    """One event (or durable-state version) ready for a broker (an immutable named tuple:
    fields by name, cheap to create, one per record on the publishing path).

    - ``id``: the stable id, ``persistence_id:sequence_number`` (``persistence_id:version`` for
      states): the same on every attempt, for the broker's deduplication.
    - ``key``: the persistence id (partition / ordering key).
    - ``value``: the payload in the publisher's format (bytes).
    - ``headers``: the format's headers (``content-type``, ``ego-event-id``, ``ce_*``, ...).
    - ``erased``: a tombstone of an erased entity (see docs/publishers.md for its shape);
      brokers with native tombstones (Kafka) send a null value instead of ``value``.
    - ``shard`` / ``position``: where the entry is in the journal (``position`` is strictly
      increasing per shard).
    - ``source``: the :class:`~ego.PersistedEvent` or :class:`~ego.PersistedState` itself.

    Example::

        def publish(self, records: list[ego.publishers.Record]) -> None:
            for r in records:
                self.sink.put(r.key, r.value, r.headers)
    """

    id: str
    key: str
    value: bytes
    headers: dict[str, str]
    shard: int
    position: int
    source: Source
    erased: bool = False
