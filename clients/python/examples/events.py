"""Following stockguard's events from the feed: what changed, in commit order, from the
last ``seq`` you handled. Keep that seq where you keep the effects (your database) so a
restart neither misses nor repeats work."""

from __future__ import annotations

from stockguard_client import Client, Event, OrderEvent, StockChangedEvent, StockEdgeEvent


class Storefront:
    """What a shop keeps up to date from events (here in memory; yours is a database)."""

    def __init__(self) -> None:
        self.available: dict[str, int] = {}
        self.sold_out: set[str] = set()
        self.paid_orders: set[str] = set()
        self.last_seq: int | None = None
        self._seen: set[str] = set()

    def apply(self, event: Event) -> None:
        if event.id in self._seen:  # delivery is at least once: skip a repeat
            return
        self._seen.add(event.id)
        if isinstance(event, StockChangedEvent):
            self.available[event.data.sku] = event.data.available
        elif isinstance(event, StockEdgeEvent) and event.type == "stock.out_of_stock":
            self.sold_out.add(event.data.sku)
        elif isinstance(event, StockEdgeEvent) and event.type == "stock.back_in_stock":
            self.sold_out.discard(event.data.sku)
        elif isinstance(event, OrderEvent) and event.type == "order.paid":
            self.paid_orders.add(event.data.order.id)


def poll(sg: Client, store: Storefront) -> int:
    """Apply every event after the last one handled; call it every few seconds. Returns
    how many were new."""
    handled = 0
    for event in sg.iter_events(after=store.last_seq, types=["stock.*", "order.*"]):
        store.apply(event)
        store.last_seq = event.seq
        handled += 1
    return handled
