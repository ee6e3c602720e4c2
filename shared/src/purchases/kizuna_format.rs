//! Kizuna's own order event format, for any shop or POS, delivered per
//! the Standard Webhooks spec:
//!
//! ```json
//! {"type": "order.paid", "timestamp": "2026-11-22T06:00:00Z",
//!  "data": {"id": "1001", "number": "#1001", "currency": "JPY",
//!           "placed_at": "2026-11-22T05:59:00Z", "updated_at": "…",
//!           "customer": {"id": "C-1", "email": "…", "phone": "…", "name": "…",
//!                        "consents": {"email": {"status": "granted",
//!                                               "occurred_at": "2026-11-22T05:58:00Z",
//!                                               "source": "pos_checkout"}}},
//!           "subtotal": "5000", "shipping": "500", "tax": "500", "discount": "0",
//!           "total": "6000", "points_used": 0,
//!           "lines": [{"id": "L1", "sku": "TEA-01", "name": "Green tea", "category": "tea",
//!                      "quantity": 2, "unit_price": "2500", "total": "5000",
//!                      "discount": "0", "tax": "500"}],
//!           "refunds": [{"id": "R1", "amount": "1000", "reason": "damaged",
//!                        "refunded_at": "…"}]}}
//! ```
//!
//! `customer.consents` (optional) holds, per channel (`email`, `sms`,
//! `phone`, `post`), the buyer's consent as the shop recorded it:
//! `status` `granted` or `withdrawn` (required), `occurred_at` (when the
//! person gave or withdrew it; the order's `placed_at` when absent),
//! `source` (where, default `checkout`) and `opt_in_level`. Kizuna's own
//! format is strict: an unknown channel or status is a 422, unlike the
//! states of Shopify and WooCommerce, which Kizuna ignores when it does
//! not know them.
//!
//! Amounts are decimal strings in the order's currency. Types:
//! `order.created` / `order.updated` (details), `order.paid`,
//! `order.cancelled`, `order.refunded` (with `data.refunds`). Other types
//! are acknowledged and ignored, so senders can add types safely.

use super::model::{self, Customer, Event, Line, Order, Refund, ShopConsent};
use crate::consent::{Channel, Status};
use crate::error::{ApiError, FieldError};
use crate::money::Currency;
use crate::phone::Region;
use crate::profile::{self, Profile};
use crate::timestamp;
use serde::Deserialize;
use std::collections::BTreeMap;
use time::OffsetDateTime;

#[derive(Debug, Deserialize)]
pub struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Option<OrderDto>,
}

#[derive(Debug, Deserialize)]
pub struct OrderDto {
    id: String,
    number: Option<String>,
    currency: String,
    placed_at: Option<String>,
    updated_at: Option<String>,
    #[serde(default)]
    customer: Option<CustomerDto>,
    subtotal: Option<String>,
    shipping: Option<String>,
    tax: Option<String>,
    discount: Option<String>,
    total: String,
    #[serde(default)]
    points_used: i64,
    #[serde(default)]
    lines: Vec<LineDto>,
    #[serde(default)]
    refunds: Vec<RefundDto>,
    paid_at: Option<String>,
    cancelled_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CustomerDto {
    id: Option<String>,
    /// Checked field by field by [`consents`], so errors name the field.
    consents: Option<serde_json::Value>,
    #[serde(flatten)]
    fields: BTreeMap<String, serde_json::Value>,
}

/// The source a consent without its own is recorded with.
pub const DEFAULT_CONSENT_SOURCE: &str = "checkout";

/// `customer.consents`: `{"<channel>": {"status", "occurred_at",
/// "source", "opt_in_level"}}`. Errors name the field.
fn consents(
    value: Option<&serde_json::Value>,
    order_time: OffsetDateTime,
    errors: &mut Vec<FieldError>,
) -> Vec<ShopConsent> {
    use serde_json::Value as Json;
    let mut out = Vec::new();
    let object = match value {
        None | Some(Json::Null) => return out,
        Some(Json::Object(object)) => object,
        Some(_) => {
            errors.push(FieldError::new(
                "customer.consents",
                "an object of channel (email, sms, phone, post) to {status, occurred_at, source}",
            ));
            return out;
        }
    };
    for (name, consent) in object {
        let field = format!("customer.consents.{name}");
        let Ok(channel) = Channel::try_from(name.as_str()) else {
            errors.push(FieldError::new(
                &field,
                "a channel: one of email, sms, phone, post",
            ));
            continue;
        };
        let Some(consent) = consent.as_object() else {
            errors.push(FieldError::new(
                &field,
                "an object {status, occurred_at, source}",
            ));
            continue;
        };
        let status = match consent.get("status").and_then(Json::as_str) {
            Some("granted") => Status::Granted,
            Some("withdrawn") => Status::Withdrawn,
            _ => {
                errors.push(FieldError::new(
                    format!("{field}.status"),
                    "one of granted, withdrawn",
                ));
                continue;
            }
        };
        let mut text = |key: &str, max: usize| -> Option<String> {
            match consent.get(key) {
                None | Some(Json::Null) => None,
                Some(Json::String(v)) => {
                    profile::check_text(&format!("{field}.{key}"), v, max, errors)
                }
                Some(_) => {
                    errors.push(FieldError::new(format!("{field}.{key}"), "a string"));
                    None
                }
            }
        };
        let source = text("source", 64);
        let opt_in_level = text("opt_in_level", 64);
        let occurred_at = match consent.get("occurred_at") {
            None | Some(Json::Null) => Some(order_time),
            Some(Json::String(v)) => time_field(&format!("{field}.occurred_at"), Some(v), errors),
            Some(_) => {
                errors.push(FieldError::new(
                    format!("{field}.occurred_at"),
                    "an RFC 3339 timestamp",
                ));
                None
            }
        };
        if let Some(occurred_at) = occurred_at {
            out.push(ShopConsent {
                channel,
                status,
                occurred_at,
                opt_in_level,
                source: source.unwrap_or_else(|| DEFAULT_CONSENT_SOURCE.to_owned()),
            });
        }
    }
    out
}

#[derive(Debug, Deserialize)]
struct LineDto {
    id: Option<String>,
    sku: Option<String>,
    name: Option<String>,
    category: Option<String>,
    quantity: i64,
    unit_price: String,
    total: Option<String>,
    discount: Option<String>,
    tax: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RefundDto {
    id: String,
    amount: String,
    reason: Option<String>,
    refunded_at: Option<String>,
}

/// A timestamp field, naming it when it does not parse.
pub fn time_field(
    field: &str,
    value: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Option<OffsetDateTime> {
    let value = value?.trim();
    if value.is_empty() {
        return None;
    }
    let parsed = timestamp::parse(value);
    if parsed.is_none() {
        errors.push(FieldError::new(field, "an RFC 3339 timestamp"));
    }
    parsed
}

/// Customer fields from a payload. Invalid contact details are dropped
/// rather than refusing a sale that has already happened.
pub fn customer_profile(fields: &[(&str, Option<&str>)], region: Region) -> Profile {
    let mut profile = Profile::default();
    let mut ignored = Vec::new();
    for (field, value) in fields {
        if let Some(value) = value {
            profile::parse_field(&mut profile, field, value, region, &mut ignored);
        }
    }
    profile.fill_display_name();
    profile
}

pub fn parse(
    envelope: Envelope,
    received_at: OffsetDateTime,
    region: Region,
) -> Result<Event, ApiError> {
    let (paid, cancelled, refunded) = match envelope.kind.as_str() {
        "order.created" | "order.updated" => (false, false, false),
        "order.paid" => (true, false, false),
        "order.cancelled" => (false, true, false),
        "order.refunded" => (true, false, true),
        _ => return Ok(Event::Ignored("event type not handled")),
    };
    let dto = envelope
        .data
        .ok_or_else(|| ApiError::invalid("data", "the order is required"))?;
    let mut errors = Vec::new();
    let currency =
        Currency::parse(&dto.currency).map_err(|e| ApiError::invalid("currency", e.to_string()))?;
    let amount = |field: &str, text: Option<&str>, errors: &mut Vec<FieldError>| {
        model::amount(currency, field, text, errors)
    };
    let lines = dto
        .lines
        .iter()
        .take(model::MAX_LINES + 1)
        .enumerate()
        .map(|(i, l)| {
            let unit_price = amount(
                &format!("lines[{i}].unit_price"),
                Some(&l.unit_price),
                &mut errors,
            );
            let discount = amount(
                &format!("lines[{i}].discount"),
                l.discount.as_deref(),
                &mut errors,
            );
            let total = match l.total.as_deref() {
                Some(t) => amount(&format!("lines[{i}].total"), Some(t), &mut errors),
                None => unit_price
                    .saturating_mul(l.quantity)
                    .saturating_sub(discount),
            };
            Line {
                external_id: model::text(l.id.as_deref(), 128),
                sku: model::text(l.sku.as_deref(), 128),
                name: model::text(l.name.as_deref(), 500),
                category: model::text(l.category.as_deref(), 128),
                quantity: l.quantity,
                unit_price,
                total,
                discount,
                tax: amount(&format!("lines[{i}].tax"), l.tax.as_deref(), &mut errors),
            }
        })
        .collect::<Vec<_>>();
    let refunds = dto
        .refunds
        .iter()
        .enumerate()
        .map(|(i, r)| Refund {
            external_id: r.id.chars().take(128).collect(),
            amount: amount(
                &format!("refunds[{i}].amount"),
                Some(&r.amount),
                &mut errors,
            ),
            reason: model::text(r.reason.as_deref(), 500),
            refunded_at: time_field(
                &format!("refunds[{i}].refunded_at"),
                r.refunded_at.as_deref(),
                &mut errors,
            )
            .unwrap_or(received_at),
        })
        .collect::<Vec<_>>();
    if refunded && refunds.is_empty() {
        errors.push(FieldError::new(
            "refunds",
            "order.refunded needs at least one refund",
        ));
    }
    let placed_at =
        time_field("placed_at", dto.placed_at.as_deref(), &mut errors).unwrap_or(received_at);
    let customer = dto.customer.as_ref().map(|c| {
        let get = |k: &str| c.fields.get(k).and_then(|v| v.as_str());
        let fields: Vec<(&str, Option<&str>)> = [
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
        ]
        .into_iter()
        .map(|k| (k, get(k)))
        .collect();
        Customer {
            external_id: model::text(c.id.as_deref(), 128),
            profile: customer_profile(&fields, region),
            consents: consents(c.consents.as_ref(), placed_at, &mut errors),
        }
    });
    let order = Order {
        external_id: dto.id.trim().to_owned(),
        number: model::text(dto.number.as_deref(), 64),
        currency,
        placed_at,
        updated_at: time_field("updated_at", dto.updated_at.as_deref(), &mut errors),
        subtotal: match dto.subtotal.as_deref() {
            Some(s) => amount("subtotal", Some(s), &mut errors),
            None => lines.iter().map(|l| l.total).sum(),
        },
        shipping: amount("shipping", dto.shipping.as_deref(), &mut errors),
        tax: amount("tax", dto.tax.as_deref(), &mut errors),
        discount: amount("discount", dto.discount.as_deref(), &mut errors),
        total: amount("total", Some(&dto.total), &mut errors),
        points_used: dto.points_used,
        lines,
        customer: customer.unwrap_or_default(),
        paid: paid || dto.paid_at.is_some(),
        paid_at: time_field("paid_at", dto.paid_at.as_deref(), &mut errors)
            .or(paid.then_some(received_at)),
        cancelled: cancelled || dto.cancelled_at.is_some(),
        cancelled_at: time_field("cancelled_at", dto.cancelled_at.as_deref(), &mut errors)
            .or(cancelled.then_some(received_at)),
        refunds,
    };
    if errors.is_empty() {
        Ok(Event::Order(Box::new(order)))
    } else {
        Err(ApiError::Validation(errors))
    }
}
