"""The ``ego`` command: the group, its subcommands, and how errors end a run.

An error is one line on standard error (``ego: error: ...``) and a non-zero exit status (1;
2 for a usage error, as click has it; 130 when interrupted), never a traceback.
"""

from __future__ import annotations

import sys

import click

from ego import __version__
from ego.cli import inspect_cmds, move_cmds, offset_cmds
from ego.errors import EgoError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ego")
def cli() -> None:
    """Inspect, check and move the data of ego stores.

    STORE is a URL: rocksdb:///path/to/dir (or rocksdb://relative/dir) or
    postgresql://user@host:5432/db (add ?schema=...&table_prefix=... when not public / ego_).
    Commands only read unless they say they write (set-offset, rebuild, and the target of
    migrate and import-go). Every command has --help; most have --json.
    """


for command in (
    inspect_cmds.entities,
    inspect_cmds.events,
    inspect_cmds.state,
    inspect_cmds.projections,
    inspect_cmds.keys,
    inspect_cmds.check,
    offset_cmds.set_offset,
    offset_cmds.rebuild,
    move_cmds.migrate_cmd,
    move_cmds.verify_cmd,
    move_cmds.import_go_cmd,
):
    cli.add_command(command)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (the console script exits with it)."""
    try:
        result = cli.main(args=argv, prog_name="ego", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Abort:
        click.echo("ego: interrupted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("ego: interrupted", err=True)
        return 130
    except EgoError as e:
        click.echo(f"ego: error: {_one_line(e)}", err=True)
        return 1
    except OSError as e:
        click.echo(f"ego: error: {_one_line(e)}", err=True)
        return 1
    except Exception as e:
        click.echo(f"ego: unexpected error ({type(e).__name__}): {_one_line(e)}", err=True)
        return 1


def run() -> None:
    """The console script's entry point."""
    sys.exit(main())
