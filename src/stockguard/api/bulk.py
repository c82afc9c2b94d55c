"""Routes of bulk stock writes (``POST /v1/adjustments/batch``) and of explaining a
number (``GET /v1/admin/explain``), both admin."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import Field, ValidationError

from stockguard.api import responses as doc
from stockguard.api.answers import answered
from stockguard.api.routes import Admin, After, B, Limit, _id_cursor, actor
from stockguard.api.schemas import (
    CODE_PATTERN,
    MAX_CODE,
    SKU_PATTERN,
    AdjustmentIn,
    SkuCode,
    Strict,
    encode_cursor,
    ts,
)
from stockguard.api.strict import StrictJSONRoute
from stockguard.domain.errors import ValidationFailed, problem_body
from stockguard.service import bulk
from stockguard.service.explain import Counts, Explanation, explain
from stockguard.store.levels import LevelRow

__all__ = ["BatchItemIn", "adjustment_of", "router"]

router = APIRouter(route_class=StrictJSONRoute)


class BatchItemIn(AdjustmentIn):
    sku: SkuCode


class BatchIn(Strict):
    # Items are objects checked one by one: a bad item fails alone, not the request.
    items: list[dict[str, Any]] = Field(min_length=1, max_length=bulk.MAX_ITEMS)
    error_policy: Literal["all_or_nothing", "skip_failed"] = "all_or_nothing"


def adjustment_of(item: dict[str, Any]) -> bulk.BatchItem:
    """One batch item (or import row) as an adjustment, or the problem that fails it."""
    try:
        body = BatchItemIn.model_validate(item)
    except ValidationError as exc:
        errors = [
            {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()[:20]
        ]
        first = errors[0]
        where = ".".join(first["loc"]) or "item"
        return ValidationFailed(f"{where}: {first['msg']}", errors=errors)
    return body.adjustment(body.sku)


def level_json(level: LevelRow) -> dict[str, Any]:
    return {
        "sku": level.sku,
        "location": level.location,
        "on_hand": level.on_hand,
        "reserved": level.reserved,
        "unavailable": level.unavailable,
        "safety_stock": level.safety_stock,
        "available": level.available,
    }


def result_json(result: bulk.ItemResult) -> dict[str, Any]:
    if result.error is not None:
        return {"index": result.index, "status": "failed", "error": problem_body(result.error)}
    assert result.level is not None
    return {"index": result.index, "status": "applied", "level": level_json(result.level)}


@router.post(
    "/v1/adjustments/batch",
    tags=["catalogue"],
    response_model=None,
    responses=doc.answers({200: doc.BatchResult}, "batch_rejected", "cache_unavailable"),
)
async def adjust_batch(key: Admin, body: BatchIn, b: B) -> Response:
    items = [adjustment_of(item) for item in body.items]
    policy = bulk.ErrorPolicy(body.error_policy)
    return await answered(
        lambda: bulk.apply_batch(b, items, policy, actor(key)),
        lambda results: (200, {"results": [result_json(r) for r in results]}),
    )


# ------------------------------------------------------------ explain

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)


def parse_at(value: str | None) -> datetime | None:
    """An RFC 3339 time with its offset (``2026-11-26T15:00:00Z``), or 422."""
    if value is None:
        return None
    if not _RFC3339.match(value):
        raise ValidationFailed(
            f"at: {value!r} is not an RFC 3339 time with an offset, e.g. 2026-11-26T15:00:00Z"
        )
    text = value.upper().replace("Z", "+00:00")
    fraction = re.search(r"\.(\d+)", text)
    if fraction and len(fraction.group(1)) > 6:  # Python keeps microseconds
        text = text.replace(fraction.group(0), "." + fraction.group(1)[:6])
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValidationFailed(f"at: {value!r} is not a valid date and time") from exc


def counts_json(c: Counts) -> dict[str, int]:
    return {"on_hand": c.on_hand, "reserved": c.reserved, "unavailable": c.unavailable}


def explanation_json(e: Explanation, limit: int) -> dict[str, Any]:
    last = e.movements[-1]["id"] if len(e.movements) == limit else None
    return {
        "sku": e.sku,
        "location": e.location,
        "at": ts(e.at),
        "now": ts(e.now),
        "levels": [{"location": loc, **counts_json(c)} for loc, c in e.levels.items()],
        "totals": counts_json(e.totals),
        "movements": [{**m, "created_at": ts(m["created_at"])} for m in e.movements],
        "next": encode_cursor(last) if last is not None else None,
        "consistent": e.consistent,
        "mismatches": [
            {"location": m.location, "level": counts_json(m.level), "ledger": counts_json(m.ledger)}
            for m in e.mismatches
        ],
    }


@router.get(
    "/v1/admin/explain",
    operation_id="explain_stock",
    tags=["admin"],
    response_model=None,
    responses=doc.answers({200: doc.Explain}, "not_found"),
)
async def explain_route(
    _key: Admin,
    b: B,
    sku: Annotated[str, Query(pattern=SKU_PATTERN, max_length=MAX_CODE)],
    location: Annotated[str | None, Query(pattern=CODE_PATTERN, max_length=MAX_CODE)] = None,
    at: Annotated[
        str | None, Query(max_length=64, json_schema_extra={"format": "date-time"})
    ] = None,
    limit: Limit = 50,
    after: After = None,
) -> Any:
    when = parse_at(at)
    found = await explain(b.pool, sku, location, when, limit, _id_cursor(after))
    return explanation_json(found, limit)
