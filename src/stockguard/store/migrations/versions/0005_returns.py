"""Returns after shipment (issue 8, DESIGN.md §10 invariant 12), held by PostgreSQL:

- a return id is a primary key: one return per id, ever (applied at most once);
- its lines belong to it and to its order (composite foreign key), with CHECKs on
  quantity and disposition;
- a constraint trigger refuses any (order, sku) whose returned units
  exceed its fulfilled reservations; it takes the order's row lock first, so two
  transactions can never each see only their own return;
- returns and their lines are append-only (no UPDATE, DELETE or TRUNCATE).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from alembic import op

from stockguard.store.sqlscript import split_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE order_returns (
    return_id    text PRIMARY KEY CHECK (return_id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    order_id     text NOT NULL REFERENCES orders (id),
    request_hash text NOT NULL,
    note         text CHECK (length(note) <= 1000),
    actor        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT order_returns_of_order UNIQUE (return_id, order_id)
);
CREATE INDEX order_returns_by_order ON order_returns (order_id, created_at);

CREATE TABLE order_return_lines (
    return_id   text NOT NULL,
    line_no     integer NOT NULL CHECK (line_no >= 1),
    order_id    text NOT NULL,
    sku         text NOT NULL REFERENCES skus (code),
    location    text NOT NULL REFERENCES locations (code),
    quantity    integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
    disposition text NOT NULL CHECK (disposition IN ('restock', 'damaged')),
    PRIMARY KEY (return_id, line_no),
    FOREIGN KEY (return_id, order_id) REFERENCES order_returns (return_id, order_id)
);
CREATE INDEX order_return_lines_by_order ON order_return_lines (order_id, sku);

CREATE FUNCTION stockguard_returns_within_fulfilled() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    returned bigint;
    fulfilled bigint;
BEGIN
    -- The order's row lock serialises every return of one order; each statement below
    -- then sees what committed before the lock was granted.
    PERFORM 1 FROM orders WHERE id = NEW.order_id FOR UPDATE;
    SELECT coalesce(sum(quantity), 0) INTO returned FROM order_return_lines
        WHERE order_id = NEW.order_id AND sku = NEW.sku;
    SELECT coalesce(sum(quantity), 0) INTO fulfilled FROM reservations
        WHERE order_id = NEW.order_id AND sku = NEW.sku AND status = 'fulfilled';
    IF returned > fulfilled THEN
        RAISE EXCEPTION 'order %: % units of % returned, only % fulfilled',
            NEW.order_id, returned, NEW.sku, fulfilled
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER order_returns_within_fulfilled
    AFTER INSERT ON order_return_lines
    FOR EACH ROW EXECUTE FUNCTION stockguard_returns_within_fulfilled();

CREATE TRIGGER order_returns_append_only BEFORE UPDATE OR DELETE ON order_returns
    FOR EACH ROW EXECUTE FUNCTION stockguard_forbid_change();
CREATE TRIGGER order_returns_no_truncate BEFORE TRUNCATE ON order_returns
    FOR EACH STATEMENT EXECUTE FUNCTION stockguard_forbid_change();
CREATE TRIGGER order_return_lines_append_only BEFORE UPDATE OR DELETE ON order_return_lines
    FOR EACH ROW EXECUTE FUNCTION stockguard_forbid_change();
CREATE TRIGGER order_return_lines_no_truncate BEFORE TRUNCATE ON order_return_lines
    FOR EACH STATEMENT EXECUTE FUNCTION stockguard_forbid_change();
"""

DOWNGRADE = r"""
DROP TABLE order_return_lines;
DROP TABLE order_returns;
DROP FUNCTION stockguard_returns_within_fulfilled();
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
