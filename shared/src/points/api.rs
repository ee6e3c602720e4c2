//! The points use cases behind `/v1/points`: balances, the ledger,
//! award, redeem, adjust, cancel of an earn, the program, the liability
//! report and the expiry sweep. Each write is one `BEGIN IMMEDIATE`
//! transaction that records the acting key's name.

use super::ledger::{self, Kind, NewEntry};
use super::program::{self, Rules};
use crate::Ctx;
use crate::auth::Actor;
use crate::db::transaction;
use crate::error::{ApiError, FieldError};
use crate::http::{
    Request, Response, decode_cursor, encode_cursor, json_response, page_limit, query_pairs,
    query_param,
};
use crate::idempotency::{IdempotencyKey, WriteAnswer, write};
use crate::ids::ContactId;
use crate::ports::{Db, Kv, Value};
use crate::shop_time;
use crate::timestamp;
use anyhow::Context as _;
use http::StatusCode;
use serde_json::{Map, Value as Json, json};

/// The most points one request may move.
pub const MAX_POINTS: i64 = 1_000_000_000;

fn not_found() -> ApiError {
    ApiError::NotFound("no live contact with this id".into())
}

/// The contact id from a path or body, if a live contact has it.
async fn live_contact(db: &impl Db, text: &str) -> Result<String, ApiError> {
    let id = ContactId::parse(text).ok_or_else(not_found)?;
    if crate::contact::exists(db, id.as_str()).await? {
        Ok(id.as_str().to_owned())
    } else {
        Err(not_found())
    }
}

/// A whole number of points from JSON: no strings, no fractions, nothing
/// beyond `MAX_POINTS` (so nothing a JavaScript client would round).
fn points_field(
    body: &Map<String, Json>,
    field: &str,
    signed: bool,
    errors: &mut Vec<FieldError>,
) -> i64 {
    let message = if signed {
        format!("a whole number from -{MAX_POINTS} to {MAX_POINTS}, not zero")
    } else {
        format!("a whole number from 1 to {MAX_POINTS}")
    };
    let value = body.get(field).and_then(Json::as_i64).filter(|p| {
        let magnitude_ok = p.unsigned_abs() <= MAX_POINTS as u64 && *p != 0;
        magnitude_ok && (signed || *p > 0)
    });
    match value {
        Some(points) => points,
        None => {
            errors.push(FieldError::new(field, message));
            0
        }
    }
}

fn text_field(
    body: &Map<String, Json>,
    field: &str,
    required: bool,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match body.get(field) {
        None | Some(Json::Null) if !required => None,
        Some(Json::String(s)) => {
            let checked = crate::profile::check_text(field, s, max, errors);
            if checked.is_none() && required && errors.iter().all(|e| e.field != field) {
                errors.push(FieldError::new(field, "is required"));
            }
            checked
        }
        None | Some(Json::Null) => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

fn time_field(
    body: &Map<String, Json>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<time::OffsetDateTime> {
    match body.get(field) {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => {
            let parsed = timestamp::parse(s);
            if parsed.is_none() {
                errors.push(FieldError::new(field, "an RFC 3339 timestamp"));
            }
            parsed
        }
        Some(_) => {
            errors.push(FieldError::new(field, "an RFC 3339 timestamp"));
            None
        }
    }
}

/// Refuses fields a body may not carry: no mass assignment.
fn only_fields(body: &Map<String, Json>, allowed: &[&str], errors: &mut Vec<FieldError>) {
    for key in body.keys() {
        if !allowed.contains(&key.as_str()) {
            errors.push(FieldError::new(key.clone(), "unknown field"));
        }
    }
}

fn contact_field(body: &Map<String, Json>, errors: &mut Vec<FieldError>) -> String {
    match body.get("contact_id").and_then(Json::as_str) {
        Some(id) => id.to_owned(),
        None => {
            errors.push(FieldError::new("contact_id", "is required"));
            String::new()
        }
    }
}

fn validated<T>(errors: Vec<FieldError>, value: T) -> Result<T, ApiError> {
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// `GET /v1/points/{contact_id}`: the balance, then the unexpired lots
/// soonest-expiring first (at most [`ledger::LOTS_LISTED`]) and a summary
/// of those not listed, read in one statement so that the parts add up.
pub async fn balance<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    contact: &str,
) -> Result<Response, ApiError> {
    let contact = ContactId::parse(contact).ok_or_else(not_found)?;
    let contact = contact.as_str();
    let now = ctx.clock.now();
    let (balance, lots) = ledger::balance_and_lots_of_live_contact(ctx.db, contact, now)
        .await?
        .ok_or_else(not_found)?;
    let listed = |status: &str| -> i64 {
        lots.iter()
            .filter(|lot| lot["status"] == status)
            .filter_map(|lot| lot["points"].as_i64())
            .sum()
    };
    let not_listed = json!({
        "lots": balance.open_lots - i64::try_from(lots.len()).unwrap_or(i64::MAX),
        "available": balance.available - listed("available"),
        "pending": balance.pending - listed("pending"),
    });
    let mut body = serde_json::to_value(&balance).context("balance")?;
    body["contact_id"] = contact.into();
    body["as_of"] = timestamp::format(now).into();
    body["lots"] = lots.into();
    body["lots_not_listed"] = not_listed;
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /v1/points/{contact_id}/ledger`: newest first, keyset by id.
pub async fn ledger_page(
    db: &impl Db,
    contact: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    let contact = live_contact(db, contact).await?;
    let pairs = query_pairs(request, &["limit", "cursor"])?;
    let limit = page_limit(&pairs)?;
    let before: Option<i64> = match query_param(&pairs, "cursor") {
        Some(c) => Some(
            decode_cursor(c, 1)?
                .pop()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::invalid("cursor", "not a cursor this API returned"))?,
        ),
        None => None,
    };
    let rows = db
        .execute(
            "SELECT * FROM points_entries WHERE contact_id = ?1 AND (?2 IS NULL OR seq < ?2)
             ORDER BY seq DESC LIMIT ?3",
            &[
                contact.as_str().into(),
                before.into(),
                Value::Integer(i64::try_from(limit + 1).unwrap_or(i64::MAX)),
            ],
        )
        .await
        .context("failed to read the ledger")?;
    let mut items = Vec::new();
    let mut next_cursor = None;
    for (index, row) in rows.iter().enumerate() {
        if index == limit {
            next_cursor = items
                .last()
                .and_then(|e: &Json| e["seq"].as_i64())
                .map(|seq| encode_cursor(&[&seq.to_string()]));
            break;
        }
        items.push(json!({
            "id": row.str("id")?,
            "seq": row.i64("seq")?,
            "kind": row.str("kind")?,
            "points": row.i64("points")?,
            "balance_after": row.i64("balance_after")?,
            "reason": row.opt_str("reason")?,
            "order_id": row.opt_str("order_id")?,
            "order_ref": row.opt_str("order_ref")?,
            "related_entry_id": row.opt_str("related_entry_id")?,
            "program_version": row.opt_i64("program_version")?,
            "created_at": row.str("created_at")?,
            "created_by": row.str("created_by")?,
        }));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "contact_id": contact, "items": items, "next_cursor": next_cursor }),
    ))
}

/// `POST /v1/points/award`: points with a reason, the program's pending
/// and expiry unless `available_at` / `expires_at` override them. Needs
/// an `Idempotency-Key`, like redeem: a retried award must not credit
/// twice.
pub async fn award<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    request: &Request,
) -> Result<Response, ApiError> {
    if IdempotencyKey::from_headers(request.headers())?.is_none() {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "is required: a retried award must not credit twice",
        ));
    }
    let body: Map<String, Json> = crate::http::read_json(request)?;
    let mut errors = Vec::new();
    only_fields(
        &body,
        &[
            "contact_id",
            "points",
            "reason",
            "available_at",
            "expires_at",
        ],
        &mut errors,
    );
    let contact = contact_field(&body, &mut errors);
    let points = points_field(&body, "points", false, &mut errors);
    let reason = text_field(&body, "reason", true, 200, &mut errors);
    let available_at = time_field(&body, "available_at", &mut errors);
    let expires_at = time_field(&body, "expires_at", &mut errors);
    let now = ctx.clock.now();
    if let Some(expires) = expires_at
        && (expires <= now || available_at.is_some_and(|a| a >= expires))
    {
        errors.push(FieldError::new(
            "expires_at",
            "must be in the future and after available_at",
        ));
    }
    validated(errors, ())?;
    write(ctx, actor, request, async || {
        let contact = live_contact(ctx.db, &contact).await?;
        let program = program::current(ctx.db).await?;
        let entry = NewEntry { reason: reason.as_deref(), program_version: Some(program.version), ..NewEntry::new(Kind::Earn, points) };
        let available_at = available_at.unwrap_or_else(|| program.rules.available_at(now));
        let expires_at = expires_at.or_else(|| program.rules.expires_at(now, ctx.config.shop_offset));
        let entry_id = ledger::credit(ctx.db, &contact, &entry, available_at, expires_at, &actor.label(), now).await?;
        let balance = ledger::balance(ctx.db, &contact, now).await?;
        Ok(WriteAnswer {
            status: StatusCode::CREATED,
            body: json!({ "entry_id": entry_id, "contact_id": contact, "points": points, "balance": balance }),
            contact_id: Some(contact),
        })
    })
    .await
}

/// `POST /v1/points/redeem`: needs an `Idempotency-Key`; 409 with the
/// available amount when there is not enough.
pub async fn redeem<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    request: &Request,
) -> Result<Response, ApiError> {
    if IdempotencyKey::from_headers(request.headers())?.is_none() {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "is required: a retried redemption must not spend twice",
        ));
    }
    let body: Map<String, Json> = crate::http::read_json(request)?;
    let mut errors = Vec::new();
    only_fields(
        &body,
        &["contact_id", "points", "reason", "order_ref"],
        &mut errors,
    );
    let contact = contact_field(&body, &mut errors);
    let points = points_field(&body, "points", false, &mut errors);
    let reason = text_field(&body, "reason", false, 200, &mut errors);
    let order_ref = text_field(&body, "order_ref", false, 128, &mut errors);
    validated(errors, ())?;
    write(ctx, actor, request, async || {
        let contact = live_contact(ctx.db, &contact).await?;
        let program = program::current(ctx.db).await?;
        if points < i64::from(program.rules.min_redeem) {
            return Err(ApiError::invalid("points", format!("at least {} points per redemption", program.rules.min_redeem)));
        }
        let now = ctx.clock.now();
        let entry_id =
            ledger::redeem(ctx.db, &contact, points, reason.as_deref(), order_ref.as_deref(), &actor.label(), now).await?;
        let balance = ledger::balance(ctx.db, &contact, now).await?;
        // What the till takes off the bill, at the program's point value
        // now; a replay answers the value of the first redemption.
        let value_minor = points.saturating_mul(i64::from(program.rules.point_value_minor));
        Ok(WriteAnswer {
            status: StatusCode::CREATED,
            body: json!({
                "entry_id": entry_id, "contact_id": contact, "points": points,
                "value_minor": value_minor, "currency": ctx.config.shop_currency.code(),
                "point_value_minor": program.rules.point_value_minor, "program_version": program.version,
                "balance": balance,
            }),
            contact_id: Some(contact),
        })
    })
    .await
}

/// `POST /v1/points/adjust`: a signed correction with a reason. A
/// positive one opens a lot under the program's expiry; a negative one
/// takes points back under the debt policy.
pub async fn adjust<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    request: &Request,
) -> Result<Response, ApiError> {
    let body: Map<String, Json> = crate::http::read_json(request)?;
    let mut errors = Vec::new();
    only_fields(&body, &["contact_id", "points", "reason"], &mut errors);
    let contact = contact_field(&body, &mut errors);
    let points = points_field(&body, "points", true, &mut errors);
    let reason = text_field(&body, "reason", true, 200, &mut errors);
    validated(errors, ())?;
    write(ctx, actor, request, async || {
        let contact = live_contact(ctx.db, &contact).await?;
        let now = ctx.clock.now();
        let program = program::current(ctx.db).await?;
        let entry = NewEntry { reason: reason.as_deref(), program_version: Some(program.version), ..NewEntry::new(Kind::Adjust, points) };
        let entry_id = if points > 0 {
            ledger::credit(ctx.db, &contact, &entry, now, program.rules.expires_at(now, ctx.config.shop_offset), &actor.label(), now).await?
        } else {
            ledger::debit(ctx.db, &contact, &entry, None, &actor.label(), now).await?
        };
        let balance = ledger::balance(ctx.db, &contact, now).await?;
        Ok(WriteAnswer {
            status: StatusCode::CREATED,
            body: json!({ "entry_id": entry_id, "contact_id": contact, "points": points, "balance": balance }),
            contact_id: Some(contact),
        })
    })
    .await
}

/// `POST /v1/points/entries/{id}/cancel`: takes back what an earn still
/// holds; points already spent become debt per the policy.
pub async fn cancel_earn<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    entry_id: &str,
    request: &Request,
) -> Result<Response, ApiError> {
    let reason = if request.body().is_empty() {
        None
    } else {
        let body: Map<String, Json> = crate::http::read_json(request)?;
        let mut errors = Vec::new();
        only_fields(&body, &["reason"], &mut errors);
        let reason = text_field(&body, "reason", false, 200, &mut errors);
        validated(errors, reason)?
    };
    let not_found = || ApiError::NotFound("no earn entry with this id".into());
    let entry_id = ContactId::parse(entry_id)
        .ok_or_else(not_found)?
        .as_str()
        .to_owned();
    write(ctx, actor, request, async || {
        let rows = ctx
            .db
            .execute(
                "SELECT e.contact_id, e.points FROM points_entries e JOIN contacts c ON c.id = e.contact_id
                 WHERE e.id = ?1 AND e.kind = 'earn' AND c.erased_at IS NULL",
                &[entry_id.as_str().into()],
            )
            .await
            .context("failed to read an entry")?;
        let row = rows.first().ok_or_else(not_found)?;
        let (contact, earned) = (row.str("contact_id")?.to_owned(), row.i64("points")?);
        let now = ctx.clock.now();
        // Expired points are gone already; only what is left or was spent
        // can be taken back.
        ledger::expire_due(ctx.db, Some(&contact), &actor.label(), now).await?;
        let left = earned
            - super::orders::taken_back(ctx.db, &entry_id).await?
            - super::orders::expired_from(ctx.db, &entry_id).await?;
        if left <= 0 {
            return Err(ApiError::Conflict("this earn has already been taken back in full".into()));
        }
        let entry = NewEntry {
            reason: Some(reason.as_deref().unwrap_or("earn cancelled")),
            related_entry_id: Some(&entry_id),
            ..NewEntry::new(Kind::Cancel, -left)
        };
        let lot = super::orders::lot_of(ctx.db, &entry_id).await?;
        let cancel_id = ledger::debit(ctx.db, &contact, &entry, lot.as_deref(), &actor.label(), now).await?;
        let balance = ledger::balance(ctx.db, &contact, now).await?;
        Ok(WriteAnswer {
            status: StatusCode::CREATED,
            body: json!({ "entry_id": cancel_id, "cancelled_entry_id": entry_id, "points": -left, "contact_id": contact, "balance": balance }),
            contact_id: Some(contact),
        })
    })
    .await
}

/// `GET /v1/points/program`.
pub async fn get_program(db: &impl Db) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, &program::current(db).await?))
}

/// `PUT /v1/points/program`: validated, stored as the next version.
pub async fn put_program<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    request: &Request,
) -> Result<Response, ApiError> {
    let settings: Map<String, Json> = crate::http::read_json(request)?;
    let rules = Rules::from_settings(&Json::Object(settings))?;
    rules.validate()?;
    let now = ctx.clock.now();
    let saved = transaction(ctx.db, async || -> Result<program::Program, ApiError> {
        Ok(program::save(ctx.db, &rules, &actor.label(), now).await?)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &saved))
}

/// `PATCH /v1/points/program`: a merge patch of the rules in force (see
/// [`Rules::patched`]), validated as a `PUT` is and stored as the next
/// version, so adding a campaign leaves expiry and multipliers as they
/// are. Read, merge and save run in one write transaction: two patches at
/// once both land, one on top of the other.
pub async fn patch_program<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    request: &Request,
) -> Result<Response, ApiError> {
    let patch = crate::http::read_merge_patch(request)?;
    let now = ctx.clock.now();
    let saved = transaction(ctx.db, async || -> Result<program::Program, ApiError> {
        let rules = program::current(ctx.db).await?.rules.patched(&patch)?;
        rules.validate()?;
        Ok(program::save(ctx.db, &rules, &actor.label(), now).await?)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &saved))
}

/// `GET /v1/points/liability`: outstanding points and their value, and
/// what expires in each of the next 12 months (shop time), from one
/// snapshot.
pub async fn liability<D: Db, K: Kv>(ctx: &Ctx<'_, D, K>) -> Result<Response, ApiError> {
    crate::db::read_snapshot(ctx.db, async || liability_report(ctx).await).await
}

async fn liability_report<D: Db, K: Kv>(ctx: &Ctx<'_, D, K>) -> Result<Response, ApiError> {
    let now = ctx.clock.now();
    let at = timestamp::format(now);
    let program = program::current(ctx.db).await?;
    let totals = ctx
        .db
        .execute(
            "SELECT COALESCE(SUM(CASE WHEN available_at <= ?1 THEN remaining END), 0) AS available,
                    COALESCE(SUM(CASE WHEN available_at > ?1 THEN remaining END), 0) AS pending
             FROM points_lots WHERE remaining > 0 AND (expires_at IS NULL OR expires_at > ?1)",
            &[at.as_str().into()],
        )
        .await
        .context("failed to sum lots")?;
    let totals = totals.first().context("totals")?;
    let (available, pending) = (totals.i64("available")?, totals.i64("pending")?);
    let debt = ctx
        .db
        .execute(
            "SELECT COALESCE(SUM(debt), 0) AS debt FROM points_accounts",
            &[],
        )
        .await
        .context("failed to sum debt")?;
    let debt = debt.first().context("debt")?.i64("debt")?;
    // Months in shop time (`shop_timezone`), from this month on. Points
    // are listed under the last month they can be used: an `expires_at` of
    // 1 December 00:00 shop time is "expiring in November".
    let shop = ctx.config.shop_offset;
    let month_start =
        |months: i64| shop_time::month_start(now, months, shop).context("month start");
    let months = (0..12)
        .map(|i| shop_time::month_key(month_start(i)?, shop).context("month key"))
        .collect::<anyhow::Result<Vec<String>>>()?;
    let end = month_start(12)?;
    let rows = ctx
        .db
        .execute(
            "SELECT strftime('%Y-%m', expires_at, ?3, '-0.001 seconds') AS month, SUM(remaining) AS points
             FROM points_lots WHERE remaining > 0 AND expires_at > ?1 AND expires_at <= ?2
             GROUP BY month",
            &[
                at.as_str().into(),
                timestamp::format(end).into(),
                shop_time::sqlite_modifier(shop).into(),
            ],
        )
        .await
        .context("failed to group expiries")?;
    let mut by_month = std::collections::BTreeMap::new();
    for row in rows.iter() {
        by_month.insert(row.str("month")?.to_owned(), row.i64("points")?);
    }
    let value = |points: i64| points.saturating_mul(i64::from(program.rules.point_value_minor));
    let expiring: Vec<Json> = months
        .iter()
        .map(|key| {
            let points = by_month.get(key).copied().unwrap_or(0);
            json!({ "month": key, "points": points, "value_minor": value(points) })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "as_of": at,
            "currency": ctx.config.shop_currency.code(),
            "point_value_minor": program.rules.point_value_minor,
            "available": { "points": available, "value_minor": value(available) },
            "pending": { "points": pending, "value_minor": value(pending) },
            "debt": { "points": debt, "value_minor": value(debt) },
            "expiring_by_month": expiring,
        }),
    ))
}

/// `POST /v1/points/expire-due`: writes `expire` entries for at most
/// [`ledger::SWEEP_BATCH`] lots past their expiry, in one transaction, and
/// answers `"more": true` while lots remain, for the scheduler's next
/// call. One batch per call because Spin 4.0.2 does not free a host
/// resource per statement until the component instance is dropped (after
/// 128 requests): a call closing 20,000 lots (120,000 statements) ran one
/// instance out of resource keys on its third call, inside a transaction
/// that then could neither commit nor roll back. Idempotent; balances
/// never wait for it (they count lots past their expiry as expired).
pub async fn expire_due<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
) -> Result<Response, ApiError> {
    let now = ctx.clock.now();
    let held = std::cell::Cell::new(std::time::Duration::ZERO);
    let expired = transaction(ctx.db, async || -> Result<usize, ApiError> {
        let locked = std::time::Instant::now();
        let expired = ledger::expire_due(ctx.db, None, &actor.label(), now).await?;
        held.set(locked.elapsed());
        Ok(expired)
    })
    .await?;
    let more = expired == ledger::SWEEP_BATCH;
    if more {
        // As long outside the lock as it held the lock (its wait for the
        // lock not counted), so a scheduler calling again at once still
        // leaves the shop's writers (forms, orders, redeems) at least half
        // the time.
        ctx.db.yield_to_writers(held.get()).await;
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "expired_lots": expired, "more": more, "as_of": timestamp::format(now) }),
    ))
}
