"""``stockguard orders returns ORDER_ID``: an order's returns after shipment, one row per
returned line (where its units went back, sellable or damaged)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from stockguard.domain.errors import StockguardError

__all__ = ["orders_returns"]


def orders_returns(order_id: Annotated[str, typer.Argument(help="the order's id")]) -> None:
    """An order's returns, oldest first: each line's SKU, units, restock or damaged, and the
    location its units went back to (POST /v1/orders/{id}/returns records them)."""
    # Imported here: stockguard.cli imports this module to register the command.
    from stockguard.cli import _fail, _with_backends, console, err
    from stockguard.service.returns import list_returns

    try:
        found = _with_backends(lambda b: list_returns(b, order_id))
    except StockguardError as exc:
        _fail(exc)
    table = Table(title=f"returns of {order_id}: {len(found)}")
    for column in ("return", "at", "sku", "quantity", "disposition", "location", "note"):
        table.add_column(column)
    for r in found:
        for ln in r.lines:
            table.add_row(
                r.return_id, str(r.created_at)[:19], ln.sku, str(ln.quantity), ln.disposition,
                ln.location, r.note or "",
            )  # fmt: skip
    console.print(table)
    if not found:
        err.print(f"no returns for order {order_id}")
