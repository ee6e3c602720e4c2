//! The staff-facing contact use cases behind `/v1/contacts`: create or
//! update, look-ups (email, any common phone format, prefix search; each
//! contact a `contact_summary::ContactSummary`), partial updates without
//! mass assignment, tags, interactions (and their agent and status), the
//! timeline, consent, export and erasure. Each write runs in one
//! `BEGIN IMMEDIATE` transaction, with its `Idempotency-Key` answer saved
//! alongside.

use crate::Ctx;
use crate::auth::Actor;
use crate::consent::{self, ConsentChange};
use crate::contact::{self, FirstTouch, WritePolicy};
use crate::db::transaction;
use crate::email::Email;
use crate::error::{ApiError, FieldError};
use crate::http::{
    Request, Response, decode_cursor, encode_cursor, json_response, page_limit, query_param,
};
use crate::idempotency::{WriteAnswer, write};
use crate::ids::new_id;
use crate::phone::Phone;
use crate::ports::{Db, Kv, Value};
use crate::profile::{self, Profile};
use crate::tags::{self, Tag};
use crate::text::search_fold;
use crate::timeline::{self, Entry, Kind};
use crate::timestamp;
use anyhow::Context as _;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

/// `POST /v1/contacts` body. Unknown fields (counters, ids, timestamps)
/// are refused: no mass assignment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    email: Option<String>,
    phone: Option<String>,
    external_id: Option<String>,
    name: Option<String>,
    family_name: Option<String>,
    given_name: Option<String>,
    family_name_kana: Option<String>,
    given_name_kana: Option<String>,
    company: Option<String>,
    postal_code: Option<String>,
    address: Option<String>,
    birthday: Option<String>,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    tags: Vec<String>,
}

struct ParsedInput {
    profile: Profile,
    external_id: Option<String>,
    tags: Vec<Tag>,
}

fn parse_input(input: ContactInput, region: crate::phone::Region) -> Result<ParsedInput, ApiError> {
    let mut profile = Profile::default();
    let mut errors = Vec::new();
    let fields = [
        ("email", input.email),
        ("phone", input.phone),
        ("name", input.name),
        ("family_name", input.family_name),
        ("given_name", input.given_name),
        ("family_name_kana", input.family_name_kana),
        ("given_name_kana", input.given_name_kana),
        ("company", input.company),
        ("postal_code", input.postal_code),
        ("address", input.address),
        ("birthday", input.birthday),
    ];
    for (field, value) in fields {
        if let Some(value) = value {
            profile::parse_field(&mut profile, field, &value, region, &mut errors);
        }
    }
    if input.attributes.len() > profile::MAX_ATTRIBUTES_PER_SUBMISSION {
        errors.push(FieldError::new(
            "attributes",
            "at most 50 attributes per request",
        ));
    } else {
        for (key, value) in &input.attributes {
            profile::add_attribute(&mut profile, key, value, &mut errors);
        }
    }
    let external_id = input
        .external_id
        .and_then(|v| profile::check_text("external_id", &v, 128, &mut errors));
    let mut tags = Vec::new();
    if input.tags.len() > 50 {
        errors.push(FieldError::new("tags", "at most 50 tags per request"));
    }
    for tag in input.tags.iter().take(50) {
        match Tag::parse(tag) {
            Ok(t) => tags.push(t),
            Err(_) => errors.push(FieldError::new(
                "tags",
                "each 1 to 64 characters, without `/`",
            )),
        }
    }
    if profile.is_empty_identity() && external_id.is_none() && errors.is_empty() {
        errors.push(FieldError::new(
            "email",
            "an email, a phone number or an external_id is required",
        ));
    }
    profile.fill_display_name();
    if errors.is_empty() {
        Ok(ParsedInput {
            profile,
            external_id,
            tags,
        })
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// `POST /v1/contacts`: 201 with the new contact, or 200 with the updated
/// one. Staff values overwrite stored ones.
pub async fn create_or_update<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    request: &Request,
) -> Result<Response, ApiError> {
    let input: ContactInput = crate::http::read_json(request)?;
    let parsed = parse_input(input, ctx.config.default_phone_region)?;
    write(ctx, actor, request, async || {
        let now = ctx.clock.now();
        let at = timestamp::format(now);
        let label = actor.label();
        let existing =
            contact::resolve(ctx.db, &parsed.profile, parsed.external_id.as_deref()).await?;
        let (id, status) = match existing {
            Some(id) => {
                if !contact::exists(ctx.db, &id).await? {
                    return Err(ApiError::Conflict(
                        "that identity belongs to an erased contact".into(),
                    ));
                }
                // Found by email or phone, but that contact is another
                // shop customer: never re-point it to this external id.
                if let Some(wanted) = parsed.external_id.as_deref()
                    && let Some(stored) = contact::external_id(ctx.db, &id).await?
                    && stored != wanted
                {
                    return Err(ApiError::Conflict(
                        "this email or phone belongs to a contact with another external_id".into(),
                    ));
                }
                let changed = contact::update(
                    ctx.db,
                    &id,
                    &parsed.profile,
                    parsed.external_id.as_deref(),
                    WritePolicy::Overwrite,
                    &label,
                    &at,
                )
                .await?;
                if !changed.is_empty() {
                    let entry = Entry::event(
                        Kind::ContactUpdated,
                        Some(json!({ "fields": changed })),
                        now,
                    );
                    timeline::append(ctx.db, &id, &entry, &label, now).await?;
                }
                (id, StatusCode::OK)
            }
            None => {
                let id = new_id(now);
                let source = match actor {
                    Actor::Key(name) => format!("api:{name}"),
                    other => other.label(),
                };
                let touch = FirstTouch {
                    source,
                    ..FirstTouch::default()
                };
                contact::insert(
                    ctx.db,
                    &id,
                    &parsed.profile,
                    parsed.external_id.as_deref(),
                    &touch,
                    &label,
                    &at,
                )
                .await?;
                let entry = Entry::event(Kind::ContactCreated, None, now);
                timeline::append(ctx.db, &id, &entry, &label, now).await?;
                (id, StatusCode::CREATED)
            }
        };
        for tag in &parsed.tags {
            tags::add(ctx.db, &id, tag, &label, now).await?;
        }
        let view = contact::load(ctx.db, &id, ctx.clock.now())
            .await?
            .context("contact just written")?;
        Ok(WriteAnswer {
            status,
            body: serde_json::to_value(view).context("view")?,
            contact_id: Some(id),
        })
    })
    .await
}

/// `GET /v1/contacts/{id}`.
/// The whole customer on one screen: profile, consents, tags, order
/// counters and points (derived from the ledger at `now`).
pub async fn get<D: Db, K: Kv>(ctx: &Ctx<'_, D, K>, id: &str) -> Result<Response, ApiError> {
    let view = contact::load(ctx.db, id, ctx.clock.now())
        .await?
        .ok_or_else(not_found)?;
    Ok(json_response(StatusCode::OK, &view))
}

/// 404 unless a live contact with `id` exists.
async fn require_contact(db: &impl Db, id: &str) -> Result<(), ApiError> {
    if contact::exists(db, id).await? {
        Ok(())
    } else {
        Err(not_found())
    }
}

pub fn not_found() -> ApiError {
    ApiError::NotFound("no contact with this id".into())
}

/// The page's contacts, before their summaries are read: their ids, in
/// id order, `LIMIT`ed (see `contact_summary::page`).
const PAGE_ID_COLUMN: &str = "c.id";

/// `GET /v1/contacts?email=|phone=|q=`: keyset-paginated by id (creation
/// order), each contact a `contact_summary::ContactSummary`, the page in
/// one statement. Erased contacts are never listed.
pub async fn list<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    request: &Request,
) -> Result<Response, ApiError> {
    let pairs = crate::http::query_pairs(request, &["limit", "cursor", "email", "phone", "q"])?;
    let limit = page_limit(&pairs)?;
    let after = match query_param(&pairs, "cursor") {
        Some(c) => Some(decode_cursor(c, 1)?.remove(0)),
        None => None,
    };
    let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
    let filters = ["email", "phone", "q"]
        .into_iter()
        .filter(|f| query_param(&pairs, f).is_some())
        .count();
    if filters > 1 {
        return Err(ApiError::invalid("query", "use one of email, phone or q"));
    }
    // Query strings decode `+` as a space. An email holds no space, and a
    // phone number's leading space can only be an unencoded `+`.
    let plus = |text: &str| text.replace(' ', "+");
    let (sql, params): (String, Vec<Value>) = if let Some(email) = query_param(&pairs, "email") {
        let email = plus(email);
        let email = email.as_str();
        let email = Email::parse(email).map_err(|e| ApiError::invalid("email", e.to_string()))?;
        (
            format!(
                "SELECT {PAGE_ID_COLUMN} FROM contacts c WHERE c.email = ?1 AND (?2 IS NULL OR c.id > ?2) ORDER BY c.id LIMIT ?3"
            ),
            vec![email.as_str().into(), after.into(), fetch.into()],
        )
    } else if let Some(phone) = query_param(&pairs, "phone") {
        let phone = match phone.strip_prefix(' ') {
            Some(rest) => format!("+{rest}"),
            None => phone.to_owned(),
        };
        let phone = phone.as_str();
        let phone = Phone::parse(phone, ctx.config.default_phone_region)
            .map_err(|e| ApiError::invalid("phone", e.to_string()))?;
        (
            format!(
                "SELECT {PAGE_ID_COLUMN} FROM contacts c WHERE c.phone = ?1 AND (?2 IS NULL OR c.id > ?2) ORDER BY c.id LIMIT ?3"
            ),
            vec![phone.as_str().into(), after.into(), fetch.into()],
        )
    } else if let Some(q) = query_param(&pairs, "q") {
        let term = search_fold(q);
        if term.is_empty() || term.chars().count() > 100 {
            return Err(ApiError::invalid("q", "1 to 100 characters"));
        }
        // The range [term, term + U+10FFFF) is a prefix match that uses
        // the (term, contact_id) primary key, unlike LIKE.
        let upper = format!("{term}\u{10FFFF}");
        (
            format!(
                "SELECT {PAGE_ID_COLUMN} FROM contacts c WHERE c.id IN (
                     SELECT contact_id FROM contact_search WHERE term >= ?1 AND term < ?2)
                   AND (?3 IS NULL OR c.id > ?3) AND c.erased_at IS NULL
                 ORDER BY c.id LIMIT ?4"
            ),
            vec![term.into(), upper.into(), after.into(), fetch.into()],
        )
    } else {
        (
            format!(
                "SELECT {PAGE_ID_COLUMN} FROM contacts c WHERE c.erased_at IS NULL AND (?1 IS NULL OR c.id > ?1) ORDER BY c.id LIMIT ?2"
            ),
            vec![after.into(), fetch.into()],
        )
    };
    let mut items = crate::contact_summary::page(ctx.db, &sql, params, ctx.clock.now()).await?;
    let mut next_cursor = None;
    if items.len() > limit {
        items.truncate(limit);
        next_cursor = items
            .last()
            .and_then(|last| last.id())
            .map(|id| encode_cursor(&[id]));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "items": items, "next_cursor": next_cursor }),
    ))
}

/// Fields `PATCH` may change; `null` clears one.
const PATCHABLE: &[&str] = &[
    "email",
    "phone",
    "external_id",
    "name",
    "family_name",
    "given_name",
    "family_name_kana",
    "given_name_kana",
    "company",
    "postal_code",
    "address",
    "birthday",
    "attributes",
];

/// `PATCH /v1/contacts/{id}`: only editable fields; any other field
/// (counters, ids, timestamps, stage) is a 422 naming it.
pub async fn patch<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    let body: Map<String, Json> = crate::http::read_json(request)?;
    let mut errors = Vec::new();
    let mut profile = Profile::default();
    let mut clear: Vec<&str> = Vec::new();
    let mut external_id = None;
    for (key, value) in &body {
        let Some(field) = PATCHABLE.iter().find(|f| **f == key.as_str()) else {
            errors.push(FieldError::new(key.clone(), "cannot be changed"));
            continue;
        };
        match (*field, value) {
            (_, Json::Null) => clear.push(field),
            ("attributes", Json::Object(map)) => {
                for (k, v) in map {
                    match v {
                        Json::String(s) => profile::add_attribute(&mut profile, k, s, &mut errors),
                        _ => errors.push(FieldError::new(
                            format!("attributes.{k}"),
                            "must be a string",
                        )),
                    }
                }
            }
            ("external_id", Json::String(s)) => {
                external_id = profile::check_text("external_id", s, 128, &mut errors);
            }
            (field, Json::String(s)) if field != "attributes" => {
                if s.trim().is_empty() {
                    clear.push(field);
                } else {
                    profile::parse_field(
                        &mut profile,
                        field,
                        s,
                        ctx.config.default_phone_region,
                        &mut errors,
                    );
                }
            }
            (field, _) => errors.push(FieldError::new(field, "has the wrong type")),
        }
    }
    if body.is_empty() {
        errors.push(FieldError::new("body", "name at least one field to change"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    write(ctx, actor, request, async || {
        require_contact(ctx.db, id).await?;
        let now = ctx.clock.now();
        let at = timestamp::format(now);
        let label = actor.label();
        let mut changed =
            contact::update(ctx.db, id, &profile, external_id.as_deref(), WritePolicy::Overwrite, &label, &at).await?;
        if !clear.is_empty() {
            let sets: Vec<String> = clear
                .iter()
                .map(|f| match *f {
                    "attributes" => "attributes = '{}'".to_owned(),
                    _ => format!("{f} = NULL"),
                })
                .collect();
            // `clear` holds names from PATCHABLE only, never caller text.
            let sql = format!(
                "UPDATE contacts SET {}, updated_at = ?2, updated_by = ?3 WHERE id = ?1 RETURNING email, phone, external_id",
                sets.join(", ")
            );
            let rows = ctx.db.execute(&sql, &[id.into(), at.as_str().into(), label.as_str().into()]).await.map_err(contact::identity_conflict)?;
            let row = rows.first().context("patched contact")?;
            if row.opt_str("email")?.is_none() && row.opt_str("phone")?.is_none() && row.opt_str("external_id")?.is_none() {
                return Err(ApiError::invalid("email", "a contact keeps at least an email, a phone or an external_id"));
            }
            contact::refresh_search_terms(ctx.db, id).await?;
            // `contact::update` told of the fields it set; these it did not see.
            let cleared: Vec<String> = clear.iter().map(|f| (*f).to_owned()).collect();
            contact::record_updated(ctx.db, id, &cleared, &at).await?;
            changed.extend(cleared);
        }
        if !changed.is_empty() {
            let entry = Entry::event(Kind::ContactUpdated, Some(json!({ "fields": changed })), now);
            timeline::append(ctx.db, id, &entry, &label, now).await?;
        }
        let view = contact::load(ctx.db, id, ctx.clock.now()).await?.context("patched contact")?;
        Ok(WriteAnswer { status: StatusCode::OK, body: serde_json::to_value(view).context("view")?, contact_id: Some(id.to_owned()) })
    })
    .await
}

/// `PUT` (add) or `DELETE` (remove) `/v1/contacts/{id}/tags/{tag}`.
pub async fn set_tag<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    id: &str,
    tag: &str,
    present: bool,
    request: &Request,
) -> Result<Response, ApiError> {
    let tag = Tag::parse(tag)?;
    write(ctx, actor, request, async || {
        require_contact(ctx.db, id).await?;
        let now = ctx.clock.now();
        let label = actor.label();
        let changed = if present {
            tags::add(ctx.db, id, &tag, &label, now).await?
        } else {
            tags::remove(ctx.db, id, &tag, &label, now).await?
        };
        Ok(WriteAnswer {
            status: StatusCode::OK,
            body: json!({ "contact_id": id, "tag": tag.as_str(), "present": present, "changed": changed }),
            contact_id: Some(id.to_owned()),
        })
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InteractionInput {
    kind: String,
    channel: Option<String>,
    subject: Option<String>,
    body: Option<String>,
    occurred_at: Option<String>,
    /// The staff member who handled it, in the shop's words.
    agent: Option<String>,
    status: Option<String>,
}

/// `POST /v1/contacts/{id}/interactions`: an inquiry, call, email, visit
/// or note, at `occurred_at` (default now; not more than 5 minutes ahead),
/// handled by `agent`, in `status` (default: an inquiry `open`, the rest
/// `closed`); 201 with the entry as the timeline shows it and `contact_id`.
pub async fn add_interaction<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    let input: InteractionInput = crate::http::read_json(request)?;
    let now = ctx.clock.now();
    let mut errors = Vec::new();
    let kind = match Kind::parse_recordable(&input.kind) {
        Ok(kind) => Some(kind),
        Err(ApiError::Validation(found)) => {
            errors.extend(found);
            None
        }
        Err(other) => return Err(other),
    };
    let status = match input.status.as_deref().map(timeline::Status::parse) {
        None => None,
        Some(Ok(status)) => Some(status),
        Some(Err(ApiError::Validation(found))) => {
            errors.extend(found);
            None
        }
        Some(Err(other)) => return Err(other),
    };
    let agent = input
        .agent
        .as_deref()
        .and_then(|s| profile::check_text("agent", s, timeline::AGENT_MAX, &mut errors));
    let channel = match input.channel.as_deref() {
        None => None,
        Some(c) if timeline::CHANNELS.contains(&c) => Some(c),
        Some(_) => {
            errors.push(FieldError::new(
                "channel",
                format!("one of {}", timeline::CHANNELS.join(", ")),
            ));
            None
        }
    };
    let subject = input
        .subject
        .as_deref()
        .and_then(|s| profile::check_text("subject", s, 200, &mut errors));
    let body = input
        .body
        .as_deref()
        .and_then(|s| profile::check_text("body", s, 10_000, &mut errors));
    let occurred_at = match input.occurred_at.as_deref() {
        None => now,
        Some(text) => match timestamp::parse(text) {
            Some(t) if t <= now + time::Duration::minutes(5) => t,
            Some(_) => {
                errors.push(FieldError::new("occurred_at", "cannot be in the future"));
                now
            }
            None => {
                errors.push(FieldError::new("occurred_at", "an RFC 3339 timestamp"));
                now
            }
        },
    };
    if subject.is_none() && body.is_none() && errors.is_empty() {
        errors.push(FieldError::new("body", "a subject or a body is required"));
    }
    let (Some(kind), true) = (kind, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let status = status.or(kind.default_status());
    write(ctx, actor, request, async || {
        require_contact(ctx.db, id).await?;
        let entry = Entry {
            kind,
            channel,
            subject: subject.as_deref(),
            body: body.as_deref(),
            data: None,
            occurred_at,
        };
        let handling = timeline::Handling {
            agent: agent.as_deref(),
            status,
        };
        let mut answer =
            timeline::record(ctx.db, id, &entry, handling, &actor.label(), now).await?;
        answer["contact_id"] = id.into();
        Ok(WriteAnswer {
            status: StatusCode::CREATED,
            body: answer,
            contact_id: Some(id.to_owned()),
        })
    })
    .await
}

/// The longest `note` on a change of an interaction.
const INTERACTION_NOTE_MAX: usize = 1000;

/// `PATCH /v1/contacts/{id}/interactions/{interaction_id}`: a new
/// `status` and/or `agent` for a staff entry, with an optional `note`;
/// 200 with the entry as the timeline shows it and `changed` (the fields
/// whose value changed). Each change is also a timeline entry of kind
/// `interaction_updated` with the old and new values and the note.
pub async fn update_interaction<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    id: &str,
    interaction_id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    // Read as a map, like `patch`: `agent: null` (clear) differs from no
    // `agent` (keep), and any other field is named in the 422.
    let body: Map<String, Json> = crate::http::read_json(request)?;
    let mut errors = Vec::new();
    let mut change = timeline::HandlingChange::default();
    for (key, value) in &body {
        match (key.as_str(), value) {
            ("status", Json::String(text)) => match timeline::Status::parse(text) {
                Ok(status) => change.status = Some(status),
                Err(_) => errors.push(FieldError::new("status", timeline::Status::EXPECTED)),
            },
            ("agent", Json::Null) => change.agent = Some(None),
            ("agent", Json::String(text)) => {
                let before = errors.len();
                let agent = profile::check_text("agent", text, timeline::AGENT_MAX, &mut errors);
                if errors.len() == before {
                    change.agent = Some(agent);
                }
            }
            ("note", Json::String(text)) => {
                change.note = profile::check_text("note", text, INTERACTION_NOTE_MAX, &mut errors);
            }
            ("note", Json::Null) => {}
            ("status" | "agent" | "note", _) => {
                errors.push(FieldError::new(key.clone(), "has the wrong type"));
            }
            _ => errors.push(FieldError::new(
                key.clone(),
                "cannot be changed: only status, agent and note",
            )),
        }
    }
    if !body.contains_key("status") && !body.contains_key("agent") && errors.is_empty() {
        errors.push(FieldError::new(
            "status",
            "name a status (open, pending, closed) or an agent to change",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    write(ctx, actor, request, async || {
        require_contact(ctx.db, id).await?;
        let changed = timeline::change_handling(
            ctx.db,
            id,
            interaction_id,
            &change,
            &actor.label(),
            ctx.clock.now(),
        )
        .await?
        .ok_or_else(|| ApiError::NotFound("this contact has no interaction with this id".into()))?;
        let mut body = changed.entry;
        body["contact_id"] = id.into();
        body["changed"] = json!(changed.changed);
        Ok(WriteAnswer {
            status: StatusCode::OK,
            body,
            contact_id: Some(id.to_owned()),
        })
    })
    .await
}

/// `GET /v1/contacts/{id}/timeline[?kind=inquiry,call]`: staff entries,
/// Kizuna's own events and points ledger entries, newest first; `kind`
/// keeps one kind or several (comma-separated).
pub async fn timeline_page(
    db: &impl Db,
    id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    let pairs = crate::http::query_pairs(request, &["limit", "cursor", "kind"])?;
    let limit = page_limit(&pairs)?;
    require_contact(db, id).await?;
    let kinds = match query_param(&pairs, "kind") {
        Some(text) => Kind::parse_filter(text)?,
        None => Vec::new(),
    };
    let page = timeline::page(db, id, &kinds, limit, query_param(&pairs, "cursor")).await?;
    Ok(json_response(StatusCode::OK, &page))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentInput {
    channel: String,
    status: String,
    reason: Option<String>,
    text_version: Option<String>,
    /// Where the person gave or withdrew it, in staff's words
    /// ("電話", "店頭の申込書"): `reason` stays a closed list.
    source: Option<String>,
    note: Option<String>,
}

/// The longest `source` and `note` of a staff consent change.
const CONSENT_SOURCE_MAX: usize = 100;
const CONSENT_NOTE_MAX: usize = 1000;

/// `POST /v1/contacts/{id}/consents`: grant or withdraw one channel.
pub async fn change_consent<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    let input: ConsentInput = crate::http::read_json(request)?;
    let channel = consent::Channel::try_from(input.channel.as_str())?;
    let status = consent::Status::try_from(input.status.as_str())?;
    let reason = consent::Reason::try_from(input.reason.as_deref().unwrap_or("manual"))?;
    let mut errors = Vec::new();
    let text_version = input
        .text_version
        .as_deref()
        .and_then(|v| profile::check_text("text_version", v, 64, &mut errors));
    let source = input
        .source
        .as_deref()
        .and_then(|v| profile::check_text("source", v, CONSENT_SOURCE_MAX, &mut errors));
    let note = input
        .note
        .as_deref()
        .and_then(|v| profile::check_text("note", v, CONSENT_NOTE_MAX, &mut errors));
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    write(ctx, actor, request, async || {
        require_contact(ctx.db, id).await?;
        let change = ConsentChange {
            text_version: text_version.as_deref(),
            source: source.as_deref(),
            note: note.as_deref(),
            ..ConsentChange::new(channel, status, reason)
        };
        let secret = ctx.config.unsubscribe_secret()?;
        match status {
            consent::Status::Granted => {
                crate::suppression::refuse_grant_if_suppressed(ctx.db, secret, id, channel).await?;
                consent::record(ctx.db, id, &change, &actor.label(), ctx.clock.now()).await?;
            }
            consent::Status::Withdrawn => {
                consent::record(ctx.db, id, &change, &actor.label(), ctx.clock.now()).await?;
                crate::suppression::on_withdrawal(ctx.db, secret, id, channel, ctx.clock.now())
                    .await?;
            }
        }
        let current = consent::current(ctx.db, id).await?;
        Ok(WriteAnswer {
            status: StatusCode::CREATED,
            body: json!({ "contact_id": id, "consents": current }),
            contact_id: Some(id.to_owned()),
        })
    })
    .await
}

/// `GET /v1/contacts/{id}/unsubscribe-link`.
pub async fn unsubscribe_link<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    id: &str,
) -> Result<Response, ApiError> {
    require_contact(ctx.db, id).await?;
    let (token, url) = crate::unsubscribe_link::url(ctx.config, id)?;
    let mut answer = json!({ "contact_id": id, "token": token, "url": url, "method": "POST" });
    if let Some(warning) = ctx.config.public_base_url_warning() {
        answer["warning"] = warning.into();
    }
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /v1/contacts/{id}/export[?limit=]`: the whole record, its growing
/// lists to `limit` items (default and most 500) with `next` links;
/// `?section=…&cursor=…` continues one list.
pub async fn export<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    use crate::privacy::{EXPORT_PAGE_MAX, Section};
    let pairs = crate::http::query_pairs(request, &["limit", "section", "cursor"])?;
    let limit = crate::http::limit_between(&pairs, EXPORT_PAGE_MAX, EXPORT_PAGE_MAX)?;
    let section = query_param(&pairs, "section")
        .map(Section::parse)
        .transpose()?;
    let cursor = query_param(&pairs, "cursor");
    let Some(section) = section else {
        if cursor.is_some() {
            return Err(ApiError::invalid("cursor", "only with `section`"));
        }
        let document = crate::privacy::export(ctx, id, limit)
            .await?
            .ok_or_else(not_found)?;
        return Ok(json_response(StatusCode::OK, &document));
    };
    require_contact(ctx.db, id).await?;
    let (items, next) = crate::privacy::section_page(ctx.db, id, section, limit, cursor).await?;
    let next = next.map(|c| crate::privacy::next_page_url(id, section, limit, &c));
    Ok(json_response(
        StatusCode::OK,
        &json!({ "contact_id": id, "section": section.as_str(), "items": items, "next": next }),
    ))
}

/// `DELETE /v1/contacts/{id}`: erasure, then (on a SQLite file) a WAL
/// checkpoint so old page images with the erased values leave the `-wal`
/// file too; the answer says what the storage may still hold.
pub async fn erase<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    id: &str,
) -> Result<Response, ApiError> {
    let now = ctx.clock.now();
    let erased = transaction(
        ctx.db,
        async || -> Result<Option<crate::privacy::Erased>, ApiError> {
            let secret = ctx.config.unsubscribe_secret()?;
            Ok(crate::privacy::erase(ctx.db, secret, id, &actor.label(), now).await?)
        },
    )
    .await?
    .ok_or_else(not_found)?;
    let checkpointed = crate::db::checkpoint_truncate(ctx.db)
        .await
        .unwrap_or_else(|e| {
            eprintln!("checkpoint after erasure did not complete: {e}");
            false
        });
    let residue = crate::privacy::storage_residue(ctx.db.backend(), checkpointed);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "contact_id": id, "erased": true, "erased_at": erased.erased_at,
            "points_forfeited": erased.points_forfeited, "storage": residue,
        }),
    ))
}
