"""``stockguard orders returns ORDER_ID`` (CLI tests are sync: the command runs its own
event loop)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from stockguard.cache.redis_cache import RedisCache
from stockguard.cli import app
from stockguard.domain.model import OrderStatus
from stockguard.service import catalogue, orders, returns
from stockguard.service.uow import Backends
from stockguard.store.db import connect_pool
from tests.conftest import Servers


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, servers: Servers, migrated: str) -> CliRunner:
    monkeypatch.setenv("STOCKGUARD_DATABASE_URL", servers.database_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_PREFIX", servers.redis_prefix)
    monkeypatch.setenv("COLUMNS", "400")  # Rich tables unwrapped, so words stay whole
    return CliRunner()


def test_cli_lists_an_order_s_returns(cli_env: CliRunner, servers: Servers, uid: str) -> None:
    sku, loc, oid = f"R{uid}", f"w{uid}", f"o{uid}"
    runner = asyncio.Runner()

    async def setup() -> None:
        # The shared pool belongs to the session loop; this sync test uses its own.
        pool = await connect_pool(servers.database_url, min_size=1, max_size=2)
        client = aioredis.Redis.from_url(servers.redis_url)
        own = Backends(pool, RedisCache(client, servers.redis_prefix))
        try:
            await catalogue.put_location(own, loc, loc, 1, True, "t")
            await catalogue.put_sku(own, sku, sku)
            await catalogue.adjust_stock(
                own, catalogue.Adjustment(sku, loc, "received", delta=4), "t"
            )
            await orders.place_order(own, orders.PlaceOrder(oid, ((sku, 3),)), "t")
            await orders.place_order(own, orders.PlaceOrder(f"p{uid}", ((sku, 1),)), "t")
            await orders.pay_order(own, oid, orders.PaymentProof("manual", f"p{oid}"), "t")
            for target in (OrderStatus.PROCESSING, OrderStatus.SHIPPED):
                await orders.set_status(own, oid, target, "t")
            line = returns.ReturnLine(sku, 2, "damaged")
            await returns.record_return(
                own, returns.ReturnRequest(f"r{uid}", oid, (line,), note="torn"), "t"
            )
        finally:
            await client.aclose()
            await pool.close()

    try:
        runner.run(setup())
    finally:
        runner.close()
    listed = cli_env.invoke(app, ["orders", "returns", oid])
    assert listed.exit_code == 0, listed.output
    assert f"returns of {oid}: 1" in listed.output
    row = next(line for line in listed.output.splitlines() if f"r{uid}" in line)
    assert [cell.strip() for cell in row.split("│")[1:-1]][2:] == [
        sku, "2", "damaged", loc, "torn",
    ]  # fmt: skip
    empty = cli_env.invoke(app, ["orders", "returns", f"p{uid}"])
    assert empty.exit_code == 0, empty.output
    assert f"no returns for order p{uid}" in empty.output
    none = cli_env.invoke(app, ["orders", "returns", f"x{uid}"])
    assert none.exit_code == 1
    assert "not_found" in none.output
    helped = cli_env.invoke(app, ["orders", "returns", "--help"])
    assert "An order's returns" in helped.output
    assert "the order's id" in helped.output
    assert "returns" in cli_env.invoke(app, ["orders", "--help"]).output
