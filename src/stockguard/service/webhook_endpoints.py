"""Webhook endpoints, as an admin manages them (API.md "Webhook endpoints"; the routes
and ``stockguard webhooks``): create, read, change, delete, ping, read the delivery log
and replay. Delivering the events themselves is the workers' job
(:mod:`stockguard.workers.delivery`), never a request's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stockguard.domain.delivery import new_secret, pattern_problem
from stockguard.domain.errors import NotFound, ValidationFailed
from stockguard.metrics import WEBHOOK_DELIVERIES
from stockguard.service.uow import Backends, UnitOfWork, run
from stockguard.service.url_guard import UrlRefused, check_url
from stockguard.service.webhook_sender import event_body, new_client, send
from stockguard.store import deliveries
from stockguard.store import webhook_endpoints as store
from stockguard.store.webhook_endpoints import (
    DeliveryRecord,
    DeliveryStatus,
    EndpointRecord,
    EndpointSecret,
)

__all__ = [
    "Created",
    "EndpointChanges",
    "NewEndpoint",
    "create_endpoint",
    "delete_endpoint",
    "get_endpoint",
    "list_deliveries",
    "list_endpoints",
    "ping_endpoint",
    "replay",
    "update_endpoint",
]


@dataclass(frozen=True, slots=True)
class NewEndpoint:
    url: str
    events: Sequence[str]
    description: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointChanges:
    """What a PATCH names; ``None`` means "leave it" except for ``description``, whose
    presence is said by ``set_description``."""

    url: str | None = None
    events: Sequence[str] | None = None
    description: str | None = None
    set_description: bool = False
    active: bool | None = None


@dataclass(frozen=True, slots=True)
class Created:
    endpoint: EndpointRecord
    secret: str  # shown once


def _patterns(events: Sequence[str]) -> list[str]:
    problems = [p for e in events if (p := pattern_problem(e)) is not None]
    if problems:
        raise ValidationFailed(f"events: {problems[0]}")
    return list(dict.fromkeys(events))  # in the given order, once each


async def _url(url: str, allow_private: bool) -> str:
    try:
        await check_url(url, allow_private)
    except UrlRefused as exc:
        raise ValidationFailed(str(exc)) from exc
    return url


def _unknown(endpoint_id: str) -> NotFound:
    return NotFound(f"webhook endpoint {endpoint_id} not found")


async def create_endpoint(
    b: Backends, new: NewEndpoint, actor: str, *, allow_private: bool
) -> Created:
    """A new active endpoint with a new secret; only events that commit from now on (or
    that a replay names) go to it."""
    events = _patterns(new.events)
    url = await _url(new.url, allow_private)
    secret = new_secret()

    async def create(uow: UnitOfWork) -> Created:
        # The whole result: an Idempotency-Key's answer is rendered from it in this
        # transaction.
        made = await store.insert_endpoint(uow.conn, url, events, new.description, secret)
        return Created(made, secret)

    return await run(b, actor, create, operation="create_webhook_endpoint")


async def get_endpoint(b: Backends, endpoint_id: str) -> EndpointRecord:
    async with b.pool.acquire() as conn:
        found = await store.find_endpoint(conn, endpoint_id)
    if found is None:
        raise _unknown(endpoint_id)
    return found


async def list_endpoints(b: Backends, limit: int, after: str | None) -> list[EndpointRecord]:
    async with b.pool.acquire() as conn:
        return await store.list_endpoints(conn, limit, after)


async def update_endpoint(
    b: Backends, endpoint_id: str, changes: EndpointChanges, actor: str, *, allow_private: bool
) -> EndpointRecord:
    """Change what is named; a deactivated endpoint is sent nothing (its pending
    deliveries wait) until it is active again."""
    columns: dict[str, Any] = {}
    if changes.events is not None:
        columns["events"] = _patterns(changes.events)
    if changes.url is not None:
        columns["url"] = await _url(changes.url, allow_private)
    if changes.set_description:
        columns["description"] = changes.description
    if changes.active is not None:
        columns["active"] = changes.active

    async def update(uow: UnitOfWork) -> EndpointRecord | None:
        return await store.update_endpoint(uow.conn, endpoint_id, columns)

    found = await run(b, actor, update, operation="update_webhook_endpoint")
    if found is None:
        raise _unknown(endpoint_id)
    return found


async def delete_endpoint(b: Backends, endpoint_id: str, actor: str) -> None:
    """Remove the endpoint and its deliveries: nothing more is sent to it (an attempt in
    flight at this moment may still arrive; its outcome is not recorded)."""

    async def delete(uow: UnitOfWork) -> bool:
        return await store.delete_endpoint(uow.conn, endpoint_id)

    if not await run(b, actor, delete, operation="delete_webhook_endpoint"):
        raise _unknown(endpoint_id)


async def ping_endpoint(
    b: Backends, endpoint_id: str, actor: str, *, allow_private: bool, timeout_seconds: float
) -> DeliveryRecord:
    """Write a ``ping`` event and its delivery, send it now (after that transaction has
    committed: no transaction is open during the attempt) and record the outcome. A ping
    is tried once: a failed one is ``failed`` at once and never retried (the admin sees
    the outcome in the answer and pings again)."""

    async def write(uow: UnitOfWork) -> tuple[EndpointSecret, store.Ping] | None:
        target = await store.find_secret(uow.conn, endpoint_id)
        if target is None:
            return None
        return target, await store.insert_ping(uow.conn, endpoint_id)

    # answers=False: the answer (the attempt's outcome) is only known after the attempt.
    written = await run(b, actor, write, operation="ping_webhook_endpoint", answers=False)
    if written is None:
        raise _unknown(endpoint_id)
    target, ping = written
    body = event_body(ping.event_id, None, "ping", ping.occurred_at, {"endpoint_id": endpoint_id})
    async with new_client(timeout_seconds) as client:
        attempt = await send(
            client,
            target.url,
            target.secret,
            ping.event_id,
            body,
            allow_private=allow_private,
            timeout_seconds=timeout_seconds,
        )
    outcome = "delivered" if attempt.ok else "failed"
    WEBHOOK_DELIVERIES.labels(outcome).inc()
    async with b.pool.acquire() as conn:
        await deliveries.record_ping(
            conn,
            endpoint_id,
            ping.position,
            status_code=attempt.status_code,
            error=attempt.error,
            status=outcome,
        )
        found = await store.find_delivery(conn, endpoint_id, ping.position)
    if found is None:  # deleted meanwhile
        raise _unknown(endpoint_id)
    return found


async def list_deliveries(
    b: Backends,
    endpoint_id: str,
    status: DeliveryStatus | None,
    limit: int,
    before: tuple[datetime, int] | None,
) -> list[DeliveryRecord]:
    """The endpoint's delivery log, newest first."""
    async with b.pool.acquire() as conn:
        if await store.find_endpoint(conn, endpoint_id) is None:
            raise _unknown(endpoint_id)
        return await store.list_deliveries(conn, endpoint_id, status, limit, before)


async def replay(b: Backends, endpoint_id: str, after_seq: int, actor: str) -> int:
    """Queue every kept event of the endpoint's types with ``seq > after_seq`` to be sent
    again (in seq order, by the workers); how many were queued."""

    async def queue(uow: UnitOfWork) -> int | None:
        if await store.find_endpoint(uow.conn, endpoint_id) is None:
            return None
        return await store.queue_replay(uow.conn, endpoint_id, after_seq)

    queued = await run(b, actor, queue, operation="replay_webhook_endpoint")
    if queued is None:
        raise _unknown(endpoint_id)
    return queued
