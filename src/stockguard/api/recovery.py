"""Admin routes of seed 003: needs-review and paid-uncommitted lists, recovery."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from stockguard.api import responses as doc
from stockguard.api.answers import answered
from stockguard.api.routes import Admin, After, B, Limit, OrderPath, order_cursor
from stockguard.api.schemas import order_json, page
from stockguard.api.strict import StrictJSONRoute
from stockguard.service.recovery import (
    Recovery,
    list_needs_review,
    list_paid_uncommitted,
    recover_order,
)

__all__ = ["router"]

router = APIRouter(tags=["admin"], route_class=StrictJSONRoute)


@router.get(
    "/v1/admin/orders/needs-review",
    operation_id="list_needs_review",
    response_model=None,
    responses=doc.answers({200: doc.OrderPage}),
)
async def needs_review(_key: Admin, b: B, limit: Limit = 50, after: After = None) -> Any:
    found = await list_needs_review(b, limit, order_cursor(after))
    last = [found[-1].created_at.isoformat(), found[-1].id] if found else None
    return page([order_json(o) for o in found], limit, last)


@router.get(
    "/v1/admin/orders/paid-uncommitted",
    operation_id="list_paid_uncommitted",
    response_model=None,
    responses=doc.answers({200: doc.OrderPage}),
)
async def paid_uncommitted(_key: Admin, b: B, limit: Limit = 50, after: After = None) -> Any:
    found = await list_paid_uncommitted(b, limit, order_cursor(after))
    last = [found[-1].created_at.isoformat(), found[-1].id] if found else None
    return page([order_json(o) for o in found], limit, last)


@router.post(
    "/v1/admin/orders/{order_id}/recover-inventory",
    response_model=None,
    responses=doc.answers(
        {200: doc.RecoveryResult}, "not_found", "invalid_transition", "cache_unavailable"
    ),
)
async def recover_inventory(key: Admin, order_id: OrderPath, b: B) -> Response:
    def render(result: Recovery | None) -> tuple[int, Any]:
        assert result is not None  # only the worker skips locked orders
        return 200, {
            "outcome": result.outcome.value,
            "order": order_json(result.order) if result.order else None,
            "log_id": result.log_id,
        }

    return await answered(lambda: recover_order(b, order_id, f"key:{key.name}"), render)
