//! The purchase-ingestion hook: runs in the same transaction as the
//! order, after `purchases::ingest::apply`.
//!
//! - A paid order earns once (a unique index on the earn's order id).
//! - A cancel takes back everything the order earned.
//! - Refunds take back a share: the order keeps `floor(earned × (total −
//!   refunded) / total)` points and the rest is reversed. Computed from
//!   the cumulative refunded amount, so several partial refunds add up to
//!   exactly the full reversal; the customer's share is rounded down like
//!   every earn, so a reversal rounds up.
//! - Points that paid for the order (redemptions whose `order_ref` is the
//!   shop's order id) come back in the same proportion: all on a cancel,
//!   `floor(redeemed × refunded / total)` on refunds, to their original
//!   lots while those have not expired.
//!
//! Every step compares what should have happened with what the ledger
//! already holds, so a repeated or reordered event changes nothing twice.

use super::ledger::{self, Kind, NewEntry};
use super::program::{self, EarnLine, EarnOrder};
use crate::ports::Db;
use crate::purchases::Source;
use crate::purchases::ingest::Applied;
use crate::timestamp;
use anyhow::Context as _;
use time::{OffsetDateTime, UtcOffset};

/// Earns, takes back and restores the points of the order `applied`
/// touched; expiries at a month end count in the shop's time zone `shop`
/// (`Config::shop_offset`).
pub async fn on_order(
    db: &impl Db,
    source: Source,
    applied: &Applied,
    now: OffsetDateTime,
    shop: UtcOffset,
) -> anyhow::Result<()> {
    let Some(order_id) = applied.order_id.as_deref() else {
        return Ok(());
    };
    let rows = db
        .execute(
            "SELECT o.contact_id, o.external_id, o.order_number, o.subtotal_minor, o.total_minor, o.points_used,
                    o.placed_at, o.paid, o.cancelled, o.refunded_minor, o.status
             FROM orders o JOIN contacts c ON c.id = o.contact_id
             WHERE o.id = ?1 AND c.erased_at IS NULL",
            &[order_id.into()],
        )
        .await
        .context("failed to read an order for points")?;
    // Guest orders and erased customers earn nothing.
    let Some(order) = rows.first() else {
        return Ok(());
    };
    let contact_id = order.str("contact_id")?.to_owned();
    let external_id = order.str("external_id")?.to_owned();
    let total = order.i64("total_minor")?;
    let refunded = order.i64("refunded_minor")?;
    let cancelled = order.i64("cancelled")? != 0;
    let actor = format!("webhook:{}", source.as_str());

    let mut earn = earn_of(db, order_id).await?;
    let earns = order.i64("paid")? != 0 && !cancelled && order.str("status")? != "refunded";
    if earn.is_none() && earns {
        let program = program::current(db).await?;
        let lines = db
            .execute(
                "SELECT sku, category, line_total_minor FROM order_lines WHERE order_id = ?1 ORDER BY line_no",
                &[order_id.into()],
            )
            .await
            .context("failed to read order lines")?;
        let tags = db
            .execute(
                "SELECT tag FROM contact_tags WHERE contact_id = ?1",
                &[contact_id.as_str().into()],
            )
            .await
            .context("failed to read tags")?;
        let input = EarnOrder {
            subtotal: order.i64("subtotal_minor")?,
            total,
            points_used: order.i64("points_used")?,
            placed_at: timestamp::parse(order.str("placed_at")?).context("stored placed_at")?,
            lines: lines
                .iter()
                .map(|l| {
                    Ok(EarnLine {
                        sku: l.opt_str("sku")?.map(str::to_owned),
                        category: l.opt_str("category")?.map(str::to_owned),
                        total: l.i64("line_total_minor")?,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let tags: Vec<String> = tags
            .iter()
            .map(|r| r.str("tag").map(str::to_owned))
            .collect::<Result<_, _>>()?;
        let points = program.rules.points_for(&input, &tags);
        if points > 0 {
            let reason = format!(
                "order {}",
                order.opt_str("order_number")?.unwrap_or(&external_id)
            );
            let entry = NewEntry {
                reason: Some(&reason),
                order_id: Some(order_id),
                program_version: Some(program.version),
                ..NewEntry::new(Kind::Earn, points)
            };
            let available_at = program.rules.available_at(now);
            let expires_at = program.rules.expires_at(now, shop);
            let earn_id = ledger::credit(
                db,
                &contact_id,
                &entry,
                available_at,
                expires_at,
                &actor,
                now,
            )
            .await?;
            earn = Some((earn_id, points));
        }
    }

    if let Some((earn_id, earned)) = &earn {
        let keep = if cancelled {
            0
        } else if refunded > 0 && total > 0 {
            let kept =
                i128::from(*earned) * i128::from((total - refunded).max(0)) / i128::from(total);
            i64::try_from(kept).unwrap_or(0)
        } else {
            *earned
        };
        let target = earned - keep;
        // Nothing to take back (the usual paid order): no reads for it.
        if target > 0 {
            reverse_earn(
                db,
                &contact_id,
                order_id,
                earn_id,
                *earned,
                target,
                cancelled,
                &actor,
                now,
            )
            .await?;
        }
    }

    if cancelled || refunded > 0 {
        let (redeemed, restored) = redeemed_for(db, &contact_id, &external_id).await?;
        if redeemed > 0 {
            let target = if cancelled || total == 0 {
                redeemed
            } else {
                let share =
                    i128::from(redeemed) * i128::from(refunded.min(total)) / i128::from(total);
                i64::try_from(share).unwrap_or(redeemed)
            };
            if target > restored {
                ledger::restore_for_order(
                    db,
                    &contact_id,
                    &external_id,
                    target - restored,
                    Some(order_id),
                    &actor,
                    now,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Takes back up to `target` of an order's earn (`earned` points, entry
/// `earn_id`), less what was taken back already and what expired.
#[allow(clippy::too_many_arguments)]
async fn reverse_earn(
    db: &impl Db,
    contact_id: &str,
    order_id: &str,
    earn_id: &str,
    earned: i64,
    target: i64,
    cancelled: bool,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    let already = taken_back(db, earn_id).await?;
    // Points of this earn that expired are gone already: taking them
    // back again would charge the customer twice.
    ledger::expire_due(db, Some(contact_id), actor, now).await?;
    let takeable = earned - already - expired_from(db, earn_id).await?;
    let reverse = (target - already).min(takeable);
    if reverse > 0 {
        let entry = NewEntry {
            reason: Some(if cancelled {
                "order cancelled"
            } else {
                "order refunded"
            }),
            order_id: Some(order_id),
            related_entry_id: Some(earn_id),
            ..NewEntry::new(Kind::Reverse, -reverse)
        };
        let lot = lot_of(db, earn_id).await?;
        ledger::debit(db, contact_id, &entry, lot.as_deref(), actor, now).await?;
    }
    Ok(())
}

/// The earn entry of an order: (entry id, points).
async fn earn_of(db: &impl Db, order_id: &str) -> anyhow::Result<Option<(String, i64)>> {
    let rows = db
        .execute(
            "SELECT id, points FROM points_entries WHERE order_id = ?1 AND kind = 'earn'",
            &[order_id.into()],
        )
        .await
        .context("failed to read an earn")?;
    rows.first()
        .map(|r| Ok((r.str("id")?.to_owned(), r.i64("points")?)))
        .transpose()
}

/// Points already taken back from an earn by reversals and cancels.
pub async fn taken_back(db: &impl Db, earn_id: &str) -> anyhow::Result<i64> {
    let rows = db
        .execute(
            "SELECT COALESCE(-SUM(points), 0) AS taken FROM points_entries
             WHERE related_entry_id = ?1 AND kind IN ('reverse', 'cancel') AND points < 0",
            &[earn_id.into()],
        )
        .await
        .context("failed to sum reversals")?;
    rows.first().context("sum row")?.i64("taken")
}

/// Points of an earn that expired (materialised `expire` entries).
pub async fn expired_from(db: &impl Db, earn_id: &str) -> anyhow::Result<i64> {
    let rows = db
        .execute(
            "SELECT COALESCE(-SUM(points), 0) AS expired FROM points_entries
             WHERE related_entry_id = ?1 AND kind = 'expire'",
            &[earn_id.into()],
        )
        .await
        .context("failed to sum expiries")?;
    rows.first().context("sum row")?.i64("expired")
}

/// The lot an entry opened.
pub async fn lot_of(db: &impl Db, entry_id: &str) -> anyhow::Result<Option<String>> {
    let rows = db
        .execute(
            "SELECT id FROM points_lots WHERE entry_id = ?1",
            &[entry_id.into()],
        )
        .await
        .context("failed to read a lot")?;
    rows.first()
        .map(|r| r.str("id").map(str::to_owned))
        .transpose()
}

/// Points redeemed for the shop's order `order_ref`, and how many of them
/// have already been given back.
async fn redeemed_for(
    db: &impl Db,
    contact_id: &str,
    order_ref: &str,
) -> anyhow::Result<(i64, i64)> {
    let rows = db
        .execute(
            "SELECT COALESCE(-SUM(CASE WHEN kind = 'redeem' THEN points END), 0) AS redeemed,
                    COALESCE(SUM(CASE WHEN kind = 'reverse' AND points > 0 THEN points END), 0) AS restored
             FROM points_entries WHERE contact_id = ?1 AND order_ref = ?2",
            &[contact_id.into(), order_ref.into()],
        )
        .await
        .context("failed to sum redemptions")?;
    let row = rows.first().context("sum row")?;
    Ok((row.i64("redeemed")?, row.i64("restored")?))
}
