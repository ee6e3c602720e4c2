//! What every component's answers share: a query parameter a route does
//! not take is refused rather than ignored, and `?tz=shop` writes every
//! timestamp of a JSON answer in the shop's zone.

use crate::helpers::*;
use serde_json::{Value as Json, json};

fn error_fields(problem: &Json) -> Vec<String> {
    problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str().map(str::to_owned))
        .collect()
}

/// A contact with a tag and a saved segment: what the lists below need.
fn shop(app: &TestApp) -> (String, String) {
    let contact = app.create_contact(&json!({"email": "hanako@example.jp", "family_name": "山田"}));
    let segment = app.send_json(
        "POST",
        SEGMENTS_KEY,
        "/v1/segments",
        &json!({"name": "all", "definition": {"field": "email_domain", "op": "eq", "value": "example.jp"}}),
    );
    assert_eq!(segment.status, 201, "{}", segment.text());
    let segment = segment.json()["id"]
        .as_str()
        .expect("segment id")
        .to_owned();
    (contact, segment)
}

#[test]
fn every_list_refuses_a_parameter_it_does_not_take() {
    let app = TestApp::new();
    let (contact, segment) = shop(&app);
    let lists = [
        (
            READ_KEY,
            "/v1/contacts".to_owned(),
            "limit=5&phonee=0312345678",
            "phonee",
        ),
        (
            READ_KEY,
            format!("/v1/contacts/{contact}/timeline"),
            "kinds=call",
            "kinds",
        ),
        (
            ADMIN_KEY,
            format!("/v1/contacts/{contact}/export"),
            "format=csv",
            "format",
        ),
        (
            ORDERS_KEY,
            "/v1/orders".to_owned(),
            "order_number=1002",
            "order_number",
        ),
        (
            ADMIN_KEY,
            "/v1/webhook-deliveries".to_owned(),
            "status=rejected",
            "status",
        ),
        (
            POINTS_KEY,
            format!("/v1/points/{contact}/ledger"),
            "kind=earn",
            "kind",
        ),
        (
            SEGMENTS_KEY,
            format!("/v1/segments/{segment}/contacts"),
            "field=email",
            "field",
        ),
        (
            SEGMENTS_KEY,
            format!("/v1/segments/{segment}/changes"),
            "from=2026-01-01",
            "from",
        ),
        (
            SEGMENTS_KEY,
            "/v1/analytics/cross-sell".to_owned(),
            "sku=TEA-1&skus=TEA-2",
            "skus",
        ),
        (SEGMENTS_KEY, "/v1/segments".to_owned(), "limit=5", "limit"),
        (
            SEGMENTS_KEY,
            "/v1/analytics/summary".to_owned(),
            "from=2026-01-01",
            "from",
        ),
        (
            SEGMENTS_KEY,
            "/v1/analytics/rfm".to_owned(),
            "segment=x",
            "segment",
        ),
        (
            POINTS_ADMIN_KEY,
            "/v1/points/liability".to_owned(),
            "month=2026-12",
            "month",
        ),
    ];
    for (key, path, query, unknown) in lists {
        let before = app.table_counts();
        let response = app.get(key, &format!("{path}?{query}"));
        let problem = response.assert_problem(422, &path);
        assert_eq!(error_fields(&problem), [unknown], "{path}: {problem}");
        let message = problem["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("which takes") && message.contains("tz"),
            "{path}: the answer names what the route takes: {message}"
        );
        assert_eq!(app.table_counts(), before, "{path}: nothing stored");
        // The same list without the stray parameter answers.
        let known = query
            .split('&')
            .filter(|pair| !pair.starts_with(&format!("{unknown}=")))
            .collect::<Vec<_>>()
            .join("&");
        let response = app.get(key, &format!("{path}?{known}"));
        assert_eq!(response.status, 200, "{path}?{known}: {}", response.text());
    }
}

#[test]
fn a_parameter_given_twice_is_refused_not_picked() {
    let app = TestApp::new();
    let (contact, _) = shop(&app);
    for path in [
        "/v1/contacts?limit=1&limit=200".to_owned(),
        format!("/v1/contacts/{contact}/timeline?cursor=a&cursor=b"),
        "/v1/contacts?q=yamada&tz=shop&tz=utc".to_owned(),
    ] {
        let problem = app.get(READ_KEY, &path).assert_problem(422, &path);
        let message = problem["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("more than once"), "{path}: {problem}");
    }
}

#[test]
fn tz_shop_writes_every_timestamp_in_the_shops_zone() {
    let app = TestApp::with_variables(&[("shop_timezone", "Asia/Tokyo")]);
    let (contact, segment) = shop(&app);
    let utc = app.get(READ_KEY, &format!("/v1/contacts/{contact}"));
    assert_eq!(utc.status, 200);
    let utc = utc.json();
    let created = utc["created_at"].as_str().expect("created_at").to_owned();
    assert!(created.ends_with('Z'), "UTC by default: {created}");
    assert_eq!(
        app.get(READ_KEY, &format!("/v1/contacts/{contact}?tz=utc"))
            .json(),
        utc,
        "tz=utc is the default"
    );

    let shop = app
        .get(READ_KEY, &format!("/v1/contacts/{contact}?tz=shop"))
        .json();
    let local = shop["created_at"].as_str().expect("created_at");
    assert!(local.ends_with("+09:00"), "{local}");
    let instant = |text: &str| {
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .expect("RFC 3339")
    };
    assert_eq!(instant(local), instant(&created), "the same instant");
    let expected_hour = (instant(&created).hour() + 9) % 24;
    assert_eq!(&local[11..13], format!("{expected_hour:02}"), "{local}");
    // Apart from the timestamps, the answer is the same.
    let mut without_times = shop.clone();
    let mut utc_without_times = utc.clone();
    for answer in [&mut without_times, &mut utc_without_times] {
        for name in ["created_at", "updated_at"] {
            answer[name] = Json::Null;
        }
        answer["first_touch"]["at"] = Json::Null;
    }
    assert_eq!(without_times, utc_without_times);

    // Lists too, nested timestamps included.
    let timeline = app
        .get(
            READ_KEY,
            &format!("/v1/contacts/{contact}/timeline?tz=shop"),
        )
        .json();
    let first = timeline["items"][0]["occurred_at"]
        .as_str()
        .unwrap_or_default();
    assert!(first.ends_with("+09:00"), "{timeline}");
    let members = app
        .get(
            SEGMENTS_KEY,
            &format!("/v1/segments/{segment}/contacts?tz=shop&fields=id"),
        )
        .json();
    assert!(
        members["analytics_computed_at"].is_null()
            || members["analytics_computed_at"]
                .as_str()
                .is_some_and(|t| t.ends_with("+09:00")),
        "{members}"
    );

    for bad in ["Asia/Tokyo", "jst", ""] {
        let path = format!("/v1/contacts/{contact}?tz={bad}");
        let problem = app.get(READ_KEY, &path).assert_problem(422, &path);
        assert_eq!(error_fields(&problem), ["tz"], "{problem}");
    }
}
