"""The worker loops (expiry and abandonment, cache reconciler, housekeeping), started with
start_workers and stopped with stop_workers, against real PostgreSQL and Redis.

Waiting is bounded polling of real state (the database, Redis, the worker counters)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
import structlog
from prometheus_client import REGISTRY

from stockguard.cache.redis_cache import RedisCache
from stockguard.config import CacheMode, Settings
from stockguard.domain.model import OrderStatus, ReservationStatus
from stockguard.embedded import start_redis
from stockguard.service import orders
from stockguard.service.expiry import ACTOR as EXPIRY_ACTOR
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.uow import Backends, mark_dirty
from stockguard.workers.loops import purge_idempotency_keys, start_workers, stop_workers
from tests.conftest import Stocker
from tests.helpers import assert_cache_parity, assert_invariants, ledger, level, log_actions

POLL_TIMEOUT = 20.0


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll real state until ``check`` holds; fail after POLL_TIMEOUT seconds."""
    deadline = time.monotonic() + POLL_TIMEOUT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {POLL_TIMEOUT}s waiting for {what}")
        await asyncio.sleep(0.02)


def runs(worker: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "stockguard_worker_runs_total", {"worker": worker, "outcome": outcome}
    )
    return value or 0.0


async def more_runs(worker: str, outcome: str, than: float) -> None:
    async def done() -> bool:
        return runs(worker, outcome) >= than

    await eventually(done, f"{than:g} {outcome} runs of {worker}")


def fast(settings: Settings, **changes: object) -> Settings:
    """The test settings with worker intervals short enough for a test."""
    update: dict[str, object] = {
        "expiry_interval_seconds": 0.05,
        "reconcile_interval_seconds": 0.05,
        "reconcile_full_interval_seconds": 0.05,
    }
    update.update(changes)
    return settings.model_copy(update=update)


@pytest.fixture
async def workers(backends: Backends) -> AsyncIterator[list[list[asyncio.Task[None]]]]:
    """Tasks started by a test; stopped (and checked stopped) afterwards."""
    started: list[list[asyncio.Task[None]]] = []
    yield started
    for tasks in started:
        await stop_workers(tasks)
        assert all(t.cancelled() for t in tasks)


async def reservation_statuses(pool: asyncpg.Pool, order_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT status FROM reservations WHERE order_id = $1 ORDER BY id", order_id
    )
    return [r["status"] for r in rows]


# ---------------------------------------------------------------- expiry


async def test_expiry_loop_expires_unpaid_reservations_and_nothing_else(
    backends: Backends,
    settings: Settings,
    stock: Stocker,
    uid: str,
    workers: list[list[asyncio.Task[None]]],
) -> None:
    sku, loc = f"X{uid}", f"x{uid}"
    await stock({sku: {loc: 10}})
    unpaid, paid, unexpired = f"unpaid-{uid}", f"paid-{uid}", f"long-{uid}"
    await orders.place_order(
        backends, PlaceOrder(unpaid, ((sku, 3),), reservation_ttl_seconds=1), "t"
    )
    await orders.place_order(
        backends, PlaceOrder(paid, ((sku, 2),), reservation_ttl_seconds=1), "t"
    )
    await orders.pay_order(backends, paid, PaymentProof("manual", f"p-{uid}"), "t")
    await orders.place_order(backends, PlaceOrder(unexpired, ((sku, 1),)), "t")
    assert await level(backends.pool, sku, loc) == (10, 6)

    workers.append(start_workers(backends, fast(settings)))

    async def unpaid_expired() -> bool:
        return await reservation_statuses(backends.pool, unpaid) == ["expired"]

    await eventually(unpaid_expired, "the unpaid order's reservation to expire")
    # Two more complete passes: the paid order's reservation (as overdue as the unpaid
    # one's) and the unexpired one were looked at and left alone.
    await more_runs("expiry", "ok", runs("expiry", "ok") + 2)

    assert await level(backends.pool, sku, loc) == (10, 3)
    assert await ledger(backends.pool, sku, loc) == (10, 3)
    assert await reservation_statuses(backends.pool, paid) == ["committed"]
    assert await reservation_statuses(backends.pool, unexpired) == ["reserved"]
    expired_order = await orders.get_order(backends, unpaid)
    assert expired_order.status is OrderStatus.PENDING  # a late payment can still come
    assert (await orders.get_order(backends, paid)).status is OrderStatus.PAID
    assert await log_actions(backends.pool, unpaid) == ["RESERVED", "EXPIRED"]
    assert await log_actions(backends.pool, paid) == ["RESERVED", "COMMITTED"]
    movement = await backends.pool.fetchrow(
        "SELECT reason, actor, reserved_delta, reservation_id FROM stock_movements "
        "WHERE order_id = $1 ORDER BY id DESC LIMIT 1",
        unpaid,
    )
    assert movement is not None
    assert dict(movement.items()) == {
        "reason": "expire",
        "actor": EXPIRY_ACTOR,
        "reserved_delta": -3,
        "reservation_id": expired_order.reservations[0].id,
    }
    await assert_cache_parity(backends, [sku])
    assert backends.cache is not None
    assert (await backends.cache.read([sku]))[sku] == (7, {loc: 7})
    await assert_invariants(backends.pool)


async def test_an_expired_order_is_cancelled_after_the_abandonment_window(
    backends: Backends,
    settings: Settings,
    stock: Stocker,
    uid: str,
    workers: list[list[asyncio.Task[None]]],
) -> None:
    sku, loc = f"Y{uid}", f"y{uid}"
    await stock({sku: {loc: 10}})
    unpaid, paid = f"abandoned-{uid}", f"kept-{uid}"
    await orders.place_order(
        backends, PlaceOrder(unpaid, ((sku, 4),), reservation_ttl_seconds=1), "t"
    )
    await orders.place_order(
        backends, PlaceOrder(paid, ((sku, 5),), reservation_ttl_seconds=1), "t"
    )
    await orders.pay_order(backends, paid, PaymentProof("manual", f"p-{uid}"), "t")

    workers.append(start_workers(backends, fast(settings, abandon_after_seconds=1)))

    async def cancelled() -> bool:
        status = await backends.pool.fetchval("SELECT status FROM orders WHERE id = $1", unpaid)
        return bool(status == "cancelled")

    await eventually(cancelled, "the abandoned order to be cancelled")
    await more_runs("expiry", "ok", runs("expiry", "ok") + 2)

    row = await backends.pool.fetchrow(
        "SELECT cancel_reason, deleted_at FROM orders WHERE id = $1", unpaid
    )
    assert row is not None
    assert (row["cancel_reason"], row["deleted_at"]) == ("abandoned", None)
    assert await reservation_statuses(backends.pool, unpaid) == [ReservationStatus.EXPIRED]
    # Its units came back once, when the reservation expired; cancelling had nothing left.
    assert await log_actions(backends.pool, unpaid) == ["RESERVED", "EXPIRED", "STATUS_CHANGED"]
    assert (await orders.get_order(backends, paid)).status is OrderStatus.PAID
    assert await reservation_statuses(backends.pool, paid) == [ReservationStatus.COMMITTED]
    assert await level(backends.pool, sku, loc) == (10, 5)
    assert await ledger(backends.pool, sku, loc) == (10, 5)
    await assert_cache_parity(backends, [sku])
    await assert_invariants(backends.pool)


# ---------------------------------------------------------------- housekeeping


async def _idempotency_row(pool: asyncpg.Pool, scope: str, key: str, age_seconds: float) -> None:
    await pool.execute(
        "INSERT INTO idempotency_keys (scope, key, request_hash, status_code, created_at) "
        "VALUES ($1, $2, 'h', 201, now() - make_interval(secs => $3))",
        scope,
        key,
        age_seconds,
    )


async def _idempotency_keys(pool: asyncpg.Pool, scope: str) -> list[str]:
    rows = await pool.fetch("SELECT key FROM idempotency_keys WHERE scope = $1 ORDER BY key", scope)
    return [r["key"] for r in rows]


async def test_purge_idempotency_keys_deletes_only_rows_past_their_ttl(
    backends: Backends, uid: str
) -> None:
    scope = f"test-purge-{uid}"
    await _idempotency_row(backends.pool, scope, "fresh", 0)
    await _idempotency_row(backends.pool, scope, "day-old", 86_400 - 600)
    await _idempotency_row(backends.pool, scope, "stale", 86_400 + 600)
    await _idempotency_row(backends.pool, scope, "ancient", 30 * 86_400)

    await purge_idempotency_keys(backends, 86_400)
    assert await _idempotency_keys(backends.pool, scope) == ["day-old", "fresh"]

    await purge_idempotency_keys(backends, 86_400)  # nothing left to purge
    assert await _idempotency_keys(backends.pool, scope) == ["day-old", "fresh"]


async def test_housekeeping_loop_purges_old_idempotency_keys_when_it_starts(
    backends: Backends,
    settings: Settings,
    uid: str,
    workers: list[list[asyncio.Task[None]]],
) -> None:
    scope = f"test-housekeeping-{uid}"
    await _idempotency_row(backends.pool, scope, "kept", 60)
    await _idempotency_row(backends.pool, scope, "purged", 2 * 86_400)
    before = runs("housekeeping", "ok")

    workers.append(start_workers(backends, fast(settings, idempotency_ttl_seconds=86_400)))

    async def purged() -> bool:
        return await _idempotency_keys(backends.pool, scope) == ["kept"]

    await eventually(purged, "the housekeeping loop to purge the old key")
    await more_runs("housekeeping", "ok", before + 1)


# ---------------------------------------------------------------- cache reconciler


async def test_reconciler_loop_rewrites_dirty_and_lost_skus(
    backends: Backends,
    settings: Settings,
    stock: Stocker,
    uid: str,
    workers: list[list[asyncio.Task[None]]],
) -> None:
    lost, dirty, loc = f"L{uid}", f"D{uid}", f"l{uid}"
    await stock({lost: {loc: 6}, dirty: {loc: 8}})
    assert backends.cache is not None
    await backends.cache.delete([lost])  # Redis restarted and forgot it
    await backends.cache.client.set(backends.cache.keys(dirty)[0], "123")  # a stale value
    async with backends.pool.acquire() as conn:
        await mark_dirty(conn, [dirty])

    workers.append(start_workers(backends, fast(settings)))

    async def repaired() -> bool:
        assert backends.cache is not None
        cached = await backends.cache.read([lost, dirty])
        still_dirty = await backends.pool.fetchval(
            "SELECT count(*) FROM cache_dirty WHERE sku = $1", dirty
        )
        return cached == {lost: (6, {loc: 6}), dirty: (8, {loc: 8})} and still_dirty == 0

    await eventually(repaired, "the reconciler to rewrite both SKUs")
    await assert_cache_parity(backends, [lost, dirty])


async def test_a_failing_reconciler_pass_is_counted_and_the_loop_goes_on(
    backends: Backends,
    settings: Settings,
    stock: Stocker,
    uid: str,
    tmp_path: Path,
    workers: list[list[asyncio.Task[None]]],
) -> None:
    """Redis goes away: every reconciler pass fails, is logged and counted, and the loop
    keeps trying; when Redis is back, the next pass rebuilds it from PostgreSQL."""
    sku, loc = f"F{uid}", f"f{uid}"
    await stock({sku: {loc: 9}})
    server = await asyncio.to_thread(start_redis, tmp_path)
    client = aioredis.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)

    down = Backends(
        pool=backends.pool,
        cache=RedisCache(client, f"sgtest-down:{uid}:"),
        cache_mode=CacheMode.STRICT,
        redis_timeout=0.5,
    )
    restarted = None
    try:
        server.stop()
        errors, oks = runs("reconciler", "error"), runs("reconciler", "ok")
        with structlog.testing.capture_logs() as logs:
            tasks = start_workers(down, fast(settings))
            workers.append(tasks)
            await more_runs("reconciler", "error", errors + 3)
        assert runs("reconciler", "ok") == oks
        assert not any(t.done() for t in tasks)
        failures = [e for e in logs if e["event"] == "worker_failed"]
        assert failures
        assert {e["worker"] for e in failures} >= {"reconciler"}
        assert {e["log_level"] for e in failures} == {"error"}

        restarted = await asyncio.to_thread(start_redis, tmp_path, server.port)
        await more_runs("reconciler", "ok", oks + 1)
        assert down.cache is not None
        assert (await down.cache.read([sku]))[sku] == (9, {loc: 9})
        await assert_cache_parity(down, [sku])
    finally:
        await client.aclose()
        if restarted is not None:
            restarted.stop()


async def test_start_workers_without_a_cache_runs_no_reconciler(
    backends: Backends, settings: Settings
) -> None:
    no_cache = Backends(pool=backends.pool, cache=None, cache_mode=CacheMode.DISABLED)
    tasks = start_workers(no_cache, fast(settings))
    with_cache = start_workers(backends, fast(settings))
    assert len(with_cache) == len(tasks) + 1  # the reconciler
    assert not any(t.done() for t in tasks + with_cache)
    await stop_workers(tasks + with_cache)
    assert all(t.cancelled() for t in tasks + with_cache)
