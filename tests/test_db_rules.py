"""PostgreSQL itself refuses writes that would break an invariant (DESIGN.md §10: 7, 10,
11; migration 0003): each statement below runs as a superuser, bypassing the service,
and must fail with nothing changed."""

from __future__ import annotations

import asyncpg
import pytest

from stockguard.domain.model import OrderStatus, ReservationStatus
from stockguard.service import orders
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import assert_invariants, expire_now

FORWARD = {
    ("reserved", "committed"),
    ("reserved", "released"),
    ("reserved", "expired"),
    ("committed", "fulfilled"),
    ("committed", "released"),
}


async def _reservation_in(backends: Backends, stock: Stocker, uid: str, status: str) -> int:
    """A reservation that reached ``status`` through the service."""
    sku, loc, oid = f"S{uid}{status}", f"w{uid}", f"o{uid}{status}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
    if status in ("committed", "fulfilled"):
        await orders.pay_order(backends, oid, PaymentProof("manual", f"m{oid}"), "t")
    if status == "fulfilled":
        await orders.set_status(backends, oid, OrderStatus.PROCESSING, "t")
        await orders.set_status(backends, oid, OrderStatus.SHIPPED, "t")
    if status == "released":
        await orders.cancel_order(backends, oid, "t")
    if status == "expired":
        await expire_now(backends, oid)
    rid = await backends.pool.fetchval("SELECT id FROM reservations WHERE order_id = $1", oid)
    assert await backends.pool.fetchval("SELECT status FROM reservations WHERE id = $1", rid) == (
        status
    )
    return int(rid)


async def test_a_reservation_status_only_moves_forward(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    statuses = [s.value for s in ReservationStatus]
    refused = 0
    for old in statuses:
        for new in statuses:
            if old == new or (old, new) in FORWARD:
                continue
            rid = await _reservation_in(backends, stock, f"{uid}{old[:3]}{new[:3]}", old)
            with pytest.raises(asyncpg.CheckViolationError, match="status cannot go from"):
                await backends.pool.execute(
                    "UPDATE reservations SET status = $2 WHERE id = $1", rid, new
                )
            assert await backends.pool.fetchval(
                "SELECT status FROM reservations WHERE id = $1", rid
            ) == old  # fmt: skip
            refused += 1
    assert refused == 25 - 5 - 5
    await assert_invariants(backends.pool)


async def test_what_a_reservation_holds_never_changes_and_it_is_never_deleted(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    rid = await _reservation_in(backends, stock, uid, "reserved")
    for column, value in [("quantity", 2), ("location", "elsewhere"), ("line_no", 2)]:
        with pytest.raises(asyncpg.PostgresError):
            await backends.pool.execute(
                f"UPDATE reservations SET {column} = $2 WHERE id = $1", rid, value
            )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await backends.pool.execute("DELETE FROM reservations WHERE id = $1", rid)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await backends.pool.execute("TRUNCATE reservations CASCADE")
    # A forward move and a new expiry are still fine.
    await backends.pool.execute(
        "UPDATE reservations SET expires_at = now() + interval '1 hour' WHERE id = $1", rid
    )


async def test_paid_states_carry_payment_proof_and_deleted_orders_are_cancelled(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"P{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
    for status in ("paid", "processing", "shipped", "delivered", "needs_review"):
        with pytest.raises(asyncpg.CheckViolationError, match="paid_orders_carry_payment_proof"):
            await backends.pool.execute("UPDATE orders SET status = $2 WHERE id = $1", oid, status)
    with pytest.raises(asyncpg.CheckViolationError, match="deleted_orders_are_cancelled"):
        await backends.pool.execute("UPDATE orders SET deleted_at = now() WHERE id = $1", oid)
    await orders.pay_order(backends, oid, PaymentProof("stripe", f"pi_{uid}"), "t")
    with pytest.raises(asyncpg.CheckViolationError, match="paid_orders_carry_payment_proof"):
        await backends.pool.execute(
            "UPDATE orders SET payment_provider = NULL, payment_id = NULL WHERE id = $1", oid
        )
    order = await orders.get_order(backends, oid)
    assert (order.status.value, order.payment_id) == ("paid", f"pi_{uid}")


async def test_one_payment_pays_one_order(backends: Backends, stock: Stocker, uid: str) -> None:
    sku, loc = f"U{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    for oid in (f"a{uid}", f"b{uid}"):
        await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
    await orders.pay_order(backends, f"a{uid}", PaymentProof("stripe", f"pi_{uid}"), "t")
    with pytest.raises(asyncpg.UniqueViolationError, match="orders_one_order_per_payment"):
        await backends.pool.execute(
            "UPDATE orders SET status = 'paid', payment_provider = 'stripe', payment_id = $2, "
            "paid_at = now() WHERE id = $1",
            f"b{uid}",
            f"pi_{uid}",
        )
    # The same payment id from another provider is another payment.
    await orders.pay_order(backends, f"b{uid}", PaymentProof("razorpay", f"pi_{uid}"), "t")


async def test_a_reservation_belongs_to_a_line_of_its_order_with_its_sku(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, loc, oid = f"A{uid}", f"B{uid}", f"w{uid}", f"o{uid}"
    await stock({a: {loc: 5}, b: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(oid, ((a, 1),)), "t")
    insert = (
        "INSERT INTO reservations (order_id, line_no, sku, location, quantity, status, "
        "expires_at) VALUES ($1, $2, $3, $4, 1, 'reserved', now())"
    )
    for line_no, sku in [(1, b), (2, a)]:  # another SKU than its line's; no such line
        with pytest.raises(asyncpg.ForeignKeyViolationError, match="reservations_of_an_order_line"):
            await backends.pool.execute(insert, oid, line_no, sku, loc)
    assert await backends.pool.fetchval(
        "SELECT count(*) FROM reservations WHERE order_id = $1", oid
    ) == 1  # fmt: skip


async def test_ledger_reasons_are_a_known_set(backends: Backends, stock: Stocker, uid: str) -> None:
    sku, loc = f"L{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    with pytest.raises(asyncpg.CheckViolationError, match="stock_movements_known_reason"):
        await backends.pool.execute(
            "INSERT INTO stock_movements (sku, location, on_hand_delta, reserved_delta, reason, "
            "actor) VALUES ($1, $2, 1, 0, 'gift', 't')",
            sku,
            loc,
        )


async def test_level_states_stay_within_on_hand(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    """Invariant 1': 0 ≤ reserved, 0 ≤ unavailable, reserved + unavailable ≤ on_hand."""
    sku, loc = f"M{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 3),)), "t")
    for sets in ("unavailable = 3", "unavailable = -1", "on_hand = 2", "safety_stock = -1"):
        with pytest.raises(asyncpg.CheckViolationError):
            await backends.pool.execute(
                f"UPDATE inventory_levels SET {sets} WHERE sku = $1 AND location = $2", sku, loc
            )
    row = await backends.pool.fetchrow(
        "SELECT on_hand, reserved, unavailable, safety_stock FROM inventory_levels WHERE sku = $1",
        sku,
    )
    assert row is not None
    assert tuple(row.values()) == (5, 3, 0, 0)
