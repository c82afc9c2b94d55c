"""Orders, their lines and reservations, and the order inventory log (seed 003)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from stockguard.domain.model import LogAction, OrderStatus, ReservationStatus, is_fully_committed
from stockguard.store.db import Conn
from stockguard.store.returns import RETURNS_LATERAL, ReturnRecord, returns_from_json

__all__ = [
    "ORDER_COLUMNS",
    "LogEntry",
    "OrderRecord",
    "ReservationRecord",
    "find_orders",
    "insert_logs",
    "load_order",
    "log_inconsistency",
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
    returns: list[ReturnRecord] = field(default_factory=list)

    @property
    def has_payment_proof(self) -> bool:
        return bool(self.payment_provider and self.payment_id)

    @property
    def fully_committed(self) -> bool:
        return is_fully_committed(
            [(n, q) for n, _, q in self.lines],
            [(r.line_no, r.status, r.quantity) for r in self.reservations],
        )

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


# The order columns, named (a new column must never break a read): ``o`` is orders.
ORDER_COLUMNS = """
    o.id, o.status, o.channel, o.preferred_locations, o.allow_split,
    o.reservation_ttl_seconds, o.total_amount, o.currency, o.payment_provider, o.payment_id,
    o.payment_amount, o.payment_currency, o.paid_at, o.request_hash, o.cancel_reason,
    o.created_at, o.updated_at, o.deleted_at
"""

# An order with its lines, reservations and returns in one statement, so in one snapshot: a read
# never shows a status with reservations from before or after it (invariant 16).
_WHOLE = f"""
SELECT {ORDER_COLUMNS}, l.line_nos, l.line_skus, l.line_quantities,
       r.ids, r.line_nos AS r_line_nos, r.skus, r.locations, r.quantities, r.statuses,
       r.expires, rt.returns
FROM orders o
LEFT JOIN LATERAL (
    SELECT array_agg(x.line_no ORDER BY x.line_no) AS line_nos,
           array_agg(x.sku ORDER BY x.line_no) AS line_skus,
           array_agg(x.quantity ORDER BY x.line_no) AS line_quantities
    FROM order_lines x WHERE x.order_id = o.id
) l ON true
LEFT JOIN LATERAL (
    SELECT array_agg(x.id ORDER BY x.id) AS ids,
           array_agg(x.line_no ORDER BY x.id) AS line_nos,
           array_agg(x.sku ORDER BY x.id) AS skus,
           array_agg(x.location ORDER BY x.id) AS locations,
           array_agg(x.quantity ORDER BY x.id) AS quantities,
           array_agg(x.status ORDER BY x.id) AS statuses,
           array_agg(x.expires_at ORDER BY x.id) AS expires
    FROM reservations x WHERE x.order_id = o.id
) r ON true
{RETURNS_LATERAL}"""

_ORDER_FIELDS = (
    "id", "status", "channel", "preferred_locations", "allow_split", "reservation_ttl_seconds",
    "total_amount", "currency", "payment_provider", "payment_id", "payment_amount",
    "payment_currency", "paid_at", "request_hash", "cancel_reason", "created_at",
    "updated_at", "deleted_at",
)  # fmt: skip


def _whole(row: asyncpg.Record) -> OrderRecord:
    data = {name: row[name] for name in _ORDER_FIELDS}
    data["status"] = OrderStatus(data["status"])
    data["preferred_locations"] = list(data["preferred_locations"])
    order = OrderRecord(**data)
    if row["line_nos"] is not None:
        order.lines = list(
            zip(row["line_nos"], row["line_skus"], row["line_quantities"], strict=True)
        )
    if row["ids"] is not None:
        order.reservations = [
            ReservationRecord(
                id=rid,
                line_no=line_no,
                sku=sku,
                location=location,
                quantity=quantity,
                status=ReservationStatus(status),
                expires_at=expires,
            )
            for rid, line_no, sku, location, quantity, status, expires in zip(
                row["ids"],
                row["r_line_nos"],
                row["skus"],
                row["locations"],
                row["quantities"],
                row["statuses"],
                row["expires"],
                strict=True,
            )
        ]
    order.returns = returns_from_json(order.id, row["returns"])
    return order


async def load_order(
    conn: Conn, order_id: str, *, lock: bool = False, skip_locked: bool = False
) -> OrderRecord | None:
    """The order with its lines, reservations and returns, as of one moment.

    ``lock`` takes the order's row lock first, which every use case on one order takes
    before any other lock; the read is then a statement of its own, so under READ
    COMMITTED it sees everything committed before the lock was granted. ``skip_locked``
    returns None when another transaction holds that lock."""
    if lock or skip_locked:
        suffix = " SKIP LOCKED" if skip_locked else ""
        got = await conn.fetchval(
            f"SELECT true FROM orders WHERE id = $1 FOR UPDATE{suffix}", order_id
        )
        if got is None:
            return None
    row = await conn.fetchrow(_WHOLE + " WHERE o.id = $1", order_id)
    return None if row is None else _whole(row)


async def find_orders(conn: Conn, where: str, *args: object) -> list[OrderRecord]:
    """Orders matching ``where`` (SQL over ``o``, with its ORDER BY and LIMIT), whole, in
    one statement."""
    return [_whole(r) for r in await conn.fetch(f"{_WHOLE} {where}", *args)]


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
        [orjson.dumps(list(e.reservation_ids)).decode() for e in entries],
        [e.action.value for e in entries],
        [e.error_reason for e in entries],
        [e.context for e in entries],
        actor,
    )
    return [r["id"] for r in rows]


async def log_inconsistency(
    conn: Conn,
    actor: str,
    order_id: str,
    reason: str,
    detail: str,
    reservation_ids: Sequence[int] = (),
    **context: Any,
) -> int:
    """The one way to say ``INCONSISTENCY_DETECTED`` (a refund may be due, a double charge,
    a mismatch): ``reason`` is its ``error_reason``, ``detail`` what a person reads."""
    # Its event is written with it: every INCONSISTENCY_DETECTED is announced.
    data: dict[str, Any] = {"order_id": order_id, "reason": reason}
    data.update({k: context[k] for k in ("provider", "payment_id") if k in context})
    await conn.execute("INSERT INTO events (type, data) VALUES ('payment.inconsistency', $1)", data)
    (log_id,) = await insert_logs(
        conn,
        actor,
        [
            LogEntry(
                order_id,
                LogAction.INCONSISTENCY_DETECTED,
                reservation_ids,
                error_reason=reason,
                context={"detail": detail, **context},
            )
        ],
    )
    return log_id
