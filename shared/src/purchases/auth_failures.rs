//! Signature failures of the webhook receivers, visible to operators
//! without letting an anonymous flood write a row per request: one row
//! of the deliveries log per source and minute (`outcome` `unauthorized`),
//! counting its failures by reason (`signatures::SignatureError::reason`),
//! with the latest one's text and the last order id its body let Kizuna
//! read. No body, header value or secret is kept: the sender is unknown.
//!
//! Each failure is one upsert on a unique index (a seek, whatever the
//! log's size), autocommitted: no transaction of its own to queue for.
//! If even that fails (the database busy or away), the failure is only
//! logged: a refusal never turns into a 5xx for want of its record.

use super::Source;
use crate::ids::new_id;
use crate::ports::Db;
use crate::signatures::SignatureError;
use crate::timestamp;
use serde_json::Value as Json;
use time::OffsetDateTime;

/// Counts a refused delivery on its source's row for this minute.
pub async fn record(
    db: &impl Db,
    source: Source,
    error: &SignatureError,
    body: &[u8],
    now: OffsetDateTime,
) {
    let at = timestamp::format(now);
    let window = now - time::Duration::seconds(i64::from(now.second()));
    let window = timestamp::format(window.replace_nanosecond(0).unwrap_or(window));
    let result = db
        .execute(
            "INSERT INTO webhook_deliveries (id, source, received_at, outcome, error,
                 order_external_id, window_start, attempts, reasons, last_received_at)
             VALUES (?1, ?2, ?3, 'unauthorized', ?4, ?5, ?6, 1, json_object(?7, 1), ?3)
             ON CONFLICT (source, window_start) WHERE outcome = 'unauthorized' DO UPDATE SET
                 attempts = attempts + 1,
                 reasons = json_set(reasons, '$.' || ?7,
                                    coalesce(json_extract(reasons, '$.' || ?7), 0) + 1),
                 error = excluded.error,
                 order_external_id = coalesce(excluded.order_external_id, order_external_id),
                 last_received_at = excluded.last_received_at",
            &[
                new_id(now).into(),
                source.as_str().into(),
                at.into(),
                error.to_string().into(),
                readable_order_id(body).into(),
                window.into(),
                error.reason().into(),
            ],
        )
        .await;
    if let Err(e) = result {
        eprintln!(
            "webhook signature failure not counted: source={} reason={}: {e}",
            source.as_str(),
            error.reason()
        );
    }
}

/// The order id an unsigned body names, if it names one plainly: a
/// string or a whole number of at most 64 printable characters. Shopify's
/// and WooCommerce's orders carry it as `id`, refunds as `order_id`;
/// Kizuna's format wraps either in `data`. The sender is unknown, so it
/// is a lead for the operator, nothing more. (Parsed as a `Value`, as
/// WooCommerce's event id is: a typed probe would add its own parser to
/// the component.)
fn readable_order_id(body: &[u8]) -> Option<String> {
    let payload: Json = serde_json::from_slice(body).ok()?;
    let order = payload
        .get("data")
        .filter(|d| d.is_object())
        .unwrap_or(&payload);
    let named = |key: &str| order.get(key).filter(|v| !v.is_null());
    let id = match named("order_id").or(named("id"))? {
        Json::String(text) => text.clone(),
        Json::Number(number) if number.is_u64() => number.to_string(),
        _ => return None,
    };
    let printable = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| !c.is_control());
    printable.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::readable_order_id;

    #[test]
    fn the_order_id_is_read_from_each_sources_payload() {
        for (case, body, expected) in [
            (
                "shopify order",
                r#"{"id":820982911946154508,"line_items":[{"id":1}]}"#,
                Some("820982911946154508"),
            ),
            (
                "shopify refund",
                r#"{"id":929361464,"order_id":450789469}"#,
                Some("450789469"),
            ),
            (
                "woocommerce",
                r#"{"id":"1002","status":"processing"}"#,
                Some("1002"),
            ),
            (
                "kizuna",
                r#"{"type":"order.paid","data":{"id":"1001","lines":[]}}"#,
                Some("1001"),
            ),
            ("a null order_id", r#"{"order_id":null,"id":5}"#, Some("5")),
            ("no id", r#"{"email":"a@example.jp"}"#, None),
            ("an object", r#"{"id":{"x":1}}"#, None),
            ("negative", r#"{"id":-1}"#, None),
            (
                "too long",
                &format!(r#"{{"id":"{}"}}"#, "9".repeat(65)),
                None,
            ),
            ("control", r#"{"id":"10\u0007"}"#, None),
            ("not json", "id=1002", None),
        ] {
            assert_eq!(
                readable_order_id(body.as_bytes()).as_deref(),
                expected,
                "case {case}"
            );
        }
    }
}
