"""Issue 10's figures, side by side in one run, with one outside load generator (``wrk``,
a Lua script giving every request its own order id): the bare FastAPI endpoint, the hot
SKU and spread orders over HTTP with 1 and 2 processes, the flash sale, cancels, the
service layer through the same batcher the HTTP path uses against pgbench's one hot row,
the cost of 1,000,000 orders already in the tables, and every serve process's RSS.
Each figure is printed with its ratio and its target."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.env import fresh_database, progress, wait_for_headroom
from bench.http_server import HttpServer, http_server
from bench.pgbench import pgbench_hot_row
from bench.scenarios import Ctx
from bench.workload import ACTOR, seed
from stockguard.cache.redis_cache import RedisCache
from stockguard.config import CacheMode
from stockguard.domain.errors import OutOfStock
from stockguard.service import catalogue
from stockguard.service.batcher import PlacementBatcher
from stockguard.service.orders import _PAID_WITH_SQL, Placed, PlaceOrder, place_orders
from stockguard.service.uow import Backends
from stockguard.store import keys
from stockguard.store.db import connect_pool
from stockguard.store.orders import _WHOLE

__all__ = ["issue10", "wrk_available"]

LUA = Path(__file__).resolve().parent / "lua" / "orders.lua"
THREADS = 2  # wrk threads: one per core of the machines this runs on


def wrk_available() -> str | None:
    return shutil.which("wrk")


# ---------------------------------------------------------------- the load generator


@dataclass
class Wrk:
    binary: str
    workdir: Path
    runs: int = 0

    async def run(
        self,
        url: str,
        *,
        connections: int,
        duration: float,
        timeout_s: float = 10.0,
        **params: Any,
    ) -> dict[str, Any]:
        """One wrk run; ``params`` become the Lua script's globals."""
        self.runs += 1
        script = self.workdir / f"wrk-{self.runs}.lua"
        defaults: dict[str, Any] = {
            "MODE": "hot",
            "PREFIX": f"w{self.runs}",
            "AUTH": "",
            "SKU": "HOT",
            "SPREAD": 1,
            "QUOTA": 0,
            "THREADS": THREADS,
            "KEYED": False,
            "EACH_PREFIX": "",
            "EACH_N": 0,
        }
        defaults.update(params)
        head = "".join(f"{k} = {_lua(v)}\n" for k, v in defaults.items())
        script.write_text(head + LUA.read_text())
        args = [
            self.binary, "-t", str(THREADS), "-c", str(connections),
            "-d", f"{max(1, round(duration))}s", "--timeout", f"{round(timeout_s)}s",
            "-s", str(script), url,
        ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await proc.communicate()
        text = out.decode(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("WRKJSON ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed: {err.decode(errors='replace')[-500:]} {text[-500:]}")
        raw = json.loads(line[len("WRKJSON ") :])
        seconds = raw["duration_us"] / 1e6
        if params.get("QUOTA"):
            # From the first request to the last answer: a thread whose answer wrk lost
            # runs on to the duration without counting anything more.
            seconds = min(seconds, max(1e-3, raw["answering_us"] / 1e6))
        statuses = {int(k): v for k, v in raw["statuses"].items()}
        return {
            "connections": connections,
            "seconds": round(seconds, 3),
            "answered": raw["answered"],
            "per_s": round(raw["answered"] / seconds, 1) if seconds else 0.0,
            "statuses": statuses,
            "socket_errors": {k: v for k, v in raw["errors"].items() if k != "status" and v},
            "latency_ms": {k: round(v / 1000, 2) for k, v in raw["latency_us"].items()},
        }


def _lua(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


# ---------------------------------------------------------------- serve processes' memory


@dataclass
class RssWatch:
    """Samples the resident memory of every serve process while the figures are made."""

    pids: set[int] = field(default_factory=set)
    peak_mb: dict[str, float] = field(default_factory=dict)

    def sample(self) -> None:
        for pid in list(self.pids):
            for p in (pid, *_children(pid)):
                rss = _rss_mb(p)
                if rss is not None:
                    name = f"pid {p}"
                    self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), rss)

    @contextlib.asynccontextmanager
    async def watching(self, server: HttpServer) -> AsyncIterator[None]:
        self.pids.add(server.pid)

        async def loop() -> None:
            while True:
                self.sample()
                await asyncio.sleep(0.5)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            self.sample()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.pids.discard(server.pid)

    @property
    def max_mb(self) -> float:
        return max(self.peak_mb.values(), default=0.0)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# ---------------------------------------------------------------- the run


async def issue10(ctx: Ctx) -> dict[str, Any]:
    binary = wrk_available()
    if binary is None:
        return {"skipped": "wrk is not installed (apt-get install wrk)"}
    cfg = ctx.cfg
    smoke = cfg.smoke
    seconds = 1.0 if smoke else max(5.0, cfg.duration * 2)
    wrk = Wrk(binary, ctx.env.workdir)
    rss = RssWatch()
    out: dict[str, Any] = {"load_generator": f"wrk, {THREADS} threads", "seconds": seconds}
    rows = out["rows"] = {}
    env = ctx.env
    server_args: dict[str, Any] = {
        "database_url": env.database_url,
        "redis_url": env.redis_url,
        "redis_prefix": env.redis_prefix,
        "admin_key": ctx.admin_key,
        "workdir": env.workdir,
        "pool_max": 20,
    }
    c32, c128, c16 = (8, 16, 4) if smoke else (32, 128, 16)

    async def measure(name: str, server: HttpServer, **params: Any) -> dict[str, Any]:
        params.setdefault("AUTH", ctx.admin_key)
        cell = await wrk.run(server.base_url, duration=seconds, **params)
        rows[name] = cell
        progress(
            f"{name:<34} c={cell['connections']:<4} {cell['per_s']:>9.1f}/s "
            f"p99 {cell['latency_ms']['p99']:>8.2f} ms  {cell['statuses']}"
        )
        return cell

    await wait_for_headroom(env.database_url, 45, 120.0 if smoke else 900.0)
    async with http_server(**server_args, app="bench.bare_app:app") as bare:
        await measure("bare_c32", bare, connections=c32, PREFIX="bare32")
        await measure("bare_c128", bare, connections=c128, PREFIX="bare128")

    async with http_server(**server_args) as one, rss.watching(one):
        await measure("hot_1proc_c32", one, connections=c32, PREFIX="hot1", SKU=ctx.cat.hot)
        await measure(
            "hot_1proc_c32_keyed",
            one,
            connections=c32,
            PREFIX="hot1k",
            SKU=ctx.cat.hot,
            KEYED=True,
        )
        await measure(
            "spread_1proc_c32",
            one,
            connections=c32,
            PREFIX="sp1",
            MODE="spread",
            SPREAD=len(ctx.cat.spread),
        )
        out["flash_sale"] = await _flash_sale(ctx, wrk, one, c128, smoke, rows)
        out["cancel"] = await _each_once(
            ctx, wrk, one, c16, seconds, rows, mode="cancel", row="cancel_c16"
        )
        payments = out["payments"] = await _payments(ctx, wrk, one, c32, seconds, rows, "")

    # Whether group commit pays for payments: the same rows without batching.
    async with http_server(**server_args, order_batching="false") as alone, rss.watching(alone):
        unbatched = await _payments(ctx, wrk, alone, c32, seconds, rows, "_unbatched")
    payments["unbatched"] = unbatched
    payments["batched_over_unbatched"] = {
        shape: _ratio(payments[shape]["per_s"], unbatched[shape]["per_s"])
        for shape in ("hot_c32", "spread_c32")
    }
    progress(f"payments batched / unbatched: {payments['batched_over_unbatched']}")

    async with http_server(**server_args, workers=2) as two, rss.watching(two):
        await measure(
            "spread_2proc_c32",
            two,
            connections=c32,
            PREFIX="sp2",
            MODE="spread",
            SPREAD=len(ctx.cat.spread),
        )

    out["service_batcher"] = await _service_batcher(ctx, seconds)
    out["pgbench"] = await _pgbench(ctx, seconds)
    out["growth"] = await _growth(ctx, wrk, server_args, c32, seconds, rss, smoke)
    out["rss_mb"] = {"max": round(rss.max_mb, 1), "per_process": rss.peak_mb}
    out["targets"] = _targets(out)
    for t in out["targets"]:
        progress(
            f"target {t['name']:<44} {t['measured']:>10} ratio {t['ratio']:>7} "
            f"(target {t['target']}) {'met' if t['met'] else 'MISSED'}"
        )
    return out


async def _flash_sale(
    ctx: Ctx, wrk: Wrk, server: HttpServer, connections: int, smoke: bool, rows: dict[str, Any]
) -> dict[str, Any]:
    """1,000 units, 20,000 buyers (each with its own order id), all over HTTP."""
    units, buyers = (20, 200) if smoke else (1_000, 20_000)
    sku = f"FLASH-{ctx.env.redis_prefix.strip(':')[-8:] or 'x'}"
    async with ctx.service(2) as backends:
        await catalogue.put_sku(backends, sku, "flash sale over HTTP")
        await catalogue.adjust_stock(
            backends,
            catalogue.Adjustment(sku=sku, location="loc-a", reason="received", delta=units),
            ACTOR,
        )
    ctx.cat.extra.append(sku)
    cell = await wrk.run(
        server.base_url,
        connections=connections,
        duration=60,
        AUTH=ctx.admin_key,
        MODE="flash",
        SKU=sku,
        PREFIX="flash",
        QUOTA=buyers // THREADS,
    )
    rows["flash_c128"] = cell
    async with ctx.service(2) as backends:
        won = await backends.pool.fetchval("SELECT count(*) FROM order_lines WHERE sku = $1", sku)
        level = await backends.pool.fetchrow(
            "SELECT sum(on_hand) AS on_hand, sum(reserved) AS reserved FROM inventory_levels "
            "WHERE sku = $1",
            sku,
        )
    assert level is not None
    created = cell["statuses"].get(201, 0)
    refused = cell["statuses"].get(409, 0)
    ok = (
        won == units
        and created == units
        and int(level["reserved"]) == units
        and cell["answered"] >= 0.99 * buyers  # wrk may lose an answer on a reconnect
    )
    progress(
        f"flash sale over HTTP: {created} answered 201, {won} orders stored, {refused} refused "
        f"of {cell['answered']} answered ({buyers} sent), {cell['per_s']:.0f} decisions/s"
        + ("" if ok else "  FAILED")
    )
    return {
        "units": units,
        "buyers": buyers,
        "answered": cell["answered"],
        "answered_201": created,
        "answered_409": refused,
        "orders_stored": won,
        "reserved": int(level["reserved"]),
        "decisions_per_s": cell["per_s"],
        "latency_ms": cell["latency_ms"],
        "ok": ok,
    }


async def _payments(
    ctx: Ctx,
    wrk: Wrk,
    server: HttpServer,
    connections: int,
    seconds: float,
    rows: dict[str, Any],
    suffix: str,
) -> dict[str, Any]:
    """Pending orders (one unit of the hot SKU each; the spread shape) paid once each."""
    n = 200 if ctx.cfg.smoke else 10_000
    return {
        "hot_c32": await _each_once(
            ctx, wrk, server, connections, seconds, rows,
            mode="pay", row=f"pay_hot_c32{suffix}", hot=True, n=n,
        ),
        "spread_c32": await _each_once(
            ctx, wrk, server, connections, seconds, rows,
            mode="pay", row=f"pay_spread_c32{suffix}", n=n,
        ),
    }  # fmt: skip


async def _each_once(
    ctx: Ctx,
    wrk: Wrk,
    server: HttpServer,
    connections: int,
    seconds: float,
    rows: dict[str, Any],
    *,
    mode: str,
    row: str,
    hot: bool = False,
    n: int = 30_000,
) -> dict[str, Any]:
    """``n`` orders placed first (in batches; one unit of the hot SKU each, or the spread
    shape), then each cancelled (``mode`` "cancel") or paid ("pay") once over HTTP."""
    n = 200 if ctx.cfg.smoke else n
    prefix = f"{row}{ctx.orders.run_id}-"
    async with ctx.service(2) as backends:
        for start in range(0, n, 200):
            batch = [
                PlaceOrder(
                    id=f"{prefix}{i}",
                    lines=ctx.orders.hot_lines() if hot else ctx.orders.spread_lines(),
                )
                for i in range(start, min(n, start + 200))
            ]
            for result in await place_orders(backends, batch, ACTOR):
                if not isinstance(result, Placed):
                    raise RuntimeError(f"could not prepare an order to {mode}: {result!r}")
    cell = await wrk.run(
        server.base_url,
        connections=connections,
        duration=seconds,
        AUTH=ctx.admin_key,
        MODE=mode,
        EACH_PREFIX=prefix,
        EACH_N=n,
        QUOTA=n // THREADS,
    )
    rows[row] = cell
    progress(
        f"{row} over HTTP c={connections}: {cell['per_s']:.0f}/s, "
        f"p99 {cell['latency_ms']['p99']} ms {cell['statuses']}"
    )
    return {"orders_prepared": n, **cell}


async def _service_batcher(ctx: Ctx, seconds: float) -> dict[str, Any]:
    """Hot-SKU placements from many tasks through the PlacementBatcher the HTTP path uses
    (one process, its own pool), counting PostgreSQL statements per order."""
    tasks = 32 if ctx.cfg.smoke else 512
    statements = 0

    def count(_record: Any) -> None:
        nonlocal statements
        statements += 1

    await wait_for_headroom(ctx.env.database_url, 10, 120.0 if ctx.cfg.smoke else 900.0)

    async def logged(conn: asyncpg.Connection) -> None:
        from stockguard.store.db import _init_connection

        await _init_connection(conn)
        conn.add_query_logger(count)

    pool = await asyncpg.create_pool(
        ctx.env.database_url,
        min_size=4,
        max_size=8,
        init=logged,
        server_settings={"plan_cache_mode": "force_custom_plan", "jit": "off", "timezone": "UTC"},
    )
    backends = Backends(pool=pool, cache=ctx.cache, cache_mode=CacheMode.STRICT)
    batcher = PlacementBatcher(lambda: backends)
    placed = refused = 0
    stop = time.perf_counter() + seconds

    async def buyer(i: int) -> None:
        nonlocal placed, refused
        n = 0
        while time.perf_counter() < stop:
            n += 1
            outcome = await batcher.place(
                PlaceOrder(id=f"sb{ctx.orders.run_id}-{i}-{n}", lines=((ctx.cat.hot, 1),)),
                ACTOR,
            )
            if isinstance(outcome, Placed):
                placed += 1
            elif isinstance(outcome, OutOfStock):
                refused += 1
            else:
                raise RuntimeError(f"service batcher: {outcome!r}")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(buyer(i) for i in range(tasks)))
        elapsed = time.perf_counter() - started
        lone_before = statements
        await batcher.place(
            PlaceOrder(id=f"sb{ctx.orders.run_id}-lone", lines=((ctx.cat.hot, 1),)), ACTOR
        )
        lone = statements - lone_before
    finally:
        await pool.close()
    result = {
        "tasks": tasks,
        "orders_per_s": round(placed / elapsed, 1),
        "placed": placed,
        "refused": refused,
        "batches": batcher.batches,
        "mean_batch": round(batcher.decided / max(1, batcher.batches), 1),
        "largest_batch": batcher.largest,
        "statements_per_order": round((lone_before) / max(1, placed), 2),
        "statements_lone_order": lone,
    }
    progress(f"service layer through the batcher: {result}")
    return result


async def _pgbench(ctx: Ctx, seconds: float) -> dict[str, Any]:
    if ctx.cfg.smoke:
        return {"skipped": "not in smoke runs"}
    await wait_for_headroom(ctx.env.database_url, 12, 900.0)
    out = await pgbench_hot_row(ctx.env.database_url, ctx.env.workdir, [8], round(seconds))
    progress(f"pgbench one hot row c=8: {out.get('8')}")
    return out


# ---------------------------------------------------------------- cost growth

_LOAD_SQL = """
INSERT INTO orders (id, status, channel, preferred_locations, allow_split,
                    reservation_ttl_seconds, request_hash, created_at, updated_at,
                    cancel_reason)
SELECT 'g-' || g, 'cancelled', NULL, '{}', true, 900, md5(g::text),
       now() - interval '30 days' + g * interval '1 second',
       now() - interval '30 days' + g * interval '1 second', 'bench history'
FROM generate_series(1, $1) g;
INSERT INTO order_lines (order_id, line_no, sku, quantity)
SELECT 'g-' || g, 1, 'S' || lpad((g % $2)::text, 5, '0'), 1 + g % 3
FROM generate_series(1, $1) g;
INSERT INTO reservations (order_id, line_no, sku, location, quantity, status, expires_at,
                          created_at, updated_at)
SELECT 'g-' || g, 1, 'S' || lpad((g % $2)::text, 5, '0'), 'loc-a', 1 + g % 3, 'released',
       now() - interval '29 days', now() - interval '30 days', now() - interval '30 days'
FROM generate_series(1, $1) g;
INSERT INTO stock_movements (sku, location, on_hand_delta, reserved_delta, reason, order_id,
                             reservation_id, actor)
SELECT r.sku, r.location, 0, d.delta * r.quantity, d.reason, r.order_id, r.id, 'bench'
FROM reservations r
CROSS JOIN (VALUES (1, 'reserve'), (-1, 'release')) AS d(delta, reason)
WHERE r.order_id LIKE 'g-%';
INSERT INTO order_inventory_logs (order_id, action, reservation_ids, actor)
SELECT r.order_id, a.action, ARRAY[r.id], 'bench'
FROM reservations r
CROSS JOIN (VALUES ('RESERVED'), ('RELEASED')) AS a(action)
WHERE r.order_id LIKE 'g-%';
"""


async def _load_history(url: str, orders: int, spread: int) -> float:
    """Orders with their lines, reservations, ledger and log rows, set-based (the
    history of a served shop: released reservations, a ledger that sums to nothing)."""
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        for statement in _LOAD_SQL.strip().split(";\n"):
            sql = statement.strip().rstrip(";")
            if not sql:
                continue
            args = [a for i, a in ((1, orders), (2, spread)) if f"${i}" in sql]
            await conn.execute(sql, *args)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _checkpoint(url: str) -> float:
    """Write out what the load left dirty, so the measurement after it is not paying for
    the load's own writes (a checkpoint changes no statistics, so no plan)."""
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await conn.execute("CHECKPOINT")
        return time.perf_counter() - started
    finally:
        await conn.close()


_HOT_STATEMENTS: dict[str, tuple[str, list[Any]]] = {
    "order_existence": (
        "SELECT now() AS now, ARRAY(SELECT id FROM orders WHERE id = ANY($1::text[])) AS ids",
        [["g-500000", "nope"]],
    ),
    "order_read": ("SELECT id, status FROM orders WHERE id = $1", ["g-500000"]),
    "whole_orders": (f"{_WHOLE} WHERE o.id = ANY($1::text[])", [["g-1", "g-2", "g-500000"]]),
    "reservations_of_order": (
        "SELECT id FROM reservations WHERE order_id = $1 AND status IN ('reserved', 'committed')",
        ["g-500000"],
    ),
    "payments_recorded": (_PAID_WITH_SQL, [["manual", "stripe"], ["m-g-1", "pi_x"]]),
}


async def _plans(url: str) -> dict[str, Any]:
    """Each hot-path statement's plan as the served pool makes it (custom plans, no
    ANALYZE), after six executions (when a generic plan would have been kept)."""
    pool = await connect_pool(url, min_size=1, max_size=1)
    out: dict[str, Any] = {}
    try:
        async with pool.acquire() as conn:
            for name, (sql, args) in _HOT_STATEMENTS.items():
                stmt = await conn.prepare(sql)
                for _ in range(6):
                    await stmt.fetch(*args)
                plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
                doc = json.loads(plan) if isinstance(plan, str) else plan
                nodes = _node_types(doc[0]["Plan"])
                out[name] = {
                    "nodes": nodes,
                    "seq_scan": any(
                        "Seq Scan on orders" in n or "Seq Scan on res" in n for n in nodes
                    ),
                    "jit": "JIT" in doc[0],
                }
    finally:
        await pool.close()
    return out


_BIG_SCANS = ("Seq Scan on orders", "Seq Scan on reservations", "Seq Scan on order_lines")


def _node_types(plan: dict[str, Any]) -> list[str]:
    name = plan["Node Type"] + (f" on {plan['Relation Name']}" if "Relation Name" in plan else "")
    return [name, *(n for sub in plan.get("Plans", ()) for n in _node_types(sub))]


async def _growth(
    ctx: Ctx,
    wrk: Wrk,
    server_args: dict[str, Any],
    connections: int,
    seconds: float,
    rss: RssWatch,
    smoke: bool,
) -> dict[str, Any]:
    """Spread throughput in a database of its own, fresh and then with 10^6 orders (and
    their rows) loaded, never ANALYZEd: plans must stay good on their own."""
    history = 2_000 if smoke else 1_000_000
    spread = 300 if smoke else 10_000
    name = f"{ctx.env.database_name}_growth"
    prefix = f"{ctx.env.redis_prefix}growth:"  # its SKUs have the main database's names
    async with fresh_database(ctx.env.server_url, name, progress) as url:
        pool = await connect_pool(url, min_size=1, max_size=2)
        try:
            await seed(
                Backends(
                    pool=pool,
                    cache=RedisCache(ctx.cache.client, prefix),
                    cache_mode=CacheMode.STRICT,
                ),
                spread_skus=spread,
                spread_on_hand=1_000_000,
                hot_on_hand=1_000_000,
            )
            async with pool.acquire() as conn:
                await keys.create_key(conn, "admin", "bench", ctx.admin_key)
        finally:
            await pool.close()
        args = {**server_args, "database_url": url, "redis_prefix": prefix}
        params: dict[str, Any] = {"MODE": "spread", "SPREAD": spread, "AUTH": ctx.admin_key}
        async with http_server(**args) as server, rss.watching(server):
            fresh = await wrk.run(
                server.base_url, connections=connections, duration=seconds, PREFIX="gf", **params
            )
            progress(f"growth: fresh database spread {fresh['per_s']}/s")
            loaded_s = await _load_history(url, history, spread)
            progress(f"growth: loaded {history} orders and their rows in {loaded_s:.1f} s")
            settled_s = await _checkpoint(url)
            progress(f"growth: CHECKPOINT after the load took {settled_s:.1f} s")
            grown = await wrk.run(
                server.base_url, connections=connections, duration=seconds, PREFIX="gg", **params
            )
            progress(f"growth: with {history} orders spread {grown['per_s']}/s")
        plans = await _plans(url)
    return {
        "history_orders": history,
        "load_seconds": round(loaded_s, 1),
        "checkpoint_seconds": round(settled_s, 1),
        "fresh": fresh,
        "grown": grown,
        "plans_without_analyze": plans,
    }


# ---------------------------------------------------------------- ratios and targets


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def _targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    rows = out["rows"]
    bare32 = rows["bare_c32"]["per_s"]
    bare128 = rows["bare_c128"]["per_s"]
    targets: list[dict[str, Any]] = []

    def add(name: str, measured: float, ratio: float, target: str, met: bool) -> None:
        targets.append(
            {"name": name, "measured": measured, "ratio": ratio, "target": target, "met": met}
        )

    hot = rows["hot_1proc_c32"]["per_s"]
    add(
        "hot SKU 1 process c=32 / bare c=32",
        hot,
        _ratio(hot, bare32),
        ">= 0.5",
        hot >= 0.5 * bare32,
    )
    hot_k = rows["hot_1proc_c32_keyed"]["per_s"]
    add(
        "hot SKU with Idempotency-Key / bare c=32",
        hot_k,
        _ratio(hot_k, bare32),
        ">= 0.5",
        hot_k >= 0.5 * bare32,
    )
    sp1 = rows["spread_1proc_c32"]["per_s"]
    add(
        "spread 1 process c=32 / bare c=32", sp1, _ratio(sp1, bare32), ">= 0.4", sp1 >= 0.4 * bare32
    )
    sp2 = rows["spread_2proc_c32"]["per_s"]
    add("spread 2 processes / 1 process", sp2, _ratio(sp2, sp1), ">= 1.6", sp2 >= 1.6 * sp1)
    flash = out["flash_sale"]
    fl = flash["decisions_per_s"]
    add(
        "flash sale decisions/s / bare c=128",
        fl,
        _ratio(fl, bare128),
        ">= 0.5 and exactly the units sold",
        fl >= 0.5 * bare128 and flash["ok"],
    )
    p99 = out["cancel"]["latency_ms"]["p99"]
    add("cancel c=16 p99 ms", p99, _ratio(p99, 20.0), "<= 20 ms", p99 <= 20.0)
    sb = out["service_batcher"]["orders_per_s"]
    pg = out["pgbench"].get("8", {}).get("tps") if isinstance(out["pgbench"], dict) else None
    if pg:
        add("service batcher hot / pgbench c=8", sb, _ratio(sb, pg), ">= 2", sb >= 2 * pg)
    growth = out["growth"]
    g0, g1 = growth["fresh"]["per_s"], growth["grown"]["per_s"]
    add(
        f"spread with {growth['history_orders']} orders / fresh",
        g1,
        _ratio(g1, g0),
        ">= 0.9",
        g1 >= 0.9 * g0,
    )
    plans = growth["plans_without_analyze"].items()
    bad = [k for k, v in plans if v["seq_scan"] or v["jit"]]
    add("hot statements with a Seq Scan or JIT at 10^6", len(bad), 0.0, "0", not bad)
    mb = out["rss_mb"]["max"]
    add("serve RSS MB (max)", mb, _ratio(mb, 250.0), "< 250 MB", mb < 250.0)
    return targets
