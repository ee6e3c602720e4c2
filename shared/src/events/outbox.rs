//! The outbox: events written in the same transaction as the fact they
//! report, so a rollback takes both and a commit keeps both. Delivery
//! reads them after commit, in `seq` order; nothing here sends.
//!
//! Payloads hold no personal data (no email, phone, name, address, note
//! or shop's refund reason): ids, amounts, statuses and field names,
//! enough for a receiver to act without calling back. A delivery renders
//! personal fields from the contact row at send time, for endpoints
//! allowed to see them; so erasure empties the row and a replay shows
//! only what is left. The one exception is a consent's `source` (a
//! checkout's name, or a sender's or staff member's own words), which a
//! mail tool needs and erasure removes ([`scrub_contact`]).

use super::is_topic;
use crate::ids::new_id;
use crate::ports::{Db, Value};
use anyhow::Context as _;
use serde_json::Value as Json;
use time::OffsetDateTime;

/// The column list every write to the outbox fills. Writers that build
/// a payload in SQL from the rows just written (the points ledger, order
/// ingestion) start their `INSERT … SELECT` with it.
pub const INSERT_INTO: &str = "INSERT INTO events (id, topic, occurred_at, contact_id, payload)";

/// One event of a fact, before it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// One of [`super::TOPICS`].
    pub topic: &'static str,
    /// The contact it concerns, if any (a guest's order has none).
    pub contact_id: Option<String>,
    /// A JSON object without personal data (see the module doc).
    pub payload: Json,
}

impl Event {
    pub fn new(topic: &'static str, contact_id: Option<&str>, payload: Json) -> Event {
        Event {
            topic,
            contact_id: contact_id.map(str::to_owned),
            payload,
        }
    }
}

/// Writes the events of one fact, all in one statement, inside the
/// caller's transaction (never its own: an event must not outlive a
/// rolled-back fact). Each gets a new UUID v7 id, stamped `now`.
pub async fn record(db: &impl Db, now: OffsetDateTime, events: &[Event]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let at = crate::timestamp::format(now);
    let mut rows = Vec::with_capacity(events.len());
    let mut params: Vec<Value> = Vec::with_capacity(events.len() * 5);
    for event in events {
        anyhow::ensure!(is_topic(event.topic), "unknown topic {}", event.topic);
        anyhow::ensure!(event.payload.is_object(), "a payload is a JSON object");
        let n = params.len();
        rows.push(format!(
            "(?{}, ?{}, ?{}, ?{}, ?{})",
            n + 1,
            n + 2,
            n + 3,
            n + 4,
            n + 5
        ));
        params.extend([
            new_id(now).into(),
            event.topic.into(),
            at.as_str().into(),
            event.contact_id.as_deref().into(),
            event.payload.to_string().into(),
        ]);
    }
    db.execute(
        &format!("{INSERT_INTO} VALUES {}", rows.join(", ")),
        &params,
    )
    .await
    .context("failed to record events")?;
    Ok(())
}

/// Payload fields that may hold someone's own words, and so go on
/// erasure: a consent's `source` is a shop's checkout name or a sender's
/// or staff member's free text ("店頭で", "by phone").
const FREE_TEXT_FIELDS: &str = "'$.source'";

/// Removes the free-text fields of a contact's events, inside the
/// erasure's transaction. Everything else in a payload is an id, an
/// amount, a status or a field name (see the module doc).
pub async fn scrub_contact(db: &impl Db, contact_id: &str) -> anyhow::Result<()> {
    db.execute(
        &format!(
            "UPDATE events SET payload = json_remove(payload, {FREE_TEXT_FIELDS})
             WHERE contact_id = ?1 AND json_type(payload, '$.source') IS NOT NULL"
        ),
        &[contact_id.into()],
    )
    .await
    .context("failed to scrub a contact's events")?;
    Ok(())
}
