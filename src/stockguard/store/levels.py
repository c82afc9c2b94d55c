"""The one place that changes stock levels.

Every change of ``on_hand``, ``reserved`` or ``unavailable`` goes through
:class:`LevelWriter`: it locks
levels in one fixed order (sku, location), applies summed deltas with a guarded set-based
UPDATE (arithmetic in SQL, never read-modify-write in Python), writes one ledger row per
delta and remembers which SKUs it touched so the cache can be synced before COMMIT.
Every lock takes *all* levels of a SKU, so one SKU's changes are serialised and its
cached total is computed under lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from stockguard.domain.model import available
from stockguard.store.db import Conn

__all__ = [
    "ALSO_FROM",
    "APPLY_ACTOR",
    "AVAILABLE_SQL",
    "STAMP_SQL",
    "Delta",
    "LevelGuardViolated",
    "LevelRow",
    "LevelWriter",
    "Summed",
    "guarded_update",
    "stamp_cte",
    "summed",
]

# domain.model.available in SQL, over ``inventory_levels l``: the one formula PostgreSQL,
# Redis, the availability reads and the events all use.
AVAILABLE_SQL = "GREATEST(0, l.on_hand - l.reserved - l.unavailable - l.safety_stock)"


def stamp_cte(skus: str) -> str:
    """CTEs giving every level of the SKUs in the text-array parameter ``skus`` one new
    cache version: ``stamped`` returns each level's sku, location, availability, version
    and whether its location is active (what Redis is written from).

    Run it only while holding the locks on every level of these SKUs (see
    ``cache.redis_cache.stamp_and_load``)."""
    return f"""
stamp AS (SELECT nextval('cache_version_seq') AS version),
stamped AS (
    UPDATE inventory_levels l SET version = stamp.version
    FROM stamp, locations loc
    WHERE l.sku = ANY({skus}::text[]) AND loc.code = l.location
    RETURNING l.sku, l.location, {AVAILABLE_SQL} AS available, l.version, loc.active
)"""


# The stamp alone, of the SKUs in $1.
STAMP_SQL = f"WITH {stamp_cte('$1')} SELECT * FROM stamped"


@dataclass(frozen=True, slots=True)
class LevelRow:
    sku: str
    location: str
    on_hand: int
    reserved: int
    location_priority: int
    active: bool
    unavailable: int = 0
    safety_stock: int = 0

    @property
    def available(self) -> int:
        """What a reservation may take: never unavailable or safety units."""
        return available(self.on_hand, self.reserved, self.unavailable, self.safety_stock)


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
    unavailable: int = 0


class LevelGuardViolated(RuntimeError):
    """A guarded update matched fewer levels than it should: a bug, never a client error."""


_LOCK_SQL = """
SELECT l.sku, l.location, l.on_hand, l.reserved, l.unavailable, l.safety_stock,
       loc.priority AS location_priority, loc.active
FROM inventory_levels l
JOIN locations loc ON loc.code = l.location
WHERE l.sku = ANY($1::text[])
ORDER BY l.sku, l.location
FOR UPDATE OF l
"""


def guarded_update(p: int) -> str:
    """The guarded level update, to be a statement's ``WITH changed AS (...)``; its
    parameters, numbered from ``$p``, are :attr:`Summed.args`. A guard that fails matches
    fewer levels than it was given (:meth:`LevelWriter.changed` then raises, and the
    caller's transaction rolls back with everything the statement wrote)."""
    return f"""
    UPDATE inventory_levels l
    SET on_hand = l.on_hand + d.on_hand,
        reserved = l.reserved + d.reserved,
        unavailable = l.unavailable + d.unavailable,
        updated_at = now()
    FROM unnest(${p}::text[], ${p + 1}::text[], ${p + 2}::bigint[], ${p + 3}::bigint[],
                ${p + 5}::bigint[]) AS d(sku, location, on_hand, reserved, unavailable)
    WHERE l.sku = d.sku AND l.location = d.location
      AND l.reserved + d.reserved >= 0
      AND l.unavailable + d.unavailable >= 0
      AND l.on_hand + d.on_hand >= l.reserved + d.reserved + l.unavailable + d.unavailable
      AND l.sku = ANY(${p + 4}::text[])
    RETURNING 1"""


# The level update and its ledger rows in one statement (one round trip while the levels
# are locked); a caller may add writes that belong with the change (``also``).
APPLY_ACTOR = "$15"  # the actor, for the CTEs a caller adds
ALSO_FROM = 17  # the first parameter of the CTEs a caller adds
_APPLY_SQL = """
WITH changed AS ({update}
), ledger AS (
    INSERT INTO stock_movements
        (sku, location, on_hand_delta, reserved_delta, unavailable_delta, reason, order_id,
         reservation_id, actor, reference)
    SELECT m.sku, m.location, m.on_hand, m.reserved, m.unavailable, m.reason, m.order_id,
           m.reservation_id, $15, m.reference
    FROM unnest($7::text[], $8::text[], $9::bigint[], $10::bigint[], $11::text[],
                $12::text[], $13::bigint[], $14::text[], $16::bigint[])
         AS m(sku, location, on_hand, reserved, reason, order_id, reservation_id, reference,
              unavailable)
){also}
SELECT count(*) FROM changed
"""


@dataclass(frozen=True)
class Summed:
    """Deltas summed per level, as :func:`guarded_update`'s parameters."""

    args: list[list[Any]]
    levels: int
    skus: list[str]


def summed(deltas: Sequence[Delta]) -> Summed:
    per_level: dict[tuple[str, str], list[int]] = {}
    for d in deltas:
        acc = per_level.setdefault((d.sku, d.location), [0, 0, 0])
        acc[0] += d.on_hand
        acc[1] += d.reserved
        acc[2] += d.unavailable
    keys = sorted(per_level)
    skus = sorted({k[0] for k in keys})
    args: list[list[Any]] = [
        [k[0] for k in keys],
        [k[1] for k in keys],
        [per_level[k][0] for k in keys],
        [per_level[k][1] for k in keys],
        skus,
        [per_level[k][2] for k in keys],
    ]
    return Summed(args, len(keys), skus)


def _row(r: asyncpg.Record) -> LevelRow:
    return LevelRow(
        sku=r["sku"],
        location=r["location"],
        on_hand=r["on_hand"],
        reserved=r["reserved"],
        location_priority=r["location_priority"],
        active=r["active"],
        unavailable=r["unavailable"],
        safety_stock=r["safety_stock"],
    )


class LevelWriter:
    """Level changes of one transaction. Lock first, then apply."""

    def __init__(self, conn: Conn, actor: str) -> None:
        self.conn = conn
        self.actor = actor
        self.touched: set[str] = set()
        # Each SKU's total available (over active locations) when this transaction first
        # locked it: the "before" of its threshold events. Nothing else can change the
        # SKU's levels while they are locked, so the total at COMMIT is the "after".
        self.before: dict[str, int] = {}
        # Told once the first levels are locked (group commit starts the next batch).
        self.on_locked: Callable[[], None] | None = None

    async def lock(self, skus: Iterable[str]) -> dict[tuple[str, str], LevelRow]:
        """Lock every level of these SKUs, in (sku, location) order, so no two
        transactions can wait on each other (the only lock order for levels)."""
        wanted = sorted(set(skus))
        if not wanted:
            return {}
        rows = await self.conn.fetch(_LOCK_SQL, wanted)
        if self.on_locked is not None:
            self.on_locked()
        locked = {(r["sku"], r["location"]): _row(r) for r in rows}
        fresh = [sku for sku in wanted if sku not in self.before]
        if fresh:
            totals = dict.fromkeys(fresh, 0)
            for level in locked.values():
                if level.sku in totals and level.active:
                    totals[level.sku] += level.available
            self.before.update(totals)
        return locked

    async def peek(self, skus: Iterable[str]) -> dict[tuple[str, str], LevelRow]:
        """The same rows as :meth:`lock`, committed values, without locking: for decisions
        that can only refuse (a refusal on a snapshot is as if it came just before)."""
        wanted = sorted(set(skus))
        if not wanted:
            return {}
        rows = await self.conn.fetch(_LOCK_SQL.replace("FOR UPDATE OF l", ""), wanted)
        return {(r["sku"], r["location"]): _row(r) for r in rows}

    async def ensure(self, sku: str, location: str) -> bool:
        """Create an empty level (nothing to record in the ledger: all zeros); returns
        whether it was new. A new level is a new entry in the SKU's cached locations, so
        the SKU counts as touched.

        Creating a SKU's levels is serialised on the SKU's row: a level another
        transaction has inserted but not committed is invisible to :meth:`lock`, so two
        transactions creating levels of one SKU at once would each cache the SKU without
        the other's new location. Existing levels (the hot path) take no such lock. Call
        it before :meth:`lock`, for several SKUs in sorted order."""
        exists = await self.conn.fetchval(
            "SELECT true FROM inventory_levels WHERE sku = $1 AND location = $2", sku, location
        )
        if exists:
            return False
        await self.conn.execute("SELECT 1 FROM skus WHERE code = $1 FOR UPDATE", sku)
        result = await self.conn.execute(
            "INSERT INTO inventory_levels (sku, location) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            sku,
            location,
        )
        created = result.endswith(" 1")
        if created:
            self.touched.add(sku)
        return created

    async def apply(
        self, deltas: Sequence[Delta], *, also: str = "", also_args: Sequence[Any] = ()
    ) -> None:
        """Apply deltas to levels this transaction has locked, and write the ledger.

        Raises LevelGuardViolated if any level would leave 0 <= reserved, 0 <=
        unavailable, reserved + unavailable <= on_hand; the
        caller's transaction then rolls back, so nothing is half-applied.

        ``also``: more CTEs of the same statement (``, name AS (...)``; their parameters
        numbered from ``ALSO_FROM``, the values ``also_args``; ``APPLY_ACTOR`` names the
        actor), for writes that belong with the change: one round trip for all of it.
        """
        deltas = [d for d in deltas if d.on_hand or d.reserved or d.unavailable]
        if not deltas and not also:
            return
        levels = summed(deltas)
        updated = await self.conn.fetchval(
            _APPLY_SQL.format(update=guarded_update(1), also=also),
            *levels.args,
            [d.sku for d in deltas],
            [d.location for d in deltas],
            [d.on_hand for d in deltas],
            [d.reserved for d in deltas],
            [d.reason for d in deltas],
            [d.order_id for d in deltas],
            [d.reservation_id for d in deltas],
            [d.reference for d in deltas],
            self.actor,
            [d.unavailable for d in deltas],
            *also_args,
        )
        self.changed(levels, updated)

    def changed(self, levels: Summed, updated: int) -> None:
        """After a statement with :func:`guarded_update` (``updated``: the levels it
        matched): raises LevelGuardViolated unless it matched every level; the SKUs
        count as touched."""
        if updated != levels.levels:
            raise LevelGuardViolated(
                f"guarded level update matched {updated} of {levels.levels} levels"
            )
        self.touched.update(levels.skus)

    async def set_safety_stock(self, sku: str, location: str, safety_stock: int) -> None:
        """Units kept back from sale by policy: no unit moves (no ledger row), but what is
        available changes, so the SKU counts as touched. Lock the SKU's levels first."""
        await self.conn.execute(
            "UPDATE inventory_levels SET safety_stock = $3, updated_at = now() "
            "WHERE sku = $1 AND location = $2",
            sku,
            location,
            safety_stock,
        )
        self.touched.add(sku)

    async def touch_all_at(self, skus: Iterable[str]) -> None:
        """Mark SKUs whose cached totals change without a level change (a location
        switched on or off) so the cache is rewritten before COMMIT."""
        wanted = sorted(set(skus))
        await self.lock(wanted)
        self.touched.update(wanted)
