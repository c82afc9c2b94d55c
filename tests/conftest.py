"""Test fixtures: a real PostgreSQL and a real Redis for every test.

``STOCKGUARD_DATABASE_URL`` / ``STOCKGUARD_REDIS_URL`` name the servers (``.ci/run`` points
them at the machine's own); unset, the embedded servers start in a temporary directory.
Each run creates its own database from the migrations and its own Redis key prefix, and
removes both at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from stockguard.api.app import build_app
from stockguard.cache.redis_cache import RedisCache
from stockguard.config import CacheMode, Settings
from stockguard.embedded import EmbeddedPostgres, EmbeddedRedis, start_postgres, start_redis
from stockguard.service import catalogue
from stockguard.service.uow import Backends
from stockguard.store import keys
from stockguard.store.db import connect_pool
from stockguard.store.migrate import upgrade_async

pytest_plugins = ["tests.redis_faults", "tests.webhook_receiver"]

RUN_ID = secrets.token_hex(4)


@dataclass
class Servers:
    admin_url: str  # a database on the server we may create databases from
    database_url: str  # this run's own database
    redis_url: str
    redis_prefix: str


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def outside_pytest_tmp(prefix: str) -> Iterator[Path]:
    """A temporary directory outside pytest's own: as root, embedded PostgreSQL runs as
    another user, and every pytest session that starts on the machine resets pytest's
    temporary root to 0700, locking a running server out of its data."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    with outside_pytest_tmp("stockguard-test-") as path:
        yield path


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    with outside_pytest_tmp("stockguard-test-servers-") as embedded:
        yield from _servers(embedded)


def _servers(embedded: Path) -> Iterator[Servers]:
    handles: list[EmbeddedPostgres | EmbeddedRedis] = []
    base_db = os.environ.get("STOCKGUARD_DATABASE_URL")
    if not base_db:
        base_db, pg = start_postgres(embedded, "postgres")
        handles.append(pg)
    redis_url = os.environ.get("STOCKGUARD_REDIS_URL")
    if not redis_url:
        emb = start_redis(embedded)
        handles.append(emb)
        redis_url = emb.url
    name = f"stockguard_test_{RUN_ID}"

    async def create() -> None:
        conn = await asyncpg.connect(base_db)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(base_db)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    try:
        yield Servers(base_db, _with_database(base_db, name), redis_url, f"sgtest:{RUN_ID}:")
    finally:
        asyncio.run(drop())
        for h in handles:
            h.stop()


@pytest.fixture(scope="session")
async def migrated(servers: Servers) -> str:
    await upgrade_async(servers.database_url)
    return servers.database_url


@pytest.fixture(scope="session")
async def redis_client(servers: Servers) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(servers.redis_url)
    yield client
    async for key in client.scan_iter(match=f"{servers.redis_prefix}*", count=1000):
        await client.delete(key)
    await client.aclose()


@pytest.fixture(scope="session")
async def pool(migrated: str) -> AsyncIterator[asyncpg.Pool]:
    p = await connect_pool(migrated, min_size=2, max_size=55)
    yield p
    await p.close()


@pytest.fixture(scope="session")
def cache(redis_client: aioredis.Redis, servers: Servers) -> RedisCache:
    return RedisCache(redis_client, servers.redis_prefix)


@pytest.fixture(scope="session")
def backends(pool: asyncpg.Pool, cache: RedisCache) -> Backends:
    return Backends(pool=pool, cache=cache, cache_mode=CacheMode.STRICT, redis_timeout=2.0)


@pytest.fixture
async def impatient(migrated: str, backends: Backends) -> AsyncIterator[Backends]:
    """Backends whose transactions give up on a lock after 200 ms (lock_timeout)."""
    pool = await connect_pool(migrated, min_size=1, max_size=3, lock_timeout_ms=200)
    yield Backends(pool, backends.cache, backends.cache_mode, backends.redis_timeout)
    await pool.close()


@pytest.fixture(scope="session")
def settings(servers: Servers) -> Settings:
    return Settings(
        database_url=servers.database_url,
        redis_url=servers.redis_url,
        redis_prefix=servers.redis_prefix,
        max_body_bytes=1_048_576,
    )


@pytest.fixture
def uid() -> str:
    """A suffix that keeps one test's SKUs, locations and orders apart from the others'."""
    return secrets.token_hex(4)


@dataclass
class Keys:
    admin: str
    service: str


@pytest.fixture(scope="session")
async def api_keys(pool: asyncpg.Pool) -> Keys:
    async with pool.acquire() as conn:
        _, admin = await keys.create_key(conn, "admin", "test-admin")
        _, service = await keys.create_key(conn, "service", "test-service")
    return Keys(admin, service)


@pytest.fixture(scope="session")
async def client(
    settings: Settings, backends: Backends, api_keys: Keys
) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(settings, backends)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://stockguard.test",
        headers={"Authorization": f"Bearer {api_keys.admin}"},
    ) as c:
        yield c


Stocker = Callable[..., Awaitable[None]]


@pytest.fixture
def stock(backends: Backends) -> Stocker:
    """``await stock({"sku": {"loc": on_hand}}, locations={"loc": priority})``."""

    async def make(
        levels: dict[str, dict[str, int]],
        locations: dict[str, int] | None = None,
        channels: dict[str, list[str]] | None = None,
    ) -> None:
        locs = dict(locations or {})
        for per in levels.values():
            for loc in per:
                locs.setdefault(loc, 100)
        for loc, priority in locs.items():
            await catalogue.put_location(backends, loc, loc, priority, True, "test")
        for ch, ch_locs in (channels or {}).items():
            await catalogue.put_channel(backends, ch, ch, ch_locs, "test")
        for sku, per in levels.items():
            await catalogue.put_sku(backends, sku, sku)
            for loc, qty in per.items():
                if qty == 0:  # an empty level: nothing to receive
                    await catalogue.set_safety_stock(backends, sku, loc, 0, "test")
                    continue
                await catalogue.adjust_stock(
                    backends,
                    catalogue.Adjustment(sku=sku, location=loc, reason="received", delta=qty),
                    "test",
                )

    return make
