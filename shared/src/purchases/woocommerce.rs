//! WooCommerce's webhook payloads (REST API v3 order resource) for the
//! `order.created`, `order.updated`, `order.deleted` and `order.restored`
//! topics. Totals are decimal strings; times without an offset are GMT.
//!
//! WooCommerce has no standard field for marketing consent: a checkout
//! plugin keeps it in an order meta entry, whose key the shop names in
//! the `woocommerce_consent_meta_key` variable (see [`meta_consent`]).

use super::kizuna_format::{customer_profile, time_field};
use super::model::{self, Customer, Event, Line, Order, Refund, ShopConsent};
use super::shopify::id_text;
use crate::consent::{Channel, Status};
use crate::error::{ApiError, FieldError};
use crate::money::Currency;
use crate::phone::Region;
use serde::Deserialize;
use serde_json::Value as Json;
use time::OffsetDateTime;

#[derive(Debug, Deserialize)]
pub struct OrderDto {
    id: Json,
    number: Option<String>,
    status: Option<String>,
    currency: String,
    date_created_gmt: Option<String>,
    date_modified_gmt: Option<String>,
    date_paid_gmt: Option<String>,
    discount_total: Option<String>,
    shipping_total: Option<String>,
    total: String,
    total_tax: Option<String>,
    customer_id: Option<Json>,
    billing: Option<BillingDto>,
    #[serde(default)]
    line_items: Vec<LineDto>,
    #[serde(default)]
    refunds: Vec<RefundDto>,
    /// `[{id, key, value}]`; any JSON, so that an odd entry is ignored.
    meta_data: Option<Json>,
}

/// The source WooCommerce consent is recorded with.
pub const CONSENT_SOURCE: &str = "woocommerce_checkout";

/// The buyer's email consent from the order meta entry named `key`:
/// `true`, `1`, `"1"`, `"yes"`, `"true"`, `"on"`, `"subscribed"` or
/// `"granted"` is a grant, `"unsubscribed"` or `"withdrawn"` a
/// withdrawal, both at the order's creation time (the checkout). An
/// unticked box (`"0"`, `"no"`, empty) withdraws nothing, and any other
/// value is ignored: neither fails the order.
fn meta_consent(
    meta_data: Option<&Json>,
    key: &str,
    order_time: OffsetDateTime,
) -> Option<ShopConsent> {
    let value = meta_data?
        .as_array()?
        .iter()
        .find(|entry| entry.get("key").and_then(Json::as_str) == Some(key))?
        .get("value")?;
    let text = match value {
        Json::Bool(true) => "true".to_owned(),
        Json::Number(n) => n.to_string(),
        Json::String(s) => s.trim().to_ascii_lowercase(),
        _ => return None,
    };
    let status = match text.as_str() {
        "1" | "yes" | "true" | "on" | "subscribed" | "granted" => Status::Granted,
        "unsubscribed" | "withdrawn" => Status::Withdrawn,
        _ => return None,
    };
    Some(ShopConsent {
        channel: Channel::Email,
        status,
        occurred_at: order_time,
        opt_in_level: None,
        source: CONSENT_SOURCE.to_owned(),
    })
}

#[derive(Debug, Deserialize)]
struct BillingDto {
    first_name: Option<String>,
    last_name: Option<String>,
    company: Option<String>,
    address_1: Option<String>,
    address_2: Option<String>,
    city: Option<String>,
    state: Option<String>,
    postcode: Option<String>,
    email: Option<String>,
    phone: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LineDto {
    id: Option<Json>,
    name: Option<String>,
    sku: Option<String>,
    quantity: i64,
    subtotal: String,
    total: String,
    total_tax: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RefundDto {
    id: Json,
    reason: Option<String>,
    total: String,
}

/// WooCommerce's GMT times carry no offset.
fn gmt(field: &str, value: Option<&str>, errors: &mut Vec<FieldError>) -> Option<OffsetDateTime> {
    let value = value.map(str::trim).filter(|v| !v.is_empty())?;
    let with_zone = if value.ends_with('Z') || value.contains('+') {
        value.to_owned()
    } else {
        format!("{value}Z")
    };
    time_field(field, Some(&with_zone), errors)
}

/// The event identity WooCommerce lacks: one order state is one event.
/// The modification time has whole seconds, and two states can be saved
/// in one second, so the body's digest is part of the identity: a retry
/// (the same bytes) is a duplicate, a different body never is.
pub fn event_id(body: &bytes::Bytes) -> Option<String> {
    use sha2::Digest as _;
    let value: Json = serde_json::from_slice(body).ok()?;
    let id = id_text(value.get("id")?)?;
    let modified = value
        .get("date_modified_gmt")
        .and_then(Json::as_str)
        .unwrap_or("");
    let digest = hex::encode(&sha2::Sha256::digest(body)[..16]);
    Some(format!("{id}@{modified}#{digest}"))
}

/// Maps an order payload; `consent_meta_key` names the meta entry that
/// holds the buyer's email consent, if the shop has one.
pub fn parse_order(
    dto: OrderDto,
    received_at: OffsetDateTime,
    region: Region,
    consent_meta_key: Option<&str>,
) -> Result<Event, ApiError> {
    let mut errors = Vec::new();
    let currency =
        Currency::parse(&dto.currency).map_err(|e| ApiError::invalid("currency", e.to_string()))?;
    let amount = |field: &str, text: Option<&str>, errors: &mut Vec<FieldError>| {
        model::amount(currency, field, text, errors)
    };
    let external_id =
        id_text(&dto.id).ok_or_else(|| ApiError::invalid("id", "the order id is required"))?;
    let lines: Vec<Line> = dto
        .line_items
        .iter()
        .take(model::MAX_LINES + 1)
        .enumerate()
        .map(|(i, l)| {
            let subtotal = amount(
                &format!("line_items[{i}].subtotal"),
                Some(&l.subtotal),
                &mut errors,
            );
            let total = amount(
                &format!("line_items[{i}].total"),
                Some(&l.total),
                &mut errors,
            );
            Line {
                external_id: l.id.as_ref().and_then(id_text),
                sku: model::text(l.sku.as_deref(), 128),
                name: model::text(l.name.as_deref(), 500),
                category: None,
                quantity: l.quantity,
                // WooCommerce's own `price` is a float; the subtotal string
                // divided by the quantity is exact for whole unit prices.
                unit_price: if l.quantity > 0 {
                    subtotal / l.quantity
                } else {
                    subtotal
                },
                total,
                discount: subtotal.saturating_sub(total).max(0),
                tax: amount(
                    &format!("line_items[{i}].total_tax"),
                    l.total_tax.as_deref(),
                    &mut errors,
                ),
            }
        })
        .collect();
    let refunds = dto
        .refunds
        .iter()
        .enumerate()
        .map(|(i, r)| Refund {
            external_id: id_text(&r.id).unwrap_or_default(),
            // Listed as negative amounts ("-10.00").
            amount: amount(&format!("refunds[{i}].total"), Some(&r.total), &mut errors).abs(),
            reason: model::text(r.reason.as_deref(), 500),
            refunded_at: received_at,
        })
        .collect();
    let billing = dto.billing.as_ref();
    let address = billing.map(|b| {
        [&b.state, &b.city, &b.address_1, &b.address_2]
            .into_iter()
            .filter_map(|p| p.as_deref())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let profile = customer_profile(
        &[
            ("email", billing.and_then(|b| b.email.as_deref())),
            ("phone", billing.and_then(|b| b.phone.as_deref())),
            ("family_name", billing.and_then(|b| b.last_name.as_deref())),
            ("given_name", billing.and_then(|b| b.first_name.as_deref())),
            ("company", billing.and_then(|b| b.company.as_deref())),
            ("postal_code", billing.and_then(|b| b.postcode.as_deref())),
            ("address", address.as_deref()),
        ],
        region,
    );
    // Customer 0 is WooCommerce's guest checkout.
    let customer_id = dto
        .customer_id
        .as_ref()
        .and_then(id_text)
        .filter(|id| id != "0");
    let status = dto.status.as_deref().unwrap_or("pending");
    let paid_at = gmt("date_paid_gmt", dto.date_paid_gmt.as_deref(), &mut errors);
    let paid = paid_at.is_some() || matches!(status, "processing" | "completed" | "refunded");
    // `failed` is a failed payment attempt, not a cancellation: the
    // customer may pay again, and a cancellation could not be undone.
    let cancelled = status == "cancelled";
    let placed_at = gmt(
        "date_created_gmt",
        dto.date_created_gmt.as_deref(),
        &mut errors,
    )
    .unwrap_or(received_at);
    let subtotal = lines
        .iter()
        .map(|l: &Line| l.unit_price.saturating_mul(l.quantity))
        .sum();
    let order = Order {
        external_id,
        number: model::text(dto.number.as_deref(), 64),
        currency,
        placed_at,
        updated_at: gmt(
            "date_modified_gmt",
            dto.date_modified_gmt.as_deref(),
            &mut errors,
        ),
        subtotal,
        shipping: amount("shipping_total", dto.shipping_total.as_deref(), &mut errors),
        tax: amount("total_tax", dto.total_tax.as_deref(), &mut errors),
        discount: amount("discount_total", dto.discount_total.as_deref(), &mut errors),
        total: amount("total", Some(&dto.total), &mut errors),
        points_used: 0,
        lines,
        customer: Customer {
            external_id: customer_id,
            profile,
            consents: consent_meta_key
                .and_then(|key| meta_consent(dto.meta_data.as_ref(), key, placed_at))
                .into_iter()
                .collect(),
        },
        paid,
        paid_at: paid_at.or(paid.then_some(placed_at)),
        cancelled,
        cancelled_at: cancelled.then_some(received_at),
        refunds,
    };
    if errors.is_empty() {
        Ok(Event::Order(Box::new(order)))
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Maps a delivery by its `X-WC-Webhook-Topic`.
pub fn parse(
    topic: &str,
    body: &bytes::Bytes,
    received_at: OffsetDateTime,
    region: Region,
    consent_meta_key: Option<&str>,
) -> Result<Event, ApiError> {
    match topic {
        "order.created" | "order.updated" | "order.restored" => parse_order(
            crate::http::parse_json(body)?,
            received_at,
            region,
            consent_meta_key,
        ),
        // A deleted (trashed) order carries only its id; the order and its
        // history stay, as accounting needs them.
        "order.deleted" => Ok(Event::Ignored("deleted orders are kept")),
        _ => Ok(Event::Ignored("topic not handled")),
    }
}
