"""A real uvicorn server (one process, ``create_app`` factory) on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["HttpServer", "free_port", "http_server", "service_env", "tail"]


@dataclass
class HttpServer:
    base_url: str
    pid: int
    pool_max: int


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def service_env(**settings: object) -> dict[str, str]:
    """This process's environment without its ``STOCKGUARD_*`` variables, plus
    ``settings`` (names of :class:`stockguard.config.Settings`) as ``STOCKGUARD_<NAME>``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKGUARD_")}
    env.update({f"STOCKGUARD_{name.upper()}": str(v) for name, v in settings.items()})
    return env


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.asynccontextmanager
async def http_server(
    *,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    admin_key: str,
    workdir: Path,
    pool_max: int,
    workers: int = 1,
    app: str = "stockguard.api.app:create_app",
    **settings: object,
) -> AsyncIterator[HttpServer]:
    """Start ``uvicorn --factory stockguard.api.app:create_app`` (``workers`` processes;
    or another ``app``, such as the bare endpoint) with settings from the environment (the
    bench database, prefix and bootstrap admin key; no worker loops; ``settings``
    override), wait for ``/readyz``, stop it at the end."""
    port = free_port()
    env = service_env(
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        bootstrap_admin_key=admin_key,
        run_workers="false",
        cache_mode="strict",
        db_pool_min=min(8, pool_max),
        db_pool_max=pool_max,
        log_level="WARNING",
        data_dir=workdir / "server-data",
        **settings,
    )
    log_path = workdir / "uvicorn.log"
    factory = ["--factory"] if app.endswith("create_app") else []
    args = [
        sys.executable, "-m", "uvicorn", app, *factory, "--workers", str(workers),
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *args, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"uvicorn exited:\n{tail(log_path)}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn did not become ready:\n{tail(log_path)}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield HttpServer(base_url=base_url, pid=proc.pid, pool_max=pool_max)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
