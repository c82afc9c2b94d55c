"""Routes of API.md: catalogue and stock, orders, admin, operations."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import ConnectionError as RedisConnectionError
from starlette.datastructures import State

from stockguard.api import responses as doc
from stockguard.api.answers import answered, json_bytes
from stockguard.api.auth import api_key_of
from stockguard.api.problems import PROBLEM, from_error
from stockguard.api.schemas import (
    CODE_PATTERN,
    MAX_CODE,
    ORDER_ID_PATTERN,
    SKU_PATTERN,
    AdjustmentIn,
    ApiKeyIn,
    CancelIn,
    ChannelIn,
    LevelIn,
    LocationIn,
    OrderIn,
    PaymentIn,
    ReconcileIn,
    SkuIn,
    StatusIn,
    decode_cursor,
    order_json,
    page,
    ts,
)
from stockguard.api.strict import StrictJSONRoute
from stockguard.config import CacheMode
from stockguard.domain.errors import (
    CacheUnavailable,
    Forbidden,
    NotFound,
    StockguardError,
    Unauthorized,
    ValidationFailed,
)
from stockguard.domain.model import OrderStatus
from stockguard.service import catalogue, orders
from stockguard.service.batcher import PlacementBatcher
from stockguard.service.cancel_batcher import CancelBatcher
from stockguard.service.catalogue import SkuView
from stockguard.service.idempotency import Answer, Claim, current_claim
from stockguard.service.payment_batcher import PaymentBatcher
from stockguard.service.reconcile import reconcile
from stockguard.service.uow import CACHE_ERRORS, Backends, UnitOfWork, run
from stockguard.service.verify import verify
from stockguard.store import keys
from stockguard.store.orders import OrderRecord, find_orders

__all__ = ["cancelled", "is_order_id", "paid", "placed", "router"]

router = APIRouter(route_class=StrictJSONRoute)
Outcome = TypeVar("Outcome")  # a batched request's outcome

Limit = Annotated[int, Query(ge=1, le=500)]
CURSOR_DOC = {"pattern": r"^[A-Za-z0-9_-]+$"}
After = Annotated[
    str | None,
    Query(
        max_length=500,
        description="the `next` of the previous page (opaque)",
        json_schema_extra=CURSOR_DOC,
    ),
]


_CHARS = {SKU_PATTERN: "A-Z a-z 0-9 . _ : -", CODE_PATTERN: "a-z 0-9 . _ -"}


def _path(value: str, pattern: str, what: str) -> str:
    if len(value) > MAX_CODE or not re.fullmatch(pattern, value):
        raise ValidationFailed(
            f"{what}: must be 1 to {MAX_CODE} characters of {_CHARS[pattern]}, not only dots"
        )
    return value


BAD_CURSOR = "after: not a cursor this API gave out"


def _text_cursor(after: str | None) -> str | None:
    """A cursor that names the last code of the previous page."""
    cursor = decode_cursor(after)
    if cursor is not None and not isinstance(cursor, str):
        raise ValidationFailed(BAD_CURSOR)
    return cursor


def _id_cursor(after: str | None) -> int | None:
    """A cursor that names the last (bigint) id of the previous page."""
    cursor = decode_cursor(after)
    if cursor is None:
        return None
    if isinstance(cursor, bool) or not isinstance(cursor, int) or not 0 <= cursor < 2**63:
        raise ValidationFailed(BAD_CURSOR)
    return cursor


def order_cursor(after: str | None) -> tuple[datetime, str] | None:
    """A cursor that names the (created_at, id) of the previous page's last order."""
    cursor = decode_cursor(after)
    if cursor is None:
        return None
    if not (
        isinstance(cursor, list) and len(cursor) == 2 and all(isinstance(p, str) for p in cursor)
    ):
        raise ValidationFailed(BAD_CURSOR)
    try:
        created_at = datetime.fromisoformat(cursor[0])
        if created_at.tzinfo is None:
            raise ValidationFailed(BAD_CURSOR)
        # In UTC here: 0001-01-01T00:00+01:00 or 9999-12-31T23:00-05:00 is out of range.
        return created_at.astimezone(UTC), cursor[1]
    except (ValueError, OverflowError) as exc:
        raise ValidationFailed(BAD_CURSOR) from exc


# The path's rules as the document states them; _path checks them (with its own message).
SKU_DOC = {"type": "string", "pattern": SKU_PATTERN, "maxLength": MAX_CODE}
CODE_DOC = {"type": "string", "pattern": CODE_PATTERN, "maxLength": MAX_CODE}
SkuParam = Annotated[str, Path(json_schema_extra=SKU_DOC)]
CodeParam = Annotated[str, Path(json_schema_extra=CODE_DOC)]


async def _sku_path(sku: SkuParam) -> str:
    return _path(sku, SKU_PATTERN, "sku")


async def _code_path(code: CodeParam) -> str:
    return _path(code, CODE_PATTERN, "code")


async def _location_path(location: CodeParam) -> str:
    return _path(location, CODE_PATTERN, "location")


def is_order_id(value: str) -> bool:
    """What ``_order_path`` accepts."""
    return len(value) <= MAX_CODE and re.fullmatch(ORDER_ID_PATTERN, value) is not None


async def _order_path(order_id: SkuParam) -> str:
    return _path(order_id, ORDER_ID_PATTERN, "order_id")


# Routes list the key before these: dependencies run in order, and a caller without a
# valid key learns nothing about its input (401/403 before 422).
SkuPath = Annotated[str, Depends(_sku_path)]
CodePath = Annotated[str, Depends(_code_path)]
LocationPath = Annotated[str, Depends(_location_path)]
OrderPath = Annotated[str, Depends(_order_path)]


async def backends(request: Request) -> Backends:
    b: Backends = request.app.state.backends
    return b


def principal(request: Request) -> keys.ApiKey:
    """The key :class:`stockguard.api.auth.Authentication` found for this request."""
    key = api_key_of(request.scope)
    if key is None:
        raise Unauthorized("an API key is required: Authorization: Bearer <key>")
    return key


# The roles are dependencies of one level (each reads the request itself): FastAPI solves
# every dependency of every request, and the hot routes pay for each one.
async def service_role(request: Request) -> keys.ApiKey:
    return principal(request)  # admin and service may both


async def admin_role(request: Request) -> keys.ApiKey:
    key = principal(request)
    if key.role != "admin":
        raise Forbidden("this needs an admin key")
    return key


Service = Annotated[keys.ApiKey, Depends(service_role)]
Admin = Annotated[keys.ApiKey, Depends(admin_role)]
B = Annotated[Backends, Depends(backends)]


def actor(key: keys.ApiKey) -> str:
    return f"key:{key.name}"


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


# ------------------------------------------------------------ catalogue and stock


def _location(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "code": row["code"],
        "name": row["name"],
        "priority": row["priority"],
        "active": row["active"],
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
    }


@router.put(
    "/v1/locations/{code}",
    tags=["catalogue"],
    response_model=None,
    responses=doc.answers({200: doc.Location, 201: doc.Location}, "cache_unavailable"),
)
async def put_location(key: Admin, code: CodePath, body: LocationIn, b: B) -> JSONResponse:
    row, created = await catalogue.put_location(
        b, code, body.name, body.priority, body.active, actor(key)
    )
    return _json(_location(row), 201 if created else 200)


@router.get(
    "/v1/locations",
    tags=["catalogue"],
    response_model=None,
    responses=doc.answers({200: doc.LocationPage}),
)
async def list_locations(_key: Service, b: B, limit: Limit = 50, after: After = None) -> Any:
    rows = await catalogue.list_locations(b, limit, _text_cursor(after))
    return page([_location(r) for r in rows], limit, rows[-1]["code"] if rows else None)


def _channel(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "code": row["code"],
        "name": row["name"],
        "locations": list(row["locations"]),
        "created_at": ts(row["created_at"]),
        "updated_at": ts(row["updated_at"]),
    }


@router.put(
    "/v1/channels/{code}",
    tags=["catalogue"],
    response_model=None,
    responses=doc.answers({200: doc.Channel, 201: doc.Channel}),
)
async def put_channel(key: Admin, code: CodePath, body: ChannelIn, b: B) -> JSONResponse:
    row, created = await catalogue.put_channel(b, code, body.name, body.locations, actor(key))
    return _json(_channel(row), 201 if created else 200)


@router.get(
    "/v1/channels/{code}",
    tags=["catalogue"],
    response_model=None,
    responses=doc.answers({200: doc.Channel}, "not_found"),
)
async def get_channel(_key: Service, code: CodePath, b: B) -> Any:
    return _channel(await catalogue.get_channel(b, code))


def _level(lv: catalogue.LevelView) -> dict[str, Any]:
    return {
        "location": lv.location,
        "on_hand": lv.on_hand,
        "reserved": lv.reserved,
        "unavailable": lv.unavailable,
        "safety_stock": lv.safety_stock,
        "available": lv.available,
        "active": lv.active,
    }


def _sku(view: SkuView) -> dict[str, Any]:
    return {
        "sku": view.sku,
        "name": view.name,
        "on_hand": view.on_hand,
        "reserved": view.reserved,
        "unavailable": view.unavailable,
        "safety_stock": view.safety_stock,
        "available": view.available,
        "low_stock_threshold": view.low_stock_threshold,
        "levels": [_level(lv) for lv in view.levels],
    }


@router.put(
    "/v1/skus/{sku}",
    tags=["catalogue"],
    response_model=None,
    responses=doc.answers({200: doc.Sku, 201: doc.Sku}),
)
async def put_sku(key: Admin, sku: SkuPath, body: SkuIn, b: B) -> JSONResponse:
    threshold = (
        (body.low_stock_threshold,) if "low_stock_threshold" in body.model_fields_set else None
    )
    view, created = await catalogue.put_sku(b, sku, body.name, actor(key), threshold=threshold)
    return _json(_sku(view), 201 if created else 200)


@router.get(
    "/v1/skus/{sku}",
    tags=["catalogue"],
    response_model=None,
    responses=doc.answers({200: doc.Sku}, "not_found"),
)
async def get_sku(_key: Service, sku: SkuPath, b: B) -> Any:
    return _sku(await catalogue.get_sku(b, sku))


@router.get(
    "/v1/skus", tags=["catalogue"], response_model=None, responses=doc.answers({200: doc.SkuPage})
)
async def list_skus(_key: Service, b: B, limit: Limit = 50, after: After = None) -> Any:
    views = await catalogue.list_skus(b, limit, _text_cursor(after))
    return page([_sku(v) for v in views], limit, views[-1].sku if views else None)


@router.post(
    "/v1/skus/{sku}/adjustments",
    operation_id="adjust_stock",
    tags=["catalogue"],
    status_code=201,
    response_model=None,
    responses=doc.answers(
        {201: doc.AdjustmentResult},
        "not_found",
        "insufficient_stock",
        "stale_quantity",
        "cache_unavailable",
    ),
)
async def adjust(key: Admin, sku: SkuPath, body: AdjustmentIn, b: B) -> Response:
    adjustment = body.adjustment(sku)
    return await answered(
        lambda: catalogue.adjust_stock(b, adjustment, actor(key)), lambda r: (201, _adjusted(r))
    )


def _adjusted(result: catalogue.AdjustResult) -> dict[str, Any]:
    return {
        "sku": result.sku,
        "location": result.location,
        "on_hand": result.on_hand,
        "reserved": result.reserved,
        "unavailable": result.unavailable,
        "safety_stock": result.safety_stock,
        "available": result.available,
        "on_hand_delta": result.on_hand_delta,
        "unavailable_delta": result.unavailable_delta,
        "updated_at": ts(result.updated_at),
    }


@router.put(
    "/v1/skus/{sku}/levels/{location}",
    tags=["catalogue"],
    response_model=None,
    responses=doc.answers({200: doc.Level, 201: doc.Level}, "not_found", "cache_unavailable"),
)
async def put_level(
    key: Admin, sku: SkuPath, location: LocationPath, body: LevelIn, b: B
) -> JSONResponse:
    level, created = await catalogue.set_safety_stock(
        b, sku, location, body.safety_stock, actor(key)
    )
    return _json({"sku": sku, **_level(level)}, 201 if created else 200)


@router.get(
    "/v1/availability",
    tags=["catalogue"],
    response_model=None,
    responses=doc.answers({200: doc.Availability}),
)
async def get_availability(
    _key: Service,
    b: B,
    sku: Annotated[
        list[str],
        Query(min_length=1, max_length=500, json_schema_extra={"items": SKU_DOC}),
    ],
    channel: Annotated[str | None, Query(pattern=CODE_PATTERN, max_length=MAX_CODE)] = None,
) -> Any:
    for s in sku:
        _path(s, SKU_PATTERN, "sku")
    items = await catalogue.availability(b, sku, channel)
    return {
        "items": [{"sku": a.sku, "available": a.available, "locations": a.locations} for a in items]
    }


# ------------------------------------------------------------ orders


@router.post(
    "/v1/orders",
    tags=["orders"],
    status_code=201,
    response_model=None,
    responses=doc.answers(
        {201: doc.Order, 200: doc.Order},
        "out_of_stock",
        "unknown_sku",
        "conflict",
        "cache_unavailable",
    ),
)
async def place_order(body: OrderIn, key: Service, http: Request) -> Response:
    return await placed(http.app.state, body, key)


async def placed(state: State, body: OrderIn, key: keys.ApiKey) -> Response:
    """``POST /v1/orders`` once its body and key are known (the route's and the fast
    lane's, :mod:`stockguard.api.fast_lane`)."""
    request = orders.PlaceOrder(
        id=body.id or str(uuid.uuid4()),
        lines=tuple((ln.sku, ln.quantity) for ln in body.lines),
        channel=body.channel,
        preferred_locations=tuple(body.preferred_locations),
        allow_split=body.allow_split,
        reservation_ttl_seconds=body.reservation_ttl_seconds,
        total_amount=body.total_amount,
        currency=body.currency.upper() if body.currency else None,
    )
    batcher: PlacementBatcher | None = state.batcher
    if batcher is None:
        b: Backends = state.backends
        return await answered(
            lambda: orders.place_order(b, request, actor(key)),
            lambda placed: (201 if placed.created else 200, order_json(placed.order)),
        )
    claim = current_claim()
    if claim is not None:
        claim.render = _placement_answer
    outcome = await batcher.place(request, actor(key))
    return _batched_response(claim, outcome, _placement_answer)


def _batched_response(
    claim: Claim | None, outcome: Outcome, render: Callable[[Outcome], Answer]
) -> Response:
    """The answer of a request decided in a batch: the bytes stored with the batch's
    effect when it carried an ``Idempotency-Key``, else rendered now (a refusal as the
    problem handler would render it, without raising: a flash sale's sold-out buyers are
    most of its requests)."""
    if claim is not None and claim.answer is not None:
        answer = claim.answer
    elif isinstance(outcome, StockguardError):
        return from_error(outcome)
    else:
        answer = render(outcome)
    return Response(answer.body, status_code=answer.status, media_type=answer.content_type)


def _refusal(error: StockguardError) -> Answer:
    refused = from_error(error)
    return Answer(refused.status_code, PROBLEM, bytes(refused.body))


def _placement_answer(outcome: orders.Placed | StockguardError) -> Answer:
    """A batched placement's answer: the order, or the problem of its refusal."""
    if isinstance(outcome, StockguardError):
        return _refusal(outcome)
    body = json_bytes(order_json(outcome.order))
    return Answer(201 if outcome.created else 200, "application/json", body)


@router.get(
    "/v1/orders/{order_id}",
    tags=["orders"],
    response_model=None,
    responses=doc.answers({200: doc.Order}, "not_found"),
)
async def get_order(_key: Service, order_id: OrderPath, b: B) -> Any:
    return order_json(await orders.get_order(b, order_id))


@router.get(
    "/v1/orders", tags=["orders"], response_model=None, responses=doc.answers({200: doc.OrderPage})
)
async def list_orders(
    _key: Service,
    b: B,
    status: Annotated[OrderStatus | None, Query()] = None,
    limit: Limit = 50,
    after: After = None,
) -> Any:
    cursor = order_cursor(after)
    async with b.pool.acquire() as conn:
        found = await find_orders(
            conn,
            "WHERE o.deleted_at IS NULL AND ($1::text IS NULL OR o.status = $1) "
            "AND ($2::timestamptz IS NULL OR (o.created_at, o.id) > ($2, $3)) "
            "ORDER BY o.created_at, o.id LIMIT $4",
            status.value if status else None,
            cursor[0] if cursor else None,
            cursor[1] if cursor else "",
            limit,
        )
    last = [found[-1].created_at.isoformat(), found[-1].id] if found else None
    return page([order_json(o) for o in found], limit, last)


@router.post(
    "/v1/orders/{order_id}/payments",
    operation_id="pay_order",
    tags=["orders"],
    response_model=None,
    responses=doc.answers(
        {200: doc.Order}, "not_found", "invalid_transition", "conflict", "cache_unavailable"
    ),
)
async def pay(key: Service, order_id: OrderPath, body: PaymentIn, http: Request) -> Response:
    return await paid(http.app.state, order_id, body, key)


async def paid(state: State, order_id: str, body: PaymentIn, key: keys.ApiKey) -> Response:
    """``POST /v1/orders/{order_id}/payments`` once its input and key are known (the
    route's and the fast lane's)."""
    proof = orders.PaymentProof(body.provider, body.payment_id, body.amount, body.currency)
    batcher: PaymentBatcher | None = state.payment_batcher
    b: Backends = state.backends
    return await _order_changed(
        None if batcher is None else partial(batcher.pay, orders.PayOrder(order_id, proof)),
        lambda: orders.pay_order(b, order_id, proof, actor(key)),
        key,
    )


@router.post(
    "/v1/orders/{order_id}/cancel",
    operation_id="cancel_order",
    tags=["orders"],
    response_model=None,
    responses=doc.answers({200: doc.Order}, "not_found", "invalid_transition", "cache_unavailable"),
)
async def cancel(
    key: Service, order_id: OrderPath, http: Request, body: CancelIn | None = None
) -> Response:
    return await cancelled(http.app.state, order_id, body, key)


async def cancelled(
    state: State, order_id: str, body: CancelIn | None, key: keys.ApiKey
) -> Response:
    """``POST /v1/orders/{order_id}/cancel`` once its input and key are known (the
    route's and the fast lane's)."""
    reason = body.reason if body else None
    batcher: CancelBatcher | None = state.cancel_batcher
    b: Backends = state.backends
    return await _order_changed(
        None if batcher is None else partial(batcher.cancel, orders.CancelOrder(order_id, reason)),
        lambda: orders.cancel_order(b, order_id, actor(key), reason),
        key,
    )


async def _order_changed(
    batched: Callable[[str], Awaitable[OrderRecord | StockguardError]] | None,
    alone: Callable[[], Awaitable[OrderRecord]],
    key: keys.ApiKey,
) -> Response:
    """A cancel's or a payment's answer (200 with the order, or the problem of its
    refusal): ``batched(actor)`` through its batcher, or else ``alone()`` in a transaction
    of its own."""
    if batched is None:
        return await answered(alone, lambda o: (200, order_json(o)))
    claim = current_claim()
    if claim is not None:
        claim.render = _order_answer
    return _batched_response(claim, await batched(actor(key)), _order_answer)


def _order_answer(outcome: OrderRecord | StockguardError) -> Answer:
    """A batched cancel's or payment's answer: the order, or the problem of its refusal."""
    if isinstance(outcome, StockguardError):
        return _refusal(outcome)
    return Answer(200, "application/json", json_bytes(order_json(outcome)))


@router.patch(
    "/v1/orders/{order_id}",
    tags=["orders"],
    response_model=None,
    responses=doc.answers({200: doc.Order}, "not_found", "invalid_transition", "cache_unavailable"),
)
async def patch_order(key: Service, order_id: OrderPath, body: StatusIn, b: B) -> Any:
    return order_json(await orders.set_status(b, order_id, OrderStatus(body.status), actor(key)))


@router.delete(
    "/v1/orders/{order_id}",
    tags=["orders"],
    status_code=204,
    responses=doc.answers({204: None}, "not_found", "order_not_deletable", "cache_unavailable"),
)
async def delete_order(key: Service, order_id: OrderPath, b: B) -> Response:
    await orders.delete_order(b, order_id, actor(key))
    return Response(status_code=204)


# ------------------------------------------------------------ admin


# Only the form ids are shown in: uuid.UUID also takes "{...}", "urn:uuid:..." and bare hex,
# which the driver refuses.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _key_json(k: keys.ApiKey) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "role": k.role,
        "key_prefix": k.key_prefix,
        "created_at": ts(k.created_at),
        "revoked_at": ts(k.revoked_at),
    }


@router.post(
    "/v1/admin/api-keys",
    tags=["admin"],
    status_code=201,
    response_model=None,
    responses=doc.answers({201: doc.ApiKeyCreated}),
)
async def create_api_key(body: ApiKeyIn, key: Admin, b: B) -> Response:
    async def create(uow: UnitOfWork) -> tuple[keys.ApiKey, str]:
        return await keys.create_key(uow.conn, body.role, body.name)

    return await answered(
        lambda: run(b, actor(key), create, operation="create_api_key"),
        lambda made: (201, {**_key_json(made[0]), "key": made[1]}),
        # The key is shown once: a replay answers without it.
        replay=lambda made: {**_key_json(made[0]), "key": None},
    )


@router.get(
    "/v1/admin/api-keys",
    tags=["admin"],
    response_model=None,
    responses=doc.answers({200: doc.ApiKeyPage}),
)
async def list_api_keys(_key: Admin, b: B, limit: Limit = 50, after: After = None) -> Any:
    cursor = decode_cursor(after)
    if cursor is not None and not (isinstance(cursor, str) and _UUID.fullmatch(cursor)):
        raise ValidationFailed(BAD_CURSOR)
    async with b.pool.acquire() as conn:
        found = await keys.list_keys(conn, limit, cursor)
    return page([_key_json(k) for k in found], limit, found[-1].id if found else None)


@router.delete(
    "/v1/admin/api-keys/{key_id}",
    tags=["admin"],
    status_code=204,
    responses=doc.answers({204: None}, "not_found"),
)
async def revoke_api_key(
    key: Admin,
    key_id: Annotated[str, Path(json_schema_extra={"pattern": f"^{_UUID.pattern}$"})],
    b: B,
    http: Request,
) -> Response:
    if not _UUID.fullmatch(key_id):
        raise NotFound("no such api key")

    async def revoke(uow: UnitOfWork) -> None:
        if not await keys.revoke_key(uow.conn, key_id):
            raise NotFound("no such api key")

    await run(b, actor(key), revoke, operation="revoke_api_key")
    http.app.state.known_keys.forget(key_id)  # this process at once, the others within 1 s
    return Response(status_code=204)


@router.get(
    "/v1/admin/movements",
    operation_id="list_movements",
    tags=["admin"],
    response_model=None,
    responses=doc.answers({200: doc.LedgerPage}),
)
async def movements(
    _key: Admin,
    b: B,
    sku: Annotated[str | None, Query(pattern=SKU_PATTERN, max_length=MAX_CODE)] = None,
    order_id: Annotated[str | None, Query(pattern=ORDER_ID_PATTERN, max_length=MAX_CODE)] = None,
    limit: Limit = 50,
    after: After = None,
) -> Any:
    cursor = _id_cursor(after)
    rows = await b.pool.fetch(
        "SELECT id, sku, location, on_hand_delta, reserved_delta, unavailable_delta, reason, "
        "order_id, "
        "reservation_id, actor, reference, created_at FROM stock_movements "
        "WHERE ($1::text IS NULL OR sku = $1) AND ($2::text IS NULL OR order_id = $2) "
        "AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        sku,
        order_id,
        cursor,
        limit,
    )
    items = [{**dict(r.items()), "created_at": ts(r["created_at"])} for r in rows]
    return page(items, limit, rows[-1]["id"] if rows else None)


@router.get(
    "/v1/admin/orders/{order_id}/inventory-logs",
    operation_id="list_inventory_logs",
    tags=["admin"],
    response_model=None,
    responses=doc.answers({200: doc.InventoryLogPage}),
)
async def inventory_logs(
    _key: Admin, order_id: OrderPath, b: B, limit: Limit = 50, after: After = None
) -> Any:
    cursor = _id_cursor(after)
    rows = await b.pool.fetch(
        "SELECT id, order_id, action, actor, reservation_ids, error_reason, context, created_at "
        "FROM order_inventory_logs WHERE order_id = $1 AND ($2::bigint IS NULL OR id > $2) "
        "ORDER BY id LIMIT $3",
        order_id,
        cursor,
        limit,
    )
    items = [
        {
            **dict(r.items()),
            "reservation_ids": list(r["reservation_ids"]),
            "created_at": ts(r["created_at"]),
        }
        for r in rows
    ]
    return page(items, limit, rows[-1]["id"] if rows else None)


@router.get(
    "/v1/admin/verify",
    tags=["admin"],
    response_model=None,
    responses=doc.answers({200: doc.Verification}),
)
async def verify_invariants(_key: Admin, b: B) -> Any:
    async with b.pool.acquire() as conn:
        found = await verify(conn)
    return {
        "ok": not found,
        "violations": [
            {"invariant": v.invariant, "check": v.check, "detail": v.detail} for v in found
        ],
    }


@router.post(
    "/v1/admin/cache/reconcile",
    tags=["admin"],
    response_model=None,
    responses=doc.answers({200: doc.ReconcileReport}, "cache_unavailable"),
)
async def reconcile_cache(_key: Admin, b: B, body: ReconcileIn | None = None) -> Any:
    try:
        report = await reconcile(b, repair=body.repair if body else False)
    except CACHE_ERRORS as exc:  # was a 500: the contract's answer is 503 cache_unavailable
        raise CacheUnavailable(
            "the availability cache cannot be read; reconcile again when Redis answers "
            "(what was repaired before stays repaired)"
        ) from exc
    return {
        "checked": report.checked,
        "drifted": [
            {"sku": d.sku, "redis": d.redis, "postgres": d.postgres} for d in report.drifted
        ],
        "repaired": report.repaired,
    }


# ------------------------------------------------------------ operations


HEALTH_POOL_WAIT_SECONDS = 5.0
METRICS = {
    "description": "Prometheus text exposition",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


@router.get(
    "/healthz",
    tags=["operations"],
    response_model=None,
    responses=doc.answers({200: doc.Health, 503: doc.Health}),
)
async def healthz(b: B) -> JSONResponse:
    """Alive: the event loop answers and the pool can hand out a connection. A pool that
    cannot within a few seconds while PostgreSQL itself answers is a wedged process
    (restart it); PostgreSQL being down is not this process's fault (see /readyz)."""
    try:
        async with asyncio.timeout(HEALTH_POOL_WAIT_SECONDS), b.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
    except TimeoutError:
        return _json(
            {
                "ok": False,
                "reason": f"no pooled database connection within {HEALTH_POOL_WAIT_SECONDS:g} s",
            },
            503,
        )
    except Exception:  # noqa: S110 - unreachable database: not ready, still alive
        pass
    return _json({"ok": True}, 200)


@router.get(
    "/readyz",
    tags=["operations"],
    response_model=None,
    responses=doc.answers({200: doc.Readiness, 503: doc.Readiness}),
)
async def readyz(b: B) -> JSONResponse:
    checks: dict[str, bool] = {}
    reasons: dict[str, str] = {}
    try:
        async with asyncio.timeout(HEALTH_POOL_WAIT_SECONDS):
            checks["postgres"] = await b.pool.fetchval("SELECT true") is True
    except Exception as exc:
        checks["postgres"] = False
        reasons["postgres"] = _why(exc)
    if b.cache is not None:
        try:
            async with asyncio.timeout(b.redis_timeout):
                checks["redis"] = await b.cache.ping()
        except Exception as exc:
            checks["redis"] = False
            reasons["redis"] = _why(exc)
    # Only strict mode needs Redis to change stock; degraded mode sells on without it.
    needed = ["postgres", "redis"] if b.cache_mode is CacheMode.STRICT else ["postgres"]
    ok = all(checks.get(name, True) for name in needed)
    body: dict[str, Any] = {"ok": ok, "mode": b.cache_mode.value, "checks": checks}
    if reasons:
        body["reasons"] = reasons
    return _json(body, 200 if ok else 503)


def _why(exc: BaseException) -> str:
    """A reason an operator can act on, without internals (no addresses, no secrets)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError | RedisConnectionError):
        return "connection refused or lost"
    return type(exc).__name__


@router.get(
    "/metrics",
    tags=["operations"],
    response_class=Response,
    responses=doc.answers({200: METRICS}),
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


# FastAPI tries a router's routes in order, twice per request (to find the router, then
# the route): the two a flash sale floods go first. Otherwise the order of declaration.
_HOT_ROUTES = ("place_order", "cancel")
router.routes.sort(key=lambda route: getattr(route, "name", "") not in _HOT_ROUTES)
