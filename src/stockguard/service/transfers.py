"""Transfers between locations: create (units leave ``from``), receive (units arrive at
``to``, in parts), cancel (what is still in transit goes back to ``from``).

Each public function that writes is one transaction (:func:`stockguard.service.uow.run`).
Lock order: the transfer's row first (``FOR UPDATE``), then the levels of all its SKUs
through ``LevelWriter.lock`` (sorted); every decision is taken under those locks.

Invariant 13 (DESIGN.md §10): per SKU, Σ on_hand + Σ in transit changes only through
adjustments, fulfilment and returns. Every transfer movement is written twice in the
same transaction: in the ledger (reasons ``transfer_out``, ``transfer_in``,
``transfer_cancelled``, the transfer id as ``reference``) and on its line (``received``,
``cancelled``; ``in_transit`` is derived by PostgreSQL), so the two sides always cancel.

A transfer takes only what is on hand and neither reserved nor unavailable: safety stock
is a sales policy of a location, not a hold, so its units may be moved.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from stockguard.domain.errors import (
    Conflict,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    ReceiptExceedsInTransit,
    ValidationFailed,
)
from stockguard.domain.model import MovementReason
from stockguard.render import transfer_json
from stockguard.service.uow import Backends, UnitOfWork, run
from stockguard.store.db import Conn
from stockguard.store.levels import Delta

__all__ = [
    "MAX_LINES",
    "MAX_QUANTITY",
    "CreateTransfer",
    "Receipt",
    "ReceiptRecord",
    "TransferLine",
    "TransferRecord",
    "TransferStatus",
    "Written",
    "cancel_transfer",
    "create_transfer",
    "get_transfer",
    "list_transfers",
    "receive_transfer",
]

MAX_LINES = 500
MAX_QUANTITY = 1_000_000
MAX_NOTE = 500
# Transfer and receipt ids: API.md's [A-Za-z0-9._:-]{1,64}, not only dots (path segments).
_ID = re.compile(r"[A-Za-z0-9._:-]{0,63}[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,63}")


class TransferStatus(StrEnum):
    IN_TRANSIT = "in_transit"
    RECEIVED = "received"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class CreateTransfer:
    id: str
    from_location: str
    to_location: str
    lines: tuple[tuple[str, int], ...]
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    receipt_id: str
    lines: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class TransferLine:
    sku: str
    quantity: int
    received: int
    cancelled: int

    @property
    def in_transit(self) -> int:
        return self.quantity - self.received - self.cancelled


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    receipt_id: str
    lines: tuple[tuple[str, int], ...]
    actor: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TransferRecord:
    id: str
    from_location: str
    to_location: str
    status: TransferStatus
    note: str | None
    request_hash: str
    lines: tuple[TransferLine, ...]
    receipts: tuple[ReceiptRecord, ...]
    actor: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Written:
    """A transfer after a write, and whether this call applied it (201) or found it
    applied already (200)."""

    transfer: TransferRecord
    created: bool


def _check_lines(lines: Sequence[tuple[str, int]]) -> None:
    """Lines are unique per SKU (a SKU listed twice is refused, not summed: a receipt or a
    transfer line names one quantity), 1 to 500 of them, each 1 to 1,000,000 units."""
    if not 1 <= len(lines) <= MAX_LINES:
        raise ValidationFailed(f"lines: 1 to {MAX_LINES} entries")
    seen: set[str] = set()
    for sku, quantity in lines:
        if sku in seen:
            raise ValidationFailed(f"lines: sku {sku} is listed twice")
        seen.add(sku)
        if isinstance(quantity, bool) or not 1 <= quantity <= MAX_QUANTITY:
            raise ValidationFailed(f"lines: quantity of {sku} must be 1 to {MAX_QUANTITY}")


def _check_id(value: str, what: str) -> None:
    if len(value) > 64 or not _ID.fullmatch(value):
        raise ValidationFailed(f"{what}: 1 to 64 characters of A-Z a-z 0-9 . _ : -, not only dots")


def _hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def transfer_hash(req: CreateTransfer) -> str:
    """The content of a transfer: the order of its lines does not matter."""
    return _hash(
        {
            "from": req.from_location,
            "to": req.to_location,
            "lines": sorted([list(line) for line in req.lines]),
            "note": req.note,
        }
    )


def receipt_hash(receipt: Receipt) -> str:
    return _hash({"lines": sorted([list(line) for line in receipt.lines])})


# ---------------------------------------------------------------- reading


_TRANSFER_SQL = """
SELECT t.id, t.from_location, t.to_location, t.status, t.note, t.request_hash, t.actor,
       t.created_at, t.updated_at,
       ARRAY(SELECT ROW(l.sku, l.quantity, l.received, l.cancelled)
             FROM transfer_lines l WHERE l.transfer_id = t.id ORDER BY l.sku) AS lines,
       ARRAY(SELECT ROW(r.receipt_id, r.lines::text, r.actor, r.created_at)
             FROM transfer_receipts r WHERE r.transfer_id = t.id
             ORDER BY r.created_at, r.receipt_id) AS receipts
FROM transfers t
"""


def _record(row: Any) -> TransferRecord:
    return TransferRecord(
        id=row["id"],
        from_location=row["from_location"],
        to_location=row["to_location"],
        status=TransferStatus(row["status"]),
        note=row["note"],
        request_hash=row["request_hash"],
        lines=tuple(TransferLine(s, q, r, c) for s, q, r, c in row["lines"]),
        receipts=tuple(
            ReceiptRecord(rid, tuple((s, q) for s, q in json.loads(lines)), actor, at)
            for rid, lines, actor, at in row["receipts"]
        ),
        actor=row["actor"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def load_transfer(
    conn: Conn, transfer_id: str, *, lock: bool = False
) -> TransferRecord | None:
    """The transfer, its lines and receipts in one statement (one snapshot); ``lock``
    takes the transfer's row first, as every write does."""
    if lock:
        found = await conn.fetchval("SELECT 1 FROM transfers WHERE id = $1 FOR UPDATE", transfer_id)
        if found is None:
            return None
    row = await conn.fetchrow(_TRANSFER_SQL + "WHERE t.id = $1", transfer_id)
    return None if row is None else _record(row)


async def get_transfer(backends: Backends, transfer_id: str) -> TransferRecord:
    async with backends.pool.acquire() as conn:
        found = await load_transfer(conn, transfer_id)
    if found is None:
        raise NotFound(f"transfer {transfer_id} not found")
    return found


async def list_transfers(
    backends: Backends,
    status: TransferStatus | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> list[TransferRecord]:
    """Oldest first, by (created_at, id): a cursor names the last of a page."""
    rows = await backends.pool.fetch(
        _TRANSFER_SQL + "WHERE ($1::text IS NULL OR t.status = $1) "
        "AND ($2::timestamptz IS NULL OR (t.created_at, t.id) > ($2, $3)) "
        "ORDER BY t.created_at, t.id LIMIT $4",
        status.value if status else None,
        after[0] if after else None,
        after[1] if after else "",
        limit,
    )
    return [_record(r) for r in rows]


# ---------------------------------------------------------------- creating


async def _known(conn: Conn, req: CreateTransfer) -> None:
    found = await conn.fetchrow(
        "SELECT ARRAY(SELECT code FROM locations WHERE code = ANY($1::text[])) AS locations, "
        "ARRAY(SELECT code FROM skus WHERE code = ANY($2::text[])) AS skus",
        [req.from_location, req.to_location],
        [sku for sku, _ in req.lines],
    )
    assert found is not None
    for what, code in (("from", req.from_location), ("to", req.to_location)):
        if code not in found["locations"]:
            raise ValidationFailed(f"{what}: unknown location {code!r}")
    unknown = sorted({sku for sku, _ in req.lines} - set(found["skus"]))
    if unknown:
        raise ValidationFailed(f"lines: unknown skus {', '.join(unknown)}")


async def create_transfer(backends: Backends, req: CreateTransfer, actor: str) -> Written:
    """Take the lines' units off ``from``: all or nothing. The same id with the same
    content answers the transfer as it is now; with other content, Conflict."""
    _check_id(req.id, "id")
    _check_lines(req.lines)
    if req.note is not None and len(req.note) > MAX_NOTE:
        raise ValidationFailed(f"note: at most {MAX_NOTE} characters")
    if req.from_location == req.to_location:
        raise ValidationFailed("from and to must be two different locations")
    digest = transfer_hash(req)

    async def body(uow: UnitOfWork) -> Written:
        conn = uow.conn
        existing = await load_transfer(conn, req.id, lock=True)
        if existing is not None:
            if existing.request_hash != digest:
                raise Conflict(f"transfer {req.id} exists with other content")
            return Written(existing, created=False)
        await _known(conn, req)
        skus = sorted(sku for sku, _ in req.lines)
        levels = await uow.levels.lock(skus)
        shortages: list[dict[str, Any]] = []
        for sku, quantity in sorted(req.lines):
            level = levels.get((sku, req.from_location))
            movable = 0 if level is None else level.on_hand - level.reserved - level.unavailable
            if quantity > movable:
                shortages.append({"sku": sku, "requested": quantity, "movable": movable})
        if shortages:
            raise InsufficientStock(
                f"not enough units at {req.from_location} that are neither reserved nor "
                f"unavailable for {', '.join(s['sku'] for s in shortages)}",
                location=req.from_location,
                shortages=shortages,
            )
        # A concurrent create of the same id waits on the levels above, then fails this
        # INSERT on the primary key and runs again (the unit of work retries): it then
        # finds this transfer and compares contents.
        await conn.execute(
            "INSERT INTO transfers (id, from_location, to_location, note, request_hash, actor) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            req.id,
            req.from_location,
            req.to_location,
            req.note,
            digest,
            uow.actor,
        )
        await conn.execute(
            "INSERT INTO transfer_lines (transfer_id, sku, quantity) "
            "SELECT $1, sku, quantity FROM unnest($2::text[], $3::bigint[]) AS t(sku, quantity)",
            req.id,
            skus,
            [dict(req.lines)[sku] for sku in skus],
        )
        await uow.levels.apply(
            [
                Delta(sku, req.from_location, -q, 0, MovementReason.TRANSFER_OUT, reference=req.id)
                for sku, q in sorted(req.lines)
            ]
        )
        created = await load_transfer(conn, req.id)
        assert created is not None
        uow.events.add("transfer.shipped", {"transfer": transfer_json(created)})
        return Written(created, created=True)

    return await run(backends, actor, body, operation="create_transfer")


# ---------------------------------------------------------------- receiving


async def receive_transfer(
    backends: Backends, transfer_id: str, receipt: Receipt, actor: str
) -> Written:
    """Put received units on hand at ``to``; a receipt id is applied once (the same one
    again answers the transfer, with other lines Conflict)."""
    _check_id(receipt.receipt_id, "receipt_id")
    _check_lines(receipt.lines)
    digest = receipt_hash(receipt)

    async def body(uow: UnitOfWork) -> Written:
        conn = uow.conn
        transfer = await load_transfer(conn, transfer_id, lock=True)
        if transfer is None:
            raise NotFound(f"transfer {transfer_id} not found")
        seen = await conn.fetchval(
            "SELECT request_hash FROM transfer_receipts WHERE transfer_id = $1 AND receipt_id = $2",
            transfer_id,
            receipt.receipt_id,
        )
        if seen is not None:
            if seen != digest:
                raise Conflict(
                    f"receipt {receipt.receipt_id} of transfer {transfer_id} exists with "
                    "other lines"
                )
            return Written(transfer, created=False)
        if transfer.status is TransferStatus.CANCELLED:
            raise InvalidTransition(
                transfer.status.value,
                TransferStatus.RECEIVED.value,
                f"transfer {transfer_id} is cancelled: nothing is in transit to receive",
            )
        lines = {ln.sku: ln for ln in transfer.lines}
        unknown = sorted(sku for sku, _ in receipt.lines if sku not in lines)
        if unknown:
            raise ValidationFailed(
                f"lines: transfer {transfer_id} does not move {', '.join(unknown)}"
            )
        over = [
            {"sku": sku, "received": q, "in_transit": lines[sku].in_transit}
            for sku, q in sorted(receipt.lines)
            if q > lines[sku].in_transit
        ]
        if over:
            raise ReceiptExceedsInTransit(
                "more received than is still in transit for "
                + ", ".join(str(o["sku"]) for o in over),
                lines=over,
            )
        skus = sorted(sku for sku, _ in receipt.lines)
        for sku in skus:
            await uow.levels.ensure(sku, transfer.to_location)
        await uow.levels.lock(skus)
        quantities = dict(receipt.lines)
        await conn.execute(
            "UPDATE transfer_lines l SET received = l.received + r.quantity "
            "FROM unnest($2::text[], $3::bigint[]) AS r(sku, quantity) "
            "WHERE l.transfer_id = $1 AND l.sku = r.sku",
            transfer_id,
            skus,
            [quantities[sku] for sku in skus],
        )
        await conn.execute(
            "INSERT INTO transfer_receipts (transfer_id, receipt_id, lines, request_hash, actor) "
            "VALUES ($1, $2, $3, $4, $5)",
            transfer_id,
            receipt.receipt_id,
            [[sku, quantities[sku]] for sku in skus],  # the pool's jsonb codec encodes
            digest,
            uow.actor,
        )
        await uow.levels.apply(
            [
                Delta(
                    sku,
                    transfer.to_location,
                    quantities[sku],
                    0,
                    MovementReason.TRANSFER_IN,
                    reference=transfer_id,
                )
                for sku in skus
            ]
        )
        await conn.execute(
            "UPDATE transfers t SET updated_at = now(), status = CASE WHEN NOT EXISTS "
            "(SELECT 1 FROM transfer_lines l WHERE l.transfer_id = t.id AND l.in_transit > 0) "
            "THEN 'received' ELSE t.status END WHERE t.id = $1",
            transfer_id,
        )
        after = await load_transfer(conn, transfer_id)
        assert after is not None
        uow.events.add("transfer.received", {"transfer": transfer_json(after)})
        return Written(after, created=True)

    return await run(backends, actor, body, operation="receive_transfer")


# ---------------------------------------------------------------- cancelling


async def cancel_transfer(backends: Backends, transfer_id: str, actor: str) -> TransferRecord:
    """Send what is still in transit back to ``from``. A cancelled transfer is answered
    unchanged; a received one cannot be cancelled."""

    async def body(uow: UnitOfWork) -> TransferRecord:
        conn = uow.conn
        transfer = await load_transfer(conn, transfer_id, lock=True)
        if transfer is None:
            raise NotFound(f"transfer {transfer_id} not found")
        if transfer.status is TransferStatus.CANCELLED:
            return transfer
        if transfer.status is TransferStatus.RECEIVED:
            raise InvalidTransition(
                transfer.status.value,
                TransferStatus.CANCELLED.value,
                f"transfer {transfer_id} is received: nothing is in transit to cancel",
            )
        back = [ln for ln in transfer.lines if ln.in_transit > 0]
        await uow.levels.lock(ln.sku for ln in transfer.lines)
        await conn.execute(
            "UPDATE transfer_lines SET cancelled = cancelled + in_transit "
            "WHERE transfer_id = $1 AND in_transit > 0",
            transfer_id,
        )
        await uow.levels.apply(
            [
                Delta(
                    ln.sku,
                    transfer.from_location,
                    ln.in_transit,
                    0,
                    MovementReason.TRANSFER_CANCELLED,
                    reference=transfer_id,
                )
                for ln in back
            ]
        )
        await conn.execute(
            "UPDATE transfers SET status = 'cancelled', updated_at = now() WHERE id = $1",
            transfer_id,
        )
        after = await load_transfer(conn, transfer_id)
        assert after is not None
        uow.events.add("transfer.cancelled", {"transfer": transfer_json(after)})
        return after

    return await run(backends, actor, body, operation="cancel_transfer")
