"""Redis parity under faults: these tests start their own redis-server processes on free
ports and kill, pause, flush and restart them (DESIGN.md §5, seed 000)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from functools import partial

import asyncpg
import httpx
import pytest

from stockguard.api.app import build_app
from stockguard.cache.redis_cache import RedisCache
from stockguard.config import Settings
from stockguard.domain.errors import (
    CacheUnavailable,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    OutOfStock,
)
from stockguard.domain.model import OrderStatus
from stockguard.service import catalogue, orders
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.reconcile import reconcile
from stockguard.service.uow import Backends
from tests.conftest import Keys, Stocker
from tests.helpers import (
    assert_cache_parity,
    assert_invariants,
    expire_now,
    ledger,
    level,
    race,
)
from tests.redis_faults import OwnRedis


async def _snapshot(pool: asyncpg.Pool, sku: str, loc: str) -> tuple[object, ...]:
    moves = await pool.fetchval("SELECT count(*) FROM stock_movements WHERE sku = $1", sku)
    return (await level(pool, sku, loc), await ledger(pool, sku, loc), moves)


# ------------------------------------------------------------ strict: roll back on failure


async def test_seed000_redis_failure_during_cancel_rolls_back_postgres(
    own: OwnRedis, stock_in: Callable[..., Awaitable[None]], uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock_in({sku: {loc: 10}})
    await orders.place_order(own.strict, PlaceOrder(oid, ((sku, 4),)), "t")
    before = await _snapshot(own.strict.pool, sku, loc)
    own.kill()
    with pytest.raises(CacheUnavailable):
        await orders.cancel_order(own.strict, oid, "t")
    order = await orders.get_order(own.strict, oid)
    assert order.status == OrderStatus.PENDING  # the status change was rolled back
    assert await _snapshot(own.strict.pool, sku, loc) == before
    own.restart()  # an empty Redis: the reconciler rebuilds it
    await reconcile(own.strict, repair=True, skus=[sku])
    cancelled = await orders.cancel_order(own.strict, oid, "t")
    assert cancelled.status == OrderStatus.CANCELLED
    assert (await own.strict.cache.read([sku]))[sku] == (10, {loc: 10})  # type: ignore[union-attr]


async def test_redis_timeout_during_cancel_answers_503_and_changes_nothing(
    own: OwnRedis,
    stock_in: Callable[..., Awaitable[None]],
    uid: str,
    settings: Settings,
    api_keys: Keys,
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock_in({sku: {loc: 3}})
    await orders.place_order(own.strict, PlaceOrder(oid, ((sku, 2),)), "t")
    before = await _snapshot(own.strict.pool, sku, loc)
    app = build_app(settings, own.strict)
    headers = {"Authorization": f"Bearer {api_keys.service}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as client:
        own.pause()  # a hung Redis: the write times out
        try:
            response = await client.post(f"/v1/orders/{oid}/cancel")
        finally:
            own.resume()
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "cache_unavailable"
        got = await client.get(f"/v1/orders/{oid}")
        assert got.json()["status"] == "pending"
    assert await _snapshot(own.strict.pool, sku, loc) == before


async def test_reconcile_with_redis_down_answers_503_cache_unavailable(
    own: OwnRedis,
    stock_in: Callable[..., Awaitable[None]],
    uid: str,
    settings: Settings,
    api_keys: Keys,
) -> None:
    """Not a 500: the answer the document (and API.md) give for an unreachable cache."""
    await stock_in({f"S{uid}": {f"w{uid}": 1}})
    app = build_app(settings, own.strict)
    headers = {"Authorization": f"Bearer {api_keys.admin}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers
    ) as client:
        own.kill()
        try:
            response = await client.post("/v1/admin/cache/reconcile", json={"repair": True})
        finally:
            own.restart()
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "cache_unavailable"
        again = await client.post("/v1/admin/cache/reconcile", json={"repair": True})
        assert again.status_code == 200, again.text
        assert again.json()["checked"] >= 1


@pytest.mark.parametrize("operation", ["reserve", "delete", "ship", "adjust", "pay_late"])
async def test_redis_failure_rolls_back_every_level_change(
    own: OwnRedis, stock_in: Callable[..., Awaitable[None]], uid: str, operation: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock_in({sku: {loc: 10}})
    b = own.strict
    if operation != "reserve":
        await orders.place_order(b, PlaceOrder(oid, ((sku, 4),)), "t")
    if operation == "ship":
        await orders.pay_order(b, oid, PaymentProof("manual", f"p{uid}"), "t")
        await orders.set_status(b, oid, OrderStatus.PROCESSING, "t")
    if operation == "pay_late":
        await expire_now(b, oid)
    before = await _snapshot(b.pool, sku, loc)
    status_before = None if operation == "reserve" else (await orders.get_order(b, oid)).status
    own.kill()
    actions: dict[str, Callable[[], Awaitable[object]]] = {
        "reserve": partial(orders.place_order, b, PlaceOrder(oid, ((sku, 4),)), "t"),
        "delete": partial(orders.delete_order, b, oid, "t"),
        "ship": partial(orders.set_status, b, oid, OrderStatus.SHIPPED, "t"),
        "adjust": partial(
            catalogue.adjust_stock, b, catalogue.Adjustment(sku, loc, "damaged", delta=-1), "t"
        ),
        "pay_late": partial(orders.pay_order, b, oid, PaymentProof("manual", f"p{uid}"), "t"),
    }
    with pytest.raises(CacheUnavailable):
        await actions[operation]()
    assert await _snapshot(b.pool, sku, loc) == before
    if operation == "reserve":
        with pytest.raises(NotFound):
            await orders.get_order(b, oid)
    else:
        assert (await orders.get_order(b, oid)).status == status_before
    await assert_invariants(b.pool)


async def test_commit_failure_after_redis_write_restores_redis_from_postgres(
    own: OwnRedis, stock_in: Callable[..., Awaitable[None]], uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock_in({sku: {loc: 10}})
    b = own.strict
    await orders.place_order(b, PlaceOrder(oid, ((sku, 4),)), "t")
    # A real COMMIT failure: a deferred constraint trigger that fires only at COMMIT, and
    # only for this order.
    trigger = f"fail_at_commit_{uid}"
    await b.pool.execute(
        f"""
        CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'commit refused for the test'; END $$;
        CREATE CONSTRAINT TRIGGER {trigger} AFTER UPDATE ON orders
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
        WHEN (NEW.id = '{oid}' AND NEW.status = 'cancelled') EXECUTE FUNCTION {trigger}();
        """
    )
    try:
        with pytest.raises(asyncpg.RaiseError):
            await orders.cancel_order(b, oid, "t")
    finally:
        await b.pool.execute(f"DROP TRIGGER {trigger} ON orders; DROP FUNCTION {trigger}()")
    assert (await orders.get_order(b, oid)).status == OrderStatus.PENDING
    assert await level(b.pool, sku, loc) == (10, 4)
    # Redis had taken the cancel's write (10 free) before COMMIT failed; it is rewritten.
    assert (await own.strict.cache.read([sku]))[sku] == (6, {loc: 6})  # type: ignore[union-attr]
    await assert_cache_parity(b, [sku])


# ------------------------------------------------------------ degraded mode


async def test_degraded_mode_commits_without_redis_and_reconciler_repairs(
    own: OwnRedis, stock_in: Callable[..., Awaitable[None]], uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    await stock_in({sku: {loc: 10}})
    b = own.degraded
    own.kill()
    placed = await orders.place_order(b, PlaceOrder(oid, ((sku, 3),)), "t")
    assert placed.order.status == OrderStatus.PENDING
    await orders.cancel_order(b, f"{oid}", "t")
    await orders.place_order(b, PlaceOrder(f"{oid}b", ((sku, 2),)), "t")
    assert await level(b.pool, sku, loc) == (10, 2)
    dirty = await b.pool.fetchval("SELECT count(*) FROM cache_dirty WHERE sku = $1", sku)
    assert dirty == 1
    # Committed changes announce themselves whether Redis failed them or was skipped.
    announced = await b.pool.fetch(
        "SELECT type FROM events WHERE data->'order'->>'id' = ANY($1) ORDER BY id",
        [oid, f"{oid}b"],
    )
    assert [r["type"] for r in announced] == ["order.placed", "order.cancelled", "order.placed"]
    changed = await b.pool.fetchval(
        "SELECT count(*) FROM events WHERE type = 'stock.changed' AND data->>'sku' = $1", sku
    )
    assert changed == 4  # stocked, placed, cancelled, placed
    # Reads fall back to PostgreSQL while Redis is away.
    (avail,) = await catalogue.availability(b, [sku])
    assert (avail.available, avail.source) == (8, "postgres")
    own.restart()
    report = await reconcile(b, repair=True, skus=[sku])
    assert report.repaired >= 1  # every dirty SKU is rewritten, this one among them
    assert await b.pool.fetchval("SELECT count(*) FROM cache_dirty WHERE sku = $1", sku) == 0
    await assert_cache_parity(b, [sku])
    (avail,) = await catalogue.availability(b, [sku])
    assert (avail.available, avail.source) == (8, "redis")


# ------------------------------------------------------------ losing everything


@pytest.mark.parametrize("loss", ["flushdb", "restart"])
async def test_reconciler_rebuilds_after_redis_loses_everything(
    own: OwnRedis, stock_in: Callable[..., Awaitable[None]], uid: str, loss: str
) -> None:
    skus = [f"R{uid}{i}" for i in range(30)]
    loc = f"w{uid}"
    await stock_in({s: {loc: i + 1} for i, s in enumerate(skus)})
    await orders.place_order(own.strict, PlaceOrder(f"o{uid}", ((skus[0], 1),)), "t")
    if loss == "flushdb":
        await own.client.flushdb()
    else:
        own.kill()
        own.restart()
    # Meanwhile reads fall back to PostgreSQL and stay correct.
    got = await catalogue.availability(own.strict, skus)
    assert [a.available for a in got] == [0] + [i + 1 for i in range(1, 30)]
    assert {a.source for a in got} == {"postgres"}
    report = await reconcile(own.strict, repair=False, skus=skus)
    assert {d.sku for d in report.drifted} == set(skus)
    assert all(d.redis is None for d in report.drifted)
    await reconcile(own.strict, repair=True, skus=skus)
    await assert_cache_parity(own.strict, skus)
    assert (await reconcile(own.strict, repair=False, skus=skus)).drifted == []


async def test_full_sweep_repairs_drift_it_finds(
    own: OwnRedis, stock_in: Callable[..., Awaitable[None]], uid: str
) -> None:
    sku, loc = f"F{uid}", f"w{uid}"
    await stock_in({sku: {loc: 7}})
    inv, _, _ = own.strict.cache.keys(sku)  # type: ignore[union-attr]
    await own.client.set(inv, 999)  # drift by hand
    report = await reconcile(own.strict, repair=True, batch=50)
    assert any(d.sku == sku and d.redis == 999 and d.postgres == 7 for d in report.drifted)
    await assert_cache_parity(own.strict, [sku])


# ------------------------------------------------------------ concurrency


async def test_concurrent_operations_leave_redis_equal_to_postgres(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    rng = random.Random(uid)
    for n in range(20):
        skus = [f"K{uid}{n}{i}" for i in range(3)]
        locs = [f"a{uid}", f"b{uid}"]
        await stock({s: {locs[0]: 40, locs[1]: 40} for s in skus})
        placed = [
            (await orders.place_order(backends, PlaceOrder(f"p{uid}{n}-{i}", ((s, 1),)), "t"))
            for i, s in enumerate(skus * 10)
        ]
        ops: list[Callable[[], Awaitable[object]]] = []
        for i in range(200):
            kind = rng.random()
            sku = rng.choice(skus)
            if kind < 0.5:
                req = PlaceOrder(f"c{uid}{n}-{i}", ((sku, rng.randint(1, 3)),))
                ops.append(partial(orders.place_order, backends, req, "t"))
            elif kind < 0.8 and placed:
                ops.append(partial(orders.cancel_order, backends, placed.pop().order.id, "t"))
            else:
                adj = catalogue.Adjustment(
                    sku, rng.choice(locs), "received", delta=rng.randint(1, 3)
                )
                ops.append(partial(catalogue.adjust_stock, backends, adj, "t"))
        results = await race(*ops)
        bad = [
            r
            for r in results
            if isinstance(r, BaseException) and not isinstance(r, (OutOfStock, InsufficientStock))
        ]
        assert bad == []
        await assert_cache_parity(backends, skus)
    await assert_invariants(backends.pool)


async def test_randomized_run_leaves_zero_drift(
    backends: Backends, stock: Stocker, uid: str
) -> None:
    rng = random.Random(f"{uid}-500")
    skus = [f"Q{uid}{i}" for i in range(8)]
    locs = [f"a{uid}", f"b{uid}"]
    await stock({s: {locs[0]: 20, locs[1]: 5} for s in skus})
    live: list[str] = []
    paid: list[str] = []
    for i in range(500):
        roll = rng.random()
        try:
            if roll < 0.4:
                lines = tuple((s, rng.randint(1, 4)) for s in rng.sample(skus, rng.randint(1, 3)))
                p = await orders.place_order(backends, PlaceOrder(f"q{uid}-{i}", lines), "t")
                live.append(p.order.id)
            elif roll < 0.55 and live:
                oid = live.pop(rng.randrange(len(live)))
                await orders.pay_order(backends, oid, PaymentProof("manual", f"m{oid}"), "t")
                paid.append(oid)
            elif roll < 0.7 and live:
                await orders.cancel_order(backends, live.pop(rng.randrange(len(live))), "t")
            elif roll < 0.8 and live:
                await orders.delete_order(backends, live.pop(rng.randrange(len(live))), "t")
            elif roll < 0.9 and paid:
                oid = paid.pop(rng.randrange(len(paid)))
                await orders.set_status(backends, oid, OrderStatus.PROCESSING, "t")
                await orders.set_status(backends, oid, OrderStatus.SHIPPED, "t")
            else:
                adj = catalogue.Adjustment(
                    rng.choice(skus), rng.choice(locs), "correction",
                    delta=rng.choice([-3, -2, -1, 1, 2, 3, 4, 5, 6]),
                )  # fmt: skip
                await catalogue.adjust_stock(backends, adj, "t")
        except (OutOfStock, InsufficientStock, InvalidTransition):
            pass
    report = await reconcile(backends, repair=False, skus=skus)
    assert report.checked == len(skus)
    assert report.drifted == []
    await assert_invariants(backends.pool)


async def test_older_write_never_overwrites_newer(cache: RedisCache, uid: str) -> None:
    from stockguard.cache.redis_cache import SkuAvailability

    sku = f"V{uid}"
    assert (await cache.write([SkuAvailability(sku, 7, {"a": 5, "b": 1})])).count == 1
    # A slow write from an earlier transaction arrives late: refused.
    assert (await cache.write([SkuAvailability(sku, 6, {"a": 9})])).count == 0
    assert (await cache.read([sku]))[sku] == (6, {"a": 5, "b": 1})
    # The same or a newer version is applied, and a location gone from the hash is dropped.
    assert (await cache.write([SkuAvailability(sku, 8, {"a": 4})])).count == 1
    assert (await cache.read([sku]))[sku] == (4, {"a": 4})
    await cache.delete([sku])
    assert (await cache.read([sku]))[sku] is None


async def test_script_cache_loss_is_survived(cache: RedisCache, uid: str) -> None:
    from stockguard.cache.redis_cache import SkuAvailability

    sku = f"W{uid}"
    await cache.write([SkuAvailability(sku, 1, {"a": 1})])
    await cache.client.script_flush()  # as after a Redis restart
    assert (await cache.write([SkuAvailability(sku, 2, {"a": 2})])).count == 1
    assert (await cache.read([sku]))[sku] == (2, {"a": 2})


@pytest.mark.parametrize("evicted", ["locations", "version", "inventory"])
async def test_a_key_evicted_alone_is_a_miss_and_never_lets_an_older_write_win(
    backends: Backends, stock: Stocker, uid: str, evicted: str
) -> None:
    """Redis evicts keys one by one (maxmemory): a lone survivor must not be an answer."""
    from stockguard.cache.redis_cache import SkuAvailability

    assert backends.cache is not None
    sku, loc = f"P{uid}", f"w{uid}"
    await stock({sku: {loc: 7}})
    inventory, locations, version = backends.cache.keys(sku)
    stale = SkuAvailability(sku, 0, {loc: 99})  # an old write, still in flight
    await backends.cache.client.delete(
        {"locations": locations, "version": version, "inventory": inventory}[evicted]
    )
    assert (await backends.cache.read([sku]))[sku] is None
    (got,) = await catalogue.availability(backends, [sku])
    assert (got.available, got.locations, got.source) == (7, {loc: 7}, "postgres")
    written = await backends.cache.write([stale])
    assert written.count == 0
    # A partial entry is dropped rather than trusted: the late write lands nowhere.
    assert written.dropped == ((sku,) if evicted == "version" else ())
    assert (await backends.cache.read([sku]))[sku] is None
    # The next change writes the SKU whole again.
    await catalogue.adjust_stock(backends, catalogue.Adjustment(sku, loc, "received", delta=1), "t")
    await assert_cache_parity(backends, [sku])
