//! `/v1/points`: program rules, balances, ledger, award, redeem, adjust,
//! cancel, liability and the expiry sweep, end to end through the native
//! host; earning from Shopify-shaped order webhooks (earn, repeats,
//! partial refunds, cancels, points-paid orders, debt); concurrency over
//! real HTTP; boundaries with the manual clock; bad input and auth; the
//! next expiry and the lot list, a redemption's value, program patches and
//! what erasure forfeits. Every test checks the answer and what was (or
//! was not) stored.

use crate::helpers::*;
use bytes::Bytes;
use kizuna::signatures::sign_body;
use kizuna::timestamp;
use serde_json::{Value as Json, json};
use time::{Duration, OffsetDateTime};

// ---------------------------------------------------------------------------
// Fixtures, senders and readers
// ---------------------------------------------------------------------------

/// Shopify REST Admin API order resource (JPY, tax-exclusive, two lines).
const SHOPIFY_ORDER: &str = include_str!("../../fixtures/shopify_order.json");
/// Shopify refund resource for that order (1,620 JPY back).
const SHOPIFY_REFUND: &str = include_str!("../../fixtures/shopify_refund.json");
/// The fixture order's `id`, as Kizuna stores it and as `order_ref`.
const SHOPIFY_ORDER_ID: &str = "5432109876543";
const SHOPIFY_EMAIL: &str = "hanako.sato@example.jp";
/// The fixture's total: subtotal 5,000 + tax 500 + shipping 600.
const ORDER_TOTAL: i64 = 6100;
/// The fixture refund's amount.
const REFUNDED: i64 = 1620;
/// A well-formed UUID nothing has.
const UNKNOWN_ID: &str = "0190f5d2-7c1e-7a4b-9f00-123456789abc";

/// The tables a points request may write: "nothing changed" means none
/// of these changed.
const POINTS_TABLES: &[&str] = &[
    "points_entries",
    "points_lots",
    "points_accounts",
    "points_allocations",
    "idempotency_keys",
    "points_programs",
];

fn at(t: OffsetDateTime) -> String {
    timestamp::format(t)
}

/// Any request, with the key, content type and idempotency key given.
fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    idempotency_key: Option<&str>,
    body: impl Into<Bytes>,
) -> TestResponse {
    let auth = key.map(bearer);
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    if let Some(content_type) = content_type {
        headers.push(("content-type", content_type));
    }
    if let Some(idempotency_key) = idempotency_key {
        headers.push(("idempotency-key", idempotency_key));
    }
    app.request(method, path, &headers, body)
}

/// `POST /v1/points/redeem` with the `points:redeem` key.
fn redeem(app: &TestApp, idempotency_key: Option<&str>, body: &Json) -> TestResponse {
    call(
        app,
        "POST",
        "/v1/points/redeem",
        Some(POINTS_KEY),
        Some("application/json"),
        idempotency_key,
        body.to_string(),
    )
}

/// A redeem that must succeed; returns its answer.
fn redeem_ok(app: &TestApp, idempotency_key: &str, body: &Json) -> Json {
    let response = redeem(app, Some(idempotency_key), body);
    assert_eq!(response.status, 201, "redeem {body}: {}", response.text());
    response.json()
}

/// A fresh `Idempotency-Key` for an award.
fn award_key() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("award-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// `POST /v1/points/award` with the `points:award` key and a fresh
/// `Idempotency-Key`.
fn post_award(app: &TestApp, body: &Json) -> TestResponse {
    call(
        app,
        "POST",
        "/v1/points/award",
        Some(POINTS_KEY),
        Some("application/json"),
        Some(&award_key()),
        body.to_string(),
    )
}

/// `POST /v1/points/award`, which must succeed; returns its answer.
fn award_with(app: &TestApp, body: &Json) -> Json {
    let response = post_award(app, body);
    assert_eq!(response.status, 201, "award {body}: {}", response.text());
    response.json()
}

fn award(app: &TestApp, contact_id: &str, points: i64) -> Json {
    award_with(
        app,
        &json!({"contact_id": contact_id, "points": points, "reason": "campaign gift"}),
    )
}

/// `POST /v1/points/adjust` with the `points:admin` key.
fn adjust(app: &TestApp, body: &Json) -> TestResponse {
    app.send_json("POST", POINTS_ADMIN_KEY, "/v1/points/adjust", body)
}

/// `PUT /v1/points/program`, which must succeed; returns the program.
fn put_program(app: &TestApp, rules: &Json) -> Json {
    let response = app.send_json("PUT", POINTS_ADMIN_KEY, "/v1/points/program", rules);
    assert_eq!(response.status, 200, "PUT program: {}", response.text());
    response.json()
}

fn program(app: &TestApp) -> Json {
    let response = app.get(POINTS_KEY, "/v1/points/program");
    assert_eq!(response.status, 200, "GET program: {}", response.text());
    response.json()
}

/// `GET /v1/points/{id}`, which must succeed.
fn balance(app: &TestApp, contact_id: &str) -> Json {
    let response = app.get(POINTS_KEY, &format!("/v1/points/{contact_id}"));
    assert_eq!(response.status, 200, "balance: {}", response.text());
    response.json()
}

/// The whole ledger of a contact, newest first.
fn ledger(app: &TestApp, contact_id: &str) -> Vec<Json> {
    let response = app.get(
        POINTS_KEY,
        &format!("/v1/points/{contact_id}/ledger?limit=200"),
    );
    assert_eq!(response.status, 200, "ledger: {}", response.text());
    let page = response.json();
    assert!(page["next_cursor"].is_null(), "one page holds it all");
    page["items"].as_array().expect("items").clone()
}

/// The ledger entries of one kind, newest first.
fn entries_of(app: &TestApp, contact_id: &str, kind: &str) -> Vec<Json> {
    ledger(app, contact_id)
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn new_contact(app: &TestApp, email: &str) -> String {
    app.create_contact(&json!({ "email": email }))
}

/// Row counts of the points tables.
fn points_counts(app: &TestApp) -> Vec<(String, i64)> {
    POINTS_TABLES
        .iter()
        .map(|t| {
            (
                (*t).to_owned(),
                app.count(&format!("SELECT count(*) FROM {t}")),
            )
        })
        .collect()
}

/// What is left in the lot an entry opened.
fn lot_remaining(app: &TestApp, entry_id: &str) -> i64 {
    app.db()
        .query_row(
            "SELECT remaining FROM points_lots WHERE entry_id = ?1",
            [entry_id],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("no lot for entry {entry_id}: {e}"))
}

/// The ledger's integrity, per contact and overall: sum(entries) =
/// sum(lots.remaining) − debt, no lot below zero or above its original,
/// the account's running balance equals its entries' sum.
fn assert_ledger_invariants(app: &TestApp, case: &str) {
    let db = app.db();
    let mut statement = db
        .prepare(
            "SELECT a.contact_id, a.balance, a.debt,
                    (SELECT COALESCE(SUM(points), 0) FROM points_entries e WHERE e.contact_id = a.contact_id),
                    (SELECT COALESCE(SUM(remaining), 0) FROM points_lots l WHERE l.contact_id = a.contact_id)
             FROM points_accounts a",
        )
        .expect("invariant query");
    let rows: Vec<(String, i64, i64, i64, i64)> = statement
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    for (contact, balance, debt, entries, remaining) in rows {
        assert_eq!(
            entries,
            remaining - debt,
            "{case}: contact {contact}: sum(entries) = sum(remaining) − debt"
        );
        assert_eq!(balance, entries, "{case}: contact {contact}: running sum");
        assert!(debt >= 0, "{case}: contact {contact}: debt {debt}");
    }
    let bad_lots =
        app.count("SELECT count(*) FROM points_lots WHERE remaining < 0 OR remaining > original");
    assert_eq!(bad_lots, 0, "{case}: lots out of bounds");
    let entries = app.count("SELECT COALESCE(SUM(points), 0) FROM points_entries");
    let remaining = app.count("SELECT COALESCE(SUM(remaining), 0) FROM points_lots");
    let debt = app.count("SELECT COALESCE(SUM(debt), 0) FROM points_accounts");
    assert_eq!(entries, remaining - debt, "{case}: overall");
}

fn fixture(text: &str) -> Json {
    serde_json::from_str(text).expect("fixture is JSON")
}

/// The Shopify fixture with product types (Kizuna's line category): the
/// sencha line is `tea`, the cup is `teaware`.
fn shopify_order() -> Json {
    let mut order = fixture(SHOPIFY_ORDER);
    order["line_items"][0]["product_type"] = json!("tea");
    order["line_items"][1]["product_type"] = json!("teaware");
    order
}

/// The fixture, later, as `orders/cancelled` sends it.
fn cancelled(order: &Json) -> Json {
    let mut order = order.clone();
    order["updated_at"] = json!("2026-11-24T12:00:00+09:00");
    order["cancelled_at"] = json!("2026-11-24T12:00:00+09:00");
    order["cancel_reason"] = json!("customer");
    order
}

/// A one-line order of the fixture's customer, no tax or shipping.
fn one_line_order(id: u64, price: i64) -> Json {
    let mut order = shopify_order();
    let price = price.to_string();
    order["id"] = json!(id);
    order["name"] = json!(format!("#{id}"));
    order["line_items"] = json!([{
        "id": id * 10, "sku": "TEA-HOJI-200", "title": "ほうじ茶 200g", "name": "ほうじ茶 200g",
        "product_type": "tea", "quantity": 1, "price": price, "total_discount": "0",
        "tax_lines": []
    }]);
    order["subtotal_price"] = json!(price);
    order["total_discounts"] = json!("0");
    order["total_tax"] = json!("0");
    order["total_shipping_price_set"]["shop_money"]["amount"] = json!("0");
    order["total_price"] = json!(price);
    order
}

/// A Shopify delivery of `body` for `topic`, signed with the app secret.
fn post_shopify(app: &TestApp, topic: &str, event_id: &str, body: &Json) -> TestResponse {
    let body = body.to_string().into_bytes();
    let hmac = sign_body(SHOPIFY_SECRET, &body);
    let webhook_id = format!("b54557e4-{}-{}", topic.replace('/', "-"), event_id);
    app.request(
        "POST",
        "/v1/webhooks/shopify",
        &[
            ("content-type", "application/json"),
            ("x-shopify-topic", topic),
            ("x-shopify-hmac-sha256", &hmac),
            ("x-shopify-shop-domain", "kizuna-tea.myshopify.com"),
            ("x-shopify-webhook-id", &webhook_id),
            ("x-shopify-event-id", event_id),
        ],
        body,
    )
}

/// Asserts a 200 answer with `status`; returns its order id.
fn answered(response: &TestResponse, status: &str, case: &str) -> String {
    assert_eq!(response.status, 200, "{case}: {}", response.text());
    let body = response.json();
    assert_eq!(body["status"], status, "{case}: {body}");
    body["order_id"].as_str().expect("order id").to_owned()
}

/// The contact an order was stored on, through the orders API.
fn contact_of_order(app: &TestApp, order_id: &str) -> String {
    let response = app.get(ORDERS_KEY, &format!("/v1/orders/{order_id}"));
    assert_eq!(response.status, 200, "GET order: {}", response.text());
    response.json()["contact_id"]
        .as_str()
        .expect("the order has a contact")
        .to_owned()
}

// ---------------------------------------------------------------------------
// Smoke
// ---------------------------------------------------------------------------

#[test]
fn award_then_redeem_then_refuse_beyond_the_balance() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "points@example.jp"}));
    let award = post_award(
        &app,
        &json!({"contact_id": id, "points": 500, "reason": "welcome"}),
    );
    assert_eq!(award.status, 201, "{}", award.text());

    // Act
    let redeem = |key: &str, points: i64| {
        app.request(
            "POST",
            "/v1/points/redeem",
            &[
                ("authorization", &format!("Bearer {POINTS_KEY}")),
                ("content-type", "application/json"),
                ("idempotency-key", key),
            ],
            json!({"contact_id": id, "points": points}).to_string(),
        )
    };
    let first = redeem("r-1", 300);
    let too_much = redeem("r-2", 201);

    // Assert
    assert_eq!(first.status, 201, "{}", first.text());
    let problem = too_much.assert_problem(409, "beyond the balance");
    assert_eq!(problem["available"], 200);
    let balance = app.get(POINTS_KEY, &format!("/v1/points/{id}")).json();
    assert_eq!(balance["available"], 200);
    assert_eq!(balance["lifetime_earned"], 500);
    assert_eq!(balance["redeemed"], 300);
    let ledger = app
        .get(POINTS_KEY, &format!("/v1/points/{id}/ledger"))
        .json();
    let balances: Vec<i64> = ledger["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["balance_after"].as_i64().unwrap())
        .collect();
    assert_eq!(balances, [200, 500]);
}

// ---------------------------------------------------------------------------
// Program
// ---------------------------------------------------------------------------

#[test]
fn the_default_program_is_version_zero() {
    // Arrange
    let app = TestApp::new();

    // Act
    let program = program(&app);

    // Assert
    assert_eq!(program["version"], 0);
    assert!(program["created_at"].is_null() && program["created_by"].is_null());
    let rules = &program["rules"];
    assert_eq!(rules["earn_rate"], json!({"points": 1, "per_minor": 100}));
    assert_eq!(rules["earn_base"], "subtotal");
    assert_eq!(rules["pending_days"], 0);
    assert_eq!(
        rules["expiry"],
        json!({"policy": "days_after_earn", "days": 365})
    );
    assert_eq!(rules["min_redeem"], 1);
    assert_eq!(rules["point_value_minor"], 1);
    assert_eq!(rules["campaigns"], json!([]));
    assert_eq!(app.count("SELECT count(*) FROM points_programs"), 0);
}

#[test]
fn each_put_stores_the_next_version_and_each_earn_records_its_version() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "versions@example.jp");
    let first_award = award(&app, &id, 10);

    // Act
    let v1 = put_program(
        &app,
        &json!({"earn_rate": {"points": 1, "per_minor": 200}, "category_multipliers": {"tea": 1.5}}),
    );
    let second_award = award(&app, &id, 20);
    let v2 = put_program(&app, &json!({"pending_days": 3, "min_redeem": 5}));
    let third_award = award(&app, &id, 30);

    // Assert
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["created_by"], "key:points-admin");
    assert_eq!(v1["created_at"], at(start_time()));
    assert_eq!(v1["rules"]["category_multipliers"]["tea"], 1.5);
    assert_eq!(v2["version"], 2);
    let current = program(&app);
    assert_eq!(current["version"], 2);
    assert_eq!(current["rules"]["pending_days"], 3);
    assert_eq!(current["rules"]["min_redeem"], 5);
    assert_eq!(
        current["rules"]["earn_rate"],
        json!({"points": 1, "per_minor": 100}),
        "a version replaces the rules; omitted ones take their defaults"
    );
    assert_eq!(app.count("SELECT count(*) FROM points_programs"), 2);
    let versions: Vec<(String, Json)> = ledger(&app, &id)
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["program_version"].clone(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            (
                third_award["entry_id"].as_str().unwrap().to_owned(),
                json!(2)
            ),
            (
                second_award["entry_id"].as_str().unwrap().to_owned(),
                json!(1)
            ),
            (
                first_award["entry_id"].as_str().unwrap().to_owned(),
                json!(0)
            ),
        ]
    );
}

#[test]
fn the_program_needs_the_points_admin_scope() {
    // Arrange
    let app = TestApp::new();
    put_program(&app, &json!({"min_redeem": 10}));

    // Act
    let response = app.send_json(
        "PUT",
        POINTS_KEY,
        "/v1/points/program",
        &json!({"min_redeem": 1}),
    );

    // Assert
    response.assert_problem(403, "points:redeem and points:award key");
    let current = program(&app);
    assert_eq!(current["version"], 1);
    assert_eq!(current["rules"]["min_redeem"], 10);
}

#[test]
fn invalid_programs_are_refused_and_the_version_is_unchanged() {
    // Arrange
    let app = TestApp::new();
    put_program(&app, &json!({"category_multipliers": {"tea": 2}}));
    let before = points_counts(&app);
    let campaign = |starts: &str, ends: &str, multiplier: Json| json!({"campaigns": [{"name": "x", "starts_at": starts, "ends_at": ends, "multiplier": multiplier}]});
    let cases: Vec<(&str, Json)> = vec![
        (
            "campaign ends before it starts",
            campaign(
                "2026-12-01T00:00:00+09:00",
                "2026-11-01T00:00:00+09:00",
                json!(5),
            ),
        ),
        (
            "campaign ends when it starts",
            campaign(
                "2026-12-01T00:00:00+09:00",
                "2026-11-30T15:00:00Z",
                json!(5),
            ),
        ),
        (
            "campaign start not a timestamp",
            campaign("2026-12-01", "2026-12-31T00:00:00Z", json!(5)),
        ),
        (
            "campaign multiplier with three decimals",
            campaign("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", json!(1.125)),
        ),
        (
            "zero earn rate",
            json!({"earn_rate": {"points": 0, "per_minor": 100}}),
        ),
        (
            "zero per_minor",
            json!({"earn_rate": {"points": 1, "per_minor": 0}}),
        ),
        ("unknown field", json!({"bonus_points": 100})),
        (
            "unknown field in the earn rate",
            json!({"earn_rate": {"points": 1, "per_minor": 100, "round": "up"}}),
        ),
        (
            "multiplier with three decimals",
            json!({"sku_multipliers": {"TEA-SENCHA-100": 1.234}}),
        ),
        (
            "zero multiplier",
            json!({"category_multipliers": {"tea": 0}}),
        ),
        (
            "negative multiplier",
            json!({"category_multipliers": {"tea": -2}}),
        ),
        (
            "multiplier as a string",
            json!({"category_multipliers": {"tea": "2"}}),
        ),
        (
            "expiry policy unknown",
            json!({"expiry": {"policy": "sometimes"}}),
        ),
        (
            "expiry days zero",
            json!({"expiry": {"policy": "days_after_earn", "days": 0}}),
        ),
        ("negative pending days", json!({"pending_days": -1})),
        ("zero min redeem", json!({"min_redeem": 0})),
        ("zero point value", json!({"point_value_minor": 0})),
        ("earn base unknown", json!({"earn_base": "shipping"})),
    ];

    for (case, rules) in cases {
        // Act
        let response = app.send_json("PUT", POINTS_ADMIN_KEY, "/v1/points/program", &rules);

        // Assert
        let problem = response.assert_problem(422, case);
        assert!(
            problem["errors"].as_array().is_some_and(|e| !e.is_empty()),
            "case {case}: names the field: {problem}"
        );
        assert_eq!(program(&app)["version"], 1, "case {case}");
        assert_eq!(points_counts(&app), before, "case {case}");
    }
}

// ---------------------------------------------------------------------------
// Earning from orders
// ---------------------------------------------------------------------------

/// 1 point per ¥110 (a tax-inclusive ¥100), tea ×2, the cup's SKU ×1.5
/// over its category's ×3, and four campaigns of which only the 5× and
/// 3× run (for everyone) when the fixture was placed
/// (2026-11-22T11:50:00+09:00).
fn earn_rules() -> Json {
    json!({
        "earn_rate": {"points": 1, "per_minor": 110},
        "sku_multipliers": {"CUP-ARITA-01": 1.5},
        "category_multipliers": {"tea": 2, "teaware": 3},
        "campaigns": [
            {"name": "weekend 3x", "starts_at": "2026-11-21T00:00:00+09:00",
             "ends_at": "2026-11-23T00:00:00+09:00", "multiplier": 3},
            {"name": "anniversary 5x", "starts_at": "2026-11-22T00:00:00+09:00",
             "ends_at": "2026-11-23T00:00:00+09:00", "multiplier": 5},
            {"name": "vip 10x", "starts_at": "2026-11-01T00:00:00+09:00",
             "ends_at": "2026-12-01T00:00:00+09:00", "multiplier": 10, "tag": "vip"},
            {"name": "morning 20x", "starts_at": "2026-11-22T06:00:00+09:00",
             "ends_at": "2026-11-22T11:50:00+09:00", "multiplier": 20}
        ]
    })
}

/// What the fixture earns under `earn_rules`, by hand:
/// - base = subtotal 5,000 (no points paid);
/// - lines: sencha 1,500 × 2 = 3,000 (tea ×2); cup 2,500 − 500 discount
///   = 2,000 (SKU ×1.5, its category's ×3 ignored); the base is shared
///   3,000 : 2,000, so the weighted multiplier is (3,000×2 + 2,000×1.5) /
///   5,000 = 1.8;
/// - campaigns: 5× (the highest running; 3× does not stack, vip needs a
///   tag, morning 20× ended at placed_at, ends are exclusive);
/// - 5,000 × 1.8 × 5 / 110 = 409.09… → 409, rounded down once (per-line
///   rounding would give 272 + 136 = 408).
const FIXTURE_EARN: i64 = 409;

/// Posts the fixture as paid under `earn_rules`; returns (order, contact).
fn paid_fixture_order(app: &TestApp) -> (String, String) {
    put_program(app, &earn_rules());
    let order_id = answered(
        &post_shopify(app, "orders/paid", "ev-paid", &shopify_order()),
        "applied",
        "orders/paid",
    );
    let contact_id = contact_of_order(app, &order_id);
    (order_id, contact_id)
}

#[test]
fn a_paid_shopify_order_earns_under_the_best_campaign_and_the_category_multiplier() {
    // Arrange
    let app = TestApp::new();

    // Act
    let (order_id, contact_id) = paid_fixture_order(&app);

    // Assert
    let earns = entries_of(&app, &contact_id, "earn");
    assert_eq!(earns.len(), 1, "{earns:?}");
    let earn = &earns[0];
    assert_eq!(earn["points"], FIXTURE_EARN);
    assert_eq!(earn["balance_after"], FIXTURE_EARN);
    assert_eq!(earn["program_version"], 1);
    assert_eq!(earn["order_id"], order_id.as_str());
    assert_eq!(earn["created_by"], "webhook:shopify");
    assert_eq!(earn["reason"], "order #1001");
    let balance = balance(&app, &contact_id);
    assert_eq!(balance["available"], FIXTURE_EARN);
    assert_eq!(balance["lifetime_earned"], FIXTURE_EARN);
    assert_eq!(balance["debt"], 0);
    assert_ledger_invariants(&app, "earn");
}

#[test]
fn a_repeated_delivery_and_later_updates_do_not_earn_twice() {
    // Arrange
    let app = TestApp::new();
    let (_, contact_id) = paid_fixture_order(&app);
    let mut updated = shopify_order();
    updated["updated_at"] = json!("2026-11-22T14:00:00+09:00");
    updated["note"] = json!("ギフト包装希望");
    let mut paid_again = updated.clone();
    paid_again["updated_at"] = json!("2026-11-22T15:00:00+09:00");
    app.clock.advance(Duration::hours(1));

    // Act
    let repeat = post_shopify(&app, "orders/paid", "ev-paid", &shopify_order());
    let update = post_shopify(&app, "orders/updated", "ev-updated", &updated);
    let other_paid = post_shopify(&app, "orders/paid", "ev-paid-2", &paid_again);

    // Assert
    answered(&repeat, "duplicate", "same event again");
    answered(&update, "applied", "orders/updated");
    answered(&other_paid, "applied", "orders/paid with a new event id");
    assert_eq!(entries_of(&app, &contact_id, "earn").len(), 1);
    assert_eq!(ledger(&app, &contact_id).len(), 1);
    assert_eq!(balance(&app, &contact_id)["available"], FIXTURE_EARN);
    assert_ledger_invariants(&app, "repeats");
}

#[test]
fn a_partial_refund_reverses_the_refunded_share_rounded_for_the_customer() {
    // Arrange
    let app = TestApp::new();
    let (order_id, contact_id) = paid_fixture_order(&app);
    let earn_id = entries_of(&app, &contact_id, "earn")[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.clock.advance(Duration::days(1));
    // The order keeps floor(409 × (6,100 − 1,620) / 6,100) = floor(300.38…)
    // = 300; 109 are taken back.
    let kept = FIXTURE_EARN * (ORDER_TOTAL - REFUNDED) / ORDER_TOTAL;
    assert_eq!(kept, 300);

    // Act
    let refund = post_shopify(
        &app,
        "refunds/create",
        "ev-refund",
        &fixture(SHOPIFY_REFUND),
    );
    let refund_again = post_shopify(
        &app,
        "refunds/create",
        "ev-refund-redelivered",
        &fixture(SHOPIFY_REFUND),
    );

    // Assert
    answered(&refund, "applied", "refunds/create");
    answered(&refund_again, "applied", "the same refund, new event id");
    let reversals = entries_of(&app, &contact_id, "reverse");
    assert_eq!(reversals.len(), 1, "{reversals:?}");
    assert_eq!(reversals[0]["points"], -(FIXTURE_EARN - kept));
    assert_eq!(reversals[0]["balance_after"], kept);
    assert_eq!(reversals[0]["related_entry_id"], earn_id.as_str());
    assert_eq!(reversals[0]["order_id"], order_id.as_str());
    let balance = balance(&app, &contact_id);
    assert_eq!(balance["available"], kept);
    assert_eq!(balance["reversed"], FIXTURE_EARN - kept);
    assert_eq!(balance["lifetime_earned"], FIXTURE_EARN);
    assert_eq!(lot_remaining(&app, &earn_id), kept);
    assert_ledger_invariants(&app, "partial refund");
}

#[test]
fn a_cancel_after_a_partial_refund_reverses_the_rest() {
    // Arrange
    let app = TestApp::new();
    let (_, contact_id) = paid_fixture_order(&app);
    app.clock.advance(Duration::days(1));
    answered(
        &post_shopify(
            &app,
            "refunds/create",
            "ev-refund",
            &fixture(SHOPIFY_REFUND),
        ),
        "applied",
        "refund",
    );
    let mut cancel = cancelled(&shopify_order());
    cancel["financial_status"] = json!("partially_refunded");
    app.clock.advance(Duration::days(1));

    // Act
    let response = post_shopify(&app, "orders/cancelled", "ev-cancel", &cancel);
    let repeat = post_shopify(&app, "orders/cancelled", "ev-cancel-2", &cancel);

    // Assert
    answered(&response, "applied", "orders/cancelled");
    answered(&repeat, "applied", "cancel again with a new event id");
    let reversals: Vec<i64> = entries_of(&app, &contact_id, "reverse")
        .iter()
        .map(|e| e["points"].as_i64().unwrap())
        .collect();
    assert_eq!(reversals, [-300, -109], "newest first");
    let balance = balance(&app, &contact_id);
    assert_eq!(balance["available"], 0);
    assert_eq!(balance["reversed"], FIXTURE_EARN);
    assert_eq!(balance["ledger_balance"], 0);
    assert_eq!(balance["debt"], 0);
    assert_ledger_invariants(&app, "cancel");
}

#[test]
fn cancelling_a_points_paid_order_returns_the_points_to_their_original_lots() {
    // Arrange: two lots; the redemption for the order draws from both
    let app = TestApp::new();
    let id = new_contact(&app, SHOPIFY_EMAIL);
    let soon = award_with(
        &app,
        &json!({"contact_id": id, "points": 100, "reason": "birthday",
                "expires_at": "2027-01-01T00:00:00+09:00"}),
    );
    let later = award(&app, &id, 400);
    let redemption = redeem_ok(
        &app,
        "checkout-1001",
        &json!({"contact_id": id, "points": 200, "reason": "checkout", "order_ref": SHOPIFY_ORDER_ID}),
    );
    let (soon_id, later_id) = (
        soon["entry_id"].as_str().unwrap(),
        later["entry_id"].as_str().unwrap(),
    );
    assert_eq!(
        (lot_remaining(&app, soon_id), lot_remaining(&app, later_id)),
        (0, 300)
    );
    let order_id = answered(
        &post_shopify(&app, "orders/paid", "ev-paid", &shopify_order()),
        "applied",
        "orders/paid",
    );
    assert_eq!(contact_of_order(&app, &order_id), id, "matched by email");
    // Default program: floor(5,000 / 100) = 50.
    assert_eq!(balance(&app, &id)["available"], 300 + 50);
    app.clock.advance(Duration::days(2));

    // Act
    let response = post_shopify(
        &app,
        "orders/cancelled",
        "ev-cancel",
        &cancelled(&shopify_order()),
    );

    // Assert
    answered(&response, "applied", "orders/cancelled");
    let balance = balance(&app, &id);
    assert_eq!(balance["available"], 500);
    assert_eq!(balance["redeemed"], 0, "net of points given back");
    assert_eq!(balance["reversed"], 50);
    assert_eq!(balance["debt"], 0);
    let restored: Vec<Json> = entries_of(&app, &id, "reverse")
        .into_iter()
        .filter(|e| e["points"].as_i64().unwrap() > 0)
        .collect();
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(restored[0]["points"], 200);
    assert_eq!(restored[0]["order_ref"], SHOPIFY_ORDER_ID);
    assert_eq!(restored[0]["related_entry_id"], redemption["entry_id"]);
    assert_eq!(lot_remaining(&app, soon_id), 100, "back to the first lot");
    assert_eq!(lot_remaining(&app, later_id), 400, "back to the second lot");
    assert_eq!(
        app.count("SELECT count(*) FROM points_allocations WHERE restored = points"),
        2
    );
    assert_ledger_invariants(&app, "points-paid cancel");
}

#[test]
fn a_partial_refund_of_a_points_paid_order_returns_the_refunded_share_then_a_cancel_the_rest() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, SHOPIFY_EMAIL);
    award(&app, &id, 500);
    redeem_ok(
        &app,
        "checkout-1001",
        &json!({"contact_id": id, "points": 300, "order_ref": SHOPIFY_ORDER_ID}),
    );
    answered(
        &post_shopify(&app, "orders/paid", "ev-paid", &shopify_order()),
        "applied",
        "orders/paid",
    );
    app.clock.advance(Duration::days(1));

    // Act 1: refund 1,620 of 6,100
    answered(
        &post_shopify(
            &app,
            "refunds/create",
            "ev-refund",
            &fixture(SHOPIFY_REFUND),
        ),
        "applied",
        "refund",
    );

    // Assert 1: the earn keeps floor(50 × 4,480 / 6,100) = 36 (14 back);
    // floor(300 × 1,620 / 6,100) = 79 redeemed points come back.
    let after_refund = balance(&app, &id);
    assert_eq!(after_refund["available"], 500 - 300 + 50 - 14 + 79);
    assert_eq!(after_refund["redeemed"], 300 - 79);

    // Act 2
    app.clock.advance(Duration::days(1));
    answered(
        &post_shopify(
            &app,
            "orders/cancelled",
            "ev-cancel",
            &cancelled(&shopify_order()),
        ),
        "applied",
        "cancel",
    );

    // Assert 2
    let after_cancel = balance(&app, &id);
    assert_eq!(after_cancel["available"], 500);
    assert_eq!(after_cancel["redeemed"], 0);
    assert_eq!(after_cancel["reversed"], 50);
    let restores: Vec<i64> = entries_of(&app, &id, "reverse")
        .iter()
        .filter_map(|e| e["points"].as_i64().filter(|p| *p > 0))
        .collect();
    assert_eq!(restores, [221, 79]);
    assert_ledger_invariants(&app, "points-paid refund then cancel");
}

#[test]
fn reversing_spent_points_creates_debt_that_the_next_earn_pays_first() {
    // Arrange: an order earning 100 (¥10,000 at 1 per ¥100), 80 spent
    let app = TestApp::new();
    let order = one_line_order(5432109870001, 10_000);
    let order_id = answered(
        &post_shopify(&app, "orders/paid", "ev-paid", &order),
        "applied",
        "paid",
    );
    let id = contact_of_order(&app, &order_id);
    assert_eq!(balance(&app, &id)["available"], 100);
    redeem_ok(&app, "spend-80", &json!({"contact_id": id, "points": 80}));
    app.clock.advance(Duration::days(1));

    // Act 1: the cancel reverses 100: 20 from the lot, 80 become debt
    answered(
        &post_shopify(&app, "orders/cancelled", "ev-cancel", &cancelled(&order)),
        "applied",
        "cancel",
    );

    // Assert 1
    let in_debt = balance(&app, &id);
    assert_eq!(in_debt["available"], 0);
    assert_eq!(in_debt["debt"], 80);
    assert_eq!(in_debt["ledger_balance"], -80);
    assert_eq!(ledger(&app, &id)[0]["balance_after"], -80);
    let contact = app.get(READ_KEY, &format!("/v1/contacts/{id}")).json();
    assert_eq!(contact["counters"]["points_debt"], 80);
    assert_ledger_invariants(&app, "in debt");
    let refused = redeem(
        &app,
        Some("spend-more"),
        &json!({"contact_id": id, "points": 1}),
    );
    assert_eq!(refused.assert_problem(409, "in debt")["available"], 0);

    // Act 2
    let paid_off = award(&app, &id, 100);

    // Assert 2
    assert_eq!(paid_off["balance"]["available"], 20);
    assert_eq!(paid_off["balance"]["debt"], 0);
    let balance = balance(&app, &id);
    assert_eq!(balance["available"], 20);
    assert_eq!(balance["debt"], 0);
    assert_eq!(balance["ledger_balance"], 20);
    assert_ledger_invariants(&app, "debt paid");
}

#[test]
fn an_order_cancelled_after_its_points_expired_creates_no_debt() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: 50 points from an order, none spent, expired a year later
    let app = TestApp::new();
    let order = shopify_order();
    let order_id = answered(
        &post_shopify(&app, "orders/paid", "ev-paid", &order),
        "applied",
        "paid",
    );
    let id = contact_of_order(&app, &order_id);
    app.clock.advance(Duration::days(366));
    assert_eq!(balance(&app, &id)["available"], 0, "expired");

    // Act
    answered(
        &post_shopify(&app, "orders/cancelled", "ev-cancel", &cancelled(&order)),
        "applied",
        "cancel",
    );

    // Assert: the expired points were never spent, so nothing is owed
    let balance = balance(&app, &id);
    assert_eq!(balance["debt"], 0, "{balance}");
    assert_eq!(balance["ledger_balance"], 0, "{balance}");
    assert_ledger_invariants(&app, "cancel after expiry");
}

/// A Kizuna-format event (Standard Webhooks), signed now on the app clock.
fn post_kizuna(app: &TestApp, msg_id: &str, event: &Json) -> TestResponse {
    app.post_kizuna_event(msg_id, event.to_string().into_bytes())
}

#[test]
fn points_paid_at_checkout_are_not_part_of_the_earn_base_and_come_back_on_cancel() {
    // Arrange: 1,000 points pay for part of a ¥5,000 (subtotal) POS order
    let app = TestApp::new();
    let id = new_contact(&app, "taro.yamada@example.jp");
    award(&app, &id, 2000);
    redeem_ok(
        &app,
        "pos-checkout-123",
        &json!({"contact_id": id, "points": 1000, "order_ref": "POS-2026-000123"}),
    );
    let mut paid = fixture(include_str!("../../fixtures/kizuna_order.json"));
    paid["data"]["points_used"] = json!(1000);
    paid["data"]["total"] = json!("4950");

    // Act 1
    let order_id = answered(
        &post_kizuna(&app, "msg_paid", &paid),
        "applied",
        "order.paid",
    );

    // Assert 1: floor((5,000 − 1,000 × ¥1) / 100) = 40, not 50
    assert_eq!(contact_of_order(&app, &order_id), id);
    let earns = entries_of(&app, &id, "earn");
    assert_eq!(earns[0]["points"], 40, "{earns:?}");
    assert_eq!(earns[0]["order_id"], order_id.as_str());
    assert_eq!(balance(&app, &id)["available"], 2000 - 1000 + 40);

    // Act 2
    app.clock.advance(Duration::hours(1));
    let mut cancel = paid.clone();
    cancel["type"] = json!("order.cancelled");
    cancel["data"]["updated_at"] = json!("2026-11-22T03:30:00Z");
    answered(
        &post_kizuna(&app, "msg_cancel", &cancel),
        "applied",
        "order.cancelled",
    );

    // Assert 2
    let balance = balance(&app, &id);
    assert_eq!(balance["available"], 2000);
    assert_eq!(balance["redeemed"], 0);
    assert_eq!(balance["reversed"], 40);
    assert_ledger_invariants(&app, "points paid at checkout");
}

#[test]
fn points_whose_lot_expired_since_are_not_given_back_on_cancel() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: 100 points valid until Dec 1 pay for the order
    let app = TestApp::new();
    let id = new_contact(&app, SHOPIFY_EMAIL);
    let lot = award_with(
        &app,
        &json!({"contact_id": id, "points": 100, "reason": "short-lived",
                "expires_at": "2026-12-01T00:00:00Z"}),
    );
    redeem_ok(
        &app,
        "checkout-1001",
        &json!({"contact_id": id, "points": 100, "order_ref": SHOPIFY_ORDER_ID}),
    );
    answered(
        &post_shopify(&app, "orders/paid", "ev-paid", &shopify_order()),
        "applied",
        "paid",
    );
    app.clock.advance(Duration::days(10));

    // Act
    answered(
        &post_shopify(
            &app,
            "orders/cancelled",
            "ev-cancel",
            &cancelled(&shopify_order()),
        ),
        "applied",
        "cancel",
    );

    // Assert: they would have expired anyway; the order's own earn is reversed
    let balance = balance(&app, &id);
    assert_eq!(balance["available"], 0);
    assert_eq!(balance["redeemed"], 100);
    assert_eq!(balance["debt"], 0);
    assert!(
        entries_of(&app, &id, "reverse")
            .iter()
            .all(|e| e["points"].as_i64().unwrap() < 0)
    );
    assert_eq!(lot_remaining(&app, lot["entry_id"].as_str().unwrap()), 0);
    assert_ledger_invariants(&app, "expired lot not restored");
}

// ---------------------------------------------------------------------------
// Redeem
// ---------------------------------------------------------------------------

#[test]
fn a_redeem_needs_an_idempotency_key() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "nokey@example.jp");
    award(&app, &id, 100);
    let before = points_counts(&app);

    // Act
    let response = redeem(&app, None, &json!({"contact_id": id, "points": 10}));

    // Assert
    let problem = response.assert_problem(422, "no Idempotency-Key");
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(points_counts(&app), before);
    assert_eq!(balance(&app, &id)["available"], 100);
}

#[test]
fn a_repeated_redeem_answers_the_first_result_and_spends_once() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "retry@example.jp");
    award(&app, &id, 100);
    let body = json!({"contact_id": id, "points": 30, "reason": "coupon"});
    let first = redeem(&app, Some("pos-42"), &body);
    assert_eq!(first.status, 201, "{}", first.text());
    app.clock.advance(Duration::minutes(5));
    let before = points_counts(&app);

    // Act
    let repeat = redeem(&app, Some("pos-42"), &body);
    let different = redeem(
        &app,
        Some("pos-42"),
        &json!({"contact_id": id, "points": 31, "reason": "coupon"}),
    );

    // Assert
    assert_eq!(repeat.status, 201);
    assert_eq!(repeat.json(), first.json(), "the first answer, unchanged");
    let problem = different.assert_problem(422, "same key, another body");
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(points_counts(&app), before);
    assert_eq!(entries_of(&app, &id, "redeem").len(), 1);
    let balance = balance(&app, &id);
    assert_eq!(balance["available"], 70);
    assert_eq!(balance["redeemed"], 30);
    let entry = &entries_of(&app, &id, "redeem")[0];
    assert_eq!(entry["created_by"], "key:points");
    assert_eq!(entry["reason"], "coupon");
}

#[test]
fn an_insufficient_redeem_is_409_with_the_available_amount() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "short@example.jp");
    award(&app, &id, 120);
    let before = points_counts(&app);

    // Act
    let response = redeem(
        &app,
        Some("too-much"),
        &json!({"contact_id": id, "points": 121}),
    );

    // Assert
    let problem = response.assert_problem(409, "insufficient");
    assert_eq!(problem["available"], 120);
    assert_eq!(
        points_counts(&app),
        before,
        "nothing stored, not even the key"
    );
    // A refused key was not used up: the same key may spend once points suffice.
    award(&app, &id, 1);
    let retried = redeem(
        &app,
        Some("too-much"),
        &json!({"contact_id": id, "points": 121}),
    );
    assert_eq!(retried.status, 201, "{}", retried.text());
    assert_eq!(balance(&app, &id)["available"], 0);
}

#[test]
fn the_program_minimum_redemption_is_enforced() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "minimum@example.jp");
    award(&app, &id, 500);
    put_program(&app, &json!({"min_redeem": 100}));
    let before = points_counts(&app);

    // Act
    let below = redeem(
        &app,
        Some("small"),
        &json!({"contact_id": id, "points": 99}),
    );
    let exactly = redeem(
        &app,
        Some("enough"),
        &json!({"contact_id": id, "points": 100}),
    );

    // Assert
    let problem = below.assert_problem(422, "below the minimum");
    assert_eq!(problem["errors"][0]["field"], "points");
    assert_eq!(exactly.status, 201, "{}", exactly.text());
    let after: Vec<(String, i64)> = points_counts(&app);
    let redeems = app.count("SELECT count(*) FROM points_entries WHERE kind = 'redeem'");
    assert_eq!(redeems, 1);
    assert_eq!(
        after
            .iter()
            .find(|(t, _)| t == "idempotency_keys")
            .unwrap()
            .1,
        before
            .iter()
            .find(|(t, _)| t == "idempotency_keys")
            .unwrap()
            .1
            + 1,
        "only the accepted redemption keeps its key"
    );
    assert_eq!(balance(&app, &id)["available"], 400);
}

#[test]
fn a_redeem_spends_the_soonest_expiring_lot_first_and_never_expiring_last() {
    // Arrange: created in the order far, soon, never
    let app = TestApp::new();
    let id = new_contact(&app, "lots@example.jp");
    let far = award_with(
        &app,
        &json!({"contact_id": id, "points": 100, "reason": "far",
                "expires_at": "2027-06-01T00:00:00Z"}),
    );
    let soon = award_with(
        &app,
        &json!({"contact_id": id, "points": 100, "reason": "soon",
                "expires_at": "2027-01-01T00:00:00Z"}),
    );
    put_program(&app, &json!({"expiry": {"policy": "never"}}));
    let never = award(&app, &id, 100);
    let lot = |entry: &Json| lot_remaining(&app, entry["entry_id"].as_str().unwrap());

    // Act
    let redeemed = redeem_ok(&app, "r-150", &json!({"contact_id": id, "points": 150}));

    // Assert
    assert_eq!(lot(&soon), 0, "soonest-expiring first");
    assert_eq!(lot(&far), 50, "then the next to expire");
    assert_eq!(lot(&never), 100, "never-expiring last");
    let allocations: Vec<(String, i64)> = {
        let db = app.db();
        let mut statement = db
            .prepare(
                "SELECT l.entry_id, a.points FROM points_allocations a JOIN points_lots l ON l.id = a.lot_id
                 WHERE a.redeem_entry_id = ?1 ORDER BY a.points DESC",
            )
            .unwrap();
        statement
            .query_map([redeemed["entry_id"].as_str().unwrap()], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(
        allocations,
        [
            (soon["entry_id"].as_str().unwrap().to_owned(), 100),
            (far["entry_id"].as_str().unwrap().to_owned(), 50),
        ]
    );
    assert_eq!(redeemed["balance"]["available"], 150);
    assert_ledger_invariants(&app, "spending order");
}

// ---------------------------------------------------------------------------
// Concurrency over real HTTP
// ---------------------------------------------------------------------------

type Headers = Vec<(String, String)>;

/// POSTs each request from its own thread, all released at once; returns
/// (status, body) per request, or status 0 with the transport error.
fn post_concurrently(url: &str, requests: Vec<(Headers, String)>) -> Vec<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let barrier = std::sync::Barrier::new(requests.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .into_iter()
            .map(|(headers, body)| {
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

fn http_get(url: &str, key: &str) -> (u16, Json) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(url)
        .header("authorization", &bearer(key))
        .call()
        .expect("GET");
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().expect("body");
    (status, serde_json::from_str(&body).expect("JSON"))
}

fn redeem_headers(idempotency_key: &str) -> Headers {
    vec![
        ("authorization".to_owned(), bearer(POINTS_KEY)),
        ("content-type".to_owned(), "application/json".to_owned()),
        ("idempotency-key".to_owned(), idempotency_key.to_owned()),
    ]
}

/// A contact with `points` awarded through `server` (its own clock).
fn contact_with_points_over_http(app: &TestApp, url: &str, points: i64) -> String {
    let id = new_contact(app, "rush@example.jp");
    let award = post_concurrently(
        &format!("{url}/v1/points/award"),
        vec![(
            vec![
                ("authorization".to_owned(), bearer(POINTS_KEY)),
                ("content-type".to_owned(), "application/json".to_owned()),
                ("idempotency-key".to_owned(), "seed".to_owned()),
            ],
            json!({"contact_id": id, "points": points, "reason": "seed"}).to_string(),
        )],
    );
    assert_eq!(award[0].0, 201, "award: {}", award[0].1);
    id
}

#[test]
fn a_hundred_concurrent_redeems_of_ten_against_five_hundred_spend_exactly_the_balance() {
    // Arrange
    let app = TestApp::new();
    let server = app.serve(32);
    let url = server.url();
    let id = contact_with_points_over_http(&app, &url, 500);
    let body = json!({"contact_id": id, "points": 10}).to_string();
    let requests: Vec<(Headers, String)> = (0..100)
        .map(|i| (redeem_headers(&format!("rush-{i}")), body.clone()))
        .collect();

    // Act
    let answers = post_concurrently(&format!("{url}/v1/points/redeem"), requests);

    // Assert
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    let refused: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s == 409).collect();
    assert_eq!(
        (created, refused.len()),
        (50, 50),
        "statuses: {:?}",
        answers.iter().map(|(s, _)| *s).collect::<Vec<_>>()
    );
    for (_, body) in &refused {
        let problem: Json = serde_json::from_str(body).expect("problem");
        assert_eq!(problem["available"], 0, "{problem}");
    }
    let (status, balance) = http_get(&format!("{url}/v1/points/{id}"), POINTS_KEY);
    assert_eq!(status, 200);
    assert_eq!(balance["available"], 0);
    assert_eq!(balance["redeemed"], 500);
    assert_eq!(balance["ledger_balance"], 0);
    server.stop();
    assert!(app.count("SELECT min(remaining) FROM points_lots") >= 0);
    assert_eq!(
        app.count("SELECT count(*) FROM points_entries WHERE kind = 'redeem'"),
        50
    );
    assert_eq!(
        app.count("SELECT COALESCE(SUM(points), 0) FROM points_allocations"),
        500
    );
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_keys"),
        51,
        "50 redemptions and the seed award"
    );
    assert_ledger_invariants(&app, "after the rush");
}

#[test]
fn the_same_redeem_twenty_times_concurrently_spends_once_and_answers_alike() {
    // Arrange
    let app = TestApp::new();
    let server = app.serve(32);
    let url = server.url();
    let id = contact_with_points_over_http(&app, &url, 500);
    let body = json!({"contact_id": id, "points": 10, "reason": "double click"}).to_string();
    let requests: Vec<(Headers, String)> = (0..20)
        .map(|_| (redeem_headers("one-click"), body.clone()))
        .collect();

    // Act
    let answers = post_concurrently(&format!("{url}/v1/points/redeem"), requests);

    // Assert
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 201, "request {i}: {body}");
        assert_eq!(body, &answers[0].1, "request {i}: the first answer");
    }
    let first: Json = serde_json::from_str(&answers[0].1).expect("JSON");
    assert!(first["entry_id"].is_string());
    let (_, balance) = http_get(&format!("{url}/v1/points/{id}"), POINTS_KEY);
    assert_eq!(balance["available"], 490);
    server.stop();
    assert_eq!(
        app.count("SELECT count(*) FROM points_entries WHERE kind = 'redeem'"),
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_keys"),
        2,
        "one redemption and the seed award"
    );
    assert_ledger_invariants(&app, "one click");
}

// ---------------------------------------------------------------------------
// Pending and expiry with the manual clock
// ---------------------------------------------------------------------------

#[test]
fn pending_points_become_available_exactly_at_available_at_and_expire_exactly_at_expires_at() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    put_program(
        &app,
        &json!({"pending_days": 7, "expiry": {"policy": "days_after_earn", "days": 30}}),
    );
    let t0 = start_time();
    let (available_at, expires_at) = (t0 + Duration::days(7), t0 + Duration::days(30));
    let id = new_contact(&app, "pending@example.jp");
    let other = new_contact(&app, "two-lots@example.jp");
    let earn = award(&app, &id, 100);
    award(&app, &other, 60);
    award(&app, &other, 40);
    let earn_id = earn["entry_id"].as_str().unwrap().to_owned();
    let (lot_available, lot_expires): (String, String) = app
        .db()
        .query_row(
            "SELECT available_at, expires_at FROM points_lots WHERE entry_id = ?1",
            [&earn_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (lot_available, lot_expires),
        (at(available_at), at(expires_at))
    );

    // Act + Assert: at the award
    let b = balance(&app, &id);
    assert_eq!(
        (b["available"].clone(), b["pending"].clone()),
        (json!(0), json!(100))
    );
    assert_eq!(b["next_available_at"], at(available_at));
    assert_eq!(b["expiring_within_30_days"], 100);
    assert_eq!(b["expiring_earliest_at"], at(expires_at));

    // One microsecond before available_at: still pending, nothing to spend
    app.clock
        .advance(Duration::days(7) - Duration::microseconds(1));
    let b = balance(&app, &id);
    assert_eq!(
        (b["available"].clone(), b["pending"].clone()),
        (json!(0), json!(100))
    );
    let early = redeem(&app, Some("early"), &json!({"contact_id": id, "points": 1}));
    assert_eq!(early.assert_problem(409, "pending")["available"], 0);

    // Exactly at available_at
    app.clock.advance(Duration::microseconds(1));
    let b = balance(&app, &id);
    assert_eq!(
        (b["available"].clone(), b["pending"].clone()),
        (json!(100), json!(0))
    );
    assert!(b["next_available_at"].is_null());

    // One second before expires_at: still available and spendable
    app.clock
        .advance(expires_at - available_at - Duration::seconds(1));
    let b = balance(&app, &id);
    assert_eq!(b["available"], 100);
    assert_eq!(b["expiring_within_30_days"], 100);
    assert_eq!(b["expiring_earliest_at"], at(expires_at));
    redeem_ok(
        &app,
        "last-second",
        &json!({"contact_id": id, "points": 10}),
    );

    // Exactly at expires_at: gone, before any sweep
    app.clock.advance(Duration::seconds(1));
    let b = balance(&app, &id);
    assert_eq!(
        [
            &b["available"],
            &b["pending"],
            &b["expiring_within_30_days"]
        ],
        [&json!(0), &json!(0), &json!(0)]
    );
    assert!(b["expiring_earliest_at"].is_null());
    assert_eq!(
        b["ledger_balance"], 90,
        "not yet written as an expire entry"
    );
    assert_eq!(balance(&app, &other)["available"], 0);
    let late = redeem(&app, Some("late"), &json!({"contact_id": id, "points": 1}));
    assert_eq!(late.assert_problem(409, "expired")["available"], 0);
    assert_eq!(
        app.count("SELECT count(*) FROM points_entries WHERE kind = 'expire'"),
        0
    );

    // The sweep writes one expire entry per lot, once
    let sweep = app.send_json(
        "POST",
        POINTS_ADMIN_KEY,
        "/v1/points/expire-due",
        &json!({}),
    );
    assert_eq!(sweep.status, 200, "{}", sweep.text());
    assert_eq!(sweep.json()["expired_lots"], 3);
    let expired = entries_of(&app, &id, "expire");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["points"], -90);
    assert_eq!(expired[0]["related_entry_id"], earn_id.as_str());
    assert_eq!(expired[0]["created_by"], "key:points-admin");
    let expired_other: Vec<i64> = entries_of(&app, &other, "expire")
        .iter()
        .map(|e| e["points"].as_i64().unwrap())
        .collect();
    assert_eq!(expired_other.len(), 2);
    assert_eq!(expired_other.iter().sum::<i64>(), -100);
    let b = balance(&app, &id);
    assert_eq!(
        (b["ledger_balance"].clone(), b["expired"].clone()),
        (json!(0), json!(90))
    );
    assert_eq!(balance(&app, &other)["expired"], 100);
    let entries_after_sweep = app.count("SELECT count(*) FROM points_entries");
    let again = app.send_json(
        "POST",
        POINTS_ADMIN_KEY,
        "/v1/points/expire-due",
        &json!({}),
    );
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["expired_lots"], 0);
    assert_eq!(
        app.count("SELECT count(*) FROM points_entries"),
        entries_after_sweep
    );
    assert_ledger_invariants(&app, "after the sweep");
}

#[test]
fn an_award_may_override_pending_and_expiry() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "override@example.jp");
    let t0 = start_time();

    // Act
    let response = award_with(
        &app,
        &json!({"contact_id": id, "points": 70, "reason": "review reward",
                "available_at": at(t0 + Duration::days(2)),
                "expires_at": at(t0 + Duration::days(10))}),
    );

    // Assert
    assert_eq!(response["balance"]["pending"], 70);
    assert_eq!(
        response["balance"]["next_available_at"],
        at(t0 + Duration::days(2))
    );
    assert_eq!(
        response["balance"]["expiring_earliest_at"],
        at(t0 + Duration::days(10))
    );
    app.clock.advance(Duration::days(2));
    assert_eq!(balance(&app, &id)["available"], 70);
    app.clock.advance(Duration::days(8));
    assert_eq!(balance(&app, &id)["available"], 0);
}

// ---------------------------------------------------------------------------
// Adjust and cancel
// ---------------------------------------------------------------------------

#[test]
fn adjustments_add_and_take_with_a_reason_and_beyond_the_balance_become_debt() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "adjust@example.jp");
    award(&app, &id, 50);

    // Act
    let plus = adjust(
        &app,
        &json!({"contact_id": id, "points": 30, "reason": "support goodwill"}),
    );
    let minus = adjust(
        &app,
        &json!({"contact_id": id, "points": -20, "reason": "duplicate award"}),
    );
    let beyond = adjust(
        &app,
        &json!({"contact_id": id, "points": -100, "reason": "fraud"}),
    );

    // Assert
    assert_eq!(plus.status, 201, "{}", plus.text());
    assert_eq!(plus.json()["balance"]["available"], 80);
    assert_eq!(minus.status, 201, "{}", minus.text());
    assert_eq!(minus.json()["balance"]["available"], 60);
    assert_eq!(beyond.status, 201, "{}", beyond.text());
    let balance = balance(&app, &id);
    assert_eq!(balance["available"], 0);
    assert_eq!(balance["debt"], 40);
    assert_eq!(balance["ledger_balance"], -40);
    assert_eq!(balance["adjusted"], 30 - 20 - 100);
    let adjustments = entries_of(&app, &id, "adjust");
    let points: Vec<i64> = adjustments
        .iter()
        .map(|e| e["points"].as_i64().unwrap())
        .collect();
    assert_eq!(points, [-100, -20, 30]);
    assert!(
        adjustments
            .iter()
            .all(|e| e["created_by"] == "key:points-admin")
    );
    assert_eq!(adjustments[0]["reason"], "fraud");
    assert_ledger_invariants(&app, "adjust");
}

#[test]
fn an_adjustment_needs_a_reason_and_the_admin_scope() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "adjust-refused@example.jp");
    award(&app, &id, 50);
    let before = points_counts(&app);
    let cases: Vec<(&str, &str, Json, u16)> = vec![
        (
            "reason missing",
            POINTS_ADMIN_KEY,
            json!({"contact_id": id, "points": 10}),
            422,
        ),
        (
            "reason blank",
            POINTS_ADMIN_KEY,
            json!({"contact_id": id, "points": -10, "reason": "  "}),
            422,
        ),
        (
            "reason null",
            POINTS_ADMIN_KEY,
            json!({"contact_id": id, "points": 10, "reason": null}),
            422,
        ),
        (
            "points zero",
            POINTS_ADMIN_KEY,
            json!({"contact_id": id, "points": 0, "reason": "x"}),
            422,
        ),
        (
            "points:redeem and points:award key",
            POINTS_KEY,
            json!({"contact_id": id, "points": 10, "reason": "x"}),
            403,
        ),
    ];

    for (case, key, body, status) in cases {
        // Act
        let response = app.send_json("POST", key, "/v1/points/adjust", &body);

        // Assert
        response.assert_problem(status, case);
        assert_eq!(points_counts(&app), before, "case {case}");
    }
}

#[test]
fn cancelling_an_earn_takes_back_what_is_left_and_the_spent_part_becomes_debt() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "cancel@example.jp");
    let earn = award(&app, &id, 100);
    let earn_id = earn["entry_id"].as_str().unwrap().to_owned();
    let spent = redeem_ok(&app, "spend-30", &json!({"contact_id": id, "points": 30}));
    let path = format!("/v1/points/entries/{earn_id}/cancel");

    // Act
    let response = app.send_json(
        "POST",
        POINTS_ADMIN_KEY,
        &path,
        &json!({"reason": "awarded by mistake"}),
    );
    let twice = app.send_json("POST", POINTS_ADMIN_KEY, &path, &json!({}));

    // Assert
    assert_eq!(response.status, 201, "{}", response.text());
    let body = response.json();
    assert_eq!(body["points"], -100);
    assert_eq!(body["cancelled_entry_id"], earn_id.as_str());
    assert_eq!(body["balance"]["available"], 0);
    assert_eq!(body["balance"]["debt"], 30);
    twice.assert_problem(409, "cancelled twice");
    let cancels = entries_of(&app, &id, "cancel");
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0]["points"], -100);
    assert_eq!(cancels[0]["related_entry_id"], earn_id.as_str());
    assert_eq!(cancels[0]["reason"], "awarded by mistake");
    assert_eq!(cancels[0]["created_by"], "key:points-admin");
    assert_eq!(lot_remaining(&app, &earn_id), 0);
    let balance = balance(&app, &id);
    assert_eq!(balance["debt"], 30);
    assert_eq!(balance["ledger_balance"], -30);
    assert_eq!(balance["reversed"], 100);
    assert_ledger_invariants(&app, "cancel");

    // Only earns can be cancelled, only by points:admin
    let before = points_counts(&app);
    for (case, key, target, status) in [
        ("unknown id", POINTS_ADMIN_KEY, UNKNOWN_ID.to_owned(), 404),
        ("malformed id", POINTS_ADMIN_KEY, "entry-1".to_owned(), 404),
        (
            "a redeem entry",
            POINTS_ADMIN_KEY,
            spent["entry_id"].as_str().unwrap().to_owned(),
            404,
        ),
        (
            "points:redeem and points:award key",
            POINTS_KEY,
            earn_id.clone(),
            403,
        ),
    ] {
        let response = app.send_json(
            "POST",
            key,
            &format!("/v1/points/entries/{target}/cancel"),
            &json!({}),
        );
        response.assert_problem(status, case);
        assert_eq!(points_counts(&app), before, "case {case}");
    }
}

#[test]
fn cancelling_an_earn_takes_from_other_lots_before_making_debt() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "cancel-lots@example.jp");
    let first = award(&app, &id, 100);
    let second = award(&app, &id, 50);
    redeem_ok(&app, "spend-30", &json!({"contact_id": id, "points": 30}));
    let first_id = first["entry_id"].as_str().unwrap();

    // Act
    let response = app.request(
        "POST",
        &format!("/v1/points/entries/{first_id}/cancel"),
        &[("authorization", &bearer(POINTS_ADMIN_KEY))],
        Bytes::new(),
    );

    // Assert: 70 from its own lot, the 30 spent from the other lot
    assert_eq!(response.status, 201, "{}", response.text());
    let balance = balance(&app, &id);
    assert_eq!(balance["available"], 20);
    assert_eq!(balance["debt"], 0);
    assert_eq!(lot_remaining(&app, first_id), 0);
    assert_eq!(
        lot_remaining(&app, second["entry_id"].as_str().unwrap()),
        20
    );
    assert_eq!(
        entries_of(&app, &id, "cancel")[0]["reason"],
        "earn cancelled"
    );
    assert_ledger_invariants(&app, "cancel with other lots");
}

#[test]
fn cancelling_an_earn_after_part_of_it_expired_charges_only_the_spent_part() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: 100 points valid one day, 30 spent, 70 expired
    let app = TestApp::new();
    let id = new_contact(&app, "cancel-expired@example.jp");
    let earn = award_with(
        &app,
        &json!({"contact_id": id, "points": 100, "reason": "one-day offer",
                "expires_at": at(start_time() + Duration::days(1))}),
    );
    redeem_ok(&app, "spend-30", &json!({"contact_id": id, "points": 30}));
    app.clock.advance(Duration::days(2));
    let earn_id = earn["entry_id"].as_str().unwrap();

    // Act
    let response = app.send_json(
        "POST",
        POINTS_ADMIN_KEY,
        &format!("/v1/points/entries/{earn_id}/cancel"),
        &json!({}),
    );

    // Assert: the 70 that expired are not owed a second time
    assert!([201, 409].contains(&response.status), "{}", response.text());
    let balance = balance(&app, &id);
    assert_eq!(balance["expired"], 70, "{balance}");
    assert_eq!(balance["debt"], 30, "only the spent points: {balance}");
    assert_eq!(balance["ledger_balance"], -30, "{balance}");
    assert_ledger_invariants(&app, "cancel after expiry");
}

// ---------------------------------------------------------------------------
// Balance, ledger and liability
// ---------------------------------------------------------------------------

#[test]
fn the_ledger_pages_newest_first_with_the_balance_after_each_entry() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "pages@example.jp");
    for points in [10, 20, 30, 40, 50] {
        award(&app, &id, points);
        app.clock.advance(Duration::seconds(1));
    }

    // Act
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/points/{id}/ledger?limit=2&cursor={c}"),
            None => format!("/v1/points/{id}/ledger?limit=2"),
        };
        let page = app.get(POINTS_KEY, &path);
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        pages.push(page["items"].as_array().unwrap().clone());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }

    // Assert
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let items: Vec<&Json> = pages.iter().flatten().collect();
    let after: Vec<i64> = items
        .iter()
        .map(|e| e["balance_after"].as_i64().unwrap())
        .collect();
    assert_eq!(after, [150, 100, 60, 30, 10]);
    let points: Vec<i64> = items
        .iter()
        .map(|e| e["points"].as_i64().unwrap())
        .collect();
    assert_eq!(points, [50, 40, 30, 20, 10]);
    assert!(
        items
            .iter()
            .all(|e| e["created_by"] == "key:points" && e["kind"] == "earn")
    );
}

#[test]
fn the_liability_report_values_outstanding_points_and_buckets_expiries_by_shop_month() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: now is 2026-11-22 12:00 in Tokyo; a point is worth ¥2
    let app = TestApp::new();
    let id = new_contact(&app, "liability@example.jp");
    let debtor = new_contact(&app, "debtor@example.jp");
    put_program(
        &app,
        &json!({"point_value_minor": 2, "expiry": {"policy": "never"}}),
    );
    let grant = |points: i64, available_at: Option<&str>, expires_at: Option<&str>| {
        let mut body = json!({"contact_id": id, "points": points, "reason": "seed"});
        if let Some(a) = available_at {
            body["available_at"] = json!(a);
        }
        if let Some(e) = expires_at {
            body["expires_at"] = json!(e);
        }
        award_with(&app, &body);
    };
    // 2026-11-30 23:00 in Tokyo: November
    grant(30, None, Some("2026-11-30T14:00:00Z"));
    // 2026-12-01 01:00 in Tokyo (still November in UTC): December
    grant(50, None, Some("2026-11-30T16:00:00Z"));
    grant(100, None, Some("2026-12-15T00:00:00Z"));
    // pending until December, expiring on the last day of the 12th month
    grant(
        20,
        Some("2026-12-01T00:00:00Z"),
        Some("2027-10-31T23:59:59+09:00"),
    );
    // beyond the 12 months
    grant(10, None, Some("2027-11-15T00:00:00+09:00"));
    // never expires
    grant(7, None, None);
    adjust(
        &app,
        &json!({"contact_id": debtor, "points": -5, "reason": "chargeback"}),
    );

    // Act
    let response = app.get(POINTS_KEY, "/v1/points/liability");

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let report = response.json();
    assert_eq!(report["point_value_minor"], 2);
    assert_eq!(report["currency"], "JPY");
    assert_eq!(
        report["available"],
        json!({"points": 197, "value_minor": 394})
    );
    assert_eq!(report["pending"], json!({"points": 20, "value_minor": 40}));
    assert_eq!(report["debt"], json!({"points": 5, "value_minor": 10}));
    let months: Vec<(String, i64, i64)> = report["expiring_by_month"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["month"].as_str().unwrap().to_owned(),
                m["points"].as_i64().unwrap(),
                m["value_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, i64, i64)> = [
        ("2026-11", 30),
        ("2026-12", 150),
        ("2027-01", 0),
        ("2027-02", 0),
        ("2027-03", 0),
        ("2027-04", 0),
        ("2027-05", 0),
        ("2027-06", 0),
        ("2027-07", 0),
        ("2027-08", 0),
        ("2027-09", 0),
        ("2027-10", 20),
    ]
    .iter()
    .map(|(m, p)| ((*m).to_owned(), *p, p * 2))
    .collect();
    assert_eq!(months, expected);
}

#[test]
fn points_valid_to_the_end_of_a_month_are_reported_as_expiring_in_that_month() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: `end_of_month_after` points expire at the first instant of
    // the next month (shop time): the customer can use them through the
    // month's last day, so the report lists them in that month.
    let app = TestApp::new();
    let id = new_contact(&app, "month-end@example.jp");
    put_program(
        &app,
        &json!({"expiry": {"policy": "end_of_month_after", "months": 0}}),
    );
    let this_month = award(&app, &id, 100);
    put_program(
        &app,
        &json!({"expiry": {"policy": "end_of_month_after", "months": 11}}),
    );
    let twelfth_month = award(&app, &id, 50);
    let expires = |entry: &Json| -> String {
        app.db()
            .query_row(
                "SELECT expires_at FROM points_lots WHERE entry_id = ?1",
                [entry["entry_id"].as_str().unwrap()],
                |r| r.get(0),
            )
            .unwrap()
    };
    // End of November 2026 and end of October 2027, Tokyo time.
    assert_eq!(expires(&this_month), "2026-11-30T15:00:00.000000Z");
    assert_eq!(expires(&twelfth_month), "2027-10-31T15:00:00.000000Z");

    // Act
    let report = app.get(POINTS_KEY, "/v1/points/liability").json();

    // Assert
    let months = report["expiring_by_month"].as_array().unwrap();
    let points_in = |month: &str| {
        months
            .iter()
            .find(|m| m["month"] == month)
            .map(|m| m["points"].as_i64().unwrap())
    };
    let listed: i64 = months.iter().map(|m| m["points"].as_i64().unwrap()).sum();
    assert_eq!(
        listed, 150,
        "every point expiring within the 12 months is listed: {months:?}"
    );
    assert_eq!(points_in("2026-11"), Some(100), "{months:?}");
    assert_eq!(points_in("2027-10"), Some(50), "{months:?}");
}

// ---------------------------------------------------------------------------
// Bad input and auth
// ---------------------------------------------------------------------------

#[test]
fn bad_input_is_4xx_and_changes_nothing() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "bad-input@example.jp");
    award(&app, &id, 100);
    let erased = new_contact(&app, "erased@example.jp");
    award(&app, &erased, 40);
    let erase = call(
        &app,
        "DELETE",
        &format!("/v1/contacts/{erased}"),
        Some(ADMIN_KEY),
        None,
        None,
        Bytes::new(),
    );
    assert_eq!(erase.status, 200, "erase: {}", erase.text());
    let before = points_counts(&app);
    let before_balance = balance(&app, &id);

    let with_points = |points: Option<Json>| {
        let mut body = json!({"contact_id": id, "reason": "bad input"});
        if let Some(points) = points {
            body["points"] = points;
        }
        body.to_string()
    };
    let points_cases: Vec<(&str, Option<Json>)> = vec![
        ("points zero", Some(json!(0))),
        ("points negative", Some(json!(-5))),
        (
            "points huge (2^53 + 1)",
            Some(json!(9_007_199_254_740_993_u64)),
        ),
        (
            "points beyond i64",
            Some(json!(18_446_744_073_709_551_615_u64)),
        ),
        ("points just over the limit", Some(json!(1_000_000_001))),
        ("points fractional", Some(json!(1.5))),
        ("points whole but written as a float", Some(json!(10.0))),
        ("points as a string", Some(json!("10"))),
        ("points null", Some(Json::Null)),
        ("points missing", None),
    ];
    // (case, method, path, key, content type, body, status)
    let mut cases: Vec<(String, &str, String, &str, &str, String, u16)> = Vec::new();
    for (case, points) in &points_cases {
        for (route, key) in [
            ("award", POINTS_KEY),
            ("redeem", POINTS_KEY),
            ("adjust", POINTS_ADMIN_KEY),
        ] {
            if route == "adjust" && *case == "points negative" {
                continue; // a negative adjustment is valid
            }
            cases.push((
                format!("{route}: {case}"),
                "POST",
                format!("/v1/points/{route}"),
                key,
                "application/json",
                with_points(points.clone()),
                422,
            ));
        }
    }
    cases.push((
        "adjust: points hugely negative".into(),
        "POST",
        "/v1/points/adjust".into(),
        POINTS_ADMIN_KEY,
        "application/json",
        with_points(Some(json!(-9_007_199_254_740_993_i64))),
        422,
    ));
    for (who, contact) in [
        ("unknown contact", UNKNOWN_ID.to_owned()),
        ("malformed contact id", "not-a-contact".to_owned()),
        ("erased contact", erased.clone()),
    ] {
        let body = json!({"contact_id": contact, "points": 10, "reason": "x"}).to_string();
        for (route, key) in [
            ("award", POINTS_KEY),
            ("redeem", POINTS_KEY),
            ("adjust", POINTS_ADMIN_KEY),
        ] {
            cases.push((
                format!("{route}: {who}"),
                "POST",
                format!("/v1/points/{route}"),
                key,
                "application/json",
                body.clone(),
                404,
            ));
        }
        for suffix in ["", "/ledger"] {
            cases.push((
                format!("GET{suffix}: {who}"),
                "GET",
                format!("/v1/points/{contact}{suffix}"),
                POINTS_KEY,
                "application/json",
                String::new(),
                404,
            ));
        }
    }
    let good = json!({"contact_id": id, "points": 10, "reason": "x"}).to_string();
    for (route, key) in [
        ("award", POINTS_KEY),
        ("redeem", POINTS_KEY),
        ("adjust", POINTS_ADMIN_KEY),
    ] {
        let path = format!("/v1/points/{route}");
        cases.push((
            format!("{route}: wrong content type"),
            "POST",
            path.clone(),
            key,
            "text/plain",
            good.clone(),
            415,
        ));
        cases.push((
            format!("{route}: form content type"),
            "POST",
            path.clone(),
            key,
            "application/x-www-form-urlencoded",
            format!("contact_id={id}&points=10&reason=x"),
            415,
        ));
        cases.push((
            format!("{route}: invalid JSON"),
            "POST",
            path.clone(),
            key,
            "application/json",
            "{\"contact_id\": ".to_owned(),
            400,
        ));
        cases.push((
            format!("{route}: empty body"),
            "POST",
            path.clone(),
            key,
            "application/json",
            String::new(),
            400,
        ));
        cases.push((
            format!("{route}: JSON array"),
            "POST",
            path.clone(),
            key,
            "application/json",
            "[]".to_owned(),
            422,
        ));
        cases.push((
            format!("{route}: unknown field"),
            "POST",
            path.clone(),
            key,
            "application/json",
            json!({"contact_id": id, "points": 10, "reason": "x", "bonus": 1}).to_string(),
            422,
        ));
        cases.push((
            format!("{route}: contact_id missing"),
            "POST",
            path.clone(),
            key,
            "application/json",
            json!({"points": 10, "reason": "x"}).to_string(),
            422,
        ));
    }
    cases.push((
        "award: expires before now".into(),
        "POST",
        "/v1/points/award".into(),
        POINTS_KEY,
        "application/json",
        json!({"contact_id": id, "points": 10, "reason": "x", "expires_at": at(start_time() - Duration::days(1))}).to_string(),
        422,
    ));
    cases.push((
        "award: available after it expires".into(),
        "POST",
        "/v1/points/award".into(),
        POINTS_KEY,
        "application/json",
        json!({"contact_id": id, "points": 10, "reason": "x",
               "available_at": "2027-02-01T00:00:00Z", "expires_at": "2027-01-01T00:00:00Z"})
        .to_string(),
        422,
    ));
    cases.push((
        "award: expiry not a timestamp".into(),
        "POST",
        "/v1/points/award".into(),
        POINTS_KEY,
        "application/json",
        json!({"contact_id": id, "points": 10, "reason": "x", "expires_at": "next year"})
            .to_string(),
        422,
    ));
    cases.push((
        "award: reason missing".into(),
        "POST",
        "/v1/points/award".into(),
        POINTS_KEY,
        "application/json",
        json!({"contact_id": id, "points": 10}).to_string(),
        422,
    ));
    cases.push((
        "program: campaign ends before it starts".into(),
        "PUT",
        "/v1/points/program".into(),
        POINTS_ADMIN_KEY,
        "application/json",
        json!({"campaigns": [{"name": "5x", "starts_at": "2026-12-01T00:00:00+09:00",
                              "ends_at": "2026-11-01T00:00:00+09:00", "multiplier": 5}]})
        .to_string(),
        422,
    ));
    cases.push((
        "program: wrong content type".into(),
        "PUT",
        "/v1/points/program".into(),
        POINTS_ADMIN_KEY,
        "text/plain",
        "{}".into(),
        415,
    ));
    cases.push((
        "program: invalid JSON".into(),
        "PUT",
        "/v1/points/program".into(),
        POINTS_ADMIN_KEY,
        "application/json",
        "{\"min_redeem\": }".into(),
        400,
    ));

    for (n, (case, method, path, key, content_type, body, status)) in cases.iter().enumerate() {
        // Act
        let idempotency_key = format!("bad-input-{n}");
        let response = call(
            &app,
            method,
            path,
            Some(key),
            (*method != "GET").then_some(*content_type),
            Some(&idempotency_key),
            body.clone(),
        );

        // Assert
        response.assert_problem(*status, case);
        assert_eq!(points_counts(&app), before, "case {case}: nothing stored");
    }
    let without_as_of = |mut b: Json| {
        b.as_object_mut().map(|o| o.remove("as_of"));
        b
    };
    assert_eq!(
        without_as_of(balance(&app, &id)),
        without_as_of(before_balance)
    );
    assert_eq!(program(&app)["version"], 0);
}

#[test]
fn points_routes_need_a_key_with_the_right_scope() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "auth@example.jp");
    let earn = award(&app, &id, 100);
    let earn_id = earn["entry_id"].as_str().unwrap();
    let before = points_counts(&app);
    let body = json!({"contact_id": id, "points": 10, "reason": "x"}).to_string();
    // (method, path, body, a points key that lacks the scope)
    let routes: Vec<(&str, String, String, &str)> = vec![
        ("GET", "/v1/points/program".into(), String::new(), ""),
        ("PUT", "/v1/points/program".into(), "{}".into(), POINTS_KEY),
        (
            "PATCH",
            "/v1/points/program".into(),
            "{}".into(),
            POINTS_KEY,
        ),
        ("GET", "/v1/points/liability".into(), String::new(), ""),
        (
            "POST",
            "/v1/points/award".into(),
            body.clone(),
            POINTS_ADMIN_KEY,
        ),
        (
            "POST",
            "/v1/points/redeem".into(),
            body.clone(),
            POINTS_ADMIN_KEY,
        ),
        ("POST", "/v1/points/adjust".into(), body.clone(), POINTS_KEY),
        (
            "POST",
            "/v1/points/expire-due".into(),
            String::new(),
            POINTS_KEY,
        ),
        (
            "POST",
            format!("/v1/points/entries/{earn_id}/cancel"),
            String::new(),
            POINTS_KEY,
        ),
        ("GET", format!("/v1/points/{id}"), String::new(), ""),
        ("GET", format!("/v1/points/{id}/ledger"), String::new(), ""),
    ];

    for (method, path, body, lacking) in &routes {
        let mut attempts = vec![
            ("no key", None, 401),
            ("contacts:read key", Some(READ_KEY), 403),
        ];
        attempts.push(("contacts:write key", Some(WRITE_KEY), 403));
        if !lacking.is_empty() {
            attempts.push(("points key without the scope", Some(*lacking), 403));
        }
        for (who, key, status) in attempts {
            let case = format!("{method} {path}: {who}");

            // Act
            let response = call(
                &app,
                method,
                path,
                key,
                (!body.is_empty()).then_some("application/json"),
                Some("auth-attempt"),
                body.clone(),
            );

            // Assert
            response.assert_problem(status, &case);
            assert_eq!(points_counts(&app), before, "case {case}");
        }
    }
    assert_eq!(balance(&app, &id)["available"], 100);
}

#[test]
fn erasure_forfeits_open_points_and_clears_reasons() {
    // Arrange: a contact with points awarded with a personal note.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "gone@example.jp"}));
    let awarded = post_award(
        &app,
        &json!({"contact_id": id, "points": 100, "reason": "お詫び 田中花子様"}),
    );
    assert_eq!(awarded.status, 201, "{}", awarded.text());

    // Act
    let erased = app.request(
        "DELETE",
        &format!("/v1/contacts/{id}"),
        &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
        "",
    );

    // Assert: nothing outstanding, no free text left, the ledger still adds up.
    assert_eq!(erased.status, 200, "{}", erased.text());
    let liability = app.get(POINTS_KEY, "/v1/points/liability").json();
    assert_eq!(liability["available"]["points"], 0);
    let reasons = app.count("SELECT count(*) FROM points_entries WHERE reason LIKE '%田中%'");
    assert_eq!(reasons, 0);
    let sum: i64 = app.count(&format!(
        "SELECT COALESCE(SUM(points), 0) FROM points_entries WHERE contact_id = '{id}'"
    ));
    assert_eq!(sum, 0, "the award and its forfeit cancel out");
    let view = app.get(ADMIN_KEY, &format!("/v1/contacts/{id}")).json();
    assert_eq!(view["counters"]["points_balance"], 0);
}

#[test]
fn expired_points_count_as_expired_before_any_sweep() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "lapse@example.jp"}));
    let expires_at = kizuna::timestamp::format(start_time() + time::Duration::days(1));
    let awarded = post_award(
        &app,
        &json!({"contact_id": id, "points": 100, "reason": "trial", "expires_at": expires_at}),
    );
    assert_eq!(awarded.status, 201, "{}", awarded.text());

    // Act
    app.clock.advance(time::Duration::days(2));
    let balance = app.get(POINTS_KEY, &format!("/v1/points/{id}")).json();

    // Assert
    assert_eq!(balance["available"], 0);
    assert_eq!(balance["expired"], 100);
    assert_eq!(balance["lifetime_earned"], 100);
}

#[test]
fn a_ledger_cursor_this_api_did_not_return_is_422() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "cursor@example.jp"}));
    let not_a_number = kizuna::http::encode_cursor(&["latest"]);

    for (case, cursor) in [
        ("not base64", "%21%21%21".to_owned()),
        ("not a sequence number", not_a_number),
        ("two parts", kizuna::http::encode_cursor(&["1", "2"])),
    ] {
        // Act
        let response = app.get(
            POINTS_KEY,
            &format!("/v1/points/{id}/ledger?cursor={cursor}"),
        );

        // Assert
        let problem = response.assert_problem(422, case);
        assert_eq!(problem["errors"][0]["field"], "cursor", "case {case}");
    }
}

// ---------------------------------------------------------------------------
// The shop's time zone (`shop_timezone`)
// ---------------------------------------------------------------------------

/// The `expiring_by_month` buckets of a liability report, as (month, points).
fn expiring_by_month(report: &Json) -> Vec<(String, i64)> {
    report["expiring_by_month"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["month"].as_str().unwrap().to_owned(),
                m["points"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn month_end_expiries_and_the_liability_report_follow_the_shop_time_zone() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: a shop on UTC; now is 2026-11-22 03:00 UTC (noon in Tokyo)
    let app = TestApp::with_variables(&[("shop_timezone", "+00:00")]);
    let id = new_contact(&app, "utc-shop@example.jp");
    let expires = |entry: &Json| -> String {
        app.db()
            .query_row(
                "SELECT expires_at FROM points_lots WHERE entry_id = ?1",
                [entry["entry_id"].as_str().unwrap()],
                |r| r.get(0),
            )
            .unwrap()
    };
    put_program(
        &app,
        &json!({"expiry": {"policy": "end_of_month_after", "months": 0}}),
    );
    let this_month = award(&app, &id, 100);
    put_program(
        &app,
        &json!({"expiry": {"policy": "end_of_month_after", "months": 11}}),
    );
    let twelfth_month = award(&app, &id, 40);
    put_program(&app, &json!({"expiry": {"policy": "never"}}));
    // 2026-11-30 16:00 UTC: November in UTC (December in Tokyo)
    award_with(
        &app,
        &json!({"contact_id": id, "points": 30, "reason": "seed",
                "expires_at": "2026-11-30T16:00:00Z"}),
    );

    // Act
    let report = app.get(POINTS_KEY, "/v1/points/liability");

    // Assert: month ends at UTC midnight, not at 15:00 UTC (Tokyo's)
    assert_eq!(expires(&this_month), "2026-12-01T00:00:00.000000Z");
    assert_eq!(expires(&twelfth_month), "2027-11-01T00:00:00.000000Z");
    assert_eq!(report.status, 200, "{}", report.text());
    let months = expiring_by_month(&report.json());
    assert_eq!(months.len(), 12, "{months:?}");
    assert_eq!(months[0], ("2026-11".to_owned(), 130), "{months:?}");
    assert_eq!(months[11], ("2027-10".to_owned(), 40), "{months:?}");
    let listed: i64 = months.iter().map(|(_, p)| p).sum();
    assert_eq!(listed, 170, "{months:?}");

    // Act: 2026-11-30 20:00 UTC is already 1 December in Tokyo
    app.clock
        .advance(time::macros::datetime!(2026-11-30 20:00 UTC) - start_time());
    put_program(
        &app,
        &json!({"expiry": {"policy": "end_of_month_after", "months": 0}}),
    );
    let late = award(&app, &id, 5);
    let report = app.get(POINTS_KEY, "/v1/points/liability").json();

    // Assert: still November in the shop; the new points are November's too
    assert_eq!(expires(&late), "2026-12-01T00:00:00.000000Z");
    let months = expiring_by_month(&report);
    assert_eq!(months[0], ("2026-11".to_owned(), 105), "{months:?}");
    assert_eq!(months[1].0, "2026-12", "{months:?}");
    assert_eq!(months[11], ("2027-10".to_owned(), 40), "{months:?}");
}

#[test]
fn the_liability_report_buckets_by_month_in_a_zone_west_of_utc_with_half_hours() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: a shop at -03:30; both expiries are December in Tokyo
    let app = TestApp::with_variables(&[("shop_timezone", "-03:30")]);
    let id = new_contact(&app, "west-shop@example.jp");
    for (points, expires_at) in [
        // 2026-12-01 00:00 at -03:30: usable through 30 November
        (20, "2026-12-01T03:30:00Z"),
        // 2026-12-01 00:01 at -03:30: usable on 1 December
        (7, "2026-12-01T03:31:00Z"),
    ] {
        award_with(
            &app,
            &json!({"contact_id": id, "points": points, "reason": "seed",
                    "expires_at": expires_at}),
        );
    }

    // Act
    let response = app.get(POINTS_KEY, "/v1/points/liability");

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let months = expiring_by_month(&response.json());
    assert_eq!(
        months[..2],
        [("2026-11".to_owned(), 20), ("2026-12".to_owned(), 7)],
        "{months:?}"
    );
}

// ---------------------------------------------------------------------------
// Scopes that say what they allow; award idempotency; api_keys refused
// ---------------------------------------------------------------------------

#[test]
fn a_till_key_redeems_but_cannot_award_and_a_campaign_key_awards_but_cannot_redeem() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "scopes@example.jp");
    award(&app, &id, 500);
    let before = points_counts(&app);
    let body = json!({"contact_id": id, "points": 100, "reason": "x"}).to_string();
    let post = |path: &str, key: &str, idempotency_key: &str| {
        call(
            &app,
            "POST",
            path,
            Some(key),
            Some("application/json"),
            Some(idempotency_key),
            body.clone(),
        )
    };

    // Act: each key on the routes it was not given
    let refused = [
        (
            "till awards",
            post("/v1/points/award", POINTS_REDEEM_KEY, "till-award"),
            "points:award",
        ),
        (
            "till adjusts",
            post("/v1/points/adjust", POINTS_REDEEM_KEY, "till-adjust"),
            "points:admin",
        ),
        (
            "campaign tool redeems",
            post("/v1/points/redeem", POINTS_AWARD_KEY, "campaign-redeem"),
            "points:redeem",
        ),
        (
            "campaign tool adjusts",
            post("/v1/points/adjust", POINTS_AWARD_KEY, "campaign-adjust"),
            "points:admin",
        ),
    ];

    // Assert: 403 naming the missing scope, nothing stored
    for (case, response, scope) in &refused {
        let problem = response.assert_problem(403, case);
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(&format!("`{scope}`")),
            "case {case}: {detail}"
        );
    }
    assert_eq!(points_counts(&app), before, "nothing stored");

    // Act: each key on its own route
    let redeemed = post("/v1/points/redeem", POINTS_REDEEM_KEY, "till-1");
    let awarded = post("/v1/points/award", POINTS_AWARD_KEY, "campaign-1");

    // Assert
    assert_eq!(redeemed.status, 201, "redeem: {}", redeemed.text());
    assert_eq!(awarded.status, 201, "award: {}", awarded.text());
    let redeems = entries_of(&app, &id, "redeem");
    assert_eq!(redeems.len(), 1);
    assert_eq!(redeems[0]["created_by"], "key:till");
    let earns = entries_of(&app, &id, "earn");
    assert_eq!(earns.len(), 2);
    assert_eq!(earns[0]["created_by"], "key:campaigns", "newest first");
    assert_ledger_invariants(&app, "till and campaign tool");
}

#[test]
fn an_award_needs_an_idempotency_key_and_a_repeat_returns_the_first_answer() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "award-once@example.jp");
    let body = json!({"contact_id": id, "points": 300, "reason": "birthday"});
    let send = |idempotency_key: Option<&str>, body: &Json| {
        call(
            &app,
            "POST",
            "/v1/points/award",
            Some(POINTS_KEY),
            Some("application/json"),
            idempotency_key,
            body.to_string(),
        )
    };
    let before = points_counts(&app);

    // Act
    let without = send(None, &body);
    let blank = send(Some(" "), &body);
    let after_refusals = points_counts(&app);
    let first = send(Some("birthday-2026"), &body);
    let stored_once = points_counts(&app);
    let repeat = send(Some("birthday-2026"), &body);
    let other_body = send(
        Some("birthday-2026"),
        &json!({"contact_id": id, "points": 3000, "reason": "birthday"}),
    );

    // Assert: without a key, 422 naming the header, nothing stored
    for (case, response) in [("no key", &without), ("blank key", &blank)] {
        let problem = response.assert_problem(422, case);
        assert_eq!(
            problem["errors"][0]["field"], "Idempotency-Key",
            "case {case}"
        );
    }
    assert_eq!(after_refusals, before, "refusals store nothing");
    // The first answer, then the same answer again and nothing more
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(repeat.status, 201, "{}", repeat.text());
    assert_eq!(repeat.json(), first.json(), "the repeat replays the answer");
    assert_eq!(
        points_counts(&app),
        stored_once,
        "the repeat changed nothing"
    );
    let problem = other_body.assert_problem(422, "same key, other body");
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(entries_of(&app, &id, "earn").len(), 1);
    assert_eq!(balance(&app, &id)["lifetime_earned"], 300);
}

/// Rows in every table of the app's database and key-value files (none
/// when the files were never created).
fn stored_rows(app: &TestApp) -> i64 {
    ["sqlite_db.db", "sqlite_key_value.db"]
        .iter()
        .map(|file| app.dir.path().join(file))
        .filter(|path| path.exists())
        .map(|path| {
            let db = rusqlite::Connection::open(&path).expect("open");
            let tables: Vec<String> = db
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                .expect("tables")
                .query_map([], |r| r.get(0))
                .expect("tables")
                .collect::<Result<_, _>>()
                .expect("tables");
            tables
                .iter()
                .map(|t| {
                    db.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .expect("count")
                })
                .sum::<i64>()
        })
        .sum()
}

#[test]
fn api_keys_naming_points_write_an_unknown_scope_or_a_name_twice_are_refused_on_every_route() {
    let key = |name: &str, key: &str, scopes: &[&str]| json!({"name": name, "sha256": kizuna::auth::key_digest(key), "scopes": scopes});
    let admin = key("admin", ADMIN_KEY, &["*"]);
    let cases = [
        (
            "points:write, retired",
            json!([
                admin,
                key("till", POINTS_KEY, &["points:read", "points:write"])
            ]),
        ),
        (
            "a scope with a typo",
            json!([admin, key("mail", SEGMENTS_KEY, &["segments:exports"])]),
        ),
        (
            "one name twice",
            json!([admin, key("admin", POINTS_KEY, &["points:read"])]),
        ),
        (
            "one digest twice",
            json!([admin, key("till", ADMIN_KEY, &["points:redeem"])]),
        ),
    ];
    for (case, api_keys) in cases {
        // Arrange
        let app = TestApp::with_variables(&[("api_keys", &api_keys.to_string())]);
        let admin = bearer(ADMIN_KEY);
        let json_type = ("content-type", "application/json");
        // (method, path, headers, body)
        type Call<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, String);
        let requests: Vec<Call> = vec![
            ("GET", "/healthz", vec![], String::new()),
            (
                "POST",
                "/v1/forms/spring",
                vec![json_type, ("accept", "application/json")],
                json!({"email": "form@example.jp", "consent_email": true}).to_string(),
            ),
            (
                "POST",
                "/v1/contacts",
                vec![("authorization", &admin), json_type],
                json!({"email": "staff@example.jp"}).to_string(),
            ),
            (
                "PUT",
                "/v1/forms/spring/settings",
                vec![("authorization", &admin), json_type],
                json!({"tags": ["spring"]}).to_string(),
            ),
            (
                "PUT",
                "/v1/points/program",
                vec![("authorization", &admin), json_type],
                json!({"min_redeem": 1}).to_string(),
            ),
            (
                "POST",
                "/v1/points/award",
                vec![
                    ("authorization", &admin),
                    json_type,
                    ("idempotency-key", "a-1"),
                ],
                json!({"contact_id": UNKNOWN_ID, "points": 1, "reason": "x"}).to_string(),
            ),
            (
                "POST",
                "/v1/segments",
                vec![("authorization", &admin), json_type],
                json!({"name": "All", "definition": {"field": "has_email", "op": "eq", "value": true}})
                    .to_string(),
            ),
            (
                "GET",
                "/v1/orders?contact_id=x",
                vec![("authorization", &admin)],
                String::new(),
            ),
        ];

        for (method, path, headers, body) in requests {
            // Act
            let response = app.request(method, path, &headers, body);

            // Assert: a 500 problem that tells the caller nothing of the keys
            let what = format!("{case}: {method} {path}");
            response.assert_problem(500, &what);
            let text = response.text();
            for secret in ["admin", "till", "mail", "points:write", "segments:exports"] {
                assert!(!text.contains(secret), "{what} discloses {secret}: {text}");
            }
        }
        assert_eq!(stored_rows(&app), 0, "case {case}: nothing stored");
    }
}

#[test]
fn the_sweep_closes_a_backlog_larger_than_one_batch_a_batch_per_call() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: one lot more than a sweep batch, all past their expiry.
    let app = TestApp::new();
    let contacts: Vec<String> = (0..3)
        .map(|n| new_contact(&app, &format!("backlog{n}@example.jp")))
        .collect();
    let lots = kizuna::points::ledger::SWEEP_BATCH + 1;
    let expires_at = timestamp::format(app.now() + Duration::days(1));
    for n in 0..lots {
        award_with(
            &app,
            &json!({"contact_id": contacts[n % 3], "points": 1, "reason": "backlog",
                    "expires_at": expires_at}),
        );
    }
    app.clock.advance(Duration::days(2));

    // Act
    let sweep = app.send_json(
        "POST",
        POINTS_ADMIN_KEY,
        "/v1/points/expire-due",
        &json!({}),
    );

    // Assert: a full batch says there is more; the next call finishes.
    assert_eq!(sweep.status, 200, "{}", sweep.text());
    assert_eq!(sweep.json()["expired_lots"], lots - 1);
    assert_eq!(sweep.json()["more"], true);
    let rest = app.send_json(
        "POST",
        POINTS_ADMIN_KEY,
        "/v1/points/expire-due",
        &json!({}),
    );
    assert_eq!(rest.json()["expired_lots"], 1);
    assert_eq!(rest.json()["more"], false);
    assert_eq!(
        app.count("SELECT count(*) FROM points_lots WHERE remaining > 0"),
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM points_entries WHERE kind = 'expire'"),
        i64::try_from(lots).unwrap()
    );
    assert_ledger_invariants(&app, "after a sweep over several batches");
}

// ---------------------------------------------------------------------------
// Visibility: the next expiry, the lots, a redemption's value, PATCH of
// the program, what erasure forfeits
// ---------------------------------------------------------------------------

/// `PATCH /v1/points/program` with `content_type`, as the admin.
fn patch_program_as(app: &TestApp, content_type: &str, body: impl Into<Bytes>) -> TestResponse {
    call(
        app,
        "PATCH",
        "/v1/points/program",
        Some(POINTS_ADMIN_KEY),
        Some(content_type),
        None,
        body,
    )
}

/// `PATCH /v1/points/program`, which must succeed; returns the program.
fn patch_program(app: &TestApp, patch: &Json) -> Json {
    let response = patch_program_as(app, "application/json", patch.to_string());
    assert_eq!(response.status, 200, "PATCH {patch}: {}", response.text());
    response.json()
}

/// A lot as the balance lists it, reduced to what a test compares:
/// (entry id, status, points, expires_at).
fn lot_summary(balance: &Json) -> Vec<(String, String, i64, Json)> {
    balance["lots"]
        .as_array()
        .expect("lots")
        .iter()
        .map(|lot| {
            (
                lot["entry_id"].as_str().expect("entry id").to_owned(),
                lot["status"].as_str().expect("status").to_owned(),
                lot["points"].as_i64().expect("points"),
                lot["expires_at"].clone(),
            )
        })
        .collect()
}

fn entry_id(answer: &Json) -> String {
    answer["entry_id"].as_str().expect("entry id").to_owned()
}

#[test]
fn the_balance_names_the_next_expiry_however_far_ahead_and_lists_each_lot() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: the default program (valid 365 days) and one award.
    let app = TestApp::new();
    let id = new_contact(&app, "lots@example.jp");
    let t0 = start_time();
    let first = award(&app, &id, 100);

    // Act
    let b = balance(&app, &id);

    // Assert: the reported case, every point a year from its expiry, names
    // that expiry (it was null: it looked only 30 days ahead).
    assert_eq!(b["expiring_within_30_days"], 0);
    assert_eq!(b["expiring_earliest_at"], at(t0 + Duration::days(365)));
    assert_eq!(b["expiring_earliest_points"], 100);
    assert_eq!(
        b["lots"],
        json!([{
            "entry_id": first["entry_id"], "kind": "earn", "points": 100, "original": 100,
            "status": "available", "created_at": at(t0), "available_at": at(t0),
            "expires_at": at(t0 + Duration::days(365)),
        }])
    );
    assert_eq!(
        b["lots_not_listed"],
        json!({"lots": 0, "available": 0, "pending": 0})
    );

    // A day later: a short-lived gift, a pending award and a goodwill
    // adjustment; the last two end at the same instant.
    app.clock.advance(Duration::days(1));
    let t1 = t0 + Duration::days(1);
    let gift = award_with(
        &app,
        &json!({"contact_id": id, "points": 40, "reason": "gift",
                "expires_at": at(t0 + Duration::days(10))}),
    );
    let review = award_with(
        &app,
        &json!({"contact_id": id, "points": 30, "reason": "review",
                "available_at": at(t1 + Duration::days(5))}),
    );
    let goodwill = adjust(
        &app,
        &json!({"contact_id": id, "points": 5, "reason": "goodwill"}),
    );
    assert_eq!(goodwill.status, 201, "{}", goodwill.text());
    let goodwill = goodwill.json();
    let year_after = |t: OffsetDateTime| json!(at(t + Duration::days(365)));

    let b = balance(&app, &id);
    assert_eq!(
        (b["available"].clone(), b["pending"].clone()),
        (json!(145), json!(30))
    );
    assert_eq!(b["expiring_earliest_at"], at(t0 + Duration::days(10)));
    assert_eq!(b["expiring_earliest_points"], 40);
    assert_eq!(b["expiring_within_30_days"], 40);
    assert_eq!(
        lot_summary(&b),
        [
            (
                entry_id(&gift),
                "available".into(),
                40,
                json!(at(t0 + Duration::days(10)))
            ),
            (entry_id(&first), "available".into(), 100, year_after(t0)),
            (entry_id(&goodwill), "available".into(), 5, year_after(t1)),
            (entry_id(&review), "pending".into(), 30, year_after(t1)),
        ],
        "soonest-expiring first; at one instant, the sooner available first"
    );
    let pending_lot = &b["lots"][3];
    assert_eq!(pending_lot["available_at"], at(t1 + Duration::days(5)));
    assert_eq!(pending_lot["kind"], "earn");
    assert_eq!(b["lots"][2]["kind"], "adjust");

    // Once the gift has expired the next expiry is a year out again.
    app.clock.advance(Duration::days(9));
    let b = balance(&app, &id);
    assert_eq!(b["expiring_earliest_at"], year_after(t0));
    assert_eq!(b["expiring_earliest_points"], 100);
    assert_eq!(b["expiring_within_30_days"], 0);
    assert_eq!(b["lots"].as_array().map(Vec::len), Some(3));

    // The amount expiring at the next expiry sums the lots ending then.
    app.clock.advance(Duration::days(355));
    let b = balance(&app, &id);
    assert_eq!(b["expiring_earliest_at"], year_after(t1));
    assert_eq!(b["expiring_earliest_points"], 35);
    assert_eq!(
        lot_summary(&b)
            .iter()
            .map(|(_, status, points, _)| (status.as_str(), *points))
            .collect::<Vec<_>>(),
        [("available", 5), ("available", 30)]
    );

    // Nothing left: no expiry, no lots.
    app.clock.advance(Duration::days(1));
    let b = balance(&app, &id);
    assert!(b["expiring_earliest_at"].is_null(), "{b}");
    assert_eq!(b["expiring_earliest_points"], 0);
    assert_eq!(b["lots"], json!([]));
    assert_eq!(b["expired"], 175);
    assert_ledger_invariants(&app, "after every lot expired");
}

#[test]
fn the_lot_list_is_bounded_and_summarises_the_lots_it_leaves_out() {
    // Arrange: two more available lots than the list holds, each expiring
    // a day after the one before, and a pending lot that expires last.
    let app = TestApp::new();
    let id = new_contact(&app, "many-lots@example.jp");
    let listed = kizuna::points::ledger::LOTS_LISTED;
    let now = app.now();
    for n in 1..=listed + 2 {
        award_with(
            &app,
            &json!({"contact_id": id, "points": n, "reason": "stamp card",
                    "expires_at": at(now + Duration::days(i64::try_from(n).unwrap()))}),
        );
    }
    award_with(
        &app,
        &json!({"contact_id": id, "points": 1000, "reason": "preorder",
                "available_at": at(now + Duration::days(1)),
                "expires_at": at(now + Duration::days(400))}),
    );

    // Act
    let b = balance(&app, &id);

    // Assert
    let lots = lot_summary(&b);
    assert_eq!(lots.len(), listed);
    assert_eq!(lots[0].3, json!(at(now + Duration::days(1))));
    assert_eq!(
        lots[listed - 1].3,
        json!(at(now + Duration::days(i64::try_from(listed).unwrap())))
    );
    assert!(lots.iter().all(|(_, status, _, _)| status == "available"));
    let listed_points: i64 = lots.iter().map(|(_, _, points, _)| points).sum();
    let n = i64::try_from(listed).unwrap();
    assert_eq!(listed_points, n * (n + 1) / 2);
    assert_eq!(
        b["lots_not_listed"],
        json!({"lots": 3, "available": (n + 1) + (n + 2), "pending": 1000})
    );
    assert_eq!(
        b["available"].as_i64().unwrap(),
        listed_points + b["lots_not_listed"]["available"].as_i64().unwrap()
    );
    assert_eq!(b["pending"], 1000);
}

#[test]
fn a_redemption_answers_the_yen_value_of_its_points() {
    // Arrange: a point is worth ¥2 at checkout.
    let app = TestApp::new();
    put_program(&app, &json!({"point_value_minor": 2}));
    let id = new_contact(&app, "value@example.jp");
    award(&app, &id, 500);
    let body = json!({"contact_id": id, "points": 300, "order_ref": "1001"});

    // Act
    let first = redeem_ok(&app, "value-1001", &body);
    let replay = redeem_ok(&app, "value-1001", &body);

    // Assert
    assert_eq!(first["points"], 300);
    assert_eq!(first["value_minor"], 600);
    assert_eq!(first["currency"], "JPY");
    assert_eq!(first["point_value_minor"], 2);
    assert_eq!(first["program_version"], 1);
    assert_eq!(first["balance"]["available"], 200);
    assert_eq!(replay, first, "a replay answers the first redemption");
    assert_eq!(
        app.count("SELECT count(*) FROM points_entries WHERE kind = 'redeem'"),
        1
    );

    // The default program: a point is ¥1.
    put_program(&app, &json!({}));
    let second = redeem_ok(&app, "value-1002", &json!({"contact_id": id, "points": 50}));
    assert_eq!(second["value_minor"], 50);
    assert_eq!(second["point_value_minor"], 1);
}

#[test]
fn a_program_patch_changes_only_what_it_names_and_stores_the_next_version() {
    // Arrange
    let app = TestApp::new();
    let id = new_contact(&app, "patch@example.jp");
    let v1 = put_program(
        &app,
        &json!({
            "earn_rate": {"points": 2, "per_minor": 100},
            "sku_multipliers": {"TEA-GOLD": 3, "TEA-OLD": 2},
            "category_multipliers": {"tea": 1.5},
            "pending_days": 14, "expiry": {"policy": "end_of_month_after", "months": 12},
            "min_redeem": 100, "point_value_minor": 1,
        }),
    );
    let campaign = json!({"name": "新茶 5x", "starts_at": "2027-05-01T00:00:00+09:00",
                          "ends_at": "2027-05-08T00:00:00+09:00", "multiplier": 5});

    // Act: adding a campaign
    let v2 = patch_program(&app, &json!({ "campaigns": [campaign] }));

    // Assert: everything else as it was
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["created_by"], "key:points-admin");
    let mut expected = v1["rules"].clone();
    expected["campaigns"] = json!([{
        "name": "新茶 5x", "starts_at": "2027-05-01T00:00:00+09:00",
        "ends_at": "2027-05-08T00:00:00+09:00", "multiplier": 5, "tag": null,
    }]);
    assert_eq!(v2["rules"], expected);
    assert_eq!(program(&app), v2);

    // Act: maps merge key by key, null restores a default, the expiry is
    // replaced whole; RFC 7396's media type is taken too.
    let response = patch_program_as(
        &app,
        "application/merge-patch+json",
        json!({
            "sku_multipliers": {"TEA-NEW": 2, "TEA-OLD": null},
            "earn_rate": {"per_minor": 200},
            "expiry": {"policy": "never"},
            "pending_days": null,
        })
        .to_string(),
    );

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let v3 = response.json();
    assert_eq!(v3["version"], 3);
    let mut expected = v2["rules"].clone();
    expected["sku_multipliers"] = json!({"TEA-GOLD": 3, "TEA-NEW": 2});
    expected["earn_rate"] = json!({"points": 2, "per_minor": 200});
    expected["expiry"] = json!({"policy": "never"});
    expected["pending_days"] = json!(0);
    assert_eq!(v3["rules"], expected);
    assert_eq!(program(&app), v3);
    assert_eq!(app.count("SELECT count(*) FROM points_programs"), 3);
    let stored: String = app
        .db()
        .query_row(
            "SELECT rules FROM points_programs WHERE version = 3",
            [],
            |r| r.get(0),
        )
        .expect("version 3 stored");
    assert_eq!(serde_json::from_str::<Json>(&stored).unwrap(), expected);

    // An empty patch is a new version of the same rules, as a PUT is.
    let v4 = patch_program(&app, &json!({}));
    assert_eq!(
        (v4["version"].clone(), v4["rules"].clone()),
        (json!(4), expected)
    );

    // Earning records the version in force.
    let awarded = award(&app, &id, 10);
    let entry = ledger(&app, &id).into_iter().next().expect("the award");
    assert_eq!(entry["id"], awarded["entry_id"]);
    assert_eq!(entry["program_version"], 4);
}

#[test]
fn bad_program_patches_are_refused_and_change_nothing() {
    // Arrange
    let app = TestApp::new();
    put_program(
        &app,
        &json!({"pending_days": 7, "expiry": {"policy": "days_after_earn", "days": 30},
                "category_multipliers": {"tea": 2}}),
    );
    let rules = program(&app)["rules"].clone();
    let before = points_counts(&app);
    let json_type = "application/json";
    // (case, content type, body, status, the fields the problem names)
    let cases: Vec<(&str, &str, String, u16, &[&str])> = vec![
        (
            "unknown settings, each named, even one set to null",
            json_type,
            json!({"bonus": 1, "round": null, "min_redeem": 5}).to_string(),
            422,
            &["bonus", "round"],
        ),
        (
            "unknown field inside the earn rate",
            json_type,
            json!({"earn_rate": {"round": "up"}}).to_string(),
            422,
            &["round"],
        ),
        (
            "the merged rules fail validation: pending as long as the expiry",
            json_type,
            json!({"pending_days": 30}).to_string(),
            422,
            &["pending_days"],
        ),
        (
            "the merged rules fail validation: an expiry shorter than the pending days",
            json_type,
            json!({"expiry": {"policy": "days_after_earn", "days": 7}}).to_string(),
            422,
            &["pending_days"],
        ),
        (
            "the expiry is replaced whole, so it needs its policy",
            json_type,
            json!({"expiry": {"days": 60}}).to_string(),
            422,
            &[],
        ),
        (
            "zero multiplier",
            json_type,
            json!({"category_multipliers": {"tea": 0}}).to_string(),
            422,
            &[],
        ),
        (
            "a campaign without its dates",
            json_type,
            json!({"campaigns": [{"name": "x", "multiplier": 2}]}).to_string(),
            422,
            &[],
        ),
        ("a list, not an object", json_type, "[]".into(), 422, &[]),
        ("a number, not an object", json_type, "5".into(), 422, &[]),
        ("not JSON", json_type, "{".into(), 400, &[]),
        ("an empty body", json_type, String::new(), 400, &[]),
        (
            "not JSON under the merge-patch type",
            "application/merge-patch+json",
            "{\"min_redeem\":".into(),
            400,
            &[],
        ),
        (
            "a form body",
            "application/x-www-form-urlencoded",
            "min_redeem=5".into(),
            415,
            &[],
        ),
    ];

    for (case, content_type, body, status, fields) in cases {
        // Act
        let response = patch_program_as(&app, content_type, body);

        // Assert
        let problem = response.assert_problem(status, case);
        if status == 422 {
            let named: Vec<&str> = problem["errors"]
                .as_array()
                .expect("errors")
                .iter()
                .filter_map(|e| e["field"].as_str())
                .collect();
            assert!(!named.is_empty(), "case {case}: names a field: {problem}");
            if !fields.is_empty() {
                assert_eq!(named, fields, "case {case}: {problem}");
            }
        }
        let current = program(&app);
        assert_eq!(current["version"], 1, "case {case}");
        assert_eq!(current["rules"], rules, "case {case}");
        assert_eq!(points_counts(&app), before, "case {case}");
    }

    // Only the points:admin scope may patch.
    let response = call(
        &app,
        "PATCH",
        "/v1/points/program",
        Some(POINTS_KEY),
        Some(json_type),
        None,
        json!({"min_redeem": 5}).to_string(),
    );
    response.assert_problem(403, "a points key without points:admin");
    assert_eq!(points_counts(&app), before);
}

#[test]
fn the_erasure_answer_says_how_many_points_it_forfeited() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: available, pending, and already expired points.
    let app = TestApp::new();
    let id = new_contact(&app, "forfeit@example.jp");
    let other = new_contact(&app, "stays@example.jp");
    let t0 = start_time();
    award(&app, &id, 100);
    award(&app, &other, 70);
    award_with(
        &app,
        &json!({"contact_id": id, "points": 30, "reason": "review",
                "available_at": at(t0 + Duration::days(30))}),
    );
    award_with(
        &app,
        &json!({"contact_id": id, "points": 20, "reason": "trial",
                "expires_at": at(t0 + Duration::days(1))}),
    );
    app.clock.advance(Duration::days(2));
    let erase = || {
        app.request(
            "DELETE",
            &format!("/v1/contacts/{id}"),
            &[("authorization", &bearer(ADMIN_KEY))],
            "",
        )
    };

    // Act
    let erased = erase();

    // Assert: the answer, the ledger, the erasure record
    assert_eq!(erased.status, 200, "{}", erased.text());
    let answer = erased.json();
    assert_eq!(
        answer["points_forfeited"],
        json!({"available": 100, "pending": 30})
    );
    let expiries: Vec<(i64, Option<String>)> = {
        let db = app.db();
        let mut statement = db
            .prepare(
                "SELECT points, reason FROM points_entries
                 WHERE contact_id = ?1 AND kind = 'expire' ORDER BY seq",
            )
            .expect("query");
        statement
            .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert_eq!(
        expiries,
        [
            (-20, Some("expired".to_owned())),
            (-100, Some("forfeited on erasure".to_owned())),
            (-30, Some("forfeited on erasure".to_owned())),
        ],
        "points past their expiry were lost to time, not to the erasure"
    );
    let recorded: String = app
        .db()
        .query_row(
            "SELECT json_extract(erased, '$.points_forfeited') FROM erasures WHERE contact_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .expect("the erasure record");
    assert_eq!(
        serde_json::from_str::<Json>(&recorded).unwrap(),
        json!({"available": 100, "pending": 30})
    );
    let liability = app.get(POINTS_KEY, "/v1/points/liability").json();
    assert_eq!(
        liability["available"]["points"], 70,
        "only the other contact's"
    );
    assert_eq!(liability["pending"]["points"], 0);
    app.get(POINTS_KEY, &format!("/v1/points/{id}"))
        .assert_problem(404, "an erased contact has no balance");
    assert_ledger_invariants(&app, "after the erasure");

    // A retry answers the same count and writes nothing.
    let entries = app.count("SELECT count(*) FROM points_entries");
    let again = erase();
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["points_forfeited"], answer["points_forfeited"]);
    assert_eq!(again.json()["erased_at"], answer["erased_at"]);
    assert_eq!(app.count("SELECT count(*) FROM points_entries"), entries);

    // A contact without points forfeits none.
    let empty = new_contact(&app, "no-points@example.jp");
    let response = app.request(
        "DELETE",
        &format!("/v1/contacts/{empty}"),
        &[("authorization", &bearer(ADMIN_KEY))],
        "",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.json()["points_forfeited"],
        json!({"available": 0, "pending": 0})
    );
}
