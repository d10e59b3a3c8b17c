"""The ``ego`` command line: inspect, check and move the data of ego stores.

Run ``ego --help``; the guide is docs/cli.md. From Python, :func:`main` takes the arguments::

    from ego.cli import main
    status = main(["entities", "rocksdb:///var/lib/bank", "--json"])
"""

from __future__ import annotations

from ego.cli.app import main, run

__all__ = ["main", "run"]
