//! The suppression list: keyed digests of the emails and phone numbers
//! whose owner withdrew a consent or was erased, so the withdrawal is
//! remembered even after the contact (and its consent records) are gone.
//!
//! - A withdrawal of email consent suppresses the contact's email; of SMS
//!   or phone consent, its phone. Erasure suppresses both.
//! - A staff write never grants marketing consent to a suppressed
//!   address: 409. A purchase whose shop reports a consent does not
//!   grant it either (it is skipped; the order still counts), and neither
//!   will an import.
//! - Only the person's own fresh opt-in on a form lifts it, after the
//!   suppression, and the lift is recorded on the row (`lifted_at`,
//!   `lifted_by`). A shop's "subscribed" is a third party's report of a
//!   state, whose time Kizuna cannot check, so it never lifts it (see
//!   `purchases::checkout_consent`).
//!
//! The digest is an HMAC keyed with a key derived from
//! `unsubscribe_secret`, so the table alone does not reveal which
//! addresses it holds (an unkeyed hash of an email is found by trying
//! lists of emails). Rotating `unsubscribe_secret` therefore empties the
//! list's effect: keep the old value, or re-suppress from the erasure log.

use crate::consent::Channel;
use crate::error::ApiError;
use crate::ports::Db;
use crate::timestamp;
use anyhow::Context as _;
use hmac::Mac as _;
use time::OffsetDateTime;

/// What a suppressed value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Email,
    Phone,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
        }
    }

    /// The address a consent channel reaches, if it is one we hold.
    pub fn of_channel(channel: Channel) -> Option<Kind> {
        match channel {
            Channel::Email => Some(Kind::Email),
            Channel::Sms | Channel::Phone => Some(Kind::Phone),
            Channel::Post => None,
        }
    }
}

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Withdrawn,
    Erased,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Withdrawn => "withdrawn",
            Reason::Erased => "erased",
        }
    }
}

/// The keyed digest of a normalised email or E.164 phone.
pub fn digest(secret: &[u8], kind: Kind, value: &str) -> String {
    let mut mac = crate::signatures::hmac_sha256(secret);
    mac.update(b"kizuna-suppression-v1\n");
    mac.update(kind.as_str().as_bytes());
    mac.update(b"\n");
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The contact's stored email or phone.
async fn address_of(db: &impl Db, contact_id: &str, kind: Kind) -> anyhow::Result<Option<String>> {
    let rows = db
        .execute(
            "SELECT email, phone FROM contacts WHERE id = ?1",
            &[contact_id.into()],
        )
        .await
        .context("failed to read a contact's addresses")?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    Ok(row.opt_str(kind.as_str())?.map(str::to_owned))
}

/// Suppresses `value` (again, if it was lifted), inside the caller's
/// transaction.
pub async fn suppress(
    db: &impl Db,
    secret: &[u8],
    kind: Kind,
    value: &str,
    reason: Reason,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    db.execute(
        "INSERT INTO suppressions (kind, digest, reason, suppressed_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (kind, digest) DO UPDATE SET reason = excluded.reason,
             suppressed_at = excluded.suppressed_at, lifted_at = NULL, lifted_by = NULL",
        &[
            kind.as_str().into(),
            digest(secret, kind, value).into(),
            reason.as_str().into(),
            timestamp::format(now).into(),
        ],
    )
    .await
    .context("failed to suppress an address")?;
    Ok(())
}

/// Suppresses the address that a withdrawn `channel` reached.
pub async fn on_withdrawal(
    db: &impl Db,
    secret: &[u8],
    contact_id: &str,
    channel: Channel,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    let Some(kind) = Kind::of_channel(channel) else {
        return Ok(());
    };
    if let Some(value) = address_of(db, contact_id, kind).await? {
        suppress(db, secret, kind, &value, Reason::Withdrawn, now).await?;
    }
    Ok(())
}

/// Suppresses every address of a contact about to be erased.
pub async fn on_erasure(
    db: &impl Db,
    secret: &[u8],
    contact_id: &str,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    for kind in [Kind::Email, Kind::Phone] {
        if let Some(value) = address_of(db, contact_id, kind).await? {
            suppress(db, secret, kind, &value, Reason::Erased, now).await?;
        }
    }
    Ok(())
}

/// When `value` was suppressed, if it is now.
pub async fn suppressed_at(
    db: &impl Db,
    secret: &[u8],
    kind: Kind,
    value: &str,
) -> anyhow::Result<Option<String>> {
    let rows = db
        .execute(
            "SELECT suppressed_at FROM suppressions WHERE kind = ?1 AND digest = ?2 AND lifted_at IS NULL",
            &[kind.as_str().into(), digest(secret, kind, value).into()],
        )
        .await
        .context("failed to read the suppression list")?;
    match rows.first() {
        Some(row) => Ok(Some(row.str("suppressed_at")?.to_owned())),
        None => Ok(None),
    }
}

/// Refuses a grant of `channel` that is not the person's own fresh
/// opt-in (staff, purchases, imports) while the address is suppressed.
pub async fn refuse_grant_if_suppressed(
    db: &impl Db,
    secret: &[u8],
    contact_id: &str,
    channel: Channel,
) -> Result<(), ApiError> {
    let Some(kind) = Kind::of_channel(channel) else {
        return Ok(());
    };
    let Some(value) = address_of(db, contact_id, kind).await? else {
        return Ok(());
    };
    if suppressed_at(db, secret, kind, &value).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "this {} is on the suppression list (its owner withdrew consent or was erased); \
             only the person's own opt-in, on a form or at checkout, can grant it again",
            kind.as_str()
        )));
    }
    Ok(())
}

/// What a person's own opt-in did to the suppression list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptIn {
    /// The address was not suppressed: grant.
    NotSuppressed,
    /// The address was suppressed before the opt-in: lifted, grant.
    Lifted,
    /// Suppressed at or after the opt-in's own time: no grant.
    StillSuppressed,
}

impl OptIn {
    pub fn grants(self) -> bool {
        self != OptIn::StillSuppressed
    }
}

/// A fresh explicit opt-in by the person (`by`: e.g. `form:spring`)
/// lifts the suppression of the address `channel` reaches if it was
/// suppressed before `now`, and records who lifted it. `stored_address`
/// is the contact's address for `channel` when the caller knows it (it
/// just wrote it); otherwise it is read.
#[allow(clippy::too_many_arguments)]
pub async fn opt_in(
    db: &impl Db,
    secret: &[u8],
    contact_id: &str,
    channel: Channel,
    stored_address: Option<&str>,
    by: &str,
    now: OffsetDateTime,
) -> anyhow::Result<OptIn> {
    let Some(kind) = Kind::of_channel(channel) else {
        return Ok(OptIn::NotSuppressed);
    };
    let value = match stored_address {
        Some(value) => Some(value.to_owned()),
        None => address_of(db, contact_id, kind).await?,
    };
    let Some(value) = value else {
        return Ok(OptIn::NotSuppressed);
    };
    if suppressed_at(db, secret, kind, &value).await?.is_none() {
        return Ok(OptIn::NotSuppressed);
    }
    let at = timestamp::format(now);
    let lifted = db
        .execute(
            "UPDATE suppressions SET lifted_at = ?3, lifted_by = ?4
             WHERE kind = ?1 AND digest = ?2 AND lifted_at IS NULL AND suppressed_at < ?3
             RETURNING kind",
            &[
                kind.as_str().into(),
                digest(secret, kind, &value).into(),
                at.as_str().into(),
                by.into(),
            ],
        )
        .await
        .context("failed to lift a suppression")?;
    Ok(if lifted.is_empty() {
        OptIn::StillSuppressed
    } else {
        OptIn::Lifted
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_keyed_and_kind_separated() {
        let a = digest(b"secret-one-0123456789", Kind::Email, "taro@example.jp");
        assert_eq!(a.len(), 64);
        assert_ne!(
            a,
            digest(b"secret-two-0123456789", Kind::Email, "taro@example.jp")
        );
        assert_ne!(
            a,
            digest(b"secret-one-0123456789", Kind::Phone, "taro@example.jp")
        );
    }
}
