-- 0002: orders from EC webhooks, their lines and refunds, the shop's own
-- customer ids per source, webhook event de-duplication and the
-- deliveries log. Statements end with `;` at the end of a line.

ALTER TABLE contacts ADD COLUMN average_order_value_minor INTEGER NOT NULL DEFAULT 0;

-- A shop's customer id, per source: Shopify's and WooCommerce's ids are
-- different numbering spaces.
CREATE TABLE contact_external_ids (
    source      TEXT NOT NULL,
    external_id TEXT NOT NULL,
    contact_id  TEXT NOT NULL REFERENCES contacts (id),
    created_at  TEXT NOT NULL,
    PRIMARY KEY (source, external_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX contact_external_ids_contact_idx ON contact_external_ids (contact_id);

-- One order per (source, external id). `paid` and `cancelled` are facts
-- that only ever turn on, so events apply in any order; `status` is
-- derived from them and the refunds (see purchases::derive_status).
CREATE TABLE orders (
    id                  TEXT PRIMARY KEY,          -- UUID v7
    source              TEXT NOT NULL,
    external_id         TEXT NOT NULL,
    contact_id          TEXT REFERENCES contacts (id),
    order_number        TEXT,
    status              TEXT NOT NULL,
    currency            TEXT NOT NULL,
    subtotal_minor      INTEGER NOT NULL,
    shipping_minor      INTEGER NOT NULL,
    tax_minor           INTEGER NOT NULL,
    discount_minor      INTEGER NOT NULL,
    total_minor         INTEGER NOT NULL,
    points_used         INTEGER NOT NULL DEFAULT 0,
    refunded_minor      INTEGER NOT NULL DEFAULT 0,
    paid                INTEGER NOT NULL DEFAULT 0,
    cancelled           INTEGER NOT NULL DEFAULT 0,
    placed_at           TEXT NOT NULL,
    paid_at             TEXT,
    cancelled_at        TEXT,
    source_updated_at   TEXT,                       -- the shop's own "updated at", for stale payloads
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    UNIQUE (source, external_id)
) STRICT;
CREATE INDEX orders_contact_idx ON orders (contact_id, placed_at DESC, id DESC);

CREATE TABLE order_lines (
    order_id          TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no           INTEGER NOT NULL,
    external_id       TEXT,
    sku               TEXT,
    product_name      TEXT,
    category          TEXT,
    quantity          INTEGER NOT NULL,
    unit_price_minor  INTEGER NOT NULL,
    line_total_minor  INTEGER NOT NULL,
    discount_minor    INTEGER NOT NULL DEFAULT 0,
    tax_minor         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, line_no)
) STRICT, WITHOUT ROWID;
CREATE INDEX order_lines_sku_idx ON order_lines (sku) WHERE sku IS NOT NULL;
CREATE INDEX order_lines_category_idx ON order_lines (category) WHERE category IS NOT NULL;

-- Refunds are keyed by the order's external id, not its row, so that a
-- refund arriving before its order is kept and counted once it does.
CREATE TABLE refunds (
    id                 TEXT PRIMARY KEY,
    source             TEXT NOT NULL,
    order_external_id  TEXT NOT NULL,
    external_id        TEXT NOT NULL,
    amount_minor       INTEGER NOT NULL,
    currency           TEXT NOT NULL,
    reason             TEXT,
    refunded_at        TEXT NOT NULL,
    created_at         TEXT NOT NULL,
    UNIQUE (source, order_external_id, external_id)
) STRICT;

-- An event applies once: a repeat of (source, event id, topic) is a
-- duplicate whatever delivery carried it.
CREATE TABLE webhook_events (
    source      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    topic       TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (source, event_id, topic)
) STRICT, WITHOUT ROWID;

-- What arrived and what became of it. Never the body: it holds personal data.
CREATE TABLE webhook_deliveries (
    id                 TEXT PRIMARY KEY,          -- UUID v7
    source             TEXT NOT NULL,
    event_id           TEXT,
    delivery_id        TEXT,
    topic              TEXT,
    order_external_id  TEXT,
    received_at        TEXT NOT NULL,
    outcome            TEXT NOT NULL,              -- applied | duplicate | ignored | rejected
    error              TEXT
) STRICT;
CREATE INDEX webhook_deliveries_outcome_idx ON webhook_deliveries (outcome, id);
