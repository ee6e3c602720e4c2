//! The contact's timeline: everything that happened to them, newest first,
//! from form submissions and consent changes to calls and notes staff log.

use crate::error::ApiError;
use crate::http::{decode_cursor, encode_cursor};
use crate::ids::new_id;
use crate::ports::Db;
use crate::timestamp;
use anyhow::Context as _;
use serde_json::{Value as Json, json};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    FormSubmitted,
    ContactCreated,
    ContactUpdated,
    ConsentGranted,
    ConsentWithdrawn,
    TagAdded,
    TagRemoved,
    OrderPlaced,
    OrderRefunded,
    OrderCancelled,
    Inquiry,
    Call,
    Email,
    Visit,
    Note,
}

impl Kind {
    /// The kinds staff may record through the API; the rest are written
    /// by Kizuna itself.
    pub const RECORDABLE: [Kind; 5] = [
        Kind::Inquiry,
        Kind::Call,
        Kind::Email,
        Kind::Visit,
        Kind::Note,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::FormSubmitted => "form_submitted",
            Kind::ContactCreated => "contact_created",
            Kind::ContactUpdated => "contact_updated",
            Kind::ConsentGranted => "consent_granted",
            Kind::ConsentWithdrawn => "consent_withdrawn",
            Kind::TagAdded => "tag_added",
            Kind::TagRemoved => "tag_removed",
            Kind::OrderPlaced => "order_placed",
            Kind::OrderRefunded => "order_refunded",
            Kind::OrderCancelled => "order_cancelled",
            Kind::Inquiry => "inquiry",
            Kind::Call => "call",
            Kind::Email => "email",
            Kind::Visit => "visit",
            Kind::Note => "note",
        }
    }

    pub fn parse_recordable(value: &str) -> Result<Kind, ApiError> {
        Kind::RECORDABLE
            .into_iter()
            .find(|k| k.as_str() == value)
            .ok_or_else(|| ApiError::invalid("kind", "one of inquiry, call, email, visit, note"))
    }
}

/// Channels an interaction happened on.
pub const CHANNELS: &[&str] = &[
    "phone",
    "email",
    "web",
    "in_person",
    "chat",
    "sms",
    "post",
    "other",
];

pub struct Entry<'a> {
    pub kind: Kind,
    pub channel: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub body: Option<&'a str>,
    pub data: Option<Json>,
    pub occurred_at: OffsetDateTime,
}

impl<'a> Entry<'a> {
    /// An entry Kizuna records about itself: no channel or text, only data.
    pub fn event(kind: Kind, data: Option<Json>, now: OffsetDateTime) -> Entry<'a> {
        Entry {
            kind,
            channel: None,
            subject: None,
            body: None,
            data,
            occurred_at: now,
        }
    }
}

/// Appends one entry; returns its id.
pub async fn append(
    db: &impl Db,
    contact_id: &str,
    entry: &Entry<'_>,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<String> {
    let id = new_id(now);
    db.execute(
        "INSERT INTO interactions (id, contact_id, kind, channel, subject, body, data,
                                   occurred_at, recorded_at, recorded_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        &[
            id.as_str().into(),
            contact_id.into(),
            entry.kind.as_str().into(),
            entry.channel.into(),
            entry.subject.into(),
            entry.body.into(),
            entry.data.as_ref().map(Json::to_string).into(),
            timestamp::format(entry.occurred_at).into(),
            timestamp::format(now).into(),
            actor.into(),
        ],
    )
    .await
    .context("failed to add a timeline entry")?;
    Ok(id)
}

/// A page of the timeline, newest first, keyed by (occurred_at, id).
pub async fn page(
    db: &impl Db,
    contact_id: &str,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Json, ApiError> {
    let (after_at, after_id) = match cursor {
        Some(c) => {
            let parts = decode_cursor(c, 2)?;
            (Some(parts[0].clone()), Some(parts[1].clone()))
        }
        None => (None, None),
    };
    let rows = db
        .execute(
            "SELECT id, kind, channel, subject, body, data, occurred_at, recorded_at, recorded_by
             FROM interactions
             WHERE contact_id = ?1
               AND (?2 IS NULL OR occurred_at < ?2 OR (occurred_at = ?2 AND id < ?3))
             ORDER BY occurred_at DESC, id DESC
             LIMIT ?4",
            &[
                contact_id.into(),
                after_at.into(),
                after_id.into(),
                i64::try_from(limit + 1).unwrap_or(i64::MAX).into(),
            ],
        )
        .await
        .context("failed to read the timeline")?;
    let mut items = Vec::new();
    let mut next_cursor = None;
    for (index, row) in rows.iter().enumerate() {
        if index == limit {
            let last = rows.iter().nth(limit - 1).context("page boundary")?;
            next_cursor = Some(encode_cursor(&[last.str("occurred_at")?, last.str("id")?]));
            break;
        }
        items.push(entry_json(row)?);
    }
    Ok(json!({ "items": items, "next_cursor": next_cursor }))
}

pub fn entry_json(row: crate::ports::Row<'_>) -> anyhow::Result<Json> {
    let data = match row.opt_str("data")? {
        Some(text) => serde_json::from_str(text).context("stored interaction data")?,
        None => Json::Null,
    };
    Ok(json!({
        "id": row.str("id")?,
        "kind": row.str("kind")?,
        "channel": row.opt_str("channel")?,
        "subject": row.opt_str("subject")?,
        "body": row.opt_str("body")?,
        "data": data,
        "occurred_at": row.str("occurred_at")?,
        "recorded_at": row.str("recorded_at")?,
        "recorded_by": row.str("recorded_by")?,
    }))
}
