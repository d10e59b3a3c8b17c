"""What the cluster tests' Ray workers import: a runner setup (a projection counting credits
into a PostgreSQL table, exactly once) and test behaviours."""

from __future__ import annotations

from typing import Any

import ego

from bank_pb2 import AccountCredited
from egotest import messages_pb2  # noqa: F401 - HeldNotes' commands are decoded before its handler runs


def count_credits(engine: ego.Engine, table: str) -> None:
    """Runner setup: a transactional projection ``credits`` adding one to ``table``'s row of
    the account for each credit (so an event handled twice would count twice)."""

    def handle(events: list[ego.PersistedEvent]) -> list[ego.Sql]:
        return [
            ego.Sql(
                f"INSERT INTO {table} (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = {table}.n + 1",
                (e.persistence_id,),
            )
            for e in events
        ]

    engine.add_projection("credits", handle, transactional=True, event_types=[AccountCredited], poll_interval=0.05)


def run_transfers(engine: ego.Engine) -> None:
    """Runner setup: the transfer saga of examples/transfers (started by a desk's
    ``TransferRequested``; its debit and credit go to the shards)."""
    from transfer_saga import TransferSaga

    engine.register_saga_type(TransferSaga, timeout=60.0)


def credit_counts(pg_url: str, table: str) -> dict[str, int]:
    """The projection's table: account id -> credits counted."""
    import psycopg

    with psycopg.connect(pg_url) as conn:
        return {row[0]: row[1] for row in conn.execute(f"SELECT id, n FROM {table}")}


def create_table(pg_url: str, table: str) -> Any:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, n bigint NOT NULL)")


def drop_table(pg_url: str, table: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


class HeldNotes(ego.EventSourcedBehavior[Any, Any, Any]):
    """An entity whose command ``Note(text=DIR)`` waits in its handler until the file
    ``DIR/release`` exists (after creating ``DIR/held``), then writes ``DIR/done`` and emits
    a ``Note`` naming the process that handled it. Other notes are emitted at once. Register
    it with ``inline=False`` (the handler blocks)."""

    def __init__(self, entity_id: str) -> None:
        self.entity_id = entity_id

    def id(self) -> str:
        return self.entity_id

    def initial_state(self) -> Any:
        from egotest.messages_pb2 import Note

        return Note()

    def handle_command(self, command: Any, state: Any) -> list[Any]:
        import os
        import time
        from pathlib import Path

        from egotest.messages_pb2 import Note

        if command.text.startswith("hold:"):
            folder = Path(command.text[5:])
            (folder / "held").write_text(str(os.getpid()))
            deadline = time.monotonic() + 120
            while not (folder / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)  # a held handler, by design: the test releases it
            (folder / "done").write_text(str(os.getpid()))
        return [Note(text=f"pid {os.getpid()}", n=command.n)]

    def handle_event(self, event: Any, state: Any) -> Any:
        state.text = event.text
        state.n += 1
        return state
