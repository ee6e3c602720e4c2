-- 0010: interactions staff work on. `agent` is who handled one (free
-- text: the staff member's name as the shop writes it), while
-- `recorded_by` stays the API key that wrote it; `status` is where it
-- stands (open | pending | closed), changed later with
-- `PATCH /v1/contacts/{id}/interactions/{interaction_id}`, which stamps
-- `updated_at`/`updated_by` and appends an `interaction_updated` entry
-- with the old and new values. Entries Kizuna writes about itself (form
-- posts, orders, tags) have neither. Rows from before keep a NULL status
-- (not tracked): a backfill would rewrite the whole table inside the
-- migration's transaction, and no one knows which old inquiry is done.

ALTER TABLE interactions ADD COLUMN agent TEXT;
ALTER TABLE interactions ADD COLUMN status TEXT;
ALTER TABLE interactions ADD COLUMN updated_at TEXT;
ALTER TABLE interactions ADD COLUMN updated_by TEXT;
-- What is still to be done, per contact (the look-up summary counts it):
-- only open and pending rows are in it, so it stays small.
CREATE INDEX interactions_open_idx ON interactions (contact_id, status)
    WHERE status IN ('open', 'pending');
