"""Order use cases: place, pay, cancel, delete, fulfil, expire.

Each public function is one transaction (through :func:`stockguard.service.uow.run`).
Lock order, everywhere: the order's row first, then its reservations, then levels (always
through ``LevelWriter.lock``, which sorts by sku and location).

Restoring stock is always "move the order's reserved/committed reservations to released,
guarded by their status, in the same transaction that changes the order", so an order's
stock can be restored at most once however many cancels, deletes or expiries race.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from stockguard.domain.allocation import Allocation, Candidate, Line, allocate, rank_candidates
from stockguard.domain.errors import (
    Conflict,
    InvalidTransition,
    NotFound,
    OrderNotDeletable,
    OutOfStock,
    PaymentReused,
    StockguardError,
    UnknownSku,
    ValidationFailed,
)
from stockguard.domain.model import (
    CANCELLABLE,
    DELETE_BLOCKED,
    LogAction,
    MovementReason,
    OrderStatus,
    ReservationStatus,
    check_patch_transition,
)
from stockguard.logging import get_logger
from stockguard.metrics import OUT_OF_STOCK
from stockguard.service.uow import Backends, UnitOfWork, run
from stockguard.store.db import Conn
from stockguard.store.levels import (
    ALSO_FROM,
    APPLY_ACTOR,
    Delta,
    LevelRow,
    guarded_update,
    summed,
)
from stockguard.store.orders import (
    LogEntry,
    OrderRecord,
    ReservationRecord,
    find_orders,
    insert_logs,
    load_order,
    log_inconsistency,
)

__all__ = [
    "COMMIT_FAILURES",
    "CancelOrder",
    "PayOrder",
    "PaymentProof",
    "PlaceOrder",
    "Placed",
    "cancel_order",
    "decide_cancels",
    "decide_orders",
    "decide_payments",
    "delete_order",
    "get_order",
    "move_reservations",
    "order_hash",
    "pay",
    "pay_order",
    "place_order",
    "place_orders",
    "record_payment",
    "record_unpaid_commit",
    "set_order_status",
    "set_status",
]


log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    id: str
    lines: tuple[tuple[str, int], ...]
    channel: str | None = None
    preferred_locations: tuple[str, ...] = ()
    allow_split: bool = True
    reservation_ttl_seconds: int = 900
    total_amount: int | None = None
    currency: str | None = None


def order_hash(req: PlaceOrder) -> str:
    """Fingerprint of an order's content: the same id with other content is a conflict."""
    body = {
        "lines": [list(line) for line in req.lines],
        "channel": req.channel,
        "preferred_locations": list(req.preferred_locations),
        "allow_split": req.allow_split,
        "ttl": req.reservation_ttl_seconds,
        "total_amount": req.total_amount,
        "currency": req.currency,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Placed:
    order: OrderRecord
    created: bool


@dataclass(frozen=True, slots=True)
class PaymentProof:
    provider: str
    payment_id: str
    amount: int | None = None
    currency: str | None = None


# ---------------------------------------------------------------- placing


@dataclass
class _Decision:
    req: PlaceOrder
    # The content's fingerprint, taken before any lock (it is the same for every try).
    digest: str = field(init=False)
    allocations: list[Allocation] = field(default_factory=list)
    order: OrderRecord | None = None
    created: bool = False
    error: StockguardError | None = None

    def __post_init__(self) -> None:
        self.digest = order_hash(self.req)


async def _channel_links(conn: Conn, channels: set[str]) -> dict[str, dict[str, int]]:
    """channel -> {location: priority}; raises for an unknown channel."""
    if not channels:
        return {}
    rows = await conn.fetch(
        "SELECT c.code, cl.location, cl.priority FROM channels c "
        "LEFT JOIN channel_locations cl ON cl.channel = c.code WHERE c.code = ANY($1::text[])",
        sorted(channels),
    )
    links: dict[str, dict[str, int]] = {}
    for r in rows:
        links.setdefault(r["code"], {})
        if r["location"] is not None:
            links[r["code"]][r["location"]] = r["priority"]
    return links


async def _refuse_unknown_skus(
    conn: Conn, decisions: list[_Decision], stocked: set[str]
) -> list[_Decision]:
    """Refuse (``unknown_sku``) the orders naming a SKU that does not exist; return the
    others. Only SKUs without any level are looked up: on the hot path there are none."""
    unstocked = sorted({sku for d in decisions for sku, _ in d.req.lines} - stocked)
    if not unstocked:
        return decisions
    unknown = set(
        await conn.fetchval(
            "SELECT coalesce(array_agg(s.code), '{}') FROM unnest($1::text[]) AS s(code) "
            "WHERE NOT EXISTS (SELECT 1 FROM skus WHERE skus.code = s.code)",
            unstocked,
        )
    )
    kept: list[_Decision] = []
    for d in decisions:
        named = sorted({sku for sku, _ in d.req.lines} & unknown)
        if named:
            d.error = UnknownSku(named)
        else:
            kept.append(d)
    return kept


def _candidates(
    levels: dict[tuple[str, str], LevelRow],
    skus: set[str],
    channel_links: dict[str, int] | None,
    preferred: Sequence[str],
) -> list[str]:
    seen: dict[str, Candidate] = {}
    for (sku, loc), row in levels.items():
        if sku not in skus or not row.active or loc in seen:
            continue
        if channel_links is None:
            seen[loc] = Candidate(loc, row.location_priority)
        elif loc in channel_links:
            seen[loc] = Candidate(loc, row.location_priority, channel_links[loc])
    return rank_candidates(seen.values(), preferred)


async def _reserve(
    uow: UnitOfWork,
    orders: Sequence[tuple[OrderRecord | PlaceOrder, Sequence[Line]]],
    levels: dict[tuple[str, str], LevelRow],
    links: dict[str, dict[str, int]],
    *,
    each_alone: bool = False,
) -> list[list[Allocation] | OutOfStock]:
    """Per-order decisions in arrival order against the locked levels. ``each_alone``
    decides every order against the levels as given, as if it came first: the only
    refusals that an unlocked snapshot can justify (an order that fits on its own must
    not be refused because an earlier one, refused later under the lock, took its units)."""
    free = {k: row.available for k, row in levels.items()}
    out: list[list[Allocation] | OutOfStock] = []
    for order, lines in orders:
        channel = order.channel
        ranked = _candidates(
            levels,
            {ln.sku for ln in lines},
            links.get(channel) if channel else None,
            order.preferred_locations,
        )
        allocations, shortages = allocate(lines, ranked, free, order.allow_split)
        if shortages:
            OUT_OF_STOCK.inc()
            out.append(OutOfStock(shortages))
            continue
        if not each_alone:
            for a in allocations:
                free[(a.sku, a.location)] -= a.quantity
        out.append(allocations)
    return out


_INSERT_RESERVATIONS_SQL = """
INSERT INTO reservations (order_id, line_no, sku, location, quantity, status, expires_at,
                          created_at, updated_at)
SELECT d.order_id, d.line_no, d.sku, d.location, d.quantity, 'reserved', d.expires_at, $7, $7
FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::int[], $6::timestamptz[])
     WITH ORDINALITY AS d(order_id, line_no, sku, location, quantity, expires_at, n)
ORDER BY d.n
RETURNING id, order_id, line_no, sku, location, quantity, expires_at
"""


# A batch's placements in one statement, while their levels are locked: the orders and
# their lines, their reservations, the levels' guarded update and the ledger rows, the
# logs (each order's reservation ids in insertion order). Answers the reservations and
# how many levels the guard matched.
_PLACE_SQL = f"""
WITH o AS (
    INSERT INTO orders (id, status, channel, preferred_locations, allow_split,
                        reservation_ttl_seconds, total_amount, currency, request_hash,
                        created_at, updated_at)
    SELECT d.id, 'pending', d.channel,
           ARRAY(SELECT jsonb_array_elements_text(d.preferred::jsonb)),
           d.allow_split, d.ttl, d.total_amount, d.currency, d.hash, $10, $10
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::int[], $6::bigint[],
                $7::text[], $8::text[]) AS d(id, channel, preferred, allow_split, ttl,
                                             total_amount, currency, hash)
    RETURNING id
), l AS (
    INSERT INTO order_lines (order_id, line_no, sku, quantity)
    SELECT x.order_id, x.line_no, x.sku, x.quantity
    FROM jsonb_to_recordset($9::jsonb) AS x(order_id text, line_no int, sku text, quantity int)
    RETURNING 1
), r AS (
    INSERT INTO reservations (order_id, line_no, sku, location, quantity, status,
                              expires_at, created_at, updated_at)
    SELECT d.order_id, d.line_no, d.sku, d.location, d.quantity, 'reserved', d.expires_at,
           $10, $10
    FROM unnest($11::text[], $12::int[], $13::text[], $14::text[], $15::int[],
                $16::timestamptz[])
         WITH ORDINALITY AS d(order_id, line_no, sku, location, quantity, expires_at, n)
    ORDER BY d.n
    RETURNING id, order_id, line_no, sku, location, quantity, expires_at
), changed AS ({guarded_update(17)}
), ledger AS (
    INSERT INTO stock_movements (sku, location, on_hand_delta, reserved_delta,
                                 unavailable_delta, reason, order_id, reservation_id, actor)
    SELECT r.sku, r.location, 0, r.quantity, 0, $26, r.order_id, r.id, $23
    FROM r ORDER BY r.id
), logs AS (
    INSERT INTO order_inventory_logs (order_id, actor, reservation_ids, action, context)
    SELECT e.order_id, $23,
           ARRAY(SELECT r.id FROM r WHERE r.order_id = e.order_id ORDER BY r.id),
           $27, e.context
    FROM unnest($24::text[], $25::jsonb[]) WITH ORDINALITY AS e(order_id, context, n)
    ORDER BY e.n
)
SELECT r.id, r.order_id, r.line_no, r.sku, r.location, r.quantity, r.expires_at,
       (SELECT count(*) FROM changed) AS levels_matched,
       (SELECT count(*) FROM o) AS orders, (SELECT count(*) FROM l) AS lines
FROM r ORDER BY r.id
"""


def _reservation_columns(
    rows: Sequence[tuple[str, Allocation, datetime]],
) -> list[list[Any]]:
    """(order id, allocation, expiry) rows as the reservation inserts' six arrays."""
    return [
        [r[0] for r in rows],
        [r[1].line_no for r in rows],
        [r[1].sku for r in rows],
        [r[1].location for r in rows],
        [r[1].quantity for r in rows],
        [r[2] for r in rows],
    ]


async def _insert_reservations(
    uow: UnitOfWork,
    rows: Sequence[tuple[str, Allocation, datetime]],
    now: datetime,
    reason: MovementReason,
) -> list[asyncpg.Record]:
    """Insert reservations, raise the levels' reserved, write the ledger."""
    if not rows:
        return []
    inserted: list[asyncpg.Record] = await uow.conn.fetch(
        _INSERT_RESERVATIONS_SQL,
        *_reservation_columns(rows),
        now,
    )
    await uow.levels.apply(
        [
            Delta(
                sku=r["sku"],
                location=r["location"],
                on_hand=0,
                reserved=r["quantity"],
                reason=reason.value,
                order_id=r["order_id"],
                reservation_id=r["id"],
            )
            for r in inserted
        ]
    )
    return inserted


async def _write_placements(
    uow: UnitOfWork, winners: Sequence[_Decision], now: datetime
) -> list[asyncpg.Record]:
    """Write the placed orders (``_PLACE_SQL``, one round trip); returns their
    reservations in insertion order."""
    held = [
        (d.req.id, a, now + timedelta(seconds=d.req.reservation_ttl_seconds))
        for d in winners
        for a in d.allocations
    ]
    levels = summed(
        [Delta(a.sku, a.location, 0, a.quantity, MovementReason.RESERVE.value) for _, a, _ in held]
    )
    rows: list[asyncpg.Record] = await uow.conn.fetch(
        _PLACE_SQL,
        [d.req.id for d in winners],
        [d.req.channel for d in winners],
        [orjson.dumps(d.req.preferred_locations).decode() for d in winners],
        [d.req.allow_split for d in winners],
        [d.req.reservation_ttl_seconds for d in winners],
        [d.req.total_amount for d in winners],
        [d.req.currency for d in winners],
        [d.digest for d in winners],
        [
            {"order_id": d.req.id, "line_no": i, "sku": sku, "quantity": q}
            for d in winners
            for i, (sku, q) in enumerate(d.req.lines, 1)
        ],
        now,
        *_reservation_columns(held),
        *levels.args,
        uow.actor,
        [d.req.id for d in winners],
        [
            {
                "allocations": [
                    {"sku": a.sku, "location": a.location, "quantity": a.quantity}
                    for a in d.allocations
                ]
            }
            for d in winners
        ],
        MovementReason.RESERVE.value,
        LogAction.RESERVED.value,
    )
    uow.levels.changed(levels, rows[0]["levels_matched"] if rows else 0)
    return rows


def _lines(decisions: Sequence[_Decision]) -> list[tuple[PlaceOrder, list[Line]]]:
    return [
        (d.req, [Line(i, sku, q) for i, (sku, q) in enumerate(d.req.lines, 1)]) for d in decisions
    ]


async def _place(uow: UnitOfWork, requests: Sequence[PlaceOrder]) -> list[_Decision]:
    conn = uow.conn
    decisions = [_Decision(req) for req in requests]
    first = await conn.fetchrow(
        "SELECT now() AS now, ARRAY(SELECT id FROM orders WHERE id = ANY($1::text[])) AS ids",
        [r.id for r in requests],
    )
    assert first is not None
    now: datetime = first["now"]
    existing_ids = list(first["ids"])
    seen_in_batch: set[str] = set()
    to_place: list[_Decision] = []
    existing = (
        {o.id: o for o in await find_orders(conn, "WHERE o.id = ANY($1::text[])", existing_ids)}
        if existing_ids
        else {}
    )
    for d in decisions:
        found = existing.get(d.req.id)
        if found is not None:
            if found.request_hash != d.digest or found.deleted_at is not None:
                d.error = Conflict(f"order {d.req.id} exists with other content")
            else:
                d.order = found
        elif d.req.id in seen_in_batch:
            d.error = Conflict(f"order {d.req.id} is being placed already")
        else:
            seen_in_batch.add(d.req.id)
            to_place.append(d)
    if not to_place:
        return decisions

    links = await _channel_links(conn, {d.req.channel for d in to_place if d.req.channel})
    placeable: list[_Decision] = []
    for d in to_place:
        if d.req.channel and d.req.channel not in links:
            d.error = ValidationFailed(f"unknown channel {d.req.channel!r}")
        else:
            placeable.append(d)
    # Refuse what cannot fit even now, before queueing for the levels' locks: a sold-out
    # SKU answers its buyers without touching its hot rows.
    snapshot = await uow.levels.peek({sku for d in placeable for sku, _ in d.req.lines})
    placeable = await _refuse_unknown_skus(conn, placeable, {sku for sku, _ in snapshot})
    for d, seen in zip(
        placeable,
        await _reserve(uow, _lines(placeable), snapshot, links, each_alone=True),
        strict=True,
    ):
        if isinstance(seen, OutOfStock):
            d.error = seen
    placeable = [d for d in placeable if d.error is None]
    if not placeable:
        return decisions
    levels = await uow.levels.lock({sku for d in placeable for sku, _ in d.req.lines})
    results = await _reserve(uow, _lines(placeable), levels, links)
    winners: list[_Decision] = []
    for d, result in zip(placeable, results, strict=True):
        if isinstance(result, OutOfStock):
            d.error = result
        else:
            d.allocations = result
            winners.append(d)
    if not winners:
        return decisions

    inserted = await _write_placements(uow, winners, now)
    reservations: dict[str, list[ReservationRecord]] = {}
    for r in inserted:
        reservations.setdefault(r["order_id"], []).append(
            ReservationRecord(
                id=r["id"],
                line_no=r["line_no"],
                sku=r["sku"],
                location=r["location"],
                quantity=r["quantity"],
                status=ReservationStatus.RESERVED,
                expires_at=r["expires_at"],
            )
        )
    for d in winners:
        d.created = True
        d.order = _new_order(d.req, d.digest, now, reservations[d.req.id])
        uow.events.order(d.req.id, "order.placed", record=d.order)
    return decisions


def _new_order(
    req: PlaceOrder, digest: str, now: datetime, held: list[ReservationRecord]
) -> OrderRecord:
    """The order just inserted, built from what was written (no second read)."""
    return OrderRecord(
        id=req.id,
        status=OrderStatus.PENDING,
        channel=req.channel,
        preferred_locations=list(req.preferred_locations),
        allow_split=req.allow_split,
        reservation_ttl_seconds=req.reservation_ttl_seconds,
        total_amount=req.total_amount,
        currency=req.currency,
        payment_provider=None,
        payment_id=None,
        payment_amount=None,
        payment_currency=None,
        paid_at=None,
        request_hash=digest,
        cancel_reason=None,
        created_at=now,
        updated_at=now,
        deleted_at=None,
        lines=[(i, sku, q) for i, (sku, q) in enumerate(req.lines, 1)],
        reservations=held,
    )


async def _fresh(uow: UnitOfWork, order_id: str) -> OrderRecord:
    """The order as this transaction leaves it: read after the use case's last write, and
    given to the outbox so that its events carry it without reading it again."""
    found = await load_order(uow.conn, order_id)
    assert found is not None
    uow.events.known(found)
    return found


async def place_orders(
    backends: Backends, requests: Sequence[PlaceOrder], actor: str
) -> list[Placed | StockguardError]:
    """Place many orders in one transaction (group commit); each one is all-or-nothing
    and decided in arrival order. Returns, per request, the order or why it was refused."""

    async def body(uow: UnitOfWork) -> list[_Decision]:
        return await _place(uow, requests)

    # The same new id placed concurrently is a unique violation: run() runs it again,
    # and then it is "existing".
    decisions = await run(backends, actor, body, operation="place_order", answers=False)
    return [_outcome(d) for d in decisions]


async def decide_orders(
    uow: UnitOfWork, requests: Sequence[PlaceOrder]
) -> list[Placed | StockguardError]:
    """:func:`place_orders` inside the caller's transaction (the HTTP batcher's)."""
    return [_outcome(d) for d in await _place(uow, requests)]


def _outcome(d: _Decision) -> Placed | StockguardError:
    if d.error is not None:
        return d.error
    assert d.order is not None
    return Placed(d.order, created=d.created)


async def place_order(backends: Backends, request: PlaceOrder, actor: str) -> Placed:
    """Place one order; a refusal is raised (inside the transaction: nothing changed)."""

    async def body(uow: UnitOfWork) -> Placed:
        (decision,) = await _place(uow, [request])
        outcome = _outcome(decision)
        if isinstance(outcome, StockguardError):
            raise outcome
        return outcome

    return await run(backends, actor, body, operation="place_order")


# ---------------------------------------------------------------- reading


async def get_order(backends: Backends, order_id: str) -> OrderRecord:
    async with backends.pool.acquire() as conn:
        order = await load_order(conn, order_id)
    if order is None or order.deleted_at is not None:
        raise NotFound(f"order {order_id} not found")
    return order


async def _locked(uow: UnitOfWork, order_id: str) -> OrderRecord:
    order = await load_order(uow.conn, order_id, lock=True)
    if order is None or order.deleted_at is not None:
        raise NotFound(f"order {order_id} not found")
    return order


async def set_order_status(
    uow: UnitOfWork, order: OrderRecord, status: OrderStatus, **extra: object
) -> None:
    sets = ["status = $2", "updated_at = now()"]
    args: list[object] = [order.id, status.value]
    for column, value in extra.items():
        args.append(value)
        sets.append(f"{column} = ${len(args)}")
    await uow.conn.execute(f"UPDATE orders SET {', '.join(sets)} WHERE id = $1", *args)
    announced = STATUS_EVENTS.get(status)
    if announced is not None and order.status != status:
        reason = extra.get("cancel_reason")
        uow.events.order(order.id, announced, reason if isinstance(reason, str) else None)


# The status changes announced as events (API.md "Outgoing events"); processing is not.
STATUS_EVENTS: dict[OrderStatus, str] = {
    OrderStatus.PAID: "order.paid",
    OrderStatus.NEEDS_REVIEW: "order.needs_review",
    OrderStatus.CANCELLED: "order.cancelled",
    OrderStatus.SHIPPED: "order.shipped",
    OrderStatus.DELIVERED: "order.delivered",
}


# ---------------------------------------------------------------- restoring


# Which reservations each move takes, as literal SQL so the partial indexes apply.
_HELD = "status IN ('reserved', 'committed')"
_COMMITTED = "status = 'committed'"
OVERDUE = "status = 'reserved' AND expires_at <= now()"


async def move_reservations(
    uow: UnitOfWork,
    order_id: str,
    which: str,
    to: ReservationStatus,
    reason: MovementReason,
    *,
    shipped: bool = False,
) -> list[asyncpg.Record]:
    """Move the order's reservations matching ``which`` to ``to`` and take their units out
    of ``reserved`` (and of ``on_hand`` when ``shipped``), with the ledger. The status in
    ``which`` is the guard: a reservation is moved, and its units given back, only once."""
    return await move_reservations_of(uow, [order_id], which, to, reason, shipped=shipped)


async def move_reservations_of(
    uow: UnitOfWork,
    order_ids: Sequence[str],
    which: str,
    to: ReservationStatus,
    reason: MovementReason,
    *,
    shipped: bool = False,
) -> list[asyncpg.Record]:
    """:func:`move_reservations` for several orders (locked by the caller) at once."""
    rows: list[asyncpg.Record] = await uow.conn.fetch(
        f"UPDATE reservations SET status = $2, updated_at = now() "
        f"WHERE order_id = ANY($1::text[]) AND {which} "
        f"RETURNING order_id, id, sku, location, quantity",
        list(order_ids),
        to.value,
    )
    if rows:
        await uow.levels.lock({r["sku"] for r in rows})
        await uow.levels.apply(
            [
                Delta(
                    r["sku"],
                    r["location"],
                    -r["quantity"] if shipped else 0,
                    -r["quantity"],
                    reason.value,
                    r["order_id"],
                    r["id"],
                )
                for r in rows
            ]
        )
    return rows


async def restore(uow: UnitOfWork, order: OrderRecord, via: str) -> int:
    """Give back everything the order still holds: exactly once, by the status guard."""
    return await restore_all(uow, [order.id], via)


async def restore_all(uow: UnitOfWork, order_ids: Sequence[str], via: str) -> int:
    """:func:`restore` for several orders (locked by the caller); returns the units."""
    released = await move_reservations_of(
        uow, order_ids, _HELD, ReservationStatus.RELEASED, MovementReason.RELEASE
    )
    if not released:
        return 0
    entries, total = _restored(order_ids, released, via)
    await insert_logs(uow.conn, uow.actor, entries)
    uow.restored[via] += total
    return total


def _restored(
    order_ids: Sequence[str], released: Sequence[asyncpg.Record], via: str
) -> tuple[list[LogEntry], int]:
    """The logs of reservations given back (RELEASED and STOCK_RESTORED per order, in the
    orders' order) and how many units came back."""
    held: dict[str, tuple[list[int], dict[str, int]]] = {}
    for r in released:
        ids, units = held.setdefault(r["order_id"], ([], {}))
        ids.append(r["id"])
        units[r["sku"]] = units.get(r["sku"], 0) + r["quantity"]
    entries: list[LogEntry] = []
    for order_id in order_ids:
        if order_id in held:
            ids, units = held[order_id]
            restored = {"via": via, "units": units}
            entries.append(LogEntry(order_id, LogAction.RELEASED, ids, context={"via": via}))
            entries.append(LogEntry(order_id, LogAction.STOCK_RESTORED, ids, context=restored))
    return entries, sum(int(r["quantity"]) for r in released)


# Written with the levels' update and its ledger (LevelWriter.apply's ``also``): the logs
# of what came back and the orders' new status, one round trip while the levels are locked.
_CANCEL_ALSO = f"""
, logs AS (
    INSERT INTO order_inventory_logs (order_id, actor, reservation_ids, action, context)
    SELECT e.order_id, {APPLY_ACTOR},
           ARRAY(SELECT jsonb_array_elements_text(e.ids::jsonb)::bigint), e.action, e.context
    FROM unnest(${ALSO_FROM}::text[], ${ALSO_FROM + 1}::text[], ${ALSO_FROM + 2}::text[],
                ${ALSO_FROM + 3}::jsonb[])
         WITH ORDINALITY AS e(order_id, ids, action, context, n)
    ORDER BY e.n
), cancelled AS (
    UPDATE orders o SET status = 'cancelled', updated_at = now(), cancel_reason = d.reason
    FROM unnest(${ALSO_FROM + 4}::text[], ${ALSO_FROM + 5}::text[]) AS d(id, reason)
    WHERE o.id = d.id
)"""


@dataclass(frozen=True, slots=True)
class CancelOrder:
    id: str
    reason: str | None = None


async def cancel_order(
    backends: Backends, order_id: str, actor: str, reason: str | None = None
) -> OrderRecord:
    """Cancel and restore; cancelling a cancelled order changes nothing."""

    async def body(uow: UnitOfWork) -> OrderRecord:
        (outcome,) = await decide_cancels(uow, [CancelOrder(order_id, reason)])
        if isinstance(outcome, StockguardError):
            raise outcome
        return outcome

    return await run(backends, actor, body, operation="cancel_order")


async def decide_cancels(
    uow: UnitOfWork, requests: Sequence[CancelOrder]
) -> list[OrderRecord | StockguardError]:
    """Cancel these orders (distinct ids) in the caller's transaction, each on its own:
    the order as it is afterwards, or why it was not cancelled (nothing changed for it).
    A cancelled order is answered as it is."""
    ids = sorted({r.id for r in requests})
    # Every use case on an order takes the order's row lock before any other (several
    # orders: in id order); the read that follows sees everything committed before it.
    # Only the orders locked here are read: one committed after the lock statement (a
    # placement still in flight when its cancel arrived) is not found, as it was not
    # there when this transaction looked.
    locked = await uow.conn.fetch(
        "SELECT id FROM orders WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", ids
    )
    held = [r["id"] for r in locked]
    found = {o.id: o for o in await find_orders(uow.conn, "WHERE o.id = ANY($1::text[])", held)}
    outcomes: list[OrderRecord | StockguardError | None] = []  # None: being cancelled
    cancelling: list[CancelOrder] = []
    for r in requests:
        order = found.get(r.id)
        if order is None or order.deleted_at is not None:
            outcomes.append(NotFound(f"order {r.id} not found"))
        elif order.status == OrderStatus.CANCELLED:
            outcomes.append(order)
        elif order.status not in CANCELLABLE:
            outcomes.append(InvalidTransition(order.status.value, OrderStatus.CANCELLED.value))
        else:
            outcomes.append(None)
            cancelling.append(r)
    changing = [r.id for r in cancelling]
    if not changing:
        return [o for o in outcomes if o is not None]
    # restore_all and the status update, with every write after the levels' lock in one
    # statement (the status guard gives each unit back once).
    released: list[asyncpg.Record] = await uow.conn.fetch(
        f"UPDATE reservations SET status = $2, updated_at = now() "
        f"WHERE order_id = ANY($1::text[]) AND {_HELD} "
        f"RETURNING order_id, id, sku, location, quantity",
        changing,
        ReservationStatus.RELEASED.value,
    )
    if released:
        await uow.levels.lock({r["sku"] for r in released})
    entries, units = _restored(changing, released, "cancel")
    await uow.levels.apply(
        [
            Delta(
                r["sku"],
                r["location"],
                0,
                -r["quantity"],
                MovementReason.RELEASE.value,
                r["order_id"],
                r["id"],
            )
            for r in released
        ],
        also=_CANCEL_ALSO,
        also_args=[
            [e.order_id for e in entries],
            [orjson.dumps(list(e.reservation_ids)).decode() for e in entries],
            [e.action.value for e in entries],
            [e.context for e in entries],
            changing,
            [r.reason for r in cancelling],
        ],
    )
    if units:
        uow.restored["cancel"] += units
    for r in cancelling:
        uow.events.order(r.id, STATUS_EVENTS[OrderStatus.CANCELLED], r.reason)
    after = {o.id: o for o in await find_orders(uow.conn, "WHERE o.id = ANY($1::text[])", changing)}
    for order in after.values():
        uow.events.known(order)
    return [after[r.id] if o is None else o for r, o in zip(requests, outcomes, strict=True)]


async def delete_order(backends: Backends, order_id: str, actor: str) -> None:
    """Soft-delete; restore what is still held unless the order was cancelled already."""

    async def body(uow: UnitOfWork) -> None:
        order = await _locked(uow, order_id)
        if order.status in DELETE_BLOCKED:
            raise OrderNotDeletable(f"a {order.status.value} order cannot be deleted")
        if order.status != OrderStatus.CANCELLED:
            await restore(uow, order, via="delete")
            uow.events.order(order_id, "order.cancelled", "deleted")
        await uow.conn.execute(
            "UPDATE orders SET deleted_at = now(), updated_at = now(), status = 'cancelled', "
            "cancel_reason = coalesce(cancel_reason, 'deleted') WHERE id = $1",
            order_id,
        )
        uow.events.order(order_id, "order.deleted")

    await run(backends, actor, body, operation="delete_order")


# ---------------------------------------------------------------- fulfilment


def _require_committed(order: OrderRecord, target: OrderStatus) -> None:
    """A paid order moves on only once its stock is committed: until then it is the
    recovery worker's, and an order moved past ``paid`` would be out of its sight."""
    if not order.fully_committed:
        raise InvalidTransition(
            order.status.value,
            target.value,
            "the order's stock is not fully committed; recover it first",
        )


async def _fulfil(uow: UnitOfWork, order: OrderRecord) -> None:
    _require_committed(order, OrderStatus.SHIPPED)
    shipped = await move_reservations(
        uow,
        order.id,
        _COMMITTED,
        ReservationStatus.FULFILLED,
        MovementReason.FULFIL,
        shipped=True,
    )
    await insert_logs(
        uow.conn, uow.actor, [LogEntry(order.id, LogAction.FULFILLED, [r["id"] for r in shipped])]
    )


async def set_status(
    backends: Backends, order_id: str, target: OrderStatus, actor: str
) -> OrderRecord:
    """PATCH: processing, shipped (fulfil), delivered; cancelled goes to cancel_order."""
    if target == OrderStatus.CANCELLED:
        return await cancel_order(backends, order_id, actor)

    async def body(uow: UnitOfWork) -> OrderRecord:
        order = await _locked(uow, order_id)
        if not check_patch_transition(order.status, target):
            return order
        if target == OrderStatus.PROCESSING:
            _require_committed(order, target)
        if target == OrderStatus.SHIPPED:
            await _fulfil(uow, order)
        await set_order_status(uow, order, target)
        await insert_logs(
            uow.conn,
            uow.actor,
            [
                LogEntry(
                    order.id,
                    LogAction.STATUS_CHANGED,
                    context={"from": order.status.value, "to": target.value},
                )
            ],
        )
        return await _fresh(uow, order_id)

    return await run(backends, actor, body, operation=f"set_status_{target.value}")


# ---------------------------------------------------------------- paying


async def rereserve_missing(uow: UnitOfWork, order: OrderRecord) -> OutOfStock | list[int]:
    """Reserve again what the order's lines no longer hold (expired or released), all or
    nothing. Returns the new reservation ids, or the shortage."""
    held = order.held_by_line()
    missing = [Line(n, sku, q - held.get(n, 0)) for n, sku, q in order.lines if held.get(n, 0) < q]
    if not missing:
        return []
    links = await _channel_links(uow.conn, {order.channel} if order.channel else set())
    levels = await uow.levels.lock({ln.sku for ln in missing})
    (result,) = await _reserve(uow, [(order, missing)], levels, links)
    if isinstance(result, OutOfStock):
        return result
    now: datetime = await uow.conn.fetchval("SELECT now()")
    expires = now + timedelta(seconds=order.reservation_ttl_seconds)
    inserted = await _insert_reservations(
        uow, [(order.id, a, expires) for a in result], now, MovementReason.RESERVE
    )
    ids = [r["id"] for r in inserted]
    await insert_logs(
        uow.conn,
        uow.actor,
        [LogEntry(order.id, LogAction.RESERVED, ids, context={"rereserved": True})],
    )
    return ids


async def commit_reserved(uow: UnitOfWork, order: OrderRecord) -> list[int]:
    """reserved -> committed for the order (no level changes: the units are held already)."""
    rows = await uow.conn.fetch(
        "UPDATE reservations SET status = 'committed', updated_at = now() "
        "WHERE order_id = $1 AND status = 'reserved' RETURNING id",
        order.id,
    )
    ids = [r["id"] for r in rows]
    if ids:
        await insert_logs(uow.conn, uow.actor, [LogEntry(order.id, LogAction.COMMITTED, ids)])
    return ids


def _amount_mismatch(order: OrderRecord, proof: PaymentProof) -> str | None:
    if order.total_amount is not None and proof.amount not in (None, order.total_amount):
        return f"paid {proof.amount}, order total is {order.total_amount}"
    if order.currency and proof.currency and proof.currency.upper() != order.currency:
        return f"paid in {proof.currency.upper()}, order currency is {order.currency}"
    return None


async def pay(uow: UnitOfWork, order_id: str, proof: PaymentProof) -> OrderRecord:
    """Record payment proof and commit the order's stock, inside the caller's transaction.

    Idempotent per payment id. A different payment id for an order already paid is a
    possible double charge: ``needs_review`` with ``INCONSISTENCY_DETECTED``. Expired lines
    (late payment) are reserved again first, all or nothing; when that is impossible the
    order goes to ``needs_review`` with ``RECOVERY_FAILED`` and nothing is released.
    """
    order = await _locked(uow, order_id)
    if order.status == OrderStatus.CANCELLED:
        raise InvalidTransition(order.status.value, OrderStatus.PAID.value)
    if order.payment_id is not None:
        if (order.payment_provider, order.payment_id) == (proof.provider, proof.payment_id):
            return order
        await log_inconsistency(
            uow.conn,
            uow.actor,
            order.id,
            "SECOND_PAYMENT",
            "a different payment for an order already paid: possible double charge",
            recorded=[order.payment_provider, order.payment_id],
            received=[proof.provider, proof.payment_id],
            provider=proof.provider,
            payment_id=proof.payment_id,
        )
        if order.status == OrderStatus.PAID:
            await set_order_status(uow, order, OrderStatus.NEEDS_REVIEW)
        return await _fresh(uow, order_id)
    if order.status != OrderStatus.PENDING:
        raise InvalidTransition(order.status.value, OrderStatus.PAID.value)
    paid_other = await uow.conn.fetchval(
        "SELECT id FROM orders WHERE payment_provider = $1 AND payment_id = $2",
        proof.provider,
        proof.payment_id,
    )
    if paid_other is not None:
        raise PaymentReused(order.id, str(paid_other), proof.provider, proof.payment_id)
    await record_payment(uow, order.id, proof)
    mismatch = _amount_mismatch(order, proof)
    if mismatch:
        await log_inconsistency(
            uow.conn,
            uow.actor,
            order.id,
            "AMOUNT_MISMATCH",
            mismatch,
            provider=proof.provider,
            payment_id=proof.payment_id,
        )
        await set_order_status(uow, order, OrderStatus.NEEDS_REVIEW)
        return await _fresh(uow, order_id)
    rereserved = await rereserve_missing(uow, order)
    if isinstance(rereserved, OutOfStock):
        await insert_logs(
            uow.conn,
            uow.actor,
            [
                LogEntry(
                    order.id,
                    LogAction.RECOVERY_FAILED,
                    [r.id for r in order.reservations if r.status == ReservationStatus.RESERVED],
                    error_reason="RESERVATION_EXPIRED_OR_NOT_FOUND",
                    context={
                        "detail": "late payment: expired lines could not be reserved again",
                        "shortages": rereserved.extra["shortages"],
                    },
                )
            ],
        )
        await set_order_status(uow, order, OrderStatus.NEEDS_REVIEW)
        return await _fresh(uow, order_id)
    await commit_reserved(uow, order)
    await set_order_status(uow, order, OrderStatus.PAID)
    return await _fresh(uow, order_id)


@dataclass(frozen=True, slots=True)
class PayOrder:
    id: str
    proof: PaymentProof


# The plain payments of a batch in one statement: each order's proof and status, its
# reservations reserved -> committed (no level changes: the units are held already) and
# one COMMITTED log per order. The WHERE is the guard: only a pending order without a
# payment is paid (the caller holds the orders' locks and checked; a miss is a bug).
_PAY_SQL = """
WITH paid AS (
    UPDATE orders o
    SET payment_provider = d.provider, payment_id = d.payment_id, payment_amount = d.amount,
        payment_currency = d.currency, paid_at = now(), updated_at = now(), status = 'paid'
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
         AS d(id, provider, payment_id, amount, currency)
    WHERE o.id = d.id AND o.status = 'pending' AND o.payment_id IS NULL
    RETURNING o.id
), committed AS (
    UPDATE reservations SET status = 'committed', updated_at = now()
    WHERE order_id IN (SELECT id FROM paid) AND status = 'reserved'
    RETURNING order_id, id
), logs AS (
    INSERT INTO order_inventory_logs (order_id, actor, reservation_ids, action)
    SELECT c.order_id, $6, array_agg(c.id ORDER BY c.id), 'COMMITTED'
    FROM committed c GROUP BY c.order_id ORDER BY c.order_id
)
SELECT count(*) FROM paid
"""

# The payments already recorded with any of these proofs (the unique index answers).
_PAID_WITH_SQL = """
SELECT o.id, o.payment_provider, o.payment_id
FROM unnest($1::text[], $2::text[]) AS p(provider, payment_id)
JOIN orders o ON o.payment_provider = p.provider AND o.payment_id = p.payment_id
"""


def _plain_payment(order: OrderRecord, proof: PaymentProof) -> bool:
    """A pending order paid in full for its total with every line held: what
    :func:`pay` does to it is the set-based write of :func:`decide_payments`."""
    held = order.held_by_line()
    return _amount_mismatch(order, proof) is None and all(
        held.get(n, 0) >= q for n, _sku, q in order.lines
    )


async def decide_payments(
    uow: UnitOfWork, requests: Sequence[PayOrder]
) -> list[OrderRecord | StockguardError]:
    """:func:`pay` for these orders (distinct ids) in the caller's transaction, each on
    its own and in arrival order: the order as it is afterwards, or why it was not paid
    (nothing changed for it). The plain payments (see :func:`_plain_payment`) are one
    statement together; the rest (a second payment, an amount mismatch, a late payment
    with lines to reserve again) go through :func:`pay` one by one, each in a savepoint so
    that a refusal keeps nothing of it."""
    ids = sorted({r.id for r in requests})
    # Orders' row locks first, in id order, as every use case takes them; then one read.
    locked = await uow.conn.fetch(
        "SELECT id FROM orders WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", ids
    )
    held = [r["id"] for r in locked]
    found = {o.id: o for o in await find_orders(uow.conn, "WHERE o.id = ANY($1::text[])", held)}
    proofs = [r.proof for r in requests]
    taken: dict[tuple[str, str], str] = {
        (r["payment_provider"], r["payment_id"]): r["id"]
        for r in await uow.conn.fetch(
            _PAID_WITH_SQL, [p.provider for p in proofs], [p.payment_id for p in proofs]
        )
    }
    outcomes: list[OrderRecord | StockguardError | None] = []  # None: decided below
    plain: list[int] = []
    one_by_one: list[int] = []
    for i, r in enumerate(requests):
        order, proof = found.get(r.id), r.proof
        outcome: OrderRecord | StockguardError | None = None
        if not proof.provider or not proof.payment_id:
            outcome = ValidationFailed("payment proof needs a provider and a payment id")
        elif order is None or order.deleted_at is not None:
            outcome = NotFound(f"order {r.id} not found")
        elif order.status == OrderStatus.CANCELLED:
            outcome = InvalidTransition(order.status.value, OrderStatus.PAID.value)
        elif order.payment_id is not None:
            same = (order.payment_provider, order.payment_id) == (proof.provider, proof.payment_id)
            if same:
                outcome = order
            else:
                one_by_one.append(i)  # a second payment: logged for review
        elif order.status != OrderStatus.PENDING:
            outcome = InvalidTransition(order.status.value, OrderStatus.PAID.value)
        elif (other := taken.get((proof.provider, proof.payment_id))) is not None:
            outcome = PaymentReused(order.id, other, proof.provider, proof.payment_id)
        else:
            # This order takes the proof: a later request of the batch with it is refused.
            taken[(proof.provider, proof.payment_id)] = order.id
            if _plain_payment(order, proof):
                plain.append(i)
            else:
                one_by_one.append(i)
        outcomes.append(outcome)
    paying = [requests[i] for i in plain]
    if paying:
        paid = await uow.conn.fetchval(
            _PAY_SQL,
            [r.id for r in paying],
            [r.proof.provider for r in paying],
            [r.proof.payment_id for r in paying],
            [r.proof.amount for r in paying],
            [r.proof.currency.upper() if r.proof.currency else None for r in paying],
            uow.actor,
        )
        if paid != len(paying):
            raise RuntimeError(f"paid {paid} of {len(paying)} locked pending orders")
        for r in paying:
            uow.events.order(r.id, STATUS_EVENTS[OrderStatus.PAID])
    for i in one_by_one:
        try:
            async with uow.conn.transaction():  # a savepoint
                outcomes[i] = await pay(uow, requests[i].id, requests[i].proof)
        except StockguardError as exc:
            outcomes[i] = exc
    if paying:
        rows = await find_orders(uow.conn, "WHERE o.id = ANY($1::text[])", [r.id for r in paying])
        after = {o.id: o for o in rows}
        for i in plain:
            outcomes[i] = after[requests[i].id]
            uow.events.known(after[requests[i].id])
    decided = [o for o in outcomes if o is not None]
    assert len(decided) == len(requests)
    return decided


async def record_payment(uow: UnitOfWork, order_id: str, proof: PaymentProof) -> None:
    await uow.conn.execute(
        "UPDATE orders SET payment_provider = $2, payment_id = $3, payment_amount = $4, "
        "payment_currency = $5, paid_at = now(), updated_at = now() WHERE id = $1",
        order_id,
        proof.provider,
        proof.payment_id,
        proof.amount,
        proof.currency.upper() if proof.currency else None,
    )


async def pay_order(
    backends: Backends, order_id: str, proof: PaymentProof, actor: str
) -> OrderRecord:
    """Pay in one transaction. If it fails for a reason other than the order's own state
    (a database error or timeout), the payment is still recorded in a transaction of its
    own, the order is marked ``paid`` with its stock uncommitted and the failure logged,
    so the recovery worker commits it later; stock is never released."""
    if not proof.provider or not proof.payment_id:
        raise ValidationFailed("payment proof needs a provider and a payment id")

    async def body(uow: UnitOfWork) -> OrderRecord:
        (outcome,) = await decide_payments(uow, [PayOrder(order_id, proof)])
        if isinstance(outcome, StockguardError):
            raise outcome
        return outcome

    try:
        return await run(backends, actor, body, operation="pay_order")
    except (StockguardError, asyncio.CancelledError):
        raise
    except COMMIT_FAILURES as exc:
        await record_unpaid_commit(backends, order_id, proof, actor, exc)
        raise


# What keeps a payment's stock from being committed without being the order's fault.
COMMIT_FAILURES: tuple[type[Exception], ...] = (
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
)


async def record_unpaid_commit(
    backends: Backends, order_id: str, proof: PaymentProof, actor: str, exc: BaseException
) -> None:
    """The payment happened even though committing its stock failed: keep the proof, and
    log the failure only when the stock is in fact uncommitted (a COMMIT whose answer was
    lost may have gone through)."""
    from stockguard.service.failsafe import write_failure_log

    async def body(uow: UnitOfWork) -> str:
        order = await _locked(uow, order_id)
        if order.payment_id is not None:
            same = (order.payment_provider, order.payment_id) == (proof.provider, proof.payment_id)
            if same and order.fully_committed:
                return "committed"  # the failed call's COMMIT went through after all
            return "recorded earlier"
        if order.status != OrderStatus.PENDING:
            return f"order is {order.status.value}"
        await record_payment(uow, order_id, proof)
        await set_order_status(uow, order, OrderStatus.PAID)
        return "recorded"

    try:
        state = await run(backends, actor, body, operation="record_payment", answers=False)
    except Exception as failure:
        log.error(
            "payment_not_recorded",
            order_id=order_id,
            provider=proof.provider,
            payment_id=proof.payment_id,
            error=type(failure).__name__,
        )
        state = "not recorded"
    if state == "committed":
        log.info("payment_commit_outcome_was_lost", order_id=order_id)
        return
    detail = (
        "payment received but its stock could not be committed; the recovery worker will commit it"
        if state in ("recorded", "recorded earlier")
        else f"payment received but not recorded ({state}): record it again (the "
        "provider's retry, or POST .../payments) or refund it"
    )
    entry = LogEntry(
        order_id,
        LogAction.INCONSISTENCY_DETECTED,
        error_reason=f"COMMIT_FAILED: {type(exc).__name__}",
        context={"detail": detail, "provider": proof.provider, "payment_id": proof.payment_id},
    )
    await write_failure_log(backends.pool, actor, [entry])
