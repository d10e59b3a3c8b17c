"""A process whose engine ran a projection exits cleanly: the projection's worker thread, once
its projection stopped, still takes the GIL to close its event loop, and CPython aborts a
process whose thread takes the GIL during finalization ("FATAL: exception not rethrown").
Interpreter exit waits for every such thread (rust/py/src/worker.rs). Before that, about one
exit in five aborted; ten exits make a regression very likely to show."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import ego

CHILD = """
import sys
import ego
from bank_pb2 import AccountCredited, Credit, OpenAccount
from domain import AccountBehavior

engine = ego.Engine("exit", store=ego.PostgresStore(sys.argv[1], table_prefix=sys.argv[2]))
engine.register_entity_type(AccountBehavior)
engine.add_projection("count", lambda events: None, event_types=[AccountCredited], poll_interval=0.05)
with engine:
    engine.send_command(sys.argv[3], OpenAccount(initial_balance=0))
    for _ in range(50):
        engine.send_command(sys.argv[3], Credit(amount=1))
print("ok")
"""


def test_processes_that_ran_a_projection_exit_cleanly(pg_url: str) -> None:
    prefix = f"x{uuid.uuid4().hex[:8]}_"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "examples" / "bank"))
    try:
        for i in range(10):
            result = subprocess.run(
                [sys.executable, "-c", CHILD, pg_url, prefix, f"acc-{i}"], capture_output=True, text=True, timeout=120, env=env
            )
            assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
    finally:
        store = ego.PostgresStore(pg_url, table_prefix=prefix)
        store.drop_tables()
        store.close()
