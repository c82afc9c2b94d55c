"""Webhook delivery: the worker loop that sends each endpoint its pending events.

- **One task per endpoint**, at most ``STOCKGUARD_WEBHOOK_CONCURRENCY`` per process: a slow
  or failing endpoint holds up only its own task, never another endpoint (nor the stock
  path: nothing here runs inside a request or holds a transaction during a send).
- **Leases**: a task serves an endpoint only while this process holds the endpoint's
  lease (:mod:`stockguard.store.deliveries`), so with several worker processes each
  attempt is made by exactly one of them. The lease outlasts one attempt's timeout and
  is renewed by the statement that records each outcome (one short transaction per
  event); a process killed mid-attempt leaves the delivery pending, and another process
  sends it again (same ``webhook-id``) once the lease has expired.
- **Order**: an endpoint's deliveries go in ``seq`` order; while the queue's head waits
  for a retry, nothing behind it is sent. A head that exhausts the retry schedule becomes
  ``failed`` (metric and log) and the queue moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import socket
import time
from collections.abc import Callable

import httpx

from stockguard.config import Settings
from stockguard.domain.delivery import retry_delay
from stockguard.logging import get_logger
from stockguard.metrics import WEBHOOK_DELIVERIES, WEBHOOK_OLDEST_UNDELIVERED, WORKER_RUNS
from stockguard.service.uow import Backends
from stockguard.service.webhook_sender import Attempt, event_body, new_client, send
from stockguard.store import deliveries
from stockguard.store.deliveries import Due, Target

__all__ = ["Deliverer", "worker_id"]

log = get_logger(__name__)

BATCH = 50  # deliveries read per query while an endpoint keeps answering
AGES_EVERY = 1.0  # seconds between updates of the oldest-undelivered gauge


def worker_id() -> str:
    """This process's name on the leases it holds."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Deliverer:
    """Runs until cancelled; :meth:`run` is one worker loop."""

    def __init__(
        self, backends: Backends, settings: Settings, wake: asyncio.Event | None = None
    ) -> None:
        self.backends = backends
        self.settings = settings
        self.schedule = settings.webhook_retry_delays
        self.wake = wake or asyncio.Event()
        self.owner = worker_id()
        self.serving: dict[str, asyncio.Task[None]] = {}
        self._client: httpx.AsyncClient | None = None
        self._ages_at = 0.0
        self._gauged: set[str] = set()

    async def run(self) -> None:
        self._client = new_client(self.settings.webhook_timeout_seconds)
        try:
            while True:
                try:
                    await self.dispatch()
                    await self.report_ages()
                    WORKER_RUNS.labels("delivery", "ok").inc()
                except Exception as exc:
                    WORKER_RUNS.labels("delivery", "error").inc()
                    log.error("worker_failed", worker="delivery", error=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.webhook_poll_interval_seconds):
                        await self.wake.wait()
                self.wake.clear()
        finally:
            await self._stop()

    async def _stop(self) -> None:
        tasks = list(self.serving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):  # expired leases free themselves anyway
            async with self.backends.pool.acquire() as conn:
                await deliveries.release_leases(conn, self.owner)
        if self._client is not None:
            await self._client.aclose()

    async def dispatch(self) -> None:
        """Lease the endpoints whose queue head is due, as many as there are free slots,
        and start one task for each."""
        free = self.settings.webhook_concurrency - len(self.serving)
        if free <= 0:
            return
        async with self.backends.pool.acquire() as conn:
            targets = await deliveries.take_endpoints(
                conn, self.owner, self.settings.webhook_lease_seconds, free, list(self.serving)
            )
        for target in targets:
            task = asyncio.create_task(self._serve(target), name=f"webhook:{target.id}")
            self.serving[target.id] = task
            task.add_done_callback(self._forget(target.id))

    def _forget(self, endpoint_id: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self.serving.pop(endpoint_id, None)

        return done

    async def report_ages(self) -> None:
        """Set the oldest-undelivered gauge of every endpoint (at most once a second)."""
        now = time.monotonic()
        if now - self._ages_at < AGES_EVERY:
            return
        self._ages_at = now
        async with self.backends.pool.acquire() as conn:
            ages = await deliveries.oldest_pending_ages(conn)
        for endpoint, age in ages.items():
            WEBHOOK_OLDEST_UNDELIVERED.labels(endpoint).set(age)
        for gone in self._gauged - ages.keys():
            with contextlib.suppress(KeyError):
                WEBHOOK_OLDEST_UNDELIVERED.remove(gone)
        self._gauged = set(ages)

    async def _serve(self, target: Target) -> None:
        """Send the endpoint its due deliveries in seq order while it answers and the
        lease stays ours; then give the lease back."""
        keep_lease = False
        try:
            keep_lease = not await self._drain(target)
        except Exception as exc:
            log.error("webhook_endpoint_task_failed", endpoint=target.id, error=type(exc).__name__)
        finally:
            if not keep_lease:
                with contextlib.suppress(Exception):
                    async with self.backends.pool.acquire() as conn:
                        await deliveries.release_lease(conn, target.id, self.owner)

    async def _drain(self, target: Target) -> bool:
        """True when done with the endpoint for now (nothing due), False when the lease
        was lost (it is not ours to release)."""
        while True:
            async with self.backends.pool.acquire() as conn:
                batch = await deliveries.upcoming(conn, target.id, BATCH)
            if not batch:
                return True
            for due in batch:
                if not due.due:
                    return True  # the head waits for its retry: nothing behind it goes
                attempt = await self._attempt(target, due)
                recorded = await self._record(target, due, attempt)
                if recorded is None:
                    return False  # deleted, or taken over
                target, outcome = recorded
                if outcome == "retry" or not target.active:
                    return True

    async def _attempt(self, target: Target, due: Due) -> Attempt:
        assert self._client is not None
        body = event_body(due.event_id, due.seq, due.type, due.occurred_at, due.data)
        return await send(
            self._client,
            target.url,
            target.secret,
            due.event_id,
            body,
            allow_private=self.settings.webhook_allow_private_urls,
            timeout_seconds=self.settings.webhook_timeout_seconds,
        )

    async def _record(
        self, target: Target, due: Due, attempt: Attempt
    ) -> tuple[Target, str] | None:
        """Write the outcome and renew the lease; returns the endpoint as it is now and
        the outcome (delivered, retry or failed), or None when the lease was lost
        meanwhile (the new holder's attempt is the one that counts)."""
        if attempt.ok:
            outcome, status, retry_in = "delivered", "delivered", None
        else:
            retry_in = retry_delay(self.schedule, due.attempts + 1, random.random)
            outcome, status = ("failed", "failed") if retry_in is None else ("retry", "pending")
        async with self.backends.pool.acquire() as conn:
            renewed = await deliveries.record_attempt(
                conn,
                target.id,
                due.position,
                owner=self.owner,
                lease_seconds=self.settings.webhook_lease_seconds,
                status_code=attempt.status_code,
                error=attempt.error,
                status=status,
                retry_in=retry_in,
            )
        if renewed is None:
            return None
        WEBHOOK_DELIVERIES.labels(outcome).inc()
        if outcome == "failed":
            log.error(
                "webhook_delivery_failed",
                endpoint=target.id,
                event_id=due.event_id,
                seq=due.seq,
                attempts=due.attempts + 1,
                status_code=attempt.status_code,
                error=attempt.error,
            )
        elif outcome == "retry":
            log.warning(
                "webhook_delivery_retry",
                endpoint=target.id,
                event_id=due.event_id,
                attempts=due.attempts + 1,
                retry_in=round(retry_in or 0.0, 3),
                status_code=attempt.status_code,
                error=attempt.error,
            )
        return renewed, outcome
