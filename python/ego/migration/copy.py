"""Copying everything one store holds into another (``ego.migration.migrate``).

What is copied, in this order: event streams with their snapshots, durable states, wrapped
data keys and erasure records, then projection offsets. Sequence numbers, timestamps, shards,
metadata and encryption fields are kept; positions are the target's own.

- A stream's events are written in one store write (atomic), so the target never shows part
  of a stream; a stream longer than ``stream_write_limit`` events is written in several,
  cut where the timestamp changes (between commands, never inside one).
- A stream whose first events were deleted by retention starts at the same sequence number in
  the target: placeholder events fill the gap in the same write and are deleted right after.
- Resumable and idempotent: the number of streams and states done is kept in the target's
  offset store (projection ``__ego_migration__``, removed at the end), and every stream and
  state is compared before it is written, so a second run after a crash (or after a complete
  run) writes only what is missing. A target that holds *different* data for an id is a
  :class:`~ego.errors.MigrationError`.
- Offsets: a projection that had handled every event of a shard is at the target's head of
  that shard. One that lagged is set just before the first event it had not handled, in the
  target's order, so it misses nothing and handles again some events it had handled
  (at-least-once, as after a crash); the report counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ego.errors import MigrationError
from ego.migration.access import ID_PAGE, StoreAccess
from ego.migration.compare import CHECKPOINT, VerifyReport
from ego.migration.compare import verify as compare_stores
from ego.v1.envelopes_pb2 import Event

#: Checkpoint slots (shards of the checkpoint's offsets).
_STREAMS, _STATES = 0, 1
#: The type URL of the placeholders that fill a retention gap for a moment.
PLACEHOLDER_TYPE = "type.googleapis.com/ego.v1.Placeholder"

#: progress(phase, done, total): phase is "streams", "states", "keys" or "offsets".
Progress = Callable[[str, int, "int | None"], None]


@dataclass
class MigrationReport:
    """What a migration copied (this run), and the verification when asked for."""

    streams: int = 0
    events: int = 0
    snapshots: int = 0
    states: int = 0
    keys: int = 0
    erasures: int = 0
    projections: int = 0
    #: Events that lagging projections will handle a second time in the target, by projection.
    replays: dict[str, int] = field(default_factory=dict)
    #: Streams and states found complete in the target already (a resumed or repeated run).
    skipped: int = 0
    resumed_at: int = 0
    verification: VerifyReport | None = None


def _count(access: StoreAccess, pages: str) -> int:
    return sum(len(p) for p in getattr(access, pages)())


def migrate(
    source: Any,
    target: Any,
    *,
    verify: bool = True,
    workers: int = 16,
    stream_write_limit: int = 5000,
    progress: Progress | None = None,
) -> MigrationReport:
    """Copies what ``source`` holds into ``target`` (see the module documentation).

    ``source`` and ``target`` are stores (built-in or written in Python); no engine may write
    to either while it runs. ``workers`` streams are copied at once (built-in stores release
    the GIL, and a target commits their writes together: the copy is bound by commit latency). With ``verify``, every stream, snapshot, state, key and erasure is compared afterwards
    (:attr:`MigrationReport.verification`). Raises :class:`~ego.errors.MigrationError` when
    the target holds other data for an id, and the stores' errors as they come.

        report = migrate(RocksDBStore("data/bank"), PostgresStore(url))
        assert report.verification is not None and report.verification.ok
    """
    src, dst = StoreAccess(source), StoreAccess(target)
    report = MigrationReport()
    note = progress or (lambda phase, done, total: None)
    checkpoint = dict(dst.read_offsets(CHECKPOINT)) if dst.has("read_offsets") else {}
    try:
        _copy_streams(src, dst, report, note, checkpoint.get(_STREAMS, 0), workers, stream_write_limit)
        _copy_states(src, dst, report, note, checkpoint.get(_STATES, 0))
        _copy_vault(src, dst, report, note)
        _copy_offsets(src, dst, report, note)
        if dst.has("reset_offsets"):
            dst.reset_offsets(CHECKPOINT)
        if verify:
            total = _count(src, "event_id_pages")
            done = [0]

            def seen(_: str) -> None:
                done[0] += 1
                note("verify", done[0], total)

            report.verification = compare_stores(src, dst, on_stream=seen)
    finally:
        src.close()
        dst.close()
    return report


def _save_checkpoint(dst: StoreAccess, slot: int, done: int) -> None:
    if dst.has("write_offsets"):
        dst.write_offsets(CHECKPOINT, [(slot, done)])


def _copy_streams(
    src: StoreAccess, dst: StoreAccess, report: MigrationReport, note: Progress, resume: int, workers: int, limit: int
) -> None:
    total = _count(src, "event_id_pages")
    report.resumed_at = resume
    done = 0
    note("streams", 0, total)
    workers = max(1, workers) if src.native and dst.native else 1  # a Python store is called from one thread
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ego-migrate") as pool:
        for page in src.event_id_pages(page_size=ID_PAGE):
            if done + len(page) <= resume:
                done += len(page)
                continue
            todo = page[max(0, resume - done) :]
            done += len(page) - len(todo)
            for outcome in pool.map(lambda pid: _copy_stream(src, dst, pid, limit), todo):
                events, snapshots = outcome
                report.streams += 1
                report.events += events
                report.snapshots += snapshots
                report.skipped += events == 0 and snapshots == 0
            done += len(todo)
            _save_checkpoint(dst, _STREAMS, done)
            note("streams", done, total)


def _placeholder(pid: str, seq: int, like: Event) -> bytes:
    e = Event(persistence_id=pid, sequence_number=seq, timestamp=like.timestamp, shard=like.shard, is_deleted=True)
    e.event.type_url = PLACEHOLDER_TYPE
    return e.SerializeToString()


def _chunks(events: list[bytes], limit: int) -> list[list[bytes]]:
    """Writes of at most about ``limit`` events, cut where the timestamp changes."""
    if len(events) <= limit:
        return [events]
    out: list[list[bytes]] = []
    current: list[bytes] = []
    last_ts: int | None = None
    for raw in events:
        ts = Event.FromString(raw).timestamp
        if len(current) >= limit and ts != last_ts:
            out.append(current)
            current = []
        current.append(raw)
        last_ts = ts
    if current:
        out.append(current)
    return out


def _copy_stream(src: StoreAccess, dst: StoreAccess, pid: str, limit: int) -> tuple[int, int]:
    """Copies the events and snapshots of one stream; ``(events written, snapshots written)``."""
    high, have = src.highest(pid), dst.highest(pid)
    if have > high:
        raise MigrationError(
            f"the target has events of {pid!r} up to {have}, the source only up to {high}: not a copy of this source"
        )
    written = 0
    head = src.replay_raw(pid, 1, high, 1)
    first = Event.FromString(head[0]).sequence_number if head else high + 1
    if have < high:
        events = src.replay_raw(pid, max(have + 1, first), high)
        start = Event.FromString(events[0]).sequence_number if events else high + 1
        if start <= have:
            raise MigrationError(f"events of {pid!r} changed in the source during the migration")
        like = Event.FromString(events[0]) if events else Event(persistence_id=pid)
        fill = [_placeholder(pid, seq, like) for seq in range(have + 1, start)]
        batches = _chunks(fill + events, limit) if fill else _chunks(events, limit)
        for batch in batches:
            dst.write_raw(batch)
        written = len(events)
    elif have:
        # The same highest sequence number: a stream copied by an earlier run.
        mine = dst.replay_raw(pid, 1, high, 1)
        if head and mine and Event.FromString(mine[0]).sequence_number > first:
            raise MigrationError(f"the target lacks early events of {pid!r} that the source has: not a copy of this source")
    if first > 1 and high:
        # Retention had deleted the source's first events (or all of them): so in the target.
        dst.delete_events(pid, first - 1)
    snapshots = 0
    latest = src.latest_snapshot(pid)
    if latest is not None:
        theirs = dst.latest_snapshot(pid)
        if theirs is None or theirs.SerializeToString(deterministic=True) != latest.SerializeToString(deterministic=True):
            for snap in reversed(src.snapshots(pid)):
                dst.write_snapshot(snap)
                snapshots += 1
    return written, snapshots


def _copy_states(src: StoreAccess, dst: StoreAccess, report: MigrationReport, note: Progress, resume: int) -> None:
    if not src.has("state_ids"):
        return
    total = _count(src, "state_id_pages")
    done = 0
    note("states", 0, total)
    for page in src.state_id_pages():
        for pid in page:
            done += 1
            if done <= resume:
                continue
            state = src.read_state(pid)
            if state is None:
                continue
            theirs = dst.read_state(pid)
            if theirs is None:
                dst.write_state(state, 0)
            elif theirs.version_number < state.version_number:
                dst.write_state(state, theirs.version_number)
            elif theirs.SerializeToString(deterministic=True) == state.SerializeToString(deterministic=True):
                report.skipped += 1
                continue
            else:
                raise MigrationError(
                    f"the target holds another durable state of {pid!r} (version {theirs.version_number}, source {state.version_number})"
                )
            report.states += 1
        _save_checkpoint(dst, _STATES, done)
        note("states", done, total)


def _copy_vault(src: StoreAccess, dst: StoreAccess, report: MigrationReport, note: Progress) -> None:
    if not src.native:
        return
    if not dst.native:
        if next(iter(src.key_pages(1)), None) or next(iter(src.erasure_pages(1)), None):
            raise MigrationError("the source has encryption keys or erasure records; a store written in Python cannot keep them")
        return
    for page in src.key_pages():
        for key in page:
            if not dst.store.put_key(key):
                raise MigrationError(f"the target holds another key (or an erasure) for {key.persistence_id!r}")
            report.keys += 1
        note("keys", report.keys, None)
    for records in src.erasure_pages():
        for pid, erased_at in records:
            dst.store.record_erasure(pid, erased_at)
            report.erasures += 1


def _copy_offsets(src: StoreAccess, dst: StoreAccess, report: MigrationReport, note: Progress) -> None:
    names = [n for n in src.projection_names() if n != CHECKPOINT]
    if not names:
        return
    src_heads, dst_heads = src.shard_heads(), dst.shard_heads()
    for name in names:
        offsets: list[tuple[int, int]] = []
        replays = 0
        for shard, position in src.read_offsets(name):
            head = src_heads.get(shard, (0, 0))[0]
            their_head = dst_heads.get(shard, (0, 0))[0]
            if position >= head:
                offsets.append((shard, their_head))
                continue
            start, handled_again = _first_unhandled(src, dst, shard, position, their_head)
            offsets.append((shard, start))
            replays += handled_again
        dst.write_offsets(name, offsets)
        report.projections += 1
        if replays:
            report.replays[name] = replays
        note("offsets", report.projections, len(names))


def _first_unhandled(src: StoreAccess, dst: StoreAccess, shard: int, position: int, their_head: int) -> tuple[int, int]:
    """The target offset just before the first event (in the target's order) of ``shard``
    that the projection had not handled at source ``position``, and how many events it has
    handled that come after that offset in the target."""
    firsts: dict[str, int] = {}
    unhandled = 0
    after = position
    while True:
        page = src.shard_events(shard, after, 5000)
        if not page:
            break
        for e in page:
            firsts.setdefault(e.persistence_id, e.sequence_number)
        unhandled += len(page)
        after = page[-1].position
    lowest = their_head
    for pid, seq in firsts.items():
        found = dst.replay_raw(pid, seq, seq, 1)
        if found:
            lowest = min(lowest, Event.FromString(found[0]).position - 1)
    # Events of the shard in the target after `lowest`, minus those not handled yet.
    return lowest, max(0, their_head - lowest - unhandled)
