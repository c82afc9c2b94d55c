"""Routes of API.md "Returns (service)" and "Holds: extend": returns after shipment and
extending a pending order's hold."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import Field, StringConstraints
from starlette.responses import Response

from stockguard.api import responses as doc
from stockguard.api.answers import answered
from stockguard.api.routes import B, OrderPath, Service, actor
from stockguard.api.schemas import (
    Code,
    OrderId,
    Quantity,
    SkuCode,
    Strict,
    order_json,
    return_json,
)
from stockguard.api.strict import StrictJSONRoute
from stockguard.service import returns

__all__ = ["ExtendIn", "ReturnIn", "ReturnLineIn", "router"]

router = APIRouter(tags=["orders"], route_class=StrictJSONRoute)


class ReturnLineIn(Strict):
    sku: SkuCode
    quantity: Quantity
    disposition: Literal["restock", "damaged"]


class ReturnIn(Strict):
    return_id: OrderId
    lines: list[ReturnLineIn] = Field(min_length=1, max_length=500)
    location: Code | None = None
    note: Annotated[str, StringConstraints(max_length=1000)] | None = None


class ExtendIn(Strict):
    reservation_ttl_seconds: int = Field(ge=1, le=86_400)


@router.post(
    "/v1/orders/{order_id}/returns",
    operation_id="record_return",
    status_code=201,
    response_model=None,
    responses=doc.answers(
        {201: doc.Return, 200: doc.Return},
        "not_found",
        "invalid_transition",
        "return_exceeds_fulfilled",
        "conflict",
        "cache_unavailable",
    ),
)
async def post_return(key: Service, order_id: OrderPath, body: ReturnIn, b: B) -> Response:
    request = returns.ReturnRequest(
        return_id=body.return_id,
        order_id=order_id,
        lines=tuple(returns.ReturnLine(ln.sku, ln.quantity, ln.disposition) for ln in body.lines),
        location=body.location,
        note=body.note,
    )
    return await answered(
        lambda: returns.record_return(b, request, actor(key)),
        lambda done: (201 if done.created else 200, return_json(done.ret)),
    )


@router.get(
    "/v1/orders/{order_id}/returns",
    operation_id="list_returns",
    response_model=None,
    responses=doc.answers({200: doc.ReturnList}, "not_found"),
)
async def get_returns(_key: Service, order_id: OrderPath, b: B) -> Any:
    return {"items": [return_json(r) for r in await returns.list_returns(b, order_id)]}


@router.post(
    "/v1/orders/{order_id}/extend",
    operation_id="extend_hold",
    response_model=None,
    responses=doc.answers(
        {200: doc.Order}, "not_found", "invalid_transition", "reservation_expired"
    ),
)
async def extend(key: Service, order_id: OrderPath, body: ExtendIn, b: B) -> Response:
    return await answered(
        lambda: returns.extend_hold(b, order_id, body.reservation_ttl_seconds, actor(key)),
        lambda o: (200, order_json(o)),
    )
