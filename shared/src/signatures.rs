//! Webhook signatures, checked over the raw body bytes before anything is
//! parsed: Standard Webhooks (Kizuna's own event format), Shopify and
//! WooCommerce. Each source takes a list of secrets so one can be rotated
//! without dropping deliveries; every comparison is constant-time. A
//! refusal says which check failed (`SignatureError::reason`), so that an
//! operator can tell a wrong secret from a clock or a sender's mistake;
//! the sender is told none of it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use time::OffsetDateTime;

/// Standard Webhooks' replay window, both ways.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;
// The refusal's text names it.
const _: () = assert!(TOLERANCE_SECONDS == 300);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// The signature header holds no signature of the expected form.
    #[error("{0}")]
    Malformed(&'static str),
    /// Signed with none of the configured secrets.
    #[error("the signature matches none of the configured secrets")]
    Mismatch,
    /// Signed with the secret's text as the HMAC key: the whole
    /// `whsec_…` string, or the base64 after `whsec_` left undecoded.
    #[error(
        "signed with the secret's text as the key; the key is the bytes the base64 after whsec_ decodes to"
    )]
    SecretNotDecoded,
    /// Correctly signed, at a time outside the tolerance (a replay, a
    /// sender's clock, or a time not in seconds); the text says which.
    #[error("{0}")]
    Stale(&'static str),
    #[error("no secret is configured for this source")]
    NotConfigured,
}

impl SignatureError {
    /// The closed set of reasons the deliveries log counts.
    pub const REASONS: [&'static str; 6] = [
        "missing_header",
        "malformed_signature",
        "wrong_secret",
        "secret_not_decoded",
        "stale_timestamp",
        "not_configured",
    ];

    /// Which check failed, as the deliveries log counts it.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::MissingHeader(_) => "missing_header",
            SignatureError::Malformed(_) => "malformed_signature",
            SignatureError::Mismatch => "wrong_secret",
            SignatureError::SecretNotDecoded => "secret_not_decoded",
            SignatureError::Stale(_) => "stale_timestamp",
            SignatureError::NotConfigured => "not_configured",
        }
    }
}

/// Secrets from a variable: comma- or space-separated, empty ones dropped.
pub fn secret_list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split([',', ' ', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// An HMAC-SHA256 keyed with `key`; the one place Kizuna builds one
/// (webhooks, unsubscribe tokens, rate-limit buckets).
pub fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length")
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, SignatureError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(SignatureError::MissingHeader(name))
}

/// A base64 HMAC-SHA256 of the body, as Shopify and WooCommerce send it.
fn verify_body_hmac(
    secrets: &[String],
    body: &[u8],
    signature_b64: &str,
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NotConfigured);
    }
    // A hex digest (64 characters) is valid base64 too, of 48 bytes.
    let signature = STANDARD
        .decode(signature_b64)
        .ok()
        .filter(|s| s.len() == 32)
        .ok_or(SignatureError::Malformed(
            "the signature is not the base64 of an HMAC-SHA256 (32 bytes)",
        ))?;
    let mut matched = false;
    for secret in secrets {
        let mut m = hmac_sha256(secret.as_bytes());
        m.update(body);
        matched |= m.verify_slice(&signature).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// `X-Shopify-Hmac-Sha256`: base64 HMAC-SHA256 of the raw body with the app secret.
pub fn verify_shopify(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[String],
) -> Result<(), SignatureError> {
    let signature = header(headers, "x-shopify-hmac-sha256")?;
    verify_body_hmac(secrets, body, signature)
}

/// `X-WC-Webhook-Signature`: base64 HMAC-SHA256 of the raw body.
pub fn verify_woocommerce(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[String],
) -> Result<(), SignatureError> {
    let signature = header(headers, "x-wc-webhook-signature")?;
    verify_body_hmac(secrets, body, signature)
}

/// The identity a verified Standard Webhooks delivery carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandardWebhook {
    pub id: String,
    pub timestamp: i64,
}

/// Standard Webhooks: `webhook-signature` holds space-separated
/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`; the secret is
/// `whsec_<base64 key>`; timestamps beyond the tolerance are replays.
///
/// The signature is checked before the time, so that a refusal can tell
/// a sender with the right secret and a wrong clock (or an old message
/// replayed) from one with the wrong secret. A mismatch is checked once
/// more against the secret's text as the key, the commonest mistake in a
/// shop's own sender.
pub fn verify_standard(
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[String],
    now: OffsetDateTime,
) -> Result<StandardWebhook, SignatureError> {
    let id = header(headers, "webhook-id")?;
    let timestamp_text = header(headers, "webhook-timestamp")?;
    let signatures = header(headers, "webhook-signature")?;
    if secrets.is_empty() {
        return Err(SignatureError::NotConfigured);
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .collect();
    if candidates.is_empty() {
        return Err(SignatureError::Malformed(
            "webhook-signature holds no v1,<base64> signature",
        ));
    }
    let signed_with = |key: &[u8]| {
        let mut m = hmac_sha256(key);
        m.update(id.as_bytes());
        m.update(b".");
        m.update(timestamp_text.as_bytes());
        m.update(b".");
        m.update(body);
        candidates.iter().fold(false, |matched, c| {
            matched | m.clone().verify_slice(c).is_ok()
        })
    };
    let mut matched = false;
    for secret in secrets {
        let key = secret.strip_prefix("whsec_").unwrap_or(secret);
        if let Ok(key) = STANDARD.decode(key) {
            matched |= signed_with(&key);
        }
    }
    if !matched {
        let undecoded = secrets.iter().any(|secret| {
            let text = secret.strip_prefix("whsec_").unwrap_or(secret);
            signed_with(secret.as_bytes()) || (text != secret && signed_with(text.as_bytes()))
        });
        return Err(if undecoded {
            SignatureError::SecretNotDecoded
        } else {
            SignatureError::Mismatch
        });
    }
    // Text beyond i64 (30 digits) is no timestamp; within i64, the
    // distance is taken without overflow (i64::MIN − now does not fit).
    let Ok(timestamp) = timestamp_text.parse::<i64>() else {
        return Err(SignatureError::Stale(
            "webhook-timestamp is not a Unix time in seconds",
        ));
    };
    let distance = now.unix_timestamp().abs_diff(timestamp);
    if distance > TOLERANCE_SECONDS.unsigned_abs() {
        // A time a thousand times now is in milliseconds (JavaScript's
        // `Date.now()`); anything else is a replay or a sender's clock.
        let millis = now
            .unix_timestamp()
            .checked_mul(1000)
            .is_some_and(|ms| ms.abs_diff(timestamp) <= 1000 * TOLERANCE_SECONDS.unsigned_abs());
        return Err(SignatureError::Stale(if millis {
            "webhook-timestamp is in milliseconds; send seconds"
        } else {
            "webhook-timestamp is more than 300 seconds from now (a replay, or the sender's clock)"
        }));
    }
    Ok(StandardWebhook {
        id: id.to_owned(),
        timestamp,
    })
}

/// Signs like a Standard Webhooks sender; for tests, fixtures and benches.
pub fn sign_standard(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    sign_standard_text(secret, id, &timestamp.to_string(), body)
}

/// Like [`sign_standard`], over the `webhook-timestamp` header text as
/// sent, which need not be a valid timestamp (tests of bad input).
pub fn sign_standard_text(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .expect("a whsec_ secret is base64");
    let mut m = hmac_sha256(&key);
    m.update(format!("{id}.{timestamp}.").as_bytes());
    m.update(body);
    format!("v1,{}", STANDARD.encode(m.finalize().into_bytes()))
}

/// Signs like Shopify or WooCommerce; for tests, fixtures and benches.
pub fn sign_body(secret: &str, body: &[u8]) -> String {
    let mut m = hmac_sha256(secret.as_bytes());
    m.update(body);
    STANDARD.encode(m.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn standard_headers(id: &str, timestamp: i64, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        h.insert("webhook-signature", signature.parse().unwrap());
        h
    }

    #[test]
    fn standard_webhooks_verify_rotate_and_expire() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let body = br#"{"type":"order.paid"}"#;
        let good = sign_standard(SECRET, "msg_1", 1_700_000_000, body);
        let secrets = vec!["whsec_b2xkLXNlY3JldA==".to_owned(), SECRET.to_owned()];
        let headers = standard_headers("msg_1", 1_700_000_000, &format!("v1,bm9wZQ== {good}"));
        assert_eq!(
            verify_standard(&headers, body, &secrets, now).unwrap().id,
            "msg_1"
        );
        assert_eq!(
            verify_standard(&headers, b"{}", &secrets, now),
            Err(SignatureError::Mismatch)
        );
        let later = now + time::Duration::seconds(TOLERANCE_SECONDS + 1);
        assert_eq!(
            verify_standard(&headers, body, &secrets, later).map_err(|e| e.reason()),
            Err("stale_timestamp")
        );
        let earlier = now - time::Duration::seconds(TOLERANCE_SECONDS + 1);
        assert_eq!(
            verify_standard(&headers, body, &secrets, earlier).map_err(|e| e.reason()),
            Err("stale_timestamp")
        );
        assert_eq!(
            verify_standard(&HeaderMap::new(), body, &secrets, now),
            Err(SignatureError::MissingHeader("webhook-id"))
        );
    }

    #[test]
    fn standard_refusals_tell_their_reasons_apart() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let body = br#"{"type":"order.paid"}"#;
        let secrets = vec![SECRET.to_owned()];
        let signed_with_key = |key: &[u8], timestamp: &str| {
            let mut m = hmac_sha256(key);
            m.update(format!("msg_1.{timestamp}.").as_bytes());
            m.update(body);
            format!("v1,{}", STANDARD.encode(m.finalize().into_bytes()))
        };
        let reason = |timestamp: &str, signature: &str| {
            let mut h = HeaderMap::new();
            h.insert("webhook-id", "msg_1".parse().unwrap());
            h.insert("webhook-timestamp", timestamp.parse().unwrap());
            h.insert("webhook-signature", signature.parse().unwrap());
            verify_standard(&h, body, &secrets, now).map_err(|e| e.reason())
        };
        let ts = "1700000000";
        assert!(reason(ts, &sign_standard(SECRET, "msg_1", 1_700_000_000, body)).is_ok());
        for (case, timestamp, signature, expected) in [
            (
                "the whole whsec_ string as the key",
                ts,
                signed_with_key(SECRET.as_bytes(), ts),
                "secret_not_decoded",
            ),
            (
                "the base64 undecoded",
                ts,
                signed_with_key(&SECRET.as_bytes()[6..], ts),
                "secret_not_decoded",
            ),
            (
                "another key",
                ts,
                signed_with_key(b"another key", ts),
                "wrong_secret",
            ),
            (
                "no v1 signature",
                ts,
                "v2,abc".to_owned(),
                "malformed_signature",
            ),
            (
                "an hour old, well signed",
                "1699996400",
                sign_standard(SECRET, "msg_1", 1_699_996_400, body),
                "stale_timestamp",
            ),
            (
                "milliseconds, well signed",
                "1700000000000",
                sign_standard_text(SECRET, "msg_1", "1700000000000", body),
                "stale_timestamp",
            ),
            (
                "an hour old, another key",
                "1699996400",
                signed_with_key(b"another key", "1699996400"),
                "wrong_secret",
            ),
        ] {
            assert_eq!(reason(timestamp, &signature), Err(expected), "case {case}");
        }
        let mut h = HeaderMap::new();
        h.insert("webhook-id", "msg_1".parse().unwrap());
        h.insert("webhook-timestamp", "1700000000000".parse().unwrap());
        let signature = sign_standard_text(SECRET, "msg_1", "1700000000000", body);
        h.insert("webhook-signature", signature.parse().unwrap());
        let refused = verify_standard(&h, body, &secrets, now).unwrap_err();
        assert!(refused.to_string().contains("milliseconds"), "{refused}");
        assert_eq!(
            verify_standard(&h, body, &[], now),
            Err(SignatureError::NotConfigured)
        );
    }

    #[test]
    fn standard_timestamps_at_the_edges_of_i64_are_stale_not_a_panic() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let body = br#"{"type":"order.paid"}"#;
        let secrets = vec![SECRET.to_owned()];
        for timestamp in [
            i64::MAX.to_string(),
            i64::MIN.to_string(),
            "-9223372036854775808".to_owned(),
            "9223372036854775808".to_owned(),
            "123456789012345678901234567890".to_owned(),
            "-123456789012345678901234567890".to_owned(),
        ] {
            let mut h = HeaderMap::new();
            h.insert("webhook-id", "msg_1".parse().unwrap());
            h.insert("webhook-timestamp", timestamp.parse().unwrap());
            let signature = sign_standard_text(SECRET, "msg_1", &timestamp, body);
            h.insert("webhook-signature", signature.parse().unwrap());
            for now in [
                now,
                OffsetDateTime::from_unix_timestamp(0).unwrap(),
                crate::timestamp::MIN,
                crate::timestamp::MAX,
            ] {
                assert_eq!(
                    verify_standard(&h, body, &secrets, now).map_err(|e| e.reason()),
                    Err("stale_timestamp"),
                    "{timestamp}"
                );
            }
        }
    }

    #[test]
    fn body_hmacs_verify() {
        let body = br#"{"id":1}"#;
        let mut h = HeaderMap::new();
        h.insert(
            "x-shopify-hmac-sha256",
            sign_body("shpss_secret", body).parse().unwrap(),
        );
        assert!(verify_shopify(&h, body, &["old".into(), "shpss_secret".into()]).is_ok());
        assert_eq!(
            verify_shopify(&h, b"{}", &["shpss_secret".into()]),
            Err(SignatureError::Mismatch)
        );
        // A hex digest where base64 belongs.
        let mut hex_signed = HeaderMap::new();
        hex_signed.insert("x-shopify-hmac-sha256", "ab".repeat(32).parse().unwrap());
        assert_eq!(
            verify_shopify(&hex_signed, body, &["shpss_secret".into()]).map_err(|e| e.reason()),
            Err("malformed_signature")
        );
        assert_eq!(
            verify_shopify(&h, body, &[]),
            Err(SignatureError::NotConfigured)
        );
        assert_eq!(
            verify_woocommerce(&h, body, &["x".into()]),
            Err(SignatureError::MissingHeader("x-wc-webhook-signature"))
        );
    }
}
