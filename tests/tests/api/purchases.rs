//! `/v1/webhooks/*` and the orders API, end to end through the native
//! host: real-shaped payloads from each source (fixtures under
//! `tests/fixtures/`), signatures, replays and concurrency, out-of-order
//! delivery, counters and lifecycle, customer matching, currency, bad
//! input, the orders API and erasure. Every test checks the answer and
//! what was (or was not) stored.

use crate::helpers::*;
use bytes::Bytes;
use kizuna::signatures::{sign_body, sign_standard};
use serde_json::{Value as Json, json};

// ---------------------------------------------------------------------------
// Fixtures and senders
// ---------------------------------------------------------------------------

/// Shopify REST Admin API order resource (JPY, tax-exclusive, two lines).
const SHOPIFY_ORDER: &str = include_str!("../../fixtures/shopify_order.json");
/// Shopify refund resource, as `refunds/create` sends it (1,620 JPY back).
const SHOPIFY_REFUND: &str = include_str!("../../fixtures/shopify_refund.json");
/// WooCommerce REST API v3 order, status `processing`.
const WOO_ORDER: &str = include_str!("../../fixtures/woocommerce_order.json");
/// Kizuna's own event format (`order.paid`).
const KIZUNA_ORDER: &str = include_str!("../../fixtures/kizuna_order.json");

const SHOP_DOMAIN: &str = "kizuna-tea.myshopify.com";
/// The fixtures' ids, as Kizuna stores them (text).
const SHOPIFY_ORDER_ID: &str = "5432109876543";
const SHOPIFY_CUSTOMER_ID: &str = "7012345678901";
const SHOPIFY_EMAIL: &str = "hanako.sato@example.jp";
const WOO_ORDER_ID: &str = "4321";
const KIZUNA_ORDER_ID: &str = "POS-2026-000123";
/// A well-formed UUID no order has.
const UNKNOWN_ID: &str = "0190f5d2-7c1e-7a4b-9f00-123456789abc";

/// The tables the purchases component writes, besides the contact tables.
const PURCHASE_TABLES: &[&str] = &[
    "orders",
    "order_lines",
    "refunds",
    "webhook_events",
    "webhook_deliveries",
    "contact_external_ids",
];

/// Request headers as sent: (name, value).
type Headers = Vec<(String, String)>;
/// Kizuna events to deliver: (webhook-id, event).
type Events<'a> = Vec<(&'a str, Json)>;

fn fixture(text: &str) -> Json {
    serde_json::from_str(text).expect("fixture is JSON")
}

fn shopify_order() -> Json {
    fixture(SHOPIFY_ORDER)
}

fn shopify_refund() -> Json {
    fixture(SHOPIFY_REFUND)
}

fn woo_order() -> Json {
    fixture(WOO_ORDER)
}

/// The Kizuna fixture with its event `type` set to `kind`.
fn kizuna_event(kind: &str) -> Json {
    let mut event = fixture(KIZUNA_ORDER);
    event["type"] = json!(kind);
    event
}

/// `order.refunded` for the Kizuna fixture, with one refund.
fn kizuna_refunded(refund_id: &str, amount: &str) -> Json {
    let mut event = kizuna_event("order.refunded");
    event["data"]["refunds"] = json!([{
        "id": refund_id, "amount": amount, "reason": "破損",
        "refunded_at": "2026-11-23T01:00:00Z"
    }]);
    event
}

/// The app's clock as a Unix timestamp: Standard Webhooks timestamps are
/// relative to it, never to the wall clock.
fn now(app: &TestApp) -> i64 {
    app.now().unix_timestamp()
}

fn minutes(app: &TestApp, n: i64) {
    app.clock.advance(time::Duration::minutes(n));
}

fn owned(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn without(headers: &[(String, String)], name: &str) -> Headers {
    headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

fn post(
    app: &TestApp,
    path: &str,
    headers: &[(String, String)],
    body: impl Into<Bytes>,
) -> TestResponse {
    let refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    app.request("POST", path, &refs, body)
}

/// Standard Webhooks headers.
fn standard_headers(id: &str, timestamp: i64, signature: &str) -> Headers {
    owned(&[
        ("content-type", "application/json"),
        ("user-agent", "KizunaPOS/2.3"),
        ("webhook-id", id),
        ("webhook-timestamp", &timestamp.to_string()),
        ("webhook-signature", signature),
    ])
}

/// A Kizuna-format event, signed now (app clock) with the configured secret.
fn post_kizuna(app: &TestApp, msg_id: &str, event: &Json) -> TestResponse {
    post_kizuna_bytes(app, msg_id, event.to_string().into_bytes())
}

fn post_kizuna_bytes(app: &TestApp, msg_id: &str, body: Vec<u8>) -> TestResponse {
    let ts = now(app);
    let signature = sign_standard(ORDERS_SECRET, msg_id, ts, &body);
    post(
        app,
        "/v1/webhooks/orders",
        &standard_headers(msg_id, ts, &signature),
        body,
    )
}

/// Shopify's headers for one delivery.
fn shopify_headers(topic: &str, event_id: &str, webhook_id: &str, hmac: &str) -> Headers {
    owned(&[
        ("content-type", "application/json"),
        ("user-agent", "Shopify-Captain-Hook"),
        ("x-shopify-topic", topic),
        ("x-shopify-hmac-sha256", hmac),
        ("x-shopify-shop-domain", SHOP_DOMAIN),
        ("x-shopify-api-version", "2025-10"),
        ("x-shopify-webhook-id", webhook_id),
        ("x-shopify-event-id", event_id),
        ("x-shopify-triggered-at", "2026-11-22T02:50:05.123456789Z"),
    ])
}

/// A Shopify delivery of `body` for `topic`, signed with the app secret;
/// its webhook id is derived from the event id and topic.
fn post_shopify(app: &TestApp, topic: &str, event_id: &str, body: &Json) -> TestResponse {
    post_shopify_bytes(app, topic, event_id, body.to_string().into_bytes())
}

fn post_shopify_bytes(app: &TestApp, topic: &str, event_id: &str, body: Vec<u8>) -> TestResponse {
    let hmac = sign_body(SHOPIFY_SECRET, &body);
    let webhook_id = shopify_webhook_id(topic, event_id);
    post(
        app,
        "/v1/webhooks/shopify",
        &shopify_headers(topic, event_id, &webhook_id, &hmac),
        body,
    )
}

fn shopify_webhook_id(topic: &str, event_id: &str) -> String {
    format!("b54557e4-{}-{}", topic.replace('/', "-"), event_id)
}

/// WooCommerce's headers for one delivery.
fn woo_headers(topic: &str, delivery_id: &str, signature: &str) -> Headers {
    let event = topic.split_once('.').map_or(topic, |(_, e)| e);
    owned(&[
        ("content-type", "application/json"),
        ("user-agent", "WooCommerce/9.4.2 Hookshot (WordPress/6.7.1)"),
        ("x-wc-webhook-source", "https://shop.example.jp/"),
        ("x-wc-webhook-topic", topic),
        ("x-wc-webhook-resource", "order"),
        ("x-wc-webhook-event", event),
        ("x-wc-webhook-signature", signature),
        ("x-wc-webhook-id", "3"),
        ("x-wc-webhook-delivery-id", delivery_id),
    ])
}

fn post_woo(app: &TestApp, topic: &str, delivery_id: &str, body: &Json) -> TestResponse {
    post_woo_bytes(app, topic, delivery_id, body.to_string().into_bytes())
}

fn post_woo_bytes(app: &TestApp, topic: &str, delivery_id: &str, body: Vec<u8>) -> TestResponse {
    let signature = sign_body(WOO_SECRET, &body);
    post(
        app,
        "/v1/webhooks/woocommerce",
        &woo_headers(topic, delivery_id, &signature),
        body,
    )
}

// ---------------------------------------------------------------------------
// Reading back
// ---------------------------------------------------------------------------

/// Asserts a 200 `applied` answer; returns its order id (if any).
fn applied(response: &TestResponse, case: &str) -> Option<String> {
    assert_eq!(response.status, 200, "{case}: {}", response.text());
    let body = response.json();
    assert_eq!(body["status"], "applied", "{case}: {body}");
    body["order_id"].as_str().map(str::to_owned)
}

/// Asserts a 200 answer with `status`.
fn answered(response: &TestResponse, status: &str, case: &str) {
    assert_eq!(response.status, 200, "{case}: {}", response.text());
    assert_eq!(response.json()["status"], status, "{case}");
}

/// `GET /v1/orders/{id}`, which must succeed.
fn order(app: &TestApp, id: &str) -> Json {
    let response = app.get(ORDERS_KEY, &format!("/v1/orders/{id}"));
    assert_eq!(response.status, 200, "GET order {id}: {}", response.text());
    response.json()
}

/// The order with this source and external id, through the API.
fn order_by_external(app: &TestApp, source: &str, external_id: &str) -> Json {
    let id: String = app
        .db()
        .query_row(
            "SELECT id FROM orders WHERE source = ?1 AND external_id = ?2",
            [source, external_id],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("no {source} order {external_id}: {e}"));
    order(app, &id)
}

/// `GET /v1/contacts/{id}`, which must succeed.
fn contact(app: &TestApp, id: &str) -> Json {
    let response = app.get(READ_KEY, &format!("/v1/contacts/{id}"));
    assert_eq!(
        response.status,
        200,
        "GET contact {id}: {}",
        response.text()
    );
    response.json()
}

fn contact_of(app: &TestApp, order: &Json) -> Json {
    contact(
        app,
        order["contact_id"].as_str().expect("order has a contact"),
    )
}

/// The kinds on a contact's timeline (sorted, so sequences compare).
fn timeline_kinds(app: &TestApp, contact_id: &str) -> Vec<String> {
    let response = app.get(
        READ_KEY,
        &format!("/v1/contacts/{contact_id}/timeline?limit=200"),
    );
    assert_eq!(response.status, 200, "timeline: {}", response.text());
    let mut kinds: Vec<String> = response.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind").to_owned())
        // The timeline also shows the points ledger; these tests compare
        // what the order did. Out-of-order delivery may reach the same
        // balance through other ledger entries (a cancel before the
        // payment earns nothing; after it, an earn and its reversal), so
        // the ledger is compared by the balance in `counters`.
        .filter(|kind| !kind.starts_with("points_"))
        .collect();
    kinds.sort();
    kinds
}

fn count_kind(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

/// Row counts of every table a webhook may write: "nothing stored" means
/// none of these changed.
/// Refused signatures are counted per source and minute in the
/// deliveries log (`outcome` `unauthorized`): a diagnosis, not a
/// delivery, so those rows are left out here.
fn stored(app: &TestApp) -> Vec<(String, i64)> {
    let mut counts = app.table_counts();
    for table in PURCHASE_TABLES {
        let only_deliveries = if *table == "webhook_deliveries" {
            " WHERE outcome <> 'unauthorized'"
        } else {
            ""
        };
        counts.push((
            (*table).to_owned(),
            app.count(&format!("SELECT count(*) FROM {table}{only_deliveries}")),
        ));
    }
    counts
}

/// Asserts that between `before` and now only one delivery was logged:
/// no order, line, refund, event, contact or anything else stored.
fn assert_only_logged(app: &TestApp, before: &[(String, i64)], case: &str) {
    let after = stored(app);
    for ((table, was), (_, is)) in before.iter().zip(&after) {
        let expected = if table == "webhook_deliveries" {
            was + 1
        } else {
            *was
        };
        assert_eq!(*is, expected, "case {case}: {table}");
    }
}

/// Runs the migrations (any request does), so counts can be taken.
fn migrate(app: &TestApp) {
    let response = app.get(ORDERS_KEY, "/v1/orders");
    assert_eq!(response.status, 200, "{}", response.text());
}

fn rejected_deliveries(app: &TestApp) -> Vec<Json> {
    let response = app.get(ORDERS_KEY, "/v1/webhook-deliveries?outcome=rejected");
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["items"].as_array().expect("items").clone()
}

/// The `field` of each entry in a problem's `errors`.
fn error_fields(problem: &Json) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter_map(|e| e["field"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// What a caller can see of one order and its customer at the end of a
/// sequence, without ids or receive times, so runs compare.
fn final_state(app: &TestApp, source: &str, external_id: &str) -> Json {
    let order = order_by_external(app, source, external_id);
    let contact_id = order["contact_id"].as_str().expect("contact").to_owned();
    let contact = contact(app, &contact_id);
    let mut refunds: Vec<Json> = order["refunds"]
        .as_array()
        .expect("refunds")
        .iter()
        .map(|r| json!([r["external_id"], r["amount_minor"]]))
        .collect();
    refunds.sort_by_key(Json::to_string);
    json!({
        "status": order["status"],
        "total_minor": order["total_minor"],
        "refunded_minor": order["refunded_minor"],
        "refunds": refunds,
        "paid": !order["paid_at"].is_null(),
        "cancelled": !order["cancelled_at"].is_null(),
        "lines": order["lines"].as_array().map(Vec::len),
        "lifecycle_stage": contact["lifecycle_stage"],
        "counters": contact["counters"],
        "timeline": timeline_kinds(app, &contact_id),
        "orders": app.count("SELECT count(*) FROM orders"),
        "contacts": app.count("SELECT count(*) FROM contacts"),
    })
}

// ---------------------------------------------------------------------------
// Kizuna's own format (Standard Webhooks)
// ---------------------------------------------------------------------------

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
    let ts = app.now().unix_timestamp();
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

#[test]
fn kizuna_order_paid_maps_every_field_of_the_documented_format() {
    // Arrange
    let app = TestApp::new();

    let mut event = kizuna_event("order.paid");
    event["data"]["points_used"] = json!(300);

    // Act
    let response = post_kizuna(&app, "msg_2Jd8Qx", &event);

    // Assert
    let order_id = applied(&response, "order.paid").expect("order id");
    let order = order(&app, &order_id);
    assert_eq!(order["source"], "kizuna");
    assert_eq!(order["external_id"], KIZUNA_ORDER_ID);
    assert_eq!(order["number"], "#A-123");
    assert_eq!(order["status"], "paid");
    assert_eq!(order["currency"], "JPY");
    assert_eq!(order["placed_at"], "2026-11-22T02:59:00.000000Z");
    for (field, value) in [
        ("subtotal_minor", 5000),
        ("shipping_minor", 500),
        ("tax_minor", 450),
        ("discount_minor", 0),
        ("total_minor", 5950),
        ("refunded_minor", 0),
        ("points_used", 300),
    ] {
        assert_eq!(order[field], value, "order.{field}");
    }
    assert_eq!(
        order["lines"],
        json!([
            {"line_no": 1, "external_id": "L1", "sku": "TEA-GYOKURO-50", "product_name": "玉露 50g",
             "category": "tea", "quantity": 2, "unit_price_minor": 2000, "line_total_minor": 4000,
             "discount_minor": 0, "tax_minor": 320},
            {"line_no": 2, "external_id": "L2", "sku": "SWEETS-YOKAN", "product_name": "羊羹",
             "category": "sweets", "quantity": 1, "unit_price_minor": 1000, "line_total_minor": 1000,
             "discount_minor": 0, "tax_minor": 80}
        ])
    );
    assert_eq!(order["refunds"], json!([]));
    let contact = contact_of(&app, &order);
    assert_eq!(contact["email"], "taro.yamada@example.jp");
    assert_eq!(contact["phone"], "+818098765432");
    assert_eq!(contact["name"], "山田 太郎");
    assert_eq!(contact["first_touch"]["source"], "webhook:kizuna");
    assert_eq!(contact["lifecycle_stage"], "customer");
    assert_eq!(
        app.count("SELECT count(*) FROM contact_external_ids WHERE source = 'kizuna' AND external_id = 'MEMBER-0042'"),
        1
    );
}

#[test]
fn kizuna_order_created_then_updated_then_paid() {
    // Arrange
    let app = TestApp::new();
    let created = kizuna_event("order.created");
    let mut updated = kizuna_event("order.updated");
    updated["data"]["updated_at"] = json!("2026-11-22T03:05:00Z");
    updated["data"]["shipping"] = json!("0");
    updated["data"]["total"] = json!("5450");
    let mut paid = updated.clone();
    paid["type"] = json!("order.paid");

    // Act + Assert: created → pending, not counted
    let order_id = applied(&post_kizuna(&app, "msg_created", &created), "created").unwrap();
    let pending = order(&app, &order_id);
    assert_eq!(pending["status"], "pending");
    assert!(pending["paid_at"].is_null());
    let contact_id = pending["contact_id"].as_str().unwrap().to_owned();
    let lead = contact(&app, &contact_id);
    assert_eq!(lead["lifecycle_stage"], "lead");
    assert_eq!(lead["counters"]["order_count"], 0);
    assert_eq!(lead["counters"]["total_spent_minor"], 0);
    assert_eq!(
        count_kind(&timeline_kinds(&app, &contact_id), "order_placed"),
        0
    );

    // updated → newer details, still pending
    minutes(&app, 5);
    applied(&post_kizuna(&app, "msg_updated", &updated), "updated");
    let edited = order(&app, &order_id);
    assert_eq!(edited["status"], "pending");
    assert_eq!(edited["shipping_minor"], 0);
    assert_eq!(edited["total_minor"], 5450);

    // paid → counted once
    minutes(&app, 1);
    applied(&post_kizuna(&app, "msg_paid", &paid), "paid");
    let paid_order = order(&app, &order_id);
    assert_eq!(paid_order["status"], "paid");
    assert!(paid_order["paid_at"].is_string());
    let customer = contact(&app, &contact_id);
    assert_eq!(customer["lifecycle_stage"], "customer");
    assert_eq!(customer["counters"]["order_count"], 1);
    assert_eq!(customer["counters"]["total_spent_minor"], 5450);
    assert_eq!(
        count_kind(&timeline_kinds(&app, &contact_id), "order_placed"),
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM orders"), 1);
}

#[test]
fn kizuna_order_cancelled_and_order_refunded_apply() {
    // Arrange
    let app = TestApp::new();
    let order_id = applied(
        &post_kizuna(&app, "msg_paid", &kizuna_event("order.paid")),
        "paid",
    )
    .unwrap();

    // Act: a partial refund
    minutes(&app, 60);
    applied(
        &post_kizuna(&app, "msg_refund", &kizuna_refunded("R-1", "1000")),
        "refunded",
    );

    // Assert
    let refunded = order(&app, &order_id);
    assert_eq!(refunded["status"], "partially_refunded");
    assert_eq!(refunded["refunded_minor"], 1000);
    assert_eq!(refunded["refunds"][0]["external_id"], "R-1");
    assert_eq!(refunded["refunds"][0]["amount_minor"], 1000);
    assert_eq!(refunded["refunds"][0]["reason"], "破損");
    assert_eq!(
        refunded["refunds"][0]["refunded_at"],
        "2026-11-23T01:00:00.000000Z"
    );
    let contact_id = refunded["contact_id"].as_str().unwrap().to_owned();
    assert_eq!(
        contact(&app, &contact_id)["counters"]["total_spent_minor"],
        4950
    );

    // Act: cancelled
    minutes(&app, 60);
    applied(
        &post_kizuna(&app, "msg_cancel", &kizuna_event("order.cancelled")),
        "cancelled",
    );

    // Assert
    let cancelled = order(&app, &order_id);
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["cancelled_at"].is_string());
    let customer = contact(&app, &contact_id);
    assert_eq!(customer["counters"]["order_count"], 0);
    assert_eq!(customer["counters"]["total_spent_minor"], 0);
    let kinds = timeline_kinds(&app, &contact_id);
    assert_eq!(count_kind(&kinds, "order_placed"), 1, "{kinds:?}");
    assert_eq!(count_kind(&kinds, "order_refunded"), 1, "{kinds:?}");
    assert_eq!(count_kind(&kinds, "order_cancelled"), 1, "{kinds:?}");
}

#[test]
fn an_unknown_kizuna_event_type_is_acknowledged_and_ignored() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);

    // Act
    let response = post_kizuna(&app, "msg_future", &kizuna_event("order.fulfilled"));

    // Assert
    answered(&response, "ignored", "order.fulfilled");
    assert!(response.json()["order_id"].is_null());
    for table in [
        "orders",
        "order_lines",
        "refunds",
        "contacts",
        "interactions",
    ] {
        assert_eq!(
            app.count(&format!("SELECT count(*) FROM {table}")),
            0,
            "{table}"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM webhook_deliveries WHERE outcome = 'ignored' AND topic = 'order.fulfilled'"),
        1
    );
}

// ---------------------------------------------------------------------------
// Shopify
// ---------------------------------------------------------------------------

#[test]
fn shopify_orders_create_maps_the_order_resource_faithfully() {
    // Arrange
    let app = TestApp::new();

    // Act
    let response = post_shopify(&app, "orders/create", "ev-1001", &shopify_order());

    // Assert
    let order_id = applied(&response, "orders/create").expect("order id");
    let order = order(&app, &order_id);
    assert_eq!(order["source"], "shopify");
    assert_eq!(order["external_id"], SHOPIFY_ORDER_ID);
    assert_eq!(order["number"], "#1001");
    assert_eq!(order["status"], "paid", "financial_status paid");
    assert_eq!(order["placed_at"], "2026-11-22T02:50:00.000000Z");
    for (field, value) in [
        ("subtotal_minor", 5000),
        ("shipping_minor", 600),
        ("tax_minor", 500),
        ("discount_minor", 500),
        ("total_minor", 6100),
        ("refunded_minor", 0),
    ] {
        assert_eq!(order[field], value, "order.{field}");
    }
    let lines = order["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["external_id"], "13579246801357");
    assert_eq!(lines[0]["sku"], "TEA-SENCHA-100");
    assert_eq!(lines[0]["product_name"], "煎茶 100g - 缶入り");
    assert_eq!(lines[0]["quantity"], 2);
    assert_eq!(lines[0]["unit_price_minor"], 1500);
    assert_eq!(lines[0]["line_total_minor"], 3000);
    assert_eq!(lines[0]["tax_minor"], 240);
    assert_eq!(lines[1]["sku"], "CUP-ARITA-01");
    assert_eq!(lines[1]["unit_price_minor"], 2500);
    assert_eq!(lines[1]["discount_minor"], 500);
    assert_eq!(lines[1]["line_total_minor"], 2000);
    assert_eq!(lines[1]["tax_minor"], 200);
    let contact = contact_of(&app, &order);
    assert_eq!(contact["email"], SHOPIFY_EMAIL);
    assert_eq!(contact["phone"], "+819012345678");
    assert_eq!(contact["family_name"], "佐藤");
    assert_eq!(contact["given_name"], "花子");
    assert_eq!(contact["first_touch"]["source"], "webhook:shopify");
    assert_eq!(contact["counters"]["order_count"], 1);
    assert_eq!(contact["counters"]["total_spent_minor"], 6100);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM contact_external_ids WHERE source = 'shopify' AND external_id = '{SHOPIFY_CUSTOMER_ID}'"
        )),
        1
    );
}

#[test]
fn shopify_topics_take_an_order_from_pending_to_paid_updated_refunded_and_cancelled() {
    // Arrange: a konbini (convenience-store) payment, pending at checkout
    let app = TestApp::new();
    let mut created = shopify_order();
    created["financial_status"] = json!("pending");
    created["payment_gateway_names"] = json!(["konbini"]);
    let mut paid = shopify_order();
    paid["updated_at"] = json!("2026-11-22T13:00:00+09:00");
    let mut updated = paid.clone();
    updated["updated_at"] = json!("2026-11-22T14:00:00+09:00");
    updated["note"] = json!("ギフト包装希望");
    updated["total_shipping_price_set"]["shop_money"]["amount"] = json!("0");
    updated["total_tax"] = json!("440");
    updated["total_price"] = json!("5440");

    // Act + Assert
    let order_id = applied(
        &post_shopify(&app, "orders/create", "ev-create", &created),
        "orders/create",
    )
    .unwrap();
    assert_eq!(order(&app, &order_id)["status"], "pending");
    let contact_id = order(&app, &order_id)["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(contact(&app, &contact_id)["counters"]["order_count"], 0);

    minutes(&app, 70);
    applied(
        &post_shopify(&app, "orders/paid", "ev-paid", &paid),
        "orders/paid",
    );
    assert_eq!(order(&app, &order_id)["status"], "paid");
    assert_eq!(
        contact(&app, &contact_id)["counters"]["total_spent_minor"],
        6100
    );

    minutes(&app, 60);
    applied(
        &post_shopify(&app, "orders/updated", "ev-updated", &updated),
        "orders/updated",
    );
    let after_update = order(&app, &order_id);
    assert_eq!(after_update["status"], "paid");
    assert_eq!(after_update["shipping_minor"], 0);
    assert_eq!(after_update["total_minor"], 5440);
    assert_eq!(
        contact(&app, &contact_id)["counters"]["total_spent_minor"],
        5440
    );

    minutes(&app, 60);
    applied(
        &post_shopify(&app, "refunds/create", "ev-refund", &shopify_refund()),
        "refunds/create",
    );
    let after_refund = order(&app, &order_id);
    assert_eq!(after_refund["status"], "partially_refunded");
    assert_eq!(after_refund["refunded_minor"], 1620);
    assert_eq!(after_refund["refunds"][0]["external_id"], "889900112233");
    assert_eq!(
        after_refund["refunds"][0]["reason"],
        "配送中の破損のため返金"
    );
    assert_eq!(
        contact(&app, &contact_id)["counters"]["total_spent_minor"],
        5440 - 1620
    );

    minutes(&app, 60);
    let mut cancelled = updated.clone();
    cancelled["updated_at"] = json!("2026-11-23T12:00:00+09:00");
    cancelled["cancelled_at"] = json!("2026-11-23T12:00:00+09:00");
    cancelled["cancel_reason"] = json!("customer");
    cancelled["financial_status"] = json!("partially_refunded");
    applied(
        &post_shopify(&app, "orders/cancelled", "ev-cancel", &cancelled),
        "orders/cancelled",
    );
    let after_cancel = order(&app, &order_id);
    assert_eq!(after_cancel["status"], "cancelled");
    assert_eq!(after_cancel["cancelled_at"], "2026-11-23T03:00:00.000000Z");
    let customer = contact(&app, &contact_id);
    assert_eq!(customer["counters"]["order_count"], 0);
    assert_eq!(customer["counters"]["total_spent_minor"], 0);
    assert_eq!(app.count("SELECT count(*) FROM orders"), 1);
    assert_eq!(app.count("SELECT count(*) FROM refunds"), 1);
}

#[test]
fn a_signed_shopify_body_replayed_under_another_topic_changes_no_fact() {
    // Arrange: a paid order, delivered as Shopify signs it.
    let app = TestApp::new();
    let body = shopify_order();
    let order_id = applied(
        &post_shopify(&app, "orders/paid", "ev-paid", &body),
        "orders/paid",
    )
    .expect("order id");
    let before = order(&app, &order_id);
    assert_eq!(before["status"], "paid");

    // Act: the captured bytes again, under a topic Shopify did not send
    // for them and a fresh (unsigned) event id.
    let replay = post_shopify(&app, "orders/cancelled", "ev-forged", &body);

    // Assert
    assert_eq!(replay.status, 200, "{}", replay.text());
    let mut after = order(&app, &order_id);
    assert_eq!(after["status"], "paid", "the topic cancelled the order");
    assert_eq!(after["cancelled_at"], Json::Null);
    // The same facts again: only the time it was last written may move.
    let mut before = before;
    for order in [&mut before, &mut after] {
        order.as_object_mut().map(|o| o.remove("updated_at"));
    }
    assert_eq!(after, before);
}

#[test]
fn a_shopify_topic_never_makes_an_unpaid_order_paid() {
    // Arrange
    let app = TestApp::new();
    let mut pending = shopify_order();
    pending["financial_status"] = json!("pending");

    // Act
    let order_id = applied(
        &post_shopify(&app, "orders/paid", "ev-pending", &pending),
        "orders/paid with a pending body",
    )
    .expect("order id");

    // Assert
    let stored = order(&app, &order_id);
    assert_eq!(stored["status"], "pending", "{stored}");
    assert_eq!(
        app.count("SELECT count(*) FROM orders WHERE paid_at IS NOT NULL"),
        0
    );
}

#[test]
fn two_woocommerce_states_saved_in_the_same_second_both_apply() {
    // Arrange: an order on hold, then paid, saved within one second, so
    // both bodies carry the same id and date_modified_gmt.
    let app = TestApp::new();
    let mut on_hold = woo_order();
    on_hold["status"] = json!("on-hold");
    on_hold["date_paid"] = Json::Null;
    on_hold["date_paid_gmt"] = Json::Null;
    let processing = woo_order();
    assert_eq!(
        on_hold["date_modified_gmt"],
        processing["date_modified_gmt"]
    );
    let order_id =
        applied(&post_woo(&app, "order.updated", "d-1", &on_hold), "on-hold").expect("order id");
    assert_eq!(order(&app, &order_id)["status"], "pending");

    // Act
    let second = post_woo(&app, "order.updated", "d-2", &processing);
    let retry = post_woo(&app, "order.updated", "d-2", &processing);

    // Assert
    applied(&second, "processing in the same second");
    answered(&retry, "duplicate", "the same body again");
    assert_eq!(order(&app, &order_id)["status"], "paid");
}

/// A payload from `tests/fixtures/shopify/` (shapes from Shopify's Order
/// and Refund resources; see the README there).
fn shopify_fixture(name: &str) -> Json {
    let path = format!(
        "{}/fixtures/shopify/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    fixture(&std::fs::read_to_string(&path).expect("fixture file"))
}

/// (sku, line total, discount) of each stored line.
fn line_money(order: &Json) -> Vec<(String, i64, i64)> {
    order["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["sku"].as_str().unwrap_or("").to_owned(),
                l["line_total_minor"].as_i64().expect("total"),
                l["discount_minor"].as_i64().expect("discount"),
            )
        })
        .collect()
}

#[test]
fn shopify_discount_codes_on_some_lines_are_taken_from_their_allocations() {
    // Arrange: code KIZUNA10 on two of three lines; every line's
    // total_discount is "0", as Shopify sends it.
    let app = TestApp::new();
    let body = shopify_fixture("order_paid_discount_code");

    // Act
    let order_id = applied(
        &post_shopify(&app, "orders/paid", "ev-code", &body),
        "orders/paid",
    )
    .expect("order id");

    // Assert
    let stored = order(&app, &order_id);
    assert_eq!(
        line_money(&stored),
        [
            ("TEA-SENCHA-100".to_owned(), 2916, 324),
            ("TEA-MATCHA-30".to_owned(), 1944, 216),
            ("POT-TOKONAME-01".to_owned(), 4400, 0),
        ]
    );
    assert_eq!(stored["discount_minor"], 540);
    assert_eq!(stored["total_minor"], 9920);
    assert_eq!(stored["status"], "paid");
}

#[test]
fn a_shopify_refund_paid_in_the_buyers_currency_is_booked_in_shop_money() {
    // Arrange: a JPY shop, a buyer paying in USD.
    let app = TestApp::new();
    let order_id = applied(
        &post_shopify(
            &app,
            "orders/paid",
            "ev-usd-order",
            &shopify_fixture("order_paid_multicurrency"),
        ),
        "multi-currency order",
    )
    .expect("order id");
    let stored = order(&app, &order_id);
    assert_eq!(stored["total_minor"], 13200);
    assert_eq!(stored["currency"], "JPY");
    assert_eq!(
        line_money(&stored),
        [
            ("TEA-SENCHA-100".to_owned(), 3240, 360),
            ("TEA-MATCHA-30".to_owned(), 2160, 240),
            ("POT-TOKONAME-01".to_owned(), 4800, 0),
        ]
    );

    // Act: one tin and the shipping back, 30.80 USD to the buyer.
    let refund = post_shopify(
        &app,
        "refunds/create",
        "ev-usd-refund",
        &shopify_fixture("refund_multicurrency"),
    );

    // Assert
    applied(&refund, "refund in USD");
    let after = order(&app, &order_id);
    assert_eq!(after["refunded_minor"], 4620, "1620 + 3000 shipping, once");
    assert_eq!(after["status"], "partially_refunded");
}

#[test]
fn a_shopify_refund_without_a_currency_but_foreign_shop_money_is_refused() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);
    let before = stored(&app);

    // Act
    let response = post_shopify(
        &app,
        "refunds/create",
        "ev-null-currency",
        &shopify_fixture("refund_null_currency_foreign_set"),
    );

    // Assert
    response.assert_problem(422, "shop money in USD, transaction currency null");
    let mut after = stored(&app);
    after.retain(|(t, _)| t != "webhook_deliveries");
    let mut before = before;
    before.retain(|(t, _)| t != "webhook_deliveries");
    assert_eq!(after, before, "nothing but the rejection log changed");
}

#[test]
fn a_shopify_refund_of_a_line_and_shipping_counts_what_the_transaction_paid() {
    // Arrange: the discount-code order, then one sencha and the shipping back.
    let app = TestApp::new();
    let order_id = applied(
        &post_shopify(
            &app,
            "orders/paid",
            "ev-code",
            &shopify_fixture("order_paid_discount_code"),
        ),
        "order",
    )
    .expect("order id");

    // Act
    let refund = post_shopify(
        &app,
        "refunds/create",
        "ev-line-refund",
        &shopify_fixture("refund_with_lines_and_shipping"),
    );

    // Assert
    applied(&refund, "refund");
    let after = order(&app, &order_id);
    assert_eq!(after["refunded_minor"], 2118);
    assert_eq!(after["status"], "partially_refunded");
}

#[test]
fn a_shopify_guest_checkout_is_stored_with_the_orders_own_contact_details() {
    // Arrange
    let app = TestApp::new();

    // Act
    let order_id = applied(
        &post_shopify(
            &app,
            "orders/paid",
            "ev-guest",
            &shopify_fixture("order_guest_checkout"),
        ),
        "guest order",
    )
    .expect("order id");

    // Assert
    let stored = order(&app, &order_id);
    assert_eq!(stored["total_minor"], 2280);
    assert_eq!(
        app.count("SELECT count(*) FROM contacts WHERE email = 'kenta.tanaka@example.jp'"),
        1,
        "the order's email makes the contact"
    );
}

/// A customer with a Shopify order and a refund (with a note), points
/// awarded and redeemed against an order reference, a call with a
/// subject, a withdrawn SMS consent and a saved segment they belong to.
fn customer_with_history(app: &TestApp) -> (String, String) {
    let order_id = applied(
        &post_shopify(
            app,
            "orders/paid",
            "ev-history",
            &shopify_fixture("order_paid_discount_code"),
        ),
        "order",
    )
    .expect("order id");
    applied(
        &post_shopify(
            app,
            "refunds/create",
            "ev-history-refund",
            &shopify_fixture("refund_with_lines_and_shipping"),
        ),
        "refund",
    );
    let contact_id = order(app, &order_id)["contact_id"]
        .as_str()
        .expect("linked contact")
        .to_owned();
    let award = app.request(
        "POST",
        "/v1/points/award",
        &[
            ("authorization", &format!("Bearer {ADMIN_KEY}")),
            ("content-type", "application/json"),
            ("idempotency-key", "award-history"),
        ],
        json!({"contact_id": contact_id, "points": 500, "reason": "佐藤様 誕生日"}).to_string(),
    );
    assert_eq!(award.status, 201, "award: {}", award.text());
    let redeem = app.request(
        "POST",
        "/v1/points/redeem",
        &[
            ("authorization", &format!("Bearer {ADMIN_KEY}")),
            ("content-type", "application/json"),
            ("idempotency-key", "checkout-history"),
        ],
        json!({"contact_id": contact_id, "points": 100, "order_ref": "レシート 佐藤花子"})
            .to_string(),
    );
    assert_eq!(redeem.status, 201, "redeem: {}", redeem.text());
    let call = app.send_json(
        "POST",
        ADMIN_KEY,
        &format!("/v1/contacts/{contact_id}/interactions"),
        &json!({"kind": "call", "subject": "佐藤花子様より配送の件", "body": "x"}),
    );
    assert_eq!(call.status, 201, "call: {}", call.text());
    for status in ["granted", "withdrawn"] {
        let sms = app.send_json(
            "POST",
            ADMIN_KEY,
            &format!("/v1/contacts/{contact_id}/consents"),
            &json!({"channel": "sms", "status": status, "reason": "manual"}),
        );
        assert_eq!(sms.status, 201, "sms {status}: {}", sms.text());
    }
    let segment = app.send_json(
        "POST",
        ADMIN_KEY,
        "/v1/segments",
        &json!({"name": "buyers", "definition": {"field": "order_count", "op": "gte", "value": 1}}),
    );
    assert_eq!(segment.status, 201, "segment: {}", segment.text());
    (contact_id, order_id)
}

#[test]
fn the_export_holds_orders_shop_ids_points_rfm_segments_and_consent_history() {
    // Arrange
    let app = TestApp::new();
    let (contact_id, order_id) = customer_with_history(&app);

    // Act
    let response = app.get(ADMIN_KEY, &format!("/v1/contacts/{contact_id}/export"));

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let export = response.json();
    let orders = export["orders"].as_array().expect("orders");
    assert_eq!(orders.len(), 1, "{export}");
    assert_eq!(orders[0]["id"], order_id.as_str());
    assert_eq!(orders[0]["lines"].as_array().map(Vec::len), Some(3));
    assert_eq!(orders[0]["refunds"][0]["amount_minor"], 2118);
    assert_eq!(
        export["shop_customer_ids"],
        json!([{"source": "shopify", "customer_id": "7301928374650"}])
    );
    let kinds: Vec<&str> = export["points_ledger"]
        .as_array()
        .expect("ledger")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"redeem"), "{kinds:?}");
    assert!(export["rfm"]["recency"].is_i64(), "{}", export["rfm"]);
    assert!(export["rfm"]["churn_risk"].is_string());
    assert_eq!(export["segments"][0]["name"], "buyers");
    let sms: Vec<&str> = export["consent_log"]
        .as_array()
        .expect("consent log")
        .iter()
        .filter(|c| c["channel"] == "sms")
        .filter_map(|c| c["status"].as_str())
        .collect();
    assert_eq!(sms, ["granted", "withdrawn"], "the whole consent history");
}

#[test]
fn erasure_removes_free_text_and_remembers_the_withdrawal_and_the_person() {
    // Arrange
    let app = TestApp::new();
    let (contact_id, _) = customer_with_history(&app);

    // Act
    let erased = app.request(
        "DELETE",
        &format!("/v1/contacts/{contact_id}"),
        &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
        Bytes::new(),
    );

    // Assert: free text that could name the person is gone.
    assert_eq!(erased.status, 200, "{}", erased.text());
    for (what, sql) in [
        (
            "refund notes",
            "SELECT count(*) FROM refunds WHERE reason IS NOT NULL",
        ),
        (
            "order references",
            "SELECT count(*) FROM points_entries WHERE order_ref IS NOT NULL",
        ),
        (
            "staff's points reasons",
            "SELECT count(*) FROM points_entries WHERE reason LIKE '%佐藤%'",
        ),
        (
            "interaction subjects",
            "SELECT count(*) FROM interactions WHERE subject IS NOT NULL OR body IS NOT NULL",
        ),
    ] {
        assert_eq!(app.count(sql), 0, "{what} survived erasure");
    }
    assert_eq!(
        app.count("SELECT count(*) FROM refunds WHERE amount_minor = 2118"),
        1,
        "the refund's amount stays for accounting"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM suppressions WHERE lifted_at IS NULL"),
        2,
        "email and phone are suppressed"
    );

    // Act: the shop sends the same customer again, and staff try to
    // grant consent to the new record.
    let again = applied(
        &post_shopify(&app, "orders/paid", "ev-after-erasure", &{
            let mut body = shopify_fixture("order_guest_checkout");
            body["email"] = json!("hanako.sato@example.jp");
            body
        }),
        "a later order by the same address",
    )
    .expect("order id");
    let new_contact = order(&app, &again)["contact_id"]
        .as_str()
        .expect("a new contact")
        .to_owned();
    assert_ne!(new_contact, contact_id);
    let staff = app.send_json(
        "POST",
        ADMIN_KEY,
        &format!("/v1/contacts/{new_contact}/consents"),
        &json!({"channel": "email", "status": "granted", "reason": "manual"}),
    );

    // Assert: no marketing consent without the person's own opt-in.
    staff.assert_problem(409, "staff grant to an erased person's address");
    assert_eq!(
        app.count("SELECT count(*) FROM consents WHERE status = 'granted' AND channel = 'email'"),
        0
    );
}

#[test]
fn points_earned_by_an_order_expire_at_the_end_of_the_month_in_the_shop_time_zone() {
    // Arrange: a shop on UTC whose points last to the end of the month.
    let app = TestApp::with_variables(&[("shop_timezone", "+00:00")]);
    let program = app.send_json(
        "PUT",
        ADMIN_KEY,
        "/v1/points/program",
        &json!({"expiry": {"policy": "end_of_month_after", "months": 0}}),
    );
    assert_eq!(program.status, 200, "{}", program.text());

    // Act
    let mut event = kizuna_event("order.paid");
    event["data"]["placed_at"] = json!(kizuna::timestamp::format(app.now()));
    applied(&post_kizuna(&app, "msg_tz", &event), "order.paid");

    // Assert: the first instant of next month in UTC, not Tokyo's 15:00 UTC.
    let now = app.now();
    let (year, month) = match now.month() {
        time::Month::December => (now.year() + 1, time::Month::January),
        m => (now.year(), m.next()),
    };
    let month_end = time::Date::from_calendar_date(year, month, 1)
        .expect("date")
        .midnight()
        .assume_utc();
    let expires: String = app
        .db()
        .query_row(
            "SELECT expires_at FROM points_lots WHERE remaining > 0",
            [],
            |r| r.get(0),
        )
        .expect("one earned lot");
    assert_eq!(expires, kizuna::timestamp::format(month_end));
}

#[test]
fn an_unhandled_shopify_topic_is_acknowledged_and_ignored() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);
    let customer = json!({
        "id": 7012345678901_u64, "email": SHOPIFY_EMAIL, "first_name": "花子", "last_name": "佐藤",
        "created_at": "2026-11-01T10:00:00+09:00", "updated_at": "2026-11-01T10:00:00+09:00"
    });

    // Act
    let fulfilled = post_shopify(&app, "orders/fulfilled", "ev-f", &shopify_order());
    let customers = post_shopify(&app, "customers/create", "ev-c", &customer);

    // Assert
    answered(&fulfilled, "ignored", "orders/fulfilled");
    answered(&customers, "ignored", "customers/create");
    assert_eq!(app.count("SELECT count(*) FROM orders"), 0);
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 0);
    assert_eq!(
        app.count("SELECT count(*) FROM webhook_deliveries WHERE outcome = 'ignored'"),
        2
    );
}

// ---------------------------------------------------------------------------
// WooCommerce
// ---------------------------------------------------------------------------

/// The WooCommerce fixture in `status`, modified at `modified_gmt`.
fn woo_state(status: &str, modified_gmt: &str) -> Json {
    let mut order = woo_order();
    order["status"] = json!(status);
    order["date_modified_gmt"] = json!(modified_gmt);
    if status == "pending" {
        order["date_paid_gmt"] = Json::Null;
        order["date_paid"] = Json::Null;
        order["transaction_id"] = json!("");
    }
    order
}

#[test]
fn woocommerce_order_created_and_updated_through_its_statuses() {
    // Arrange
    let app = TestApp::new();

    // Act + Assert: created, pending payment
    let order_id = applied(
        &post_woo(
            &app,
            "order.created",
            "d-1",
            &woo_state("pending", "2026-11-22T02:40:00"),
        ),
        "order.created pending",
    )
    .unwrap();
    let pending = order(&app, &order_id);
    assert_eq!(pending["source"], "woocommerce");
    assert_eq!(pending["external_id"], WOO_ORDER_ID);
    assert_eq!(pending["number"], "4321");
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["placed_at"], "2026-11-22T02:40:00.000000Z");
    for (field, value) in [
        ("subtotal_minor", 5000),
        ("shipping_minor", 500),
        ("tax_minor", 450),
        ("discount_minor", 0),
        ("total_minor", 5950),
    ] {
        assert_eq!(pending[field], value, "order.{field}");
    }
    assert_eq!(pending["lines"][0]["sku"], "MATCHA-30");
    assert_eq!(pending["lines"][0]["product_name"], "抹茶 30g");
    assert_eq!(pending["lines"][0]["quantity"], 2);
    assert_eq!(pending["lines"][0]["unit_price_minor"], 1500);
    assert_eq!(pending["lines"][0]["line_total_minor"], 3000);
    assert_eq!(pending["lines"][0]["tax_minor"], 240);
    assert_eq!(pending["lines"][1]["sku"], "CHASEN-100");
    let contact_id = pending["contact_id"].as_str().unwrap().to_owned();
    let customer = contact(&app, &contact_id);
    assert_eq!(customer["email"], "ichiro.suzuki@example.jp");
    assert_eq!(customer["first_touch"]["source"], "webhook:woocommerce");
    assert_eq!(customer["counters"]["order_count"], 0);

    // processing (paid)
    minutes(&app, 2);
    applied(
        &post_woo(
            &app,
            "order.updated",
            "d-2",
            &woo_state("processing", "2026-11-22T02:41:30"),
        ),
        "order.updated processing",
    );
    assert_eq!(order(&app, &order_id)["status"], "paid");
    assert_eq!(
        contact(&app, &contact_id)["counters"]["total_spent_minor"],
        5950
    );

    // completed (shipped): still paid, counted once
    minutes(&app, 60);
    applied(
        &post_woo(
            &app,
            "order.updated",
            "d-3",
            &woo_state("completed", "2026-11-22T04:00:00"),
        ),
        "order.updated completed",
    );
    assert_eq!(order(&app, &order_id)["status"], "paid");
    let customer = contact(&app, &contact_id);
    assert_eq!(customer["counters"]["order_count"], 1);
    assert_eq!(customer["counters"]["total_spent_minor"], 5950);

    // a partial refund, listed on the order as a negative total
    minutes(&app, 60);
    let mut partial = woo_state("completed", "2026-11-22T05:00:00");
    partial["refunds"] = json!([{"id": 4400, "reason": "茶筅の破損", "total": "-500"}]);
    applied(
        &post_woo(&app, "order.updated", "d-4", &partial),
        "partial refund",
    );
    let partially = order(&app, &order_id);
    assert_eq!(partially["status"], "partially_refunded");
    assert_eq!(partially["refunded_minor"], 500);
    assert_eq!(partially["refunds"][0]["external_id"], "4400");
    assert_eq!(
        contact(&app, &contact_id)["counters"]["total_spent_minor"],
        5450
    );

    // refunded in full
    minutes(&app, 60);
    let mut refunded = woo_state("refunded", "2026-11-22T06:00:00");
    refunded["refunds"] = json!([
        {"id": 4401, "reason": "", "total": "-5450"},
        {"id": 4400, "reason": "茶筅の破損", "total": "-500"}
    ]);
    applied(
        &post_woo(&app, "order.updated", "d-5", &refunded),
        "refunded",
    );
    let full = order(&app, &order_id);
    assert_eq!(full["status"], "refunded");
    assert_eq!(full["refunded_minor"], 5950);
    let customer = contact(&app, &contact_id);
    assert_eq!(customer["counters"]["order_count"], 0);
    assert_eq!(customer["counters"]["total_spent_minor"], 0);
}

#[test]
fn a_cancelled_woocommerce_order_is_not_counted() {
    // Arrange
    let app = TestApp::new();
    applied(
        &post_woo(
            &app,
            "order.created",
            "d-1",
            &woo_state("processing", "2026-11-22T02:41:30"),
        ),
        "processing",
    );

    // Act
    minutes(&app, 30);
    let response = post_woo(
        &app,
        "order.updated",
        "d-2",
        &woo_state("cancelled", "2026-11-22T03:10:00"),
    );

    // Assert
    applied(&response, "cancelled");
    let cancelled = order_by_external(&app, "woocommerce", WOO_ORDER_ID);
    assert_eq!(cancelled["status"], "cancelled");
    let customer = contact_of(&app, &cancelled);
    assert_eq!(customer["counters"]["order_count"], 0);
    assert_eq!(customer["counters"]["total_spent_minor"], 0);
    assert_eq!(
        count_kind(
            &timeline_kinds(&app, cancelled["contact_id"].as_str().unwrap()),
            "order_cancelled"
        ),
        1
    );
}

#[test]
fn a_woocommerce_order_paid_after_a_failed_payment_is_counted() {
    // Arrange: the card is declined at checkout (pending → failed), the
    // customer pays again on the same order (failed → processing)
    let app = TestApp::new();
    applied(
        &post_woo(
            &app,
            "order.created",
            "d-1",
            &woo_state("pending", "2026-11-22T02:40:00"),
        ),
        "pending",
    );
    minutes(&app, 1);
    applied(
        &post_woo(
            &app,
            "order.updated",
            "d-2",
            &woo_state("failed", "2026-11-22T02:40:20"),
        ),
        "failed",
    );

    // Act
    minutes(&app, 5);
    let response = post_woo(
        &app,
        "order.updated",
        "d-3",
        &woo_state("processing", "2026-11-22T02:45:00"),
    );

    // Assert
    applied(&response, "processing after a retry");
    let order = order_by_external(&app, "woocommerce", WOO_ORDER_ID);
    assert_eq!(order["status"], "paid", "{order}");
    let customer = contact_of(&app, &order);
    assert_eq!(customer["counters"]["order_count"], 1);
    assert_eq!(customer["counters"]["total_spent_minor"], 5950);
    assert_eq!(customer["lifecycle_stage"], "customer");
}

#[test]
fn the_woocommerce_save_time_ping_is_acknowledged_and_stores_nothing() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);
    let before = stored(&app);

    // Act: WordPress posts `webhook_id=…`, form-encoded and unsigned
    let response = app.request(
        "POST",
        "/v1/webhooks/woocommerce",
        &[
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            ),
            ("user-agent", "WooCommerce/9.4.2 Hookshot (WordPress/6.7.1)"),
        ],
        "webhook_id=123",
    );

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(stored(&app), before);
}

#[test]
fn the_same_woocommerce_order_state_from_two_deliveries_counts_once() {
    // Arrange
    let app = TestApp::new();
    let body = woo_state("processing", "2026-11-22T02:41:30");
    applied(&post_woo(&app, "order.updated", "d-1", &body), "first");
    let before = stored(&app);

    // Act: a manual "resend" from the WooCommerce admin: a new delivery id
    let again = post_woo(&app, "order.updated", "d-1-resend", &body);

    // Assert
    answered(&again, "duplicate", "resend");
    let after = stored(&app);
    assert_eq!(
        after
            .iter()
            .filter(|(t, _)| t != "webhook_deliveries")
            .collect::<Vec<_>>(),
        before
            .iter()
            .filter(|(t, _)| t != "webhook_deliveries")
            .collect::<Vec<_>>()
    );
    let customer = contact_of(&app, &order_by_external(&app, "woocommerce", WOO_ORDER_ID));
    assert_eq!(customer["counters"]["order_count"], 1);
    assert_eq!(customer["counters"]["total_spent_minor"], 5950);
}

// ---------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------

#[test]
fn bad_signatures_and_missing_headers_are_401_and_store_nothing() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);
    let before = stored(&app);
    let kizuna = kizuna_event("order.paid").to_string();
    let ts = now(&app);
    let good_standard = standard_headers(
        "msg_1",
        ts,
        &sign_standard(ORDERS_SECRET, "msg_1", ts, kizuna.as_bytes()),
    );
    let other_secret = "whsec_b3RoZXItb3JkZXJzLXNlY3JldC0wMTIzNDU2Nzg5";
    let shopify = shopify_order().to_string();
    let good_shopify = shopify_headers(
        "orders/create",
        "ev-1",
        "wh-1",
        &sign_body(SHOPIFY_SECRET, shopify.as_bytes()),
    );
    let woo = woo_order().to_string();
    let good_woo = woo_headers(
        "order.updated",
        "d-1",
        &sign_body(WOO_SECRET, woo.as_bytes()),
    );
    let tampered = |text: &str| {
        text.replace("\"total_price\":\"6100\"", "\"total_price\":\"1\"")
            .replace("\"total\":\"5950\"", "\"total\":\"1\"")
    };
    assert_ne!(
        tampered(&shopify),
        shopify,
        "the tamper must change the body"
    );
    assert_ne!(tampered(&kizuna), kizuna, "the tamper must change the body");
    assert_ne!(tampered(&woo), woo, "the tamper must change the body");
    let cases: Vec<(&str, &str, Headers, String)> = vec![
        (
            "standard: tampered body",
            "/v1/webhooks/orders",
            good_standard.clone(),
            tampered(&kizuna),
        ),
        (
            "standard: wrong secret",
            "/v1/webhooks/orders",
            standard_headers(
                "msg_1",
                ts,
                &sign_standard(other_secret, "msg_1", ts, kizuna.as_bytes()),
            ),
            kizuna.clone(),
        ),
        (
            "standard: signature of another message id",
            "/v1/webhooks/orders",
            standard_headers(
                "msg_2",
                ts,
                &sign_standard(ORDERS_SECRET, "msg_1", ts, kizuna.as_bytes()),
            ),
            kizuna.clone(),
        ),
        (
            "standard: signature without the v1 prefix",
            "/v1/webhooks/orders",
            standard_headers(
                "msg_1",
                ts,
                sign_standard(ORDERS_SECRET, "msg_1", ts, kizuna.as_bytes())
                    .trim_start_matches("v1,"),
            ),
            kizuna.clone(),
        ),
        (
            "standard: non-numeric timestamp",
            "/v1/webhooks/orders",
            owned(&[
                ("content-type", "application/json"),
                ("webhook-id", "msg_1"),
                ("webhook-timestamp", "2026-11-22T03:00:00Z"),
                (
                    "webhook-signature",
                    &sign_standard(ORDERS_SECRET, "msg_1", ts, kizuna.as_bytes()),
                ),
            ]),
            kizuna.clone(),
        ),
        (
            "standard: missing webhook-id",
            "/v1/webhooks/orders",
            without(&good_standard, "webhook-id"),
            kizuna.clone(),
        ),
        (
            "standard: missing webhook-timestamp",
            "/v1/webhooks/orders",
            without(&good_standard, "webhook-timestamp"),
            kizuna.clone(),
        ),
        (
            "standard: missing webhook-signature",
            "/v1/webhooks/orders",
            without(&good_standard, "webhook-signature"),
            kizuna.clone(),
        ),
        (
            "shopify: tampered body",
            "/v1/webhooks/shopify",
            good_shopify.clone(),
            tampered(&shopify),
        ),
        (
            "shopify: wrong secret",
            "/v1/webhooks/shopify",
            shopify_headers(
                "orders/create",
                "ev-1",
                "wh-1",
                &sign_body("shpss_some_other_app", shopify.as_bytes()),
            ),
            shopify.clone(),
        ),
        (
            "shopify: hex instead of base64",
            "/v1/webhooks/shopify",
            shopify_headers(
                "orders/create",
                "ev-1",
                "wh-1",
                "5f2b7c0e4d9a1b3c5e7f9a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d",
            ),
            shopify.clone(),
        ),
        (
            "shopify: missing X-Shopify-Hmac-Sha256",
            "/v1/webhooks/shopify",
            without(&good_shopify, "x-shopify-hmac-sha256"),
            shopify.clone(),
        ),
        (
            "woocommerce: tampered body",
            "/v1/webhooks/woocommerce",
            good_woo.clone(),
            tampered(&woo),
        ),
        (
            "woocommerce: wrong secret",
            "/v1/webhooks/woocommerce",
            woo_headers(
                "order.updated",
                "d-1",
                &sign_body("another-store-secret", woo.as_bytes()),
            ),
            woo.clone(),
        ),
        (
            "woocommerce: missing X-WC-Webhook-Signature",
            "/v1/webhooks/woocommerce",
            without(&good_woo, "x-wc-webhook-signature"),
            woo.clone(),
        ),
    ];

    for (case, path, headers, body) in cases {
        // Act
        let response = post(&app, path, &headers, body);

        // Assert
        response.assert_problem(401, case);
        assert_eq!(stored(&app), before, "case {case}: nothing stored");
    }
}

#[test]
fn standard_webhooks_timestamps_outside_five_minutes_are_401() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);
    let body = kizuna_event("order.paid").to_string();
    // Offsets from the moment each request is signed. Under Spin the
    // clock runs while the test does, so the one-second edges get a few
    // seconds' room there; natively the manual clock keeps them exact.
    let room = if app.under_spin() { 5 } else { 1 };
    let cases = [
        ("5 min 1 s old", Some(-300 - room), 401),
        ("an hour old", Some(-3600), 401),
        ("5 min 1 s ahead", Some(300 + room), 401),
        ("a day ahead", Some(86_400), 401),
        ("zero", None, 401),
        ("exactly 5 min old", Some(-301 + room), 200),
    ];

    for (case, offset, status) in cases {
        let ts = offset.map_or(0, |o| now(&app) + o);
        let before = stored(&app);
        let id = format!("msg_{ts}");
        let signature = sign_standard(ORDERS_SECRET, &id, ts, body.as_bytes());

        // Act
        let response = post(
            &app,
            "/v1/webhooks/orders",
            &standard_headers(&id, ts, &signature),
            body.clone(),
        );

        // Assert
        if status == 401 {
            response.assert_problem(401, case);
            assert_eq!(stored(&app), before, "case {case}: nothing stored");
        } else {
            applied(&response, case);
        }
    }
}

#[test]
fn a_captured_delivery_replayed_after_the_tolerance_is_401() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    let body = kizuna_event("order.paid").to_string();
    let ts = now(&app);
    let headers = standard_headers(
        "msg_captured",
        ts,
        &sign_standard(ORDERS_SECRET, "msg_captured", ts, body.as_bytes()),
    );
    applied(
        &post(&app, "/v1/webhooks/orders", &headers, body.clone()),
        "original",
    );
    let before = stored(&app);

    // Act
    minutes(&app, 6);
    let replay = post(&app, "/v1/webhooks/orders", &headers, body);

    // Assert
    replay.assert_problem(401, "replay");
    assert_eq!(stored(&app), before);
}

#[test]
fn a_standard_signature_list_verifies_when_any_entry_matches() {
    // Arrange: a sender mid-rotation signs with an unknown and the current key
    let app = TestApp::new();
    let body = kizuna_event("order.paid").to_string();
    let ts = now(&app);
    let good = sign_standard(ORDERS_SECRET, "msg_multi", ts, body.as_bytes());
    let unknown = sign_standard(
        "whsec_bmV4dC1rZXktbm90LXlldC1jb25maWd1cmVk",
        "msg_multi",
        ts,
        body.as_bytes(),
    );
    let headers = standard_headers("msg_multi", ts, &format!("{unknown} {good}"));

    // Act
    let response = post(&app, "/v1/webhooks/orders", &headers, body);

    // Assert
    applied(&response, "signature list");
    assert_eq!(app.count("SELECT count(*) FROM orders"), 1);
}

#[test]
fn rotated_secrets_all_verify_and_others_do_not() {
    // Arrange
    let old_std = "whsec_b2xkLW9yZGVycy1zZWNyZXQtYWJjZGVmZ2g=";
    let new_std = "whsec_bmV3LW9yZGVycy1zZWNyZXQtaWprbG1ub3A=";
    let app = TestApp::with_variables(&[
        (
            "shopify_webhook_secrets",
            "shpss_old_secret,shpss_new_secret",
        ),
        (
            "woocommerce_webhook_secrets",
            "woo-old-secret, woo-new-secret",
        ),
        ("orders_webhook_secrets", &format!("{old_std},{new_std}")),
    ]);
    migrate(&app);

    for (n, secret) in ["shpss_old_secret", "shpss_new_secret"].iter().enumerate() {
        let mut body = shopify_order();
        body["id"] = json!(9_000_000 + n);
        let text = body.to_string();
        let headers = shopify_headers(
            "orders/create",
            &format!("ev-rot-{n}"),
            &format!("wh-rot-{n}"),
            &sign_body(secret, text.as_bytes()),
        );
        applied(
            &post(&app, "/v1/webhooks/shopify", &headers, text),
            &format!("shopify secret {secret}"),
        );
    }
    for (n, secret) in ["woo-old-secret", "woo-new-secret"].iter().enumerate() {
        let mut body = woo_order();
        body["id"] = json!(8000 + n);
        let text = body.to_string();
        let headers = woo_headers(
            "order.created",
            &format!("d-rot-{n}"),
            &sign_body(secret, text.as_bytes()),
        );
        applied(
            &post(&app, "/v1/webhooks/woocommerce", &headers, text),
            &format!("woocommerce secret {secret}"),
        );
    }
    for (n, secret) in [old_std, new_std].iter().enumerate() {
        let mut body = kizuna_event("order.paid");
        body["data"]["id"] = json!(format!("ROT-{n}"));
        let text = body.to_string();
        let id = format!("msg_rot_{n}");
        let ts = now(&app);
        let headers = standard_headers(&id, ts, &sign_standard(secret, &id, ts, text.as_bytes()));
        applied(
            &post(&app, "/v1/webhooks/orders", &headers, text),
            &format!("standard secret {secret}"),
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM orders"), 6);

    // The secret no longer configured is refused everywhere.
    let before = stored(&app);
    let text = shopify_order().to_string();
    post(
        &app,
        "/v1/webhooks/shopify",
        &shopify_headers(
            "orders/create",
            "ev-x",
            "wh-x",
            &sign_body(SHOPIFY_SECRET, text.as_bytes()),
        ),
        text,
    )
    .assert_problem(401, "retired shopify secret");
    let text = woo_order().to_string();
    post(
        &app,
        "/v1/webhooks/woocommerce",
        &woo_headers(
            "order.created",
            "d-x",
            &sign_body(WOO_SECRET, text.as_bytes()),
        ),
        text,
    )
    .assert_problem(401, "retired woocommerce secret");
    let text = kizuna_event("order.paid").to_string();
    let ts = now(&app);
    post(
        &app,
        "/v1/webhooks/orders",
        &standard_headers(
            "msg_x",
            ts,
            &sign_standard(ORDERS_SECRET, "msg_x", ts, text.as_bytes()),
        ),
        text,
    )
    .assert_problem(401, "retired standard secret");
    assert_eq!(stored(&app), before);
}

// ---------------------------------------------------------------------------
// Duplicates and concurrency
// ---------------------------------------------------------------------------

#[test]
fn a_repeated_delivery_answers_duplicate_and_changes_nothing() {
    // Arrange
    let app = TestApp::new();
    let event = kizuna_event("order.paid");
    let first = post_kizuna(&app, "msg_once", &event);
    let order_id = applied(&first, "first").unwrap();
    let contact_id = order(&app, &order_id)["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let counters = contact(&app, &contact_id)["counters"].clone();
    let timeline = timeline_kinds(&app, &contact_id);

    // Act: a retry of the same message, and Shopify's second delivery
    // (new webhook id) of one event id
    minutes(&app, 1);
    let retry = post_kizuna(&app, "msg_once", &event);
    let shop_body = shopify_order().to_string();
    let hmac = sign_body(SHOPIFY_SECRET, shop_body.as_bytes());
    applied(
        &post(
            &app,
            "/v1/webhooks/shopify",
            &shopify_headers("orders/paid", "ev-77", "wh-a", &hmac),
            shop_body.clone(),
        ),
        "shopify first",
    );
    let shop_again = post(
        &app,
        "/v1/webhooks/shopify",
        &shopify_headers("orders/paid", "ev-77", "wh-b", &hmac),
        shop_body,
    );

    // Assert
    answered(&retry, "duplicate", "standard webhooks retry");
    answered(
        &shop_again,
        "duplicate",
        "shopify second delivery of one event",
    );
    assert_eq!(contact(&app, &contact_id)["counters"], counters);
    assert_eq!(timeline_kinds(&app, &contact_id), timeline);
    assert_eq!(app.count("SELECT count(*) FROM orders"), 2);
    assert_eq!(app.count("SELECT count(*) FROM webhook_events"), 2);
    assert_eq!(
        app.count("SELECT count(*) FROM webhook_deliveries WHERE outcome = 'duplicate'"),
        2
    );
}

/// POSTs each request from its own thread, all released at once; returns
/// (status, body) per request, or status 0 with the transport error.
fn post_concurrently(url: &str, requests: Vec<(Headers, String)>) -> Vec<(u16, String)> {
    let urls = vec![url.to_owned(); requests.len()];
    post_concurrently_to(&urls, requests)
}

/// Like `post_concurrently`, request `i` going to `urls[i]`.
fn post_concurrently_to(urls: &[String], requests: Vec<(Headers, String)>) -> Vec<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let barrier = std::sync::Barrier::new(requests.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .into_iter()
            .zip(urls)
            .map(|((headers, body), url)| {
                let (agent, barrier) = (&agent, &barrier);
                scope.spawn(move || {
                    let mut request = agent.post(url);
                    for (name, value) in &headers {
                        request = request.header(name, value);
                    }
                    barrier.wait();
                    match request.send(body) {
                        Ok(mut response) => (
                            response.status().as_u16(),
                            response.body_mut().read_to_string().unwrap_or_default(),
                        ),
                        Err(error) => (0, error.to_string()),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    })
}

/// Statuses of the JSON answers: ("applied", n), ("duplicate", n)…
fn tally(answers: &[(u16, String)]) -> std::collections::BTreeMap<String, usize> {
    let mut tally = std::collections::BTreeMap::new();
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "request {i}: {body}");
        let body: Json = serde_json::from_str(body).expect("JSON answer");
        *tally
            .entry(body["status"].as_str().unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    tally
}

#[test]
fn the_same_shopify_delivery_twenty_times_concurrently_counts_once() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);
    let server = app.serve(32);
    let url = format!("{}/v1/webhooks/shopify", server.url());
    let body = shopify_order().to_string();
    let headers = shopify_headers(
        "orders/paid",
        "ev-20x",
        "wh-20x",
        &sign_body(SHOPIFY_SECRET, body.as_bytes()),
    );

    // Act
    let answers = post_concurrently(&url, vec![(headers, body); 20]);
    server.stop();

    // Assert
    let tally = tally(&answers);
    assert_eq!(tally.get("applied"), Some(&1), "{tally:?}");
    assert_eq!(tally.get("duplicate"), Some(&19), "{tally:?}");
    assert_eq!(app.count("SELECT count(*) FROM orders"), 1);
    assert_eq!(app.count("SELECT count(*) FROM order_lines"), 2);
    assert_eq!(app.count("SELECT count(*) FROM webhook_events"), 1);
    assert_eq!(app.count("SELECT count(*) FROM webhook_deliveries"), 20);
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
    let order = order_by_external(&app, "shopify", SHOPIFY_ORDER_ID);
    let customer = contact_of(&app, &order);
    assert_eq!(customer["counters"]["order_count"], 1);
    assert_eq!(customer["counters"]["total_spent_minor"], 6100);
    assert_eq!(
        count_kind(
            &timeline_kinds(&app, customer["id"].as_str().unwrap()),
            "order_placed"
        ),
        1
    );
}

#[test]
fn the_same_standard_webhooks_message_twenty_times_concurrently_counts_once() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);
    let server = app.serve_on_app_clock(32);
    let url = format!("{}/v1/webhooks/orders", server.url());
    let body = kizuna_event("order.paid").to_string();
    let ts = now(&app);
    let headers = standard_headers(
        "msg_20x",
        ts,
        &sign_standard(ORDERS_SECRET, "msg_20x", ts, body.as_bytes()),
    );

    // Act
    let answers = post_concurrently(&url, vec![(headers, body); 20]);
    server.stop();

    // Assert
    let tally = tally(&answers);
    assert_eq!(tally.get("applied"), Some(&1), "{tally:?}");
    assert_eq!(tally.get("duplicate"), Some(&19), "{tally:?}");
    assert_eq!(app.count("SELECT count(*) FROM orders"), 1);
    assert_eq!(app.count("SELECT count(*) FROM webhook_events"), 1);
    let customer = contact_of(&app, &order_by_external(&app, "kizuna", KIZUNA_ORDER_ID));
    assert_eq!(customer["counters"]["order_count"], 1);
    assert_eq!(customer["counters"]["total_spent_minor"], 5950);
}

#[test]
fn one_shopify_order_through_create_paid_and_updated_concurrently_counts_once() {
    // Arrange: each topic is its own event, each delivered (and retried) 4 times
    let app = TestApp::new();
    migrate(&app);
    let server = app.serve(32);
    let url = format!("{}/v1/webhooks/shopify", server.url());
    let mut created = shopify_order();
    created["financial_status"] = json!("pending");
    let mut paid = shopify_order();
    paid["updated_at"] = json!("2026-11-22T11:52:00+09:00");
    let mut updated = shopify_order();
    updated["updated_at"] = json!("2026-11-22T11:55:00+09:00");
    let mut requests = Vec::new();
    for (topic, event_id, body) in [
        ("orders/create", "ev-c", created),
        ("orders/paid", "ev-p", paid),
        ("orders/updated", "ev-u", updated),
    ] {
        let body = body.to_string();
        let headers = shopify_headers(
            topic,
            event_id,
            &shopify_webhook_id(topic, event_id),
            &sign_body(SHOPIFY_SECRET, body.as_bytes()),
        );
        for _ in 0..4 {
            requests.push((headers.clone(), body.clone()));
        }
    }

    // Act
    let answers = post_concurrently(&url, requests);
    server.stop();

    // Assert
    let tally = tally(&answers);
    assert_eq!(tally.get("applied"), Some(&3), "{tally:?}");
    assert_eq!(tally.get("duplicate"), Some(&9), "{tally:?}");
    assert_eq!(app.count("SELECT count(*) FROM orders"), 1);
    assert_eq!(app.count("SELECT count(*) FROM order_lines"), 2);
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
    assert_eq!(app.count("SELECT count(*) FROM webhook_events"), 3);
    let order = order_by_external(&app, "shopify", SHOPIFY_ORDER_ID);
    assert_eq!(order["status"], "paid");
    let customer = contact_of(&app, &order);
    assert_eq!(customer["counters"]["order_count"], 1);
    assert_eq!(customer["counters"]["total_spent_minor"], 6100);
    assert_eq!(customer["lifecycle_stage"], "customer");
    assert_eq!(
        count_kind(
            &timeline_kinds(&app, customer["id"].as_str().unwrap()),
            "order_placed"
        ),
        1
    );
}

#[test]
fn different_orders_of_one_new_customer_concurrently_make_one_contact() {
    // Arrange: six Shopify orders and four WooCommerce orders, same buyer
    let app = TestApp::new();
    migrate(&app);
    let server = app.serve(32);
    let base = server.url();
    let mut requests = Vec::new();
    let mut urls = Vec::new();
    for n in 0..6_u64 {
        let body = another_shopify_order(
            7_000_000_000_000 + n,
            &format!("#30{n:02}"),
            "2026-11-22T12:00:00+09:00",
            "1000",
        )
        .to_string();
        let event_id = format!("ev-{n}");
        let headers = shopify_headers(
            "orders/paid",
            &event_id,
            &shopify_webhook_id("orders/paid", &event_id),
            &sign_body(SHOPIFY_SECRET, body.as_bytes()),
        );
        requests.push((headers, body));
        urls.push(format!("{base}/v1/webhooks/shopify"));
    }
    for n in 0..4_u64 {
        let mut order = woo_order();
        order["id"] = json!(9000 + n);
        order["billing"]["email"] = json!(SHOPIFY_EMAIL);
        let body = order.to_string();
        let headers = woo_headers(
            "order.created",
            &format!("d-{n}"),
            &sign_body(WOO_SECRET, body.as_bytes()),
        );
        requests.push((headers, body));
        urls.push(format!("{base}/v1/webhooks/woocommerce"));
    }

    // Act
    let answers = post_concurrently_to(&urls, requests);
    server.stop();

    // Assert
    let tally = tally(&answers);
    assert_eq!(tally.get("applied"), Some(&10), "{tally:?}");
    assert_eq!(app.count("SELECT count(*) FROM orders"), 10);
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
    assert_eq!(app.count("SELECT count(*) FROM contact_external_ids"), 2);
    let customer = contact_of(&app, &order_by_external(&app, "woocommerce", "9000"));
    assert_eq!(customer["counters"]["order_count"], 10);
    assert_eq!(
        customer["counters"]["total_spent_minor"],
        6 * 1000 + 4 * 5950
    );
    assert_eq!(customer["lifecycle_stage"], "repeat");
}

// ---------------------------------------------------------------------------
// Out-of-order delivery
// ---------------------------------------------------------------------------

/// Delivers Kizuna events `(msg id, event)` in the given order, a minute
/// apart, into a fresh app; returns the final state.
fn kizuna_run(events: &[&(&str, Json)]) -> Json {
    let app = TestApp::new();
    for (msg_id, event) in events {
        applied(&post_kizuna(&app, msg_id, event), msg_id);
        minutes(&app, 1);
    }
    final_state(&app, "kizuna", KIZUNA_ORDER_ID)
}

fn permutations<T: Clone>(items: &[T]) -> Vec<Vec<T>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for i in 0..items.len() {
        let mut rest = items.to_vec();
        let head = rest.remove(i);
        for mut tail in permutations(&rest) {
            tail.insert(0, head.clone());
            all.push(tail);
        }
    }
    all
}

#[test]
fn kizuna_events_in_any_order_end_where_in_order_delivery_ends() {
    let families: Vec<(&str, Events, Json)> = vec![
        (
            "created, paid, refunded (refund before paid)",
            vec![
                ("msg_created", kizuna_event("order.created")),
                ("msg_paid", kizuna_event("order.paid")),
                ("msg_refunded", kizuna_refunded("R-1", "1000")),
            ],
            json!({"status": "partially_refunded", "refunded_minor": 1000, "spent": 4950, "count": 1}),
        ),
        (
            "paid, cancelled (cancel then paid)",
            vec![
                ("msg_paid", kizuna_event("order.paid")),
                ("msg_cancelled", kizuna_event("order.cancelled")),
            ],
            json!({"status": "cancelled", "refunded_minor": 0, "spent": 0, "count": 0}),
        ),
        (
            "paid, refunded, cancelled",
            vec![
                ("msg_paid", kizuna_event("order.paid")),
                ("msg_refunded", kizuna_refunded("R-1", "1000")),
                ("msg_cancelled", kizuna_event("order.cancelled")),
            ],
            json!({"status": "cancelled", "refunded_minor": 1000, "spent": 0, "count": 0}),
        ),
        (
            "paid, refunded twice (same refund), refunded in full",
            vec![
                ("msg_paid", kizuna_event("order.paid")),
                ("msg_refunded_1", kizuna_refunded("R-1", "1000")),
                ("msg_refunded_1_again", kizuna_refunded("R-1", "1000")),
                ("msg_refunded_2", {
                    let mut e = kizuna_refunded("R-2", "4950");
                    e["data"]["refunds"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"id": "R-1", "amount": "1000"}));
                    e
                }),
            ],
            json!({"status": "refunded", "refunded_minor": 5950, "spent": 0, "count": 0}),
        ),
    ];

    for (family, events, expected) in families {
        // Arrange: the in-order run is the reference
        let in_order: Vec<&(&str, Json)> = events.iter().collect();
        let reference = kizuna_run(&in_order);
        assert_eq!(
            reference["status"], expected["status"],
            "{family}: in order"
        );
        assert_eq!(
            reference["refunded_minor"], expected["refunded_minor"],
            "{family}: in order"
        );
        assert_eq!(
            reference["counters"]["total_spent_minor"], expected["spent"],
            "{family}: in order"
        );
        assert_eq!(
            reference["counters"]["order_count"], expected["count"],
            "{family}: in order"
        );

        for order in permutations(&in_order) {
            // Act
            let state = kizuna_run(&order);

            // Assert
            let names: Vec<&str> = order.iter().map(|(id, _)| *id).collect();
            assert_eq!(state, reference, "{family}: delivered as {names:?}");
        }
    }
}

/// In-order Shopify delivery vs refunds/create before the order exists.
fn shopify_refund_runs() -> (Json, Json, TestApp) {
    let in_order = TestApp::new();
    applied(
        &post_shopify(&in_order, "orders/create", "ev-o", &shopify_order()),
        "in order: orders/create",
    );
    minutes(&in_order, 60);
    applied(
        &post_shopify(&in_order, "refunds/create", "ev-r", &shopify_refund()),
        "in order: refunds/create",
    );

    let early = TestApp::new();
    let refund_first = post_shopify(&early, "refunds/create", "ev-r", &shopify_refund());
    assert_eq!(refund_first.status, 200, "{}", refund_first.text());
    assert_eq!(refund_first.json()["status"], "applied");
    assert!(
        refund_first.json()["order_id"].is_null(),
        "no order exists yet"
    );
    minutes(&early, 60);
    applied(
        &post_shopify(&early, "orders/create", "ev-o", &shopify_order()),
        "late order",
    );
    (
        final_state(&in_order, "shopify", SHOPIFY_ORDER_ID),
        final_state(&early, "shopify", SHOPIFY_ORDER_ID),
        early,
    )
}

#[test]
fn a_shopify_refund_before_its_order_is_counted_when_the_order_arrives() {
    // Arrange + Act
    let (mut reference, mut early, _) = shopify_refund_runs();

    // Assert: order, refunds and counters as in-order delivery
    assert_eq!(early["status"], "partially_refunded");
    assert_eq!(early["refunded_minor"], 1620);
    assert_eq!(early["counters"]["total_spent_minor"], 6100 - 1620);
    assert_eq!(early["counters"]["order_count"], 1);
    reference.as_object_mut().unwrap().remove("timeline");
    early.as_object_mut().unwrap().remove("timeline");
    assert_eq!(early, reference);
}

#[test]
fn a_shopify_refund_before_its_order_still_reaches_the_timeline() {
    // Arrange + Act
    let (reference, early, _) = shopify_refund_runs();

    // Assert: the contact's history is the same as in-order delivery
    assert_eq!(
        reference["timeline"],
        json!(["order_placed", "order_refunded"]),
        "in order"
    );
    assert_eq!(early["timeline"], reference["timeline"], "refund first");
}

#[test]
fn the_same_shopify_refund_from_refunds_create_and_the_order_counts_once() {
    // Arrange
    let app = TestApp::new();
    applied(
        &post_shopify(&app, "orders/create", "ev-o", &shopify_order()),
        "order",
    );
    applied(
        &post_shopify(&app, "refunds/create", "ev-r", &shopify_refund()),
        "refund",
    );

    // Act: orders/updated now lists the same refund
    let mut updated = shopify_order();
    updated["updated_at"] = json!("2026-11-23T10:00:05+09:00");
    updated["financial_status"] = json!("partially_refunded");
    updated["refunds"] = json!([shopify_refund()]);
    applied(
        &post_shopify(&app, "orders/updated", "ev-u", &updated),
        "orders/updated",
    );

    // Assert
    let order = order_by_external(&app, "shopify", SHOPIFY_ORDER_ID);
    assert_eq!(order["refunded_minor"], 1620);
    assert_eq!(order["refunds"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        contact_of(&app, &order)["counters"]["total_spent_minor"],
        4480
    );
}

#[test]
fn an_older_payload_does_not_overwrite_newer_order_details() {
    // Arrange
    let app = TestApp::new();
    let mut newer = shopify_order();
    newer["updated_at"] = json!("2026-11-22T15:00:00+09:00");
    newer["total_price"] = json!("5500");
    newer["total_shipping_price_set"]["shop_money"]["amount"] = json!("0");
    newer["line_items"].as_array_mut().unwrap().truncate(1);
    applied(
        &post_shopify(&app, "orders/updated", "ev-new", &newer),
        "newer",
    );

    // Act: orders/create, delayed, arrives last
    let response = post_shopify(&app, "orders/create", "ev-old", &shopify_order());

    // Assert
    applied(&response, "older");
    let order = order_by_external(&app, "shopify", SHOPIFY_ORDER_ID);
    assert_eq!(order["total_minor"], 5500);
    assert_eq!(order["shipping_minor"], 0);
    assert_eq!(order["lines"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        contact_of(&app, &order)["counters"]["total_spent_minor"],
        5500
    );
}

// ---------------------------------------------------------------------------
// Counters and lifecycle
// ---------------------------------------------------------------------------

/// The Shopify fixture as another order (`id`, `name`) of the same customer.
fn another_shopify_order(id: u64, name: &str, processed_at: &str, price: &str) -> Json {
    let mut order = shopify_order();
    order["id"] = json!(id);
    order["name"] = json!(name);
    order["created_at"] = json!(processed_at);
    order["processed_at"] = json!(processed_at);
    order["updated_at"] = json!(processed_at);
    order["line_items"] = json!([{
        "id": id * 10, "sku": "TEA-HOJI-200", "title": "ほうじ茶 200g", "name": "ほうじ茶 200g",
        "quantity": 1, "price": price, "total_discount": "0", "vendor": "絆茶園",
        "product_id": 8123456789014_u64, "variant_id": 45123456789014_u64, "tax_lines": []
    }]);
    order["subtotal_price"] = json!(price);
    order["total_discounts"] = json!("0");
    order["total_tax"] = json!("0");
    order["total_shipping_price_set"]["shop_money"]["amount"] = json!("0");
    order["total_price"] = json!(price);
    order
}

fn shopify_refund_of(order_id: u64, refund_id: u64, amount: &str) -> Json {
    let mut refund = shopify_refund();
    refund["id"] = json!(refund_id);
    refund["order_id"] = json!(order_id);
    refund["transactions"][0]["order_id"] = json!(order_id);
    refund["transactions"][0]["id"] = json!(refund_id + 1);
    refund["transactions"][0]["amount"] = json!(amount);
    refund
}

#[test]
fn counters_and_lifecycle_follow_orders_refunds_and_cancellations() {
    // Arrange
    let app = TestApp::new();

    // Act + Assert: first paid order → customer
    let first = applied(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "first order",
    )
    .unwrap();
    let contact_id = order(&app, &first)["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = contact(&app, &contact_id);
    assert_eq!(c["lifecycle_stage"], "customer");
    assert_eq!(
        c["counters"],
        json!({
            "order_count": 1, "total_spent_minor": 6100, "average_order_value_minor": 6100,
            "first_order_at": "2026-11-22T02:50:00.000000Z",
            "last_order_at": "2026-11-22T02:50:00.000000Z",
            // The default program: 1 point per ¥100 of the ¥5,000 subtotal.
            "points_balance": 50, "points_pending": 0, "points_debt": 0
        })
    );

    // second paid order → repeat
    minutes(&app, 60 * 24);
    let second_body =
        another_shopify_order(5432109876600, "#1002", "2026-11-23T12:00:00+09:00", "3000");
    applied(
        &post_shopify(&app, "orders/paid", "ev-2", &second_body),
        "second order",
    );
    let c = contact(&app, &contact_id);
    assert_eq!(c["lifecycle_stage"], "repeat");
    assert_eq!(c["counters"]["order_count"], 2);
    assert_eq!(c["counters"]["total_spent_minor"], 9100);
    assert_eq!(c["counters"]["average_order_value_minor"], 4550);
    assert_eq!(
        c["counters"]["first_order_at"],
        "2026-11-22T02:50:00.000000Z"
    );
    assert_eq!(
        c["counters"]["last_order_at"],
        "2026-11-23T03:00:00.000000Z"
    );

    // partial refund of the first → net spend down, partially_refunded
    minutes(&app, 60);
    applied(
        &post_shopify(&app, "refunds/create", "ev-3", &shopify_refund()),
        "partial refund",
    );
    assert_eq!(order(&app, &first)["status"], "partially_refunded");
    let c = contact(&app, &contact_id);
    assert_eq!(c["counters"]["order_count"], 2);
    assert_eq!(c["counters"]["total_spent_minor"], 9100 - 1620);
    assert_eq!(
        c["counters"]["average_order_value_minor"],
        (9100 - 1620) / 2
    );

    // full refund of the second → refunded, out of spend and count
    minutes(&app, 60);
    applied(
        &post_shopify(
            &app,
            "refunds/create",
            "ev-4",
            &shopify_refund_of(5432109876600, 889900112299, "3000"),
        ),
        "full refund",
    );
    let second = order_by_external(&app, "shopify", "5432109876600");
    assert_eq!(second["status"], "refunded");
    assert_eq!(second["refunded_minor"], 3000);
    let c = contact(&app, &contact_id);
    assert_eq!(c["lifecycle_stage"], "customer");
    assert_eq!(c["counters"]["order_count"], 1);
    assert_eq!(c["counters"]["total_spent_minor"], 6100 - 1620);
    assert_eq!(c["counters"]["average_order_value_minor"], 6100 - 1620);
    assert_eq!(
        c["counters"]["last_order_at"],
        "2026-11-22T02:50:00.000000Z"
    );

    // cancellation of the first → out of spend
    minutes(&app, 60);
    let mut cancelled = shopify_order();
    cancelled["cancelled_at"] = json!("2026-11-23T15:00:00+09:00");
    cancelled["updated_at"] = json!("2026-11-23T15:00:00+09:00");
    applied(
        &post_shopify(&app, "orders/cancelled", "ev-5", &cancelled),
        "cancel",
    );
    assert_eq!(order(&app, &first)["status"], "cancelled");
    let c = contact(&app, &contact_id);
    assert_eq!(c["counters"]["order_count"], 0);
    assert_eq!(c["counters"]["total_spent_minor"], 0);
    assert_eq!(c["counters"]["average_order_value_minor"], 0);

    let kinds = timeline_kinds(&app, &contact_id);
    assert_eq!(count_kind(&kinds, "order_placed"), 2, "{kinds:?}");
    assert_eq!(count_kind(&kinds, "order_refunded"), 2, "{kinds:?}");
    assert_eq!(count_kind(&kinds, "order_cancelled"), 1, "{kinds:?}");
}

#[test]
fn timeline_entries_say_which_order_and_how_much() {
    // Arrange
    let app = TestApp::new();
    let order_id = applied(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "order",
    )
    .unwrap();

    // Act
    applied(
        &post_shopify(&app, "refunds/create", "ev-2", &shopify_refund()),
        "refund",
    );

    // Assert
    let contact_id = order(&app, &order_id)["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let timeline = app
        .get(READ_KEY, &format!("/v1/contacts/{contact_id}/timeline"))
        .json();
    let items = timeline["items"].as_array().expect("items");
    let placed = items
        .iter()
        .find(|e| e["kind"] == "order_placed")
        .expect("order_placed");
    assert_eq!(placed["data"]["order_id"], order_id.as_str());
    assert_eq!(placed["data"]["number"], "#1001");
    assert_eq!(placed["data"]["total_minor"], 6100);
    assert_eq!(placed["data"]["currency"], "JPY");
    assert_eq!(placed["occurred_at"], "2026-11-22T02:50:00.000000Z");
    let refunded = items
        .iter()
        .find(|e| e["kind"] == "order_refunded")
        .expect("order_refunded");
    assert_eq!(refunded["data"]["order_id"], order_id.as_str());
    assert_eq!(refunded["data"]["amount_minor"], 1620);
}

// ---------------------------------------------------------------------------
// Customer matching
// ---------------------------------------------------------------------------

#[test]
fn a_returning_shopify_customer_is_matched_by_customer_id_even_with_a_new_email() {
    // Arrange
    let app = TestApp::new();
    let first = applied(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "first",
    )
    .unwrap();
    let contact_id = order(&app, &first)["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Act
    let mut second =
        another_shopify_order(5432109876700, "#1003", "2026-11-24T09:00:00+09:00", "2000");
    second["email"] = json!("hanako.new@example.jp");
    second["contact_email"] = json!("hanako.new@example.jp");
    second["customer"]["email"] = json!("hanako.new@example.jp");
    let second_id = applied(
        &post_shopify(&app, "orders/paid", "ev-2", &second),
        "second",
    )
    .unwrap();

    // Assert
    assert_eq!(order(&app, &second_id)["contact_id"], contact_id.as_str());
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
    let c = contact(&app, &contact_id);
    assert_eq!(c["email"], SHOPIFY_EMAIL, "stored email is not overwritten");
    assert_eq!(c["counters"]["order_count"], 2);
    assert_eq!(c["lifecycle_stage"], "repeat");
}

#[test]
fn an_order_is_matched_by_email_across_sources() {
    // Arrange: a lead from staff, then the same person buys on Shopify and WooCommerce
    let app = TestApp::new();
    let lead = app.create_contact(&json!({"email": "Hanako.Sato@Example.JP"}));
    let mut woo = woo_order();
    woo["billing"]["email"] = json!(SHOPIFY_EMAIL);

    // Act
    let shopify_id = applied(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "shopify",
    )
    .unwrap();
    let woo_id = applied(&post_woo(&app, "order.created", "d-1", &woo), "woo").unwrap();

    // Assert
    assert_eq!(order(&app, &shopify_id)["contact_id"], lead.as_str());
    assert_eq!(order(&app, &woo_id)["contact_id"], lead.as_str());
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM contact_external_ids WHERE contact_id = '{lead}'"
        )),
        2,
        "linked to both shops' customer ids"
    );
    let c = contact(&app, &lead);
    assert_eq!(c["counters"]["order_count"], 2);
    assert_eq!(c["counters"]["total_spent_minor"], 6100 + 5950);
}

#[test]
fn an_order_is_matched_by_phone_in_any_notation() {
    let cases = [
        ("national with hyphens", "090-1234-5678", "+819012345678"),
        ("international", "+81 90 1234 5678", "090-1234-5678"),
    ];
    for (case, staff_phone, order_phone) in cases {
        // Arrange: a phone-only contact entered by staff (call centre)
        let app = TestApp::new();
        let staff = app.create_contact(&json!({"phone": staff_phone}));
        let mut body = shopify_order();
        body["email"] = Json::Null;
        body["contact_email"] = Json::Null;
        body["customer"]["email"] = Json::Null;
        body["customer"]["id"] = json!(7000000000001_u64);
        body["customer"]["phone"] = json!(order_phone);
        body["billing_address"]["phone"] = json!(order_phone);

        // Act
        let order_id = applied(&post_shopify(&app, "orders/paid", "ev-1", &body), case).unwrap();

        // Assert
        assert_eq!(
            order(&app, &order_id)["contact_id"],
            staff.as_str(),
            "case {case}"
        );
        assert_eq!(app.count("SELECT count(*) FROM contacts"), 1, "case {case}");
    }
}

#[test]
fn a_phone_only_contact_is_matched_when_the_order_brings_a_new_email() {
    // Arrange
    let app = TestApp::new();
    let staff = app.create_contact(&json!({"phone": "090-1234-5678"}));

    // Act: the fixture's email is unknown to Kizuna, its phone is +8190…
    let order_id = applied(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "order",
    )
    .unwrap();

    // Assert
    assert_eq!(order(&app, &order_id)["contact_id"], staff.as_str());
    assert_eq!(
        contact(&app, &staff)["email"],
        SHOPIFY_EMAIL,
        "empty email filled"
    );
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
}

#[test]
fn staff_values_are_kept_and_empty_fields_filled() {
    // Arrange
    let app = TestApp::new();
    let staff = app.create_contact(&json!({
        "email": SHOPIFY_EMAIL, "name": "Staff Name", "company": "株式会社絆"
    }));

    // Act
    applied(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "order",
    );

    // Assert
    let c = contact(&app, &staff);
    assert_eq!(c["name"], "Staff Name");
    assert_eq!(c["company"], "株式会社絆");
    assert_eq!(c["phone"], "+819012345678");
    assert_eq!(c["family_name"], "佐藤");
    assert_eq!(c["given_name"], "花子");
    assert!(c["postal_code"].is_string(), "postal code filled: {c}");
    assert_ne!(
        c["first_touch"]["source"], "webhook:shopify",
        "first touch stays the staff's"
    );
}

#[test]
fn an_email_already_on_another_contact_does_not_lose_the_order() {
    // Arrange: a Shopify POS customer known only by phone, and a separate
    // lead who signed up with the email the customer later gives the shop
    let app = TestApp::new();
    let mut pos = shopify_order();
    pos["source_name"] = json!("pos");
    pos["email"] = Json::Null;
    pos["contact_email"] = Json::Null;
    pos["customer"]["email"] = Json::Null;
    pos["customer"]["id"] = json!(7099000000001_u64);
    pos["customer"]["phone"] = json!("+819055556666");
    pos["billing_address"] = Json::Null;
    let pos_id = applied(&post_shopify(&app, "orders/paid", "ev-1", &pos), "pos").unwrap();
    let phone_only = order(&app, &pos_id)["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lead = app.create_contact(&json!({"email": "kenji@example.jp"}));
    let mut online =
        another_shopify_order(5432109876800, "#1004", "2026-11-25T10:00:00+09:00", "4000");
    online["customer"] = pos["customer"].clone();
    online["customer"]["email"] = json!("kenji@example.jp");
    online["email"] = json!("kenji@example.jp");
    online["billing_address"] = Json::Null;

    // Act
    let response = post_shopify(&app, "orders/paid", "ev-2", &online);

    // Assert: the sale is recorded (a 4xx/5xx would lose it for good)
    let order_id = applied(&response, "order with a taken email").unwrap();
    let stored = order(&app, &order_id);
    assert!(
        stored["contact_id"] == phone_only.as_str() || stored["contact_id"] == lead.as_str(),
        "on one of the two contacts: {stored}"
    );
    assert_eq!(contact(&app, &lead)["email"], "kenji@example.jp");
}

#[test]
fn a_guest_order_without_contact_details_is_stored_unlinked() {
    // Arrange: a POS cash sale with no customer at all
    let app = TestApp::new();
    migrate(&app);
    let mut event = kizuna_event("order.paid");
    event["data"].as_object_mut().unwrap().remove("customer");

    // Act
    let response = post_kizuna(&app, "msg_guest", &event);

    // Assert
    let order_id = applied(&response, "guest").unwrap();
    let order = order(&app, &order_id);
    assert!(order["contact_id"].is_null(), "{order}");
    assert_eq!(order["total_minor"], 5950);
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 0);
}

// ---------------------------------------------------------------------------
// Currency
// ---------------------------------------------------------------------------

#[test]
fn an_order_in_another_currency_is_422_and_logged_without_personal_data() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);
    let mut usd = shopify_order();
    usd["currency"] = json!("USD");
    usd["presentment_currency"] = json!("USD");
    usd["total_price"] = json!("41.50");
    usd["subtotal_price"] = json!("34.00");
    for line in usd["line_items"].as_array_mut().unwrap() {
        line["price"] = json!("10.00");
    }
    let before = stored(&app);

    // Act
    let response = post_shopify(&app, "orders/create", "ev-usd", &usd);

    // Assert
    let problem = response.assert_problem(422, "USD order");
    let text = problem.to_string();
    assert!(
        text.contains("USD") && text.contains("JPY"),
        "names both currencies: {text}"
    );
    assert!(error_fields(&problem).contains(&"currency".to_owned()));
    assert_only_logged(&app, &before, "USD order");
    let rejected = rejected_deliveries(&app);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let entry = &rejected[0];
    assert_eq!(entry["source"], "shopify");
    assert_eq!(entry["topic"], "orders/create");
    assert_eq!(entry["event_id"], "ev-usd");
    assert_eq!(entry["outcome"], "rejected");
    let error = entry["error"].as_str().expect("error");
    assert!(
        error.contains("USD") && error.contains("JPY"),
        "error names the problem: {error}"
    );
    let listing = app
        .get(ORDERS_KEY, "/v1/webhook-deliveries?outcome=rejected")
        .text();
    for secret in [
        SHOPIFY_EMAIL,
        "+819012345678",
        "090-1234-5678",
        "佐藤",
        "花子",
    ] {
        assert!(!listing.contains(secret), "log holds {secret}: {listing}");
    }
}

#[test]
fn a_shop_in_usd_parses_cents_exactly() {
    // Arrange
    let app = TestApp::with_variables(&[("shop_currency", "USD")]);
    let mut usd = shopify_order();
    usd["currency"] = json!("USD");
    usd["line_items"] = json!([{
        "id": 1, "sku": "TEA-S", "title": "Sencha", "name": "Sencha", "quantity": 3,
        "price": "0.10", "total_discount": "0.00", "tax_lines": [{"price": "0.03", "rate": 0.1, "title": "Tax"}]
    }, {
        "id": 2, "sku": "TEA-M", "title": "Matcha", "name": "Matcha", "quantity": 1,
        "price": "19.99", "total_discount": "0.20", "tax_lines": [{"price": "1.98", "rate": 0.1, "title": "Tax"}]
    }]);
    usd["subtotal_price"] = json!("20.09");
    usd["total_discounts"] = json!("0.20");
    usd["total_tax"] = json!("2.01");
    usd["total_shipping_price_set"]["shop_money"]["amount"] = json!("4.90");
    usd["total_price"] = json!("27.00");

    // Act
    let order_id = applied(&post_shopify(&app, "orders/paid", "ev-1", &usd), "USD").unwrap();

    // Assert
    let order = order(&app, &order_id);
    assert_eq!(order["currency"], "USD");
    assert_eq!(order["subtotal_minor"], 2009);
    assert_eq!(order["shipping_minor"], 490);
    assert_eq!(order["tax_minor"], 201);
    assert_eq!(order["total_minor"], 2700);
    assert_eq!(order["lines"][0]["unit_price_minor"], 10);
    assert_eq!(order["lines"][0]["line_total_minor"], 30);
    assert_eq!(order["lines"][1]["line_total_minor"], 1979);
    assert_eq!(
        contact_of(&app, &order)["counters"]["total_spent_minor"],
        2700
    );
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[test]
fn bad_shopify_payloads_are_4xx_store_no_order_and_are_logged() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);
    let with = |edit: &dyn Fn(&mut Json)| {
        let mut body = shopify_order();
        edit(&mut body);
        body.to_string().into_bytes()
    };
    let many_lines = |n: usize| {
        with(&|o| {
            let line = o["line_items"][0].clone();
            o["line_items"] = Json::Array(vec![line; n]);
        })
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            br#"{"id": 5432109876543, "currency": "JPY", "line_items": ["#.to_vec(),
            400,
            "",
        ),
        ("empty body", Vec::new(), 400, ""),
        (
            "negative quantity",
            with(&|o| o["line_items"][0]["quantity"] = json!(-2)),
            422,
            "lines[0].quantity",
        ),
        (
            "zero quantity",
            with(&|o| o["line_items"][1]["quantity"] = json!(0)),
            422,
            "lines[1].quantity",
        ),
        (
            "a JPY price with decimals",
            with(&|o| o["line_items"][0]["price"] = json!("1000.5")),
            422,
            "line_items[0].price",
        ),
        (
            "a JPY total with decimals",
            with(&|o| o["total_price"] = json!("6100.01")),
            422,
            "total_price",
        ),
        (
            "a price that is not a decimal",
            with(&|o| o["line_items"][0]["price"] = json!("1,500")),
            422,
            "line_items[0].price",
        ),
        (
            "a negative price",
            with(&|o| o["line_items"][0]["price"] = json!("-1500")),
            422,
            "lines[0].unit_price",
        ),
        (
            "unknown currency",
            with(&|o| o["currency"] = json!("ABC")),
            422,
            "currency",
        ),
        (
            "no lines",
            with(&|o| o["line_items"] = json!([])),
            422,
            "lines",
        ),
        ("501 lines", many_lines(501), 422, "lines"),
        (
            "a total that is a number",
            with(&|o| o["total_price"] = json!(6100)),
            422,
            "",
        ),
        (
            "an order without an id",
            with(&|o| o["id"] = Json::Null),
            422,
            "id",
        ),
    ];

    for (n, (case, body, status, field)) in cases.into_iter().enumerate() {
        let before = stored(&app);
        let rejected_before = rejected_deliveries(&app).len();

        // Act
        let response = post_shopify_bytes(&app, "orders/create", &format!("ev-bad-{n}"), body);

        // Assert
        let problem = response.assert_problem(status, case);
        if !field.is_empty() {
            assert!(
                error_fields(&problem).contains(&field.to_owned()),
                "case {case}: {problem}"
            );
        }
        assert_only_logged(&app, &before, case);
        assert_eq!(
            rejected_deliveries(&app).len(),
            rejected_before + 1,
            "case {case}: logged as rejected"
        );
    }
}

#[test]
fn bad_kizuna_and_woocommerce_payloads_are_4xx_and_store_no_order() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);
    let kizuna_with = |edit: &dyn Fn(&mut Json)| {
        let mut body = kizuna_event("order.paid");
        edit(&mut body);
        body.to_string().into_bytes()
    };
    let woo_with = |edit: &dyn Fn(&mut Json)| {
        let mut body = woo_order();
        edit(&mut body);
        body.to_string().into_bytes()
    };
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        (
            "kizuna: malformed JSON",
            "kizuna",
            b"{\"type\": \"order.paid\", ".to_vec(),
            400,
        ),
        (
            "kizuna: no data",
            "kizuna",
            br#"{"type": "order.paid"}"#.to_vec(),
            422,
        ),
        (
            "kizuna: negative quantity",
            "kizuna",
            kizuna_with(&|e| e["data"]["lines"][0]["quantity"] = json!(-1)),
            422,
        ),
        (
            "kizuna: JPY with decimals",
            "kizuna",
            kizuna_with(&|e| e["data"]["lines"][0]["unit_price"] = json!("1000.5")),
            422,
        ),
        (
            "kizuna: unknown currency",
            "kizuna",
            kizuna_with(&|e| e["data"]["currency"] = json!("ABC")),
            422,
        ),
        (
            "kizuna: no lines",
            "kizuna",
            kizuna_with(&|e| e["data"]["lines"] = json!([])),
            422,
        ),
        (
            "kizuna: negative points used",
            "kizuna",
            kizuna_with(&|e| e["data"]["points_used"] = json!(-100)),
            422,
        ),
        (
            "kizuna: order.refunded without refunds",
            "kizuna",
            kizuna_with(&|e| e["type"] = json!("order.refunded")),
            422,
        ),
        (
            "woocommerce: malformed JSON",
            "woocommerce",
            b"{\"id\": 4321, \"status\"".to_vec(),
            400,
        ),
        (
            "woocommerce: negative quantity",
            "woocommerce",
            woo_with(&|o| o["line_items"][0]["quantity"] = json!(-2)),
            422,
        ),
        (
            "woocommerce: JPY with decimals",
            "woocommerce",
            woo_with(&|o| o["total"] = json!("5950.5")),
            422,
        ),
        (
            "woocommerce: unknown currency",
            "woocommerce",
            woo_with(&|o| o["currency"] = json!("ABC")),
            422,
        ),
        (
            "woocommerce: no lines",
            "woocommerce",
            woo_with(&|o| o["line_items"] = json!([])),
            422,
        ),
    ];

    for (n, (case, source, body, status)) in cases.into_iter().enumerate() {
        let before = stored(&app);

        // Act
        let response = match source {
            "kizuna" => post_kizuna_bytes(&app, &format!("msg_bad_{n}"), body),
            _ => post_woo_bytes(&app, "order.updated", &format!("d-bad-{n}"), body),
        };

        // Assert
        response.assert_problem(status, case);
        assert_only_logged(&app, &before, case);
    }
    assert_eq!(app.count("SELECT count(*) FROM orders"), 0);
}

#[test]
fn a_body_over_one_mebibyte_is_413_on_every_receiver() {
    // Arrange: a well-signed body just over the limit
    let app = TestApp::new();
    migrate(&app);
    let before = stored(&app);
    let mut body = shopify_order();
    body["note"] = json!("あ".repeat(1024 * 1024 / 3 + 10));
    let body = body.to_string().into_bytes();
    assert!(body.len() > 1024 * 1024);

    // Act
    let responses = [
        ("orders", post_kizuna_bytes(&app, "msg_big", body.clone())),
        (
            "shopify",
            post_shopify_bytes(&app, "orders/create", "ev-big", body.clone()),
        ),
        (
            "woocommerce",
            post_woo_bytes(&app, "order.created", "d-big", body),
        ),
    ];

    // Assert
    for (case, response) in responses {
        response.assert_problem(413, case);
    }
    assert_eq!(stored(&app), before);
}

#[test]
fn a_huge_line_count_is_refused_with_a_bounded_answer() {
    // Arrange: ~30,000 lines, still under 1 MiB
    let app = TestApp::new();
    migrate(&app);
    let before = stored(&app);
    let line = json!({"quantity": 1, "price": "1"});
    let mut body = shopify_order();
    body["line_items"] = Json::Array(vec![line; 30_000]);
    let body = body.to_string().into_bytes();
    assert!(body.len() < 1024 * 1024, "{} bytes", body.len());

    // Act
    let response = post_shopify_bytes(&app, "orders/create", "ev-huge", body);

    // Assert
    let problem = response.assert_problem(422, "30,000 lines");
    assert!(error_fields(&problem).contains(&"lines".to_owned()));
    assert!(
        response.body.len() < 64 * 1024,
        "answer is bounded: {} bytes",
        response.body.len()
    );
    assert_eq!(app.count("SELECT count(*) FROM orders"), 0);
    assert_eq!(app.count("SELECT count(*) FROM order_lines"), 0);
    let error = rejected_deliveries(&app)[0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.chars().count() <= 1000, "log entry is bounded");
    assert_only_logged(&app, &before, "30,000 lines");
}

#[test]
fn a_rejected_delivery_log_never_holds_personal_data() {
    // Arrange: a payload that fails on personal values' types: the phone
    // as a JSON number, the email where a number is expected
    let app = TestApp::new();
    migrate(&app);
    let mut phone_number = shopify_order();
    phone_number["customer"]["phone"] = json!(819_012_345_678_u64);
    let mut email_in_quantity = shopify_order();
    email_in_quantity["line_items"][0]["quantity"] = json!(SHOPIFY_EMAIL);

    // Act
    let responses = [
        post_shopify(&app, "orders/create", "ev-p1", &phone_number),
        post_shopify(&app, "orders/create", "ev-p2", &email_in_quantity),
    ];

    // Assert
    for response in &responses {
        assert!(response.status < 500, "{}", response.text());
    }
    let rows: Vec<String> = {
        let db = app.db();
        let mut statement = db
            .prepare("SELECT coalesce(error, '') || ' ' || coalesce(topic, '') || ' ' || coalesce(event_id, '') FROM webhook_deliveries")
            .unwrap();
        statement
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    for row in &rows {
        for secret in [SHOPIFY_EMAIL, "819012345678", "9012345678"] {
            assert!(!row.contains(secret), "log holds {secret}: {row}");
        }
    }
}

// ---------------------------------------------------------------------------
// Orders API
// ---------------------------------------------------------------------------

#[test]
fn get_order_returns_lines_and_refunds() {
    // Arrange
    let app = TestApp::new();
    let order_id = applied(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "order",
    )
    .unwrap();
    applied(
        &post_shopify(&app, "refunds/create", "ev-2", &shopify_refund()),
        "refund",
    );

    // Act
    let response = app.get(ORDERS_KEY, &format!("/v1/orders/{order_id}"));

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let order = response.json();
    assert_eq!(order["id"], order_id.as_str());
    assert_eq!(order["status"], "partially_refunded");
    assert_eq!(order["lines"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        order["refunds"],
        json!([{
            "id": order["refunds"][0]["id"], "external_id": "889900112233", "amount_minor": 1620,
            "currency": "JPY", "reason": "配送中の破損のため返金",
            "refunded_at": "2026-11-23T01:00:00.000000Z"
        }])
    );
}

#[test]
fn orders_of_a_contact_page_newest_first_without_gaps_or_repeats() {
    // Arrange: five orders of one customer (two at the same minute) and
    // one of someone else
    let app = TestApp::new();
    let placed = [
        "2026-11-20T10:00:00+09:00",
        "2026-11-21T10:00:00+09:00",
        "2026-11-21T10:00:00+09:00",
        "2026-11-22T10:00:00+09:00",
        "2026-11-19T10:00:00+09:00",
    ];
    for (n, at) in placed.iter().enumerate() {
        let body = another_shopify_order(
            6_000_000_000_000 + n as u64,
            &format!("#20{n:02}"),
            at,
            "1000",
        );
        applied(
            &post_shopify(&app, "orders/paid", &format!("ev-{n}"), &body),
            at,
        );
    }
    let mut stranger = woo_order();
    stranger["billing"]["email"] = json!("someone.else@example.jp");
    applied(&post_woo(&app, "order.created", "d-1", &stranger), "other");
    let contact_id = order_by_external(&app, "shopify", "6000000000000")["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Act
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("/v1/orders?contact_id={contact_id}&limit=2&cursor={c}"),
            None => format!("/v1/orders?contact_id={contact_id}&limit=2"),
        };
        let response = app.get(ORDERS_KEY, &query);
        assert_eq!(response.status, 200, "{}", response.text());
        let page = response.json();
        pages.push(page["items"].as_array().expect("items").clone());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages.len() < 10, "pagination does not end");
    }

    // Assert
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 1],
        "limit=2 over 5 orders"
    );
    let items: Vec<Json> = pages.into_iter().flatten().collect();
    let ids: Vec<&str> = items.iter().map(|o| o["id"].as_str().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 5, "pages are disjoint and complete: {ids:?}");
    for item in &items {
        assert_eq!(item["contact_id"], contact_id.as_str());
    }
    let keys: Headers = items
        .iter()
        .map(|o| {
            (
                o["placed_at"].as_str().unwrap().to_owned(),
                o["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut newest_first = keys.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(keys, newest_first, "newest first");
    assert_eq!(keys[0].0, "2026-11-22T01:00:00.000000Z");
    assert_eq!(keys[4].0, "2026-11-19T01:00:00.000000Z");
}

#[test]
fn unknown_orders_are_404() {
    // Arrange
    let app = TestApp::new();

    // Act + Assert
    app.get(ORDERS_KEY, &format!("/v1/orders/{UNKNOWN_ID}"))
        .assert_problem(404, "unknown id");
    app.get(ORDERS_KEY, "/v1/orders/not-an-id")
        .assert_problem(404, "not a UUID");
}

#[test]
fn the_orders_api_needs_the_orders_read_scope() {
    // Arrange
    let app = TestApp::new();
    let order_id = applied(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "order",
    )
    .unwrap();
    let paths = [
        format!("/v1/orders/{order_id}"),
        "/v1/orders".to_owned(),
        "/v1/webhook-deliveries".to_owned(),
    ];

    for path in &paths {
        // Act + Assert
        let anonymous = app.request("GET", path, &[], Bytes::new());
        anonymous.assert_problem(401, &format!("{path} without a key"));
        app.get("not-a-key", path)
            .assert_problem(401, &format!("{path} with an unknown key"));
        app.get(READ_KEY, path)
            .assert_problem(403, &format!("{path} with contacts:read"));
        app.get(WRITE_KEY, path)
            .assert_problem(403, &format!("{path} with contacts:write"));
        assert_eq!(
            app.get(ORDERS_KEY, path).status,
            200,
            "{path} with orders:read"
        );
        assert_eq!(app.get(ADMIN_KEY, path).status, 200, "{path} with *");
    }
}

#[test]
fn bad_queries_on_the_orders_api_are_422() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);
    let cases = [
        ("/v1/orders?cursor=not-a-cursor!", "cursor"),
        ("/v1/orders?cursor=YWJj", "cursor"),
        ("/v1/orders?limit=0", "limit"),
        ("/v1/orders?limit=201", "limit"),
        ("/v1/orders?limit=ten", "limit"),
        ("/v1/orders?contact_id=nope", "contact_id"),
        ("/v1/webhook-deliveries?outcome=lost", "outcome"),
        ("/v1/webhook-deliveries?source=amazon", "source"),
        ("/v1/webhook-deliveries?limit=-1", "limit"),
        ("/v1/webhook-deliveries?cursor=%%%", "cursor"),
    ];

    for (path, field) in cases {
        // Act
        let response = app.get(ORDERS_KEY, path);

        // Assert
        let problem = response.assert_problem(422, path);
        assert!(
            error_fields(&problem).contains(&field.to_owned()),
            "case {path}: {problem}"
        );
    }
}

#[test]
fn webhook_deliveries_list_by_outcome() {
    // Arrange
    let app = TestApp::new();
    applied(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "applied",
    );
    answered(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "duplicate",
        "duplicate",
    );
    answered(
        &post_shopify(&app, "customers/update", "ev-2", &json!({"id": 1})),
        "ignored",
        "ignored",
    );
    let mut bad = shopify_order();
    bad["line_items"] = json!([]);
    post_shopify(&app, "orders/paid", "ev-3", &bad).assert_problem(422, "rejected");

    for outcome in ["applied", "duplicate", "ignored", "rejected"] {
        // Act
        let response = app.get(
            ORDERS_KEY,
            &format!("/v1/webhook-deliveries?outcome={outcome}"),
        );

        // Assert
        assert_eq!(response.status, 200, "{}", response.text());
        let items = response.json()["items"].as_array().unwrap().clone();
        assert_eq!(items.len(), 1, "{outcome}: {items:?}");
        assert_eq!(items[0]["outcome"], outcome);
        assert_eq!(items[0]["source"], "shopify");
    }
    let all = app.get(ORDERS_KEY, "/v1/webhook-deliveries").json();
    assert_eq!(all["items"].as_array().map(Vec::len), Some(4));
}

/// The rows of refused signatures, by source.
fn unauthorized_rows(app: &TestApp) -> std::collections::BTreeMap<String, Json> {
    let response = app.get(ORDERS_KEY, "/v1/webhook-deliveries?outcome=unauthorized");
    assert_eq!(response.status, 200, "{}", response.text());
    let items = response.json()["items"].as_array().expect("items").clone();
    let mut rows = std::collections::BTreeMap::new();
    for item in items {
        assert_eq!(item["outcome"], "unauthorized", "{item}");
        let source = item["source"].as_str().expect("source").to_owned();
        assert!(
            rows.insert(source, item).is_none(),
            "one row per source in a minute"
        );
    }
    rows
}

#[test]
fn refused_signatures_are_counted_per_source_and_minute_by_reason() {
    // Arrange: each sender's mistake, as an operator would meet it
    let app = TestApp::new();
    migrate(&app);
    app.clear_of_minute_boundary();
    let before = stored(&app);
    let kizuna = kizuna_event("order.paid").to_string();
    let ts = now(&app);
    let standard = |id: &str, ts: i64, signature: String| {
        (
            "/v1/webhooks/orders",
            standard_headers(id, ts, &signature),
            kizuna.clone(),
        )
    };
    let shopify = shopify_order().to_string();
    let woo = woo_order().to_string();
    let message = |id: &str, ts: i64| format!("{id}.{ts}.{kizuna}");
    let cases: Vec<(&str, (&str, Headers, String))> = vec![
        (
            "standard: the whole whsec_ string as the HMAC key",
            standard(
                "msg_1",
                ts,
                format!(
                    "v1,{}",
                    sign_body(ORDERS_SECRET, message("msg_1", ts).as_bytes())
                ),
            ),
        ),
        (
            "standard: signed an hour ago with the right key",
            standard(
                "msg_2",
                ts - 3600,
                sign_standard(ORDERS_SECRET, "msg_2", ts - 3600, kizuna.as_bytes()),
            ),
        ),
        (
            "standard: another key",
            standard(
                "msg_3",
                ts,
                sign_standard(
                    "whsec_b3RoZXItb3JkZXJzLXNlY3JldC0wMTIzNDU2Nzg5",
                    "msg_3",
                    ts,
                    kizuna.as_bytes(),
                ),
            ),
        ),
        (
            "standard: no signature header",
            (
                "/v1/webhooks/orders",
                without(&standard_headers("msg_4", ts, "v1,x"), "webhook-signature"),
                kizuna.clone(),
            ),
        ),
        (
            "shopify: another app's secret",
            (
                "/v1/webhooks/shopify",
                shopify_headers(
                    "orders/paid",
                    "ev-1",
                    "wh-1",
                    &sign_body("shpss_other", shopify.as_bytes()),
                ),
                shopify.clone(),
            ),
        ),
        (
            "shopify: no HMAC header",
            (
                "/v1/webhooks/shopify",
                without(
                    &shopify_headers("orders/paid", "ev-2", "wh-2", "x"),
                    "x-shopify-hmac-sha256",
                ),
                "not json".to_owned(),
            ),
        ),
        (
            "woocommerce: a hex digest for base64",
            (
                "/v1/webhooks/woocommerce",
                woo_headers("order.updated", "d-1", &"ab".repeat(32)),
                woo.clone(),
            ),
        ),
    ];

    for (case, (path, headers, body)) in &cases {
        // Act
        let response = post(&app, path, headers, body.clone());

        // Assert
        response.assert_problem(401, case);
        if let Some(statements) = app.statements_of_last_request() {
            assert!(
                statements <= 1,
                "case {case}: one upsert, {statements} statements"
            );
        }
        assert_eq!(stored(&app), before, "case {case}: no delivery stored");
    }

    // Assert: one row per source, counted by reason
    let rows = unauthorized_rows(&app);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let kizuna_row = &rows["kizuna"];
    assert_eq!(kizuna_row["attempts"], 4);
    assert_eq!(
        kizuna_row["reasons"],
        json!({"secret_not_decoded": 1, "stale_timestamp": 1, "wrong_secret": 1, "missing_header": 1})
    );
    assert_eq!(
        kizuna_row["error"], "missing header webhook-signature",
        "the latest failure's text"
    );
    assert_eq!(
        kizuna_row["order_external_id"], KIZUNA_ORDER_ID,
        "read from the unsigned body"
    );
    let shopify_row = &rows["shopify"];
    assert_eq!(shopify_row["attempts"], 2);
    assert_eq!(
        shopify_row["reasons"],
        json!({"wrong_secret": 1, "missing_header": 1})
    );
    assert_eq!(
        shopify_row["order_external_id"], SHOPIFY_ORDER_ID,
        "the last order id a body let Kizuna read"
    );
    let woo_row = &rows["woocommerce"];
    assert_eq!(woo_row["reasons"], json!({"malformed_signature": 1}));
    assert_eq!(woo_row["order_external_id"], WOO_ORDER_ID);
    for row in rows.values() {
        let window = row["window_start"].as_str().expect("window_start");
        assert!(window.contains(":00.000000Z"), "a whole minute: {window}");
        assert!(row["last_received_at"].as_str() >= row["received_at"].as_str());
    }
    let kept: String = app
        .db()
        .query_row(
            "SELECT group_concat(coalesce(error, '') || coalesce(reasons, '') || coalesce(topic, '') || coalesce(event_id, ''), ' ')
             FROM webhook_deliveries",
            [],
            |r| r.get(0),
        )
        .expect("log text");
    for personal in [
        SHOPIFY_EMAIL,
        "taro.yamada@example.jp",
        SHOPIFY_SECRET,
        ORDERS_SECRET,
    ] {
        assert!(
            !kept.contains(personal),
            "the log holds no body or secret: {kept}"
        );
    }
    // The other outcomes are untouched by them.
    let applied_rows = app
        .get(ORDERS_KEY, "/v1/webhook-deliveries?outcome=applied")
        .json();
    assert_eq!(applied_rows["items"], json!([]));

    if app.under_spin() {
        return;
    }
    // Act: the next minute starts a new row
    minutes(&app, 1);
    let (path, headers, body) = &cases[4].1;
    post(&app, path, headers, body.clone()).assert_problem(401, "next minute");

    // Assert
    let all = app
        .get(
            ORDERS_KEY,
            "/v1/webhook-deliveries?outcome=unauthorized&source=shopify",
        )
        .json();
    let items = all["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{all}");
    assert_eq!(items[0]["attempts"], 1, "newest first");
    assert_eq!(items[1]["attempts"], 2);
}

#[test]
fn a_flood_of_unsigned_posts_adds_one_row_a_minute() {
    // Arrange
    let app = TestApp::new();
    migrate(&app);
    app.clear_of_minute_boundary();
    let body = shopify_order().to_string();
    let forged = shopify_headers(
        "orders/paid",
        "ev-1",
        "wh-1",
        &sign_body("guess", body.as_bytes()),
    );

    // Act
    for n in 0..100 {
        post(&app, "/v1/webhooks/shopify", &forged, body.clone())
            .assert_problem(401, &format!("post {n}"));
    }

    // Assert
    assert_eq!(
        app.count("SELECT count(*) FROM webhook_deliveries"),
        1,
        "one row for the minute, not one per post"
    );
    let rows = unauthorized_rows(&app);
    assert_eq!(rows["shopify"]["attempts"], 100);
    assert_eq!(rows["shopify"]["reasons"], json!({"wrong_secret": 100}));
    assert_eq!(app.count("SELECT count(*) FROM orders"), 0);
}

#[test]
fn orders_are_found_by_the_shops_number_and_id() {
    // Arrange: Shopify #1001 and #1002, WooCommerce 4321, a Kizuna #A-123
    let app = TestApp::new();
    let first = applied(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "#1001",
    )
    .unwrap();
    let second_order =
        another_shopify_order(5432109876544, "#1002", "2026-11-21T10:00:00+09:00", "1500");
    let second = applied(
        &post_shopify(&app, "orders/paid", "ev-2", &second_order),
        "#1002",
    )
    .unwrap();
    let woo = applied(
        &post_woo(&app, "order.updated", "d-1", &woo_order()),
        "woo 4321",
    )
    .unwrap();
    let kizuna = applied(
        &post_kizuna(&app, "msg_1", &kizuna_event("order.paid")),
        "kizuna",
    )
    .unwrap();
    let contact = order(&app, &second)["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_contact = order(&app, &kizuna)["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(contact, other_contact);
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "Shopify's name, encoded",
            "number=%231002".to_owned(),
            vec![&second],
        ),
        (
            "the number without #",
            "number=1002".to_owned(),
            vec![&second],
        ),
        ("WooCommerce's number", "number=4321".to_owned(), vec![&woo]),
        (
            "WooCommerce's number with #",
            "number=%234321".to_owned(),
            vec![&woo],
        ),
        (
            "Kizuna's number",
            "number=%23A-123".to_owned(),
            vec![&kizuna],
        ),
        ("a number nobody has", "number=%239999".to_owned(), vec![]),
        (
            "Shopify's id",
            format!("external_id={SHOPIFY_ORDER_ID}"),
            vec![&first],
        ),
        (
            "WooCommerce's id",
            format!("external_id={WOO_ORDER_ID}"),
            vec![&woo],
        ),
        (
            "an id and its source",
            format!("external_id={WOO_ORDER_ID}&source=woocommerce"),
            vec![&woo],
        ),
        (
            "an id under another source",
            format!("external_id={WOO_ORDER_ID}&source=shopify"),
            vec![],
        ),
        (
            "an id matched exactly",
            "external_id=432".to_owned(),
            vec![],
        ),
        (
            "a number and its contact",
            format!("number=%231002&contact_id={contact}"),
            vec![&second],
        ),
        (
            "a number and another contact",
            format!("number=%231002&contact_id={other_contact}"),
            vec![],
        ),
        (
            "a source",
            "source=shopify".to_owned(),
            vec![&first, &second],
        ),
    ];

    for (case, query, expected) in cases {
        // Act
        let response = app.get(ORDERS_KEY, &format!("/v1/orders?{query}"));

        // Assert
        assert_eq!(response.status, 200, "case {case}: {}", response.text());
        if let Some(statements) = app.statements_of_last_request() {
            assert!(statements <= 1, "case {case}: {statements} statements");
        }
        let mut ids: Vec<String> = response.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort_unstable();
        let mut expected: Vec<String> = expected.iter().map(|id| (*id).to_owned()).collect();
        expected.sort_unstable();
        assert_eq!(ids, expected, "case {case}");
    }

    // The look-ups are index seeks, not scans of every order.
    let db = app.db();
    for (filter, index) in [
        ("order_number IN ('1002', '#1002')", "orders_number_idx"),
        ("external_id = '4321'", "orders_external_id_idx"),
    ] {
        let plan: Vec<String> = db
            .prepare(&format!(
                "EXPLAIN QUERY PLAN SELECT * FROM orders WHERE {filter} ORDER BY placed_at DESC, id DESC LIMIT 51"
            ))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains(index)),
            "{filter}: {plan:?}"
        );
    }
}

#[test]
fn bad_order_filters_are_422_naming_them() {
    // Arrange
    let app = TestApp::new();
    applied(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "order",
    );
    let cases = [
        ("/v1/orders?number=", "number"),
        ("/v1/orders?number=%23", "number"),
        ("/v1/orders?number=%07", "number"),
        ("/v1/orders?external_id=", "external_id"),
        ("/v1/orders?source=amazon", "source"),
        ("/v1/orders?order_number=1001", "order_number"),
        ("/v1/orders?number=1001&number=1002", "number"),
        ("/v1/webhook-deliveries?outcome=refused", "outcome"),
    ];

    for (path, field) in cases {
        // Act
        let response = app.get(ORDERS_KEY, path);

        // Assert
        let problem = response.assert_problem(422, path);
        assert!(
            error_fields(&problem).contains(&field.to_owned()),
            "case {path}: {problem}"
        );
    }
}

// ---------------------------------------------------------------------------
// Erasure
// ---------------------------------------------------------------------------

#[test]
fn erasure_keeps_orders_on_the_tombstone_and_unlinks_the_shop_customer() {
    // Arrange
    let app = TestApp::new();
    let order_id = applied(
        &post_shopify(&app, "orders/paid", "ev-1", &shopify_order()),
        "order",
    )
    .unwrap();
    let tombstone = order(&app, &order_id)["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Act
    let erase = app.request(
        "DELETE",
        &format!("/v1/contacts/{tombstone}"),
        &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
        Bytes::new(),
    );

    // Assert: the order stays, for accounting, on the tombstone
    assert_eq!(erase.status, 200, "{}", erase.text());
    let kept = order(&app, &order_id);
    assert_eq!(kept["contact_id"], tombstone.as_str());
    assert_eq!(kept["total_minor"], 6100);
    assert_eq!(kept["lines"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM contact_external_ids WHERE contact_id = '{tombstone}'"
        )),
        0,
        "the shop's customer id is gone"
    );

    // Act: an update of the old order, then a new order from the same
    // Shopify customer
    minutes(&app, 60);
    let mut updated = shopify_order();
    updated["updated_at"] = json!("2026-11-22T13:00:00+09:00");
    applied(
        &post_shopify(&app, "orders/updated", "ev-2", &updated),
        "update after erasure",
    );
    let later = another_shopify_order(5432109876900, "#1009", "2026-11-24T10:00:00+09:00", "1500");
    let later_id = applied(
        &post_shopify(&app, "orders/paid", "ev-3", &later),
        "new order after erasure",
    )
    .unwrap();

    // Assert: personal data does not come back to the tombstone, and the
    // new order starts a new contact
    let email: Option<String> = app
        .db()
        .query_row(
            "SELECT email FROM contacts WHERE id = ?1",
            [&tombstone],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(email, None, "tombstone stays anonymous");
    assert_eq!(order(&app, &order_id)["contact_id"], tombstone.as_str());
    let new_contact = order(&app, &later_id)["contact_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_contact, tombstone, "not re-attached to the tombstone");
    let c = contact(&app, &new_contact);
    assert_eq!(c["email"], SHOPIFY_EMAIL);
    assert_eq!(c["first_touch"]["source"], "webhook:shopify");
    assert_eq!(c["counters"]["order_count"], 1);
    let linked: String = app
        .db()
        .query_row(
            "SELECT contact_id FROM contact_external_ids WHERE source = 'shopify' AND external_id = ?1",
            [SHOPIFY_CUSTOMER_ID],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(linked, new_contact);
}

#[test]
fn a_repeat_answers_with_the_order_the_first_delivery_stored() {
    // Arrange
    let app = TestApp::new();
    let first = post_shopify(&app, "orders/paid", "evt-repeat", &shopify_order());
    let order_id = applied(&first, "first delivery").expect("an order id");

    // Act
    let again = post_shopify(&app, "orders/paid", "evt-repeat", &shopify_order());

    // Assert
    answered(&again, "duplicate", "repeat");
    assert_eq!(again.json()["order_id"], order_id.as_str());
}

#[test]
fn a_shopify_test_order_is_acknowledged_and_not_counted() {
    // Arrange: an order placed with Shopify's test gateway.
    let app = TestApp::new();
    let mut payload = shopify_order();
    payload["test"] = json!(true);

    // Act
    let response = post_shopify(&app, "orders/paid", "evt-test-order", &payload);

    // Assert
    answered(&response, "ignored", "test order");
    assert_eq!(app.count("SELECT count(*) FROM orders"), 0);
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 0);
}

#[test]
fn standard_webhooks_timestamps_at_the_edges_of_i64_and_beyond_are_401_and_store_nothing() {
    // Arrange: each delivery is validly signed over its own timestamp text,
    // so only the timestamp can turn it away.
    let app = TestApp::new();
    migrate(&app);
    let body = kizuna_event("order.paid").to_string();
    let before = stored(&app);
    let deliveries = "SELECT count(*) FROM webhook_deliveries WHERE outcome <> 'unauthorized'";
    let deliveries_before = app.count(deliveries);
    let cases = [
        ("i64::MAX", i64::MAX.to_string()),
        ("i64::MIN", i64::MIN.to_string()),
        ("-9223372036854775808", "-9223372036854775808".to_owned()),
        ("i64::MAX + 1", "9223372036854775808".to_owned()),
        ("i64::MIN - 1", "-9223372036854775809".to_owned()),
        ("30 digits", "123456789012345678901234567890".to_owned()),
        (
            "minus 30 digits",
            "-123456789012345678901234567890".to_owned(),
        ),
    ];

    for (i, (case, timestamp)) in cases.iter().enumerate() {
        let id = format!("msg_edge_{i}");
        let signature =
            kizuna::signatures::sign_standard_text(ORDERS_SECRET, &id, timestamp, body.as_bytes());
        let headers = owned(&[
            ("content-type", "application/json"),
            ("webhook-id", &id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", &signature),
        ]);

        // Act
        let response = post(&app, "/v1/webhooks/orders", &headers, body.clone());

        // Assert
        response.assert_problem(401, case);
        assert_eq!(app.count("SELECT count(*) FROM orders"), 0, "case {case}");
        assert_eq!(
            app.count(deliveries),
            deliveries_before,
            "case {case}: no delivery row"
        );
        assert_eq!(stored(&app), before, "case {case}: nothing stored");
    }
}

#[test]
fn an_order_of_the_most_lines_keeps_every_line_in_order_and_an_update_replaces_them() {
    // Arrange: 500 lines (the most an order may have), stored in batches
    let app = TestApp::new();
    let line = |i: usize| {
        json!({"id": format!("L{i}"), "sku": format!("SKU-{i}"), "name": "煎茶", "category": "tea",
               "quantity": 1, "unit_price": "100", "total": "100", "discount": "0", "tax": "8"})
    };
    let order = |lines: usize, updated_at: &str| {
        json!({"type": "order.paid", "timestamp": "2026-11-22T02:59:30Z", "data": {
            "id": "POS-MANY", "currency": "JPY", "placed_at": "2026-11-22T02:59:00Z",
            "updated_at": updated_at, "customer": {"email": "many@example.jp"},
            "subtotal": (lines * 100).to_string(), "total": (lines * 100).to_string(),
            "lines": (1..=lines).map(line).collect::<Vec<_>>()}})
    };

    // Act 1
    let response = post_kizuna(&app, "msg_many", &order(500, "2026-11-22T02:59:10Z"));

    // Assert 1: every line, numbered in the payload's order
    assert_eq!(response.status, 200, "{}", response.text());
    let lines: Vec<(i64, String)> = app
        .db()
        .prepare("SELECT line_no, external_id FROM order_lines ORDER BY line_no")
        .expect("query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("lines");
    assert_eq!(lines.len(), 500);
    for (index, (line_no, external_id)) in lines.iter().enumerate() {
        assert_eq!(*line_no, index as i64 + 1);
        assert_eq!(external_id, &format!("L{}", index + 1));
    }

    // Act 2: a newer version of the order with three lines
    let response = post_kizuna(&app, "msg_fewer", &order(3, "2026-11-22T03:10:00Z"));

    // Assert 2: the lines are replaced, not added to
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(app.count("SELECT count(*) FROM order_lines"), 3);
}

// ---------------------------------------------------------------------------
// Marketing consent given (or withdrawn) at checkout
// ---------------------------------------------------------------------------

/// The app's clock `days` ago, as a shop would write it.
fn days_ago(app: &TestApp, days: f64) -> String {
    kizuna::timestamp::format(app.now() - time::Duration::seconds_f64(days * 86_400.0))
}

/// Hanako's address in the consent fixture (`order_paid_discount_code`).
const CONSENT_EMAIL: &str = "hanako.sato@example.jp";

/// The discount-code fixture as order `order_id`, placed half a day ago,
/// with the customer's email consent in `state` since `at` (`None`: the
/// shop gives no time) and no SMS consent.
fn shopify_consent_order(app: &TestApp, order_id: i64, state: &str, at: Option<&str>) -> Json {
    let mut body = shopify_fixture("order_paid_discount_code");
    body["id"] = json!(order_id);
    body["processed_at"] = json!(days_ago(app, 0.5));
    body["created_at"] = json!(days_ago(app, 0.5));
    body["customer"]["email_marketing_consent"] =
        json!({"state": state, "opt_in_level": "single_opt_in", "consent_updated_at": at});
    body
}

/// The current consents of the contact with `email`, through the API.
fn consents_of(app: &TestApp, email: &str) -> Json {
    let response = app.get(
        READ_KEY,
        &format!("/v1/contacts?email={}", email.replace('@', "%40")),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let id = response.json()["items"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a contact with {email}: {}", response.text()))
        .to_owned();
    contact(app, &id)["consents"].clone()
}

fn staff_consent(app: &TestApp, contact_id: &str, body: &Json) -> TestResponse {
    app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{contact_id}/consents"),
        body,
    )
}

#[test]
fn a_shopify_checkout_consent_is_recorded_with_its_source_and_the_persons_time() {
    // Arrange: email consent given two days ago; SMS ticked at this
    // checkout (no time of its own: the order's).
    let app = TestApp::new();
    let given = days_ago(&app, 2.0);
    let mut body = shopify_consent_order(&app, 5820410600001, "subscribed", Some(&given));
    body["customer"]["sms_marketing_consent"] = json!({
        "state": "subscribed", "opt_in_level": "confirmed_opt_in",
        "consent_updated_at": null, "consent_collected_from": "SHOPIFY"});

    // Act
    let order_id = applied(
        &post_shopify(&app, "orders/paid", "ev-consent-1", &body),
        "order with consent",
    )
    .expect("order id");

    // Assert
    let contact = contact_of(&app, &order(&app, &order_id));
    let email = &contact["consents"]["email"];
    assert_eq!(email["status"], "granted", "{email}");
    assert_eq!(email["reason"], "checkout");
    assert_eq!(email["source"], "shopify_checkout");
    assert_eq!(email["opt_in_level"], "single_opt_in");
    assert_eq!(email["order_id"], order_id.as_str());
    assert_eq!(email["occurred_at"], given.as_str(), "the person's time");
    let recorded_at = email["recorded_at"].as_str().expect("recorded_at");
    assert!(recorded_at > given.as_str(), "Kizuna's own time: {email}");
    let sms = &contact["consents"]["sms"];
    assert_eq!(sms["status"], "granted", "{sms}");
    assert_eq!(sms["opt_in_level"], "confirmed_opt_in");
    assert_eq!(sms["occurred_at"], body["processed_at"], "the order's time");
    let id = contact["id"].as_str().expect("id");
    assert_eq!(count_kind(&timeline_kinds(&app, id), "consent_granted"), 2);
    let export = app.get(ADMIN_KEY, &format!("/v1/contacts/{id}/export"));
    assert_eq!(export.status, 200, "{}", export.text());
    let log = export.json()["consent_log"].clone();
    assert_eq!(log.as_array().map(Vec::len), Some(2), "{log}");
    assert_eq!(log[0]["source"], "shopify_checkout");
    assert_eq!(log[0]["recorded_by"], "webhook:shopify");
}

#[test]
fn a_shopify_unsubscribed_state_is_a_withdrawal_that_suppresses_the_address() {
    // Arrange: subscribed three days ago, at an earlier order.
    let app = TestApp::new();
    let first = shopify_consent_order(
        &app,
        5820410600002,
        "subscribed",
        Some(&days_ago(&app, 3.0)),
    );
    applied(
        &post_shopify(&app, "orders/paid", "ev-consent-2a", &first),
        "first order",
    );
    assert_eq!(
        consents_of(&app, CONSENT_EMAIL)["email"]["status"],
        "granted"
    );
    let withdrawn_at = days_ago(&app, 1.0);
    let second = shopify_consent_order(&app, 5820410600003, "unsubscribed", Some(&withdrawn_at));

    // Act
    let order_id = applied(
        &post_shopify(&app, "orders/paid", "ev-consent-2b", &second),
        "second order",
    )
    .expect("order id");

    // Assert
    let contact = contact_of(&app, &order(&app, &order_id));
    let email = &contact["consents"]["email"];
    assert_eq!(email["status"], "withdrawn", "{email}");
    assert_eq!(email["reason"], "unsubscribed");
    assert_eq!(email["source"], "shopify_checkout");
    assert_eq!(email["occurred_at"], withdrawn_at.as_str());
    assert_eq!(
        app.count("SELECT count(*) FROM suppressions WHERE kind = 'email' AND lifted_at IS NULL"),
        1,
        "a withdrawal suppresses the address"
    );
    let regrant = staff_consent(
        &app,
        contact["id"].as_str().expect("id"),
        &json!({"channel": "email", "status": "granted"}),
    );
    regrant.assert_problem(409, "staff cannot re-grant a suppressed address");
}

#[test]
fn a_checkout_consent_not_newer_than_the_contacts_latest_change_changes_nothing() {
    struct Case {
        name: &'static str,
        /// The staff change recorded now, before the order.
        before: Option<&'static str>,
        /// The shop's state, a day old.
        state: &'static str,
        expected: &'static str,
    }
    let cases = [
        Case {
            name: "a grant older than a withdrawal",
            before: Some("withdrawn"),
            state: "subscribed",
            expected: "withdrawn",
        },
        Case {
            name: "a withdrawal older than a grant",
            before: Some("granted"),
            state: "unsubscribed",
            expected: "granted",
        },
    ];
    for case in cases {
        // Arrange
        let app = TestApp::new();
        let id = app.create_contact(&json!({"email": CONSENT_EMAIL}));
        if let Some(status) = case.before {
            let response = staff_consent(&app, &id, &json!({"channel": "email", "status": status}));
            assert_eq!(response.status, 201, "{}: {}", case.name, response.text());
        }
        let consents = app.count("SELECT count(*) FROM consents");
        let suppressions = app.count("SELECT count(*) FROM suppressions");
        let body =
            shopify_consent_order(&app, 5820410600004, case.state, Some(&days_ago(&app, 1.0)));

        // Act
        let response = post_shopify(&app, "orders/paid", "ev-consent-3", &body);

        // Assert
        applied(&response, case.name);
        assert_eq!(
            contact(&app, &id)["consents"]["email"]["status"],
            case.expected,
            "case {}",
            case.name
        );
        assert_eq!(
            app.count("SELECT count(*) FROM consents"),
            consents,
            "case {}",
            case.name
        );
        assert_eq!(
            app.count("SELECT count(*) FROM suppressions"),
            suppressions,
            "case {}",
            case.name
        );
    }
}

#[test]
fn the_same_checkout_consent_in_later_events_of_the_order_is_recorded_once() {
    // Arrange
    let app = TestApp::new();
    let body = shopify_consent_order(
        &app,
        5820410600005,
        "subscribed",
        Some(&days_ago(&app, 1.0)),
    );

    // Act: orders/create, orders/paid and orders/updated carry the same state.
    for (topic, event) in [
        ("orders/create", "ev-consent-4a"),
        ("orders/paid", "ev-consent-4b"),
        ("orders/updated", "ev-consent-4c"),
    ] {
        applied(&post_shopify(&app, topic, event, &body), topic);
    }

    // Assert
    assert_eq!(app.count("SELECT count(*) FROM consents"), 1);
    assert_eq!(
        consents_of(&app, CONSENT_EMAIL)["email"]["status"],
        "granted"
    );
}

#[test]
fn a_purchase_never_grants_consent_to_a_suppressed_address() {
    // Arrange: the person was erased, which suppresses their email.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": CONSENT_EMAIL}));
    let erased = app.request(
        "DELETE",
        &format!("/v1/contacts/{id}"),
        &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
        "",
    );
    assert_eq!(erased.status, 200, "{}", erased.text());
    let body = shopify_consent_order(&app, 5820410600006, "subscribed", None);

    // Act: the same address buys again, the box ticked.
    let order_id = applied(
        &post_shopify(&app, "orders/paid", "ev-consent-5", &body),
        "order after erasure",
    )
    .expect("order id");

    // Assert: the order and a new contact are stored; no consent, and
    // the suppression stands.
    let contact = contact_of(&app, &order(&app, &order_id));
    assert_eq!(contact["email"], CONSENT_EMAIL);
    assert_eq!(contact["consents"], json!({}));
    assert_eq!(app.count("SELECT count(*) FROM consents"), 0);
    assert_eq!(
        app.count("SELECT count(*) FROM suppressions WHERE lifted_at IS NULL"),
        1
    );
}

#[test]
fn a_purchase_after_a_withdrawal_does_not_lift_the_suppression() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: withdrawn now; a day later a checkout says "subscribed"
    // half a day ago, after the withdrawal.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": CONSENT_EMAIL}));
    let response = staff_consent(
        &app,
        &id,
        &json!({"channel": "email", "status": "withdrawn", "reason": "complaint"}),
    );
    assert_eq!(response.status, 201, "{}", response.text());
    minutes(&app, 24 * 60);
    let body = shopify_consent_order(
        &app,
        5820410600007,
        "subscribed",
        Some(&days_ago(&app, 0.5)),
    );

    // Act
    applied(
        &post_shopify(&app, "orders/paid", "ev-consent-6", &body),
        "order",
    );

    // Assert
    let email = &contact(&app, &id)["consents"]["email"];
    assert_eq!(email["status"], "withdrawn", "{email}");
    assert_eq!(email["reason"], "complaint");
    assert_eq!(
        app.count("SELECT count(*) FROM suppressions WHERE lifted_at IS NULL"),
        1
    );
}

#[test]
fn a_shopify_consent_state_kizuna_does_not_know_is_ignored_and_grants_nothing() {
    let cases: [(&str, Json); 7] = [
        ("not subscribed", json!({"state": "not_subscribed"})),
        (
            "a double opt-in not yet confirmed",
            json!({"state": "pending"}),
        ),
        ("redacted", json!({"state": "redacted"})),
        (
            "a state Shopify adds later",
            json!({"state": "subscribed_twice"}),
        ),
        ("a state that is not text", json!({"state": 1})),
        (
            "a time that does not parse",
            json!({"state": "subscribed", "consent_updated_at": "yesterday"}),
        ),
        ("not an object", json!("subscribed")),
    ];
    for (n, (case, consent)) in cases.into_iter().enumerate() {
        // Arrange: buyer_accepts_marketing is true in the fixture, but the
        // customer's own consent object rules.
        let app = TestApp::new();
        let mut body = shopify_fixture("order_paid_discount_code");
        body["customer"]["email_marketing_consent"] = consent;
        body["customer"]["sms_marketing_consent"] = json!({"state": "weird"});

        // Act
        let response = post_shopify(&app, "orders/paid", &format!("ev-odd-{n}"), &body);

        // Assert
        applied(&response, case);
        assert_eq!(app.count("SELECT count(*) FROM orders"), 1, "case {case}");
        assert_eq!(app.count("SELECT count(*) FROM consents"), 0, "case {case}");
    }
}

#[test]
fn without_a_consent_object_a_ticked_buyer_accepts_marketing_grants_email_at_the_orders_time() {
    for (accepts, expected) in [(json!(true), Some("granted")), (json!(false), None)] {
        // Arrange: the 2025-01 shape, without the customer's consent objects.
        let app = TestApp::new();
        let mut body = shopify_consent_order(&app, 5820410600008, "subscribed", None);
        let customer = body["customer"].as_object_mut().expect("customer");
        customer.remove("email_marketing_consent");
        customer.remove("sms_marketing_consent");
        body["buyer_accepts_marketing"] = accepts.clone();

        // Act
        let order_id = applied(
            &post_shopify(&app, "orders/paid", "ev-accepts", &body),
            "order",
        )
        .expect("order id");

        // Assert
        let email = contact_of(&app, &order(&app, &order_id))["consents"]["email"].clone();
        assert_eq!(
            email["status"].as_str(),
            expected,
            "accepts {accepts}: {email}"
        );
        if expected.is_some() {
            assert_eq!(email["occurred_at"], body["processed_at"]);
            assert_eq!(email["source"], "shopify_checkout");
            assert_eq!(email["opt_in_level"], Json::Null);
        }
    }
}

#[test]
fn woocommerce_consent_is_read_from_the_configured_order_meta_key() {
    const KEY: &str = "_kizuna_newsletter";
    let cases: [(&str, Option<&str>, Json, Option<&str>); 5] = [
        ("a ticked box", Some(KEY), json!("yes"), Some("granted")),
        (
            "a ticked box as a number",
            Some(KEY),
            json!(1),
            Some("granted"),
        ),
        ("an unticked box", Some(KEY), json!("0"), None),
        (
            "unsubscribed",
            Some(KEY),
            json!("unsubscribed"),
            Some("withdrawn"),
        ),
        ("no key configured", None, json!("yes"), None),
    ];
    for (case, key, value, expected) in cases {
        // Arrange
        let app = match key {
            Some(key) => TestApp::with_variables(&[("woocommerce_consent_meta_key", key)]),
            None => TestApp::new(),
        };
        let mut body = woo_order();
        body["meta_data"] = json!([
            {"id": 900, "key": "_billing_kana", "value": "スズキ"},
            {"id": 901, "key": KEY, "value": value},
        ]);

        // Act
        let order_id =
            applied(&post_woo(&app, "order.created", "d-consent", &body), case).expect("order id");

        // Assert
        let email = contact_of(&app, &order(&app, &order_id))["consents"]["email"].clone();
        assert_eq!(email["status"].as_str(), expected, "case {case}: {email}");
        if expected.is_some() {
            assert_eq!(email["source"], "woocommerce_checkout", "case {case}");
            assert_eq!(
                email["occurred_at"], "2026-11-22T02:40:00.000000Z",
                "case {case}: the checkout's time"
            );
        }
    }
}

#[test]
fn kizuna_format_customer_consents_are_recorded_as_sent() {
    // Arrange
    let app = TestApp::new();
    let placed_at = days_ago(&app, 0.25);
    let given = days_ago(&app, 0.5);
    let mut event = kizuna_event("order.paid");
    event["data"]["placed_at"] = json!(placed_at);
    event["data"]["customer"]["consents"] = json!({
        "email": {"status": "granted", "occurred_at": given, "source": "pos_checkout",
                  "opt_in_level": "confirmed_opt_in"},
        "sms": {"status": "withdrawn"},
    });

    // Act
    let order_id = applied(&post_kizuna(&app, "msg_consent", &event), "order").expect("order id");

    // Assert
    let consents = contact_of(&app, &order(&app, &order_id))["consents"].clone();
    assert_eq!(consents["email"]["status"], "granted", "{consents}");
    assert_eq!(consents["email"]["source"], "pos_checkout");
    assert_eq!(consents["email"]["reason"], "checkout");
    assert_eq!(consents["email"]["occurred_at"], given.as_str());
    assert_eq!(consents["email"]["opt_in_level"], "confirmed_opt_in");
    assert_eq!(consents["sms"]["status"], "withdrawn");
    assert_eq!(consents["sms"]["source"], "checkout", "the default source");
    assert_eq!(consents["sms"]["occurred_at"], placed_at.as_str());
    assert_eq!(
        app.count("SELECT count(*) FROM suppressions WHERE kind = 'phone'"),
        1,
        "an SMS withdrawal suppresses the phone"
    );
}

#[test]
fn malformed_kizuna_format_consents_are_422_and_store_nothing() {
    let app = TestApp::new();
    migrate(&app);
    let cases = [
        ("not an object", json!(["email"]), "customer.consents"),
        (
            "an unknown channel",
            json!({"fax": {"status": "granted"}}),
            "customer.consents.fax",
        ),
        (
            "an unknown status",
            json!({"email": {"status": "maybe"}}),
            "customer.consents.email.status",
        ),
        (
            "a time that does not parse",
            json!({"email": {"status": "granted", "occurred_at": "yesterday"}}),
            "customer.consents.email.occurred_at",
        ),
        (
            "a source that is not text",
            json!({"email": {"status": "granted", "source": 7}}),
            "customer.consents.email.source",
        ),
    ];
    for (n, (case, consents, field)) in cases.into_iter().enumerate() {
        // Arrange
        let before = stored(&app);
        let mut event = kizuna_event("order.paid");
        event["data"]["customer"]["consents"] = consents;

        // Act
        let response = post_kizuna(&app, &format!("msg_bad_consent_{n}"), &event);

        // Assert
        let problem = response.assert_problem(422, case);
        assert_eq!(error_fields(&problem), [field], "case {case}");
        assert_only_logged(&app, &before, case);
    }
}
