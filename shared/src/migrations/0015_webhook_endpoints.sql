-- 0015: webhook endpoints, the receivers of events out (events::endpoints).
-- Secrets are stored encrypted with the `webhook_secret_key` variable
-- (`v1:` + base64 of nonce and ciphertext); during a rotation the
-- previous secret keeps signing until `previous_secret_expires_at`.

CREATE TABLE webhook_endpoints (
    id                         TEXT PRIMARY KEY,      -- UUID v7
    url                        TEXT NOT NULL,
    topics                     TEXT NOT NULL,         -- JSON list of topic names, or ["*"]
    description                TEXT,
    enabled                    INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    include_personal_data      INTEGER NOT NULL DEFAULT 0 CHECK (include_personal_data IN (0, 1)),
    secret                     TEXT NOT NULL,
    secret_hint                TEXT NOT NULL,         -- the secret's last 4 characters
    secret_rotated_at          TEXT,
    previous_secret            TEXT,
    previous_secret_expires_at TEXT,
    -- Why delivery turned the endpoint off (410, failing for 3 days);
    -- cleared when it is enabled again.
    disabled_reason            TEXT,
    created_at                 TEXT NOT NULL,
    created_by                 TEXT NOT NULL,
    updated_at                 TEXT NOT NULL,
    updated_by                 TEXT NOT NULL,
    CHECK (previous_secret IS NULL OR previous_secret_expires_at IS NOT NULL)
);
