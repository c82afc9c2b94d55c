"""Retention of the events table (``STOCKGUARD_EVENT_RETENTION_DAYS``): events past it
whose deliveries are done are removed in small batches by the housekeeping loop."""

from __future__ import annotations

from stockguard.store.db import Conn

__all__ = ["prune_events"]


async def prune_events(conn: Conn, older_than_seconds: float, batch: int) -> tuple[int, int]:
    """One batch, in one short transaction: delete up to ``batch`` numbered events older
    than ``older_than_seconds`` that no delivery still waits for (their deliveries go with
    them), and raise ``event_counter.pruned_through`` to the highest seq removed (never
    lowered), so the feed answers 410 to a reader that would miss them. Rows another
    transaction holds are skipped, not waited for. Returns (events removed, pings removed)."""
    async with conn.transaction():
        seqs = await conn.fetch(
            """
            WITH doomed AS (
                SELECT e.id FROM events e
                WHERE e.seq IS NOT NULL
                  AND e.occurred_at < now() - make_interval(secs => $1)
                  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                  WHERE d.event_id = e.id AND d.status = 'pending')
                ORDER BY e.occurred_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            )
            DELETE FROM events e USING doomed WHERE e.id = doomed.id RETURNING e.seq
            """,
            older_than_seconds,
            batch,
        )
        if seqs:
            await conn.execute(
                "UPDATE event_counter SET pruned_through = greatest(pruned_through, $1)",
                max(int(r["seq"]) for r in seqs),
            )
        # Pings are never numbered nor in the feed: they go when they are as old.
        pings = await conn.fetchval(
            """
            WITH doomed AS (
                SELECT id FROM events
                WHERE type = 'ping' AND occurred_at < now() - make_interval(secs => $1)
                ORDER BY occurred_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            ), gone AS (
                DELETE FROM events e USING doomed WHERE e.id = doomed.id RETURNING 1
            )
            SELECT count(*) FROM gone
            """,
            older_than_seconds,
            batch,
        )
    return len(seqs), int(pings)
