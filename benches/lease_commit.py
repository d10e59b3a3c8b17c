"""What a projection lease adds to each offset commit on PostgreSQL, as the database sees it:
the transaction a transactional projection commits per batch (the read-model statements, then
the offset upsert), with and without the lease check (one statement: the lease row read ``FOR
SHARE``, which also sets the transaction's ``idle_in_transaction_session_timeout``), the same
SQL the store runs (rust/core/src/store/postgres/offsets.rs, leases.rs). Alternating rounds in one run;
prints the best round of each in microseconds per commit, and the ratio.

    python benches/lease_commit.py [--url URL] [--commits 2000] [--rounds 5] [--writes 1] [--no-sync]

``--no-sync`` sets ``synchronous_commit = off`` for the session: the WAL flush, which dominates
a commit on a plain disk, is left out, so the statements' own cost shows.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import psycopg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("EGO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writes", type=int, default=1, help="read-model statements per commit")
    parser.add_argument("--no-sync", action="store_true", help="synchronous_commit = off")
    args = parser.parse_args()
    p = f"b{uuid.uuid4().hex[:8]}_"
    with psycopg.connect(args.url, autocommit=True) as db:
        db.execute(
            f"CREATE TABLE {p}offsets (projection text, shard int, position bigint, updated_at bigint, PRIMARY KEY (projection, shard))"
        )
        db.execute(
            f"CREATE TABLE {p}leases (name text PRIMARY KEY, owner text NOT NULL, epoch bigint NOT NULL, expires_at timestamptz NOT NULL)"
        )
        db.execute(f"CREATE TABLE {p}counts (id text PRIMARY KEY, n bigint NOT NULL)")
        db.execute(f"INSERT INTO {p}leases VALUES ('p', 'me', 1, now() + interval '1 hour')")
        if args.no_sync:
            db.execute("SET synchronous_commit = off")
        try:
            best = {False: float("inf"), True: float("inf")}
            position = 0
            for _ in range(args.rounds):
                for leased in (False, True):
                    start = time.perf_counter()
                    for _ in range(args.commits):
                        position += 1
                        with db.transaction():
                            if leased:
                                row = db.execute(
                                    f"SELECT owner, epoch, set_config('idle_in_transaction_session_timeout', %s, true) "
                                    f"FROM {p}leases WHERE name = %s FOR SHARE",
                                    ("10000", "p"),
                                ).fetchone()
                                assert row is not None and row[:2] == ("me", 1)
                            for w in range(args.writes):
                                db.execute(
                                    f"INSERT INTO {p}counts (id, n) VALUES (%s, 1) ON CONFLICT (id) DO UPDATE SET n = {p}counts.n + 1",
                                    (f"e-{w}",),
                                )
                            db.execute(
                                f"INSERT INTO {p}offsets VALUES ('p', 0, %s, %s) "
                                "ON CONFLICT (projection, shard) DO UPDATE SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at",
                                (position, time.time_ns()),
                            )
                    best[leased] = min(best[leased], (time.perf_counter() - start) / args.commits)
        finally:
            db.execute(f"DROP TABLE {p}offsets, {p}leases, {p}counts")
    plain, leased = best[False] * 1e6, best[True] * 1e6
    sync = "synchronous_commit off" if args.no_sync else "synchronous_commit on"
    print(
        f"commits of {args.writes} read-model statement(s) + the offset ({sync}), best of {args.rounds} rounds of {args.commits}:"
    )
    print(f"  without the lease check: {plain:8.1f} us per commit")
    print(f"  with the lease check:    {leased:8.1f} us per commit")
    print(f"  throughput ratio (with / without): {plain / leased:.3f}x")


if __name__ == "__main__":
    main()
