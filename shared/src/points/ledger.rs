//! Every movement of points, inside the caller's `BEGIN IMMEDIATE`
//! transaction: entries (append-only), lots (what is left of each credit),
//! allocations (which lots a redemption drew from) and debt.
//!
//! Per contact, after every call: `sum(entries) = sum(lots.remaining) -
//! debt`, no lot below zero or above its original, and a redemption never
//! takes more than is available. Balances are derived from lots and the
//! clock at read time; nothing depends on a scheduled job.

use crate::error::ApiError;
use crate::ids::new_id;
use crate::ports::{Db, Value};
use crate::timestamp;
use anyhow::Context as _;
use serde::Serialize;
use time::{Duration, OffsetDateTime};

/// The closed set of ledger entry kinds, with their one storage mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Earn,
    Redeem,
    Expire,
    Cancel,
    Adjust,
    Reverse,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Earn => "earn",
            Kind::Redeem => "redeem",
            Kind::Expire => "expire",
            Kind::Cancel => "cancel",
            Kind::Adjust => "adjust",
            Kind::Reverse => "reverse",
        }
    }

    /// The event an entry of this kind is (`events::TOPICS`). A
    /// cancelled order's earn taken back is a reversal, as is a refund's.
    pub fn topic(self) -> &'static str {
        match self {
            Kind::Earn => "points.earned",
            Kind::Redeem => "points.redeemed",
            Kind::Expire => "points.expired",
            Kind::Cancel | Kind::Reverse => "points.reversed",
            Kind::Adjust => "points.adjusted",
        }
    }

    /// The lifetime total an entry of this kind moves.
    fn total_column(self, points: i64) -> (&'static str, i64) {
        match self {
            Kind::Earn => ("earned", points),
            Kind::Redeem => ("redeemed", -points),
            Kind::Expire => ("expired", -points),
            Kind::Cancel => ("reversed", -points),
            Kind::Adjust => ("adjusted", points),
            // A positive reversal gives back redeemed points.
            Kind::Reverse if points > 0 => ("redeemed", -points),
            Kind::Reverse => ("reversed", -points),
        }
    }
}

/// An entry to append. `points` is signed.
#[derive(Debug, Clone, Default)]
pub struct NewEntry<'a> {
    pub kind: Option<Kind>,
    pub points: i64,
    pub reason: Option<&'a str>,
    pub order_id: Option<&'a str>,
    pub order_ref: Option<&'a str>,
    pub refund_id: Option<&'a str>,
    pub related_entry_id: Option<&'a str>,
    pub program_version: Option<i64>,
}

impl<'a> NewEntry<'a> {
    pub fn new(kind: Kind, points: i64) -> NewEntry<'a> {
        NewEntry {
            kind: Some(kind),
            points,
            ..NewEntry::default()
        }
    }
}

/// An appended entry, and the account's debt after it.
struct Appended {
    id: String,
    debt: i64,
}

/// Appends `entry`, keeping the account's running sum and totals.
async fn append(
    db: &impl Db,
    contact_id: &str,
    entry: &NewEntry<'_>,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<Appended> {
    let kind = entry.kind.context("an entry needs a kind")?;
    let (column, amount) = kind.total_column(entry.points);
    // `column` comes from the closed set above, never from input. The
    // first entry opens the account.
    let rows = db
        .execute(
            &format!(
                "INSERT INTO points_accounts (contact_id, balance, {column}, entries) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (contact_id) DO UPDATE SET balance = balance + ?2,
                     {column} = {column} + ?3, entries = entries + 1
                 RETURNING balance, entries, debt"
            ),
            &[contact_id.into(), entry.points.into(), amount.into()],
        )
        .await
        .context("failed to update a points account")?;
    let account = rows.first().context("points account")?;
    let (balance_after, seq) = (account.i64("balance")?, account.i64("entries")?);
    let debt = account.i64("debt")?;
    let id = new_id(now);
    db.execute(
        "INSERT INTO points_entries (id, contact_id, kind, points, balance_after, reason, order_id, order_ref,
             refund_id, related_entry_id, program_version, created_at, created_by, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        &[
            id.as_str().into(),
            contact_id.into(),
            kind.as_str().into(),
            entry.points.into(),
            balance_after.into(),
            entry.reason.into(),
            entry.order_id.into(),
            entry.order_ref.into(),
            entry.refund_id.into(),
            entry.related_entry_id.into(),
            entry.program_version.into(),
            timestamp::format(now).into(),
            actor.into(),
            seq.into(),
        ],
    )
    .await
    .context("failed to append a points entry")?;
    Ok(Appended { id, debt })
}

/// Credits `entry.points` (> 0) into a new lot. Debt is paid first.
pub async fn credit(
    db: &impl Db,
    contact_id: &str,
    entry: &NewEntry<'_>,
    available_at: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<String> {
    anyhow::ensure!(entry.points > 0, "a credit must be positive");
    expire_due(db, Some(contact_id), actor, now).await?;
    let Appended { id: entry_id, debt } = append(db, contact_id, entry, actor, now).await?;
    db.execute(
        "INSERT INTO points_lots (id, contact_id, entry_id, original, remaining, available_at, expires_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7)",
        &[
            new_id(now).into(),
            contact_id.into(),
            entry_id.as_str().into(),
            entry.points.into(),
            timestamp::format(available_at).into(),
            expires_at.map(timestamp::format).into(),
            timestamp::format(now).into(),
        ],
    )
    .await
    .context("failed to open a points lot")?;
    pay_debt(db, contact_id, debt, now).await?;
    record_events(db, contact_id, &[(&entry_id, kind_of(entry)?)], now).await?;
    Ok(entry_id)
}

fn kind_of(entry: &NewEntry<'_>) -> anyhow::Result<Kind> {
    entry.kind.context("an entry needs a kind")
}

/// The events of entries just written for one contact, in one statement,
/// after the lots have moved: each payload, built by SQLite, carries the
/// entry (points, kind, order, related entry; not its reason or order
/// reference, which are free text) and the contact's balance after the
/// call (available, pending, debt, the next expiry and its points), so a
/// receiver can act without calling back.
async fn record_events(
    db: &impl Db,
    contact_id: &str,
    entries: &[(&str, Kind)],
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|(entry_id, kind)| serde_json::json!([new_id(now), entry_id, kind.topic()]))
        .collect();
    let [at, horizon] = balance_params(now);
    db.execute(
        &format!(
            "WITH b AS ({BALANCE_SQL})
             {} SELECT json_extract(j.value, '$[0]') AS id, json_extract(j.value, '$[2]') AS topic,
                 ?2 AS occurred_at, ?1 AS contact_id,
                 json_object('contact_id', ?1, 'entry_id', e.id, 'kind', e.kind, 'points', e.points,
                     'order_id', e.order_id, 'refund_id', e.refund_id,
                     'related_entry_id', e.related_entry_id, 'program_version', e.program_version,
                     'ledger_balance', e.balance_after, 'available', b.available,
                     'pending', b.pending, 'debt', COALESCE(b.debt, 0),
                     'next_expiry_at', b.expiring_earliest_at,
                     'next_expiry_points', b.expiring_earliest_points) AS payload
             FROM json_each(?4) AS j JOIN points_entries e ON e.id = json_extract(j.value, '$[1]'), b
             ORDER BY j.key",
            crate::events::outbox::INSERT_INTO
        ),
        &[
            contact_id.into(),
            at,
            horizon,
            serde_json::Value::Array(list).to_string().into(),
        ],
    )
    .await
    .context("failed to record points events")?;
    Ok(())
}

/// An open lot, as read for spending.
struct Lot {
    id: String,
    remaining: i64,
}

/// Unexpired lots with points left, in spending order: available ones
/// soonest-expiring first (never-expiring last), then the oldest; then,
/// if `include_pending`, pending ones by when they become available.
async fn open_lots(
    db: &impl Db,
    contact_id: &str,
    now: OffsetDateTime,
    include_pending: bool,
) -> anyhow::Result<Vec<Lot>> {
    let rows = db
        .execute(
            "SELECT id, remaining FROM points_lots
             WHERE contact_id = ?1 AND remaining > 0 AND (expires_at IS NULL OR expires_at > ?2)
               AND (?3 OR available_at <= ?2)
             ORDER BY available_at > ?2, CASE WHEN available_at > ?2 THEN available_at END,
                      expires_at IS NULL, expires_at, id",
            &[
                contact_id.into(),
                timestamp::format(now).into(),
                Value::from(include_pending),
            ],
        )
        .await
        .context("failed to read points lots")?;
    rows.iter()
        .map(|r| {
            Ok(Lot {
                id: r.str("id")?.to_owned(),
                remaining: r.i64("remaining")?,
            })
        })
        .collect()
}

async fn take_from_lot(db: &impl Db, lot_id: &str, points: i64) -> anyhow::Result<()> {
    db.execute(
        "UPDATE points_lots SET remaining = remaining - ?2 WHERE id = ?1",
        &[lot_id.into(), points.into()],
    )
    .await
    .context("failed to take points from a lot")?;
    Ok(())
}

/// Pays debt from unexpired lots, soonest-expiring first.
async fn settle_debt(db: &impl Db, contact_id: &str, now: OffsetDateTime) -> anyhow::Result<()> {
    let debt = debt(db, contact_id).await?;
    pay_debt(db, contact_id, debt, now).await
}

/// Pays `debt` (the account's, as just read) from the open lots.
async fn pay_debt(
    db: &impl Db,
    contact_id: &str,
    mut debt: i64,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    if debt == 0 {
        return Ok(());
    }
    for lot in open_lots(db, contact_id, now, true).await? {
        if debt == 0 {
            break;
        }
        let take = lot.remaining.min(debt);
        take_from_lot(db, &lot.id, take).await?;
        debt -= take;
    }
    db.execute(
        "UPDATE points_accounts SET debt = ?2 WHERE contact_id = ?1",
        &[contact_id.into(), debt.into()],
    )
    .await
    .context("failed to update debt")?;
    Ok(())
}

async fn debt(db: &impl Db, contact_id: &str) -> anyhow::Result<i64> {
    let rows = db
        .execute(
            "SELECT debt FROM points_accounts WHERE contact_id = ?1",
            &[contact_id.into()],
        )
        .await
        .context("failed to read debt")?;
    Ok(rows
        .first()
        .map(|r| r.i64("debt"))
        .transpose()?
        .unwrap_or(0))
}

/// Takes `-entry.points` (> 0) back: from `first_lot` if it is still
/// open, then from the contact's other unexpired lots, and records what
/// is still missing as debt (see the debt policy in `points`).
pub async fn debit(
    db: &impl Db,
    contact_id: &str,
    entry: &NewEntry<'_>,
    first_lot: Option<&str>,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<String> {
    anyhow::ensure!(entry.points < 0, "a debit must be negative");
    expire_due(db, Some(contact_id), actor, now).await?;
    let entry_id = append(db, contact_id, entry, actor, now).await?.id;
    let mut missing = -entry.points;
    let mut lots = open_lots(db, contact_id, now, true).await?;
    if let Some(first) = first_lot
        && let Some(index) = lots.iter().position(|l| l.id == first)
    {
        let lot = lots.remove(index);
        lots.insert(0, lot);
    }
    for lot in lots {
        if missing == 0 {
            break;
        }
        let take = lot.remaining.min(missing);
        take_from_lot(db, &lot.id, take).await?;
        missing -= take;
    }
    if missing > 0 {
        db.execute(
            "UPDATE points_accounts SET debt = debt + ?2 WHERE contact_id = ?1",
            &[contact_id.into(), missing.into()],
        )
        .await
        .context("failed to record debt")?;
    }
    record_events(db, contact_id, &[(&entry_id, kind_of(entry)?)], now).await?;
    Ok(entry_id)
}

/// Spends `points` (> 0) from available lots in spending order, recording
/// the allocation per lot. Refuses (409) when fewer are available.
pub async fn redeem(
    db: &impl Db,
    contact_id: &str,
    points: i64,
    reason: Option<&str>,
    order_ref: Option<&str>,
    actor: &str,
    now: OffsetDateTime,
) -> Result<String, ApiError> {
    expire_due(db, Some(contact_id), actor, now).await?;
    let lots = lots_to_spend(db, contact_id, points, now).await?;
    let available: i64 = lots.iter().map(|l| l.remaining).sum();
    if available < points {
        // Too few: `lots_to_spend` read every available lot.
        return Err(ApiError::InsufficientPoints { available });
    }
    let entry = NewEntry {
        reason,
        order_ref,
        ..NewEntry::new(Kind::Redeem, -points)
    };
    let entry_id = append(db, contact_id, &entry, actor, now).await?.id;
    let mut missing = points;
    for lot in lots {
        if missing == 0 {
            break;
        }
        let take = lot.remaining.min(missing);
        take_from_lot(db, &lot.id, take).await?;
        db.execute(
            "INSERT INTO points_allocations (redeem_entry_id, lot_id, points) VALUES (?1, ?2, ?3)",
            &[
                entry_id.as_str().into(),
                lot.id.as_str().into(),
                take.into(),
            ],
        )
        .await
        .context("failed to record an allocation")?;
        missing -= take;
    }
    record_events(db, contact_id, &[(&entry_id, Kind::Redeem)], now).await?;
    Ok(entry_id)
}

/// The available lots a redemption of `points` draws from, in spending
/// order, read a page at a time in the order of `points_lots_open_idx`
/// (lots that expire, soonest first, then those that never do) and
/// stopping once the amount is covered, so that a small redemption does
/// not load every open lot. Fewer than `points` in total means the
/// contact has fewer available.
async fn lots_to_spend(
    db: &impl Db,
    contact_id: &str,
    points: i64,
    now: OffsetDateTime,
) -> anyhow::Result<Vec<Lot>> {
    const PAGE: i64 = 64;
    let at = timestamp::format(now);
    let mut lots = Vec::new();
    let mut covered = 0;
    for expiring in [true, false] {
        let mut after: Option<(String, String)> = None;
        while covered < points {
            let (after_expiry, after_id) = after.clone().unzip();
            let rows = if expiring {
                db.execute(
                    "SELECT id, remaining, expires_at FROM points_lots
                     WHERE contact_id = ?1 AND remaining > 0 AND expires_at > ?2 AND available_at <= ?2
                       AND (?3 IS NULL OR (expires_at, id) > (?3, ?4))
                     ORDER BY expires_at, id LIMIT ?5",
                    &[contact_id.into(), at.as_str().into(), after_expiry.into(), after_id.into(), PAGE.into()],
                )
                .await
            } else {
                db.execute(
                    "SELECT id, remaining, '' AS expires_at FROM points_lots
                     WHERE contact_id = ?1 AND remaining > 0 AND expires_at IS NULL AND available_at <= ?2
                       AND (?3 IS NULL OR id > ?3)
                     ORDER BY id LIMIT ?4",
                    &[contact_id.into(), at.as_str().into(), after_id.into(), PAGE.into()],
                )
                .await
            }
                .context("failed to read points lots")?;
            for row in rows.iter() {
                if covered >= points {
                    break;
                }
                let remaining = row.i64("remaining")?;
                covered += remaining;
                lots.push(Lot {
                    id: row.str("id")?.to_owned(),
                    remaining,
                });
                after = Some((row.str("expires_at")?.to_owned(), row.str("id")?.to_owned()));
            }
            if rows.len() < PAGE as usize {
                break;
            }
        }
    }
    Ok(lots)
}

/// Gives back up to `points` that redemptions for `order_ref` drew, to
/// the lots they came from; points whose lot has expired meanwhile are
/// not given back (they would have expired anyway). Returns how many
/// came back.
pub async fn restore_for_order(
    db: &impl Db,
    contact_id: &str,
    order_ref: &str,
    points: i64,
    order_id: Option<&str>,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<i64> {
    expire_due(db, Some(contact_id), actor, now).await?;
    let rows = db
        .execute(
            "SELECT a.redeem_entry_id, a.lot_id, a.points - a.restored AS open_points
             FROM points_allocations a
             JOIN points_entries e ON e.id = a.redeem_entry_id
             JOIN points_lots l ON l.id = a.lot_id
             WHERE e.contact_id = ?1 AND e.order_ref = ?2 AND e.kind = 'redeem'
               AND a.restored < a.points AND (l.expires_at IS NULL OR l.expires_at > ?3)
             ORDER BY a.redeem_entry_id, l.expires_at IS NULL, l.expires_at, l.id",
            &[
                contact_id.into(),
                order_ref.into(),
                timestamp::format(now).into(),
            ],
        )
        .await
        .context("failed to read allocations")?;
    let mut left = points;
    let mut per_redeem: Vec<(String, i64)> = Vec::new();
    for row in rows.iter() {
        if left == 0 {
            break;
        }
        let give = row.i64("open_points")?.min(left);
        let (redeem_id, lot_id) = (row.str("redeem_entry_id")?, row.str("lot_id")?);
        db.execute(
            "UPDATE points_allocations SET restored = restored + ?3 WHERE redeem_entry_id = ?1 AND lot_id = ?2",
            &[redeem_id.into(), lot_id.into(), give.into()],
        )
        .await
        .context("failed to restore an allocation")?;
        take_from_lot(db, lot_id, -give).await?;
        match per_redeem.last_mut() {
            Some((id, sum)) if id == redeem_id => *sum += give,
            _ => per_redeem.push((redeem_id.to_owned(), give)),
        }
        left -= give;
    }
    let mut reversals = Vec::with_capacity(per_redeem.len());
    for (redeem_id, given) in &per_redeem {
        let entry = NewEntry {
            reason: Some("points that paid for a refunded order"),
            order_id,
            order_ref: Some(order_ref),
            related_entry_id: Some(redeem_id),
            ..NewEntry::new(Kind::Reverse, *given)
        };
        reversals.push(append(db, contact_id, &entry, actor, now).await?.id);
    }
    settle_debt(db, contact_id, now).await?;
    let events: Vec<(&str, Kind)> = reversals
        .iter()
        .map(|id| (id.as_str(), Kind::Reverse))
        .collect();
    record_events(db, contact_id, &events, now).await?;
    Ok(points - left)
}

/// Lots one sweep transaction closes at most, across contacts, soonest
/// expired first: the write lock is held for one batch, never for the
/// whole backlog. The order is `points_lots_expiry_idx`'s own, so a batch
/// reads its lots from the index and stops, instead of sorting every due
/// lot (at 100,000 due lots, a sort inside each batch's transaction).
pub const SWEEP_BATCH: usize = 200;

/// Writes `expire` entries for a contact's lots past their expiry (all of
/// them), or, without a contact, for at most [`SWEEP_BATCH`] lots of any
/// contacts; returns how many it closed. One entry per lot; idempotent:
/// an expired lot is left with nothing remaining. Inside the caller's
/// transaction.
pub async fn expire_due(
    db: &impl Db,
    contact_id: Option<&str>,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<usize> {
    let at = timestamp::format(now);
    // Two statements, so that the per-contact one (run before every write)
    // searches `points_lots_open_idx` by contact instead of every
    // contact's expired lots.
    let rows = match contact_id {
        Some(contact_id) => {
            db.execute(
                "SELECT id, contact_id, entry_id, remaining FROM points_lots
             WHERE contact_id = ?2 AND remaining > 0 AND expires_at IS NOT NULL AND expires_at <= ?1
             ORDER BY expires_at, id",
                &[at.as_str().into(), contact_id.into()],
            )
            .await
        }
        None => {
            db.execute(
                "SELECT id, contact_id, entry_id, remaining FROM points_lots
             WHERE remaining > 0 AND expires_at IS NOT NULL AND expires_at <= ?1
             ORDER BY expires_at LIMIT ?2",
                &[
                    at.as_str().into(),
                    i64::try_from(SWEEP_BATCH).unwrap_or(i64::MAX).into(),
                ],
            )
            .await
        }
    }
    .context("failed to find expired lots")?;
    // Per owner, so each event carries its owner's balance after the sweep.
    let mut expired: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for row in rows.iter() {
        let (lot_id, owner, remaining) = (
            row.str("id")?,
            row.str("contact_id")?,
            row.i64("remaining")?,
        );
        take_from_lot(db, lot_id, remaining).await?;
        let entry = NewEntry {
            reason: Some("expired"),
            related_entry_id: Some(row.str("entry_id")?),
            ..NewEntry::new(Kind::Expire, -remaining)
        };
        let id = append(db, owner, &entry, actor, now).await?.id;
        expired.entry(owner).or_default().push(id);
    }
    for (owner, ids) in &expired {
        let events: Vec<(&str, Kind)> = ids.iter().map(|id| (id.as_str(), Kind::Expire)).collect();
        record_events(db, owner, &events, now).await?;
    }
    Ok(rows.len())
}

/// The points a contact lost on erasure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Forfeited {
    pub available: i64,
    pub pending: i64,
}

/// Closes every open lot of a contact with an `expire` entry, as on
/// erasure, when no one can redeem them any more; returns what was still
/// available or pending. Lots already past their expiry are written as
/// expired first: those points were lost to time, not to the erasure.
pub async fn forfeit_all(
    db: &impl Db,
    contact_id: &str,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<Forfeited> {
    expire_due(db, Some(contact_id), actor, now).await?;
    let rows = db
        .execute(
            "SELECT id, entry_id, remaining, available_at <= ?2 AS available FROM points_lots
             WHERE contact_id = ?1 AND remaining > 0 ORDER BY id",
            &[contact_id.into(), timestamp::format(now).into()],
        )
        .await
        .context("failed to read lots to forfeit")?;
    let mut forfeited = Forfeited::default();
    let mut closed = Vec::with_capacity(rows.len());
    for row in rows.iter() {
        let remaining = row.i64("remaining")?;
        take_from_lot(db, row.str("id")?, remaining).await?;
        let entry = NewEntry {
            reason: Some("forfeited on erasure"),
            related_entry_id: Some(row.str("entry_id")?),
            ..NewEntry::new(Kind::Expire, -remaining)
        };
        closed.push(append(db, contact_id, &entry, actor, now).await?.id);
        if row.i64("available")? != 0 {
            forfeited.available += remaining;
        } else {
            forfeited.pending += remaining;
        }
    }
    let events: Vec<(&str, Kind)> = closed
        .iter()
        .map(|id| (id.as_str(), Kind::Expire))
        .collect();
    record_events(db, contact_id, &events, now).await?;
    Ok(forfeited)
}

/// The most lots `GET /v1/points/{id}` lists; the rest are summarised
/// (count, available and pending points). A contact earning once per
/// order rarely holds more, and the balance above the list stays exact
/// whatever the count.
pub const LOTS_LISTED: usize = 50;

/// The balance of a live contact and its first [`LOTS_LISTED`] unexpired
/// lots with points left, soonest-expiring first (never-expiring last;
/// at one instant, the sooner available first): the order they expire
/// in, and for available ones the order redemptions spend them in. One
/// statement, so the list and the sums agree without a snapshot.
///
/// Each lot is a JSON object as the answer shows it, built by SQLite:
/// `entry_id` (the credit that opened it), `kind`, `points` (left),
/// `original`, `status` (`available`, or `pending` until `available_at`),
/// `created_at`, `available_at`, `expires_at` (null: never). (Objects
/// rather than a struct: the points component stays smaller without
/// another serde type, and nothing but the answer reads them.)
pub async fn balance_and_lots_of_live_contact(
    db: &impl Db,
    contact_id: &str,
    now: OffsetDateTime,
) -> anyhow::Result<Option<(Balance, Vec<serde_json::Value>)>> {
    let [at, horizon] = balance_params(now);
    let rows = db
        .execute(
            &format!(
                "WITH b AS ({BALANCE_SQL})
                 SELECT b.*, (SELECT json_group_array(json_object(
                         'entry_id', x.entry_id, 'kind', x.kind, 'points', x.remaining,
                         'original', x.original,
                         'status', CASE WHEN x.available_at <= ?2 THEN 'available' ELSE 'pending' END,
                         'created_at', x.created_at, 'available_at', x.available_at,
                         'expires_at', x.expires_at))
                     FROM (SELECT l.*, e.kind FROM points_lots l JOIN points_entries e ON e.id = l.entry_id
                           WHERE l.contact_id = ?1 AND {open}
                           ORDER BY l.expires_at IS NULL, l.expires_at, l.available_at, l.entry_id
                           LIMIT ?4) AS x) AS lots_json
                 FROM b",
                open = open_lot_sql("l", "?2"),
            ),
            &[
                contact_id.into(),
                at,
                horizon,
                i64::try_from(LOTS_LISTED).unwrap_or(i64::MAX).into(),
            ],
        )
        .await
        .context("failed to read a points balance and its lots")?;
    let row = rows.first().context("balance row")?;
    if row.i64("live_contact")? == 0 {
        return Ok(None);
    }
    let lots: serde_json::Value =
        serde_json::from_str(row.str("lots_json")?).context("listed lots")?;
    let serde_json::Value::Array(mut lots) = lots else {
        anyhow::bail!("listed lots are not a JSON array");
    };
    // SQLite aggregates in the subquery's order in practice, not by
    // promise: the same order again. Stored timestamps have one fixed
    // width, so their text sorts as their time.
    lots.sort_by(|a, b| {
        let key = |lot: &serde_json::Value| {
            let text = |field: &str| lot[field].as_str().map(str::to_owned);
            (
                lot["expires_at"].is_null(),
                text("expires_at"),
                text("available_at"),
                text("entry_id"),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(Some((balance_from_row(row)?, lots)))
}

/// A contact's points as one screen shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Balance {
    pub available: i64,
    pub pending: i64,
    /// When the next pending points become available.
    pub next_available_at: Option<String>,
    pub expiring_within_30_days: i64,
    /// When the next unexpired points expire, however far ahead (`None`:
    /// none expire). It once looked only 30 days ahead, beside
    /// `expiring_within_30_days`, so under the default 365-day expiry it
    /// was null until the last month of a lot's life.
    pub expiring_earliest_at: Option<String>,
    /// The points that expire at `expiring_earliest_at` (the lots ending
    /// at that instant, available or pending).
    pub expiring_earliest_points: i64,
    pub lifetime_earned: i64,
    pub redeemed: i64,
    pub expired: i64,
    pub reversed: i64,
    pub adjusted: i64,
    pub debt: i64,
    /// The ledger's running sum: available + pending - debt, plus any
    /// expired points not yet written as `expire` entries.
    pub ledger_balance: i64,
    /// How many unexpired lots hold points, for the lot listing's summary
    /// of the lots it leaves out; not part of the answer's balance.
    #[serde(skip)]
    pub open_lots: i64,
}

/// Reads the balance at `now`, from lots (indexed) and the account row.
pub async fn balance(
    db: &impl Db,
    contact_id: &str,
    now: OffsetDateTime,
) -> anyhow::Result<Balance> {
    let [at, horizon] = balance_params(now);
    let rows = db
        .execute(BALANCE_SQL, &[contact_id.into(), at, horizon])
        .await
        .context("failed to read a points balance")?;
    balance_from_row(rows.first().context("balance row")?)
}

/// A contact's balance as one row: the lots' sums, the account row
/// beside them (absent before the first entry), and whether the contact
/// is live. Parameters: `?1` the contact id, then [`balance_params`].
/// Other reads embed it (`WITH b AS (…)`) to answer in one statement.
pub const BALANCE_SQL: &str = "
    SELECT l.*, a.balance, a.debt, a.earned, a.redeemed, a.expired, a.reversed, a.adjusted,
           (SELECT COALESCE(SUM(remaining), 0) FROM points_lots
            WHERE contact_id = ?1 AND remaining > 0 AND expires_at = l.expiring_earliest_at)
               AS expiring_earliest_points,
           EXISTS (SELECT 1 FROM contacts WHERE id = ?1 AND erased_at IS NULL) AS live_contact
    FROM (SELECT
      COALESCE(SUM(CASE WHEN live AND available_at <= ?2 THEN remaining END), 0) AS available,
      COALESCE(SUM(CASE WHEN live AND available_at > ?2 THEN remaining END), 0) AS pending,
      MIN(CASE WHEN live AND available_at > ?2 THEN available_at END) AS next_available_at,
      COALESCE(SUM(CASE WHEN live AND expires_at <= ?3 THEN remaining END), 0) AS expiring,
      MIN(CASE WHEN live THEN expires_at END) AS expiring_earliest_at,
      COUNT(CASE WHEN live THEN 1 END) AS open_lots,
      COALESCE(SUM(CASE WHEN NOT live THEN remaining END), 0) AS unswept
    FROM (SELECT *, (expires_at IS NULL OR expires_at > ?2) AS live FROM points_lots
          WHERE contact_id = ?1 AND remaining > 0)) AS l
    LEFT JOIN points_accounts a ON a.contact_id = ?1";

/// The SQL condition a lot of `points_lots` (aliased `lot`) meets while
/// it still holds points at `now` (a parameter such as `?2`): what
/// [`BALANCE_SQL`] calls `live`, for the queries that read lots beside it
/// (the balance's lot list, look-up summaries, segment members' points).
pub fn open_lot_sql(lot: &str, now: &str) -> String {
    format!("{lot}.remaining > 0 AND ({lot}.expires_at IS NULL OR {lot}.expires_at > {now})")
}

/// `?2` and `?3` of [`BALANCE_SQL`]: now, and the end of the 30 days
/// whose expiries are "expiring".
pub fn balance_params(now: OffsetDateTime) -> [Value; 2] {
    [
        timestamp::format(now).into(),
        timestamp::format(now + Duration::days(30)).into(),
    ]
}

/// The balance in a row holding [`BALANCE_SQL`]'s columns.
pub fn balance_from_row(row: crate::ports::Row<'_>) -> anyhow::Result<Balance> {
    let get = |column: &str| -> anyhow::Result<i64> { Ok(row.opt_i64(column)?.unwrap_or(0)) };
    Ok(Balance {
        available: row.i64("available")?,
        pending: row.i64("pending")?,
        next_available_at: row.opt_str("next_available_at")?.map(str::to_owned),
        expiring_within_30_days: row.i64("expiring")?,
        expiring_earliest_at: row.opt_str("expiring_earliest_at")?.map(str::to_owned),
        expiring_earliest_points: row.i64("expiring_earliest_points")?,
        lifetime_earned: get("earned")?,
        redeemed: get("redeemed")?,
        // Expired but not yet written as `expire` entries: expired all the same.
        expired: get("expired")? + row.i64("unswept")?,
        reversed: get("reversed")?,
        adjusted: get("adjusted")?,
        debt: get("debt")?,
        ledger_balance: get("balance")?,
        open_lots: row.i64("open_lots")?,
    })
}
