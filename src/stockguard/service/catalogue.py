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
from stockguard.domain.model import ADJUSTMENT_REASONS
from stockguard.metrics import AVAILABILITY_READS
from stockguard.service.uow import CACHE_ERRORS, Backends, UnitOfWork, run
from stockguard.store.db import Conn
from stockguard.store.levels import Delta

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

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


@dataclass(frozen=True, slots=True)
class SkuView:
    sku: str
    name: str
    levels: list[LevelView] = field(default_factory=list)

    @property
    def on_hand(self) -> int:
        return sum(lv.on_hand for lv in self.levels if lv.active)

    @property
    def reserved(self) -> int:
        return sum(lv.reserved for lv in self.levels if lv.active)

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


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
        if before is not None and before["active"] != active:
            skus = await uow.conn.fetch(
                "SELECT sku FROM inventory_levels WHERE location = $1", code
            )
            await uow.levels.touch_all_at([r["sku"] for r in skus])
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
    backends: Backends, code: str, name: str, actor: str = "system"
) -> tuple[SkuView, bool]:
    async def body(uow: UnitOfWork) -> tuple[SkuView, bool]:
        created = await uow.conn.fetchval(
            "INSERT INTO skus (code, name) VALUES ($1, $2) ON CONFLICT (code) DO UPDATE "
            "SET name = $2, updated_at = now() RETURNING (xmax = 0)",
            code,
            name,
        )
        views = await _sku_views(uow.conn, [code])
        return views[0], bool(created)

    return await run(backends, actor, body, operation="put_sku")


async def _sku_views(conn: Conn, codes: Sequence[str]) -> list[SkuView]:
    rows = await conn.fetch(
        """
        SELECT s.code, s.name, l.location, l.on_hand, l.reserved, loc.active
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
        view = views.setdefault(r["code"], SkuView(r["code"], r["name"]))
        if r["location"] is not None:
            view.levels.append(LevelView(r["location"], r["on_hand"], r["reserved"], r["active"]))
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
    sku: str
    location: str
    reason: str
    delta: int | None = None
    set_on_hand: int | None = None
    expected_on_hand: int | None = None
    reference: str | None = None


@dataclass(frozen=True, slots=True)
class AdjustResult:
    sku: str
    location: str
    on_hand: int
    reserved: int
    on_hand_delta: int
    updated_at: datetime

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


async def adjust_stock(backends: Backends, adj: Adjustment, actor: str) -> AdjustResult:
    """Receive, count, damage or shrink stock at one location. ``on_hand`` never drops
    below ``reserved``; ``expected_on_hand`` makes it a compare-and-set."""
    if (adj.delta is None) == (adj.set_on_hand is None):
        raise ValidationFailed("give exactly one of delta and set_on_hand")
    if adj.reason not in {r.value for r in ADJUSTMENT_REASONS}:
        raise ValidationFailed(f"unknown reason {adj.reason!r}")

    async def body(uow: UnitOfWork) -> AdjustResult:
        found = await uow.conn.fetchrow(
            "SELECT (SELECT 1 FROM skus WHERE code = $1) AS sku, "
            "(SELECT 1 FROM locations WHERE code = $2) AS location",
            adj.sku,
            adj.location,
        )
        assert found is not None
        if found["sku"] is None:
            raise NotFound(f"sku {adj.sku} not found")
        if found["location"] is None:
            raise ValidationFailed(f"unknown location {adj.location!r}")
        await uow.levels.ensure(adj.sku, adj.location)
        levels = await uow.levels.lock([adj.sku])
        level = levels[(adj.sku, adj.location)]
        if adj.expected_on_hand is not None and adj.expected_on_hand != level.on_hand:
            raise StaleQuantity(
                f"on_hand is {level.on_hand}, not {adj.expected_on_hand}",
                expected_on_hand=adj.expected_on_hand,
                on_hand=level.on_hand,
            )
        new = level.on_hand + adj.delta if adj.delta is not None else adj.set_on_hand
        assert new is not None
        if new < level.reserved:
            raise InsufficientStock(
                f"on_hand would be {new}, below the {level.reserved} units reserved",
                on_hand=level.on_hand,
                reserved=level.reserved,
            )
        change = new - level.on_hand
        await uow.levels.apply(
            [Delta(adj.sku, adj.location, change, 0, adj.reason, reference=adj.reference)]
        )
        now: datetime = await uow.conn.fetchval("SELECT now()")
        return AdjustResult(adj.sku, adj.location, new, level.reserved, change, now)

    return await run(backends, actor, body, operation="adjust_stock")


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
            "SELECT l.sku, l.location, l.on_hand - l.reserved AS available "
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
