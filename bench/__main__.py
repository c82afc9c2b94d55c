"""stockguard benchmark: ``python -m bench [--smoke] [--duration S] [--out FILE]``.

Prints one JSON document on stdout (progress goes to stderr). Scenarios:

1. ``reserve``: reservations/s and p50/p99 for a hot SKU and for spread orders (1-3
   lines over the spread SKUs at 2 locations), at concurrency 1, 8 and 32, through the
   service layer (``place_order`` from N tasks sharing one pool) and through HTTP (a real
   uvicorn process, httpx at concurrency N).
2. ``cancel``: cancel latency at concurrency 16 (orders placed first, cancels measured).
3. ``flash_sale``: 1,000 units, 20,000 single-unit attempts at concurrency 64; exactly
   1,000 must succeed (exit 1 otherwise).
4. ``availability``: reads of 100 SKUs per call, from Redis vs from PostgreSQL.
5. ``cache_parity_cost``: spread reservations with strict Redis sync vs cache disabled.
6. ``batched``: ``place_orders`` with many hot-SKU orders per transaction.
7. ``trace``: at concurrency 1, each PostgreSQL statement, Redis call and the Python
   time of a reservation and a cancel (where the time goes).
8. ``pgbench`` (full runs, when installed): PostgreSQL's own one-hot-row ceiling.
9. ``issue10`` (when ``wrk`` is installed): issue 10's figures side by side with one
   outside load generator (bench/targets.py), each printed with its ratio and target.

Then ``verify`` over the bench database and a Redis/PostgreSQL parity check over every
SKU used. Exit status: 0 when everything held; 1 when verify found violations, the flash
sale sold a different number than it had, the cache drifted, or any call failed
(the JSON is printed either way); 2 when the benchmark could not run.

Servers: ``STOCKGUARD_DATABASE_URL`` / ``STOCKGUARD_REDIS_URL`` (127.0.0.1 only; a fresh
database ``stockguard_bench_<random>`` and Redis prefix are created and removed), else
embedded servers in a temporary directory. ``--smoke`` runs everything tiny (CI).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from bench.env import (
    BenchEnv,
    bench_env,
    loadavg,
    machine_info,
    progress,
    run_guarded,
    wait_for_headroom,
)
from bench.outbox import outbox_cost, webhook_delivery
from bench.pgbench import pgbench_hot_row
from bench.scenarios import (
    Config,
    Ctx,
    availability_reads,
    batched_reservations,
    cache_parity,
    cache_parity_cost,
    cancel_latency,
    flash_sale,
    reserve_http,
    reserve_service,
)
from bench.targets import issue10
from bench.trace import statement_trace
from bench.workload import OrderFactory, seed
from stockguard.cache.redis_cache import RedisCache
from stockguard.config import CacheMode
from stockguard.logging import configure_logging
from stockguard.service.uow import Backends
from stockguard.service.verify import verify
from stockguard.store import keys
from stockguard.store.db import connect_pool

SCENARIOS = (
    "reserve_service",
    "cancel",
    "flash_sale",
    "availability",
    "cache_parity_cost",
    "batched",
    "outbox",
    "delivery",
    "trace",
    "reserve_http",
    "pgbench",
    "issue10",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny run that proves the bench works")
    p.add_argument("--duration", type=float, default=None, help="seconds per measured cell")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--seed", type=int, default=None, help="random seed for the order mix")
    p.add_argument(
        "--only",
        default=None,
        help=f"comma-separated subset of: {', '.join(SCENARIOS)}",
    )
    args = p.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be positive")
    if args.only:
        unknown = set(args.only.split(",")) - set(SCENARIOS)
        if unknown:
            p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def _cells(node: Any) -> list[dict[str, Any]]:
    """Every measured cell in a result tree (a dict with 'calls' and 'outcomes')."""
    if isinstance(node, dict):
        if "calls" in node and "outcomes" in node:
            return [node]
        return [c for v in node.values() for c in _cells(v)]
    return []


async def run(args: argparse.Namespace, event_loop: str) -> tuple[dict[str, Any], int]:
    run_id = secrets.token_hex(4)
    cfg = Config.make(args.smoke, args.duration, args.seed or secrets.randbelow(2**31))
    wanted = set(args.only.split(",")) if args.only else set(SCENARIOS)
    started = time.perf_counter()
    doc: dict[str, Any] = {
        "benchmark": "stockguard",
        "mode": "smoke" if cfg.smoke else "full",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": run_id,
        "config": {
            "duration_s": cfg.duration,
            "warmup_s": cfg.warmup,
            "concurrency": list(cfg.concurrency),
            "spread_skus": cfg.spread_skus,
            "locations": 2,
            "spread_on_hand_per_level": cfg.spread_on_hand,
            "hot_on_hand": cfg.hot_on_hand,
            "service_pool": "one per cell, as many connections as tasks",
            "http_pool_max": cfg.http_pool_max,
            "redis_timeout_s": 0.5,
            "seed": cfg.seed,
            "analyze_before_each_scenario": True,
            "scenarios": [s for s in SCENARIOS if s in wanted],
        },
    }
    failures: list[str] = []
    async with bench_env(run_id) as env:
        doc["machine"] = await machine_info(env, event_loop)
        doc["servers"] = {
            "database": env.database_name,
            "postgres": "embedded" if env.embedded_postgres else "STOCKGUARD_DATABASE_URL",
            "redis": "embedded" if env.embedded_redis else "STOCKGUARD_REDIS_URL",
            "redis_prefix": env.redis_prefix,
        }
        results = doc["scenarios"] = {}
        admin_key = f"sgbench_{secrets.token_urlsafe(24)}"
        client = aioredis.Redis.from_url(
            env.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        cache = RedisCache(client, env.redis_prefix)
        try:
            t = time.perf_counter()
            await wait_for_headroom(env.database_url, 6, 120.0 if cfg.smoke else 900.0)
            pool = await connect_pool(env.database_url, min_size=1, max_size=4)
            try:
                cat = await seed(
                    Backends(pool=pool, cache=cache, cache_mode=CacheMode.STRICT),
                    spread_skus=cfg.spread_skus,
                    spread_on_hand=cfg.spread_on_hand,
                    hot_on_hand=cfg.hot_on_hand,
                )
                async with pool.acquire() as conn:
                    await keys.create_key(conn, "admin", "bench", admin_key)
            finally:
                await pool.close()
            progress(
                f"seeded {len(cat.spread)} spread SKUs x 2 locations and the hot SKU "
                f"in {time.perf_counter() - t:.1f} s"
            )
            ctx = Ctx(
                env=env,
                cfg=cfg,
                cat=cat,
                orders=OrderFactory(run_id, cat, cfg.seed),
                cache=cache,
                admin_key=admin_key,
            )
            steps: list[tuple[str, str, Callable[[Ctx], Awaitable[dict[str, Any]]]]] = [
                ("reserve_service", "reserve_service", reserve_service),
                ("cancel", "cancel_latency", cancel_latency),
                ("flash_sale", "flash_sale", flash_sale),
                ("availability", "availability", availability_reads),
                ("cache_parity_cost", "cache_parity_cost", cache_parity_cost),
                ("batched", "batched_reservations", batched_reservations),
                ("outbox", "outbox_cost", outbox_cost),
                ("delivery", "webhook_delivery", webhook_delivery),
                ("trace", "trace_concurrency_1", _trace),
                ("reserve_http", "reserve_http", reserve_http),
                ("pgbench", "pgbench_hot_row", _pgbench),
                ("issue10", "issue10", issue10),
            ]
            for name, key, fn in steps:
                if name in wanted:
                    progress(f"--- {key}")
                    await _analyze(env)
                    results[key] = await fn(ctx)
            await _analyze(env)  # the scenarios grew the tables since the last ANALYZE
            doc["checks"] = await _checks(env, cache, ctx)
        finally:
            await client.aclose()
        doc["machine"]["loadavg_at_end"] = loadavg()

    flash = results.get("flash_sale")
    if flash is not None and not flash["ok"]:
        failures.append(f"flash sale: {flash['failures']}")
    if not doc["checks"]["verify"]["ok"]:
        failures.append(f"verify: {doc['checks']['verify']['violations']} violations")
    if doc["checks"]["cache_parity"]["drifted"]:
        failures.append(f"cache parity: {doc['checks']['cache_parity']['drifted']} SKUs drifted")
    errors = sum(c.get("errors", 0) for c in _cells(results))
    if errors:
        failures.append(f"{errors} calls failed (see error_kinds in the cells)")
    doc["verify"] = {
        "ok": doc["checks"]["verify"]["ok"],
        "violations": doc["checks"]["verify"]["violations"],
    }
    doc["ok"] = not failures
    doc["failures"] = failures
    doc["waited_for_connections_s"] = ctx.waited_for_connections_s
    doc["elapsed_s"] = round(time.perf_counter() - started, 1)
    return doc, (0 if not failures else 1)


async def _analyze(env: BenchEnv) -> None:
    """Refresh the planner's statistics. The benchmark grows its tables from empty to
    hundreds of thousands of rows within minutes, faster than autovacuum analyses them,
    and with statistics of nearly empty tables PostgreSQL picks plans that a served
    database (analysed by autovacuum) would not."""
    conn = await asyncpg.connect(env.database_url)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def _trace(ctx: Ctx) -> dict[str, Any]:
    await wait_for_headroom(ctx.env.database_url, 3, 120.0 if ctx.cfg.smoke else 900.0)
    return await statement_trace(
        ctx.env.database_url,
        ctx.cache,
        lambda: ctx.orders.hot("t"),
        lambda: ctx.orders.spread("t"),
        20 if ctx.cfg.smoke else 300,
    )


async def _pgbench(ctx: Ctx) -> dict[str, Any]:
    env, cfg = ctx.env, ctx.cfg
    if cfg.smoke or cfg.pgbench_seconds < 1:
        return {"skipped": "not in smoke runs"}
    await wait_for_headroom(env.database_url, max(cfg.concurrency) + 2, 900.0)
    out = await pgbench_hot_row(
        env.database_url, env.workdir, list(cfg.concurrency), cfg.pgbench_seconds
    )
    for c in cfg.concurrency:
        progress(f"pgbench hot row c={c}: {out.get(str(c))}")
    return out


async def _checks(env: BenchEnv, cache: RedisCache, ctx: Ctx) -> dict[str, Any]:
    progress("--- verify and cache parity")
    # verify reads whole tables: no statement timeout for it.
    pool = await connect_pool(env.database_url, min_size=1, max_size=2, statement_timeout_ms=0)
    try:
        async with pool.acquire() as conn:
            found = await verify(conn)
            counts = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM orders) AS orders, "
                "(SELECT count(*) FROM reservations) AS reservations, "
                "(SELECT count(*) FROM stock_movements) AS movements, "
                "(SELECT count(*) FROM order_inventory_logs) AS logs"
            )
        parity = await cache_parity(pool, cache, ctx.cat.all_skus())
    finally:
        await pool.close()
    assert counts is not None
    progress(
        f"verify: {len(found)} violations; cache parity: {parity['drifted']} of "
        f"{parity['checked']} SKUs drifted"
    )
    return {
        "verify": {
            "ok": not found,
            "violations": len(found),
            "examples": [
                {"invariant": v.invariant, "check": v.check, "detail": v.detail} for v in found[:5]
            ],
        },
        "cache_parity": parity,
        "rows": dict(counts.items()),
    }


Runner = Callable[[Coroutine[Any, Any, tuple[dict[str, Any], int]]], tuple[dict[str, Any], int]]


def _loop_runner() -> tuple[str, Runner]:
    """uvloop when installed (uvicorn serves on it too), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return "asyncio", asyncio.run
    return "uvloop", uvloop.run


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Logs go to stderr (stdout carries only the JSON document).
    configure_logging("WARNING", json=True)
    name, runner = _loop_runner()
    done = run_guarded(lambda: runner(run(args, name)), progress, "benchmark")
    if done is None:
        return 2
    doc, code = done
    text = json.dumps(doc, indent=2, default=str)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text, flush=True)
    if code:
        progress(f"FAILED: {doc['failures']}")
    else:
        progress(f"ok in {doc['elapsed_s']} s")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
