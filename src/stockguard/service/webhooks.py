"""Payment webhooks from Stripe and Razorpay.

The signature is verified with the provider's own SDK on the raw body. The event is then
written to the ``webhook_events`` inbox (unique on provider and event id) in the same
transaction as the payment it carries, so a replayed delivery, or ten identical ones at
once, changes nothing again, and a delivery whose processing failed leaves no trace and
is processed when the provider retries.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import razorpay
import stripe

from stockguard import strictjson
from stockguard.domain.errors import InvalidSignature, InvalidTransition, NotFound, PaymentReused
from stockguard.domain.model import OrderStatus
from stockguard.logging import get_logger
from stockguard.service.orders import PaymentProof, pay
from stockguard.service.uow import Backends, UnitOfWork, run
from stockguard.store.orders import OrderRecord, load_order, log_inconsistency

__all__ = ["PaymentEvent", "handle_event", "parse_razorpay", "parse_stripe"]

log = get_logger(__name__)

STRIPE_EVENTS = frozenset({"payment_intent.succeeded"})
RAZORPAY_EVENTS = frozenset({"payment.captured", "order.paid"})


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    provider: str
    event_id: str
    event_type: str
    order_id: str | None
    payment_id: str | None
    amount: int | None
    currency: str | None

    @property
    def is_payment(self) -> bool:
        known = STRIPE_EVENTS if self.provider == "stripe" else RAZORPAY_EVENTS
        return self.event_type in known


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ascii(signature: str | None, header: str) -> None:
    # hmac.compare_digest raises TypeError on non-ASCII text: refuse it as a bad signature.
    if signature is not None and not signature.isascii():
        raise InvalidSignature(f"the {header} header is not ASCII")


def parse_stripe(
    payload: bytes, signature: str | None, secret: str | None, tolerance: int
) -> PaymentEvent:
    """A signed body that is not one JSON value (duplicate keys, lone surrogates, deep
    nesting: see ``strictjson``) is refused like a bad signature: 400, nothing stored."""
    if not secret:
        raise InvalidSignature("no Stripe webhook secret is configured")
    _ascii(signature, "Stripe-Signature")
    try:
        # verify_header, not construct_event: that one parses the body again, leniently.
        stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance=tolerance)
        data = strictjson.loads(payload)
    except stripe.SignatureVerificationError as exc:
        raise InvalidSignature("the Stripe-Signature does not match this body") from exc
    except ValueError as exc:
        raise InvalidSignature("the body is not a Stripe event") from exc
    obj = _get(data, "data", "object")
    return PaymentEvent(
        provider="stripe",
        event_id=str(_str(_get(data, "id")) or ""),
        event_type=str(_str(_get(data, "type")) or ""),
        order_id=_str(_get(obj, "metadata", "order_id")),
        payment_id=_str(_get(obj, "id")),
        amount=_int(_get(obj, "amount_received")),
        currency=_str(_get(obj, "currency")),
    )


def razorpay_event_id(event_type: str, payment_id: str | None, payload: bytes) -> str:
    """The inbox identity of a Razorpay delivery, from the signed body only: the
    ``X-Razorpay-Event-Id`` header is not signed, so a replay could carry a fresh one.
    ``payment.captured`` and ``order.paid`` of one payment are one payment (API.md)."""
    if payment_id and len(payment_id) <= 200:
        kind = "payment" if event_type in RAZORPAY_EVENTS else event_type[:100]
        return f"{kind}:{payment_id}"
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def parse_razorpay(payload: bytes, signature: str | None, secret: str | None) -> PaymentEvent:
    """Bodies are refused as ``parse_stripe`` refuses them."""
    if not secret:
        raise InvalidSignature("no Razorpay webhook secret is configured")
    if not signature:
        raise InvalidSignature("the X-Razorpay-Signature header is missing")
    _ascii(signature, "X-Razorpay-Signature")
    try:
        body = payload.decode("utf-8")
        razorpay.Utility(None).verify_webhook_signature(body, signature, secret)
        data = strictjson.loads(payload)
    except razorpay.errors.SignatureVerificationError as exc:
        raise InvalidSignature("the X-Razorpay-Signature does not match this body") from exc
    except ValueError as exc:  # not UTF-8 or not JSON, though signed
        raise InvalidSignature("the body is not a Razorpay event") from exc
    entity = _get(data, "payload", "payment", "entity")
    event_type = str(_str(_get(data, "event")) or "")
    payment_id = _str(_get(entity, "id"))
    return PaymentEvent(
        provider="razorpay",
        event_id=razorpay_event_id(event_type, payment_id, payload),
        event_type=event_type,
        order_id=_str(_get(entity, "notes", "order_id")),
        payment_id=payment_id,
        amount=_int(_get(entity, "amount")),
        currency=_str(_get(entity, "currency")),
    )


async def handle_event(backends: Backends, event: PaymentEvent) -> dict[str, Any]:
    """Apply a verified event: ``{"order": ...}`` when it paid an order, else
    ``{"ignored": why}`` or ``{"replayed": true}``."""
    actor = f"webhook:{event.provider}"
    if not event.event_id:
        return _ignored(event, "event has no id")

    async def body(uow: UnitOfWork) -> dict[str, Any]:
        inserted = await uow.conn.fetchval(
            "INSERT INTO webhook_events (provider, event_id, event_type, order_id) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
            event.provider,
            event.event_id,
            event.event_type,
            event.order_id,
        )
        if not inserted:
            return {"replayed": True}
        outcome = await _apply(uow, event)
        await uow.conn.execute(
            "UPDATE webhook_events SET outcome = $3 WHERE provider = $1 AND event_id = $2",
            event.provider,
            event.event_id,
            json.dumps(_summary(outcome)),
        )
        return outcome

    return await run(backends, actor, body, operation="webhook")


def _summary(outcome: dict[str, Any]) -> dict[str, Any]:
    """What the inbox keeps of an outcome: plain JSON, never a Python repr."""
    order = outcome.get("order")
    if isinstance(order, OrderRecord):
        return {"order_id": order.id, "status": order.status.value}
    return {k: v for k, v in outcome.items() if isinstance(v, str | bool | int)}


def _ignored(event: PaymentEvent, why: str) -> dict[str, Any]:
    log.info(
        "webhook_ignored",
        provider=event.provider,
        event_id=event.event_id,
        event_type=event.event_type,
        order_id=event.order_id,
        reason=why,
    )
    return {"ignored": why}


async def _apply(uow: UnitOfWork, event: PaymentEvent) -> dict[str, Any]:
    if not event.is_payment:
        return _ignored(event, f"event type {event.event_type!r} is not a payment")
    if not event.order_id:
        return _ignored(event, "no order_id in the payment's metadata/notes")
    if not event.payment_id:
        return _ignored(event, "no payment id in the event")
    # Under the order's row lock: a cancel or delete that commits first is seen here, so
    # its refund signal is never lost to a later "cannot go from cancelled to paid".
    order = await load_order(uow.conn, event.order_id, lock=True)
    if order is None:
        return _ignored(event, "unknown order")
    if order.deleted_at is not None or order.status == OrderStatus.CANCELLED:
        why = "order deleted" if order.deleted_at is not None else "order cancelled"
        await log_inconsistency(
            uow.conn,
            uow.actor,
            order.id,
            "PAID_AFTER_CANCEL",
            f"payment for an order that is {why[6:]}: a refund is due",
            provider=event.provider,
            payment_id=event.payment_id,
            amount=event.amount,
        )
        return _ignored(event, why)
    proof = PaymentProof(event.provider, event.payment_id, event.amount, event.currency)
    try:
        paid = await pay(uow, order.id, proof)
    except PaymentReused as exc:
        await log_inconsistency(
            uow.conn,
            uow.actor,
            order.id,
            "PAYMENT_REUSED",
            f"{exc.detail}: this order stays unpaid; check the payment",
            provider=event.provider,
            payment_id=event.payment_id,
        )
        return _ignored(event, exc.detail)
    except (InvalidTransition, NotFound) as exc:
        return _ignored(event, exc.detail)
    return {"order": paid}
