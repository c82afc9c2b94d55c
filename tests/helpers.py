"""Assertions shared by the tests: levels, ledger, logs, invariants, cache parity."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg
import httpx
from fastapi import FastAPI

from stockguard.service.uow import Backends


async def level(pool: asyncpg.Pool, sku: str, location: str) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT on_hand, reserved FROM inventory_levels WHERE sku = $1 AND location = $2",
        sku,
        location,
    )
    assert row is not None
    return int(row["on_hand"]), int(row["reserved"])


async def ledger(pool: asyncpg.Pool, sku: str, location: str) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT coalesce(sum(on_hand_delta), 0) AS o, coalesce(sum(reserved_delta), 0) AS r "
        "FROM stock_movements WHERE sku = $1 AND location = $2",
        sku,
        location,
    )
    assert row is not None
    return int(row["o"]), int(row["r"])


async def log_actions(pool: asyncpg.Pool, order_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT action FROM order_inventory_logs WHERE order_id = $1 ORDER BY id", order_id
    )
    return [r["action"] for r in rows]


async def assert_invariants(pool: asyncpg.Pool) -> None:
    """Every invariant check of ``stockguard verify`` holds over the whole database, with
    every committed event numbered first (so each SKU's last ``stock.changed`` is checked
    against its levels)."""
    from stockguard.service.verify import verify

    async with pool.acquire() as conn:
        while await conn.fetchval("SELECT stockguard_sequence_events(100000)"):
            pass
        found = await verify(conn)
    assert found == [], found


async def assert_cache_parity(backends: Backends, skus: list[str]) -> None:
    """Redis holds exactly PostgreSQL's availability for these SKUs (invariant 8)."""
    from stockguard.cache.redis_cache import load_availability

    assert backends.cache is not None
    async with backends.pool.acquire() as conn:
        pg = await load_availability(conn, skus)
    cached = await backends.cache.read(skus)
    for sku in skus:
        hit = cached[sku]
        assert hit is not None, f"{sku} missing in Redis"
        assert hit == (pg[sku].total, pg[sku].locations), (sku, hit, pg[sku])


T = TypeVar("T")


async def race(*contenders: Callable[[], Awaitable[T]]) -> list[T | BaseException]:
    """Run the contenders at once: each waits at a barrier until all are ready."""
    barrier = asyncio.Barrier(len(contenders))

    async def go(fn: Callable[[], Awaitable[T]]) -> T:
        await barrier.wait()
        return await fn()

    return await asyncio.gather(*(go(fn) for fn in contenders), return_exceptions=True)


@contextlib.asynccontextmanager
async def holding_locks(
    pool: asyncpg.Pool, select_for_update: str, *args: object
) -> AsyncIterator[None]:
    """Another transaction holds the row locks of ``select_for_update`` meanwhile, and
    rolls back afterwards."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute(select_for_update, *args)
            yield
        finally:
            await tx.rollback()


async def make_overdue(pool: asyncpg.Pool, order_id: str, sku: str | None = None) -> None:
    """Move the order's reservations (or one SKU's) past their ``expires_at``."""
    await pool.execute(
        "UPDATE reservations SET expires_at = now() - interval '1 second' "
        "WHERE order_id = $1 AND ($2::text IS NULL OR sku = $2)",
        order_id,
        sku,
    )


async def expire_now(backends: Backends, order_id: str, sku: str | None = None) -> int:
    """Make the order's reservations (or one SKU's) overdue and run the expiry on it."""
    from stockguard.service.expiry import expire_order

    await make_overdue(backends.pool, order_id, sku)
    return await expire_order(backends, order_id)


async def mark_paid(
    pool: asyncpg.Pool, order_id: str, provider: str = "manual", payment_id: str | None = None
) -> None:
    """The order is paid with its stock left as it is: what a payment whose commit failed
    leaves behind (seed 003), written as the failsafe writes it."""
    await pool.execute(
        "UPDATE orders SET status = 'paid', payment_provider = $2, payment_id = $3, "
        "paid_at = now(), updated_at = now() WHERE id = $1",
        order_id,
        provider,
        payment_id or f"m-{order_id}",
    )


@contextlib.asynccontextmanager
async def app_client(app: FastAPI, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app`` in this process (no server), sending ``key``."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://stockguard.test",
        headers={"Authorization": f"Bearer {key}"},
    ) as c:
        yield c


def assert_replayed(first: Sequence[object], again: Sequence[object]) -> None:
    """Each response of ``again`` is the replay of its request's first answer: the same
    status and bytes, marked ``Idempotent-Replayed``."""
    for one, two in zip(first, again, strict=True):
        assert isinstance(one, httpx.Response), one
        assert isinstance(two, httpx.Response), two
        assert (two.status_code, two.content) == (one.status_code, one.content)
        assert two.headers.get("Idempotent-Replayed") == "true"
