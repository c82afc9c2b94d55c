"""Payments and failsafe recovery (seed 003): late payments, transient failures, partial
reservation states, recovery outcomes, webhooks signed as Stripe and Razorpay sign them."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
from pydantic import SecretStr

from stockguard.api.app import build_app
from stockguard.config import Settings
from stockguard.domain.errors import InvalidTransition, NotFound
from stockguard.domain.model import LogAction, OrderStatus, ReservationStatus
from stockguard.service import orders
from stockguard.service.expiry import expire_due, expire_order
from stockguard.service.failsafe import write_failure_log
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.recovery import (
    Outcome,
    list_needs_review,
    list_paid_uncommitted,
    recover_order,
    recover_paid_uncommitted,
    resolve_order,
)
from stockguard.service.uow import Backends
from stockguard.store.orders import LogEntry, OrderRecord
from tests.conftest import Keys, Stocker
from tests.helpers import (
    assert_invariants,
    expire_now,
    holding_locks,
    level,
    log_actions,
    make_overdue,
    mark_paid,
    race,
)

STRIPE_SECRET = "whsec_test_secret"
RESERVATIONS_OF_ORDER = "SELECT 1 FROM reservations WHERE order_id = $1 FOR UPDATE"
RAZORPAY_SECRET = "rzp_webhook_secret"


def _statuses(order: OrderRecord) -> list[str]:
    return sorted(r.status.value for r in order.reservations)


# ------------------------------------------------------------ late payment


async def test_expired_reservation_at_payment_time_stock_still_free_is_paid(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    await expire_now(backends, oid)
    assert await level(backends.pool, sku, loc) == (5, 0)
    paid = await orders.pay_order(backends, oid, PaymentProof("stripe", f"pi_1{uid}"), "t")
    assert paid.status == OrderStatus.PAID
    assert _statuses(paid) == ["committed", "expired"]
    assert await level(backends.pool, sku, loc) == (5, 2)
    await assert_invariants(backends.pool)


async def test_expired_reservation_stock_taken_goes_to_needs_review(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 2}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    await expire_now(backends, oid)
    await orders.place_order(backends, PlaceOrder(f"thief{uid}", ((sku, 1),)), "t")
    late = await orders.pay_order(backends, oid, PaymentProof("razorpay", f"pay_1{uid}"), "t")
    assert late.status == OrderStatus.NEEDS_REVIEW
    assert late.payment_id == f"pay_1{uid}"  # the payment is recorded all the same
    assert await level(backends.pool, sku, loc) == (2, 1)  # the other order keeps its unit
    row = await backends.pool.fetchrow(
        "SELECT error_reason, context FROM order_inventory_logs "
        "WHERE order_id = $1 AND action = 'RECOVERY_FAILED'",
        oid,
    )
    assert row is not None
    assert row["error_reason"] == "RESERVATION_EXPIRED_OR_NOT_FOUND"
    assert row["context"]["shortages"] == [{"sku": sku, "requested": 2, "available": 1}]
    assert [o.id for o in await list_needs_review(backends, 500) if o.id == oid] == [oid]


async def test_partial_reservation_state_some_lines_expired_is_recommitted(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, loc, oid = f"A{uid}", f"B{uid}", f"w{uid}", f"o{uid}"
    await stock({a: {loc: 3}, b: {loc: 3}})
    await orders.place_order(backends, PlaceOrder(oid, ((a, 1), (b, 2))), "t")
    await expire_now(backends, oid, sku=b)  # one line expired, the other still reserved
    paid = await orders.pay_order(backends, oid, PaymentProof("manual", f"m1{uid}"), "t")
    assert paid.status == OrderStatus.PAID
    assert _statuses(paid) == ["committed", "committed", "expired"]
    assert await level(backends.pool, a, loc) == (3, 1)
    assert await level(backends.pool, b, loc) == (3, 2)
    await assert_invariants(backends.pool)


async def test_expiry_worker_never_releases_a_paid_orders_stock(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 3}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 3),)), "t")
    # Paid with its stock left 'reserved' (a failed commit) and overdue.
    await mark_paid(backends.pool, oid)
    await make_overdue(backends.pool, oid)
    await expire_due(backends)
    assert await expire_order(backends, oid) == 0
    assert await level(backends.pool, sku, loc) == (3, 3)
    assert "EXPIRED" not in await log_actions(backends.pool, oid)


# ------------------------------------------------------------ transient failures


async def test_transient_db_error_during_commit_keeps_payment_and_recovers(
    backends: Backends, impatient: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 4}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    async with holding_locks(backends.pool, RESERVATIONS_OF_ORDER, oid):
        with pytest.raises(asyncpg.LockNotAvailableError):
            await orders.pay_order(impatient, oid, PaymentProof("stripe", f"pi_t{uid}"), "t")
    after = await orders.get_order(backends, oid)
    assert after.status == OrderStatus.PAID
    assert after.payment_id == f"pi_t{uid}"
    assert _statuses(after) == ["reserved"]  # not committed, not released
    assert await level(backends.pool, sku, loc) == (4, 2)
    assert "INCONSISTENCY_DETECTED" in await log_actions(backends.pool, oid)
    assert oid in {o.id for o in await list_paid_uncommitted(backends, 500)}
    # The recovery worker commits it.
    assert await recover_paid_uncommitted(backends, 500) >= 1
    done = await orders.get_order(backends, oid)
    assert done.status == OrderStatus.PAID
    assert _statuses(done) == ["committed"]
    actions = await log_actions(backends.pool, oid)
    assert actions[-3:] == ["RECOVERY_ATTEMPT", "COMMITTED", "RECOVERY_SUCCESS"]
    actor = await backends.pool.fetchval(
        "SELECT actor FROM order_inventory_logs WHERE order_id = $1 AND action = $2",
        oid,
        "RECOVERY_SUCCESS",
    )
    assert actor == "system:recovery-worker"
    await assert_invariants(backends.pool)


async def test_transient_db_error_during_recovery_logs_failure_and_needs_review(
    backends: Backends, impatient: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 4}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
    await mark_paid(backends.pool, oid)  # its stock still 'reserved'
    async with holding_locks(backends.pool, RESERVATIONS_OF_ORDER, oid):
        result = await recover_order(impatient, oid, "t")
    assert result is not None
    assert result.outcome == Outcome.FAILED
    assert result.order is not None
    assert result.order.status == OrderStatus.NEEDS_REVIEW
    reason = await backends.pool.fetchval(
        "SELECT error_reason FROM order_inventory_logs WHERE id = $1", result.log_id
    )
    assert reason.startswith("LockNotAvailableError")
    assert await level(backends.pool, sku, loc) == (4, 1)  # nothing released


# ------------------------------------------------------------ recovery outcomes


async def test_paid_order_with_lingering_reserved_reservations_is_recovered(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    a, b, loc, oid = f"A{uid}", f"B{uid}", f"w{uid}", f"o{uid}"
    await stock({a: {loc: 2}, b: {loc: 2}})
    await orders.place_order(backends, PlaceOrder(oid, ((a, 1), (b, 1))), "t")
    await mark_paid(backends.pool, oid)
    await backends.pool.execute(  # seed 003: one reservation still 'reserved'
        "UPDATE reservations SET status = 'committed' WHERE order_id = $1 AND sku = $2", oid, a
    )
    assert oid in {o.id for o in await list_paid_uncommitted(backends, 500)}
    result = await recover_order(backends, oid, "admin")
    assert result is not None
    assert result.outcome == Outcome.SUCCESS
    assert result.order is not None
    assert _statuses(result.order) == ["committed", "committed"]
    context = await backends.pool.fetchval(
        "SELECT context FROM order_inventory_logs WHERE id = $1", result.log_id
    )
    assert context["committed"] == 1
    assert context["rereserved"] == 0
    assert oid not in {o.id for o in await list_paid_uncommitted(backends, 500)}


async def test_paid_order_with_zero_committed_is_found_and_rereserved(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 3}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    # Seed 003: a PAID order whose reservations expired: zero committed.
    await expire_now(backends, oid)
    await mark_paid(backends.pool, oid)
    assert oid in {o.id for o in await list_paid_uncommitted(backends, 500)}
    result = await recover_order(backends, oid, "admin")
    assert result is not None
    assert result.outcome == Outcome.SUCCESS
    assert await level(backends.pool, sku, loc) == (3, 2)
    await assert_invariants(backends.pool)


async def test_recovery_of_committed_order_is_skipped(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 1}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
    await orders.pay_order(backends, oid, PaymentProof("manual", f"m{uid}"), "t")
    result = await recover_order(backends, oid, "admin")
    assert result is not None
    assert result.outcome == Outcome.SKIPPED_ALREADY_COMMITTED
    assert (await log_actions(backends.pool, oid))[-2:] == [
        "RECOVERY_ATTEMPT",
        "RECOVERY_SKIPPED_ALREADY_COMMITTED",
    ]


async def test_recovery_of_an_unpaid_order_says_why_and_does_nothing(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    """A pending order has nothing to recover: the refusal says so, and neither its stock
    nor its audit trail changes (no RECOVERY_ATTEMPT, no INCONSISTENCY_DETECTED)."""
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 1}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
    logs_before = await log_actions(backends.pool, oid)
    with pytest.raises(InvalidTransition) as refused:
        await recover_order(backends, oid, "admin")
    assert refused.value.extra == {"from": "pending", "to": "paid"}
    assert refused.value.detail.startswith(
        f"nothing to recover for order {oid}: it is pending: not paid yet"
    )
    assert "nothing was changed or logged" in refused.value.detail
    assert await log_actions(backends.pool, oid) == logs_before == ["RESERVED"]
    assert await level(backends.pool, sku, loc) == (1, 1)
    # Paid in status only, with no provider/payment id: PostgreSQL refuses the very state
    # (invariant 7 as a CHECK), so recovery can never be handed one.
    for status in ("paid", "needs_review", "processing"):
        with pytest.raises(asyncpg.CheckViolationError, match="paid_orders_carry_payment_proof"):
            await backends.pool.execute("UPDATE orders SET status = $2 WHERE id = $1", oid, status)
    got = await orders.get_order(backends, oid)
    assert _statuses(got) == ["reserved"]


async def test_recovery_of_a_shipped_order_says_it_was_fulfilled(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 2}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    await orders.pay_order(backends, oid, PaymentProof("manual", f"m{uid}"), "t")
    await orders.set_status(backends, oid, OrderStatus.PROCESSING, "t")
    await orders.set_status(backends, oid, OrderStatus.SHIPPED, "t")
    logs_before = await log_actions(backends.pool, oid)
    with pytest.raises(InvalidTransition) as refused:
        await recover_order(backends, oid, "admin")
    assert refused.value.extra == {"from": "shipped", "to": "paid"}
    assert "it is shipped: its stock was already committed and fulfilled" in refused.value.detail
    assert await log_actions(backends.pool, oid) == logs_before
    assert await level(backends.pool, sku, loc) == (0, 0)


async def test_failed_recovery_marks_needs_review_and_never_releases(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 2}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 2),)), "t")
    await expire_now(backends, oid)
    await orders.place_order(backends, PlaceOrder(f"x{uid}", ((sku, 2),)), "t")
    late = await orders.pay_order(backends, oid, PaymentProof("manual", f"m{uid}"), "t")
    assert late.status == OrderStatus.NEEDS_REVIEW
    result = await recover_order(backends, oid, "admin")
    assert result is not None
    assert result.outcome == Outcome.FAILED
    assert await level(backends.pool, sku, loc) == (2, 2)  # the other order's units stay
    # Stock arrives; recovery now succeeds and the order is paid again.
    from stockguard.service import catalogue

    await catalogue.adjust_stock(backends, catalogue.Adjustment(sku, loc, "received", delta=2), "t")
    result = await recover_order(backends, oid, "admin")
    assert result is not None
    assert result.outcome == Outcome.SUCCESS
    assert result.order is not None
    assert result.order.status == OrderStatus.PAID
    await assert_invariants(backends.pool)


async def test_resolve_needs_review_only_when_fully_committed(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 2}})
    await orders.place_order(
        backends, PlaceOrder(oid, ((sku, 1),), total_amount=100, currency="EUR"), "t"
    )
    review = await orders.pay_order(
        backends, oid, PaymentProof("manual", f"m{uid}", 90, "eur"), "t"
    )
    assert review.status == OrderStatus.NEEDS_REVIEW
    with pytest.raises(InvalidTransition):
        await resolve_order(backends, oid, OrderStatus.PROCESSING, "op")
    result = await recover_order(backends, oid, "op")
    assert result is not None
    assert result.outcome == Outcome.SUCCESS
    await backends.pool.execute("UPDATE orders SET status = 'needs_review' WHERE id = $1", oid)
    done = await resolve_order(backends, oid, OrderStatus.PROCESSING, "op", note="refunded 10")
    assert done.status == OrderStatus.PROCESSING
    with pytest.raises(InvalidTransition):
        await resolve_order(backends, oid, OrderStatus.SHIPPED, "op")
    with pytest.raises(NotFound):
        await resolve_order(backends, f"none{uid}", OrderStatus.PAID, "op")


# ------------------------------------------------------------ payment rules


async def test_amount_mismatch_goes_to_needs_review(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 4}})
    for i, (amount, currency) in enumerate([(999, "usd"), (1000, "eur")]):
        oid = f"o{uid}{i}"
        await orders.place_order(
            backends, PlaceOrder(oid, ((sku, 1),), total_amount=1000, currency="USD"), "t"
        )
        got = await orders.pay_order(
            backends, oid, PaymentProof("stripe", f"pi{i}", amount, currency), "t"
        )
        assert got.status == OrderStatus.NEEDS_REVIEW
        assert _statuses(got) == ["reserved"]  # held, not committed, not released
        reason = await backends.pool.fetchval(
            "SELECT error_reason FROM order_inventory_logs WHERE order_id = $1 "
            "AND action = 'INCONSISTENCY_DETECTED'",
            oid,
        )
        assert reason == "AMOUNT_MISMATCH"
    ok = f"o{uid}ok"
    await orders.place_order(
        backends, PlaceOrder(ok, ((sku, 1),), total_amount=1000, currency="USD"), "t"
    )
    paid = await orders.pay_order(
        backends, ok, PaymentProof("stripe", f"pi{uid}", 1000, "usd"), "t"
    )
    assert paid.status == OrderStatus.PAID


async def test_second_payment_is_a_noop_and_a_different_one_needs_review(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 4}})
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
    first = await orders.pay_order(backends, oid, PaymentProof("stripe", f"pi_a{uid}"), "t")
    again = await orders.pay_order(backends, oid, PaymentProof("stripe", f"pi_a{uid}"), "t")
    assert again.updated_at == first.updated_at
    other = await orders.pay_order(backends, oid, PaymentProof("stripe", f"pi_b{uid}"), "t")
    assert other.status == OrderStatus.NEEDS_REVIEW
    assert other.payment_id == f"pi_a{uid}"
    assert (await log_actions(backends.pool, oid))[-1] == "INCONSISTENCY_DETECTED"
    assert await level(backends.pool, sku, loc) == (4, 1)


async def test_payment_on_cancelled_or_deleted_order_is_refused(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 4}})
    await orders.place_order(backends, PlaceOrder(f"c{uid}", ((sku, 1),)), "t")
    await orders.cancel_order(backends, f"c{uid}", "t")
    with pytest.raises(InvalidTransition):
        await orders.pay_order(backends, f"c{uid}", PaymentProof("manual", f"m{uid}"), "t")
    await orders.place_order(backends, PlaceOrder(f"d{uid}", ((sku, 1),)), "t")
    await orders.delete_order(backends, f"d{uid}", "t")
    with pytest.raises(NotFound):
        await orders.pay_order(backends, f"d{uid}", PaymentProof("manual", f"m{uid}"), "t")
    assert await level(backends.pool, sku, loc) == (4, 0)


# ------------------------------------------------------------ failsafe log


async def test_failure_log_survives_as_structured_log_when_insert_fails(
    backends: Backends, uid: str
) -> None:
    oid = f"o{uid}"
    trigger = f"no_logs_{uid}"
    await backends.pool.execute(
        f"""
        CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'log table unavailable'; END $$;
        CREATE TRIGGER {trigger} BEFORE INSERT ON order_inventory_logs FOR EACH ROW
        WHEN (NEW.order_id = '{oid}') EXECUTE FUNCTION {trigger}();
        """
    )
    entry = LogEntry(oid, LogAction.RECOVERY_FAILED, [7], "BOOM", {"detail": "x"})
    try:
        with structlog.testing.capture_logs() as captured:
            assert await write_failure_log(backends.pool, "system:test", [entry]) is None
    finally:
        await backends.pool.execute(f"DROP TRIGGER {trigger} ON order_inventory_logs")
        await backends.pool.execute(f"DROP FUNCTION {trigger}()")
    events = [e for e in captured if e["event"] == "inventory_recovery_log"]
    assert events == [
        {
            "event": "inventory_recovery_log",
            "log_level": "error",
            "order_id": oid,
            "actor": "system:test",
            "reservation_ids": [7],
            "action": "RECOVERY_FAILED",
            "error_reason": "BOOM",
            "context": {"detail": "x"},
            "insert_error": "RaiseError",
        }
    ]
    ids = await write_failure_log(backends.pool, "system:test", [entry])
    assert ids is not None
    assert len(ids) == 1


# ------------------------------------------------------------ webhooks


def stripe_signed(payload: bytes, secret: str = STRIPE_SECRET, at: int | None = None) -> str:
    """Stripe-Signature as Stripe builds it: t=<unix>,v1=HMAC-SHA256(secret, "t.payload")."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def razorpay_signed(payload: bytes, secret: str = RAZORPAY_SECRET) -> str:
    """X-Razorpay-Signature as Razorpay builds it: hex HMAC-SHA256(secret, body)."""
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def stripe_event(event_id: str, order_id: str, pi: str, amount: int = 1000) -> bytes:
    """A payment_intent.succeeded event shaped like Stripe's documented payload."""
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "api_version": "2024-06-20",
            "created": int(time.time()),
            "type": "payment_intent.succeeded",
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "data": {
                "object": {
                    "id": pi,
                    "object": "payment_intent",
                    "amount": amount,
                    "amount_received": amount,
                    "currency": "usd",
                    "status": "succeeded",
                    "metadata": {"order_id": order_id},
                }
            },
        }
    ).encode()


def razorpay_event(event: str, order_id: str, pay_id: str, amount: int = 1000) -> bytes:
    """A payment.captured / order.paid event shaped like Razorpay's documented payload."""
    payment = {
        "id": pay_id,
        "entity": "payment",
        "amount": amount,
        "currency": "INR",
        "status": "captured",
        "order_id": "order_Rzp1",
        "method": "upi",
        "captured": True,
        "notes": {"order_id": order_id},
        "created_at": int(time.time()),
    }
    body: dict[str, Any] = {
        "entity": "event",
        "account_id": "acc_test",
        "event": event,
        "contains": ["payment"] if event == "payment.captured" else ["payment", "order"],
        "payload": {"payment": {"entity": payment}},
        "created_at": int(time.time()),
    }
    if event == "order.paid":
        body["payload"]["order"] = {
            "entity": {"id": "order_Rzp1", "entity": "order", "amount": amount, "status": "paid"}
        }
    return json.dumps(body).encode()


@pytest.fixture
async def hooks(
    settings: Settings, backends: Backends, api_keys: Keys
) -> AsyncIterator[httpx.AsyncClient]:
    configured = settings.model_copy(
        update={
            "stripe_webhook_secret": SecretStr(STRIPE_SECRET),
            "razorpay_webhook_secret": SecretStr(RAZORPAY_SECRET),
        }
    )
    app = build_app(configured, backends)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://t",
        headers={"Authorization": f"Bearer {api_keys.admin}"},
    ) as client:
        yield client


async def _pending(stock: Stocker, backends: Backends, uid: str, amount: int | None = None) -> str:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock({sku: {loc: 5}})
    currency = "USD" if amount else None
    await orders.place_order(
        backends, PlaceOrder(oid, ((sku, 2),), total_amount=amount, currency=currency), "t"
    )
    return oid


async def test_stripe_webhook_valid_signature_pays_the_order(
    hooks: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    oid = await _pending(stock, backends, uid, amount=1000)
    body = stripe_event(f"evt_{uid}", oid, f"pi_{uid}")
    r = await hooks.post(
        "/v1/webhooks/stripe",
        content=body,
        headers={"Stripe-Signature": stripe_signed(body), "Authorization": ""},
    )
    assert r.status_code == 200, r.text
    assert r.json()["order"]["status"] == "paid"
    assert r.json()["order"]["payment"]["payment_id"] == f"pi_{uid}"
    got = await orders.get_order(backends, oid)
    assert _statuses(got) == ["committed"]


@pytest.mark.parametrize("fault", ["forged", "stale", "wrong_secret", "tampered", "missing"])
async def test_stripe_webhook_bad_signature_changes_nothing(
    hooks: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str, fault: str
) -> None:
    oid = await _pending(stock, backends, uid)
    body = stripe_event(f"evt_{uid}", oid, f"pi_{uid}")
    headers = {
        "forged": {"Stripe-Signature": f"t={int(time.time())},v1={'0' * 64}"},
        "stale": {"Stripe-Signature": stripe_signed(body, at=int(time.time()) - 3600)},
        "wrong_secret": {"Stripe-Signature": stripe_signed(body, secret="whsec_other")},
        "tampered": {"Stripe-Signature": stripe_signed(body)},
        "missing": {},
    }[fault]
    sent = (
        body.replace(b'"amount_received": 1000', b'"amount_received": 1')
        if fault == "tampered"
        else body
    )
    r = await hooks.post("/v1/webhooks/stripe", content=sent, headers=headers)
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_signature"
    assert (await orders.get_order(backends, oid)).status == OrderStatus.PENDING
    seen = await backends.pool.fetchval(
        "SELECT count(*) FROM webhook_events WHERE event_id = $1", f"evt_{uid}"
    )
    assert seen == 0


async def test_razorpay_captured_and_order_paid_are_one_payment(
    hooks: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    oid = await _pending(stock, backends, uid)
    answers = []
    for n, event in enumerate(("payment.captured", "order.paid")):
        body = razorpay_event(event, oid, f"pay_{uid}")
        r = await hooks.post(
            "/v1/webhooks/razorpay",
            content=body,
            headers={
                "X-Razorpay-Signature": razorpay_signed(body),
                "X-Razorpay-Event-Id": f"evt_{uid}_{n}",
            },
        )
        assert r.status_code == 200, r.text
        answers.append(r.json())
    assert answers[0]["order"]["status"] == "paid"
    assert answers[1] == {"replayed": True}  # the same payment: one inbox row
    assert (await orders.get_order(backends, oid)).status == OrderStatus.PAID
    actions = await log_actions(backends.pool, oid)
    assert actions.count("COMMITTED") == 1
    assert "INCONSISTENCY_DETECTED" not in actions


@pytest.mark.parametrize("fault", ["forged", "wrong_secret", "tampered", "missing"])
async def test_razorpay_webhook_bad_signature_changes_nothing(
    hooks: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str, fault: str
) -> None:
    oid = await _pending(stock, backends, uid)
    body = razorpay_event("payment.captured", oid, f"pay_{uid}")
    signature = {
        "forged": "f" * 64,
        "wrong_secret": razorpay_signed(body, "other"),
        "tampered": razorpay_signed(body),
        "missing": None,
    }[fault]
    sent = body.replace(b'"amount": 1000', b'"amount": 1', 1) if fault == "tampered" else body
    headers = {"X-Razorpay-Event-Id": f"evt_{uid}"}
    if signature:
        headers["X-Razorpay-Signature"] = signature
    r = await hooks.post("/v1/webhooks/razorpay", content=sent, headers=headers)
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_signature"
    assert (await orders.get_order(backends, oid)).status == OrderStatus.PENDING


async def test_replayed_and_concurrent_duplicate_deliveries_change_nothing_again(
    hooks: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    oid = await _pending(stock, backends, uid)
    body = stripe_event(f"evt_{uid}", oid, f"pi_{uid}")
    headers = {"Stripe-Signature": stripe_signed(body)}
    send = partial(hooks.post, "/v1/webhooks/stripe", content=body, headers=headers)
    results = await race(*([send] * 10))
    answers = [r.json() for r in results if isinstance(r, httpx.Response)]
    assert len(answers) == 10
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results)
    assert sum(1 for a in answers if "order" in a) == 1
    assert sum(1 for a in answers if a == {"replayed": True}) == 9
    again = await send()
    assert again.json() == {"replayed": True}
    actions = await log_actions(backends.pool, oid)
    assert actions.count("COMMITTED") == 1
    rows = await backends.pool.fetchval(
        "SELECT count(*) FROM webhook_events WHERE provider = 'stripe' AND event_id = $1",
        f"evt_{uid}",
    )
    assert rows == 1


async def test_webhook_amount_mismatch_needs_review(
    hooks: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    oid = await _pending(stock, backends, uid, amount=1000)
    body = stripe_event(f"evt_{uid}", oid, f"pi_{uid}", amount=10)
    r = await hooks.post(
        "/v1/webhooks/stripe", content=body, headers={"Stripe-Signature": stripe_signed(body)}
    )
    assert r.json()["order"]["status"] == "needs_review"
    assert "INCONSISTENCY_DETECTED" in await log_actions(backends.pool, oid)


async def test_webhook_ignores_unknown_orders_types_and_cancelled_orders(
    hooks: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    body = stripe_event(f"evt_a{uid}", f"nobody{uid}", "pi_x")
    r = await hooks.post(
        "/v1/webhooks/stripe", content=body, headers={"Stripe-Signature": stripe_signed(body)}
    )
    assert r.json() == {"ignored": "unknown order"}
    other = json.loads(stripe_event(f"evt_b{uid}", "x", "pi_x"))
    other["type"] = "charge.refunded"
    body = json.dumps(other).encode()
    r = await hooks.post(
        "/v1/webhooks/stripe", content=body, headers={"Stripe-Signature": stripe_signed(body)}
    )
    assert r.json() == {"ignored": "event type 'charge.refunded' is not a payment"}
    oid = await _pending(stock, backends, uid)
    await orders.cancel_order(backends, oid, "t")
    body = razorpay_event("payment.captured", oid, f"pay_{uid}")
    r = await hooks.post(
        "/v1/webhooks/razorpay",
        content=body,
        headers={"X-Razorpay-Signature": razorpay_signed(body), "X-Razorpay-Event-Id": uid},
    )
    assert r.status_code == 200
    assert r.json() == {"ignored": "order cancelled"}
    row = await backends.pool.fetchrow(
        "SELECT error_reason, context FROM order_inventory_logs WHERE order_id = $1 "
        "AND action = 'INCONSISTENCY_DETECTED'",
        oid,
    )
    assert row is not None
    assert row["error_reason"] == "PAID_AFTER_CANCEL"
    assert "refund" in row["context"]["detail"]
    assert (await orders.get_order(backends, oid)).status == OrderStatus.CANCELLED


# ------------------------------------------------------------ admin routes


async def test_admin_recovery_routes_and_service_key_is_forbidden(
    hooks: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str, api_keys: Keys
) -> None:
    oid = await _pending(stock, backends, uid)
    await mark_paid(backends.pool, oid)  # its stock still 'reserved'

    service = {"Authorization": f"Bearer {api_keys.service}"}
    for method, path in [
        ("POST", f"/v1/admin/orders/{oid}/recover-inventory"),
        ("GET", "/v1/admin/orders/needs-review"),
        ("GET", "/v1/admin/orders/paid-uncommitted"),
        ("GET", f"/v1/admin/orders/{oid}/inventory-logs"),
    ]:
        r = await hooks.request(method, path, headers=service)
        assert r.status_code == 403, path
        assert r.json()["code"] == "forbidden"
    listed = await hooks.get("/v1/admin/orders/paid-uncommitted", params={"limit": 500})
    assert oid in {o["id"] for o in listed.json()["items"]}
    r = await hooks.post(f"/v1/admin/orders/{oid}/recover-inventory")
    assert r.status_code == 200
    assert r.json()["outcome"] == "success"
    assert r.json()["order"]["status"] == "paid"
    assert isinstance(r.json()["log_id"], int)
    logs = await hooks.get(f"/v1/admin/orders/{oid}/inventory-logs")
    assert [i["action"] for i in logs.json()["items"]][-3:] == [
        "RECOVERY_ATTEMPT",
        "COMMITTED",
        "RECOVERY_SUCCESS",
    ]
    missing = await hooks.post(f"/v1/admin/orders/none{uid}/recover-inventory")
    assert missing.status_code == 404
    review = await hooks.get("/v1/admin/orders/needs-review", params={"after": "bad!"})
    assert review.status_code == 422


async def test_reservations_of_paid_orders_are_committed(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    oid = await _pending(stock, backends, uid)
    paid = await orders.pay_order(backends, oid, PaymentProof("manual", f"m{uid}"), "t")
    assert {r.status for r in paid.reservations} == {ReservationStatus.COMMITTED}


async def test_razorpay_deliveries_are_deduplicated_by_their_signed_payment(
    hooks: httpx.AsyncClient, backends: Backends, stock: Stocker, uid: str
) -> None:
    oid = await _pending(stock, backends, uid)
    body = razorpay_event("payment.captured", oid, f"pay_{uid}")
    headers = {"X-Razorpay-Signature": razorpay_signed(body)}
    first = await hooks.post("/v1/webhooks/razorpay", content=body, headers=headers)
    assert first.json()["order"]["status"] == "paid"
    again = await hooks.post("/v1/webhooks/razorpay", content=body, headers=headers)
    assert again.json() == {"replayed": True}
    event_id = await backends.pool.fetchval(
        "SELECT event_id FROM webhook_events WHERE provider = 'razorpay' AND order_id = $1", oid
    )
    assert event_id == f"payment:pay_{uid}"
