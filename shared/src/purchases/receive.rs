//! A delivery end to end, once its signature has been verified: parse
//! and check the payload, de-duplicate by event identity, apply, log, and
//! answer. A refused payload is logged as `rejected` (without its body)
//! and stores nothing else.

use super::checkout_consent;
use super::ingest::{self, Applied};
use super::model::{Event, Source};
use crate::Ctx;
use crate::db::transaction;
use crate::error::ApiError;
use crate::http::{Response, json_response};
use crate::ids::new_id;
use crate::ports::{Db, Kv};
use crate::timestamp;
use anyhow::Context as _;
use http::StatusCode;
use serde_json::json;
use time::OffsetDateTime;

/// Who sent what, as the headers say.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub source: Source,
    /// The event's identity: a repeat of it is a duplicate.
    pub event_id: String,
    pub delivery_id: Option<String>,
    pub topic: String,
}

/// The outcome of a delivery, as logged and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Ignored,
    Rejected,
    /// Refused signatures, counted per source and minute
    /// (`auth_failures`); never an answer.
    Unauthorized,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::Ignored,
        Outcome::Rejected,
        Outcome::Unauthorized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::Rejected => "rejected",
            Outcome::Unauthorized => "unauthorized",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == text)
    }
}

fn bounded(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

async fn log_delivery(
    db: &impl Db,
    delivery: &Delivery,
    order_external_id: Option<&str>,
    outcome: Outcome,
    error: Option<&str>,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    db.execute(
        "INSERT INTO webhook_deliveries (id, source, event_id, delivery_id, topic, order_external_id, received_at, outcome, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        &[
            new_id(now).into(),
            delivery.source.as_str().into(),
            bounded(&delivery.event_id, 200).into(),
            delivery.delivery_id.as_deref().map(|d| bounded(d, 200)).into(),
            bounded(&delivery.topic, 100).into(),
            order_external_id.into(),
            timestamp::format(now).into(),
            outcome.as_str().into(),
            error.map(|e| bounded(e, 1000)).into(),
        ],
    )
    .await
    .context("failed to log a delivery")?;
    Ok(())
}

/// What a refusal says in the log: the problem's detail and field errors,
/// with quoted strings blanked, since serde quotes offending values and
/// those may be personal data.
fn describe(error: &ApiError) -> String {
    let problem = error.to_problem();
    let mut text = format!("{} {}: {}", problem.status, problem.title, problem.detail);
    for e in &problem.errors {
        text.push_str(&format!("; {}: {}", e.field, redact_unexpected(&e.message)));
    }
    redact_quoted(&text)
}

/// serde describes a wrong value as `invalid type: <value>, expected …`;
/// the value part goes, whatever quoting it used.
fn redact_unexpected(message: &str) -> String {
    for marker in ["invalid type: ", "invalid value: ", "unknown variant "] {
        if let Some(start) = message.find(marker) {
            let from = start + marker.len();
            let to = message[from..]
                .find(", expected")
                .map_or(message.len(), |i| from + i);
            return format!("{}…{}", &message[..from], &message[to..]);
        }
    }
    message.to_owned()
}

/// Blanks every span serde quotes, in `"…"` (strings) or in backticks
/// (numbers, and names, which the field path already gives).
fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside: Option<char> = None;
    for c in text.chars() {
        match inside {
            None if c == '"' || c == '`' => {
                out.push(c);
                out.push('…');
                out.push(c);
                inside = Some(c);
            }
            None => out.push(c),
            Some(quote) if c == quote => inside = None,
            Some(_) => {}
        }
    }
    out
}

/// Handles a verified delivery whose payload `parse` turns into an event.
/// The order, the contact's counters and the points ledger change in one
/// transaction, or not at all.
pub async fn receive<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    delivery: &Delivery,
    parse: impl FnOnce(OffsetDateTime) -> Result<Event, ApiError>,
) -> Result<Response, ApiError> {
    let now = ctx.clock.now();
    let event = parse(now).and_then(|event| {
        event.validate(ctx.config.shop_currency)?;
        Ok(event)
    });
    let event = match event {
        Ok(event) => event,
        Err(error @ (ApiError::BadRequest(_) | ApiError::Validation(_))) => {
            let described = describe(&error);
            eprintln!(
                "webhook rejected: source={} topic={} error={described}",
                delivery.source.as_str(),
                delivery.topic
            );
            transaction(ctx.db, async || -> Result<(), ApiError> {
                Ok(log_delivery(
                    ctx.db,
                    delivery,
                    None,
                    Outcome::Rejected,
                    Some(&described),
                    now,
                )
                .await?)
            })
            .await?;
            return Err(error);
        }
        Err(other) => return Err(other),
    };
    let (outcome, applied) = transaction(ctx.db, async || -> Result<(Outcome, Applied), ApiError> {
        let fresh = ctx
            .db
            .execute(
                "INSERT INTO webhook_events (source, event_id, topic, received_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING RETURNING event_id",
                &[
                    delivery.source.as_str().into(),
                    bounded(&delivery.event_id, 200).into(),
                    bounded(&delivery.topic, 100).into(),
                    timestamp::format(now).into(),
                ],
            )
            .await
            .context("failed to record an event")?;
        let (outcome, applied) = if fresh.is_empty() {
            // A repeat answers with the order the first delivery stored.
            let order_id = match event.order_external_id() {
                Some(external_id) => ingest::find_order(ctx.db, delivery.source, external_id).await?.map(|(id, _)| id),
                None => None,
            };
            (Outcome::Duplicate, Applied { order_id, ..Applied::default() })
        } else if let Event::Ignored(_) = event {
            (Outcome::Ignored, Applied::default())
        } else {
            let applied = ingest::apply(ctx.db, delivery.source, &event, now).await?;
            crate::points::orders::on_order(ctx.db, delivery.source, &applied, now, ctx.config.shop_offset).await?;
            if let (Event::Order(order), Some(contact_id), Some(order_id)) = (&event, &applied.contact_id, &applied.order_id)
                && !order.customer.consents.is_empty()
            {
                let secret = ctx.config.unsubscribe_secret()?;
                checkout_consent::apply(ctx.db, secret, delivery.source, order, contact_id, order_id, now).await?;
            }
            (Outcome::Applied, applied)
        };
        log_delivery(ctx.db, delivery, event.order_external_id(), outcome, None, now).await?;
        Ok((outcome, applied))
    })
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "status": outcome.as_str(), "order_id": applied.order_id }),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_values_are_blanked() {
        assert_eq!(
            super::redact_quoted(r#"invalid type: string "taro@example.jp", expected u64"#),
            r#"invalid type: string "…", expected u64"#
        );
        assert_eq!(
            super::redact_quoted("invalid type: integer `819012345678`, expected a string"),
            "invalid type: integer `…`, expected a string"
        );
        assert_eq!(
            super::redact_unexpected(
                r#"invalid type: string "a\"b@example.jp", expected u64 at line 1"#
            ),
            "invalid type: …, expected u64 at line 1"
        );
    }
}
