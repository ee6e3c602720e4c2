-- Each form's settings (see forms.rs): thank-you URL, origins, required
-- fields, tags and the consent wording a consent is proof of. They used
-- to live only in the key-value store, which is a cache that may be lost
-- (a Redis restart), so the system of record is here. One row per
-- configured form. A form without a row uses the defaults.
CREATE TABLE form_settings (
    form_id    TEXT PRIMARY KEY,
    settings   TEXT NOT NULL CHECK (json_valid(settings)), -- JSON: forms::FormSettings
    updated_at TEXT NOT NULL,
    updated_by TEXT NOT NULL                               -- the actor's label, e.g. key:forms
) STRICT, WITHOUT ROWID;
