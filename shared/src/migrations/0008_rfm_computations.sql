-- RFM scores are kept per computation (`computed_at`): a new one is
-- written in small batches beside the current one, and made current by
-- the `rfm` row of `analytics_state` (analytics::recompute). No write
-- transaction grows with the customer base, which a libSQL server needs
-- (it takes back a write lock held over 5 s), and no TEMP table is used
-- (Spin's libSQL client refuses them). The old table was only a cache:
-- it is dropped, and the next reader computes afresh.
DROP TABLE rfm_scores;
CREATE TABLE rfm_scores (
    computed_at TEXT NOT NULL,                 -- the computation (analytics_state.computed_at of `rfm`)
    contact_id  TEXT NOT NULL,
    recency     INTEGER NOT NULL,              -- 1..5, 5 = most recent
    frequency   INTEGER NOT NULL,              -- 1..5
    monetary    INTEGER NOT NULL,              -- 1..5
    churn_risk  TEXT NOT NULL,                 -- none | low | medium | high
    PRIMARY KEY (computed_at, contact_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX rfm_scores_rf_idx ON rfm_scores (computed_at, recency, frequency);
DELETE FROM analytics_state WHERE name IN ('rfm', 'rfm_claim', 'vip_threshold');
