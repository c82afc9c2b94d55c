"""Wiring: settings -> embedded servers if needed -> migrations -> pool and cache."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from stockguard.cache.redis_cache import RedisCache
from stockguard.config import CacheMode, Settings
from stockguard.embedded import EmbeddedRedis, start_postgres, start_redis
from stockguard.logging import get_logger
from stockguard.service.uow import Backends
from stockguard.store import keys
from stockguard.store.db import connect_pool
from stockguard.store.migrate import upgrade_async

__all__ = ["Endpoints", "open_backends", "resolve_endpoints"]

log = get_logger(__name__)


@dataclass
class Endpoints:
    """Where PostgreSQL and Redis are; holds embedded servers alive while referenced."""

    database_url: str
    redis_url: str
    handles: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for h in self.handles:
            if isinstance(h, EmbeddedRedis):
                h.stop()
        self.handles.clear()


def resolve_endpoints(settings: Settings) -> Endpoints:
    """Use the configured servers, or start embedded ones under ``settings.data_dir``."""
    handles: list[Any] = []
    if settings.database_url is not None:
        db_url = settings.database_url.get_secret_value()
    else:
        db_url, pg = start_postgres(settings.data_dir)
        handles.append(pg)
        log.info("using_embedded_postgres", data_dir=str(settings.data_dir))
    if settings.redis_url is not None:
        redis_url = settings.redis_url.get_secret_value()
    else:
        emb = start_redis(settings.data_dir)
        handles.append(emb)
        redis_url = emb.url
        log.info("using_embedded_redis", data_dir=str(settings.data_dir), port=emb.port)
    return Endpoints(db_url, redis_url, handles)


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
    if settings.cache_mode is not CacheMode.DISABLED:
        client = aioredis.Redis.from_url(
            endpoints.redis_url,
            socket_timeout=settings.redis_timeout_seconds,
            socket_connect_timeout=settings.redis_timeout_seconds,
        )
        cache = RedisCache(client, settings.redis_prefix)
    try:
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
