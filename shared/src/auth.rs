//! API keys: named keys with scopes, configured in a secret variable as
//! SHA-256 digests (the plain keys are never stored by Kizuna), checked in
//! constant time. The key's name is the actor recorded on every write.

use crate::error::ApiError;
use http::HeaderMap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key may do. `*` grants everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    ContactsRead,
    ContactsWrite,
    ContactsErase,
    FormsAdmin,
    OrdersRead,
    PointsRead,
    PointsWrite,
    PointsAdmin,
    SegmentsRead,
    SegmentsWrite,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ContactsRead => "contacts:read",
            Scope::ContactsWrite => "contacts:write",
            Scope::ContactsErase => "contacts:erase",
            Scope::FormsAdmin => "forms:admin",
            Scope::OrdersRead => "orders:read",
            Scope::PointsRead => "points:read",
            Scope::PointsWrite => "points:write",
            Scope::PointsAdmin => "points:admin",
            Scope::SegmentsRead => "segments:read",
            Scope::SegmentsWrite => "segments:write",
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
    scopes: Vec<String>,
}

/// The configured keys, parsed from the `api_keys` variable:
/// `[{"name":"crm-staff","sha256":"<hex digest of the key>","scopes":["contacts:read"]}]`.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys(Vec<ApiKey>);

impl ApiKeys {
    pub fn parse(json: &str) -> anyhow::Result<ApiKeys> {
        let entries: Vec<KeyEntry> = serde_json::from_str(json)
            .map_err(|e| anyhow::anyhow!("api_keys is not a JSON list of keys: {e}"))?;
        let mut keys = Vec::with_capacity(entries.len());
        for entry in entries {
            let bytes = hex::decode(entry.sha256.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    anyhow::anyhow!("api_keys: key `{}` needs a 64-hex-digit sha256", entry.name)
                })?;
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&bytes);
            keys.push(ApiKey {
                name: entry.name,
                digest,
                scopes: entry.scopes,
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
        if key.scopes.iter().any(|s| s == "*" || s == scope.as_str()) {
            Ok(Actor::Key(key.name.clone()))
        } else {
            Err(ApiError::Forbidden(format!(
                "this key lacks the `{}` scope",
                scope.as_str()
            )))
        }
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
}
