"""PostgreSQL holds the order and reservation invariants (DESIGN.md §10: 7, 10, 11).

- A reservation's status only moves forward, and what it holds never changes
  (trigger): "restore at most once" holds even against a buggy caller.
- Orders in paid, processing, shipped, delivered or needs_review carry payment proof;
  a deleted order is cancelled (CHECKs).
- One (provider, payment id) pays one order (unique index).
- A reservation belongs to a line of its order and holds that line's SKU (foreign key).
- Ledger reasons are a known set (CHECK).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

from stockguard.store.sqlscript import split_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION stockguard_reservation_moves_forward() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.order_id, NEW.line_no, NEW.sku, NEW.location, NEW.quantity)
       IS DISTINCT FROM (OLD.order_id, OLD.line_no, OLD.sku, OLD.location, OLD.quantity) THEN
        RAISE EXCEPTION 'reservation %: what it holds never changes', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = OLD.status
       OR (OLD.status = 'reserved' AND NEW.status IN ('committed', 'released', 'expired'))
       OR (OLD.status = 'committed' AND NEW.status IN ('fulfilled', 'released')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'reservation %: status cannot go from % to %', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END $$;

CREATE TRIGGER reservations_move_forward BEFORE UPDATE ON reservations
    FOR EACH ROW EXECUTE FUNCTION stockguard_reservation_moves_forward();
CREATE TRIGGER reservations_never_deleted BEFORE DELETE ON reservations
    FOR EACH ROW EXECUTE FUNCTION stockguard_forbid_change();
CREATE TRIGGER reservations_no_truncate BEFORE TRUNCATE ON reservations
    FOR EACH STATEMENT EXECUTE FUNCTION stockguard_forbid_change();

ALTER TABLE orders ADD CONSTRAINT paid_orders_carry_payment_proof CHECK (
    status NOT IN ('paid', 'processing', 'shipped', 'delivered', 'needs_review')
    OR (payment_provider IS NOT NULL AND payment_id IS NOT NULL)
);
ALTER TABLE orders ADD CONSTRAINT deleted_orders_are_cancelled CHECK (
    deleted_at IS NULL OR status = 'cancelled'
);
CREATE UNIQUE INDEX orders_one_order_per_payment ON orders (payment_provider, payment_id)
    WHERE payment_id IS NOT NULL;

ALTER TABLE order_lines ADD CONSTRAINT order_lines_line_sku UNIQUE (order_id, line_no, sku);
ALTER TABLE reservations ADD CONSTRAINT reservations_of_an_order_line
    FOREIGN KEY (order_id, line_no, sku) REFERENCES order_lines (order_id, line_no, sku);

ALTER TABLE stock_movements ADD CONSTRAINT stock_movements_known_reason CHECK (reason IN (
    'reserve', 'release', 'expire', 'fulfil', 'received', 'correction', 'cycle_count',
    'damaged', 'shrinkage', 'restock', 'other'
));
"""

DOWNGRADE = r"""
ALTER TABLE stock_movements DROP CONSTRAINT stock_movements_known_reason;
ALTER TABLE reservations DROP CONSTRAINT reservations_of_an_order_line;
ALTER TABLE order_lines DROP CONSTRAINT order_lines_line_sku;
DROP INDEX orders_one_order_per_payment;
ALTER TABLE orders DROP CONSTRAINT deleted_orders_are_cancelled;
ALTER TABLE orders DROP CONSTRAINT paid_orders_carry_payment_proof;
DROP TRIGGER reservations_no_truncate ON reservations;
DROP TRIGGER reservations_never_deleted ON reservations;
DROP TRIGGER reservations_move_forward ON reservations;
DROP FUNCTION stockguard_reservation_moves_forward();
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
