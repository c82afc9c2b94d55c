"""The delivery workers' queries: endpoint leases, the head of an endpoint's queue, and
the outcome of one attempt. Each is one short statement in its own transaction: nothing
here is ever held open across an HTTP call.

A worker delivers to an endpoint only while it holds the endpoint's lease
(``lease_owner``, ``lease_until``), taken by an UPDATE that only succeeds when the lease
is free or expired, and renewed by the same statement that records each outcome (so the
next attempt starts under a fresh lease); an outcome is recorded only while the lease is
still the recorder's. So one endpoint is served by one worker at a time,
and a worker killed mid-attempt leaves its delivery pending for the next holder."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stockguard.store.db import Conn

__all__ = [
    "Due",
    "Target",
    "oldest_pending_ages",
    "record_attempt",
    "record_ping",
    "release_lease",
    "release_leases",
    "take_endpoints",
    "upcoming",
]


@dataclass(frozen=True, slots=True)
class Target:
    """An endpoint as its lease holder sends to it."""

    id: str
    url: str
    secret: str
    active: bool = True


@dataclass(frozen=True, slots=True)
class Due:
    """A pending delivery with its event."""

    position: int  # events.id
    event_id: str
    seq: int | None
    type: str
    data: Any
    occurred_at: datetime
    attempts: int
    due: bool  # its next attempt is now (by the database's clock)


# The head of an endpoint's queue: its pending numbered delivery with the smallest seq.
# Only the head is ever waiting for a retry, so its time says when the endpoint is due.
_HEAD_DUE = """
    (SELECT d.next_attempt_at FROM webhook_deliveries d
     WHERE d.endpoint_id = w.id AND d.status = 'pending' AND d.seq IS NOT NULL
     ORDER BY d.seq LIMIT 1) <= now()
"""


async def take_endpoints(
    conn: Conn, owner: str, lease_seconds: float, limit: int, busy: list[str]
) -> list[Target]:
    """Lease up to ``limit`` active endpoints whose queue head is due and whose lease is
    free or expired (skipping those another worker is leasing right now, and ``busy``:
    those this worker is still serving)."""
    rows = await conn.fetch(
        f"""
        UPDATE webhook_endpoints w
        SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
        WHERE w.id IN (
            SELECT w.id FROM webhook_endpoints w
            WHERE w.active AND (w.lease_until IS NULL OR w.lease_until < now())
              AND w.id <> ALL($4::text[]) AND {_HEAD_DUE}
            ORDER BY w.lease_until NULLS FIRST, w.id
            LIMIT $3
            FOR UPDATE SKIP LOCKED)
          AND (w.lease_until IS NULL OR w.lease_until < now())
        RETURNING w.id, w.url, w.secret
        """,
        owner,
        lease_seconds,
        limit,
        busy,
    )
    return [Target(r["id"], r["url"], r["secret"]) for r in rows]


async def release_lease(conn: Conn, endpoint_id: str, owner: str) -> None:
    await conn.execute(
        "UPDATE webhook_endpoints SET lease_owner = NULL, lease_until = NULL "
        "WHERE id = $1 AND lease_owner = $2",
        endpoint_id,
        owner,
    )


async def release_leases(conn: Conn, owner: str) -> None:
    """Every lease of this worker (it is stopping)."""
    await conn.execute(
        "UPDATE webhook_endpoints SET lease_owner = NULL, lease_until = NULL "
        "WHERE lease_owner = $1",
        owner,
    )


async def upcoming(conn: Conn, endpoint_id: str, limit: int) -> list[Due]:
    """The endpoint's next pending numbered deliveries, in seq order."""
    rows = await conn.fetch(
        "SELECT e.id, e.event_id, e.seq, e.type, e.data, e.occurred_at, "
        "       d.attempts, d.next_attempt_at <= now() AS due "
        "FROM webhook_deliveries d JOIN events e ON e.id = d.event_id "
        "WHERE d.endpoint_id = $1 AND d.status = 'pending' AND d.seq IS NOT NULL "
        "ORDER BY d.seq LIMIT $2",
        endpoint_id,
        limit,
    )
    return [
        Due(
            position=r["id"],
            event_id=r["event_id"],
            seq=r["seq"],
            type=r["type"],
            data=r["data"],
            occurred_at=r["occurred_at"],
            attempts=r["attempts"],
            due=r["due"],
        )
        for r in rows
    ]


_OUTCOME = """
    SET attempts = d.attempts + 1,
        status = $3,
        last_attempt_at = now(),
        last_status_code = $4,
        last_error = $5,
        delivered_at = CASE WHEN $3 = 'delivered' THEN now() END,
        next_attempt_at = CASE WHEN $6::float8 IS NULL THEN d.next_attempt_at
                               ELSE now() + make_interval(secs => $6) END
    WHERE d.endpoint_id = $1 AND d.event_id = $2 AND d.status = 'pending'
"""


async def record_attempt(
    conn: Conn,
    endpoint_id: str,
    position: int,
    *,
    owner: str,
    lease_seconds: float,
    status_code: int | None,
    error: str | None,
    status: str,
    retry_in: float | None,
) -> Target | None:
    """Write one attempt's outcome (``status``: delivered, pending with the next attempt
    in ``retry_in`` seconds, or failed) and renew the lease for the next attempt, in one
    statement, only while ``owner`` still holds the endpoint's lease (it changes hands
    only when another worker takes it over after it expired). The endpoint as it
    is now (its URL or secret may have changed; it may have been deactivated), or None
    when the lease is no longer ours or the endpoint was deleted: nothing was written
    then (a new holder's attempt is the one that counts)."""
    async with conn.transaction():
        # Losing this write in a database crash only means the event is sent again (same
        # webhook-id): at least once holds without waiting for the WAL flush.
        await conn.execute("SET LOCAL synchronous_commit TO off")
        row = await conn.fetchrow(_RECORD, endpoint_id, position, status, status_code, error,
                                  retry_in, owner, lease_seconds)  # fmt: skip
    if row is None:
        return None
    return Target(row["id"], row["url"], row["secret"], row["active"])


_RECORD = f"""
        WITH lease AS (
            UPDATE webhook_endpoints
            SET lease_until = now() + make_interval(secs => $8)
            WHERE id = $1 AND lease_owner = $7
            RETURNING id, url, secret, active
        ), outcome AS (
            UPDATE webhook_deliveries d {_OUTCOME} AND EXISTS (SELECT 1 FROM lease)
            RETURNING 1
        )
        SELECT id, url, secret, active FROM lease
"""


async def record_ping(
    conn: Conn,
    endpoint_id: str,
    position: int,
    *,
    status_code: int | None,
    error: str | None,
    status: str,
) -> None:
    """The outcome of a ping (no lease: it is sent by the request that made it)."""
    await conn.execute(
        f"UPDATE webhook_deliveries d {_OUTCOME}",
        endpoint_id,
        position,
        status,
        status_code,
        error,
        None,
    )


async def oldest_pending_ages(conn: Conn) -> dict[str, float]:
    """Per endpoint, the age in seconds of its oldest pending event (0 when none)."""
    rows = await conn.fetch(
        "SELECT w.id, coalesce(extract(epoch FROM now() - min(e.occurred_at)), 0) AS age "
        "FROM webhook_endpoints w "
        "LEFT JOIN webhook_deliveries d "
        "  ON d.endpoint_id = w.id AND d.status = 'pending' AND d.seq IS NOT NULL "
        "LEFT JOIN events e ON e.id = d.event_id "
        "GROUP BY w.id"
    )
    return {r["id"]: max(0.0, float(r["age"])) for r in rows}
