"""Checks DESIGN.md §3's invariants over the whole database (``stockguard verify``)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stockguard.store.db import Conn
from stockguard.store.levels import AVAILABLE_SQL

__all__ = ["CHECKS", "Violation", "verify"]


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: int
    check: str
    detail: dict[str, Any]


# (invariant, name, query returning one row per violation)
CHECKS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "level_states_within_on_hand",
        "SELECT sku, location, on_hand, reserved, unavailable FROM inventory_levels "
        "WHERE NOT (0 <= reserved AND 0 <= unavailable AND reserved + unavailable <= on_hand)",
    ),
    (
        2,
        "reserved_equals_active_reservations",
        """
        SELECT l.sku, l.location, l.reserved, coalesce(r.held, 0) AS reservations
        FROM inventory_levels l
        LEFT JOIN (SELECT sku, location, sum(quantity) AS held FROM reservations
                   WHERE status IN ('reserved', 'committed') GROUP BY sku, location) r
          ON r.sku = l.sku AND r.location = l.location
        WHERE l.reserved <> coalesce(r.held, 0)
        """,
    ),
    (
        3,
        "ledger_sums_equal_levels",
        """
        SELECT coalesce(l.sku, m.sku) AS sku, coalesce(l.location, m.location) AS location,
               l.on_hand, l.reserved, l.unavailable, m.on_hand AS ledger_on_hand,
               m.reserved AS ledger_reserved, m.unavailable AS ledger_unavailable
        FROM inventory_levels l
        FULL JOIN (SELECT sku, location, sum(on_hand_delta) AS on_hand,
                          sum(reserved_delta) AS reserved,
                          sum(unavailable_delta) AS unavailable
                   FROM stock_movements GROUP BY sku, location) m
          ON m.sku = l.sku AND m.location = l.location
        WHERE l.on_hand IS DISTINCT FROM coalesce(m.on_hand, 0)
           OR l.reserved IS DISTINCT FROM coalesce(m.reserved, 0)
           OR l.unavailable IS DISTINCT FROM coalesce(m.unavailable, 0)
        """,
    ),
    (
        3,
        "ledger_is_append_only",
        """
        SELECT t.tgname FROM (VALUES ('stock_movements_append_only'),
                                     ('stock_movements_no_truncate'),
                                     ('order_inventory_logs_append_only')) AS t(tgname)
        WHERE NOT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgname = t.tgname
                          AND g.tgenabled <> 'D')
        """,
    ),
    (
        4,
        "restored_at_most_once",
        """
        SELECT r.id AS reservation_id, r.order_id, r.status, r.quantity,
               coalesce(m.reserved, 0) AS ledger_reserved
        FROM reservations r
        LEFT JOIN (SELECT reservation_id, sum(reserved_delta) AS reserved FROM stock_movements
                   WHERE reservation_id IS NOT NULL GROUP BY reservation_id) m
          ON m.reservation_id = r.id
        WHERE coalesce(m.reserved, 0) <> CASE WHEN r.status IN ('reserved', 'committed')
                                              THEN r.quantity ELSE 0 END
        """,
    ),
    (
        5,
        "lines_all_or_nothing",
        """
        SELECT o.id AS order_id, l.line_no, l.quantity, coalesce(h.held, 0) AS held
        FROM orders o JOIN order_lines l ON l.order_id = o.id
        LEFT JOIN (SELECT order_id, line_no, sum(quantity) AS held FROM reservations
                   WHERE status IN ('reserved', 'committed', 'fulfilled')
                   GROUP BY order_id, line_no) h
          ON h.order_id = l.order_id AND h.line_no = l.line_no
        WHERE o.status = 'pending' AND coalesce(h.held, 0) NOT IN (0, l.quantity)
        """,
    ),
    (
        7,
        "committed_only_with_payment_proof",
        """
        SELECT DISTINCT o.id AS order_id, o.status FROM orders o
        JOIN reservations r ON r.order_id = o.id
        WHERE r.status IN ('committed', 'fulfilled')
          AND (o.payment_provider IS NULL OR o.payment_id IS NULL)
        """,
    ),
    (
        9,
        "deleted_orders_hold_nothing_and_keep_their_trail",
        """
        SELECT o.id AS order_id FROM orders o
        WHERE o.deleted_at IS NOT NULL AND (
            EXISTS (SELECT 1 FROM reservations r WHERE r.order_id = o.id
                    AND r.status IN ('reserved', 'committed'))
            OR EXISTS (SELECT 1 FROM reservations r WHERE r.order_id = o.id
                       AND NOT EXISTS (SELECT 1 FROM stock_movements m
                                       WHERE m.reservation_id = r.id))
            OR NOT EXISTS (SELECT 1 FROM order_lines l WHERE l.order_id = o.id))
        """,
    ),
    (
        12,
        "returns_within_fulfilled",
        """
        SELECT l.order_id, l.sku, sum(l.quantity) AS returned, coalesce(f.units, 0) AS fulfilled
        FROM order_return_lines l
        LEFT JOIN (SELECT order_id, sku, sum(quantity) AS units FROM reservations
                   WHERE status = 'fulfilled' GROUP BY order_id, sku) f
          ON f.order_id = l.order_id AND f.sku = l.sku
        GROUP BY l.order_id, l.sku, f.units
        HAVING sum(l.quantity) > coalesce(f.units, 0)
        """,
    ),
    (
        12,
        "returns_applied_once_in_the_ledger",
        """
        SELECT r.return_id, r.order_id, coalesce(l.units, 0) AS returned,
               coalesce(m.units, 0) AS ledger
        FROM order_returns r
        LEFT JOIN (SELECT return_id, sum(quantity) AS units FROM order_return_lines
                   GROUP BY return_id) l ON l.return_id = r.return_id
        LEFT JOIN (SELECT reference, order_id, sum(on_hand_delta) AS units FROM stock_movements
                   WHERE reason IN ('returned', 'returned_damaged')
                   GROUP BY reference, order_id) m
          ON m.reference = r.return_id AND m.order_id = r.order_id
        WHERE coalesce(l.units, 0) <> coalesce(m.units, 0)
        """,
    ),
    (
        9,
        "orders_are_soft_deleted_only",
        """
        SELECT 'orders_soft_delete_only' AS trigger WHERE NOT EXISTS (
            SELECT 1 FROM pg_trigger WHERE tgname = 'orders_soft_delete_only'
            AND tgenabled <> 'D')
        """,
    ),
    (
        13,
        "transfer_ledger_matches_lines",
        # Per transfer and SKU: what left `from`, arrived at `to` and went back to `from`
        # in the ledger is the line's quantity, received and cancelled (so in_transit is
        # what left minus what arrived or went back); any other transfer row is stray.
        """
        SELECT coalesce(l.transfer_id, m.reference) AS transfer_id,
               coalesce(l.sku, m.sku) AS sku, l.quantity, l.received, l.cancelled,
               l.in_transit, m.sent, m.arrived, m.returned, m.stray
        FROM transfer_lines l
        FULL JOIN (
            SELECT s.reference, s.sku,
                   -coalesce(sum(s.on_hand_delta) FILTER (WHERE s.reason = 'transfer_out'
                             AND s.location = t.from_location), 0) AS sent,
                   coalesce(sum(s.on_hand_delta) FILTER (WHERE s.reason = 'transfer_in'
                            AND s.location = t.to_location), 0) AS arrived,
                   coalesce(sum(s.on_hand_delta) FILTER (WHERE s.reason = 'transfer_cancelled'
                            AND s.location = t.from_location), 0) AS returned,
                   count(*) FILTER (WHERE t.id IS NULL OR s.reserved_delta <> 0
                       OR s.unavailable_delta <> 0
                       OR s.location <> CASE WHEN s.reason = 'transfer_in' THEN t.to_location
                                             ELSE t.from_location END) AS stray
            FROM stock_movements s LEFT JOIN transfers t ON t.id = s.reference
            WHERE s.reason IN ('transfer_out', 'transfer_in', 'transfer_cancelled')
            GROUP BY s.reference, s.sku) m
          ON m.reference = l.transfer_id AND m.sku = l.sku
        WHERE l.transfer_id IS NULL OR m.reference IS NULL OR m.stray > 0
           OR m.sent <> l.quantity OR m.arrived <> l.received OR m.returned <> l.cancelled
        """,
    ),
    (
        13,
        "units_conserved_with_transit",
        # Σ on_hand + Σ in transit per SKU equals the sum of every movement that is not
        # a transfer: transfers only move units between a level and the road.
        """
        SELECT s.code AS sku, coalesce(h.on_hand, 0) AS on_hand,
               coalesce(r.in_transit, 0) AS in_transit, coalesce(m.outside, 0) AS ledger
        FROM skus s
        LEFT JOIN (SELECT sku, sum(on_hand) AS on_hand FROM inventory_levels GROUP BY sku) h
          ON h.sku = s.code
        LEFT JOIN (SELECT sku, sum(in_transit) AS in_transit FROM transfer_lines
                   GROUP BY sku) r ON r.sku = s.code
        LEFT JOIN (SELECT sku, sum(on_hand_delta) AS outside FROM stock_movements
                   WHERE reason NOT IN ('transfer_out', 'transfer_in', 'transfer_cancelled')
                   GROUP BY sku) m ON m.sku = s.code
        WHERE coalesce(h.on_hand, 0) + coalesce(r.in_transit, 0) <> coalesce(m.outside, 0)
        """,
    ),
    (
        13,
        "transfer_status_matches_lines",
        """
        SELECT t.id AS transfer_id, t.status, sum(l.in_transit) AS in_transit,
               sum(l.cancelled) AS cancelled
        FROM transfers t JOIN transfer_lines l ON l.transfer_id = t.id
        GROUP BY t.id, t.status
        HAVING (t.status = 'in_transit' AND sum(l.in_transit) = 0)
            OR (t.status <> 'in_transit' AND sum(l.in_transit) <> 0)
            OR (t.status = 'received' AND sum(l.cancelled) <> 0)
        """,
    ),
    (
        14,
        "events_numbered_by_the_sequencer",
        # Every seq was given by the sequencer (none beyond its counter), and pings, which
        # only the test route sends, are never in the feed.
        """
        SELECT e.event_id, e.type, e.seq, c.last_seq
        FROM events e CROSS JOIN event_counter c
        WHERE e.seq > c.last_seq OR (e.type = 'ping' AND e.seq IS NOT NULL)
        """,
    ),
    (
        14,
        "stock_changed_tells_the_level",
        # Each SKU's last numbered stock.changed is what its levels hold, unless a newer
        # event of the SKU still waits for its number (seq order is commit order per SKU).
        f"""
        SELECT t.sku, t.told, l.on_hand, l.reserved, l.unavailable
        FROM (SELECT DISTINCT ON (data->>'sku') data->>'sku' AS sku, data AS told
              FROM events WHERE type = 'stock.changed' AND seq IS NOT NULL
              ORDER BY data->>'sku', seq DESC) t
        JOIN (SELECT l.sku,
                     COALESCE(sum(l.on_hand) FILTER (WHERE loc.active), 0) AS on_hand,
                     COALESCE(sum(l.reserved) FILTER (WHERE loc.active), 0) AS reserved,
                     COALESCE(sum(l.unavailable) FILTER (WHERE loc.active), 0) AS unavailable,
                     COALESCE(sum({AVAILABLE_SQL}) FILTER (WHERE loc.active), 0) AS available
              FROM inventory_levels l JOIN locations loc ON loc.code = l.location
              GROUP BY l.sku) l ON l.sku = t.sku
        WHERE ((t.told->>'on_hand')::bigint, (t.told->>'reserved')::bigint,
               (t.told->>'unavailable')::bigint, (t.told->>'available')::bigint)
              <> (l.on_hand, l.reserved, l.unavailable, l.available)
          AND NOT EXISTS (SELECT 1 FROM events p
                          WHERE p.seq IS NULL AND p.type = 'stock.changed'
                            AND p.data->>'sku' = t.sku)
        """,
    ),
)


async def verify(conn: Conn, limit: int = 100) -> list[Violation]:
    """Every violation found (at most ``limit`` per check), in one snapshot."""
    out: list[Violation] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for invariant, name, sql in CHECKS:
            for row in await conn.fetch(f"{sql} LIMIT {int(limit)}"):
                out.append(Violation(invariant, name, _jsonable(dict(row.items()))))
    return out


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, Decimal) and v == v.to_integral_value():
            v = int(v)  # sum() of bigint is numeric in PostgreSQL
        out[k] = v if isinstance(v, (int, str, bool, type(None))) else str(v)
    return out
