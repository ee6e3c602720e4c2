//! The person's rights over their data: a machine-readable export of
//! everything stored (APPI disclosure), erasure that really removes it,
//! and the pages behind signed one-click unsubscribe links (the links
//! themselves: `unsubscribe_link`).
//!
//! Erasure keeps the contact row as an anonymous tombstone (id and
//! timestamps only) so that what accounting must keep (orders, points,
//! from later components) stays attached to something, unlinked from the
//! person. On a SQLite file, `secure_delete` (see `db`) zeroes the freed
//! bytes, and a truncating WAL checkpoint afterwards removes old page
//! images. On a libSQL server neither can be asked for by the client:
//! the erased values are gone from every query at once, but old page
//! images stay in the server's WAL until its next checkpoint, and in its
//! backups for as long as the server keeps them. The erasure answer says
//! which guarantee held ([`storage_residue`]).

use crate::Ctx;
use crate::consent::{self, ConsentChange};
use crate::error::ApiError;
use crate::events::outbox::{self, Event};
use crate::http::{Request, Response, json_response};
use crate::ids::new_id;
use crate::ports::{Db, Kv};
use crate::timeline;
use crate::timestamp;
use anyhow::Context as _;
use serde_json::{Value as Json, json};
use time::OffsetDateTime;

/// What the erasure answer says of the bytes the storage may still hold,
/// by engine (see the module's notes).
pub fn storage_residue(backend: crate::ports::Backend, checkpointed: bool) -> Json {
    match backend {
        crate::ports::Backend::SqliteFile => json!({
            "backend": backend.as_str(),
            "freed_pages_zeroed": true,
            "wal_checkpointed": checkpointed,
            "note": if checkpointed {
                "the erased values were overwritten in the database file and its log"
            } else {
                "the erased values were overwritten in the database file; the log is cleared at the next checkpoint"
            },
        }),
        crate::ports::Backend::Libsql => json!({
            "backend": backend.as_str(),
            "freed_pages_zeroed": false,
            "wal_checkpointed": false,
            "note": "the erased values are gone from every query; the libSQL server keeps old page images in its log until its next checkpoint, and in its backups and snapshots for as long as it keeps them",
        }),
    }
}

/// The export's lists that grow with the person's history, each paged
/// by keyset, oldest first, so that a long history is exported in as
/// many requests as it takes rather than failing in one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    ConsentLog,
    Timeline,
    Orders,
    PointsLedger,
}

impl Section {
    pub const ALL: [Section; 4] = [
        Section::ConsentLog,
        Section::Timeline,
        Section::Orders,
        Section::PointsLedger,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Section::ConsentLog => "consent_log",
            Section::Timeline => "timeline",
            Section::Orders => "orders",
            Section::PointsLedger => "points_ledger",
        }
    }

    pub fn parse(text: &str) -> Result<Section, ApiError> {
        Section::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                ApiError::invalid(
                    "section",
                    "one of consent_log, timeline, orders, points_ledger",
                )
            })
    }

    /// The rows of this section after `(key, id)`, at most `limit + 1`.
    fn sql(self) -> &'static str {
        match self {
            Section::ConsentLog => {
                "SELECT id, recorded_at AS k, channel, status, reason, form_id, page_url, text_version,
                        text_sha256, ip_truncated, recorded_at, recorded_by,
                        COALESCE(occurred_at, recorded_at) AS occurred_at, source, note,
                        opt_in_level, order_id,
                        (SELECT w.value FROM form_settings s, json_each(s.settings, '$.consent_texts') w
                         WHERE s.form_id = consents.form_id AND w.key = consents.text_version
                           AND consents.text_sha256 IS NOT NULL) AS wording
                 FROM consents WHERE contact_id = ?1
                   AND (?2 IS NULL OR recorded_at > ?2 OR (recorded_at = ?2 AND id > ?3))
                 ORDER BY recorded_at, id LIMIT ?4"
            }
            Section::Timeline => {
                "SELECT id, occurred_at AS k, kind, channel, subject, body, data, agent, status,
                        occurred_at, recorded_at, recorded_by, updated_at, updated_by
                 FROM interactions WHERE contact_id = ?1
                   AND (?2 IS NULL OR occurred_at > ?2 OR (occurred_at = ?2 AND id > ?3))
                 ORDER BY occurred_at, id LIMIT ?4"
            }
            Section::Orders => {
                "SELECT id, placed_at AS k FROM orders WHERE contact_id = ?1
                   AND (?2 IS NULL OR placed_at > ?2 OR (placed_at = ?2 AND id > ?3))
                 ORDER BY placed_at, id LIMIT ?4"
            }
            Section::PointsLedger => {
                "SELECT id, printf('%020d', seq) AS k, seq, kind, points, balance_after, reason,
                        order_ref, created_at, created_by
                 FROM points_entries WHERE contact_id = ?1
                   AND (?2 IS NULL OR printf('%020d', seq) > ?2 OR (printf('%020d', seq) = ?2 AND id > ?3))
                 ORDER BY seq, id LIMIT ?4"
            }
        }
    }
}

/// Export pages hold at most this many items per section.
pub const EXPORT_PAGE_MAX: usize = 500;

/// One page of `section`, oldest first, and the cursor of the next.
pub async fn section_page(
    db: &impl Db,
    id: &str,
    section: Section,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Vec<Json>, Option<String>), ApiError> {
    let (after_key, after_id) = match cursor {
        Some(c) => {
            let mut parts = crate::http::decode_cursor(c, 2)?;
            let after_id = parts.pop();
            (parts.pop(), after_id)
        }
        None => (None, None),
    };
    let rows = db
        .execute(
            section.sql(),
            &[
                id.into(),
                after_key.into(),
                after_id.into(),
                i64::try_from(limit + 1).unwrap_or(i64::MAX).into(),
            ],
        )
        .await
        .with_context(|| format!("failed to read the export's {}", section.as_str()))?;
    let mut items = Vec::new();
    let mut next = None;
    for (index, r) in rows.iter().enumerate() {
        if index == limit {
            let last = rows.iter().nth(limit - 1).context("page boundary")?;
            next = Some(crate::http::encode_cursor(&[
                last.str("k")?,
                last.str("id")?,
            ]));
            break;
        }
        let item = match section {
            Section::ConsentLog => {
                let sha256 = r.opt_str("text_sha256")?;
                // The wording as the form holds it now, only while it is
                // still the text whose digest was kept.
                let text = r
                    .opt_str("wording")?
                    .filter(|text| sha256 == Some(consent::text_sha256(text).as_str()));
                json!({
                    "channel": r.str("channel")?,
                    "status": r.str("status")?,
                    "reason": r.str("reason")?,
                    "source": r.opt_str("source")?,
                    "note": r.opt_str("note")?,
                    "form_id": r.opt_str("form_id")?,
                    "page": r.opt_str("page_url")?,
                    "order_id": r.opt_str("order_id")?,
                    "opt_in_level": r.opt_str("opt_in_level")?,
                    "text_version": r.opt_str("text_version")?,
                    "text_sha256": sha256,
                    "text": text,
                    "ip_truncated": r.opt_str("ip_truncated")?,
                    "occurred_at": r.str("occurred_at")?,
                    "recorded_at": r.str("recorded_at")?,
                    "recorded_by": r.str("recorded_by")?,
                })
            }
            Section::Timeline => timeline::entry_json(r)?,
            Section::Orders => crate::purchases::api::load(db, r.str("id")?)
                .await?
                .context("an order vanished while exporting")?,
            Section::PointsLedger => json!({
                "id": r.str("id")?,
                "seq": r.i64("seq")?,
                "kind": r.str("kind")?,
                "points": r.i64("points")?,
                "balance_after": r.i64("balance_after")?,
                "reason": r.opt_str("reason")?,
                "order_ref": r.opt_str("order_ref")?,
                "created_at": r.str("created_at")?,
                "created_by": r.str("created_by")?,
            }),
        };
        items.push(item);
    }
    Ok((items, next))
}

/// Where the next page of `section` is.
pub fn next_page_url(id: &str, section: Section, limit: usize, cursor: &str) -> String {
    format!(
        "/v1/contacts/{id}/export?section={}&limit={limit}&cursor={cursor}",
        section.as_str()
    )
}

/// Everything stored about a contact: profile, consent history, timeline,
/// orders with lines and refunds, the shop customer ids, the points
/// ledger, RFM scores with churn risk, the saved segments the person is
/// in now, and any erasure. The growing lists hold their first `limit`
/// items; `next` names where each list continues (see `section_page`).
pub async fn export<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    id: &str,
    limit: usize,
) -> Result<Option<Json>, ApiError> {
    let (db, now) = (ctx.db, ctx.clock.now());
    let Some(contact) = crate::contact::load(db, id, now).await? else {
        return Ok(None);
    };
    let mut sections = serde_json::Map::new();
    let mut next = serde_json::Map::new();
    for section in Section::ALL {
        let (items, cursor) = section_page(db, id, section, limit, None).await?;
        sections.insert(section.as_str().to_owned(), items.into());
        if let Some(cursor) = cursor {
            next.insert(
                section.as_str().to_owned(),
                next_page_url(id, section, limit, &cursor).into(),
            );
        }
    }
    let erasures = db
        .execute(
            "SELECT erased_at, erased_by, erased FROM erasures WHERE contact_id = ?1 ORDER BY erased_at",
            &[id.into()],
        )
        .await
        .context("failed to read erasures")?;
    let erasures: Vec<Json> = erasures
        .iter()
        .map(|r| {
            Ok(json!({
                "erased_at": r.str("erased_at")?,
                "erased_by": r.str("erased_by")?,
                "erased": serde_json::from_str::<Json>(r.str("erased")?)?,
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    let shop_ids = db
        .execute(
            "SELECT source, external_id FROM contact_external_ids WHERE contact_id = ?1 ORDER BY source, external_id",
            &[id.into()],
        )
        .await
        .context("failed to read shop customer ids")?;
    let shop_ids: Vec<Json> = shop_ids
        .iter()
        .map(|r| Ok(json!({"source": r.str("source")?, "customer_id": r.str("external_id")?})))
        .collect::<anyhow::Result<_>>()?;
    let rfm_computed_at = crate::segments::analytics::ensure_fresh(db, now).await?;
    let rfm = db
        .execute(
            "SELECT recency, frequency, monetary, churn_risk FROM rfm_scores
             WHERE computed_at = ?2 AND contact_id = ?1",
            &[id.into(), rfm_computed_at.as_str().into()],
        )
        .await
        .context("failed to read RFM scores")?;
    let rfm = match rfm.first() {
        Some(r) => json!({
            "recency": r.i64("recency")?,
            "frequency": r.i64("frequency")?,
            "monetary": r.i64("monetary")?,
            "churn_risk": r.str("churn_risk")?,
            "computed_at": rfm_computed_at,
        }),
        None => json!({"computed_at": rfm_computed_at, "scored": false}),
    };
    let segments = crate::segments::api::memberships(ctx, id).await?;
    let mut document = json!({
        "format": "kizuna-contact-export/2",
        "contact": contact,
        "erasures": erasures,
        "shop_customer_ids": shop_ids,
        "rfm": rfm,
        "segments": segments,
        "next": next,
    });
    for (name, items) in sections {
        document[name] = items;
    }
    Ok(Some(document))
}

/// What an erasure did, for its answer.
#[derive(Debug, Clone)]
pub struct Erased {
    pub erased_at: String,
    /// `{"available": n, "pending": n}`: the points no one can redeem any
    /// more. `null` when a retry finds an erasure recorded before the
    /// count was kept.
    pub points_forfeited: Json,
}

/// Removes the person's data for good, inside the caller's transaction.
/// Returns what the erasure did (now, or an earlier request: a retried
/// erasure changes nothing and answers from the `erasures` record), or
/// `None` when there is no contact.
pub async fn erase(
    db: &impl Db,
    suppression_secret: &[u8],
    id: &str,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<Option<Erased>> {
    let rows = db
        .execute(
            "SELECT c.erased_at,
                    (SELECT json_extract(erased, '$.points_forfeited') FROM erasures
                     WHERE contact_id = c.id ORDER BY erased_at LIMIT 1) AS points_forfeited
             FROM contacts c WHERE c.id = ?1",
            &[id.into()],
        )
        .await
        .context("failed to read a contact")?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    if let Some(erased_at) = row.opt_str("erased_at")? {
        let points_forfeited = match row.opt_str("points_forfeited")? {
            Some(text) => serde_json::from_str(text).context("stored points forfeited")?,
            None => Json::Null,
        };
        return Ok(Some(Erased {
            erased_at: erased_at.to_owned(),
            points_forfeited,
        }));
    }
    let count = |sql: &'static str| async move {
        let rows = db
            .execute(sql, &[id.into()])
            .await
            .context("failed to count")?;
        rows.first().context("count")?.i64("n")
    };
    let interactions =
        count("SELECT count(*) AS n FROM interactions WHERE contact_id = ?1").await?;
    let consents = count("SELECT count(*) AS n FROM consents WHERE contact_id = ?1").await?;
    let tags = count("SELECT count(*) AS n FROM contact_tags WHERE contact_id = ?1").await?;
    let at = timestamp::format(now);
    // Remembered before the addresses go: nothing but the person's own
    // opt-in grants them consent again.
    crate::suppression::on_erasure(db, suppression_secret, id, now).await?;
    db.execute(
        "UPDATE idempotency_keys SET request_hash = ?2, response_status = ?3, response_body = ?4
         WHERE contact_id = ?1",
        &[
            id.into(),
            crate::idempotency::ERASED_HASH.into(),
            i64::from(crate::idempotency::ERASED_STATUS).into(),
            crate::idempotency::erased_answer().into(),
        ],
    )
    .await
    .context("failed to retire saved answers")?;
    for (sql, what) in [
        (
            "UPDATE contacts SET email = NULL, phone = NULL, external_id = NULL, name = NULL,
                family_name = NULL, given_name = NULL, family_name_kana = NULL, given_name_kana = NULL,
                company = NULL, postal_code = NULL, address = NULL, birthday = NULL, attributes = '{}',
                first_page = NULL, utm_source = NULL, utm_medium = NULL, utm_campaign = NULL,
                utm_term = NULL, utm_content = NULL, source = 'erased', first_form_id = NULL,
                lifecycle_stage = 'erased'
             WHERE id = ?1",
            "profile",
        ),
        ("DELETE FROM contact_search WHERE contact_id = ?1", "search terms"),
        ("DELETE FROM contact_tags WHERE contact_id = ?1", "tags"),
        ("DELETE FROM consents WHERE contact_id = ?1", "consents"),
        // Kind and time stay (they say nothing about who), contents go.
        (
            "UPDATE interactions SET channel = NULL, subject = NULL, body = NULL, data = NULL WHERE contact_id = ?1",
            "interactions",
        ),
        // The shop's customer ids name the person at the shop; the orders
        // themselves stay, attached to the tombstone, for accounting.
        ("DELETE FROM contact_external_ids WHERE contact_id = ?1", "shop customer ids"),
        // Staff and POS write free text as reasons and order references;
        // amounts and kinds stay.
        (
            "UPDATE points_entries SET reason = NULL, order_ref = NULL WHERE contact_id = ?1",
            "points reasons and order references",
        ),
        // Refund notes are free text from the shop (often the customer's
        // own words); amounts and dates stay for accounting.
        (
            "UPDATE refunds SET reason = NULL WHERE (source, order_external_id) IN
                 (SELECT source, external_id FROM orders WHERE contact_id = ?1)",
            "refund notes",
        ),
    ] {
        db.execute(sql, &[id.into()])
            .await
            .with_context(|| format!("failed to erase {what}"))?;
    }
    // No one can redeem an erased contact's points: they are forfeited,
    // so they leave the liability report.
    let forfeited = crate::points::ledger::forfeit_all(db, id, actor, now).await?;
    let points_forfeited = serde_json::to_value(forfeited).context("points forfeited")?;
    db.execute(
        "UPDATE contacts SET erased_at = ?2, updated_at = ?2, updated_by = ?3 WHERE id = ?1",
        &[id.into(), at.as_str().into(), actor.into()],
    )
    .await
    .context("failed to mark the contact erased")?;
    let erased = json!({
        "profile": ["email", "phone", "external_id", "names", "kana", "company", "postal_code",
                    "address", "birthday", "attributes", "first_touch_page_and_utm"],
        "interactions_emptied": interactions,
        "free_text": ["interaction subjects and bodies", "refund notes", "points reasons", "order references"],
        "suppressed": ["email", "phone"],
        "saved_answers": "retired: a retry answers 410",
        "consent_records_deleted": consents,
        "tags_deleted": tags,
        "points_forfeited": points_forfeited,
    });
    db.execute(
        "INSERT INTO erasures (id, contact_id, erased_at, erased_by, erased) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[new_id(now).into(), id.into(), at.as_str().into(), actor.into(), erased.to_string().into()],
    )
    .await
    .context("failed to record the erasure")?;
    // The id only. The contact's earlier events keep ids, amounts and
    // statuses (a delivery renders personal fields from this row, now
    // emptied); the one field that may hold someone's words goes.
    outbox::scrub_contact(db, id).await?;
    let event = Event::new("contact.erased", Some(id), json!({"contact_id": id}));
    outbox::record(db, now, &[event]).await?;
    Ok(Some(Erased {
        erased_at: at,
        points_forfeited,
    }))
}

/// Withdraws email consent for the token's contact, inside the caller's
/// transaction. Idempotent: a second click records nothing new.
pub async fn unsubscribe(
    db: &impl Db,
    suppression_secret: &[u8],
    contact_id: &str,
    now: OffsetDateTime,
) -> anyhow::Result<()> {
    if !crate::contact::exists(db, contact_id).await? {
        return Ok(());
    }
    let current = consent::current(db, contact_id).await?;
    if current["email"]["status"] == "withdrawn" {
        return Ok(());
    }
    let change = ConsentChange::new(
        consent::Channel::Email,
        consent::Status::Withdrawn,
        consent::Reason::Unsubscribed,
    );
    let actor = crate::auth::Actor::Unsubscribe.label();
    consent::record(db, contact_id, &change, &actor, now).await?;
    crate::suppression::on_withdrawal(db, suppression_secret, contact_id, change.channel, now)
        .await?;
    Ok(())
}

/// `GET /v1/forms/unsubscribe?token=…`: the page a person reaches by
/// clicking the link in a mail body. It only asks for confirmation: mail
/// scanners follow links, so a GET must never unsubscribe anyone.
pub fn unsubscribe_page<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    request: &Request,
) -> Result<Response, ApiError> {
    let query = crate::http::all_query_pairs(request);
    let token = crate::http::query_param(&query, "token").unwrap_or("");
    if crate::unsubscribe_link::contact_of(ctx.config.unsubscribe_secret()?, token).is_none() {
        return Ok(crate::forms::html_response(
            http::StatusCode::BAD_REQUEST,
            "Invalid link",
            "このリンクは無効です。This unsubscribe link is not valid.",
        ));
    }
    // The token verified, so it is base64url only: safe inside the HTML.
    let form = format!(
        "<form method=\"post\" action=\"/v1/forms/unsubscribe?token={token}\">\
         <p>メールの配信を停止しますか？ Stop marketing email?</p>\
         <button type=\"submit\">配信停止 / Unsubscribe</button></form>"
    );
    Ok(crate::forms::html_response(
        http::StatusCode::OK,
        "Unsubscribe",
        &form,
    ))
}

/// `POST /v1/forms/unsubscribe?token=…` (RFC 8058 one-click; the token may
/// also come as a form or JSON field). Anonymous: the token is the proof.
pub async fn unsubscribe_request<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    request: &Request,
) -> Result<Response, ApiError> {
    crate::http::check_size(request.body(), crate::forms::FORM_BODY_LIMIT)?;
    let query = crate::http::all_query_pairs(request);
    let mut token = crate::http::query_param(&query, "token").map(str::to_owned);
    if token.is_none() && !request.body().is_empty() {
        token = crate::forms::read_fields(request)?
            .into_iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v);
    }
    let token = token.ok_or_else(|| ApiError::invalid("token", "is required"))?;
    let contact = crate::unsubscribe_link::contact_of(ctx.config.unsubscribe_secret()?, &token)
        .ok_or_else(|| ApiError::invalid("token", "this unsubscribe link is not valid"))?;
    let now = ctx.clock.now();
    crate::db::transaction(ctx.db, async || -> Result<(), ApiError> {
        Ok(unsubscribe(ctx.db, ctx.config.unsubscribe_secret()?, &contact, now).await?)
    })
    .await?;
    let sender = crate::forms::Sender::from_request(request, &ctx.config.trusted_proxies);
    if sender.wants_json {
        Ok(json_response(
            http::StatusCode::OK,
            &serde_json::json!({ "status": "unsubscribed" }),
        ))
    } else {
        Ok(crate::forms::html_response(
            http::StatusCode::OK,
            "Unsubscribed",
            "配信を停止しました。You have been unsubscribed.",
        ))
    }
}
