"""Payment webhook routes: authenticated only by the provider's signature."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from stockguard.api.routes import B
from stockguard.api.schemas import order_json
from stockguard.api.strict import StrictJSONRoute
from stockguard.config import Settings
from stockguard.service.uow import Backends
from stockguard.service.webhooks import PaymentEvent, handle_event, parse_razorpay, parse_stripe

__all__ = ["router"]

router = APIRouter(tags=["webhooks"], route_class=StrictJSONRoute)


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


@router.post("/v1/webhooks/stripe")
async def stripe_webhook(request: Request, b: B, s: S) -> JSONResponse:
    """``payment_intent.succeeded`` with ``data.object.metadata.order_id``."""
    event = parse_stripe(
        await request.body(),
        request.headers.get("stripe-signature"),
        _secret(s.stripe_webhook_secret),
        s.stripe_tolerance_seconds,
    )
    return await _answer(b, event)


@router.post("/v1/webhooks/razorpay")
async def razorpay_webhook(request: Request, b: B, s: S) -> JSONResponse:
    """``payment.captured`` and ``order.paid`` with ``payload.payment.entity.notes.order_id``;
    the replay identity comes from the signed body (``X-Razorpay-Event-Id`` is not signed)."""
    event = parse_razorpay(
        await request.body(),
        request.headers.get("x-razorpay-signature"),
        _secret(s.razorpay_webhook_secret),
    )
    return await _answer(b, event)
