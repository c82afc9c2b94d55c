"""`stockguard orders …`: an operator takes a needs_review order to resolved with the
CLI alone (docs/RUNBOOK.md §3)."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from stockguard.cli import app
from stockguard.domain.model import OrderStatus
from stockguard.service import catalogue, orders
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.uow import Backends
from tests.conftest import Servers
from tests.helpers import expire_now


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, servers: Servers) -> CliRunner:
    monkeypatch.setenv("STOCKGUARD_DATABASE_URL", servers.database_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_PREFIX", servers.redis_prefix)
    monkeypatch.setenv("COLUMNS", "400")  # Rich tables unwrapped, so words stay whole
    return CliRunner()


async def _needs_review(backends: Backends, sku: str, loc: str, oid: str) -> None:
    """A late payment whose stock was taken meanwhile: needs_review."""
    await catalogue.put_location(backends, loc, loc, 1, True, "t")
    await catalogue.put_sku(backends, sku, sku)
    await catalogue.adjust_stock(backends, catalogue.Adjustment(sku, loc, "received", delta=1), "t")
    await orders.place_order(backends, PlaceOrder(oid, ((sku, 1),)), "t")
    await expire_now(backends, oid)
    await orders.place_order(backends, PlaceOrder(f"{oid}x", ((sku, 1),)), "t")
    late = await orders.pay_order(backends, oid, PaymentProof("razorpay", f"pay_9{oid}"), "t")
    assert late.status == OrderStatus.NEEDS_REVIEW


def test_operator_resolves_needs_review_with_the_cli(
    cli_env: CliRunner, servers: Servers, uid: str
) -> None:
    sku, loc, oid = f"S{uid}", f"w{uid}", f"o{uid}"
    runner = asyncio.Runner()
    # The shared pool belongs to the session loop; this sync test uses its own.
    from stockguard.cache.redis_cache import RedisCache
    from stockguard.store.db import connect_pool

    async def setup() -> None:
        import redis.asyncio as aioredis

        pool = await connect_pool(servers.database_url, min_size=1, max_size=2)
        client = aioredis.Redis.from_url(servers.redis_url)
        own = Backends(pool, RedisCache(client, servers.redis_prefix))
        try:
            await _needs_review(own, sku, loc, oid)
        finally:
            await client.aclose()
            await pool.close()

    try:
        runner.run(setup())
    finally:
        runner.close()

    listed = cli_env.invoke(app, ["orders", "needs-review", "--limit", "500"])
    assert listed.exit_code == 0, listed.output
    assert oid in listed.output
    logs = cli_env.invoke(app, ["orders", "logs", oid])
    assert logs.exit_code == 0
    assert "RECOVERY_FAILED" in logs.output
    assert "RESERVATION_EXPIRED_OR_NOT_FOUND" in logs.output
    failed = cli_env.invoke(app, ["orders", "recover", oid])
    assert failed.exit_code == 1
    assert "outcome: failed" in failed.output
    refused = cli_env.invoke(app, ["orders", "resolve", oid, "--to", "processing"])
    assert refused.exit_code == 1
    assert "invalid_transition" in refused.output
    # Step 5: the missing unit is received, then recovery reserves and commits it.
    runner = asyncio.Runner()
    try:

        async def receive() -> None:
            import redis.asyncio as aioredis

            pool = await connect_pool(servers.database_url, min_size=1, max_size=2)
            client = aioredis.Redis.from_url(servers.redis_url)
            try:
                await catalogue.adjust_stock(
                    Backends(pool, RedisCache(client, servers.redis_prefix)),
                    catalogue.Adjustment(sku, loc, "received", delta=1, reference=oid),
                    "t",
                )
            finally:
                await client.aclose()
                await pool.close()

        runner.run(receive())
    finally:
        runner.close()
    recovered = cli_env.invoke(app, ["orders", "recover", oid])
    assert recovered.exit_code == 0, recovered.output
    assert "outcome: success" in recovered.output
    resolved = cli_env.invoke(
        app, ["orders", "resolve", oid, "--to", "processing", "--note", "checked"]
    )
    assert resolved.exit_code == 0, resolved.output
    assert f"order {oid} is now processing" in resolved.output
    uncommitted = cli_env.invoke(app, ["orders", "paid-uncommitted"])
    assert uncommitted.exit_code == 0
    assert oid not in uncommitted.output
    assert cli_env.invoke(app, ["orders", "logs", f"none{uid}"]).exit_code == 1
    assert cli_env.invoke(app, ["orders", "recover", f"none{uid}"]).exit_code == 1
