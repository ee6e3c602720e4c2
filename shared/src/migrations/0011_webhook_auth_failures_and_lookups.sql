-- 0011: signature failures in the deliveries log, one row per source and
-- minute (see purchases::auth_failures); look-ups of orders by the shop's
-- number and id; and each form's latest submission, for the forms list.
-- Statements end with `;` at the end of a line.

-- A delivery row counts 1; a row of signature failures counts them all.
ALTER TABLE webhook_deliveries ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
-- JSON object: failures by reason (missing_header, stale_timestamp, ...).
ALTER TABLE webhook_deliveries ADD COLUMN reasons TEXT;
-- The minute (RFC 3339, seconds 00) a row of signature failures covers.
ALTER TABLE webhook_deliveries ADD COLUMN window_start TEXT;
-- The latest failure that row counts.
ALTER TABLE webhook_deliveries ADD COLUMN last_received_at TEXT;
-- One row per source and minute: each failure is one upsert on it, so a
-- flood of unsigned posts grows the table by one row a minute at most.
CREATE UNIQUE INDEX webhook_deliveries_unauthorized_idx ON webhook_deliveries (source, window_start) WHERE outcome = 'unauthorized';

-- GET /v1/orders?number=#1002 and ?external_id=: the shop's names for an
-- order, without its source (the unique key starts with the source).
CREATE INDEX orders_number_idx ON orders (order_number) WHERE order_number IS NOT NULL;
CREATE INDEX orders_external_id_idx ON orders (external_id);

-- GET /v1/forms: the forms that took submissions, and each one's latest,
-- found by seeks rather than by reading every submission.
CREATE INDEX interactions_form_submitted_idx ON interactions (json_extract(data, '$.form_id'), occurred_at) WHERE kind = 'form_submitted';
