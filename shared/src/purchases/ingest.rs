//! Applying one order event inside the caller's `BEGIN IMMEDIATE`
//! transaction: the customer, the order and its lines, refunds, the
//! contact's counters and lifecycle, and timeline entries, all or nothing.
//!
//! Every step is idempotent and order-independent: `paid` and `cancelled`
//! only ever turn on, refunds are keyed by their own ids, details from a
//! payload older than the stored one are ignored, and counters are
//! recomputed from the orders rather than incremented. So a repeat, a
//! `paid` after `cancelled`, or a refund before its order all end where
//! in-order delivery would.

use super::model::{Event, Order, OrderStatus, Refund, Source};
use crate::contact::{self, FirstTouch, WritePolicy};
use crate::error::ApiError;
use crate::ids::new_id;
use crate::ports::{Db, Value};
use crate::timeline::{self, Entry, Kind};
use crate::timestamp;
use anyhow::Context as _;
use serde_json::json;
use time::OffsetDateTime;

/// What an event changed; the points ledger hooks onto this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub order_id: Option<String>,
    pub contact_id: Option<String>,
    /// The order became paid with this event.
    pub newly_paid: bool,
    /// The order became cancelled with this event.
    pub newly_cancelled: bool,
    /// Refunds recorded for the first time: (refund row id, amount).
    pub new_refunds: Vec<(String, i64)>,
}

/// Applies `event` and records the order events it caused (none for a
/// repeat: only what changed is an event); call inside a transaction.
pub async fn apply(
    db: &impl Db,
    source: Source,
    event: &Event,
    now: OffsetDateTime,
) -> Result<Applied, ApiError> {
    let applied = apply_event(db, source, event, now).await?;
    record_events(db, &applied, now).await?;
    Ok(applied)
}

/// `order.paid`, `order.cancelled` and one `order.refunded` per new
/// refund, in that order, in one statement. Each payload is built by
/// SQLite from the order as it now stands (the refund's own id and
/// amount added), so a receiver sees the same totals as `GET` would.
/// A refund whose order has not arrived yet becomes an event when the
/// order does (`apply_order` reports early refunds as new).
async fn record_events(db: &impl Db, applied: &Applied, now: OffsetDateTime) -> anyhow::Result<()> {
    let Some(order_id) = &applied.order_id else {
        return Ok(());
    };
    let mut events = Vec::new();
    if applied.newly_paid {
        events.push(json!([new_id(now), "order.paid", {}]));
    }
    if applied.newly_cancelled {
        events.push(json!([new_id(now), "order.cancelled", {}]));
    }
    for (refund_id, amount) in &applied.new_refunds {
        let refund = json!({"refund_id": refund_id, "refund_minor": amount});
        events.push(json!([new_id(now), "order.refunded", refund]));
    }
    if events.is_empty() {
        return Ok(());
    }
    db.execute(
        &format!(
            "{} SELECT json_extract(j.value, '$[0]') AS id, json_extract(j.value, '$[1]') AS topic,
                 ?2 AS occurred_at, o.contact_id AS contact_id,
                 json_patch(json_object('order_id', o.id, 'contact_id', o.contact_id,
                     'source', o.source, 'external_id', o.external_id, 'number', o.order_number,
                     'status', o.status, 'currency', o.currency, 'total_minor', o.total_minor,
                     'refunded_minor', o.refunded_minor, 'points_used', o.points_used,
                     'placed_at', o.placed_at,
                     'line_count', (SELECT count(*) FROM order_lines WHERE order_id = o.id)),
                   json_extract(j.value, '$[2]')) AS payload
             FROM json_each(?3) AS j, orders o WHERE o.id = ?1 ORDER BY j.key",
            crate::events::outbox::INSERT_INTO
        ),
        &[
            order_id.as_str().into(),
            timestamp::format(now).into(),
            serde_json::Value::Array(events).to_string().into(),
        ],
    )
    .await
    .context("failed to record order events")?;
    Ok(())
}

async fn apply_event(
    db: &impl Db,
    source: Source,
    event: &Event,
    now: OffsetDateTime,
) -> Result<Applied, ApiError> {
    match event {
        Event::Ignored(_) => Ok(Applied::default()),
        Event::Order(order) => apply_order(db, source, order, now).await,
        Event::Refund {
            order_external_id,
            currency,
            refund,
        } => {
            let mut applied = Applied::default();
            if let Some(new) =
                insert_refund(db, source, order_external_id, currency.code(), refund, now).await?
            {
                applied.new_refunds.push(new);
            }
            if let Some((order_id, contact_id)) = find_order(db, source, order_external_id).await? {
                refresh_order(db, &order_id).await?;
                if let Some(contact_id) = &contact_id {
                    note_refunds(db, source, contact_id, &order_id, &applied.new_refunds, now)
                        .await?;
                    refresh_contact(db, contact_id).await?;
                }
                applied.order_id = Some(order_id);
                applied.contact_id = contact_id;
            }
            Ok(applied)
        }
    }
}

/// The order (row id, contact id) for a source's external id.
pub async fn find_order(
    db: &impl Db,
    source: Source,
    external_id: &str,
) -> anyhow::Result<Option<(String, Option<String>)>> {
    let rows = db
        .execute(
            "SELECT id, contact_id FROM orders WHERE source = ?1 AND external_id = ?2",
            &[source.as_str().into(), external_id.into()],
        )
        .await
        .context("failed to look up an order")?;
    rows.first()
        .map(|r| {
            Ok((
                r.str("id")?.to_owned(),
                r.opt_str("contact_id")?.map(str::to_owned),
            ))
        })
        .transpose()
}

/// The contact an order belongs to: the shop's customer id for this
/// source, then email, then phone; otherwise a new contact with source
/// `webhook:<source>`. Webhook data only fills empty fields. A guest with
/// no contact details at all stays unlinked.
async fn match_customer(
    db: &impl Db,
    source: Source,
    order: &Order,
    now: OffsetDateTime,
) -> Result<Option<String>, ApiError> {
    let customer = &order.customer;
    let at = timestamp::format(now);
    let actor = format!("webhook:{}", source.as_str());
    let by_external = match &customer.external_id {
        Some(external_id) => {
            let rows = db
                .execute(
                    "SELECT x.contact_id FROM contact_external_ids x JOIN contacts c ON c.id = x.contact_id
                     WHERE x.source = ?1 AND x.external_id = ?2 AND c.erased_at IS NULL",
                    &[source.as_str().into(), external_id.as_str().into()],
                )
                .await
                .context("failed to match a customer id")?;
            rows.first()
                .map(|r| r.str("contact_id").map(str::to_owned))
                .transpose()?
        }
        None => None,
    };
    let found = match by_external {
        Some(id) => Some(id),
        None => contact::resolve(db, &customer.profile, None).await?,
    };
    let id = match found {
        Some(id) => {
            contact::update(
                db,
                &id,
                &customer.profile,
                None,
                WritePolicy::FillEmpty,
                &actor,
                &at,
            )
            .await?;
            id
        }
        None if customer.profile.is_empty_identity() && customer.external_id.is_none() => {
            return Ok(None);
        }
        None => {
            let id = new_id(now);
            let touch = FirstTouch {
                source: actor.clone(),
                ..FirstTouch::default()
            };
            contact::insert(db, &id, &customer.profile, None, &touch, &actor, &at).await?;
            id
        }
    };
    if let Some(external_id) = &customer.external_id {
        db.execute(
            "INSERT INTO contact_external_ids (source, external_id, contact_id, created_at)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            &[
                source.as_str().into(),
                external_id.as_str().into(),
                id.as_str().into(),
                at.as_str().into(),
            ],
        )
        .await
        .context("failed to link a customer id")?;
    }
    Ok(Some(id))
}

async fn apply_order(
    db: &impl Db,
    source: Source,
    order: &Order,
    now: OffsetDateTime,
) -> Result<Applied, ApiError> {
    let at = timestamp::format(now);
    let existing = db
        .execute(
            "SELECT id, contact_id, paid, cancelled, source_updated_at FROM orders WHERE source = ?1 AND external_id = ?2",
            &[source.as_str().into(), order.external_id.as_str().into()],
        )
        .await
        .context("failed to read an order")?;
    let existing = existing
        .first()
        .map(|r| -> anyhow::Result<_> {
            Ok((
                r.str("id")?.to_owned(),
                r.opt_str("contact_id")?.map(str::to_owned),
                r.i64("paid")? != 0,
                r.i64("cancelled")? != 0,
                r.opt_str("source_updated_at")?.map(str::to_owned),
            ))
        })
        .transpose()?;
    let contact_id = match existing.as_ref().and_then(|e| e.1.clone()) {
        Some(id) => Some(id),
        None => match_customer(db, source, order, now).await?,
    };
    let updated_at = order.updated_at.map(timestamp::format);
    let (order_id, was_paid, was_cancelled, details_fresh) = match &existing {
        None => {
            let id = new_id(now);
            db.execute(
                "INSERT INTO orders (id, source, external_id, contact_id, order_number, status, currency,
                     subtotal_minor, shipping_minor, tax_minor, discount_minor, total_minor, points_used,
                     paid, cancelled, placed_at, paid_at, cancelled_at, source_updated_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?19)",
                &[
                    id.as_str().into(),
                    source.as_str().into(),
                    order.external_id.as_str().into(),
                    contact_id.as_deref().into(),
                    order.number.as_deref().into(),
                    order.currency.code().into(),
                    order.subtotal.into(),
                    order.shipping.into(),
                    order.tax.into(),
                    order.discount.into(),
                    order.total.into(),
                    order.points_used.into(),
                    order.paid.into(),
                    order.cancelled.into(),
                    timestamp::format(order.placed_at).into(),
                    order.paid_at.map(timestamp::format).into(),
                    order.cancelled_at.map(timestamp::format).into(),
                    updated_at.as_deref().into(),
                    at.as_str().into(),
                ],
            )
            .await
            .context("failed to insert an order")?;
            (id, false, false, true)
        }
        Some((id, _, paid, cancelled, stored_updated_at)) => {
            // Details from a payload older than the stored one are stale;
            // the facts it carries (paid, cancelled, refunds) still count.
            let fresh = match (&updated_at, stored_updated_at) {
                (Some(new), Some(old)) => new >= old,
                _ => true,
            };
            db.execute(
                "UPDATE orders SET
                     paid = paid OR ?2, cancelled = cancelled OR ?3,
                     paid_at = COALESCE(paid_at, ?4), cancelled_at = COALESCE(cancelled_at, ?5),
                     contact_id = COALESCE(contact_id, ?6), updated_at = ?7
                 WHERE id = ?1",
                &[
                    id.as_str().into(),
                    order.paid.into(),
                    order.cancelled.into(),
                    order.paid_at.map(timestamp::format).into(),
                    order.cancelled_at.map(timestamp::format).into(),
                    contact_id.as_deref().into(),
                    at.as_str().into(),
                ],
            )
            .await
            .context("failed to update an order's facts")?;
            if fresh {
                db.execute(
                    "UPDATE orders SET order_number = COALESCE(?2, order_number), subtotal_minor = ?3,
                         shipping_minor = ?4, tax_minor = ?5, discount_minor = ?6, total_minor = ?7,
                         points_used = ?8, placed_at = ?9, source_updated_at = COALESCE(?10, source_updated_at)
                     WHERE id = ?1",
                    &[
                        id.as_str().into(),
                        order.number.as_deref().into(),
                        order.subtotal.into(),
                        order.shipping.into(),
                        order.tax.into(),
                        order.discount.into(),
                        order.total.into(),
                        order.points_used.into(),
                        timestamp::format(order.placed_at).into(),
                        updated_at.as_deref().into(),
                    ],
                )
                .await
                .context("failed to update an order's details")?;
            }
            (id.clone(), *paid, *cancelled, fresh)
        }
    };
    if details_fresh {
        replace_lines(db, &order_id, order, existing.is_none()).await?;
    }
    let mut applied = Applied {
        order_id: Some(order_id.clone()),
        contact_id: contact_id.clone(),
        newly_paid: order.paid && !was_paid,
        newly_cancelled: order.cancelled && !was_cancelled,
        new_refunds: Vec::new(),
    };
    if existing.is_none() {
        // Refunds that arrived before their order (Shopify may deliver
        // `refunds/create` first) take effect now, as if just received.
        let early = db
            .execute(
                "SELECT id, amount_minor FROM refunds WHERE source = ?1 AND order_external_id = ?2 ORDER BY id",
                &[source.as_str().into(), order.external_id.as_str().into()],
            )
            .await
            .context("failed to read early refunds")?;
        for row in early.iter() {
            applied
                .new_refunds
                .push((row.str("id")?.to_owned(), row.i64("amount_minor")?));
        }
    }
    for refund in &order.refunds {
        if let Some(new) = insert_refund(
            db,
            source,
            &order.external_id,
            order.currency.code(),
            refund,
            now,
        )
        .await?
        {
            applied.new_refunds.push(new);
        }
    }
    let (total, currency) = refresh_order(db, &order_id).await?;
    if let Some(contact_id) = &contact_id {
        let data = |kind: &str| {
            json!({ "order_id": order_id, "source": source.as_str(), "external_id": order.external_id,
                    "number": order.number, "total_minor": total, "currency": currency, "event": kind })
        };
        if applied.newly_paid {
            let entry = Entry {
                occurred_at: order.paid_at.unwrap_or(now),
                ..Entry::event(Kind::OrderPlaced, Some(data("paid")), now)
            };
            timeline::append(
                db,
                contact_id,
                &entry,
                &format!("webhook:{}", source.as_str()),
                now,
            )
            .await?;
        }
        if applied.newly_cancelled {
            let entry = Entry {
                occurred_at: order.cancelled_at.unwrap_or(now),
                ..Entry::event(Kind::OrderCancelled, Some(data("cancelled")), now)
            };
            timeline::append(
                db,
                contact_id,
                &entry,
                &format!("webhook:{}", source.as_str()),
                now,
            )
            .await?;
        }
        note_refunds(db, source, contact_id, &order_id, &applied.new_refunds, now).await?;
        refresh_contact(db, contact_id).await?;
    }
    Ok(applied)
}

/// How many lines one `INSERT` carries: 11 parameters each stays under
/// SQLite's oldest default limit of 999 per statement.
const LINES_PER_INSERT: usize = 80;

/// Stores the order's lines, replacing an existing order's; one
/// statement per [`LINES_PER_INSERT`] lines.
async fn replace_lines(
    db: &impl Db,
    order_id: &str,
    order: &Order,
    new_order: bool,
) -> anyhow::Result<()> {
    if !new_order {
        db.execute(
            "DELETE FROM order_lines WHERE order_id = ?1",
            &[order_id.into()],
        )
        .await
        .context("failed to clear order lines")?;
    }
    for (chunk_index, chunk) in order.lines.chunks(LINES_PER_INSERT).enumerate() {
        let mut params: Vec<Value> = vec![order_id.into()];
        let mut rows = Vec::with_capacity(chunk.len());
        for (offset, line) in chunk.iter().enumerate() {
            let line_no = chunk_index * LINES_PER_INSERT + offset + 1;
            let first = params.len() + 1;
            rows.push(format!(
                "(?1, {})",
                (first..first + 10)
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            params.extend([
                i64::try_from(line_no).unwrap_or(i64::MAX).into(),
                line.external_id.as_deref().into(),
                line.sku.as_deref().into(),
                line.name.as_deref().into(),
                line.category.as_deref().into(),
                line.quantity.into(),
                line.unit_price.into(),
                line.total.into(),
                line.discount.into(),
                line.tax.into(),
            ]);
        }
        db.execute(
            &format!(
                "INSERT INTO order_lines (order_id, line_no, external_id, sku, product_name, category,
                     quantity, unit_price_minor, line_total_minor, discount_minor, tax_minor)
                 VALUES {}",
                rows.join(", ")
            ),
            &params,
        )
        .await
        .context("failed to store order lines")?;
    }
    Ok(())
}

/// Records a refund once; returns (row id, amount) when it is new.
async fn insert_refund(
    db: &impl Db,
    source: Source,
    order_external_id: &str,
    currency: &str,
    refund: &Refund,
    now: OffsetDateTime,
) -> anyhow::Result<Option<(String, i64)>> {
    let id = new_id(now);
    let rows = db
        .execute(
            "INSERT INTO refunds (id, source, order_external_id, external_id, amount_minor, currency, reason, refunded_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING RETURNING id",
            &[
                id.as_str().into(),
                source.as_str().into(),
                order_external_id.into(),
                refund.external_id.as_str().into(),
                refund.amount.into(),
                currency.into(),
                refund.reason.as_deref().into(),
                timestamp::format(refund.refunded_at).into(),
                timestamp::format(now).into(),
            ],
        )
        .await
        .context("failed to record a refund")?;
    Ok((!rows.is_empty()).then_some((id, refund.amount)))
}

async fn note_refunds(
    db: &impl Db,
    source: Source,
    contact_id: &str,
    order_id: &str,
    refunds: &[(String, i64)],
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    for (refund_id, amount) in refunds {
        let data = json!({ "order_id": order_id, "refund_id": refund_id, "amount_minor": amount });
        timeline::append(
            db,
            contact_id,
            &Entry::event(Kind::OrderRefunded, Some(data), now),
            &format!("webhook:{}", source.as_str()),
            now,
        )
        .await?;
    }
    Ok(())
}

/// Recomputes an order's refunded amount and status from its facts.
/// Returns (total, currency).
async fn refresh_order(db: &impl Db, order_id: &str) -> anyhow::Result<(i64, String)> {
    let rows = db
        .execute(
            "SELECT o.paid, o.cancelled, o.total_minor, o.currency,
                    COALESCE((SELECT sum(r.amount_minor) FROM refunds r
                              WHERE r.source = o.source AND r.order_external_id = o.external_id), 0) AS refunded
             FROM orders o WHERE o.id = ?1",
            &[order_id.into()],
        )
        .await
        .context("failed to read an order's facts")?;
    let row = rows
        .first()
        .context("order vanished inside its transaction")?;
    let (total, refunded) = (row.i64("total_minor")?, row.i64("refunded")?);
    let status = OrderStatus::derive(
        row.i64("paid")? != 0,
        row.i64("cancelled")? != 0,
        total,
        refunded,
    );
    db.execute(
        "UPDATE orders SET refunded_minor = ?2, status = ?3 WHERE id = ?1",
        &[order_id.into(), refunded.into(), status.as_str().into()],
    )
    .await
    .context("failed to update an order's status")?;
    Ok((total, row.str("currency")?.to_owned()))
}

/// Recomputes the contact's counters and lifecycle from its orders. An
/// order counts when it was paid and is neither cancelled nor fully
/// refunded; spend is net of refunds. The stage follows the count
/// (`lead`, `customer`, `repeat`); an erased contact keeps `erased`.
pub async fn refresh_contact(db: &impl Db, contact_id: &str) -> anyhow::Result<()> {
    db.execute(
        "UPDATE contacts SET
             order_count = s.n,
             total_spent_minor = s.spent,
             average_order_value_minor = CASE WHEN s.n > 0 THEN s.spent / s.n ELSE 0 END,
             first_order_at = s.first_at,
             last_order_at = s.last_at,
             lifecycle_stage = CASE
                 WHEN contacts.erased_at IS NOT NULL THEN contacts.lifecycle_stage
                 WHEN s.n >= 2 THEN 'repeat'
                 WHEN s.n = 1 THEN 'customer'
                 ELSE 'lead' END
         FROM (SELECT count(*) AS n,
                      COALESCE(sum(max(total_minor - refunded_minor, 0)), 0) AS spent,
                      min(placed_at) AS first_at, max(placed_at) AS last_at
               FROM orders
               WHERE contact_id = ?1 AND paid = 1 AND cancelled = 0 AND status <> 'refunded') AS s
         WHERE contacts.id = ?1",
        &[Value::from(contact_id)],
    )
    .await
    .context("failed to refresh a contact's counters")?;
    Ok(())
}
