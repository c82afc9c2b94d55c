"""Wiring: resolve_endpoints, the embedded servers (redis-server, pgserver) and open_backends,
with real processes and real servers."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import redis

from stockguard.api.app import build_app
from stockguard.config import CacheMode, Settings
from stockguard.embedded import EmbeddedRedis, redis_server_binary, start_postgres, start_redis
from stockguard.runtime import open_backends, resolve_endpoints
from stockguard.service.verify import verify
from stockguard.store import keys
from tests.conftest import Servers


@pytest.fixture
def no_server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings() must see only what the test passes, not the servers CI exported."""
    for name in list(os.environ):
        if name.startswith("STOCKGUARD_"):
            monkeypatch.delenv(name)


def answers(port: int) -> bool:
    """One PING over a plain socket (redis-py would retry a refused connection)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def redis_servers() -> Iterator[list[EmbeddedRedis]]:
    """Every embedded Redis a test starts goes here, so none outlives the test."""
    started: list[EmbeddedRedis] = []
    yield started
    for server in started:
        server.stop()


# ---------------------------------------------------------------- resolve_endpoints


def test_resolve_endpoints_uses_configured_servers_and_starts_nothing(
    servers: Servers, tmp_path: Path, no_server_env: None
) -> None:
    data = tmp_path / "data"
    settings = Settings(
        database_url=servers.database_url, redis_url=servers.redis_url, data_dir=data
    )
    endpoints = resolve_endpoints(settings)
    assert endpoints.database_url == servers.database_url
    assert endpoints.redis_url == servers.redis_url
    assert endpoints.handles == []
    assert not data.exists()  # no embedded server was even prepared
    endpoints.close()
    assert endpoints.handles == []


def test_resolve_endpoints_starts_embedded_redis_when_its_url_is_unset(
    servers: Servers, tmp_path: Path, no_server_env: None
) -> None:
    settings = Settings(database_url=servers.database_url, data_dir=tmp_path)
    endpoints = resolve_endpoints(settings)
    try:
        assert endpoints.database_url == servers.database_url
        (handle,) = endpoints.handles
        assert isinstance(handle, EmbeddedRedis)
        assert handle.process is not None
        assert endpoints.redis_url == f"redis://127.0.0.1:{handle.port}/0"
        assert (tmp_path / "redis" / "port").read_text() == str(handle.port)
        assert answers(handle.port)
    finally:
        endpoints.close()
    assert endpoints.handles == []
    assert handle.process.poll() is not None
    assert not answers(handle.port)


# ---------------------------------------------------------------- embedded Redis


def test_redis_server_binary_is_an_executable() -> None:
    binary = Path(redis_server_binary())
    assert binary.is_file()
    assert os.access(binary, os.X_OK)


def test_start_redis_starts_joins_and_stops(
    tmp_path: Path, redis_servers: list[EmbeddedRedis]
) -> None:
    first = start_redis(tmp_path)
    redis_servers.append(first)
    assert first.process is not None
    assert first.url == f"redis://127.0.0.1:{first.port}/0"
    assert answers(first.port)
    # Without persistence: nothing is written for a restart to load.
    client = redis.Redis.from_url(first.url)
    try:
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()

    joined = start_redis(tmp_path)
    assert (joined.port, joined.process) == (first.port, None)
    joined.stop()  # a joiner owns no process: the server keeps running
    assert answers(first.port)

    first.stop()
    assert first.process.poll() is not None
    assert not answers(first.port)
    first.stop()  # stopping twice is harmless

    # The port file now names a dead server: the next start begins a new one.
    again = start_redis(tmp_path)
    redis_servers.append(again)
    assert again.process is not None
    assert answers(again.port)


def test_start_redis_on_a_chosen_port(tmp_path: Path, redis_servers: list[EmbeddedRedis]) -> None:
    port = _free_port()
    server = start_redis(tmp_path, port=port)
    redis_servers.append(server)
    assert server.port == port
    assert answers(port)


def test_start_redis_fails_loudly_when_the_server_cannot_start(tmp_path: Path) -> None:
    # Something that is not Redis holds the port: redis-server cannot bind and exits.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="did not start"):
            start_redis(tmp_path, port=port)
    assert not (tmp_path / "redis" / "port").exists()


def test_start_redis_does_not_pass_off_another_servers_port_as_its_own(
    tmp_path: Path, redis_servers: list[EmbeddedRedis]
) -> None:
    """Another Redis already answers on the port asked for: our redis-server exits at
    once, so start_redis must not return a handle to a dead process as "started"."""
    other = start_redis(tmp_path / "other")
    redis_servers.append(other)
    try:
        mine = start_redis(tmp_path / "mine", port=other.port)
    except RuntimeError:
        return  # the honest answer
    redis_servers.append(mine)
    assert mine.process is not None
    try:  # bounded wait on the real process: a server that started stays up
        code = mine.process.wait(timeout=1)
    except subprocess.TimeoutExpired:
        return
    pytest.fail(
        f"start_redis reported a server on port {other.port} as started, but the "
        f"redis-server it started had exited (code {code}): the port belonged to another"
    )


# ---------------------------------------------------------------- embedded PostgreSQL


def _stop_postgres(server: Any) -> None:
    server.cleanup()  # pgserver stops the server when its last handle goes


async def test_no_configuration_starts_embedded_postgres_and_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_server_env: None
) -> None:
    """The quick start: with no URLs, both servers start under the data directory,
    migrations apply, a bootstrap admin key works and the database is consistent."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)  # ours: a short private one
    key = f"sg_boot_{secrets.token_hex(16)}"
    settings = Settings(data_dir=tmp_path / "sg", bootstrap_admin_key=key, db_pool_min=1)
    endpoints = await asyncio.to_thread(resolve_endpoints, settings)
    pg = endpoints.handles[0]
    try:
        assert endpoints.database_url.startswith("postgresql://postgres:@/stockguard?host=")
        assert (tmp_path / "sg" / "pg" / "PG_VERSION").is_file()
        assert isinstance(endpoints.handles[1], EmbeddedRedis)

        async with open_backends(settings, endpoints) as backends:
            assert backends.cache is not None
            assert await backends.cache.ping()
            async with backends.pool.acquire() as conn:
                assert await conn.fetchval("SELECT current_database()") == "stockguard"
                found = await keys.authenticate(conn, key)
                assert found is not None
                assert (found.role, found.name) == ("admin", "bootstrap")
                assert await verify(conn) == []

        # A second start joins the running server (and finds the database made).
        url, again = await asyncio.to_thread(start_postgres, tmp_path / "sg")
        assert url == endpoints.database_url
        assert again is pg
    finally:
        endpoints.close()
        await asyncio.to_thread(_stop_postgres, pg)


async def test_embedded_postgres_url_works_for_a_long_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Unix socket path is limited to ~107 bytes; for a deeper data directory pgserver
    puts the socket elsewhere, and the URL we hand out must still reach the server."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)  # ours: a short private one
    deep = tmp_path / ("d" * 60) / ("e" * 40)
    deep.mkdir(parents=True)
    assert len(str(deep / "pg" / ".s.PGSQL.5432")) > 108
    url, server = await asyncio.to_thread(start_postgres, deep, "postgres")
    try:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(_stop_postgres, server)


# ---------------------------------------------------------------- open_backends


async def test_open_backends_bootstraps_an_admin_key_once(
    servers: Servers, tmp_path: Path, no_server_env: None
) -> None:
    key = f"sg_boot_{secrets.token_hex(16)}"
    settings = Settings(
        database_url=servers.database_url,
        redis_url=servers.redis_url,
        redis_prefix=servers.redis_prefix,
        bootstrap_admin_key=key,
        redis_timeout_seconds=1.5,
        db_pool_min=1,
        db_pool_max=3,
        data_dir=tmp_path,
    )
    endpoints = resolve_endpoints(settings)
    for _ in range(2):  # a restart with the same key neither fails nor adds a second key
        async with open_backends(settings, endpoints) as backends:
            assert backends.cache is not None
            assert backends.cache.prefix == servers.redis_prefix
            assert await backends.cache.ping()
            assert backends.cache_mode is CacheMode.STRICT
            assert backends.redis_timeout == 1.5
            assert backends.pool.get_max_size() == 3
            async with backends.pool.acquire() as conn:
                found = await keys.authenticate(conn, key)
                assert found is not None
                assert (found.role, found.name) == ("admin", "bootstrap")
                assert await keys.authenticate(conn, key + "x") is None
                stored = await conn.fetchval(
                    "SELECT count(*) FROM api_keys WHERE key_hash = $1", keys.hash_key(key)
                )
                assert stored == 1
        assert backends.pool.is_closing()
    endpoints.close()


async def test_open_backends_without_cache_and_without_migrating(
    servers: Servers, tmp_path: Path, no_server_env: None
) -> None:
    settings = Settings(
        database_url=servers.database_url,
        redis_url="redis://127.0.0.1:1/0",  # never contacted: the cache is off
        cache_mode=CacheMode.DISABLED,
        db_pool_min=1,
        db_pool_max=2,
        data_dir=tmp_path,
    )
    async with open_backends(settings, resolve_endpoints(settings), migrate=False) as backends:
        assert backends.cache is None
        assert backends.cache_mode is CacheMode.DISABLED
        expected = urlsplit(servers.database_url).path.lstrip("/")
        assert await backends.pool.fetchval("SELECT current_database()") == expected


async def test_a_service_with_the_cache_disabled_is_ready(
    servers: Servers, tmp_path: Path, no_server_env: None
) -> None:
    """STOCKGUARD_CACHE_MODE=disabled runs without Redis by design, so Redis cannot be
    what keeps /readyz from answering 200 (a load balancer would never send it traffic)."""
    settings = Settings(
        database_url=servers.database_url,
        redis_url="redis://127.0.0.1:1/0",
        cache_mode=CacheMode.DISABLED,
        db_pool_min=1,
        db_pool_max=2,
        data_dir=tmp_path,
    )
    async with open_backends(settings, resolve_endpoints(settings), migrate=False) as backends:
        app = build_app(settings, backends)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sg.test") as client:
            ready = await client.get("/readyz")
    body = ready.json()
    assert body["checks"]["postgres"] is True
    assert (ready.status_code, body["ok"]) == (200, True), body
