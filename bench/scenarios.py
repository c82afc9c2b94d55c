"""The benchmark scenarios (see bench/__main__.py for the list)."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from bench.driver import OK, OUT_OF_STOCK, Op, drive
from bench.env import BenchEnv, progress, wait_for_headroom
from bench.http_server import http_server
from bench.workload import ACTOR, Catalogue, OrderFactory
from stockguard.cache.redis_cache import RedisCache, load_availability
from stockguard.config import CacheMode
from stockguard.domain.errors import OutOfStock
from stockguard.domain.model import OrderStatus
from stockguard.service import catalogue
from stockguard.service.orders import (
    Placed,
    PlaceOrder,
    cancel_order,
    place_order,
    place_orders,
)
from stockguard.service.uow import Backends, repair_cache
from stockguard.store.db import connect_pool

__all__ = [
    "Config",
    "Ctx",
    "availability_reads",
    "batched_reservations",
    "cache_parity",
    "cache_parity_cost",
    "cancel_latency",
    "flash_sale",
    "reserve_http",
    "reserve_service",
]


@dataclass(frozen=True)
class Config:
    smoke: bool
    duration: float
    warmup: float
    concurrency: tuple[int, ...]
    spread_skus: int
    spread_on_hand: int
    hot_on_hand: int
    flash_units: int
    flash_attempts: int
    flash_concurrency: int
    cancel_concurrency: int
    cancel_orders: int
    availability_concurrency: int
    availability_batch: int
    parity_concurrency: tuple[int, ...]
    batches: tuple[tuple[int, int], ...]  # (orders per batch, concurrent batches)
    http_pool_max: int
    pgbench_seconds: int
    seed: int

    @classmethod
    def make(cls, smoke: bool, duration: float | None, seed: int) -> Config:
        if smoke:
            # Lower concurrency than a full run: the smoke run shares CI's servers with
            # test runs, and it only has to prove that every scenario works.
            d = duration if duration is not None else 0.25
            return cls(
                smoke=True,
                duration=d,
                warmup=min(0.05, d / 5),
                concurrency=(1, 4, 16),
                spread_skus=300,
                spread_on_hand=100_000,
                hot_on_hand=1_000_000_000,
                flash_units=50,
                flash_attempts=500,
                flash_concurrency=16,
                cancel_concurrency=8,
                cancel_orders=200,
                availability_concurrency=4,
                availability_batch=100,
                parity_concurrency=(4, 16),
                batches=((50, 1), (50, 4)),
                http_pool_max=16,
                pgbench_seconds=0,
                seed=seed,
            )
        d = duration if duration is not None else 5.0
        return cls(
            smoke=False,
            duration=d,
            warmup=min(1.0, d / 5),
            concurrency=(1, 8, 32),
            spread_skus=10_000,
            spread_on_hand=100_000,
            hot_on_hand=1_000_000_000,
            flash_units=1_000,
            flash_attempts=20_000,
            flash_concurrency=64,
            cancel_concurrency=16,
            cancel_orders=max(500, int(1_500 * d)),
            availability_concurrency=8,
            availability_batch=100,
            parity_concurrency=(8, 32),
            batches=((10, 1), (50, 1), (200, 1), (50, 4)),
            http_pool_max=40,
            pgbench_seconds=max(1, round(d)),
            seed=seed,
        )


@dataclass
class Ctx:
    env: BenchEnv
    cfg: Config
    cat: Catalogue
    orders: OrderFactory
    cache: RedisCache
    admin_key: str
    waited_for_connections_s: float = 0.0

    @contextlib.asynccontextmanager
    async def service(self, size: int) -> AsyncIterator[Backends]:
        """A pool of ``size`` connections (opened up front) with strict Redis sync, as
        served; closed afterwards, so the server's connections are only held while used
        (others may share the server)."""
        seen = await wait_for_headroom(
            self.env.database_url, size + 2, 120.0 if self.cfg.smoke else 900.0
        )
        self.waited_for_connections_s += seen["waited_s"]
        pool = await connect_pool(self.env.database_url, min_size=size, max_size=size)
        try:
            yield Backends(pool=pool, cache=self.cache, cache_mode=CacheMode.STRICT)
        finally:
            await pool.close()


def _show(name: str, cell: dict[str, Any]) -> None:
    lat = cell.get("latency_ms", {})
    extra = f" errors={cell['errors']}" if cell.get("errors") else ""
    progress(
        f"{name:<40} c={cell['concurrency']:<3} {cell['ok_per_s']:>9.1f} ok/s "
        f"p50 {lat.get('p50', float('nan')):7.2f} ms  p99 {lat.get('p99', float('nan')):7.2f} ms"
        f"{extra}"
    )


def _place_op(backends: Backends, make: Callable[[], PlaceOrder]) -> Op:
    async def op() -> dict[str, int]:
        try:
            await place_order(backends, make(), ACTOR)
        except OutOfStock:
            return OUT_OF_STOCK
        return OK

    return op


# ---------------------------------------------------------------- 1. reservations


async def reserve_service(ctx: Ctx) -> dict[str, Any]:
    """place_order from N tasks sharing one pool, hot SKU and spread orders."""
    cfg = ctx.cfg
    out: dict[str, Any] = {}
    shapes: dict[str, Callable[[], PlaceOrder]] = {
        "hot": lambda: ctx.orders.hot("s"),
        "spread": lambda: ctx.orders.spread("s"),
    }
    for shape, make in shapes.items():
        out[shape] = {}
        for c in cfg.concurrency:
            async with ctx.service(c) as backends:
                cell = await drive(
                    _place_op(backends, make),
                    concurrency=c,
                    duration=cfg.duration,
                    warmup=cfg.warmup,
                )
            cell["pool_size"] = c
            _show(f"reserve service {shape}", cell)
            out[shape][str(c)] = cell
    return out


def _http_op(
    client: httpx.AsyncClient,
    make: Callable[[], PlaceOrder],
    idempotency: bool,
) -> Op:
    async def op() -> dict[str, int]:
        order = make()
        body = {"id": order.id, "lines": [{"sku": s, "quantity": q} for s, q in order.lines]}
        headers = {"Idempotency-Key": order.id} if idempotency else None
        r = await client.post("/v1/orders", json=body, headers=headers)
        if r.status_code == 201:
            return OK
        if r.status_code == 409 and r.json().get("code") == "out_of_stock":
            return OUT_OF_STOCK
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

    return op


async def reserve_http(ctx: Ctx) -> dict[str, Any]:
    """POST /v1/orders against a real uvicorn process, driven by httpx at concurrency N."""
    cfg = ctx.cfg
    out: dict[str, Any] = {}
    await wait_for_headroom(
        ctx.env.database_url, cfg.http_pool_max + 2, 120.0 if cfg.smoke else 900.0
    )
    async with http_server(
        database_url=ctx.env.database_url,
        redis_url=ctx.env.redis_url,
        redis_prefix=ctx.env.redis_prefix,
        admin_key=ctx.admin_key,
        workdir=ctx.env.workdir,
        pool_max=cfg.http_pool_max,
    ) as server:
        out["server"] = {
            "processes": 1,
            "db_pool_max": server.pool_max,
            "worker_loops": False,
            "idempotency_key": "not sent, except in the idempotency cell",
        }
        shapes: dict[str, Callable[[], PlaceOrder]] = {
            "hot": lambda: ctx.orders.hot("h"),
            "spread": lambda: ctx.orders.spread("h"),
        }
        cells: list[tuple[str, str, int, bool]] = [
            (shape, shape, c, False) for shape in shapes for c in cfg.concurrency
        ]
        cells.append(("spread_with_idempotency_key", "spread", cfg.concurrency[1], True))
        for label, shape, c, idem in cells:
            limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
            async with httpx.AsyncClient(
                base_url=server.base_url,
                headers={"Authorization": f"Bearer {ctx.admin_key}"},
                limits=limits,
                timeout=30,
            ) as client:
                cell = await drive(
                    _http_op(client, shapes[shape], idem),
                    concurrency=c,
                    duration=cfg.duration,
                    warmup=cfg.warmup,
                    server_pid=server.pid,
                )
            _show(f"reserve http {label}", cell)
            out.setdefault(label, {})[str(c)] = cell
    return out


# ---------------------------------------------------------------- 2. cancel latency


async def _prepare_orders(ctx: Ctx, backends: Backends, n: int, tag: str) -> list[str]:
    ids: list[str] = []
    while len(ids) < n:
        batch = [ctx.orders.spread(tag) for _ in range(min(100, n - len(ids)))]
        for result in await place_orders(backends, batch, ACTOR):
            if not isinstance(result, Placed):
                raise RuntimeError(f"could not prepare an order to cancel: {result!r}")
            ids.append(result.order.id)
    return ids


async def cancel_latency(ctx: Ctx) -> dict[str, Any]:
    """Place orders first (spread shape, in batches), then cancel them from 16 tasks;
    only the cancels are measured."""
    cfg = ctx.cfg
    c = cfg.cancel_concurrency
    async with ctx.service(c) as backends:
        ids = await _prepare_orders(ctx, backends, cfg.cancel_orders, "c")
        queue = deque(ids)

        async def op() -> dict[str, int]:
            order = await cancel_order(backends, queue.popleft(), ACTOR, "bench")
            if order.status != OrderStatus.CANCELLED:
                raise RuntimeError(f"order {order.id} is {order.status}, not cancelled")
            return OK

        warm = min(len(queue) // 10, 200)
        if warm:
            await drive(op, concurrency=c, duration=None, limit=warm)
        cell = await drive(op, concurrency=c, duration=cfg.duration, limit=len(queue))
    cell["pool_size"] = c
    cell["orders_prepared"] = len(ids)
    cell["warmup_cancels"] = warm
    cell["shape"] = "spread (1-3 lines)"
    _show("cancel service spread", cell)
    return cell


# ---------------------------------------------------------------- 3. flash sale


async def flash_sale(ctx: Ctx) -> dict[str, Any]:
    """One SKU with few units, many single-unit attempts at high concurrency."""
    cfg = ctx.cfg
    sku = "FLASH"
    async with ctx.service(cfg.flash_concurrency) as backends:
        await catalogue.put_sku(backends, sku, "flash sale")
        await catalogue.adjust_stock(
            backends,
            catalogue.Adjustment(
                sku=sku, location="loc-a", reason="received", delta=cfg.flash_units
            ),
            ACTOR,
        )
        ctx.cat.extra.append(sku)
        cell = await drive(
            _place_op(backends, lambda: PlaceOrder(id=ctx.orders.order_id("f"), lines=((sku, 1),))),
            concurrency=cfg.flash_concurrency,
            duration=None,
            limit=cfg.flash_attempts,
        )
        row = await backends.pool.fetchrow(
            "SELECT sum(on_hand) AS on_hand, sum(reserved) AS reserved FROM inventory_levels "
            "WHERE sku = $1",
            sku,
        )
        assert row is not None
    cached = (await ctx.cache.read([sku]))[sku]
    successes = cell["ok"]
    out_of_stock = cell["outcomes"].get("out_of_stock", 0)
    failures: list[str] = []
    if successes != cfg.flash_units:
        failures.append(f"successes {successes} != units {cfg.flash_units}")
    if out_of_stock != cfg.flash_attempts - cfg.flash_units:
        failures.append(f"out_of_stock {out_of_stock} != {cfg.flash_attempts - cfg.flash_units}")
    if (row["on_hand"], row["reserved"]) != (cfg.flash_units, cfg.flash_units):
        failures.append(f"level {row['on_hand']}/{row['reserved']} != {cfg.flash_units} both")
    if cached is None or cached[0] != 0:
        failures.append(f"Redis availability {cached!r}, expected 0")
    result = {
        "units": cfg.flash_units,
        "attempts": cfg.flash_attempts,
        "concurrency": cfg.flash_concurrency,
        "pool_size": cfg.flash_concurrency,
        "successes": successes,
        "out_of_stock": out_of_stock,
        "errors": cell["errors"],
        "decisions_per_s": cell["calls_per_s"],
        "elapsed_s": cell["elapsed_s"],
        "latency_ms": cell["latency_ms"],
        "final_level": {"on_hand": int(row["on_hand"]), "reserved": int(row["reserved"])},
        "redis_available": None if cached is None else cached[0],
        "cpu": cell["cpu"],
        "ok": not failures,
        "failures": failures,
    }
    progress(
        f"flash sale: {successes} sold of {cfg.flash_units}, {out_of_stock} out of stock, "
        f"{cell['calls_per_s']:.0f} decisions/s, p99 {cell['latency_ms'].get('p99')} ms"
        + ("" if not failures else f"  FAILED: {failures}")
    )
    return result


# ---------------------------------------------------------------- 4. availability reads


def _availability_op(ctx: Ctx, backends: Backends) -> Op:
    async def op() -> dict[str, int]:
        items = await catalogue.availability(
            backends, ctx.orders.sample(ctx.cfg.availability_batch)
        )
        from_redis = sum(1 for a in items if a.source == "redis")
        return {
            "ok": 1,
            "skus_from_redis": from_redis,
            "skus_from_postgres": len(items) - from_redis,
        }

    return op


async def availability_reads(ctx: Ctx) -> dict[str, Any]:
    """catalogue.availability of 100 random spread SKUs per call, Redis vs PostgreSQL."""
    cfg = ctx.cfg
    out: dict[str, Any] = {"skus_per_request": cfg.availability_batch}
    c = cfg.availability_concurrency
    async with ctx.service(c) as served:
        sources = {
            "redis": served,
            "postgres": Backends(pool=served.pool, cache=None, cache_mode=CacheMode.DISABLED),
        }
        for name, backends in sources.items():
            cell = await drive(
                _availability_op(ctx, backends),
                concurrency=c,
                duration=cfg.duration,
                warmup=cfg.warmup,
            )
            cell["pool_size"] = c
            cell["skus_per_s"] = round(cell["ok_per_s"] * cfg.availability_batch, 1)
            _show(f"availability from {name}", cell)
            out[name] = cell
    return out


# ---------------------------------------------------------------- 5. cost of cache parity


async def cache_parity_cost(ctx: Ctx) -> dict[str, Any]:
    """Spread reservations with strict Redis sync vs the cache disabled, interleaved."""
    cfg = ctx.cfg
    out: dict[str, Any] = {"strict": {}, "disabled": {}}
    touched: set[str] = set()

    def spread_tracking() -> PlaceOrder:
        order = ctx.orders.spread("p")
        touched.update(s for s, _ in order.lines)
        return order

    for c in cfg.parity_concurrency:
        async with ctx.service(c) as strict:
            disabled = Backends(pool=strict.pool, cache=ctx.cache, cache_mode=CacheMode.DISABLED)
            for mode, backends, make in (
                ("strict", strict, lambda: ctx.orders.spread("p")),
                ("disabled", disabled, spread_tracking),
            ):
                cell = await drive(
                    _place_op(backends, make),
                    concurrency=c,
                    duration=cfg.duration,
                    warmup=cfg.warmup,
                )
                cell["pool_size"] = c
                _show(f"reserve service spread cache {mode}", cell)
                out[mode][str(c)] = cell
    # The disabled runs left those SKUs stale in Redis: write them again from PostgreSQL.
    stale = sorted(touched)
    async with ctx.service(2) as backends:
        for i in range(0, len(stale), 500):
            await repair_cache(backends, stale[i : i + 500])
    out["strict_cost_pct"] = {
        str(c): round(
            100 * (1 - out["strict"][str(c)]["ok_per_s"] / out["disabled"][str(c)]["ok_per_s"]), 1
        )
        if out["disabled"][str(c)]["ok_per_s"]
        else None
        for c in cfg.parity_concurrency
    }
    return out


# ---------------------------------------------------------------- 6. batched reservations


def _batch_op(ctx: Ctx, backends: Backends, size: int) -> Op:
    async def op() -> dict[str, int]:
        results = await place_orders(backends, [ctx.orders.hot("g") for _ in range(size)], ACTOR)
        out = {"ok": 0, "out_of_stock": 0, "error": 0}
        for r in results:
            if isinstance(r, Placed):
                out["ok"] += 1
            elif isinstance(r, OutOfStock):
                out["out_of_stock"] += 1
            else:
                out["error"] += 1
        return out

    return op


async def batched_reservations(ctx: Ctx) -> dict[str, Any]:
    """place_orders with B hot-SKU orders per transaction: what group commit would give."""
    cfg = ctx.cfg
    out: dict[str, Any] = {}
    for size, c in cfg.batches:
        async with ctx.service(c) as backends:
            cell = await drive(
                _batch_op(ctx, backends, size),
                concurrency=c,
                duration=cfg.duration,
                warmup=cfg.warmup,
            )
        cell["pool_size"] = c
        cell["batch_size"] = size
        cell["orders_per_s"] = cell["ok_per_s"]
        _show(f"batched hot x{size} (latency per batch)", cell)
        out[f"batch{size}_c{c}"] = cell
    return out


# ---------------------------------------------------------------- checks at the end


async def cache_parity(pool: asyncpg.Pool, cache: RedisCache, skus: list[str]) -> dict[str, Any]:
    """Redis holds exactly PostgreSQL's availability for every SKU the benchmark used."""
    drifted: list[dict[str, Any]] = []
    for i in range(0, len(skus), 1000):
        chunk = skus[i : i + 1000]
        async with pool.acquire() as conn:
            pg = await load_availability(conn, chunk)
        cached = await cache.read(chunk)
        for sku in chunk:
            want = (pg[sku].total, pg[sku].locations)
            if cached[sku] != want:
                drifted.append({"sku": sku, "redis": cached[sku], "postgres": want})
    return {"checked": len(skus), "drifted": len(drifted), "examples": drifted[:5]}
