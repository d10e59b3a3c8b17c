"""``python -m ego.cli``: the same as the ``ego`` command."""

from ego.cli.app import run

run()
