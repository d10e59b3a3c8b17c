"""Child process of test_shared_entities.py: engine A in its own process credits an account
on the PostgreSQL database the test uses, then prints the balance and revision.

    python shared_child.py PG_URL TABLE_PREFIX ENTITY_ID AMOUNT [shared]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "bank"))

import ego

from bank_pb2 import Credit
from domain import AccountBehavior


def main() -> None:
    url, prefix, entity_id, amount = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    shared = sys.argv[5:] == ["shared"]
    store = ego.PostgresStore(url, table_prefix=prefix)
    try:
        with ego.Engine("engine-a", store=store) as engine:
            engine.register_entity_type(AccountBehavior, shared=shared)
            state, revision = engine.send_command(entity_id, Credit(amount=amount))
            print(state.balance, revision, flush=True)
    finally:
        store.close()


if __name__ == "__main__":
    main()
