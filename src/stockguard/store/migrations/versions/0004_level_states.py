"""Level states: unavailable and safety stock (DESIGN.md §10, invariant 1').

- ``inventory_levels.unavailable``: units in the building but not sellable (damaged,
  quality control); ``safety_stock``: units kept back from online sale by policy.
- Invariant 1' as a CHECK: ``0 ≤ reserved``, ``0 ≤ unavailable``,
  ``reserved + unavailable ≤ on_hand``.
- The ledger gains ``unavailable_delta``: every change of ``unavailable`` is a movement.
- Ledger reasons gain those of version 2 (quality control, returns, transfers).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import op

from stockguard.store.sqlscript import split_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE inventory_levels
    ADD COLUMN unavailable bigint NOT NULL DEFAULT 0,
    ADD COLUMN safety_stock bigint NOT NULL DEFAULT 0
        CONSTRAINT level_safety_stock_range CHECK (safety_stock BETWEEN 0 AND 1000000000);
ALTER TABLE inventory_levels DROP CONSTRAINT level_reserved_within_on_hand;
ALTER TABLE inventory_levels ADD CONSTRAINT level_states_within_on_hand
    CHECK (0 <= reserved AND 0 <= unavailable AND reserved + unavailable <= on_hand);

ALTER TABLE stock_movements ADD COLUMN unavailable_delta bigint NOT NULL DEFAULT 0;
ALTER TABLE stock_movements DROP CONSTRAINT stock_movements_check;
ALTER TABLE stock_movements ADD CONSTRAINT stock_movements_moves_something
    CHECK (on_hand_delta <> 0 OR reserved_delta <> 0 OR unavailable_delta <> 0);

ALTER TABLE stock_movements DROP CONSTRAINT stock_movements_known_reason;
ALTER TABLE stock_movements ADD CONSTRAINT stock_movements_known_reason CHECK (reason IN (
    'reserve', 'release', 'expire', 'fulfil', 'received', 'correction', 'cycle_count',
    'damaged', 'shrinkage', 'restock', 'other', 'quality_control', 'returned',
    'returned_damaged', 'transfer_out', 'transfer_in', 'transfer_cancelled'
));
"""

DOWNGRADE = r"""
ALTER TABLE stock_movements DROP CONSTRAINT stock_movements_known_reason;
ALTER TABLE stock_movements ADD CONSTRAINT stock_movements_known_reason CHECK (reason IN (
    'reserve', 'release', 'expire', 'fulfil', 'received', 'correction', 'cycle_count',
    'damaged', 'shrinkage', 'restock', 'other'
));
ALTER TABLE stock_movements DROP CONSTRAINT stock_movements_moves_something;
ALTER TABLE stock_movements ADD CONSTRAINT stock_movements_check
    CHECK (on_hand_delta <> 0 OR reserved_delta <> 0);
ALTER TABLE stock_movements DROP COLUMN unavailable_delta;
ALTER TABLE inventory_levels DROP CONSTRAINT level_states_within_on_hand;
ALTER TABLE inventory_levels ADD CONSTRAINT level_reserved_within_on_hand
    CHECK (0 <= reserved AND reserved <= on_hand);
ALTER TABLE inventory_levels DROP COLUMN safety_stock, DROP COLUMN unavailable;
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
