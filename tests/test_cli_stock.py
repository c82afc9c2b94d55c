"""`stockguard stock …`: an operator sees a SKU's levels, marks units damaged, writes them
off and keeps units back as safety stock, with the CLI alone.

The CLI runs its own event loop, so these tests are synchronous and set up and check
through backends of their own (the shared pool belongs to the session's loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from typer.testing import CliRunner

from stockguard.cli import app
from stockguard.service import catalogue
from stockguard.service.uow import Backends
from tests.conftest import Servers
from tests.helpers import assert_cache_parity, assert_invariants

T = TypeVar("T")


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, servers: Servers, migrated: str) -> CliRunner:
    monkeypatch.setenv("STOCKGUARD_DATABASE_URL", servers.database_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_PREFIX", servers.redis_prefix)
    monkeypatch.setenv("COLUMNS", "400")
    return CliRunner()


def with_backends(servers: Servers, fn: Callable[[Backends], Awaitable[T]]) -> T:
    async def go() -> T:
        import redis.asyncio as aioredis

        from stockguard.cache.redis_cache import RedisCache
        from stockguard.store.db import connect_pool

        pool = await connect_pool(servers.database_url, min_size=1, max_size=2)
        client = aioredis.Redis.from_url(servers.redis_url)
        try:
            return await fn(Backends(pool, RedisCache(client, servers.redis_prefix)))
        finally:
            await client.aclose()
            await pool.close()

    return asyncio.run(go())


def _stocked(servers: Servers, sku: str, loc: str, on_hand: int) -> None:
    async def make(b: Backends) -> None:
        await catalogue.put_location(b, loc, loc, 1, True, "t")
        await catalogue.put_sku(b, sku, sku)
        await catalogue.adjust_stock(
            b, catalogue.Adjustment(sku, loc, "received", delta=on_hand), "t"
        )

    with_backends(servers, make)


def _checked(servers: Servers, sku: str) -> tuple[int, ...]:
    async def check(b: Backends) -> tuple[int, ...]:
        await assert_cache_parity(b, [sku])
        await assert_invariants(b.pool)
        row = await b.pool.fetchrow(
            "SELECT on_hand, unavailable, safety_stock FROM inventory_levels WHERE sku = $1",
            sku,
        )
        assert row is not None
        return tuple(row.values())

    return with_backends(servers, check)


def test_operator_marks_damage_writes_it_off_and_sets_safety_stock(
    cli: CliRunner, servers: Servers, uid: str
) -> None:
    sku, loc = f"K{uid}", f"w{uid}"
    _stocked(servers, sku, loc, 10)
    adjust = ["stock", "adjust", sku, loc, "--reason", "damaged"]
    damaged = cli.invoke(app, [*adjust, "--unavailable", "3"])
    assert damaged.exit_code == 0, damaged.output
    assert "unavailable 3, available 7" in damaged.output
    off = cli.invoke(app, [*adjust, "--delta", "-2", "--from-unavailable"])
    assert off.exit_code == 0, off.output
    assert "on_hand 8" in off.output
    safety = cli.invoke(app, ["stock", "set-safety", sku, loc, "5"])
    assert safety.exit_code == 0, safety.output
    assert "safety stock 5, available 2" in safety.output
    shown = cli.invoke(app, ["stock", "show", sku])
    assert shown.exit_code == 0, shown.output
    row = next(line for line in shown.output.splitlines() if loc in line)
    assert [c.strip() for c in row.split("│")[2:7]] == ["8", "0", "1", "5", "2"]
    assert _checked(servers, sku) == (8, 1, 5)


def test_refusals_exit_1_and_change_nothing(cli: CliRunner, servers: Servers, uid: str) -> None:
    sku, loc = f"L{uid}", f"w{uid}"
    _stocked(servers, sku, loc, 2)
    adjust = ["stock", "adjust", sku, loc, "--reason", "damaged"]
    for args in (
        [*adjust, "--unavailable", "5"],
        [*adjust, "--delta", "-1", "--from-unavailable"],
        [*adjust],
        ["stock", "set-safety", sku, f"none{uid}", "1"],
        ["stock", "show", f"NONE{uid}"],
    ):
        result = cli.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
    assert "exactly one" in cli.invoke(app, adjust).output
    assert _checked(servers, sku) == (2, 0, 0)
    helped = cli.invoke(app, ["stock", "--help"])
    assert helped.exit_code == 0
    assert "set-safety" in helped.output
