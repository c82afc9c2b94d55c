"""Returns after shipment and extending an order's hold (API.md "Returns", "Holds: extend").

A return puts shipped units back on the shelf: ``restock`` adds them to ``on_hand``,
``damaged`` to ``on_hand`` and ``unavailable``; it never touches reservations. Each use
case is one transaction that takes the order's row lock first (then levels, through
``LevelWriter``), and decides under it: a return id is applied at most once and an
order's returned units never exceed its fulfilled ones (invariant 12, which PostgreSQL
holds too: primary key and a constraint trigger, migration 0005).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from stockguard.domain.errors import (
    Conflict,
    InvalidTransition,
    NotFound,
    ReservationExpired,
    ReturnExceedsFulfilled,
    ValidationFailed,
)
from stockguard.domain.model import MovementReason, OrderStatus, ReservationStatus
from stockguard.service.uow import Backends, UnitOfWork, run
from stockguard.store.levels import Delta
from stockguard.store.orders import OrderRecord, load_order
from stockguard.store.returns import (
    ReturnLineRecord,
    ReturnRecord,
    find_return,
    insert_return,
)

__all__ = [
    "RETURNABLE",
    "ReturnLine",
    "ReturnRequest",
    "Returned",
    "extend_hold",
    "list_returns",
    "record_return",
    "return_hash",
]

# Orders whose units have left the building.
RETURNABLE = frozenset({OrderStatus.SHIPPED, OrderStatus.DELIVERED})

_REASON = {"restock": MovementReason.RETURNED, "damaged": MovementReason.RETURNED_DAMAGED}


@dataclass(frozen=True, slots=True)
class ReturnLine:
    sku: str
    quantity: int
    disposition: str  # "restock" | "damaged"


@dataclass(frozen=True, slots=True)
class ReturnRequest:
    return_id: str
    order_id: str
    lines: tuple[ReturnLine, ...]
    location: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Returned:
    ret: ReturnRecord
    created: bool


def return_hash(req: ReturnRequest) -> str:
    """Fingerprint of a return's content: the same id with other content is a conflict."""
    body = {
        "order_id": req.order_id,
        "lines": [[ln.sku, ln.quantity, ln.disposition] for ln in req.lines],
        "location": req.location,
        "note": req.note,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


async def _locked(uow: UnitOfWork, order_id: str) -> OrderRecord:
    order = await load_order(uow.conn, order_id, lock=True)
    if order is None or order.deleted_at is not None:
        raise NotFound(f"order {order_id} not found")
    return order


def _shipped_and_returned(
    order: OrderRecord,
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Units fulfilled and units returned so far, per (sku, location)."""
    shipped: dict[tuple[str, str], int] = {}
    for r in order.reservations:
        if r.status == ReservationStatus.FULFILLED:
            shipped[(r.sku, r.location)] = shipped.get((r.sku, r.location), 0) + r.quantity
    returned: dict[tuple[str, str], int] = {}
    for ret in order.returns:
        for ln in ret.lines:
            returned[(ln.sku, ln.location)] = returned.get((ln.sku, ln.location), 0) + ln.quantity
    return shipped, returned


def _per_sku(units: dict[tuple[str, str], int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (sku, _), q in units.items():
        out[sku] = out.get(sku, 0) + q
    return out


def _check_returnable(
    req: ReturnRequest, shipped: dict[tuple[str, str], int], returned: dict[tuple[str, str], int]
) -> None:
    requested: dict[str, int] = {}
    for ln in req.lines:
        requested[ln.sku] = requested.get(ln.sku, 0) + ln.quantity
    shipped_sku, returned_sku = _per_sku(shipped), _per_sku(returned)
    over = [
        (sku, q, shipped_sku.get(sku, 0) - returned_sku.get(sku, 0))
        for sku, q in requested.items()
        if q > shipped_sku.get(sku, 0) - returned_sku.get(sku, 0)
    ]
    if over:
        raise ReturnExceedsFulfilled(over)


def _place(
    req: ReturnRequest,
    shipped: dict[tuple[str, str], int],
    returned: dict[tuple[str, str], int],
    priority: dict[str, int],
) -> list[ReturnLineRecord]:
    """Where each line's units go: ``req.location``, or back where they shipped from, by
    location priority then code, at most what each location shipped less what came back
    there (the SKU's total was checked already, so this always places every unit)."""
    if req.location is not None:
        return [
            ReturnLineRecord(ln.sku, ln.quantity, ln.disposition, req.location) for ln in req.lines
        ]
    room = {k: v - returned.get(k, 0) for k, v in shipped.items()}
    out: list[ReturnLineRecord] = []
    for ln in req.lines:
        left = ln.quantity
        for key in sorted(
            (k for k in room if k[0] == ln.sku), key=lambda k: (priority[k[1]], k[1])
        ):
            take = min(left, room[key])
            if take > 0:
                room[key] -= take
                left -= take
                out.append(ReturnLineRecord(ln.sku, take, ln.disposition, key[1]))
        assert left == 0, "returnable units were checked per SKU"
    return out


async def _priorities(uow: UnitOfWork, codes: Sequence[str]) -> dict[str, int]:
    rows = await uow.conn.fetch(
        "SELECT code, priority FROM locations WHERE code = ANY($1::text[])", sorted(set(codes))
    )
    return {r["code"]: r["priority"] for r in rows}


async def apply_return(uow: UnitOfWork, req: ReturnRequest) -> Returned:
    """Record and apply one return inside the caller's transaction (see module doc)."""
    order = await _locked(uow, req.order_id)
    digest = return_hash(req)
    # Under the order's lock: a retry of this return that committed first is seen here.
    found = await find_return(uow.conn, req.return_id)
    if found is not None:
        if found != (req.order_id, digest):
            raise Conflict(f"return {req.return_id} exists with other content")
        (ret,) = [r for r in order.returns if r.return_id == req.return_id]
        return Returned(ret, created=False)
    if order.status not in RETURNABLE:
        raise InvalidTransition(
            order.status.value, "returned", "only a shipped or delivered order takes returns"
        )
    shipped, returned = _shipped_and_returned(order)
    _check_returnable(req, shipped, returned)
    priority = await _priorities(uow, [loc for _, loc in shipped] + [req.location or ""])
    if req.location is not None and req.location not in priority:
        raise ValidationFailed(f"unknown location {req.location!r}")
    lines = _place(req, shipped, returned, priority)
    for sku, loc in sorted({(ln.sku, ln.location) for ln in lines}):
        await uow.levels.ensure(sku, loc)
    await uow.levels.lock({ln.sku for ln in lines})
    await uow.levels.apply(
        [
            Delta(
                ln.sku,
                ln.location,
                ln.quantity,
                0,
                _REASON[ln.disposition].value,
                order_id=req.order_id,
                reference=req.return_id,
                unavailable=ln.quantity if ln.disposition == "damaged" else 0,
            )
            for ln in lines
        ]
    )
    created_at = await insert_return(
        uow.conn, req.return_id, req.order_id, digest, req.note, uow.actor, lines
    )
    await uow.conn.execute("UPDATE orders SET updated_at = now() WHERE id = $1", req.order_id)
    uow.events.order(req.order_id, "order.returned")
    ret = ReturnRecord(req.return_id, req.order_id, req.note, created_at, digest, lines)
    return Returned(ret, created=True)


async def record_return(backends: Backends, req: ReturnRequest, actor: str) -> Returned:
    """POST /v1/orders/{id}/returns in one transaction; a concurrent first insert of the
    same id is a unique violation, which ``run`` retries, and then it is "found"."""
    if not req.lines:
        raise ValidationFailed("a return needs at least one line")

    async def body(uow: UnitOfWork) -> Returned:
        return await apply_return(uow, req)

    return await run(backends, actor, body, operation="record_return")


async def list_returns(backends: Backends, order_id: str) -> list[ReturnRecord]:
    async with backends.pool.acquire() as conn:
        order = await load_order(conn, order_id)
    if order is None or order.deleted_at is not None:
        raise NotFound(f"order {order_id} not found")
    return order.returns


async def extend_hold(
    backends: Backends, order_id: str, ttl_seconds: int, actor: str
) -> OrderRecord:
    """Every ``reserved`` reservation of a pending order expires ``ttl_seconds`` from now.

    Decided under the order's row lock, which the expiry worker takes with SKIP LOCKED:
    an expiry that committed first leaves an ``expired`` reservation (409
    ``reservation_expired``); an extension that commits first moves ``expires_at`` past
    now, so the expiry's guarded UPDATE (``expires_at <= now()``) then takes nothing."""
    if not 1 <= ttl_seconds <= 86_400:
        raise ValidationFailed("reservation_ttl_seconds: must be 1 to 86400")

    async def body(uow: UnitOfWork) -> OrderRecord:
        order = await _locked(uow, order_id)
        if order.status != OrderStatus.PENDING:
            raise InvalidTransition(
                order.status.value, "extended", "only a pending order's hold can be extended"
            )
        expired = [r.id for r in order.reservations if r.status == ReservationStatus.EXPIRED]
        if expired:
            raise ReservationExpired(
                "a reservation of this order expired: pay or place it again",
                reservation_ids=expired,
            )
        await uow.conn.execute(
            "UPDATE reservations SET expires_at = now() + make_interval(secs => $2), "
            "updated_at = now() WHERE order_id = $1 AND status = 'reserved'",
            order_id,
            float(ttl_seconds),
        )
        await uow.conn.execute("UPDATE orders SET updated_at = now() WHERE id = $1", order_id)
        found = await load_order(uow.conn, order_id)
        assert found is not None
        return found

    return await run(backends, actor, body, operation="extend_hold")
