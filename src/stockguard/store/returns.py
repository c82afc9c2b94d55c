"""Returns after shipment as stored: ``order_returns`` and ``order_return_lines``
(migration 0005), and the SQL that reads them with their order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stockguard.store.db import Conn

__all__ = [
    "RETURNS_LATERAL",
    "ReturnLineRecord",
    "ReturnRecord",
    "find_return",
    "insert_return",
    "returns_from_json",
]


@dataclass(frozen=True, slots=True)
class ReturnLineRecord:
    sku: str
    quantity: int
    disposition: str
    location: str


@dataclass(frozen=True, slots=True)
class ReturnRecord:
    return_id: str
    order_id: str
    note: str | None
    created_at: datetime
    request_hash: str = ""
    lines: list[ReturnLineRecord] = field(default_factory=list)


# An order's returns as one jsonb array, for a LATERAL join over ``orders o``: read in the
# order's own statement, so status, reservations and returns are one snapshot (invariant 16).
RETURNS_LATERAL = """
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object(
               'return_id', x.return_id, 'note', x.note, 'hash', x.request_hash,
               'created_at', to_char(x.created_at AT TIME ZONE 'UTC',
                                     'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
               'lines', (SELECT jsonb_agg(jsonb_build_object(
                                   'sku', y.sku, 'quantity', y.quantity,
                                   'disposition', y.disposition, 'location', y.location)
                                 ORDER BY y.line_no)
                         FROM order_return_lines y WHERE y.return_id = x.return_id))
               ORDER BY x.created_at, x.return_id) AS returns
    FROM order_returns x WHERE x.order_id = o.id
) rt ON true
"""


def returns_from_json(order_id: str, found: list[dict[str, Any]] | None) -> list[ReturnRecord]:
    """The records of :data:`RETURNS_LATERAL`'s ``returns`` column (None: no returns)."""
    return [
        ReturnRecord(
            return_id=r["return_id"],
            order_id=order_id,
            note=r["note"],
            created_at=datetime.fromisoformat(r["created_at"]),
            request_hash=r["hash"],
            lines=[
                ReturnLineRecord(ln["sku"], ln["quantity"], ln["disposition"], ln["location"])
                for ln in r["lines"] or []
            ],
        )
        for r in found or []
    ]


async def find_return(conn: Conn, return_id: str) -> tuple[str, str] | None:
    """(order id, request hash) of a return already recorded, or None."""
    row = await conn.fetchrow(
        "SELECT order_id, request_hash FROM order_returns WHERE return_id = $1", return_id
    )
    return None if row is None else (row["order_id"], row["request_hash"])


async def insert_return(
    conn: Conn,
    return_id: str,
    order_id: str,
    request_hash: str,
    note: str | None,
    actor: str,
    lines: Sequence[ReturnLineRecord],
) -> datetime:
    """Record the return and its lines (the database refuses more returned than fulfilled);
    returns its ``created_at``."""
    created_at: datetime = await conn.fetchval(
        "INSERT INTO order_returns (return_id, order_id, request_hash, note, actor) "
        "VALUES ($1, $2, $3, $4, $5) RETURNING created_at",
        return_id,
        order_id,
        request_hash,
        note,
        actor,
    )
    await conn.execute(
        """
        INSERT INTO order_return_lines (return_id, line_no, order_id, sku, location, quantity,
                                        disposition)
        SELECT $1, d.n, $2, d.sku, d.location, d.quantity, d.disposition
        FROM unnest($3::text[], $4::text[], $5::int[], $6::text[])
             WITH ORDINALITY AS d(sku, location, quantity, disposition, n)
        """,
        return_id,
        order_id,
        [ln.sku for ln in lines],
        [ln.location for ln in lines],
        [ln.quantity for ln in lines],
        [ln.disposition for ln in lines],
    )
    return created_at
