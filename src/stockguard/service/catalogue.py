"""Catalogue and stock: locations, channels, SKUs, adjustments and availability."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stockguard.domain.errors import (
    InsufficientStock,
    NotFound,
    StaleQuantity,
    ValidationFailed,
)
from stockguard.domain.model import ADJUSTMENT_REASONS, MovementReason, available
from stockguard.metrics import AVAILABILITY_READS
from stockguard.service.uow import CACHE_ERRORS, Backends, UnitOfWork, run
from stockguard.store.db import Conn
from stockguard.store.levels import AVAILABLE_SQL, Delta, LevelRow

MAX_UNITS = 1_000_000_000

__all__ = [
    "Adjustment",
    "LevelView",
    "SkuView",
    "adjust_stock",
    "availability",
    "get_channel",
    "get_sku",
    "list_locations",
    "list_skus",
    "put_channel",
    "put_location",
    "put_sku",
]


@dataclass(frozen=True, slots=True)
class LevelView:
    location: str
    on_hand: int
    reserved: int
    active: bool
    unavailable: int = 0
    safety_stock: int = 0

    @property
    def available(self) -> int:
        return available(self.on_hand, self.reserved, self.unavailable, self.safety_stock)


@dataclass(frozen=True, slots=True)
class SkuView:
    sku: str
    name: str
    levels: list[LevelView] = field(default_factory=list)
    low_stock_threshold: int | None = None

    @property
    def on_hand(self) -> int:
        return sum(lv.on_hand for lv in self.levels if lv.active)

    @property
    def reserved(self) -> int:
        return sum(lv.reserved for lv in self.levels if lv.active)

    @property
    def unavailable(self) -> int:
        return sum(lv.unavailable for lv in self.levels if lv.active)

    @property
    def safety_stock(self) -> int:
        return sum(lv.safety_stock for lv in self.levels if lv.active)

    @property
    def available(self) -> int:
        """Summed per level: one level's safety stock never hides another's units."""
        return sum(lv.available for lv in self.levels if lv.active)


# ---------------------------------------------------------------- locations, channels


async def put_location(
    backends: Backends, code: str, name: str, priority: int, active: bool, actor: str
) -> tuple[dict[str, Any], bool]:
    """Create or update a location; returns (location, created). Switching a location on
    or off changes every SKU total there, so those SKUs are resynced to the cache."""

    async def body(uow: UnitOfWork) -> tuple[dict[str, Any], bool]:
        before = await uow.conn.fetchrow(
            "SELECT active FROM locations WHERE code = $1 FOR UPDATE", code
        )
        if before is not None and before["active"] != active:
            # Lock the SKUs' levels before the switch, so their totals before it are the
            # "before" of their threshold events, and the cache is rewritten at COMMIT.
            skus = await uow.conn.fetch(
                "SELECT sku FROM inventory_levels WHERE location = $1", code
            )
            await uow.levels.touch_all_at([r["sku"] for r in skus])
        row = await uow.conn.fetchrow(
            """
            INSERT INTO locations (code, name, priority, active) VALUES ($1, $2, $3, $4)
            ON CONFLICT (code) DO UPDATE
            SET name = $2, priority = $3, active = $4, updated_at = now()
            RETURNING code, name, priority, active, created_at, updated_at
            """,
            code,
            name,
            priority,
            active,
        )
        assert row is not None
        return dict(row.items()), before is None

    return await run(backends, actor, body, operation="put_location")


async def list_locations(backends: Backends, limit: int, after: str | None) -> list[dict[str, Any]]:
    rows = await backends.pool.fetch(
        "SELECT code, name, priority, active, created_at, updated_at FROM locations "
        "WHERE $1::text IS NULL OR code > $1 ORDER BY code LIMIT $2",
        after,
        limit,
    )
    return [dict(r.items()) for r in rows]


async def put_channel(
    backends: Backends, code: str, name: str, locations: Sequence[str], actor: str
) -> tuple[dict[str, Any], bool]:
    if len(set(locations)) != len(locations):
        raise ValidationFailed("a location is listed twice")

    async def body(uow: UnitOfWork) -> tuple[dict[str, Any], bool]:
        known = {
            r["code"]
            for r in await uow.conn.fetch(
                "SELECT code FROM locations WHERE code = ANY($1::text[])", list(locations)
            )
        }
        unknown = [loc for loc in locations if loc not in known]
        if unknown:
            raise ValidationFailed(f"unknown locations: {', '.join(unknown)}")
        created = (
            await uow.conn.fetchval("SELECT 1 FROM channels WHERE code = $1 FOR UPDATE", code)
            is None
        )
        await uow.conn.execute(
            "INSERT INTO channels (code, name) VALUES ($1, $2) ON CONFLICT (code) DO UPDATE "
            "SET name = $2, updated_at = now()",
            code,
            name,
        )
        await uow.conn.execute("DELETE FROM channel_locations WHERE channel = $1", code)
        await uow.conn.execute(
            "INSERT INTO channel_locations (channel, location, priority) "
            "SELECT $1, loc, n FROM unnest($2::text[]) WITH ORDINALITY AS t(loc, n)",
            code,
            list(locations),
        )
        channel = await _channel(uow.conn, code)
        assert channel is not None
        return channel, created

    return await run(backends, actor, body, operation="put_channel")


async def _channel(conn: Conn, code: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT code, name, created_at, updated_at, ARRAY(SELECT location FROM channel_locations "
        "WHERE channel = $1 ORDER BY priority) AS locations FROM channels WHERE code = $1",
        code,
    )
    return None if row is None else dict(row.items())


async def get_channel(backends: Backends, code: str) -> dict[str, Any]:
    async with backends.pool.acquire() as conn:
        channel = await _channel(conn, code)
    if channel is None:
        raise NotFound(f"channel {code} not found")
    return channel


# ---------------------------------------------------------------- skus


async def put_sku(
    backends: Backends,
    code: str,
    name: str,
    actor: str = "system",
    *,
    threshold: tuple[int | None] | None = None,
) -> tuple[SkuView, bool]:
    """Create or rename a SKU; ``threshold``, when given as ``(value,)``, sets its
    ``low_stock_threshold`` (``(None,)`` clears it); left out, the threshold stays."""
    if threshold is not None and threshold[0] is not None and not 0 <= threshold[0] <= MAX_UNITS:
        raise ValidationFailed(f"low_stock_threshold: must be 0 to {MAX_UNITS:,} or null")

    async def body(uow: UnitOfWork) -> tuple[SkuView, bool]:
        created = await uow.conn.fetchval(
            "INSERT INTO skus (code, name, low_stock_threshold) VALUES ($1, $2, $4) "
            "ON CONFLICT (code) DO UPDATE SET name = $2, updated_at = now(), "
            "low_stock_threshold = CASE WHEN $3 THEN $4 ELSE skus.low_stock_threshold END "
            "RETURNING (xmax = 0)",
            code,
            name,
            threshold is not None,
            None if threshold is None else threshold[0],
        )
        views = await _sku_views(uow.conn, [code])
        return views[0], bool(created)

    return await run(backends, actor, body, operation="put_sku")


async def _sku_views(conn: Conn, codes: Sequence[str]) -> list[SkuView]:
    rows = await conn.fetch(
        """
        SELECT s.code, s.name, s.low_stock_threshold, l.location, l.on_hand, l.reserved,
               l.unavailable, l.safety_stock, loc.active
        FROM skus s
        LEFT JOIN inventory_levels l ON l.sku = s.code
        LEFT JOIN locations loc ON loc.code = l.location
        WHERE s.code = ANY($1::text[])
        ORDER BY s.code, l.location
        """,
        list(codes),
    )
    views: dict[str, SkuView] = {}
    for r in rows:
        view = views.setdefault(
            r["code"], SkuView(r["code"], r["name"], low_stock_threshold=r["low_stock_threshold"])
        )
        if r["location"] is not None:
            view.levels.append(
                LevelView(
                    r["location"],
                    r["on_hand"],
                    r["reserved"],
                    r["active"],
                    r["unavailable"],
                    r["safety_stock"],
                )
            )
    return [views[c] for c in codes if c in views]


async def get_sku(backends: Backends, code: str) -> SkuView:
    async with backends.pool.acquire() as conn:
        views = await _sku_views(conn, [code])
    if not views:
        raise NotFound(f"sku {code} not found")
    return views[0]


async def list_skus(backends: Backends, limit: int, after: str | None) -> list[SkuView]:
    async with backends.pool.acquire() as conn:
        codes = [
            r["code"]
            for r in await conn.fetch(
                "SELECT code FROM skus WHERE $1::text IS NULL OR code > $1 ORDER BY code LIMIT $2",
                after,
                limit,
            )
        ]
        return await _sku_views(conn, codes)


# ---------------------------------------------------------------- adjustments


@dataclass(frozen=True, slots=True)
class Adjustment:
    """One stock adjustment at one location, in one of its forms (API.md):

    - ``delta`` / ``set_on_hand``: sellable units counted in or out;
    - ``delta < 0`` with ``from_unavailable``: units written off from the unavailable ones
      (``on_hand`` and ``unavailable`` both drop);
    - ``unavailable_delta``: units moved between sellable and unavailable (``on_hand``
      unchanged): ``damaged``/``quality_control`` for > 0, ``restock``/``correction`` < 0.
    """

    sku: str
    location: str
    reason: str
    delta: int | None = None
    set_on_hand: int | None = None
    expected_on_hand: int | None = None
    reference: str | None = None
    unavailable_delta: int | None = None
    from_unavailable: bool = False


@dataclass(frozen=True, slots=True)
class AdjustResult:
    sku: str
    location: str
    on_hand: int
    reserved: int
    on_hand_delta: int
    updated_at: datetime
    unavailable: int = 0
    safety_stock: int = 0
    unavailable_delta: int = 0

    @property
    def available(self) -> int:
        return available(self.on_hand, self.reserved, self.unavailable, self.safety_stock)


_TO_UNAVAILABLE = frozenset({MovementReason.DAMAGED, MovementReason.QUALITY_CONTROL})
_FROM_UNAVAILABLE = frozenset({MovementReason.RESTOCK, MovementReason.CORRECTION})


def _check_form(adj: Adjustment) -> None:
    forms = [adj.delta is not None, adj.set_on_hand is not None, adj.unavailable_delta is not None]
    if sum(forms) != 1:
        raise ValidationFailed("give exactly one of delta, set_on_hand and unavailable_delta")
    reasons = {r.value for r in ADJUSTMENT_REASONS} | {MovementReason.QUALITY_CONTROL.value}
    if adj.reason not in reasons:
        raise ValidationFailed(f"unknown reason {adj.reason!r}")
    if adj.delta == 0 or adj.unavailable_delta == 0:
        raise ValidationFailed("an adjustment must move at least one unit")
    if adj.from_unavailable and (adj.delta is None or adj.delta > 0):
        raise ValidationFailed('"from": "unavailable" writes units off: it needs a delta < 0')
    if adj.unavailable_delta is not None:
        allowed = _TO_UNAVAILABLE if adj.unavailable_delta > 0 else _FROM_UNAVAILABLE
        if adj.reason not in allowed:
            raise ValidationFailed(
                f"unavailable_delta {'> 0' if adj.unavailable_delta > 0 else '< 0'} takes "
                f"reason {' or '.join(sorted(allowed))}"
            )
    elif adj.reason == MovementReason.QUALITY_CONTROL:
        raise ValidationFailed("quality_control moves units to unavailable: unavailable_delta")


def _delta(adj: Adjustment, level: LevelRow) -> Delta:
    """The adjustment as a level delta, or InsufficientStock with nothing changed."""

    def refuse(detail: str) -> InsufficientStock:
        return InsufficientStock(
            detail, on_hand=level.on_hand, reserved=level.reserved, unavailable=level.unavailable
        )

    if adj.unavailable_delta is not None:
        moved = adj.unavailable_delta
        sellable = level.on_hand - level.reserved - level.unavailable
        if moved > sellable:
            raise refuse(f"only {sellable} units can be made unavailable (the rest is reserved)")
        if -moved > level.unavailable:
            raise refuse(f"only {level.unavailable} units are unavailable")
        return Delta(
            adj.sku, adj.location, 0, 0, adj.reason, reference=adj.reference, unavailable=moved
        )
    if adj.from_unavailable:
        assert adj.delta is not None
        if -adj.delta > level.unavailable:
            raise refuse(f"only {level.unavailable} units are unavailable")
        return Delta(
            adj.sku, adj.location, adj.delta, 0, adj.reason,
            reference=adj.reference, unavailable=adj.delta,
        )  # fmt: skip
    new = level.on_hand + adj.delta if adj.delta is not None else adj.set_on_hand
    assert new is not None
    held = level.reserved + level.unavailable
    if new < held:
        raise refuse(
            f"on_hand would be {new}, below the {level.reserved} units reserved and "
            f"{level.unavailable} unavailable"
        )
    return Delta(adj.sku, adj.location, new - level.on_hand, 0, adj.reason, reference=adj.reference)


async def _known(uow: UnitOfWork, sku: str, location: str) -> None:
    found = await uow.conn.fetchrow(
        "SELECT (SELECT 1 FROM skus WHERE code = $1) AS sku, "
        "(SELECT 1 FROM locations WHERE code = $2) AS location",
        sku,
        location,
    )
    assert found is not None
    if found["sku"] is None:
        raise NotFound(f"sku {sku} not found")
    if found["location"] is None:
        raise ValidationFailed(f"unknown location {location!r}")


async def apply_adjustment(uow: UnitOfWork, adj: Adjustment) -> AdjustResult:
    """One adjustment inside the caller's transaction (the single route and the batch)."""
    _check_form(adj)
    await _known(uow, adj.sku, adj.location)
    await uow.levels.ensure(adj.sku, adj.location)
    level = (await uow.levels.lock([adj.sku]))[(adj.sku, adj.location)]
    if adj.expected_on_hand is not None and adj.expected_on_hand != level.on_hand:
        raise StaleQuantity(
            f"on_hand is {level.on_hand}, not {adj.expected_on_hand}",
            expected_on_hand=adj.expected_on_hand,
            on_hand=level.on_hand,
        )
    delta = _delta(adj, level)
    await uow.levels.apply([delta])
    now: datetime = await uow.conn.fetchval("SELECT now()")
    return AdjustResult(
        adj.sku,
        adj.location,
        level.on_hand + delta.on_hand,
        level.reserved,
        delta.on_hand,
        now,
        level.unavailable + delta.unavailable,
        level.safety_stock,
        delta.unavailable,
    )


async def adjust_stock(backends: Backends, adj: Adjustment, actor: str) -> AdjustResult:
    """Receive, count, damage or shrink stock at one location, or move units between
    sellable and unavailable. ``reserved + unavailable`` never exceed ``on_hand``;
    ``expected_on_hand`` makes it a compare-and-set."""
    _check_form(adj)

    async def body(uow: UnitOfWork) -> AdjustResult:
        return await apply_adjustment(uow, adj)

    return await run(backends, actor, body, operation="adjust_stock")


async def set_safety_stock(
    backends: Backends, sku: str, location: str, safety_stock: int, actor: str
) -> tuple[LevelView, bool]:
    """Keep ``safety_stock`` units of this level back from sale; returns the level and
    whether it was created."""
    if not 0 <= safety_stock <= 1_000_000_000:
        raise ValidationFailed("safety_stock must be 0 to 1000000000")

    async def body(uow: UnitOfWork) -> tuple[LevelView, bool]:
        await _known(uow, sku, location)
        created = await uow.levels.ensure(sku, location)
        await uow.levels.lock([sku])
        await uow.levels.set_safety_stock(sku, location, safety_stock)
        (view,) = await _sku_views(uow.conn, [sku])
        return next(lv for lv in view.levels if lv.location == location), created

    return await run(backends, actor, body, operation="set_safety_stock")


# ---------------------------------------------------------------- availability


@dataclass(frozen=True, slots=True)
class Availability:
    sku: str
    available: int
    locations: dict[str, int]
    source: str


async def _channel_locations(backends: Backends, channel: str) -> set[str]:
    rows = await backends.pool.fetch(
        "SELECT c.code, cl.location FROM channels c "
        "LEFT JOIN channel_locations cl ON cl.channel = c.code WHERE c.code = $1",
        channel,
    )
    if not rows:
        raise ValidationFailed(f"unknown channel {channel!r}")
    return {r["location"] for r in rows if r["location"] is not None}


async def availability(
    backends: Backends, skus: Sequence[str], channel: str | None = None
) -> list[Availability]:
    """From Redis in one round trip; SKUs Redis lacks (or all, when it is down) come from
    PostgreSQL."""
    wanted = list(dict.fromkeys(skus))
    allowed = await _channel_locations(backends, channel) if channel else None
    cached: dict[str, tuple[int, dict[str, int]] | None] = dict.fromkeys(wanted)
    if backends.cache is not None and backends.breaker.allow():
        try:
            async with asyncio.timeout(backends.redis_timeout):
                cached = await backends.cache.read(wanted)
        except CACHE_ERRORS:
            backends.breaker.failed()
            cached = dict.fromkeys(wanted)
        else:
            backends.breaker.succeeded()
    missing = [s for s in wanted if cached.get(s) is None]
    from_db: dict[str, dict[str, int]] = {}
    if missing:
        rows = await backends.pool.fetch(
            f"SELECT l.sku, l.location, {AVAILABLE_SQL} AS available "
            "FROM inventory_levels l JOIN locations loc ON loc.code = l.location "
            "WHERE l.sku = ANY($1::text[]) AND loc.active",
            missing,
        )
        for r in rows:
            from_db.setdefault(r["sku"], {})[r["location"]] = r["available"]
    out: list[Availability] = []
    for sku in wanted:
        hit = cached.get(sku)
        locations = hit[1] if hit is not None else from_db.get(sku, {})
        source = "redis" if hit is not None else "postgres"
        AVAILABILITY_READS.labels(source).inc()
        if allowed is not None:
            locations = {k: v for k, v in locations.items() if k in allowed}
        out.append(Availability(sku, sum(locations.values()), locations, source))
    return out
