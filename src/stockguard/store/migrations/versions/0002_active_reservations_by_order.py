"""Index the reservations an order still holds, for restore/commit/fulfil by order.

Without it, a planner with stale statistics may combine the order index with the
per-level partial index and scan every active reservation (seen at 5 ms instead of
0.17 ms per cancel in the benchmark).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX reservations_order_active_idx ON reservations (order_id) "
        "WHERE status IN ('reserved', 'committed')"
    )


def downgrade() -> None:
    op.execute("DROP INDEX reservations_order_active_idx")
