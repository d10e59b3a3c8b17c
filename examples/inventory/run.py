"""Several processes on one PostgreSQL database: two worker processes reserve stock of the
same five products at once, while this process runs the same engine configuration.

- ``ProductBehavior`` is registered with ``shared=True``: before each command, each process
  reads the product's journal head and folds what the others wrote, so no process sells
  stock another one already reserved (the stock never goes below zero, and the units
  reserved add up).
- The transactional ``low-stock`` projection is added in every process, and runs in one at a
  time (a lease in PostgreSQL): each reservation is counted once in the read model.

    python run.py [POSTGRES_URL]      (default: postgresql://postgres@127.0.0.1:5432/postgres)

It drops and creates its own tables (prefix ``inventory_``) in that database.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import psycopg

import ego

from inventory import OutOfStock, ProductBehavior, low_stock_handler
from inventory_pb2 import AddStock, Reserve, StockReserved

PREFIX = "inventory_"
TABLE = "inventory_low_stock"
PRODUCTS = 5
STOCK = 50
WORKERS = 2
ORDERS = 150


def open_engine(url: str, name: str) -> ego.Engine:
    """The configuration every process uses."""
    engine = ego.Engine(name, store=ego.PostgresStore(url, table_prefix=PREFIX))
    engine.register_entity_type(ProductBehavior, prefix="product-", shared=True)
    engine.add_projection(
        "low-stock", low_stock_handler(TABLE), transactional=True, event_types=[StockReserved], poll_interval=0.1, lease_ttl=2.0
    )
    return engine


def worker(url: str, index: int) -> None:
    """Reserves 1-3 units of random products, ``ORDERS`` times; prints what it got."""
    rng = random.Random(index)
    got = {"accepted": 0, "rejected": 0, "units": 0, "retries": 0}
    with open_engine(url, f"inventory-worker-{index}") as engine:
        for n in range(ORDERS):
            product = engine.entity_ref(ProductBehavior, f"product-{rng.randrange(PRODUCTS)}")
            quantity = rng.randint(1, 3)
            while True:
                try:
                    product.send(Reserve(quantity=quantity, order_id=f"{index}-{n}"))
                except OutOfStock:
                    got["rejected"] += 1
                except ego.errors.ConcurrencyError:
                    # Another process wrote this product at the same moment: nothing was
                    # written; the entity read what it wrote, so send it again.
                    got["retries"] += 1
                    continue
                else:
                    got["accepted"] += 1
                    got["units"] += quantity
                break
    print(json.dumps(got))


def reset(url: str) -> None:
    store = ego.PostgresStore(url, table_prefix=PREFIX)
    store.drop_tables()
    store.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (sku text PRIMARY KEY, left_units bigint NOT NULL, reservations bigint NOT NULL)")


def main(url: str) -> int:
    reset(url)
    started = time.perf_counter()
    with open_engine(url, "inventory-main") as engine:
        products = [engine.entity_ref(ProductBehavior, f"product-{i}") for i in range(PRODUCTS)]
        for product in products:
            product.send(AddStock(quantity=STOCK))
        workers = [
            subprocess.Popen([sys.executable, __file__, "--worker", str(i), url], stdout=subprocess.PIPE, text=True)
            for i in range(WORKERS)
        ]
        results = []
        for w in workers:
            out, _ = w.communicate(timeout=300)
            if w.returncode != 0:
                print(f"a worker failed (exit {w.returncode})", file=sys.stderr)
                return 1
            results.append(json.loads(out.strip().splitlines()[-1]))
        # This process reads every product's journal head before answering: the workers'
        # reservations are all there.
        on_hand = {p.entity_id: p.get_state()[0].on_hand for p in products}
        engine.wait_for_projection("low-stock", timeout=60)
        with psycopg.connect(url) as conn:
            counted = conn.execute(f"SELECT coalesce(sum(reservations), 0) FROM {TABLE}").fetchone()
    accepted = sum(r["accepted"] for r in results)
    units = sum(r["units"] for r in results)
    print(f"{WORKERS} worker processes and this one, one PostgreSQL database, {PRODUCTS} products x {STOCK} units")
    for i, r in enumerate(results):
        print(
            f"  worker {i}: {r['accepted']} reservations accepted ({r['units']} units), {r['rejected']} out of stock, {r['retries']} sent again"
        )
    print(f"  stock left: {on_hand} (never below zero)")
    print(
        f"  units reserved + left = {units} + {sum(on_hand.values())} = {units + sum(on_hand.values())} (stocked {PRODUCTS * STOCK})"
    )
    print(f"  low-stock read model counted {counted[0] if counted else 0} reservations of {accepted} (each once)")
    print(f"  in {time.perf_counter() - started:.1f} s")
    ok = all(v >= 0 for v in on_hand.values()) and units + sum(on_hand.values()) == PRODUCTS * STOCK
    ok = ok and counted is not None and counted[0] == accepted
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[3], int(sys.argv[2]))
    else:
        sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres"))
