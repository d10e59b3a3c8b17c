"""What an entity deletes after each successful snapshot: :class:`RetentionPolicy`.

A policy is an option of an entity type (or of one entity)::

    engine.register_entity_type(
        Account,
        snapshot_interval=100,
        retention=ego.RetentionPolicy(delete_events_on_snapshot=True, events_retention_count=10),
    )
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RetentionPolicy"]


@dataclass(frozen=True)
class RetentionPolicy:
    """What to delete after each successful snapshot (the Go library's ``RetentionPolicy``).

    After a snapshot at revision N: with ``delete_snapshots_on_snapshot``, the snapshots older
    than N; with ``delete_events_on_snapshot``, the events up to N - ``events_retention_count``.
    Events a projection of the engine has not handled yet are kept unless
    ``ignore_projections``. A negative ``events_retention_count`` is refused with
    :class:`~ego.errors.ConfigurationError` when the entity options are built.

        ego.RetentionPolicy(delete_events_on_snapshot=True, delete_snapshots_on_snapshot=True)
    """

    delete_events_on_snapshot: bool = False
    events_retention_count: int = 0
    """Events to keep before the snapshot point."""
    delete_snapshots_on_snapshot: bool = False
    ignore_projections: bool = False
