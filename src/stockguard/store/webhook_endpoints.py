"""Webhook endpoints and their delivery log, as the admin routes and the CLI read and
write them (tables of migration 0007). The delivery workers' queries are in
:mod:`stockguard.store.deliveries`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from stockguard.store.db import Conn

__all__ = [
    "DeliveryRecord",
    "EndpointRecord",
    "EndpointSecret",
    "Ping",
    "backlog",
    "delete_endpoint",
    "find_delivery",
    "find_endpoint",
    "find_secret",
    "insert_endpoint",
    "insert_ping",
    "list_deliveries",
    "list_endpoints",
    "queue_replay",
    "update_endpoint",
]

DeliveryStatus = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    id: str
    url: str
    events: list[str]
    description: str | None
    active: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EndpointSecret:
    """What a sender needs: where, and the signing key."""

    id: str
    url: str
    secret: str


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One event's delivery to one endpoint, as the log shows it."""

    event_id: str
    seq: int | None
    type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None  # only while pending
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    position: int  # the event's insert position: with created_at, the log's order


_ENDPOINT = "id, url, events, description, active, created_at, updated_at"


def _endpoint(row: asyncpg.Record) -> EndpointRecord:
    return EndpointRecord(
        id=row["id"],
        url=row["url"],
        events=list(row["events"]),
        description=row["description"],
        active=row["active"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert_endpoint(
    conn: Conn, url: str, events: list[str], description: str | None, secret: str
) -> EndpointRecord:
    row = await conn.fetchrow(
        "INSERT INTO webhook_endpoints (url, events, description, secret) "
        f"VALUES ($1, $2, $3, $4) RETURNING {_ENDPOINT}",
        url,
        events,
        description,
        secret,
    )
    assert row is not None
    return _endpoint(row)


async def find_endpoint(conn: Conn, endpoint_id: str) -> EndpointRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE id = $1", endpoint_id
    )
    return None if row is None else _endpoint(row)


async def find_secret(conn: Conn, endpoint_id: str) -> EndpointSecret | None:
    row = await conn.fetchrow(
        "SELECT id, url, secret FROM webhook_endpoints WHERE id = $1", endpoint_id
    )
    return None if row is None else EndpointSecret(row["id"], row["url"], row["secret"])


async def list_endpoints(conn: Conn, limit: int, after: str | None) -> list[EndpointRecord]:
    """Oldest first, ``limit`` after the endpoint id ``after``."""
    rows = await conn.fetch(
        f"SELECT {_ENDPOINT} FROM webhook_endpoints "
        "WHERE $2::text IS NULL OR (created_at, id) > "
        "      (SELECT created_at, id FROM webhook_endpoints WHERE id = $2) "
        "ORDER BY created_at, id LIMIT $1",
        limit,
        after,
    )
    return [_endpoint(r) for r in rows]


async def update_endpoint(
    conn: Conn, endpoint_id: str, changes: dict[str, Any]
) -> EndpointRecord | None:
    """Set the given columns (of url, events, description, active); None if unknown."""
    allowed = ("url", "events", "description", "active")
    names = [n for n in allowed if n in changes]
    sets = "".join(f", {n} = ${i}" for i, n in enumerate(names, start=2))
    row = await conn.fetchrow(
        f"UPDATE webhook_endpoints SET updated_at = now(){sets} WHERE id = $1 "
        f"RETURNING {_ENDPOINT}",
        endpoint_id,
        *(changes[n] for n in names),
    )
    return None if row is None else _endpoint(row)


async def backlog(conn: Conn) -> dict[str, tuple[int, int]]:
    """Per endpoint with any: (deliveries pending, deliveries failed)."""
    rows = await conn.fetch(
        "SELECT endpoint_id, count(*) FILTER (WHERE status = 'pending') AS pending, "
        "       count(*) FILTER (WHERE status = 'failed') AS failed "
        "FROM webhook_deliveries GROUP BY endpoint_id"
    )
    return {r["endpoint_id"]: (int(r["pending"]), int(r["failed"])) for r in rows}


async def delete_endpoint(conn: Conn, endpoint_id: str) -> bool:
    """Remove the endpoint with its deliveries (ON DELETE CASCADE) and its pings."""
    deleted = await conn.fetchval(
        """
        WITH gone AS (DELETE FROM webhook_endpoints WHERE id = $1 RETURNING id),
             pings AS (DELETE FROM events WHERE type = 'ping'
                       AND endpoint_id IN (SELECT id FROM gone))
        SELECT id FROM gone
        """,
        endpoint_id,
    )
    return deleted is not None


_DELIVERY = (
    "e.event_id, d.seq, e.type, d.status, d.attempts, d.last_status_code, d.last_error, "
    "d.next_attempt_at, d.last_attempt_at, d.delivered_at, d.created_at, d.event_id AS position"
)


def _delivery(row: asyncpg.Record) -> DeliveryRecord:
    return DeliveryRecord(
        event_id=row["event_id"],
        seq=row["seq"],
        type=row["type"],
        status=row["status"],
        attempts=row["attempts"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        next_attempt_at=row["next_attempt_at"] if row["status"] == "pending" else None,
        last_attempt_at=row["last_attempt_at"],
        delivered_at=row["delivered_at"],
        created_at=row["created_at"],
        position=row["position"],
    )


async def list_deliveries(
    conn: Conn,
    endpoint_id: str,
    status: DeliveryStatus | None,
    limit: int,
    before: tuple[datetime, int] | None,
) -> list[DeliveryRecord]:
    """Newest first: by the time the delivery was queued, then the event's position;
    ``before`` is the previous page's last (created_at, event position)."""
    rows = await conn.fetch(
        f"SELECT {_DELIVERY} FROM webhook_deliveries d "
        "JOIN events e ON e.id = d.event_id "
        "WHERE d.endpoint_id = $1 AND ($2::text IS NULL OR d.status = $2) "
        "  AND ($4::timestamptz IS NULL OR (d.created_at, d.event_id) < ($4, $5)) "
        "ORDER BY d.created_at DESC, d.event_id DESC LIMIT $3",
        endpoint_id,
        status,
        limit,
        None if before is None else before[0],
        None if before is None else before[1],
    )
    return [_delivery(r) for r in rows]


async def queue_replay(conn: Conn, endpoint_id: str, after_seq: int) -> int:
    """Queue every kept event of the endpoint's types with ``seq > after_seq`` to be sent
    again from the first attempt; a delivery still pending is left as it is (it will be
    sent anyway). Returns how many deliveries were queued."""
    queued = await conn.fetchval(
        """
        WITH queued AS (
            INSERT INTO webhook_deliveries AS d (endpoint_id, event_id, seq)
            SELECT w.id, e.id, e.seq
            FROM webhook_endpoints w
            JOIN events e ON e.seq > $2 AND stockguard_event_matches(w.events, e.type)
            WHERE w.id = $1
            ON CONFLICT (endpoint_id, event_id) DO UPDATE
                SET status = 'pending', attempts = 0, next_attempt_at = now(),
                    delivered_at = NULL, created_at = now()
                WHERE d.status <> 'pending'
            RETURNING 1
        )
        SELECT count(*) FROM queued
        """,
        endpoint_id,
        after_seq,
    )
    return int(queued)


@dataclass(frozen=True, slots=True)
class Ping:
    position: int
    event_id: str
    occurred_at: datetime


async def insert_ping(conn: Conn, endpoint_id: str) -> Ping:
    """A ``ping`` event for the endpoint and its (unnumbered) delivery."""
    row = await conn.fetchrow(
        "INSERT INTO events (type, data, endpoint_id) "
        "VALUES ('ping', jsonb_build_object('endpoint_id', $1::text), $1) "
        "RETURNING id, event_id, occurred_at",
        endpoint_id,
    )
    assert row is not None
    await conn.execute(
        "INSERT INTO webhook_deliveries (endpoint_id, event_id) VALUES ($1, $2)",
        endpoint_id,
        row["id"],
    )
    return Ping(row["id"], row["event_id"], row["occurred_at"])


async def find_delivery(conn: Conn, endpoint_id: str, position: int) -> DeliveryRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_DELIVERY} FROM webhook_deliveries d JOIN events e ON e.id = d.event_id "
        "WHERE d.endpoint_id = $1 AND d.event_id = $2",
        endpoint_id,
        position,
    )
    return None if row is None else _delivery(row)
