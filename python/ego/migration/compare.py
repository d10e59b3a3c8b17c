"""Digests of what a store holds, to compare two stores (``verify``).

A stream's digest is the number of its events and a SHA-256 over each event envelope with the
store-assigned ``position`` cleared (positions are per store; everything else, sequence
numbers, timestamps, shards, payloads, metadata and encryption fields, must be identical).
Durable states, latest snapshots, wrapped keys and erasure records compare by their bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

from ego.migration.access import StoreAccess
from ego.v1.envelopes_pb2 import Event

#: The projection name under which a migration keeps its checkpoint in the target.
CHECKPOINT = "__ego_migration__"


@dataclass(frozen=True)
class StreamDigest:
    """What a store holds for one event stream."""

    highest: int
    events: int
    first: int
    sha256: str


def canonical(raw: bytes) -> bytes:
    """The envelope of an event without its store-assigned position."""
    e = Event.FromString(raw)
    e.position = 0
    return e.SerializeToString(deterministic=True)


def stream_digest(access: StoreAccess, pid: str) -> StreamDigest:
    """Counts and hashes the events of ``pid`` (read in pages)."""
    h = hashlib.sha256()
    count, first = 0, 0
    for page in access.pages_raw(pid):
        if not first:
            first = Event.FromString(page[0]).sequence_number
        for raw in page:
            h.update(canonical(raw))
        count += len(page)
    return StreamDigest(access.highest(pid), count, first, h.hexdigest())


def merged(a: Iterator[list[str]], b: Iterator[list[str]]) -> Iterator[str]:
    """The sorted union (by UTF-8 bytes) of two sorted id page streams."""

    def flat(pages: Iterator[list[str]]) -> Iterator[str]:
        for page in pages:
            yield from page

    ia, ib = flat(a), flat(b)
    x, y = next(ia, None), next(ib, None)
    while x is not None or y is not None:
        if y is None or (x is not None and x.encode() < y.encode()):
            assert x is not None
            yield x
            x = next(ia, None)
        elif x is None or y.encode() < x.encode():
            yield y
            y = next(ib, None)
        else:
            yield x
            x, y = next(ia, None), next(ib, None)


@dataclass
class VerifyReport:
    """What ``verify`` compared, and every difference found (empty: the stores agree)."""

    streams: int = 0
    events: int = 0
    snapshots: int = 0
    states: int = 0
    keys: int = 0
    erasures: int = 0
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def verify(
    source: StoreAccess, target: StoreAccess, *, on_stream: Callable[[str], None] | None = None, max_differences: int = 1000
) -> VerifyReport:
    """Compares every stream, latest snapshot, durable state, wrapped key and erasure record
    of two stores (offsets are not compared: positions are per store)."""
    report = VerifyReport()

    def differ(what: str) -> None:
        if len(report.differences) < max_differences:
            report.differences.append(what)

    # Built-in stores release the GIL while they read: several streams at once.
    workers = 8 if source.native and target.native else 1

    def both(pid: str) -> tuple[str, StreamDigest, StreamDigest, bytes | None, bytes | None]:
        sa, sb = source.latest_snapshot(pid), target.latest_snapshot(pid)
        return (
            pid,
            stream_digest(source, pid),
            stream_digest(target, pid),
            sa.SerializeToString(deterministic=True) if sa else None,
            sb.SerializeToString(deterministic=True) if sb else None,
        )

    ids = merged(source.event_id_pages(), target.event_id_pages())
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ego-verify") as pool:
        while batch := list(islice(ids, 256)):
            for pid, a, b, sa, sb in pool.map(both, batch):
                report.streams += 1
                report.events += a.events
                if a != b:
                    same = (a.events, a.first, a.highest) == (b.events, b.first, b.highest)
                    differ(
                        f"events of {pid!r}: source has {a.events} (seq {a.first}..{a.highest}), "
                        f"target {b.events} (seq {b.first}..{b.highest})"
                        + (", same count but different contents" if same else "")
                    )
                if sa is not None:
                    report.snapshots += 1
                if sa != sb:
                    differ(f"latest snapshot of {pid!r} differs")
                if on_stream is not None:
                    on_stream(pid)
    if source.has("state_ids") or target.has("state_ids"):
        for pid in merged(source.state_id_pages(), target.state_id_pages()):
            ra, rb = source.read_state(pid), target.read_state(pid)
            report.states += 1
            if (ra.SerializeToString(deterministic=True) if ra else None) != (
                rb.SerializeToString(deterministic=True) if rb else None
            ):
                differ(f"durable state of {pid!r} differs")
    keys_a = {k.persistence_id: k.SerializeToString(deterministic=True) for page in source.key_pages() for k in page}
    keys_b = {k.persistence_id: k.SerializeToString(deterministic=True) for page in target.key_pages() for k in page}
    report.keys = len(keys_a)
    for pid in sorted(set(keys_a) | set(keys_b)):
        if keys_a.get(pid) != keys_b.get(pid):
            differ(f"wrapped key of {pid!r} differs")
    erased_a = dict(r for page in source.erasure_pages() for r in page)
    erased_b = dict(r for page in target.erasure_pages() for r in page)
    report.erasures = len(erased_a)
    if erased_a != erased_b:
        differ(f"erasure records differ ({len(erased_a)} in the source, {len(erased_b)} in the target)")
    return report
