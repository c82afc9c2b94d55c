"""A redis-server of a test's own (fixtures ``own`` and ``stock_in``): the tests kill,
pause, flush and restart it."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from stockguard.cache.redis_cache import RedisCache
from stockguard.config import CacheMode
from stockguard.embedded import EmbeddedRedis, start_redis
from stockguard.service import catalogue
from stockguard.service.uow import Backends

__all__ = ["OwnRedis", "own", "stock_in"]


@dataclass
class OwnRedis:
    """A redis-server of this test's own, and Backends that use it."""

    server: EmbeddedRedis
    data: Path
    client: aioredis.Redis
    strict: Backends
    degraded: Backends

    def kill(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.server = start_redis(self.data, port=self.server.port)

    def pause(self) -> None:
        assert self.server.process is not None
        os.kill(self.server.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.server.process is not None
        os.kill(self.server.process.pid, signal.SIGCONT)


@pytest.fixture
async def own(pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[OwnRedis]:
    server = start_redis(tmp_path)
    client = aioredis.Redis.from_url(server.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    cache = RedisCache(client, "t:")
    own = OwnRedis(
        server=server,
        data=tmp_path,
        client=client,
        strict=Backends(pool, cache, CacheMode.STRICT, 0.3),
        degraded=Backends(pool, cache, CacheMode.DEGRADED, 0.3),
    )
    yield own
    if own.server.process is not None and own.server.process.poll() is None:
        own.resume()
    await client.aclose()
    own.server.stop()


@pytest.fixture
def stock_in(own: OwnRedis) -> Callable[[dict[str, dict[str, int]]], Awaitable[None]]:
    async def make(levels: dict[str, dict[str, int]]) -> None:
        b = own.strict
        for per in levels.values():
            for loc in per:
                await catalogue.put_location(b, loc, loc, 1, True, "t")
        for sku, per in levels.items():
            await catalogue.put_sku(b, sku, sku)
            for loc, qty in per.items():
                adj = catalogue.Adjustment(sku, loc, "received", delta=qty)
                await catalogue.adjust_stock(b, adj, "t")

    return make
