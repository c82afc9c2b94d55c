"""Transfers between locations (DESIGN.md §10, invariant 13).

- ``transfers``: one row per transfer, ``from`` ≠ ``to`` (both known locations), status
  in_transit | received | cancelled, moving only forward (trigger), the content's hash
  for "same id, same content".
- ``transfer_lines``: one line per SKU; ``0 ≤ received``, ``0 ≤ cancelled`` (units sent
  back to ``from`` by a cancel), ``received + cancelled ≤ quantity``; ``in_transit`` is
  ``quantity - received - cancelled``, computed by PostgreSQL.
- ``transfer_receipts``: one row per (transfer, receipt_id), so a receipt is applied
  at most once.
Conservation itself spans levels, lines and the ledger: ``verify`` checks it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from alembic import op

from stockguard.store.sqlscript import split_sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE transfers (
    id            text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    from_location text NOT NULL REFERENCES locations (code),
    to_location   text NOT NULL REFERENCES locations (code),
    status        text NOT NULL DEFAULT 'in_transit'
                  CONSTRAINT transfers_known_status
                  CHECK (status IN ('in_transit', 'received', 'cancelled')),
    note          text CHECK (length(note) <= 500),
    request_hash  text NOT NULL,
    actor         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT transfers_between_two_locations CHECK (from_location <> to_location)
);
CREATE INDEX transfers_by_created ON transfers (created_at, id);
CREATE INDEX transfers_by_status ON transfers (status, created_at, id);

CREATE TABLE transfer_lines (
    transfer_id text NOT NULL REFERENCES transfers (id),
    sku         text NOT NULL REFERENCES skus (code),
    quantity    bigint NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
    received    bigint NOT NULL DEFAULT 0,
    cancelled   bigint NOT NULL DEFAULT 0,
    in_transit  bigint GENERATED ALWAYS AS (quantity - received - cancelled) STORED,
    PRIMARY KEY (transfer_id, sku),
    CONSTRAINT transfer_lines_within_quantity CHECK (
        0 <= received AND received <= quantity
        AND 0 <= cancelled AND received + cancelled <= quantity)
);
CREATE INDEX transfer_lines_by_sku ON transfer_lines (sku) WHERE in_transit > 0;

CREATE TABLE transfer_receipts (
    transfer_id  text NOT NULL REFERENCES transfers (id),
    receipt_id   text NOT NULL CHECK (receipt_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    lines        jsonb NOT NULL,
    request_hash text NOT NULL,
    actor        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (transfer_id, receipt_id)
);

CREATE FUNCTION stockguard_transfer_moves_forward() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.from_location, NEW.to_location, NEW.request_hash)
       IS DISTINCT FROM (OLD.id, OLD.from_location, OLD.to_location, OLD.request_hash) THEN
        RAISE EXCEPTION 'transfer %: what it moves never changes', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = OLD.status
       OR (OLD.status = 'in_transit' AND NEW.status IN ('received', 'cancelled')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'transfer %: status cannot go from % to %', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END $$;

CREATE TRIGGER transfers_move_forward BEFORE UPDATE ON transfers
    FOR EACH ROW EXECUTE FUNCTION stockguard_transfer_moves_forward();
"""

DOWNGRADE = r"""
DROP TRIGGER transfers_move_forward ON transfers;
DROP FUNCTION stockguard_transfer_moves_forward();
DROP TABLE transfer_receipts;
DROP TABLE transfer_lines;
DROP TABLE transfers;
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
