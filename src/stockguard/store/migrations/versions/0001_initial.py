"""Initial schema: catalogue, levels, orders, reservations, ledger, logs, keys, idempotency.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from alembic import op

from stockguard.store.sqlscript import split_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE FUNCTION stockguard_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never changed or deleted', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TABLE skus (
    code        text PRIMARY KEY CHECK (code ~ '^[A-Za-z0-9._:-]{1,64}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE locations (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z0-9._-]{1,64}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    priority    integer NOT NULL DEFAULT 100,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE channels (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z0-9._-]{1,64}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE channel_locations (
    channel     text NOT NULL REFERENCES channels (code) ON DELETE CASCADE,
    location    text NOT NULL REFERENCES locations (code),
    priority    integer NOT NULL,
    PRIMARY KEY (channel, location)
);
CREATE INDEX channel_locations_location_idx ON channel_locations (location);

-- One number per transaction that changes levels: orders Redis writes (DESIGN.md §5).
CREATE SEQUENCE cache_version_seq;

CREATE TABLE inventory_levels (
    sku         text NOT NULL REFERENCES skus (code),
    location    text NOT NULL REFERENCES locations (code),
    on_hand     bigint NOT NULL DEFAULT 0,
    reserved    bigint NOT NULL DEFAULT 0,
    version     bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku, location),
    CONSTRAINT level_reserved_within_on_hand CHECK (0 <= reserved AND reserved <= on_hand)
);
CREATE INDEX inventory_levels_location_idx ON inventory_levels (location);

CREATE TABLE orders (
    id                      text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._:-]{1,64}$'),
    status                  text NOT NULL CHECK (status IN ('pending', 'paid', 'processing',
                                'shipped', 'delivered', 'cancelled', 'needs_review')),
    channel                 text REFERENCES channels (code),
    preferred_locations     text[] NOT NULL DEFAULT '{}',
    allow_split             boolean NOT NULL DEFAULT true,
    reservation_ttl_seconds integer NOT NULL CHECK (reservation_ttl_seconds BETWEEN 1 AND 86400),
    total_amount            bigint CHECK (total_amount >= 0),
    currency                text CHECK (currency ~ '^[A-Z]{3}$'),
    payment_provider        text,
    payment_id              text,
    payment_amount          bigint,
    payment_currency        text,
    paid_at                 timestamptz,
    request_hash            text NOT NULL,
    cancel_reason           text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    CONSTRAINT payment_proof_whole CHECK ((payment_provider IS NULL) = (payment_id IS NULL))
);
CREATE INDEX orders_status_idx ON orders (status, created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX orders_created_idx ON orders (created_at, id);
CREATE TRIGGER orders_soft_delete_only BEFORE DELETE ON orders
    FOR EACH ROW EXECUTE FUNCTION stockguard_forbid_change();

CREATE TABLE order_lines (
    order_id    text NOT NULL REFERENCES orders (id),
    line_no     integer NOT NULL,
    sku         text NOT NULL,
    quantity    integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE reservations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id    text NOT NULL REFERENCES orders (id),
    line_no     integer NOT NULL,
    sku         text NOT NULL,
    location    text NOT NULL,
    quantity    integer NOT NULL CHECK (quantity > 0),
    status      text NOT NULL CHECK (status IN ('reserved', 'committed', 'fulfilled',
                    'released', 'expired')),
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (sku, location) REFERENCES inventory_levels (sku, location)
);
CREATE INDEX reservations_order_idx ON reservations (order_id);
CREATE INDEX reservations_expiry_idx ON reservations (expires_at) WHERE status = 'reserved';
CREATE INDEX reservations_active_level_idx ON reservations (sku, location)
    WHERE status IN ('reserved', 'committed');

-- The ledger (invariant 3): one row per change of on_hand or reserved, never edited.
CREATE TABLE stock_movements (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku             text NOT NULL,
    location        text NOT NULL,
    on_hand_delta   bigint NOT NULL,
    reserved_delta  bigint NOT NULL,
    reason          text NOT NULL,
    order_id        text,
    reservation_id  bigint,
    actor           text NOT NULL,
    reference       text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (on_hand_delta <> 0 OR reserved_delta <> 0)
);
CREATE INDEX stock_movements_level_idx ON stock_movements (sku, location, id);
CREATE INDEX stock_movements_order_idx ON stock_movements (order_id, id)
    WHERE order_id IS NOT NULL;
CREATE INDEX stock_movements_reservation_idx ON stock_movements (reservation_id)
    WHERE reservation_id IS NOT NULL;
CREATE TRIGGER stock_movements_append_only BEFORE UPDATE OR DELETE ON stock_movements
    FOR EACH ROW EXECUTE FUNCTION stockguard_forbid_change();
CREATE TRIGGER stock_movements_no_truncate BEFORE TRUNCATE ON stock_movements
    FOR EACH STATEMENT EXECUTE FUNCTION stockguard_forbid_change();

-- Seed 003's audit log (user_uid is called actor here).
CREATE TABLE order_inventory_logs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id        text NOT NULL,
    actor           text NOT NULL,
    reservation_ids bigint[] NOT NULL DEFAULT '{}',
    action          text NOT NULL CHECK (action IN ('RESERVED', 'COMMITTED', 'RELEASED',
                        'EXPIRED', 'FULFILLED', 'STOCK_RESTORED', 'RECOVERY_ATTEMPT',
                        'RECOVERY_SUCCESS', 'RECOVERY_SKIPPED_ALREADY_COMMITTED',
                        'RECOVERY_FAILED', 'INCONSISTENCY_DETECTED', 'STATUS_CHANGED')),
    error_reason    text,
    context         jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_inventory_logs_order_idx ON order_inventory_logs (order_id, id);
CREATE INDEX order_inventory_logs_created_idx ON order_inventory_logs (created_at);
CREATE TRIGGER order_inventory_logs_append_only BEFORE UPDATE OR DELETE
    ON order_inventory_logs FOR EACH ROW EXECUTE FUNCTION stockguard_forbid_change();
CREATE TRIGGER order_inventory_logs_no_truncate BEFORE TRUNCATE ON order_inventory_logs
    FOR EACH STATEMENT EXECUTE FUNCTION stockguard_forbid_change();

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role        text NOT NULL CHECK (role IN ('admin', 'service')),
    key_hash    text NOT NULL UNIQUE,
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE idempotency_keys (
    scope         text NOT NULL,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    status_code   integer,
    content_type  text,
    body          bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- SKUs whose Redis copy may differ from PostgreSQL (degraded mode, failed restores).
CREATE TABLE cache_dirty (
    sku        text PRIMARY KEY,
    marked_at  timestamptz NOT NULL DEFAULT now()
);

-- Payment webhook inbox: a replayed event id is recognised here.
CREATE TABLE webhook_events (
    provider     text NOT NULL,
    event_id     text NOT NULL,
    event_type   text NOT NULL,
    order_id     text,
    outcome      text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);
"""

DOWNGRADE = r"""
DROP TABLE webhook_events, cache_dirty, idempotency_keys, api_keys, order_inventory_logs,
    stock_movements, reservations, order_lines, orders, inventory_levels, channel_locations,
    channels, locations, skus;
DROP SEQUENCE cache_version_seq;
DROP FUNCTION stockguard_forbid_change();
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
