"""The outbox after a fault run (DESIGN.md §10, invariant 14): every change the database
holds has its events in the feed, and nothing that did not happen has one.

Over one snapshot, after every committed event has been numbered:

- each order that exists has exactly one ``order.placed``, and no ``order.*`` event names
  an order that does not exist (a refused placement announced nothing);
- each cancelled order exactly one ``order.cancelled``, each deleted one exactly one
  ``order.deleted``, and orders that are neither, none; each shipped or delivered order
  exactly one ``order.shipped``; each order that was ever paid (a payment proof and a
  status past pending) at least one ``order.paid`` or ``order.recovered``;
- each return exactly one ``order.returned``; each transfer exactly one
  ``transfer.shipped``, one ``transfer.received`` per receipt, and one
  ``transfer.cancelled`` if it was cancelled;
- every event has a ``seq`` (none is left unnumbered), and per SKU the last
  ``stock.changed`` (by seq) says what the levels hold now, over active locations.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import asyncpg

__all__ = ["check_events", "events_snapshot"]

Row = dict[str, Any]


async def events_snapshot(database_url: str) -> dict[str, list[Row]]:
    """Number everything committed, then read events and what they describe in one
    repeatable-read snapshot."""
    conn = await asyncpg.connect(database_url)
    try:
        while await conn.fetchval("SELECT stockguard_sequence_events(10000)"):
            pass
        queries = {
            "events": "SELECT seq, type, data::text AS data FROM events "
            "WHERE type <> 'ping' ORDER BY seq NULLS LAST",
            "orders": "SELECT id, status, payment_id, deleted_at IS NOT NULL AS deleted "
            "FROM orders",
            "returns": "SELECT order_id FROM order_returns",
            "transfers": "SELECT id, status FROM transfers",
            "receipts": "SELECT transfer_id FROM transfer_receipts",
            "totals": """
                SELECT l.sku,
                       sum(l.on_hand) FILTER (WHERE loc.active) AS on_hand,
                       sum(l.reserved) FILTER (WHERE loc.active) AS reserved,
                       sum(l.unavailable) FILTER (WHERE loc.active) AS unavailable,
                       sum(GREATEST(0, l.on_hand - l.reserved - l.unavailable
                                       - l.safety_stock)) FILTER (WHERE loc.active)
                           AS available
                FROM inventory_levels l JOIN locations loc ON loc.code = l.location
                GROUP BY l.sku
            """,
        }
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            db = {
                name: [dict(r.items()) for r in await conn.fetch(q)] for name, q in queries.items()
            }
    finally:
        await conn.close()
    for e in db["events"]:
        e["data"] = json.loads(e["data"])
    return db


def _violation(check: str, **detail: Any) -> Row:
    return {"check": check, **detail}


def check_events(db: dict[str, list[Row]]) -> list[Row]:
    out: list[Row] = []
    per_order: dict[str, Counter[str]] = {}
    per_transfer: dict[str, Counter[str]] = {}
    last_changed: dict[str, Row] = {}
    for e in db["events"]:
        if e["seq"] is None:
            out.append(_violation("event_numbered", type=e["type"]))
        data = e["data"]
        if e["type"].startswith("order."):
            per_order.setdefault(data["order"]["id"], Counter())[e["type"]] += 1
        elif e["type"].startswith("transfer."):
            per_transfer.setdefault(data["transfer"]["id"], Counter())[e["type"]] += 1
        elif e["type"] == "stock.changed":
            last_changed[data["sku"]] = data
    orders = {o["id"]: o for o in db["orders"]}
    for order_id in per_order.keys() - orders.keys():
        out.append(_violation("event_of_an_order_never_placed", order=order_id,
                              events=dict(per_order[order_id])))  # fmt: skip
    returns = Counter(r["order_id"] for r in db["returns"])
    for o in orders.values():
        seen = per_order.get(o["id"], Counter())
        cancelled = o["status"] == "cancelled"
        wanted = {
            "order.placed": 1,
            "order.cancelled": 1 if cancelled else 0,
            "order.deleted": 1 if o["deleted"] else 0,
            "order.shipped": 1 if o["status"] in ("shipped", "delivered") else 0,
            "order.returned": returns[o["id"]],
        }
        got = {t: seen[t] for t in wanted}
        if got != wanted:
            out.append(_violation("order_events", order=o["id"], status=o["status"],
                                  deleted=o["deleted"], wanted=wanted, got=got))  # fmt: skip
        paid = o["payment_id"] is not None and o["status"] in ("paid", "processing",
                                                                "shipped", "delivered")  # fmt: skip
        if paid and not (seen["order.paid"] or seen["order.recovered"]):
            out.append(_violation("paid_order_without_event", order=o["id"], status=o["status"]))
    receipts = Counter(r["transfer_id"] for r in db["receipts"])
    for t in db["transfers"]:
        seen = per_transfer.get(t["id"], Counter())
        wanted = {
            "transfer.shipped": 1,
            "transfer.received": receipts[t["id"]],
            "transfer.cancelled": 1 if t["status"] == "cancelled" else 0,
        }
        got = {k: seen[k] for k in wanted}
        if got != wanted:
            out.append(_violation("transfer_events", transfer=t["id"], wanted=wanted, got=got))
    for t_id in per_transfer.keys() - {t["id"] for t in db["transfers"]}:
        out.append(_violation("event_of_a_transfer_never_made", transfer=t_id))
    for total in db["totals"]:
        told = last_changed.get(total["sku"])
        now = {k: int(total[k] or 0) for k in ("on_hand", "reserved", "unavailable", "available")}
        if told is None or {k: told[k] for k in now} != now:
            out.append(_violation("last_stock_changed_is_the_level", sku=total["sku"],
                                  level=now, event=told))  # fmt: skip
    return out
