"""The lifecycle's edges (issue 7): each test pins one "select, then act" window or
one interleaving open with real locks held by another transaction, so the race is
reproduced on every run rather than by luck."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial

import asyncpg
import httpx
import pytest

from stockguard.api.app import build_app
from stockguard.config import Settings
from stockguard.domain.errors import InvalidTransition, OutOfStock
from stockguard.domain.model import OrderStatus, ReservationStatus
from stockguard.service import orders
from stockguard.service.expiry import abandon_order, abandon_stale, expire_all_due, expire_due
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.recovery import recover_order, recover_paid_uncommitted
from stockguard.service.uow import Backends
from stockguard.service.webhooks import PaymentEvent, handle_event
from stockguard.store.orders import OrderRecord
from tests.conftest import Keys, Stocker
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
        abandoning = asyncio.create_task(abandon_stale(backends, abandon_after_seconds=3600))
        await waiting_on_locks(backends.pool, 2, abandoning)
    paid = await paying
    await abandoning  # whatever else it abandoned, not this order (checked below)
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
    await abandon_stale(backends, abandon_after_seconds=3600)
    assert (await orders.get_order(backends, oid)).status is OrderStatus.PAID
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
    assert await abandon_order(backends, ids[0], 3600) is False
    assert await abandon_stale(backends, abandon_after_seconds=3600) >= 2
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


# ------------------------------------------------------------ payments whose commit fails

RESERVATIONS_OF_ORDER = "SELECT 1 FROM reservations WHERE order_id = $1 FOR UPDATE"


async def _terminate_waiting(pool: asyncpg.Pool) -> int:
    """Terminate the backends of this database that wait for a lock (the service's)."""
    killed = await pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return int(killed)


async def test_a_backend_terminated_before_commit_is_retried_on_another_connection(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"K{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 4}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    async with holding_locks(backends.pool, RESERVATIONS_OF_ORDER, oid):
        paying = asyncio.create_task(
            orders.pay_order(backends, oid, PaymentProof("stripe", f"pi_{uid}"), "t")
        )
        await waiting_on_locks(backends.pool, 1, paying)
        assert await _terminate_waiting(backends.pool) == 1
        await waiting_on_locks(backends.pool, 1, paying)  # the retry waits again
    paid = await paying
    assert paid.status is OrderStatus.PAID
    assert [r.status for r in paid.reservations] == [ReservationStatus.COMMITTED]
    assert "INCONSISTENCY_DETECTED" not in await log_actions(backends.pool, oid)
    await assert_invariants(backends.pool)


async def test_a_paid_order_cannot_move_on_until_its_stock_is_committed(
    backends: Backends, impatient: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"P{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 4}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    async with holding_locks(backends.pool, RESERVATIONS_OF_ORDER, oid):
        with pytest.raises(asyncpg.LockNotAvailableError):
            await orders.pay_order(impatient, oid, PaymentProof("stripe", f"pi_{uid}"), "t")
    assert (await orders.get_order(backends, oid)).status is OrderStatus.PAID
    with pytest.raises(InvalidTransition, match="not fully committed"):
        await orders.set_status(backends, oid, OrderStatus.PROCESSING, "shop")
    assert await recover_paid_uncommitted(backends, 500) >= 1
    moved = await orders.set_status(backends, oid, OrderStatus.PROCESSING, "shop")
    assert moved.status is OrderStatus.PROCESSING
    await assert_invariants(backends.pool)


async def test_recovery_covers_a_processing_order_left_uncommitted(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    """Written by version 1, which let such an order move on: the worker commits it and
    leaves it where the shop put it."""
    sku, loc, oid = f"Q{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 4}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    await backends.pool.execute(
        "UPDATE orders SET status = 'processing', payment_provider = 'stripe', "
        "payment_id = $2, paid_at = now() WHERE id = $1",
        oid,
        f"pi_{uid}",
    )
    assert await recover_paid_uncommitted(backends, 500) >= 1
    order = await orders.get_order(backends, oid)
    assert order.status is OrderStatus.PROCESSING
    assert [r.status for r in order.reservations] == [ReservationStatus.COMMITTED]
    assert (await log_actions(backends.pool, oid))[-1] == "RECOVERY_SUCCESS"


async def test_a_payment_whose_commit_went_through_is_not_logged_as_failed(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    """The answer to COMMIT was lost, the commit was not: no refund-due noise."""
    from stockguard.service.orders import record_unpaid_commit

    sku, loc, oid = f"C{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 4}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    proof = PaymentProof("stripe", f"pi_{uid}")
    await orders.pay_order(backends, oid, proof, "t")
    before = await log_actions(backends.pool, oid)
    lost = asyncpg.exceptions.ConnectionDoesNotExistError("connection lost during COMMIT")
    await record_unpaid_commit(backends, oid, proof, "t", lost)
    assert await log_actions(backends.pool, oid) == before
    # An order still pending gets its payment recorded and the failure logged.
    other = f"o2{uid}"
    await orders.place_order(backends, PlaceOrder(other, ((sku, 1),)), "t")
    await record_unpaid_commit(backends, other, PaymentProof("stripe", f"pi2_{uid}"), "t", lost)
    assert (await orders.get_order(backends, other)).status is OrderStatus.PAID
    assert (await log_actions(backends.pool, other))[-1] == "INCONSISTENCY_DETECTED"


async def test_an_unreachable_database_answers_503_busy(
    backends: Backends, settings: Settings, api_keys: Keys, unused_tcp_port: int
) -> None:
    """Connections that cannot be had (a restarting server) are a retryable 503, never
    a 500; reads, writes and the authentication lookup alike."""
    pool = await asyncpg.create_pool(
        f"postgresql://postgres@127.0.0.1:{unused_tcp_port}/nowhere", min_size=0, max_size=2
    )
    try:
        app = build_app(settings, Backends(pool, backends.cache, backends.cache_mode, 1.0))
        headers = {"Authorization": f"Bearer {api_keys.admin}"}
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
        ) as client:
            for method, path in [("GET", "/v1/orders"), ("POST", "/v1/orders/x/cancel")]:
                r = await client.request(method, path)
                assert r.status_code == 503, r.text
                assert r.headers["content-type"] == "application/problem+json"
                assert r.json()["code"] == "busy"
                assert r.headers["retry-after"] == "1"
    finally:
        await pool.close()


async def test_one_payment_raced_onto_two_orders_pays_exactly_one(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    from stockguard.domain.errors import PaymentReused
    from tests.helpers import race

    for n in range(20):
        sku, loc = f"Y{uid}{n}", f"w{uid}"
        await stock({sku: {loc: 5}})
        ids = [f"y{uid}{n}-{i}" for i in range(2)]
        for oid in ids:
            await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
        proof = PaymentProof("stripe", f"pi_{uid}_{n}")
        results = await race(*(partial(orders.pay_order, backends, oid, proof, "t") for oid in ids))
        paid = [r for r in results if isinstance(r, OrderRecord)]
        reused = [r for r in results if isinstance(r, PaymentReused)]
        assert (len(paid), len(reused)) == (1, 1), results
        assert paid[0].status is OrderStatus.PAID
        other = reused[0].order_id
        assert (await orders.get_order(backends, other)).status is OrderStatus.PENDING
    await assert_invariants(backends.pool)


async def test_a_bad_redis_url_at_start_leaks_no_database_connections(
    settings: Settings, backends: Backends
) -> None:
    from stockguard.runtime import Endpoints, open_backends

    async def ours() -> int:
        return int(
            await backends.pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'stockguard'"
            )
        )

    before = await ours()
    bad = settings.model_copy(update={"db_pool_min": 3})
    assert bad.database_url is not None
    endpoints = Endpoints(bad.database_url.get_secret_value(), "nonsense://nowhere")
    with pytest.raises(ValueError, match="Redis URL"):
        async with open_backends(bad, endpoints, migrate=False):
            pass
    assert await ours() == before
