"""Expiry and abandonment (DESIGN.md §4 Expire): only unpaid pending orders."""

from __future__ import annotations

from stockguard.domain.model import OrderStatus
from stockguard.service import orders
from stockguard.service.expiry import abandon_stale, expire_due
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import assert_cache_parity, assert_invariants, level, log_actions


async def _age(backends: Backends, order_id: str, seconds: int) -> None:
    """Move the order and its reservations back in time."""
    await backends.pool.execute(
        "UPDATE orders SET created_at = created_at - make_interval(secs => $2) WHERE id = $1",
        order_id,
        float(seconds),
    )
    await backends.pool.execute(
        "UPDATE reservations SET expires_at = expires_at - make_interval(secs => $2) "
        "WHERE order_id = $1",
        order_id,
        float(seconds),
    )


async def test_expiry_gives_back_unpaid_stock_and_keeps_the_order_pending(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(f"due{uid}", ((sku, 2),)), "t")
    await orders.place_order(backends, PlaceOrder(f"new{uid}", ((sku, 1),)), "t")
    await orders.place_order(backends, PlaceOrder(f"paid{uid}", ((sku, 1),)), "t")
    await orders.pay_order(backends, f"paid{uid}", PaymentProof("manual", f"m{uid}"), "t")
    for oid in (f"due{uid}", f"paid{uid}"):
        await _age(backends, oid, 3600)
    while await expire_due(backends) > 0:
        pass
    due = await orders.get_order(backends, f"due{uid}")
    assert due.status == OrderStatus.PENDING
    assert [r.status.value for r in due.reservations] == ["expired"]
    assert await level(backends.pool, sku, loc) == (5, 2)  # new (1) + paid (1) still held
    assert await log_actions(backends.pool, f"due{uid}") == ["RESERVED", "EXPIRED"]
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


async def test_abandoned_orders_are_cancelled_after_the_window(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    for name in ("old", "young", "paid"):
        await orders.place_order(backends, PlaceOrder(f"{name}{uid}", ((sku, 1),)), "t")
    await orders.pay_order(backends, f"paid{uid}", PaymentProof("manual", f"m{uid}"), "t")
    await _age(backends, f"old{uid}", 7200)
    await _age(backends, f"young{uid}", 1000)
    await _age(backends, f"paid{uid}", 7200)
    while await expire_due(backends) > 0:
        pass
    while await abandon_stale(backends, abandon_after_seconds=3600) > 0:
        pass
    old = await orders.get_order(backends, f"old{uid}")
    assert (old.status, old.cancel_reason) == (OrderStatus.CANCELLED, "abandoned")
    assert (await orders.get_order(backends, f"young{uid}")).status == OrderStatus.PENDING
    assert (await orders.get_order(backends, f"paid{uid}")).status == OrderStatus.PAID
    # Expiry had already given the old order's unit back: cancelling restores nothing more.
    assert "STOCK_RESTORED" not in await log_actions(backends.pool, f"old{uid}")
    assert await level(backends.pool, sku, loc) == (5, 1)
    await assert_invariants(backends.pool)
