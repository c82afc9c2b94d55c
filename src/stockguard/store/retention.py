"""Retention of the events table (``STOCKGUARD_EVENT_RETENTION_DAYS``): the housekeeping
loop removes the oldest numbered events, a batch at a time.

What goes is always a **prefix of the feed**: events in ``seq`` order from the last one
removed, up to (not including) the first that is younger than the retention or that an
endpoint still has a pending delivery for. So ``event_counter.pruned_through`` means
"every event with a seq up to here is gone, every later one is kept": a reader whose
``after`` is at least that misses nothing (the feed answers 410 below it), and each SKU's
latest ``stock.changed`` is never removed before an older one."""

from __future__ import annotations

from stockguard.store.db import Conn

__all__ = ["prune_events"]


async def prune_events(conn: Conn, older_than_seconds: float, batch: int) -> tuple[int, int]:
    """One batch, in one short transaction: remove up to ``batch`` events of the prefix
    described above (their deliveries go with them) and raise ``pruned_through`` to the
    last seq removed; then up to ``batch`` pings older than the retention. The counter
    row is held meanwhile, so two housekeepers take turns (a sequencer pass skips its
    turn). Returns (events removed, pings removed)."""
    async with conn.transaction():
        through = await conn.fetchval("SELECT pruned_through FROM event_counter FOR UPDATE")
        candidates = await conn.fetch(
            """
            SELECT id, seq, occurred_at < now() - make_interval(secs => $3) AS old
            FROM events
            WHERE seq > $1
              AND seq < coalesce((SELECT min(seq) FROM webhook_deliveries
                                  WHERE status = 'pending' AND seq IS NOT NULL),
                                 9223372036854775807)
            ORDER BY seq
            LIMIT $2
            """,
            through,
            batch,
            older_than_seconds,
        )
        doomed: list[int] = []
        last = int(through)
        for row in candidates:
            if not row["old"]:
                break
            doomed.append(row["id"])
            last = row["seq"]
        if doomed:
            await conn.execute("DELETE FROM events WHERE id = ANY($1::bigint[])", doomed)
            await conn.execute("UPDATE event_counter SET pruned_through = $1", last)
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
    return len(doomed), int(pings)
