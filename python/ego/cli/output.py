"""Printing results: ``rich`` tables for people, stable JSON (``--json``) for programs.

Progress and notes go to standard error, so standard output holds only the result.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table


def stdout() -> Console:
    """A console on standard output (made per use: it follows redirections and ``COLUMNS``)."""
    return Console(soft_wrap=True)


def stderr() -> Console:
    """A console on standard error."""
    return Console(stderr=True)


def iso(nanos: int) -> str:
    """A Unix-nanosecond timestamp as ISO 8601 UTC (microseconds)."""
    if not nanos:
        return ""
    return datetime.datetime.fromtimestamp(nanos / 1e9, tz=datetime.timezone.utc).isoformat()


def as_json(data: Any) -> None:
    """Prints ``data`` as JSON (keys in the order given, two-space indent)."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> None:
    """Prints a table."""
    t = Table(title=title, caption=caption, show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    stdout().print(t)


@contextmanager
def progress(enabled: bool = True) -> Iterator[Any]:
    """A rich progress display on standard error; yields ``update(phase, done, total)``."""
    console = stderr()
    if not enabled or not console.is_terminal:

        def quiet(phase: str, done: int, total: int | None) -> None:
            return None

        yield quiet
        return
    bars: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as p:

        def update(phase: str, done: int, total: int | None) -> None:
            if phase not in bars:
                bars[phase] = p.add_task(phase, total=total)
            p.update(bars[phase], completed=done, total=total)

        yield update
