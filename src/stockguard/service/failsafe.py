"""Failure logs that survive the failure (DESIGN.md §6, seed 003).

A failure log is written in a transaction of its own, so the rollback of the operation
that failed cannot erase it; if even that insert fails, the same fields go to the
structured log as an ``inventory_recovery_log`` event.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from stockguard.logging import get_logger
from stockguard.store.orders import LogEntry, insert_logs

__all__ = ["write_failure_log"]

log = get_logger(__name__)


async def write_failure_log(
    pool: asyncpg.Pool, actor: str, entries: Sequence[LogEntry]
) -> list[int] | None:
    """Insert the entries in their own transaction; returns their ids, or None when they
    could only be written to the structured log."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            return await insert_logs(conn, actor, entries)
    except Exception as exc:
        for e in entries:
            log.error(
                "inventory_recovery_log",
                order_id=e.order_id,
                actor=actor,
                reservation_ids=list(e.reservation_ids),
                action=e.action.value,
                error_reason=e.error_reason,
                context=e.context,
                insert_error=type(exc).__name__,
            )
        return None
