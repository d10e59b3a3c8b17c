"""Commands that move data: migrate, verify, import-go."""

from __future__ import annotations

from typing import Any

import click

from ego.cli import output
from ego.cli.inspect_cmds import json_option, opened
from ego.cli.urls import postgres_settings
from ego.migration import VerifyReport, import_go, migrate, verify


def _verification(report: VerifyReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {
        "ok": report.ok,
        "streams": report.streams,
        "events": report.events,
        "snapshots": report.snapshots,
        "states": report.states,
        "keys": report.keys,
        "erasures": report.erasures,
        "differences": report.differences,
    }


def _print_verification(report: VerifyReport) -> None:
    output.table(
        "verification",
        ["streams", "events", "snapshots", "durable states", "keys", "erasures", "differences"],
        [(report.streams, report.events, report.snapshots, report.states, report.keys, report.erasures, len(report.differences))],
    )
    for d in report.differences:
        output.stdout().print(f"[red]differs[/red] {d}", highlight=False)


@click.command("migrate")
@click.argument("source")
@click.argument("target")
@click.option("--verify/--no-verify", "check", default=True, show_default=True, help="Compare source and target afterwards.")
@click.option("--workers", default=16, show_default=True, type=click.IntRange(1, 64), help="Streams copied at once.")
@json_option
@click.pass_context
def migrate_cmd(ctx: click.Context, source: str, target: str, check: bool, workers: int, as_json: bool) -> None:
    """Copy everything SOURCE holds into TARGET: event streams (sequence numbers, timestamps,
    metadata kept), snapshots, durable states, encryption keys and erasures, projection
    offsets. A stream appears in TARGET whole or not at all. Interrupted (even by kill -9)?
    Run the same command again: it resumes from a checkpoint kept in TARGET, and a complete
    migration run again writes nothing. Exits with status 1 when the verification finds a
    difference. Stop the engines that write to SOURCE first.

    \b
    ego migrate rocksdb:///var/lib/bank postgresql://db.internal/bank
    """
    with opened(source) as src, opened(target, create=True) as dst, output.progress(not as_json) as update:
        report = migrate(src, dst, verify=check, workers=workers, progress=update)
    result = {
        "streams": report.streams,
        "events": report.events,
        "snapshots": report.snapshots,
        "states": report.states,
        "keys": report.keys,
        "erasures": report.erasures,
        "projections": report.projections,
        "replays": report.replays,
        "already_there": report.skipped,
        "resumed_at_stream": report.resumed_at,
        "verification": _verification(report.verification),
    }
    if as_json:
        output.as_json(result)
    else:
        output.table(
            "migrated",
            ["streams", "events", "snapshots", "durable states", "keys", "erasures", "projections", "already there"],
            [
                (
                    report.streams,
                    report.events,
                    report.snapshots,
                    report.states,
                    report.keys,
                    report.erasures,
                    report.projections,
                    report.skipped,
                )
            ],
            caption=f"resumed after {report.resumed_at} streams" if report.resumed_at else None,
        )
        for name, n in report.replays.items():
            output.stderr().print(f"projection {name!r} lagged: it will handle about {n} events a second time", highlight=False)
        if report.verification is not None:
            _print_verification(report.verification)
    if report.verification is not None and not report.verification.ok:
        ctx.exit(1)


@click.command("verify")
@click.argument("source")
@click.argument("target")
@json_option
@click.pass_context
def verify_cmd(ctx: click.Context, source: str, target: str, as_json: bool) -> None:
    """Compare two stores: per stream the number of events and a SHA-256 of their envelopes
    (positions aside), latest snapshots, durable states, keys and erasures. Exits with status
    1 on any difference.

    \b
    ego verify rocksdb:///var/lib/bank postgresql://db.internal/bank
    """
    with opened(source) as src, opened(target) as dst:
        report = verify(src, dst)
    if as_json:
        output.as_json(_verification(report))
    else:
        _print_verification(report)
    if not report.ok:
        ctx.exit(1)


@click.command("import-go")
@click.argument("go_database")
@click.argument("target")
@click.option("--schema", default="public", show_default=True, help="The schema of the Go library's tables.")
@click.option(
    "--shards",
    default=8,
    show_default=True,
    type=click.IntRange(1, 2**32 - 1),
    help="Shard count of the ego engine that will use TARGET (its Engine(shards=...)).",
)
@click.option("--keep-shards", is_flag=True, help="Keep the Go shard numbers instead.")
@click.option(
    "--v3-snapshots",
    is_flag=True,
    help="Turn the resulting state of v3 events (field 5) into snapshots, as the Go migration does.",
)
@click.option("--verify/--no-verify", "check", default=True, show_default=True, help="Compare source and target afterwards.")
@json_option
@click.pass_context
def import_go_cmd(
    ctx: click.Context,
    go_database: str,
    target: str,
    schema: str,
    shards: int,
    keep_shards: bool,
    v3_snapshots: bool,
    check: bool,
    as_json: bool,
) -> None:
    """Import a PostgreSQL database of the Go library (Tochemey/ego and its contrib stores:
    events_store, snapshots_store, states_store, offsets_store) into TARGET. Payloads, sequence
    numbers and timestamps (seconds from before v4.2 become nanoseconds) are kept; projection
    offsets become positions (no event skipped). Resumable like `ego migrate`.

    \b
    ego import-go postgresql://localhost/go_bank rocksdb:///var/lib/bank --v3-snapshots
    """
    url, _, _ = (
        postgres_settings(go_database) if go_database.startswith(("postgresql://", "postgres://")) else (go_database, "", "")
    )
    with opened(target, create=True) as dst, output.progress(not as_json) as update:
        report = import_go(
            url,
            dst,
            schema=schema,
            shards=None if keep_shards else shards,
            v3_state_snapshots=v3_snapshots,
            verify=check,
            progress=update,
        )
    m = report.migration
    result = {
        "streams": m.streams,
        "events": m.events,
        "snapshots": m.snapshots,
        "states": m.states,
        "already_there": m.skipped,
        "projections": {name: [{"shard": s, "offset": p} for s, p in offs] for name, offs in report.projections.items()},
        "verification": _verification(m.verification),
    }
    if as_json:
        output.as_json(result)
    else:
        output.table(
            "imported",
            ["streams", "events", "snapshots", "durable states", "projections", "already there"],
            [(m.streams, m.events, m.snapshots, m.states, len(report.projections), m.skipped)],
        )
        if m.verification is not None:
            _print_verification(m.verification)
    if m.verification is not None and not m.verification.ok:
        ctx.exit(1)
