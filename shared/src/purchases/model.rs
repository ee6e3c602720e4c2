//! The source-independent shape of what shops send, and the checks every
//! event passes before anything is stored.

use crate::consent::{Channel, Status};
use crate::error::{ApiError, FieldError};
use crate::money::Currency;
use crate::profile::Profile;
use time::OffsetDateTime;

/// Where an order came from. One order per (source, external id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Kizuna's own documented format, signed per Standard Webhooks.
    Kizuna,
    Shopify,
    WooCommerce,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Kizuna, Source::Shopify, Source::WooCommerce];

    /// The source a query names (`kizuna`, `shopify`, `woocommerce`).
    pub fn parse(text: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Kizuna => "kizuna",
            Source::Shopify => "shopify",
            Source::WooCommerce => "woocommerce",
        }
    }
}

/// Order lifecycle as shown to callers; derived, never stored as input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Pending,
    Paid,
    PartiallyRefunded,
    Refunded,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::PartiallyRefunded => "partially_refunded",
            OrderStatus::Refunded => "refunded",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// The status follows from facts that only ever turn on (paid,
    /// cancelled) and from the refunds recorded, so any delivery order
    /// reaches the same status.
    pub fn derive(paid: bool, cancelled: bool, total: i64, refunded: i64) -> OrderStatus {
        if cancelled {
            OrderStatus::Cancelled
        } else if refunded > 0 && refunded >= total {
            OrderStatus::Refunded
        } else if refunded > 0 {
            OrderStatus::PartiallyRefunded
        } else if paid {
            OrderStatus::Paid
        } else {
            OrderStatus::Pending
        }
    }
}

/// Who bought: the shop's customer id, whatever profile came along, and
/// the marketing consents the shop reports for the buyer.
#[derive(Debug, Clone, Default)]
pub struct Customer {
    pub external_id: Option<String>,
    pub profile: Profile,
    pub consents: Vec<ShopConsent>,
}

/// A marketing consent state a shop reports with an order: given at
/// checkout (or elsewhere, as the shop's record says), or withdrawn. A
/// state the shop has that is neither (Shopify's `not_subscribed`,
/// `pending`, an unticked box) is no consent and not mapped at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopConsent {
    pub channel: Channel,
    pub status: Status,
    /// When the person gave or withdrew it, as the shop says; the order's
    /// time when the shop gives none.
    pub occurred_at: OffsetDateTime,
    /// The shop's opt-in level (`single_opt_in`, `confirmed_opt_in`, …).
    pub opt_in_level: Option<String>,
    /// Where: `shopify_checkout`, `woocommerce_checkout`, or what a
    /// Kizuna-format sender names (`checkout` by default).
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub external_id: Option<String>,
    pub sku: Option<String>,
    pub name: Option<String>,
    pub category: Option<String>,
    pub quantity: i64,
    pub unit_price: i64,
    pub total: i64,
    pub discount: i64,
    pub tax: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub external_id: String,
    pub amount: i64,
    pub reason: Option<String>,
    pub refunded_at: OffsetDateTime,
}

/// An order as a source last described it.
#[derive(Debug, Clone)]
pub struct Order {
    pub external_id: String,
    pub number: Option<String>,
    pub currency: Currency,
    pub placed_at: OffsetDateTime,
    /// The source's own modification time, to ignore stale payloads.
    pub updated_at: Option<OffsetDateTime>,
    pub subtotal: i64,
    pub shipping: i64,
    pub tax: i64,
    pub discount: i64,
    pub total: i64,
    pub points_used: i64,
    pub lines: Vec<Line>,
    pub customer: Customer,
    pub paid: bool,
    pub paid_at: Option<OffsetDateTime>,
    pub cancelled: bool,
    pub cancelled_at: Option<OffsetDateTime>,
    pub refunds: Vec<Refund>,
}

/// What one delivery asks Kizuna to do.
#[derive(Debug, Clone)]
pub enum Event {
    Order(Box<Order>),
    /// A refund on its own (Shopify `refunds/create`); the order may not
    /// have arrived yet.
    Refund {
        order_external_id: String,
        currency: Currency,
        refund: Refund,
    },
    /// A well-formed delivery Kizuna has nothing to do with.
    Ignored(&'static str),
}

/// The most lines an order may carry.
pub const MAX_LINES: usize = 500;
/// The largest quantity on a line.
pub const MAX_QUANTITY: i64 = 1_000_000;

impl Event {
    /// The order's external id, for the deliveries log.
    pub fn order_external_id(&self) -> Option<&str> {
        match self {
            Event::Order(order) => Some(&order.external_id),
            Event::Refund {
                order_external_id, ..
            } => Some(order_external_id),
            Event::Ignored(_) => None,
        }
    }

    /// Checks that hold for every source; the shop's currency first.
    pub fn validate(&self, shop_currency: Currency) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        let currency_ok = |currency: Currency, errors: &mut Vec<FieldError>| {
            if currency != shop_currency {
                errors.push(FieldError::new(
                    "currency",
                    format!(
                        "orders must be in the shop's currency {shop_currency}, not {currency}"
                    ),
                ));
            }
        };
        match self {
            Event::Ignored(_) => {}
            Event::Refund {
                refund, currency, ..
            } => {
                currency_ok(*currency, &mut errors);
                if refund.amount <= 0 {
                    errors.push(FieldError::new("refund.amount", "must be positive"));
                }
            }
            Event::Order(order) => {
                currency_ok(order.currency, &mut errors);
                if order.external_id.is_empty() || order.external_id.len() > 128 {
                    errors.push(FieldError::new("id", "1 to 128 characters"));
                }
                if order.lines.is_empty() {
                    errors.push(FieldError::new("lines", "an order needs at least one line"));
                }
                if order.lines.len() > MAX_LINES {
                    errors.push(FieldError::new(
                        "lines",
                        format!("at most {MAX_LINES} lines"),
                    ));
                }
                for (index, line) in order.lines.iter().enumerate().take(MAX_LINES) {
                    if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                        errors.push(FieldError::new(
                            format!("lines[{index}].quantity"),
                            format!("a whole number from 1 to {MAX_QUANTITY}"),
                        ));
                    }
                    for (field, value) in [
                        ("unit_price", line.unit_price),
                        ("total", line.total),
                        ("discount", line.discount),
                        ("tax", line.tax),
                    ] {
                        if value < 0 {
                            errors.push(FieldError::new(
                                format!("lines[{index}].{field}"),
                                "cannot be negative",
                            ));
                        }
                    }
                }
                for (field, value) in [
                    ("subtotal", order.subtotal),
                    ("shipping", order.shipping),
                    ("tax", order.tax),
                    ("discount", order.discount),
                    ("total", order.total),
                    ("points_used", order.points_used),
                ] {
                    if value < 0 {
                        errors.push(FieldError::new(field, "cannot be negative"));
                    }
                }
                for (index, refund) in order.refunds.iter().enumerate() {
                    if refund.amount <= 0 {
                        errors.push(FieldError::new(
                            format!("refunds[{index}].amount"),
                            "must be positive",
                        ));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(errors))
        }
    }
}

/// Parses a decimal amount of `currency`, naming `field` on failure.
pub fn amount(
    currency: Currency,
    field: &str,
    text: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> i64 {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => 0,
        Some(text) => currency.parse_amount(text).unwrap_or_else(|e| {
            errors.push(FieldError::new(field, e.to_string()));
            0
        }),
    }
}

/// A text value from a payload: trimmed, bounded, empty as absent.
pub fn text(value: Option<&str>, max: usize) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| v.chars().take(max).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_the_same_whatever_the_order_of_facts() {
        assert_eq!(
            OrderStatus::derive(true, true, 100, 0),
            OrderStatus::Cancelled
        );
        assert_eq!(
            OrderStatus::derive(true, false, 100, 30),
            OrderStatus::PartiallyRefunded
        );
        assert_eq!(
            OrderStatus::derive(true, false, 100, 100),
            OrderStatus::Refunded
        );
        assert_eq!(
            OrderStatus::derive(false, false, 100, 0),
            OrderStatus::Pending
        );
        assert_eq!(OrderStatus::derive(true, false, 100, 0), OrderStatus::Paid);
    }
}
