"""Read-only commands: entities, events, state, projections, keys, check."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from ego.cli import output
from ego.cli.checks import check_store
from ego.cli.decode import Decoder
from ego.cli.urls import open_store
from ego.errors import ValidationError
from ego.migration.access import StoreAccess
from ego.migration.compare import CHECKPOINT, merged
from ego.stores import NativeStore

F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    """``--json``: machine-readable output on standard output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (stable field names) instead of a table.")(f)


def decode_options(f: F) -> F:
    """``--proto-module`` and ``--descriptor-set``."""
    f = click.option(
        "--descriptor-set",
        "descriptor_sets",
        multiple=True,
        metavar="FILE",
        help="A FileDescriptorSet (protoc --include_imports --descriptor_set_out=FILE) with your message types. Repeatable.",
    )(f)
    return click.option(
        "--proto-module",
        "modules",
        multiple=True,
        metavar="MODULE",
        help="A generated Python module with your message types, e.g. bank_pb2 (imported from the current directory). Repeatable.",
    )(f)


@contextmanager
def opened(url: str, *, create: bool = False) -> Iterator[NativeStore]:
    """The store at ``url``, closed afterwards."""
    store = open_store(url, create=create)
    try:
        yield store
    finally:
        store.close()


def _ids_from(access: StoreAccess, kind: str, after: str | None, prefix: str) -> Iterator[list[str]]:
    """Pages of ids of one kind starting after ``after`` and at ``prefix``."""
    start = max(after or "", prefix, key=lambda s: s.encode()) if (after or prefix) else None
    if start and start == prefix and start != after:
        exists = access.highest(start) > 0 if kind == "events" else access.read_state(start) is not None
        if exists:
            yield [start]
    pages = access.event_id_pages(start, 200) if kind == "events" else access.state_id_pages(start, 200)
    yield from pages


@click.command()
@click.argument("store")
@click.option("--prefix", default="", help="Only ids that start with this.")
@click.option("--after", default=None, metavar="ID", help="Start after this id (the 'next' of a previous page).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000), help="Entities per page.")
@json_option
def entities(store: str, prefix: str, after: str | None, limit: int, as_json: bool) -> None:
    """List the entities in STORE: id, kind (event-sourced or durable state), highest sequence
    number or version, and latest snapshot. Ids come in byte order, a page at a time: pass the
    printed 'next' id as --after for the next page.

    \b
    ego entities rocksdb:///var/lib/bank --prefix account- --limit 20
    """
    with opened(store) as s:
        access = StoreAccess(s)
        evented = set()
        rows: list[dict[str, Any]] = []
        ids = merged(_ids_from(access, "events", after, prefix), _ids_from(access, "states", after, prefix))
        more = False
        for pid in ids:
            if prefix and not pid.startswith(prefix):
                if pid.encode() > prefix.encode():
                    break
                continue
            if len(rows) == limit:
                more = True
                break
            highest = access.highest(pid)
            if highest:
                evented.add(pid)
                snap = access.latest_snapshot(pid)
                rows.append(
                    {
                        "id": pid,
                        "kind": "event-sourced",
                        "sequence_number": highest,
                        "snapshot": snap.sequence_number if snap else None,
                        "timestamp": snap.timestamp if snap else None,
                    }
                )
            state = access.read_state(pid)
            if state is not None:
                rows.append(
                    {
                        "id": pid,
                        "kind": "durable-state",
                        "version": state.version_number,
                        "timestamp": state.timestamp,
                        "snapshot": None,
                    }
                )
        nxt = rows[-1]["id"] if more and rows else None
    if as_json:
        output.as_json({"entities": rows, "next": nxt})
        return
    output.table(
        None,
        ["id", "kind", "seq / version", "latest snapshot"],
        [(r["id"], r["kind"], r.get("sequence_number", r.get("version")), r["snapshot"]) for r in rows],
        caption=f"next page: --after {nxt!r}" if nxt else f"{len(rows)} entities",
    )


@click.command()
@click.argument("store")
@click.argument("entity_id")
@click.option("--from", "first", default=1, show_default=True, type=click.IntRange(1), help="First sequence number.")
@click.option("--to", "last", default=None, type=click.IntRange(1), help="Last sequence number (default: the highest).")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1), help="At most this many events.")
@decode_options
@json_option
def events(
    store: str,
    entity_id: str,
    first: int,
    last: int | None,
    limit: int,
    modules: tuple[str, ...],
    descriptor_sets: tuple[str, ...],
    as_json: bool,
) -> None:
    """Print the events of ENTITY_ID in STORE, decoded to JSON with your message types
    (--proto-module / --descriptor-set); a payload of an unknown type is shown raw (base64).

    \b
    ego events rocksdb:///var/lib/bank account-42 --proto-module bank_pb2
    """
    decoder = Decoder(modules, descriptor_sets)
    with opened(store) as s:
        highest = s.highest_sequence_number(entity_id)
        if highest == 0:
            raise ValidationError(f"no events of {entity_id!r} in {store}")
        found = s.replay_events(entity_id, first, last if last is not None else highest, limit)
    rows = []
    for e in found:
        row: dict[str, Any] = {
            "sequence_number": e.sequence_number,
            "timestamp": e.timestamp,
            "time": output.iso(e.timestamp),
            "shard": e.shard,
            "position": e.position,
            "metadata": dict(e.metadata),
            "encrypted": e.is_encrypted,
        }
        if e.is_encrypted:
            row.update({"type": e.event.type_url.rsplit("/", 1)[-1], "encryption_key_id": e.encryption_key_id})
        else:
            row.update(decoder.decode(e.event.type_url, e.event.value))
        rows.append(row)
    if as_json:
        output.as_json({"id": entity_id, "highest": highest, "events": rows})
        return
    output.table(
        f"{entity_id} (highest {highest})",
        ["seq", "time", "shard", "position", "type", "data"],
        [(r["sequence_number"], r["time"], r["shard"], r["position"], r["type"], _short(r)) for r in rows],
    )


def _short(row: dict[str, Any]) -> str:
    import json

    if "data" in row:
        return json.dumps(row["data"], ensure_ascii=False)
    if row.get("encrypted"):
        return "(encrypted)"
    return f"raw: {row.get('raw', '')[:60]}" + (f" ({row['error']})" if "error" in row else "")


@click.command()
@click.argument("store")
@click.argument("entity_id")
@decode_options
@json_option
def state(store: str, entity_id: str, modules: tuple[str, ...], descriptor_sets: tuple[str, ...], as_json: bool) -> None:
    """Print the state of ENTITY_ID in STORE: a durable state as stored, or an event-sourced
    entity's latest snapshot (and how many events came after it), decoded like `ego events`.

    \b
    ego state postgresql://localhost/bank account-42 --proto-module bank_pb2 --json
    """
    decoder = Decoder(modules, descriptor_sets)
    with opened(store) as s:
        access = StoreAccess(s)
        durable = access.read_state(entity_id)
        highest = access.highest(entity_id)
        snap = access.latest_snapshot(entity_id) if highest else None
    if durable is None and highest == 0:
        raise ValidationError(f"no entity {entity_id!r} in {store}")
    result: dict[str, Any] = {"id": entity_id}
    if durable is not None:
        body = (
            {"type": durable.resulting_state.type_url.rsplit("/", 1)[-1], "encrypted": True}
            if durable.is_encrypted
            else decoder.decode(durable.resulting_state.type_url, durable.resulting_state.value)
        )
        result.update({"kind": "durable-state", "version": durable.version_number, "timestamp": durable.timestamp, "state": body})
    else:
        result.update({"kind": "event-sourced", "sequence_number": highest})
        if snap is None:
            result.update({"snapshot": None, "events_after_snapshot": highest})
        else:
            body = (
                {"type": snap.state.type_url.rsplit("/", 1)[-1], "encrypted": True}
                if snap.is_encrypted
                else decoder.decode(snap.state.type_url, snap.state.value)
            )
            result.update(
                {
                    "snapshot": {"sequence_number": snap.sequence_number, "timestamp": snap.timestamp, "state": body},
                    "events_after_snapshot": highest - snap.sequence_number,
                }
            )
    if as_json:
        output.as_json(result)
        return
    import json

    output.stdout().print_json(json.dumps(result, ensure_ascii=False))


@click.command()
@click.argument("store")
@json_option
def projections(store: str, as_json: bool) -> None:
    """List the projections with offsets in STORE: per shard, the offset (position handled),
    the shard's head and the lag (events written but not handled yet).

    \b
    ego projections rocksdb:///var/lib/bank
    """
    with opened(store) as s:
        access = StoreAccess(s)
        heads = access.shard_heads()
        result: list[dict[str, Any]] = []
        for name in access.projection_names():
            if name == CHECKPOINT:
                continue
            shards: list[dict[str, int]] = []
            offsets = dict(access.read_offsets(name))
            for shard in sorted(set(offsets) | set(heads)):
                head = heads.get(shard, (0, 0))[0]
                offset = offsets.get(shard, 0)
                shards.append({"shard": shard, "offset": offset, "head": head, "lag": max(0, head - offset)})
            result.append({"name": name, "lag": sum(x["lag"] for x in shards), "shards": shards})
    if as_json:
        output.as_json({"projections": result})
        return
    rows = [(p["name"], x["shard"], x["offset"], x["head"], x["lag"]) for p in result for x in p["shards"]]
    output.table(None, ["projection", "shard", "offset", "head", "lag"], rows, caption=f"{len(result)} projections")


@click.command()
@click.argument("store")
@click.option("--erasures", is_flag=True, help="List the erasure records instead of the keys.")
@json_option
def keys(store: str, erasures: bool, as_json: bool) -> None:
    """List the wrapped data keys of STORE's key vault (encryption at rest): id, key id, the
    master key that wraps it, creation time. Key material is never printed. With --erasures,
    the entities erased (crypto-shredded) and when.

    \b
    ego keys rocksdb:///var/lib/bank --erasures
    """
    with opened(store) as s:
        access = StoreAccess(s)
        records: list[dict[str, Any]]
        if erasures:
            records = [
                {"id": pid, "erased_at": at, "time": output.iso(at)} for page in access.erasure_pages() for pid, at in page
            ]
        else:
            records = [
                {"id": k.persistence_id, "key_id": k.key_id, "master_key_id": k.master_key_id, "created_at": k.created_at}
                for page in access.key_pages()
                for k in page
            ]
    if as_json:
        output.as_json({"erasures" if erasures else "keys": records})
        return
    if erasures:
        output.table(None, ["id", "erased at"], [(r["id"], r["time"]) for r in records], caption=f"{len(records)} erasures")
    else:
        output.table(
            None,
            ["id", "key id", "master key", "created"],
            [(r["id"], r["key_id"], r["master_key_id"], output.iso(r["created_at"])) for r in records],
            caption=f"{len(records)} keys",
        )


@click.command()
@click.argument("store")
@decode_options
@json_option
@click.pass_context
def check(ctx: click.Context, store: str, modules: tuple[str, ...], descriptor_sets: tuple[str, ...], as_json: bool) -> None:
    """Check STORE: every stream gapless, every envelope (and payload, when its type is given
    with --proto-module / --descriptor-set) decodable, snapshots consistent with their
    streams, durable states well-formed. Exits with status 1 when anything is wrong.

    \b
    ego check rocksdb:///var/lib/bank --proto-module bank_pb2
    """
    decoder = Decoder(modules, descriptor_sets)
    with opened(store) as s:
        access = StoreAccess(s)
        total = sum(len(p) for p in access.event_id_pages())
        with output.progress(not as_json) as update:
            done = [0]

            def step() -> None:
                done[0] += 1
                if done[0] % 100 == 0 or done[0] == total:
                    update("streams", done[0], total)

            report = check_store(access, decoder, on_stream=step)
    result = {
        "ok": not report.faults,
        "streams": report.streams,
        "events": report.events,
        "snapshots": report.snapshots,
        "states": report.states,
        "encrypted": report.encrypted,
        "unknown_types": sorted(report.unknown_types),
        "faults": report.faults,
    }
    if as_json:
        output.as_json(result)
    else:
        output.table(
            "ego check",
            ["streams", "events", "snapshots", "durable states", "faults"],
            [(report.streams, report.events, report.snapshots, report.states, len(report.faults))],
        )
        for f in report.faults:
            output.stdout().print(f"[red]fault[/red] {f}", highlight=False)
        if report.unknown_types:
            output.stderr().print(f"not decoded (unknown types): {', '.join(sorted(report.unknown_types))}", highlight=False)
    if report.faults:
        ctx.exit(1)
