//! Public lead capture: `POST /v1/forms/{form_id}` from landing pages.
//! Owns the form's settings (the `form_settings` table: a shop relies on
//! them, and the key-value store is only a cache that may be lost; read
//! on every submission, written rarely), the submission's parsing (with
//! campaign parameters taken from the page's URL when the body lacks
//! them), the per-client rate limit (in SQLite: Spin's key-value store
//! syncs the disk on every write), the honeypot, CORS, the redirect
//! policy, and what a browser sees, accepted or refused (a thank-you or
//! error URL, or a small page; scripts get JSON). A stored lead never
//! depends on the caller being able to read the answer. Admins replace
//! settings (`PUT`), merge-patch them (`PATCH`) and list every form with
//! its latest submission (`GET /v1/forms`).

use crate::Ctx;
use crate::client_addr::{self, TrustedProxies};
use crate::config::{normalise_origin, redirect_url};
use crate::consent::{self, ConsentChange};
use crate::contact::{self, FirstTouch, UTM_FIELDS, WritePolicy};
use crate::db::transaction;
use crate::error::{ApiError, FieldError};
use crate::http::{
    Request, Response, body_text, check_size, error_response, escape_html, header_str, media_type,
};
use crate::ids::new_id;
use crate::ports::{Db, Kv, Value};
use crate::profile::{self, MAX_ATTRIBUTES_PER_SUBMISSION, Profile};
use crate::tags::{self, Tag};
use crate::timeline::{self, Entry, Kind};
use anyhow::Context as _;
use bytes::Bytes;
use hmac::Mac;
use http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

/// A client may post this many times the per-form limit across all forms.
pub const ALL_FORMS_FACTOR: u32 = 5;

/// Form bodies above this are refused before they are parsed.
pub const FORM_BODY_LIMIT: usize = 16 * 1024;

/// A form id from the path: 1 to 64 of `a-z A-Z 0-9 _ -`. `unsubscribe`
/// is the one-click unsubscribe endpoint, not a form.
pub fn parse_form_id(text: &str) -> Result<String, ApiError> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text != "unsubscribe"
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(ApiError::NotFound("no such form".into()))
    }
}

/// Per-form settings; a form without them uses the defaults from variables.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FormSettings {
    #[serde(default)]
    pub thank_you_url: Option<String>,
    /// Where a browser whose post is refused (422, 429) is sent, with the
    /// reason and the failing fields in the query (see `refusal`);
    /// without it, a small page says what to fix.
    #[serde(default)]
    pub error_url: Option<String>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Whether `allowed_origins` adds to the `allowed_origins` variable
    /// (the default) or replaces it for this form.
    #[serde(default)]
    pub allowed_origins_mode: OriginsMode,
    #[serde(default)]
    pub required_fields: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The version of the consent wording the form shows now; the proof
    /// a consent records.
    #[serde(default)]
    pub consent_text_version: Option<String>,
    /// Every consent wording the form has shown, by version. A posted
    /// `consent_text_version` is kept only if it is one of these (or the
    /// current one): a page still showing an older wording can say so,
    /// but a submitter cannot invent the proof.
    #[serde(default)]
    pub consent_texts: std::collections::BTreeMap<String, String>,
}

/// How a form's own `allowed_origins` combine with the variable's, for
/// CORS, preflights and `_redirect`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OriginsMode {
    /// The variable's origins and the form's: one landing-page host more.
    #[default]
    Add,
    /// Only the form's: a form embedded on one site only, which other
    /// sites the shop runs may neither script nor redirect through.
    Replace,
}

impl FormSettings {
    /// The wording version a consent from this form records: the posted
    /// one if the form knows it, else the form's current one.
    pub fn consent_version<'a>(&'a self, posted: Option<&'a str>) -> Option<&'a str> {
        let known = |v: &str| {
            self.consent_text_version.as_deref() == Some(v) || self.consent_texts.contains_key(v)
        };
        posted
            .filter(|v| known(v))
            .or(self.consent_text_version.as_deref())
    }
}

/// Fields a form may name as required.
const REQUIRABLE: &[&str] = &[
    "email",
    "phone",
    "name",
    "family_name",
    "given_name",
    "family_name_kana",
    "given_name_kana",
    "company",
    "postal_code",
    "address",
    "birthday",
    "consent_email",
];

impl FormSettings {
    /// Checks and normalises settings sent by an admin.
    pub fn validate(mut self) -> Result<FormSettings, ApiError> {
        let mut errors = Vec::new();
        if let Some(url) = &self.thank_you_url {
            match redirect_url(url) {
                Some(safe) => self.thank_you_url = Some(safe),
                None => errors.push(FieldError::new("thank_you_url", "an absolute http(s) URL")),
            }
        }
        if let Some(url) = &self.error_url {
            match redirect_url(url) {
                Some(safe) => self.error_url = Some(safe),
                None => errors.push(FieldError::new("error_url", "an absolute http(s) URL")),
            }
        }
        let mut origins = Vec::new();
        for origin in &self.allowed_origins {
            match normalise_origin(origin) {
                Some(o) => origins.push(o),
                None => errors.push(FieldError::new(
                    "allowed_origins",
                    "each an http(s) origin like https://lp.example.jp",
                )),
            }
        }
        self.allowed_origins = origins;
        for field in &self.required_fields {
            if !REQUIRABLE.contains(&field.as_str()) {
                errors.push(FieldError::new(
                    "required_fields",
                    format!("each one of {}", REQUIRABLE.join(", ")),
                ));
                break;
            }
        }
        for tag in &self.tags {
            if Tag::parse(tag).is_err() {
                errors.push(FieldError::new(
                    "tags",
                    "each 1 to 64 characters, without `/`",
                ));
                break;
            }
        }
        if self.tags.len() > 20
            || self.required_fields.len() > 20
            || self.allowed_origins.len() > 20
        {
            errors.push(FieldError::new("settings", "at most 20 entries per list"));
        }
        if let Some(version) = &self.consent_text_version
            && (version.is_empty() || version.len() > 64)
        {
            errors.push(FieldError::new(
                "consent_text_version",
                "1 to 64 characters",
            ));
        }
        if self.consent_texts.len() > 20 {
            errors.push(FieldError::new("consent_texts", "at most 20 versions"));
        }
        // With wording on file, its keys are the versions a form may
        // show: a current version without wording would record consents
        // that no text proves.
        if let Some(version) = &self.consent_text_version
            && !self.consent_texts.is_empty()
            && !self.consent_texts.contains_key(version)
        {
            errors.push(FieldError::new(
                "consent_text_version",
                "must name one of the versions in consent_texts",
            ));
        }
        for (version, text) in &self.consent_texts {
            if version.is_empty() || version.len() > 64 || text.is_empty() || text.len() > 10_000 {
                errors.push(FieldError::new(
                    "consent_texts",
                    "versions of 1 to 64 characters, each with its wording (1 to 10,000 bytes)",
                ));
                break;
            }
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            Err(ApiError::Validation(errors))
        }
    }
}

/// Settings as stored: with who last wrote them and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSettings {
    pub settings: FormSettings,
    pub updated_at: String,
    pub updated_by: String,
}

/// The settings of `form_id`, if it is configured: its `form_settings`
/// row, one statement. A form configured before settings moved to SQLite
/// may have them only in the key-value store; they are copied into the
/// table on the first read that misses it (see `legacy_settings`). A
/// form configured nowhere asks the key-value store on each read, as
/// every read did before the move.
pub async fn load_stored_settings(
    db: &impl Db,
    kv: &impl Kv,
    form_id: &str,
) -> anyhow::Result<Option<StoredSettings>> {
    if let Some(stored) = read_settings_row(db, form_id).await? {
        return Ok(Some(stored));
    }
    // Kizuna ran on no libSQL server before settings moved to SQLite, so
    // a store beside one (Redis) holds none; and a stopped Redis holds
    // Spin's key-value calls for a minute or more, which no form post
    // may wait for.
    if db.backend() == crate::ports::Backend::Libsql {
        return Ok(None);
    }
    match legacy_settings(kv, form_id).await {
        Some(legacy) => adopt_legacy_settings(db, form_id, &legacy).await.map(Some),
        None => Ok(None),
    }
}

/// The settings of `form_id` without their author and time.
pub async fn load_settings(
    db: &impl Db,
    kv: &impl Kv,
    form_id: &str,
) -> anyhow::Result<Option<FormSettings>> {
    Ok(load_stored_settings(db, kv, form_id)
        .await?
        .map(|s| s.settings))
}

async fn read_settings_row(db: &impl Db, form_id: &str) -> anyhow::Result<Option<StoredSettings>> {
    let rows = db
        .execute(
            "SELECT settings, updated_at, updated_by FROM form_settings WHERE form_id = ?1",
            &[form_id.into()],
        )
        .await
        .context("failed to read the form settings")?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    Ok(Some(StoredSettings {
        settings: serde_json::from_str(row.str("settings")?)
            .context("stored form settings are not valid")?,
        updated_at: row.str("updated_at")?.to_owned(),
        updated_by: row.str("updated_by")?.to_owned(),
    }))
}

/// Saves settings (their author and time included), replacing any
/// earlier ones, inside the caller's transaction.
pub async fn save_settings(
    db: &impl Db,
    form_id: &str,
    stored: &StoredSettings,
) -> anyhow::Result<()> {
    db.execute(
        "INSERT INTO form_settings (form_id, settings, updated_at, updated_by)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (form_id) DO UPDATE SET
             settings = excluded.settings,
             updated_at = excluded.updated_at,
             updated_by = excluded.updated_by",
        &settings_params(form_id, stored)?,
    )
    .await
    .context("failed to save the form settings")?;
    Ok(())
}

fn settings_params(form_id: &str, stored: &StoredSettings) -> anyhow::Result<[Value; 4]> {
    Ok([
        form_id.into(),
        serde_json::to_string(&stored.settings)
            .context("settings")?
            .into(),
        stored.updated_at.as_str().into(),
        stored.updated_by.as_str().into(),
    ])
}

/// Where settings were kept before they moved to SQLite. Only read, for
/// deployments that saved settings then; nothing writes there any more.
fn legacy_settings_key(form_id: &str) -> String {
    format!("forms/{form_id}/settings")
}

/// A form's settings from the key-value store, as saved before they moved
/// to SQLite. The store is a cache now, and may be lost or down (Redis
/// restarting): a failed look-up, or an entry that is not valid settings,
/// is logged and taken as "no settings", so that the cache can never stop
/// a form from taking leads. The price: while the store is down, a form
/// whose settings were never copied yet answers with the defaults (no
/// required fields, tags or thank-you URL of its own) until it is back.
async fn legacy_settings(kv: &impl Kv, form_id: &str) -> Option<StoredSettings> {
    let bytes = match kv.get(&legacy_settings_key(form_id)).await {
        Ok(bytes) => bytes?,
        Err(e) => {
            eprintln!("legacy form settings of {form_id} unreadable, using none: {e:#}");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(stored) => Some(stored),
        Err(e) => {
            eprintln!("legacy form settings of {form_id} are not valid, using none: {e}");
            None
        }
    }
}

/// Copies settings found in the key-value store into `form_settings`, as
/// they were saved (author and time too), and returns what the table
/// holds then: a request that got there first, or a `PUT` since, wins.
/// Once per form; after that the table answers.
async fn adopt_legacy_settings(
    db: &impl Db,
    form_id: &str,
    legacy: &StoredSettings,
) -> anyhow::Result<StoredSettings> {
    transaction(db, async || {
        db.execute(
            "INSERT INTO form_settings (form_id, settings, updated_at, updated_by)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (form_id) DO NOTHING",
            &settings_params(form_id, legacy)?,
        )
        .await
        .context("failed to copy legacy form settings")?;
        read_settings_row(db, form_id)
            .await?
            .context("form settings missing right after they were copied")
    })
    .await
}

fn settings_json(form_id: &str, stored: Option<&StoredSettings>) -> Json {
    json!({
        "form_id": form_id,
        "configured": stored.is_some(),
        "updated_at": stored.map(|s| &s.updated_at),
        "updated_by": stored.map(|s| &s.updated_by),
        "settings": stored.map(|s| s.settings.clone()).unwrap_or_default(),
    })
}

/// `GET /v1/forms/{form_id}/settings`.
pub async fn get_settings<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    form_id: &str,
) -> Result<Response, ApiError> {
    let stored = load_stored_settings(ctx.db, ctx.kv, form_id).await?;
    Ok(crate::http::json_response(
        StatusCode::OK,
        &settings_json(form_id, stored.as_ref()),
    ))
}

/// `PUT /v1/forms/{form_id}/settings`: validated, recorded with its author.
pub async fn put_settings<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &crate::auth::Actor,
    form_id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    let settings: FormSettings = crate::http::read_json(request)?;
    let stored = StoredSettings {
        settings: settings.validate()?,
        updated_at: crate::timestamp::format(ctx.clock.now()),
        updated_by: actor.label(),
    };
    transaction(ctx.db, async || {
        save_settings(ctx.db, form_id, &stored).await
    })
    .await?;
    Ok(crate::http::json_response(
        StatusCode::OK,
        &settings_json(form_id, Some(&stored)),
    ))
}

/// The settings a `PATCH` may name: the fields of [`FormSettings`].
const SETTINGS_FIELDS: &[&str] = &[
    "thank_you_url",
    "error_url",
    "allowed_origins",
    "allowed_origins_mode",
    "required_fields",
    "tags",
    "consent_text_version",
    "consent_texts",
];

/// `PATCH /v1/forms/{form_id}/settings`: a merge patch of the settings
/// in force (a form without any starts from the defaults). Only the
/// settings sent change, `null` returns one to its default, and an
/// unknown setting is a 422 naming it; the result passes the same checks
/// as a `PUT` body. Read, merge and save run in one write transaction,
/// so two patches at once both land, one on top of the other.
pub async fn patch_settings<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &crate::auth::Actor,
    form_id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    use crate::http::parse_json;
    let patch = crate::http::read_merge_patch(request)?;
    let unknown: Vec<FieldError> = patch
        .keys()
        .filter(|key| !SETTINGS_FIELDS.contains(&key.as_str()))
        .map(|key| {
            FieldError::new(
                key.clone(),
                format!(
                    "not a form setting; they are {}",
                    SETTINGS_FIELDS.join(", ")
                ),
            )
        })
        .collect();
    if !unknown.is_empty() {
        return Err(ApiError::Validation(unknown));
    }
    // Settings still only in the key-value store move to the table first
    // (their own short transaction), so the patch applies on top of them.
    load_stored_settings(ctx.db, ctx.kv, form_id).await?;
    let updated_at = crate::timestamp::format(ctx.clock.now());
    let stored = transaction(ctx.db, async || -> Result<StoredSettings, ApiError> {
        let current = read_settings_row(ctx.db, form_id)
            .await?
            .map(|stored| stored.settings)
            .unwrap_or_default();
        let mut merged = serde_json::to_value(&current).context("form settings")?;
        json_patch::merge(&mut merged, &Json::Object(patch.clone()));
        // Through the same parser as a PUT body: a bad value is the same
        // 422 naming the same field.
        let settings: FormSettings = parse_json(&Bytes::from(merged.to_string()))?;
        let stored = StoredSettings {
            settings: settings.validate()?,
            updated_at: updated_at.clone(),
            updated_by: actor.label(),
        };
        save_settings(ctx.db, form_id, &stored).await?;
        Ok(stored)
    })
    .await?;
    Ok(crate::http::json_response(
        StatusCode::OK,
        &settings_json(form_id, Some(&stored)),
    ))
}

/// `GET /v1/forms`: every form that has settings or took a submission,
/// by form id, each with its settings (the defaults if it has none) and
/// its latest submission on record (`last_submission_at`; an erased
/// person's no longer counts). A post to a form id that nobody set up (a
/// typo in a page's `action`) shows here as `configured: false`.
///
/// One statement per page, of seeks only: the ids that took submissions
/// are found by jumping from one to the next in an index (a loose index
/// scan), not by reading every submission, and each form's latest is the
/// last entry of its range there.
pub async fn list_forms(db: &impl Db, request: &Request) -> Result<Response, ApiError> {
    use crate::http::{decode_cursor, encode_cursor, page_limit, query_pairs, query_param};
    let pairs = query_pairs(request, &["limit", "cursor"])?;
    let limit = page_limit(&pairs)?;
    let after = match query_param(&pairs, "cursor") {
        Some(cursor) => decode_cursor(cursor, 1)?.pop().unwrap_or_default(),
        None => String::new(),
    };
    let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let rows = db
        .execute(
            "WITH RECURSIVE submitted(form_id) AS (
                 SELECT (SELECT min(json_extract(data, '$.form_id')) FROM interactions
                         WHERE kind = 'form_submitted' AND json_extract(data, '$.form_id') > ?1)
                 UNION ALL
                 SELECT (SELECT min(json_extract(data, '$.form_id')) FROM interactions
                         WHERE kind = 'form_submitted'
                           AND json_extract(data, '$.form_id') > submitted.form_id)
                 FROM submitted WHERE submitted.form_id IS NOT NULL
                 LIMIT ?2
             ),
             ids(form_id) AS (
                 SELECT form_id FROM submitted WHERE form_id IS NOT NULL
                 UNION
                 SELECT form_id FROM (SELECT form_id FROM form_settings WHERE form_id > ?1
                                      ORDER BY form_id LIMIT ?2)
             )
             SELECT ids.form_id AS form_id, s.settings AS settings,
                    s.updated_at AS updated_at, s.updated_by AS updated_by,
                    (SELECT max(occurred_at) FROM interactions
                     WHERE kind = 'form_submitted'
                       AND json_extract(data, '$.form_id') = ids.form_id) AS last_submission_at
             FROM ids LEFT JOIN form_settings s ON s.form_id = ids.form_id
             ORDER BY ids.form_id LIMIT ?2",
            &[after.into(), Value::Integer(fetch)],
        )
        .await
        .context("failed to list forms")?;
    let mut items = Vec::new();
    let mut next_cursor = None;
    for (index, row) in rows.iter().enumerate() {
        let form_id = row.str("form_id")?;
        if index == limit {
            let last = items
                .last()
                .and_then(|item: &Json| item["form_id"].as_str())
                .context("page boundary")?;
            next_cursor = Some(encode_cursor(&[last]));
            break;
        }
        let stored = match row.opt_str("settings")? {
            Some(settings) => Some(StoredSettings {
                settings: serde_json::from_str(settings)
                    .context("stored form settings are not valid")?,
                updated_at: row.str("updated_at")?.to_owned(),
                updated_by: row.str("updated_by")?.to_owned(),
            }),
            None => None,
        };
        let mut item = settings_json(form_id, stored.as_ref());
        item["last_submission_at"] = row.opt_str("last_submission_at")?.into();
        items.push(item);
    }
    Ok(crate::http::json_response(
        StatusCode::OK,
        &json!({ "items": items, "next_cursor": next_cursor }),
    ))
}

/// What the request says about its sender, beyond the body.
#[derive(Debug, Clone, Default)]
pub struct Sender {
    pub client_ip: Option<String>,
    pub origin: Option<String>,
    pub referer: Option<String>,
    pub wants_json: bool,
    /// A browser navigating: `Accept` names `text/html` and no JSON type.
    /// Only such a caller sees a refusal as a page (see `refusal`); a
    /// script that accepts anything (`*/*`) keeps the problem document.
    pub wants_html: bool,
}

impl Sender {
    /// The client's address is Spin's peer, or, behind `trusted`
    /// proxies, the client they name (see `client_addr`).
    pub fn from_request(request: &Request, trusted: &TrustedProxies) -> Sender {
        let headers = request.headers();
        let client_ip = client_addr::client_ip(headers, trusted).map(|ip| ip.to_string());
        let accept = header_str(headers, "accept")
            .unwrap_or("")
            .to_ascii_lowercase();
        let is_json_body = media_type(headers).as_deref() == Some("application/json");
        let wants_json = accept.contains("application/json")
            || accept.contains("application/problem+json")
            || (is_json_body && !accept.contains("text/html"));
        Sender {
            client_ip,
            origin: header_str(headers, "origin").map(str::to_owned),
            referer: header_str(headers, "referer").map(str::to_owned),
            wants_json,
            wants_html: !wants_json && accept.contains("text/html"),
        }
    }
}

/// A parsed submission, before anything is stored.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    pub profile: Profile,
    pub consent_email: bool,
    pub consent_text_version: Option<String>,
    pub utm: std::collections::BTreeMap<&'static str, String>,
    pub page: Option<String>,
    pub honeypot_filled: bool,
    pub redirect: Option<String>,
    /// What was sent, for the timeline (control fields left out).
    pub fields: Map<String, Json>,
}

impl Submission {
    /// Fills each `utm_*` the body did not carry from the query of the
    /// `page` field, then from the `Referer`'s. A plain HTML form cannot
    /// copy the landing page's `?utm_source=…` into hidden fields, but the
    /// page's URL usually reaches Kizuna one of these ways (the `Referer`
    /// only when the page's referrer policy sends the whole URL: see the
    /// README). The body's values win, then the page's, key by key.
    pub fn fill_utm_from_urls(&mut self, referer: Option<&str>) {
        let page = self.page.clone();
        for url in [page.as_deref(), referer].into_iter().flatten() {
            for (utm, value) in utm_from_url(url) {
                self.utm.entry(utm).or_insert(value);
            }
        }
    }
}

/// The `utm_*` parameters in the query of `url` (absolute or relative),
/// the first of each name. A value that is not clean text (control
/// characters, invalid UTF-8) is left out, and one past 200 characters
/// is cut there: a URL's noise never refuses a lead.
pub fn utm_from_url(url: &str) -> Vec<(&'static str, String)> {
    let Some((_, rest)) = url.split_once('?') else {
        return Vec::new();
    };
    let query = rest.split('#').next().unwrap_or_default();
    let mut found: Vec<(&'static str, String)> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let Some(utm) = UTM_FIELDS.iter().copied().find(|u| *u == key) else {
            continue;
        };
        if found.iter().any(|(k, _)| *k == utm) || value.contains('\u{FFFD}') {
            continue;
        }
        let cut: String = value.trim().chars().take(200).collect();
        if let Some(clean) = profile::check_text(utm, &cut, 200, &mut Vec::new()) {
            found.push((utm, clean));
        }
    }
    found
}

/// Reads the body into field pairs: urlencoded or a flat JSON object.
pub fn read_fields(request: &Request) -> Result<Vec<(String, String)>, ApiError> {
    check_size(request.body(), FORM_BODY_LIMIT)?;
    let media = media_type(request.headers());
    match media.as_deref() {
        Some("application/x-www-form-urlencoded") => {
            let text = body_text(request.body())?;
            let pairs: Vec<(String, String)> = form_urlencoded::parse(text.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            // Percent-decoding replaces invalid UTF-8 with U+FFFD instead of
            // failing; such a value is refused rather than stored mangled.
            if pairs
                .iter()
                .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
            {
                return Err(ApiError::BadRequest(
                    "a field is not valid UTF-8 once percent-decoded".into(),
                ));
            }
            Ok(pairs)
        }
        Some("application/json") => {
            let object: Map<String, Json> = crate::http::parse_json(request.body())?;
            let mut pairs = Vec::with_capacity(object.len());
            let mut errors = Vec::new();
            for (key, value) in object {
                match value {
                    Json::Null => {}
                    Json::String(s) => pairs.push((key, s)),
                    Json::Bool(b) => pairs.push((key, b.to_string())),
                    Json::Number(n) => pairs.push((key, n.to_string())),
                    Json::Array(_) | Json::Object(_) => {
                        errors.push(FieldError::new(key, "must be a string, number or boolean"))
                    }
                }
            }
            if errors.is_empty() {
                Ok(pairs)
            } else {
                Err(ApiError::Validation(errors))
            }
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "a form posts application/x-www-form-urlencoded or application/json{}",
            other.map(|o| format!(", not {o}")).unwrap_or_default()
        ))),
    }
}

fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "on" | "1" | "true" | "yes" | "y" | "checked" | "agree"
    )
}

/// Turns field pairs into a submission, collecting every invalid field.
pub fn parse_submission(
    pairs: Vec<(String, String)>,
    region: crate::phone::Region,
) -> Result<Submission, ApiError> {
    let mut submission = Submission::default();
    let mut errors = Vec::new();
    // Distinct names: a checkbox group repeats one name per ticked box.
    let mut extra_fields = std::collections::BTreeSet::new();
    for (key, value) in pairs {
        match key.as_str() {
            "_hp" => submission.honeypot_filled |= !value.trim().is_empty(),
            "_redirect" => {
                let target = value.trim();
                if !target.is_empty() {
                    match redirect_url(target) {
                        Some(safe) => submission.redirect = Some(safe),
                        None => errors.push(FieldError::new(
                            "_redirect",
                            "not an allowed redirect target",
                        )),
                    }
                }
            }
            "consent_email" => submission.consent_email = truthy(&value),
            "consent_text_version" => {
                submission.consent_text_version =
                    profile::check_text("consent_text_version", &value, 64, &mut errors)
            }
            "page" => submission.page = profile::check_text("page", &value, 2000, &mut errors),
            _ if key.starts_with('_') => {} // other control fields (CSRF tokens etc.) are not data
            _ => {
                if let Some(utm) = UTM_FIELDS.iter().find(|u| **u == key) {
                    if let Some(v) = profile::check_text(utm, &value, 200, &mut errors) {
                        submission.utm.insert(utm, v);
                    }
                } else if !profile::parse_field(
                    &mut submission.profile,
                    &key,
                    &value,
                    region,
                    &mut errors,
                ) {
                    extra_fields.insert(key.clone());
                    if extra_fields.len() <= MAX_ATTRIBUTES_PER_SUBMISSION {
                        profile::add_attribute(&mut submission.profile, &key, &value, &mut errors);
                    }
                }
            }
        }
        if !key.starts_with('_') && submission.fields.len() < 200 {
            match submission.fields.get_mut(&key) {
                Some(Json::String(kept)) => {
                    kept.push_str(", ");
                    kept.push_str(&value);
                }
                _ => {
                    submission.fields.insert(key, Json::String(value));
                }
            }
        }
    }
    if extra_fields.len() > MAX_ATTRIBUTES_PER_SUBMISSION {
        errors.push(FieldError::new(
            "attributes",
            format!("at most {MAX_ATTRIBUTES_PER_SUBMISSION} fields besides the known ones"),
        ));
    }
    submission.profile.fill_display_name();
    if errors.is_empty() {
        Ok(submission)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// How the caller is answered once the submission is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 303 to this URL (browser form posts).
    Redirect(String),
    /// 200 with a minimal thank-you page (browser, no thank-you URL known).
    ThankYouPage,
    /// 202 `{"status":"accepted"}`.
    Accepted,
}

/// The origins allowed for this form: the variable's plus the form's
/// own, or only the form's own (`allowed_origins_mode: replace`).
fn allowed_origins(config_origins: &[String], settings: &FormSettings) -> Vec<String> {
    let mut all = match settings.allowed_origins_mode {
        OriginsMode::Add => config_origins.to_vec(),
        OriginsMode::Replace => Vec::new(),
    };
    all.extend(settings.allowed_origins.iter().cloned());
    all
}

/// Handles one submission end to end; see the module doc for the rules.
pub async fn submit<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    form_id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    let sender = Sender::from_request(request, &ctx.config.trusted_proxies);
    let pairs = read_fields(request)?;
    // A bot that fills the honeypot gets the success answer whatever else
    // it sent, so refusals never teach it which fields to fix.
    let honeypot_filled = pairs
        .iter()
        .any(|(k, v)| k == "_hp" && !v.trim().is_empty());
    let mut submission = match parse_submission(pairs, ctx.config.default_phone_region) {
        Ok(submission) => submission,
        Err(_) if honeypot_filled => Submission {
            honeypot_filled,
            ..Submission::default()
        },
        Err(error) => return Err(error),
    };
    submission.fill_utm_from_urls(sender.referer.as_deref());
    let settings = load_settings(ctx.db, ctx.kv, form_id)
        .await?
        .unwrap_or_default();
    let origins = allowed_origins(&ctx.config.allowed_origins, &settings);

    let mut errors = Vec::new();
    if !submission.honeypot_filled {
        if submission.profile.is_empty_identity() {
            errors.push(FieldError::new(
                "email",
                "an email or a phone number is required",
            ));
        }
        for field in &settings.required_fields {
            let present = match field.as_str() {
                "email" => submission.profile.email.is_some(),
                "phone" => submission.profile.phone.is_some(),
                "postal_code" => submission.profile.postal_code.is_some(),
                "birthday" => submission.profile.birthday.is_some(),
                "consent_email" => submission.consent_email,
                other => submission.profile.text(other).is_some(),
            };
            if !present {
                errors.push(FieldError::new(field.clone(), "is required"));
            }
        }
    }
    if let Some(target) = &submission.redirect
        && !submission.honeypot_filled
        && !normalise_origin(target).is_some_and(|o| origins.contains(&o))
    {
        errors.push(FieldError::new(
            "_redirect",
            "not an allowed redirect target",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }

    let now = ctx.clock.now();
    let limit = ctx.config.form_rate_limit_per_minute;
    // Per form, and across all forms, so that inventing form ids does
    // not multiply a client's allowance.
    let network = client_network(sender.client_ip.as_deref());
    let key = ctx.config.unsubscribe_secret()?;
    let form_bucket = rate_limit_bucket(key, &network, &format!("form:{form_id}"));
    let all_bucket = rate_limit_bucket(key, &network, "all-forms");
    let window = now.unix_timestamp().div_euclid(60);
    let all_limit = limit.saturating_mul(ALL_FORMS_FACTOR);
    let retry_after_seconds = u64::try_from(60 - now.unix_timestamp().rem_euclid(60)).unwrap_or(60);
    let refused = ApiError::RateLimited {
        retry_after_seconds,
    };
    // A refusal is decided by a read, outside the write lock, and writes
    // nothing: a flood of refused posts neither fsyncs nor queues behind
    // the writers it is being refused to protect.
    if rate_limit_reached(
        ctx.db,
        &[(&form_bucket, limit), (&all_bucket, all_limit)],
        window,
    )
    .await?
    {
        return Err(refused);
    }
    transaction(ctx.db, async || -> Result<(), ApiError> {
        let buckets = [
            (form_bucket.as_str(), limit),
            (all_bucket.as_str(), all_limit),
        ];
        if !take_rate_limit_slots(ctx.db, &buckets, window).await? {
            // Lost a race for the last slot: rolled back, nothing kept.
            return Err(ApiError::RateLimited {
                retry_after_seconds,
            });
        }
        if !submission.honeypot_filled {
            let secret = ctx.config.unsubscribe_secret()?;
            store_submission(
                ctx.db,
                secret,
                form_id,
                &submission,
                &settings,
                &sender,
                now,
            )
            .await?;
        }
        Ok(())
    })
    .await?;

    let answer = if sender.wants_json {
        Answer::Accepted
    } else if let Some(url) = submission
        .redirect
        .clone()
        .filter(|url| normalise_origin(url).is_some_and(|o| origins.contains(&o)))
        .or(settings.thank_you_url.clone())
        .or(ctx.config.default_thank_you_url.clone())
    {
        Answer::Redirect(url)
    } else {
        Answer::ThankYouPage
    };
    let mut response = answer_response(&answer);
    apply_cors(&mut response, sender.origin.as_deref(), &origins);
    Ok(response)
}

/// The stored part of a submission, inside the caller's transaction.
async fn store_submission(
    db: &impl Db,
    suppression_secret: &[u8],
    form_id: &str,
    submission: &Submission,
    settings: &FormSettings,
    sender: &Sender,
    now: time::OffsetDateTime,
) -> Result<(), ApiError> {
    let actor = crate::auth::Actor::Form(form_id.to_owned()).label();
    let at = crate::timestamp::format(now);
    let page = submission.page.clone().or_else(|| {
        sender
            .referer
            .as_deref()
            .map(|r| r.chars().take(2000).collect())
    });
    let existing = contact::resolve(db, &submission.profile, None).await?;
    if let Some(id) = &existing
        && anonymous_entries_today(db, id, now).await? >= MAX_ANONYMOUS_ENTRIES_PER_DAY
    {
        count_unrecorded_submission(db, id).await?;
        return Ok(());
    }
    let created = existing.is_none();
    let id = match existing {
        Some(id) => {
            contact::update(
                db,
                &id,
                &submission.profile,
                None,
                WritePolicy::FillEmpty,
                &actor,
                &at,
            )
            .await?;
            id
        }
        None => {
            let id = new_id(now);
            let touch = FirstTouch {
                source: format!("form:{form_id}"),
                form_id: Some(form_id.to_owned()),
                page: page.clone(),
                utm: submission.utm.clone(),
            };
            contact::insert(db, &id, &submission.profile, None, &touch, &actor, &at).await?;
            id
        }
    };
    for tag in &settings.tags {
        if let Ok(tag) = Tag::parse(tag) {
            tags::add(db, &id, &tag, &actor, now).await?;
        }
    }
    // The person's own explicit opt-in, dated now, is the one thing that
    // grants consent after a withdrawal or an erasure: it lifts the
    // address's suppression (see `suppression`), and the lift names the
    // form. Staff cannot re-grant a suppressed address.
    let opted_in = submission.consent_email && submission.profile.email.is_some();
    let opt_in = if opted_in {
        Some(
            crate::suppression::opt_in(
                db,
                suppression_secret,
                &id,
                consent::Channel::Email,
                // A contact created just now holds the address it was
                // created with; an existing one may hold another.
                created
                    .then(|| submission.profile.email.as_ref().map(|e| e.as_str()))
                    .flatten(),
                &actor,
                now,
            )
            .await?,
        )
    } else {
        None
    };
    let grant = opt_in.is_some_and(crate::suppression::OptIn::grants);
    let suppression_lifted = opt_in == Some(crate::suppression::OptIn::Lifted);
    let entry = Entry {
        kind: Kind::FormSubmitted,
        channel: Some("web"),
        subject: None,
        body: None,
        data: Some(json!({
            "form_id": form_id,
            "page": page,
            "utm": submission.utm,
            "fields": submission.fields,
            "consent_email": submission.consent_email,
            "consent_recorded": grant,
            "suppression_lifted": suppression_lifted,
        })),
        occurred_at: now,
    };
    timeline::append(db, &id, &entry, &actor, now).await?;
    // No page, UTM or extra fields: any of them may carry what a person
    // typed. A receiver reads the form's id and what the post recorded.
    let submitted = json!({
        "contact_id": id,
        "form_id": form_id,
        "contact_created": created,
        "consent_email": submission.consent_email,
        "consent_recorded": grant,
        "suppression_lifted": suppression_lifted,
    });
    let event = crate::events::outbox::Event::new("form.submitted", Some(&id), submitted);
    crate::events::outbox::record(db, now, &[event]).await?;
    if grant {
        let ip = sender.client_ip.as_deref().and_then(consent::truncate_ip);
        let version = settings.consent_version(submission.consent_text_version.as_deref());
        // The wording itself is proved by its digest: settings may change.
        let wording_sha256 = version
            .and_then(|v| settings.consent_texts.get(v))
            .map(|text| consent::text_sha256(text));
        let change = ConsentChange {
            form_id: Some(form_id),
            page_url: page.as_deref(),
            text_version: version,
            text_sha256: wording_sha256.as_deref(),
            ip_truncated: ip.as_deref(),
            ..ConsentChange::new(
                consent::Channel::Email,
                consent::Status::Granted,
                consent::Reason::Form,
            )
        };
        consent::record(db, &id, &change, &actor, now).await?;
    }
    Ok(())
}

/// The network a client is limited as: its IPv4 address, or its IPv6
/// /64 (one subscriber line usually holds a whole /64).
fn client_network(client_ip: Option<&str>) -> String {
    match client_ip.and_then(|ip| ip.parse::<std::net::IpAddr>().ok()) {
        Some(std::net::IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(std::net::IpAddr::V4(v4)) => v4.to_string(),
        None => "unknown".to_owned(),
    }
}

/// A keyed digest of network and scope, so the table holds no address
/// that could be recovered by trying every IPv4 address.
fn rate_limit_bucket(key: &[u8], network: &str, scope: &str) -> String {
    let mut mac = crate::signatures::hmac_sha256(key);
    mac.update(b"kizuna-rate-limit-v1\n");
    mac.update(network.as_bytes());
    mac.update(b"\n");
    mac.update(scope.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// Form posts are anonymous, and anyone who knows an address can post
/// it: past this many timeline entries in 24 hours, a contact's record
/// stops growing. Further posts are only counted, on the latest entry
/// (`data.repeats_not_recorded`), and change nothing else.
pub const MAX_ANONYMOUS_ENTRIES_PER_DAY: i64 = 20;

async fn anonymous_entries_today(
    db: &impl Db,
    contact_id: &str,
    now: time::OffsetDateTime,
) -> anyhow::Result<i64> {
    let since = crate::timestamp::format(now - time::Duration::days(1));
    let rows = db
        .execute(
            "SELECT count(*) AS n FROM interactions
             WHERE kind = 'form_submitted' AND contact_id = ?1 AND occurred_at > ?2",
            &[contact_id.into(), since.into()],
        )
        .await
        .context("failed to count today's form posts")?;
    rows.first().context("count")?.i64("n")
}

async fn count_unrecorded_submission(db: &impl Db, contact_id: &str) -> anyhow::Result<()> {
    db.execute(
        "UPDATE interactions
         SET data = json_set(coalesce(data, '{}'), '$.repeats_not_recorded',
                             coalesce(json_extract(data, '$.repeats_not_recorded'), 0) + 1)
         WHERE id = (SELECT id FROM interactions WHERE kind = 'form_submitted' AND contact_id = ?1
                     ORDER BY occurred_at DESC, id DESC LIMIT 1)",
        &[contact_id.into()],
    )
    .await
    .context("failed to count an unrecorded form post")?;
    Ok(())
}

/// Whether any `(bucket, limit)` has used its limit in `window`: one
/// plain read, no write lock.
async fn rate_limit_reached(
    db: &impl Db,
    buckets: &[(&str, u32)],
    window: i64,
) -> anyhow::Result<bool> {
    let placeholders: Vec<String> = (2..buckets.len() + 2).map(|i| format!("?{i}")).collect();
    let mut params: Vec<Value> = vec![window.into()];
    params.extend(buckets.iter().map(|(bucket, _)| Value::from(*bucket)));
    let rows = db
        .execute(
            &format!(
                "SELECT bucket, hits FROM rate_limits
                 WHERE window_start = ?1 AND bucket IN ({})",
                placeholders.join(", ")
            ),
            &params,
        )
        .await
        .context("failed to read the rate limits")?;
    for row in rows.iter() {
        let bucket = row.str("bucket")?;
        let hits = row.i64("hits")?;
        if buckets
            .iter()
            .any(|(b, limit)| *b == bucket && hits >= i64::from(*limit))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Counts this post in every `(bucket, limit)` (the client's one-minute
/// windows) with one upsert; true if each stays within its limit.
/// Windows older than ten minutes are swept when one bucket in 16 starts
/// a new one, which keeps the table small without a scheduled job.
async fn take_rate_limit_slots(
    db: &impl Db,
    buckets: &[(&str, u32)],
    window: i64,
) -> anyhow::Result<bool> {
    let rows: Vec<String> = (2..buckets.len() + 2)
        .map(|i| format!("(?{i}, ?1, 1)"))
        .collect();
    let mut params: Vec<Value> = vec![window.into()];
    params.extend(buckets.iter().map(|(bucket, _)| Value::from(*bucket)));
    let counted = db
        .execute(
            &format!(
                "INSERT INTO rate_limits (bucket, window_start, hits) VALUES {}
                 ON CONFLICT (bucket) DO UPDATE SET
                     hits = CASE WHEN window_start = excluded.window_start THEN hits + 1 ELSE 1 END,
                     window_start = excluded.window_start
                 RETURNING bucket, hits",
                rows.join(", ")
            ),
            &params,
        )
        .await
        .context("failed to count a form submission")?;
    let mut within = true;
    let mut new_window = false;
    for row in counted.iter() {
        let bucket = row.str("bucket")?;
        let hits = row.i64("hits")?;
        new_window |= hits == 1;
        within &= buckets
            .iter()
            .any(|(b, limit)| *b == bucket && hits <= i64::from(*limit));
    }
    anyhow::ensure!(
        counted.len() == buckets.len(),
        "rate limit upsert returned {} rows",
        counted.len()
    );
    // Sweeping on every new window would add a statement to most posts
    // (each visitor's bucket is new); one new bucket in 16, picked by its
    // keyed digest, keeps stale windows few all the same.
    if new_window && buckets.iter().any(|(bucket, _)| bucket.starts_with('0')) {
        db.execute(
            "DELETE FROM rate_limits WHERE window_start < ?1",
            &[(window - 10).into()],
        )
        .await
        .context("failed to sweep rate-limit windows")?;
    }
    Ok(within)
}

fn answer_response(answer: &Answer) -> Response {
    match answer {
        Answer::Accepted => {
            crate::http::json_response(StatusCode::ACCEPTED, &json!({"status": "accepted"}))
        }
        Answer::Redirect(url) => match http::HeaderValue::from_str(url) {
            Ok(location) => {
                let mut response = crate::http::empty_response(StatusCode::SEE_OTHER);
                response.headers_mut().insert(header::LOCATION, location);
                response
            }
            // Settings saved before URLs were made header-safe: a page,
            // not a 303 that leads nowhere.
            Err(_) => answer_response(&Answer::ThankYouPage),
        },
        Answer::ThankYouPage => html_response(
            StatusCode::OK,
            "Thank you",
            "ありがとうございました。Thank you, we have received your submission.",
        ),
    }
}

/// A minimal page for browsers: `title` is text, `message` is HTML (a
/// caller escapes whatever it did not write itself).
pub fn html_response(status: StatusCode, title: &str, message: &str) -> Response {
    page_response(status, title, &format!("<p>{message}</p>"))
}

/// A minimal page around `body` (HTML).
fn page_response(status: StatusCode, title: &str, body: &str) -> Response {
    let title = escape_html(title);
    let page = format!(
        "<!doctype html><html lang=\"ja\"><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title>{body}</html>"
    );
    http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Bytes::from(page))
        .expect("static headers are valid")
}

/// The answer to a refused `POST /v1/forms/{form_id}`. A browser
/// (`Sender::wants_html`) refused for its fields (422: a required field
/// missing, a value invalid, a `_redirect` not allowed) or for its rate
/// (429) is sent (303) to the form's `error_url`, with
/// `error=validation&fields=name,email` or
/// `error=rate_limited&retry_after=42` in the query, or, without one, is
/// shown a small Japanese and English page naming the fields to fix or
/// saying when to try again. Every other caller and every other refusal
/// gets the problem document. An allowed origin's script may read either.
/// The query never carries what was typed: it ends up in logs.
pub async fn refusal<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    form_id: &str,
    request: &Request,
    error: &ApiError,
) -> Response {
    // Unreadable settings (the database is what failed, often) leave the
    // variable's origins and no error URL: the refusal still answers.
    let settings = match load_settings(ctx.db, ctx.kv, form_id).await {
        Ok(settings) => settings.unwrap_or_default(),
        Err(e) => {
            eprintln!("form settings unreadable for a refusal: {e:#}");
            FormSettings::default()
        }
    };
    let origins = allowed_origins(&ctx.config.allowed_origins, &settings);
    let sender = Sender::from_request(request, &ctx.config.trusted_proxies);
    let mut response = sender
        .wants_html
        .then(|| browser_refusal(error, settings.error_url.as_deref()))
        .flatten()
        .unwrap_or_else(|| error_response(error));
    apply_cors(&mut response, sender.origin.as_deref(), &origins);
    response
}

/// Fields named in an error URL, at most; more are left out.
const MAX_FIELDS_IN_ERROR_URL: usize = 20;

/// A browser's answer to a 422 or 429; `None` for any other refusal.
fn browser_refusal(error: &ApiError, error_url: Option<&str>) -> Option<Response> {
    let (params, page) = match error {
        ApiError::Validation(errors) => {
            let mut fields: Vec<String> = Vec::new();
            for name in errors.iter().map(|e| form_field_name(&e.field)) {
                let encoded: String = form_urlencoded::byte_serialize(
                    name.chars().take(100).collect::<String>().as_bytes(),
                )
                .collect();
                if !fields.contains(&encoded) && fields.len() < MAX_FIELDS_IN_ERROR_URL {
                    fields.push(encoded);
                }
            }
            let params = vec![
                ("error", "validation".to_owned()),
                ("fields", fields.join(",")),
            ];
            (params, validation_page(errors))
        }
        ApiError::RateLimited {
            retry_after_seconds,
        } => {
            let params = vec![
                ("error", "rate_limited".to_owned()),
                ("retry_after", retry_after_seconds.to_string()),
            ];
            (params, rate_limited_page(*retry_after_seconds))
        }
        _ => return None,
    };
    let location = error_url
        .map(|url| with_query(url, &params))
        .and_then(|url| http::HeaderValue::from_str(&url).ok());
    Some(match location {
        Some(location) => {
            let mut response = crate::http::empty_response(StatusCode::SEE_OTHER);
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        // Settings saved before URLs were made header-safe: the page.
        None => page,
    })
}

/// The name a form gave the field: an extra field's error names it
/// `attributes.{name}`.
fn form_field_name(field: &str) -> &str {
    field.strip_prefix("attributes.").unwrap_or(field)
}

/// `url` with `params` (already encoded) added to its query, before any
/// fragment.
fn with_query(url: &str, params: &[(&str, String)]) -> String {
    let (target, fragment) = match url.split_once('#') {
        Some((target, fragment)) => (target, Some(fragment)),
        None => (url, None),
    };
    let mut out = target.to_owned();
    if !out.contains('?') {
        out.push('?');
    } else if !out.ends_with('?') && !out.ends_with('&') {
        out.push('&');
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out.push_str(&query.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// The Japanese and English labels of the fields Kizuna knows.
fn field_label(field: &str) -> Option<(&'static str, &'static str)> {
    Some(match field {
        "email" => ("メールアドレス", "Email"),
        "phone" => ("電話番号", "Phone"),
        "name" => ("お名前", "Name"),
        "family_name" => ("姓", "Family name"),
        "given_name" => ("名", "Given name"),
        "family_name_kana" => ("姓（フリガナ）", "Family name (kana)"),
        "given_name_kana" => ("名（フリガナ）", "Given name (kana)"),
        "company" => ("会社名", "Company"),
        "postal_code" => ("郵便番号", "Postal code"),
        "address" => ("住所", "Address"),
        "birthday" => ("生年月日", "Birthday"),
        "consent_email" => ("メール配信への同意", "Consent to email"),
        "_redirect" => ("送信後の移動先", "Page after sending"),
        "attributes" => ("その他の項目", "Other fields"),
        _ => return None,
    })
}

/// What to do about `error`, in Japanese (the English is its message).
fn japanese_hint(error: &FieldError) -> &'static str {
    match (error.field.as_str(), error.message.as_str()) {
        ("email", message) if message.contains("or a phone") => {
            "メールアドレスか電話番号のどちらかをご入力ください。"
        }
        ("consent_email", "is required") => "同意のチェックが必要です。",
        (_, "is required") => "必須項目です。ご入力ください。",
        ("_redirect", _) => {
            "このフォームの送信後の移動先が許可されていません。フォームの管理者にお知らせください。"
        }
        _ => "入力内容が正しくありません。ご確認ください。",
    }
}

/// The 422 page: each failing field, by its label where Kizuna knows it
/// and else by the form's own name for it, escaped.
fn validation_page(errors: &[FieldError]) -> Response {
    let items: String = errors
        .iter()
        .map(|error| {
            let name = form_field_name(&error.field);
            let label = match field_label(name) {
                Some((ja, en)) => format!("{ja} / {en}"),
                None => name.to_owned(),
            };
            format!(
                "<li><strong>{}</strong> (<code>{}</code>): {} / {}</li>",
                escape_html(&label),
                escape_html(name),
                japanese_hint(error),
                escape_html(&error.message)
            )
        })
        .collect();
    let body = format!(
        "<h1>入力内容をご確認ください / Please check the form</h1>\
         <p>次の項目を確認してください。送信内容は保存されていません。<br>\
         These fields need your attention; nothing was saved.</p>\
         <ul>{items}</ul>\
         <p>ブラウザの「戻る」で前のページに戻り、修正してからもう一度送信してください。<br>\
         Go back, correct them and send the form again.</p>"
    );
    page_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        "入力内容をご確認ください / Please check the form",
        &body,
    )
}

/// The 429 page: when to try again, and a `Retry-After` to match.
fn rate_limited_page(retry_after_seconds: u64) -> Response {
    let body = format!(
        "<h1>しばらくしてからもう一度お試しください / Please try again shortly</h1>\
         <p>短時間に送信が集中したため、受け付けられませんでした。送信内容は保存されていません。\
         {retry_after_seconds} 秒ほど待ってから、もう一度送信してください。<br>\
         Too many submissions came from your network just now, and this one was not saved. \
         Please wait {retry_after_seconds} seconds and send the form again.</p>"
    );
    let mut response = page_response(
        StatusCode::TOO_MANY_REQUESTS,
        "しばらくしてからお試しください / Please try again shortly",
        &body,
    );
    crate::http::set_header(
        &mut response,
        header::RETRY_AFTER,
        &retry_after_seconds.to_string(),
    );
    response
}

/// Lets an allowed origin's script read the answer.
pub fn apply_cors(response: &mut Response, origin: Option<&str>, allowed: &[String]) {
    response
        .headers_mut()
        .insert(header::VARY, http::HeaderValue::from_static("Origin"));
    let Some(origin) = origin else { return };
    if normalise_origin(origin)
        .is_some_and(|o| allowed.contains(&o) && o == origin.to_ascii_lowercase())
    {
        crate::http::set_header(response, header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
}

/// Answers a CORS preflight: 204 with the allowances for an allowed
/// origin, 403 for any other.
pub async fn preflight<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    form_id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    let settings = load_settings(ctx.db, ctx.kv, form_id)
        .await?
        .unwrap_or_default();
    let origins = allowed_origins(&ctx.config.allowed_origins, &settings);
    let origin = header_str(request.headers(), "origin");
    let allowed = origin
        .and_then(normalise_origin)
        .is_some_and(|o| origins.contains(&o));
    if !allowed {
        return Err(ApiError::Forbidden(
            "this origin may not post to this form".into(),
        ));
    }
    let mut response = crate::http::empty_response(StatusCode::NO_CONTENT);
    apply_cors(&mut response, origin, &origins);
    for (name, value) in [
        (header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS"),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, "Content-Type, Accept"),
        (header::ACCESS_CONTROL_MAX_AGE, "600"),
    ] {
        crate::http::set_header(&mut response, name, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::Region;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn parses_known_fields_utm_and_attributes() {
        let s = parse_submission(
            pairs(&[
                ("email", " Taro@Example.JP "),
                ("phone", "090-1234-5678"),
                ("family_name", "山田"),
                ("given_name", "太郎"),
                ("utm_source", "google"),
                ("consent_email", "on"),
                ("interest", "shoes"),
                ("interest", "bags"),
                ("_token", "csrf"),
            ]),
            Region::JP,
        )
        .unwrap();
        assert_eq!(s.profile.email.unwrap().as_str(), "taro@example.jp");
        assert_eq!(s.profile.phone.unwrap().as_str(), "+819012345678");
        assert_eq!(s.profile.texts["name"], "山田 太郎");
        assert_eq!(s.utm["utm_source"], "google");
        assert!(s.consent_email);
        assert_eq!(s.profile.attributes["interest"], "shoes, bags");
        assert!(!s.fields.contains_key("_token"));
    }

    #[test]
    fn rejects_too_many_extra_fields_and_bad_values() {
        let many: Vec<(String, String)> = (0..200)
            .map(|i| (format!("f{i}"), "x".to_owned()))
            .collect();
        assert!(matches!(
            parse_submission(many, Region::JP),
            Err(ApiError::Validation(_))
        ));
        let Err(ApiError::Validation(errors)) =
            parse_submission(pairs(&[("email", "nope"), ("phone", "12")]), Region::JP)
        else {
            panic!("expected validation errors");
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["email", "phone"]);
    }

    #[test]
    fn utm_comes_from_a_urls_query_first_of_each_name() {
        let found = utm_from_url(
            "https://lp.example.jp/spring?utm_source=ad&x=1&utm_campaign=%E6%98%A5&utm_source=other#top",
        );
        assert_eq!(
            found,
            [
                ("utm_source", "ad".to_owned()),
                ("utm_campaign", "春".to_owned())
            ]
        );
        assert_eq!(
            utm_from_url("/lp?utm_medium=cpc"),
            [("utm_medium", "cpc".to_owned())]
        );
        assert!(utm_from_url("https://lp.example.jp/").is_empty());
        assert!(utm_from_url("https://lp.example.jp/?utm_source=a%07b").is_empty());
        assert!(utm_from_url("https://lp.example.jp/?utm_source=%FF").is_empty());
        let long = format!("https://lp.example.jp/?utm_term={}", "x".repeat(300));
        assert_eq!(utm_from_url(&long)[0].1.len(), 200);
    }

    #[test]
    fn body_utm_wins_then_the_page_then_the_referer() {
        let mut submission = Submission {
            page: Some("https://lp.example.jp/a?utm_source=page&utm_medium=page".into()),
            ..Submission::default()
        };
        submission.utm.insert("utm_source", "body".into());
        submission.fill_utm_from_urls(Some(
            "https://lp.example.jp/a?utm_medium=referer&utm_campaign=referer",
        ));
        assert_eq!(submission.utm["utm_source"], "body");
        assert_eq!(submission.utm["utm_medium"], "page");
        assert_eq!(submission.utm["utm_campaign"], "referer");
    }

    #[test]
    fn error_urls_keep_their_query_and_fragment() {
        let params = [("error", "validation".to_owned())];
        for (url, expected) in [
            (
                "https://lp.example.jp/e",
                "https://lp.example.jp/e?error=validation",
            ),
            (
                "https://lp.example.jp/e?a=1",
                "https://lp.example.jp/e?a=1&error=validation",
            ),
            (
                "https://lp.example.jp/e?",
                "https://lp.example.jp/e?error=validation",
            ),
            (
                "https://lp.example.jp/e#f",
                "https://lp.example.jp/e?error=validation#f",
            ),
        ] {
            assert_eq!(with_query(url, &params), expected, "case {url}");
        }
    }

    #[test]
    fn a_browser_refusal_escapes_and_encodes_field_names() {
        let hostile = "<img src=x onerror=alert(1)>";
        let error = ApiError::Validation(vec![
            FieldError::new("name", "is required"),
            FieldError::new(format!("attributes.{hostile}"), "at most 2000 characters"),
            FieldError::new("name", "is required"),
        ]);
        let page = browser_refusal(&error, None).expect("a page");
        assert_eq!(page.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let html = std::str::from_utf8(page.body()).unwrap();
        assert!(!html.contains(hostile), "{html}");
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(html.contains("お名前 / Name"), "{html}");
        let redirect =
            browser_refusal(&error, Some("https://lp.example.jp/error")).expect("a redirect");
        assert_eq!(redirect.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            redirect.headers()[header::LOCATION],
            "https://lp.example.jp/error?error=validation&fields=name,%3Cimg+src%3Dx+onerror%3Dalert%281%29%3E"
        );
        assert!(browser_refusal(&ApiError::PayloadTooLarge(1), None).is_none());
    }

    #[test]
    fn settings_validation() {
        let ok = FormSettings {
            thank_you_url: Some("https://lp.example.jp/thanks".into()),
            error_url: Some("https://lp.example.jp/エラー".into()),
            allowed_origins: vec!["https://LP.example.jp/".into()],
            allowed_origins_mode: OriginsMode::Replace,
            required_fields: vec!["name".into()],
            tags: vec!["spring".into()],
            consent_text_version: Some("v3".into()),
            consent_texts: [
                ("v2".to_owned(), "旧文言".to_owned()),
                ("v3".to_owned(), "メールマガジンを受け取る".to_owned()),
            ]
            .into(),
        }
        .validate()
        .unwrap();
        assert_eq!(ok.allowed_origins, ["https://lp.example.jp"]);
        assert_eq!(
            ok.error_url.as_deref(),
            Some("https://lp.example.jp/%E3%82%A8%E3%83%A9%E3%83%BC")
        );
        let bad_error_url = FormSettings {
            error_url: Some("/relative".into()),
            ..Default::default()
        };
        assert!(bad_error_url.validate().is_err());
        let bad = FormSettings {
            thank_you_url: Some("javascript:alert(1)".into()),
            required_fields: vec!["order_count".into()],
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let unproved = FormSettings {
            consent_text_version: Some("v4".into()),
            consent_texts: [("v3".to_owned(), "メールマガジンを受け取る".to_owned())].into(),
            ..Default::default()
        };
        match unproved.validate() {
            Err(ApiError::Validation(errors)) => {
                assert!(
                    errors.iter().any(|e| e.field == "consent_text_version"),
                    "{errors:?}"
                );
            }
            other => panic!("a current version without wording is refused: {other:?}"),
        }
        let label_only = FormSettings {
            consent_text_version: Some("v1".into()),
            ..Default::default()
        };
        assert!(
            label_only.validate().is_ok(),
            "no wording on file: any label"
        );
    }
}
