-- 0004: segments, their membership history for delta sync, and the
-- analytics they read (RFM scores, churn risk). Also the indexes the
-- segment compiler's conditions search by.

ALTER TABLE contacts ADD COLUMN email_domain TEXT
    GENERATED ALWAYS AS (CASE WHEN email IS NULL THEN NULL ELSE substr(email, instr(email, '@') + 1) END) VIRTUAL;
CREATE INDEX contacts_email_domain_idx ON contacts (email_domain) WHERE email_domain IS NOT NULL;
CREATE INDEX contacts_last_order_idx ON contacts (last_order_at) WHERE last_order_at IS NOT NULL;
CREATE INDEX contacts_first_order_idx ON contacts (first_order_at) WHERE first_order_at IS NOT NULL;
CREATE INDEX contacts_total_spent_idx ON contacts (total_spent_minor);
CREATE INDEX contacts_order_count_idx ON contacts (order_count);
CREATE INDEX contacts_lifecycle_idx ON contacts (lifecycle_stage);
CREATE INDEX contacts_created_idx ON contacts (created_at);
CREATE INDEX contacts_utm_campaign_idx ON contacts (utm_campaign) WHERE utm_campaign IS NOT NULL;
-- Counted orders (paid, not cancelled, not fully refunded), covering what
-- segment conditions and the RFM scan read, so no row lookups are needed.
CREATE INDEX orders_counted_idx ON orders (contact_id, placed_at, total_minor, refunded_minor)
    WHERE paid = 1 AND cancelled = 0 AND status <> 'refunded';
CREATE INDEX interactions_form_idx ON interactions (kind, contact_id, occurred_at);

CREATE TABLE segments (
    id              TEXT PRIMARY KEY,          -- UUID v7
    name            TEXT NOT NULL UNIQUE,
    description     TEXT,
    definition      TEXT NOT NULL,             -- JSON, see segments::definition
    purpose         TEXT,                      -- NULL or 'email'
    last_count      INTEGER,
    last_counted_at TEXT,
    created_at      TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    updated_by      TEXT NOT NULL
) STRICT;

-- Membership periods, for `changes?since=<token>`: a contact joined at a
-- sync version and (maybe) left at a later one.
CREATE TABLE segment_members (
    segment_id     TEXT NOT NULL REFERENCES segments (id) ON DELETE CASCADE,
    contact_id     TEXT NOT NULL,
    joined_version INTEGER NOT NULL,
    left_version   INTEGER,
    PRIMARY KEY (segment_id, contact_id, joined_version)
) STRICT, WITHOUT ROWID;
CREATE INDEX segment_members_current_idx ON segment_members (segment_id, contact_id) WHERE left_version IS NULL;
CREATE INDEX segment_members_joined_idx ON segment_members (segment_id, joined_version);
CREATE INDEX segment_members_left_idx ON segment_members (segment_id, left_version) WHERE left_version IS NOT NULL;

CREATE TABLE segment_versions (
    segment_id TEXT PRIMARY KEY REFERENCES segments (id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    synced_at  TEXT NOT NULL
) STRICT, WITHOUT ROWID;

-- Recomputed on demand when older than the allowed age (analytics::ensure_fresh);
-- every answer that uses them says when they were computed.
CREATE TABLE rfm_scores (
    contact_id  TEXT PRIMARY KEY,
    recency     INTEGER NOT NULL,              -- 1..5, 5 = most recent
    frequency   INTEGER NOT NULL,              -- 1..5
    monetary    INTEGER NOT NULL,              -- 1..5
    churn_risk  TEXT NOT NULL                  -- none | low | medium | high
) STRICT, WITHOUT ROWID;
CREATE INDEX rfm_scores_rf_idx ON rfm_scores (recency, frequency);

-- When each cached analysis was computed, and small results (the VIP
-- threshold) that segment conditions read.
CREATE TABLE analytics_state (
    name        TEXT PRIMARY KEY,
    value       INTEGER,
    computed_at TEXT NOT NULL
) STRICT, WITHOUT ROWID;
