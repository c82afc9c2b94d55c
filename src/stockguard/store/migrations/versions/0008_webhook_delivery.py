"""Webhook delivery's upkeep: an index for removing old pings (API.md "Outgoing events").

Pings are never numbered, so neither ``events_unsequenced`` nor ``events_by_occurred``
finds them; retention would otherwise scan the whole events table for them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX events_pings_by_occurred ON events (occurred_at) WHERE type = 'ping'")


def downgrade() -> None:
    op.execute("DROP INDEX events_pings_by_occurred")
