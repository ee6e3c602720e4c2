//! The contact's timeline: everything that happened to them, newest first,
//! from form submissions and consent changes to calls and notes staff log,
//! and the points they earned, redeemed or lost (read from the points
//! ledger, not copied: the ledger stays the one record of points).
//!
//! Staff-recorded entries (inquiry, call, email, visit, note) are also
//! work items: who handled one (`agent`, free text, beside `recorded_by`,
//! the API key) and where it stands ([`Status`]). A change of either is
//! written in place and logged as an `interaction_updated` entry holding
//! the old and new values, so no state a later change replaces is lost.

use crate::error::{ApiError, FieldError};
use crate::http::{decode_cursor, encode_cursor};
use crate::ids::new_id;
use crate::points::ledger;
use crate::ports::{Db, Value};
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
    /// A staff entry's status or agent changed (data: old and new).
    InteractionUpdated,
    // Points ledger entries, shown on the timeline but stored only in
    // `points_entries`: one kind per ledger kind.
    PointsEarned,
    PointsRedeemed,
    PointsExpired,
    PointsAdjusted,
    PointsCancelled,
    PointsReversed,
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

    /// Every kind the timeline shows, in the order the API lists them.
    pub const ALL: [Kind; 22] = [
        Kind::Inquiry,
        Kind::Call,
        Kind::Email,
        Kind::Visit,
        Kind::Note,
        Kind::InteractionUpdated,
        Kind::FormSubmitted,
        Kind::ContactCreated,
        Kind::ContactUpdated,
        Kind::ConsentGranted,
        Kind::ConsentWithdrawn,
        Kind::TagAdded,
        Kind::TagRemoved,
        Kind::OrderPlaced,
        Kind::OrderRefunded,
        Kind::OrderCancelled,
        Kind::PointsEarned,
        Kind::PointsRedeemed,
        Kind::PointsExpired,
        Kind::PointsAdjusted,
        Kind::PointsCancelled,
        Kind::PointsReversed,
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
            Kind::InteractionUpdated => "interaction_updated",
            Kind::PointsEarned => "points_earned",
            Kind::PointsRedeemed => "points_redeemed",
            Kind::PointsExpired => "points_expired",
            Kind::PointsAdjusted => "points_adjusted",
            Kind::PointsCancelled => "points_cancelled",
            Kind::PointsReversed => "points_reversed",
        }
    }

    /// The points ledger kind a points entry of the timeline shows; `None`
    /// for kinds stored in `interactions`.
    pub fn ledger_kind(self) -> Option<ledger::Kind> {
        Some(match self {
            Kind::PointsEarned => ledger::Kind::Earn,
            Kind::PointsRedeemed => ledger::Kind::Redeem,
            Kind::PointsExpired => ledger::Kind::Expire,
            Kind::PointsAdjusted => ledger::Kind::Adjust,
            Kind::PointsCancelled => ledger::Kind::Cancel,
            Kind::PointsReversed => ledger::Kind::Reverse,
            _ => return None,
        })
    }

    pub fn parse_recordable(value: &str) -> Result<Kind, ApiError> {
        Kind::RECORDABLE
            .into_iter()
            .find(|k| k.as_str() == value)
            .ok_or_else(|| {
                ApiError::invalid("kind", format!("one of {}", names(&Kind::RECORDABLE)))
            })
    }

    /// A `kind` filter: one kind or several, comma-separated; an unknown
    /// one is a 422 that lists them all.
    pub fn parse_filter(value: &str) -> Result<Vec<Kind>, ApiError> {
        let mut kinds = Vec::new();
        for name in value.split(',').map(str::trim) {
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.as_str() == name)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "kind",
                        format!("one or more of {}, comma-separated", names(&Kind::ALL)),
                    )
                })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }

    /// The status a staff entry of this kind starts in when none is
    /// given: an inquiry waits for an answer; a call, email, visit or
    /// note records something already done.
    pub fn default_status(self) -> Option<Status> {
        match self {
            Kind::Inquiry => Some(Status::Open),
            Kind::Call | Kind::Email | Kind::Visit | Kind::Note => Some(Status::Closed),
            _ => None,
        }
    }
}

fn names(kinds: &[Kind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a staff entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for the shop.
    Open,
    /// Waiting for the customer or someone else (a callback, a delivery).
    Pending,
    Closed,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Open, Status::Pending, Status::Closed];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Pending => "pending",
            Status::Closed => "closed",
        }
    }

    /// What a bad status is told.
    pub const EXPECTED: &str = "one of open, pending, closed";

    pub fn parse(value: &str) -> Result<Status, ApiError> {
        Status::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or_else(|| ApiError::invalid("status", Status::EXPECTED))
    }
}

/// The longest `agent` (a staff member's name) an entry keeps.
pub const AGENT_MAX: usize = 100;

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

/// Who handled a staff entry and where it stands; empty for entries
/// Kizuna writes about itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Handling<'a> {
    pub agent: Option<&'a str>,
    pub status: Option<Status>,
}

/// Appends one entry; returns its id.
pub async fn append(
    db: &impl Db,
    contact_id: &str,
    entry: &Entry<'_>,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<String> {
    let rows = insert(db, contact_id, entry, Handling::default(), actor, now).await?;
    Ok(rows.first().context("the new entry")?.str("id")?.to_owned())
}

/// Appends one staff entry with its agent and status; returns it as the
/// timeline shows it.
pub async fn record(
    db: &impl Db,
    contact_id: &str,
    entry: &Entry<'_>,
    handling: Handling<'_>,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<Json> {
    let rows = insert(db, contact_id, entry, handling, actor, now).await?;
    entry_json(rows.first().context("the new entry")?)
}

async fn insert(
    db: &impl Db,
    contact_id: &str,
    entry: &Entry<'_>,
    handling: Handling<'_>,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<crate::ports::Rows> {
    db.execute(
        &format!(
            "INSERT INTO interactions (id, contact_id, kind, channel, subject, body, data,
                                       occurred_at, recorded_at, recorded_by, agent, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             RETURNING {INTERACTION_COLUMNS}"
        ),
        &[
            new_id(now).into(),
            contact_id.into(),
            entry.kind.as_str().into(),
            entry.channel.into(),
            entry.subject.into(),
            entry.body.into(),
            entry.data.as_ref().map(Json::to_string).into(),
            timestamp::format(entry.occurred_at).into(),
            timestamp::format(now).into(),
            actor.into(),
            handling.agent.into(),
            handling.status.map(Status::as_str).into(),
        ],
    )
    .await
    .context("failed to add a timeline entry")
}

/// A change to a staff entry: a new status, a new agent (`Some(None)`
/// clears it), and a note on why, kept on the `interaction_updated` entry.
#[derive(Debug, Clone, Default)]
pub struct HandlingChange {
    pub status: Option<Status>,
    pub agent: Option<Option<String>>,
    pub note: Option<String>,
}

/// What [`change_handling`] did: the entry as it is now, and the names
/// of the fields whose value changed.
pub struct Changed {
    pub entry: Json,
    pub changed: Vec<&'static str>,
}

/// Applies `change` to staff entry `interaction_id` of `contact_id`,
/// inside the caller's `BEGIN IMMEDIATE` transaction (so the read of the
/// old values and the write are one step: two agents' changes apply one
/// after the other, each logged with what it replaced). `None` when the
/// contact has no such entry. A change that changes nothing and carries
/// no note writes nothing.
pub async fn change_handling(
    db: &impl Db,
    contact_id: &str,
    interaction_id: &str,
    change: &HandlingChange,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Option<Changed>, ApiError> {
    let rows = db
        .execute(
            "SELECT kind, agent, status FROM interactions WHERE id = ?1 AND contact_id = ?2",
            &[interaction_id.into(), contact_id.into()],
        )
        .await
        .context("failed to read an interaction")?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let kind = row.str("kind")?;
    if !Kind::RECORDABLE.iter().any(|k| k.as_str() == kind) {
        let field = if change.status.is_some() {
            "status"
        } else {
            "agent"
        };
        return Err(ApiError::Validation(vec![FieldError::new(
            field,
            format!(
                "only entries staff record ({}) have a status and an agent; this one is `{kind}`",
                names(&Kind::RECORDABLE)
            ),
        )]));
    }
    let (old_status, old_agent) = (row.opt_str("status")?, row.opt_str("agent")?);
    let new_status = change.status.map(Status::as_str).or(old_status);
    let new_agent = match &change.agent {
        Some(agent) => agent.as_deref(),
        None => old_agent,
    };
    let mut changed = Vec::new();
    let mut data = json!({ "interaction_id": interaction_id, "interaction_kind": kind });
    if new_status != old_status {
        changed.push("status");
        data["status"] = json!({ "from": old_status, "to": new_status });
    }
    if new_agent != old_agent {
        changed.push("agent");
        data["agent"] = json!({ "from": old_agent, "to": new_agent });
    }
    let at = timestamp::format(now);
    if !changed.is_empty() {
        db.execute(
            "UPDATE interactions SET status = ?3, agent = ?4, updated_at = ?5, updated_by = ?6
             WHERE id = ?1 AND contact_id = ?2",
            &[
                interaction_id.into(),
                contact_id.into(),
                new_status.into(),
                new_agent.into(),
                at.as_str().into(),
                actor.into(),
            ],
        )
        .await
        .context("failed to update an interaction")?;
    }
    if !changed.is_empty() || change.note.is_some() {
        let entry = Entry {
            body: change.note.as_deref(),
            ..Entry::event(Kind::InteractionUpdated, Some(data), now)
        };
        let handling = Handling {
            agent: new_agent,
            status: None,
        };
        insert(db, contact_id, &entry, handling, actor, now).await?;
    }
    let rows = db
        .execute(
            &format!("SELECT {INTERACTION_COLUMNS} FROM interactions WHERE id = ?1"),
            &[interaction_id.into()],
        )
        .await
        .context("failed to read an updated interaction")?;
    let entry = entry_json(rows.first().context("the updated interaction")?)?;
    Ok(Some(Changed { entry, changed }))
}

/// The columns [`entry_json`] reads, from `interactions`.
pub const INTERACTION_COLUMNS: &str = "id, kind, channel, subject, body, data, agent, status, \
     occurred_at, recorded_at, recorded_by, updated_at, updated_by";

/// A ledger entry in the columns of [`INTERACTION_COLUMNS`], from
/// `points_entries e` (its order, if any, as `o`): what moved, why, and
/// which order it was for, in `data`.
fn points_columns() -> String {
    let mut kind = String::from("CASE e.kind");
    for k in Kind::ALL {
        if let Some(ledger_kind) = k.ledger_kind() {
            kind.push_str(&format!(
                " WHEN '{}' THEN '{}'",
                ledger_kind.as_str(),
                k.as_str()
            ));
        }
    }
    kind.push_str(" ELSE 'points_' || e.kind END");
    format!(
        "e.id AS id, {kind} AS kind, NULL AS channel, NULL AS subject, NULL AS body,
         json_object('points', e.points, 'balance_after', e.balance_after, 'reason', e.reason,
                     'order_id', e.order_id, 'order_number', o.order_number,
                     'order_external_id', o.external_id, 'order_ref', e.order_ref) AS data,
         NULL AS agent, NULL AS status, e.created_at AS occurred_at, e.created_at AS recorded_at,
         e.created_by AS recorded_by, NULL AS updated_at, NULL AS updated_by"
    )
}

/// A page of the timeline, newest first, keyed by (occurred_at, id):
/// the contact's `interactions` and its points ledger entries merged in
/// one statement, both sides filtered to `kinds` (all when empty) before
/// the page is cut, so that pages of a filtered timeline are full and
/// the cursor continues where the last one ended.
pub async fn page(
    db: &impl Db,
    contact_id: &str,
    kinds: &[Kind],
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
    let mut params: Vec<Value> = vec![
        contact_id.into(),
        after_at.into(),
        after_id.into(),
        i64::try_from(limit + 1).unwrap_or(i64::MAX).into(),
    ];
    // Placeholders for the kinds one side keeps; `None` when the filter
    // keeps none of that side's kinds, so that side is not read at all.
    let mut placeholders = |names: Vec<&'static str>| -> Option<String> {
        if names.is_empty() {
            return None;
        }
        let list: Vec<String> = names
            .into_iter()
            .map(|name| {
                params.push(name.into());
                format!("?{}", params.len())
            })
            .collect();
        Some(list.join(", "))
    };
    let (stored, ledger_kinds): (Vec<Kind>, Vec<Kind>) =
        kinds.iter().partition(|k| k.ledger_kind().is_none());
    let mut branches = Vec::new();
    let stored_filter = if kinds.is_empty() {
        Some(String::new())
    } else {
        placeholders(stored.iter().map(|k| k.as_str()).collect())
            .map(|list| format!("AND kind IN ({list})"))
    };
    if let Some(filter) = stored_filter {
        branches.push(format!(
            "SELECT {INTERACTION_COLUMNS} FROM interactions
             WHERE contact_id = ?1 {filter}
               AND (?2 IS NULL OR occurred_at < ?2 OR (occurred_at = ?2 AND id < ?3))"
        ));
    }
    let ledger_filter = if kinds.is_empty() {
        Some(String::new())
    } else {
        placeholders(
            ledger_kinds
                .iter()
                .filter_map(|k| k.ledger_kind())
                .map(ledger::Kind::as_str)
                .collect(),
        )
        .map(|list| format!("AND e.kind IN ({list})"))
    };
    if let Some(filter) = ledger_filter {
        branches.push(format!(
            "SELECT {columns} FROM points_entries e LEFT JOIN orders o ON o.id = e.order_id
             WHERE e.contact_id = ?1 {filter}
               AND (?2 IS NULL OR e.created_at < ?2 OR (e.created_at = ?2 AND e.id < ?3))",
            columns = points_columns(),
        ));
    }
    let sql = format!(
        "{} ORDER BY occurred_at DESC, id DESC LIMIT ?4",
        branches.join(" UNION ALL ")
    );
    let rows = db
        .execute(&sql, &params)
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

/// An entry as the API shows it, from a row of [`INTERACTION_COLUMNS`].
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
        "agent": row.opt_str("agent")?,
        "status": row.opt_str("status")?,
        "occurred_at": row.str("occurred_at")?,
        "recorded_at": row.str("recorded_at")?,
        "recorded_by": row.str("recorded_by")?,
        "updated_at": row.opt_str("updated_at")?,
        "updated_by": row.opt_str("updated_by")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_and_each_ledger_kind_has_one_timeline_kind() {
        let names: std::collections::BTreeSet<&str> =
            Kind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), Kind::ALL.len());
        let ledger_kinds: Vec<&str> = Kind::ALL
            .iter()
            .filter_map(|k| k.ledger_kind())
            .map(ledger::Kind::as_str)
            .collect();
        assert_eq!(
            ledger_kinds,
            ["earn", "redeem", "expire", "adjust", "cancel", "reverse"]
        );
        for kind in Kind::RECORDABLE {
            assert!(Kind::ALL.contains(&kind));
            assert!(kind.default_status().is_some(), "{}", kind.as_str());
        }
        assert_eq!(Kind::Inquiry.default_status(), Some(Status::Open));
        assert_eq!(Kind::OrderPlaced.default_status(), None);
    }

    #[test]
    fn a_kind_filter_takes_one_or_several_and_refuses_the_unknown() {
        assert_eq!(
            Kind::parse_filter("inquiry").ok(),
            Some(vec![Kind::Inquiry])
        );
        assert_eq!(
            Kind::parse_filter("inquiry, call,inquiry").ok(),
            Some(vec![Kind::Inquiry, Kind::Call])
        );
        assert_eq!(
            Kind::parse_filter("points_earned").ok(),
            Some(vec![Kind::PointsEarned])
        );
        for bad in ["", "meeting", "inquiry,", "Inquiry"] {
            assert!(Kind::parse_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn statuses_parse_from_their_names_only() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()).ok(), Some(status));
        }
        assert!(Status::parse("done").is_err());
        assert!(Status::parse("Open").is_err());
    }
}
