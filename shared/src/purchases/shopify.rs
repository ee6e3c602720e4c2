//! Shopify's own webhook payloads (REST Admin API order and refund
//! resources): `orders/create`, `orders/paid`, `orders/updated`,
//! `orders/cancelled`, `refunds/create`. Prices are decimal strings in
//! the shop's currency; ids are integers.

use super::kizuna_format::{customer_profile, time_field};
use super::model::{self, Customer, Event, Line, Order, Refund};
use crate::error::{ApiError, FieldError};
use crate::money::Currency;
use crate::phone::Region;
use serde::Deserialize;
use serde_json::Value as Json;
use time::OffsetDateTime;

/// Shopify ids are integers; some apps send them as strings.
pub fn id_text(value: &Json) -> Option<String> {
    match value {
        Json::Number(n) => Some(n.to_string()),
        Json::String(s) if !s.trim().is_empty() => Some(s.trim().chars().take(128).collect()),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
pub struct OrderDto {
    id: Json,
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    currency: String,
    created_at: Option<String>,
    processed_at: Option<String>,
    updated_at: Option<String>,
    cancelled_at: Option<String>,
    financial_status: Option<String>,
    subtotal_price: Option<String>,
    total_price: String,
    total_tax: Option<String>,
    total_discounts: Option<String>,
    total_shipping_price_set: Option<PriceSet>,
    #[serde(default)]
    line_items: Vec<LineDto>,
    customer: Option<CustomerDto>,
    billing_address: Option<AddressDto>,
    #[serde(default)]
    refunds: Vec<RefundDto>,
    /// Orders placed in test mode (Bogus Gateway) are not sales.
    #[serde(default)]
    test: bool,
}

#[derive(Debug, Deserialize)]
struct PriceSet {
    shop_money: Money,
}

#[derive(Debug, Deserialize)]
struct Money {
    amount: String,
}

#[derive(Debug, Deserialize)]
struct LineDto {
    id: Option<Json>,
    sku: Option<String>,
    title: Option<String>,
    name: Option<String>,
    product_type: Option<String>,
    quantity: i64,
    price: String,
    total_discount: Option<String>,
    #[serde(default)]
    tax_lines: Vec<TaxLine>,
}

#[derive(Debug, Deserialize)]
struct TaxLine {
    price: String,
}

#[derive(Debug, Deserialize)]
struct CustomerDto {
    id: Option<Json>,
    email: Option<String>,
    phone: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AddressDto {
    phone: Option<String>,
    zip: Option<String>,
    company: Option<String>,
    address1: Option<String>,
    address2: Option<String>,
    city: Option<String>,
    province: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RefundDto {
    id: Json,
    order_id: Option<Json>,
    created_at: Option<String>,
    note: Option<String>,
    #[serde(default)]
    transactions: Vec<TransactionDto>,
}

#[derive(Debug, Deserialize)]
struct TransactionDto {
    amount: String,
    kind: Option<String>,
    status: Option<String>,
    currency: Option<String>,
}

/// The money a refund returned: its successful `refund` transactions.
fn refund_amount(
    currency: Currency,
    dto: &RefundDto,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> i64 {
    dto.transactions
        .iter()
        .filter(|t| t.kind.as_deref().unwrap_or("refund") == "refund")
        .filter(|t| matches!(t.status.as_deref(), None | Some("success")))
        .map(|t| model::amount(currency, field, Some(&t.amount), errors))
        .sum()
}

fn refund(
    currency: Currency,
    dto: &RefundDto,
    index: usize,
    received_at: OffsetDateTime,
    errors: &mut Vec<FieldError>,
) -> Option<Refund> {
    let field = format!("refunds[{index}]");
    let amount = refund_amount(
        currency,
        dto,
        &format!("{field}.transactions.amount"),
        errors,
    );
    // A refund that only restocked items returned no money.
    (amount > 0).then(|| Refund {
        external_id: id_text(&dto.id).unwrap_or_default(),
        amount,
        reason: model::text(dto.note.as_deref(), 500),
        refunded_at: time_field(
            &format!("{field}.created_at"),
            dto.created_at.as_deref(),
            errors,
        )
        .unwrap_or(received_at),
    })
}

/// Maps an order payload (any `orders/*` topic: the body says it all).
pub fn parse_order(
    dto: OrderDto,
    received_at: OffsetDateTime,
    region: Region,
) -> Result<Event, ApiError> {
    if dto.test {
        return Ok(Event::Ignored("test order"));
    }
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
            let unit_price = amount(
                &format!("line_items[{i}].price"),
                Some(&l.price),
                &mut errors,
            );
            let discount = amount(
                &format!("line_items[{i}].total_discount"),
                l.total_discount.as_deref(),
                &mut errors,
            );
            let tax = l
                .tax_lines
                .iter()
                .map(|t| {
                    amount(
                        &format!("line_items[{i}].tax_lines.price"),
                        Some(&t.price),
                        &mut errors,
                    )
                })
                .sum();
            Line {
                external_id: l.id.as_ref().and_then(id_text),
                sku: model::text(l.sku.as_deref(), 128),
                name: model::text(l.name.as_deref().or(l.title.as_deref()), 500),
                category: model::text(l.product_type.as_deref(), 128),
                quantity: l.quantity,
                unit_price,
                total: unit_price
                    .saturating_mul(l.quantity)
                    .saturating_sub(discount),
                discount,
                tax,
            }
        })
        .collect();
    let refunds = dto
        .refunds
        .iter()
        .enumerate()
        .filter_map(|(i, r)| refund(currency, r, i, received_at, &mut errors))
        .collect();
    let customer = dto.customer.as_ref();
    let billing = dto.billing_address.as_ref();
    let address = billing.map(|b| {
        [&b.province, &b.city, &b.address1, &b.address2]
            .into_iter()
            .filter_map(|p| p.as_deref())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let profile = customer_profile(
        &[
            (
                "email",
                dto.email
                    .as_deref()
                    .or(customer.and_then(|c| c.email.as_deref())),
            ),
            (
                "phone",
                dto.phone
                    .as_deref()
                    .or(customer.and_then(|c| c.phone.as_deref()))
                    .or(billing.and_then(|b| b.phone.as_deref())),
            ),
            ("family_name", customer.and_then(|c| c.last_name.as_deref())),
            ("given_name", customer.and_then(|c| c.first_name.as_deref())),
            ("company", billing.and_then(|b| b.company.as_deref())),
            ("postal_code", billing.and_then(|b| b.zip.as_deref())),
            ("address", address.as_deref()),
        ],
        region,
    );
    // Shopify signs the body only: every fact comes from it, never from
    // the topic header, so a captured body replayed under another topic
    // says no more than it said the first time.
    let financial = dto.financial_status.as_deref().unwrap_or("");
    let paid = matches!(financial, "paid" | "partially_refunded" | "refunded");
    let cancelled_at = time_field("cancelled_at", dto.cancelled_at.as_deref(), &mut errors);
    let cancelled = cancelled_at.is_some();
    let placed_at = time_field("processed_at", dto.processed_at.as_deref(), &mut errors)
        .or(time_field(
            "created_at",
            dto.created_at.as_deref(),
            &mut errors,
        ))
        .unwrap_or(received_at);
    let order = Order {
        external_id,
        number: model::text(dto.name.as_deref(), 64),
        currency,
        placed_at,
        updated_at: time_field("updated_at", dto.updated_at.as_deref(), &mut errors),
        subtotal: amount("subtotal_price", dto.subtotal_price.as_deref(), &mut errors),
        shipping: amount(
            "total_shipping_price_set",
            dto.total_shipping_price_set
                .as_ref()
                .map(|s| s.shop_money.amount.as_str()),
            &mut errors,
        ),
        tax: amount("total_tax", dto.total_tax.as_deref(), &mut errors),
        discount: amount(
            "total_discounts",
            dto.total_discounts.as_deref(),
            &mut errors,
        ),
        total: amount("total_price", Some(&dto.total_price), &mut errors),
        points_used: 0,
        lines,
        customer: Customer {
            external_id: customer.and_then(|c| c.id.as_ref()).and_then(id_text),
            profile,
        },
        paid,
        paid_at: paid.then_some(placed_at),
        cancelled,
        cancelled_at,
        refunds,
    };
    if errors.is_empty() {
        Ok(Event::Order(Box::new(order)))
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Maps a `refunds/create` payload.
pub fn parse_refund(
    dto: RefundDto,
    shop_currency: Currency,
    received_at: OffsetDateTime,
) -> Result<Event, ApiError> {
    let order_external_id = dto
        .order_id
        .as_ref()
        .and_then(id_text)
        .ok_or_else(|| ApiError::invalid("order_id", "the refund's order id is required"))?;
    let currency = match dto.transactions.iter().find_map(|t| t.currency.as_deref()) {
        Some(code) => Currency::parse(code)
            .map_err(|e| ApiError::invalid("transactions.currency", e.to_string()))?,
        None => shop_currency,
    };
    let mut errors = Vec::new();
    if id_text(&dto.id).is_none() {
        errors.push(FieldError::new("id", "the refund id is required"));
    }
    let refund = refund(currency, &dto, 0, received_at, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    match refund {
        Some(refund) => Ok(Event::Refund {
            order_external_id,
            currency,
            refund,
        }),
        None => Ok(Event::Ignored("refund returned no money")),
    }
}

/// Maps a delivery; `X-Shopify-Topic` (unsigned) only picks the parser.
pub fn parse(
    topic: &str,
    body: &bytes::Bytes,
    shop_currency: Currency,
    received_at: OffsetDateTime,
    region: Region,
) -> Result<Event, ApiError> {
    match topic {
        "orders/create" | "orders/paid" | "orders/updated" | "orders/cancelled" => {
            parse_order(crate::http::parse_json(body)?, received_at, region)
        }
        "refunds/create" => {
            parse_refund(crate::http::parse_json(body)?, shop_currency, received_at)
        }
        _ => Ok(Event::Ignored("topic not handled")),
    }
}
