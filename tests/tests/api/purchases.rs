//! `/v1/webhooks/*` and the orders API.

use crate::helpers::*;
use serde_json::json;

#[test]
fn a_signed_kizuna_order_is_stored_on_its_customer() {
    let app = TestApp::new();
    let body = json!({
        "type": "order.paid",
        "data": {
            "id": "1001", "number": "#1001", "currency": "JPY",
            "placed_at": "2026-11-22T02:59:00Z",
            "customer": {"id": "C-1", "email": "buyer@example.jp", "name": "買い手"},
            "subtotal": "5000", "shipping": "500", "tax": "500", "total": "6000",
            "lines": [{"sku": "TEA-01", "name": "Green tea", "category": "tea", "quantity": 2, "unit_price": "2500"}]
        }
    })
    .to_string();
    let ts = start_time().unix_timestamp();
    let signature = kizuna::signatures::sign_standard(ORDERS_SECRET, "msg_1", ts, body.as_bytes());
    let response = app.request(
        "POST",
        "/v1/webhooks/orders",
        &[
            ("content-type", "application/json"),
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", &ts.to_string()),
            ("webhook-signature", &signature),
        ],
        body,
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let order_id = response.json()["order_id"].as_str().unwrap().to_owned();
    let order = app
        .get(ORDERS_KEY, &format!("/v1/orders/{order_id}"))
        .json();
    assert_eq!(order["status"], "paid");
    assert_eq!(order["total_minor"], 6000);
    assert_eq!(order["lines"][0]["line_total_minor"], 5000);
    let contact_id = order["contact_id"].as_str().unwrap();
    let contact = app
        .get(READ_KEY, &format!("/v1/contacts/{contact_id}"))
        .json();
    assert_eq!(contact["lifecycle_stage"], "customer");
    assert_eq!(contact["counters"]["order_count"], 1);
    assert_eq!(contact["counters"]["total_spent_minor"], 6000);
}
