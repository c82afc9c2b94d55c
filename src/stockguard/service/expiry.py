"""Reservation expiry and abandonment (DESIGN.md §4 Expire).

Only unpaid ``pending`` orders are touched: committed reservations and paid orders are
never released here (invariant 6). An expired order stays ``pending`` (a late payment can
still arrive) and is cancelled after the abandonment window.
"""

from __future__ import annotations

from stockguard.domain.model import LogAction, MovementReason, OrderStatus, ReservationStatus
from stockguard.service.orders import OVERDUE, move_reservations, set_order_status
from stockguard.service.uow import Backends, UnitOfWork, run
from stockguard.store.orders import LogEntry, insert_logs, load_order

__all__ = [
    "ACTOR",
    "abandon_order",
    "abandon_stale",
    "expire_all_due",
    "expire_due",
    "expire_order",
]

ACTOR = "system:expiry-worker"


async def expire_order(backends: Backends, order_id: str, actor: str = ACTOR) -> int:
    """Expire the order's overdue reservations; returns the units given back."""

    async def body(uow: UnitOfWork) -> int:
        # SKIP LOCKED: an order being paid or cancelled right now is left to that operation.
        order = await load_order(uow.conn, order_id, skip_locked=True)
        if order is None or order.deleted_at is not None or order.status != OrderStatus.PENDING:
            return 0
        expired = await move_reservations(
            uow, order_id, OVERDUE, ReservationStatus.EXPIRED, MovementReason.EXPIRE
        )
        if not expired:
            return 0
        await insert_logs(
            uow.conn,
            uow.actor,
            [LogEntry(order_id, LogAction.EXPIRED, [r["id"] for r in expired])],
        )
        uow.events.order(order_id, "order.expired")
        return sum(int(r["quantity"]) for r in expired)

    return await run(backends, actor, body, operation="expire_order")


async def expire_due(backends: Backends, limit: int = 200) -> int:
    """One pass: expire pending orders whose reservations are overdue. Returns how many
    orders it expired (not how many it saw: one it had to skip is not progress)."""
    rows = await backends.pool.fetch(
        "SELECT DISTINCT r.order_id FROM reservations r JOIN orders o ON o.id = r.order_id "
        "WHERE r.status = 'reserved' AND r.expires_at <= now() AND o.status = 'pending' "
        "LIMIT $1",
        limit,
    )
    expired = 0
    for r in rows:
        expired += await expire_order(backends, r["order_id"]) > 0
    return expired


async def expire_all_due(backends: Backends, limit: int = 200) -> int:
    """Passes of :func:`expire_due` while each one expires a full page; returns passes.
    An order that is locked elsewhere (being paid or cancelled) waits for the next run
    instead of making this loop spin."""
    passes = 1
    while await expire_due(backends, limit) >= limit:
        passes += 1
    return passes


_ABANDONED = """
SELECT o.id FROM orders o
WHERE o.status = 'pending' AND o.deleted_at IS NULL AND o.payment_id IS NULL
  AND o.created_at + make_interval(secs => o.reservation_ttl_seconds + $1) <= now()
  AND NOT EXISTS (SELECT 1 FROM reservations r
                  WHERE r.order_id = o.id AND r.status IN ('reserved', 'committed'))
"""


async def abandon_order(
    backends: Backends, order_id: str, abandon_after_seconds: int, actor: str = ACTOR
) -> bool:
    """Cancel one abandoned order, deciding under its row lock: a payment, a delete or a
    cancel that commits first wins, and this changes nothing. Returns whether it did."""

    async def body(uow: UnitOfWork) -> bool:
        # The selection again, under the lock (SKIP LOCKED: whoever holds it decides).
        found = await uow.conn.fetchval(
            _ABANDONED + " AND o.id = $2 FOR UPDATE OF o SKIP LOCKED",
            float(abandon_after_seconds),
            order_id,
        )
        if found is None:
            return False
        order = await load_order(uow.conn, order_id)
        assert order is not None
        await set_order_status(uow, order, OrderStatus.CANCELLED, cancel_reason="abandoned")
        await insert_logs(
            uow.conn,
            uow.actor,
            [
                LogEntry(
                    order_id,
                    LogAction.STATUS_CHANGED,
                    context={"from": order.status.value, "to": "cancelled", "via": "abandon"},
                )
            ],
        )
        return True

    return await run(backends, actor, body, operation="abandon_order")


async def abandon_stale(backends: Backends, abandon_after_seconds: int, limit: int = 200) -> int:
    """Cancel pending, unpaid orders that hold nothing and are past the abandonment
    window. Returns how many it cancelled."""
    rows = await backends.pool.fetch(
        _ABANDONED + " ORDER BY o.created_at LIMIT $2", float(abandon_after_seconds), limit
    )
    cancelled = 0
    for r in rows:
        cancelled += await abandon_order(backends, r["id"], abandon_after_seconds)
    return cancelled
