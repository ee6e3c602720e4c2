//! `/v1/segments` and `/v1/analytics`, end to end through the native host.
//!
//! - Every field and every operator it allows, over small hand-built data
//!   sets (contacts from the API, forms and order webhooks, points, tags,
//!   consents, clock advances), with the exact expected members by id.
//! - Built-in segments, RFM scores and churn risk.
//! - Injection through field names, operators and values; consent with
//!   `purpose: "email"`; saved segments; members as JSON and CSV; keyset
//!   pagination while contacts come and go; delta sync; analytics; bad
//!   input and auth.
//!
//! Data-set tables name contacts by label; a failure lists every case that
//! failed with the expected and actual members by label.

use crate::helpers::*;
use kizuna::signatures::sign_standard;
use kizuna::timestamp;
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, BTreeSet};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

// ---------------------------------------------------------------------------
// Data sets: contacts by label
// ---------------------------------------------------------------------------

/// The contacts of a data set, by label.
#[derive(Default)]
struct Data {
    ids: Vec<(&'static str, String)>,
}

impl Data {
    fn add(&mut self, label: &'static str, id: String) -> String {
        assert!(
            self.ids.iter().all(|(l, _)| *l != label),
            "label {label} twice"
        );
        self.ids.push((label, id.clone()));
        id
    }

    fn id(&self, label: &str) -> String {
        self.ids
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, id)| id.clone())
            .unwrap_or_else(|| panic!("no contact labelled {label}"))
    }

    fn label(&self, id: &str) -> String {
        self.ids
            .iter()
            .find(|(_, i)| i == id)
            .map(|(l, _)| (*l).to_owned())
            .unwrap_or_else(|| format!("<unlabelled {id}>"))
    }

    /// Sorted ids of space-separated labels.
    fn ids_of(&self, labels: &str) -> Vec<String> {
        let mut ids: Vec<String> = labels.split_whitespace().map(|l| self.id(l)).collect();
        ids.sort();
        ids
    }

    fn labels_of(&self, ids: &[String]) -> Vec<String> {
        let mut labels: Vec<String> = ids.iter().map(|id| self.label(id)).collect();
        labels.sort();
        labels
    }
}

/// A condition node.
fn cond(field: &str, op: &str, value: Json) -> Json {
    json!({"field": field, "op": op, "value": value})
}

/// The members a preview returns for `definition`: every one on one page,
/// in id order, and `count` agrees with the page.
fn preview_members(app: &TestApp, definition: &Json) -> Result<Vec<String>, String> {
    let response = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments/preview?limit=200&fields=id",
        &json!({ "definition": definition }),
    );
    if response.status != 200 {
        return Err(format!("status {}: {}", response.status, response.text()));
    }
    let body = response.json();
    let ids = item_ids(&body);
    if body["count"] != json!(ids.len()) {
        return Err(format!("count {} but {} items", body["count"], ids.len()));
    }
    if !body["next_cursor"].is_null() {
        return Err("a second page for a small data set".to_owned());
    }
    if !ids.windows(2).all(|w| w[0] < w[1]) {
        return Err(format!("items not in id order: {ids:?}"));
    }
    Ok(ids)
}

fn item_ids(body: &Json) -> Vec<String> {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items in {body}"))
        .iter()
        .map(|m| m["id"].as_str().expect("member id").to_owned())
        .collect()
}

/// Runs every case (definition, expected labels) and reports all failures.
fn check(app: &TestApp, data: &Data, cases: &[(Json, &str)]) {
    let mut failures = Vec::new();
    for (definition, expected) in cases {
        let want = data.ids_of(expected);
        match preview_members(app, definition) {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!(
                "case {definition}: expected {:?}, got {:?}",
                data.labels_of(&want),
                data.labels_of(&got)
            )),
            Err(error) => failures.push(format!("case {definition}: {error}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Arranging data through the API
// ---------------------------------------------------------------------------

fn set_clock(app: &TestApp, at: OffsetDateTime) {
    let now = app.now();
    assert!(at >= now, "the clock only moves forward: {now} -> {at}");
    app.clock.advance(at - now);
}

fn ts(at: OffsetDateTime) -> String {
    timestamp::format(at)
}

/// One order line: SKU, category, amount in yen.
type Line<'a> = (&'a str, &'a str, i64);

/// A Kizuna-format order event for a customer known by email.
fn order_event(
    kind: &str,
    order_id: &str,
    email: &str,
    placed_at: &str,
    lines: &[Line],
    refunds: Json,
) -> Json {
    let total: i64 = lines.iter().map(|l| l.2).sum();
    let lines: Vec<Json> = lines
        .iter()
        .enumerate()
        .map(|(i, (sku, category, amount))| {
            json!({
                "id": format!("L{i}"), "sku": sku, "name": sku, "category": category,
                "quantity": 1, "unit_price": amount.to_string(), "total": amount.to_string(),
                "discount": "0", "tax": "0"
            })
        })
        .collect();
    json!({
        "type": kind,
        "data": {
            "id": order_id, "currency": "JPY", "placed_at": placed_at,
            "customer": {"email": email},
            "subtotal": total.to_string(), "shipping": "0", "tax": "0", "discount": "0",
            "total": total.to_string(), "points_used": 0,
            "lines": lines, "refunds": refunds
        }
    })
}

/// Delivers a signed Standard Webhooks event, signed at the app's clock.
fn deliver(app: &TestApp, msg_id: &str, event: &Json) {
    let body = event.to_string().into_bytes();
    let at = app.now().unix_timestamp();
    let signature = sign_standard(ORDERS_SECRET, msg_id, at, &body);
    let response = app.request(
        "POST",
        "/v1/webhooks/orders",
        &[
            ("content-type", "application/json"),
            ("webhook-id", msg_id),
            ("webhook-timestamp", &at.to_string()),
            ("webhook-signature", &signature),
        ],
        body,
    );
    assert_eq!(response.status, 200, "{msg_id}: {}", response.text());
    assert_eq!(
        response.json()["status"],
        "applied",
        "{msg_id}: {}",
        response.text()
    );
}

/// A paid order.
fn order(app: &TestApp, order_id: &str, email: &str, placed_at: &str, lines: &[Line]) {
    let event = order_event("order.paid", order_id, email, placed_at, lines, json!([]));
    deliver(app, &format!("paid-{order_id}"), &event);
}

/// A paid order, then its cancellation.
fn cancelled_order(app: &TestApp, order_id: &str, email: &str, placed_at: &str, lines: &[Line]) {
    order(app, order_id, email, placed_at, lines);
    let event = order_event(
        "order.cancelled",
        order_id,
        email,
        placed_at,
        lines,
        json!([]),
    );
    deliver(app, &format!("cancel-{order_id}"), &event);
}

/// A paid order, then a refund of `amount` yen.
fn refunded_order(
    app: &TestApp,
    order_id: &str,
    email: &str,
    placed_at: &str,
    lines: &[Line],
    amount: i64,
) {
    order(app, order_id, email, placed_at, lines);
    let refunds = json!([{
        "id": format!("R-{order_id}"), "amount": amount.to_string(),
        "reason": "damaged", "refunded_at": ts(app.now())
    }]);
    let event = order_event("order.refunded", order_id, email, placed_at, lines, refunds);
    deliver(app, &format!("refund-{order_id}"), &event);
}

/// A contact's id, looked up by email through the contacts API.
fn id_by_email(app: &TestApp, email: &str) -> String {
    let response = app.get(READ_KEY, &format!("/v1/contacts?email={email}"));
    assert_eq!(response.status, 200, "{email}: {}", response.text());
    let body = response.json();
    body["items"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no contact {email}: {body}"))
        .to_owned()
}

/// A JSON form post from a script, which must be accepted.
fn submit_form(app: &TestApp, form_id: &str, body: &Json, ip: &str) {
    let response = app.post_form_json(form_id, body, ip);
    assert_eq!(response.status, 202, "form {form_id}: {}", response.text());
}

fn consent(app: &TestApp, id: &str, status: &str) {
    let response = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/consents"),
        &json!({"channel": "email", "status": status, "reason": "manual"}),
    );
    assert_eq!(response.status, 201, "consent: {}", response.text());
}

fn set_tag(app: &TestApp, id: &str, tag: &str, present: bool) {
    let method = if present { "PUT" } else { "DELETE" };
    let response = app.request(
        method,
        &format!("/v1/contacts/{id}/tags/{tag}"),
        &[("authorization", &format!("Bearer {WRITE_KEY}"))],
        "",
    );
    assert_eq!(response.status, 200, "tag: {}", response.text());
}

fn erase(app: &TestApp, id: &str) {
    let response = app.request(
        "DELETE",
        &format!("/v1/contacts/{id}"),
        &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
        "",
    );
    assert_eq!(response.status, 200, "erase: {}", response.text());
}

/// `POST /v1/points/award`; `available_at` / `expires_at` override the
/// program's.
fn award(
    app: &TestApp,
    id: &str,
    points: i64,
    available_at: Option<OffsetDateTime>,
    expires_at: Option<OffsetDateTime>,
) {
    let mut body = json!({"contact_id": id, "points": points, "reason": "campaign"});
    if let Some(at) = available_at {
        body["available_at"] = json!(ts(at));
    }
    if let Some(at) = expires_at {
        body["expires_at"] = json!(ts(at));
    }
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let response = app.request(
        "POST",
        "/v1/points/award",
        &[
            ("authorization", &format!("Bearer {POINTS_KEY}")),
            ("content-type", "application/json"),
            ("idempotency-key", &format!("award-{n}")),
        ],
        body.to_string(),
    );
    assert_eq!(response.status, 201, "award: {}", response.text());
}

fn redeem(app: &TestApp, id: &str, points: i64) {
    let response = app.request(
        "POST",
        "/v1/points/redeem",
        &[
            ("authorization", &format!("Bearer {POINTS_KEY}")),
            ("content-type", "application/json"),
            ("idempotency-key", &format!("redeem-{id}")),
        ],
        json!({"contact_id": id, "points": points, "reason": "coupon"}).to_string(),
    );
    assert_eq!(response.status, 201, "redeem: {}", response.text());
}

/// `POST /v1/segments`, which must succeed; returns the segment.
fn create_segment(app: &TestApp, name: &str, definition: &Json, purpose: Option<&str>) -> Json {
    let response = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments",
        &json!({"name": name, "definition": definition, "purpose": purpose}),
    );
    assert_eq!(response.status, 201, "create segment: {}", response.text());
    response.json()
}

fn segment_id(segment: &Json) -> String {
    segment["id"].as_str().expect("segment id").to_owned()
}

/// Every member of a saved segment, walking JSON pages; sorted.
fn saved_members(app: &TestApp, segment: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/segments/{segment}/contacts?limit=200&fields=id");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let response = app.get(SEGMENTS_KEY, &path);
        assert_eq!(response.status, 200, "members: {}", response.text());
        let body = response.json();
        ids.extend(item_ids(&body));
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    ids.sort();
    ids
}

/// Row counts of every table in the database, by name.
fn all_table_counts(app: &TestApp) -> BTreeMap<String, i64> {
    let db = app.db();
    let mut statement = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .expect("tables");
    let names: Vec<String> = statement
        .query_map([], |r| r.get(0))
        .expect("names")
        .collect::<Result<_, _>>()
        .expect("names");
    names
        .into_iter()
        .map(|name| {
            let n = app.count(&format!("SELECT count(*) FROM \"{name}\""));
            (name, n)
        })
        .collect()
}

/// A small RFC 4180 reader: rows of fields, quotes undone.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {
                chars.next();
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            _ => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

fn get_csv(app: &TestApp, path: &str, accept: Option<&str>) -> TestResponse {
    let auth = format!("Bearer {SEGMENTS_KEY}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(accept) = accept {
        headers.push(("accept", accept));
    }
    app.request("GET", path, &headers, "")
}

// ---------------------------------------------------------------------------
// The existing smoke test
// ---------------------------------------------------------------------------

#[test]
fn a_preview_counts_and_lists_matching_contacts_by_id() {
    // Arrange
    let app = TestApp::new();
    let gold = app.create_contact(&json!({"email": "gold@example.jp", "tags": ["gold"]}));
    app.create_contact(&json!({"email": "plain@example.com"}));
    let other_gold =
        app.create_contact(&json!({"email": "g2@example.jp", "tags": ["gold", "vip"]}));

    // Act
    let response = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments/preview",
        &json!({"definition": {"all": [
            {"field": "tags", "op": "contains", "value": "gold"},
            {"field": "email_domain", "op": "eq", "value": "example.jp"}
        ]}}),
    );

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["count"], 2);
    let ids: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    let mut expected = vec![gold.as_str(), other_gold.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
}

// ---------------------------------------------------------------------------
// 1. Every field and operator, exact members
// ---------------------------------------------------------------------------

/// Profile, consent and tag data: API contacts, form leads, a webhook
/// customer and an erased contact that matched many conditions.
fn profile_data(app: &TestApp) -> Data {
    let mut data = Data::default();
    let p1 = data.add(
        "p1",
        app.create_contact(&json!({
            "email": "aiko@example.jp", "phone": "090-1111-2222", "birthday": "1990-03-15",
            "attributes": {"plan": "gold", "size": "M"}, "tags": ["gold", "newsletter"]
        })),
    );
    consent(app, &p1, "granted");
    let p2 = data.add(
        "p2",
        app.create_contact(&json!({
            "email": "ben@example.com", "birthday": "1985-12-01",
            "attributes": {"plan": "silver"}, "tags": ["silver"]
        })),
    );
    consent(app, &p2, "granted");
    app.clock.advance(Duration::seconds(1));
    consent(app, &p2, "withdrawn");
    data.add("p3", app.create_contact(&json!({"phone": "080-3333-4444"})));
    data.add(
        "p4",
        app.create_contact(&json!({
            "email": "chie@sub.example.jp", "birthday": "2000-03-31",
            "attributes": {"plan": "Gold"}, "tags": ["gold"]
        })),
    );
    submit_form(
        app,
        "spring",
        &json!({
            "email": "dai@example.jp", "utm_source": "google", "utm_campaign": "spring-sale",
            "consent_email": "on", "interest": "tea"
        }),
        "198.51.100.1",
    );
    data.add("f1", id_by_email(app, "dai@example.jp"));
    submit_form(
        app,
        "autumn",
        &json!({"email": "eri@example.com", "utm_source": "facebook", "utm_campaign": "autumn"}),
        "198.51.100.2",
    );
    data.add("f2", id_by_email(app, "eri@example.com"));
    order(
        app,
        "W1-1",
        "fumi@shop.example.jp",
        "2026-11-20T01:00:00Z",
        &[("TEA-1", "tea", 1000)],
    );
    data.add("w1", id_by_email(app, "fumi@shop.example.jp"));
    let gone = app.create_contact(&json!({
        "email": "gone@example.jp", "phone": "090-9999-0000", "birthday": "1990-03-01",
        "attributes": {"plan": "gold"}, "tags": ["gold"]
    }));
    consent(app, &gone, "granted");
    erase(app, &gone);
    data
}

#[test]
fn profile_consent_and_tag_fields_match_exactly() {
    // Arrange
    let app = TestApp::new();
    let data = profile_data(&app);
    let all = "p1 p2 p3 p4 f1 f2 w1";

    // Act and assert
    check(
        &app,
        &data,
        &[
            // email_domain (text)
            (cond("email_domain", "eq", json!("example.jp")), "p1 f1"),
            (
                cond("email_domain", "neq", json!("example.jp")),
                "p2 p4 f2 w1",
            ),
            (
                cond(
                    "email_domain",
                    "in",
                    json!(["example.com", "sub.example.jp"]),
                ),
                "p2 p4 f2",
            ),
            (
                cond(
                    "email_domain",
                    "not_in",
                    json!(["example.jp", "example.com"]),
                ),
                "p4 w1",
            ),
            (
                cond("email_domain", "exists", json!(true)),
                "p1 p2 p4 f1 f2 w1",
            ),
            (cond("email_domain", "exists", json!(false)), "p3"),
            // has_email, has_phone (bool)
            (cond("has_email", "eq", json!(true)), "p1 p2 p4 f1 f2 w1"),
            (cond("has_email", "eq", json!(false)), "p3"),
            (cond("has_phone", "eq", json!(true)), "p1 p3"),
            (cond("has_phone", "eq", json!(false)), "p2 p4 f1 f2 w1"),
            // source (text)
            (cond("source", "eq", json!("api:writer")), "p1 p2 p3 p4"),
            (cond("source", "eq", json!("form:spring")), "f1"),
            (cond("source", "neq", json!("api:writer")), "f1 f2 w1"),
            (
                cond("source", "in", json!(["form:spring", "webhook:kizuna"])),
                "f1 w1",
            ),
            (
                cond("source", "not_in", json!(["form:spring", "form:autumn"])),
                "p1 p2 p3 p4 w1",
            ),
            (cond("source", "exists", json!(true)), all),
            (cond("source", "exists", json!(false)), ""),
            // utm_source, utm_campaign (text, missing for most)
            (cond("utm_source", "eq", json!("google")), "f1"),
            (cond("utm_source", "neq", json!("google")), "f2"),
            (
                cond("utm_source", "in", json!(["google", "facebook"])),
                "f1 f2",
            ),
            (cond("utm_source", "not_in", json!(["facebook"])), "f1"),
            (cond("utm_source", "exists", json!(true)), "f1 f2"),
            (cond("utm_source", "exists", json!(false)), "p1 p2 p3 p4 w1"),
            (cond("utm_campaign", "eq", json!("spring-sale")), "f1"),
            (cond("utm_campaign", "neq", json!("spring-sale")), "f2"),
            (cond("utm_campaign", "in", json!(["autumn", "x"])), "f2"),
            (cond("utm_campaign", "not_in", json!(["autumn"])), "f1"),
            (cond("utm_campaign", "exists", json!(true)), "f1 f2"),
            (
                cond("utm_campaign", "exists", json!(false)),
                "p1 p2 p3 p4 w1",
            ),
            // birthday_month (int 1..12): p1 3, p2 12, p4 3
            (cond("birthday_month", "eq", json!(3)), "p1 p4"),
            (cond("birthday_month", "neq", json!(3)), "p2"),
            (cond("birthday_month", "in", json!([12, 1])), "p2"),
            (cond("birthday_month", "not_in", json!([3])), "p2"),
            (cond("birthday_month", "gt", json!(3)), "p2"),
            (cond("birthday_month", "gte", json!(3)), "p1 p2 p4"),
            (cond("birthday_month", "lt", json!(12)), "p1 p4"),
            (cond("birthday_month", "lte", json!(3)), "p1 p4"),
            (cond("birthday_month", "between", json!([1, 3])), "p1 p4"),
            (cond("birthday_month", "between", json!([4, 11])), ""),
            (cond("birthday_month", "exists", json!(true)), "p1 p2 p4"),
            (
                cond("birthday_month", "exists", json!(false)),
                "p3 f1 f2 w1",
            ),
            // attributes.<key> (text): plan p1 gold, p2 silver, p4 Gold
            (cond("attributes.plan", "eq", json!("gold")), "p1"),
            (cond("attributes.plan", "neq", json!("gold")), "p2 p4"),
            (
                cond("attributes.plan", "in", json!(["gold", "silver"])),
                "p1 p2",
            ),
            (
                cond("attributes.plan", "not_in", json!(["silver"])),
                "p1 p4",
            ),
            (cond("attributes.plan", "exists", json!(true)), "p1 p2 p4"),
            (
                cond("attributes.plan", "exists", json!(false)),
                "p3 f1 f2 w1",
            ),
            (cond("attributes.interest", "eq", json!("tea")), "f1"),
            (cond("attributes.size", "exists", json!(true)), "p1"),
            // tags: p1 gold+newsletter, p2 silver, p4 gold
            (cond("tags", "contains", json!("gold")), "p1 p4"),
            (cond("tags", "contains", json!("bronze")), ""),
            (cond("tags", "in", json!(["silver", "newsletter"])), "p1 p2"),
            (cond("tags", "not_in", json!(["gold"])), "p2 p3 f1 f2 w1"),
            (cond("tags", "exists", json!(true)), "p1 p2 p4"),
            (cond("tags", "exists", json!(false)), "p3 f1 f2 w1"),
            // email_consent (bool): p1 granted, p2 withdrawn, f1 by form
            (cond("email_consent", "eq", json!(true)), "p1 f1"),
            (cond("email_consent", "eq", json!(false)), "p2 p3 p4 f2 w1"),
            // lifecycle_stage (enum)
            (cond("lifecycle_stage", "eq", json!("customer")), "w1"),
            (
                cond("lifecycle_stage", "eq", json!("lead")),
                "p1 p2 p3 p4 f1 f2",
            ),
            // groups
            (
                json!({"all": [
                    cond("tags", "contains", json!("gold")),
                    cond("email_domain", "eq", json!("example.jp"))
                ]}),
                "p1",
            ),
            (
                json!({"any": [
                    cond("utm_source", "eq", json!("google")),
                    cond("has_phone", "eq", json!(true))
                ]}),
                "p1 p3 f1",
            ),
            (
                json!({"not": cond("tags", "contains", json!("gold"))}),
                "p2 p3 f1 f2 w1",
            ),
            (
                json!({"all": [
                    {"any": [cond("source", "eq", json!("form:spring")), cond("source", "eq", json!("form:autumn"))]},
                    {"not": cond("email_consent", "eq", json!(true))}
                ]}),
                "f2",
            ),
        ],
    );
}

#[test]
fn time_fields_match_exactly_with_jst_day_boundaries() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: contacts created at chosen moments (the clock moves
    // forward), then customers whose orders were placed at chosen moments.
    // The final now is 2026-12-02T03:00Z, 12:00 in Tokyo; today in Tokyo
    // began at 2026-12-01T15:00Z.
    let app = TestApp::new();
    let mut data = Data::default();
    data.add("k1", app.create_contact(&json!({"email": "k1@example.jp"})));
    set_clock(&app, datetime!(2026-11-29 14:59:59 UTC)); // Nov 29 23:59:59 JST
    data.add("k2", app.create_contact(&json!({"email": "k2@example.jp"})));
    set_clock(&app, datetime!(2026-11-29 15:00:00 UTC)); // Nov 30 00:00 JST
    data.add("k3", app.create_contact(&json!({"email": "k3@example.jp"})));
    set_clock(&app, datetime!(2026-12-02 03:00:00 UTC));
    data.add("k4", app.create_contact(&json!({"email": "k4@example.jp"})));
    let one = [("TEA-1", "tea", 1000)];
    order(&app, "O1-1", "o1@example.jp", "2026-06-01T01:00:00Z", &one);
    order(&app, "O1-2", "o1@example.jp", "2026-11-20T01:00:00Z", &one);
    order(&app, "O2-1", "o2@example.jp", "2026-11-29T14:59:59Z", &one);
    order(&app, "O3-1", "o3@example.jp", "2026-11-29T15:00:00Z", &one);
    order(&app, "O4-1", "o4@example.jp", "2025-01-10T00:00:00Z", &one);
    // Not paid: never counts as an order.
    let pending = order_event(
        "order.created",
        "O4-2",
        "o4@example.jp",
        "2026-12-01T00:00:00Z",
        &one,
        json!([]),
    );
    deliver(&app, "created-O4-2", &pending);
    for label in ["o1", "o2", "o3", "o4"] {
        data.add(label, id_by_email(&app, &format!("{label}@example.jp")));
    }
    let now_set = "k4 o1 o2 o3 o4"; // created at the final now
    let from_k3 = format!("k3 {now_set}");
    let from_k2 = format!("k2 k3 {now_set}");
    let everyone = format!("k1 k2 k3 {now_set}");

    // Act and assert
    check(
        &app,
        &data,
        &[
            // created_at
            (
                cond("created_at", "within_last_days", json!(2)),
                from_k3.as_str(),
            ),
            (
                cond("created_at", "within_last_days", json!(9)),
                from_k2.as_str(),
            ),
            (
                cond("created_at", "within_last_days", json!(10)),
                everyone.as_str(),
            ),
            (cond("created_at", "before", json!("2026-11-30")), "k1 k2"),
            (
                cond("created_at", "before", json!("2026-11-29T15:00:00Z")),
                "k1 k2",
            ),
            (
                cond("created_at", "after", json!("2026-11-29T15:00:00Z")),
                now_set,
            ),
            (
                cond("created_at", "after", json!("2026-11-30T00:00:00+09:00")),
                now_set,
            ),
            (
                cond(
                    "created_at",
                    "between",
                    json!(["2026-11-29T15:00:00Z", "2026-12-02T03:00:00Z"]),
                ),
                from_k3.as_str(),
            ),
            (
                cond("created_at", "between", json!(["2026-11-22", "2026-11-29"])),
                "k1",
            ),
            (cond("created_at", "exists", json!(true)), everyone.as_str()),
            (cond("created_at", "exists", json!(false)), ""),
            // last_order_at: o1 11-20T01:00, o2 11-29T14:59:59, o3 11-29T15:00, o4 2025-01-10
            (cond("last_order_at", "within_last_days", json!(2)), "o3"),
            (cond("last_order_at", "within_last_days", json!(3)), "o2 o3"),
            (
                cond("last_order_at", "within_last_days", json!(11)),
                "o2 o3",
            ),
            (
                cond("last_order_at", "within_last_days", json!(12)),
                "o1 o2 o3",
            ),
            (
                cond("last_order_at", "before", json!("2026-11-29T15:00:00Z")),
                "o1 o2 o4",
            ),
            (
                cond("last_order_at", "after", json!("2026-11-29T14:59:59Z")),
                "o3",
            ),
            (
                cond(
                    "last_order_at",
                    "between",
                    json!(["2026-11-20T01:00:00Z", "2026-11-29T15:00:00Z"]),
                ),
                "o1 o2 o3",
            ),
            (cond("last_order_at", "exists", json!(true)), "o1 o2 o3 o4"),
            (cond("last_order_at", "exists", json!(false)), "k1 k2 k3 k4"),
            // first_order_at: o1 06-01T01:00, o2, o3, o4 2025-01-10
            (cond("first_order_at", "before", json!("2026-01-01")), "o4"),
            (
                cond("first_order_at", "after", json!("2026-06-01T01:00:00Z")),
                "o2 o3",
            ),
            (
                cond(
                    "first_order_at",
                    "between",
                    json!(["2026-06-01", "2026-11-30"]),
                ),
                "o1 o2 o3",
            ),
            (
                cond("first_order_at", "within_last_days", json!(3)),
                "o2 o3",
            ),
            (cond("first_order_at", "exists", json!(true)), "o1 o2 o3 o4"),
            (
                cond("first_order_at", "exists", json!(false)),
                "k1 k2 k3 k4",
            ),
        ],
    );
}

/// Order counters: leads, one-time and repeat customers, a partial refund,
/// a full refund and a cancellation (which do not count). Now is
/// 2026-11-22T03:00Z; orders are placed at 01:00Z (10:00 in Tokyo), so
/// whole days since an order agree with calendar days in Tokyo.
fn counter_data(app: &TestApp) -> Data {
    let mut data = Data::default();
    data.add("c1", app.create_contact(&json!({"email": "c1@example.jp"})));
    order(
        app,
        "C2-1",
        "c2@example.jp",
        "2026-11-19T01:00:00Z",
        &[("A", "a", 3000)],
    );
    order(
        app,
        "C3-1",
        "c3@example.jp",
        "2026-10-01T01:00:00Z",
        &[("A", "a", 2000)],
    );
    order(
        app,
        "C3-2",
        "c3@example.jp",
        "2026-11-12T01:00:00Z",
        &[("A", "a", 4000)],
    );
    order(
        app,
        "C4-1",
        "c4@example.jp",
        "2026-11-01T01:00:00Z",
        &[("A", "a", 1000)],
    );
    order(
        app,
        "C4-2",
        "c4@example.jp",
        "2026-11-10T01:00:00Z",
        &[("A", "a", 1000)],
    );
    order(
        app,
        "C4-3",
        "c4@example.jp",
        "2026-11-22T01:00:00Z",
        &[("A", "a", 10000)],
    );
    refunded_order(
        app,
        "C5-1",
        "c5@example.jp",
        "2026-08-24T01:00:00Z",
        &[("A", "a", 5000)],
        1000,
    );
    refunded_order(
        app,
        "C6-1",
        "c6@example.jp",
        "2026-11-15T01:00:00Z",
        &[("A", "a", 7000)],
        7000,
    );
    cancelled_order(
        app,
        "C6-2",
        "c6@example.jp",
        "2026-11-16T01:00:00Z",
        &[("A", "a", 2000)],
    );
    for label in ["c2", "c3", "c4", "c5", "c6"] {
        data.add(label, id_by_email(app, &format!("{label}@example.jp")));
    }
    data
}

#[test]
fn order_counters_and_lifecycle_match_exactly() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: count/spent/aov/days since:
    // c1 0/0/0/-, c2 1/3000/3000/3, c3 2/6000/3000/10, c4 3/12000/4000/0,
    // c5 1/4000/4000/90 (5000 less a 1000 refund), c6 0/0/0/- (refunded, cancelled).
    let app = TestApp::new();
    let data = counter_data(&app);
    let all = "c1 c2 c3 c4 c5 c6";

    // Act and assert
    check(
        &app,
        &data,
        &[
            // order_count
            (cond("order_count", "eq", json!(0)), "c1 c6"),
            (cond("order_count", "neq", json!(0)), "c2 c3 c4 c5"),
            (cond("order_count", "in", json!([1, 3])), "c2 c4 c5"),
            (cond("order_count", "not_in", json!([0])), "c2 c3 c4 c5"),
            (cond("order_count", "gt", json!(1)), "c3 c4"),
            (cond("order_count", "gte", json!(1)), "c2 c3 c4 c5"),
            (cond("order_count", "lt", json!(2)), "c1 c2 c5 c6"),
            (cond("order_count", "lte", json!(2)), "c1 c2 c3 c5 c6"),
            (cond("order_count", "between", json!([2, 3])), "c3 c4"),
            (cond("order_count", "exists", json!(true)), all),
            (cond("order_count", "exists", json!(false)), ""),
            // total_spent (net of refunds)
            (cond("total_spent", "eq", json!(4000)), "c5"),
            (cond("total_spent", "neq", json!(4000)), "c1 c2 c3 c4 c6"),
            (cond("total_spent", "in", json!([0, 12000])), "c1 c4 c6"),
            (cond("total_spent", "not_in", json!([0])), "c2 c3 c4 c5"),
            (cond("total_spent", "gt", json!(4000)), "c3 c4"),
            (cond("total_spent", "gte", json!(4000)), "c3 c4 c5"),
            (cond("total_spent", "lt", json!(3000)), "c1 c6"),
            (cond("total_spent", "lte", json!(3000)), "c1 c2 c6"),
            (
                cond("total_spent", "between", json!([3000, 6000])),
                "c2 c3 c5",
            ),
            (cond("total_spent", "exists", json!(true)), all),
            (cond("total_spent", "exists", json!(false)), ""),
            // average_order_value
            (cond("average_order_value", "eq", json!(3000)), "c2 c3"),
            (cond("average_order_value", "neq", json!(0)), "c2 c3 c4 c5"),
            (cond("average_order_value", "in", json!([4000])), "c4 c5"),
            (
                cond("average_order_value", "not_in", json!([3000])),
                "c1 c4 c5 c6",
            ),
            (cond("average_order_value", "gt", json!(3000)), "c4 c5"),
            (
                cond("average_order_value", "gte", json!(3000)),
                "c2 c3 c4 c5",
            ),
            (
                cond("average_order_value", "lt", json!(4000)),
                "c1 c2 c3 c6",
            ),
            (cond("average_order_value", "lte", json!(0)), "c1 c6"),
            (
                cond("average_order_value", "between", json!([1, 3000])),
                "c2 c3",
            ),
            (cond("average_order_value", "exists", json!(true)), all),
            (cond("average_order_value", "exists", json!(false)), ""),
            // days_since_last_order: c2 3, c3 10, c4 0, c5 90, c1 c6 none
            (cond("days_since_last_order", "eq", json!(3)), "c2"),
            (cond("days_since_last_order", "eq", json!(0)), "c4"),
            (cond("days_since_last_order", "neq", json!(3)), "c3 c4 c5"),
            (cond("days_since_last_order", "in", json!([0, 10])), "c3 c4"),
            (
                cond("days_since_last_order", "not_in", json!([0, 10])),
                "c2 c5",
            ),
            (cond("days_since_last_order", "gt", json!(3)), "c3 c5"),
            (cond("days_since_last_order", "gte", json!(3)), "c2 c3 c5"),
            (cond("days_since_last_order", "gte", json!(90)), "c5"),
            (cond("days_since_last_order", "gt", json!(90)), ""),
            (cond("days_since_last_order", "lt", json!(10)), "c2 c4"),
            (cond("days_since_last_order", "lte", json!(10)), "c2 c3 c4"),
            (
                cond("days_since_last_order", "between", json!([3, 10])),
                "c2 c3",
            ),
            (
                cond("days_since_last_order", "between", json!([91, 365])),
                "",
            ),
            (
                cond("days_since_last_order", "exists", json!(true)),
                "c2 c3 c4 c5",
            ),
            (
                cond("days_since_last_order", "exists", json!(false)),
                "c1 c6",
            ),
            // lifecycle_stage (enum)
            (cond("lifecycle_stage", "eq", json!("lead")), "c1 c6"),
            (cond("lifecycle_stage", "eq", json!("customer")), "c2 c5"),
            (cond("lifecycle_stage", "eq", json!("repeat")), "c3 c4"),
            (cond("lifecycle_stage", "neq", json!("lead")), "c2 c3 c4 c5"),
            (
                cond("lifecycle_stage", "in", json!(["customer", "repeat"])),
                "c2 c3 c4 c5",
            ),
            (
                cond("lifecycle_stage", "not_in", json!(["repeat"])),
                "c1 c2 c5 c6",
            ),
        ],
    );
}

#[test]
fn days_since_last_order_counts_calendar_days_in_tokyo() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: now 2026-11-22T03:00Z is 12:00 on Nov 22 in Tokyo.
    //   e1 ordered 23:30 on Nov 21 (yesterday, 12.5 h ago): 1 day since
    //   e2 ordered 00:30 on Nov 22 (today, 11.5 h ago):     0 days since
    //   e3 ordered 13:00 on Nov 20 (47 h ago):              2 days since
    // Relative dates count from the start of today in shop time, so
    // `days_since_last_order lte N` is `last_order_at within_last_days N`.
    let app = TestApp::new();
    let mut data = Data::default();
    for (label, at) in [
        ("e1", "2026-11-21T14:30:00Z"),
        ("e2", "2026-11-21T15:30:00Z"),
        ("e3", "2026-11-20T04:00:00Z"),
    ] {
        let email = format!("{label}@example.jp");
        order(&app, &format!("{label}-1"), &email, at, &[("A", "a", 1000)]);
        data.add(label, id_by_email(&app, &email));
    }

    // Act and assert
    check(
        &app,
        &data,
        &[
            (cond("last_order_at", "within_last_days", json!(1)), "e1 e2"),
            (cond("days_since_last_order", "lte", json!(1)), "e1 e2"),
            (cond("days_since_last_order", "eq", json!(0)), "e2"),
            (cond("days_since_last_order", "eq", json!(1)), "e1"),
            (cond("days_since_last_order", "eq", json!(2)), "e3"),
            (cond("days_since_last_order", "gte", json!(2)), "e3"),
        ],
    );
}

#[test]
fn purchased_matches_counted_orders_by_sku_category_and_jst_window() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: now 2026-11-22T03:00Z; today in Tokyo began 2026-11-21T15:00Z,
    // so within_days 1 starts 2026-11-20T15:00Z and within_days 2 starts
    // 2026-11-19T15:00Z.
    let app = TestApp::new();
    let mut data = Data::default();
    order(
        &app,
        "B1-1",
        "b1@example.jp",
        "2026-11-20T01:00:00Z",
        &[("TEA-1", "tea", 2000), ("SWEETS-1", "sweets", 1000)],
    );
    order(
        &app,
        "B2-1",
        "b2@example.jp",
        "2026-09-01T01:00:00Z",
        &[("TEA-2", "tea", 3000)],
    );
    order(
        &app,
        "B3-1",
        "b3@example.jp",
        "2026-11-20T14:59:59Z",
        &[("TEA-1", "tea", 1000)],
    );
    cancelled_order(
        &app,
        "B3-2",
        "b3@example.jp",
        "2026-11-21T00:00:00Z",
        &[("COFFEE-1", "coffee", 1500)],
    );
    order(
        &app,
        "B4-1",
        "b4@example.jp",
        "2026-11-20T15:00:00Z",
        &[("SWEETS-1", "sweets", 1000)],
    );
    refunded_order(
        &app,
        "B4-2",
        "b4@example.jp",
        "2026-11-21T01:00:00Z",
        &[("COFFEE-1", "coffee", 1500)],
        1500,
    );
    for label in ["b1", "b2", "b3", "b4"] {
        data.add(label, id_by_email(&app, &format!("{label}@example.jp")));
    }
    data.add("b5", app.create_contact(&json!({"email": "b5@example.jp"})));
    let all = "b1 b2 b3 b4 b5";
    let sku = |op: &str, sku: &str, days: Option<i64>| {
        let mut value = json!({ "sku": sku });
        if let Some(days) = days {
            value["within_days"] = json!(days);
        }
        cond("purchased", op, value)
    };
    let category = |op: &str, category: &str, days: Option<i64>| {
        let mut value = json!({ "category": category });
        if let Some(days) = days {
            value["within_days"] = json!(days);
        }
        cond("purchased", op, value)
    };

    // Act and assert
    check(
        &app,
        &data,
        &[
            (sku("eq", "TEA-1", None), "b1 b3"),
            (sku("neq", "TEA-1", None), "b2 b4 b5"),
            (sku("eq", "TEA-1", Some(1)), ""),
            (sku("eq", "TEA-1", Some(2)), "b1 b3"),
            (sku("neq", "TEA-1", Some(2)), "b2 b4 b5"),
            (sku("eq", "SWEETS-1", Some(1)), "b4"),
            (sku("eq", "SWEETS-1", None), "b1 b4"),
            (sku("eq", "tea-1", None), ""),
            // cancelled and fully refunded orders do not count
            (sku("eq", "COFFEE-1", None), ""),
            (sku("neq", "COFFEE-1", None), all),
            (category("eq", "tea", None), "b1 b2 b3"),
            (category("neq", "tea", None), "b4 b5"),
            (category("eq", "tea", Some(30)), "b1 b3"),
            (category("eq", "tea", Some(100)), "b1 b2 b3"),
            (category("eq", "sweets", Some(1)), "b4"),
            (category("eq", "sweets", Some(2)), "b1 b4"),
            (category("neq", "sweets", Some(1)), "b1 b2 b3 b5"),
            (category("eq", "coffee", None), ""),
            (category("neq", "coffee", Some(7)), all),
        ],
    );
}

#[test]
fn submitted_form_matches_by_form_and_jst_window() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: submissions at chosen moments; the final now is
    // 2026-11-25T03:00Z, so within_days 1 starts 2026-11-23T15:00Z (Nov 24
    // 00:00 in Tokyo) and within_days 2 starts 2026-11-22T15:00Z.
    let app = TestApp::new();
    let mut data = Data::default();
    data.add("s6", app.create_contact(&json!({"email": "s6@example.jp"})));
    submit_form(
        &app,
        "spring",
        &json!({"email": "s1@example.jp"}),
        "198.51.100.1",
    );
    submit_form(
        &app,
        "spring",
        &json!({"email": "s2@example.jp"}),
        "198.51.100.2",
    );
    submit_form(
        &app,
        "autumn",
        &json!({"email": "s2@example.jp"}),
        "198.51.100.2",
    );
    submit_form(
        &app,
        "spring",
        &json!({"email": "s7@example.jp"}),
        "198.51.100.7",
    );
    let gone = id_by_email(&app, "s7@example.jp");
    erase(&app, &gone);
    set_clock(&app, datetime!(2026-11-23 14:59:59 UTC));
    submit_form(
        &app,
        "autumn",
        &json!({"email": "s3@example.jp"}),
        "198.51.100.3",
    );
    set_clock(&app, datetime!(2026-11-23 15:00:00 UTC));
    submit_form(
        &app,
        "autumn",
        &json!({"email": "s4@example.jp"}),
        "198.51.100.4",
    );
    set_clock(&app, datetime!(2026-11-25 03:00:00 UTC));
    data.add("s5", app.create_contact(&json!({"email": "s5@example.jp"})));
    submit_form(
        &app,
        "winter",
        &json!({"email": "s6@example.jp"}),
        "198.51.100.6",
    );
    for label in ["s1", "s2", "s3", "s4"] {
        data.add(label, id_by_email(&app, &format!("{label}@example.jp")));
    }
    let form = |op: &str, form_id: &str, days: Option<i64>| {
        let mut value = json!({ "form_id": form_id });
        if let Some(days) = days {
            value["within_days"] = json!(days);
        }
        cond("submitted_form", op, value)
    };

    // Act and assert
    check(
        &app,
        &data,
        &[
            (form("eq", "spring", None), "s1 s2"),
            (form("neq", "spring", None), "s3 s4 s5 s6"),
            (form("eq", "autumn", None), "s2 s3 s4"),
            (form("eq", "autumn", Some(1)), "s4"),
            (form("eq", "autumn", Some(2)), "s3 s4"),
            (form("eq", "autumn", Some(3)), "s2 s3 s4"),
            (form("neq", "autumn", Some(1)), "s1 s2 s3 s5 s6"),
            (form("eq", "winter", Some(1)), "s6"),
            (form("eq", "nope", None), ""),
            (form("neq", "nope", None), "s1 s2 s3 s4 s5 s6"),
        ],
    );
}

#[test]
fn points_fields_match_exactly_and_follow_the_clock() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange (now T0 = 2026-11-22T03:00Z): q1 100 (default expiry, one
    // year), q2 50 expiring T0+10d and 30 expiring T0+40d, q3 200 pending
    // until T0+5d, q4 40 expiring T0+20d all redeemed, q5 none, q6 70
    // expiring T0+30d exactly.
    let app = TestApp::new();
    let t0 = app.now();
    let mut data = Data::default();
    let mut contact = |label: &'static str| {
        data.add(
            label,
            app.create_contact(&json!({ "email": format!("{label}@example.jp") })),
        )
    };
    let (q1, q2, q3, q4, _q5, q6) = (
        contact("q1"),
        contact("q2"),
        contact("q3"),
        contact("q4"),
        contact("q5"),
        contact("q6"),
    );
    award(&app, &q1, 100, None, None);
    award(&app, &q2, 50, None, Some(t0 + Duration::days(10)));
    award(&app, &q2, 30, None, Some(t0 + Duration::days(40)));
    award(&app, &q3, 200, Some(t0 + Duration::days(5)), None);
    award(&app, &q4, 40, None, Some(t0 + Duration::days(20)));
    redeem(&app, &q4, 40);
    award(&app, &q6, 70, None, Some(t0 + Duration::days(30)));
    let all = "q1 q2 q3 q4 q5 q6";
    let expiring = |days: i64| cond("points_expiring_within_days", "lte", json!(days));

    // Act and assert: at T0
    check(
        &app,
        &data,
        &[
            (cond("points_available", "eq", json!(0)), "q3 q4 q5"),
            (cond("points_available", "neq", json!(0)), "q1 q2 q6"),
            (
                cond("points_available", "in", json!([0, 70])),
                "q3 q4 q5 q6",
            ),
            (cond("points_available", "not_in", json!([0])), "q1 q2 q6"),
            (cond("points_available", "gt", json!(80)), "q1"),
            (cond("points_available", "gte", json!(80)), "q1 q2"),
            (cond("points_available", "lt", json!(80)), "q3 q4 q5 q6"),
            (cond("points_available", "lte", json!(70)), "q3 q4 q5 q6"),
            (
                cond("points_available", "between", json!([70, 100])),
                "q1 q2 q6",
            ),
            (cond("points_available", "exists", json!(true)), all),
            (cond("points_available", "exists", json!(false)), ""),
            (expiring(9), ""),
            (expiring(10), "q2"),
            (expiring(29), "q2"),
            (expiring(30), "q2 q6"),
            (expiring(364), "q2 q6"),
            (expiring(365), "q1 q2 q3 q6"),
            (json!({"segment": "points_expiring"}), "q2 q6"),
        ],
    );

    // Act and assert: 11 days later q2's first lot has expired and q3's
    // points are available.
    app.clock.advance(Duration::days(11));
    check(
        &app,
        &data,
        &[
            (cond("points_available", "eq", json!(30)), "q2"),
            (cond("points_available", "gt", json!(100)), "q3"),
            (
                cond("points_available", "between", json!([30, 70])),
                "q2 q6",
            ),
            (cond("points_available", "eq", json!(0)), "q4 q5"),
            (expiring(18), ""),
            (expiring(19), "q6"),
            (expiring(29), "q2 q6"),
            (json!({"segment": "points_expiring"}), "q2 q6"),
        ],
    );
}

/// Customers for the built-in segments; now is 2026-11-22T03:00Z, so the
/// 12-month window starts 2025-11-22T03:00Z and `new_customers` starts at
/// 2026-10-22T15:00Z (Oct 23 00:00 in Tokyo).
fn builtin_data(app: &TestApp) -> Data {
    let mut data = Data::default();
    let u1 = data.add("u1", app.create_contact(&json!({"email": "u1@example.jp"})));
    award(app, &u1, 10, None, Some(app.now() + Duration::days(5)));
    let line = |amount: i64| [("A", "a", amount)];
    order(
        app,
        "U2-1",
        "u2@example.jp",
        "2026-11-01T01:00:00Z",
        &line(5000),
    );
    order(
        app,
        "U3-1",
        "u3@example.jp",
        "2026-10-22T14:59:59Z",
        &line(2000),
    );
    order(
        app,
        "U3-2",
        "u3@example.jp",
        "2026-11-15T01:00:00Z",
        &line(2000),
    );
    order(
        app,
        "U4-1",
        "u4@example.jp",
        "2026-10-22T15:00:00Z",
        &line(1000),
    );
    order(
        app,
        "U5-1",
        "u5@example.jp",
        "2025-06-01T00:00:00Z",
        &line(1000),
    );
    order(
        app,
        "U5-2",
        "u5@example.jp",
        "2025-07-01T00:00:00Z",
        &line(1000),
    );
    order(
        app,
        "U5-3",
        "u5@example.jp",
        "2025-08-01T00:00:00Z",
        &line(1000),
    );
    order(
        app,
        "U6-1",
        "u6@example.jp",
        "2026-09-01T01:00:00Z",
        &line(3000),
    );
    order(
        app,
        "U6-2",
        "u6@example.jp",
        "2026-10-01T01:00:00Z",
        &line(3000),
    );
    order(
        app,
        "U7-1",
        "u7@example.jp",
        "2026-07-01T01:00:00Z",
        &line(10000),
    );
    order(
        app,
        "U7-2",
        "u7@example.jp",
        "2026-07-11T01:00:00Z",
        &line(10000),
    );
    order(
        app,
        "U8-1",
        "u8@example.jp",
        "2025-11-21T01:00:00Z",
        &line(800),
    );
    order(
        app,
        "U9-1",
        "u9@example.jp",
        "2025-11-23T01:00:00Z",
        &line(1500),
    );
    for label in ["u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9"] {
        data.add(label, id_by_email(app, &format!("{label}@example.jp")));
    }
    // An erased big spender: never a member, never part of a threshold.
    order(
        app,
        "GONE-1",
        "gone@example.jp",
        "2026-11-01T01:00:00Z",
        &line(900_000),
    );
    order(
        app,
        "GONE-2",
        "gone@example.jp",
        "2025-01-01T01:00:00Z",
        &line(1000),
    );
    erase(app, &id_by_email(app, "gone@example.jp"));
    data
}

#[test]
fn built_in_segments_match_exactly() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: churn risk (median own gap vs days since the last order):
    // u3 gap 23.4 / since 7.1 low, u5 gaps 30 and 31 / since 478 high,
    // u6 gap 30 / since 52 medium, u7 gap 10 / since 134 high.
    // 12-month spend: u2 5000, u3 4000, u4 1000, u6 6000, u7 20000,
    // u9 1500 (u5, u8 outside): 6 spenders, the top decile is the 1st,
    // so the computed VIP threshold is 20000.
    let app = TestApp::new();
    let data = builtin_data(&app);
    let segment = |name: &str| json!({ "segment": name });

    // Act and assert
    check(
        &app,
        &data,
        &[
            (segment("prospects"), "u1"),
            (segment("new_customers"), "u2 u4"),
            (segment("repeat"), "u3 u5 u6 u7"),
            (segment("vip"), "u7"),
            (segment("at_risk"), "u5 u7"),
            (segment("dormant"), "u5 u8"),
            (segment("points_expiring"), "u1"),
            (
                json!({"all": [segment("repeat"), {"not": segment("at_risk")}]}),
                "u3 u6",
            ),
            (
                json!({"any": [segment("new_customers"), segment("dormant")]}),
                "u2 u4 u5 u8",
            ),
            (cond("churn_risk", "eq", json!("high")), "u5 u7"),
            (cond("churn_risk", "eq", json!("medium")), "u6"),
            (cond("churn_risk", "eq", json!("low")), "u3"),
            (cond("churn_risk", "eq", json!("none")), "u1 u2 u4 u8 u9"),
            (cond("churn_risk", "neq", json!("none")), "u3 u5 u6 u7"),
            (
                cond("churn_risk", "in", json!(["medium", "high"])),
                "u5 u6 u7",
            ),
            (
                cond("churn_risk", "not_in", json!(["none", "low"])),
                "u5 u6 u7",
            ),
        ],
    );
}

#[test]
fn vip_uses_the_configured_threshold() {
    // Arrange: the same customers, with the shop's threshold at 5000 of
    // 12-month spend: u2 5000, u6 6000 and u7 20000 reach it; u5 spent
    // before the window, u3 4000 does not reach it.
    let app = TestApp::with_variables(&[("vip_threshold_minor", "5000")]);
    let data = builtin_data(&app);

    // Act and assert
    check(
        &app,
        &data,
        &[
            (json!({"segment": "vip"}), "u2 u6 u7"),
            (
                json!({"all": [{"segment": "vip"}, {"segment": "repeat"}]}),
                "u6 u7",
            ),
        ],
    );
}

#[test]
fn vip_is_the_top_decile_of_twelve_month_spend() {
    // Arrange: eleven customers spending 1000 … 11000 in the window: the
    // top decile is ceil(11 / 10) = 2 customers, so the threshold is 10000.
    // A big spender from before the window and a cancelled big order do
    // not count.
    let app = TestApp::new();
    let mut data = Data::default();
    let labels = [
        "v01", "v02", "v03", "v04", "v05", "v06", "v07", "v08", "v09", "v10", "v11",
    ];
    for (i, label) in labels.iter().enumerate() {
        let email = format!("{label}@example.jp");
        let amount = 1000 * (i as i64 + 1);
        order(
            &app,
            &format!("V-{label}"),
            &email,
            "2026-10-01T01:00:00Z",
            &[("A", "a", amount)],
        );
        data.add(label, id_by_email(&app, &email));
    }
    order(
        &app,
        "OLD-1",
        "old@example.jp",
        "2025-10-01T01:00:00Z",
        &[("A", "a", 50_000)],
    );
    data.add("old", id_by_email(&app, "old@example.jp"));
    order(
        &app,
        "CX-1",
        "cx@example.jp",
        "2026-11-01T01:00:00Z",
        &[("A", "a", 3000)],
    );
    cancelled_order(
        &app,
        "CX-2",
        "cx@example.jp",
        "2026-11-02T01:00:00Z",
        &[("A", "a", 40_000)],
    );
    data.add("cx", id_by_email(&app, "cx@example.jp"));

    // Act and assert: cx's 3000 makes 12 spenders: ceil(12 / 10) = 2.
    check(&app, &data, &[(json!({"segment": "vip"}), "v10 v11")]);
}

/// Ten customers r0 … r9 with distinct recency, frequency and monetary
/// ranks, and a lead. r_i has i + 1 orders, the last (10 i + 1) days
/// before now, earlier ones a fixed gap apart.
fn rfm_data(app: &TestApp) -> Data {
    let mut data = Data::default();
    let now = app.now();
    // (orders, gap in days, amount per order)
    let plan: [(i64, i64, i64); 10] = [
        (1, 30, 9000),
        (2, 30, 5000),
        (3, 15, 1000),
        (4, 10, 1000),
        (5, 30, 10000),
        (6, 30, 10000),
        (7, 30, 1000),
        (8, 30, 1000),
        (9, 30, 200),
        (10, 30, 200),
    ];
    let labels = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"];
    for (i, (orders, gap, amount)) in plan.iter().enumerate() {
        let label = labels[i];
        let email = format!("{label}@example.jp");
        let last = now - Duration::days(10 * i as i64 + 1);
        for k in 0..*orders {
            let placed = last - Duration::days(gap * (orders - 1 - k));
            order(
                app,
                &format!("{label}-{k}"),
                &email,
                &ts(placed),
                &[("A", "a", *amount)],
            );
        }
        data.add(label, id_by_email(app, &email));
    }
    data.add(
        "lead",
        app.create_contact(&json!({"email": "lead@example.jp"})),
    );
    data
}

#[test]
fn rfm_scores_and_churn_risk_match_exactly() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: quintiles of two customers each.
    // recency:   5 r0 r1, 4 r2 r3, 3 r4 r5, 2 r6 r7, 1 r8 r9
    // frequency: 1 r0 r1, 2 r2 r3, 3 r4 r5, 4 r6 r7, 5 r8 r9
    // monetary (9000 10000 3000 4000 50000 60000 7000 8000 1800 2000):
    //            1 r8 r9, 2 r2 r3, 3 r6 r7, 4 r0 r1, 5 r4 r5
    // churn: r0 none (one order), r1 low (11 < 30), r2 medium (21 > 15),
    // r3 high (31 > 20), r4 r5 medium (41, 51 > 30), r6..r9 high (> 60).
    let app = TestApp::new();
    let data = rfm_data(&app);
    let customers = "r0 r1 r2 r3 r4 r5 r6 r7 r8 r9";

    // Act and assert
    check(
        &app,
        &data,
        &[
            (cond("rfm.recency", "eq", json!(5)), "r0 r1"),
            (
                cond("rfm.recency", "neq", json!(5)),
                "r2 r3 r4 r5 r6 r7 r8 r9",
            ),
            (cond("rfm.recency", "in", json!([1, 2])), "r6 r7 r8 r9"),
            (
                cond("rfm.recency", "not_in", json!([5, 4])),
                "r4 r5 r6 r7 r8 r9",
            ),
            (cond("rfm.recency", "gt", json!(3)), "r0 r1 r2 r3"),
            (cond("rfm.recency", "gte", json!(3)), "r0 r1 r2 r3 r4 r5"),
            (cond("rfm.recency", "lt", json!(2)), "r8 r9"),
            (cond("rfm.recency", "lte", json!(2)), "r6 r7 r8 r9"),
            (cond("rfm.recency", "between", json!([2, 3])), "r4 r5 r6 r7"),
            (cond("rfm.recency", "exists", json!(true)), customers),
            (cond("rfm.recency", "exists", json!(false)), "lead"),
            (cond("rfm.frequency", "eq", json!(5)), "r8 r9"),
            (
                cond("rfm.frequency", "neq", json!(3)),
                "r0 r1 r2 r3 r6 r7 r8 r9",
            ),
            (cond("rfm.frequency", "in", json!([3])), "r4 r5"),
            (
                cond("rfm.frequency", "not_in", json!([1])),
                "r2 r3 r4 r5 r6 r7 r8 r9",
            ),
            (cond("rfm.frequency", "gt", json!(4)), "r8 r9"),
            (cond("rfm.frequency", "gte", json!(4)), "r6 r7 r8 r9"),
            (cond("rfm.frequency", "lt", json!(2)), "r0 r1"),
            (cond("rfm.frequency", "lte", json!(1)), "r0 r1"),
            (
                cond("rfm.frequency", "between", json!([2, 3])),
                "r2 r3 r4 r5",
            ),
            (cond("rfm.frequency", "exists", json!(true)), customers),
            (cond("rfm.frequency", "exists", json!(false)), "lead"),
            (cond("rfm.monetary", "eq", json!(5)), "r4 r5"),
            (cond("rfm.monetary", "eq", json!(1)), "r8 r9"),
            (
                cond("rfm.monetary", "neq", json!(2)),
                "r0 r1 r4 r5 r6 r7 r8 r9",
            ),
            (cond("rfm.monetary", "in", json!([3, 4])), "r0 r1 r6 r7"),
            (
                cond("rfm.monetary", "not_in", json!([1, 2])),
                "r0 r1 r4 r5 r6 r7",
            ),
            (cond("rfm.monetary", "gt", json!(3)), "r0 r1 r4 r5"),
            (cond("rfm.monetary", "gte", json!(4)), "r0 r1 r4 r5"),
            (cond("rfm.monetary", "lt", json!(3)), "r2 r3 r8 r9"),
            (cond("rfm.monetary", "lte", json!(2)), "r2 r3 r8 r9"),
            (cond("rfm.monetary", "between", json!([3, 3])), "r6 r7"),
            (cond("rfm.monetary", "exists", json!(true)), customers),
            (cond("rfm.monetary", "exists", json!(false)), "lead"),
            (cond("churn_risk", "eq", json!("none")), "r0 lead"),
            (cond("churn_risk", "eq", json!("low")), "r1"),
            (cond("churn_risk", "eq", json!("medium")), "r2 r4 r5"),
            (cond("churn_risk", "eq", json!("high")), "r3 r6 r7 r8 r9"),
            (
                cond("churn_risk", "neq", json!("high")),
                "r0 r1 r2 r4 r5 lead",
            ),
            (
                cond("churn_risk", "in", json!(["low", "medium"])),
                "r1 r2 r4 r5",
            ),
            (
                cond("churn_risk", "not_in", json!(["high", "none"])),
                "r1 r2 r4 r5",
            ),
            (json!({"segment": "at_risk"}), "r3 r6 r7 r8 r9"),
            (
                json!({"all": [
                    cond("rfm.recency", "gte", json!(4)),
                    cond("rfm.monetary", "gte", json!(4))
                ]}),
                "r0 r1",
            ),
        ],
    );
    let response = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments/preview",
        &json!({"definition": cond("rfm.recency", "eq", json!(5))}),
    );
    assert_eq!(
        response.json()["analytics_computed_at"],
        ts(app.now()),
        "a preview that reads RFM says when it was computed"
    );
}

#[test]
fn not_is_the_complement_of_its_condition() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: contacts with and without the compared values. `neq` and
    // `not_in` leave out missing values (documented), but `{"not": X}` is
    // the complement of X: whoever is not in X.
    let app = TestApp::new();
    let mut data = Data::default();
    data.add(
        "jp",
        app.create_contact(&json!({"email": "a@example.jp", "birthday": "1990-03-15",
            "attributes": {"plan": "gold"}})),
    );
    data.add(
        "com",
        app.create_contact(&json!({"email": "b@example.com", "birthday": "1990-12-15",
            "attributes": {"plan": "silver"}})),
    );
    data.add(
        "bare",
        app.create_contact(&json!({"phone": "090-1234-5678"})),
    );
    order(
        &app,
        "N-1",
        "b@example.com",
        "2026-11-20T01:00:00Z",
        &[("A", "a", 1000)],
    );
    let not = |inner: Json| json!({ "not": inner });

    // Act and assert
    check(
        &app,
        &data,
        &[
            (cond("email_domain", "eq", json!("example.jp")), "jp"),
            (
                not(cond("email_domain", "eq", json!("example.jp"))),
                "com bare",
            ),
            (not(cond("birthday_month", "gt", json!(6))), "jp bare"),
            (
                not(cond("attributes.plan", "eq", json!("gold"))),
                "com bare",
            ),
            (
                not(cond("last_order_at", "before", json!("2026-11-21"))),
                "jp bare",
            ),
            (
                not(cond("days_since_last_order", "lt", json!(7))),
                "jp bare",
            ),
            (not(cond("rfm.recency", "eq", json!(1))), "jp bare"),
            (
                not(not(cond("email_domain", "eq", json!("example.jp")))),
                "jp",
            ),
        ],
    );
}

// ---------------------------------------------------------------------------
// 2. Injection
// ---------------------------------------------------------------------------

#[test]
fn sql_in_definitions_is_rejected_or_matched_literally_and_changes_nothing() {
    // Arrange: contacts that really hold some of the literal values.
    let app = TestApp::new();
    let mut data = Data::default();
    let attack_key = "a'); DROP TABLE contacts; --";
    let drop = "; DROP TABLE contacts; --";
    let or_true = "x' OR 1=1 --";
    data.add(
        "tagged",
        app.create_contact(&json!({"email": "tagged@example.jp", "tags": [or_true]})),
    );
    data.add(
        "keyed",
        app.create_contact(
            &json!({"email": "keyed@example.jp", "attributes": { attack_key: drop }}),
        ),
    );
    data.add(
        "quoted",
        app.create_contact(&json!({"email": "quoted@example.jp", "attributes": {"q\"k": "v"}})),
    );
    data.add(
        "slashed",
        app.create_contact(&json!({"email": "slashed@example.jp", "attributes": {"c:\\dir": "v"}})),
    );
    data.add(
        "plain",
        app.create_contact(&json!({"email": "plain@example.jp", "attributes": {"plan": "gold"}})),
    );
    order(
        &app,
        "I-1",
        "plain@example.jp",
        "2026-11-20T01:00:00Z",
        &[("TEA-1", "tea", 1000)],
    );
    let saved = create_segment(
        &app,
        "'; DROP TABLE segments; --",
        &cond("tags", "contains", json!(or_true)),
        None,
    );
    let before = all_table_counts(&app);
    let everyone = "tagged keyed quoted slashed plain";
    let rejected: Vec<(&str, Json, &str)> = vec![
        (
            "field with a statement",
            cond("email; DROP TABLE contacts", "eq", json!("x")),
            "/definition/field",
        ),
        (
            "field with OR",
            cond("tags OR 1=1", "contains", json!("x")),
            "/definition/field",
        ),
        (
            "field with a comment",
            cond("source --", "eq", json!("x")),
            "/definition/field",
        ),
        (
            "operator with SQL",
            cond("source", "= 1 OR", json!("x")),
            "/definition/op",
        ),
        (
            "operator with a statement",
            cond("order_count", "gt 0; DROP TABLE contacts", json!(1)),
            "/definition/op",
        ),
        (
            "number with SQL",
            cond("order_count", "eq", json!("1 OR 1=1")),
            "/definition/value",
        ),
        (
            "date with SQL",
            cond("created_at", "before", json!("2026-01-01' OR '1'='1")),
            "/definition/value",
        ),
        (
            "enum with SQL",
            cond("lifecycle_stage", "eq", json!("lead' OR '1'='1")),
            "/definition/value",
        ),
        (
            "segment name with SQL",
            json!({"segment": "vip' OR 1=1 --"}),
            "/definition/segment",
        ),
        (
            "member name with SQL",
            json!({"field": "source", "op": "eq", "value": "x", "1=1); DROP TABLE contacts; --": 1}),
            "/definition/1=1); DROP TABLE contacts; --",
        ),
    ];
    let literal: Vec<(Json, &str)> = vec![
        (cond("source", "eq", json!(or_true)), ""),
        (cond("email_domain", "eq", json!("%")), ""),
        (cond("tags", "contains", json!("%")), ""),
        (cond("attributes.c:\\dir", "eq", json!("v")), "slashed"),
        (cond("source", "neq", json!(or_true)), everyone),
        (cond("utm_campaign", "eq", json!(drop)), ""),
        (cond("email_domain", "in", json!([or_true, drop])), ""),
        (cond("tags", "contains", json!(or_true)), "tagged"),
        (cond("tags", "in", json!([or_true, drop])), "tagged"),
        (
            cond("tags", "not_in", json!([or_true])),
            "keyed quoted slashed plain",
        ),
        (
            cond(&format!("attributes.{attack_key}"), "exists", json!(true)),
            "keyed",
        ),
        (
            cond(&format!("attributes.{attack_key}"), "eq", json!(drop)),
            "keyed",
        ),
        (cond("attributes.plan", "eq", json!("gold' OR '1'='1")), ""),
        (cond("attributes.q\"k", "eq", json!("v")), "quoted"),
        (cond("attributes.x\" OR 1=1 --", "exists", json!(true)), ""),
        (cond("purchased", "eq", json!({"sku": or_true})), ""),
        (cond("purchased", "neq", json!({"sku": or_true})), everyone),
        (cond("purchased", "eq", json!({"category": drop})), ""),
        (
            cond(
                "submitted_form",
                "eq",
                json!({"form_id": "'; DROP TABLE interactions; --"}),
            ),
            "",
        ),
    ];

    // Act
    let mut failures = Vec::new();
    for (case, definition, pointer) in &rejected {
        let response = app.send_json(
            "POST",
            SEGMENTS_KEY,
            "/v1/segments/preview",
            &json!({ "definition": definition }),
        );
        if response.status != 422 {
            failures.push(format!(
                "{case}: status {} {}",
                response.status,
                response.text()
            ));
            continue;
        }
        let problem = response.json();
        if problem["errors"][0]["field"] != *pointer {
            failures.push(format!("{case}: pointer {}", problem["errors"][0]["field"]));
        }
    }
    for (definition, expected) in &literal {
        let want = data.ids_of(expected);
        match preview_members(&app, definition) {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!(
                "case {definition}: expected {:?}, got {:?}",
                data.labels_of(&want),
                data.labels_of(&got)
            )),
            Err(error) => failures.push(format!("case {definition}: {error}")),
        }
    }
    let query_attacks = [
        ("fields", "fields=id,email;DROP%20TABLE%20contacts"),
        ("cursor", "cursor=eCcgT1IgMT0xIC0t"), // base64url of x' OR 1=1 --
        ("limit", "limit=1;DROP%20TABLE%20contacts"),
    ];
    let saved_id = segment_id(&saved);
    for (field, query) in query_attacks {
        let response = app.get(
            SEGMENTS_KEY,
            &format!("/v1/segments/{saved_id}/contacts?{query}"),
        );
        if response.status != 422 || response.json()["errors"][0]["field"] != field {
            failures.push(format!(
                "query {query}: {} {}",
                response.status,
                response.text()
            ));
        }
    }
    let members = saved_members(&app, &saved_id);
    let cross_sell = app.get(
        SEGMENTS_KEY,
        "/v1/analytics/cross-sell?sku=x%27%20OR%201%3D1%20--",
    );

    // Assert
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(members, data.ids_of("tagged"), "the saved segment");
    let stored = app.get(SEGMENTS_KEY, &format!("/v1/segments/{saved_id}"));
    assert_eq!(stored.json()["name"], "'; DROP TABLE segments; --");
    assert_eq!(cross_sell.status, 200, "{}", cross_sell.text());
    assert_eq!(cross_sell.json()["base"]["customers"], 0);
    assert_eq!(cross_sell.json()["items"], json!([]));
    assert_eq!(
        all_table_counts(&app),
        before,
        "every table still exists with the same rows"
    );
}

// ---------------------------------------------------------------------------
// 3. Consent
// ---------------------------------------------------------------------------

#[test]
fn an_email_segment_never_returns_a_contact_without_current_consent() {
    // Arrange
    let app = TestApp::new();
    let mut data = Data::default();
    let mut contact = |label: &'static str| {
        data.add(
            label,
            app.create_contact(
                &json!({ "email": format!("{label}@example.jp"), "tags": ["campaign"] }),
            ),
        )
    };
    let _never = contact("never");
    let withdrawn = contact("withdrawn");
    let unsubscribed = contact("unsubscribed");
    let granted = contact("granted");
    let regranted = contact("regranted");
    let erased = contact("erased");
    consent(&app, &withdrawn, "granted");
    consent(&app, &granted, "granted");
    consent(&app, &regranted, "withdrawn");
    consent(&app, &unsubscribed, "granted");
    consent(&app, &erased, "granted");
    app.clock.advance(Duration::seconds(1));
    consent(&app, &withdrawn, "withdrawn");
    // After a withdrawal only the person's own opt-in grants again.
    submit_form(
        &app,
        "lp",
        &json!({"email": "regranted@example.jp", "consent_email": "on"}),
        "198.51.100.12",
    );
    erase(&app, &erased);
    submit_form(
        &app,
        "lp",
        &json!({"email": "form@example.jp", "consent_email": "on"}),
        "198.51.100.10",
    );
    let form = data.add("form", id_by_email(&app, "form@example.jp"));
    set_tag(&app, &form, "campaign", true);
    submit_form(
        &app,
        "lp",
        &json!({"email": "unticked@example.jp"}),
        "198.51.100.11",
    );
    let unticked = data.add("unticked", id_by_email(&app, "unticked@example.jp"));
    set_tag(&app, &unticked, "campaign", true);
    // Consent on record but no address to send to.
    let phone_only = data.add(
        "phone_only",
        app.create_contact(&json!({"phone": "090-7777-8888", "tags": ["campaign"]})),
    );
    consent(&app, &phone_only, "granted");
    let definition = cond("tags", "contains", json!("campaign"));
    let mail = segment_id(&create_segment(
        &app,
        "Campaign mail",
        &definition,
        Some("email"),
    ));
    let everyone = segment_id(&create_segment(&app, "Campaign all", &definition, None));
    let token = app
        .get(
            READ_KEY,
            &format!("/v1/contacts/{unsubscribed}/unsubscribe-link"),
        )
        .json()["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let consenting_before = data.ids_of("unsubscribed granted regranted form");
    assert_eq!(
        saved_members(&app, &mail),
        consenting_before,
        "before the unsubscribe"
    );

    // Act: one second later, the one-click unsubscribe.
    app.clock.advance(Duration::seconds(1));
    let unsubscribe = app.request(
        "POST",
        &format!("/v1/forms/unsubscribe?token={token}"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "List-Unsubscribe=One-Click",
    );
    assert_eq!(unsubscribe.status, 200, "{}", unsubscribe.text());
    let preview = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments/preview?fields=id",
        &json!({"definition": definition, "purpose": "email"}),
    );
    let members = saved_members(&app, &mail);
    let csv = get_csv(
        &app,
        &format!("/v1/segments/{mail}/contacts?format=csv&fields=id,email"),
        None,
    );
    let count = app.get(SEGMENTS_KEY, &format!("/v1/segments/{mail}/count"));
    let all_members = saved_members(&app, &everyone);
    let by_field = preview_members(
        &app,
        &json!({"all": [
            definition,
            cond("email_consent", "eq", json!(true)),
            cond("has_email", "eq", json!(true))
        ]}),
    );

    // Assert
    let consenting = data.ids_of("granted regranted form");
    assert_eq!(preview.status, 200, "{}", preview.text());
    let preview = preview.json();
    assert_eq!(item_ids(&preview), consenting, "preview");
    assert_eq!(preview["count"], 3, "preview count");
    assert_eq!(members, consenting, "members");
    assert_eq!(csv.status, 200, "{}", csv.text());
    let rows = parse_csv(&csv.text());
    assert_eq!(rows[0], ["id", "email"]);
    let mut csv_ids: Vec<String> = rows[1..].iter().map(|r| r[0].clone()).collect();
    csv_ids.sort();
    assert_eq!(csv_ids, consenting, "CSV");
    assert_eq!(count.status, 200, "{}", count.text());
    assert_eq!(count.json()["count"], 3, "count");
    assert_eq!(
        all_members,
        data.ids_of("never withdrawn unsubscribed granted regranted form unticked phone_only"),
        "without a purpose, everyone tagged (but the erased contact)"
    );
    assert_eq!(by_field, Ok(consenting), "email_consent = true");
}

// ---------------------------------------------------------------------------
// 4. Saved segments, members as JSON and CSV
// ---------------------------------------------------------------------------

#[test]
fn saved_segments_are_created_read_listed_counted_replaced_and_deleted() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    for i in 0..3 {
        app.create_contact(&json!({"email": format!("gold{i}@example.jp"), "tags": ["gold"]}));
    }
    app.create_contact(&json!({"email": "plain@example.jp"}));
    let gold = cond("tags", "contains", json!("gold"));
    let created_at = ts(app.now());

    // Act: create
    let created = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments",
        &json!({"name": "Gold", "description": "gold members", "definition": gold, "purpose": "email"}),
    );

    // Assert
    assert_eq!(created.status, 201, "{}", created.text());
    let segment = created.json();
    let id = segment_id(&segment);
    assert_eq!(segment["name"], "Gold");
    assert_eq!(segment["description"], "gold members");
    assert_eq!(segment["definition"], gold);
    assert_eq!(segment["purpose"], "email");
    assert_eq!(segment["last_count"], Json::Null);
    assert_eq!(segment["last_counted_at"], Json::Null);
    assert_eq!(segment["created_at"], created_at);
    assert_eq!(segment["created_by"], "key:segments");
    assert_eq!(segment["updated_at"], created_at);

    // Act and assert: a duplicate name is a conflict and stores nothing
    let duplicate = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments",
        &json!({"name": "Gold", "definition": gold}),
    );
    duplicate.assert_problem(409, "duplicate name");
    assert_eq!(app.count("SELECT count(*) FROM segments"), 1);

    // Act and assert: read and list
    let other = create_segment(&app, "Another", &cond("has_email", "eq", json!(true)), None);
    let read = app.get(SEGMENTS_KEY, &format!("/v1/segments/{id}"));
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json(), segment);
    let list = app.get(SEGMENTS_KEY, "/v1/segments");
    assert_eq!(list.status, 200, "{}", list.text());
    let names: Vec<Json> = list.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, [json!("Another"), json!("Gold")], "by name");

    // Act and assert: count stores the last count
    app.clock.advance(Duration::minutes(1));
    let counted_at = ts(app.now());
    let count = app.get(SEGMENTS_KEY, &format!("/v1/segments/{id}/count"));
    assert_eq!(count.status, 200, "{}", count.text());
    assert_eq!(count.json()["segment_id"], id);
    assert_eq!(count.json()["count"], 0, "nobody consented to email");
    let count_other = app.get(
        SEGMENTS_KEY,
        &format!("/v1/segments/{}/count", segment_id(&other)),
    );
    assert_eq!(count_other.json()["count"], 4);
    assert_eq!(count.json()["counted_at"], counted_at);
    let read = app.get(SEGMENTS_KEY, &format!("/v1/segments/{id}")).json();
    assert_eq!(read["last_count"], 0);
    assert_eq!(read["last_counted_at"], counted_at);

    // Act and assert: replace clears the last count
    app.clock.advance(Duration::minutes(1));
    let replaced_at = ts(app.now());
    let replaced = app.send_json(
        "PUT",
        SEGMENTS_KEY,
        &format!("/v1/segments/{id}"),
        &json!({"name": "Gold v2", "definition": gold}),
    );
    assert_eq!(replaced.status, 200, "{}", replaced.text());
    let replaced = replaced.json();
    assert_eq!(replaced["id"], id);
    assert_eq!(replaced["name"], "Gold v2");
    assert_eq!(replaced["description"], Json::Null);
    assert_eq!(replaced["purpose"], Json::Null);
    assert_eq!(replaced["last_count"], Json::Null);
    assert_eq!(replaced["last_counted_at"], Json::Null);
    assert_eq!(replaced["created_at"], created_at);
    assert_eq!(replaced["updated_at"], replaced_at);
    assert_eq!(
        app.get(SEGMENTS_KEY, &format!("/v1/segments/{id}/count"))
            .json()["count"],
        3
    );
    let taken = app.send_json(
        "PUT",
        SEGMENTS_KEY,
        &format!("/v1/segments/{id}"),
        &json!({"name": "Another", "definition": gold}),
    );
    taken.assert_problem(409, "PUT to a taken name");
    assert_eq!(
        app.get(SEGMENTS_KEY, &format!("/v1/segments/{id}")).json()["name"],
        "Gold v2"
    );

    // Act and assert: delete
    let delete = |path: &str| {
        app.request(
            "DELETE",
            path,
            &[("authorization", &format!("Bearer {SEGMENTS_KEY}"))],
            "",
        )
    };
    let deleted = delete(&format!("/v1/segments/{id}"));
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert!(deleted.body.is_empty());
    for path in [
        format!("/v1/segments/{id}"),
        format!("/v1/segments/{id}/count"),
        format!("/v1/segments/{id}/contacts"),
        format!("/v1/segments/{id}/changes"),
        "/v1/segments/not-a-segment".to_owned(),
    ] {
        app.get(SEGMENTS_KEY, &path).assert_problem(404, &path);
    }
    delete(&format!("/v1/segments/{id}")).assert_problem(404, "delete twice");
    let list = app.get(SEGMENTS_KEY, "/v1/segments").json();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
}

/// Four members (one with a comma and quotes in the name, formula-looking
/// names, a phone-only one) and a non-member; returns (data, segment id).
fn export_data(app: &TestApp) -> (Data, String) {
    let mut data = Data::default();
    data.add(
        "comma",
        app.create_contact(
            &json!({"email": "comma@example.jp", "name": "Sato, \"Taro\"", "tags": ["export"]}),
        ),
    );
    data.add(
        "formula",
        app.create_contact(
            &json!({"email": "formula@example.jp", "name": "=1+2", "tags": ["export"]}),
        ),
    );
    data.add(
        "plain",
        app.create_contact(
            &json!({"email": "plain@example.jp", "name": "Plain", "tags": ["export", "a"]}),
        ),
    );
    data.add(
        "phone",
        app.create_contact(&json!({"phone": "090-5555-6666", "name": "@home", "tags": ["export"]})),
    );
    data.add(
        "out",
        app.create_contact(&json!({"email": "out@example.jp", "tags": ["other"]})),
    );
    let segment = segment_id(&create_segment(
        app,
        "Export",
        &cond("tags", "contains", json!("export")),
        None,
    ));
    (data, segment)
}

#[test]
fn members_come_as_json_with_selected_fields_and_keyset_pages() {
    // Arrange
    let app = TestApp::new();
    let (data, segment) = export_data(&app);
    let members = data.ids_of("comma formula plain phone");
    let path = |query: &str| format!("/v1/segments/{segment}/contacts?{query}");
    let keys = |item: &Json| -> BTreeSet<String> {
        item.as_object()
            .expect("member object")
            .keys()
            .cloned()
            .collect()
    };
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| (*n).to_owned()).collect() };

    // Act
    let default = app.get(SEGMENTS_KEY, &path(""));
    let email_only = app.get(SEGMENTS_KEY, &path("fields=email"));
    let id_only = app.get(SEGMENTS_KEY, &path("fields=id"));
    let rich = app.get(SEGMENTS_KEY, &path("fields=tags,counters,points"));
    let unknown = app.get(SEGMENTS_KEY, &path("fields=email,password"));
    let first = app.get(SEGMENTS_KEY, &path("limit=3&fields=id"));
    let cursor = first.json()["next_cursor"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let second = app.get(
        SEGMENTS_KEY,
        &path(&format!("limit=3&fields=id&cursor={cursor}")),
    );

    // Assert
    assert_eq!(default.status, 200, "{}", default.text());
    let default = default.json();
    assert_eq!(default["segment_id"], segment);
    assert_eq!(item_ids(&default), members);
    for item in default["items"].as_array().expect("items") {
        assert_eq!(keys(item), set(&["id", "email", "phone", "name"]));
    }
    let plain = default["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|m| m["id"] == data.id("plain"))
        .expect("plain");
    assert_eq!(plain["email"], "plain@example.jp");
    assert_eq!(plain["name"], "Plain");
    for item in email_only.json()["items"].as_array().expect("items") {
        assert_eq!(keys(item), set(&["id", "email"]), "id is always there");
    }
    for item in id_only.json()["items"].as_array().expect("items") {
        assert_eq!(keys(item), set(&["id"]));
    }
    let rich = rich.json();
    for item in rich["items"].as_array().expect("items") {
        assert_eq!(keys(item), set(&["id", "tags", "counters", "points"]));
    }
    let plain = rich["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|m| m["id"] == data.id("plain"))
        .expect("plain");
    assert_eq!(plain["tags"], json!(["a", "export"]));
    assert_eq!(plain["counters"]["order_count"], 0);
    assert_eq!(plain["points"]["available"], 0);
    let problem = unknown.assert_problem(422, "unknown field");
    assert_eq!(problem["errors"][0]["field"], "fields");
    assert_eq!(first.status, 200);
    assert_eq!(item_ids(&first.json()), members[..3]);
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(item_ids(&second.json()), members[3..]);
    assert_eq!(second.json()["next_cursor"], Json::Null);
}

#[test]
fn members_come_as_rfc_4180_csv_page_by_page() {
    // Arrange
    let app = TestApp::new();
    let (data, segment) = export_data(&app);
    let members = data.ids_of("comma formula plain phone");
    let path = |query: &str| format!("/v1/segments/{segment}/contacts?{query}");

    // Act
    let by_accept = get_csv(&app, &path(""), Some("text/csv"));
    let first = get_csv(&app, &path("format=csv&limit=3"), None);
    let next = first.header("next-cursor").map(str::to_owned);
    let second = next
        .as_deref()
        .map(|c| get_csv(&app, &path(&format!("format=csv&limit=3&cursor={c}")), None));
    let bom = get_csv(&app, &path("format=csv&bom=true&fields=id"), None);
    let rich = get_csv(
        &app,
        &path("format=csv&fields=id,tags,counters,points"),
        None,
    );
    let xml = get_csv(&app, &path("format=xml"), None);

    // Assert: one page by Accept, quoted per RFC 4180, formulas guarded
    assert_eq!(by_accept.status, 200, "{}", by_accept.text());
    assert_eq!(
        by_accept.header("content-type"),
        Some("text/csv; charset=utf-8")
    );
    assert_eq!(by_accept.header("next-cursor"), None, "one page holds all");
    let text = by_accept.text();
    assert!(!text.starts_with('\u{feff}'), "no BOM unless asked");
    assert!(text.ends_with("\r\n"), "CRLF line ends");
    assert!(
        text.contains(",\"Sato, \"\"Taro\"\"\"\r\n"),
        "a comma and quotes are quoted: {text}"
    );
    let rows = parse_csv(&text);
    assert_eq!(rows[0], ["id", "email", "phone", "name"]);
    assert_eq!(rows.len(), 5, "header and four members: {text}");
    let ids: Vec<String> = rows[1..].iter().map(|r| r[0].clone()).collect();
    assert_eq!(ids, members);
    let name_of = |label: &str| -> String {
        let id = data.id(label);
        rows.iter().find(|r| r[0] == id).expect(label)[3].clone()
    };
    assert_eq!(name_of("comma"), "Sato, \"Taro\"");
    assert_eq!(name_of("formula"), "'=1+2", "a formula is defused");
    assert_eq!(name_of("phone"), "'@home", "a formula is defused");
    assert_eq!(name_of("plain"), "Plain");

    // Assert: pages with a cursor header, the header row once
    assert_eq!(first.status, 200, "{}", first.text());
    let first_rows = parse_csv(&first.text());
    assert_eq!(first_rows[0], ["id", "email", "phone", "name"]);
    assert_eq!(first_rows.len(), 4);
    let second = second.expect("a Next-Cursor header on a full page");
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(second.header("next-cursor"), None, "the last page");
    let second_rows = parse_csv(&second.text());
    assert_eq!(second_rows.len(), 1, "no header row: {}", second.text());
    let paged: Vec<String> = first_rows[1..]
        .iter()
        .chain(second_rows.iter())
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(paged, members);

    // Assert: BOM, columns of the field groups, bad format
    assert_eq!(&bom.body[..3], b"\xEF\xBB\xBF", "UTF-8 BOM for Excel");
    assert!(
        bom.text()
            .trim_start_matches('\u{feff}')
            .starts_with("id\r\n")
    );
    let rich_rows = parse_csv(&rich.text());
    assert_eq!(
        rich_rows[0],
        [
            "id",
            "tags",
            "order_count",
            "total_spent_jpy",
            "last_order_at",
            "points_available"
        ]
    );
    let plain = rich_rows
        .iter()
        .find(|r| r[0] == data.id("plain"))
        .expect("plain");
    assert_eq!(plain[1..], ["a;export", "0", "0", "", "0"]);
    let problem = xml.assert_problem(422, "format=xml");
    assert_eq!(problem["errors"][0]["field"], "format");
}

#[test]
fn csv_pages_concatenate_into_one_file_with_one_bom() {
    // Arrange
    let app = TestApp::new();
    let (_, segment) = export_data(&app);
    let path =
        |query: &str| format!("/v1/segments/{segment}/contacts?format=csv&bom=true&limit=3{query}");

    // Act
    let first = get_csv(&app, &path(""), None);
    let cursor = first.header("next-cursor").expect("next cursor").to_owned();
    let second = get_csv(&app, &path(&format!("&cursor={cursor}")), None);

    // Assert: pages are meant to be appended (the header row comes once),
    // so the BOM belongs at the start of the file only.
    assert_eq!(&first.body[..3], b"\xEF\xBB\xBF");
    assert!(
        !second.body.starts_with(b"\xEF\xBB\xBF"),
        "a BOM on a later page lands in the middle of the file: {:?}",
        second.text()
    );
}

// ---------------------------------------------------------------------------
// 5. Pagination stability
// ---------------------------------------------------------------------------

/// Walks every page of a saved segment (JSON or CSV), calling `between`
/// with the ids seen so far after each page that has a successor.
fn walk(
    app: &TestApp,
    segment: &str,
    csv: bool,
    mut between: impl FnMut(&[String]),
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("/v1/segments/{segment}/contacts?limit=7&fields=id");
        if csv {
            path.push_str("&format=csv");
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let response = app.get(SEGMENTS_KEY, &path);
        assert_eq!(response.status, 200, "page: {}", response.text());
        let next = if csv {
            let rows = parse_csv(&response.text());
            let skip = usize::from(cursor.is_none());
            seen.extend(rows[skip..].iter().map(|r| r[0].clone()));
            response.header("next-cursor").map(str::to_owned)
        } else {
            let body = response.json();
            seen.extend(item_ids(&body));
            body["next_cursor"].as_str().map(str::to_owned)
        };
        match next {
            Some(next) => {
                between(&seen);
                cursor = Some(next);
            }
            None => return seen,
        }
    }
    panic!("the walk did not end");
}

fn walk_while_contacts_come_and_go(csv: bool) {
    // Arrange: 30 members.
    let app = TestApp::new();
    let tag = cond("tags", "contains", json!("walk"));
    let mut original: Vec<String> = (0..30)
        .map(|i| {
            app.create_contact(&json!({"email": format!("walk{i}@example.jp"), "tags": ["walk"]}))
        })
        .collect();
    original.sort();
    let segment = segment_id(&create_segment(&app, "Walk", &tag, None));
    let mut removed: BTreeSet<String> = BTreeSet::new();
    let mut removed_unseen: BTreeSet<String> = BTreeSet::new();
    let mut added: Vec<String> = Vec::new();
    let mut round = 0;

    // Act: between pages, two new members, one unseen member erased, one
    // seen member erased, and every other round an unseen member untagged.
    let seen = walk(&app, &segment, csv, |seen| {
        round += 1;
        if round % 2 == 0 {
            app.clock.advance(Duration::seconds(1));
        }
        for k in 0..2 {
            added.push(app.create_contact(
                &json!({"email": format!("new{round}-{k}@example.jp"), "tags": ["walk"]}),
            ));
        }
        let unseen: Vec<&String> = original
            .iter()
            .filter(|id| !seen.contains(id) && !removed.contains(*id))
            .collect();
        if let Some(id) = unseen.last().map(|id| (*id).clone()) {
            erase(&app, &id);
            removed.insert(id.clone());
            removed_unseen.insert(id);
        }
        if round % 2 == 1
            && let Some(id) = unseen.first().map(|id| (*id).clone())
            && !removed.contains(&id)
        {
            set_tag(&app, &id, "walk", false);
            removed.insert(id.clone());
            removed_unseen.insert(id);
        }
        if let Some(id) = seen
            .iter()
            .find(|id| original.contains(id) && !removed.contains(*id))
            .cloned()
        {
            erase(&app, &id);
            removed.insert(id);
        }
    });

    // Assert
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    for id in &seen {
        *counts.entry(id).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "duplicates: {duplicates:?}");
    assert!(round >= 4, "several pages were walked ({round})");
    assert!(
        !removed_unseen.is_empty(),
        "members left ahead of the cursor"
    );
    let survivors: Vec<&String> = original
        .iter()
        .filter(|id| !removed.contains(*id))
        .collect();
    for id in &survivors {
        assert_eq!(counts.get(id), Some(&1), "survivor {id} seen once");
    }
    for id in &removed_unseen {
        assert!(!counts.contains_key(id), "{id} left before its page");
    }
    for id in counts.keys() {
        assert!(
            original.contains(id) || added.contains(id),
            "{id} is not a contact of this test"
        );
    }
    let count = app
        .get(SEGMENTS_KEY, &format!("/v1/segments/{segment}/count"))
        .json()["count"]
        .as_i64()
        .expect("count");
    let now = saved_members(&app, &segment);
    assert_eq!(count, now.len() as i64, "count agrees with the pages");
    assert_eq!(now.len(), survivors.len() + added.len());
}

#[test]
fn walking_json_pages_while_contacts_come_and_go_returns_each_survivor_once() {
    walk_while_contacts_come_and_go(false);
}

#[test]
fn walking_csv_pages_while_contacts_come_and_go_returns_each_survivor_once() {
    walk_while_contacts_come_and_go(true);
}

// ---------------------------------------------------------------------------
// 6. Delta sync
// ---------------------------------------------------------------------------

fn changes(app: &TestApp, segment: &str, since: Option<&str>) -> TestResponse {
    let mut path = format!("/v1/segments/{segment}/changes");
    if let Some(since) = since {
        path.push_str(&format!("?since={since}"));
    }
    app.get(SEGMENTS_KEY, &path)
}

/// (joined, left, token) of a successful changes call.
fn delta(app: &TestApp, segment: &str, since: Option<&str>) -> (Vec<String>, Vec<String>, String) {
    let response = changes(app, segment, since);
    assert_eq!(response.status, 200, "changes: {}", response.text());
    let body = response.json();
    let ids = |key: &str| -> Vec<String> {
        let mut ids: Vec<String> = body[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} in {body}"))
            .iter()
            .map(|v| v.as_str().expect("id").to_owned())
            .collect();
        ids.sort();
        ids
    };
    (
        ids("joined"),
        ids("left"),
        body["token"].as_str().expect("token").to_owned(),
    )
}

#[test]
fn changes_report_who_joined_and_who_left_since_a_token() {
    // Arrange
    let app = TestApp::new();
    let mut data = Data::default();
    for label in ["d1", "d2", "d3"] {
        data.add(
            label,
            app.create_contact(&json!({"email": format!("{label}@example.jp"), "tags": ["sync"]})),
        );
    }
    let d4 = data.add("d4", app.create_contact(&json!({"email": "d4@example.jp"})));
    let segment = segment_id(&create_segment(
        &app,
        "Sync",
        &cond("tags", "contains", json!("sync")),
        None,
    ));
    let other = segment_id(&create_segment(
        &app,
        "Other",
        &cond("has_email", "eq", json!(true)),
        None,
    ));
    let labels = |ids: &[String]| data.labels_of(ids);

    // Act and assert: the first call has everyone joining
    let (joined, left, t1) = delta(&app, &segment, None);
    assert_eq!(labels(&joined), ["d1", "d2", "d3"]);
    assert!(left.is_empty());
    let (joined, left, t1b) = delta(&app, &segment, Some(&t1));
    assert!(joined.is_empty() && left.is_empty(), "nothing changed");

    // Act and assert: d2 leaves (tag removed), d4 joins (tag added)
    set_tag(&app, &data.id("d2"), "sync", false);
    set_tag(&app, &d4, "sync", true);
    let first = delta(&app, &segment, Some(&t1));
    let again = delta(&app, &segment, Some(&t1));
    assert_eq!(labels(&first.0), ["d4"], "joined since t1");
    assert_eq!(labels(&first.1), ["d2"], "left since t1");
    assert_eq!(again, first, "the same token gives the same answer");
    let from_b = delta(&app, &segment, Some(&t1b));
    assert_eq!(
        (labels(&from_b.0), labels(&from_b.1)),
        (vec!["d4".to_owned()], vec!["d2".to_owned()])
    );
    let t2 = first.2;
    let (joined, left, _) = delta(&app, &segment, Some(&t2));
    assert!(joined.is_empty() && left.is_empty(), "nothing since t2");

    // Act and assert: d3 leaves and comes back between another consumer's
    // calls: no net change for t2; an erased member leaves.
    set_tag(&app, &data.id("d3"), "sync", false);
    let (_, left_meanwhile, _) = delta(&app, &segment, Some(&t2));
    assert_eq!(labels(&left_meanwhile), ["d3"]);
    set_tag(&app, &data.id("d3"), "sync", true);
    erase(&app, &data.id("d1"));
    let (joined, left, _) = delta(&app, &segment, Some(&t2));
    assert!(joined.is_empty(), "d3 was a member at t2 and is one now");
    assert_eq!(labels(&left), ["d1"]);
    let (joined, left, _) = delta(&app, &segment, Some(&t1));
    assert_eq!(labels(&joined), ["d4"]);
    assert_eq!(labels(&left), ["d1", "d2"]);
    let (joined, left, _) = delta(&app, &segment, None);
    assert_eq!(
        labels(&joined),
        ["d3", "d4"],
        "a new consumer gets everyone"
    );
    assert!(left.is_empty());

    // Act and assert: tokens of another segment, garbage, from the future
    let (_, _, other_token) = delta(&app, &other, None);
    let future = kizuna::http::encode_cursor(&[&segment, "999"]);
    for (case, token) in [
        ("another segment's token", other_token.as_str()),
        ("garbage", "not-a-token!"),
        ("a token from the future", future.as_str()),
        ("empty", ""),
    ] {
        let response = changes(&app, &segment, Some(token));
        let problem = response.assert_problem(422, case);
        assert_eq!(problem["errors"][0]["field"], "since", "case {case}");
    }
}

// ---------------------------------------------------------------------------
// 7. Analytics
// ---------------------------------------------------------------------------

#[test]
fn the_summary_counts_contacts_customers_sales_and_points() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: a1 lead with 100 points; a2 lead from a form; a3 one order
    // 3000 (30 points); a4 orders 2000 and 5000 (20 + 50 points); a5 one
    // order 1000 (10 points) and 50 points pending; a6 a customer erased
    // (points forfeited). 1 point per 100 yen of subtotal.
    let app = TestApp::new();
    let a1 = app.create_contact(&json!({"email": "a1@example.jp"}));
    award(&app, &a1, 100, None, None);
    submit_form(
        &app,
        "lp",
        &json!({"email": "a2@example.jp"}),
        "198.51.100.20",
    );
    let line = |amount: i64| [("A", "a", amount)];
    order(
        &app,
        "A3-1",
        "a3@example.jp",
        "2026-11-01T01:00:00Z",
        &line(3000),
    );
    order(
        &app,
        "A4-1",
        "a4@example.jp",
        "2026-10-01T01:00:00Z",
        &line(2000),
    );
    order(
        &app,
        "A4-2",
        "a4@example.jp",
        "2026-11-01T01:00:00Z",
        &line(5000),
    );
    order(
        &app,
        "A5-1",
        "a5@example.jp",
        "2026-11-10T01:00:00Z",
        &line(1000),
    );
    let a5 = id_by_email(&app, "a5@example.jp");
    award(&app, &a5, 50, Some(app.now() + Duration::days(7)), None);
    order(
        &app,
        "A6-1",
        "a6@example.jp",
        "2026-11-10T01:00:00Z",
        &line(9000),
    );
    erase(&app, &id_by_email(&app, "a6@example.jp"));

    // Act
    let response = app.get(SEGMENTS_KEY, "/v1/analytics/summary");

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    let expected = [
        ("contacts", json!(5)),
        ("leads", json!(2)),
        ("customers", json!(3)),
        ("repeat_customers", json!(1)),
        ("repeat_rate", json!(0.3333)),
        ("orders", json!(4)),
        ("net_sales_minor", json!(11000)),
        ("average_order_value_minor", json!(2750)),
        ("average_spend_per_customer_minor", json!(3666)),
        ("points_available", json!(210)),
        ("points_pending", json!(50)),
        ("points_outstanding", json!(260)),
        ("currency", json!("JPY")),
        ("computed_at", json!(ts(app.now()))),
    ];
    for (key, value) in expected {
        assert_eq!(body[key], value, "{key} in {body}");
    }
}

#[test]
fn the_rfm_grid_has_25_cells_that_add_up_to_the_customers() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: the RFM data set (cells recency × frequency: 5×1 r0 r1,
    // 4×2 r2 r3, 3×3 r4 r5, 2×4 r6 r7, 1×5 r8 r9).
    let app = TestApp::new();
    rfm_data(&app);
    let computed_at = ts(app.now());

    // Act
    let response = app.get(SEGMENTS_KEY, "/v1/analytics/rfm");

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    let cells = body["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 25);
    let mut expected: BTreeMap<(i64, i64), (i64, i64)> = BTreeMap::new();
    expected.insert((5, 1), (2, 19000));
    expected.insert((4, 2), (2, 7000));
    expected.insert((3, 3), (2, 110_000));
    expected.insert((2, 4), (2, 15000));
    expected.insert((1, 5), (2, 3800));
    let mut order_seen = Vec::new();
    let mut total = 0;
    for cell in cells {
        let key = (
            cell["recency"].as_i64().expect("recency"),
            cell["frequency"].as_i64().expect("frequency"),
        );
        order_seen.push(key);
        let (count, spend) = expected.get(&key).copied().unwrap_or((0, 0));
        assert_eq!(cell["count"], count, "cell {key:?}");
        assert_eq!(cell["spend_minor"], spend, "cell {key:?}");
        total += cell["count"].as_i64().expect("count");
    }
    let mut want_order = Vec::new();
    for r in (1..=5).rev() {
        for f in 1..=5 {
            want_order.push((r, f));
        }
    }
    assert_eq!(order_seen, want_order, "recency 5 → 1, frequency 1 → 5");
    assert_eq!(total, 10, "counts add up to the customers");
    assert_eq!(body["customers"], 10);
    assert_eq!(body["spend_minor"], 154_800);
    assert_eq!(body["computed_at"], computed_at);
    let summary = app.get(SEGMENTS_KEY, "/v1/analytics/summary").json();
    assert_eq!(summary["customers"], total);

    // Act and assert: a new customer shows after the cache's max age.
    order(
        &app,
        "LEAD-1",
        "lead@example.jp",
        &ts(app.now()),
        &[("A", "a", 1000)],
    );
    app.clock.advance(Duration::minutes(1));
    let cached = app.get(SEGMENTS_KEY, "/v1/analytics/rfm").json();
    assert_eq!(cached["customers"], 10, "cached for up to the max age");
    assert_eq!(cached["computed_at"], computed_at);
    app.clock.advance(Duration::minutes(10));
    let fresh = app.get(SEGMENTS_KEY, "/v1/analytics/rfm").json();
    assert_eq!(fresh["customers"], 11);
    assert_eq!(fresh["computed_at"], ts(app.now()));
}

#[test]
fn cross_sell_reports_support_confidence_and_lift() {
    // Arrange: five customers (x6's only order was cancelled, x7 erased).
    //   x1: TEA-A + SWEETS-B       x2: TEA-A, then CUP-C
    //   x3: TEA-A, then SWEETS-B   x4: SWEETS-B + CUP-C     x5: TEA-D
    // categories: TEA-* tea, SWEETS-B sweets, CUP-C ware.
    let app = TestApp::new();
    let tea_a = ("TEA-A", "tea", 1000);
    let sweets_b = ("SWEETS-B", "sweets", 500);
    let cup_c = ("CUP-C", "ware", 3000);
    let tea_d = ("TEA-D", "tea", 1500);
    let at = "2026-11-01T01:00:00Z";
    order(&app, "X1-1", "x1@example.jp", at, &[tea_a, sweets_b]);
    order(&app, "X2-1", "x2@example.jp", at, &[tea_a]);
    order(&app, "X2-2", "x2@example.jp", at, &[cup_c]);
    order(&app, "X3-1", "x3@example.jp", at, &[tea_a]);
    order(&app, "X3-2", "x3@example.jp", at, &[sweets_b]);
    order(&app, "X4-1", "x4@example.jp", at, &[sweets_b, cup_c]);
    order(&app, "X5-1", "x5@example.jp", at, &[tea_d]);
    cancelled_order(&app, "X6-1", "x6@example.jp", at, &[tea_a, cup_c]);
    order(&app, "X7-1", "x7@example.jp", at, &[tea_a, sweets_b]);
    erase(&app, &id_by_email(&app, "x7@example.jp"));

    // Act
    let by_sku = app.get(SEGMENTS_KEY, "/v1/analytics/cross-sell?sku=TEA-A");
    let by_category = app.get(SEGMENTS_KEY, "/v1/analytics/cross-sell?category=tea");
    let limited = app.get(SEGMENTS_KEY, "/v1/analytics/cross-sell?sku=TEA-A&limit=1");
    let unknown = app.get(SEGMENTS_KEY, "/v1/analytics/cross-sell?sku=NOPE");
    let neither = app.get(SEGMENTS_KEY, "/v1/analytics/cross-sell");
    let both = app.get(
        SEGMENTS_KEY,
        "/v1/analytics/cross-sell?sku=TEA-A&category=tea",
    );

    // Assert: N = 5 customers.
    // TEA-A: |A| = 3 (x1 x2 x3). SWEETS-B: both 2 (x1 x3), |B| = 3 (x1 x3
    // x4): support 2/5, confidence 2/3, lift 2·5/(3·3). CUP-C: both 1, |B| 2:
    // support 1/5, confidence 1/3, lift 5/6.
    assert_eq!(by_sku.status, 200, "{}", by_sku.text());
    let body = by_sku.json();
    assert_eq!(body["base"], json!({"sku": "TEA-A", "customers": 3}));
    assert_eq!(body["customers"], 5);
    assert_eq!(
        body["items"],
        json!([
            {"sku": "SWEETS-B", "customers_both": 2, "customers_item": 3,
             "support": 0.4, "confidence": 0.6667, "lift": 1.1111},
            {"sku": "CUP-C", "customers_both": 1, "customers_item": 2,
             "support": 0.2, "confidence": 0.3333, "lift": 0.8333}
        ])
    );
    assert!(body["computed_at"].is_string());
    // tea: |A| = 4 (x1 x2 x3 x5). sweets: both 2, |B| 3: support 0.4,
    // confidence 0.5, lift 10/12. ware: both 1, |B| 2: 0.2, 0.25, 5/8.
    assert_eq!(by_category.status, 200, "{}", by_category.text());
    let body = by_category.json();
    assert_eq!(body["base"], json!({"category": "tea", "customers": 4}));
    assert_eq!(
        body["items"],
        json!([
            {"category": "sweets", "customers_both": 2, "customers_item": 3,
             "support": 0.4, "confidence": 0.5, "lift": 0.8333},
            {"category": "ware", "customers_both": 1, "customers_item": 2,
             "support": 0.2, "confidence": 0.25, "lift": 0.625}
        ])
    );
    let limited = limited.json();
    assert_eq!(limited["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(limited["items"][0]["sku"], "SWEETS-B");
    assert_eq!(unknown.status, 200);
    assert_eq!(unknown.json()["base"]["customers"], 0);
    assert_eq!(unknown.json()["items"], json!([]));
    let problem = neither.assert_problem(422, "neither sku nor category");
    assert_eq!(problem["errors"][0]["field"], "sku");
    let problem = both.assert_problem(422, "both sku and category");
    assert_eq!(problem["errors"][0]["field"], "category");
}

// ---------------------------------------------------------------------------
// 8. Bad input and auth
// ---------------------------------------------------------------------------

#[test]
fn bad_definitions_get_a_pointer_and_store_nothing() {
    // Arrange
    let app = TestApp::new();
    app.create_contact(&json!({"email": "x@example.jp", "tags": ["gold"]}));
    let existing = segment_id(&create_segment(
        &app,
        "Existing",
        &cond("tags", "contains", json!("gold")),
        None,
    ));
    let ok = cond("order_count", "gte", json!(1));
    let mut deep = ok.clone();
    for _ in 0..6 {
        deep = json!({ "not": deep });
    }
    let hundred_and_one: Vec<Json> = (0..101).map(|_| ok.clone()).collect();
    let fifty: Vec<Json> = (0..50).map(|_| ok.clone()).collect();
    let fifty_one: Vec<Json> = (0..51).map(|_| ok.clone()).collect();
    let definitions: Vec<(&str, Json, &str)> = vec![
        (
            "unknown field",
            json!({"all": [cond("password", "eq", json!("x"))]}),
            "/definition/all/0/field",
        ),
        (
            "wrong value type",
            cond("order_count", "gte", json!("3")),
            "/definition/value",
        ),
        (
            "wrong value type in a list",
            cond("tags", "in", json!("gold")),
            "/definition/value",
        ),
        (
            "value out of range",
            cond("birthday_month", "eq", json!(13)),
            "/definition/value",
        ),
        (
            "between reversed",
            cond("order_count", "between", json!([5, 1])),
            "/definition/value",
        ),
        (
            "purchased with both sku and category",
            cond("purchased", "eq", json!({"sku": "A", "category": "a"})),
            "/definition/value",
        ),
        (
            "bad operator for the field",
            cond("tags", "gt", json!(1)),
            "/definition/op",
        ),
        (
            "bad operator for a bool",
            cond("has_email", "neq", json!(true)),
            "/definition/op",
        ),
        (
            "unknown operator",
            cond("order_count", "like", json!(1)),
            "/definition/op",
        ),
        (
            "too deep (7 levels)",
            deep,
            "/definition/not/not/not/not/not/not",
        ),
        (
            "101 conditions in one group",
            json!({ "all": hundred_and_one }),
            "/definition/all",
        ),
        (
            "101 conditions in all",
            json!({"all": [{"any": fifty}, {"any": fifty_one}]}),
            "/definition/all/1/any/50",
        ),
        (
            "unknown member of a condition",
            json!({"field": "source", "op": "eq", "value": "x", "extra": 1}),
            "/definition/extra",
        ),
        ("empty group", json!({"all": []}), "/definition/all"),
        (
            "unknown built-in",
            json!({"segment": "everyone"}),
            "/definition/segment",
        ),
        ("not an object", json!([ok]), "/definition"),
        ("null", Json::Null, "/definition"),
    ];
    let mut bodies: Vec<(String, Json, &str)> = Vec::new();
    for (case, definition, pointer) in &definitions {
        bodies.push((
            (*case).to_owned(),
            json!({ "definition": definition }),
            *pointer,
        ));
    }
    bodies.push((
        "unknown member in the body".to_owned(),
        json!({"definition": ok, "sql": "1=1"}),
        "/sql",
    ));
    bodies.push(("missing definition".to_owned(), json!({}), "/definition"));
    let before = all_table_counts(&app);
    let stored_before = app
        .get(SEGMENTS_KEY, &format!("/v1/segments/{existing}"))
        .json();

    // Act
    let mut failures = Vec::new();
    for (case, body, pointer) in &bodies {
        let mut named = body.clone();
        let mut requests = vec![(
            "preview",
            "POST",
            "/v1/segments/preview".to_owned(),
            body.clone(),
        )];
        if named.get("definition").is_some() || *pointer == "/definition" {
            named["name"] = json!(format!("bad {case}"));
            requests.push(("create", "POST", "/v1/segments".to_owned(), named.clone()));
            requests.push((
                "replace",
                "PUT",
                format!("/v1/segments/{existing}"),
                named.clone(),
            ));
        }
        for (what, method, path, body) in requests {
            let response = app.send_json(method, SEGMENTS_KEY, &path, &body);
            let field = if response.status == 422 {
                response.json()["errors"][0]["field"].clone()
            } else {
                Json::Null
            };
            if response.status != 422 || field != *pointer {
                failures.push(format!(
                    "{what} {case}: status {}, field {field} (want {pointer}): {}",
                    response.status,
                    response.text()
                ));
            }
        }
    }

    // Assert
    assert!(
        failures.is_empty(),
        "{} requests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(all_table_counts(&app), before, "nothing stored");
    assert_eq!(
        app.get(SEGMENTS_KEY, &format!("/v1/segments/{existing}"))
            .json(),
        stored_before,
        "the segment is unchanged"
    );
}

#[test]
fn an_invalid_purpose_is_pointed_at_like_every_other_body_member() {
    // Arrange
    let app = TestApp::new();
    let definition = cond("has_email", "eq", json!(true));
    // The first request creates the schema, so counts compare like with like.
    assert_eq!(app.get(SEGMENTS_KEY, "/v1/segments").status, 200);
    let before = all_table_counts(&app);

    // Act
    let preview = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments/preview",
        &json!({"definition": definition, "purpose": "sms"}),
    );
    let create = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments",
        &json!({"name": "Bad purpose", "definition": definition, "purpose": "sms"}),
    );

    // Assert: body members are named by JSON pointer (`/definition/...`,
    // `/sql`, `/name`), the purpose too, in both endpoints.
    let create = create.assert_problem(422, "create with purpose sms");
    assert_eq!(create["errors"][0]["field"], "/purpose", "create");
    let preview = preview.assert_problem(422, "preview with purpose sms");
    assert_eq!(preview["errors"][0]["field"], "/purpose", "preview");
    assert_eq!(all_table_counts(&app), before, "nothing stored");
}

#[test]
fn bad_queries_and_bodies_get_4xx_and_store_nothing() {
    // Arrange
    let app = TestApp::new();
    app.create_contact(&json!({"email": "x@example.jp", "tags": ["gold"]}));
    let segment = segment_id(&create_segment(
        &app,
        "Gold",
        &cond("tags", "contains", json!("gold")),
        None,
    ));
    let before = all_table_counts(&app);
    let members = |query: &str| {
        app.get(
            SEGMENTS_KEY,
            &format!("/v1/segments/{segment}/contacts?{query}"),
        )
    };
    let not_an_id = kizuna::http::encode_cursor(&["not-a-contact-id"]);
    let two_parts = kizuna::http::encode_cursor(&["0190f5d2-7c1e-7a4b-9f00-123456789abc", "x"]);
    let queries: Vec<(&str, String, &str)> = vec![
        ("malformed cursor", "cursor=%%%".to_owned(), "cursor"),
        ("cursor not base64", "cursor=!!!".to_owned(), "cursor"),
        ("cursor not an id", format!("cursor={not_an_id}"), "cursor"),
        (
            "cursor of two parts",
            format!("cursor={two_parts}"),
            "cursor",
        ),
        ("limit 0", "limit=0".to_owned(), "limit"),
        ("limit 201", "limit=201".to_owned(), "limit"),
        ("limit not a number", "limit=ten".to_owned(), "limit"),
        (
            "csv limit 10001",
            "format=csv&limit=10001".to_owned(),
            "limit",
        ),
        ("unknown field", "fields=password".to_owned(), "fields"),
        ("unknown format", "format=pdf".to_owned(), "format"),
    ];

    // Act and assert
    for (case, query, field) in &queries {
        let problem = members(query).assert_problem(422, case);
        assert_eq!(problem["errors"][0]["field"], *field, "case {case}");
    }
    let preview_limit = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments/preview?limit=0",
        &json!({"definition": cond("tags", "contains", json!("gold"))}),
    );
    let problem = preview_limit.assert_problem(422, "preview limit 0");
    assert_eq!(problem["errors"][0]["field"], "limit");
    let malformed = app.request(
        "POST",
        "/v1/segments/preview",
        &[
            ("authorization", &format!("Bearer {SEGMENTS_KEY}")),
            ("content-type", "application/json"),
        ],
        "{\"definition\": ",
    );
    malformed.assert_problem(400, "malformed JSON");
    let not_json = app.request(
        "POST",
        "/v1/segments",
        &[
            ("authorization", &format!("Bearer {SEGMENTS_KEY}")),
            ("content-type", "text/plain"),
        ],
        "name=x",
    );
    not_json.assert_problem(415, "not JSON");
    let no_name = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments",
        &json!({"definition": cond("tags", "contains", json!("gold"))}),
    );
    let problem = no_name.assert_problem(422, "no name");
    assert_eq!(problem["errors"][0]["field"], "/name");
    assert_eq!(all_table_counts(&app), before, "nothing stored");
}

#[test]
fn segments_and_analytics_need_a_key_with_the_segments_scope() {
    // Arrange
    let app = TestApp::new();
    let segment = segment_id(&create_segment(
        &app,
        "Any",
        &cond("has_email", "eq", json!(true)),
        None,
    ));
    let before = all_table_counts(&app);
    let body = json!({"name": "New", "definition": cond("has_email", "eq", json!(true))});
    let requests: Vec<(&str, String, Option<Json>)> = vec![
        ("GET", "/v1/segments".to_owned(), None),
        ("POST", "/v1/segments".to_owned(), Some(body.clone())),
        (
            "POST",
            "/v1/segments/preview".to_owned(),
            Some(body.clone()),
        ),
        ("GET", format!("/v1/segments/{segment}"), None),
        ("PUT", format!("/v1/segments/{segment}"), Some(body.clone())),
        ("DELETE", format!("/v1/segments/{segment}"), None),
        ("GET", format!("/v1/segments/{segment}/contacts"), None),
        ("GET", format!("/v1/segments/{segment}/count"), None),
        ("GET", format!("/v1/segments/{segment}/changes"), None),
        ("GET", "/v1/analytics/summary".to_owned(), None),
        ("GET", "/v1/analytics/rfm".to_owned(), None),
        ("GET", "/v1/analytics/cross-sell?sku=A".to_owned(), None),
    ];

    // Act and assert
    for (method, path, body) in &requests {
        let text = body.as_ref().map(Json::to_string).unwrap_or_default();
        let case = format!("{method} {path}");
        let anonymous = app.request(
            method,
            path,
            &[("content-type", "application/json")],
            text.clone(),
        );
        anonymous.assert_problem(401, &format!("{case} without a key"));
        let wrong_key = format!("Bearer {WRITE_KEY}");
        let forbidden = app.request(
            method,
            path,
            &[
                ("authorization", &wrong_key),
                ("content-type", "application/json"),
            ],
            text.clone(),
        );
        forbidden.assert_problem(403, &format!("{case} with a contacts key"));
        let bad_key = app.request(
            method,
            path,
            &[
                ("authorization", "Bearer not-a-key"),
                ("content-type", "application/json"),
            ],
            text,
        );
        bad_key.assert_problem(401, &format!("{case} with an unknown key"));
    }
    assert_eq!(all_table_counts(&app), before, "nothing stored");
}

#[test]
fn out_of_range_dates_and_day_counts_get_a_pointer_and_store_nothing() {
    // Arrange
    let app = TestApp::new();
    app.create_contact(&json!({"email": "x@example.jp", "tags": ["gold"]}));
    let existing = segment_id(&create_segment(
        &app,
        "Existing",
        &cond("tags", "contains", json!("gold")),
        None,
    ));
    let ok = cond("order_count", "gte", json!(1));
    let trillion = 1_000_000_000_000_i64;
    let cases: Vec<(&str, Json, &str)> = vec![
        (
            "a date in year -9999",
            cond("created_at", "before", json!("-9999-01-01")),
            "/definition/value",
        ),
        (
            "a date in year 0",
            cond("created_at", "after", json!("0000-01-01")),
            "/definition/value",
        ),
        (
            "midnight of 0001-01-01 in Tokyo is still year 0 in UTC",
            cond("first_order_at", "before", json!("0001-01-01")),
            "/definition/value",
        ),
        (
            "a five-digit year",
            cond("created_at", "before", json!("10000-01-01")),
            "/definition/value",
        ),
        (
            "between from year -1",
            json!({"all": [ok, cond("last_order_at", "between", json!(["-0001-06-01", "2026-01-01"]))]}),
            "/definition/all/1/value",
        ),
        (
            "an offset that moves a timestamp into year 0",
            cond("created_at", "after", json!("0001-01-01T00:00:00+23:59")),
            "/definition/value",
        ),
        (
            "an offset that moves a timestamp past year 9999",
            cond("created_at", "before", json!("9999-12-31T23:59:59-23:59")),
            "/definition/value",
        ),
        (
            "before the last nanosecond of year 9999",
            cond(
                "created_at",
                "before",
                json!("9999-12-31T23:59:59.999999999Z"),
            ),
            "/definition/value",
        ),
        (
            "between from the last nanosecond of year 9999",
            cond(
                "last_order_at",
                "between",
                json!([
                    "9999-12-31T23:59:59.9999995Z",
                    "9999-12-31T23:59:59.9999999Z"
                ]),
            ),
            "/definition/value",
        ),
        (
            "within_last_days 10^12",
            cond("created_at", "within_last_days", json!(trillion)),
            "/definition/value",
        ),
        (
            "within_last_days -1",
            cond("created_at", "within_last_days", json!(-1)),
            "/definition/value",
        ),
        (
            "within_last_days 0",
            cond("created_at", "within_last_days", json!(0)),
            "/definition/value",
        ),
        (
            "within_last_days i64::MAX",
            cond("last_order_at", "within_last_days", json!(i64::MAX)),
            "/definition/value",
        ),
        (
            "within_last_days i64::MIN",
            cond("last_order_at", "within_last_days", json!(i64::MIN)),
            "/definition/value",
        ),
        (
            "within_last_days u64::MAX",
            cond("first_order_at", "within_last_days", json!(u64::MAX)),
            "/definition/value",
        ),
        (
            "within_last_days 1e12 as a float",
            cond("created_at", "within_last_days", json!(1e12)),
            "/definition/value",
        ),
        (
            "days_since_last_order above 10^12",
            cond("days_since_last_order", "gt", json!(trillion)),
            "/definition/value",
        ),
        (
            "days_since_last_order -1",
            cond("days_since_last_order", "eq", json!(-1)),
            "/definition/value",
        ),
        (
            "days_since_last_order between i64::MIN and i64::MAX",
            cond(
                "days_since_last_order",
                "between",
                json!([i64::MIN, i64::MAX]),
            ),
            "/definition/value",
        ),
        (
            "days_since_last_order in a list with i64::MIN",
            cond("days_since_last_order", "in", json!([1, i64::MIN])),
            "/definition/value",
        ),
        (
            "purchased within 10^12 days",
            cond(
                "purchased",
                "eq",
                json!({"sku": "A", "within_days": trillion}),
            ),
            "/definition/value",
        ),
        (
            "submitted_form within -1 days",
            cond(
                "submitted_form",
                "eq",
                json!({"form_id": "f", "within_days": -1}),
            ),
            "/definition/value",
        ),
        (
            "points expiring within 10^12 days",
            cond("points_expiring_within_days", "lte", json!(trillion)),
            "/definition/value",
        ),
        (
            "birthday_month 0",
            cond("birthday_month", "eq", json!(0)),
            "/definition/value",
        ),
        (
            "birthday_month -1 in a list",
            cond("birthday_month", "in", json!([1, -1])),
            "/definition/value",
        ),
        (
            "birthday_month between 1 and i64::MAX",
            cond("birthday_month", "between", json!([1, i64::MAX])),
            "/definition/value",
        ),
    ];
    let before = all_table_counts(&app);
    let stored_before = app
        .get(SEGMENTS_KEY, &format!("/v1/segments/{existing}"))
        .json();

    for (case, definition, pointer) in &cases {
        let requests = [
            (
                "preview",
                "POST",
                "/v1/segments/preview".to_owned(),
                json!({ "definition": definition }),
            ),
            (
                "create",
                "POST",
                "/v1/segments".to_owned(),
                json!({"name": format!("bad {case}"), "definition": definition}),
            ),
            (
                "replace",
                "PUT",
                format!("/v1/segments/{existing}"),
                json!({"name": format!("bad {case}"), "definition": definition}),
            ),
        ];
        for (what, method, path, body) in requests {
            // Act
            let response = app.send_json(method, SEGMENTS_KEY, &path, &body);

            // Assert
            let named = format!("{what} {case}");
            let problem = response.assert_problem(422, &named);
            assert_eq!(problem["errors"][0]["field"], json!(pointer), "{named}");
            assert_eq!(all_table_counts(&app), before, "{named}: nothing stored");
        }
    }
    assert_eq!(
        app.get(SEGMENTS_KEY, &format!("/v1/segments/{existing}"))
            .json(),
        stored_before,
        "the segment is unchanged"
    );
}

#[test]
fn personal_member_fields_need_the_segments_export_scope() {
    // Arrange
    let app = TestApp::new();
    let (data, segment) = export_data(&app);
    let members = data.ids_of("comma formula plain phone");
    let path = |query: &str| format!("/v1/segments/{segment}/contacts?{query}");
    let definition = json!({"definition": cond("tags", "contains", json!("export"))});
    let preview = |key: &str, query: &str| {
        app.send_json(
            "POST",
            key,
            &format!("/v1/segments/preview{query}"),
            &definition,
        )
    };
    let read_only = |path: &str, accept: Option<&str>| {
        let auth = format!("Bearer {SEGMENTS_READ_KEY}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(accept) = accept {
            headers.push(("accept", accept));
        }
        app.request("GET", path, &headers, "")
    };
    let personal = [
        "@example.jp",
        "+8190",
        "090-5555",
        "Plain",
        "Sato",
        "token=",
    ];
    let before = all_table_counts(&app);

    // Act: a segments:read key asking for personal fields
    let refused = [
        ("JSON, default fields", read_only(&path(""), None)),
        ("JSON, email", read_only(&path("fields=id,email"), None)),
        ("JSON, phone", read_only(&path("fields=phone"), None)),
        ("JSON, name", read_only(&path("fields=tags,name"), None)),
        ("CSV, default fields", read_only(&path("format=csv"), None)),
        (
            "CSV by Accept, email",
            read_only(&path("fields=id,email"), Some("text/csv")),
        ),
        ("preview, default fields", preview(SEGMENTS_READ_KEY, "")),
        (
            "preview, name",
            preview(SEGMENTS_READ_KEY, "?fields=id,name"),
        ),
        (
            "JSON, kana",
            read_only(&path("fields=family_name_kana"), None),
        ),
        (
            "JSON, address",
            read_only(&path("fields=postal_code,address"), None),
        ),
        (
            "JSON, an attribute",
            read_only(&path("fields=attributes.plan"), None),
        ),
        (
            "JSON, attributes",
            read_only(&path("fields=attributes"), None),
        ),
        (
            "JSON, unsubscribe links",
            read_only(&path("fields=unsubscribe_url"), None),
        ),
        (
            "changes, email",
            read_only(
                &format!("/v1/segments/{segment}/changes?fields=email"),
                None,
            ),
        ),
    ];

    // Assert: 403 naming segments:export, no personal data, nothing stored
    for (case, response) in &refused {
        let problem = response.assert_problem(403, case);
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains("`segments:export`"),
            "case {case}: {detail}"
        );
        for text in personal {
            assert!(!response.text().contains(text), "case {case} shows {text}");
        }
    }
    assert_eq!(all_table_counts(&app), before, "nothing stored");

    // Act: what segments:read still gives
    let ids = read_only(&path("fields=id,tags,counters,points"), None);
    let csv = read_only(&path("format=csv&fields=id,tags"), None);
    let previewed = preview(SEGMENTS_READ_KEY, "?fields=id,counters");
    let count = read_only(&format!("/v1/segments/{segment}/count"), None);
    let changes = read_only(&format!("/v1/segments/{segment}/changes"), None);
    let summary = read_only("/v1/analytics/summary", None);

    // Assert
    for (case, response) in [
        ("ids", &ids),
        ("CSV of ids", &csv),
        ("preview of ids", &previewed),
        ("count", &count),
        ("changes", &changes),
        ("summary", &summary),
    ] {
        assert_eq!(response.status, 200, "{case}: {}", response.text());
        for text in personal {
            assert!(!response.text().contains(text), "{case} shows {text}");
        }
    }
    assert_eq!(item_ids(&ids.json()), members);
    assert_eq!(item_ids(&previewed.json()), members);
    assert!(csv.text().starts_with("id,tags\r\n"), "{}", csv.text());
    assert_eq!(count.json()["count"], 4);
    let mut joined: Vec<String> = changes.json()["joined"]
        .as_array()
        .expect("joined")
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect();
    joined.sort();
    assert_eq!(joined, members);

    // Act and assert: segments:export and `*` keys get personal fields
    for key in [SEGMENTS_KEY, ADMIN_KEY] {
        let json = app.get(key, &path(""));
        assert_eq!(json.status, 200, "{key}: {}", json.text());
        let json = json.json();
        let plain = json["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|m| m["id"] == data.id("plain"))
            .expect("plain")
            .clone();
        assert_eq!(plain["email"], "plain@example.jp", "{key}");
        assert_eq!(plain["name"], "Plain", "{key}");
        let csv = app.get(key, &path("format=csv&fields=id,phone"));
        assert_eq!(csv.status, 200, "{key}: {}", csv.text());
        assert!(
            csv.text().contains(",090-5555-6666\r\n"),
            "{key}: {}",
            csv.text()
        );
        let previewed = preview(key, "?fields=email");
        assert_eq!(previewed.status, 200, "{key}: {}", previewed.text());
        assert!(previewed.text().contains("plain@example.jp"), "{key}");
    }
}

// ---------------------------------------------------------------------------
// Built-in segments under the condition cap
// ---------------------------------------------------------------------------

#[test]
fn built_in_segments_count_towards_the_hundred_condition_cap() {
    // Arrange: a built-in counts as the predicates it stands for: `vip`
    // (an order, and 12-month spend) and `new_customers` (an order, and
    // a first order within 30 days) two each, the others one each.
    let app = TestApp::new();
    app.create_contact(&json!({"email": "cap@example.jp"}));
    let ok = cond("order_count", "gte", json!(1));
    let builtins = |name: &str, n: usize| vec![json!({ "segment": name }); n];
    let mut conditions_then_vip = vec![ok.clone(); 99];
    conditions_then_vip.push(json!({"segment": "vip"}));
    let mut hundred_builtins = builtins("repeat", 99);
    hundred_builtins.push(json!({"segment": "dormant"}));
    let too_many: Vec<(&str, Json, &str)> = vec![
        (
            "101 built-ins over two groups",
            json!({"all": [{"any": builtins("prospects", 50)}, {"any": builtins("prospects", 51)}]}),
            "/definition/all/1/any/50",
        ),
        (
            "51 vip",
            json!({ "any": builtins("vip", 51) }),
            "/definition/any/50",
        ),
        (
            "51 new_customers, nested",
            json!({"not": {"any": builtins("new_customers", 51)}}),
            "/definition/not/any/50",
        ),
        (
            "99 conditions and vip",
            json!({ "all": conditions_then_vip }),
            "/definition/all/99",
        ),
        (
            "a condition and 100 built-ins",
            json!({"any": [{"all": [ok.clone()]}, {"any": hundred_builtins}]}),
            "/definition/any/1/any/99",
        ),
    ];
    let before = all_table_counts(&app);

    for (case, definition, pointer) in &too_many {
        for (what, path, body) in [
            (
                "preview",
                "/v1/segments/preview",
                json!({ "definition": definition }),
            ),
            (
                "create",
                "/v1/segments",
                json!({"name": format!("cap {case}"), "definition": definition}),
            ),
        ] {
            // Act
            let response = app.send_json("POST", SEGMENTS_KEY, path, &body);

            // Assert
            let problem = response.assert_problem(422, &format!("{what} {case}"));
            assert_eq!(
                problem["errors"][0]["field"], *pointer,
                "{what} {case}: {problem}"
            );
        }
    }
    assert_eq!(all_table_counts(&app), before, "nothing stored");

    // Act: exactly 100 (98 conditions and vip) is allowed
    let mut at_the_cap = vec![ok.clone(); 98];
    at_the_cap.push(json!({"segment": "vip"}));
    let response = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments/preview?fields=id",
        &json!({"definition": {"all": at_the_cap}}),
    );

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn changes_are_listed_a_page_at_a_time_without_evaluating_again() {
    // Arrange: five members.
    let app = TestApp::new();
    for n in 0..5 {
        app.create_contact(&json!({"email": format!("page{n}@example.jp"), "tags": ["paged"]}));
    }
    let segment = segment_id(&create_segment(
        &app,
        "Paged",
        &cond("tags", "contains", json!("paged")),
        None,
    ));

    // Act: the first sync, two ids a page; a member added meanwhile.
    let first = app.get(
        SEGMENTS_KEY,
        &format!("/v1/segments/{segment}/changes?limit=2"),
    );
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    let token = first["token"].as_str().expect("token").to_owned();
    let mut joined: Vec<String> = first["joined"]
        .as_array()
        .expect("joined")
        .iter()
        .map(|v| v.as_str().expect("id").to_owned())
        .collect();
    app.create_contact(&json!({"email": "late@example.jp", "tags": ["paged"]}));
    let mut cursor = first["next_cursor"].as_str().map(str::to_owned);
    let mut pages = 1;
    while let Some(c) = cursor {
        let page = app.get(
            SEGMENTS_KEY,
            &format!("/v1/segments/{segment}/changes?limit=2&cursor={c}"),
        );
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        assert_eq!(
            page["token"],
            token.as_str(),
            "every page names the same version"
        );
        joined.extend(
            page["joined"]
                .as_array()
                .expect("joined")
                .iter()
                .map(|v| v.as_str().expect("id").to_owned()),
        );
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        pages += 1;
    }

    // Assert: the five of the sync, in three pages; the late one is the
    // next sync's.
    assert_eq!(pages, 3);
    joined.sort();
    let mut five = app
        .db()
        .prepare("SELECT id FROM contacts WHERE email LIKE 'page%' ORDER BY id")
        .expect("query")
        .query_map([], |r| r.get::<_, String>(0))
        .expect("rows")
        .collect::<Result<Vec<_>, _>>()
        .expect("ids");
    five.sort();
    assert_eq!(joined, five);
    let (later, left, _) = delta(&app, &segment, Some(&token));
    assert_eq!(later.len(), 1);
    assert!(left.is_empty());
    for (case, query) in [
        ("limit zero", "?limit=0".to_owned()),
        ("limit too large", "?limit=10001".to_owned()),
        ("unknown parameter", "?after=x".to_owned()),
        ("since and cursor", format!("?since={token}&cursor={token}")),
        ("a token as cursor", format!("?cursor={token}")),
    ] {
        app.get(
            SEGMENTS_KEY,
            &format!("/v1/segments/{segment}/changes{query}"),
        )
        .assert_problem(422, case);
    }
}

/// The scores written in batches are `NTILE(5)`'s, computed here over
/// the same file in one statement: thousands of customers (several
/// batches), uneven quintiles and ties included; churn risk too.
#[test]
fn rfm_written_in_batches_equals_ntile_over_the_whole_base() {
    if skip_under_spin("generates the shop straight into the database file") {
        return;
    }
    // Arrange: a generated shop of 9,001 contacts, in a file migrated
    // before the app opens it.
    let app = TestApp::new();
    let db = kizuna_tests::stores::RusqliteDb::open(&app.database_path()).expect("a file");
    futures::executor::block_on(kizuna::db::prepare(&db)).expect("migrated");
    drop(db);
    let spec = kizuna_tests::datagen::Spec {
        contacts: 9_001,
        orders: 24_000,
        seed: 7,
        now: app.now(),
    };
    kizuna_tests::datagen::generate(&app.database_path(), &spec).expect("a generated shop");

    // Act
    let grid = app.get(ADMIN_KEY, "/v1/analytics/rfm");
    assert_eq!(grid.status, 200, "{}", grid.text());

    // Assert: the current computation's rows are NTILE's, and nothing
    // of another computation is left.
    let computed_at = grid.json()["computed_at"]
        .as_str()
        .expect("computed_at")
        .to_owned();
    let expected = "
        WITH scored AS (
            SELECT id, order_count, last_order_at,
                   NTILE(5) OVER (ORDER BY last_order_at, id) AS recency,
                   NTILE(5) OVER (ORDER BY order_count, id) AS frequency,
                   NTILE(5) OVER (ORDER BY total_spent_minor, id) AS monetary
            FROM contacts WHERE erased_at IS NULL AND order_count > 0
        ),
        gaps AS (
            SELECT contact_id, julianday(placed_at)
                   - julianday(LAG(placed_at) OVER (PARTITION BY contact_id ORDER BY placed_at)) AS gap
            FROM orders
            WHERE contact_id IS NOT NULL AND paid = 1 AND cancelled = 0 AND status <> 'refunded'
        ),
        ranked AS (
            SELECT contact_id, gap, ROW_NUMBER() OVER (PARTITION BY contact_id ORDER BY gap) AS k,
                   COUNT(*) OVER (PARTITION BY contact_id) AS n
            FROM gaps WHERE gap IS NOT NULL
        ),
        medians AS (
            SELECT contact_id, AVG(gap) AS median_gap FROM ranked
            WHERE k IN ((n + 1) / 2, (n + 2) / 2) GROUP BY contact_id
        )
        SELECT s.id, s.recency, s.frequency, s.monetary,
               CASE
                   WHEN s.order_count < 2 OR m.median_gap IS NULL THEN 'none'
                   WHEN julianday(?1) - julianday(s.last_order_at) > 2 * m.median_gap THEN 'high'
                   WHEN julianday(?1) - julianday(s.last_order_at) > m.median_gap THEN 'medium'
                   ELSE 'low'
               END
        FROM scored s LEFT JOIN medians m ON m.contact_id = s.id
        ORDER BY s.id";
    type Score = (String, i64, i64, i64, String);
    let read = |sql: &str, param: &str| -> Vec<Score> {
        let db = app.db();
        let mut statement = db.prepare(sql).expect(sql);
        statement
            .query_map([param], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("scores")
    };
    let want = read(expected, &computed_at);
    let got = read(
        "SELECT contact_id, recency, frequency, monetary, churn_risk FROM rfm_scores
         WHERE computed_at = ?1 ORDER BY contact_id",
        &computed_at,
    );
    assert!(
        want.len() > 4_000,
        "several batches: {} customers",
        want.len()
    );
    assert_eq!(got.len(), want.len());
    let differing: Vec<_> = got
        .iter()
        .zip(&want)
        .filter(|(g, w)| g != w)
        .take(5)
        .collect();
    assert!(differing.is_empty(), "{differing:?}");
    assert_eq!(
        app.count("SELECT count(*) FROM rfm_scores"),
        want.len() as i64,
        "only the current computation is kept"
    );

    // Act: eleven minutes later the scores are stale and computed again.
    app.clock.advance(Duration::minutes(11));
    let again = app.get(ADMIN_KEY, "/v1/analytics/rfm");

    // Assert: the new computation replaced the old one.
    assert_eq!(again.status, 200);
    let recomputed_at = again.json()["computed_at"]
        .as_str()
        .expect("computed_at")
        .to_owned();
    assert_ne!(recomputed_at, computed_at);
    assert_eq!(
        app.count("SELECT count(DISTINCT computed_at) FROM rfm_scores"),
        1,
        "the previous computation was deleted"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM rfm_scores"),
        want.len() as i64
    );
}

// ---------------------------------------------------------------------------
// Exports for a mail tool, a postal mailing and Excel (issue 10, item 13)
// ---------------------------------------------------------------------------

/// A member with every profile field, one with a foreign phone and a
/// formula for a name, and one outside the segment; returns (data,
/// segment id) of a segment named `name`.
fn mailing_data(app: &TestApp, name: &str) -> (Data, String) {
    let mut data = Data::default();
    data.add(
        "hanako",
        app.create_contact(&json!({
            "email": "hanako@example.jp", "phone": "090-1234-5678",
            "family_name": "山田", "given_name": "花子",
            "family_name_kana": "ヤマダ", "given_name_kana": "ハナコ",
            "postal_code": "150-0001", "address": "東京都渋谷区神宮前1-2-3",
            "attributes": {"plan": "gold", "size": "M", "visits": "3"},
            "tags": ["mailing"]
        })),
    );
    data.add(
        "abroad",
        app.create_contact(&json!({
            "email": "abroad@example.com", "phone": "+1 415 555 2671",
            "name": "=cmd|' /C calc'!A0", "tags": ["mailing"]
        })),
    );
    data.add(
        "out",
        app.create_contact(&json!({"email": "out@example.jp", "family_name": "外"})),
    );
    let segment = segment_id(&create_segment(
        app,
        name,
        &cond("tags", "contains", json!("mailing")),
        None,
    ));
    (data, segment)
}

#[test]
fn members_export_names_kana_address_attributes_and_unsubscribe_links() {
    // Arrange
    let app = TestApp::new();
    let (data, segment) = mailing_data(&app, "Mailing");
    let path = |query: &str| format!("/v1/segments/{segment}/contacts?{query}");
    let fields = "fields=family_name,given_name,family_name_kana,given_name_kana,\
                  postal_code,address,attributes.plan,attributes.visits,attributes.none,unsubscribe_url";
    let before = all_table_counts(&app);

    // Act
    let json = app.get(SEGMENTS_KEY, &path(fields));
    let all_attributes = app.get(SEGMENTS_KEY, &path("fields=attributes"));
    let csv = get_csv(&app, &path(&format!("format=csv&{fields}")), None);
    let unknown = app.get(SEGMENTS_KEY, &path("fields=id,prefecture"));
    let empty_key = app.get(SEGMENTS_KEY, &path("fields=attributes."));
    let link = app.get(
        ADMIN_KEY,
        &format!("/v1/contacts/{}/unsubscribe-link", data.id("hanako")),
    );

    // Assert: JSON, one object per member with exactly what was asked
    assert_eq!(json.status, 200, "{}", json.text());
    let json = json.json();
    assert_eq!(item_ids(&json), data.ids_of("hanako abroad"));
    let hanako = &json["items"][0];
    let link = link.json();
    assert_eq!(
        *hanako,
        json!({
            "id": data.id("hanako"),
            "family_name": "山田", "given_name": "花子",
            "family_name_kana": "ヤマダ", "given_name_kana": "ハナコ",
            "postal_code": "150-0001", "address": "東京都渋谷区神宮前1-2-3",
            "attributes": {"plan": "gold", "visits": "3", "none": null},
            "unsubscribe_url": link["url"],
        })
    );
    let url = hanako["unsubscribe_url"].as_str().expect("a link");
    assert!(
        url.starts_with("https://crm.example.jp/v1/forms/unsubscribe?token="),
        "{url}"
    );
    let abroad = &json["items"][1];
    assert_eq!(abroad["family_name"], Json::Null);
    assert_eq!(
        abroad["attributes"],
        json!({"plan": null, "visits": null, "none": null})
    );
    assert_ne!(abroad["unsubscribe_url"], hanako["unsubscribe_url"]);
    assert_eq!(
        all_attributes.json()["items"][0]["attributes"],
        json!({"plan": "gold", "size": "M", "visits": "3"})
    );

    // Assert: CSV, one column per field and per attribute
    assert_eq!(csv.status, 200, "{}", csv.text());
    let rows = parse_csv(&csv.text());
    assert_eq!(
        rows[0],
        [
            "id",
            "family_name",
            "given_name",
            "family_name_kana",
            "given_name_kana",
            "postal_code",
            "address",
            "attributes.plan",
            "attributes.visits",
            "attributes.none",
            "unsubscribe_url"
        ]
    );
    assert_eq!(
        rows[1],
        [
            data.id("hanako").as_str(),
            "山田",
            "花子",
            "ヤマダ",
            "ハナコ",
            "150-0001",
            "東京都渋谷区神宮前1-2-3",
            "gold",
            "3",
            "",
            url
        ]
    );

    // Assert: the link is the contact's own, and it works
    assert_eq!(all_table_counts(&app), before, "reads store nothing");
    let token_path = url.trim_start_matches("https://crm.example.jp");
    let unsubscribed = app.request("POST", token_path, &[], "");
    assert_eq!(unsubscribed.status, 200, "{}", unsubscribed.text());
    let consents = app.count(&format!(
        "SELECT count(*) FROM consents WHERE contact_id = '{}' AND channel = 'email' AND status = 'withdrawn'",
        data.id("hanako")
    ));
    assert_eq!(consents, 1, "the member's link unsubscribed the member");

    // Assert: an unknown field is a 422 listing the valid ones
    for (case, response) in [("unknown", &unknown), ("empty attribute key", &empty_key)] {
        let problem = response.assert_problem(422, case);
        assert_eq!(problem["errors"][0]["field"], "fields", "{case}");
        let message = problem["errors"][0]["message"].as_str().unwrap_or_default();
        for name in [
            "family_name_kana",
            "postal_code",
            "attributes.<key>",
            "unsubscribe_url",
        ] {
            assert!(message.contains(name), "{case}: {message}");
        }
    }
}

#[test]
fn csv_is_ready_for_excel_shop_time_yen_phones_and_a_file_name() {
    // Arrange: an order at 22:05 UTC on the 21st, 07:05 on the 22nd in Tokyo
    let app = TestApp::new();
    let (data, segment) = mailing_data(&app, "春の お茶/便り");
    order(
        &app,
        "X-1",
        "hanako@example.jp",
        "2026-11-21T22:05:00Z",
        &[("TEA-1", "Tea", 3240)],
    );
    let ascii = segment_id(&create_segment(
        &app,
        "Spring tea",
        &cond("tags", "contains", json!("mailing")),
        None,
    ));
    let path = |segment: &str, query: &str| format!("/v1/segments/{segment}/contacts?{query}");
    let today = app
        .now()
        .to_offset(time::UtcOffset::from_hms(9, 0, 0).expect("offset"))
        .date()
        .to_string();

    // Act
    let csv = get_csv(
        &app,
        &path(&segment, "format=csv&fields=phone,name,counters"),
        None,
    );
    let json_answer = app.get(SEGMENTS_KEY, &path(&segment, "fields=phone,counters"));
    let named = get_csv(&app, &path(&ascii, "format=csv&fields=id"), None);
    let by_accept = get_csv(&app, &path(&ascii, "fields=id"), Some("text/csv"));

    // Assert: shop-time dates Excel reads, yen, Japanese phones unguarded
    assert_eq!(csv.status, 200, "{}", csv.text());
    let text = csv.text();
    let rows = parse_csv(&text);
    assert_eq!(
        rows[0],
        [
            "id",
            "phone",
            "name",
            "order_count",
            "total_spent_jpy",
            "last_order_at",
        ]
    );
    let row = |label: &str| {
        rows.iter()
            .find(|r| r[0] == data.id(label))
            .unwrap_or_else(|| panic!("{label} in {text}"))
            .clone()
    };
    assert_eq!(row("hanako")[1], "090-1234-5678");
    assert_eq!(row("hanako")[3..], ["1", "3240", "2026-11-22 07:05:00"]);
    assert!(
        text.contains(",090-1234-5678,"),
        "no apostrophe, no quotes: {text}"
    );
    assert_eq!(
        row("abroad")[1],
        "'+14155552671",
        "a foreign number is guarded"
    );
    assert_eq!(
        row("abroad")[2],
        "'=cmd|' /C calc'!A0",
        "a formula is defused"
    );
    assert_eq!(row("abroad")[3..], ["0", "0", ""]);

    // Assert: JSON keeps E.164, minor units and RFC 3339 UTC
    assert_eq!(
        json_answer.header("content-disposition"),
        None,
        "JSON is not an attachment"
    );
    let json = json_answer.json();
    assert_eq!(json["items"][0]["phone"], "+819012345678");
    assert_eq!(
        json["items"][0]["counters"],
        json!({"order_count": 1, "total_spent_minor": 3240, "last_order_at": "2026-11-21T22:05:00.000000Z"})
    );

    // Assert: an attachment named after the segment and the shop's day
    assert_eq!(
        csv.header("content-disposition"),
        Some(
            format!(
                "attachment; filename=\"segment-{segment}-{today}.csv\"; \
                 filename*=UTF-8''%E6%98%A5%E3%81%AE%20%E3%81%8A%E8%8C%B6_%E4%BE%BF%E3%82%8A-{today}.csv"
            )
            .as_str()
        )
    );
    for response in [&named, &by_accept] {
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(
            response.header("content-disposition"),
            Some(
                format!(
                    "attachment; filename=\"Spring tea-{today}.csv\"; \
                     filename*=UTF-8''Spring%20tea-{today}.csv"
                )
                .as_str()
            )
        );
    }
}

#[test]
fn changes_carry_fields_and_why_each_member_left() {
    // Arrange: an email segment of four consenting members
    let app = TestApp::new();
    let mut data = Data::default();
    for label in ["stays", "withdraws", "untagged", "erased"] {
        let id = app.create_contact(
            &json!({"email": format!("{label}@example.jp"), "name": label, "tags": ["news"]}),
        );
        consent(&app, &id, "granted");
        data.add(label, id);
    }
    let segment = segment_id(&create_segment(
        &app,
        "News",
        &cond("tags", "contains", json!("news")),
        Some("email"),
    ));
    let (joined, _, token) = delta(&app, &segment, None);
    assert_eq!(joined, data.ids_of("stays withdraws untagged erased"));

    // Act: each leaves its own way, and a new member joins
    consent(&app, &data.id("withdraws"), "withdrawn");
    set_tag(&app, &data.id("untagged"), "news", false);
    erase(&app, &data.id("erased"));
    let joiner = app
        .create_contact(&json!({"email": "joiner@example.jp", "name": "joiner", "tags": ["news"]}));
    consent(&app, &joiner, "granted");
    data.add("joiner", joiner);
    let base = format!("/v1/segments/{segment}/changes?since={token}");
    let with_fields = app.get(
        SEGMENTS_KEY,
        &format!("{base}&fields=email,name,unsubscribe_url"),
    );
    let ids_only = app.get(SEGMENTS_KEY, &format!("{base}&fields=id"));
    let plain = app.get(SEGMENTS_KEY, &base);
    let version_rows = app.count("SELECT count(*) FROM segment_versions");

    // Assert: members with the fields asked for, and each reason
    assert_eq!(with_fields.status, 200, "{}", with_fields.text());
    let body = with_fields.json();
    let joined = body["joined"].as_array().expect("joined");
    assert_eq!(joined.len(), 1, "{body}");
    assert_eq!(joined[0]["id"], data.id("joiner"));
    assert_eq!(joined[0]["email"], "joiner@example.jp");
    assert_eq!(joined[0]["name"], "joiner");
    assert!(
        joined[0]["unsubscribe_url"]
            .as_str()
            .is_some_and(|u| u.contains("/v1/forms/unsubscribe?token=")),
        "{body}"
    );
    let left: BTreeMap<String, Json> = body["left"]
        .as_array()
        .expect("left")
        .iter()
        .map(|m| (data.label(m["id"].as_str().expect("id")), m.clone()))
        .collect();
    assert_eq!(
        left.keys().cloned().collect::<Vec<_>>(),
        ["erased", "untagged", "withdraws"]
    );
    assert_eq!(left["withdraws"]["reason"], "consent_withdrawn");
    assert_eq!(
        left["withdraws"]["email"], "withdraws@example.jp",
        "a mail tool finds the address to mark"
    );
    assert_eq!(left["untagged"]["reason"], "no_longer_matching");
    assert_eq!(left["untagged"]["email"], "untagged@example.jp");
    assert_eq!(
        left["erased"],
        json!({"id": data.id("erased"), "reason": "erased", "email": null, "name": null, "unsubscribe_url": null})
    );

    // Assert: `fields=id` gives objects without personal data; without
    // `fields` the answer keeps its shape of ids
    let ids_only = ids_only.json();
    assert_eq!(ids_only["joined"], json!([{"id": data.id("joiner")}]));
    assert!(
        ids_only["left"]
            .as_array()
            .expect("left")
            .iter()
            .all(|m| m.as_object().map(|o| o.len()) == Some(2)),
        "{ids_only}"
    );
    let plain = plain.json();
    assert_eq!(plain["joined"], json!([data.id("joiner")]));
    assert_eq!(plain["left"].as_array().map(Vec::len), Some(3));
    assert!(plain["left"][0].is_string());
    assert_eq!(
        version_rows, 1,
        "one version per segment, moved by each sync"
    );
}

#[test]
fn purchased_category_matches_without_regard_to_case() {
    // Arrange: Shopify's product_type is usually "Tea"; a marketer types "tea"
    let app = TestApp::new();
    let mut data = Data::default();
    order(
        &app,
        "C-1",
        "title@example.jp",
        "2026-11-01T01:00:00Z",
        &[("T-1", "Tea", 1000)],
    );
    order(
        &app,
        "C-2",
        "upper@example.jp",
        "2026-11-01T01:00:00Z",
        &[("T-2", "TEA", 1000)],
    );
    order(
        &app,
        "C-3",
        "coffee@example.jp",
        "2026-11-01T01:00:00Z",
        &[("K-1", "Coffee", 1000)],
    );
    order(
        &app,
        "C-4",
        "kana@example.jp",
        "2026-11-01T01:00:00Z",
        &[("M-1", "抹茶", 1000)],
    );
    for label in ["title", "upper", "coffee", "kana"] {
        data.add(label, id_by_email(&app, &format!("{label}@example.jp")));
    }
    let category = |op: &str, category: &str| cond("purchased", op, json!({"category": category}));

    // Act and assert
    check(
        &app,
        &data,
        &[
            (category("eq", "tea"), "title upper"),
            (category("eq", "Tea"), "title upper"),
            (category("eq", "tEA"), "title upper"),
            (category("neq", "tea"), "coffee kana"),
            (category("eq", "抹茶"), "kana"),
            (category("eq", "te"), ""),
            // SKUs are codes: still exact
            (cond("purchased", "eq", json!({"sku": "t-1"})), ""),
            (cond("purchased", "eq", json!({"sku": "T-1"})), "title"),
        ],
    );
}

#[test]
fn spent_counts_net_spend_in_a_jst_window_and_on_a_category() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: now 2026-11-22T03:00Z; within_days 30 starts at the start
    // of the Tokyo day 30 days ago, 2026-10-22T15:00Z.
    let app = TestApp::new();
    set_clock(&app, datetime!(2026-11-22 03:00 UTC));
    let mut data = Data::default();
    order(
        &app,
        "S1-1",
        "s1@example.jp",
        "2026-11-20T01:00:00Z",
        &[("TEA-1", "Tea", 6000), ("CUP-1", "Ware", 4000)],
    );
    order(
        &app,
        "S2-1",
        "s2@example.jp",
        "2026-10-22T14:59:59Z",
        &[("TEA-1", "tea", 20000)],
    );
    order(
        &app,
        "S2-2",
        "s2@example.jp",
        "2026-10-22T15:00:00Z",
        &[("CUP-1", "Ware", 3000)],
    );
    refunded_order(
        &app,
        "S3-1",
        "s3@example.jp",
        "2026-11-21T01:00:00Z",
        &[("TEA-2", "Tea", 8000)],
        3000,
    );
    cancelled_order(
        &app,
        "S4-1",
        "s4@example.jp",
        "2026-11-21T01:00:00Z",
        &[("TEA-2", "Tea", 9000)],
    );
    for label in ["s1", "s2", "s3", "s4"] {
        data.add(label, id_by_email(&app, &format!("{label}@example.jp")));
    }
    data.add("s5", app.create_contact(&json!({"email": "s5@example.jp"})));
    let spent = |op: &str, value: Json| cond("spent", op, value);

    // Act and assert: net of refunds per order; a partial refund is not
    // taken from a category's lines; cancelled orders do not count
    check(
        &app,
        &data,
        &[
            (
                spent("gte", json!({"amount": 10000, "within_days": 30})),
                "s1",
            ),
            (
                spent("gte", json!({"amount": 5000, "within_days": 30})),
                "s1 s3",
            ),
            (
                spent("gte", json!({"amount": 3000, "within_days": 30})),
                "s1 s2 s3",
            ),
            (
                spent("lt", json!({"amount": 3000, "within_days": 30})),
                "s4 s5",
            ),
            (
                spent(
                    "between",
                    json!({"amount": [3000, 5000], "within_days": 30}),
                ),
                "s2 s3",
            ),
            (
                spent("gte", json!({"amount": 6000, "category": "tea"})),
                "s1 s2 s3",
            ),
            (
                spent("gte", json!({"amount": 8000, "category": "TEA"})),
                "s2 s3",
            ),
            (
                spent(
                    "gte",
                    json!({"amount": 6000, "category": "tea", "within_days": 30}),
                ),
                "s1 s3",
            ),
            (spent("gt", json!({"amount": 0, "sku": "CUP-1"})), "s1 s2"),
            (
                spent(
                    "lte",
                    json!({"amount": 0, "category": "ware", "within_days": 1}),
                ),
                "s1 s2 s3 s4 s5",
            ),
            (
                spent(
                    "gt",
                    json!({"amount": 0, "category": "ware", "within_days": 2}),
                ),
                "s1",
            ),
        ],
    );
}

#[test]
fn bad_spent_conditions_get_a_pointer_and_store_nothing() {
    // Arrange
    let app = TestApp::new();
    // The first request creates the schema: count tables after it.
    assert_eq!(app.get(SEGMENTS_KEY, "/v1/segments").status, 200);
    let before = all_table_counts(&app);
    let spent = |op: &str, value: Json| json!({"definition": {"all": [cond("spent", op, value)]}});

    // Act and assert
    for (case, body, message) in [
        (
            "no amount",
            spent("gte", json!({"within_days": 30})),
            "amount",
        ),
        (
            "no window or item",
            spent("gte", json!({"amount": 1000})),
            "total_spent",
        ),
        (
            "sku and category",
            spent("gte", json!({"amount": 1, "sku": "A", "category": "b"})),
            "at most one",
        ),
        (
            "negative",
            spent("gte", json!({"amount": -1, "within_days": 3})),
            "amount",
        ),
        (
            "between needs two",
            spent("between", json!({"amount": 5, "within_days": 3})),
            "[from, to]",
        ),
        (
            "reversed",
            spent("between", json!({"amount": [5, 1], "within_days": 3})),
            "greater",
        ),
        (
            "eq",
            spent("eq", json!({"amount": 1, "within_days": 3})),
            "gt, gte, lt, lte, between",
        ),
        (
            "unknown member",
            spent("gte", json!({"amount": 1, "days": 3})),
            "only",
        ),
        ("not an object", spent("gte", json!(1000)), "an object"),
        (
            "zero days",
            spent("gte", json!({"amount": 1, "within_days": 0})),
            "whole number",
        ),
    ] {
        let response = app.send_json("POST", SEGMENTS_KEY, "/v1/segments/preview", &body);
        let problem = response.assert_problem(422, case);
        let pointer = problem["errors"][0]["field"].as_str().unwrap_or_default();
        let expected = if case == "eq" {
            "/definition/all/0/op"
        } else {
            "/definition/all/0/value"
        };
        assert_eq!(pointer, expected, "{case}");
        let text = problem["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{case}: {text}");
    }
    assert_eq!(all_table_counts(&app), before);
}

#[test]
fn a_purchased_category_is_found_from_its_case_blind_index() {
    // Arrange: the schema as the migrations leave it (first request)
    let app = TestApp::new();
    assert_eq!(app.get(SEGMENTS_KEY, "/v1/segments").status, 200);
    let plan_of = |definition: Json| -> Vec<String> {
        use kizuna::segments::compile::{Env, compile};
        use kizuna::segments::members::{MemberField, page_query};
        let node = kizuna::segments::definition::parse(&definition).expect("definition");
        let env = Env {
            now: datetime!(2026-11-22 03:00 UTC),
            vip_threshold: 1,
        };
        let compiled = compile(&node, &env, false);
        let (sql, params) = page_query(
            &compiled.sql,
            &compiled.params,
            MemberField::DEFAULT,
            None,
            env.now,
            50,
        );
        kizuna_tests::bench::query_plan(
            &app.db(),
            &sql,
            rusqlite::params_from_iter(kizuna_tests::bench::sql_values(&params)),
        )
        .expect("plan")
    };

    // Act
    let category = plan_of(cond(
        "purchased",
        "eq",
        json!({"category": "tea", "within_days": 30}),
    ));
    let spent = plan_of(cond(
        "spent",
        "gte",
        json!({"amount": 5000, "category": "tea"}),
    ));

    // Assert: the buyers come from the category's lines by the NOCASE
    // index, once; each is then one look-up of a contact by id, so the
    // cost is the lines of that category, not the whole shop.
    let text = category.join("\n");
    assert!(
        text.contains("USING COVERING INDEX order_lines_category_nocase_idx (category=?)"),
        "{text}"
    );
    assert!(
        text.contains("SEARCH c USING INDEX sqlite_autoindex_contacts_1 (id=?)"),
        "{text}"
    );
    assert!(!text.contains("SCAN l"), "{text}");
    let text = spent.join("\n");
    assert!(text.contains("order_lines_category_nocase_idx"), "{text}");
    // Spend is a correlated sum per contact: its orders by contact id,
    // then that order's lines of the category by the same index.
    assert!(
        text.contains("SEARCH o USING INDEX") && text.contains("(contact_id=?"),
        "{text}"
    );
}
