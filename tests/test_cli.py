"""The ``stockguard`` command line: migrate, keys create, verify, reconcile, --help (in-process
through Typer's CliRunner) and serve, worker (as real subprocesses), against real servers.

The CLI runs ``asyncio.run`` itself, so these tests are plain ``def`` tests. Invariants are
broken only in a throwaway database created (and dropped) here, never in the shared one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis
import structlog
from alembic.script import ScriptDirectory
from typer.testing import CliRunner, Result

from stockguard.cache.redis_cache import RedisCache, load_availability
from stockguard.cli import app
from stockguard.config import CacheMode
from stockguard.service import catalogue, orders
from stockguard.service.orders import PaymentProof, PlaceOrder
from stockguard.service.uow import Backends
from stockguard.service.verify import CHECKS
from stockguard.store import keys
from stockguard.store.db import connect_pool
from stockguard.store.migrate import alembic_config, upgrade
from tests.conftest import Servers, Stocker

T = TypeVar("T")

# ---------------------------------------------------------------- plumbing


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, servers: Servers, tmp_path: Path) -> Iterator[None]:
    """Point the CLI at this run's database and Redis prefix, and nothing else."""
    for name in list(os.environ):
        if name.startswith("STOCKGUARD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STOCKGUARD_DATABASE_URL", servers.database_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_URL", servers.redis_url)
    monkeypatch.setenv("STOCKGUARD_REDIS_PREFIX", servers.redis_prefix)
    monkeypatch.setenv("STOCKGUARD_LOG_JSON", "true")
    monkeypatch.setenv("STOCKGUARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")  # Rich tables and help are not cut at 80 columns
    # The CLI configures structlog to print to the stderr CliRunner lends it; put back the
    # configuration the other tests log with.
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def on_db(url: str, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run ``fn`` on a connection of its own (plain ``def`` tests have no running loop)."""

    async def go() -> T:
        conn = await asyncpg.connect(url)
        try:
            return await fn(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------- a throwaway database


@pytest.fixture
def scratch_db(servers: Servers, uid: str) -> Iterator[str]:
    """An empty database of our own on the test server, dropped afterwards."""
    name = f"stockguard_scratch_{uid}"

    async def create(conn: asyncpg.Connection) -> None:
        await conn.execute(f'CREATE DATABASE "{name}"')

    async def drop(conn: asyncpg.Connection) -> None:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    on_db(servers.admin_url, create)
    try:
        yield _with_database(servers.admin_url, name)
    finally:
        on_db(servers.admin_url, drop)


@pytest.fixture
def scratch_shop(scratch_db: str, monkeypatch: pytest.MonkeyPatch, cli_env: None) -> str:
    """The throwaway database, migrated, with stock and orders in every state that holds
    something (pending, paid, cancelled), and the CLI pointed at it.

    SKU ``A``: 10 on hand at w1, 4 reserved by orders o-pending (1) and o-paid (3);
    SKU ``B``: 5 on hand at w1, nothing reserved, no reservations ever."""
    upgrade(scratch_db)

    async def populate() -> None:
        pool = await connect_pool(scratch_db, min_size=1, max_size=2)
        b = Backends(pool=pool, cache=None, cache_mode=CacheMode.DISABLED)
        try:
            await catalogue.put_location(b, "w1", "w1", 100, True, "test")
            for sku, qty in (("A", 10), ("B", 5)):
                await catalogue.put_sku(b, sku, sku)
                await catalogue.adjust_stock(
                    b, catalogue.Adjustment(sku, "w1", "received", delta=qty), "test"
                )
            await orders.place_order(b, PlaceOrder("o-pending", (("A", 1),)), "test")
            await orders.place_order(b, PlaceOrder("o-paid", (("A", 3),)), "test")
            await orders.pay_order(b, "o-paid", PaymentProof("manual", "p-1"), "test")
            await orders.place_order(b, PlaceOrder("o-cancelled", (("A", 2),)), "test")
            await orders.cancel_order(b, "o-cancelled", "test")
        finally:
            await pool.close()

    asyncio.run(populate())
    monkeypatch.setenv("STOCKGUARD_DATABASE_URL", scratch_db)
    return scratch_db


def _break_invariant_2(url: str) -> None:
    """B's level claims 2 reserved units that no reservation holds (and the ledger never
    saw): invariants 2 and 3 both break, invariant 1 still holds (2 <= 5)."""

    async def go(conn: asyncpg.Connection) -> None:
        done = await conn.execute(
            "UPDATE inventory_levels SET reserved = 2 WHERE sku = 'B' AND location = 'w1'"
        )
        assert done == "UPDATE 1"

    on_db(url, go)


def _table_count(output: str, check: str) -> int:
    """The ``violations`` cell of one check's row in the verify table."""
    match = re.search(rf"[│|]\s*{check}\s*[│|]\s*(\d+)\s*[│|]", output)
    assert match is not None, output
    return int(match.group(1))


# ---------------------------------------------------------------- migrate


def test_migrate_builds_the_schema_and_is_idempotent(
    cli_env: None, scratch_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKGUARD_DATABASE_URL", scratch_db)
    head = ScriptDirectory.from_config(alembic_config(scratch_db)).get_current_head()

    async def schema(conn: asyncpg.Connection) -> tuple[str | None, list[str]]:
        version = None
        if await conn.fetchval("SELECT to_regclass('public.alembic_version')") is not None:
            version = await conn.fetchval("SELECT version_num FROM alembic_version")
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        return version, [r["tablename"] for r in tables]

    assert on_db(scratch_db, schema) == (None, [])

    first = cli("migrate")
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == "migrations applied"
    version, tables = on_db(scratch_db, schema)
    assert version == head
    for table in ("inventory_levels", "reservations", "stock_movements", "order_inventory_logs"):
        assert table in tables

    again = cli("migrate")
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == "migrations applied"
    assert on_db(scratch_db, schema) == (head, tables)


# ---------------------------------------------------------------- keys


def test_a_command_says_which_data_directory_its_embedded_server_uses(
    cli_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative STOCKGUARD_DATA_DIR is taken from the current directory: the command
    names the absolute path it used, and leaves nothing running."""
    monkeypatch.delenv("STOCKGUARD_REDIS_URL")  # embedded Redis, the configured PostgreSQL
    monkeypatch.setenv("STOCKGUARD_DATA_DIR", "relative-data")
    monkeypatch.chdir(tmp_path)
    result = cli("migrate")
    assert result.exit_code == 0, result.output
    data = tmp_path / "relative-data"
    assert f"stockguard: data directory {data}: embedded Redis only\n" in result.stderr
    port = int((data / "redis" / "port").read_text())
    with pytest.raises(ConnectionRefusedError):  # stopped: nothing listens on its port
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert list((data / "users").iterdir()) == []
    assert not (data / "pg").exists()


@pytest.mark.parametrize(("role", "prefix"), [("service", "sg_ser_"), ("admin", "sg_adm_")])
def test_keys_create_prints_a_key_once_and_it_authenticates(
    cli_env: None, servers: Servers, uid: str, role: str, prefix: str
) -> None:
    name = f"cli-{uid}"
    result = cli("keys", "create", "--role", role, "--name", name)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout  # stdout is the key and nothing else
    key = lines[0].strip()
    assert key.startswith(prefix)
    assert len(key) > 40
    assert "shown only once" in result.stderr
    assert repr(name) in result.stderr
    assert key not in result.stderr

    async def check(conn: asyncpg.Connection) -> tuple[keys.ApiKey | None, int, int]:
        found = await keys.authenticate(conn, key)
        in_clear = await conn.fetchval(
            "SELECT count(*) FROM api_keys WHERE key_hash = $1 OR name = $1 OR key_prefix = $1",
            key,
        )
        hashed = await conn.fetchval(
            "SELECT count(*) FROM api_keys WHERE key_hash = $1", keys.hash_key(key)
        )
        return found, int(in_clear), int(hashed)

    found, in_clear, hashed = on_db(servers.database_url, check)
    assert found is not None
    assert (found.role, found.name) == (role, name)
    assert (in_clear, hashed) == (0, 1)

    other = cli("keys", "create", "--role", role, "--name", name)
    assert other.exit_code == 0, other.output
    assert other.stdout.strip() != key


def test_keys_create_refuses_an_unknown_role(cli_env: None, servers: Servers, uid: str) -> None:
    name = f"cli-bad-{uid}"
    result = cli("keys", "create", "--role", "owner", "--name", name)
    assert result.exit_code == 2
    assert result.stdout == ""
    message = " ".join(result.stderr.split())
    assert "Invalid value for '--role'" in message
    assert "'owner' is not one of 'admin', 'service'" in message

    async def made(conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval("SELECT count(*) FROM api_keys WHERE name = $1", name))

    assert on_db(servers.database_url, made) == 0


def test_keys_create_needs_a_name(cli_env: None) -> None:
    result = cli("keys", "create", "--role", "service")
    assert result.exit_code == 2
    assert "Missing option '--name'" in result.stderr


# ---------------------------------------------------------------- verify


def test_verify_passes_on_a_consistent_database(scratch_shop: str) -> None:
    result = cli("verify")
    assert result.exit_code == 0, result.output
    assert "stockguard verify" in result.stdout
    for _invariant, check, _sql in CHECKS:
        assert _table_count(result.stdout, check) == 0
    assert not re.search(r"^invariant \d", result.stdout, re.MULTILINE)

    as_json = cli("verify", "--json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == {"ok": True, "violations": []}


def test_verify_fails_and_names_a_broken_invariant(scratch_shop: str) -> None:
    _break_invariant_2(scratch_shop)

    result = cli("verify")
    assert result.exit_code == 1, result.output
    counts = {check: _table_count(result.stdout, check) for _i, check, _sql in CHECKS}
    assert counts.pop("reserved_equals_active_reservations") == 1
    assert counts.pop("ledger_sums_equal_levels") == 1
    assert set(counts.values()) == {0}
    assert re.search(r"invariant 2 reserved_equals_active_reservations: .*'B'", result.stdout)


def test_verify_json_lists_each_violation(scratch_shop: str) -> None:
    _break_invariant_2(scratch_shop)

    result = cli("verify", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False
    by_check = {(v["invariant"], v["check"]): v["detail"] for v in report["violations"]}
    assert set(by_check) == {
        (2, "reserved_equals_active_reservations"),
        (3, "ledger_sums_equal_levels"),
    }
    assert by_check[(2, "reserved_equals_active_reservations")] == {
        "sku": "B",
        "location": "w1",
        "reserved": 2,
        "reservations": 0,
    }
    ledger = by_check[(3, "ledger_sums_equal_levels")]
    assert (ledger["sku"], ledger["location"], ledger["reserved"]) == ("B", "w1", 2)


def test_verify_notices_when_the_audit_trail_could_be_edited(scratch_shop: str) -> None:
    """The ledger, the order logs and orders refuse edits and deletes by trigger; verify
    fails when those triggers are switched off."""

    async def refused(conn: asyncpg.Connection) -> list[str]:
        statements = [
            "UPDATE stock_movements SET on_hand_delta = on_hand_delta + 1",
            "DELETE FROM stock_movements",
            "TRUNCATE stock_movements",
            "UPDATE order_inventory_logs SET actor = 'someone else'",
            "DELETE FROM order_inventory_logs",
            "DELETE FROM orders WHERE id = 'o-cancelled'",
        ]
        out = []
        for sql in statements:
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as caught:
                await conn.execute(sql)
            out.append(str(caught.value))
        return out

    messages = on_db(scratch_shop, refused)
    assert messages[0] == "stock_movements rows are never changed or deleted"
    assert messages[-1] == "orders rows are never changed or deleted"

    async def switch_off(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "ALTER TABLE stock_movements DISABLE TRIGGER stock_movements_append_only"
        )
        await conn.execute("ALTER TABLE orders DISABLE TRIGGER orders_soft_delete_only")

    on_db(scratch_shop, switch_off)
    result = cli("verify", "--json")
    assert result.exit_code == 1, result.output
    found = {
        (v["invariant"], v["check"]): v["detail"] for v in json.loads(result.stdout)["violations"]
    }
    assert found == {
        (3, "ledger_is_append_only"): {"tgname": "stock_movements_append_only"},
        (9, "orders_are_soft_deleted_only"): {"trigger": "orders_soft_delete_only"},
    }


# ---------------------------------------------------------------- orders recover


@pytest.mark.parametrize(
    ("order_id", "why"),
    [
        ("o-pending", "it is pending: not paid yet"),
        ("o-cancelled", "it is cancelled: its stock was released"),
    ],
)
def test_orders_recover_on_an_unpaid_order_says_why_and_writes_nothing(
    scratch_shop: str, order_id: str, why: str
) -> None:
    """Nothing to recover: the command says why (exit 1), and neither the order's audit
    trail nor its stock changes."""

    async def trail(conn: asyncpg.Connection) -> tuple[list[str], list[tuple[str, int]]]:
        logs = await conn.fetch(
            "SELECT action FROM order_inventory_logs WHERE order_id = $1 ORDER BY id", order_id
        )
        held = await conn.fetch(
            "SELECT status, quantity FROM reservations WHERE order_id = $1 ORDER BY id", order_id
        )
        return [r["action"] for r in logs], [(r["status"], r["quantity"]) for r in held]

    before = on_db(scratch_shop, trail)
    result = cli("orders", "recover", order_id)
    assert result.exit_code == 1, result.output
    message = " ".join(result.stderr.split())
    assert f"invalid_transition: nothing to recover for order {order_id}: {why}" in message
    assert "nothing was changed or logged" in message
    assert result.stdout == ""
    assert on_db(scratch_shop, trail) == before
    assert "RECOVERY_ATTEMPT" not in before[0]


# ---------------------------------------------------------------- reconcile


@pytest.fixture
async def stocked_sku(stock: Stocker, uid: str) -> str:
    """A SKU with 7 units at one location and 3 at another, in PostgreSQL and Redis."""
    sku = f"R{uid}"
    await stock({sku: {f"r1{uid}": 7, f"r2{uid}": 3}})
    return sku


def _redis_copy(
    client: redis.Redis, cache: RedisCache, sku: str
) -> tuple[int, dict[str, int]] | None:
    inventory, locations, _version = cache.keys(sku)
    total = client.get(inventory)
    if total is None:
        return None
    per = client.hgetall(locations)
    return int(total), {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in per.items()}


def _postgres_copy(url: str, sku: str) -> tuple[int, dict[str, int]]:
    async def go(conn: asyncpg.Connection) -> tuple[int, dict[str, int]]:
        state = (await load_availability(conn, [sku]))[sku]
        return state.total, state.locations

    return on_db(url, go)


def test_reconcile_reports_drift_then_repairs_it(
    cli_env: None, servers: Servers, cache: RedisCache, stocked_sku: str, uid: str
) -> None:
    sku = stocked_sku
    expected = (10, {f"r1{uid}": 7, f"r2{uid}": 3})
    client = redis.Redis.from_url(servers.redis_url)
    try:
        assert _redis_copy(client, cache, sku) == expected
        assert client.delete(*cache.keys(sku)) == 3  # Redis lost the SKU

        report = cli("reconcile", "--sku", sku)
        assert report.exit_code == 1, report.output
        assert re.search(rf"{sku}\s*[│|]\s*missing\s*[│|]\s*10\s*[│|]", report.stdout)
        assert "checked 1 SKUs, 1 drifted, 0 repaired" in report.stdout
        assert _redis_copy(client, cache, sku) is None  # reporting changes nothing

        everything = cli("reconcile")
        assert everything.exit_code == 1, everything.output
        summary = re.search(r"checked (\d+) SKUs, (\d+) drifted, 0 repaired", everything.stdout)
        assert summary is not None, everything.stdout
        assert int(summary.group(1)) >= 1
        assert int(summary.group(2)) >= 1
        assert sku in everything.stdout

        repaired = cli("reconcile", "--repair", "--sku", sku)
        assert repaired.exit_code == 0, repaired.output
        assert "checked 1 SKUs, 1 drifted, 1 repaired" in repaired.stdout
        assert _redis_copy(client, cache, sku) == expected
        assert _postgres_copy(servers.database_url, sku) == expected

        clean = cli("reconcile", "--sku", sku)
        assert clean.exit_code == 0, clean.output
        assert "checked 1 SKUs, 0 drifted, 0 repaired" in clean.stdout
        assert "missing" not in clean.stdout
    finally:
        client.close()


def test_reconcile_reports_a_wrong_value_not_only_a_missing_one(
    cli_env: None, servers: Servers, cache: RedisCache, stocked_sku: str
) -> None:
    sku = stocked_sku
    client = redis.Redis.from_url(servers.redis_url)
    try:
        client.set(cache.keys(sku)[0], "999")
        report = cli("reconcile", "--sku", sku)
        assert report.exit_code == 1, report.output
        assert re.search(rf"{sku}\s*[│|]\s*999\s*[│|]\s*10\s*[│|]", report.stdout)

        repaired = cli("reconcile", "--repair", "--sku", sku)
        assert repaired.exit_code == 0, repaired.output
        assert _redis_copy(client, cache, sku) == _postgres_copy(servers.database_url, sku)
    finally:
        client.close()


# ---------------------------------------------------------------- --help


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            (),
            ["never oversells", "serve", "migrate", "worker", "keys", "orders", "verify"],
        ),
        (("serve",), ["Apply migrations, then serve", "--port", "--host", "--no-run-workers"]),
        (("migrate",), ["Apply the database migrations and exit"]),
        (("worker",), ["Run only the worker loops"]),
        (("keys",), ["API keys", "create"]),
        (("keys", "create"), ["print it once", "--role", "--name"]),
        (("verify",), ["Check the invariants", "--json"]),
        (("reconcile",), ["Compare Redis with PostgreSQL", "--repair", "--sku"]),
        (("orders",), ["needs-review", "paid-uncommitted", "logs", "recover", "resolve"]),
        (("orders", "needs-review"), ["Orders in needs_review", "--limit"]),
        (("orders", "paid-uncommitted"), ["Paid orders with reservations", "--limit"]),
        (("orders", "logs"), ["inventory log", "the order's id"]),
        (("orders", "recover"), ["never releases stock", "the order's id"]),
        (("orders", "resolve"), ["Close a review", "--to", "--note"]),
    ],
)
def test_help_of_every_command(
    cli_env: None, command: tuple[str, ...], expected: list[str]
) -> None:
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    for snippet in expected:
        assert snippet in text, (snippet, result.stdout)


# ---------------------------------------------------------------- serve and worker


def _subprocess_env(servers: Servers, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKGUARD_")}
    env.update(
        STOCKGUARD_DATABASE_URL=servers.database_url,
        STOCKGUARD_REDIS_URL=servers.redis_url,
        STOCKGUARD_REDIS_PREFIX=servers.redis_prefix,
        STOCKGUARD_LOG_JSON="true",
        STOCKGUARD_DATA_DIR=str(tmp_path / "data"),
    )
    return env


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    return proc.returncode


def test_serve_answers_health_and_readiness(servers: Servers, tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stockguard", "serve", "--port", str(port), "--no-run-workers"],
            env=_subprocess_env(servers, tmp_path),
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        health: httpx.Response | None = None
        while health is None or health.status_code != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                health = httpx.get(f"{base}/healthz", timeout=1)
            except httpx.TransportError:
                time.sleep(0.1)  # not listening yet: poll again
        assert health.json() == {"ok": True}

        ready = httpx.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 200
        assert ready.json() == {
            "ok": True,
            "mode": "strict",
            "checks": {"postgres": True, "redis": True},
        }

        anonymous = httpx.get(f"{base}/v1/skus", timeout=5)
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"].startswith("application/problem+json")
        assert anonymous.json()["code"] == "unauthorized"
    finally:
        code = _stop(proc)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught: that ends the
    # command like Ctrl-C (its finally blocks run), with exit code 0.
    assert code == 0, log.read_text()
    assert "Application shutdown complete" in log.read_text()
    events = _json_lines(log)
    serving = [e for e in events if e.get("event") == "serving"]
    assert serving, log.read_text()
    assert serving[0]["port"] == port
    assert serving[0]["workers"] == 1
    assert not any(e.get("event") == "workers_started" for e in events)


@pytest.fixture
async def expiring_order(backends: Backends, stock: Stocker, uid: str) -> tuple[str, str, str]:
    """An unpaid order holding 2 of 5 units for one second."""
    sku, loc, order_id = f"W{uid}", f"w{uid}", f"wo-{uid}"
    await stock({sku: {loc: 5}})
    await orders.place_order(
        backends, PlaceOrder(order_id, ((sku, 2),), reservation_ttl_seconds=1), "t"
    )
    return order_id, sku, loc


def test_worker_command_expires_reservations_until_sigterm(
    servers: Servers, tmp_path: Path, expiring_order: tuple[str, str, str]
) -> None:
    order_id, sku, loc = expiring_order

    async def state(conn: asyncpg.Connection) -> tuple[list[str], int]:
        statuses = await conn.fetch("SELECT status FROM reservations WHERE order_id = $1", order_id)
        reserved = await conn.fetchval(
            "SELECT reserved FROM inventory_levels WHERE sku = $1 AND location = $2", sku, loc
        )
        return [r["status"] for r in statuses], int(reserved)

    assert on_db(servers.database_url, state) == (["reserved"], 2)
    log = tmp_path / "worker.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stockguard", "worker"],
            env=_subprocess_env(servers, tmp_path),
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while on_db(servers.database_url, state) != (["expired"], 0):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)  # poll the database again
        started = [e for e in _json_lines(log) if e.get("event") == "workers_started"]
        assert len(started) == 1, log.read_text()
        assert started[0]["count"] >= 3  # at least expiry, housekeeping, reconciler
    finally:
        code = _stop(proc)
    assert code == 0, log.read_text()
    assert not any(e.get("level") == "error" for e in _json_lines(log)), log.read_text()
