"""Explain a number: a SKU's levels rebuilt from the ledger as of a time, the movements
that made them, and whether the ledger still adds up to the levels now.

Read-only, in one REPEATABLE READ snapshot so the rebuilt values, the levels and the
movements are of the same instant (no lock: it never blocks a write). A movement counts
"as of" its ``created_at`` (the start of the transaction that wrote it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from stockguard.domain.errors import NotFound, ValidationFailed

__all__ = ["Counts", "Explanation", "Mismatch", "explain"]


@dataclass(frozen=True, slots=True)
class Counts:
    on_hand: int = 0
    reserved: int = 0
    unavailable: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.on_hand + other.on_hand,
            self.reserved + other.reserved,
            self.unavailable + other.unavailable,
        )


@dataclass(frozen=True, slots=True)
class Mismatch:
    location: str
    level: Counts
    ledger: Counts


@dataclass(frozen=True, slots=True)
class Explanation:
    sku: str
    location: str | None
    at: datetime  # the time the values are as of (now when none or a future one was asked)
    now: datetime
    levels: dict[str, Counts]  # per location, rebuilt from the ledger as of ``at``
    movements: list[dict[str, Any]]  # newest first, created_at <= at
    mismatches: list[Mismatch] = field(default_factory=list)  # ledger now vs levels now

    @property
    def totals(self) -> Counts:
        total = Counts()
        for counts in self.levels.values():
            total += counts
        return total

    @property
    def consistent(self) -> bool:
        return not self.mismatches


_SUMS = """
SELECT location, sum(on_hand_delta)::bigint AS on_hand, sum(reserved_delta)::bigint AS reserved,
       sum(unavailable_delta)::bigint AS unavailable
FROM stock_movements
WHERE sku = $1 AND ($2::text IS NULL OR location = $2)
  AND ($3::timestamptz IS NULL OR created_at <= $3)
GROUP BY location
"""

_MOVEMENTS = """
SELECT id, location, on_hand_delta, reserved_delta, unavailable_delta, reason, order_id,
       reservation_id, actor, reference, created_at
FROM stock_movements
WHERE sku = $1 AND ($2::text IS NULL OR location = $2)
  AND ($3::timestamptz IS NULL OR created_at <= $3) AND ($4::bigint IS NULL OR id < $4)
ORDER BY id DESC
LIMIT $5
"""


def _counts(rows: list[asyncpg.Record]) -> dict[str, Counts]:
    return {r["location"]: Counts(r["on_hand"], r["reserved"], r["unavailable"]) for r in rows}


async def explain(
    pool: asyncpg.Pool,
    sku: str,
    location: str | None = None,
    at: datetime | None = None,
    limit: int = 50,
    before: int | None = None,
) -> Explanation:
    """The SKU's levels (one location's, or all) as of ``at`` (None or future: now), the
    last ``limit`` movements up to then (older than movement id ``before``: a cursor),
    and the locations where the whole ledger differs from the level now."""
    if not 1 <= limit <= 500:
        raise ValidationFailed("limit must be 1 to 500")
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        found = await conn.fetchrow(
            "SELECT now() AS now, (SELECT 1 FROM skus WHERE code = $1) AS sku, "
            "(SELECT 1 FROM locations WHERE code = $2) AS location",
            sku,
            location,
        )
        assert found is not None
        if found["sku"] is None:
            raise NotFound(f"sku {sku} not found")
        if location is not None and found["location"] is None:
            raise ValidationFailed(f"unknown location {location!r}")
        now: datetime = found["now"]
        as_of = at if at is not None and at < now else None  # None: every movement
        levels = _counts(
            await conn.fetch(
                "SELECT location, on_hand, reserved, unavailable FROM inventory_levels "
                "WHERE sku = $1 AND ($2::text IS NULL OR location = $2)",
                sku,
                location,
            )
        )
        ledger = _counts(await conn.fetch(_SUMS, sku, location, None))
        rebuilt = ledger
        if as_of is not None:
            rebuilt = _counts(await conn.fetch(_SUMS, sku, location, as_of))
        moves = await conn.fetch(_MOVEMENTS, sku, location, as_of, before, limit)
    places = sorted(set(levels) | set(ledger) | ({location} if location else set()))
    mismatches = [
        Mismatch(loc, levels.get(loc, Counts()), ledger.get(loc, Counts()))
        for loc in places
        if levels.get(loc, Counts()) != ledger.get(loc, Counts())
    ]
    return Explanation(
        sku=sku,
        location=location,
        at=as_of or now,
        now=now,
        levels={loc: rebuilt.get(loc, Counts()) for loc in places},
        movements=[dict(r.items()) for r in moves],
        mismatches=mismatches,
    )
