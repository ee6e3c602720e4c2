-- 0009: what a consent record proves, beyond a form's: where it was given
-- or withdrawn (a shop's checkout, or staff's own words), when the person
-- did so (a shop reports a time before Kizuna hears of it), and which
-- wording the person saw (its SHA-256, beside its version). Rows from
-- before have no `occurred_at`: their `recorded_at` is that time.

-- When the person gave or withdrew it (`recorded_at`: when Kizuna did).
ALTER TABLE consents ADD COLUMN occurred_at TEXT;
-- Where: shopify_checkout, woocommerce_checkout, a sender's or staff's own word.
ALTER TABLE consents ADD COLUMN source TEXT;
-- Staff's free text.
ALTER TABLE consents ADD COLUMN note TEXT;
-- As the shop says: single_opt_in, confirmed_opt_in, unknown.
ALTER TABLE consents ADD COLUMN opt_in_level TEXT;
-- orders.id of the order that reported it.
ALTER TABLE consents ADD COLUMN order_id TEXT;
-- Hex SHA-256 of the wording (UTF-8) the person saw, beside text_version.
ALTER TABLE consents ADD COLUMN text_sha256 TEXT;
