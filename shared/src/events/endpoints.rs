//! Webhook endpoints, the receivers of events out, behind
//! `/v1/webhook-endpoints`: where an endpoint may point (HTTPS, the
//! `webhook_allowed_hosts` allow-list, no literal private address), which
//! topics it takes, and its Standard Webhooks signing secret, generated
//! here, shown once, kept encrypted at rest and rotated with an overlap.
//! Delivery reads the same rows.

use crate::Ctx;
use crate::auth::Actor;
use crate::db::transaction;
use crate::error::{ApiError, FieldError};
use crate::http::{
    Request, Response, decode_cursor, empty_response, encode_cursor, json_response, limit_between,
    query_pairs, query_param,
};
use crate::ids::{ContactId, new_id};
use crate::ports::{Db, Kv, Row};
use crate::timestamp;
use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value as Json, json};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How many endpoints one Kizuna keeps: every event is signed and sent
/// once per subscribed endpoint, so the fan-out stays bounded.
pub const MAX_ENDPOINTS: i64 = 100;
pub const MAX_URL_LENGTH: usize = 2048;
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// How long the previous secret keeps signing after a rotation, unless
/// the rotation asks for another overlap (`overlap_hours`, up to a week).
pub const DEFAULT_ROTATION_OVERLAP_HOURS: i64 = 24;
pub const MAX_ROTATION_OVERLAP_HOURS: i64 = 168;
/// Subscribes an endpoint to every topic, including topics added later.
pub const ALL_TOPICS: &str = "*";
/// Random bytes in a secret: Standard Webhooks asks for 24 to 64; 24
/// encode to 32 base64 characters without padding, so the hint (the last
/// four) is never a `=`.
const SECRET_BYTES: usize = 24;
const SECRET_PREFIX: &str = "whsec_";

// ---------------------------------------------------------------------
// Secrets at rest

/// The key that encrypts endpoint secrets, derived from the
/// `webhook_secret_key` variable. SHA-256 with a label, so that the same
/// text used as another kind of key elsewhere yields an unrelated key.
pub struct SecretBox {
    cipher: chacha20poly1305::XChaCha20Poly1305,
}

/// The stored form's version: what the rest of the text means.
const SEALED_PREFIX: &str = "v1:";

impl SecretBox {
    pub fn new(key_text: &str) -> SecretBox {
        use chacha20poly1305::KeyInit as _;
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"kizuna webhook endpoint secrets v1\0");
        hasher.update(key_text.as_bytes());
        let key: [u8; 32] = hasher.finalize().into();
        SecretBox {
            cipher: chacha20poly1305::XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// `secret` encrypted under a fresh random nonce (XChaCha's 24 bytes
    /// make random nonces safe), bound to the endpoint's id so a secret
    /// copied to another row does not decrypt there.
    pub fn seal(&self, endpoint_id: &str, secret: &str) -> anyhow::Result<String> {
        use chacha20poly1305::aead::{Aead as _, Payload};
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce)
            .map_err(|e| anyhow::anyhow!("no random numbers for a nonce: {e}"))?;
        let sealed = self
            .cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: secret.as_bytes(),
                    aad: endpoint_id.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("failed to encrypt a webhook secret"))?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        Ok(format!("{SEALED_PREFIX}{}", STANDARD.encode(stored)))
    }

    /// The secret `seal` stored for `endpoint_id`. Fails on another key
    /// (a changed `webhook_secret_key`), another row, or altered text.
    pub fn open(&self, endpoint_id: &str, stored: &str) -> anyhow::Result<String> {
        use chacha20poly1305::aead::{Aead as _, Payload};
        let bytes = stored
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b64| STANDARD.decode(b64).ok())
            .filter(|bytes| bytes.len() > 24)
            .context("a stored webhook secret is not in the v1 form")?;
        let (nonce, sealed) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().context("nonce length")?;
        let plain = self
            .cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: sealed,
                    aad: endpoint_id.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "a stored webhook secret does not decrypt: was `webhook_secret_key` changed?"
                )
            })?;
        String::from_utf8(plain).context("a decrypted webhook secret is not text")
    }
}

/// A new signing secret in the Standard Webhooks form: `whsec_` and the
/// base64 of random bytes.
pub fn new_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; SECRET_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no random numbers for a secret: {e}"))?;
    Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)))
}

/// What list and read answers show of a secret: its last four characters.
fn hint(secret: &str) -> String {
    let start = secret.len().saturating_sub(4);
    secret.get(start..).unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------------
// Where an endpoint may point

/// One entry of `webhook_allowed_hosts`: a host (`hooks.example.jp`), a
/// suffix pattern (`*.zapier.com`: any name below it), or an IP literal,
/// with an optional port (`:8443`, `:*`) and an optional `https://` or
/// `http://` prefix; `http://` also allows plain HTTP to it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AllowedHost {
    plain_http: bool,
    /// Lower case; for a suffix pattern, what follows `*.` with its dot.
    host: String,
    suffix: bool,
    /// `None`: any port.
    port: Option<u16>,
}

/// The parsed `webhook_allowed_hosts` variable (comma- or space-separated
/// entries). Empty: any public HTTPS host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<AllowedHost>);

impl AllowList {
    pub fn parse(text: &str) -> anyhow::Result<AllowList> {
        let mut entries = Vec::new();
        for entry in text
            .split([',', ' ', '\n'])
            .filter(|e| !e.trim().is_empty())
        {
            let entry = entry.trim().to_ascii_lowercase();
            let bad = || {
                anyhow::anyhow!(
                    "variable `webhook_allowed_hosts`: `{entry}` is not a host, `*.suffix` or IP, with an optional `http://`/`https://` prefix and `:port` or `:*`"
                )
            };
            let (plain_http, rest) = if let Some(rest) = entry.strip_prefix("http://") {
                (true, rest)
            } else {
                (false, entry.strip_prefix("https://").unwrap_or(&entry))
            };
            let (host, port) = match rest.strip_prefix('[') {
                Some(bracketed) => {
                    let (host, after) = bracketed.split_once(']').ok_or_else(bad)?;
                    (host, after.strip_prefix(':'))
                }
                None => match rest.rsplit_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (rest, None),
                },
            };
            let port = match port {
                None | Some("*") => None,
                Some(port) => Some(port.parse::<u16>().map_err(|_| bad())?),
            };
            let (host, suffix) = match host.strip_prefix("*.") {
                Some(rest) => (format!(".{rest}"), true),
                None => (host.to_owned(), false),
            };
            let name_chars = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
            };
            if !name_chars(host.trim_start_matches('.')) {
                return Err(bad());
            }
            // IPv6 literals are kept in the form the URL parser serialises.
            let host = match host.parse::<Ipv6Addr>() {
                Ok(ip) if !suffix => ip.to_string(),
                _ => host,
            };
            entries.push(AllowedHost {
                plain_http,
                host,
                suffix,
                port,
            });
        }
        Ok(AllowList(entries))
    }

    fn matching(&self, host: &str, port: u16) -> impl Iterator<Item = &AllowedHost> {
        self.0.iter().filter(move |entry| {
            let host_matches = if entry.suffix {
                host.ends_with(entry.host.as_str())
            } else {
                host == entry.host
            };
            host_matches && entry.port.is_none_or(|p| p == port)
        })
    }
}

/// Whether `ip` is an address a webhook must not reach unless the
/// allow-list names it: loopback, private (RFC 1918, IPv6 unique local),
/// link-local, CGNAT (100.64/10), unspecified, broadcast, multicast,
/// documentation and benchmark ranges, and IPv4 wrapped in IPv6.
fn is_non_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_non_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_non_public_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || first == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
                || first == 0x0064 && v6.segments()[1] == 0xff9b // NAT64 64:ff9b::/96
                || first == 0x2002 // 6to4: wraps any IPv4
                || v6.segments()[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible ::a.b.c.d
        }
    }
}

fn is_non_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

/// Checks an endpoint URL; answers it as the URL parser serialises it,
/// or why it is refused.
pub fn check_url(text: &str, allowed: &AllowList) -> Result<String, String> {
    if text.len() > MAX_URL_LENGTH {
        return Err(format!("at most {MAX_URL_LENGTH} characters"));
    }
    let url = url::Url::parse(text.trim()).map_err(|e| format!("not an absolute URL ({e})"))?;
    let plain_http = match url.scheme() {
        "https" => false,
        "http" => true,
        _ => return Err("must be an https:// URL".into()),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a #fragment, which is never sent".into());
    }
    let host = url.host().ok_or("must name a host")?;
    let port = url.port_or_known_default().unwrap_or(443);
    // `host_str` is the form the allow-list compares: IPv6 without brackets.
    let (name, ip) = match host {
        url::Host::Domain(name) => (name.to_owned(), None),
        url::Host::Ipv4(ip) => (ip.to_string(), Some(IpAddr::V4(ip))),
        url::Host::Ipv6(ip) => (ip.to_string(), Some(IpAddr::V6(ip))),
    };
    let mut matching = allowed.matching(&name, port);
    let listed = if plain_http {
        matching.any(|entry| entry.plain_http)
    } else {
        matching.next().is_some()
    };
    if plain_http && !listed {
        return Err(
            "must be an https:// URL (plain http only to hosts `webhook_allowed_hosts` lists with http://)"
                .into(),
        );
    }
    // An allow-list entry names addresses one by one: a suffix pattern
    // never opens a private address.
    let listed_by_name = allowed
        .matching(&name, port)
        .any(|entry| !entry.suffix && (entry.plain_http || !plain_http));
    let local_name = name == "localhost" || name.ends_with(".localhost");
    if (ip.is_some_and(is_non_public) || local_name) && !listed_by_name {
        return Err(format!(
            "{name} is a private, loopback, link-local or reserved address; webhooks go to public hosts"
        ));
    }
    if !allowed.0.is_empty() && !listed {
        return Err(format!(
            "{name} is not among the hosts `webhook_allowed_hosts` allows"
        ));
    }
    Ok(url.to_string())
}

// ---------------------------------------------------------------------
// Topics

/// The topics of a request, in [`super::TOPICS`] order, each once; or
/// `["*"]` alone for every topic, including topics added later.
fn parse_topics(value: &Json, errors: &mut Vec<FieldError>) -> Option<Vec<String>> {
    let Json::Array(items) = value else {
        errors.push(FieldError::new("/topics", "a list of topic names"));
        return None;
    };
    if items.is_empty() {
        errors.push(FieldError::new(
            "/topics",
            "at least one topic, or \"*\" for all",
        ));
        return None;
    }
    let mut names = Vec::new();
    let mut ok = true;
    for (index, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(name) if name == ALL_TOPICS || super::is_topic(name) => names.push(name),
            _ => {
                ok = false;
                errors.push(FieldError::new(
                    format!("/topics/{index}"),
                    format!(
                        "not a topic; known: {}, or \"*\" for all",
                        super::TOPICS.join(", ")
                    ),
                ));
            }
        }
    }
    if !ok {
        return None;
    }
    if names.contains(&ALL_TOPICS) {
        if names.iter().any(|n| *n != ALL_TOPICS) {
            errors.push(FieldError::new(
                "/topics",
                "\"*\" already means every topic: send it alone",
            ));
            return None;
        }
        return Some(vec![ALL_TOPICS.to_owned()]);
    }
    Some(
        super::TOPICS
            .iter()
            .filter(|topic| names.contains(topic))
            .map(|topic| (*topic).to_owned())
            .collect(),
    )
}

// ---------------------------------------------------------------------
// Requests

/// The members a create or update may carry, checked and converted.
#[derive(Default)]
struct Changes {
    url: Option<String>,
    topics: Option<Vec<String>>,
    /// `Some(None)`: cleared.
    description: Option<Option<String>>,
    enabled: Option<bool>,
    include_personal_data: Option<bool>,
}

const MEMBERS: &[&str] = &[
    "url",
    "topics",
    "description",
    "enabled",
    "include_personal_data",
];

fn parse_changes(
    body: &Map<String, Json>,
    allowed: &AllowList,
    creating: bool,
) -> Result<Changes, ApiError> {
    let mut errors = Vec::new();
    let mut changes = Changes::default();
    for key in body.keys() {
        if !MEMBERS.contains(&key.as_str()) {
            errors.push(FieldError::new(
                format!("/{key}"),
                format!("unknown member; known: {}", MEMBERS.join(", ")),
            ));
        }
    }
    match body.get("url") {
        Some(Json::String(text)) => match check_url(text, allowed) {
            Ok(url) => changes.url = Some(url),
            Err(message) => errors.push(FieldError::new("/url", message)),
        },
        None if !creating => {}
        None => errors.push(FieldError::new(
            "/url",
            "required: the receiver's https:// URL",
        )),
        Some(_) => errors.push(FieldError::new("/url", "a string")),
    }
    match body.get("topics") {
        Some(value) => changes.topics = parse_topics(value, &mut errors),
        None if !creating => {}
        None => errors.push(FieldError::new(
            "/topics",
            "required: a list of topic names, or [\"*\"] for all",
        )),
    }
    match body.get("description") {
        None => {}
        Some(Json::Null) => changes.description = Some(None),
        Some(Json::String(text)) => {
            let length_before = errors.len();
            let text = crate::profile::check_text(
                "/description",
                text,
                MAX_DESCRIPTION_CHARS,
                &mut errors,
            );
            if errors.len() == length_before {
                changes.description = Some(text);
            }
        }
        Some(_) => errors.push(FieldError::new("/description", "a string or null")),
    }
    for (member, slot) in [
        ("enabled", &mut changes.enabled),
        ("include_personal_data", &mut changes.include_personal_data),
    ] {
        match body.get(member) {
            None => {}
            Some(Json::Bool(value)) => *slot = Some(*value),
            Some(_) => errors.push(FieldError::new(format!("/{member}"), "true or false")),
        }
    }
    if errors.is_empty() {
        Ok(changes)
    } else {
        Err(ApiError::Validation(errors))
    }
}

fn allow_list<D: Db, K: Kv>(ctx: &Ctx<'_, D, K>) -> anyhow::Result<AllowList> {
    AllowList::parse(&ctx.config.webhook_allowed_hosts)
}

fn secret_box<D: Db, K: Kv>(ctx: &Ctx<'_, D, K>) -> anyhow::Result<SecretBox> {
    Ok(SecretBox::new(ctx.config.webhook_secret_key()?))
}

fn endpoint_json(row: Row<'_>) -> anyhow::Result<Json> {
    let topics: Json =
        serde_json::from_str(row.str("topics")?).context("stored webhook endpoint topics")?;
    Ok(json!({
        "id": row.str("id")?,
        "url": row.str("url")?,
        "topics": topics,
        "description": row.opt_str("description")?,
        "enabled": row.i64("enabled")? == 1,
        "disabled_reason": row.opt_str("disabled_reason")?,
        "include_personal_data": row.i64("include_personal_data")? == 1,
        "secret_hint": row.str("secret_hint")?,
        "secret_rotated_at": row.opt_str("secret_rotated_at")?,
        "previous_secret_expires_at": row.opt_str("previous_secret_expires_at")?,
        "created_at": row.str("created_at")?,
        "created_by": row.str("created_by")?,
        "updated_at": row.str("updated_at")?,
        "updated_by": row.str("updated_by")?,
    }))
}

/// The columns answers show: never the sealed secrets.
const COLUMNS: &str = "id, url, topics, description, enabled, disabled_reason, include_personal_data, \
     secret_hint, secret_rotated_at, previous_secret_expires_at, created_at, created_by, updated_at, updated_by";

fn not_found() -> ApiError {
    ApiError::NotFound("no webhook endpoint with this id".into())
}

/// An endpoint's id from a path, or 404: anything but a UUID names none.
fn endpoint_id(text: &str) -> Result<String, ApiError> {
    ContactId::parse(text)
        .map(|id| id.as_str().to_owned())
        .ok_or_else(not_found)
}

/// `POST /v1/webhook-endpoints`: 201 with the endpoint and, this once,
/// its `secret`. `may_send_personal_data` answers the 403 for
/// `include_personal_data: true` when the key lacks `segments:export`.
pub async fn create<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    request: &Request,
    may_send_personal_data: impl FnOnce() -> Result<(), ApiError>,
) -> Result<Response, ApiError> {
    let body: Map<String, Json> = crate::http::read_json(request)?;
    let changes = parse_changes(&body, &allow_list(ctx)?, true)?;
    if changes.include_personal_data == Some(true) {
        may_send_personal_data()?;
    }
    let secret_box = secret_box(ctx)?;
    let now = ctx.clock.now();
    let id = new_id(now);
    let secret = new_secret()?;
    let sealed = secret_box.seal(&id, &secret)?;
    let now = timestamp::format(now);
    let topics = Json::from(changes.topics.unwrap_or_default()).to_string();
    let row = transaction(ctx.db, async || -> Result<Json, ApiError> {
        // The count and the insert are one statement inside the write
        // lock, so two racing creates cannot both take the 100th place.
        let rows = ctx
            .db
            .execute(
                &format!(
                    "INSERT INTO webhook_endpoints (id, url, topics, description, enabled, include_personal_data,
                         secret, secret_hint, created_at, created_by, updated_at, updated_by)
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9, ?10
                     WHERE (SELECT count(*) FROM webhook_endpoints) < ?11
                     RETURNING {COLUMNS}"
                ),
                &[
                    id.as_str().into(),
                    changes.url.as_deref().into(),
                    topics.as_str().into(),
                    changes.description.flatten().into(),
                    changes.enabled.unwrap_or(true).into(),
                    changes.include_personal_data.unwrap_or(false).into(),
                    sealed.as_str().into(),
                    hint(&secret).into(),
                    now.as_str().into(),
                    actor.label().into(),
                    MAX_ENDPOINTS.into(),
                ],
            )
            .await
            .context("failed to insert a webhook endpoint")?;
        match rows.first() {
            Some(row) => Ok(endpoint_json(row)?),
            None => Err(ApiError::invalid(
                "",
                format!(
                    "Kizuna keeps at most {MAX_ENDPOINTS} webhook endpoints: delete one first"
                ),
            )),
        }
    })
    .await?;
    let mut answer = row;
    answer["secret"] = Json::from(secret);
    Ok(json_response(http::StatusCode::CREATED, &answer))
}

/// `GET /v1/webhook-endpoints`: keyset pages by id (creation order).
pub async fn list(db: &impl Db, request: &Request) -> Result<Response, ApiError> {
    let pairs = query_pairs(request, &["limit", "cursor"])?;
    let limit = limit_between(&pairs, 50, MAX_ENDPOINTS as usize)?;
    let after = match query_param(&pairs, "cursor") {
        None => String::new(),
        Some(cursor) => {
            let id = decode_cursor(cursor, 1)?.pop().unwrap_or_default();
            ContactId::parse(&id)
                .ok_or_else(|| ApiError::invalid("cursor", "not a cursor this API returned"))?
                .as_str()
                .to_owned()
        }
    };
    let rows = db
        .execute(
            &format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE id > ?1 ORDER BY id LIMIT ?2"),
            &[after.as_str().into(), (limit as i64 + 1).into()],
        )
        .await
        .context("failed to list webhook endpoints")?;
    let mut items: Vec<Json> = rows
        .iter()
        .map(endpoint_json)
        .collect::<anyhow::Result<_>>()?;
    let mut next_cursor = None;
    if items.len() > limit {
        items.truncate(limit);
        next_cursor = items
            .last()
            .and_then(|last| last["id"].as_str())
            .map(|id| encode_cursor(&[id]));
    }
    Ok(json_response(
        http::StatusCode::OK,
        &json!({ "items": items, "next_cursor": next_cursor }),
    ))
}

async fn load(db: &impl Db, id: &str) -> Result<Json, ApiError> {
    let rows = db
        .execute(
            &format!("SELECT {COLUMNS} FROM webhook_endpoints WHERE id = ?1"),
            &[id.into()],
        )
        .await
        .context("failed to read a webhook endpoint")?;
    Ok(endpoint_json(rows.first().ok_or_else(not_found)?)?)
}

/// `GET /v1/webhook-endpoints/{id}`.
pub async fn get(db: &impl Db, id: &str) -> Result<Response, ApiError> {
    let id = endpoint_id(id)?;
    Ok(json_response(http::StatusCode::OK, &load(db, &id).await?))
}

/// `PATCH /v1/webhook-endpoints/{id}`: a merge patch of `url`, `topics`,
/// `description`, `enabled`, `include_personal_data`. Enabling an
/// endpoint clears why delivery disabled it.
pub async fn update<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    id: &str,
    request: &Request,
    may_send_personal_data: impl FnOnce() -> Result<(), ApiError>,
) -> Result<Response, ApiError> {
    let id = endpoint_id(id)?;
    let body = crate::http::read_merge_patch(request)?;
    let changes = parse_changes(&body, &allow_list(ctx)?, false)?;
    if changes.include_personal_data == Some(true) {
        may_send_personal_data()?;
    }
    let now = timestamp::format(ctx.clock.now());
    let topics = changes.topics.map(|t| Json::from(t).to_string());
    let row = transaction(ctx.db, async || -> Result<Json, ApiError> {
        let rows = ctx
            .db
            .execute(
                &format!(
                    "UPDATE webhook_endpoints SET
                         url = coalesce(?2, url),
                         topics = coalesce(?3, topics),
                         description = CASE WHEN ?4 THEN ?5 ELSE description END,
                         enabled = coalesce(?6, enabled),
                         disabled_reason = CASE WHEN ?6 = 1 THEN NULL ELSE disabled_reason END,
                         include_personal_data = coalesce(?7, include_personal_data),
                         updated_at = ?8, updated_by = ?9
                     WHERE id = ?1
                     RETURNING {COLUMNS}"
                ),
                &[
                    id.as_str().into(),
                    changes.url.as_deref().into(),
                    topics.as_deref().into(),
                    changes.description.is_some().into(),
                    changes.description.clone().flatten().into(),
                    changes.enabled.into(),
                    changes.include_personal_data.into(),
                    now.as_str().into(),
                    actor.label().into(),
                ],
            )
            .await
            .context("failed to update a webhook endpoint")?;
        Ok(endpoint_json(rows.first().ok_or_else(not_found)?)?)
    })
    .await?;
    Ok(json_response(http::StatusCode::OK, &row))
}

/// `DELETE /v1/webhook-endpoints/{id}`: 204; nothing more is sent to it.
pub async fn delete<D: Db, K: Kv>(ctx: &Ctx<'_, D, K>, id: &str) -> Result<Response, ApiError> {
    let id = endpoint_id(id)?;
    let deleted = transaction(ctx.db, async || -> Result<bool, ApiError> {
        let rows = ctx
            .db
            .execute(
                "DELETE FROM webhook_endpoints WHERE id = ?1 RETURNING id",
                &[id.as_str().into()],
            )
            .await
            .context("failed to delete a webhook endpoint")?;
        Ok(!rows.is_empty())
    })
    .await?;
    if !deleted {
        return Err(not_found());
    }
    Ok(empty_response(http::StatusCode::NO_CONTENT))
}

/// `POST /v1/webhook-endpoints/{id}/rotate-secret`, with an optional body
/// `{"overlap_hours": n}` (0 to 168, default 24): a new secret, shown
/// this once; the current one becomes the previous and keeps signing
/// until the overlap ends. A previous secret from an earlier rotation is
/// dropped: at most two sign at once.
pub async fn rotate_secret<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    let id = endpoint_id(id)?;
    let overlap_hours = if request.body().is_empty() {
        DEFAULT_ROTATION_OVERLAP_HOURS
    } else {
        let body: Map<String, Json> = crate::http::read_json(request)?;
        let mut errors = Vec::new();
        for key in body.keys().filter(|k| *k != "overlap_hours") {
            errors.push(FieldError::new(
                format!("/{key}"),
                "unknown member; known: overlap_hours",
            ));
        }
        let hours = match body.get("overlap_hours") {
            None => Some(DEFAULT_ROTATION_OVERLAP_HOURS),
            Some(value) => value
                .as_i64()
                .filter(|h| (0..=MAX_ROTATION_OVERLAP_HOURS).contains(h)),
        };
        if hours.is_none() {
            errors.push(FieldError::new(
                "/overlap_hours",
                format!("a whole number of hours from 0 to {MAX_ROTATION_OVERLAP_HOURS}"),
            ));
        }
        match hours {
            Some(hours) if errors.is_empty() => hours,
            _ => return Err(ApiError::Validation(errors)),
        }
    };
    let secret_box = secret_box(ctx)?;
    let now = ctx.clock.now();
    let secret = new_secret()?;
    let sealed = secret_box.seal(&id, &secret)?;
    let expires = timestamp::format(now + time::Duration::hours(overlap_hours));
    let now = timestamp::format(now);
    let row = transaction(ctx.db, async || -> Result<Json, ApiError> {
        // SQLite evaluates every right-hand side against the old row, so
        // the current secret moves to `previous_secret` as it is replaced.
        let rows = ctx
            .db
            .execute(
                &format!(
                    "UPDATE webhook_endpoints SET
                         previous_secret = CASE WHEN ?5 THEN secret END,
                         previous_secret_expires_at = CASE WHEN ?5 THEN ?4 END,
                         secret = ?2, secret_hint = ?3, secret_rotated_at = ?6,
                         updated_at = ?6, updated_by = ?7
                     WHERE id = ?1
                     RETURNING {COLUMNS}"
                ),
                &[
                    id.as_str().into(),
                    sealed.as_str().into(),
                    hint(&secret).into(),
                    expires.as_str().into(),
                    (overlap_hours > 0).into(),
                    now.as_str().into(),
                    actor.label().into(),
                ],
            )
            .await
            .context("failed to rotate a webhook secret")?;
        Ok(endpoint_json(rows.first().ok_or_else(not_found)?)?)
    })
    .await?;
    let mut answer = row;
    answer["secret"] = Json::from(secret);
    Ok(json_response(http::StatusCode::OK, &answer))
}

/// The secrets that sign a delivery to `endpoint_id` at `now`: the
/// current one, and the previous one while its overlap lasts (Standard
/// Webhooks sends one `v1,` signature per secret).
pub async fn signing_secrets<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    endpoint_id: &str,
) -> anyhow::Result<Vec<String>> {
    let rows = ctx
        .db
        .execute(
            "SELECT secret, previous_secret, previous_secret_expires_at
             FROM webhook_endpoints WHERE id = ?1",
            &[endpoint_id.into()],
        )
        .await
        .context("failed to read a webhook endpoint's secrets")?;
    let Some(row) = rows.first() else {
        return Ok(Vec::new());
    };
    let secret_box = secret_box(ctx)?;
    let mut secrets = vec![secret_box.open(endpoint_id, row.str("secret")?)?];
    let now = timestamp::format(ctx.clock.now());
    if let (Some(previous), Some(until)) = (
        row.opt_str("previous_secret")?,
        row.opt_str("previous_secret_expires_at")?,
    ) && now.as_str() < until
    {
        secrets.push(secret_box.open(endpoint_id, previous)?);
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_a_wrong_key_or_row_fails() {
        let key = SecretBox::new("a-test-key-of-at-least-thirty-two-chars");
        let secret = new_secret().unwrap();
        assert!(secret.starts_with("whsec_"), "{secret}");
        let raw = STANDARD.decode(&secret["whsec_".len()..]).unwrap();
        assert_eq!(raw.len(), SECRET_BYTES);
        let sealed = key.seal("endpoint-1", &secret).unwrap();
        assert!(!sealed.contains(&secret[6..]), "{sealed}");
        assert_eq!(key.open("endpoint-1", &sealed).unwrap(), secret);
        // A fresh nonce each time: the same secret never seals alike.
        assert_ne!(key.seal("endpoint-1", &secret).unwrap(), sealed);
        let other = SecretBox::new("another-key-of-at-least-thirty-two-chars");
        assert!(other.open("endpoint-1", &sealed).is_err());
        assert!(key.open("endpoint-2", &sealed).is_err(), "bound to its row");
        let mut altered = sealed.clone();
        altered.pop();
        altered.push('A');
        assert!(key.open("endpoint-1", &altered).is_err());
        assert!(key.open("endpoint-1", "whsec_plain").is_err());
        assert_eq!(hint(&secret).len(), 4);
        assert!(secret.ends_with(&hint(&secret)));
    }

    #[test]
    fn urls_are_https_public_and_userinfo_free() {
        let open = AllowList::default();
        assert_eq!(
            check_url("https://Hooks.Example.jp/kizuna?x=1", &open).as_deref(),
            Ok("https://hooks.example.jp/kizuna?x=1")
        );
        for bad in [
            "http://hooks.example.jp/",
            "ftp://hooks.example.jp/",
            "hooks.example.jp/x",
            "https://user:pw@hooks.example.jp/",
            "https://user@hooks.example.jp/",
            "https://hooks.example.jp/#frag",
            "https://127.0.0.1/",
            "https://localhost/",
            "https://api.localhost/",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://[::1]/",
            "https://[::]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://2130706433/",
            "https://0x7f.0.0.1/",
            "https://0177.0.0.1/",
            "https://0x0a000001/",
            "https://255.255.255.255/",
        ] {
            assert!(check_url(bad, &open).is_err(), "case {bad}");
        }
        assert!(check_url(&format!("https://a.jp/{}", "x".repeat(2048)), &open).is_err());
        assert!(check_url("https://8.8.8.8/hook", &open).is_ok());
        assert!(check_url("https://[2606:4700::1111]/hook", &open).is_ok());
    }

    #[test]
    fn the_allow_list_narrows_hosts_and_opens_plain_http_by_name() {
        let list = AllowList::parse(
            "https://*.zapier.com, hooks.example.jp:8443 http://127.0.0.1:*,http://[::1]:9000",
        )
        .unwrap();
        for good in [
            "https://hooks.zapier.com/a",
            "https://a.b.zapier.com/",
            "https://hooks.example.jp:8443/x",
            "http://127.0.0.1:4567/receiver",
            "https://127.0.0.1:4567/receiver",
            "http://[::1]:9000/",
        ] {
            assert!(
                check_url(good, &list).is_ok(),
                "case {good}: {:?}",
                check_url(good, &list)
            );
        }
        for bad in [
            "https://zapier.com/",
            "https://evilzapier.com/",
            "https://hooks.example.jp/",
            "http://hooks.zapier.com/",
            "https://other.example.jp/",
            "http://127.0.0.2:4567/",
            "http://[::1]:9001/",
            "http://localhost:4567/",
        ] {
            assert!(check_url(bad, &list).is_err(), "case {bad}");
        }
        for bad in ["http://", "*.", "a b:99999", "[::1", "https://x.jp:port"] {
            assert!(AllowList::parse(bad).is_err(), "case {bad}");
        }
    }

    #[test]
    fn topics_are_known_names_or_all() {
        let mut errors = Vec::new();
        assert_eq!(
            parse_topics(
                &json!(["points.earned", "order.paid", "order.paid"]),
                &mut errors
            ),
            Some(vec!["order.paid".to_owned(), "points.earned".to_owned()])
        );
        assert_eq!(
            parse_topics(&json!(["*"]), &mut errors),
            Some(vec!["*".to_owned()])
        );
        assert!(errors.is_empty());
        for bad in [
            json!([]),
            json!("order.paid"),
            json!(["order.*"]),
            json!(["*", "order.paid"]),
        ] {
            let mut errors = Vec::new();
            assert_eq!(parse_topics(&bad, &mut errors), None, "case {bad}");
            assert!(errors[0].field.starts_with("/topics"), "case {bad}");
        }
    }
}
