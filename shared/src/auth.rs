//! API keys: named keys with scopes, configured in a secret variable as
//! SHA-256 digests (the plain keys are never stored by Kizuna), checked in
//! constant time. The key's name is the actor recorded on every write.

use crate::error::ApiError;
use http::HeaderMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use subtle::ConstantTimeEq;

/// What a key may do. `*` grants everything. The list is closed: an
/// `api_keys` value naming anything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    ContactsRead,
    ContactsWrite,
    ContactsErase,
    FormsAdmin,
    OrdersRead,
    PointsRead,
    /// Spend points (a POS at checkout); nothing else.
    PointsRedeem,
    /// Give points with a reason (campaigns, goodwill).
    PointsAward,
    PointsAdmin,
    SegmentsRead,
    SegmentsWrite,
    /// Personal fields (email, phone, name) of segment members.
    SegmentsExport,
    /// Webhook endpoints (events out): create, change, rotate secrets.
    WebhooksAdmin,
}

impl Scope {
    /// Every scope this build knows.
    pub const ALL: &[Scope] = &[
        Scope::ContactsRead,
        Scope::ContactsWrite,
        Scope::ContactsErase,
        Scope::FormsAdmin,
        Scope::OrdersRead,
        Scope::PointsRead,
        Scope::PointsRedeem,
        Scope::PointsAward,
        Scope::PointsAdmin,
        Scope::SegmentsRead,
        Scope::SegmentsWrite,
        Scope::SegmentsExport,
        Scope::WebhooksAdmin,
    ];

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.iter().copied().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ContactsRead => "contacts:read",
            Scope::ContactsWrite => "contacts:write",
            Scope::ContactsErase => "contacts:erase",
            Scope::FormsAdmin => "forms:admin",
            Scope::OrdersRead => "orders:read",
            Scope::PointsRead => "points:read",
            Scope::PointsRedeem => "points:redeem",
            Scope::PointsAward => "points:award",
            Scope::PointsAdmin => "points:admin",
            Scope::SegmentsRead => "segments:read",
            Scope::SegmentsWrite => "segments:write",
            Scope::SegmentsExport => "segments:export",
            Scope::WebhooksAdmin => "webhooks:admin",
        }
    }
}

/// Who made a request: an API key's name, or an anonymous public caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Key(String),
    Form(String),
    Unsubscribe,
}

impl Actor {
    /// The value written to `created_by` / `recorded_by` columns.
    pub fn label(&self) -> String {
        match self {
            Actor::Key(name) => format!("key:{name}"),
            Actor::Form(form_id) => format!("form:{form_id}"),
            Actor::Unsubscribe => "unsubscribe-link".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    sha256: String,
    scopes: Vec<String>,
}

#[derive(Debug, Clone)]
struct ApiKey {
    name: String,
    digest: [u8; 32],
    /// `*`: every scope.
    all: bool,
    scopes: BTreeSet<Scope>,
}

/// The configured keys, parsed from the `api_keys` variable:
/// `[{"name":"crm-staff","sha256":"<hex digest of the key>","scopes":["contacts:read"]}]`.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys(Vec<ApiKey>);

impl ApiKeys {
    /// Parses and checks the configuration. Refused, so that every
    /// request answers 500 until it is fixed: a key without a 64-hex-digit
    /// digest, two keys with one name (the name is the actor recorded on
    /// writes) or one digest (which key would it be?), and a scope this
    /// build does not know (a retired one such as `points:write`, or a
    /// typo), rather than a key that silently grants less or more than
    /// its configuration says. Messages name keys by name, never by digest.
    pub fn parse(json: &str) -> anyhow::Result<ApiKeys> {
        let entries: Vec<KeyEntry> = serde_json::from_str(json)
            .map_err(|e| anyhow::anyhow!("api_keys is not a JSON list of keys: {e}"))?;
        let mut keys: Vec<ApiKey> = Vec::with_capacity(entries.len());
        for entry in entries {
            let bytes = hex::decode(entry.sha256.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    anyhow::anyhow!("api_keys: key `{}` needs a 64-hex-digit sha256", entry.name)
                })?;
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&bytes);
            if keys.iter().any(|k| k.name == entry.name) {
                anyhow::bail!(
                    "api_keys: two keys are named `{}`; names must be unique",
                    entry.name
                );
            }
            if let Some(other) = keys.iter().find(|k| k.digest == digest) {
                anyhow::bail!(
                    "api_keys: keys `{}` and `{}` have the same sha256; each key needs its own",
                    other.name,
                    entry.name
                );
            }
            let mut all = false;
            let mut scopes = BTreeSet::new();
            for text in &entry.scopes {
                if text == "*" {
                    all = true;
                } else if let Some(scope) = Scope::parse(text) {
                    scopes.insert(scope);
                } else {
                    anyhow::bail!(
                        "api_keys: key `{}` has an unknown scope {}; known: {}, *",
                        entry.name,
                        shown_scope(text),
                        Scope::ALL
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            keys.push(ApiKey {
                name: entry.name,
                digest,
                all,
                scopes,
            });
        }
        Ok(ApiKeys(keys))
    }

    /// Checks the bearer key and its scope: 401 when missing or unknown,
    /// 403 when the key lacks `scope`.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<Actor, ApiError> {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, key) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
            })
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every key is compared, so timing does not tell which one matched.
        let mut found: Option<&ApiKey> = None;
        for key in &self.0 {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        let key = found.ok_or(ApiError::Unauthorized)?;
        if key.all || key.scopes.contains(&scope) {
            Ok(Actor::Key(key.name.clone()))
        } else {
            Err(ApiError::Forbidden(format!(
                "this key lacks the `{}` scope",
                scope.as_str()
            )))
        }
    }
}

/// An unknown scope as the log may show it: quoted when it looks like a
/// scope (`points:write`), withheld otherwise (a key pasted in by mistake
/// must not reach the log).
fn shown_scope(text: &str) -> String {
    let looks_like_a_scope = text.len() <= 40
        && text.split_once(':').is_some_and(|(a, b)| {
            [a, b].iter().all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c == '-')
            })
        });
    if looks_like_a_scope {
        format!("`{text}`")
    } else {
        "(not shown: it does not look like a scope)".to_owned()
    }
}

/// The hex SHA-256 digest to put in `api_keys` for a key.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        h
    }

    #[test]
    fn checks_key_and_scope() {
        let keys = ApiKeys::parse(&format!(
            r#"[{{"name":"staff","sha256":"{}","scopes":["contacts:read"]}},
                {{"name":"admin","sha256":"{}","scopes":["*"]}}]"#,
            key_digest("s3cret"),
            key_digest("r00t")
        ))
        .unwrap();
        assert_eq!(
            keys.authorize(&headers("Bearer s3cret"), Scope::ContactsRead)
                .unwrap(),
            Actor::Key("staff".into())
        );
        assert!(matches!(
            keys.authorize(&headers("Bearer s3cret"), Scope::ContactsWrite),
            Err(ApiError::Forbidden(_))
        ));
        assert!(
            keys.authorize(&headers("bearer r00t"), Scope::FormsAdmin)
                .is_ok()
        );
        for bad in ["Bearer nope", "Basic s3cret", "Bearer ", "s3cret"] {
            assert!(
                matches!(
                    keys.authorize(&headers(bad), Scope::ContactsRead),
                    Err(ApiError::Unauthorized)
                ),
                "case {bad:?}"
            );
        }
        assert!(matches!(
            keys.authorize(&HeaderMap::new(), Scope::ContactsRead),
            Err(ApiError::Unauthorized)
        ));
    }

    #[test]
    fn rejects_malformed_configuration() {
        assert!(ApiKeys::parse("staff:abc").is_err());
        assert!(ApiKeys::parse(r#"[{"name":"a","sha256":"00","scopes":[]}]"#).is_err());
    }

    fn refusal(keys: &[(&str, &str, &[&str])]) -> String {
        let json = serde_json::Value::Array(
            keys.iter()
                .map(|(name, key, scopes)| {
                    serde_json::json!({"name": name, "sha256": key_digest(key), "scopes": scopes})
                })
                .collect(),
        );
        format!(
            "{:#}",
            ApiKeys::parse(&json.to_string()).expect_err("refused")
        )
    }

    #[test]
    fn refuses_duplicate_names_and_digests_and_unknown_scopes_naming_the_key() {
        let cases = [
            (
                "duplicate name",
                refusal(&[("pos", "k1", &["points:redeem"]), ("pos", "k2", &["*"])]),
                "two keys are named `pos`",
            ),
            (
                "duplicate digest",
                refusal(&[("pos", "k1", &[]), ("staff", "k1", &["*"])]),
                "keys `pos` and `staff` have the same sha256",
            ),
            (
                "retired scope",
                refusal(&[("pos", "k1", &["points:read", "points:write"])]),
                "key `pos` has an unknown scope `points:write`",
            ),
            (
                "typo",
                refusal(&[("mail", "k1", &["segments:exports"])]),
                "key `mail` has an unknown scope `segments:exports`",
            ),
            (
                "a pasted key",
                refusal(&[("mail", "k1", &["sk_live_0123456789"])]),
                "key `mail` has an unknown scope (not shown",
            ),
        ];
        for (case, message, expected) in cases {
            assert!(message.contains(expected), "case {case}: {message}");
            assert!(
                !message.contains(&key_digest("k1")),
                "case {case}: {message}"
            );
            assert!(!message.contains("sk_live"), "case {case}: {message}");
        }
    }

    #[test]
    fn every_scope_parses_back_and_star_grants_them_all() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(*scope));
        }
        assert_eq!(Scope::parse("points:write"), None);
        let keys = ApiKeys::parse(&format!(
            r#"[{{"name":"admin","sha256":"{}","scopes":["*"]}},
                {{"name":"pos","sha256":"{}","scopes":["points:redeem"]}}]"#,
            key_digest("r00t"),
            key_digest("p0s")
        ))
        .unwrap();
        for scope in Scope::ALL {
            assert!(keys.authorize(&headers("Bearer r00t"), *scope).is_ok());
            assert_eq!(
                keys.authorize(&headers("Bearer p0s"), *scope).is_ok(),
                *scope == Scope::PointsRedeem,
                "{scope:?}"
            );
        }
    }
}
