"""The application as ``stockguard serve`` builds it: its lifespan opens PostgreSQL and
Redis itself, runs the workers and closes everything again."""

from __future__ import annotations

import gc
import runpy
import sys
from collections.abc import Iterator

import httpx
import pytest

from stockguard.api.app import build_app, create_app
from stockguard.config import Settings
from stockguard.runtime import GC_GEN0_THRESHOLD
from stockguard.service.uow import Backends
from tests.conftest import Servers


@pytest.fixture
def gc_restored() -> Iterator[None]:
    """The serve lifespan tunes this process's collector: put it back for the others."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def test_lifespan_opens_backends_runs_workers_and_closes(
    servers: Servers, migrated: str, gc_restored: None
) -> None:
    settings = Settings(
        database_url=servers.database_url,
        redis_url=servers.redis_url,
        redis_prefix=servers.redis_prefix,
        db_pool_min=1,
        db_pool_max=3,
        expiry_interval_seconds=60,
        reconcile_interval_seconds=60,
        recovery_interval_seconds=60,
    )
    app = build_app(settings)
    gc.unfreeze()
    async with app.router.lifespan_context(app):
        # started: the heap so far is frozen, the young generation collected less often
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
        backends: Backends = app.state.backends
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            ready = await client.get("/readyz")
        assert ready.json() == {
            "ok": True,
            "mode": "strict",
            "checks": {"postgres": True, "redis": True},
        }
    assert backends.pool.is_closing()


def test_create_app_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, servers: Servers
) -> None:
    monkeypatch.setenv("STOCKGUARD_DATABASE_URL", servers.database_url)
    monkeypatch.setenv("STOCKGUARD_CACHE_MODE", "degraded")
    app = create_app()
    assert app.state.settings.cache_mode.value == "degraded"
    assert app.state.settings.database_url.get_secret_value() == servers.database_url


def test_python_dash_m_stockguard_runs_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["stockguard", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("stockguard", run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "migrate", "worker", "keys", "verify", "reconcile", "orders"):
        assert command in out
