"""Outgoing events: the transactional outbox, the feed's commit order, webhook endpoints
and their deliveries (DESIGN.md §10, invariant 14; API.md "Outgoing events").

- ``skus.low_stock_threshold``: ``stock.low`` fires when total available drops below it.
- ``events``: written by the transaction that made the change (so an event exists if and
  only if its change committed). ``id`` is the insert position, taken when the row is
  written: transactions commit out of that order, so a reader of ``id > after`` would
  skip an event that commits late with a smaller id. ``seq`` is given only after commit,
  by the *sequencer* (``stockguard_sequence_events``), one pass at a time (the
  ``event_counter`` row is its lock), each numbering on from the last ``seq`` the events
  it sees committed, in insert order (which is commit order for two transactions that
  touched the same SKU or order). ``txid`` names the writing transaction. A reader that
  has seen ``seq = N`` therefore never later finds an unseen event with ``seq <= N``.
  An event never changes after it is written, except that its ``seq`` is set once
  (trigger).
- ``event_counter``: the last ``seq`` given, and the last ``seq`` retention removed
  (``after`` below it → 410 ``events_expired``).
- ``webhook_endpoints`` and ``webhook_deliveries``: one delivery per (endpoint, event),
  made by the sequencer for every active endpoint whose patterns match the event, in the
  same transaction that numbers it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from alembic import op

from stockguard.store.sqlscript import split_sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE skus ADD COLUMN low_stock_threshold bigint
    CONSTRAINT skus_low_stock_threshold_range
    CHECK (low_stock_threshold BETWEEN 0 AND 1000000000);

CREATE TABLE webhook_endpoints (
    id          text PRIMARY KEY
                DEFAULT ('we_' || replace(gen_random_uuid()::text, '-', '')),
    url         text NOT NULL CHECK (url ~ '^https?://' AND length(url) <= 2048),
    events      text[] NOT NULL
                CHECK (cardinality(events) BETWEEN 1 AND 100
                       AND array_position(events, NULL) IS NULL),
    description text CHECK (length(description) <= 500),
    secret      text NOT NULL CHECK (secret ~ '^whsec_'),
    active      boolean NOT NULL DEFAULT true,
    lease_owner text,
    lease_until timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    id          bigserial PRIMARY KEY,
    -- the public id, made from the primary key: unique by construction, no index
    event_id    text NOT NULL
                GENERATED ALWAYS AS ('evt_' || lpad(to_hex(id), 16, '0')) STORED,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    seq         bigint UNIQUE,
    type        text NOT NULL CHECK (type ~ '^[a-z_]+(\.[a-z_]+)?$'),
    data        jsonb NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    -- only a ping names its endpoint; pings are never numbered nor fanned out. No
    -- foreign key: its check would run for every event row written on the stock path
    -- (NULL or not); a ping's delivery row holds the reference, and deleting an
    -- endpoint deletes its pings.
    endpoint_id text,
    CONSTRAINT events_ping_has_endpoint CHECK ((type = 'ping') = (endpoint_id IS NOT NULL)),
    CONSTRAINT events_ping_not_in_feed CHECK (type <> 'ping' OR seq IS NULL)
);
CREATE INDEX events_unsequenced ON events (id) WHERE seq IS NULL AND type <> 'ping';
CREATE INDEX events_by_occurred ON events (occurred_at) WHERE seq IS NOT NULL;

CREATE TABLE event_counter (
    only_row      boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_seq      bigint NOT NULL DEFAULT 0,
    pruned_through bigint NOT NULL DEFAULT 0 CHECK (pruned_through <= last_seq)
);
INSERT INTO event_counter DEFAULT VALUES;

CREATE FUNCTION stockguard_event_is_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.seq IS NULL AND NEW.seq IS NOT NULL
       AND (NEW.id, NEW.txid, NEW.type, NEW.data, NEW.occurred_at, NEW.endpoint_id)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.txid, OLD.type, OLD.data, OLD.occurred_at, OLD.endpoint_id) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'event %: an event never changes; only its seq is set, once', OLD.id
        USING ERRCODE = 'check_violation';
END $$;

CREATE TRIGGER events_are_immutable BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION stockguard_event_is_immutable();

CREATE TABLE webhook_deliveries (
    endpoint_id      text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         bigint NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    seq              bigint,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    last_status_code integer,
    last_error       text,
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_pending
    ON webhook_deliveries (endpoint_id, seq, event_id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);

-- Does an endpoint's pattern list take this event type? "*", the type, or "prefix.*".
CREATE FUNCTION stockguard_event_matches(patterns text[], event_type text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '*' = ANY(patterns)
        OR event_type = ANY(patterns)
        OR split_part(event_type, '.', 1) || '.*' = ANY(patterns)
$$;

-- Number the committed, unnumbered events, in insert order, on from the last seq, and
-- make their deliveries; returns how many. The counter row is the sequencer's lock:
-- one runs at a time (another returns 0 at once), and each numbers only what it can
-- see committed, so a seq is given after its event committed and every later pass gives
-- larger ones: numbers appear in the feed in increasing order, never behind a reader.
-- Within a pass, insert order is commit order for any two transactions that touched
-- the same SKU or order: each writes its events after taking the locks that serialise
-- it with the other (the outbox is flushed last), so the later one inserts after the
-- earlier one committed.
CREATE FUNCTION stockguard_sequence_events(max_rows integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    base bigint;
    n    bigint;
BEGIN
    SELECT last_seq INTO base FROM event_counter FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    WITH ready AS (
        SELECT id, row_number() OVER (ORDER BY id) AS k
        FROM (SELECT id FROM events
              WHERE seq IS NULL AND type <> 'ping'
              ORDER BY id
              LIMIT max_rows) AS r
    )
    UPDATE events e SET seq = base + ready.k FROM ready WHERE e.id = ready.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RETURN 0;
    END IF;
    UPDATE event_counter SET last_seq = base + n;
    INSERT INTO webhook_deliveries (endpoint_id, event_id, seq)
    SELECT w.id, e.id, e.seq
    FROM events e
    JOIN webhook_endpoints w
      ON w.active AND stockguard_event_matches(w.events, e.type)
    WHERE e.seq > base AND e.seq <= base + n;
    RETURN n;
END $$;
"""

DOWNGRADE = r"""
DROP FUNCTION stockguard_sequence_events(integer);
DROP FUNCTION stockguard_event_matches(text[], text);
DROP TABLE webhook_deliveries;
DROP TRIGGER events_are_immutable ON events;
DROP FUNCTION stockguard_event_is_immutable();
DROP TABLE event_counter;
DROP TABLE events;
DROP TABLE webhook_endpoints;
ALTER TABLE skus DROP COLUMN low_stock_threshold;
"""


def upgrade() -> None:
    for statement in split_sql(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in split_sql(DOWNGRADE):
        op.execute(statement)
