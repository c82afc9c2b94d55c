"""The one place that changes stock levels.

Every change of ``on_hand`` or ``reserved`` goes through :class:`LevelWriter`: it locks
levels in one fixed order (sku, location), applies summed deltas with a guarded set-based
UPDATE (arithmetic in SQL, never read-modify-write in Python), writes one ledger row per
delta and remembers which SKUs it touched so the cache can be synced before COMMIT.
Every lock takes *all* levels of a SKU, so one SKU's changes are serialised and its
cached total is computed under lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg

from stockguard.store.db import Conn

__all__ = ["Delta", "LevelGuardViolated", "LevelRow", "LevelWriter"]


@dataclass(frozen=True, slots=True)
class LevelRow:
    sku: str
    location: str
    on_hand: int
    reserved: int
    location_priority: int
    active: bool

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


@dataclass(frozen=True, slots=True)
class Delta:
    sku: str
    location: str
    on_hand: int
    reserved: int
    reason: str
    order_id: str | None = None
    reservation_id: int | None = None
    reference: str | None = None


class LevelGuardViolated(RuntimeError):
    """A guarded update matched fewer levels than it should: a bug, never a client error."""


_LOCK_SQL = """
SELECT l.sku, l.location, l.on_hand, l.reserved,
       loc.priority AS location_priority, loc.active
FROM inventory_levels l
JOIN locations loc ON loc.code = l.location
WHERE l.sku = ANY($1::text[])
ORDER BY l.sku, l.location
FOR UPDATE OF l
"""

_APPLY_SQL = """
UPDATE inventory_levels l
SET on_hand = l.on_hand + d.on_hand,
    reserved = l.reserved + d.reserved,
    updated_at = now()
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
     AS d(sku, location, on_hand, reserved)
WHERE l.sku = d.sku AND l.location = d.location
  AND l.reserved + d.reserved >= 0
  AND l.on_hand + d.on_hand >= l.reserved + d.reserved
  AND l.sku = ANY($5::text[])
"""

_LEDGER_SQL = """
INSERT INTO stock_movements
    (sku, location, on_hand_delta, reserved_delta, reason, order_id, reservation_id, actor,
     reference)
SELECT d.sku, d.location, d.on_hand, d.reserved, d.reason, d.order_id, d.reservation_id, $9,
       d.reference
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
            $7::bigint[], $8::text[])
     AS d(sku, location, on_hand, reserved, reason, order_id, reservation_id, reference)
"""


def _row(r: asyncpg.Record) -> LevelRow:
    return LevelRow(
        sku=r["sku"],
        location=r["location"],
        on_hand=r["on_hand"],
        reserved=r["reserved"],
        location_priority=r["location_priority"],
        active=r["active"],
    )


class LevelWriter:
    """Level changes of one transaction. Lock first, then apply."""

    def __init__(self, conn: Conn, actor: str) -> None:
        self.conn = conn
        self.actor = actor
        self.touched: set[str] = set()

    async def lock(self, skus: Iterable[str]) -> dict[tuple[str, str], LevelRow]:
        """Lock every level of these SKUs, in (sku, location) order, so no two
        transactions can wait on each other (the only lock order for levels)."""
        wanted = sorted(set(skus))
        if not wanted:
            return {}
        rows = await self.conn.fetch(_LOCK_SQL, wanted)
        return {(r["sku"], r["location"]): _row(r) for r in rows}

    async def peek(self, skus: Iterable[str]) -> dict[tuple[str, str], LevelRow]:
        """The same rows as :meth:`lock`, committed values, without locking: for decisions
        that can only refuse (a refusal on a snapshot is as if it came just before)."""
        wanted = sorted(set(skus))
        if not wanted:
            return {}
        rows = await self.conn.fetch(_LOCK_SQL.replace("FOR UPDATE OF l", ""), wanted)
        return {(r["sku"], r["location"]): _row(r) for r in rows}

    async def ensure(self, sku: str, location: str) -> None:
        """Create an empty level (nothing to record in the ledger: all zeros). A new level
        is a new entry in the SKU's cached locations, so the SKU counts as touched."""
        created = await self.conn.execute(
            "INSERT INTO inventory_levels (sku, location) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            sku,
            location,
        )
        if created.endswith(" 1"):
            self.touched.add(sku)

    async def apply(self, deltas: Sequence[Delta]) -> None:
        """Apply deltas to levels this transaction has locked, and write the ledger.

        Raises LevelGuardViolated if any level would leave 0 <= reserved <= on_hand; the
        caller's transaction then rolls back, so nothing is half-applied.
        """
        deltas = [d for d in deltas if d.on_hand or d.reserved]
        if not deltas:
            return
        summed: dict[tuple[str, str], list[int]] = {}
        for d in deltas:
            acc = summed.setdefault((d.sku, d.location), [0, 0])
            acc[0] += d.on_hand
            acc[1] += d.reserved
        keys = sorted(summed)
        skus = sorted({k[0] for k in keys})
        result = await self.conn.execute(
            _APPLY_SQL,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [summed[k][0] for k in keys],
            [summed[k][1] for k in keys],
            skus,
        )
        updated = int(result.rsplit(" ", 1)[-1])
        if updated != len(keys):
            raise LevelGuardViolated(
                f"guarded level update matched {updated} of {len(keys)} levels"
            )
        await self.conn.execute(
            _LEDGER_SQL,
            [d.sku for d in deltas],
            [d.location for d in deltas],
            [d.on_hand for d in deltas],
            [d.reserved for d in deltas],
            [d.reason for d in deltas],
            [d.order_id for d in deltas],
            [d.reservation_id for d in deltas],
            [d.reference for d in deltas],
            self.actor,
        )
        self.touched.update(skus)

    async def touch_all_at(self, skus: Iterable[str]) -> None:
        """Mark SKUs whose cached totals change without a level change (a location
        switched on or off) so the cache is rewritten before COMMIT."""
        wanted = sorted(set(skus))
        await self.lock(wanted)
        self.touched.update(wanted)
