-- 0003: the loyalty-points ledger. Entries are append-only; every
-- positive entry (earn, award, positive adjustment) opens a lot that
-- holds its points until they are spent, expire or are taken back.
-- Invariant, per contact: sum(entries.points) = sum(lots.remaining) - debt.

-- Points are derived from the ledger at read time; the placeholder
-- column from 0001 never held anything.
ALTER TABLE contacts DROP COLUMN points_balance;

-- The program's rules, one row per version; the newest is in force.
CREATE TABLE points_programs (
    version    INTEGER PRIMARY KEY,
    rules      TEXT NOT NULL,                 -- JSON, see points::program
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL
) STRICT;

-- Per contact: the ledger's running sum, the debt (points taken back
-- after they were spent, which future earns pay off first), and lifetime
-- totals kept as entries are written, so a balance read never scans the
-- ledger.
CREATE TABLE points_accounts (
    contact_id TEXT PRIMARY KEY REFERENCES contacts (id),
    balance    INTEGER NOT NULL DEFAULT 0,
    entries    INTEGER NOT NULL DEFAULT 0,   -- the last entry's seq
    debt       INTEGER NOT NULL DEFAULT 0 CHECK (debt >= 0),
    earned     INTEGER NOT NULL DEFAULT 0,   -- earn entries
    redeemed   INTEGER NOT NULL DEFAULT 0,   -- redemptions, net of points given back
    expired    INTEGER NOT NULL DEFAULT 0,
    reversed   INTEGER NOT NULL DEFAULT 0,   -- taken back by refunds and cancels
    adjusted   INTEGER NOT NULL DEFAULT 0    -- signed sum of adjustments
) STRICT, WITHOUT ROWID;

CREATE TABLE points_entries (
    id              TEXT PRIMARY KEY,         -- UUID v7: ledger order
    contact_id      TEXT NOT NULL REFERENCES contacts (id),
    kind            TEXT NOT NULL,            -- earn | redeem | expire | cancel | adjust | reverse
    points          INTEGER NOT NULL,         -- signed
    seq             INTEGER NOT NULL,         -- per contact, in commit order
    balance_after   INTEGER NOT NULL,
    reason          TEXT,
    order_id        TEXT,                     -- orders.id, for earn and its reversals
    order_ref       TEXT,                     -- the shop's order id a redemption paid for
    refund_id       TEXT,
    related_entry_id TEXT,                    -- the earn a cancel or reversal takes back, the redeem a restore returns
    program_version INTEGER,
    created_at      TEXT NOT NULL,
    created_by      TEXT NOT NULL
) STRICT;
-- The ledger's order: ids are time-based but stamped before the write
-- lock is taken, so only a sequence assigned inside the transaction is
-- sure to follow commit order (and `balance_after`).
CREATE UNIQUE INDEX points_entries_contact_seq ON points_entries (contact_id, seq);
CREATE INDEX points_entries_order_idx ON points_entries (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX points_entries_order_ref_idx ON points_entries (contact_id, order_ref) WHERE order_ref IS NOT NULL;
-- A paid order earns once.
CREATE UNIQUE INDEX points_entries_earn_once ON points_entries (order_id) WHERE kind = 'earn' AND order_id IS NOT NULL;

CREATE TABLE points_lots (
    id           TEXT PRIMARY KEY,
    contact_id   TEXT NOT NULL REFERENCES contacts (id),
    entry_id     TEXT NOT NULL REFERENCES points_entries (id),
    original     INTEGER NOT NULL CHECK (original > 0),
    remaining    INTEGER NOT NULL CHECK (remaining >= 0 AND remaining <= original),
    available_at TEXT NOT NULL,
    expires_at   TEXT,                        -- NULL: never
    created_at   TEXT NOT NULL
) STRICT;
CREATE INDEX points_lots_open_idx ON points_lots (contact_id, expires_at, id) WHERE remaining > 0;
CREATE INDEX points_lots_expiry_idx ON points_lots (expires_at) WHERE remaining > 0;
CREATE UNIQUE INDEX points_lots_entry_key ON points_lots (entry_id);

-- Which lots a redemption drew from, so that points paid for a refunded
-- order can go back where they came from.
CREATE TABLE points_allocations (
    redeem_entry_id TEXT NOT NULL REFERENCES points_entries (id),
    lot_id          TEXT NOT NULL REFERENCES points_lots (id),
    points          INTEGER NOT NULL CHECK (points > 0),
    restored        INTEGER NOT NULL DEFAULT 0 CHECK (restored >= 0 AND restored <= points),
    PRIMARY KEY (redeem_entry_id, lot_id)
) STRICT, WITHOUT ROWID;
