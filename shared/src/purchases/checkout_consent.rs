//! Marketing consent a shop reports with an order (a box ticked at
//! checkout, or the shop's record of an unsubscribe), recorded on the
//! buyer's contact inside the order's transaction, with its proof: the
//! source (`shopify_checkout`, …), the person's own time (the shop's
//! `consent_updated_at`, else the order's time), the opt-in level and
//! the order that reported it.
//!
//! The rules, in order:
//! - A consent belongs to an address: a shop's email consent counts only
//!   when the order's email is the contact's (a contact found by the
//!   shop's customer id may hold another), likewise SMS and phone.
//! - Older news changes nothing: a consent whose time is not later than
//!   the contact's latest change for the channel (by the person's time)
//!   is not recorded. So a purchase never re-grants what was withdrawn
//!   after the purchase says it was given, and a repeated or stale
//!   payload adds nothing.
//! - A state that is already the current one is not recorded again.
//! - A purchase never grants an address on the suppression list, and
//!   never lifts it: the shop's state is a third party's report, not the
//!   person's own fresh opt-in in front of Kizuna (a form is).
//! - A withdrawal always counts (if newer), and suppresses the address.

use super::model::{Order, ShopConsent, Source};
use crate::consent::{self, Channel, ConsentChange, Reason, Status};
use crate::ports::Db;
use crate::suppression::{self, Kind};
use crate::timestamp;
use anyhow::Context as _;
use time::OffsetDateTime;

/// What became of one consent an order reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Recorded,
    /// The contact's latest change for the channel is as new or newer.
    Older,
    /// The current state already says so.
    Unchanged,
    /// A grant to an address on the suppression list.
    Suppressed,
    /// The order's address for the channel is not the contact's.
    OtherAddress,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Recorded => "recorded",
            Outcome::Older => "older",
            Outcome::Unchanged => "unchanged",
            Outcome::Suppressed => "suppressed",
            Outcome::OtherAddress => "other_address",
        }
    }
}

/// The contact's addresses, whether the order's addresses are
/// suppressed, and one row per channel with a recorded change: its
/// latest status and the latest time the person changed it. One
/// statement.
const STATE_SQL: &str = "SELECT c.email, c.phone,
       EXISTS (SELECT 1 FROM suppressions
               WHERE kind = 'email' AND digest = ?2 AND lifted_at IS NULL) AS email_suppressed,
       EXISTS (SELECT 1 FROM suppressions
               WHERE kind = 'phone' AND digest = ?3 AND lifted_at IS NULL) AS phone_suppressed,
       l.channel, l.status, l.at
FROM contacts c
LEFT JOIN (SELECT channel, status,
                  max(COALESCE(occurred_at, recorded_at)) OVER (PARTITION BY channel) AS at,
                  row_number() OVER (PARTITION BY channel ORDER BY recorded_at DESC, id DESC) AS n
           FROM consents WHERE contact_id = ?1) AS l ON l.n = 1
WHERE c.id = ?1";

/// The contact's latest change for a channel: its status, and the
/// latest time (fixed-width UTC text) the person changed the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Latest {
    channel: String,
    status: String,
    at: String,
}

/// Records the consents `order` reports on `contact_id`, inside the
/// caller's transaction. Runs nothing when the order reports none; else
/// one read, then two statements per recorded change (three for a
/// withdrawal, which also suppresses the address).
pub async fn apply(
    db: &impl Db,
    suppression_secret: &[u8],
    source: Source,
    order: &Order,
    contact_id: &str,
    order_id: &str,
    now: OffsetDateTime,
) -> anyhow::Result<Vec<(Channel, Outcome)>> {
    let consents = &order.customer.consents;
    if consents.is_empty() {
        return Ok(Vec::new());
    }
    let profile = &order.customer.profile;
    let ordered = |kind: Kind| match kind {
        Kind::Email => profile.email.as_ref().map(|e| e.as_str()),
        Kind::Phone => profile.phone.as_ref().map(|p| p.as_str()),
    };
    let digest = |kind: Kind| {
        ordered(kind).map(|value| suppression::digest(suppression_secret, kind, value))
    };
    let rows = db
        .execute(
            STATE_SQL,
            &[
                contact_id.into(),
                digest(Kind::Email).into(),
                digest(Kind::Phone).into(),
            ],
        )
        .await
        .context("failed to read a buyer's consent state")?;
    let Some(row) = rows.first() else {
        return Ok(Vec::new());
    };
    let stored = |kind: Kind| row.opt_str(kind.as_str());
    let suppressed = |kind: Kind| -> anyhow::Result<bool> {
        let column = match kind {
            Kind::Email => "email_suppressed",
            Kind::Phone => "phone_suppressed",
        };
        Ok(row.i64(column)? != 0)
    };
    let mut latest = Vec::new();
    for r in rows.iter() {
        if let (Some(channel), Some(status), Some(at)) = (
            r.opt_str("channel")?,
            r.opt_str("status")?,
            r.opt_str("at")?,
        ) {
            latest.push(Latest {
                channel: channel.to_owned(),
                status: status.to_owned(),
                at: at.to_owned(),
            });
        }
    }
    let actor = format!("webhook:{}", source.as_str());
    let mut outcomes = Vec::with_capacity(consents.len());
    for reported in consents {
        let kind = Kind::of_channel(reported.channel);
        let addresses = match kind {
            Some(kind) => Some((ordered(kind), stored(kind)?)),
            None => None,
        };
        let channel = reported.channel.as_str();
        let outcome = decide(
            reported,
            addresses,
            latest.iter().find(|l| l.channel == channel),
            kind.map(suppressed).transpose()?.unwrap_or(false),
            now,
        );
        if outcome == Outcome::Recorded {
            let occurred_at = reported.occurred_at.min(now);
            let change = ConsentChange {
                source: Some(&reported.source),
                opt_in_level: reported.opt_in_level.as_deref(),
                order_id: Some(order_id),
                occurred_at: Some(occurred_at),
                ..ConsentChange::new(
                    reported.channel,
                    reported.status,
                    match reported.status {
                        Status::Granted => Reason::Checkout,
                        Status::Withdrawn => Reason::Unsubscribed,
                    },
                )
            };
            consent::record(db, contact_id, &change, &actor, now).await?;
            if reported.status == Status::Withdrawn
                && let Some((kind, Some(value))) = kind.map(|k| (k, ordered(k)))
            {
                suppression::suppress(
                    db,
                    suppression_secret,
                    kind,
                    value,
                    suppression::Reason::Withdrawn,
                    now,
                )
                .await?;
            }
            // A second consent for the same channel in one order is
            // weighed against this one.
            latest.retain(|l| l.channel != channel);
            latest.push(Latest {
                channel: channel.to_owned(),
                status: reported.status.as_str().to_owned(),
                at: timestamp::format(occurred_at),
            });
        } else if matches!(outcome, Outcome::Suppressed | Outcome::OtherAddress) {
            // No address or person in the log: the order's id is the shop's.
            eprintln!(
                "checkout consent not recorded: source={} order={} channel={channel} outcome={}",
                source.as_str(),
                order.external_id,
                outcome.as_str()
            );
        }
        outcomes.push((reported.channel, outcome));
    }
    Ok(outcomes)
}

/// The rules of the module doc, for one reported consent. `addresses`:
/// the order's and the contact's address for the channel, when the
/// channel reaches one; `latest`: the contact's latest change for it.
fn decide(
    reported: &ShopConsent,
    addresses: Option<(Option<&str>, Option<&str>)>,
    latest: Option<&Latest>,
    suppressed: bool,
    now: OffsetDateTime,
) -> Outcome {
    if let Some((ordered, stored)) = addresses
        && (ordered.is_none() || ordered != stored)
    {
        return Outcome::OtherAddress;
    }
    if let Some(latest) = latest {
        // Fixed-width UTC text: text order is time order.
        if timestamp::format(reported.occurred_at.min(now)) <= latest.at {
            return Outcome::Older;
        }
        if latest.status == reported.status.as_str() {
            return Outcome::Unchanged;
        }
    }
    if reported.status == Status::Granted && suppressed {
        return Outcome::Suppressed;
    }
    Outcome::Recorded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> OffsetDateTime {
        timestamp::parse(text).expect("time")
    }

    fn reported(status: Status, occurred_at: &str) -> ShopConsent {
        ShopConsent {
            channel: Channel::Email,
            status,
            occurred_at: at(occurred_at),
            opt_in_level: None,
            source: "shopify_checkout".into(),
        }
    }

    fn latest(status: &str, at: &str) -> Latest {
        Latest {
            channel: "email".into(),
            status: status.into(),
            at: at.into(),
        }
    }

    #[test]
    fn a_consent_is_weighed_by_address_time_state_and_suppression() {
        let now = at("2026-11-22T03:00:00Z");
        let same = Some((Some("a@example.jp"), Some("a@example.jp")));
        let withdrawn_later = latest("withdrawn", "2026-11-21T00:00:00.000000Z");
        let granted = latest("granted", "2026-11-01T00:00:00.000000Z");
        let grant = reported(Status::Granted, "2026-11-20T00:00:00Z");
        let cases = [
            ("no record yet", same, None, false, Outcome::Recorded),
            (
                "withdrawn after the purchase says",
                same,
                Some(&withdrawn_later),
                false,
                Outcome::Older,
            ),
            (
                "already granted",
                same,
                Some(&granted),
                false,
                Outcome::Unchanged,
            ),
            ("suppressed", same, None, true, Outcome::Suppressed),
            (
                "another address",
                Some((Some("b@example.jp"), Some("a@example.jp"))),
                None,
                false,
                Outcome::OtherAddress,
            ),
            (
                "no address on the order",
                Some((None, Some("a@example.jp"))),
                None,
                false,
                Outcome::OtherAddress,
            ),
        ];
        for (case, addresses, latest, suppressed, expected) in cases {
            assert_eq!(
                decide(&grant, addresses, latest, suppressed, now),
                expected,
                "case {case}"
            );
        }
        let withdrawal = reported(Status::Withdrawn, "2026-11-21T00:00:00Z");
        assert_eq!(
            decide(&withdrawal, same, Some(&granted), true, now),
            Outcome::Recorded,
            "a suppressed address may still be withdrawn"
        );
        let future = reported(Status::Withdrawn, "2027-01-01T00:00:00Z");
        let granted_now = latest("granted", "2026-11-22T03:00:00.000000Z");
        assert_eq!(
            decide(&future, same, Some(&granted_now), false, now),
            Outcome::Older,
            "a time in the future counts as now"
        );
    }
}
