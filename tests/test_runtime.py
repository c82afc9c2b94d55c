"""Wiring: resolve_endpoints, the embedded servers (redis-server, pgserver) and open_backends,
with real processes and real servers."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
import redis

from stockguard.api.app import build_app
from stockguard.config import CacheMode, Settings
from stockguard.embedded import (
    PGSERVER_SYSTEM_USER,
    EmbeddedPostgres,
    EmbeddedRedis,
    open_embedded,
    redis_server_binary,
    start_postgres,
    start_redis,
)
from stockguard.runtime import open_backends, resolve_endpoints
from stockguard.service.verify import verify
from stockguard.store import keys
from tests.conftest import Servers
from tests.test_lifecycle import gone


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
    assert endpoints.embedded is None
    assert not data.exists()  # no embedded server was even prepared
    endpoints.close()
    assert endpoints.embedded is None


def test_resolve_endpoints_starts_embedded_redis_when_its_url_is_unset(
    servers: Servers, tmp_path: Path, no_server_env: None
) -> None:
    settings = Settings(database_url=servers.database_url, data_dir=tmp_path)
    endpoints = resolve_endpoints(settings)
    try:
        assert endpoints.database_url == servers.database_url
        assert endpoints.embedded is not None
        handle = endpoints.embedded.redis
        assert isinstance(handle, EmbeddedRedis)
        assert handle.process is not None
        assert endpoints.embedded.database_url is None  # no embedded PostgreSQL
        assert not (tmp_path / "pg").exists()
        assert endpoints.redis_url == f"redis://127.0.0.1:{handle.port}/0"
        assert (tmp_path / "redis" / "port").read_text() == str(handle.port)
        assert (tmp_path / "redis" / "pid").read_text() == str(handle.process.pid)
        assert answers(handle.port)
        assert len(list((tmp_path / "users").iterdir())) == 1
    finally:
        endpoints.close()
    assert endpoints.embedded is None
    assert handle.process.poll() is not None
    assert not answers(handle.port)
    assert list((tmp_path / "users").iterdir()) == []


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


def _postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


async def test_no_configuration_starts_embedded_postgres_and_redis(
    outside_tmp: Path, monkeypatch: pytest.MonkeyPatch, no_server_env: None
) -> None:
    """The quick start: with no URLs, both servers start under the data directory,
    migrations apply, a bootstrap admin key works and the database is consistent; leaving
    stops both."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)  # ours: a short private one
    key = f"sg_boot_{secrets.token_hex(16)}"
    data = outside_tmp / "sg"
    settings = Settings(data_dir=data, bootstrap_admin_key=key, db_pool_min=1)
    endpoints = await asyncio.to_thread(resolve_endpoints, settings)
    emb = endpoints.embedded
    assert emb is not None
    try:
        assert endpoints.database_url.startswith("postgresql://postgres:@/stockguard?host=")
        assert (data / "pg" / "PG_VERSION").is_file()
        assert (emb.data_dir, emb.new_database, emb.others) == (data.resolve(), True, 0)
        assert isinstance(emb.redis, EmbeddedRedis)
        pg_pid = _postmaster_pid(data / "pg")

        async with open_backends(settings, endpoints) as backends:
            assert backends.cache is not None
            assert await backends.cache.ping()
            async with backends.pool.acquire() as conn:
                assert await conn.fetchval("SELECT current_database()") == "stockguard"
                found = await keys.authenticate(conn, key)
                assert found is not None
                assert (found.role, found.name) == ("admin", "bootstrap")
                assert await verify(conn) == []

        # A second start joins the running server and finds the database made.
        url, again = await asyncio.to_thread(start_postgres, data)
        assert url == endpoints.database_url
        assert again.created is False
        assert _postmaster_pid(data / "pg") == pg_pid
        # pgserver's own registry of users is not used (it never forgets a killed one).
        assert json.loads((data / "pg" / ".handle_pids.json").read_text()) == []
    finally:
        await asyncio.to_thread(endpoints.close)
    assert not (data / "pg" / "postmaster.pid").exists()
    assert gone(pg_pid)
    assert not answers(emb.redis.port)
    again.stop()  # stopping a stopped server is harmless


async def test_embedded_postgres_url_works_for_a_long_data_dir(
    outside_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Unix socket path is limited to ~107 bytes; for a deeper data directory pgserver
    puts the socket elsewhere, and the URL we hand out must still reach the server."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)  # ours: a short private one
    deep = outside_tmp / ("d" * 60) / ("e" * 40)
    deep.mkdir(parents=True)
    assert len(str(deep / "pg" / ".s.PGSQL.5432")) > 108
    url, server = await asyncio.to_thread(start_postgres, deep, "postgres")
    try:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        socket_dir = Path(parse_qs(urlsplit(url).query)["host"][0])
        assert socket_dir != deep / "pg"
        if os.geteuid() == 0:  # pgserver made it 0777; only PostgreSQL's own user needs it
            assert os.stat(socket_dir).st_mode & 0o777 == 0o700
            assert os.stat(socket_dir).st_uid == pwd.getpwnam(PGSERVER_SYSTEM_USER).pw_uid
        # Our private runtime directory, above it: others may not even pass.
        assert socket_dir.parent.parent.name == f"stockguard-{os.getuid()}"
        assert os.stat(socket_dir.parent.parent).st_mode & 0o067 == 0
    finally:
        await asyncio.to_thread(server.stop)
    assert not server.running()


@pytest.mark.skipif(os.geteuid() != 0, reason="pgserver changes permissions only as root")
def test_as_root_parents_of_the_data_get_one_search_bit_only(tmp_path: Path) -> None:
    """pgserver would chmod g+rx,o+rx every parent up to /; we add the one x bit that lets
    PostgreSQL's user (its uid, our groups) pass, where it is missing, and nothing else."""
    from stockguard.embedded import _let_pgserver_user_reach

    user = pwd.getpwnam(PGSERVER_SYSTEM_USER)  # pgserver creates it as root; the suite did
    ours = tmp_path / "ours"  # root's group: the group bit decides
    theirs = ours / "theirs"  # another group: the others bit decides
    owned = theirs / "owned"  # PostgreSQL's user owns it: the owner bit decides
    passable = owned / "passable"
    target = passable / "pg"
    target.mkdir(parents=True)
    ours.chmod(0o700)
    os.chown(theirs, 0, user.pw_gid)
    theirs.chmod(0o750)
    os.chown(owned, user.pw_uid, 0)
    owned.chmod(0o640)
    passable.chmod(0o711)
    others = {p: p.stat().st_mode for p in (tmp_path, *tmp_path.parents)}
    _let_pgserver_user_reach(target)
    modes = [p.stat().st_mode & 0o7777 for p in (ours, theirs, owned, passable)]
    assert modes == [0o710, 0o751, 0o740, 0o711]
    for p, before in others.items():  # above: passable now, and by an x bit only
        added = p.stat().st_mode & ~before
        assert added in (0, 0o100, 0o010, 0o001), (p, oct(before), oct(added))
    _let_pgserver_user_reach(target)  # nothing left to grant: no change
    assert [p.stat().st_mode & 0o7777 for p in (ours, theirs, owned, passable)] == modes


# ---------------------------------------------------------------- sharing the servers


def test_the_last_user_of_the_embedded_redis_stops_it(tmp_path: Path) -> None:
    first = open_embedded(tmp_path, postgres=False, redis=True)
    second = open_embedded(tmp_path, postgres=False, redis=True)
    third = open_embedded(tmp_path, postgres=False, redis=True)
    assert first.redis is not None
    assert second.redis is not None
    assert (first.others, second.others, third.others) == (0, 1, 2)
    assert second.redis.port == first.redis.port
    assert second.redis.process is None  # joined, did not start
    third.close()  # a joiner goes first
    assert answers(second.redis.port)
    first.close()  # then the starter: the server stays for the second
    first.close()
    assert answers(second.redis.port)
    second.close()
    assert not answers(second.redis.port)
    assert list((tmp_path / "users").iterdir()) == []


def test_a_user_killed_with_sigkill_neither_keeps_the_servers_nor_blocks(
    tmp_path: Path,
) -> None:
    """kill -9 leaves its registration behind: the next user removes it, and when that one
    leaves, it stops the server the killed process started."""
    code = (
        "import sys; from pathlib import Path; from stockguard.embedded import open_embedded; "
        "from stockguard.logging import configure_logging; configure_logging(); "
        "s = open_embedded(Path(sys.argv[1]), postgres=False, redis=True); "
        "print(s.redis.port, flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ) as child:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        pid = int((tmp_path / "redis" / "pid").read_text())
        assert len(list((tmp_path / "users").iterdir())) == 1
        child.kill()
    assert answers(port)  # orphaned, still running
    joined = open_embedded(tmp_path, postgres=False, redis=True)
    assert joined.others == 0  # the dead one does not count
    assert joined.redis is not None
    assert joined.redis.port == port
    assert len(list((tmp_path / "users").iterdir())) == 1  # only ours is left
    joined.close()
    assert not answers(port)
    assert gone(pid)


def test_a_crashed_postgres_is_not_running(tmp_path: Path) -> None:
    """A server killed with SIGKILL leaves postmaster.pid behind: stopping it is a no-op."""
    with subprocess.Popen(["true"]) as gone_process:
        pass
    (tmp_path / "postmaster.pid").write_text(f"{gone_process.pid}\n{tmp_path}\n")
    server = EmbeddedPostgres(tmp_path)
    assert not server.running()
    server.stop()
    (tmp_path / "postmaster.pid").write_text(f"{os.getpid()}\n")
    assert server.running()  # a live process
    (tmp_path / "postmaster.pid").unlink()
    assert not server.running()


def test_a_failed_start_leaves_no_registration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("stockguard.embedded.redis_server_binary", lambda: "false")
    with pytest.raises(RuntimeError, match="did not start"):
        open_embedded(tmp_path, postgres=False, redis=True)
    assert list((tmp_path / "users").iterdir()) == []
    monkeypatch.undo()
    after = open_embedded(tmp_path, postgres=False, redis=True)  # the lock was released
    assert after.others == 0
    after.close()


def test_stop_server_leaves_a_server_that_is_not_the_one_it_knew(
    tmp_path: Path, redis_servers: list[EmbeddedRedis]
) -> None:
    other = start_redis(tmp_path)
    redis_servers.append(other)
    assert other.process is not None
    stranger = EmbeddedRedis(port=other.port, process=None, pid=other.process.pid + 1)
    stranger.stop_server()
    EmbeddedRedis(port=other.port, process=None, pid=None).stop_server()
    assert answers(other.port)


def test_ctrl_c_and_sigterm_wait_while_the_servers_start_or_stop(
    capfd: pytest.CaptureFixture[str],
) -> None:
    from stockguard.embedded import _signals_held

    before = signal.getsignal(signal.SIGINT)
    with _signals_held("stopping", replay=False):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is before
    assert "stopping the embedded servers, please wait" in capfd.readouterr().err

    reached = []

    def start() -> None:
        with _signals_held("starting", replay=True):
            signal.raise_signal(signal.SIGTERM)
            reached.append("the start went on to its end")

    with pytest.raises(KeyboardInterrupt):
        start()
    assert reached == ["the start went on to its end"]
    assert signal.getsignal(signal.SIGINT) is before
    with _signals_held("starting", replay=True):  # nothing came: nothing raised
        pass

    def in_a_thread() -> None:  # only the main thread may set handlers: nothing to hold
        with _signals_held("stopping", replay=False):
            pass

    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()


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
