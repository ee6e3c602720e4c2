//! Signed one-click unsubscribe links: the token that names a contact
//! (keyed by `unsubscribe_secret`), its check, and the URL under
//! `public_base_url` that the contact API and segment exports hand out.
//! Below both `privacy` (the pages the link opens) and `segments`, so
//! neither depends on the other for it.

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const UNSUBSCRIBE_CONTEXT: &[u8] = b"kizuna-unsubscribe-v1";

fn mac(secret: &[u8], contact: &uuid::Uuid) -> Hmac<Sha256> {
    let mut mac = crate::signatures::hmac_sha256(secret);
    mac.update(UNSUBSCRIBE_CONTEXT);
    mac.update(contact.as_bytes());
    mac
}

/// A token naming the contact, signed with the unsubscribe secret:
/// base64url(contact uuid ‖ first 16 bytes of HMAC-SHA256).
pub fn token(secret: &[u8], contact_id: &str) -> anyhow::Result<String> {
    let uuid = uuid::Uuid::parse_str(contact_id).context("contact id is not a UUID")?;
    let tag = mac(secret, &uuid).finalize().into_bytes();
    let mut bytes = uuid.as_bytes().to_vec();
    bytes.extend_from_slice(&tag[..16]);
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The contact a token names, if its signature holds (constant-time).
pub fn contact_of(secret: &[u8], token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    if bytes.len() != 32 {
        return None;
    }
    let uuid = uuid::Uuid::from_slice(&bytes[..16]).ok()?;
    mac(secret, &uuid)
        .verify_truncated_left(&bytes[16..])
        .ok()?;
    Some(uuid.hyphenated().to_string())
}

/// The contact's one-click unsubscribe link under `public_base_url`: what
/// `GET /v1/contacts/{id}/unsubscribe-link` answers and what a segment
/// export puts in `unsubscribe_url`. A GET shows a confirmation page; a
/// POST (RFC 8058 `List-Unsubscribe-Post`) unsubscribes.
pub fn url(config: &crate::config::Config, contact_id: &str) -> anyhow::Result<(String, String)> {
    let token = token(config.unsubscribe_secret()?, contact_id)?;
    warn_once_of_local_base_url(config);
    let url = format!(
        "{}/v1/forms/unsubscribe?token={token}",
        config.public_base_url
    );
    Ok((token, url))
}

/// Logs [`Config::public_base_url_warning`](crate::config::Config) the
/// first time this instance issues a link: once, so that an export of
/// 10,000 members does not write 10,000 lines.
fn warn_once_of_local_base_url(config: &crate::config::Config) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Some(warning) = config.public_base_url_warning()
        && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        eprintln!("warning: {warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_secret_and_contact() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let id = "0190f5d2-7c1e-7a4b-9f00-123456789abc";
        let token = token(secret, id).unwrap();
        assert_eq!(contact_of(secret, &token).as_deref(), Some(id));
        assert_eq!(contact_of(b"another-secret-of-16+", &token), None);
        let mut forged = URL_SAFE_NO_PAD.decode(&token).unwrap();
        forged[0] ^= 1;
        assert_eq!(contact_of(secret, &URL_SAFE_NO_PAD.encode(forged)), None);
        assert_eq!(contact_of(secret, "garbage"), None);
    }
}
