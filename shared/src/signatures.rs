//! Webhook signatures, checked over the raw body bytes before anything is
//! parsed: Standard Webhooks (Kizuna's own event format), Shopify and
//! WooCommerce. Each source takes a list of secrets so one can be rotated
//! without dropping deliveries; every comparison is constant-time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use time::OffsetDateTime;

/// Standard Webhooks' replay window, both ways.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("the signature does not match")]
    Mismatch,
    #[error("the timestamp is outside the {TOLERANCE_SECONDS}-second tolerance")]
    Stale,
    #[error("no secret is configured for this source")]
    NotConfigured,
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
    let signature = STANDARD
        .decode(signature_b64)
        .map_err(|_| SignatureError::Mismatch)?;
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
    // Text beyond i64 (30 digits) is no timestamp; within i64, the
    // distance is taken without overflow (i64::MIN − now does not fit).
    let timestamp: i64 = timestamp_text.parse().map_err(|_| SignatureError::Stale)?;
    if now.unix_timestamp().abs_diff(timestamp) > TOLERANCE_SECONDS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let candidates: Vec<Vec<u8>> = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .collect();
    let mut matched = false;
    for secret in secrets {
        let key = secret.strip_prefix("whsec_").unwrap_or(secret);
        let Ok(key) = STANDARD.decode(key) else {
            continue;
        };
        let mut m = hmac_sha256(&key);
        m.update(id.as_bytes());
        m.update(b".");
        m.update(timestamp_text.as_bytes());
        m.update(b".");
        m.update(body);
        for candidate in &candidates {
            matched |= m.clone().verify_slice(candidate).is_ok();
        }
    }
    if matched {
        Ok(StandardWebhook {
            id: id.to_owned(),
            timestamp,
        })
    } else {
        Err(SignatureError::Mismatch)
    }
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
            verify_standard(&headers, body, &secrets, later),
            Err(SignatureError::Stale)
        );
        let earlier = now - time::Duration::seconds(TOLERANCE_SECONDS + 1);
        assert_eq!(
            verify_standard(&headers, body, &secrets, earlier),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_standard(&HeaderMap::new(), body, &secrets, now),
            Err(SignatureError::MissingHeader("webhook-id"))
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
                    verify_standard(&h, body, &secrets, now),
                    Err(SignatureError::Stale),
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
