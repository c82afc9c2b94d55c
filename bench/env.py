"""The benchmark's servers: a fresh database and Redis key prefix, and what the machine is.

``STOCKGUARD_DATABASE_URL`` / ``STOCKGUARD_REDIS_URL`` name the servers (a URL of any
database on the server: the benchmark creates ``stockguard_bench_<random>`` next to it
and drops it at the end); unset, the embedded servers start in a temporary directory.
Only servers on 127.0.0.1 (or a local socket) are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

from stockguard.embedded import EmbeddedRedis, start_postgres, start_redis
from stockguard.store.migrate import upgrade_async

__all__ = [
    "BenchEnv",
    "bench_env",
    "check_local",
    "fresh_database",
    "loadavg",
    "machine_info",
    "progress",
    "run_guarded",
    "wait_for_headroom",
]

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


T = TypeVar("T")


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_guarded(main: Callable[[], T], say: Callable[[str], None], what: str) -> T | None:
    """``main()``; None once an interrupt or a failure has been reported (with its
    traceback on stderr): the caller exits 2, the run could not be made."""
    try:
        return main()
    except KeyboardInterrupt:
        say("interrupted")
    except Exception as exc:
        say(f"{what} failed: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
    return None


@dataclass
class BenchEnv:
    server_url: str  # a database on the server that we may create databases from
    database_url: str  # this run's own database
    redis_url: str
    redis_prefix: str
    database_name: str
    embedded_postgres: bool
    embedded_redis: bool
    workdir: Path
    handles: list[Any] = field(default_factory=list)


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def check_local(url: str, what: str) -> None:
    """Refuse anything but 127.0.0.1 or a local (Unix) socket."""
    parts = urlsplit(url)
    host = parts.hostname
    if host is None:
        socket_host = parse_qs(parts.query).get("host", [""])[0]
        if socket_host.startswith("/") or parts.scheme == "unix":
            return
    if host != LOOPBACK:
        progress(f"{what} must be on {LOOPBACK} (got host {host!r}); refusing")
        raise SystemExit(2)


@contextlib.asynccontextmanager
async def bench_env(run_id: str) -> AsyncIterator[BenchEnv]:
    """Create the database (migrated) and the prefix; remove both at the end."""
    handles: list[Any] = []
    server_url = os.environ.get("STOCKGUARD_DATABASE_URL") or ""
    redis_url = os.environ.get("STOCKGUARD_REDIS_URL") or ""
    # Refuse before touching anything: only loopback servers are ever used.
    if server_url:
        check_local(server_url, "STOCKGUARD_DATABASE_URL")
    if redis_url:
        check_local(redis_url, "STOCKGUARD_REDIS_URL")
    workdir = Path(tempfile.mkdtemp(prefix="stockguard-bench-"))
    embedded_pg = not server_url
    embedded_redis = not redis_url
    name = f"stockguard_bench_{run_id}"
    try:
        if embedded_pg:
            progress("STOCKGUARD_DATABASE_URL unset: starting embedded PostgreSQL")
            server_url, pg = await asyncio.to_thread(start_postgres, workdir / "pg", "postgres")
            handles.append(pg)
        if embedded_redis:
            progress("STOCKGUARD_REDIS_URL unset: starting embedded Redis")
            emb = await asyncio.to_thread(start_redis, workdir / "redis")
            handles.append(emb)
            redis_url = emb.url
        async with fresh_database(server_url, name, progress) as database_url:
            yield BenchEnv(
                server_url=server_url,
                database_url=database_url,
                redis_url=redis_url,
                redis_prefix=f"sgbench:{run_id}:",
                database_name=name,
                embedded_postgres=embedded_pg,
                embedded_redis=embedded_redis,
                workdir=workdir,
                handles=handles,
            )
    finally:
        if redis_url:
            with contextlib.suppress(Exception):
                removed = await _delete_prefix(redis_url, f"sgbench:{run_id}:")
                progress(f"removed {removed} Redis keys with prefix sgbench:{run_id}:")
        for h in handles:
            with contextlib.suppress(Exception):
                if isinstance(h, EmbeddedRedis):
                    h.stop()
                else:
                    h.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _delete_prefix(redis_url: str, prefix: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    removed = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += await client.delete(*batch)
                batch.clear()
        if batch:
            removed += await client.delete(*batch)
    finally:
        await client.aclose()
    return removed


@contextlib.asynccontextmanager
async def fresh_database(
    server_url: str, name: str, say: Callable[[str], None]
) -> AsyncIterator[str]:
    """Create database ``name`` on the server of ``server_url``, apply the migrations,
    yield its URL; drop it at the end (its sessions are terminated first)."""
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        database_url = _with_database(server_url, name)
        say(f"database {name}: applying migrations")
        await upgrade_async(database_url)
        yield database_url
    finally:
        try:
            await _drop_database(server_url, name)
            say(f"dropped database {name}")
        except Exception as exc:
            say(f"could not drop database {name}: {exc!r}")


async def _drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


# ---------------------------------------------------------------- the machine


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git() -> dict[str, Any]:
    def run(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "commit": run("rev-parse", "HEAD") or None,
        "src_uncommitted_changes": bool(run("status", "--porcelain", "--", "src")),
    }


def loadavg() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


async def machine_info(env: BenchEnv, event_loop: str) -> dict[str, Any]:
    conn = await asyncpg.connect(env.database_url)
    try:
        pg: dict[str, Any] = {
            "server_version": await conn.fetchval("SHOW server_version"),
            "embedded": env.embedded_postgres,
        }
        for setting in (
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "shared_buffers",
            "max_connections",
        ):
            pg[setting] = await conn.fetchval(f"SHOW {setting}")
        pg["other_active_sessions"] = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
    finally:
        await conn.close()
    client = aioredis.Redis.from_url(env.redis_url)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "event_loop": event_loop,
        "loadavg_at_start": loadavg(),
        "postgres": pg,
        "redis": {"version": info.get("redis_version"), "embedded": env.embedded_redis},
        "git": _git(),
    }


async def wait_for_headroom(database_url: str, needed: int, patience: float) -> dict[str, Any]:
    """Wait (up to ``patience`` s) until the server can take ``needed`` more connections:
    others may share it (test runs hold dozens). Returns what was seen."""
    deadline = time.monotonic() + patience
    waited = 0.0
    while True:
        try:
            conn = await asyncpg.connect(database_url)
        except asyncpg.TooManyConnectionsError:
            free = 0  # not even room for the probe
        else:
            try:
                row = await conn.fetchrow(
                    "SELECT current_setting('max_connections')::int "
                    "- current_setting('superuser_reserved_connections')::int AS usable, "
                    "(SELECT count(*) FROM pg_stat_activity "
                    " WHERE backend_type = 'client backend') AS used"
                )
            finally:
                await conn.close()
            assert row is not None
            free = int(row["usable"]) - int(row["used"]) + 1  # our probe is about to go
        if free >= needed:
            return {"needed": needed, "free": free, "waited_s": round(waited, 1)}
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the PostgreSQL server has {free} free connections after {waited:.0f} s; "
                f"the benchmark needs {needed} (others are using it)"
            )
        if waited % 30 == 0:
            progress(f"{free} free connections on the server, need {needed}: waiting")
        await asyncio.sleep(1.0)
        waited += 1.0
