//! Marketing consent per channel: an append-only log whose latest row per
//! channel is the current state. Each row keeps the proof Japan's Act on
//! Specified Electronic Mail asks a sender to keep: when (the person's
//! time, `occurred_at`, beside the time Kizuna recorded it), where (form
//! and page, or a `source` such as `shopify_checkout`, and the order that
//! reported it), which wording (its version and SHA-256), and from which
//! (truncated) address.

use crate::error::ApiError;
use crate::ids::new_id;
use crate::ports::Db;
use anyhow::Context as _;
use serde_json::{Map, Value as Json, json};
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Sms,
    Phone,
    Post,
}

impl Channel {
    pub const ALL: [Channel; 4] = [Channel::Email, Channel::Sms, Channel::Phone, Channel::Post];
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Phone => "phone",
            Channel::Post => "post",
        }
    }
}

impl TryFrom<&str> for Channel {
    type Error = ApiError;
    fn try_from(value: &str) -> Result<Self, ApiError> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == value)
            .ok_or_else(|| ApiError::invalid("channel", "one of email, sms, phone, post"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Granted,
    Withdrawn,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Granted => "granted",
            Status::Withdrawn => "withdrawn",
        }
    }
}

impl TryFrom<&str> for Status {
    type Error = ApiError;
    fn try_from(value: &str) -> Result<Self, ApiError> {
        match value {
            "granted" => Ok(Status::Granted),
            "withdrawn" => Ok(Status::Withdrawn),
            _ => Err(ApiError::invalid("status", "one of granted, withdrawn")),
        }
    }
}

/// Why consent changed: a closed list. Where it happened, in anyone's
/// words, is the change's `source` and `note`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Form,
    /// Given at a shop's checkout (a ticked box the shop reports).
    Checkout,
    Unsubscribed,
    Bounced,
    Complaint,
    Manual,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::Form,
        Reason::Checkout,
        Reason::Unsubscribed,
        Reason::Bounced,
        Reason::Complaint,
        Reason::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Form => "form",
            Reason::Checkout => "checkout",
            Reason::Unsubscribed => "unsubscribed",
            Reason::Bounced => "bounced",
            Reason::Complaint => "complaint",
            Reason::Manual => "manual",
        }
    }
}

impl TryFrom<&str> for Reason {
    type Error = ApiError;
    fn try_from(value: &str) -> Result<Self, ApiError> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == value)
            .ok_or_else(|| {
                ApiError::invalid(
                    "reason",
                    "one of form, checkout, unsubscribed, bounced, complaint, manual \
                     (say where or how in `source` and `note`)",
                )
            })
    }
}

/// One consent change to record.
#[derive(Debug, Clone)]
pub struct ConsentChange<'a> {
    pub channel: Channel,
    pub status: Status,
    pub reason: Reason,
    pub form_id: Option<&'a str>,
    pub page_url: Option<&'a str>,
    pub text_version: Option<&'a str>,
    /// Hex SHA-256 of the wording the person saw (see [`text_sha256`]).
    pub text_sha256: Option<&'a str>,
    pub ip_truncated: Option<&'a str>,
    /// Where it was given or withdrawn: `shopify_checkout`,
    /// `woocommerce_checkout`, or the words of a sender or of staff.
    pub source: Option<&'a str>,
    /// Staff's free text.
    pub note: Option<&'a str>,
    /// The opt-in level a shop reports (`single_opt_in`, …).
    pub opt_in_level: Option<&'a str>,
    /// The order (`orders.id`) that reported it.
    pub order_id: Option<&'a str>,
    /// When the person gave or withdrew it, when that is not the moment
    /// it is recorded (a shop's own time); never later than now.
    pub occurred_at: Option<OffsetDateTime>,
}

impl ConsentChange<'_> {
    /// A change with nothing but its channel, status and reason.
    pub fn new(channel: Channel, status: Status, reason: Reason) -> Self {
        ConsentChange {
            channel,
            status,
            reason,
            form_id: None,
            page_url: None,
            text_version: None,
            text_sha256: None,
            ip_truncated: None,
            source: None,
            note: None,
            opt_in_level: None,
            order_id: None,
            occurred_at: None,
        }
    }
}

/// The hex SHA-256 of a consent wording's UTF-8 bytes: kept with each
/// consent, it shows which text the person saw even if the form's
/// settings change later.
pub fn text_sha256(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Appends a consent change and its timeline entry.
pub async fn record(
    db: &impl Db,
    contact_id: &str,
    change: &ConsentChange<'_>,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<String> {
    let id = new_id(now);
    let at = crate::timestamp::format(now);
    let occurred_at = change.occurred_at.map_or(now, |t| t.min(now));
    db.execute(
        "INSERT INTO consents (id, contact_id, channel, status, reason, form_id, page_url,
                               text_version, ip_truncated, recorded_at, recorded_by,
                               occurred_at, source, note, opt_in_level, order_id, text_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        &[
            id.as_str().into(),
            contact_id.into(),
            change.channel.as_str().into(),
            change.status.as_str().into(),
            change.reason.as_str().into(),
            change.form_id.into(),
            change.page_url.into(),
            change.text_version.into(),
            change.ip_truncated.into(),
            at.as_str().into(),
            actor.into(),
            crate::timestamp::format(occurred_at).into(),
            change.source.into(),
            change.note.into(),
            change.opt_in_level.into(),
            change.order_id.into(),
            change.text_sha256.into(),
        ],
    )
    .await
    .context("failed to record consent")?;
    let kind = match change.status {
        Status::Granted => crate::timeline::Kind::ConsentGranted,
        Status::Withdrawn => crate::timeline::Kind::ConsentWithdrawn,
    };
    crate::timeline::append(
        db,
        contact_id,
        &crate::timeline::Entry {
            kind,
            channel: Some(change.channel.as_str()),
            subject: None,
            body: None,
            data: Some(json!({
                "channel": change.channel.as_str(),
                "reason": change.reason.as_str(),
                "source": change.source,
                "form_id": change.form_id,
                "order_id": change.order_id,
                "text_version": change.text_version,
                "text_sha256": change.text_sha256,
            })),
            occurred_at,
        },
        actor,
        now,
    )
    .await?;
    // What a mail or LINE tool needs to start or stop sending; the page
    // URL and the truncated address stay with the proof, not the event.
    let (topic, kind) = match change.status {
        Status::Granted => ("consent.granted", "granted"),
        Status::Withdrawn => ("consent.withdrawn", "withdrawn"),
    };
    let payload = json!({
        "contact_id": contact_id,
        "consent_id": id,
        "channel": change.channel.as_str(),
        "status": kind,
        "reason": change.reason.as_str(),
        "source": change.source,
        "form_id": change.form_id,
        "order_id": change.order_id,
        "opt_in_level": change.opt_in_level,
        "text_version": change.text_version,
        "occurred_at": crate::timestamp::format(occurred_at),
    });
    let event = crate::events::outbox::Event::new(topic, Some(contact_id), payload);
    crate::events::outbox::record(db, now, &[event]).await?;
    Ok(id)
}

/// The current state per channel: `{"email": {"status": "granted", …}}`.
pub async fn current(db: &impl Db, contact_id: &str) -> anyhow::Result<Json> {
    let rows = db
        .execute(
            &format!("SELECT {CURRENT_JSON_SQL} AS consents FROM (SELECT ?1 AS id) AS c"),
            &[contact_id.into()],
        )
        .await
        .context("failed to read consents")?;
    current_from_json(rows.first().context("consents row")?.opt_str("consents")?)
}

/// A SQL expression over a contact `c`: a JSON object with its latest
/// consent per channel, as [`current`] answers it. Embedded in reads that
/// answer the whole contact in one statement.
pub const CURRENT_JSON_SQL: &str = "(SELECT json_group_object(channel, json_object(
        'status', status, 'reason', reason, 'source', source, 'note', note,
        'form_id', form_id, 'page', page_url, 'order_id', order_id,
        'text_version', text_version, 'text_sha256', text_sha256, 'opt_in_level', opt_in_level,
        'occurred_at', COALESCE(occurred_at, recorded_at), 'recorded_at', recorded_at))
     FROM consents x
     WHERE x.contact_id = c.id AND x.id = (
         SELECT id FROM consents WHERE contact_id = x.contact_id AND channel = x.channel
         ORDER BY recorded_at DESC, id DESC LIMIT 1))";

/// The value of [`CURRENT_JSON_SQL`] as JSON (`{}` when there is none).
pub fn current_from_json(text: Option<&str>) -> anyhow::Result<Json> {
    match text {
        Some(text) => serde_json::from_str(text).context("stored consents"),
        None => Ok(Json::Object(Map::new())),
    }
}

/// Whether the latest email consent is a grant.
pub async fn email_granted(db: &impl Db, contact_id: &str) -> anyhow::Result<bool> {
    let current = current(db, contact_id).await?;
    Ok(current["email"]["status"] == "granted")
}

/// Keeps the network, not the host: IPv4 to /24, IPv6 to /48. Enough to
/// show where consent came from without storing who exactly.
pub fn truncate_ip(ip: &str) -> Option<String> {
    let addr: std::net::IpAddr = ip.trim().parse().ok()?;
    Some(match addr {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wording_digest_is_sha256_of_its_utf8() {
        assert_eq!(
            text_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(text_sha256("メール").len(), 64);
    }

    #[test]
    fn truncates_addresses() {
        assert_eq!(
            truncate_ip("203.0.113.77").as_deref(),
            Some("203.0.113.0/24")
        );
        assert_eq!(
            truncate_ip("2001:db8:abcd:12::1").as_deref(),
            Some("2001:db8:abcd::/48")
        );
        assert_eq!(truncate_ip("not-an-ip"), None);
    }
}
