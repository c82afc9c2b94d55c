"""The parts under the use cases, exercised for real: deadlock retry, cache repair when
Redis is down, webhook parsing edge cases, verify finding a broken invariant."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from stockguard.cache.redis_cache import RedisCache
from stockguard.config import CacheMode
from stockguard.domain.errors import InvalidSignature, PaymentReused
from stockguard.domain.model import OrderStatus
from stockguard.embedded import start_redis
from stockguard.service import catalogue, orders
from stockguard.service.orders import PlaceOrder
from stockguard.service.uow import Backends, repair_cache
from stockguard.service.webhooks import PaymentEvent, handle_event, parse_razorpay, parse_stripe
from stockguard.store.db import retrying
from stockguard.store.sqlscript import split_sql
from tests.conftest import Stocker


async def test_a_real_deadlock_is_retried_and_never_reaches_the_caller(
    pool: asyncpg.Pool, uid: str
) -> None:
    """Two transactions lock two rows in opposite orders: PostgreSQL kills one, and
    ``retrying`` runs it again so both finish."""
    table = f"deadlock_{uid}"
    await pool.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n int)")
    await pool.execute(f"INSERT INTO {table} VALUES (1, 0), (2, 0)")
    both_hold_first = asyncio.Barrier(2)
    attempts = {"a": 0, "b": 0}

    def worker(name: str, first: int, second: int) -> asyncio.Future[None]:
        async def once() -> None:
            attempts[name] += 1
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"UPDATE {table} SET n = n + 1 WHERE id = $1", first)
                if attempts[name] == 1:
                    await both_hold_first.wait()
                await conn.execute(f"UPDATE {table} SET n = n + 1 WHERE id = $1", second)

        return asyncio.ensure_future(retrying(once))

    try:
        await asyncio.gather(worker("a", 1, 2), worker("b", 2, 1))
        rows = await pool.fetch(f"SELECT n FROM {table} ORDER BY id")
        assert [r["n"] for r in rows] == [2, 2]  # both transactions committed once
        assert sorted(attempts.values()) == [1, 2]  # exactly one was retried
    finally:
        await pool.execute(f"DROP TABLE {table}")


async def test_repair_with_redis_down_leaves_the_sku_dirty(
    pool: asyncpg.Pool, stock: Stocker, uid: str, tmp_path: Path
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 3}})
    server = start_redis(tmp_path)
    client = aioredis.Redis.from_url(server.url, socket_timeout=0.3)
    backends = Backends(pool, RedisCache(client, "r:"), CacheMode.STRICT, 0.3)
    server.stop()
    try:
        with pytest.raises((OSError, aioredis.ConnectionError)):
            await repair_cache(backends, [sku])
        dirty = await pool.fetchval("SELECT count(*) FROM cache_dirty WHERE sku = $1", sku)
        assert dirty == 1
    finally:
        await client.aclose()
    await repair_cache(Backends(pool, None), [sku])  # no cache: nothing to do


async def test_cache_disabled_mode_writes_nothing_to_redis(
    pool: asyncpg.Pool, backends: Backends, stock: Stocker, uid: str
) -> None:
    sku, loc = f"S{uid}", f"w{uid}"
    disabled = Backends(pool, backends.cache, CacheMode.DISABLED)
    await catalogue.put_location(disabled, loc, loc, 1, True, "t")
    await catalogue.put_sku(disabled, sku, sku)
    await catalogue.adjust_stock(disabled, catalogue.Adjustment(sku, loc, "received", delta=2), "t")
    await orders.place_order(disabled, PlaceOrder(f"o{uid}", ((sku, 1),)), "t")
    assert backends.cache is not None
    assert (await backends.cache.read([sku]))[sku] is None
    (avail,) = await catalogue.availability(disabled, [sku])
    assert (avail.available, avail.source) == (1, "postgres")


def test_split_sql_keeps_function_bodies_whole() -> None:
    script = """
    -- a comment
    CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'x; y';
    END $$;
    CREATE TABLE t (a int);
    SELECT 1"""
    statements = split_sql(script)
    assert len(statements) == 3
    assert statements[0].startswith("CREATE FUNCTION")
    assert "END $$" in statements[0]
    assert statements[2] == "SELECT 1"


# ------------------------------------------------------------ webhook parsing


def test_stripe_without_a_secret_or_with_a_non_json_body_is_refused() -> None:
    with pytest.raises(InvalidSignature, match="no Stripe webhook secret"):
        parse_stripe(b"{}", "t=1,v1=x", None, 300)
    body = b"not json"
    t = int(time.time())
    mac = hmac.new(b"s", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    with pytest.raises(InvalidSignature, match="not a Stripe event"):
        parse_stripe(body, f"t={t},v1={mac}", "s", 300)


def test_razorpay_without_a_secret_or_with_a_non_json_body_is_refused() -> None:
    with pytest.raises(InvalidSignature, match="no Razorpay webhook secret"):
        parse_razorpay(b"{}", "sig", None)
    body = b"\xff\xfe not utf-8"
    with pytest.raises(InvalidSignature, match="not a Razorpay event"):
        parse_razorpay(body, "00", "s")
    body = b"[1, 2"
    mac = hmac.new(b"s", body, hashlib.sha256).hexdigest()
    with pytest.raises(InvalidSignature, match="not a Razorpay event"):
        parse_razorpay(body, mac, "s")


def test_stripe_event_fields_of_the_wrong_type_are_treated_as_missing() -> None:
    body = json.dumps(
        {
            "id": "evt_1",
            "type": "payment_intent.succeeded",
            "data": {"object": {"id": 5, "amount_received": True, "metadata": "x"}},
        }
    ).encode()
    t = int(time.time())
    mac = hmac.new(b"s", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    event = parse_stripe(body, f"t={t},v1={mac}", "s", 300)
    assert (event.payment_id, event.amount, event.order_id) == (None, None, None)


async def test_events_missing_what_a_payment_needs_are_ignored(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    def event(**kw: object) -> PaymentEvent:
        base: dict[str, object] = {
            "provider": "stripe",
            "event_id": f"e{uid}{len(kw)}{sorted(kw)}",
            "event_type": "payment_intent.succeeded",
            "order_id": f"o{uid}",
            "payment_id": "pi",
            "amount": None,
            "currency": None,
        }
        base.update(kw)
        return PaymentEvent(**base)  # type: ignore[arg-type]

    assert await handle_event(backends, event(event_id="")) == {"ignored": "event has no id"}
    assert await handle_event(backends, event(order_id=None)) == {
        "ignored": "no order_id in the payment's metadata/notes"
    }
    assert await handle_event(backends, event(payment_id=None)) == {
        "ignored": "no payment id in the event"
    }
    sku, loc = f"S{uid}", f"w{uid}"
    await stock({sku: {loc: 2}})
    await orders.place_order(backends, PlaceOrder(f"o{uid}", ((sku, 1),)), "t")
    await orders.delete_order(backends, f"o{uid}", "t")
    assert await handle_event(backends, event(event_id=f"del{uid}")) == {"ignored": "order deleted"}
    # A payment that already paid another order pays nothing more: ignored, logged.
    await orders.place_order(backends, PlaceOrder(f"p{uid}", ((sku, 1),)), "t")
    await orders.place_order(backends, PlaceOrder(f"q{uid}", ((sku, 1),)), "t")
    pi = f"pi_{uid}"
    paid = await handle_event(
        backends, event(event_id=f"p{uid}", order_id=f"p{uid}", payment_id=pi)
    )
    assert paid["order"].status is OrderStatus.PAID
    got = await handle_event(backends, event(event_id=f"q{uid}", order_id=f"q{uid}", payment_id=pi))
    assert got == {"ignored": f"payment stripe/{pi} already paid order p{uid}"}
    assert (await orders.get_order(backends, f"q{uid}")).status is OrderStatus.PENDING
    reason = await backends.pool.fetchval(
        "SELECT error_reason FROM order_inventory_logs WHERE order_id = $1 ORDER BY id DESC "
        "LIMIT 1",
        f"q{uid}",
    )
    assert reason == "PAYMENT_REUSED"
    with pytest.raises(PaymentReused):
        await orders.pay_order(backends, f"q{uid}", orders.PaymentProof("stripe", pi), "t")
