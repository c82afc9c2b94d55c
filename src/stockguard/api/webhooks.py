"""Payment webhook routes: authenticated only by the provider's signature."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from stockguard.api import responses as doc
from stockguard.api.routes import B
from stockguard.api.schemas import order_json
from stockguard.api.strict import StrictJSONRoute
from stockguard.config import Settings
from stockguard.service.uow import Backends
from stockguard.service.webhooks import PaymentEvent, handle_event, parse_razorpay, parse_stripe

__all__ = ["router"]

router = APIRouter(tags=["webhooks"], route_class=StrictJSONRoute)


class ProviderObject(BaseModel):
    """Documentation of what is read from a provider's event; every other member is
    allowed and ignored. A signed event that lacks what is needed is answered 200
    ``{"ignored": why}``, never refused: the provider would only retry it."""

    model_config = ConfigDict(extra="allow")


class StripeMetadata(ProviderObject):
    order_id: str = Field(description="the stockguard order the payment is for")


class StripePaymentIntent(ProviderObject):
    id: str = Field(description="the payment id")
    amount_received: int | None = None
    currency: str | None = None
    metadata: StripeMetadata


class StripeEventData(ProviderObject):
    object: StripePaymentIntent


class StripeEvent(ProviderObject):
    id: str = Field(description="the event id: a replayed id changes nothing again")
    type: str = Field(description="`payment_intent.succeeded` pays; others are ignored")
    data: StripeEventData


class RazorpayNotes(ProviderObject):
    order_id: str = Field(description="the stockguard order the payment is for")


class RazorpayPaymentEntity(ProviderObject):
    id: str = Field(description="the payment id (with the event type, the replay identity)")
    amount: int | None = None
    currency: str | None = None
    notes: RazorpayNotes


class RazorpayPayment(ProviderObject):
    entity: RazorpayPaymentEntity


class RazorpayPayload(ProviderObject):
    payment: RazorpayPayment


class RazorpayEvent(ProviderObject):
    event: str = Field(description="`payment.captured` and `order.paid` pay; others are ignored")
    payload: RazorpayPayload


# The provider's signature is the only authentication: no API key, no Idempotency-Key.
WEBHOOK_ANSWERS = doc.answers(
    {200: doc.WebhookOutcome}, "invalid_signature", "validation_error", "cache_unavailable", "busy"
)


def _settings(request: Request) -> Settings:
    s: Settings = request.app.state.settings
    return s


S = Annotated[Settings, Depends(_settings)]


async def _answer(backends: Backends, event: PaymentEvent) -> JSONResponse:
    outcome: dict[str, Any] = await handle_event(backends, event)
    if "order" in outcome:
        return JSONResponse({"order": order_json(outcome["order"])})
    return JSONResponse(outcome)


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


@router.post(
    "/v1/webhooks/stripe",
    response_model=None,
    responses=WEBHOOK_ANSWERS,
    openapi_extra=doc.raw_body(
        StripeEvent,
        doc.header(
            "Stripe-Signature",
            '`t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with '
            "STOCKGUARD_STRIPE_WEBHOOK_SECRET",
            required=True,
        ),
    ),
)
async def stripe_webhook(request: Request, b: B, s: S) -> JSONResponse:
    """``payment_intent.succeeded`` with ``data.object.metadata.order_id``."""
    event = parse_stripe(
        await request.body(),
        request.headers.get("stripe-signature"),
        _secret(s.stripe_webhook_secret),
        s.stripe_tolerance_seconds,
    )
    return await _answer(b, event)


@router.post(
    "/v1/webhooks/razorpay",
    response_model=None,
    responses=WEBHOOK_ANSWERS,
    openapi_extra=doc.raw_body(
        RazorpayEvent,
        doc.header(
            "X-Razorpay-Signature",
            "hex HMAC-SHA256 of the body with STOCKGUARD_RAZORPAY_WEBHOOK_SECRET",
            required=True,
        ),
    ),
)
async def razorpay_webhook(request: Request, b: B, s: S) -> JSONResponse:
    """``payment.captured`` and ``order.paid`` with ``payload.payment.entity.notes.order_id``;
    the replay identity comes from the signed body (``X-Razorpay-Event-Id`` is not signed)."""
    event = parse_razorpay(
        await request.body(),
        request.headers.get("x-razorpay-signature"),
        _secret(s.razorpay_webhook_secret),
    )
    return await _answer(b, event)
