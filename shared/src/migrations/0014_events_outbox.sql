-- 0014: the outbox of events out. Each fact Kizuna records writes its
-- events here in the same transaction, so there is no event without its
-- fact and no fact without its event. `seq` is the delivery order and
-- the dispatcher's cursor; `id` (UUID v7) is the event's identity and
-- the `webhook-id` a receiver deduplicates by. Payloads hold ids,
-- amounts and statuses only, never personal data: a delivery renders
-- personal fields from the contact row at send time, for endpoints
-- allowed to see them, so erasure has nothing to scrub here.
CREATE TABLE events (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    occurred_at  TEXT NOT NULL,
    contact_id   TEXT,
    payload      TEXT NOT NULL CHECK (json_valid(payload))
) STRICT;
-- Erasure and a contact's replay find its events by contact.
CREATE INDEX events_contact_idx ON events (contact_id, seq) WHERE contact_id IS NOT NULL;
-- A replay of a time range reads by occurrence.
CREATE INDEX events_occurred_idx ON events (occurred_at, seq);
