"""The transactional outbox (DESIGN.md §10, invariant 14) and the feed's reads.

A use case says what happened to orders and transfers (:meth:`Outbox.order`,
:meth:`Outbox.add`); the stock events need no call at all: :class:`LevelWriter` knows
which SKUs the transaction touched and what their totals were when it first locked them.
:meth:`Outbox.flush` runs last in the transaction (``uow.run``), so an event exists if
and only if its change commits, and writes everything in at most two statements
whatever the batch size: a read of the orders it must render (none for placements,
which pass the order they built), and one insert of every event, the stock events
computed in it from the totals before and after.

Commit order: events are numbered after commit by ``stockguard_sequence_events`` (see
migration 0007) and the feed reads only numbered events, so ``seq`` is the order in
which events became visible and a reader never misses one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from stockguard.domain.delivery import EVENT_TYPES as CONTRACT_EVENT_TYPES
from stockguard.render import order_json, ts
from stockguard.store.db import Conn
from stockguard.store.levels import AVAILABLE_SQL, STAMP_SQL, LevelWriter, stamp_cte
from stockguard.store.orders import OrderRecord, find_orders

__all__ = [
    "EVENT_TYPES",
    "EventRecord",
    "Outbox",
    "event_json",
    "horizon",
    "read_feed",
    "sequence_events",
]

# Every type the contract names (domain.delivery.EVENT_TYPES), and ping.
EVENT_TYPES: tuple[str, ...] = (*sorted(CONTRACT_EVENT_TYPES), "ping")

# The whole flush in one statement: the events the use case named (orders, transfers), in
# the order it named them, then per touched SKU its stock.changed and the threshold edges
# it crossed, from its totals now (over active locations, as Redis and the availability
# reads count them) against the totals it had when this transaction first locked it.
_FLUSH_WITH = f"""
WITH given AS (
    SELECT g.n, g.type, g.data
    FROM unnest($3::text[], $4::jsonb[]) WITH ORDINALITY AS g(type, data, n)
), before AS (
    SELECT b.sku, b.available FROM unnest($1::text[], $2::bigint[]) AS b(sku, available)
), now AS (
    SELECT s.code AS sku, s.low_stock_threshold AS threshold,
           COALESCE(sum(l.on_hand) FILTER (WHERE loc.active), 0) AS on_hand,
           COALESCE(sum(l.reserved) FILTER (WHERE loc.active), 0) AS reserved,
           COALESCE(sum(l.unavailable) FILTER (WHERE loc.active), 0) AS unavailable,
           COALESCE(sum(l.safety_stock) FILTER (WHERE loc.active), 0) AS safety_stock,
           COALESCE(sum({AVAILABLE_SQL}) FILTER (WHERE loc.active), 0) AS available,
           COALESCE(jsonb_object_agg(l.location, {AVAILABLE_SQL})
                    FILTER (WHERE loc.active), '{{}}'::jsonb) AS locations
    FROM skus s
    LEFT JOIN inventory_levels l ON l.sku = s.code
    LEFT JOIN locations loc ON loc.code = l.location
    WHERE s.code = ANY($1::text[])
    GROUP BY s.code
)"""
_INSERT = """
INSERT INTO events (type, data)
SELECT e.type, e.data FROM (
    SELECT 0 AS part, given.n AS k, '' AS sku, 0 AS edge, given.type, given.data FROM given
    UNION ALL
    SELECT 1, 0, now.sku, t.edge, t.type, t.data
    FROM now JOIN before ON before.sku = now.sku
    CROSS JOIN LATERAL (VALUES
        (1, 'stock.changed', true, jsonb_build_object(
            'sku', now.sku, 'on_hand', now.on_hand, 'reserved', now.reserved,
            'unavailable', now.unavailable, 'safety_stock', now.safety_stock,
            'available', now.available, 'locations', now.locations)),
        (2, 'stock.out_of_stock', before.available > 0 AND now.available = 0,
            jsonb_build_object('sku', now.sku, 'available', 0)),
        (3, 'stock.back_in_stock', before.available = 0 AND now.available > 0,
            jsonb_build_object('sku', now.sku, 'available', now.available)),
        (4, 'stock.low', now.threshold IS NOT NULL AND before.available >= now.threshold
                         AND now.available < now.threshold,
            jsonb_build_object('sku', now.sku, 'available', now.available,
                               'threshold', now.threshold))
    ) AS t(edge, type, fire, data)
    WHERE t.fire
) AS e
ORDER BY e.part, e.k, e.sku, e.edge
RETURNING type
"""
_FLUSH_SQL = _FLUSH_WITH + _INSERT
# The same, and the cache stamp of the touched SKUs (store.levels.stamp_cte) in the same
# statement: one round trip fewer while the levels are locked. Both read the snapshot
# the use case's writes left; the rows are the events written (``type``), then the
# stamped levels (``type`` null).
_FLUSH_AND_STAMP_SQL = f"""{_FLUSH_WITH},{stamp_cte("$1")},
written AS ({_INSERT})
SELECT type, NULL::text AS sku, NULL::text AS location, NULL::bigint AS available,
       NULL::bigint AS version, NULL::boolean AS active
FROM written
UNION ALL
SELECT NULL, sku, location, available, version, active FROM stamped
"""


@dataclass
class Outbox:
    """The events of one transaction, written by :meth:`flush` just before COMMIT."""

    enabled: bool = True
    _orders: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    _other: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _records: dict[str, OrderRecord] = field(default_factory=dict)
    written: Counter[str] = field(default_factory=Counter)

    def order(
        self,
        order_id: str,
        event_type: str,
        reason: str | None = None,
        *,
        record: OrderRecord | None = None,
    ) -> None:
        """``order_id`` changed that way; the event carries the order as it is at the end
        of the transaction: ``record`` when the caller has it whole (a placement builds
        it from what it wrote), else read back in :meth:`flush`."""
        self._orders.setdefault(order_id, []).append((event_type, reason))
        if record is not None:
            self._records[order_id] = record
        else:
            self._records.pop(order_id, None)

    def known(self, record: OrderRecord) -> None:
        """``record`` is the order as the transaction leaves it (read after its last
        write): the events of it carry it instead of reading it back in :meth:`flush`."""
        if record.id in self._orders:
            self._records[record.id] = record

    def add(self, event_type: str, data: dict[str, Any]) -> None:
        self._other.append((event_type, data))

    async def flush(
        self, conn: Conn, levels: LevelWriter, *, stamp: bool = False
    ) -> list[asyncpg.Record]:
        """Write the events; with ``stamp``, also give every level of the touched SKUs a
        new cache version in the same statement and return those levels
        (``store.levels.stamp_cte``; call it so only while holding their locks)."""
        if not self.enabled:
            if stamp and levels.touched:
                return await conn.fetch(STAMP_SQL, sorted(levels.touched))
            return []
        types: list[str] = []
        payloads: list[dict[str, Any]] = []
        if self._orders:
            found = dict(self._records)
            unread = [oid for oid in self._orders if oid not in found]
            if unread:
                for o in await find_orders(conn, "WHERE o.id = ANY($1::text[])", unread):
                    found[o.id] = o
            for order_id, happened in self._orders.items():
                rendered = order_json(found[order_id])
                for event_type, reason in happened:
                    data: dict[str, Any] = {"order": rendered}
                    if reason is not None:
                        data["reason"] = reason
                    types.append(event_type)
                    payloads.append(data)
        for event_type, data in self._other:
            types.append(event_type)
            payloads.append(data)
        touched = sorted(levels.touched)
        if not types and not touched:
            return []
        before = [levels.before.get(sku) for sku in touched]
        sql = _FLUSH_AND_STAMP_SQL if stamp and touched else _FLUSH_SQL
        rows = await conn.fetch(sql, touched, before, types, payloads)
        self.written.update(r["type"] for r in rows if r["type"] is not None)
        return [r for r in rows if r["type"] is None]


async def sequence_events(conn: Conn | asyncpg.Pool, max_rows: int = 1000) -> int:
    """Number the events whose transactions can no longer be overtaken (and make their
    webhook deliveries); 0 when there is nothing, or another process is doing it."""
    pending = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM events WHERE seq IS NULL AND type <> 'ping')"
    )
    if not pending:
        return 0
    return int(await conn.fetchval("SELECT stockguard_sequence_events($1)", max_rows))


@dataclass(frozen=True, slots=True)
class EventRecord:
    event_id: str
    seq: int
    type: str
    occurred_at: datetime
    data: dict[str, Any]


def event_json(e: EventRecord) -> dict[str, Any]:
    """An event as the feed shows it and a webhook delivers it."""
    return {
        "id": e.event_id,
        "seq": e.seq,
        "type": e.type,
        "occurred_at": ts(e.occurred_at),
        "data": e.data,
    }


async def horizon(conn: Conn | asyncpg.Pool) -> tuple[int, int]:
    """(last seq given, last seq removed by retention)."""
    row = await conn.fetchrow("SELECT last_seq, pruned_through FROM event_counter")
    assert row is not None
    return int(row["last_seq"]), int(row["pruned_through"])


async def read_feed(
    conn: Conn | asyncpg.Pool, after: int, limit: int, types: Sequence[str] = ()
) -> list[EventRecord]:
    """Numbered events after ``after`` in ``seq`` order; ``types`` are exact types or
    ``prefix.*`` patterns (none: all)."""
    rows = await conn.fetch(
        """
        SELECT event_id, seq, type, occurred_at, data FROM events
        WHERE seq > $1 AND (cardinality($3::text[]) = 0 OR stockguard_event_matches($3, type))
        ORDER BY seq
        LIMIT $2
        """,
        after,
        limit,
        list(types),
    )
    return [
        EventRecord(r["event_id"], r["seq"], r["type"], r["occurred_at"], r["data"]) for r in rows
    ]
