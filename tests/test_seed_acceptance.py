"""Acceptance criteria of seeds 000 (PostgreSQL and Redis parts), 002 and 004, each one
its own named test, driven through the use cases."""

from __future__ import annotations

import pytest

from stockguard.domain.errors import InvalidTransition, OrderNotDeletable, OutOfStock
from stockguard.domain.model import OrderStatus, ReservationStatus
from stockguard.service import orders
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.uow import Backends
from tests.conftest import Stocker
from tests.helpers import (
    assert_cache_parity,
    assert_invariants,
    ledger,
    level,
    log_actions,
)


async def _paid_processing(backends: Backends, order_id: str) -> None:
    await orders.pay_order(backends, order_id, PaymentProof("manual", f"pay-{order_id}"), "t")
    await orders.set_status(backends, order_id, OrderStatus.PROCESSING, "t")


# ---------------------------------------------------------------- seed 000


async def test_seed000_cancel_increases_stock_in_postgres(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 4),)), "t")
    assert await level(backends.pool, sku, loc) == (10, 4)
    await orders.cancel_order(backends, f"o{uid}", "t")
    assert await level(backends.pool, sku, loc) == (10, 0)
    assert await ledger(backends.pool, sku, loc) == (10, 0)


async def test_seed000_cancel_increases_stock_in_redis(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 10}})
    assert backends.cache is not None
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 4),)), "t")
    assert (await backends.cache.read([sku]))[sku] == (6, {loc: 6})
    await orders.cancel_order(backends, f"o{uid}", "t")
    assert (await backends.cache.read([sku]))[sku] == (10, {loc: 10})
    await assert_cache_parity(backends, [sku])


async def test_seed000_deleting_processing_order_restores_postgres_and_redis(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 3),)), "t")
    await _paid_processing(backends, f"o{uid}")
    await orders.delete_order(backends, f"o{uid}", "t")
    assert await level(backends.pool, sku, loc) == (5, 0)
    assert backends.cache is not None
    assert (await backends.cache.read([sku]))[sku] == (5, {loc: 5})
    assert await log_actions(backends.pool, f"o{uid}") == [
        "RESERVED",
        "COMMITTED",
        "STATUS_CHANGED",
        "RELEASED",
        "STOCK_RESTORED",
    ]
    await assert_invariants(backends.pool)


async def test_seed000_deleting_cancelled_order_does_not_restore_again(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 3),)), "t")
    await orders.cancel_order(backends, f"o{uid}", "t")
    assert await level(backends.pool, sku, loc) == (5, 0)
    await orders.delete_order(backends, f"o{uid}", "t")
    assert await level(backends.pool, sku, loc) == (5, 0)
    assert await ledger(backends.pool, sku, loc) == (5, 0)
    assert (await log_actions(backends.pool, f"o{uid}")).count("STOCK_RESTORED") == 1


@pytest.mark.parametrize("final", [OrderStatus.DELIVERED, OrderStatus.SHIPPED])
async def test_seed000_deleting_delivered_or_shipped_order_is_blocked(
    backends: Backends, stock: Stocker, uid: str, final: OrderStatus
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 2),)), "t")
    await _paid_processing(backends, f"o{uid}")
    await orders.set_status(backends, f"o{uid}", OrderStatus.SHIPPED, "t")
    if final == OrderStatus.DELIVERED:
        await orders.set_status(backends, f"o{uid}", OrderStatus.DELIVERED, "t")
    with pytest.raises(OrderNotDeletable):
        await orders.delete_order(backends, f"o{uid}", "t")
    got = await orders.get_order(backends, f"o{uid}")
    assert got.status == final
    assert await level(backends.pool, sku, loc) == (3, 0)


# ---------------------------------------------------------------- seed 002


async def test_seed002_stock_restored_once_when_cancel_repeats(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 8}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 5),)), "t")
    first = await orders.cancel_order(backends, f"o{uid}", "t", reason="customer")
    for _ in range(5):
        again = await orders.cancel_order(backends, f"o{uid}", "t")
        assert again.updated_at == first.updated_at  # unchanged
    assert await level(backends.pool, sku, loc) == (8, 0)
    assert (await log_actions(backends.pool, f"o{uid}")).count("STOCK_RESTORED") == 1


async def test_seed002_restores_every_line_of_the_order(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, loc = f"A{uid}", f"B{uid}", f"w{uid}"
    await stock({a: {loc: 3}, b: {loc: 4}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((a, 3), (b, 4))), "t")
    await orders.cancel_order(backends, f"o{uid}", "t")
    assert await level(backends.pool, a, loc) == (3, 0)
    assert await level(backends.pool, b, loc) == (4, 0)


async def test_seed002_cancelled_status_recorded_after_restoration(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 2}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 2),)), "t")
    cancelled = await orders.cancel_order(backends, f"o{uid}", "t", reason="fraud")
    assert cancelled.status == OrderStatus.CANCELLED
    assert cancelled.cancel_reason == "fraud"
    assert {r.status for r in cancelled.reservations} == {ReservationStatus.RELEASED}


async def test_seed002_restoration_is_logged_for_audit(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 2}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 2),)), "t")
    await orders.cancel_order(backends, f"o{uid}", "t")
    row = await backends.pool.fetchrow(
        "SELECT actor, context, reservation_ids FROM order_inventory_logs "
        "WHERE order_id = $1 AND action = 'STOCK_RESTORED'",
        f"o{uid}",
    )
    assert row is not None
    assert row["context"] == {"via": "cancel", "units": {sku: 2}}
    assert len(row["reservation_ids"]) == 1
    moves = await backends.pool.fetch(
        "SELECT reason, reserved_delta FROM stock_movements WHERE order_id = $1 ORDER BY id",
        f"o{uid}",
    )
    assert [(m["reason"], m["reserved_delta"]) for m in moves] == [
        ("reserve", 2),
        ("release", -2),
    ]


@pytest.mark.parametrize("final", [OrderStatus.SHIPPED, OrderStatus.DELIVERED])
async def test_seed002_only_cancellable_states_restore(
    backends: Backends, stock: Stocker, uid: str, final: OrderStatus
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 2}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 2),)), "t")
    await _paid_processing(backends, f"o{uid}")
    await orders.set_status(backends, f"o{uid}", OrderStatus.SHIPPED, "t")
    if final == OrderStatus.DELIVERED:
        await orders.set_status(backends, f"o{uid}", OrderStatus.DELIVERED, "t")
    with pytest.raises(InvalidTransition) as exc:
        await orders.cancel_order(backends, f"o{uid}", "t")
    assert exc.value.extra == {"from": final.value, "to": "cancelled"}
    assert await level(backends.pool, sku, loc) == (0, 0)


async def test_seed002_restoration_never_makes_stock_negative(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 1}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 1),)), "t")
    await orders.cancel_order(backends, f"o{uid}", "t")
    await orders.delete_order(backends, f"o{uid}", "t")
    on_hand, reserved = await level(backends.pool, sku, loc)
    assert (on_hand, reserved) == (1, 0)
    await assert_invariants(backends.pool)


# ---------------------------------------------------------------- seed 004


async def test_seed004_last_unit_only_one_order_succeeds(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 1}})
    await orders.place_order(backends, PlaceOrder(f"a{uid}", ((sku, 1),)), "t")
    with pytest.raises(OutOfStock) as exc:
        await orders.place_order(backends, PlaceOrder(f"b{uid}", ((sku, 1),)), "t")
    assert exc.value.extra["shortages"] == [{"sku": sku, "requested": 1, "available": 0}]
    assert await level(backends.pool, sku, loc) == (1, 1)
    stored = await backends.pool.fetchval("SELECT count(*) FROM orders WHERE id = $1", f"b{uid}")
    assert stored == 0


async def test_seed004_location_follows_channel_and_shipping_rules(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku = f"S{uid}"
    near, far, other = f"near{uid}", f"far{uid}", f"pos{uid}"
    await stock(
        {sku: {near: 5, far: 5, other: 50}},
        locations={near: 50, far: 1, other: 0},
        channels={f"web{uid}": [far, near]},
    )
    # Channel priority puts "far" first (the other location is not in the channel at all).
    placed = await orders.place_order(
        backends, PlaceOrder(f"a{uid}", ((sku, 2),), channel=f"web{uid}"), "t"
    )
    assert [r.location for r in placed.order.reservations] == [far]
    # The shipping rules' preferred location wins over channel priority.
    placed = await orders.place_order(
        backends,
        PlaceOrder(f"b{uid}", ((sku, 2),), channel=f"web{uid}", preferred_locations=(near,)),
        "t",
    )
    assert [r.location for r in placed.order.reservations] == [near]
    # Without a channel, every active location counts, by location priority.
    placed = await orders.place_order(backends, PlaceOrder(f"c{uid}", ((sku, 2),)), "t")
    assert [r.location for r in placed.order.reservations] == [other]
    assert await level(backends.pool, sku, far) == (5, 2)
    assert await level(backends.pool, sku, near) == (5, 2)
    assert await level(backends.pool, sku, other) == (50, 2)


async def test_seed004_split_across_locations_only_when_allowed(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, a, b = f"S{uid}", f"a{uid}", f"b{uid}"
    await stock({sku: {a: 3, b: 3}}, locations={a: 1, b: 2})
    with pytest.raises(OutOfStock):
        await orders.place_order(
            backends, PlaceOrder(f"n{uid}", ((sku, 5),), allow_split=False), "t"
        )
    placed = await orders.place_order(backends, PlaceOrder(f"y{uid}", ((sku, 5),)), "t")
    assert sorted((r.location, r.quantity) for r in placed.order.reservations) == [(a, 3), (b, 2)]


async def test_seed004_multi_line_order_is_all_or_nothing(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, c, loc = f"A{uid}", f"B{uid}", f"C{uid}", f"w{uid}"
    await stock({a: {loc: 5}, b: {loc: 1}, c: {loc: 0}})
    with pytest.raises(OutOfStock) as exc:
        await orders.place_order(backends, PlaceOrder(f"o{uid}", ((a, 2), (b, 2), (c, 1))), "t")
    assert exc.value.extra["shortages"] == [
        {"sku": b, "requested": 2, "available": 1},
        {"sku": c, "requested": 1, "available": 0},
    ]
    assert await level(backends.pool, a, loc) == (5, 0)
    assert await level(backends.pool, b, loc) == (1, 0)
