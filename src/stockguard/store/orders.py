"""Orders, their lines and reservations, and the order inventory log (seed 003)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from stockguard.domain.model import LogAction, OrderStatus, ReservationStatus
from stockguard.store.db import Conn

__all__ = [
    "LogEntry",
    "OrderRecord",
    "ReservationRecord",
    "insert_logs",
    "load_order",
    "load_orders",
]


@dataclass(frozen=True, slots=True)
class ReservationRecord:
    id: int
    line_no: int
    sku: str
    location: str
    quantity: int
    status: ReservationStatus
    expires_at: datetime


@dataclass(slots=True)
class OrderRecord:
    id: str
    status: OrderStatus
    channel: str | None
    preferred_locations: list[str]
    allow_split: bool
    reservation_ttl_seconds: int
    total_amount: int | None
    currency: str | None
    payment_provider: str | None
    payment_id: str | None
    payment_amount: int | None
    payment_currency: str | None
    paid_at: datetime | None
    request_hash: str
    cancel_reason: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    lines: list[tuple[int, str, int]] = field(default_factory=list)
    reservations: list[ReservationRecord] = field(default_factory=list)

    @property
    def has_payment_proof(self) -> bool:
        return bool(self.payment_provider and self.payment_id)

    def held_by_line(self) -> dict[int, int]:
        """Units held (reserved or committed) or already shipped, per line."""
        held: dict[int, int] = {}
        for r in self.reservations:
            if r.status in (
                ReservationStatus.RESERVED,
                ReservationStatus.COMMITTED,
                ReservationStatus.FULFILLED,
            ):
                held[r.line_no] = held.get(r.line_no, 0) + r.quantity
        return held


_ORDER_COLUMNS = """
    id, status, channel, preferred_locations, allow_split, reservation_ttl_seconds,
    total_amount, currency, payment_provider, payment_id, payment_amount, payment_currency,
    paid_at, request_hash, cancel_reason, created_at, updated_at, deleted_at
"""


def _order(row: asyncpg.Record) -> OrderRecord:
    data = dict(row.items())
    data["status"] = OrderStatus(data["status"])
    data["preferred_locations"] = list(data["preferred_locations"])
    return OrderRecord(**data)


async def load_order(
    conn: Conn, order_id: str, *, lock: bool = False, skip_locked: bool = False
) -> OrderRecord | None:
    """The order with its lines and reservations; ``lock`` takes the order's row lock,
    which every use case on one order takes first (before any level lock)."""
    suffix = " FOR UPDATE SKIP LOCKED" if skip_locked else (" FOR UPDATE" if lock else "")
    row = await conn.fetchrow(
        f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = $1{suffix}", order_id
    )
    if row is None:
        return None
    orders = [_order(row)]
    await _attach(conn, orders)
    return orders[0]


async def load_orders(conn: Conn, rows: Sequence[asyncpg.Record]) -> list[OrderRecord]:
    orders = [_order(r) for r in rows]
    await _attach(conn, orders)
    return orders


async def _attach(conn: Conn, orders: list[OrderRecord]) -> None:
    if not orders:
        return
    by_id = {o.id: o for o in orders}
    ids = list(by_id)
    for r in await conn.fetch(
        "SELECT order_id, line_no, sku, quantity FROM order_lines "
        "WHERE order_id = ANY($1::text[]) ORDER BY order_id, line_no",
        ids,
    ):
        by_id[r["order_id"]].lines.append((r["line_no"], r["sku"], r["quantity"]))
    for r in await conn.fetch(
        "SELECT order_id, id, line_no, sku, location, quantity, status, expires_at "
        "FROM reservations WHERE order_id = ANY($1::text[]) ORDER BY order_id, id",
        ids,
    ):
        by_id[r["order_id"]].reservations.append(
            ReservationRecord(
                id=r["id"],
                line_no=r["line_no"],
                sku=r["sku"],
                location=r["location"],
                quantity=r["quantity"],
                status=ReservationStatus(r["status"]),
                expires_at=r["expires_at"],
            )
        )


@dataclass(frozen=True, slots=True)
class LogEntry:
    order_id: str
    action: LogAction
    reservation_ids: Sequence[int] = ()
    error_reason: str | None = None
    context: dict[str, Any] = field(default_factory=dict)


async def insert_logs(conn: Conn, actor: str, entries: Sequence[LogEntry]) -> list[int]:
    """Append to ``order_inventory_logs``; returns the new ids in order."""
    if not entries:
        return []
    rows = await conn.fetch(
        """
        INSERT INTO order_inventory_logs (order_id, actor, reservation_ids, action, error_reason,
                                          context)
        SELECT e.order_id, $6,
               ARRAY(SELECT jsonb_array_elements_text(e.ids::jsonb)::bigint),
               e.action, e.error_reason, e.context
        FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
             WITH ORDINALITY AS e(order_id, ids, action, error_reason, context, n)
        ORDER BY e.n
        RETURNING id
        """,
        [e.order_id for e in entries],
        [json.dumps(list(e.reservation_ids)) for e in entries],
        [e.action.value for e in entries],
        [e.error_reason for e in entries],
        [e.context for e in entries],
        actor,
    )
    return [r["id"] for r in rows]
