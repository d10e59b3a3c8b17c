"""Products whose stock several processes reserve at once, on one PostgreSQL database.

``ProductBehavior`` never lets the stock go below zero. Registered with ``shared=True``, each
process reads the journal head before each command, so a reservation is judged on the stock
every process has written; the ``low-stock`` projection (a read model in PostgreSQL) runs in
one process at a time: the others stand by and take over if it dies. See README.md,
"Several processes on one database", and ``run.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from google.protobuf.message import Message

import ego

from inventory_pb2 import AddStock, Product, Reserve, StockAdded, StockReserved

__all__ = ["OutOfStock", "ProductBehavior", "low_stock_handler"]


class OutOfStock(Exception):
    """A reservation of more units than are on hand."""


class ProductBehavior(ego.EventSourcedBehavior[AddStock | Reserve, StockAdded | StockReserved, Product]):
    """One product: ``ProductBehavior("product-7")``."""

    def __init__(self, sku: str) -> None:
        self.sku = sku

    def id(self) -> str:
        return self.sku

    def initial_state(self) -> Product:
        return Product(sku=self.sku)

    def handle_command(self, command: AddStock | Reserve, state: Product) -> Sequence[StockAdded | StockReserved]:
        if isinstance(command, AddStock):
            return [StockAdded(quantity=command.quantity)]
        if command.quantity > state.on_hand:
            raise OutOfStock(f"{self.sku}: {command.quantity} asked, {state.on_hand} on hand")
        left = state.on_hand - command.quantity
        return [StockReserved(quantity=command.quantity, order_id=command.order_id, left=left)]

    def handle_event(self, event: StockAdded | StockReserved, state: Product) -> Product:
        if isinstance(event, StockAdded):
            return Product(sku=state.sku, on_hand=state.on_hand + event.quantity)
        return Product(sku=state.sku, on_hand=state.on_hand - event.quantity)


def low_stock_handler(table: str) -> Callable[[list[ego.PersistedEvent]], list[ego.Sql]]:
    """A transactional projection: ``table`` (sku, left, reservations) holds, per product, the
    units left after its last reservation and how many reservations it had, in the offsets'
    transaction (each event counted once)."""

    def handle(events: list[ego.PersistedEvent]) -> list[ego.Sql]:
        writes = []
        for e in events:
            message: Message = e.event
            if isinstance(message, StockReserved):
                writes.append(
                    ego.Sql(
                        f"INSERT INTO {table} (sku, left_units, reservations) VALUES ($1, $2, 1) "
                        f"ON CONFLICT (sku) DO UPDATE SET left_units = $2, reservations = {table}.reservations + 1",
                        (e.persistence_id, message.left),
                    )
                )
        return writes

    return handle
