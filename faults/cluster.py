"""The system under test: one Redis, two API processes and one worker process that the
nemesis may kill, freeze and restart, on a fresh database of their own.

- Redis is a ``redis-server`` child (loopback, free port, no persistence) started by
  :func:`stockguard.embedded.start_redis`, so a kill loses everything and a restart on
  the same port comes back empty.
- The API processes run ``python -m stockguard serve --port P --no-run-workers``; the
  worker runs ``python -m stockguard worker``. All share one environment (strict cache
  mode, short TTLs and intervals, the bootstrap admin key, the webhook secrets).
- Every process writes its output to ``<workdir>/<name>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncpg
import httpx

from bench.http_server import free_port, service_env, tail
from stockguard.embedded import EmbeddedRedis, start_redis

__all__ = [
    "RAZORPAY_SECRET",
    "STRIPE_SECRET",
    "Cluster",
    "Process",
    "Timing",
    "cluster",
    "connect",
]

STRIPE_SECRET = "whsec_faults_stripe_secret"
RAZORPAY_SECRET = "faults_razorpay_secret"


async def connect(database_url: str, patience: float = 30.0) -> asyncpg.Connection:
    """A connection of the suite's own; waits while the shared server is full (other test
    runs may hold most of its connections for a while)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return await asyncpg.connect(database_url)
        except asyncpg.TooManyConnectionsError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


@dataclass(frozen=True)
class Timing:
    """Short TTLs and intervals, so expiry, abandonment, recovery and the reconciler all
    run (several times) within a short run. Names are those of stockguard's Settings."""

    expiry_interval_seconds: float = 0.5
    abandon_after_seconds: int = 2
    reconcile_interval_seconds: float = 1.0
    reconcile_full_interval_seconds: float = 3.0
    recovery_interval_seconds: float = 2.0
    db_pool_max: int = 6


@dataclass
class Process:
    """One service process that can be killed (SIGKILL) and started again."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    base_url: str | None = None  # API processes only
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def exited(self) -> int | None:
        """The exit status if the process has ended (by itself or killed), else None."""
        return None if self.popen is None else self.popen.poll()

    def kill(self) -> None:
        """``kill -9``, then reap it."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def stop(self, grace: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 15) -> str:
        return tail(self.log_path, lines)


@dataclass
class Cluster:
    workdir: Path
    database_url: str
    admin_key: str
    redis: EmbeddedRedis
    apis: list[Process]
    worker: Process
    frozen: bool = False
    restarts: dict[str, int] = field(default_factory=dict)

    @property
    def redis_url(self) -> str:
        return self.redis.url

    # ------------------------------------------------------------ Redis faults

    def kill_redis(self) -> None:
        proc = self.redis.process
        assert proc is not None
        if self.frozen:
            self.thaw_redis()
        proc.kill()
        proc.wait()

    async def start_redis(self) -> None:
        """Start Redis again on the same port, empty (it has no persistence)."""
        port = self.redis.port
        self.redis = await asyncio.to_thread(start_redis, self.workdir / "redis", port)

    def freeze_redis(self) -> None:
        assert self.redis.process is not None
        os.kill(self.redis.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw_redis(self) -> None:
        assert self.redis.process is not None
        os.kill(self.redis.process.pid, signal.SIGCONT)
        self.frozen = False

    # ------------------------------------------------------------ processes

    async def start_api(self, api: Process, patience: float = 60.0) -> float:
        """Start an API process and wait until ``/readyz`` answers 200; returns seconds."""
        t0 = time.monotonic()
        api.start()
        assert api.base_url is not None
        last = "no answer"
        async with httpx.AsyncClient(base_url=api.base_url, timeout=2) as client:
            while True:
                if api.exited() is not None:
                    raise RuntimeError(f"{api.name} exited:\n{api.log_tail()}")
                if time.monotonic() - t0 > patience:
                    raise RuntimeError(
                        f"{api.name} did not become ready in {patience:.0f} s (last /readyz: "
                        f"{last}; Redis {'frozen' if self.frozen else 'running'}):\n"
                        f"{api.log_tail()}"
                    )
                try:
                    ready = await client.get("/readyz")
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                else:
                    if ready.status_code == 200:
                        return time.monotonic() - t0
                    last = f"{ready.status_code} {ready.text[:200]}"
                await asyncio.sleep(0.1)

    def stop_all(self) -> None:
        if self.frozen:
            self.thaw_redis()
        for p in [*self.apis, self.worker]:
            p.stop()
        self.redis.stop()


@contextlib.asynccontextmanager
async def cluster(
    database_url: str, admin_key: str, workdir: Path, timing: Timing, api_count: int = 2
) -> AsyncIterator[Cluster]:
    """Start Redis, the API processes (one after the other: each bootstraps the admin key)
    and the worker; stop them all at the end."""
    redis = await asyncio.to_thread(start_redis, workdir / "redis")
    env = service_env(
        database_url=database_url,
        redis_url=redis.url,
        bootstrap_admin_key=admin_key,
        stripe_webhook_secret=STRIPE_SECRET,
        razorpay_webhook_secret=RAZORPAY_SECRET,
        cache_mode="strict",
        db_pool_min=1,
        log_level="WARNING",
        data_dir=workdir / "service-data",
        **asdict(timing),
    )
    py = [sys.executable, "-m", "stockguard"]
    apis = []
    for i in range(api_count):
        port = free_port()
        apis.append(
            Process(
                name=f"api-{i}",
                args=[*py, "serve", "--port", str(port), "--no-run-workers"],
                env=env,
                log_path=workdir / f"api-{i}.log",
                base_url=f"http://127.0.0.1:{port}",
            )
        )
    worker = Process("worker", [*py, "worker"], env, workdir / "worker.log")
    c = Cluster(workdir, database_url, admin_key, redis, apis, worker)
    try:
        for api in apis:
            await c.start_api(api)
        worker.start()
        yield c
    finally:
        c.stop_all()
