"""The worker loops run by ``stockguard serve`` and ``stockguard worker``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from stockguard.config import Settings
from stockguard.logging import get_logger
from stockguard.metrics import EVENTS_SEQUENCED, WORKER_RUNS
from stockguard.service.expiry import abandon_stale, expire_all_due
from stockguard.service.reconcile import reconcile, repair_dirty
from stockguard.service.recovery import recover_paid_uncommitted
from stockguard.service.uow import Backends
from stockguard.store.events import sequence_events
from stockguard.store.retention import prune_events
from stockguard.workers.delivery import Deliverer

__all__ = [
    "prune_old_events",
    "purge_idempotency_keys",
    "sequence_all",
    "start_workers",
    "stop_workers",
]

SEQUENCE_BATCH = 500
PRUNE_BATCH = 1000

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


async def sequence_all(backends: Backends, wake: asyncio.Event | None = None) -> int:
    """Number every event that can be numbered now, a batch at a time; wakes the
    delivery loop when it numbered any (their deliveries were queued with them)."""
    total = 0
    while True:
        async with backends.pool.acquire() as conn:
            numbered = await sequence_events(conn, SEQUENCE_BATCH)
        total += numbered
        EVENTS_SEQUENCED.inc(numbered)
        if numbered < SEQUENCE_BATCH:
            break
    if total and wake is not None:
        wake.set()
    return total


async def prune_old_events(backends: Backends, retention_days: float) -> int:
    """Remove events past retention whose deliveries are done, batch by batch (each its
    own short transaction); returns how many numbered events went."""
    removed = 0
    while True:
        async with backends.pool.acquire() as conn:
            events, pings = await prune_events(conn, retention_days * 86_400, PRUNE_BATCH)
        removed += events
        if events < PRUNE_BATCH and pings < PRUNE_BATCH:
            break
    if removed:
        log.info("events_pruned", count=removed)
    return removed


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
        await prune_old_events(backends, settings.event_retention_days)

    wake = asyncio.Event()  # the sequencer numbered events: deliver without waiting a poll

    async def sequencer() -> None:
        await sequence_all(backends, wake)

    async def recovery() -> None:
        await recover_paid_uncommitted(backends)

    loops = {
        "expiry": _every("expiry", settings.expiry_interval_seconds, expiry),
        "recovery": _every("recovery", settings.recovery_interval_seconds, recovery),
        "housekeeping": _every(
            "housekeeping", settings.housekeeping_interval_seconds, housekeeping
        ),
        "sequencer": _every("sequencer", settings.event_sequence_interval_seconds, sequencer),
        "delivery": Deliverer(backends, settings, wake).run(),
    }
    if backends.cache is not None:
        loops["reconciler"] = _every("reconciler", settings.reconcile_interval_seconds, cache)
    # Named, so a loop that does not stop in time is named in the log.
    return [asyncio.create_task(loop, name=f"worker:{name}") for name, loop in loops.items()]


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
