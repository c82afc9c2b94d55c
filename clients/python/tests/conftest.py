"""A real stockguard server for the client's tests.

One ``python -m stockguard serve`` subprocess per test session, with its worker loops,
on its own new database (on ``STOCKGUARD_DATABASE_URL``'s server, or an embedded
PostgreSQL when that is unset) and its own Redis key prefix; its admin key is made with
``python -m stockguard keys create``, its service key through the client. Everything is
removed at the end. The server gives up on a row lock after ``LOCK_TIMEOUT_MS`` so a test
holding one sees 503 ``busy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis

from stockguard.embedded import EmbeddedPostgres, EmbeddedRedis, start_postgres, start_redis
from stockguard_client import AsyncClient, Client

RUN = secrets.token_hex(4)
LOCK_TIMEOUT_MS = 400
STRIPE_SECRET = "whsec_client_tests_" + RUN
READY_SECONDS = 60


@dataclass(frozen=True)
class Server:
    url: str
    admin_key: str
    service_key: str
    database_url: str
    stripe_secret: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _admin_sql(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"stockguard serve exited:\n{log.read_text()[-4000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(
        f"stockguard serve not ready in {READY_SECONDS} s:\n{log.read_text()[-4000:]}"
    )


@contextlib.contextmanager
def _machine_servers(scratch: Path) -> Iterator[tuple[str, str]]:
    """PostgreSQL and Redis URLs: the environment's, or embedded ones started here."""
    handles: list[EmbeddedPostgres | EmbeddedRedis] = []
    base_db = os.environ.get("STOCKGUARD_DATABASE_URL")
    redis_url = os.environ.get("STOCKGUARD_REDIS_URL")
    try:
        if not base_db:
            base_db, pg = start_postgres(scratch, "postgres")
            handles.append(pg)
        if not redis_url:
            emb = start_redis(scratch)
            handles.append(emb)
            redis_url = emb.url
        yield base_db, redis_url
    finally:
        for h in handles:
            h.stop()


@contextlib.contextmanager
def running_stockguard(
    scratch: Path, base_db: str, redis_url: str, label: str = "main"
) -> Iterator[Server]:
    """``stockguard serve`` on a new database and Redis prefix named by ``label``."""
    name = f"stockguard_client_test_{RUN}_{label}"
    prefix = f"sgclient:{RUN}:{label}:"
    scratch = scratch / label
    scratch.mkdir()
    database_url = _database(base_db, name)
    asyncio.run(_admin_sql(base_db, f'CREATE DATABASE "{name}"'))
    env = {
        **os.environ,
        "STOCKGUARD_DATABASE_URL": database_url,
        "STOCKGUARD_REDIS_URL": redis_url,
        "STOCKGUARD_REDIS_PREFIX": prefix,
        "STOCKGUARD_DB_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS),
        "STOCKGUARD_STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
        "STOCKGUARD_EXPIRY_INTERVAL_SECONDS": "0.2",
        "STOCKGUARD_LOG_LEVEL": "WARNING",
        # Webhook endpoints on loopback (the tests' receivers).
        "STOCKGUARD_WEBHOOK_ALLOW_PRIVATE_URLS": "true",
        "STOCKGUARD_DATA_DIR": str(scratch / "data"),
    }
    log = scratch / "serve.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        admin_key = subprocess.run(
            [sys.executable, "-m", "stockguard", "keys", "create", "--role", "admin",
             "--name", "client-tests"],
            env=env, check=True, capture_output=True, timeout=120,
        ).stdout.decode().strip()  # fmt: skip
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "stockguard", "serve", "--port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait_ready(url, process, log)
        with Client(url, admin_key) as admin:
            service_key = admin.create_api_key("service", "client-tests-shop").key
        assert service_key is not None
        yield Server(url, admin_key, service_key, database_url, STRIPE_SECRET)
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        asyncio.run(_admin_sql(base_db, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        r = redis.Redis.from_url(redis_url)
        with contextlib.suppress(redis.ConnectionError):  # a test may have stopped it
            for key in r.scan_iter(match=f"{prefix}*", count=1000):
                r.delete(key)
        r.close()


@dataclass(frozen=True)
class Machine:
    scratch: Path
    base_db: str  # a database of the PostgreSQL server we create ours on
    redis_url: str


@pytest.fixture(scope="session")
def machine() -> Iterator[Machine]:
    scratch = Path(tempfile.mkdtemp(prefix="stockguard-client-test-"))
    try:
        with _machine_servers(scratch) as (base_db, redis_url):
            yield Machine(scratch, base_db, redis_url)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def server(machine: Machine) -> Iterator[Server]:
    with running_stockguard(machine.scratch, machine.base_db, machine.redis_url) as running:
        yield running


@pytest.fixture(scope="session")
def admin(server: Server) -> Iterator[Client]:
    with Client(server.url, server.admin_key) as c:
        yield c


@pytest.fixture(scope="session")
def shop(server: Server) -> Iterator[Client]:
    """What a shop's backend holds: a service key."""
    with Client(server.url, server.service_key) as c:
        yield c


@pytest.fixture(scope="session")
async def ashop(server: Server) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.url, server.service_key) as c:
        yield c


@pytest.fixture(scope="session")
def warehouse(admin: Client) -> str:
    """One location every test stocks."""
    admin.put_location("main", "Main warehouse")
    return "main"


@pytest.fixture
def uid() -> str:
    return secrets.token_hex(4)


@pytest.fixture
def stock(admin: Client, warehouse: str, uid: str) -> StockHelper:
    return StockHelper(admin, warehouse, uid)


@dataclass
class StockHelper:
    """Makes SKUs with units on hand, named apart from other tests'."""

    admin: Client
    location: str
    uid: str

    def sku(self, name: str, on_hand: int) -> str:
        code = f"{name}-{self.uid}"
        self.admin.put_sku(code, name)
        if on_hand:
            self.admin.adjust_stock(code, self.location, delta=on_hand, reason="received")
        return code
