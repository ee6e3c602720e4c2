//! `bench-points`: how fast Kizuna reads a points balance and redeems
//! points for a contact with a long ledger, on a full database, next to a
//! bare indexed `SUM` over that contact's lots in the same file.
//!
//! What it measures, all in one process and one run:
//!
//! 1. Pre-loads `--contacts` contacts (default 100,000) straight into the
//!    host's database file with rusqlite, in the real schema, each with a
//!    search row per email and name and a points history written as
//!    Kizuna's ledger writes it (entries with their running balance, a lot
//!    per earn, allocation rows per redemption, an account row with its
//!    lifetime totals): every contact 1 to 3 open lots earned within the
//!    last year (valid a year, available at once), a quarter of them also
//!    an older lot that expired unspent (its `expire` entry written, as
//!    the sweep leaves it), a third of them one redemption. One **hot**
//!    contact (the one in the middle) gets a history of exactly
//!    `--entries` entries (default 10,000) ending with exactly `--lots`
//!    open lots (default 2,000), built oldest first under Kizuna's spending
//!    rule (available, unexpired lots, soonest-expiring first): two years
//!    ago `E/8` earns fully spent by about `5E/8` redemptions and negative
//!    adjustments (every tenth), then `E/8` earns that expired unspent
//!    with their `expire` entries, then the `L` open lots earned over the
//!    last year (expiring within the next year, each at its own time),
//!    and in the last day up to 10 more redemptions and adjustments drawn
//!    from the oldest of them; never any debt. Every contact's ledger is
//!    then checked to add up (`sum(entries) = sum(open lots' remaining) -
//!    debt`, and the account's running balance and totals agree), the
//!    hot contact's counts too, and the bench panics otherwise. Then it
//!    checkpoints and syncs the file, so the measured phases start from a
//!    clean, durable file.
//! 2. **balance read**: `--requests` sequential `GET /v1/points/{hot}`
//!    with a `points:read` key through `Host::handle`, i.e. the whole
//!    component: a fresh connection and pragmas per request, the key
//!    check, the live-contact check, the sums over the open lots and the
//!    account row. Each answer must be 200 with the preloaded available
//!    points.
//! 3. **baseline SUM**: a bare rusqlite connection to the same database
//!    file with the same pragmas (WAL, `busy_timeout`, `foreign_keys`,
//!    `synchronous = FULL`, `secure_delete`), opened once, running one
//!    prepared `SELECT COALESCE(SUM(remaining), 0) FROM points_lots WHERE
//!    contact_id = ?1 AND remaining > 0 AND (expires_at IS NULL OR
//!    expires_at > ?2) AND available_at <= ?2` per request for the hot
//!    contact: the floor for reading that contact's available points. Its
//!    query plan is printed once and must use `points_lots_open_idx`;
//!    each answer must equal the available points of step 2.
//! 4. **redeem**: `--requests` sequential `POST /v1/points/redeem` of 1
//!    point for the hot contact, each with its own `Idempotency-Key`,
//!    with a `points:redeem` key through `Host::handle`: in one `BEGIN
//!    IMMEDIATE` transaction with `synchronous = FULL`, the idempotency
//!    look-up, the live-contact check, the program, the expiry of due
//!    lots, the open lots in spending order, the entry, the account, the
//!    lot and its allocation, the balance after, and the saved answer.
//!    Each answer must be 201 with one point less available than the one
//!    before.
//!
//! Run it in release (debug numbers mean nothing):
//!
//! ```text
//! cargo run --release -p kizuna-tests --bin bench-points
//! cargo run --release -p kizuna-tests --bin bench-points -- --contacts 10000 --entries 2000 --lots 500 --requests 500
//! ```
//!
//! Options: `--contacts N` (default 100000), `--entries E` (default
//! 10000) and `--lots L` (default 2000) for the hot contact, `--requests
//! R` (default 2000), `--dir PATH` (default a new directory under the
//! system temp dir; it must not already hold a Kizuna or baseline
//! database), `--keep` (leave the database behind instead of deleting
//! it).
//!
//! Reading the output: one row per scenario with the number of requests,
//! throughput (requests per second of wall time over the whole sequential
//! loop, one request at a time) and per-request latency percentiles (p50,
//! p99, max, in milliseconds, nearest-rank). Only `Host::handle` and the
//! baseline's query are timed. The ratios compare each Kizuna scenario
//! with the baseline SUM: a throughput ratio of 0.10 means Kizuna serves a
//! tenth as many requests per second as the bare query; a p50 ratio of
//! 10.0 means its median request takes ten times as long. A redemption
//! is a durable write (fsync'd commits), the baseline a read, so that
//! ratio also holds the cost of one commit on this disk: compare it on
//! the same machine and disk only; the context lines say which machine,
//! SQLite version and directory the numbers come from. The final lines
//! give the database size (main file and WAL) and the hot contact's
//! ledger after the run, which is checked: `R` more `redeem` entries,
//! `R` fewer available points, and the ledger still adds up.

use anyhow::ensure;
use bytes::Bytes;
use kizuna::auth::key_digest;
use kizuna::text::search_fold;
use kizuna::timestamp;
use kizuna_tests::Host;
use kizuna_tests::bench::{
    BenchDir, Lcg, Stats, body_text, database_size, file_size, measure, mib, open_baseline,
    parse_args, print_machine, print_ratios, print_table, query_plan, request, run_in_dir, settle,
    uuid_like, uuid_v7_like,
};
use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use serde_json::{Value as Json, json};
use std::path::Path;
use std::time::Instant;
use time::OffsetDateTime;

/// `points:read` and `points:redeem`.
const POINTS_KEY: &str = "bench-points-key-0123456789";
/// Who preloaded earns and redemptions were written by (the key's label).
const WRITER: &str = "key:bench-points";
/// Who preloaded adjustments and expiries were written by.
const ADMIN: &str = "key:bench-points-admin";
/// Contacts per transaction while pre-loading.
const PRELOAD_BATCH: u64 = 10_000;
const HOUR_MS: u64 = 60 * 60 * 1000;
const DAY_MS: u64 = 24 * HOUR_MS;
/// The default program's expiry: a year after the earn.
const VALIDITY_MS: u64 = 365 * DAY_MS;
const CONTACT_IDS: u32 = 0x0190_0000;

/// The query the baseline runs, and the sum `GET /v1/points/{id}` reports
/// as `available`.
const BASELINE_SUM: &str = "SELECT COALESCE(SUM(remaining), 0) FROM points_lots
     WHERE contact_id = ?1 AND remaining > 0 AND (expires_at IS NULL OR expires_at > ?2)
       AND available_at <= ?2";

struct Options {
    contacts: u64,
    entries: u64,
    lots: u64,
    requests: u64,
    dir: BenchDir,
}

const USAGE: &str = "usage: bench-points [--contacts N] [--entries E] [--lots L] [--requests R] [--dir PATH] [--keep]";

fn parse_options() -> anyhow::Result<Option<Options>> {
    let (mut contacts, mut entries, mut lots, mut requests) = (100_000, 10_000, 2_000, 2_000);
    let Some(dir) = parse_args(
        USAGE,
        &mut [
            ("--contacts", &mut contacts),
            ("--entries", &mut entries),
            ("--lots", &mut lots),
            ("--requests", &mut requests),
        ],
    )?
    else {
        return Ok(None);
    };
    let options = Options {
        contacts,
        entries,
        lots,
        requests,
        dir,
    };
    ensure!(options.contacts >= 1, "--contacts must be at least 1");
    ensure!(
        options.contacts <= 99_999_999,
        "--contacts must fit in 8 phone digits"
    );
    ensure!(options.lots >= 1, "--lots must be at least 1");
    ensure!(
        options.entries >= options.lots,
        "--entries must be at least --lots: every open lot has its earn entry"
    );
    ensure!(options.requests >= 2, "--requests must be at least 2");
    Ok(Some(options))
}

fn build_host(dir: &Path) -> anyhow::Result<Host> {
    let api_keys = json!([
        {"name": "bench-points", "sha256": key_digest(POINTS_KEY), "scopes": ["points:read", "points:redeem"]},
    ])
    .to_string();
    Ok(Host::new(dir)?
        .with_variable("api_keys", &api_keys)
        .with_variable("shop_currency", "JPY"))
}

fn contact_id(i: u64) -> String {
    uuid_like(CONTACT_IDS, i)
}

fn now_ms() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .expect("a time after 1970")
}

/// Kizuna's text form of a time given in unix milliseconds.
fn stamp(ms: u64) -> String {
    timestamp::format(
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .expect("a time within range"),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Earn,
    Redeem,
    Expire,
    Adjust,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Earn => "earn",
            Kind::Redeem => "redeem",
            Kind::Expire => "expire",
            Kind::Adjust => "adjust",
        }
    }
    fn reason(self) -> Option<&'static str> {
        match self {
            Kind::Earn => Some("bench purchase"),
            Kind::Redeem => None,
            Kind::Expire => Some("expired"),
            Kind::Adjust => Some("bench correction"),
        }
    }
    fn actor(self) -> &'static str {
        match self {
            Kind::Earn | Kind::Redeem => WRITER,
            Kind::Expire | Kind::Adjust => ADMIN,
        }
    }
}

/// One planned ledger entry.
struct EntryPlan {
    /// Unix milliseconds.
    at: u64,
    kind: Kind,
    /// Signed.
    points: i64,
    /// An earn's own lot, or the lot an expiry empties.
    lot: Option<usize>,
    /// A redemption's allocations: lot and points drawn from it.
    allocations: Vec<(usize, i64)>,
}

/// One planned lot; available from the moment it was earned.
struct LotPlan {
    entry: usize,
    original: i64,
    remaining: i64,
    earned_at: u64,
    expires_at: u64,
}

/// One contact's points history, kept as Kizuna's ledger keeps it.
#[derive(Default)]
struct Ledger {
    entries: Vec<EntryPlan>,
    lots: Vec<LotPlan>,
}

impl Ledger {
    /// Earns `points` at `at` into a new lot valid a year. Lots are earned
    /// in time order, so their order is also the spending order.
    fn earn(&mut self, at: u64, points: i64) -> usize {
        let expires_at = at + VALIDITY_MS;
        assert!(
            points > 0 && self.lots.last().is_none_or(|l| l.expires_at <= expires_at),
            "lots are planned in spending order"
        );
        self.entries.push(EntryPlan {
            at,
            kind: Kind::Earn,
            points,
            lot: Some(self.lots.len()),
            allocations: Vec::new(),
        });
        self.lots.push(LotPlan {
            entry: self.entries.len() - 1,
            original: points,
            remaining: points,
            earned_at: at,
            expires_at,
        });
        self.lots.len() - 1
    }

    /// Takes `points` at `at` as Kizuna does: from available, unexpired
    /// lots, soonest-expiring first, then the oldest.
    fn debit(&mut self, at: u64, kind: Kind, points: i64) {
        let mut missing = points;
        let mut allocations = Vec::new();
        for (index, lot) in self.lots.iter_mut().enumerate() {
            if missing == 0 {
                break;
            }
            if lot.remaining == 0 || lot.earned_at > at || lot.expires_at <= at {
                continue;
            }
            let take = lot.remaining.min(missing);
            lot.remaining -= take;
            missing -= take;
            allocations.push((index, take));
        }
        assert_eq!(
            missing, 0,
            "a planned debit of {points} finds too few points"
        );
        if kind != Kind::Redeem {
            // Only redemptions record where their points came from.
            allocations.clear();
        }
        self.entries.push(EntryPlan {
            at,
            kind,
            points: -points,
            lot: None,
            allocations,
        });
    }

    /// Expires what is left of `lot`, as the sweep does an hour later.
    fn expire(&mut self, lot: usize) {
        let l = &mut self.lots[lot];
        assert!(l.remaining > 0, "only a lot with points left expires");
        self.entries.push(EntryPlan {
            at: l.expires_at + HOUR_MS,
            kind: Kind::Expire,
            points: -l.remaining,
            lot: Some(lot),
            allocations: Vec::new(),
        });
        l.remaining = 0;
    }

    fn open_lots(&self) -> impl Iterator<Item = &LotPlan> {
        self.lots.iter().filter(|l| l.remaining > 0)
    }

    fn available(&self) -> i64 {
        self.open_lots().map(|l| l.remaining).sum()
    }

    fn count(&self, kind: Kind) -> usize {
        self.entries.iter().filter(|e| e.kind == kind).count()
    }
}

/// Points of a lot as a shop's purchases earn them.
fn lot_points(pick: &mut Lcg) -> i64 {
    100 + pick.below(901) as i64
}

/// Every tenth debit is a negative adjustment, the others redemptions.
fn debit_kind(n: u64) -> Kind {
    if n % 10 == 9 {
        Kind::Adjust
    } else {
        Kind::Redeem
    }
}

/// `total` split into `parts` positive amounts of random sizes.
fn split(total: i64, parts: u64, pick: &mut Lcg) -> Vec<i64> {
    let weights: Vec<u128> = (0..parts)
        .map(|_| 1 + u128::from(pick.below(100)))
        .collect();
    let sum: u128 = weights.iter().sum();
    let spare = u128::try_from(total - parts as i64).expect("at least a point per part");
    let mut cumulative = 0;
    weights
        .iter()
        .map(|w| {
            let before = spare * cumulative / sum;
            cumulative += w;
            1 + i64::try_from(spare * cumulative / sum - before).expect("fits")
        })
        .collect()
}

/// The hot contact's history (see the module comment), with exactly
/// `entries` entries and `lots` open lots, and at least `requests` points
/// available.
fn hot_ledger(entries: u64, lots: u64, requests: u64, now: u64) -> Ledger {
    let mut pick = Lcg(0x0b0b_0001);
    let rest = entries - lots;
    let (spent, expired) = (rest / 8, rest / 8);
    let debits = rest - spent - 2 * expired;
    // With lots to spend, most debits spend them; the last few (drawn from
    // the open lots) are recent.
    let recent = if spent > 0 {
        (debits / 2).min(10)
    } else {
        debits
    };
    let early = debits - recent;
    let mut ledger = Ledger::default();
    let mut debit_no = 0;

    // Two years ago: earns, each spent in full by the debits after it.
    let mut originals: Vec<i64> = (0..spent).map(|_| lot_points(&mut pick)).collect();
    let short = early as i64 - originals.iter().sum::<i64>();
    if let Some(last) = originals.last_mut()
        && short > 0
    {
        *last += short;
    }
    let amounts = split(originals.iter().sum(), early, &mut pick);
    let steps = spent + early;
    let at = |k: u64| now - 730 * DAY_MS + k * (330 * DAY_MS) / steps.max(1);
    let (mut k, mut next_lot, mut earned, mut debited) = (0, 0, 0, 0);
    for amount in amounts {
        while earned < debited + amount {
            ledger.earn(at(k), originals[next_lot]);
            earned += originals[next_lot];
            next_lot += 1;
            k += 1;
        }
        ledger.debit(at(k), debit_kind(debit_no), amount);
        debited += amount;
        debit_no += 1;
        k += 1;
    }
    assert_eq!(next_lot, originals.len(), "every early lot is spent");

    // A little over a year ago: earns that expired unspent.
    for k in 0..expired {
        let lot = ledger.earn(
            now - 399 * DAY_MS + k * (33 * DAY_MS) / expired,
            lot_points(&mut pick),
        );
        ledger.expire(lot);
    }

    // The last year: the open lots. The oldest holds enough for the
    // recent debits, all of them enough for the bench's redemptions.
    let amounts: Vec<i64> = (0..recent).map(|_| 1 + pick.below(50) as i64).collect();
    let recent_sum: i64 = amounts.iter().sum();
    let mut originals: Vec<i64> = (0..lots).map(|_| lot_points(&mut pick)).collect();
    originals[0] = originals[0].max(recent_sum + 1);
    let short = requests as i64 - (originals.iter().sum::<i64>() - recent_sum);
    if short > 0 {
        *originals.last_mut().expect("at least one lot") += short;
    }
    for (k, points) in (0..).zip(originals) {
        ledger.earn(now - 364 * DAY_MS + k * (362 * DAY_MS) / lots, points);
    }
    for (k, amount) in (0..).zip(amounts) {
        ledger.debit(
            now - 20 * HOUR_MS + k * (19 * HOUR_MS) / recent,
            debit_kind(debit_no),
            amount,
        );
        debit_no += 1;
    }

    assert_eq!(
        ledger.entries.len() as u64,
        entries,
        "hot contact's entries"
    );
    assert_eq!(
        ledger.open_lots().count() as u64,
        lots,
        "hot contact's open lots"
    );
    ledger
}

/// Any other contact's history: 1 to 3 open lots earned within the last
/// year, sometimes an older lot that expired unspent, sometimes a recent
/// redemption.
fn small_ledger(pick: &mut Lcg, now: u64) -> Ledger {
    let mut ledger = Ledger::default();
    if pick.below(4) == 0 {
        let lot = ledger.earn(
            now - (370 + pick.below(300)) * DAY_MS,
            50 + pick.below(451) as i64,
        );
        ledger.expire(lot);
    }
    let mut times: Vec<u64> = (0..1 + pick.below(3))
        .map(|_| now - 2 * DAY_MS - pick.below(360 * DAY_MS))
        .collect();
    times.sort_unstable();
    for at in times {
        ledger.earn(at, 50 + pick.below(451) as i64);
    }
    if pick.below(3) == 0 {
        let oldest = ledger.open_lots().next().expect("an open lot").remaining;
        let points = 1 + pick.below(oldest as u64 - 1) as i64;
        ledger.debit(now - DAY_MS - pick.below(DAY_MS / 2), Kind::Redeem, points);
    }
    ledger
}

/// What one contact's ledger wrote.
#[derive(Default)]
struct Written {
    rows: u64,
    entries: u64,
    lots: u64,
}

/// Writes `ledger` as Kizuna's ledger would have: entries in time order
/// (time-ordered ids) with their running balance, the lots, the
/// allocations, and the account with its lifetime totals.
fn write_ledger(
    tx: &Transaction<'_>,
    contact: &str,
    ledger: &Ledger,
    seq: &mut u64,
    written: &mut Written,
) -> rusqlite::Result<()> {
    let mut order: Vec<usize> = (0..ledger.entries.len()).collect();
    order.sort_by_key(|&i| ledger.entries[i].at);
    let mut entry_ids = vec![String::new(); ledger.entries.len()];
    for &i in &order {
        *seq += 1;
        entry_ids[i] = uuid_v7_like(ledger.entries[i].at, *seq);
    }
    let lot_ids: Vec<String> = ledger
        .lots
        .iter()
        .map(|l| {
            *seq += 1;
            uuid_v7_like(l.earned_at, *seq)
        })
        .collect();

    let mut entry = tx.prepare_cached(
        "INSERT INTO points_entries (id, contact_id, kind, points, balance_after, reason,
             order_ref, related_entry_id, program_version, created_at, created_by, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    let (mut balance, mut earned, mut redeemed, mut expired, mut adjusted) = (0, 0, 0, 0, 0);
    for (position, &i) in order.iter().enumerate() {
        let e = &ledger.entries[i];
        balance += e.points;
        match e.kind {
            Kind::Earn => earned += e.points,
            Kind::Redeem => redeemed -= e.points,
            Kind::Expire => expired -= e.points,
            Kind::Adjust => adjusted += e.points,
        }
        let related = match (e.kind, e.lot) {
            (Kind::Expire, Some(lot)) => Some(entry_ids[ledger.lots[lot].entry].as_str()),
            _ => None,
        };
        let order_ref = (e.kind == Kind::Redeem).then(|| format!("bench-order-{i}"));
        let program_version = matches!(e.kind, Kind::Earn | Kind::Adjust).then_some(0);
        entry.execute(params![
            entry_ids[i],
            contact,
            e.kind.as_str(),
            e.points,
            balance,
            e.kind.reason(),
            order_ref,
            related,
            program_version,
            stamp(e.at),
            e.kind.actor(),
            position as i64 + 1
        ])?;
    }
    let mut lot = tx.prepare_cached(
        "INSERT INTO points_lots (id, contact_id, entry_id, original, remaining, available_at,
             expires_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
    )?;
    for (l, id) in ledger.lots.iter().zip(&lot_ids) {
        lot.execute(params![
            id,
            contact,
            entry_ids[l.entry],
            l.original,
            l.remaining,
            stamp(l.earned_at),
            stamp(l.expires_at)
        ])?;
    }
    let mut allocation = tx.prepare_cached(
        "INSERT INTO points_allocations (redeem_entry_id, lot_id, points) VALUES (?1, ?2, ?3)",
    )?;
    let mut allocations = 0;
    for (e, id) in ledger.entries.iter().zip(&entry_ids) {
        for (lot, points) in &e.allocations {
            allocation.execute(params![id, lot_ids[*lot], points])?;
            allocations += 1;
        }
    }
    tx.prepare_cached(
        "INSERT INTO points_accounts (contact_id, balance, debt, earned, redeemed, expired,
             reversed, adjusted, entries)
         VALUES (?1, ?2, 0, ?3, ?4, ?5, 0, ?6, ?7)",
    )?
    .execute(params![
        contact,
        balance,
        earned,
        redeemed,
        expired,
        adjusted,
        order.len() as i64
    ])?;
    let (entries, lots) = (ledger.entries.len() as u64, ledger.lots.len() as u64);
    written.entries += entries;
    written.lots += lots;
    written.rows += entries + lots + allocations + 1;
    Ok(())
}

/// Writes the contacts and their points straight into Kizuna's schema,
/// in large transactions, with `synchronous = OFF` for speed (the file is
/// checkpointed and synced at the end).
fn preload(
    path: &Path,
    contacts: u64,
    hot: u64,
    hot_ledger: &Ledger,
    now: u64,
) -> anyhow::Result<Written> {
    let mut connection = Connection::open(path)?;
    connection.execute_batch(
        "PRAGMA synchronous = OFF; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    )?;
    let mode: String = connection.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    ensure!(
        mode == "wal",
        "the migration should have set WAL, found {mode}"
    );
    // Every contact existed before its first points.
    let created = stamp(now - 800 * DAY_MS);
    let mut pick = Lcg(0x0b0b_0002);
    let mut seq = 0;
    let mut written = Written::default();
    let mut next = 0;
    while next < contacts {
        let end = (next + PRELOAD_BATCH).min(contacts);
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for i in next..end {
            let id = contact_id(i);
            let email = format!("user{i}@example.jp");
            let name = format!("Bench User {i}");
            tx.prepare_cached(
                "INSERT INTO contacts (id, email, phone, name, attributes, lifecycle_stage, source,
                     created_at, created_by, updated_at, updated_by)
                 VALUES (?1, ?2, ?3, ?4, '{}', 'customer', 'bench', ?5, 'bench', ?5, 'bench')",
            )?
            .execute(params![id, email, format!("+8190{i:08}"), name, created])?;
            // What `refresh_search_terms` stores: the folded email and name.
            let mut search =
                tx.prepare_cached("INSERT INTO contact_search (term, contact_id) VALUES (?1, ?2)")?;
            search.execute(params![search_fold(&email), id])?;
            search.execute(params![search_fold(&name), id])?;
            written.rows += 3;
            if i == hot {
                write_ledger(&tx, &id, hot_ledger, &mut seq, &mut written)?;
            } else {
                let ledger = small_ledger(&mut pick, now);
                write_ledger(&tx, &id, &ledger, &mut seq, &mut written)?;
            }
        }
        tx.commit()?;
        next = end;
    }
    settle(&connection, path)?;
    Ok(written)
}

/// The number of accounts whose ledger does not add up: entries against
/// the running balance, the lifetime totals and the open lots less debt.
fn broken_accounts(connection: &Connection) -> anyhow::Result<i64> {
    Ok(connection.query_row(
        "SELECT count(*) FROM points_accounts a
         WHERE a.balance != a.earned - a.redeemed - a.expired - a.reversed + a.adjusted
            OR a.balance != (SELECT COALESCE(SUM(points), 0) FROM points_entries e
                             WHERE e.contact_id = a.contact_id)
            OR a.balance != (SELECT COALESCE(SUM(remaining), 0) FROM points_lots l
                             WHERE l.contact_id = a.contact_id AND l.remaining > 0) - a.debt",
        [],
        |r| r.get(0),
    )?)
}

/// The hot contact's ledger as stored.
#[derive(Debug)]
struct HotState {
    entries: i64,
    redeems: i64,
    entry_sum: i64,
    remaining: i64,
    open_lots: i64,
    debt: i64,
    balance: i64,
    totals: i64,
}

impl HotState {
    fn read(connection: &Connection, hot: &str) -> anyhow::Result<HotState> {
        let (entries, redeems, entry_sum) = connection.query_row(
            "SELECT count(*), count(*) FILTER (WHERE kind = 'redeem'), COALESCE(SUM(points), 0)
             FROM points_entries WHERE contact_id = ?1",
            [hot],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let (remaining, open_lots) = connection.query_row(
            "SELECT COALESCE(SUM(remaining), 0), count(*) FROM points_lots
             WHERE contact_id = ?1 AND remaining > 0",
            [hot],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (debt, balance, totals) = connection.query_row(
            "SELECT debt, balance, earned - redeemed - expired - reversed + adjusted
             FROM points_accounts WHERE contact_id = ?1",
            [hot],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(HotState {
            entries,
            redeems,
            entry_sum,
            remaining,
            open_lots,
            debt,
            balance,
            totals,
        })
    }

    /// `sum(entries) = sum(lots.remaining) - debt`, and the account's
    /// running balance and totals agree with the entries.
    fn adds_up(&self) -> bool {
        self.entry_sum == self.remaining - self.debt
            && self.balance == self.entry_sum
            && self.totals == self.entry_sum
    }
}

fn balance_reads(host: &Host, hot: &str, requests: u64, available: i64) -> Stats {
    let authorization = format!("Bearer {POINTS_KEY}");
    let uri = format!("/v1/points/{hot}");
    measure("balance read", requests, |j| {
        let req = request(
            "GET",
            &uri,
            &[("authorization", &authorization)],
            Bytes::new(),
        );
        let started = Instant::now();
        let response = host.handle(req);
        let elapsed = started.elapsed();
        assert_eq!(
            response.status(),
            200,
            "balance read {j}: {}",
            body_text(&response)
        );
        let balance: Json = serde_json::from_slice(response.body()).expect("balance answers JSON");
        assert!(
            balance["available"] == available && balance["debt"] == 0,
            "balance read {j}: {balance}"
        );
        elapsed
    })
}

fn redeems(host: &Host, hot: &str, requests: u64, available: i64) -> Stats {
    let authorization = format!("Bearer {POINTS_KEY}");
    let body = json!({"contact_id": hot, "points": 1}).to_string();
    measure("redeem", requests, |j| {
        let key = format!("bench-redeem-{j}");
        let req = request(
            "POST",
            "/v1/points/redeem",
            &[
                ("authorization", &authorization),
                ("content-type", "application/json"),
                ("idempotency-key", &key),
            ],
            body.clone(),
        );
        let started = Instant::now();
        let response = host.handle(req);
        let elapsed = started.elapsed();
        assert_eq!(
            response.status(),
            201,
            "redeem {j}: {}",
            body_text(&response)
        );
        let answer: Json = serde_json::from_slice(response.body()).expect("redeem answers JSON");
        assert!(
            answer["entry_id"].is_string()
                && answer["balance"]["available"] == available - j as i64 - 1,
            "redeem {j}: {answer}"
        );
        elapsed
    })
}

/// The hot contact's available points by the baseline's query, now.
fn available_now(connection: &Connection, hot: &str) -> anyhow::Result<i64> {
    let at = timestamp::format(OffsetDateTime::now_utc());
    Ok(connection.query_row(BASELINE_SUM, params![hot, at], |r| r.get(0))?)
}

fn baseline(path: &Path, hot: &str, requests: u64, available: i64) -> anyhow::Result<Stats> {
    let connection = open_baseline(path)?;
    let at = timestamp::format(OffsetDateTime::now_utc());
    let plan = query_plan(&connection, BASELINE_SUM, params![hot, at])?;
    println!("baseline SUM query plan:");
    for step in &plan {
        println!("  {step}");
    }
    ensure!(
        plan.iter().any(|s| s.contains("points_lots_open_idx")),
        "the baseline SUM does not use points_lots_open_idx"
    );
    let mut sum = connection.prepare(BASELINE_SUM)?;
    Ok(measure("baseline SUM", requests, |j| {
        let at = timestamp::format(OffsetDateTime::now_utc());
        let started = Instant::now();
        let found: i64 = sum
            .query_row(params![hot, at], |r| r.get(0))
            .expect("baseline SUM");
        let elapsed = started.elapsed();
        assert_eq!(found, available, "baseline SUM {j}");
        elapsed
    }))
}

fn run(options: &Options, dir: &Path) -> anyhow::Result<()> {
    let host = build_host(dir)?;
    let database = host.database_path();
    let hot_index = options.contacts / 2;
    let hot = contact_id(hot_index);

    println!(
        "bench-points: {} contacts, hot contact with {} ledger entries and {} open lots, {} requests per scenario",
        options.contacts, options.entries, options.lots, options.requests
    );
    print_machine();
    println!("directory: {}", dir.display());

    // The first request runs the migrations (and switches the file to WAL).
    let first = host.handle(request(
        "GET",
        "/v1/points/program",
        &[("authorization", &format!("Bearer {POINTS_KEY}"))],
        Bytes::new(),
    ));
    ensure!(
        first.status() == 200,
        "first request failed: {}",
        body_text(&first)
    );

    let now = now_ms();
    let plan = hot_ledger(options.entries, options.lots, options.requests, now);
    let started = Instant::now();
    let written = preload(&database, options.contacts, hot_index, &plan, now)?;
    let took = started.elapsed();
    println!(
        "preload: {} contacts, {} ledger entries, {} lots ({} rows in all) in {:.2} s ({:.0} rows/s), {:.1} MiB",
        options.contacts,
        written.entries,
        written.lots,
        written.rows,
        took.as_secs_f64(),
        written.rows as f64 / took.as_secs_f64(),
        mib(file_size(&database))
    );
    let (first_expiry, last_expiry) = plan.open_lots().fold((u64::MAX, 0), |(lo, hi), l| {
        (lo.min(l.expires_at), hi.max(l.expires_at))
    });
    let available = plan.available();
    println!(
        "hot contact {hot}: {} entries ({} earn, {} redeem, {} expire, {} adjust), \
         {} open lots of {}, {available} points available, expiring {} to {}",
        plan.entries.len(),
        plan.count(Kind::Earn),
        plan.count(Kind::Redeem),
        plan.count(Kind::Expire),
        plan.count(Kind::Adjust),
        plan.open_lots().count(),
        plan.lots.len(),
        &stamp(first_expiry)[..10],
        &stamp(last_expiry)[..10],
    );

    let check = Connection::open(&database)?;
    let before = HotState::read(&check, &hot)?;
    let broken = broken_accounts(&check)?;
    drop(check);
    assert!(
        before.adds_up()
            && before.entries == i64::try_from(options.entries)?
            && before.open_lots == i64::try_from(options.lots)?
            && before.remaining == available,
        "the preloaded hot contact's ledger does not add up: {before:?}"
    );
    assert_eq!(
        broken, 0,
        "{broken} preloaded accounts whose ledger does not add up"
    );
    println!(
        "preloaded ledgers add up: sum(entries) = sum(open lots' remaining) - debt for every contact"
    );

    let reads = balance_reads(&host, &hot, options.requests, available);
    let base = baseline(&database, &hot, options.requests, available)?;
    let redeemed = redeems(&host, &hot, options.requests, available);

    println!();
    print_table(&[&reads, &redeemed, &base]);
    println!();
    print_ratios(&[
        ("balance read / baseline SUM", &reads, &base),
        ("redeem / baseline SUM", &redeemed, &base),
    ]);

    let check = Connection::open(&database)?;
    let after = HotState::read(&check, &hot)?;
    let available_after = available_now(&check, &hot)?;
    drop(check);
    let requests = i64::try_from(options.requests)?;
    println!();
    println!("kizuna database: {}", database_size(&database));
    println!(
        "hot contact after the run: {} entries, {} redeem entries (was {}, expected +{requests}), \
         {available_after} points available (was {available}), {} open lots; \
         sum(entries) {} = sum(remaining) {} - debt {}: {}",
        after.entries,
        after.redeems,
        before.redeems,
        after.open_lots,
        after.entry_sum,
        after.remaining,
        after.debt,
        if after.adds_up() { "holds" } else { "BROKEN" },
    );
    ensure!(
        after.redeems == before.redeems + requests && after.entries == before.entries + requests,
        "expected {requests} more redeem entries, found {} (was {})",
        after.redeems,
        before.redeems
    );
    ensure!(
        available_after == available - requests,
        "expected {} points available after the run, found {available_after}",
        available - requests
    );
    ensure!(
        after.adds_up(),
        "the hot contact's ledger no longer adds up: {after:?}"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let Some(options) = parse_options()? else {
        return Ok(());
    };
    run_in_dir(&options.dir, |dir| run(&options, dir))
}
