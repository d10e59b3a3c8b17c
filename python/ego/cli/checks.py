"""``ego check``: is every stream gapless and decodable, and is every snapshot consistent?

Faults found (each one line):

- a stream whose sequence numbers skip or repeat, whose events name another id, or whose last
  event is not its highest sequence number;
- events deleted (by retention) that no snapshot covers, so the entity cannot be recovered;
- a snapshot past the stream's highest sequence number;
- an envelope that does not parse, or a payload that does not parse as its type (when the
  type is known from ``--proto-module`` / ``--descriptor-set``; unknown types are counted);
- a durable state with version 0, or that names another id.

Everything is read in pages; envelopes are parsed once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from ego.cli.decode import Decoder
from ego.migration.access import StoreAccess
from ego.v1.envelopes_pb2 import Event


@dataclass
class CheckReport:
    """What ``check`` read, and every fault found (empty: the store is sound)."""

    streams: int = 0
    events: int = 0
    snapshots: int = 0
    states: int = 0
    encrypted: int = 0
    unknown_types: set[str] = field(default_factory=set)
    faults: list[str] = field(default_factory=list)


def check_store(
    access: StoreAccess, decoder: Decoder, *, on_stream: Callable[[], None] | None = None, max_faults: int = 1000
) -> CheckReport:
    """Checks every stream, snapshot and durable state of a store."""
    report = CheckReport()

    def fault(what: str) -> None:
        if len(report.faults) < max_faults:
            report.faults.append(what)

    def payload(what: str, type_url: str, value: bytes, encrypted: bool) -> None:
        if encrypted:
            report.encrypted += 1
            return
        ok = decoder.parses(type_url, value)
        if ok is None:
            report.unknown_types.add(type_url.rsplit("/", 1)[-1])
        elif not ok:
            fault(f"{what}: the payload does not parse as {type_url.rsplit('/', 1)[-1]}")

    for page in access.event_id_pages():
        for pid in page:
            report.streams += 1
            _check_stream(access, pid, report, fault, payload)
            if on_stream is not None:
                on_stream()
    if access.has("state_ids"):
        for page in access.state_id_pages():
            for pid in page:
                report.states += 1
                state = access.read_state(pid)
                if state is None:
                    continue
                if state.persistence_id != pid:
                    fault(f"durable state of {pid!r} names {state.persistence_id!r}")
                if state.version_number == 0:
                    fault(f"durable state of {pid!r} has version 0")
                payload(
                    f"durable state of {pid!r}", state.resulting_state.type_url, state.resulting_state.value, state.is_encrypted
                )
    return report


def _check_stream(
    access: StoreAccess,
    pid: str,
    report: CheckReport,
    fault: Callable[[str], None],
    payload: Callable[[str, str, bytes, bool], None],
) -> None:
    highest = access.highest(pid)
    first = 0
    expected = 0
    for page in access.pages_raw(pid):
        for raw in page:
            try:
                e = Event.FromString(raw)
            except DecodeError:
                fault(f"{pid!r}: an event envelope after seq {expected - 1} does not parse")
                expected += 1
                continue
            report.events += 1
            if not first:
                first = expected = e.sequence_number
            if e.sequence_number != expected:
                fault(f"{pid!r}: seq {e.sequence_number} follows {expected - 1} (not gapless)")
                expected = e.sequence_number
            if e.persistence_id != pid:
                fault(f"{pid!r}: event {e.sequence_number} names {e.persistence_id!r}")
            payload(f"{pid!r} event {e.sequence_number}", e.event.type_url, e.event.value, e.is_encrypted)
            expected += 1
    last = expected - 1 if first else 0
    if first and last != highest:
        fault(f"{pid!r}: the highest sequence number is {highest} but the last event is {last}")
    snapshot = access.latest_snapshot(pid)
    if snapshot is not None:
        report.snapshots += 1
        if snapshot.sequence_number > highest:
            fault(f"{pid!r}: snapshot at seq {snapshot.sequence_number} is past the highest sequence number {highest}")
        payload(
            f"{pid!r} snapshot {snapshot.sequence_number}", snapshot.state.type_url, snapshot.state.value, snapshot.is_encrypted
        )
    covered = snapshot.sequence_number if snapshot is not None else 0
    gone = first - 1 if first else highest
    if gone > covered:
        fault(f"{pid!r}: events 1..{gone} were deleted but no snapshot covers them (latest snapshot: {covered or 'none'})")
