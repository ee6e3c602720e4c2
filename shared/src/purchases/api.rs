//! The orders read API (`orders:read`): one order with its lines and
//! refunds, orders newest first (a contact's, or found by the shop's
//! number or id), and the webhook deliveries log for operators, refused
//! signatures included.

use super::Source;
use super::receive::Outcome;
use crate::error::ApiError;
use crate::http::{
    Request, Response, decode_cursor, encode_cursor, json_response, page_limit, query_pairs,
    query_param,
};
use crate::ids::ContactId;
use crate::ports::{Db, Row, Value};
use anyhow::Context as _;
use http::StatusCode;
use serde_json::{Value as Json, json};

fn order_json(row: Row<'_>) -> anyhow::Result<Json> {
    Ok(json!({
        "id": row.str("id")?,
        "source": row.str("source")?,
        "external_id": row.str("external_id")?,
        "contact_id": row.opt_str("contact_id")?,
        "number": row.opt_str("order_number")?,
        "status": row.str("status")?,
        "currency": row.str("currency")?,
        "subtotal_minor": row.i64("subtotal_minor")?,
        "shipping_minor": row.i64("shipping_minor")?,
        "tax_minor": row.i64("tax_minor")?,
        "discount_minor": row.i64("discount_minor")?,
        "total_minor": row.i64("total_minor")?,
        "refunded_minor": row.i64("refunded_minor")?,
        "points_used": row.i64("points_used")?,
        "placed_at": row.str("placed_at")?,
        "paid_at": row.opt_str("paid_at")?,
        "cancelled_at": row.opt_str("cancelled_at")?,
        "updated_at": row.str("updated_at")?,
    }))
}

/// `GET /v1/orders/{id}`.
pub async fn get(db: &impl Db, id: &str) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound("no order with this id".into());
    let id = ContactId::parse(id).ok_or_else(not_found)?; // same UUID shape as every id
    let order = load(db, id.as_str()).await?.ok_or_else(not_found)?;
    Ok(json_response(StatusCode::OK, &order))
}

/// One order with its lines and refunds, as `GET /v1/orders/{id}` shows it.
pub async fn load(db: &impl Db, id: &str) -> anyhow::Result<Option<Json>> {
    let rows = db
        .execute("SELECT * FROM orders WHERE id = ?1", &[id.into()])
        .await
        .context("failed to read an order")?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let mut order = order_json(row)?;
    let lines = db
        .execute(
            "SELECT * FROM order_lines WHERE order_id = ?1 ORDER BY line_no",
            &[id.into()],
        )
        .await
        .context("failed to read order lines")?;
    order["lines"] = lines
        .iter()
        .map(|l| -> anyhow::Result<Json> {
            Ok(json!({
                "line_no": l.i64("line_no")?,
                "external_id": l.opt_str("external_id")?,
                "sku": l.opt_str("sku")?,
                "product_name": l.opt_str("product_name")?,
                "category": l.opt_str("category")?,
                "quantity": l.i64("quantity")?,
                "unit_price_minor": l.i64("unit_price_minor")?,
                "line_total_minor": l.i64("line_total_minor")?,
                "discount_minor": l.i64("discount_minor")?,
                "tax_minor": l.i64("tax_minor")?,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?
        .into();
    let refunds = db
        .execute(
            "SELECT id, external_id, amount_minor, currency, reason, refunded_at FROM refunds
             WHERE source = ?1 AND order_external_id = ?2 ORDER BY refunded_at, id",
            &[row.str("source")?.into(), row.str("external_id")?.into()],
        )
        .await
        .context("failed to read refunds")?;
    order["refunds"] = refunds
        .iter()
        .map(|r| -> anyhow::Result<Json> {
            Ok(json!({
                "id": r.str("id")?,
                "external_id": r.str("external_id")?,
                "amount_minor": r.i64("amount_minor")?,
                "currency": r.str("currency")?,
                "reason": r.opt_str("reason")?,
                "refunded_at": r.str("refunded_at")?,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?
        .into();
    Ok(Some(order))
}

/// A shop's order number as a caller types it: Shopify names orders
/// `#1002`, WooCommerce `1002`, and people type either. Both spellings
/// are looked up.
fn order_number_spellings(text: &str) -> Result<[String; 2], ApiError> {
    let number = text.trim();
    let bare = number.strip_prefix('#').unwrap_or(number);
    if bare.is_empty() || number.chars().count() > 64 || number.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "number",
            "the shop's order number, like #1002 or 1002 (percent-encode # as %23)",
        ));
    }
    Ok([bare.to_owned(), format!("#{bare}")])
}

/// `GET /v1/orders?contact_id=&number=&external_id=&source=`: newest
/// first, keyed by (placed_at, id). Each filter given adds its condition
/// to the statement's text, so that SQLite plans each combination on its
/// index (a contact's orders, the shop's number, the shop's id) rather
/// than one plan for all.
pub async fn list(db: &impl Db, request: &Request) -> Result<Response, ApiError> {
    let pairs = query_pairs(
        request,
        &[
            "limit",
            "cursor",
            "contact_id",
            "number",
            "external_id",
            "source",
        ],
    )?;
    let limit = page_limit(&pairs)?;
    // Anonymous `?`s, numbered by SQLite left to right: each condition's
    // values are pushed in the order its text is joined.
    let mut conditions: Vec<&str> = Vec::new();
    let mut params: Vec<Value> = Vec::new();
    let mut condition = |sql: &'static str, values: Vec<Value>| {
        conditions.push(sql);
        params.extend(values);
    };
    if let Some(text) = query_param(&pairs, "contact_id") {
        let id = ContactId::parse(text)
            .ok_or_else(|| ApiError::invalid("contact_id", "not a contact id"))?;
        condition("contact_id = ?", vec![id.as_str().into()]);
    }
    if let Some(text) = query_param(&pairs, "number") {
        let [bare, hashed] = order_number_spellings(text)?;
        condition("order_number IN (?, ?)", vec![bare.into(), hashed.into()]);
    }
    if let Some(text) = query_param(&pairs, "external_id") {
        if text.is_empty() || text.chars().count() > 200 {
            return Err(ApiError::invalid(
                "external_id",
                "the shop's own order id (1 to 200 characters), matched exactly",
            ));
        }
        condition("external_id = ?", vec![text.into()]);
    }
    if let Some(text) = query_param(&pairs, "source") {
        let source = Source::parse(text)
            .ok_or_else(|| ApiError::invalid("source", "one of kizuna, shopify, woocommerce"))?;
        condition("source = ?", vec![source.as_str().into()]);
    }
    if let Some(cursor) = query_param(&pairs, "cursor") {
        let mut parts = decode_cursor(cursor, 2)?;
        let (id, at) = (parts.pop(), parts.pop());
        condition(
            "(placed_at < ? OR (placed_at = ? AND id < ?))",
            vec![at.clone().into(), at.into(), id.into()],
        );
    }
    params.push(Value::Integer(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let rows = db
        .execute(
            &format!("SELECT * FROM orders {filter} ORDER BY placed_at DESC, id DESC LIMIT ?"),
            &params,
        )
        .await
        .context("failed to list orders")?;
    let mut items = Vec::new();
    let mut next_cursor = None;
    for (index, row) in rows.iter().enumerate() {
        if index == limit {
            let last = rows.iter().nth(limit - 1).context("page boundary")?;
            next_cursor = Some(encode_cursor(&[last.str("placed_at")?, last.str("id")?]));
            break;
        }
        items.push(order_json(row)?);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "items": items, "next_cursor": next_cursor }),
    ))
}

/// `GET /v1/webhook-deliveries?outcome=&source=`: newest first. A
/// delivery's row counts one (`attempts` 1); an `unauthorized` row
/// counts a source's refused signatures in one minute, by reason (see
/// `auth_failures`).
pub async fn deliveries(db: &impl Db, request: &Request) -> Result<Response, ApiError> {
    let pairs = query_pairs(request, &["limit", "cursor", "outcome", "source"])?;
    let limit = page_limit(&pairs)?;
    let outcome = query_param(&pairs, "outcome");
    if let Some(o) = outcome
        && Outcome::parse(o).is_none()
    {
        return Err(ApiError::invalid(
            "outcome",
            "one of applied, duplicate, ignored, rejected, unauthorized",
        ));
    }
    let source = query_param(&pairs, "source");
    if let Some(s) = source
        && Source::parse(s).is_none()
    {
        return Err(ApiError::invalid(
            "source",
            "one of kizuna, shopify, woocommerce",
        ));
    }
    let before = match query_param(&pairs, "cursor") {
        Some(c) => decode_cursor(c, 1)?.pop(),
        None => None,
    };
    let rows = db
        .execute(
            "SELECT * FROM webhook_deliveries
             WHERE (?1 IS NULL OR outcome = ?1) AND (?2 IS NULL OR source = ?2) AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC LIMIT ?4",
            &[
                outcome.into(),
                source.into(),
                before.into(),
                Value::Integer(i64::try_from(limit + 1).unwrap_or(i64::MAX)),
            ],
        )
        .await
        .context("failed to list deliveries")?;
    let mut items = Vec::new();
    let mut next_cursor = None;
    for (index, row) in rows.iter().enumerate() {
        if index == limit {
            let last = rows.iter().nth(limit - 1).context("page boundary")?;
            next_cursor = Some(encode_cursor(&[last.str("id")?]));
            break;
        }
        items.push(json!({
            "id": row.str("id")?,
            "source": row.str("source")?,
            "event_id": row.opt_str("event_id")?,
            "delivery_id": row.opt_str("delivery_id")?,
            "topic": row.opt_str("topic")?,
            "order_external_id": row.opt_str("order_external_id")?,
            "received_at": row.str("received_at")?,
            "outcome": row.str("outcome")?,
            "error": row.opt_str("error")?,
            "attempts": row.i64("attempts")?,
            "reasons": row
                .opt_str("reasons")?
                .map(serde_json::from_str::<Json>)
                .transpose()
                .context("reasons are not JSON")?,
            "window_start": row.opt_str("window_start")?,
            "last_received_at": row.opt_str("last_received_at")?.or(row.opt_str("received_at")?),
        }));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "items": items, "next_cursor": next_cursor }),
    ))
}
