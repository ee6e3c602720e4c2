//! The segments API behind `/v1/segments`: preview, saved segments,
//! members (JSON or CSV, keyset-paginated by contact id, which is stable
//! while contacts come and go), counts, and delta sync.

use super::compile::{Compiled, Env, compile_in};
use super::definition::{self, Node};
use super::members::{self, MemberField};
use crate::Ctx;
use crate::auth::Actor;
use crate::db::transaction;
use crate::error::{ApiError, FieldError};
use crate::http::{
    Request, Response, decode_cursor, header_str, json_response, query_pairs, query_param,
};
use crate::ids::{ContactId, new_id};
use crate::ports::{Db, Kv, Row};
use crate::timestamp;
use anyhow::Context as _;
use bytes::Bytes;
use http::{StatusCode, header};
use serde_json::{Map, Value as Json, json};

/// What a segment is for. `email` keeps out everyone without a current
/// email consent, so a mail tool cannot receive a non-consenting address.
fn parse_purpose(value: Option<&Json>) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(p)) if p == "email" => Ok(Some("email".to_owned())),
        Some(_) => Err(ApiError::invalid("/purpose", "null or \"email\"")),
    }
}

/// The clock, the VIP threshold and fresh analytics for `node`. Runs
/// before any transaction: refreshing analytics opens its own.
async fn env<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    node: &Node,
) -> Result<(Env, Option<String>), ApiError> {
    let now = ctx.clock.now();
    let computed_at = if node.needs_analytics() {
        Some(super::analytics::ensure_fresh(ctx.db, now).await?)
    } else {
        None
    };
    let vip_threshold =
        super::analytics::vip_threshold(ctx.db, ctx.config.vip_threshold_minor).await?;
    Ok((Env { now, vip_threshold }, computed_at))
}

pub use super::members::PERSONAL_FIELDS;

/// The fields a request asks for, after `may_export` allowed the personal
/// ones among them (it answers the 403 when the key lacks the scope).
pub(super) fn allowed_fields(
    text: Option<&str>,
    may_export: impl FnOnce() -> Result<(), ApiError>,
) -> Result<Vec<MemberField>, ApiError> {
    let fields = members::parse_fields(text)?;
    if fields.iter().any(MemberField::is_personal) {
        may_export()?;
    }
    Ok(fields)
}

async fn count(db: &impl Db, compiled: &Compiled) -> anyhow::Result<i64> {
    let rows = db
        .execute(
            &format!(
                "SELECT count(*) AS n FROM contacts c WHERE {}",
                compiled.sql
            ),
            &compiled.params,
        )
        .await
        .context("failed to count a segment")?;
    rows.first().context("count")?.i64("n")
}

fn page_size(pairs: &[(String, String)], csv: bool) -> Result<usize, ApiError> {
    let (default, max) = if csv { (1000, 10_000) } else { (50, 200) };
    match query_param(pairs, "limit") {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::invalid("limit", format!("a whole number from 1 to {max}"))),
    }
}

fn cursor(pairs: &[(String, String)]) -> Result<Option<String>, ApiError> {
    match query_param(pairs, "cursor") {
        None => Ok(None),
        Some(c) => {
            let id = decode_cursor(c, 1)?.pop();
            // Only ids this API handed out: anything else is not a cursor.
            if id.as_deref().and_then(ContactId::parse).is_none() {
                return Err(ApiError::invalid(
                    "cursor",
                    "not a cursor this API returned",
                ));
            }
            Ok(id)
        }
    }
}

/// `POST /v1/segments/preview`: a definition in, count and first page out.
/// `may_export` allows personal fields (see [`PERSONAL_FIELDS`]).
pub async fn preview<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    request: &Request,
    may_export: impl FnOnce() -> Result<(), ApiError>,
) -> Result<Response, ApiError> {
    let body: Map<String, Json> = crate::http::read_json(request)?;
    for key in body.keys() {
        if !matches!(key.as_str(), "definition" | "purpose") {
            return Err(ApiError::invalid(
                format!("/{key}"),
                "unknown member; send definition and purpose",
            ));
        }
    }
    let node = definition_of(&body, ctx.config.shop_offset)?;
    let purpose = parse_purpose(body.get("purpose"))?;
    let pairs = query_pairs(request, &["limit", "fields"])?;
    let limit = page_size(&pairs, false)?;
    let fields = allowed_fields(query_param(&pairs, "fields"), may_export)?;
    let (env, computed_at) = env(ctx, &node).await?;
    let compiled = compile_in(&node, &env, purpose.is_some(), ctx.config.shop_offset);
    let total = count(ctx.db, &compiled).await?;
    let (items, next) = members::page(
        ctx.db,
        ctx.config,
        &compiled.sql,
        &compiled.params,
        &fields,
        None,
        env.now,
        limit,
    )
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "count": total, "items": items, "next_cursor": next, "analytics_computed_at": computed_at, "as_of": timestamp::format(env.now) }),
    ))
}

fn definition_of(body: &Map<String, Json>, ctx_offset: time::UtcOffset) -> Result<Node, ApiError> {
    let definition = body
        .get("definition")
        .ok_or_else(|| ApiError::invalid("/definition", "is required"))?;
    definition::parse_in(definition, ctx_offset).map_err(|error| match error {
        // Pointers are relative to the definition; make them absolute.
        ApiError::Validation(errors) => ApiError::Validation(
            errors
                .into_iter()
                .map(|e| {
                    FieldError::new(
                        format!("/definition{}", e.field.trim_end_matches('/')),
                        e.message,
                    )
                })
                .collect(),
        ),
        other => other,
    })
}

struct SegmentInput {
    name: String,
    description: Option<String>,
    definition: Json,
    purpose: Option<String>,
}

fn parse_input(request: &Request, offset: time::UtcOffset) -> Result<SegmentInput, ApiError> {
    let body: Map<String, Json> = crate::http::read_json(request)?;
    let mut errors = Vec::new();
    for key in body.keys() {
        if !matches!(
            key.as_str(),
            "name" | "description" | "definition" | "purpose"
        ) {
            errors.push(FieldError::new(format!("/{key}"), "unknown member"));
        }
    }
    let name = match body.get("name") {
        Some(Json::String(s)) => crate::profile::check_text("/name", s, 100, &mut errors),
        _ => None,
    };
    if name.is_none() && errors.iter().all(|e| e.field != "/name") {
        errors.push(FieldError::new("/name", "1 to 100 characters"));
    }
    let description = match body.get("description") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => crate::profile::check_text("/description", s, 500, &mut errors),
        Some(_) => {
            errors.push(FieldError::new("/description", "a string"));
            None
        }
    };
    if let Err(ApiError::Validation(mut more)) = definition_of(&body, offset) {
        errors.append(&mut more);
    }
    let purpose = parse_purpose(body.get("purpose"))
        .map_err(|_| errors.push(FieldError::new("/purpose", "null or \"email\"")))
        .ok()
        .flatten();
    match (name, errors.is_empty()) {
        (Some(name), true) => Ok(SegmentInput {
            name,
            description,
            definition: body.get("definition").cloned().unwrap_or(Json::Null),
            purpose,
        }),
        _ => Err(ApiError::Validation(errors)),
    }
}

fn segment_json(row: Row<'_>) -> anyhow::Result<Json> {
    Ok(json!({
        "id": row.str("id")?,
        "name": row.str("name")?,
        "description": row.opt_str("description")?,
        "definition": serde_json::from_str::<Json>(row.str("definition")?).context("stored definition")?,
        "purpose": row.opt_str("purpose")?,
        "last_count": row.opt_i64("last_count")?,
        "last_counted_at": row.opt_str("last_counted_at")?,
        "created_at": row.str("created_at")?,
        "created_by": row.str("created_by")?,
        "updated_at": row.str("updated_at")?,
        "updated_by": row.str("updated_by")?,
    }))
}

fn name_taken(error: crate::ports::DbError) -> ApiError {
    if error.is_unique_violation("segments.name") {
        ApiError::Conflict("a segment with this name exists".into())
    } else {
        ApiError::Unexpected(anyhow::Error::from(error).context("failed to write a segment"))
    }
}

/// `POST /v1/segments`.
pub async fn create<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    request: &Request,
) -> Result<Response, ApiError> {
    let input = parse_input(request, ctx.config.shop_offset)?;
    let now = timestamp::format(ctx.clock.now());
    let id = new_id(ctx.clock.now());
    let row = transaction(ctx.db, async || -> Result<Json, ApiError> {
        let rows = ctx
            .db
            .execute(
                "INSERT INTO segments (id, name, description, definition, purpose, created_at, created_by, updated_at, updated_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, ?7) RETURNING *",
                &[
                    id.as_str().into(),
                    input.name.as_str().into(),
                    input.description.as_deref().into(),
                    input.definition.to_string().into(),
                    input.purpose.as_deref().into(),
                    now.as_str().into(),
                    actor.label().into(),
                ],
            )
            .await
            .map_err(name_taken)?;
        Ok(segment_json(rows.first().context("inserted segment")?)?)
    })
    .await?;
    Ok(json_response(StatusCode::CREATED, &row))
}

/// `GET /v1/segments`: all saved segments, by name.
pub async fn list(db: &impl Db) -> Result<Response, ApiError> {
    let rows = db
        .execute("SELECT * FROM segments ORDER BY name LIMIT 1000", &[])
        .await
        .context("failed to list segments")?;
    let items: Vec<Json> = rows
        .iter()
        .map(segment_json)
        .collect::<anyhow::Result<_>>()?;
    Ok(json_response(StatusCode::OK, &json!({ "items": items })))
}

fn not_found() -> ApiError {
    ApiError::NotFound("no segment with this id".into())
}

async fn load(db: &impl Db, id: &str) -> Result<Json, ApiError> {
    let id = ContactId::parse(id).ok_or_else(not_found)?;
    let rows = db
        .execute(
            "SELECT * FROM segments WHERE id = ?1",
            &[id.as_str().into()],
        )
        .await
        .context("failed to read a segment")?;
    Ok(segment_json(rows.first().ok_or_else(not_found)?)?)
}

/// `GET /v1/segments/{id}`.
pub async fn get(db: &impl Db, id: &str) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, &load(db, id).await?))
}

/// `PUT /v1/segments/{id}`: replaces name, description, definition and
/// purpose; the last count is cleared, since it was for the old rules.
pub async fn replace<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    let input = parse_input(request, ctx.config.shop_offset)?;
    let id = load(ctx.db, id).await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let now = timestamp::format(ctx.clock.now());
    let row = transaction(ctx.db, async || -> Result<Json, ApiError> {
        let rows = ctx
            .db
            .execute(
                "UPDATE segments SET name = ?2, description = ?3, definition = ?4, purpose = ?5,
                     last_count = NULL, last_counted_at = NULL, updated_at = ?6, updated_by = ?7
                 WHERE id = ?1 RETURNING *",
                &[
                    id.as_str().into(),
                    input.name.as_str().into(),
                    input.description.as_deref().into(),
                    input.definition.to_string().into(),
                    input.purpose.as_deref().into(),
                    now.as_str().into(),
                    actor.label().into(),
                ],
            )
            .await
            .map_err(name_taken)?;
        Ok(segment_json(rows.first().ok_or_else(not_found)?)?)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &row))
}

/// `DELETE /v1/segments/{id}`.
pub async fn delete<D: Db, K: Kv>(ctx: &Ctx<'_, D, K>, id: &str) -> Result<Response, ApiError> {
    let id = ContactId::parse(id).ok_or_else(not_found)?;
    let deleted = transaction(ctx.db, async || -> Result<bool, ApiError> {
        let rows = ctx
            .db
            .execute(
                "DELETE FROM segments WHERE id = ?1 RETURNING id",
                &[id.as_str().into()],
            )
            .await
            .context("failed to delete a segment")?;
        Ok(!rows.is_empty())
    })
    .await?;
    if !deleted {
        return Err(not_found());
    }
    Ok(crate::http::empty_response(StatusCode::NO_CONTENT))
}

/// A saved segment, compiled for now.
pub(super) async fn compiled_segment<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    id: &str,
) -> Result<(Json, Compiled, Env, Option<String>), ApiError> {
    let segment = load(ctx.db, id).await?;
    let node = definition::parse_in(&segment["definition"], ctx.config.shop_offset)?;
    let (env, computed_at) = env(ctx, &node).await?;
    let compiled = compile_in(
        &node,
        &env,
        segment["purpose"] == "email",
        ctx.config.shop_offset,
    );
    Ok((segment, compiled, env, computed_at))
}

/// The saved segments `contact_id` belongs to now, by evaluating each
/// definition for that one contact (for the person's data export).
pub async fn memberships<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    contact_id: &str,
) -> Result<Vec<Json>, ApiError> {
    let segments = ctx
        .db
        .execute("SELECT id, name FROM segments ORDER BY name", &[])
        .await
        .context("failed to list segments")?;
    let mut member_of = Vec::new();
    for row in segments.iter() {
        let id = row.str("id")?;
        let (_, compiled, _, _) = compiled_segment(ctx, id).await?;
        let mut params = compiled.params.clone();
        params.push(contact_id.into());
        let rows = ctx
            .db
            .execute(
                &format!(
                    "SELECT count(*) AS n FROM contacts c WHERE c.id = ?{} AND {}",
                    params.len(),
                    compiled.sql
                ),
                &params,
            )
            .await
            .context("failed to test a segment membership")?;
        if rows.first().context("count")?.i64("n")? > 0 {
            member_of.push(json!({"segment_id": id, "name": row.str("name")?}));
        }
    }
    Ok(member_of)
}

/// `GET /v1/segments/{id}/count`; also stored as the segment's last count.
pub async fn count_segment<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    id: &str,
) -> Result<Response, ApiError> {
    let (segment, compiled, env, computed_at) = compiled_segment(ctx, id).await?;
    let total = count(ctx.db, &compiled).await?;
    let at = timestamp::format(env.now);
    let id = segment["id"].as_str().unwrap_or_default().to_owned();
    transaction(ctx.db, async || -> Result<(), ApiError> {
        ctx.db
            .execute(
                "UPDATE segments SET last_count = ?2, last_counted_at = ?3 WHERE id = ?1",
                &[id.as_str().into(), total.into(), at.as_str().into()],
            )
            .await
            .context("failed to store a count")?;
        Ok(())
    })
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "segment_id": id, "count": total, "counted_at": at, "analytics_computed_at": computed_at }),
    ))
}

/// `GET /v1/segments/{id}/contacts`: JSON, or CSV with `Accept: text/csv`
/// or `format=csv` (`bom=true` adds a UTF-8 BOM for Excel; shop-time
/// dates, money in major units and Japanese phone formats: see
/// [`members`]), as an attachment named after the segment and the day.
/// The next page's cursor is in `next_cursor` (JSON) or the
/// `Next-Cursor` header. `may_export` allows personal fields (see
/// [`PERSONAL_FIELDS`]).
pub async fn members<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    id: &str,
    request: &Request,
    may_export: impl FnOnce() -> Result<(), ApiError>,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(request, &["limit", "cursor", "fields", "format", "bom"])?;
    let csv = query_param(&pairs, "format") == Some("csv")
        || header_str(request.headers(), "accept")
            .is_some_and(|a| a.to_ascii_lowercase().contains("text/csv"));
    if let Some(format) = query_param(&pairs, "format")
        && !matches!(format, "csv" | "json")
    {
        return Err(ApiError::invalid("format", "csv or json"));
    }
    let limit = page_size(&pairs, csv)?;
    let fields = allowed_fields(query_param(&pairs, "fields"), may_export)?;
    let after = cursor(&pairs)?;
    let (segment, compiled, env, computed_at) = compiled_segment(ctx, id).await?;
    let (page, next) = members::page(
        ctx.db,
        ctx.config,
        &compiled.sql,
        &compiled.params,
        &fields,
        after.as_deref(),
        env.now,
        limit,
    )
    .await?;
    if !csv {
        return Ok(json_response(
            StatusCode::OK,
            &json!({ "segment_id": segment["id"], "items": page, "next_cursor": next, "analytics_computed_at": computed_at }),
        ));
    }
    let bom = query_param(&pairs, "bom") == Some("true");
    // Pages are appended into one file: header and BOM open the first only.
    let body = members::to_csv(
        &page,
        &fields,
        ctx.config,
        after.is_none(),
        bom && after.is_none(),
    );
    let mut response = http::Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/csv; charset=utf-8")
        .body(Bytes::from(body))
        .expect("static headers are valid");
    let disposition = members::content_disposition(
        segment["name"].as_str().unwrap_or_default(),
        segment["id"].as_str().unwrap_or_default(),
        env.now,
        ctx.config.shop_offset,
    );
    crate::http::set_header(&mut response, header::CONTENT_DISPOSITION, &disposition);
    if let Some(next) = next {
        crate::http::set_header(
            &mut response,
            http::HeaderName::from_static("next-cursor"),
            &next,
        );
    }
    Ok(response)
}
