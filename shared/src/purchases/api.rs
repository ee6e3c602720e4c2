//! The orders read API (`orders:read`): one order with its lines and
//! refunds, a contact's orders newest first, and the webhook deliveries
//! log for operators.

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

/// `GET /v1/orders?contact_id=…`: newest first, keyed by (placed_at, id).
pub async fn list(db: &impl Db, request: &Request) -> Result<Response, ApiError> {
    let pairs = query_pairs(request, &["limit", "cursor", "contact_id"])?;
    let limit = page_limit(&pairs)?;
    let contact_id = match query_param(&pairs, "contact_id") {
        Some(text) => Some(
            ContactId::parse(text)
                .ok_or_else(|| ApiError::invalid("contact_id", "not a contact id"))?
                .as_str()
                .to_owned(),
        ),
        None => None,
    };
    let (after_at, after_id) = match query_param(&pairs, "cursor") {
        Some(c) => {
            let mut parts = decode_cursor(c, 2)?;
            let id = parts.pop();
            (parts.pop(), id)
        }
        None => (None, None),
    };
    let rows = db
        .execute(
            "SELECT * FROM orders
             WHERE (?1 IS NULL OR contact_id = ?1)
               AND (?2 IS NULL OR placed_at < ?2 OR (placed_at = ?2 AND id < ?3))
             ORDER BY placed_at DESC, id DESC LIMIT ?4",
            &[
                contact_id.into(),
                after_at.into(),
                after_id.into(),
                Value::Integer(i64::try_from(limit + 1).unwrap_or(i64::MAX)),
            ],
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

/// `GET /v1/webhook-deliveries?outcome=&source=`: newest first.
pub async fn deliveries(db: &impl Db, request: &Request) -> Result<Response, ApiError> {
    let pairs = query_pairs(request, &["limit", "cursor", "outcome", "source"])?;
    let limit = page_limit(&pairs)?;
    let outcome = query_param(&pairs, "outcome");
    if let Some(o) = outcome
        && !["applied", "duplicate", "ignored", "rejected"].contains(&o)
    {
        return Err(ApiError::invalid(
            "outcome",
            "one of applied, duplicate, ignored, rejected",
        ));
    }
    let source = query_param(&pairs, "source");
    if let Some(s) = source
        && !["kizuna", "shopify", "woocommerce"].contains(&s)
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
        }));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "items": items, "next_cursor": next_cursor }),
    ))
}
