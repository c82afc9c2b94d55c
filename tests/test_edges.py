"""The lifecycle's edges (issue 7): each test pins one "select, then act" window or
one interleaving open with real locks held by another transaction, so the race is
reproduced on every run rather than by luck."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from stockguard.domain.errors import OutOfStock
from stockguard.domain.model import OrderStatus, ReservationStatus
from stockguard.service import orders
from stockguard.service.expiry import abandon_order, abandon_stale, expire_all_due, expire_due
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.recovery import recover_order, recover_paid_uncommitted
from stockguard.service.uow import Backends
from stockguard.service.webhooks import PaymentEvent, handle_event
from tests.conftest import Stocker
from tests.helpers import (
    assert_cache_parity,
    assert_invariants,
    expire_now,
    holding_locks,
    level,
    log_actions,
    make_overdue,
)


async def waiting_on_locks(pool: asyncpg.Pool, n: int, *tasks: asyncio.Task[object]) -> None:
    """Until ``n`` backends of this database wait for a lock, or every task has ended
    (a contender that skips a lock ends instead of waiting)."""
    async with asyncio.timeout(20):
        while not all(t.done() for t in tasks):
            blocked = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if blocked >= n:
                return
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def levels_held(pool: asyncpg.Pool, sku: str) -> AsyncIterator[None]:
    """Another transaction holds the SKU's level locks until the block ends."""
    async with holding_locks(pool, "SELECT 1 FROM inventory_levels WHERE sku = $1 FOR UPDATE", sku):
        yield


async def _abandoned(backends: Backends, oid: str) -> None:
    """The order holds nothing and was placed long before the abandonment window."""
    await expire_now(backends, oid)
    await backends.pool.execute(
        "UPDATE orders SET created_at = now() - interval '2 hours' WHERE id = $1", oid
    )


# ------------------------------------------------------------ abandonment vs payment


async def test_abandonment_never_cancels_an_order_paid_meanwhile(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"A{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),), reservation_ttl_seconds=1), "t")
    await _abandoned(backends, oid)
    proof = PaymentProof("stripe", f"pi_{uid}")
    async with levels_held(backends.pool, sku):
        # The late payment locks the order, then waits for the levels to reserve again.
        paying = asyncio.create_task(orders.pay_order(backends, oid, proof, "t"))
        await waiting_on_locks(backends.pool, 1, paying)
        abandoning = asyncio.create_task(abandon_stale(backends, abandon_after_seconds=60))
        await waiting_on_locks(backends.pool, 2, abandoning)
    paid = await paying
    assert await abandoning == 0
    assert paid.status is OrderStatus.PAID
    order = await orders.get_order(backends, oid)
    assert order.status is OrderStatus.PAID
    assert order.payment_id == proof.payment_id
    assert [r.status for r in order.reservations] == [
        ReservationStatus.EXPIRED,
        ReservationStatus.COMMITTED,
    ]
    assert await level(backends.pool, sku, loc) == (5, 2)
    # A later pass leaves it alone too: it is paid.
    assert await abandon_stale(backends, abandon_after_seconds=60) == 0
    await assert_invariants(backends.pool)
    await assert_cache_parity(backends, [sku])


async def test_abandonment_pass_survives_an_order_deleted_meanwhile(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"D{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    ids = [f"o{uid}-{i}" for i in range(3)]
    for oid in ids:
        await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
        await _abandoned(backends, oid)
    await orders.delete_order(backends, ids[0], "t")
    # Deleted after a pass listed it: the pass skips it and goes on.
    assert await abandon_order(backends, ids[0], 60) is False
    assert await abandon_stale(backends, abandon_after_seconds=60) >= 2
    for oid in ids[1:]:
        order = await orders.get_order(backends, oid)
        assert (order.status, order.cancel_reason) == (OrderStatus.CANCELLED, "abandoned")
    assert "STATUS_CHANGED" in await log_actions(backends.pool, ids[1])
    await assert_invariants(backends.pool)


# ------------------------------------------------------------ webhook vs cancel / delete


def _event(uid: str, oid: str, n: int = 0) -> PaymentEvent:
    return PaymentEvent(
        provider="stripe",
        event_id=f"evt_{uid}_{n}",
        event_type="payment_intent.succeeded",
        order_id=oid,
        payment_id=f"pi_{uid}_{n}",
        amount=None,
        currency=None,
    )


@pytest.mark.parametrize("ending", ["cancel", "delete"])
async def test_webhook_racing_a_cancel_keeps_the_refund_signal(
    backends: Backends, stock: Stocker, uid: str, ending: str
) -> None:
    sku, loc, oid = f"W{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    end = orders.cancel_order if ending == "cancel" else orders.delete_order
    async with levels_held(backends.pool, sku):
        # The cancel holds the order's lock and waits for the levels to give units back.
        ending_task = asyncio.create_task(end(backends, oid, "t"))
        await waiting_on_locks(backends.pool, 1, ending_task)
        webhook = asyncio.create_task(handle_event(backends, _event(uid, oid)))
        await waiting_on_locks(backends.pool, 2, webhook)
    await ending_task
    outcome = await webhook
    why = "order cancelled" if ending == "cancel" else "order deleted"
    assert outcome == {"ignored": why}
    actions = await log_actions(backends.pool, oid)
    assert actions[-1] == "INCONSISTENCY_DETECTED"
    reason = await backends.pool.fetchval(
        "SELECT error_reason FROM order_inventory_logs WHERE order_id = $1 ORDER BY id DESC "
        "LIMIT 1",
        oid,
    )
    assert reason == "PAID_AFTER_CANCEL"
    stored = await backends.pool.fetchval(
        "SELECT outcome FROM webhook_events WHERE event_id = $1", f"evt_{uid}_0"
    )
    assert stored == '{"ignored": "' + why + '"}'
    assert await level(backends.pool, sku, loc) == (5, 0)
    await assert_invariants(backends.pool)


async def test_webhook_inbox_stores_a_summary_not_a_python_repr(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"I{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    outcome = await handle_event(backends, _event(uid, oid))
    assert outcome["order"].status is OrderStatus.PAID
    stored = await backends.pool.fetchval(
        "SELECT outcome::jsonb FROM webhook_events WHERE event_id = $1", f"evt_{uid}_0"
    )
    assert stored == {"order_id": oid, "status": "paid"}


# ------------------------------------------------------------ expiry


async def test_expiry_loop_does_not_spin_on_an_order_locked_elsewhere(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"E{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    await make_overdue(backends.pool, oid)
    async with holding_locks(backends.pool, "SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", oid):
        async with asyncio.timeout(10):
            assert await expire_due(backends) == 0
            assert await expire_all_due(backends, limit=1) == 1
    assert await expire_due(backends) >= 1
    assert await level(backends.pool, sku, loc) == (5, 0)


# ------------------------------------------------------------ batched placement


async def test_an_order_refused_under_the_lock_takes_no_later_order_down(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    """Stock 5, batch [A 5, B 3]; 2 units leave between the unlocked peek and the lock:
    A no longer fits, B does and must be placed."""
    sku, loc = f"B{uid}", f"w{uid}"
    await stock({sku: {loc: 5}})
    async with backends.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            "SELECT 1 FROM inventory_levels WHERE sku = $1 FOR UPDATE", sku
        )  # fmt: skip
        await conn.execute(
            "UPDATE inventory_levels SET on_hand = on_hand - 2 WHERE sku = $1 AND location = $2",
            sku,
            loc,
        )
        await conn.execute(
            "INSERT INTO stock_movements (sku, location, on_hand_delta, reserved_delta, reason, "
            "actor) VALUES ($1, $2, -2, 0, 'shrinkage', 't')",
            sku,
            loc,
        )
        batch = [PlaceOrder(f"a{uid}", ((sku, 5),)), PlaceOrder(f"b{uid}", ((sku, 3),))]
        placing = asyncio.create_task(orders.place_orders(backends, batch, "t"))
        await waiting_on_locks(backends.pool, 1, placing)
        await tx.commit()
    a, b = await placing
    assert isinstance(a, OutOfStock)
    assert a.extra["shortages"] == [{"sku": sku, "requested": 5, "available": 3}]
    assert isinstance(b, orders.Placed)
    assert b.created
    assert await level(backends.pool, sku, loc) == (3, 3)
    await assert_invariants(backends.pool)
    await assert_cache_parity(backends, [sku])


# ------------------------------------------------------------ torn reads


async def test_order_reads_are_one_snapshot(backends: Backends, stock: Stocker, uid: str) -> None:
    """Reads racing cancels: a read never shows ``pending`` with released reservations
    nor ``cancelled`` with held ones."""
    skus = [f"T{uid}{i}" for i in range(3)]
    loc = f"w{uid}"
    await stock({s: {loc: 1000} for s in skus})
    ids = [f"o{uid}-{i}" for i in range(40)]
    for oid in ids:
        await orders.place_order(backends, PlaceOrder(oid, tuple((s, 1) for s in skus)), "t")
    torn: list[tuple[str, object, object]] = []
    cancelling = True

    async def reader() -> int:
        reads = 0
        while cancelling:
            for oid in ids:
                order = await orders.get_order(backends, oid)
                reads += 1
                statuses = {r.status for r in order.reservations}
                expected = (
                    {ReservationStatus.RELEASED}
                    if order.status is OrderStatus.CANCELLED
                    else {ReservationStatus.RESERVED}
                )
                if statuses != expected:
                    torn.append((oid, order.status, statuses))
        return reads

    readers = [asyncio.create_task(reader()) for _ in range(6)]
    for oid in ids:
        await orders.cancel_order(backends, oid, "t")
    cancelling = False
    reads = sum(await asyncio.gather(*readers))
    assert reads >= len(ids)
    assert torn == []


# ------------------------------------------------------------ recovery pass


async def test_recovery_pass_survives_orders_deleted_or_paid_meanwhile(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"R{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
    # Listed a moment ago as paid-uncommitted, cancelled and deleted since.
    await orders.delete_order(backends, oid, "t")
    assert await recover_order(backends, oid, "w", skip_locked=True) is None
    assert await recover_paid_uncommitted(backends) >= 0
    assert "RECOVERY_ATTEMPT" not in await log_actions(backends.pool, oid)
