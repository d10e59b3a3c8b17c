"""Commands that move projection offsets in a store: set-offset and rebuild.

They write the offsets while no engine runs the projection (stop the application first, or
use ``engine.set_projection_offset`` / ``engine.rebuild_projection`` in a running one); the
projection starts from them the next time it starts.
"""

from __future__ import annotations

import datetime

import click

from ego.cli import output
from ego.cli.inspect_cmds import json_option, opened
from ego.errors import ValidationError
from ego.migration.access import StoreAccess
from ego.timestamps import unix_nanos


@click.command("set-offset")
@click.argument("store")
@click.argument("projection")
@click.argument("shard", type=click.IntRange(0, 2**32 - 1))
@click.argument("position", type=click.IntRange(0))
@json_option
def set_offset(store: str, projection: str, shard: int, position: int, as_json: bool) -> None:
    """Move PROJECTION's offset on SHARD to POSITION: the next event it handles there is the
    first after POSITION. To skip an event the projection cannot handle until its code is
    fixed, give that event's position (`ego events` prints it); to replay, an earlier one.
    POSITION may not pass the shard's head. Writes to STORE: stop the engine first.

    \b
    ego set-offset rocksdb:///var/lib/bank balances 3 1042
    """
    with opened(store) as s:
        access = StoreAccess(s)
        head = access.shard_heads().get(shard, (0, 0))[0]
        if position > head:
            raise ValidationError(f"position {position} is beyond the head of shard {shard} ({head})")
        before = dict(access.read_offsets(projection)).get(shard)
        access.write_offsets(projection, [(shard, position)])
    if as_json:
        output.as_json({"projection": projection, "shard": shard, "previous": before, "offset": position, "head": head})
    else:
        output.stdout().print(
            f"{projection} shard {shard}: offset {before if before is not None else 'none'} -> {position} (head {head})"
        )


@click.command()
@click.argument("store")
@click.argument("projection")
@click.option(
    "--from",
    "from_time",
    default=None,
    metavar="TIME",
    help="Replay the events written after this ISO 8601 time (e.g. 2026-11-01T00:00:00+00:00). Default: from the beginning.",
)
@json_option
def rebuild(store: str, projection: str, from_time: str | None, as_json: bool) -> None:
    """Make PROJECTION handle again the events written after a point in time: each shard's
    offset moves to just before its first event later than --from (all events without it).
    Reset the projection's read model to that point first. Writes to STORE: stop the engine
    first (a running engine has engine.rebuild_projection).

    \b
    ego rebuild postgresql://localhost/bank balances --from 2026-11-01T00:00:00+00:00
    """
    if from_time is None:
        after = -(2**63)
    else:
        try:
            when = datetime.datetime.fromisoformat(from_time)
        except ValueError as e:
            raise ValidationError(f"--from: not an ISO 8601 time: {from_time!r}") from e
        after = unix_nanos(when)
    with opened(store) as s:
        access = StoreAccess(s)
        offsets = []
        for shard in sorted(access.shard_heads()):
            position = 0
            while True:
                page = access.shard_events(shard, position, 4096)
                later = next((e for e in page if e.timestamp > after), None)
                if later is not None:
                    position = int(later.position) - 1
                    break
                if not page:
                    break
                position = int(page[-1].position)
            offsets.append((shard, position))
        access.reset_offsets(projection)
        if offsets:
            access.write_offsets(projection, offsets)
    if as_json:
        output.as_json({"projection": projection, "offsets": [{"shard": s, "offset": p} for s, p in offsets]})
    else:
        output.table(f"{projection}: rebuild", ["shard", "offset"], offsets)
