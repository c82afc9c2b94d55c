"""Wiring: settings -> embedded servers if needed -> migrations -> pool and cache."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from stockguard.cache.redis_cache import RedisCache
from stockguard.config import CacheMode, Settings
from stockguard.embedded import EmbeddedServers, open_embedded
from stockguard.logging import get_logger
from stockguard.service.uow import Backends
from stockguard.store import keys
from stockguard.store.db import connect_pool
from stockguard.store.migrate import upgrade_async

__all__ = ["GC_GEN0_THRESHOLD", "Endpoints", "open_backends", "resolve_endpoints", "settle_heap"]

log = get_logger(__name__)


# Allocations between two collections of the youngest generation (CPython's default: 700).
# A request allocates a few hundred objects, so the default collects several times per
# batch of orders; measured (docs/PERFORMANCE.md), the larger threshold with the start-up
# heap frozen cut the hot SKU's p99 over HTTP from 90 to 38 ms and cancels' from 295 to
# 188 ms.
GC_GEN0_THRESHOLD = 50_000


def settle_heap() -> None:
    """Once the service has started: collect, then move everything alive (modules, the
    app and its models, the pools) out of the cyclic collector's sight (``gc.freeze``)
    so that no later collection walks it again, and collect the young generation less
    often. Reference counting still frees almost everything at once; only cycles wait
    for a collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 100, 100)


@dataclass
class Endpoints:
    """Where PostgreSQL and Redis are; while open, holds this process's share of the
    embedded servers (if any)."""

    database_url: str
    redis_url: str
    embedded: EmbeddedServers | None = None

    def close(self) -> None:
        """Leave the embedded servers; the last process to leave stops them."""
        if self.embedded is not None:
            self.embedded.close()
            self.embedded = None


def resolve_endpoints(settings: Settings) -> Endpoints:
    """Use the configured servers, or start (or join) embedded ones under
    ``settings.data_dir``."""
    db_url = None if settings.database_url is None else settings.database_url.get_secret_value()
    redis_url = None if settings.redis_url is None else settings.redis_url.get_secret_value()
    if db_url is not None and redis_url is not None:
        return Endpoints(db_url, redis_url)
    emb = open_embedded(settings.data_dir, postgres=db_url is None, redis=redis_url is None)
    log.info(
        "using_embedded_servers",
        data_dir=str(emb.data_dir),
        postgres=db_url is None,
        redis=redis_url is None,
        new_database=emb.new_database,
        other_users=emb.others,
    )
    db_url = db_url or emb.database_url
    redis_url = redis_url or (emb.redis.url if emb.redis is not None else None)
    assert db_url is not None
    assert redis_url is not None
    return Endpoints(db_url, redis_url, emb)


@contextlib.asynccontextmanager
async def open_backends(
    settings: Settings, endpoints: Endpoints, *, migrate: bool = True
) -> AsyncIterator[Backends]:
    if migrate:
        await upgrade_async(endpoints.database_url)
    pool = await connect_pool(
        endpoints.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        statement_timeout_ms=settings.db_statement_timeout_ms,
        lock_timeout_ms=settings.db_lock_timeout_ms,
    )
    client: aioredis.Redis | None = None
    cache: RedisCache | None = None
    try:
        if settings.cache_mode is not CacheMode.DISABLED:
            # Inside the try: a bad Redis URL raises here, and the pool is closed anyway.
            client = aioredis.Redis.from_url(
                endpoints.redis_url,
                socket_timeout=settings.redis_timeout_seconds,
                socket_connect_timeout=settings.redis_timeout_seconds,
            )
            cache = RedisCache(client, settings.redis_prefix)
        if settings.bootstrap_admin_key is not None:
            async with pool.acquire() as conn:
                await keys.create_key(
                    conn, "admin", "bootstrap", settings.bootstrap_admin_key.get_secret_value()
                )
        yield Backends(
            pool=pool,
            cache=cache,
            cache_mode=settings.cache_mode,
            redis_timeout=settings.redis_timeout_seconds,
        )
    finally:
        if client is not None:
            await client.aclose()
        await pool.close()
