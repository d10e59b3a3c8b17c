"""Child process of test_migration_crash.py: migrates a RocksDB store into a PostgreSQL one,
printing "started" once both are open and "done" at the end, until it is killed.

    python migration_child.py SOURCE_DIR POSTGRES_URL TABLE_PREFIX
"""

from __future__ import annotations

import sys

import ego
from ego.migration import migrate


def main() -> None:
    source_dir, url, prefix = sys.argv[1:4]
    source = ego.RocksDBStore(source_dir)
    target = ego.PostgresStore(url, table_prefix=prefix)
    print("started", flush=True)
    migrate(source, target, verify=False, workers=4, stream_write_limit=7)
    print("done", flush=True)


if __name__ == "__main__":
    main()
