-- Earning, reversing and restoring points sum the entries that refer to
-- an earlier entry (what of a lot expired, what a refund took back).
-- Without this index each such sum read the whole ledger: 36-44 ms per
-- sum at a million entries, so an order webhook took 80 ms instead of 4.
CREATE INDEX points_entries_related_idx ON points_entries (related_entry_id, kind)
    WHERE related_entry_id IS NOT NULL;
