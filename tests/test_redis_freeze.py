"""A frozen Redis (SIGSTOP) under load costs each request at most the Redis timeout, and
the process serves normally the moment Redis answers again (issue 7, item 1)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import httpx
import pytest

from stockguard.api.app import build_app
from stockguard.config import CacheMode, Settings
from stockguard.service.uow import Backends
from stockguard.store.db import connect_pool
from tests.conftest import Keys
from tests.redis_faults import OwnRedis

TIMEOUT = 0.3
MARGIN = 2.0  # scheduling on a loaded 2-core machine


@pytest.fixture
async def small_pool(migrated: str) -> AsyncIterator[asyncpg.Pool]:
    # Few connections and many clients: a request that waits for a second pooled
    # connection while holding one wedges the whole pool.
    pool = await connect_pool(migrated, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.mark.parametrize("mode", [CacheMode.STRICT, CacheMode.DEGRADED])
async def test_frozen_redis_under_load_never_wedges_the_pool(
    own: OwnRedis,
    stock_in: Callable[..., Awaitable[None]],
    small_pool: asyncpg.Pool,
    settings: Settings,
    api_keys: Keys,
    uid: str,
    mode: CacheMode,
) -> None:
    sku, loc = f"F{uid}", f"w{uid}"
    await stock_in({sku: {loc: 100_000}})
    backends = Backends(small_pool, own.strict.cache, mode, TIMEOUT)
    app = build_app(settings, backends)
    headers = {"Authorization": f"Bearer {api_keys.service}"}
    answers: list[tuple[float, float, int]] = []  # started, ended, status
    stop = asyncio.Event()

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers, timeout=30
    ) as client:

        async def buyer(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                body = {"id": f"f{uid}-{n}-{i}", "lines": [{"sku": sku, "quantity": 1}]}
                started = time.monotonic()
                r = await client.post("/v1/orders", json=body)
                answers.append((started, time.monotonic(), r.status_code))
                if r.status_code == 201 and i % 2 == 0:
                    started = time.monotonic()
                    r = await client.post(f"/v1/orders/{body['id']}/cancel")
                    answers.append((started, time.monotonic(), r.status_code))

        buyers = [asyncio.create_task(buyer(n)) for n in range(16)]
        await asyncio.sleep(0.3)  # load running before the freeze
        own.pause()
        freeze = time.monotonic()
        await asyncio.sleep(1.5)
        own.resume()
        thaw = time.monotonic()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*buyers), timeout=30)

        during = [(end - start, status) for start, end, status in answers
                  if end > freeze and start < thaw]  # fmt: skip
        assert len(during) >= 16, during
        # Each request waits out at most one Redis timeout (the breaker's probe) on top
        # of its share of 4 connections: never one timeout per request queued before it.
        assert max(took for took, _ in during) < TIMEOUT + MARGIN, during
        statuses = {status for _, status in during}
        if mode is CacheMode.STRICT:
            assert 503 in statuses
            assert statuses <= {200, 201, 503}, statuses
        else:
            assert statuses <= {200, 201}, statuses
        # Serves normally at once afterwards.
        started = time.monotonic()
        r = await client.post(
            "/v1/orders", json={"id": f"after{uid}", "lines": [{"sku": sku, "quantity": 1}]}
        )
        assert r.status_code == 201, r.text
        assert time.monotonic() - started < 1.0
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text


async def test_healthz_notices_a_wedged_pool(
    small_pool: asyncpg.Pool,
    backends: Backends,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stockguard.api import routes

    monkeypatch.setattr(routes, "HEALTH_POOL_WAIT_SECONDS", 0.2)
    app = build_app(settings, Backends(small_pool, backends.cache, CacheMode.STRICT, 0.3))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        assert (await client.get("/healthz")).json() == {"ok": True}
        held = [await small_pool.acquire() for _ in range(4)]  # every connection, forever
        try:
            r = await client.get("/healthz")
            assert r.status_code == 503
            assert "no pooled database connection" in r.json()["reason"]
        finally:
            for conn in held:
                await small_pool.release(conn)
        assert (await client.get("/healthz")).status_code == 200


async def test_readyz_says_why_redis_is_not_ready(
    own: OwnRedis, settings: Settings, backends: Backends
) -> None:
    app = build_app(settings, own.strict)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        own.pause()
        try:
            r = await client.get("/readyz")
        finally:
            own.resume()
        assert r.status_code == 503
        assert r.json()["checks"] == {"postgres": True, "redis": False}
        assert r.json()["reasons"] == {"redis": "timed out"}
        own.kill()
        r = await client.get("/readyz")
        assert r.json()["reasons"] == {"redis": "connection refused or lost"}
        own.restart()
        r = await client.get("/readyz")
        assert r.status_code == 200
        assert "reasons" not in r.json()
