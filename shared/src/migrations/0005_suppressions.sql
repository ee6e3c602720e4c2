-- The suppression list (see suppression.rs): keyed digests of emails and
-- phones whose owner withdrew a consent or was erased. No address is
-- stored, only its HMAC.
CREATE TABLE suppressions (
    kind          TEXT NOT NULL CHECK (kind IN ('email', 'phone')),
    digest        TEXT NOT NULL,
    reason        TEXT NOT NULL CHECK (reason IN ('withdrawn', 'erased')),
    suppressed_at TEXT NOT NULL,
    -- A fresh opt-in by the person after suppressed_at lifts it.
    lifted_at     TEXT,
    lifted_by     TEXT,
    PRIMARY KEY (kind, digest)
) STRICT, WITHOUT ROWID;
