"""A hypothesis state machine: random operations against the real service (PostgreSQL and
Redis) and a small in-memory model; after every step the model's totals must equal the
database's, every invariant check must hold and Redis must equal PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

import asyncpg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from stockguard.cache.redis_cache import RedisCache
from stockguard.config import CacheMode
from stockguard.domain.errors import InsufficientStock, InvalidTransition, OutOfStock
from stockguard.domain.model import OrderStatus
from stockguard.service import catalogue, orders
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.uow import Backends
from stockguard.store.db import connect_pool
from tests.conftest import Servers
from tests.helpers import assert_cache_parity, assert_invariants, expire_now

LOCATIONS = ("a", "b")
SKUS = ("x", "y", "z")


@dataclass
class ModelOrder:
    lines: dict[str, int]
    status: str = "pending"
    held: bool = True  # holds its units (reserved or committed)
    deleted: bool = False


@dataclass
class Model:
    on_hand: dict[str, int] = field(default_factory=dict)  # per SKU, all locations
    reserved: dict[str, int] = field(default_factory=dict)
    orders: dict[str, ModelOrder] = field(default_factory=dict)


class StockMachine(RuleBasedStateMachine):
    servers: Servers

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.tag = secrets.token_hex(3)
        self.model = Model()
        self.n = 0
        self.backends = self.runner.run(self._open())

    async def _open(self) -> Backends:
        import redis.asyncio as aioredis

        pool = await connect_pool(self.servers.database_url, min_size=1, max_size=4)
        client = aioredis.Redis.from_url(self.servers.redis_url)
        return Backends(pool, RedisCache(client, self.servers.redis_prefix), CacheMode.STRICT, 2.0)

    def teardown(self) -> None:
        async def close() -> None:
            assert self.backends.cache is not None
            await self.backends.cache.client.aclose()
            await self.backends.pool.close()

        self.runner.run(close())
        self.runner.close()

    def sku(self, s: str) -> str:
        return f"h{self.tag}{s}"

    def loc(self, s: str) -> str:
        return f"h{self.tag}{s}"

    @initialize()
    def setup(self) -> None:
        async def go() -> None:
            for i, loc in enumerate(LOCATIONS):
                await catalogue.put_location(self.backends, self.loc(loc), loc, i, True, "h")
            for s in SKUS:
                await catalogue.put_sku(self.backends, self.sku(s), s)
                self.model.on_hand[s] = 0
                self.model.reserved[s] = 0

        self.runner.run(go())

    # ------------------------------------------------------------ rules

    @rule(
        sku=st.sampled_from(SKUS),
        loc=st.sampled_from(LOCATIONS),
        delta=st.integers(-4, 8).filter(bool),
    )
    def adjust(self, sku: str, loc: str, delta: int) -> None:
        adj = catalogue.Adjustment(self.sku(sku), self.loc(loc), "correction", delta=delta)
        try:
            self.runner.run(catalogue.adjust_stock(self.backends, adj, "h"))
        except InsufficientStock:
            return  # refused: the model stays as it was
        self.model.on_hand[sku] += delta

    @rule(lines=st.dictionaries(st.sampled_from(SKUS), st.integers(1, 4), min_size=1, max_size=3))
    def place(self, lines: dict[str, int]) -> None:
        self.n += 1
        oid = f"h{self.tag}-{self.n}"
        free = {s: self.model.on_hand[s] - self.model.reserved[s] for s in SKUS}
        fits = all(free[s] >= q for s, q in lines.items())
        req = PlaceOrder(oid, tuple((self.sku(s), q) for s, q in lines.items()))
        try:
            self.runner.run(orders.place_order(self.backends, req, "h"))
        except OutOfStock:
            assert not fits, "refused although the stock was there"
            return
        assert fits, "placed although the stock was not there"
        for s, q in lines.items():
            self.model.reserved[s] += q
        self.model.orders[oid] = ModelOrder(dict(lines))

    def _pick(self, data: st.DataObject, statuses: set[str]) -> str | None:
        ids = sorted(
            i for i, o in self.model.orders.items() if o.status in statuses and not o.deleted
        )
        return data.draw(st.sampled_from(ids)) if ids else None

    def _release(self, o: ModelOrder) -> None:
        if o.held:
            for s, q in o.lines.items():
                self.model.reserved[s] -= q
            o.held = False

    @precondition(lambda self: bool(self.model.orders))
    @rule(data=st.data())
    def pay(self, data: st.DataObject) -> None:
        oid = self._pick(data, {"pending"})
        if oid is None:
            return
        o = self.model.orders[oid]
        free = {s: self.model.on_hand[s] - self.model.reserved[s] for s in SKUS}
        got = self.runner.run(
            orders.pay_order(self.backends, oid, PaymentProof("manual", f"p{oid}"), "h")
        )
        if o.held:
            assert got.status == OrderStatus.PAID
        elif all(free[s] >= q for s, q in o.lines.items()):  # late payment, re-reserved
            assert got.status == OrderStatus.PAID
            for s, q in o.lines.items():
                self.model.reserved[s] += q
            o.held = True
        else:
            assert got.status == OrderStatus.NEEDS_REVIEW
        o.status = got.status.value

    @precondition(lambda self: bool(self.model.orders))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        oid = self._pick(data, {"pending", "paid", "processing", "needs_review", "cancelled"})
        if oid is None:
            return
        self.runner.run(orders.cancel_order(self.backends, oid, "h"))
        o = self.model.orders[oid]
        self._release(o)
        o.status = "cancelled"

    @precondition(lambda self: bool(self.model.orders))
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        oid = self._pick(data, {"pending", "paid", "processing", "needs_review", "cancelled"})
        if oid is None:
            return
        self.runner.run(orders.delete_order(self.backends, oid, "h"))
        o = self.model.orders[oid]
        self._release(o)
        o.deleted = True

    @precondition(lambda self: bool(self.model.orders))
    @rule(data=st.data())
    def ship(self, data: st.DataObject) -> None:
        oid = self._pick(data, {"paid"})
        if oid is None:
            return
        self.runner.run(orders.set_status(self.backends, oid, OrderStatus.PROCESSING, "h"))
        self.runner.run(orders.set_status(self.backends, oid, OrderStatus.SHIPPED, "h"))
        o = self.model.orders[oid]
        for s, q in o.lines.items():
            self.model.reserved[s] -= q
            self.model.on_hand[s] -= q
        o.held = False
        o.status = "shipped"
        try:
            self.runner.run(orders.cancel_order(self.backends, oid, "h"))
            raise AssertionError("a shipped order was cancelled")
        except InvalidTransition:
            pass

    @precondition(lambda self: bool(self.model.orders))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        oid = self._pick(data, {"pending", "paid"})
        if oid is None:
            return

        self.runner.run(expire_now(self.backends, oid))
        o = self.model.orders[oid]
        if o.status == "pending":  # a paid order's stock is never released by expiry
            self._release(o)

    # ------------------------------------------------------------ invariants

    @invariant()
    def database_matches_model(self) -> None:
        async def check() -> None:
            pool: asyncpg.Pool = self.backends.pool
            rows = await pool.fetch(
                "SELECT sku, sum(on_hand) AS on_hand, sum(reserved) AS reserved "
                "FROM inventory_levels WHERE sku = ANY($1::text[]) GROUP BY sku",
                [self.sku(s) for s in SKUS],
            )
            got = {r["sku"]: (int(r["on_hand"]), int(r["reserved"])) for r in rows}
            for s in SKUS:
                assert got.get(self.sku(s), (0, 0)) == (
                    self.model.on_hand[s],
                    self.model.reserved[s],
                )
            await assert_invariants(pool)
            await assert_cache_parity(
                self.backends, [self.sku(s) for s in SKUS if self.sku(s) in got]
            )

        if self.model.on_hand:
            self.runner.run(check())


def test_random_operations_keep_every_invariant(servers: Servers, migrated: str) -> None:
    StockMachine.servers = servers
    run = settings(
        max_examples=25,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )(StockMachine).TestCase
    run().runTest()
