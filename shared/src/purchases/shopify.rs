//! Shopify's own webhook payloads (REST Admin API order and refund
//! resources): `orders/create`, `orders/paid`, `orders/updated`,
//! `orders/cancelled`, `refunds/create`. Ids are integers.
//!
//! Money, as Shopify sends it: an order's `currency` is the shop's, and
//! its plain amounts and every `*_set.shop_money` are in it, while
//! `presentment_money` is what the buyer saw. Kizuna reads the plain
//! amount, else `shop_money`, and never `presentment_money` as shop money. A line's discount is the sum of its
//! `discount_allocations` (codes and automatic discounts leave
//! `total_discount` at zero). A refund's transactions are in the buyer's
//! currency, so for a multi-currency order the shop amount comes from the
//! refund's own sets (lines, taxes, adjustments), chosen to match what the
//! transactions paid out.
//!
//! Marketing consent: the customer's `email_marketing_consent` and
//! `sms_marketing_consent` (else, for email, the order's
//! `buyer_accepts_marketing`), recorded by `checkout_consent` with the
//! source `shopify_checkout`.

use super::kizuna_format::{customer_profile, time_field};
use super::model::{self, Customer, Event, Line, Order, Refund, ShopConsent};
use crate::consent::{Channel, Status};
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
    subtotal_price_set: Option<PriceSet>,
    total_price: String,
    total_price_set: Option<PriceSet>,
    total_tax: Option<String>,
    total_tax_set: Option<PriceSet>,
    total_discounts: Option<String>,
    total_discounts_set: Option<PriceSet>,
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
    /// Whether the buyer ticked "email me" at checkout: read only when
    /// the customer carries no `email_marketing_consent` (API 2025-01 and
    /// later leave it out of order webhooks). Any JSON, so that a value
    /// of another type is ignored rather than refusing the order.
    buyer_accepts_marketing: Option<Json>,
}

/// An amount in the shop's currency and in the buyer's.
#[derive(Debug, Deserialize)]
struct PriceSet {
    shop_money: Money,
    presentment_money: Option<Money>,
}

#[derive(Debug, Deserialize)]
struct Money {
    /// A decimal string; refunds also send JSON numbers.
    amount: Json,
    currency_code: Option<String>,
}

impl Money {
    fn text(&self) -> Option<String> {
        match &self.amount {
            Json::String(s) => Some(s.clone()),
            Json::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// An amount in shop money: the plain `field`, which Shopify documents as
/// shop money on orders, else the `shop_money` of `{field}_set`.
fn shop_amount(
    currency: Currency,
    field: &str,
    set: Option<&PriceSet>,
    plain: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> i64 {
    match (plain.map(str::trim).filter(|p| !p.is_empty()), set) {
        (Some(plain), _) => model::amount(currency, field, Some(plain), errors),
        (None, Some(set)) => model::amount(
            currency,
            &format!("{field}_set"),
            set.shop_money.text().as_deref(),
            errors,
        ),
        (None, None) => 0,
    }
}

#[derive(Debug, Deserialize)]
struct DiscountAllocationDto {
    amount: Option<String>,
    amount_set: Option<PriceSet>,
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
    price_set: Option<PriceSet>,
    total_discount: Option<String>,
    #[serde(default)]
    discount_allocations: Vec<DiscountAllocationDto>,
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
    /// `{state, opt_in_level, consent_updated_at}`; any JSON, read by
    /// [`marketing_consent`], so that an odd value is ignored.
    email_marketing_consent: Option<Json>,
    /// `{state, opt_in_level, consent_updated_at, consent_collected_from}`.
    sms_marketing_consent: Option<Json>,
}

/// The source Shopify's consent is recorded with.
pub const CONSENT_SOURCE: &str = "shopify_checkout";

/// A customer's `email_marketing_consent` or `sms_marketing_consent`:
/// `subscribed` is a grant and `unsubscribed` a withdrawal, at its
/// `consent_updated_at` (the order's time when it has none). Any other
/// state (`not_subscribed`, `pending` — a double opt-in not yet
/// confirmed —, `redacted`, `invalid`, or one Shopify adds later), a
/// value that is not an object, or a time that does not parse says
/// nothing Kizuna may act on: it is ignored, and never fails the order.
fn marketing_consent(
    channel: Channel,
    value: Option<&Json>,
    order_time: OffsetDateTime,
) -> Option<ShopConsent> {
    let value = value?.as_object()?;
    let state = value.get("state")?.as_str()?.trim().to_ascii_lowercase();
    let status = match state.as_str() {
        "subscribed" => Status::Granted,
        "unsubscribed" => Status::Withdrawn,
        _ => return None,
    };
    let occurred_at = match value.get("consent_updated_at") {
        None | Some(Json::Null) => order_time,
        Some(Json::String(text)) if text.trim().is_empty() => order_time,
        Some(Json::String(text)) => crate::timestamp::parse(text)?,
        Some(_) => return None,
    };
    Some(ShopConsent {
        channel,
        status,
        occurred_at,
        opt_in_level: model::text(value.get("opt_in_level").and_then(Json::as_str), 64),
        source: CONSENT_SOURCE.to_owned(),
    })
}

/// The consents an order reports: the customer's email consent, else a
/// ticked `buyer_accepts_marketing` (a grant at the order's time; an
/// unticked box withdraws nothing), and the customer's SMS consent.
fn order_consents(
    dto: &OrderDto,
    customer: Option<&CustomerDto>,
    order_time: OffsetDateTime,
) -> Vec<ShopConsent> {
    let mut consents = Vec::new();
    match customer.and_then(|c| c.email_marketing_consent.as_ref().filter(|v| !v.is_null())) {
        Some(email) => consents.extend(marketing_consent(Channel::Email, Some(email), order_time)),
        None if dto.buyer_accepts_marketing == Some(Json::Bool(true)) => {
            consents.push(ShopConsent {
                channel: Channel::Email,
                status: Status::Granted,
                occurred_at: order_time,
                opt_in_level: None,
                source: CONSENT_SOURCE.to_owned(),
            });
        }
        None => {}
    }
    consents.extend(marketing_consent(
        Channel::Sms,
        customer.and_then(|c| c.sms_marketing_consent.as_ref()),
        order_time,
    ));
    consents
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
    #[serde(default)]
    refund_line_items: Vec<RefundLineDto>,
    #[serde(default)]
    order_adjustments: Vec<AdjustmentDto>,
    /// API 2024-10 and later; the same shipping is also an adjustment.
    #[serde(default)]
    refund_shipping_lines: Vec<RefundShippingDto>,
}

#[derive(Debug, Deserialize)]
struct RefundLineDto {
    subtotal_set: Option<PriceSet>,
    total_tax_set: Option<PriceSet>,
}

#[derive(Debug, Deserialize)]
struct AdjustmentDto {
    kind: Option<String>,
    amount_set: Option<PriceSet>,
    tax_amount_set: Option<PriceSet>,
}

#[derive(Debug, Deserialize)]
struct RefundShippingDto {
    subtotal_amount_set: Option<PriceSet>,
}

#[derive(Debug, Deserialize)]
struct TransactionDto {
    amount: String,
    kind: Option<String>,
    status: Option<String>,
    currency: Option<String>,
}

/// A refund's money by part, in the shop's and the buyer's currency
/// (minor units). Adjustments are negative in Shopify's payload (money
/// going back); here every part is what the customer got back.
#[derive(Debug, Default)]
struct RefundParts {
    shop_without_tax: i64,
    shop_tax: i64,
    buyer_without_tax: i64,
    buyer_tax: i64,
    buyer_currency: Option<String>,
    any: bool,
}

impl RefundParts {
    fn add(
        &mut self,
        shop: Currency,
        field: &str,
        set: Option<&PriceSet>,
        sign: i64,
        is_tax: bool,
        errors: &mut Vec<FieldError>,
    ) {
        let Some(set) = set else { return };
        self.any = true;
        // A refund names no currency of its own: its sets must be in the
        // shop's, or it is not the shop's money to book.
        if let Some(code) = set.shop_money.currency_code.as_deref()
            && !code.eq_ignore_ascii_case(shop.code())
        {
            errors.push(FieldError::new(
                field,
                format!("shop money is in {code}, not the shop's {}", shop.code()),
            ));
            return;
        }
        let shop_minor =
            model::amount(shop, field, set.shop_money.text().as_deref(), errors) * sign;
        let buyer = set.presentment_money.as_ref().and_then(|m| {
            let code = m.currency_code.as_deref()?;
            Some((Currency::parse(code).ok()?, code.to_ascii_uppercase(), m))
        });
        let buyer_minor = match buyer {
            Some((currency, code, money)) => {
                if self.buyer_currency.get_or_insert_with(|| code.clone()) != &code {
                    errors.push(FieldError::new(field, "mixed presentment currencies"));
                }
                model::amount(currency, field, money.text().as_deref(), errors) * sign
            }
            None => 0,
        };
        if is_tax {
            self.shop_tax += shop_minor;
            self.buyer_tax += buyer_minor;
        } else {
            self.shop_without_tax += shop_minor;
            self.buyer_without_tax += buyer_minor;
        }
    }

    fn of(shop: Currency, dto: &RefundDto, field: &str, errors: &mut Vec<FieldError>) -> Self {
        let mut parts = RefundParts::default();
        for (i, line) in dto.refund_line_items.iter().enumerate() {
            let f = format!("{field}.refund_line_items[{i}]");
            parts.add(
                shop,
                &format!("{f}.subtotal_set"),
                line.subtotal_set.as_ref(),
                1,
                false,
                errors,
            );
            parts.add(
                shop,
                &format!("{f}.total_tax_set"),
                line.total_tax_set.as_ref(),
                1,
                true,
                errors,
            );
        }
        let mut shipping_adjusted = false;
        for (i, adjustment) in dto.order_adjustments.iter().enumerate() {
            let f = format!("{field}.order_adjustments[{i}]");
            shipping_adjusted |= adjustment.kind.as_deref() == Some("shipping_refund");
            parts.add(
                shop,
                &format!("{f}.amount_set"),
                adjustment.amount_set.as_ref(),
                -1,
                false,
                errors,
            );
            parts.add(
                shop,
                &format!("{f}.tax_amount_set"),
                adjustment.tax_amount_set.as_ref(),
                -1,
                true,
                errors,
            );
        }
        if !shipping_adjusted {
            for (i, shipping) in dto.refund_shipping_lines.iter().enumerate() {
                let f = format!("{field}.refund_shipping_lines[{i}].subtotal_amount_set");
                parts.add(
                    shop,
                    &f,
                    shipping.subtotal_amount_set.as_ref(),
                    1,
                    false,
                    errors,
                );
            }
        }
        parts
    }
}

/// The money a refund returned, in the shop's currency: its successful
/// `refund` transactions when they are in the shop's currency (or name
/// none and nothing says otherwise); for a buyer in another currency, the
/// refund's shop-money parts, with or without their taxes, whichever adds
/// up to what the transactions paid in the buyer's currency (taxes are
/// inside the line subtotals in a tax-inclusive shop, beside them
/// otherwise). If neither does, the transactions are converted at the
/// rate the parts imply, rounded to the nearest minor unit.
fn refund_amount(
    shop: Currency,
    dto: &RefundDto,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> i64 {
    let paid_out: Vec<&TransactionDto> = dto
        .transactions
        .iter()
        .filter(|t| t.kind.as_deref().unwrap_or("refund") == "refund")
        .filter(|t| matches!(t.status.as_deref(), None | Some("success")))
        .collect();
    let tx_field = format!("{field}.transactions.currency");
    let mut tx_currency: Option<String> = None;
    for t in &paid_out {
        if let Some(code) = t.currency.as_deref().map(str::to_ascii_uppercase)
            && tx_currency.get_or_insert_with(|| code.clone()) != &code
        {
            errors.push(FieldError::new(
                &tx_field,
                "transactions in several currencies",
            ));
            return 0;
        }
    }
    let parts = RefundParts::of(shop, dto, field, errors);
    let in_shop_currency = match tx_currency.as_deref() {
        Some(code) => code == shop.code(),
        None => true,
    };
    let sum_in = |currency: Currency, errors: &mut Vec<FieldError>| -> i64 {
        paid_out
            .iter()
            .map(|t| {
                model::amount(
                    currency,
                    &format!("{field}.transactions.amount"),
                    Some(&t.amount),
                    errors,
                )
            })
            .sum()
    };
    if in_shop_currency {
        return sum_in(shop, errors);
    }
    let code = tx_currency.unwrap_or_default();
    let Ok(buyer) = Currency::parse(&code) else {
        errors.push(FieldError::new(
            &tx_field,
            format!("unknown currency {code}"),
        ));
        return 0;
    };
    if !parts.any {
        errors.push(FieldError::new(
            &tx_field,
            format!(
                "the refund was paid in {code} and gives no {} amounts to book",
                shop.code()
            ),
        ));
        return 0;
    }
    if parts.buyer_currency.as_deref().is_some_and(|c| c != code) {
        errors.push(FieldError::new(
            &tx_field,
            "the transactions and the refund's presentment money differ in currency",
        ));
        return 0;
    }
    let paid = sum_in(buyer, errors);
    let with_tax = (
        parts.buyer_without_tax + parts.buyer_tax,
        parts.shop_without_tax + parts.shop_tax,
    );
    let without_tax = (parts.buyer_without_tax, parts.shop_without_tax);
    if paid == with_tax.0 {
        with_tax.1
    } else if paid == without_tax.0 {
        without_tax.1
    } else if with_tax.0 != 0 {
        let scaled = i128::from(paid) * i128::from(with_tax.1);
        let divisor = i128::from(with_tax.0);
        i64::try_from((2 * scaled + divisor.signum() * divisor) / (2 * divisor)).unwrap_or(0)
    } else {
        errors.push(FieldError::new(
            &tx_field,
            format!("no {} amount matches the refund", shop.code()),
        ));
        0
    }
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
            let unit_price = shop_amount(
                currency,
                &format!("line_items[{i}].price"),
                l.price_set.as_ref(),
                Some(&l.price),
                &mut errors,
            );
            // Codes and automatic discounts are allocations; only draft
            // orders, scripts and the API set `total_discount` instead.
            let discount = if l.discount_allocations.is_empty() {
                amount(
                    &format!("line_items[{i}].total_discount"),
                    l.total_discount.as_deref(),
                    &mut errors,
                )
            } else {
                l.discount_allocations
                    .iter()
                    .enumerate()
                    .map(|(j, a)| {
                        shop_amount(
                            currency,
                            &format!("line_items[{i}].discount_allocations[{j}].amount"),
                            a.amount_set.as_ref(),
                            a.amount.as_deref(),
                            &mut errors,
                        )
                    })
                    .sum()
            };
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
    let consents = order_consents(&dto, customer, placed_at);
    let order = Order {
        external_id,
        number: model::text(dto.name.as_deref(), 64),
        currency,
        placed_at,
        updated_at: time_field("updated_at", dto.updated_at.as_deref(), &mut errors),
        subtotal: shop_amount(
            currency,
            "subtotal_price",
            dto.subtotal_price_set.as_ref(),
            dto.subtotal_price.as_deref(),
            &mut errors,
        ),
        shipping: shop_amount(
            currency,
            "total_shipping_price",
            dto.total_shipping_price_set.as_ref(),
            None,
            &mut errors,
        ),
        tax: shop_amount(
            currency,
            "total_tax",
            dto.total_tax_set.as_ref(),
            dto.total_tax.as_deref(),
            &mut errors,
        ),
        discount: shop_amount(
            currency,
            "total_discounts",
            dto.total_discounts_set.as_ref(),
            dto.total_discounts.as_deref(),
            &mut errors,
        ),
        total: shop_amount(
            currency,
            "total_price",
            dto.total_price_set.as_ref(),
            Some(&dto.total_price),
            &mut errors,
        ),
        points_used: 0,
        lines,
        customer: Customer {
            external_id: customer.and_then(|c| c.id.as_ref()).and_then(id_text),
            profile,
            consents,
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
    // Booked in the shop's currency whatever the buyer paid in.
    let currency = shop_currency;
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
