//! The contact record: identity resolution (external id, then email, then
//! phone), creating and updating profiles under the two write policies
//! (anonymous forms only fill what is empty; staff may overwrite), the
//! search index, and the view the API returns.
//!
//! Every function here runs inside the caller's `BEGIN IMMEDIATE`
//! transaction. That lock makes each find-then-write sequence atomic; the
//! unique indexes on email, external id and phone-only contacts are what
//! guarantee one record per identity even if a path forgot the lock.

use crate::error::ApiError;
use crate::events::outbox::{self, Event};
use crate::ports::{Db, DbError, Row, Value};
use crate::profile::{MAX_ATTRIBUTES_PER_CONTACT, Profile, TEXT_FIELDS};
use crate::text::search_fold;
use anyhow::Context as _;
use serde::Serialize;
use serde_json::{Map, Value as Json, json};
use std::collections::BTreeMap;

/// Where a contact was first seen: `form:<id>`, `api:<key>`, `webhook:<source>`.
#[derive(Debug, Clone, Default)]
pub struct FirstTouch {
    pub source: String,
    pub form_id: Option<String>,
    pub page: Option<String>,
    pub utm: BTreeMap<&'static str, String>,
}

pub const UTM_FIELDS: &[&str] = &[
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
];

/// How a write treats values already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePolicy {
    /// Anonymous callers (forms, webhooks): fill empty fields only, so a
    /// stranger who knows an email cannot rename its owner.
    FillEmpty,
    /// Staff with `contacts:write`: given values replace stored ones.
    Overwrite,
}

/// Finds the live contact a profile belongs to: external id, then email,
/// then phone. With an email, a phone-only contact with the same number
/// is the same person who now gave an email; without one, the phone
/// matches the phone-only contact first, else the oldest contact with it.
pub async fn resolve(
    db: &impl Db,
    profile: &Profile,
    external_id: Option<&str>,
) -> anyhow::Result<Option<String>> {
    if let Some(external_id) = external_id
        && let Some(id) = first_id(
            db,
            "SELECT id FROM contacts WHERE external_id = ?1",
            &[external_id.into()],
        )
        .await?
    {
        return Ok(Some(id));
    }
    if let Some(email) = &profile.email {
        if let Some(id) = first_id(
            db,
            "SELECT id FROM contacts WHERE email = ?1",
            &[email.as_str().into()],
        )
        .await?
        {
            return Ok(Some(id));
        }
        if let Some(phone) = &profile.phone {
            return first_id(
                db,
                "SELECT id FROM contacts WHERE phone = ?1 AND email IS NULL AND erased_at IS NULL",
                &[phone.as_str().into()],
            )
            .await;
        }
        return Ok(None);
    }
    if let Some(phone) = &profile.phone {
        return first_id(
            db,
            "SELECT id FROM contacts WHERE phone = ?1 AND erased_at IS NULL
             ORDER BY email IS NULL DESC, id LIMIT 1",
            &[phone.as_str().into()],
        )
        .await;
    }
    Ok(None)
}

async fn first_id(db: &impl Db, sql: &str, params: &[Value]) -> anyhow::Result<Option<String>> {
    let rows = db
        .execute(sql, params)
        .await
        .context("failed to look up a contact")?;
    rows.first()
        .map(|r| r.str("id").map(str::to_owned))
        .transpose()
}

/// Inserts a new contact.
pub async fn insert(
    db: &impl Db,
    id: &str,
    profile: &Profile,
    external_id: Option<&str>,
    touch: &FirstTouch,
    actor: &str,
    now: &str,
) -> Result<(), ApiError> {
    let mut columns: Vec<&str> = vec![
        "id",
        "email",
        "phone",
        "external_id",
        "postal_code",
        "birthday",
        "attributes",
        "source",
        "first_form_id",
        "first_page",
    ];
    let mut params: Vec<Value> = vec![
        id.into(),
        profile.email.as_ref().map(|e| e.as_str()).into(),
        profile.phone.as_ref().map(|p| p.as_str()).into(),
        external_id.into(),
        profile.postal_code.as_deref().into(),
        profile.birthday.as_deref().into(),
        serde_json::to_string(&profile.attributes)
            .context("attributes")?
            .into(),
        touch.source.as_str().into(),
        touch.form_id.as_deref().into(),
        touch.page.as_deref().into(),
    ];
    for (field, _) in TEXT_FIELDS {
        columns.push(field);
        params.push(profile.text(field).into());
    }
    for utm in UTM_FIELDS {
        columns.push(utm);
        params.push(touch.utm.get(utm).map(String::as_str).into());
    }
    columns.extend(["created_at", "created_by", "updated_at", "updated_by"]);
    params.extend([now.into(), actor.into(), now.into(), actor.into()]);
    let placeholders: Vec<String> = (1..=params.len()).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "INSERT INTO contacts ({}) VALUES ({})",
        columns.join(", "),
        placeholders.join(", ")
    );
    db.execute(&sql, &params).await.map_err(identity_conflict)?;
    // A new contact has no terms yet, and its fields are those just written.
    let terms = search_terms(|field| match field {
        "email" => profile.email.as_ref().map_or("", |e| e.as_str()),
        other => profile.text(other).unwrap_or(""),
    });
    insert_search_terms(db, id, terms).await?;
    let created = json!({"contact_id": id, "source": touch.source, "form_id": touch.form_id});
    let now = crate::timestamp::parse(now).context("the write's own timestamp")?;
    outbox::record(db, now, &[Event::new("contact.created", Some(id), created)]).await?;
    Ok(())
}

/// Updates a contact under `policy`; returns the names of fields whose
/// stored value changed.
pub async fn update(
    db: &impl Db,
    id: &str,
    profile: &Profile,
    external_id: Option<&str>,
    policy: WritePolicy,
    actor: &str,
    now: &str,
) -> Result<Vec<String>, ApiError> {
    let before = db
        .execute("SELECT * FROM contacts WHERE id = ?1", &[id.into()])
        .await
        .context("failed to read a contact")?;
    let before = before
        .first()
        .context("contact vanished inside its transaction")?;
    let mut given: Vec<(&str, Option<String>)> = vec![
        (
            "email",
            profile.email.as_ref().map(|e| e.as_str().to_owned()),
        ),
        (
            "phone",
            profile.phone.as_ref().map(|p| p.as_str().to_owned()),
        ),
        ("external_id", external_id.map(str::to_owned)),
        ("postal_code", profile.postal_code.clone()),
        ("birthday", profile.birthday.clone()),
    ];
    for (field, _) in TEXT_FIELDS {
        given.push((field, profile.text(field).map(str::to_owned)));
    }
    let mut sets = Vec::new();
    let mut params: Vec<Value> = vec![id.into()];
    let mut changed = Vec::new();
    for (field, value) in given {
        let Some(value) = value else { continue };
        let stored = before.opt_str(field)?;
        let write = match policy {
            // Anonymous data never takes an identity from another contact:
            // the value is skipped (it stays on the timeline) rather than
            // failing the write, so a webhook's order is never lost to it.
            WritePolicy::FillEmpty => {
                stored.is_none() && !identity_taken(db, id, field, &value, before).await?
            }
            WritePolicy::Overwrite => stored != Some(value.as_str()),
        };
        if write {
            params.push(value.into());
            sets.push(format!("{field} = ?{}", params.len()));
            changed.push(field.to_owned());
        }
    }
    if !profile.attributes.is_empty() {
        let mut merged: Map<String, Json> =
            serde_json::from_str(before.str("attributes")?).context("stored attributes")?;
        let mut attributes_changed = false;
        for (key, value) in &profile.attributes {
            let keep = policy == WritePolicy::FillEmpty && merged.contains_key(key);
            let room = merged.contains_key(key) || merged.len() < MAX_ATTRIBUTES_PER_CONTACT;
            // Staff learn that a value did not fit; an anonymous form
            // simply stops adding keys (its submission is on the timeline).
            if !room && policy == WritePolicy::Overwrite {
                return Err(ApiError::invalid(
                    "attributes",
                    format!("a contact keeps at most {MAX_ATTRIBUTES_PER_CONTACT} attributes"),
                ));
            }
            if !keep && room && merged.get(key) != Some(&Json::String(value.clone())) {
                merged.insert(key.clone(), Json::String(value.clone()));
                attributes_changed = true;
            }
        }
        if attributes_changed {
            params.push(Json::Object(merged).to_string().into());
            sets.push(format!("attributes = ?{}", params.len()));
            changed.push("attributes".to_owned());
        }
    }
    if changed.is_empty() {
        return Ok(changed);
    }
    params.push(now.into());
    sets.push(format!("updated_at = ?{}", params.len()));
    params.push(actor.into());
    sets.push(format!("updated_by = ?{}", params.len()));
    let sql = format!("UPDATE contacts SET {} WHERE id = ?1", sets.join(", "));
    db.execute(&sql, &params).await.map_err(identity_conflict)?;
    if changed
        .iter()
        .any(|f| SEARCHED_FIELDS.contains(&f.as_str()))
    {
        refresh_search_terms(db, id).await?;
    }
    record_updated(db, id, &changed, now).await?;
    Ok(changed)
}

/// The `contact.updated` event of fields just changed (at `now`, the
/// write's stored timestamp): their names only, as the values are
/// personal data that a delivery renders from the row.
pub async fn record_updated(
    db: &impl Db,
    id: &str,
    fields: &[String],
    now: &str,
) -> anyhow::Result<()> {
    let updated = json!({"contact_id": id, "fields": fields});
    let now = crate::timestamp::parse(now).context("the write's own timestamp")?;
    outbox::record(db, now, &[Event::new("contact.updated", Some(id), updated)]).await
}

/// Whether setting `field` to `value` on contact `id` would collide with
/// another contact's identity under the unique indexes.
async fn identity_taken(
    db: &impl Db,
    id: &str,
    field: &str,
    value: &str,
    before: Row<'_>,
) -> anyhow::Result<bool> {
    let sql = match field {
        "email" => "SELECT 1 AS taken FROM contacts WHERE email = ?1 AND id <> ?2",
        "external_id" => "SELECT 1 AS taken FROM contacts WHERE external_id = ?1 AND id <> ?2",
        // Phones are unique only among contacts without an email.
        "phone" if before.opt_str("email")?.is_none() => {
            "SELECT 1 AS taken FROM contacts WHERE phone = ?1 AND email IS NULL AND id <> ?2"
        }
        _ => return Ok(false),
    };
    let rows = db
        .execute(sql, &[value.into(), id.into()])
        .await
        .context("failed to check an identity")?;
    Ok(!rows.is_empty())
}

/// A unique index refusing a write means the value belongs to another
/// contact: a 409 for the caller, not a 500.
pub fn identity_conflict(error: DbError) -> ApiError {
    for (index, field) in [
        ("contacts.email", "email"),
        ("contacts.external_id", "external_id"),
        ("contacts.phone", "phone"),
    ] {
        if error.is_unique_violation(index) {
            return ApiError::Conflict(format!("another contact already has this {field}"));
        }
    }
    ApiError::Unexpected(anyhow::Error::from(error).context("failed to write a contact"))
}

const SEARCHED_FIELDS: &[&str] = &[
    "email",
    "name",
    "family_name",
    "given_name",
    "family_name_kana",
    "given_name_kana",
];

/// Rebuilds a contact's search terms from its stored fields.
pub async fn refresh_search_terms(db: &impl Db, id: &str) -> anyhow::Result<()> {
    let rows = db
        .execute(
            "SELECT email, name, family_name, given_name, family_name_kana, given_name_kana
             FROM contacts WHERE id = ?1",
            &[id.into()],
        )
        .await
        .context("failed to read search fields")?;
    let row = rows.first().context("contact missing for search terms")?;
    let terms = search_terms(|f| row.opt_str(f).ok().flatten().unwrap_or(""));
    db.execute(
        "DELETE FROM contact_search WHERE contact_id = ?1",
        &[id.into()],
    )
    .await
    .context("failed to clear search terms")?;
    insert_search_terms(db, id, terms).await
}

/// The folded terms a contact is found by: each searched field, and the
/// full name in both orders, in kanji and in kana.
fn search_terms<'a>(get: impl Fn(&str) -> &'a str) -> std::collections::BTreeSet<String> {
    let mut terms = std::collections::BTreeSet::new();
    for field in SEARCHED_FIELDS {
        terms.insert(search_fold(get(field)));
    }
    terms.insert(search_fold(&format!(
        "{}{}",
        get("family_name"),
        get("given_name")
    )));
    terms.insert(search_fold(&format!(
        "{}{}",
        get("given_name"),
        get("family_name")
    )));
    terms.insert(search_fold(&format!(
        "{}{}",
        get("family_name_kana"),
        get("given_name_kana")
    )));
    terms.remove("");
    terms
}

/// One statement for all of a contact's terms.
async fn insert_search_terms(
    db: &impl Db,
    id: &str,
    terms: std::collections::BTreeSet<String>,
) -> anyhow::Result<()> {
    if terms.is_empty() {
        return Ok(());
    }
    let mut params: Vec<Value> = vec![id.into()];
    let mut rows = Vec::with_capacity(terms.len());
    for term in terms {
        params.push(term.chars().take(100).collect::<String>().into());
        rows.push(format!("(?{}, ?1)", params.len()));
    }
    db.execute(
        &format!(
            "INSERT OR IGNORE INTO contact_search (term, contact_id) VALUES {}",
            rows.join(", ")
        ),
        &params,
    )
    .await
    .context("failed to add search terms")?;
    Ok(())
}

/// The contact as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ContactView {
    pub id: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub external_id: Option<String>,
    pub name: Option<String>,
    pub family_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name_kana: Option<String>,
    pub given_name_kana: Option<String>,
    pub company: Option<String>,
    pub postal_code: Option<String>,
    pub address: Option<String>,
    pub birthday: Option<String>,
    pub attributes: Json,
    pub lifecycle_stage: String,
    pub first_touch: Json,
    pub tags: Vec<String>,
    pub consents: Json,
    pub counters: Json,
    pub created_at: String,
    pub updated_at: String,
    pub erased: bool,
}

impl ContactView {
    /// Builds the view from a `SELECT *` row; tags and consents are
    /// filled by [`load`].
    pub fn from_row(row: Row<'_>) -> anyhow::Result<ContactView> {
        let s = |f: &str| row.opt_str(f).map(|v| v.map(str::to_owned));
        let mut utm = Map::new();
        for field in UTM_FIELDS {
            if let Some(v) = row.opt_str(field)? {
                utm.insert((*field).to_owned(), Json::String(v.to_owned()));
            }
        }
        Ok(ContactView {
            id: row.str("id")?.to_owned(),
            email: s("email")?,
            phone: s("phone")?,
            external_id: s("external_id")?,
            name: s("name")?,
            family_name: s("family_name")?,
            given_name: s("given_name")?,
            family_name_kana: s("family_name_kana")?,
            given_name_kana: s("given_name_kana")?,
            company: s("company")?,
            postal_code: s("postal_code")?,
            address: s("address")?,
            birthday: s("birthday")?,
            attributes: serde_json::from_str(row.str("attributes")?)
                .context("stored attributes")?,
            lifecycle_stage: row.str("lifecycle_stage")?.to_owned(),
            first_touch: json!({
                "source": row.str("source")?,
                "form_id": row.opt_str("first_form_id")?,
                "page": row.opt_str("first_page")?,
                "utm": utm,
                "at": row.str("created_at")?,
            }),
            tags: vec![],
            consents: json!({}),
            counters: json!({
                "order_count": row.i64("order_count")?,
                "total_spent_minor": row.i64("total_spent_minor")?,
                "average_order_value_minor": row.i64("average_order_value_minor")?,
                "first_order_at": row.opt_str("first_order_at")?,
                "last_order_at": row.opt_str("last_order_at")?,
            }),
            created_at: row.str("created_at")?.to_owned(),
            updated_at: row.str("updated_at")?.to_owned(),
            erased: row.opt_str("erased_at")?.is_some(),
        })
    }
}

/// The whole contact for one screen: profile, tags, current consents,
/// order counters and points (derived from the ledger at `now`).
pub async fn load(
    db: &impl Db,
    id: &str,
    now: time::OffsetDateTime,
) -> anyhow::Result<Option<ContactView>> {
    use crate::points::ledger;
    // One statement, so the parts agree without a snapshot around them.
    let [at, horizon] = ledger::balance_params(now);
    let rows = db
        .execute(
            &format!(
                "WITH b AS ({balance})
                 SELECT c.*, b.*,
                     (SELECT json_group_array(tag) FROM
                         (SELECT tag FROM contact_tags WHERE contact_id = c.id ORDER BY tag)) AS tags_json,
                     {consents} AS consents_json
                 FROM contacts c CROSS JOIN b WHERE c.id = ?1",
                balance = ledger::BALANCE_SQL,
                consents = crate::consent::CURRENT_JSON_SQL,
            ),
            &[id.into(), at, horizon],
        )
        .await
        .context("failed to read a contact")?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let mut view = ContactView::from_row(row)?;
    view.tags = serde_json::from_str(row.str("tags_json")?).context("stored tags")?;
    // SQLite aggregates in the subquery's order in practice, not by promise.
    view.tags.sort();
    view.consents = crate::consent::current_from_json(row.opt_str("consents_json")?)?;
    let points = if view.erased {
        ledger::Balance::default()
    } else {
        ledger::balance_from_row(row)?
    };
    view.counters["points_balance"] = points.available.into();
    view.counters["points_pending"] = points.pending.into();
    view.counters["points_debt"] = points.debt.into();
    Ok(Some(view))
}

/// The external id stored on a contact, if any.
pub async fn external_id(db: &impl Db, id: &str) -> anyhow::Result<Option<String>> {
    let rows = db
        .execute(
            "SELECT external_id FROM contacts WHERE id = ?1",
            &[id.into()],
        )
        .await
        .context("failed to read an external id")?;
    Ok(rows
        .first()
        .map(|r| r.opt_str("external_id").map(|v| v.map(str::to_owned)))
        .transpose()?
        .flatten())
}

/// Whether a live (not erased) contact with `id` exists.
pub async fn exists(db: &impl Db, id: &str) -> anyhow::Result<bool> {
    let rows = db
        .execute(
            "SELECT 1 AS found FROM contacts WHERE id = ?1 AND erased_at IS NULL",
            &[id.into()],
        )
        .await
        .context("failed to check a contact")?;
    Ok(!rows.is_empty())
}
