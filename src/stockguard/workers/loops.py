"""The worker loops run by ``stockguard serve`` and ``stockguard worker``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from stockguard.config import Settings
from stockguard.logging import get_logger
from stockguard.metrics import WORKER_RUNS
from stockguard.service.expiry import abandon_stale, expire_all_due
from stockguard.service.reconcile import reconcile, repair_dirty
from stockguard.service.recovery import recover_paid_uncommitted
from stockguard.service.uow import Backends

__all__ = ["purge_idempotency_keys", "start_workers", "stop_workers"]

log = get_logger(__name__)


async def _every(name: str, interval: float, step: Callable[[], Awaitable[object]]) -> None:
    while True:
        try:
            await step()
            WORKER_RUNS.labels(name, "ok").inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            WORKER_RUNS.labels(name, "error").inc()
            log.error("worker_failed", worker=name, error=type(exc).__name__, exc_info=exc)
        await asyncio.sleep(interval)


async def purge_idempotency_keys(backends: Backends, ttl_seconds: int) -> None:
    await backends.pool.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
        float(ttl_seconds),
    )


def start_workers(backends: Backends, settings: Settings) -> list[asyncio.Task[None]]:
    async def expiry() -> None:
        await expire_all_due(backends)
        await abandon_stale(backends, settings.abandon_after_seconds)

    last_sweep: float | None = None  # the first pass sweeps everything

    async def cache() -> None:
        nonlocal last_sweep
        await repair_dirty(backends)
        since = None if last_sweep is None else time.monotonic() - last_sweep
        if since is None or since >= settings.reconcile_full_interval_seconds:
            await reconcile(backends, repair=True)
            last_sweep = time.monotonic()

    async def housekeeping() -> None:
        await purge_idempotency_keys(backends, settings.idempotency_ttl_seconds)

    async def recovery() -> None:
        await recover_paid_uncommitted(backends)

    loops = [
        _every("expiry", settings.expiry_interval_seconds, expiry),
        _every("recovery", settings.recovery_interval_seconds, recovery),
        _every("housekeeping", 3600, housekeeping),
    ]
    if backends.cache is not None:
        loops.append(_every("reconciler", settings.reconcile_interval_seconds, cache))
    return [asyncio.create_task(loop) for loop in loops]


async def stop_workers(tasks: list[asyncio.Task[None]], grace: float = 10.0) -> None:
    """Cancel the loops and wait for them, at most ``grace`` seconds (a loop in the middle
    of a transaction finishes or rolls it back first)."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        log.error("worker_did_not_stop", task=task.get_name())
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("worker_failed_at_stop", task=task.get_name(), error=repr(task.exception()))
