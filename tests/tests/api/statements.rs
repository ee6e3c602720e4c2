//! How many SQL statements the frequent writes run. Under Spin each one
//! is a host call, so the count is a large part of a write's cost; these
//! budgets keep it from creeping back up. Counted by the native host, on
//! a connection already prepared (pragmas and the schema check are per
//! connection, not per request).

use crate::helpers::*;
use serde_json::{Value as Json, json};

/// A Kizuna-format order of five lines for `email`, signed now.
fn five_line_order(app: &TestApp, n: u32, email: &str) -> TestResponse {
    app.post_kizuna_event(
        &format!("msg_{n}"),
        five_line_event(n, email).to_string().into_bytes(),
    )
}

/// The same order, its buyer ticking "email me" at checkout.
fn five_line_order_with_consent(app: &TestApp, n: u32, email: &str) -> TestResponse {
    let mut event = five_line_event(n, email);
    event["data"]["customer"]["consents"] = json!({"email": {"status": "granted"}});
    app.post_kizuna_event(&format!("msg_{n}"), event.to_string().into_bytes())
}

fn five_line_event(n: u32, email: &str) -> Json {
    let lines: Vec<Json> = (1..=5)
        .map(|i| {
            json!({"id": format!("L{i}"), "sku": format!("TEA-{i}"), "name": "煎茶",
                   "category": "tea", "quantity": 1, "unit_price": "1000",
                   "total": "1000", "discount": "0", "tax": "80"})
        })
        .collect();
    json!({
        "type": "order.paid",
        "timestamp": "2026-11-22T02:59:30Z",
        "data": {
            "id": format!("BENCH-{n}"), "currency": "JPY",
            "placed_at": "2026-11-22T02:59:00Z", "updated_at": "2026-11-22T02:59:10Z",
            "customer": {"email": email, "name": "山田 太郎"},
            "subtotal": "5000", "shipping": "0", "tax": "400", "discount": "0",
            "total": "5400", "points_used": 0, "lines": lines, "refunds": []
        }
    })
}

/// Runs `request` and returns (status, statements).
fn counted(app: &TestApp, request: impl FnOnce() -> TestResponse) -> (u16, u64) {
    let response = request();
    let statements = app.statements_of_last_request().expect("native host");
    (response.status, statements)
}

#[test]
fn the_frequent_writes_stay_within_their_statement_budgets() {
    if skip_under_spin("counts statements in the native host") {
        return;
    }
    let app = TestApp::new();
    let program = json!({"earn_rate": {"points": 1, "per_minor": 100}});
    let response = app.send_json("PUT", POINTS_ADMIN_KEY, "/v1/points/program", &program);
    assert_eq!(response.status, 200, "{}", response.text());
    let form = |n: u32| {
        app.post_form(
            "spring-lp",
            &format!("email=lead{n}%40example.jp&name=%E5%B1%B1%E7%94%B0&consent_email=on"),
            &format!("10.0.0.{n}"),
        )
    };
    // The first of each kind also creates rate-limit buckets and the like.
    assert_eq!(form(1).status, 200);
    assert_eq!(five_line_order(&app, 1, "buyer1@example.jp").status, 200);

    let (status, form_statements) = counted(&app, || form(2));
    assert_eq!(status, 200);
    let (status, order_statements) =
        counted(&app, || five_line_order(&app, 2, "buyer2@example.jp"));
    assert_eq!(status, 200);
    let contact = app.count("SELECT rowid FROM contacts WHERE email = 'buyer2@example.jp'");
    assert!(contact > 0);
    let contact_id: String = app
        .db()
        .query_row(
            "SELECT id FROM contacts WHERE email = 'buyer2@example.jp'",
            [],
            |r| r.get(0),
        )
        .expect("the buyer");
    let (status, redeem_statements) = counted(&app, || {
        app.request(
            "POST",
            "/v1/points/redeem",
            &[
                ("authorization", &format!("Bearer {POINTS_KEY}")),
                ("content-type", "application/json"),
                ("idempotency-key", "redeem-1"),
            ],
            json!({"contact_id": contact_id, "points": 10}).to_string(),
        )
    });
    assert_eq!(status, 201);
    let (status, award_statements) = counted(&app, || {
        app.request(
            "POST",
            "/v1/points/award",
            &[
                ("authorization", &format!("Bearer {POINTS_KEY}")),
                ("content-type", "application/json"),
                ("idempotency-key", "award-1"),
            ],
            json!({"contact_id": contact_id, "points": 10, "reason": "campaign"}).to_string(),
        )
    });
    assert_eq!(status, 201);
    let (status, consent_order_statements) = counted(&app, || {
        five_line_order_with_consent(&app, 3, "buyer3@example.jp")
    });
    assert_eq!(status, 200);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM consents x JOIN contacts c ON c.id = x.contact_id
             WHERE c.email = 'buyer3@example.jp' AND x.source = 'checkout'"
        ),
        1,
        "the checkout consent is recorded"
    );
    println!(
        "statements: form post {form_statements}, order webhook (5 lines, earning) {order_statements}, \
         with a checkout consent {consent_order_statements}, redeem {redeem_statements}, \
         award {award_statements}"
    );
    // Before issue 9 these were 24 (a form post with consent), 43 and 20,
    // five of them the pragmas and the schema check of a new connection.
    // The form post's twelfth is the read of its settings, which moved
    // from the key-value store (a cache that may be lost) to SQLite.
    // Issue 11 (the outbox) adds one statement per fact, each writing
    // that fact's events in the fact's transaction: a new lead's post
    // 12 -> 15 (contact.created, form.submitted, consent.granted), a new
    // buyer's order 24 -> 27 (contact.created, order.paid, points.earned),
    // a redeem 13 -> 14, an award 11 -> 12.
    assert!(form_statements <= 15, "form post: {form_statements}");
    assert!(order_statements <= 27, "order webhook: {order_statements}");
    // A checkout consent adds four: one read of the buyer's addresses,
    // latest consent per channel and suppression, then the consent row,
    // its timeline entry and its event (a withdrawal adds the
    // suppression).
    assert!(
        consent_order_statements <= order_statements + 4,
        "order webhook with a checkout consent: {consent_order_statements}"
    );
    assert!(redeem_statements <= 14, "redeem: {redeem_statements}");
    assert!(award_statements <= 12, "award: {award_statements}");
}

#[test]
fn the_frequent_reads_stay_within_their_statement_budgets() {
    if skip_under_spin("counts statements in the native host") {
        return;
    }
    let app = TestApp::new();
    let id = app.create_contact(
        &json!({"email": "reader@example.jp", "phone": "090-1234-5678",
                                         "name": "山田 花子"}),
    );
    let read = |key: &str, path: &str| {
        let (status, statements) = counted(&app, || app.get(key, path));
        assert_eq!(status, 200, "{path}");
        statements
    };
    let by_id = read(READ_KEY, &format!("/v1/contacts/{id}"));
    let by_phone = read(READ_KEY, "/v1/contacts?phone=09012345678");
    let balance = read(POINTS_KEY, &format!("/v1/points/{id}"));
    println!("statements: contact by id {by_id}, by phone {by_phone}, points balance {balance}");
    assert!(by_id <= 1, "contact by id: {by_id}");
    assert!(by_phone <= 1, "contact by phone: {by_phone}");
    assert!(balance <= 1, "points balance: {balance}");
}

#[test]
fn server_timing_reports_each_stage_only_when_asked() {
    // Arrange
    let quiet = TestApp::new();
    let timed = TestApp::with_variables(&[("server_timing", "true")]);
    let created = timed.send_json(
        "POST",
        WRITE_KEY,
        "/v1/contacts",
        &json!({"email": "timed@example.jp"}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().expect("id").to_owned();

    // Act
    let plain = quiet.get(READ_KEY, "/healthz");
    let answer = timed.get(READ_KEY, &format!("/v1/contacts/{id}"));

    // Assert
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("server-timing"), None);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let timing = answer
        .header("server-timing")
        .expect("a Server-Timing header");
    let names: Vec<&str> = timing
        .split(", ")
        .map(|stage| stage.split(';').next().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "read",
            "settings",
            "connection",
            "sql",
            "lock",
            "app",
            "total"
        ],
        "{timing}"
    );
    assert!(timing.contains("desc=\"1 statements\""), "{timing}");
    assert!(
        timing.contains("lock;dur=0.000"),
        "a read holds no lock: {timing}"
    );
    let write = created
        .header("server-timing")
        .expect("a Server-Timing header");
    assert!(
        write.contains("lock;dur=") && !write.contains("lock;dur=0.000"),
        "a write holds the lock: {write}"
    );
}

#[test]
fn a_server_timing_setting_other_than_true_or_false_is_refused() {
    let app = TestApp::with_variables(&[("server_timing", "yes")]);
    let response = app.get(READ_KEY, "/healthz");
    assert_eq!(response.status, 500);
}

#[test]
fn a_look_up_page_is_one_statement_however_many_contacts_it_holds() {
    if skip_under_spin("counts statements in the native host") {
        return;
    }
    // Arrange: twelve customers named 山田, each with tags, an order
    // (which earns points) and an open inquiry: everything a summary
    // reads, for every row of the page.
    let app = TestApp::new();
    for n in 1..=12u32 {
        let email = format!("yamada{n}@example.jp");
        let id = app.create_contact(&json!({
            "email": email, "phone": format!("090-1111-{n:04}"),
            "family_name": "山田", "family_name_kana": "ヤマダ", "tags": ["vip", "gift"],
        }));
        assert_eq!(five_line_order(&app, n, &email).status, 200);
        let inquiry = app.send_json(
            "POST",
            WRITE_KEY,
            &format!("/v1/contacts/{id}/interactions"),
            &json!({"kind": "inquiry", "body": "在庫は？"}),
        );
        assert_eq!(inquiry.status, 201, "{}", inquiry.text());
    }
    let read = |path: &str| {
        let mut items = 0;
        let (status, statements) = counted(&app, || {
            let response = app.get(READ_KEY, path);
            items = response.json()["items"].as_array().map_or(0, Vec::len);
            response
        });
        assert_eq!(status, 200, "{path}");
        (items, statements)
    };

    // Act
    let looks = [
        ("list", read("/v1/contacts?limit=50")),
        ("q", read("/v1/contacts?q=%E3%82%84%E3%81%BE%E3%81%A0")),
        (
            "q, a page of 5",
            read("/v1/contacts?q=%E5%B1%B1%E7%94%B0&limit=5"),
        ),
        ("email", read("/v1/contacts?email=yamada7%40example.jp")),
        ("phone", read("/v1/contacts?phone=09011110007")),
    ];

    // Assert
    println!("statements per look-up page: {looks:?}");
    let items: Vec<usize> = looks.iter().map(|(_, (items, _))| *items).collect();
    assert_eq!(items, [12, 12, 5, 1, 1], "{looks:?}");
    for (case, (_, statements)) in looks {
        assert_eq!(statements, 1, "{case}: one statement per page");
    }
}
