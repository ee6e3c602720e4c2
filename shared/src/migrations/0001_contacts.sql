-- 0001: contacts, their tags, consents, timeline, erasure records,
-- idempotency records and form rate-limit buckets.
-- Timestamps are RFC 3339 UTC text with fixed-width microseconds
-- (`2026-11-22T06:00:00.000000Z`), so text order is time order.
-- Statements end with `;` at the end of a line (see db::split_statements).

CREATE TABLE contacts (
    id                TEXT PRIMARY KEY,          -- UUID v7
    email             TEXT,                      -- normalised, unique while set
    phone             TEXT,                      -- E.164
    external_id       TEXT,                      -- the shop's own customer id
    name              TEXT,
    family_name       TEXT,
    given_name        TEXT,
    family_name_kana  TEXT,
    given_name_kana   TEXT,
    company           TEXT,
    postal_code       TEXT,
    address           TEXT,
    birthday          TEXT,                      -- YYYY-MM-DD
    attributes        TEXT NOT NULL DEFAULT '{}',-- JSON object of other form fields
    lifecycle_stage   TEXT NOT NULL DEFAULT 'lead',
    source            TEXT NOT NULL,             -- first touch: form:<id>, api:<key>, webhook:<source>
    first_form_id     TEXT,
    first_page        TEXT,
    utm_source        TEXT,
    utm_medium        TEXT,
    utm_campaign      TEXT,
    utm_term          TEXT,
    utm_content       TEXT,
    order_count       INTEGER NOT NULL DEFAULT 0,
    total_spent_minor INTEGER NOT NULL DEFAULT 0,
    first_order_at    TEXT,
    last_order_at     TEXT,
    points_balance    INTEGER NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    created_by        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    updated_by        TEXT NOT NULL,
    erased_at         TEXT
) STRICT;

-- Identity: one contact per email and per external id. Phone is shared by
-- households, so it identifies a contact only when there is no email: one
-- phone-only contact per number.
CREATE UNIQUE INDEX contacts_email_key ON contacts (email) WHERE email IS NOT NULL;
CREATE UNIQUE INDEX contacts_external_id_key ON contacts (external_id) WHERE external_id IS NOT NULL;
CREATE UNIQUE INDEX contacts_phone_only_key ON contacts (phone) WHERE phone IS NOT NULL AND email IS NULL;
CREATE INDEX contacts_phone_idx ON contacts (phone) WHERE phone IS NOT NULL;

-- Prefix search on name, kana and email: folded terms, one row each.
CREATE TABLE contact_search (
    term       TEXT NOT NULL,
    contact_id TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    PRIMARY KEY (term, contact_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX contact_search_contact_idx ON contact_search (contact_id);

CREATE TABLE contact_tags (
    contact_id TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    tag        TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (contact_id, tag)
) STRICT, WITHOUT ROWID;
CREATE INDEX contact_tags_tag_idx ON contact_tags (tag, contact_id);

-- Consent is an append-only log; the current state per channel is the
-- latest row. It is the proof a sender keeps under Japan's Act on
-- Specified Electronic Mail.
CREATE TABLE consents (
    id             TEXT PRIMARY KEY,
    contact_id     TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    channel        TEXT NOT NULL,
    status         TEXT NOT NULL,               -- granted | withdrawn
    reason         TEXT NOT NULL,
    form_id        TEXT,
    page_url       TEXT,
    text_version   TEXT,
    ip_truncated   TEXT,
    recorded_at    TEXT NOT NULL,
    recorded_by    TEXT NOT NULL
) STRICT;
CREATE INDEX consents_contact_idx ON consents (contact_id, channel, recorded_at);

CREATE TABLE interactions (
    id          TEXT PRIMARY KEY,                -- UUID v7
    contact_id  TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    channel     TEXT,
    subject     TEXT,
    body        TEXT,
    data        TEXT,                            -- JSON: form fields, UTM, page
    occurred_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    recorded_by TEXT NOT NULL
) STRICT;
CREATE INDEX interactions_timeline_idx ON interactions (contact_id, occurred_at DESC, id DESC);

CREATE TABLE erasures (
    id         TEXT PRIMARY KEY,
    contact_id TEXT NOT NULL REFERENCES contacts (id),
    erased_at  TEXT NOT NULL,
    erased_by  TEXT NOT NULL,
    erased     TEXT NOT NULL                     -- JSON: what was removed, by category
) STRICT;

-- A retried write returns its first answer. The body may hold personal
-- data, so rows name their contact and go with it on erasure.
CREATE TABLE idempotency_keys (
    actor           TEXT NOT NULL,
    key             TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    response_status INTEGER NOT NULL,
    response_body   TEXT NOT NULL,
    contact_id      TEXT,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (actor, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotency_keys_contact_idx ON idempotency_keys (contact_id);

-- Fixed one-minute windows per (client, form). The bucket is a digest, so
-- no IP address is stored.
CREATE TABLE rate_limits (
    bucket       TEXT PRIMARY KEY,
    window_start INTEGER NOT NULL,
    hits         INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX rate_limits_window_idx ON rate_limits (window_start);
