"""Where one operation's time goes, at concurrency 1: every PostgreSQL statement it runs
(asyncpg's query logger: the round trip as the client sees it, i.e. server time, loopback
and asyncpg's encoding and decoding), the Redis calls, and the rest (Python in this
process, roughly: it is what is left). Runs on its own one-connection pool after a few
warm-up operations; the release of the connection to the pool (asyncpg's reset query)
counts too."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from bench.env import progress
from bench.workload import ACTOR
from stockguard.cache.redis_cache import RedisCache, SkuAvailability, Written
from stockguard.config import CacheMode
from stockguard.service.orders import Placed, PlaceOrder, cancel_order, place_order, place_orders
from stockguard.service.uow import Backends
from stockguard.store.db import connect_pool

__all__ = ["statement_trace"]

_SPACES = re.compile(r"\s+")


class TimedCache(RedisCache):
    """A RedisCache that adds up the time of its writes and reads."""

    seconds: float = 0.0
    calls: int = 0

    async def write(self, states: Iterable[SkuAvailability]) -> Written:
        t0 = time.perf_counter()
        try:
            return await super().write(states)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1

    async def read(self, skus: Sequence[str]) -> dict[str, tuple[int, dict[str, int]] | None]:
        t0 = time.perf_counter()
        try:
            return await super().read(skus)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


def _label(sql: str) -> str:
    text = _SPACES.sub(" ", sql).strip()
    return text if len(text) <= 90 else text[:87] + "..."


async def _trace(
    name: str,
    op: Callable[[], Awaitable[object]],
    n: int,
    records: list[tuple[str, float]],
    cache: TimedCache,
    warmup: int = 0,
) -> dict[str, Any]:
    for _ in range(warmup):  # first uses of a connection prepare statements, load types
        await op()
    per_sql: dict[str, list[float]] = {}
    wall = pg = redis = 0.0
    statements = 0
    for _ in range(n):
        records.clear()
        cache.seconds, cache.calls = 0.0, 0
        t0 = time.perf_counter()
        await op()
        wall += time.perf_counter() - t0
        await asyncio.sleep(0)  # the query logger's callbacks run on the next loop pass
        redis += cache.seconds
        for sql, elapsed in records:
            per_sql.setdefault(_label(sql), []).append(elapsed)
            pg += elapsed
            statements += 1
    ms = 1000 / n
    out = {
        "ops": n,
        "wall_ms": round(wall * ms, 3),
        "postgres_round_trips": round(statements / n, 2),
        "postgres_ms": round(pg * ms, 3),
        "redis_ms": round(redis * ms, 3),
        "python_ms": round((wall - pg - redis) * ms, 3),
        "statements": [
            {
                "sql": sql,
                "per_op": round(len(times) / n, 2),
                "mean_ms": round(1000 * sum(times) / len(times), 3),
            }
            for sql, times in per_sql.items()
        ],
    }
    progress(
        f"trace {name:<13} {out['wall_ms']:6.2f} ms = {out['postgres_round_trips']:.1f} "
        f"PostgreSQL round trips {out['postgres_ms']:.2f} ms + Redis {out['redis_ms']:.2f} ms "
        f"+ Python {out['python_ms']:.2f} ms"
    )
    return out


async def statement_trace(
    database_url: str,
    cache: RedisCache,
    make_hot: Callable[[], PlaceOrder],
    make_spread: Callable[[], PlaceOrder],
    n: int,
) -> dict[str, Any]:
    records: list[tuple[str, float]] = []

    def logger(record: Any) -> None:
        records.append((str(record.query), float(record.elapsed)))

    pool = await connect_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            conn.add_query_logger(logger)
        timed = TimedCache(cache.client, cache.prefix)
        backends = Backends(pool=pool, cache=timed, cache_mode=CacheMode.STRICT)
        out: dict[str, Any] = {}

        async def hot() -> None:
            await place_order(backends, make_hot(), ACTOR)

        async def spread() -> None:
            await place_order(backends, make_spread(), ACTOR)

        warm = max(5, n // 10)
        out["place_order_hot"] = await _trace("place hot", hot, n, records, timed, warm)
        out["place_order_spread"] = await _trace("place spread", spread, n, records, timed, warm)
        placed = await place_orders(backends, [make_spread() for _ in range(n + warm)], ACTOR)
        ids = [p.order.id for p in placed if isinstance(p, Placed)]

        async def cancel() -> None:
            await cancel_order(backends, ids.pop(), ACTOR, "bench")

        out["cancel_order"] = await _trace("cancel", cancel, n, records, timed, warm)
        return out
    finally:
        await pool.close()
