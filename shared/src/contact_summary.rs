//! The contact as every look-up that finds people answers it
//! ([`ContactSummary`]): what a call-centre agent needs to start talking —
//! names and kana, email, phone, tags, lifecycle, consent per channel,
//! points available, orders and the last one, and the interactions still
//! open. The contact list, the email, phone and `q` look-ups and the
//! staff console share this one shape, so its field names are stable;
//! the whole record stays `GET /v1/contacts/{id}` (`contact::ContactView`).
//!
//! A page of summaries is one statement, whatever its size: the page's
//! ids are chosen first (the caller's filter, `LIMIT`ed), and only then
//! does each row's correlated subqueries run, so a search that matches
//! thousands of contacts reads tags, points and orders for one page.

use crate::ports::{Db, Value};
use crate::timestamp;
use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value as Json;
use time::OffsetDateTime;

/// One contact in a look-up's answer, a JSON object of these fields:
///
/// - `id`, `name`, `family_name`, `given_name`, `family_name_kana`,
///   `given_name_kana`, `company`, `email`, `phone` (E.164),
///   `external_id`, `lifecycle_stage`, `created_at`, `updated_at`;
/// - `tags`: sorted;
/// - `consents`: the latest status per channel ever asked
///   (`{"email": "granted"}`);
/// - `points`: `{available, pending, debt}` at the time of the look-up,
///   counted as `GET /v1/points/{id}` counts them;
/// - `orders`: `{count, total_spent_minor, first_order_at,
///   last_order_at, last}` over paid orders neither cancelled nor
///   refunded in full (as the contact's counters), `last` the newest of
///   them, `{id, source, external_id, number, status, placed_at,
///   total_minor, currency}`, or `null`;
/// - `interactions`: `{open, pending}`, staff entries still to deal with.
///
/// SQLite builds the object (`json_object`), so the shape is written once,
/// in [`page`]'s statement, and no per-field Rust code grows the
/// components (each stays under 1 MB of Wasm).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ContactSummary(Json);

impl ContactSummary {
    pub fn id(&self) -> Option<&str> {
        self.0["id"].as_str()
    }

    pub fn as_json(&self) -> &Json {
        &self.0
    }
}

/// Reads the summaries of the contacts `ids_sql` selects, in id order, in
/// one statement. `ids_sql` is `SELECT c.id FROM contacts c WHERE …
/// ORDER BY c.id LIMIT ?n` over `params`; the time points are counted at
/// is added as the last parameter.
pub async fn page(
    db: &impl Db,
    ids_sql: &str,
    mut params: Vec<Value>,
    now: OffsetDateTime,
) -> anyhow::Result<Vec<ContactSummary>> {
    params.push(timestamp::format(now).into());
    let now = format!("?{}", params.len());
    // `json(…)` keeps each subquery's object an object, not a string, in
    // the outer one. The lots that count are the ledger's open ones,
    // available once `available_at` has passed.
    let sql = format!(
        "SELECT json_object(
             'id', c.id, 'name', c.name, 'family_name', c.family_name, 'given_name', c.given_name,
             'family_name_kana', c.family_name_kana, 'given_name_kana', c.given_name_kana,
             'company', c.company, 'email', c.email, 'phone', c.phone, 'external_id', c.external_id,
             'lifecycle_stage', c.lifecycle_stage,
             'tags', json((SELECT json_group_array(tag) FROM
                 (SELECT tag FROM contact_tags WHERE contact_id = c.id ORDER BY tag))),
             'consents', json((SELECT json_group_object(key, json_extract(value, '$.status'))
                 FROM json_each({consents}))),
             'points', json((SELECT json_object(
                     'available', COALESCE(SUM(CASE WHEN available_at <= {now} THEN remaining END), 0),
                     'pending', COALESCE(SUM(CASE WHEN available_at > {now} THEN remaining END), 0),
                     'debt', COALESCE((SELECT debt FROM points_accounts WHERE contact_id = c.id), 0))
                 FROM points_lots p WHERE p.contact_id = c.id AND {open_lot})),
             'orders', json_object(
                 'count', c.order_count, 'total_spent_minor', c.total_spent_minor,
                 'first_order_at', c.first_order_at, 'last_order_at', c.last_order_at,
                 'last', json((SELECT json_object('id', o.id, 'source', o.source,
                         'external_id', o.external_id, 'number', o.order_number, 'status', o.status,
                         'placed_at', o.placed_at, 'total_minor', o.total_minor, 'currency', o.currency)
                     FROM orders o
                     WHERE o.contact_id = c.id AND o.paid = 1 AND o.cancelled = 0
                       AND o.status <> 'refunded'
                     ORDER BY o.placed_at DESC, o.id DESC LIMIT 1))),
             'interactions', json((SELECT json_object('open', COALESCE(SUM(status = 'open'), 0),
                         'pending', COALESCE(SUM(status = 'pending'), 0))
                 FROM interactions
                 WHERE contact_id = c.id AND status IN ('open', 'pending'))),
             'created_at', c.created_at, 'updated_at', c.updated_at) AS summary
         FROM ({ids_sql}) AS page JOIN contacts c ON c.id = page.id
         ORDER BY c.id",
        consents = crate::consent::CURRENT_JSON_SQL,
        open_lot = crate::points::ledger::open_lot_sql("p", &now),
    );
    let rows = db
        .execute(&sql, &params)
        .await
        .context("failed to read contact summaries")?;
    rows.iter()
        .map(|row| {
            let mut summary: Json =
                serde_json::from_str(row.str("summary")?).context("contact summary")?;
            // SQLite aggregates in the subquery's order in practice, not by promise.
            // (Sorted as strings: the sort `contact::load` already uses.)
            if let Some(Json::Array(tags)) = summary.get_mut("tags") {
                let mut names: Vec<String> = tags
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect();
                names.sort();
                *tags = names.into_iter().map(Json::String).collect();
            }
            Ok(ContactSummary(summary))
        })
        .collect()
}
