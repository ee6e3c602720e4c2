//! `/v1/contacts`: the staff contact API, end to end. Every test drives the
//! HTTP surface and then checks the status, the body, and what was (or was
//! not) stored in the database.

use crate::helpers::*;
use bytes::Bytes;
use serde_json::{Value as Json, json};

/// A well-formed contact id that no contact has.
const UNKNOWN_ID: &str = "0190f5d2-7c1e-7a4b-9f00-123456789abc";

/// Percent-encodes everything but RFC 3986 unreserved characters, for
/// query values and path segments.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Moves the test clock on, so that ids and timestamps of what follows
/// sort after what came before.
fn tick(app: &TestApp) {
    app.clock.advance(time::Duration::seconds(1));
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

/// `GET /v1/contacts/{id}`, which must succeed.
fn fetch(app: &TestApp, id: &str) -> Json {
    let response = app.get(READ_KEY, &format!("/v1/contacts/{id}"));
    assert_eq!(response.status, 200, "GET {id}: {}", response.text());
    response.json()
}

/// The ids a listing query returns (one page), plus the whole body.
fn list(app: &TestApp, query: &str) -> (Vec<String>, Json) {
    let response = app.get(READ_KEY, &format!("/v1/contacts?{query}"));
    assert_eq!(response.status, 200, "list ?{query}: {}", response.text());
    let body = response.json();
    let ids = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| item["id"].as_str().expect("item id").to_owned())
        .collect();
    (ids, body)
}

/// A JSON request with extra headers.
fn send_json_with(
    app: &TestApp,
    method: &str,
    key: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &Json,
) -> TestResponse {
    let auth = bearer(key);
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    app.request(method, path, &headers, body.to_string())
}

fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

// ---------------------------------------------------------------------------
// POST /v1/contacts: create or update
// ---------------------------------------------------------------------------

#[test]
fn create_returns_201_with_the_normalised_contact_and_stores_it() {
    // Arrange
    let app = TestApp::new();
    let body = json!({
        "email": " Taro@Example.JP ",
        "phone": "090-1234-5678",
        "family_name": "山田",
        "given_name": "太郎",
        "family_name_kana": "ヤマダ",
        "given_name_kana": "タロウ",
        "company": "株式会社テスト",
        "postal_code": "1500001",
        "birthday": "1990/4/1",
        "attributes": {"plan": "gold"},
        "tags": ["vip", "spring 2026"],
    });

    // Act
    let response = app.send_json("POST", WRITE_KEY, "/v1/contacts", &body);

    // Assert
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/json"));
    let created = response.json();
    let id = created["id"].as_str().expect("id");
    assert_eq!(created["email"], "taro@example.jp");
    assert_eq!(created["phone"], "+819012345678");
    assert_eq!(created["name"], "山田 太郎");
    assert_eq!(created["postal_code"], "150-0001");
    assert_eq!(created["birthday"], "1990-04-01");
    assert_eq!(created["attributes"], json!({"plan": "gold"}));
    assert_eq!(created["tags"], json!(["spring 2026", "vip"]));
    assert_eq!(created["lifecycle_stage"], "lead");
    assert_eq!(created["first_touch"]["source"], "api:writer");
    assert_eq!(created["erased"], false);
    assert_eq!(fetch(&app, id), created, "GET shows what POST answered");
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
    assert_eq!(app.count("SELECT count(*) FROM contact_tags"), 2);
    assert_eq!(
        app.count("SELECT count(*) FROM interactions WHERE kind = 'contact_created'"),
        1
    );
    let created_by: String = app
        .db()
        .query_row("SELECT created_by FROM contacts WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .expect("row");
    assert_eq!(created_by, "key:writer");
}

#[test]
fn create_then_update_by_email_overwrites_the_name() {
    // Arrange
    let app = TestApp::new();
    let created = app.send_json(
        "POST",
        WRITE_KEY,
        "/v1/contacts",
        &json!({"email": "a@example.jp", "name": "A"}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    tick(&app);

    // Act
    let updated = app.send_json(
        "POST",
        WRITE_KEY,
        "/v1/contacts",
        &json!({"email": "A@EXAMPLE.JP", "name": "B"}),
    );

    // Assert
    assert_eq!(updated.status, 200, "{}", updated.text());
    assert_eq!(updated.json()["id"], created.json()["id"]);
    assert_eq!(
        updated.json()["name"],
        "B",
        "staff values overwrite stored ones"
    );
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
    let fields: String = app
        .db()
        .query_row(
            "SELECT data FROM interactions WHERE kind = 'contact_updated'",
            [],
            |r| r.get(0),
        )
        .expect("one contact_updated entry");
    assert_eq!(
        serde_json::from_str::<Json>(&fields).expect("json"),
        json!({"fields": ["name"]})
    );
}

#[test]
fn update_finds_a_phone_only_contact_by_any_japanese_phone_format() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"phone": "090-1234-5678", "name": "電話 だけ"}));
    let formats = [
        ("international with spaces", "+81 90 1234 5678"),
        ("international with dashes", "+81-90-1234-5678"),
        (
            "international keeping the trunk zero",
            "+81 (0)90 1234 5678",
        ),
        ("national digits only", "09012345678"),
        ("national with parentheses", "(090) 1234-5678"),
        ("full-width", "０９０－１２３４－５６７８"),
    ];

    for (index, (case, phone)) in formats.iter().enumerate() {
        tick(&app);
        let company = format!("Company {index}");

        // Act
        let response = app.send_json(
            "POST",
            WRITE_KEY,
            "/v1/contacts",
            &json!({"phone": phone, "company": company}),
        );

        // Assert
        assert_eq!(response.status, 200, "case {case}: {}", response.text());
        let body = response.json();
        assert_eq!(body["id"], id.as_str(), "case {case}");
        assert_eq!(body["phone"], "+819012345678", "case {case}");
        assert_eq!(body["company"], company.as_str(), "case {case}");
        assert_eq!(
            body["name"], "電話 だけ",
            "case {case}: untouched fields stay"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
}

#[test]
fn update_finds_the_contact_by_external_id() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(
        &json!({"external_id": "shop-42", "email": "ext@example.jp", "name": "Old"}),
    );
    tick(&app);

    // Act
    let response = app.send_json(
        "POST",
        WRITE_KEY,
        "/v1/contacts",
        &json!({"external_id": "shop-42", "name": "New"}),
    );

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["name"], "New");
    assert_eq!(body["email"], "ext@example.jp");
    assert_eq!(body["external_id"], "shop-42");
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
}

#[test]
fn create_with_tags_in_the_body_stores_each_once() {
    // Arrange
    let app = TestApp::new();

    // Act
    let response = app.send_json(
        "POST",
        WRITE_KEY,
        "/v1/contacts",
        &json!({"email": "tags@example.jp", "tags": ["vip", "春セール", "vip"]}),
    );

    // Assert
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(response.json()["tags"], json!(["vip", "春セール"]));
    assert_eq!(app.count("SELECT count(*) FROM contact_tags"), 2);
    assert_eq!(
        app.count("SELECT count(*) FROM interactions WHERE kind = 'tag_added'"),
        2
    );
}

#[test]
fn create_that_moves_another_contacts_email_is_409_and_changes_nothing() {
    // Arrange: the external id names A, the email belongs to B.
    let app = TestApp::new();
    let a =
        app.create_contact(&json!({"external_id": "shop-1", "email": "a@example.jp", "name": "A"}));
    let b = app.create_contact(&json!({"email": "b@example.jp", "name": "B"}));
    let (a_before, b_before, counts) = (fetch(&app, &a), fetch(&app, &b), app.table_counts());
    tick(&app);

    // Act
    let response = app.send_json(
        "POST",
        WRITE_KEY,
        "/v1/contacts",
        &json!({"external_id": "shop-1", "email": "b@example.jp", "name": "Stolen"}),
    );

    // Assert
    let problem = response.assert_problem(409, "create with another contact's email");
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("email"),
        "{problem}"
    );
    assert_eq!(fetch(&app, &a), a_before);
    assert_eq!(fetch(&app, &b), b_before);
    assert_eq!(app.table_counts(), counts);
}

#[test]
fn create_links_an_external_id_to_a_contact_that_has_none() {
    // Arrange: a lead from a form, later seen as a shop customer.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "lead@example.jp", "name": "Lead"}));
    tick(&app);

    // Act
    let response = app.send_json(
        "POST",
        WRITE_KEY,
        "/v1/contacts",
        &json!({"external_id": "shop-7", "email": "lead@example.jp"}),
    );

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["id"], id.as_str());
    assert_eq!(response.json()["external_id"], "shop-7");
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
}

#[test]
fn create_does_not_move_a_contact_to_another_external_id() {
    // Arrange: shop customer 1 owns the email and the phone; the shop now
    // sends customer 2 with the same email (or phone).
    let cases = [
        (
            "same email",
            json!({"external_id": "shop-2", "email": "one@example.jp", "name": "Two"}),
        ),
        (
            "same phone",
            json!({"external_id": "shop-2", "phone": "090-4444-5555", "name": "Two"}),
        ),
    ];

    for (case, body) in cases {
        let app = TestApp::new();
        let one = app.create_contact(&json!({"external_id": "shop-1", "email": "one@example.jp", "phone": "090-4444-5555", "name": "One"}));
        let before = fetch(&app, &one);
        let counts = app.table_counts();
        tick(&app);

        // Act
        let response = app.send_json("POST", WRITE_KEY, "/v1/contacts", &body);

        // Assert: customer 1 keeps its external id and name.
        response.assert_problem(409, case);
        assert_eq!(fetch(&app, &one), before, "case {case}");
        assert_eq!(app.table_counts(), counts, "case {case}");
    }
}

#[test]
fn create_never_drops_tags_silently() {
    // Arrange
    let app = TestApp::new();
    let tags: Vec<String> = (0..51).map(|i| format!("tag-{i:02}")).collect();

    // Act
    let response = app.send_json(
        "POST",
        WRITE_KEY,
        "/v1/contacts",
        &json!({"email": "many@example.jp", "tags": tags}),
    );

    // Assert: either every tag is stored, or the request is refused whole.
    if response.status == 201 {
        assert_eq!(
            response.json()["tags"].as_array().map(Vec::len),
            Some(51),
            "all tags stored"
        );
        assert_eq!(app.count("SELECT count(*) FROM contact_tags"), 51);
    } else {
        let problem = response.assert_problem(422, "51 tags");
        assert_eq!(error_fields(&problem), ["tags"]);
        assert_eq!(app.count("SELECT count(*) FROM contacts"), 0);
        assert_eq!(app.count("SELECT count(*) FROM contact_tags"), 0);
    }
}

#[test]
fn create_accepts_a_json_content_type_with_parameters() {
    // Arrange
    let app = TestApp::new();
    let cases = [
        (
            "charset parameter",
            "application/json; charset=utf-8",
            "charset@example.jp",
        ),
        ("upper case", "Application/JSON", "upper@example.jp"),
    ];

    for (case, content_type, email) in cases {
        // Act
        let response = app.request(
            "POST",
            "/v1/contacts",
            &[
                ("authorization", &bearer(WRITE_KEY)),
                ("content-type", content_type),
            ],
            json!({"email": email}).to_string(),
        );

        // Assert
        assert_eq!(response.status, 201, "case {case}: {}", response.text());
        assert_eq!(response.json()["email"], email, "case {case}");
    }
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 2);
}

#[test]
fn patch_to_another_contacts_email_is_409_and_changes_nothing() {
    // Arrange
    let app = TestApp::new();
    let a = app.create_contact(&json!({"email": "a@example.jp", "name": "A"}));
    let b = app.create_contact(&json!({"email": "b@example.jp", "name": "B"}));
    let (a_before, b_before, counts) = (fetch(&app, &a), fetch(&app, &b), app.table_counts());
    tick(&app);

    // Act
    let response = app.send_json(
        "PATCH",
        WRITE_KEY,
        &format!("/v1/contacts/{a}"),
        &json!({"email": "B@example.jp", "name": "A2"}),
    );

    // Assert
    response.assert_problem(409, "patch to another contact's email");
    assert_eq!(fetch(&app, &a), a_before);
    assert_eq!(fetch(&app, &b), b_before);
    assert_eq!(app.table_counts(), counts);
}

/// Fields a caller may not set: counters, ids, timestamps, stage.
fn not_assignable() -> Vec<(&'static str, Json)> {
    vec![
        ("order_count", json!(99)),
        ("total_spent_minor", json!(1_000_000)),
        ("points_balance", json!(5000)),
        ("id", json!(UNKNOWN_ID)),
        ("created_at", json!("2020-01-01T00:00:00Z")),
        ("updated_at", json!("2020-01-01T00:00:00Z")),
        ("lifecycle_stage", json!("customer")),
        ("erased_at", json!("2020-01-01T00:00:00Z")),
        ("source", json!("form:fake")),
    ]
}

#[test]
fn create_refuses_unknown_fields_and_stores_nothing() {
    // Arrange: one existing contact, so an update path is also exercised.
    let app = TestApp::new();
    let existing = app.create_contact(&json!({"email": "known@example.jp", "name": "Known"}));
    let before = fetch(&app, &existing);
    let counts = app.table_counts();

    for (field, value) in not_assignable() {
        for email in ["new@example.jp", "known@example.jp"] {
            let case = format!("{field} with {email}");
            let mut body = json!({"email": email, "name": "Mass Assigned"});
            body[field] = value.clone();

            // Act
            let response = app.send_json("POST", WRITE_KEY, "/v1/contacts", &body);

            // Assert
            let problem = response.assert_problem(422, &case);
            // Named as the error's field, or quoted in its message.
            let quoted = format!("`{field}`");
            let named = problem["errors"].as_array().is_some_and(|errors| {
                errors.iter().any(|e| {
                    e["field"] == field
                        || e["message"].as_str().is_some_and(|m| m.contains(&quoted))
                })
            });
            assert!(named, "case {case}: the field is named: {problem}");
        }
    }
    assert_eq!(app.table_counts(), counts, "nothing stored");
    assert_eq!(
        fetch(&app, &existing),
        before,
        "the existing contact is unchanged"
    );
}

#[test]
fn create_names_an_unknown_field_in_the_errors_field_member() {
    // Arrange
    let app = TestApp::new();

    // Act
    let response = app.send_json(
        "POST",
        WRITE_KEY,
        "/v1/contacts",
        &json!({"email": "n@example.jp", "order_count": 99}),
    );

    // Assert: `errors[].field` is the offending field, as PATCH does.
    let problem = response.assert_problem(422, "unknown field on create");
    assert_eq!(error_fields(&problem), ["order_count"], "{problem}");
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 0);
}

// ---------------------------------------------------------------------------
// GET /v1/contacts/{id}
// ---------------------------------------------------------------------------

#[test]
fn get_shows_profile_consents_tags_lifecycle_and_counters() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({
        "email": "hanako@example.jp", "phone": "03-1234-5678", "name": "佐藤 花子",
        "given_name_kana": "ハナコ", "tags": ["newsletter"],
    }));
    tick(&app);
    let granted = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/consents"),
        &json!({"channel": "email", "status": "granted", "text_version": "v2"}),
    );
    assert_eq!(granted.status, 201, "{}", granted.text());

    // Act
    let response = app.get(READ_KEY, &format!("/v1/contacts/{id}"));

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let contact = response.json();
    assert_eq!(contact["id"], id.as_str());
    assert_eq!(contact["email"], "hanako@example.jp");
    assert_eq!(contact["phone"], "+81312345678");
    assert_eq!(contact["name"], "佐藤 花子");
    assert_eq!(contact["given_name_kana"], "ハナコ");
    assert_eq!(contact["lifecycle_stage"], "lead");
    assert_eq!(contact["tags"], json!(["newsletter"]));
    assert_eq!(contact["consents"]["email"]["status"], "granted");
    assert_eq!(contact["consents"]["email"]["reason"], "manual");
    assert_eq!(contact["consents"]["email"]["text_version"], "v2");
    assert_eq!(
        contact["counters"],
        json!({"order_count": 0, "total_spent_minor": 0, "average_order_value_minor": 0, "first_order_at": null, "last_order_at": null, "points_balance": 0, "points_pending": 0, "points_debt": 0})
    );
    assert_eq!(contact["erased"], false);
    assert_eq!(contact["created_at"], "2026-11-22T03:00:00.000000Z");
}

#[test]
fn get_of_an_unknown_or_malformed_id_is_404() {
    // Arrange
    let app = TestApp::new();
    app.create_contact(&json!({"email": "someone@example.jp"}));
    let cases = [
        ("unknown UUID", UNKNOWN_ID.to_owned()),
        ("not a UUID", "not-a-uuid".to_owned()),
        ("number", "12345".to_owned()),
        ("SQL in the id", enc("1' OR '1'='1")),
    ];

    for (case, id) in cases {
        // Act
        let response = app.get(READ_KEY, &format!("/v1/contacts/{id}"));

        // Assert
        response.assert_problem(404, case);
    }
}

// ---------------------------------------------------------------------------
// GET /v1/contacts: look-ups, search, pagination
// ---------------------------------------------------------------------------

#[test]
fn list_by_email_matches_the_normalised_address_only() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "taro@example.jp"}));
    app.create_contact(&json!({"email": "taro@example.com"}));
    let cases = [
        ("same address", "taro@example.jp", vec![id.clone()]),
        ("upper case", "TARO@EXAMPLE.JP", vec![id.clone()]),
        (
            "full-width",
            "ｔａｒｏ＠ｅｘａｍｐｌｅ．ｊｐ",
            vec![id.clone()],
        ),
        ("another address", "jiro@example.jp", vec![]),
    ];

    for (case, email, want) in cases {
        // Act
        let (ids, body) = list(&app, &format!("email={}", enc(email)));

        // Assert
        assert_eq!(ids, want, "case {case}");
        assert_eq!(body["next_cursor"], Json::Null, "case {case}");
    }
    app.get(READ_KEY, "/v1/contacts?email=not-an-email")
        .assert_problem(422, "invalid email filter");
}

#[test]
fn list_by_phone_finds_the_same_contact_in_every_japanese_format() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "phone@example.jp", "phone": "090-1234-5678"}));
    app.create_contact(&json!({"email": "other@example.jp", "phone": "090-8765-4321"}));
    let formats = [
        ("national with dashes", "090-1234-5678"),
        ("national digits", "09012345678"),
        ("national with spaces", "090 1234 5678"),
        ("national with parentheses", "(090)1234-5678"),
        ("E.164", "+819012345678"),
        ("international with spaces", "+81 90 1234 5678"),
        (
            "international keeping the trunk zero",
            "+81 (0)90-1234-5678",
        ),
        ("JP international prefix", "010-81-90-1234-5678"),
        (
            "full-width with full-width dashes",
            "０９０－１２３４－５６７８",
        ),
        (
            "full-width with katakana long vowel marks",
            "０９０ー１２３４ー５６７８",
        ),
    ];

    for (case, phone) in formats {
        // Act
        let (ids, _) = list(&app, &format!("phone={}", enc(phone)));

        // Assert
        assert_eq!(ids, [id.as_str()], "case {case}");
    }
    app.get(READ_KEY, "/v1/contacts?phone=12")
        .assert_problem(422, "invalid phone filter");
    app.get(
        READ_KEY,
        "/v1/contacts?phone=090-1234-5678&email=phone%40example.jp",
    )
    .assert_problem(422, "two filters at once");
}

#[test]
fn search_matches_prefixes_of_name_kana_and_email() {
    // Arrange
    let app = TestApp::new();
    let yamada = app.create_contact(&json!({
        "email": "taro.yamada@example.jp", "family_name": "山田", "given_name": "太郎",
        "family_name_kana": "ヤマダ", "given_name_kana": "タロウ",
    }));
    let alice = app.create_contact(&json!({"email": "alice@example.com", "name": "Alice Smith"}));
    let percent = app.create_contact(&json!({"email": "pct@example.jp", "name": "100% Natural"}));
    let cases: [(&str, &str, Vec<&String>); 12] = [
        ("kanji family name", "山田", vec![&yamada]),
        ("kanji given name", "太郎", vec![&yamada]),
        ("kanji name with space", "山田 太郎", vec![&yamada]),
        ("hiragana finds katakana kana", "やまだ", vec![&yamada]),
        ("hiragana family+given kana", "やまだ たろう", vec![&yamada]),
        ("katakana given kana", "タロ", vec![&yamada]),
        ("email prefix", "taro.y", vec![&yamada]),
        ("latin name, any case", "ALI", vec![&alice]),
        ("full-width latin", "ａｌｉｃｅ", vec![&alice]),
        ("percent is no wildcard", "%", vec![]),
        ("underscore is no wildcard", "_", vec![]),
        ("literal percent prefix", "100%", vec![&percent]),
    ];

    for (case, q, want) in cases {
        // Act
        let (ids, _) = list(&app, &format!("q={}", enc(q)));

        // Assert
        let want: Vec<String> = want.into_iter().cloned().collect();
        assert_eq!(ids, want, "case {case} (q={q})");
    }
    app.get(READ_KEY, "/v1/contacts?q=")
        .assert_problem(422, "empty q");
    app.get(READ_KEY, "/v1/contacts?q=%20%20")
        .assert_problem(422, "blank q");
}

#[test]
fn search_folds_half_width_katakana() {
    // Arrange: legacy systems and some IMEs produce half-width katakana.
    let app = TestApp::new();
    let stored_full =
        app.create_contact(&json!({"email": "full.kana@example.jp", "family_name_kana": "ヤマダ"}));
    let stored_half =
        app.create_contact(&json!({"email": "half.kana@example.jp", "family_name_kana": "ｽｽﾞｷ"}));
    let cases = [
        ("half-width query, full-width stored", "ﾔﾏﾀﾞ", &stored_full),
        (
            "full-width query, half-width stored",
            "スズキ",
            &stored_half,
        ),
        ("hiragana query, half-width stored", "すずき", &stored_half),
    ];

    for (case, q, want) in cases {
        // Act
        let (ids, _) = list(&app, &format!("q={}", enc(q)));

        // Assert
        assert_eq!(ids, [want.as_str()], "case {case} (q={q})");
    }
}

#[test]
fn every_look_up_answers_the_summary_an_agent_starts_from() {
    // Arrange: a customer with tags, email consent, one paid order (50
    // points under the default program), an open inquiry and a pending
    // callback; and a lead with nothing.
    let app = TestApp::new();
    let id = app.create_contact(&json!({
        "email": "yamada.summary@example.jp", "phone": "090-2222-3333",
        "family_name": "山田", "given_name": "花子",
        "family_name_kana": "ヤマダ", "given_name_kana": "ハナコ",
        "company": "山田茶舗", "tags": ["vip", "gift"],
    }));
    let lead =
        app.create_contact(&json!({"email": "lead.summary@example.jp", "name": "山本 一郎"}));
    let consent = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/consents"),
        &json!({"channel": "email", "status": "granted"}),
    );
    assert_eq!(consent.status, 201, "{}", consent.text());
    let event = json!({
        "type": "order.paid",
        "timestamp": "2026-11-22T02:59:30Z",
        "data": {
            "id": "SUM-1", "number": "#1002", "currency": "JPY",
            "placed_at": "2026-11-22T02:59:00Z", "updated_at": "2026-11-22T02:59:10Z",
            "customer": {"email": "yamada.summary@example.jp"},
            "subtotal": "5000", "shipping": "0", "tax": "400", "discount": "0",
            "total": "5400", "points_used": 0,
            "lines": [{"id": "L1", "sku": "TEA-1", "name": "煎茶", "quantity": 1,
                       "unit_price": "5000", "total": "5000", "discount": "0", "tax": "400"}],
            "refunds": []
        }
    });
    let order = app.post_kizuna_event("msg_summary_1", event.to_string().into_bytes());
    assert_eq!(order.status, 200, "{}", order.text());
    record(
        &app,
        &id,
        &json!({"kind": "inquiry", "body": "贈答用の包装は？"}),
    );
    record(
        &app,
        &id,
        &json!({"kind": "call", "body": "折り返し", "status": "pending"}),
    );
    record(&app, &id, &json!({"kind": "call", "body": "済み"}));
    let order_id: String = app
        .db()
        .query_row(
            "SELECT id FROM orders WHERE external_id = 'SUM-1'",
            [],
            |r| r.get(0),
        )
        .expect("the order");
    let mut expected = json!({
        "id": id,
        "name": "山田 花子", "family_name": "山田", "given_name": "花子",
        "family_name_kana": "ヤマダ", "given_name_kana": "ハナコ",
        "company": "山田茶舗",
        "email": "yamada.summary@example.jp", "phone": "+819022223333", "external_id": null,
        "lifecycle_stage": "customer",
        "tags": ["gift", "vip"],
        "consents": {"email": "granted"},
        "points": {"available": 50, "pending": 0, "debt": 0},
        "orders": {
            "count": 1, "total_spent_minor": 5400,
            "first_order_at": "2026-11-22T02:59:00.000000Z",
            "last_order_at": "2026-11-22T02:59:00.000000Z",
            "last": {"id": order_id, "source": "kizuna", "external_id": "SUM-1", "number": "#1002",
                     "status": "paid", "placed_at": "2026-11-22T02:59:00.000000Z",
                     "total_minor": 5400, "currency": "JPY"},
        },
        "interactions": {"open": 1, "pending": 1},
    });
    let whole = fetch(&app, &id);
    expected["created_at"] = whole["created_at"].clone();
    expected["updated_at"] = whole["updated_at"].clone();
    let look_ups = [
        ("phone", format!("phone={}", enc("090-2222-3333"))),
        (
            "email",
            format!("email={}", enc("yamada.summary@example.jp")),
        ),
        ("q, kana", format!("q={}", enc("やまだ"))),
        ("q, full name", format!("q={}", enc("山田 花子"))),
        ("the whole list", String::new()),
    ];

    for (case, query) in look_ups {
        // Act
        let (ids, body) = list(&app, &query);

        // Assert
        let item = body["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["id"] == id.as_str()))
            .unwrap_or_else(|| panic!("case {case}: {ids:?}"));
        assert_eq!(item, &expected, "case {case}");
    }
    let (_, everyone) = list(&app, "");
    let lead_item = everyone["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["id"] == lead.as_str()))
        .expect("the lead is listed")
        .clone();
    assert_eq!(
        (
            &lead_item["tags"],
            &lead_item["consents"],
            &lead_item["points"],
            &lead_item["orders"]["count"],
            &lead_item["orders"]["last"],
            &lead_item["interactions"],
            &lead_item["lifecycle_stage"],
        ),
        (
            &json!([]),
            &json!({}),
            &json!({"available": 0, "pending": 0, "debt": 0}),
            &json!(0),
            &Json::Null,
            &json!({"open": 0, "pending": 0}),
            &json!("lead"),
        )
    );
}

#[test]
fn list_pages_with_a_keyset_cursor() {
    // Arrange: five contacts, created one second apart.
    let app = TestApp::new();
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(app.create_contact(&json!({"email": format!("page{i}@example.jp")})));
        tick(&app);
    }

    // Act
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut query = "limit=2".to_owned();
    loop {
        let (ids, body) = list(&app, &query);
        pages.push(ids);
        match body["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=2&cursor={}", enc(cursor)),
            None => break,
        }
        assert!(pages.len() <= 5, "pagination does not end");
    }

    // Assert
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1], "pages: {pages:?}");
    let all: Vec<String> = pages.concat();
    assert_eq!(all, created, "disjoint, complete, in creation order");
}

#[test]
fn list_refuses_bad_cursors_and_limits() {
    // Arrange
    let app = TestApp::new();
    app.create_contact(&json!({"email": "one@example.jp"}));
    let cases = [
        ("cursor not base64", "cursor=%21%21%21", "cursor"),
        ("cursor of the timeline's shape", "cursor=YR9i", "cursor"),
        ("limit zero", "limit=0", "limit"),
        ("limit above 200", "limit=500", "limit"),
        ("limit negative", "limit=-1", "limit"),
        ("limit not a number", "limit=ten", "limit"),
    ];

    for (case, query, field) in cases {
        // Act
        let response = app.get(READ_KEY, &format!("/v1/contacts?{query}"));

        // Assert
        let problem = response.assert_problem(422, case);
        assert_eq!(error_fields(&problem), [field], "case {case}");
    }
}

// ---------------------------------------------------------------------------
// PATCH /v1/contacts/{id}
// ---------------------------------------------------------------------------

#[test]
fn patch_changes_editable_fields_and_null_clears() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({
        "email": "patch@example.jp", "name": "Before", "company": "Old Co",
        "address": "東京都渋谷区", "attributes": {"plan": "silver"},
    }));
    tick(&app);

    // Act
    let response = app.send_json(
        "PATCH",
        WRITE_KEY,
        &format!("/v1/contacts/{id}"),
        &json!({
            "name": "新しい 名前", "company": null, "address": "", "phone": "+81 3 1234 5678",
            "postal_code": "100-0001", "attributes": {"plan": "gold", "size": "M"},
        }),
    );

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["name"], "新しい 名前");
    assert_eq!(body["company"], Json::Null);
    assert_eq!(body["address"], Json::Null);
    assert_eq!(body["phone"], "+81312345678");
    assert_eq!(body["postal_code"], "100-0001");
    assert_eq!(body["attributes"], json!({"plan": "gold", "size": "M"}));
    assert_eq!(body["email"], "patch@example.jp", "fields not named stay");
    assert_eq!(body["updated_at"], "2026-11-22T03:00:01.000000Z");
    assert_eq!(fetch(&app, &id), body);
    let (company, address): (Option<String>, Option<String>) = app
        .db()
        .query_row(
            "SELECT company, address FROM contacts WHERE id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row");
    assert_eq!((company, address), (None, None), "cleared in the database");
    assert_eq!(
        list(&app, &format!("q={}", enc("新しい"))).0,
        [id.as_str()],
        "search sees the new name"
    );
    assert_eq!(
        list(&app, "q=before").0,
        Vec::<String>::new(),
        "search forgets the old name"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM interactions WHERE kind = 'contact_updated'"),
        1
    );
}

#[test]
fn patch_refuses_counters_ids_timestamps_and_changes_nothing() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "locked@example.jp", "name": "Locked"}));
    let before = fetch(&app, &id);
    let counts = app.table_counts();
    let mut fields = not_assignable();
    fields.extend([
        ("first_touch", json!({"source": "x"})),
        ("tags", json!(["vip"])),
        ("erased", json!(true)),
    ]);

    for (field, value) in fields {
        tick(&app);
        let mut body = json!({"name": "Changed"});
        body[field] = value;

        // Act
        let response = app.send_json("PATCH", WRITE_KEY, &format!("/v1/contacts/{id}"), &body);

        // Assert
        let problem = response.assert_problem(422, field);
        assert_eq!(error_fields(&problem), [field], "case {field}: {problem}");
        assert_eq!(fetch(&app, &id), before, "case {field}: nothing changed");
    }
    assert_eq!(app.table_counts(), counts);
}

#[test]
fn patch_refuses_invalid_values_and_changes_nothing() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(
        &json!({"email": "valid@example.jp", "name": "Valid", "birthday": "1990-01-01"}),
    );
    let before = fetch(&app, &id);
    let counts = app.table_counts();
    let cases = [
        (
            "invalid email",
            json!({"email": "not-an-email", "name": "X"}),
            "email",
        ),
        (
            "invalid phone",
            json!({"phone": "12", "name": "X"}),
            "phone",
        ),
        ("name of the wrong type", json!({"name": 42}), "name"),
        (
            "attributes of the wrong type",
            json!({"attributes": "plan=gold"}),
            "attributes",
        ),
        (
            "attribute value not a string",
            json!({"attributes": {"n": 1}}),
            "attributes.n",
        ),
        (
            "impossible birthday",
            json!({"birthday": "1990-02-30"}),
            "birthday",
        ),
        (
            "external_id too long",
            json!({"external_id": "x".repeat(129)}),
            "external_id",
        ),
        (
            "control character",
            json!({"company": "a\u{7}b"}),
            "company",
        ),
    ];

    for (case, body, field) in cases {
        tick(&app);

        // Act
        let response = app.send_json("PATCH", WRITE_KEY, &format!("/v1/contacts/{id}"), &body);

        // Assert
        let problem = response.assert_problem(422, case);
        assert!(
            error_fields(&problem).iter().any(|f| f == field),
            "case {case}: {problem}"
        );
        assert_eq!(fetch(&app, &id), before, "case {case}: nothing changed");
    }
    let malformed = [
        ("invalid JSON", "application/json", "{\"name\": ", 400),
        ("array body", "application/json", "[]", 422),
        ("text/plain", "text/plain", "{\"name\": \"X\"}", 415),
    ];
    for (case, content_type, body, status) in malformed {
        let response = app.request(
            "PATCH",
            &format!("/v1/contacts/{id}"),
            &[
                ("authorization", &bearer(WRITE_KEY)),
                ("content-type", content_type),
            ],
            body,
        );
        response.assert_problem(status, case);
    }
    assert_eq!(fetch(&app, &id), before);
    assert_eq!(app.table_counts(), counts);
}

#[test]
fn patch_null_clears_the_attributes() {
    // Arrange
    let app = TestApp::new();
    let id =
        app.create_contact(&json!({"email": "attrs@example.jp", "attributes": {"plan": "gold"}}));
    tick(&app);

    // Act
    let response = app.send_json(
        "PATCH",
        WRITE_KEY,
        &format!("/v1/contacts/{id}"),
        &json!({"attributes": null}),
    );

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["attributes"], json!({}));
    assert_eq!(fetch(&app, &id)["attributes"], json!({}));
}

#[test]
fn patch_never_drops_an_attribute_silently() {
    // Arrange: a contact holding the most attributes a contact may hold.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "full@example.jp"}));
    for batch in 0..4 {
        let attributes: serde_json::Map<String, Json> = (0..50)
            .map(|i| (format!("a{batch}_{i:02}"), json!("x")))
            .collect();
        let response = app.send_json(
            "PATCH",
            WRITE_KEY,
            &format!("/v1/contacts/{id}"),
            &json!({"attributes": attributes}),
        );
        assert_eq!(response.status, 200, "batch {batch}: {}", response.text());
    }
    assert_eq!(
        fetch(&app, &id)["attributes"].as_object().map(|m| m.len()),
        Some(200)
    );
    tick(&app);

    // Act
    let response = app.send_json(
        "PATCH",
        WRITE_KEY,
        &format!("/v1/contacts/{id}"),
        &json!({"attributes": {"one_more": "y"}}),
    );

    // Assert: either stored, or refused with a 4xx; never a 200 that ignores it.
    let stored = fetch(&app, &id)["attributes"].get("one_more").cloned();
    if response.status == 200 {
        assert_eq!(
            stored,
            Some(json!("y")),
            "a 200 must mean the attribute was stored"
        );
    } else {
        let problem = response.assert_problem(422, "attribute beyond the limit");
        assert!(
            error_fields(&problem)
                .iter()
                .any(|f| f.starts_with("attributes")),
            "{problem}"
        );
        assert_eq!(stored, None);
    }
}

#[test]
fn patch_with_an_empty_object_is_422() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "empty@example.jp"}));
    let before = fetch(&app, &id);

    // Act
    let response = app.send_json(
        "PATCH",
        WRITE_KEY,
        &format!("/v1/contacts/{id}"),
        &json!({}),
    );

    // Assert
    response.assert_problem(422, "empty patch");
    assert_eq!(fetch(&app, &id), before);
}

#[test]
fn patch_cannot_clear_the_last_identity() {
    // Arrange: contacts without an external id.
    let app = TestApp::new();
    let both = app.create_contact(
        &json!({"email": "both@example.jp", "phone": "090-1111-2222", "name": "Both"}),
    );
    let email_only = app.create_contact(&json!({"email": "only@example.jp"}));
    let cases = [
        (
            "null email and phone",
            &both,
            json!({"email": null, "phone": null}),
        ),
        (
            "blank email and phone",
            &both,
            json!({"email": " ", "phone": ""}),
        ),
        (
            "clearing with a name change",
            &both,
            json!({"email": null, "phone": null, "name": "Gone"}),
        ),
        (
            "null email of an email-only contact",
            &email_only,
            json!({"email": null}),
        ),
    ];
    let counts = app.table_counts();

    for (case, id, body) in cases {
        let before = fetch(&app, id);
        tick(&app);

        // Act
        let response = app.send_json("PATCH", WRITE_KEY, &format!("/v1/contacts/{id}"), &body);

        // Assert
        response.assert_problem(422, case);
        assert_eq!(fetch(&app, id), before, "case {case}: unchanged");
    }
    assert_eq!(app.table_counts(), counts);
    assert_eq!(list(&app, "q=both").0, [both.as_str()], "search terms kept");
}

#[test]
fn patch_of_an_unknown_contact_is_404() {
    // Arrange
    let app = TestApp::new();
    app.create_contact(&json!({"email": "someone@example.jp"}));
    let counts = app.table_counts();

    // Act
    let response = app.send_json(
        "PATCH",
        WRITE_KEY,
        &format!("/v1/contacts/{UNKNOWN_ID}"),
        &json!({"name": "X"}),
    );

    // Assert
    response.assert_problem(404, "unknown contact");
    assert_eq!(app.table_counts(), counts);
}

// ---------------------------------------------------------------------------
// Tags
// ---------------------------------------------------------------------------

#[test]
fn tags_put_and_delete_are_idempotent_and_percent_decoded() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "tagged@example.jp"}));
    let tag = "vip 顧客";
    let path = format!("/v1/contacts/{id}/tags/{}", enc(tag));
    let tag_call = |method: &str| {
        app.request(
            method,
            &path,
            &[("authorization", &bearer(WRITE_KEY))],
            Bytes::new(),
        )
    };

    // Act + Assert: add twice.
    for (attempt, changed) in [("first PUT", true), ("repeated PUT", false)] {
        let response = tag_call("PUT");
        assert_eq!(response.status, 200, "{attempt}: {}", response.text());
        assert_eq!(
            response.json(),
            json!({"contact_id": id, "tag": tag, "present": true, "changed": changed}),
            "{attempt}"
        );
    }
    assert_eq!(fetch(&app, &id)["tags"], json!([tag]));
    assert_eq!(app.count("SELECT count(*) FROM contact_tags"), 1);
    assert_eq!(
        app.count("SELECT count(*) FROM interactions WHERE kind = 'tag_added'"),
        1
    );

    // Act + Assert: remove twice.
    for (attempt, changed) in [("first DELETE", true), ("repeated DELETE", false)] {
        let response = tag_call("DELETE");
        assert_eq!(response.status, 200, "{attempt}: {}", response.text());
        assert_eq!(
            response.json(),
            json!({"contact_id": id, "tag": tag, "present": false, "changed": changed}),
            "{attempt}"
        );
    }
    assert_eq!(fetch(&app, &id)["tags"], json!([]));
    assert_eq!(app.count("SELECT count(*) FROM contact_tags"), 0);
    assert_eq!(
        app.count("SELECT count(*) FROM interactions WHERE kind = 'tag_removed'"),
        1
    );
}

#[test]
fn invalid_tags_are_422_and_store_nothing() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "tagless@example.jp"}));
    let counts = app.table_counts();
    let cases = [
        ("encoded slash", "a%2Fb".to_owned()),
        ("only spaces", "%20%20".to_owned()),
        ("control character", "a%00b".to_owned()),
        ("65 characters", "x".repeat(65)),
    ];

    for (case, segment) in cases {
        // Act
        let response = app.request(
            "PUT",
            &format!("/v1/contacts/{id}/tags/{segment}"),
            &[("authorization", &bearer(WRITE_KEY))],
            Bytes::new(),
        );

        // Assert
        let problem = response.assert_problem(422, case);
        assert_eq!(error_fields(&problem), ["tag"], "case {case}");
    }
    assert_eq!(app.table_counts(), counts);
    assert_eq!(fetch(&app, &id)["tags"], json!([]));
}

#[test]
fn tagging_an_unknown_contact_is_404() {
    // Arrange
    let app = TestApp::new();
    app.create_contact(&json!({"email": "someone@example.jp"}));
    let counts = app.table_counts();

    // Act
    let response = app.request(
        "PUT",
        &format!("/v1/contacts/{UNKNOWN_ID}/tags/vip"),
        &[("authorization", &bearer(WRITE_KEY))],
        Bytes::new(),
    );

    // Assert
    response.assert_problem(404, "tag on unknown contact");
    assert_eq!(app.table_counts(), counts);
}

// ---------------------------------------------------------------------------
// Interactions and the timeline
// ---------------------------------------------------------------------------

#[test]
fn interactions_are_recorded_and_the_timeline_is_newest_first() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: the contact is created "now"; interactions happened earlier,
    // posted out of order.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "timeline@example.jp"}));
    let path = format!("/v1/contacts/{id}/interactions");
    let posts = [
        json!({"kind": "call", "channel": "phone", "subject": "初回の電話", "occurred_at": "2026-11-19T03:00:00Z"}),
        json!({"kind": "note", "body": "VIP 候補", "occurred_at": "2026-11-21T12:00:00+09:00"}),
        json!({"kind": "visit", "channel": "in_person", "body": "来店", "occurred_at": "2026-11-20T03:00:00Z"}),
    ];

    // Act
    for body in &posts {
        let response = app.send_json("POST", WRITE_KEY, &path, body);
        assert_eq!(response.status, 201, "{body}: {}", response.text());
        let answer = response.json();
        assert_eq!(answer["kind"], body["kind"]);
        assert_eq!(answer["contact_id"], id.as_str());
    }
    let mut pages = Vec::new();
    let mut query = "limit=2".to_owned();
    loop {
        let response = app.get(READ_KEY, &format!("/v1/contacts/{id}/timeline?{query}"));
        assert_eq!(response.status, 200, "{}", response.text());
        let page = response.json();
        pages.push(page["items"].as_array().expect("items").clone());
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=2&cursor={}", enc(cursor)),
            None => break,
        }
        assert!(pages.len() <= 4, "pagination does not end");
    }

    // Assert
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
    let entries: Vec<(String, String)> = pages
        .concat()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or("").to_owned(),
                e["occurred_at"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected = [
        ("contact_created", "2026-11-22T03:00:00.000000Z"),
        ("note", "2026-11-21T03:00:00.000000Z"),
        ("visit", "2026-11-20T03:00:00.000000Z"),
        ("call", "2026-11-19T03:00:00.000000Z"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(k, t)| ((*k).to_owned(), (*t).to_owned()))
        .collect();
    assert_eq!(entries, expected);
    let call = &pages[1][1];
    assert_eq!(call["subject"], "初回の電話");
    assert_eq!(call["channel"], "phone");
    assert_eq!(call["recorded_by"], "key:writer");
    assert_eq!(call["recorded_at"], "2026-11-22T03:00:00.000000Z");
    assert_eq!(app.count("SELECT count(*) FROM interactions"), 4);
}

#[test]
fn invalid_interactions_are_422_and_store_nothing() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "strict@example.jp"}));
    let counts = app.table_counts();
    let cases = [
        (
            "unknown kind",
            json!({"kind": "meeting", "body": "x"}),
            "kind",
        ),
        (
            "system kind",
            json!({"kind": "contact_created", "body": "x"}),
            "kind",
        ),
        (
            "future occurred_at",
            json!({"kind": "call", "body": "x",
                   "occurred_at": kizuna::timestamp::format(app.now() + time::Duration::hours(1))}),
            "occurred_at",
        ),
        (
            "occurred_at not RFC 3339",
            json!({"kind": "call", "body": "x", "occurred_at": "yesterday"}),
            "occurred_at",
        ),
        (
            "unknown channel",
            json!({"kind": "call", "body": "x", "channel": "fax"}),
            "channel",
        ),
        ("neither subject nor body", json!({"kind": "note"}), "body"),
        (
            "subject too long",
            json!({"kind": "note", "subject": "s".repeat(201)}),
            "subject",
        ),
    ];

    for (case, body, field) in cases {
        // Act
        let response = app.send_json(
            "POST",
            WRITE_KEY,
            &format!("/v1/contacts/{id}/interactions"),
            &body,
        );

        // Assert
        let problem = response.assert_problem(422, case);
        assert!(
            error_fields(&problem).iter().any(|f| f == field),
            "case {case}: {problem}"
        );
    }
    let forged = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/interactions"),
        &json!({"kind": "note", "body": "x", "recorded_by": "key:admin"}),
    );
    forged.assert_problem(422, "unknown field recorded_by");
    assert_eq!(app.table_counts(), counts, "nothing stored");
}

#[test]
fn an_interaction_a_few_minutes_ahead_is_accepted() {
    // Arrange: clocks drift; up to five minutes ahead is allowed.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "skew@example.jp"}));

    // Act
    let response = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/interactions"),
        &json!({"kind": "call", "body": "x", "occurred_at": "2026-11-22T03:04:00Z"}),
    );

    // Assert
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(
        response.json()["occurred_at"],
        "2026-11-22T03:04:00.000000Z"
    );
}

#[test]
fn interactions_and_timeline_of_an_unknown_contact_are_404() {
    // Arrange
    let app = TestApp::new();
    app.create_contact(&json!({"email": "someone@example.jp"}));
    let counts = app.table_counts();

    // Act
    let posted = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{UNKNOWN_ID}/interactions"),
        &json!({"kind": "note", "body": "x"}),
    );
    let timeline = app.get(READ_KEY, &format!("/v1/contacts/{UNKNOWN_ID}/timeline"));

    // Assert
    posted.assert_problem(404, "POST interaction");
    timeline.assert_problem(404, "GET timeline");
    app.get(READ_KEY, "/v1/contacts/nope/timeline")
        .assert_problem(404, "timeline of a non-UUID");
    assert_eq!(app.table_counts(), counts);
}

#[test]
fn timeline_refuses_bad_cursors_and_limits() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "tl@example.jp"}));
    let cases = [
        ("cursor not base64", "cursor=%21%21", "cursor"),
        (
            "cursor of the contact list's shape",
            "cursor=YWJj",
            "cursor",
        ),
        ("limit zero", "limit=0", "limit"),
        ("limit above 200", "limit=201", "limit"),
    ];

    for (case, query, field) in cases {
        // Act
        let response = app.get(READ_KEY, &format!("/v1/contacts/{id}/timeline?{query}"));

        // Assert
        let problem = response.assert_problem(422, case);
        assert_eq!(error_fields(&problem), [field], "case {case}");
    }
}

#[test]
fn an_idempotency_key_replays_the_first_answer() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "retry@example.jp"}));
    let path = format!("/v1/contacts/{id}/interactions");
    let body = json!({"kind": "call", "channel": "phone", "body": "折り返し希望"});
    let headers = [("idempotency-key", "call-2026-11-22-0001")];

    // Act: the retry comes a minute later.
    let first = send_json_with(&app, "POST", WRITE_KEY, &path, &headers, &body);
    app.clock.advance(time::Duration::minutes(1));
    let retry = send_json_with(&app, "POST", WRITE_KEY, &path, &headers, &body);

    // Assert
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(retry.status, 201, "{}", retry.text());
    assert_eq!(retry.body, first.body, "the first answer, byte for byte");
    assert_eq!(retry.json()["occurred_at"], "2026-11-22T03:00:00.000000Z");
    assert_eq!(
        app.count("SELECT count(*) FROM interactions WHERE kind = 'call'"),
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM idempotency_keys"), 1);
}

#[test]
fn an_idempotency_key_reused_with_another_body_is_422() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "reuse@example.jp"}));
    let path = format!("/v1/contacts/{id}/interactions");
    let headers = [("idempotency-key", "k-1")];
    let first = send_json_with(
        &app,
        "POST",
        WRITE_KEY,
        &path,
        &headers,
        &json!({"kind": "note", "body": "one"}),
    );
    assert_eq!(first.status, 201, "{}", first.text());
    let counts = app.table_counts();

    // Act
    let reused = send_json_with(
        &app,
        "POST",
        WRITE_KEY,
        &path,
        &headers,
        &json!({"kind": "note", "body": "two"}),
    );

    // Assert
    let problem = reused.assert_problem(422, "same key, different body");
    assert_eq!(error_fields(&problem), ["Idempotency-Key"]);
    assert_eq!(app.table_counts(), counts, "nothing stored");
    let bodies: Vec<String> = {
        let db = app.db();
        let mut statement = db
            .prepare("SELECT body FROM interactions WHERE kind = 'note'")
            .expect("sql");
        statement
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert_eq!(bodies, ["one"]);
}

/// `POST /v1/contacts/{id}/interactions`, which must succeed; returns its answer.
fn record(app: &TestApp, id: &str, body: &Json) -> Json {
    let response = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/interactions"),
        body,
    );
    assert_eq!(response.status, 201, "{body}: {}", response.text());
    response.json()
}

/// The stored (agent, status, updated_by) of an interaction.
fn handling(
    app: &TestApp,
    interaction_id: &str,
) -> (Option<String>, Option<String>, Option<String>) {
    app.db()
        .query_row(
            "SELECT agent, status, updated_by FROM interactions WHERE id = ?1",
            [interaction_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("the interaction")
}

/// Every page of `/v1/contacts/{id}/timeline?{query}` at `limit`.
fn timeline_pages(app: &TestApp, id: &str, query: &str, limit: usize) -> Vec<Vec<Json>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/contacts/{id}/timeline?limit={limit}");
        if !query.is_empty() {
            path.push_str(&format!("&{query}"));
        }
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={}", enc(cursor)));
        }
        let response = app.get(READ_KEY, &path);
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        let page = response.json();
        pages.push(page["items"].as_array().expect("items").clone());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages.len() <= 20, "pagination does not end");
    }
    pages
}

fn kinds_of(entries: &[Json]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect()
}

#[test]
fn an_interaction_keeps_its_agent_beside_the_key_and_starts_in_its_kinds_status() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "agent@example.jp"}));
    let cases = [
        (
            "an inquiry starts open",
            json!({"kind": "inquiry", "channel": "phone", "subject": "配送について", "agent": "佐藤"}),
            Some("open"),
            Some("佐藤"),
        ),
        (
            "a call records something done",
            json!({"kind": "call", "channel": "phone", "body": "折り返し済み"}),
            Some("closed"),
            None,
        ),
        (
            "a call waiting for a callback",
            json!({"kind": "call", "body": "明日かけ直す", "status": "pending", "agent": "  田中  "}),
            Some("pending"),
            Some("田中"),
        ),
        (
            "a note closed unless told",
            json!({"kind": "note", "body": "ギフト包装を好む"}),
            Some("closed"),
            None,
        ),
    ];

    for (case, body, status, agent) in cases {
        // Act
        let answer = record(&app, &id, &body);

        // Assert
        assert_eq!(answer["status"], json!(status), "case {case}");
        assert_eq!(answer["agent"], json!(agent), "case {case}");
        assert_eq!(answer["recorded_by"], "key:writer", "case {case}");
        let entry_id = answer["id"].as_str().expect("id");
        assert_eq!(
            handling(&app, entry_id),
            (agent.map(str::to_owned), status.map(str::to_owned), None),
            "case {case}: stored"
        );
    }
    let timeline = app
        .get(
            READ_KEY,
            &format!("/v1/contacts/{id}/timeline?kind=inquiry"),
        )
        .json();
    let inquiry = &timeline["items"][0];
    assert_eq!(
        (
            &inquiry["agent"],
            &inquiry["status"],
            &inquiry["recorded_by"]
        ),
        (&json!("佐藤"), &json!("open"), &json!("key:writer"))
    );
    assert_eq!(inquiry["updated_at"], Json::Null);
}

#[test]
fn an_interactions_status_and_agent_change_by_patch_and_each_change_is_logged() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: an open inquiry taken by 佐藤.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "queue@example.jp"}));
    let inquiry = record(
        &app,
        &id,
        &json!({"kind": "inquiry", "subject": "返品したい", "agent": "佐藤"}),
    );
    let inquiry_id = inquiry["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/contacts/{id}/interactions/{inquiry_id}");
    tick(&app);

    // Act: waiting for the customer, then handed to 田中 who closes it
    // (the second sent twice with one Idempotency-Key).
    let pending = app.send_json(
        "PATCH",
        WRITE_KEY,
        &path,
        &json!({"status": "pending", "note": "写真を依頼"}),
    );
    tick(&app);
    let close = json!({"status": "closed", "agent": "田中", "note": "返金で合意"});
    let headers = [("idempotency-key", "close-inquiry-1")];
    let closed = send_json_with(&app, "PATCH", WRITE_KEY, &path, &headers, &close);
    let retried = send_json_with(&app, "PATCH", WRITE_KEY, &path, &headers, &close);

    // Assert
    assert_eq!(pending.status, 200, "{}", pending.text());
    assert_eq!(pending.json()["status"], "pending");
    assert_eq!(pending.json()["changed"], json!(["status"]));
    assert_eq!(closed.status, 200, "{}", closed.text());
    assert_eq!(
        retried.body, closed.body,
        "a retry answers the first result"
    );
    let answer = closed.json();
    assert_eq!(answer["id"], inquiry_id.as_str());
    assert_eq!(answer["contact_id"], id.as_str());
    assert_eq!(answer["kind"], "inquiry");
    assert_eq!(answer["subject"], "返品したい");
    assert_eq!(
        (&answer["status"], &answer["agent"]),
        (&json!("closed"), &json!("田中"))
    );
    assert_eq!(answer["changed"], json!(["status", "agent"]));
    assert_eq!(answer["recorded_by"], "key:writer", "who recorded it stays");
    assert_eq!(answer["updated_at"], "2026-11-22T03:00:02.000000Z");
    assert_eq!(
        handling(&app, &inquiry_id),
        (
            Some("田中".to_owned()),
            Some("closed".to_owned()),
            Some("key:writer".to_owned())
        )
    );
    let log = app
        .get(
            READ_KEY,
            &format!("/v1/contacts/{id}/timeline?kind=interaction_updated"),
        )
        .json();
    let log = log["items"].as_array().expect("items").clone();
    assert_eq!(
        log.len(),
        2,
        "one entry per change, none for the retry: {log:?}"
    );
    assert_eq!(
        log[0]["data"],
        json!({"interaction_id": inquiry_id, "interaction_kind": "inquiry",
               "status": {"from": "pending", "to": "closed"},
               "agent": {"from": "佐藤", "to": "田中"}})
    );
    assert_eq!(log[0]["body"], "返金で合意");
    assert_eq!(log[0]["agent"], "田中");
    assert_eq!(
        log[1]["data"],
        json!({"interaction_id": inquiry_id, "interaction_kind": "inquiry",
               "status": {"from": "open", "to": "pending"}})
    );
    assert_eq!(log[1]["body"], "写真を依頼");
    assert_eq!(log[1]["occurred_at"], "2026-11-22T03:00:01.000000Z");
    let export = app
        .get(READ_KEY, &format!("/v1/contacts/{id}/export"))
        .json();
    let exported = export["timeline"]
        .as_array()
        .and_then(|entries| entries.iter().find(|e| e["id"] == inquiry_id.as_str()))
        .expect("the inquiry is exported")
        .clone();
    assert_eq!(
        (
            &exported["agent"],
            &exported["status"],
            &exported["updated_by"]
        ),
        (&json!("田中"), &json!("closed"), &json!("key:writer")),
        "the export holds who handled it and where it stands"
    );
}

#[test]
fn concurrent_changes_of_one_interaction_each_log_what_they_replaced() {
    // Arrange: an open inquiry, and eight agents changing it at once.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "busy.line@example.jp"}));
    let inquiry = record(&app, &id, &json!({"kind": "inquiry", "body": "至急"}));
    let inquiry_id = inquiry["id"].as_str().expect("id").to_owned();
    let server = app.serve(8);
    let url = format!(
        "{}/v1/contacts/{id}/interactions/{inquiry_id}",
        server.url()
    );
    let statuses = [
        "pending", "closed", "open", "closed", "pending", "open", "closed", "pending",
    ];
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let barrier = std::sync::Barrier::new(statuses.len());

    // Act
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = statuses
            .iter()
            .enumerate()
            .map(|(n, status)| {
                let (agent, barrier, url) = (&agent, &barrier, &url);
                scope.spawn(move || {
                    let body = json!({"status": status, "agent": format!("担当{n}"), "note": format!("変更{n}")});
                    barrier.wait();
                    match agent
                        .patch(url)
                        .header("authorization", &bearer(WRITE_KEY))
                        .header("content-type", "application/json")
                        .send(body.to_string())
                    {
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
    });
    server.stop();

    // Assert: every change applied once, one after another, and the log
    // chains: each change starts from the value the one before it left.
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    let log: Vec<Json> = timeline_pages(&app, &id, "kind=interaction_updated", 50)
        .concat()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(log.len(), statuses.len(), "one entry per change: {log:?}");
    let mut notes: Vec<&str> = log
        .iter()
        .map(|e| e["body"].as_str().unwrap_or(""))
        .collect();
    notes.sort_unstable();
    let mut expected_notes: Vec<String> = (0..statuses.len()).map(|n| format!("変更{n}")).collect();
    expected_notes.sort_unstable();
    assert_eq!(notes, expected_notes, "every note kept");
    let mut agent_now = Json::Null;
    let mut status_now = json!("open");
    for entry in &log {
        let data = &entry["data"];
        // Each request names a new agent, so every change moves the agent.
        assert_eq!(data["agent"]["from"], agent_now, "{entry}");
        agent_now = data["agent"]["to"].clone();
        if !data["status"].is_null() {
            assert_eq!(data["status"]["from"], status_now, "{entry}");
            status_now = data["status"]["to"].clone();
        }
    }
    let (agent_stored, status_stored, _) = handling(&app, &inquiry_id);
    assert_eq!(
        json!(agent_stored),
        agent_now,
        "the row holds the last change"
    );
    assert_eq!(json!(status_stored), status_now);
}

#[test]
fn a_patch_that_changes_nothing_writes_nothing_unless_it_carries_a_note() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "same@example.jp"}));
    let call = record(
        &app,
        &id,
        &json!({"kind": "call", "body": "x", "agent": "佐藤"}),
    );
    let path = format!(
        "/v1/contacts/{id}/interactions/{}",
        call["id"].as_str().expect("id")
    );
    let counts = app.table_counts();

    // Act
    let same = app.send_json(
        "PATCH",
        WRITE_KEY,
        &path,
        &json!({"status": "closed", "agent": "佐藤"}),
    );
    let unchanged_counts = app.table_counts();
    let noted = app.send_json(
        "PATCH",
        WRITE_KEY,
        &path,
        &json!({"status": "closed", "note": "念のため再確認済み"}),
    );

    // Assert
    assert_eq!(same.status, 200, "{}", same.text());
    assert_eq!(same.json()["changed"], json!([]));
    assert_eq!(same.json()["updated_at"], Json::Null);
    assert_eq!(unchanged_counts, counts, "nothing written");
    assert_eq!(noted.status, 200, "{}", noted.text());
    assert_eq!(noted.json()["changed"], json!([]));
    assert_eq!(
        app.count(
            "SELECT count(*) FROM interactions WHERE kind = 'interaction_updated'
             AND body = '念のため再確認済み'"
        ),
        1,
        "the note is kept"
    );
}

#[test]
fn invalid_interaction_changes_are_refused_and_change_nothing() {
    // Arrange: an inquiry, a system entry, and another contact's inquiry.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "guard@example.jp"}));
    let other = app.create_contact(&json!({"email": "other.guard@example.jp"}));
    let inquiry = record(&app, &id, &json!({"kind": "inquiry", "body": "x"}));
    let inquiry_id = inquiry["id"].as_str().expect("id").to_owned();
    let theirs = record(&app, &other, &json!({"kind": "inquiry", "body": "y"}));
    let theirs_id = theirs["id"].as_str().expect("id").to_owned();
    let created_id: String = app
        .db()
        .query_row(
            "SELECT id FROM interactions WHERE contact_id = ?1 AND kind = 'contact_created'",
            [&id],
            |r| r.get(0),
        )
        .expect("contact_created entry");
    let counts = app.table_counts();
    let mine = format!("/v1/contacts/{id}/interactions/{inquiry_id}");
    let cases = [
        (
            "unknown status",
            mine.clone(),
            json!({"status": "done"}),
            422,
            "status",
        ),
        (
            "status of the wrong type",
            mine.clone(),
            json!({"status": 1}),
            422,
            "status",
        ),
        (
            "agent too long",
            mine.clone(),
            json!({"agent": "a".repeat(101)}),
            422,
            "agent",
        ),
        (
            "agent with a control character",
            mine.clone(),
            json!({"agent": "佐\u{7}藤"}),
            422,
            "agent",
        ),
        (
            "note too long",
            mine.clone(),
            json!({"status": "closed", "note": "n".repeat(1001)}),
            422,
            "note",
        ),
        ("nothing to change", mine.clone(), json!({}), 422, "status"),
        (
            "a note alone",
            mine.clone(),
            json!({"note": "x"}),
            422,
            "status",
        ),
        (
            "a field that cannot change",
            mine.clone(),
            json!({"status": "closed", "kind": "call"}),
            422,
            "kind",
        ),
        (
            "recorded_by cannot be forged",
            mine.clone(),
            json!({"status": "closed", "recorded_by": "key:admin"}),
            422,
            "recorded_by",
        ),
        (
            "a system entry has no status",
            format!("/v1/contacts/{id}/interactions/{created_id}"),
            json!({"status": "closed"}),
            422,
            "status",
        ),
        (
            "another contact's interaction",
            format!("/v1/contacts/{id}/interactions/{theirs_id}"),
            json!({"status": "closed"}),
            404,
            "",
        ),
        (
            "an unknown interaction",
            format!("/v1/contacts/{id}/interactions/{UNKNOWN_ID}"),
            json!({"status": "closed"}),
            404,
            "",
        ),
        (
            "an unknown contact",
            format!("/v1/contacts/{UNKNOWN_ID}/interactions/{inquiry_id}"),
            json!({"status": "closed"}),
            404,
            "",
        ),
    ];

    for (case, path, body, status, field) in cases {
        // Act
        let response = app.send_json("PATCH", WRITE_KEY, &path, &body);

        // Assert
        let problem = response.assert_problem(status, case);
        if status == 422 {
            assert!(
                error_fields(&problem).iter().any(|f| f == field),
                "case {case}: {problem}"
            );
        }
    }
    let get = app.get(READ_KEY, &mine);
    assert_eq!(get.status, 405, "PATCH only: {}", get.text());
    let read_only = app.send_json("PATCH", READ_KEY, &mine, &json!({"status": "closed"}));
    read_only.assert_problem(403, "contacts:read cannot change an interaction");
    assert_eq!(app.table_counts(), counts, "nothing stored");
    assert_eq!(
        handling(&app, &inquiry_id),
        (None, Some("open".to_owned()), None)
    );
    assert_eq!(
        handling(&app, &theirs_id),
        (None, Some("open".to_owned()), None)
    );
}

#[test]
fn a_bad_kind_channel_or_status_is_422_listing_the_valid_ones() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "lists@example.jp"}));
    let path = format!("/v1/contacts/{id}/interactions");
    let counts = app.table_counts();
    let cases = [
        (
            "kind",
            json!({"kind": "meeting", "body": "x"}),
            vec!["inquiry", "call", "email", "visit", "note"],
        ),
        (
            "channel",
            json!({"kind": "call", "body": "x", "channel": "fax"}),
            vec![
                "phone",
                "email",
                "web",
                "in_person",
                "chat",
                "sms",
                "post",
                "other",
            ],
        ),
        (
            "status",
            json!({"kind": "call", "body": "x", "status": "done"}),
            vec!["open", "pending", "closed"],
        ),
    ];

    for (field, body, valid) in cases {
        // Act
        let response = app.send_json("POST", WRITE_KEY, &path, &body);

        // Assert
        let problem = response.assert_problem(422, field);
        let message = problem["errors"]
            .as_array()
            .and_then(|errors| errors.iter().find(|e| e["field"] == field))
            .and_then(|e| e["message"].as_str())
            .unwrap_or_else(|| panic!("no error for {field}: {problem}"))
            .to_owned();
        for name in valid {
            assert!(message.contains(name), "{field}: `{message}` lacks {name}");
        }
    }
    let long_agent = app.send_json(
        "POST",
        WRITE_KEY,
        &path,
        &json!({"kind": "call", "body": "x", "agent": "a".repeat(101)}),
    );
    let problem = long_agent.assert_problem(422, "agent too long");
    assert_eq!(error_fields(&problem), ["agent"]);
    assert_eq!(app.table_counts(), counts, "nothing stored");
}

#[test]
fn the_timeline_filters_by_one_or_several_kinds_with_full_pages() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: inquiries and calls among notes, one second apart.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "filter@example.jp"}));
    let mut inquiries = Vec::new();
    let mut calls = Vec::new();
    for i in 0..4 {
        tick(&app);
        inquiries.push(
            record(
                &app,
                &id,
                &json!({"kind": "inquiry", "body": format!("問い合わせ {i}")}),
            )["id"]
                .clone(),
        );
        tick(&app);
        record(
            &app,
            &id,
            &json!({"kind": "note", "body": format!("メモ {i}")}),
        );
        tick(&app);
        calls.push(
            record(
                &app,
                &id,
                &json!({"kind": "call", "body": format!("電話 {i}")}),
            )["id"]
                .clone(),
        );
    }
    inquiries.reverse();
    calls.reverse();

    // Act
    let only_inquiries = timeline_pages(&app, &id, "kind=inquiry", 3);
    let both = timeline_pages(&app, &id, &format!("kind={}", enc("inquiry, call")), 3);

    // Assert
    assert_eq!(
        only_inquiries.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 1]
    );
    let ids: Vec<Json> = only_inquiries
        .concat()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(ids, inquiries, "every inquiry once, newest first");
    assert_eq!(both.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 2]);
    let both = both.concat();
    assert!(
        kinds_of(&both)
            .iter()
            .all(|k| *k == "inquiry" || *k == "call")
    );
    let mut expected = Vec::new();
    for (inquiry, call) in inquiries.iter().zip(&calls) {
        expected.push(call.clone());
        expected.push(inquiry.clone());
    }
    let ids: Vec<Json> = both.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids, expected);
    let all = timeline_pages(&app, &id, "kind=inquiry,call,note,contact_created", 50);
    assert_eq!(all.concat().len(), 13);
}

#[test]
fn an_unknown_timeline_kind_is_422_listing_the_valid_ones() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "kinds@example.jp"}));
    let cases = [
        ("unknown kind", "kind=meeting"),
        ("one unknown among known", "kind=inquiry,meeting"),
        ("empty", "kind="),
        ("a trailing comma", "kind=inquiry,"),
    ];

    for (case, query) in cases {
        // Act
        let response = app.get(READ_KEY, &format!("/v1/contacts/{id}/timeline?{query}"));

        // Assert
        let problem = response.assert_problem(422, case);
        assert_eq!(error_fields(&problem), ["kind"], "case {case}");
        let message = problem["errors"][0]["message"].as_str().unwrap_or("");
        for kind in [
            "inquiry",
            "note",
            "interaction_updated",
            "order_placed",
            "points_earned",
            "points_redeemed",
            "points_expired",
        ] {
            assert!(
                message.contains(kind),
                "case {case}: `{message}` lacks {kind}"
            );
        }
    }
    app.get(
        READ_KEY,
        &format!("/v1/contacts/{id}/timeline?kinds=inquiry"),
    )
    .assert_problem(422, "a misspelt parameter");
}

#[test]
fn points_earned_redeemed_and_expired_are_on_the_timeline() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange: a 5,000-yen order earns 50 points (the default program:
    // 1 per 100 yen, expiring after 365 days); 10 are spent at the till.
    let app = TestApp::new();
    let event = json!({
        "type": "order.paid",
        "timestamp": "2026-11-22T02:59:30Z",
        "data": {
            "id": "TL-1", "number": "#1002", "currency": "JPY",
            "placed_at": "2026-11-22T02:59:00Z", "updated_at": "2026-11-22T02:59:10Z",
            "customer": {"email": "points.tl@example.jp"},
            "subtotal": "5000", "shipping": "0", "tax": "400", "discount": "0",
            "total": "5400", "points_used": 0,
            "lines": [{"id": "L1", "sku": "TEA-1", "name": "煎茶", "quantity": 1,
                       "unit_price": "5000", "total": "5000", "discount": "0", "tax": "400"}],
            "refunds": []
        }
    });
    let order = app.post_kizuna_event("msg_tl_1", event.to_string().into_bytes());
    assert_eq!(order.status, 200, "{}", order.text());
    let id: String = app
        .db()
        .query_row(
            "SELECT id FROM contacts WHERE email = 'points.tl@example.jp'",
            [],
            |r| r.get(0),
        )
        .expect("the buyer");
    tick(&app);
    let redeem = app.request(
        "POST",
        "/v1/points/redeem",
        &[
            ("authorization", &bearer(POINTS_KEY)),
            ("content-type", "application/json"),
            ("idempotency-key", "tl-redeem-1"),
        ],
        json!({"contact_id": id, "points": 10, "reason": "店頭で利用", "order_ref": "POS-77"})
            .to_string(),
    );
    assert_eq!(redeem.status, 201, "{}", redeem.text());
    app.clock.advance(time::Duration::days(366));
    let sweep = app.send_json(
        "POST",
        POINTS_ADMIN_KEY,
        "/v1/points/expire-due",
        &json!({}),
    );
    assert_eq!(sweep.status, 200, "{}", sweep.text());

    // Act
    let points = timeline_pages(
        &app,
        &id,
        "kind=points_earned,points_redeemed,points_expired",
        2,
    );
    let whole = timeline_pages(&app, &id, "", 50).concat();

    // Assert
    assert_eq!(points.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    let points = points.concat();
    assert_eq!(
        kinds_of(&points),
        ["points_expired", "points_redeemed", "points_earned"]
    );
    let data: Vec<(&Json, &Json)> = points
        .iter()
        .map(|e| (&e["data"]["points"], &e["data"]["balance_after"]))
        .collect();
    assert_eq!(
        data,
        [
            (&json!(-40), &json!(0)),
            (&json!(-10), &json!(40)),
            (&json!(50), &json!(50))
        ]
    );
    assert_eq!(points[0]["data"]["reason"], "expired");
    assert_eq!(points[0]["recorded_by"], "key:points-admin");
    assert_eq!(points[1]["data"]["reason"], "店頭で利用");
    assert_eq!(points[1]["data"]["order_ref"], "POS-77");
    assert_eq!(points[2]["data"]["order_number"], "#1002");
    assert_eq!(points[2]["data"]["order_external_id"], "TL-1");
    assert!(points[2]["data"]["order_id"].is_string());
    assert_eq!(points[2]["occurred_at"], "2026-11-22T03:00:00.000000Z");
    assert_eq!(points[2]["status"], Json::Null);
    let whole_kinds = kinds_of(&whole);
    for kind in [
        "points_expired",
        "points_redeemed",
        "points_earned",
        "order_placed",
    ] {
        assert!(
            whole_kinds.contains(&kind),
            "unfiltered: {whole_kinds:?} lacks {kind}"
        );
    }
    assert_eq!(
        whole_kinds[..2],
        ["points_expired", "points_redeemed"],
        "newest first"
    );
}

// ---------------------------------------------------------------------------
// Consent
// ---------------------------------------------------------------------------

#[test]
fn consents_are_granted_and_withdrawn_and_get_shows_the_latest() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "consent@example.jp", "phone": "090-2222-3333"}));
    let path = format!("/v1/contacts/{id}/consents");
    let changes = [
        json!({"channel": "email", "status": "granted", "reason": "form", "text_version": "2026-01"}),
        json!({"channel": "sms", "status": "granted"}),
        json!({"channel": "email", "status": "withdrawn", "reason": "complaint"}),
    ];

    // Act
    let mut last = Json::Null;
    for change in &changes {
        tick(&app);
        let response = app.send_json("POST", WRITE_KEY, &path, change);
        assert_eq!(response.status, 201, "{change}: {}", response.text());
        last = response.json();
    }

    // Assert
    let consents = fetch(&app, &id)["consents"].clone();
    assert_eq!(
        last["consents"], consents,
        "the answer shows the current state"
    );
    assert_eq!(consents["email"]["status"], "withdrawn");
    assert_eq!(consents["email"]["reason"], "complaint");
    assert_eq!(
        consents["email"]["recorded_at"],
        "2026-11-22T03:00:03.000000Z"
    );
    assert_eq!(consents["sms"]["status"], "granted");
    assert_eq!(consents["sms"]["reason"], "manual");
    assert_eq!(consents.get("post"), None);
    assert_eq!(
        app.count("SELECT count(*) FROM consents"),
        3,
        "the log keeps every change"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM interactions WHERE kind = 'consent_withdrawn'"),
        1
    );
}

#[test]
fn invalid_consent_changes_are_refused_and_store_nothing() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "noconsent@example.jp"}));
    let counts = app.table_counts();
    let path = format!("/v1/contacts/{id}/consents");
    let cases = [
        (
            "unknown channel",
            json!({"channel": "fax", "status": "granted"}),
            422,
            Some("channel"),
        ),
        (
            "unknown status",
            json!({"channel": "email", "status": "maybe"}),
            422,
            Some("status"),
        ),
        (
            "unknown reason",
            json!({"channel": "email", "status": "granted", "reason": "because"}),
            422,
            Some("reason"),
        ),
        ("missing status", json!({"channel": "email"}), 422, None),
    ];

    for (case, body, status, field) in cases {
        // Act
        let response = app.send_json("POST", WRITE_KEY, &path, &body);

        // Assert
        let problem = response.assert_problem(status, case);
        if let Some(field) = field {
            assert_eq!(error_fields(&problem), [field], "case {case}");
        }
    }
    app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{UNKNOWN_ID}/consents"),
        &json!({"channel": "email", "status": "granted"}),
    )
    .assert_problem(404, "consent of an unknown contact");
    assert_eq!(app.table_counts(), counts);
}

#[test]
fn staff_consent_keeps_its_source_and_note_beside_a_closed_reason() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "caller@example.jp"}));
    let path = format!("/v1/contacts/{id}/consents");
    let change = json!({
        "channel": "email", "status": "granted", "reason": "manual",
        "source": "電話（お客様相談室）",
        "note": "通話で口頭にて同意。担当: 佐藤",
    });

    // Act
    let response = app.send_json("POST", WRITE_KEY, &path, &change);
    let export = app.get(ADMIN_KEY, &format!("/v1/contacts/{id}/export"));

    // Assert
    assert_eq!(response.status, 201, "{}", response.text());
    let email = response.json()["consents"]["email"].clone();
    assert_eq!(email["reason"], "manual");
    assert_eq!(email["source"], "電話（お客様相談室）");
    assert_eq!(email["note"], "通話で口頭にて同意。担当: 佐藤");
    assert_eq!(
        email["occurred_at"], email["recorded_at"],
        "given as recorded"
    );
    assert_eq!(fetch(&app, &id)["consents"]["email"], email);
    assert_eq!(export.status, 200, "{}", export.text());
    let logged = &export.json()["consent_log"][0];
    assert_eq!(logged["source"], "電話（お客様相談室）");
    assert_eq!(logged["note"], "通話で口頭にて同意。担当: 佐藤");
}

#[test]
fn a_staff_consent_source_or_note_out_of_bounds_is_422_and_the_reason_stays_closed() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "bounds@example.jp"}));
    let path = format!("/v1/contacts/{id}/consents");
    let counts = app.table_counts();
    let grant = |extra: Json| {
        let mut body = json!({"channel": "email", "status": "granted"});
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        body
    };
    let cases = [
        (
            "a source of 101 characters",
            grant(json!({"source": "あ".repeat(101)})),
            "source",
        ),
        (
            "a source with a control character",
            grant(json!({"source": "電話\u{7}"})),
            "source",
        ),
        (
            "a note of 1,001 characters",
            grant(json!({"note": "x".repeat(1001)})),
            "note",
        ),
        (
            "a free-text reason",
            grant(json!({"reason": "電話で同意"})),
            "reason",
        ),
    ];

    for (case, body, field) in cases {
        // Act
        let response = app.send_json("POST", WRITE_KEY, &path, &body);

        // Assert
        let problem = response.assert_problem(422, case);
        assert_eq!(error_fields(&problem), [field], "case {case}");
    }
    assert_eq!(app.table_counts(), counts);
}

// ---------------------------------------------------------------------------
// One-click unsubscribe
// ---------------------------------------------------------------------------

fn unsubscribe_token(app: &TestApp, id: &str) -> String {
    let response = app.get(READ_KEY, &format!("/v1/contacts/{id}/unsubscribe-link"));
    assert_eq!(response.status, 200, "{}", response.text());
    let link = response.json();
    let token = link["token"].as_str().expect("token").to_owned();
    assert!(!token.is_empty());
    assert_eq!(
        link["url"],
        format!("https://crm.example.jp/v1/forms/unsubscribe?token={token}"),
        "the url carries the token"
    );
    assert_eq!(link["method"], "POST");
    token
}

fn one_click(app: &TestApp, token: &str) -> TestResponse {
    app.request(
        "POST",
        &format!("/v1/forms/unsubscribe?token={token}"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "List-Unsubscribe=One-Click",
    )
}

#[test]
fn the_unsubscribe_link_withdraws_email_consent_once() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "leave@example.jp"}));
    let granted = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/consents"),
        &json!({"channel": "email", "status": "granted", "reason": "form"}),
    );
    assert_eq!(granted.status, 201, "{}", granted.text());
    let token = unsubscribe_token(&app, &id);
    tick(&app);

    // Act
    let first = one_click(&app, &token);

    // Assert
    assert_eq!(first.status, 200, "{}", first.text());
    let consent = fetch(&app, &id)["consents"]["email"].clone();
    assert_eq!(consent["status"], "withdrawn");
    assert_eq!(consent["reason"], "unsubscribed");
    assert_eq!(app.count("SELECT count(*) FROM consents"), 2);
    let recorded_by: String = app
        .db()
        .query_row(
            "SELECT recorded_by FROM consents WHERE status = 'withdrawn'",
            [],
            |r| r.get(0),
        )
        .expect("row");
    assert_eq!(recorded_by, "unsubscribe-link");

    // Act: mail clients and people click twice.
    tick(&app);
    let counts = app.table_counts();
    let again = one_click(&app, &token);

    // Assert
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(app.table_counts(), counts, "no second consent row");
    assert_eq!(fetch(&app, &id)["consents"]["email"], consent);
}

#[test]
fn a_tampered_unsubscribe_token_is_422_and_stores_nothing() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "stay@example.jp"}));
    let granted = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/consents"),
        &json!({"channel": "email", "status": "granted"}),
    );
    assert_eq!(granted.status, 201, "{}", granted.text());
    let token = unsubscribe_token(&app, &id);
    let mut flipped: Vec<char> = token.chars().collect();
    flipped[30] = if flipped[30] == 'A' { 'B' } else { 'A' };
    let flipped: String = flipped.into_iter().collect();
    let counts = app.table_counts();
    let cases = [
        ("signature changed", flipped),
        ("truncated", token[..token.len() - 4].to_owned()),
        ("garbage", "not-a-token".to_owned()),
        ("empty", String::new()),
    ];

    for (case, bad) in cases {
        // Act
        let response = one_click(&app, &bad);

        // Assert
        let problem = response.assert_problem(422, case);
        assert_eq!(error_fields(&problem), ["token"], "case {case}");
    }
    assert_eq!(app.table_counts(), counts, "nothing stored");
    assert_eq!(fetch(&app, &id)["consents"]["email"]["status"], "granted");
}

// ---------------------------------------------------------------------------
// Export and erasure
// ---------------------------------------------------------------------------

#[test]
fn export_holds_profile_consent_log_and_timeline() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(
        &json!({"email": "export@example.jp", "name": "輸出 太郎", "tags": ["vip"]}),
    );
    tick(&app);
    for change in [
        json!({"channel": "email", "status": "granted"}),
        json!({"channel": "email", "status": "withdrawn"}),
    ] {
        let r = app.send_json(
            "POST",
            WRITE_KEY,
            &format!("/v1/contacts/{id}/consents"),
            &change,
        );
        assert_eq!(r.status, 201, "{}", r.text());
        tick(&app);
    }
    let note = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/interactions"),
        &json!({"kind": "note", "body": "輸出の確認"}),
    );
    assert_eq!(note.status, 201, "{}", note.text());

    // Act
    let response = app.get(READ_KEY, &format!("/v1/contacts/{id}/export"));

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let export = response.json();
    assert_eq!(export["format"], "kizuna-contact-export/2");
    assert_eq!(export["contact"], fetch(&app, &id));
    assert_eq!(export["contact"]["email"], "export@example.jp");
    let log: Vec<&str> = export["consent_log"]
        .as_array()
        .expect("consent_log")
        .iter()
        .map(|c| c["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(log, ["granted", "withdrawn"]);
    let kinds: Vec<&str> = export["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    for kind in [
        "contact_created",
        "tag_added",
        "consent_granted",
        "consent_withdrawn",
        "note",
    ] {
        assert!(kinds.contains(&kind), "timeline lacks {kind}: {kinds:?}");
    }
    assert!(export["timeline"].to_string().contains("輸出の確認"));
    assert_eq!(export["erasures"], json!([]));
    app.get(READ_KEY, &format!("/v1/contacts/{UNKNOWN_ID}/export"))
        .assert_problem(404, "export of unknown");
}

#[test]
fn erasure_needs_the_erase_scope() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "keep@example.jp", "name": "Keep"}));
    let before = fetch(&app, &id);
    let counts = app.table_counts();
    let cases = [
        ("write key", WRITE_KEY, 403),
        ("read key", READ_KEY, 403),
        ("forms key", FORMS_KEY, 403),
    ];

    for (case, key, status) in cases {
        // Act
        let response = app.request(
            "DELETE",
            &format!("/v1/contacts/{id}"),
            &[("authorization", &bearer(key))],
            Bytes::new(),
        );

        // Assert
        response.assert_problem(status, case);
    }
    assert_eq!(fetch(&app, &id), before);
    assert_eq!(app.table_counts(), counts);
}

#[test]
fn erasure_removes_personal_values_from_every_answer() {
    // Arrange
    let app = TestApp::new();
    let email = "forget.me@example.jp";
    let id = app.create_contact(&json!({
        "email": email, "phone": "090-5555-6666", "name": "忘却 太郎", "external_id": "shop-forget",
        "company": "Forget Inc", "address": "東京都千代田区1-1", "attributes": {"plan": "gold"}, "tags": ["vip"],
    }));
    let other = app.create_contact(&json!({"email": "other@example.jp", "name": "Other"}));
    for (path, body) in [
        ("consents", json!({"channel": "email", "status": "granted"})),
        (
            "interactions",
            json!({"kind": "call", "subject": "忘却 太郎 様から", "body": "forget.me@example.jp"}),
        ),
    ] {
        let r = app.send_json(
            "POST",
            WRITE_KEY,
            &format!("/v1/contacts/{id}/{path}"),
            &body,
        );
        assert_eq!(r.status, 201, "{path}: {}", r.text());
    }
    tick(&app);

    // Act
    let response = app.request(
        "DELETE",
        &format!("/v1/contacts/{id}"),
        &[("authorization", &bearer(ADMIN_KEY))],
        Bytes::new(),
    );

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["erased"], true);
    let contact = fetch(&app, &id);
    assert_eq!(contact["erased"], true);
    for field in [
        "email",
        "phone",
        "external_id",
        "name",
        "family_name",
        "given_name",
        "family_name_kana",
        "given_name_kana",
        "company",
        "postal_code",
        "address",
        "birthday",
    ] {
        assert_eq!(contact[field], Json::Null, "GET still shows {field}");
    }
    assert_eq!(contact["attributes"], json!({}));
    assert_eq!(contact["tags"], json!([]));
    assert_eq!(contact["consents"], json!({}));
    let export = app.get(READ_KEY, &format!("/v1/contacts/{id}/export"));
    assert_eq!(export.status, 200, "{}", export.text());
    let export_text = export.text();
    for personal in [
        email,
        "+819055556666",
        "忘却",
        "Forget Inc",
        "shop-forget",
        "千代田区",
    ] {
        assert!(
            !export_text.contains(personal),
            "export still holds {personal}: {export_text}"
        );
    }
    assert_eq!(
        list(&app, &format!("email={}", enc(email))).0,
        Vec::<String>::new()
    );
    assert_eq!(list(&app, "phone=09055556666").0, Vec::<String>::new());
    assert_eq!(
        list(&app, &format!("q={}", enc("忘却"))).0,
        Vec::<String>::new()
    );
    assert_eq!(
        list(&app, "").0,
        [other.as_str()],
        "erased contacts are not listed"
    );
    let (erased_by, erasures): (String, i64) = app
        .db()
        .query_row(
            "SELECT erased_by, (SELECT count(*) FROM erasures) FROM erasures WHERE contact_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("an erasures row");
    assert_eq!((erased_by.as_str(), erasures), ("key:admin", 1));
    assert_eq!(
        fetch(&app, &other)["email"],
        "other@example.jp",
        "others are untouched"
    );
    let again = app.request(
        "DELETE",
        &format!("/v1/contacts/{id}"),
        &[("authorization", &bearer(ADMIN_KEY))],
        Bytes::new(),
    );
    // A retried erasure answers as the first did and erases nothing more.
    assert_eq!(again.status, 200, "erasing twice: {}", again.text());
    assert_eq!(again.json()["erased"], true);
    assert_eq!(app.count("SELECT count(*) FROM erasures"), 1);
}

#[test]
fn an_erased_contact_is_read_only_and_its_email_is_free_again() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "gone@example.jp", "phone": "090-7777-8888"}));
    let erased = app.request(
        "DELETE",
        &format!("/v1/contacts/{id}"),
        &[("authorization", &bearer(ADMIN_KEY))],
        Bytes::new(),
    );
    assert_eq!(erased.status, 200, "{}", erased.text());
    let tombstone = fetch(&app, &id);
    let counts = app.table_counts();
    let writes = [
        (
            "PATCH",
            format!("/v1/contacts/{id}"),
            json!({"name": "Back"}),
        ),
        (
            "POST",
            format!("/v1/contacts/{id}/interactions"),
            json!({"kind": "note", "body": "x"}),
        ),
        (
            "POST",
            format!("/v1/contacts/{id}/consents"),
            json!({"channel": "email", "status": "granted"}),
        ),
    ];

    for (method, path, body) in &writes {
        // Act
        let response = app.send_json(method, WRITE_KEY, path, body);

        // Assert
        response.assert_problem(404, &format!("{method} {path}"));
    }
    let tag = app.request(
        "PUT",
        &format!("/v1/contacts/{id}/tags/vip"),
        &[("authorization", &bearer(WRITE_KEY))],
        Bytes::new(),
    );
    tag.assert_problem(404, "tag on an erased contact");
    app.get(READ_KEY, &format!("/v1/contacts/{id}/unsubscribe-link"))
        .assert_problem(404, "unsubscribe link");
    assert_eq!(app.table_counts(), counts, "nothing stored");
    assert_eq!(fetch(&app, &id), tombstone);

    // Act: the person signs up again.
    let again = app.send_json(
        "POST",
        WRITE_KEY,
        "/v1/contacts",
        &json!({"email": "gone@example.jp"}),
    );

    // Assert: a new contact, not the tombstone.
    assert_eq!(again.status, 201, "{}", again.text());
    assert_ne!(again.json()["id"], id.as_str());
    assert_eq!(fetch(&app, &id), tombstone);
}

#[test]
fn a_retried_create_after_erasure_does_not_recreate_the_person() {
    // Arrange: a create with an idempotency key, then erasure.
    let app = TestApp::new();
    let body = json!({"email": "retry@example.jp", "name": "再送 太郎"});
    let create = |app: &TestApp| {
        app.request(
            "POST",
            "/v1/contacts",
            &[
                ("authorization", &bearer(WRITE_KEY)),
                ("content-type", "application/json"),
                ("idempotency-key", "signup-42"),
            ],
            body.to_string(),
        )
    };
    let first = create(&app);
    assert_eq!(first.status, 201, "{}", first.text());
    let id = first.json()["id"].as_str().expect("id").to_owned();
    let erased = app.request(
        "DELETE",
        &format!("/v1/contacts/{id}"),
        &[("authorization", &bearer(ADMIN_KEY))],
        Bytes::new(),
    );
    assert_eq!(erased.status, 200, "{}", erased.text());
    let counts = app.table_counts();

    // Act: the client retries the create it never saw answered.
    let retry = create(&app);

    // Assert
    retry.assert_problem(410, "retry after erasure");
    assert_eq!(app.table_counts(), counts, "nothing stored");
    assert_eq!(
        app.count("SELECT count(*) FROM contacts WHERE email = 'retry@example.jp'"),
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM idempotency_keys WHERE response_body LIKE '%retry@%'"),
        0,
        "the saved answer no longer holds the person"
    );
}

#[test]
fn a_long_history_is_exported_page_by_page_and_nothing_is_lost() {
    // Arrange: a contact with seven timeline entries.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "history@example.jp"}));
    for n in 0..6 {
        let response = app.send_json(
            "POST",
            WRITE_KEY,
            &format!("/v1/contacts/{id}/interactions"),
            &json!({"kind": "note", "body": format!("note {n}")}),
        );
        assert_eq!(response.status, 201, "{}", response.text());
    }
    let whole = app.get(READ_KEY, &format!("/v1/contacts/{id}/export"));
    assert_eq!(whole.status, 200, "{}", whole.text());
    let whole = whole.json();
    assert_eq!(whole["timeline"].as_array().map(Vec::len), Some(7));
    assert_eq!(whole["next"], json!({}));

    // Act: three at a time, following `next`.
    let first = app.get(READ_KEY, &format!("/v1/contacts/{id}/export?limit=3"));
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    let mut timeline = first["timeline"].as_array().expect("timeline").clone();
    let mut next = first["next"]["timeline"].as_str().map(str::to_owned);
    let mut pages = 1;
    while let Some(url) = next {
        let page = app.get(READ_KEY, &url);
        assert_eq!(page.status, 200, "{url}: {}", page.text());
        let page = page.json();
        assert_eq!(page["section"], "timeline");
        timeline.extend(page["items"].as_array().expect("items").iter().cloned());
        next = page["next"].as_str().map(str::to_owned);
        pages += 1;
    }

    // Assert
    assert_eq!(pages, 3);
    assert_eq!(Json::Array(timeline), whole["timeline"]);
}

#[test]
fn bad_export_parameters_are_422() {
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "params@example.jp"}));
    for (case, query) in [
        ("unknown parameter", "?format=xml"),
        ("unknown section", "?section=secrets"),
        ("cursor without section", "?cursor=abc"),
        ("limit zero", "?limit=0"),
        ("limit too large", "?limit=501"),
        ("forged cursor", "?section=timeline&cursor=bm90LWEtY3Vyc29y"),
    ] {
        app.get(READ_KEY, &format!("/v1/contacts/{id}/export{query}"))
            .assert_problem(422, case);
    }
}

/// Every file of the database: the main file (which must exist) and its
/// `-wal` if present.
fn database_bytes(app: &TestApp) -> Vec<(String, Vec<u8>)> {
    let main = app.database_path();
    let mut files = vec![(
        main.display().to_string(),
        std::fs::read(&main).expect("database file"),
    )];
    let wal = std::path::PathBuf::from(format!("{}-wal", main.display()));
    if let Ok(bytes) = std::fs::read(&wal) {
        files.push((wal.display().to_string(), bytes));
    }
    files
}

/// Creates a contact through the API (with a saved idempotent answer), a
/// form post and a note, so the profile, search terms, timeline, consent
/// log and saved answers all hold its values; erases it; then searches
/// the raw bytes of the database files. With `other_connection`, another
/// connection stays open throughout, as a concurrent request's would, so
/// closing the erasing connection does not checkpoint the WAL by itself.
fn assert_erasure_leaves_no_personal_bytes(other_connection: bool) {
    // Arrange
    let app = TestApp::new();
    let email = "zq.erase.7731@example.jp";
    let phone_e164 = "+819077312468";
    let phone_typed = "090-7731-2468";
    let name = "消去 花子";
    let created = send_json_with(
        &app,
        "POST",
        WRITE_KEY,
        "/v1/contacts",
        &[("idempotency-key", "create-erase-me")],
        &json!({"email": email, "phone": phone_typed, "name": name}),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().expect("id").to_owned();
    let keeper = other_connection.then(|| {
        let connection = app.db();
        let _: i64 = connection
            .query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))
            .expect("open the WAL");
        connection
    });
    tick(&app);
    let form = app.post_form_json(
        "lp",
        &json!({"email": email, "phone": phone_typed, "name": name, "consent_email": "on", "message": name}),
        "203.0.113.9",
    );
    assert_eq!(form.status, 202, "{}", form.text());
    let note = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/interactions"),
        &json!({"kind": "note", "subject": name, "body": format!("{email} {phone_e164}")}),
    );
    assert_eq!(note.status, 201, "{}", note.text());
    app.create_contact(&json!({"email": "bystander@example.jp", "name": "Bystander"}));
    let needles: [(&str, &str); 4] = [
        ("email", email),
        ("E.164 phone", phone_e164),
        ("typed phone", phone_typed),
        ("name", name),
    ];
    let files = database_bytes(&app);
    for (what, needle) in needles {
        assert!(
            files
                .iter()
                .any(|(_, bytes)| contains_bytes(bytes, needle.as_bytes())),
            "before erasure the {what} is in the files (else this test proves nothing)"
        );
    }
    tick(&app);

    // Act
    let erased = app.request(
        "DELETE",
        &format!("/v1/contacts/{id}"),
        &[("authorization", &bearer(ADMIN_KEY))],
        Bytes::new(),
    );

    // Assert: read while the other connection (if any) is still open.
    assert_eq!(erased.status, 200, "{}", erased.text());
    let storage = &erased.json()["storage"];
    if app.on_libsql() {
        // The client can neither zero freed pages nor checkpoint there,
        // and the answer says so instead of promising it.
        assert_eq!(storage["backend"], "libsql", "{storage}");
        assert_eq!(storage["freed_pages_zeroed"], false, "{storage}");
        assert_eq!(storage["wal_checkpointed"], false, "{storage}");
        return;
    }
    assert_eq!(storage["backend"], "sqlite_file", "{storage}");
    assert_eq!(storage["freed_pages_zeroed"], true, "{storage}");
    let files = database_bytes(&app);
    for (file, bytes) in &files {
        for (what, needle) in needles {
            assert!(
                !contains_bytes(bytes, needle.as_bytes()),
                "{file} still holds the {what} {needle:?}"
            );
        }
    }
    assert!(
        files
            .iter()
            .any(|(_, bytes)| contains_bytes(bytes, b"bystander@example.jp")),
        "other contacts are kept"
    );
    drop(keeper);
}

#[test]
fn erasure_leaves_no_personal_bytes_in_the_database_files() {
    assert_erasure_leaves_no_personal_bytes(false);
}

#[test]
fn erasure_leaves_no_personal_bytes_while_another_connection_is_open() {
    assert_erasure_leaves_no_personal_bytes(true);
}

// ---------------------------------------------------------------------------
// Authentication and authorisation
// ---------------------------------------------------------------------------

#[test]
fn auth_failures_are_problem_documents_and_store_nothing() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "guarded@example.jp", "name": "Guarded"}));
    let before = fetch(&app, &id);
    let counts = app.table_counts();
    // (method, path, body, needs more than contacts:read)
    let routes: Vec<(&str, String, Option<Json>, bool)> = vec![
        ("GET", "/v1/contacts".to_owned(), None, false),
        (
            "GET",
            "/v1/contacts?email=guarded%40example.jp".to_owned(),
            None,
            false,
        ),
        (
            "POST",
            "/v1/contacts".to_owned(),
            Some(json!({"email": "intruder@example.jp"})),
            true,
        ),
        ("GET", format!("/v1/contacts/{id}"), None, false),
        (
            "PATCH",
            format!("/v1/contacts/{id}"),
            Some(json!({"name": "Owned"})),
            true,
        ),
        ("DELETE", format!("/v1/contacts/{id}"), None, true),
        ("PUT", format!("/v1/contacts/{id}/tags/pwned"), None, true),
        (
            "POST",
            format!("/v1/contacts/{id}/interactions"),
            Some(json!({"kind": "note", "body": "x"})),
            true,
        ),
        ("GET", format!("/v1/contacts/{id}/timeline"), None, false),
        (
            "POST",
            format!("/v1/contacts/{id}/consents"),
            Some(json!({"channel": "email", "status": "granted"})),
            true,
        ),
        (
            "GET",
            format!("/v1/contacts/{id}/unsubscribe-link"),
            None,
            false,
        ),
        ("GET", format!("/v1/contacts/{id}/export"), None, false),
    ];
    let credentials: [(&str, Option<String>, u16, bool); 6] = [
        ("no Authorization", None, 401, false),
        ("unknown key", Some(bearer("not-a-real-key")), 401, false),
        ("empty bearer", Some("Bearer ".to_owned()), 401, false),
        ("key without scheme", Some(WRITE_KEY.to_owned()), 401, false),
        ("forms key", Some(bearer(FORMS_KEY)), 403, false),
        (
            "read key on a write route",
            Some(bearer(READ_KEY)),
            403,
            true,
        ),
    ];

    for (method, path, body, writes) in &routes {
        for (credential, authorization, status, only_on_writes) in &credentials {
            if *only_on_writes && !*writes {
                continue;
            }
            let case = format!("{credential}: {method} {path}");
            let mut headers: Vec<(&str, &str)> = Vec::new();
            if let Some(value) = authorization {
                headers.push(("authorization", value.as_str()));
            }
            if body.is_some() {
                headers.push(("content-type", "application/json"));
            }
            let payload = body.as_ref().map(Json::to_string).unwrap_or_default();

            // Act
            let response = app.request(method, path, &headers, payload);

            // Assert
            response.assert_problem(*status, &case);
            if *status == 401 {
                assert_eq!(
                    response.header("www-authenticate"),
                    Some("Bearer"),
                    "case {case}"
                );
            }
            assert!(
                !response.text().contains("guarded@example.jp"),
                "case {case}: no data leaks"
            );
        }
    }
    assert_eq!(app.table_counts(), counts, "nothing stored");
    assert_eq!(fetch(&app, &id), before, "nothing changed");
}

// ---------------------------------------------------------------------------
// Malformed bodies
// ---------------------------------------------------------------------------

type BodyCase = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    Option<&'static str>,
);

#[test]
fn malformed_create_bodies_are_refused_and_store_nothing() {
    // Arrange
    let app = TestApp::new();
    app.create_contact(&json!({"email": "existing@example.jp"}));
    let counts = app.table_counts();
    let json_type = Some("application/json");
    let huge = format!(
        r#"{{"email":"big@example.jp","name":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    // (case, content type, body, status, field named in `errors`)
    let cases: Vec<BodyCase> = vec![
        ("empty body", json_type, vec![], 400, None),
        ("whitespace body", json_type, b"  \n ".to_vec(), 400, None),
        (
            "invalid JSON",
            json_type,
            b"{\"email\": ".to_vec(),
            400,
            None,
        ),
        (
            "trailing garbage",
            json_type,
            br#"{"email":"t@example.jp"} x"#.to_vec(),
            400,
            None,
        ),
        (
            "invalid UTF-8",
            json_type,
            b"{\"email\":\"\xff\xfe@example.jp\"}".to_vec(),
            400,
            None,
        ),
        (
            "email of the wrong type",
            json_type,
            br#"{"email": 123}"#.to_vec(),
            422,
            None,
        ),
        (
            "tags of the wrong type",
            json_type,
            br#"{"email":"w@example.jp","tags":"vip"}"#.to_vec(),
            422,
            None,
        ),
        (
            "attribute value not a string",
            json_type,
            br#"{"email":"w@example.jp","attributes":{"n":1}}"#.to_vec(),
            422,
            None,
        ),
        ("array body", json_type, b"[]".to_vec(), 422, None),
        ("null body", json_type, b"null".to_vec(), 422, None),
        (
            "duplicate field",
            json_type,
            br#"{"email":"d1@example.jp","email":"d2@example.jp"}"#.to_vec(),
            422,
            None,
        ),
        (
            "text/plain",
            Some("text/plain"),
            br#"{"email":"p@example.jp"}"#.to_vec(),
            415,
            None,
        ),
        (
            "form content type",
            Some("application/x-www-form-urlencoded"),
            b"email=f%40example.jp".to_vec(),
            415,
            None,
        ),
        (
            "no content type",
            None,
            br#"{"email":"n@example.jp"}"#.to_vec(),
            415,
            None,
        ),
        ("1 MiB body", json_type, huge.into_bytes(), 413, None),
        (
            "invalid email",
            json_type,
            br#"{"email":"not-an-email"}"#.to_vec(),
            422,
            Some("email"),
        ),
        (
            "invalid phone",
            json_type,
            br#"{"phone":"12-34"}"#.to_vec(),
            422,
            Some("phone"),
        ),
        (
            "phone with letters",
            json_type,
            br#"{"phone":"090-CALL-NOW"}"#.to_vec(),
            422,
            Some("phone"),
        ),
        (
            "no email, phone or external_id",
            json_type,
            br#"{"name":"Nobody"}"#.to_vec(),
            422,
            Some("email"),
        ),
        (
            "blank identities",
            json_type,
            br#"{"email":"  ","phone":"","external_id":" "}"#.to_vec(),
            422,
            Some("email"),
        ),
        (
            "name too long",
            json_type,
            format!(r#"{{"email":"l@example.jp","name":"{}"}}"#, "x".repeat(201)).into_bytes(),
            422,
            Some("name"),
        ),
        (
            "control character in name",
            json_type,
            br#"{"email":"c@example.jp","name":"a\u0000b"}"#.to_vec(),
            422,
            Some("name"),
        ),
        (
            "invalid birthday",
            json_type,
            br#"{"email":"b@example.jp","birthday":"1990-02-30"}"#.to_vec(),
            422,
            Some("birthday"),
        ),
        (
            "invalid postal code",
            json_type,
            br#"{"email":"z@example.jp","postal_code":"!!!"}"#.to_vec(),
            422,
            Some("postal_code"),
        ),
        (
            "tag with a slash",
            json_type,
            br#"{"email":"s@example.jp","tags":["a/b"]}"#.to_vec(),
            422,
            Some("tags"),
        ),
        (
            "attribute name with a control character",
            json_type,
            br#"{"email":"k@example.jp","attributes":{"a\u0001b":"x"}}"#.to_vec(),
            422,
            Some("attributes"),
        ),
    ];

    for (case, content_type, body, status, field) in cases {
        let mut headers = vec![("authorization", bearer(WRITE_KEY))];
        if let Some(content_type) = content_type {
            headers.push(("content-type", content_type.to_owned()));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();

        // Act
        let response = app.request("POST", "/v1/contacts", &headers, body);

        // Assert
        let problem = response.assert_problem(status, case);
        if let Some(field) = field {
            assert!(
                error_fields(&problem).iter().any(|f| f == field),
                "case {case}: {problem}"
            );
        }
    }
    assert_eq!(app.table_counts(), counts, "nothing stored");
}

// ---------------------------------------------------------------------------
// Quotes and SQL fragments
// ---------------------------------------------------------------------------

#[test]
fn quotes_and_sql_fragments_are_stored_and_returned_verbatim() {
    // Arrange
    let app = TestApp::new();
    let profile = json!({
        "email": "o'brien+sql@example.jp",
        "external_id": "ext'); DROP TABLE contacts;--",
        "name": "Robert'); DROP TABLE contacts;--",
        "family_name": "O'Brien \"The Hammer\"",
        "given_name": "1' OR '1'='1",
        "family_name_kana": "ヤマダ'; DELETE FROM contacts WHERE ''='",
        "given_name_kana": "\"タロウ\" -- /* */",
        "company": "Bobby Tables & Sons \"Ltd\" ; SELECT * FROM contacts",
        "address": "%_\\ 1' UNION SELECT email FROM contacts --",
        "attributes": {
            "note": "'); DROP TABLE contact_search;--",
            "quote": "\" OR \"\"=\"",
            "backslash": "C:\\path\\'x'",
        },
    });

    // Act
    let created = app.send_json("POST", WRITE_KEY, "/v1/contacts", &profile);
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().expect("id").to_owned();
    let interaction = json!({
        "kind": "inquiry",
        "subject": "Re: '); DROP TABLE interactions;--",
        "body": "He said \"hi\"; then '; UPDATE contacts SET email = NULL;--\nline 2 \\ end",
    });
    let posted = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/interactions"),
        &interaction,
    );
    let patched = app.send_json(
        "PATCH",
        WRITE_KEY,
        &format!("/v1/contacts/{id}"),
        &json!({"company": "x' WHERE 1=1; --", "attributes": {"quote": "'\"'"}}),
    );

    // Assert
    assert_eq!(posted.status, 201, "{}", posted.text());
    assert_eq!(patched.status, 200, "{}", patched.text());
    let contact = fetch(&app, &id);
    for field in [
        "email",
        "external_id",
        "name",
        "family_name",
        "given_name",
        "family_name_kana",
        "given_name_kana",
        "address",
    ] {
        assert_eq!(contact[field], profile[field], "field {field}");
    }
    assert_eq!(contact["company"], "x' WHERE 1=1; --");
    assert_eq!(
        contact["attributes"],
        json!({"note": "'); DROP TABLE contact_search;--", "quote": "'\"'", "backslash": "C:\\path\\'x'"})
    );
    let timeline = app
        .get(READ_KEY, &format!("/v1/contacts/{id}/timeline"))
        .json();
    let inquiry = timeline["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["kind"] == "inquiry")
        .cloned()
        .expect("the inquiry is on the timeline");
    assert_eq!(inquiry["subject"], interaction["subject"]);
    assert_eq!(inquiry["body"], interaction["body"]);
    assert_eq!(
        list(&app, &format!("q={}", enc("robert'); drop"))).0,
        [id.as_str()],
        "search with quotes"
    );
    assert_eq!(
        list(&app, &format!("q={}", enc("o'brien \"the"))).0,
        [id.as_str()]
    );
    assert_eq!(
        list(&app, &format!("email={}", enc("O'Brien+SQL@example.jp"))).0,
        [id.as_str()]
    );
    for table in [
        "contacts",
        "interactions",
        "contact_search",
        "contact_tags",
        "consents",
    ] {
        let exists = app.count(&format!(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
        ));
        assert_eq!(exists, 1, "table {table} still exists");
    }
    assert_eq!(
        app.count("SELECT count(*) FROM contacts WHERE email IS NOT NULL"),
        1
    );
}

#[test]
fn opening_the_unsubscribe_link_asks_first_and_changes_nothing() {
    // Arrange: a consenting contact and its link, as a person would click it.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "clicker@example.jp"}));
    let granted = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/consents"),
        &json!({"channel": "email", "status": "granted", "reason": "form"}),
    );
    assert_eq!(granted.status, 201, "{}", granted.text());
    let token = unsubscribe_token(&app, &id);
    let counts = app.table_counts();

    // Act
    let page = app.request(
        "GET",
        &format!("/v1/forms/unsubscribe?token={token}"),
        &[("accept", "text/html")],
        "",
    );
    let forged = app.request(
        "GET",
        "/v1/forms/unsubscribe?token=AAAA",
        &[("accept", "text/html")],
        "",
    );

    // Assert: a confirmation form that posts the token; consent untouched.
    assert_eq!(page.status, 200, "{}", page.text());
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().contains("method=\"post\""), "{}", page.text());
    assert!(page.text().contains(&token));
    assert_eq!(forged.status, 400);
    assert_eq!(app.table_counts(), counts);
    assert_eq!(fetch(&app, &id)["consents"]["email"]["status"], "granted");
}

#[test]
fn look_ups_accept_an_unencoded_plus() {
    // Arrange: caller-ID systems send E.164, mail tools send plus-addresses.
    let app = TestApp::new();
    let id =
        app.create_contact(&json!({"email": "taro+news@example.jp", "phone": "090-1234-5678"}));

    for (case, query) in [
        ("raw + phone", "phone=+819012345678"),
        ("raw + email", "email=taro+news@example.jp"),
        ("spaced national phone", "phone=090%201234%205678"),
    ] {
        // Act
        let response = app.get(READ_KEY, &format!("/v1/contacts?{query}"));

        // Assert
        assert_eq!(response.status, 200, "case {case}: {}", response.text());
        assert_eq!(
            response.json()["items"][0]["id"],
            id.as_str(),
            "case {case}"
        );
    }
}

#[test]
fn an_occurred_at_beyond_the_calendar_is_422_not_a_crash() {
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "far@example.jp"}));
    let counts = app.table_counts();

    let response = app.send_json(
        "POST",
        WRITE_KEY,
        &format!("/v1/contacts/{id}/interactions"),
        &json!({"kind": "note", "body": "x", "occurred_at": "9999-12-31T23:59:59-09:00"}),
    );

    let problem = response.assert_problem(422, "year 10000 in UTC");
    assert_eq!(problem["errors"][0]["field"], "occurred_at");
    assert_eq!(app.table_counts(), counts);
}

// ---------------------------------------------------------------------------
// Raw bytes on the wire
// ---------------------------------------------------------------------------

/// Sends `request` as it is on a fresh connection to `url` and reads the
/// answer until the server closes: (status line, headers, body).
fn raw_exchange(url: &str, request: &[u8]) -> (String, String, String) {
    use std::io::{Read as _, Write as _};
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    // A server that never answers fails the test instead of hanging it.
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("read timeout");
    stream.write_all(request).expect("send");
    let mut answer = Vec::new();
    if let Err(e) = stream.read_to_end(&mut answer) {
        assert!(
            !answer.is_empty(),
            "no answer before the connection ended: {e}"
        );
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_owned(),
        headers.to_ascii_lowercase(),
        body.to_owned(),
    )
}

#[test]
fn raw_japanese_in_a_query_string_gets_a_400_that_says_to_percent_encode() {
    // Arrange
    let app = TestApp::new();
    app.create_contact(&json!({"email": "yamada@example.jp", "family_name_kana": "やまだ"}));
    let served = app.serve(2);
    let request = format!(
        "GET /v1/contacts?q=やまだ HTTP/1.1\r\nHost: kizuna\r\n\
         Authorization: Bearer {READ_KEY}\r\nConnection: close\r\n\r\n"
    );

    // Act: the bytes curl sends for `curl "$BASE/v1/contacts?q=やまだ"`.
    let (status, headers, body) = raw_exchange(&served.url(), request.as_bytes());
    served.stop();

    // Assert: an answer, never silence. Spin's HTTP server refuses the
    // request with a bare 400 before any component runs; the native host
    // says what to do.
    assert!(
        status.starts_with("HTTP/1.1 400"),
        "{status}\n{headers}\n{body}"
    );
    if !app.under_spin() {
        assert!(
            headers.contains("content-type: application/problem+json"),
            "{headers}"
        );
        let problem: Json = serde_json::from_str(&body).expect("a problem document");
        assert_eq!(problem["status"], 400);
        let detail = problem["detail"].as_str().expect("detail");
        assert!(
            detail.contains("percent-encode") && detail.contains("--data-urlencode"),
            "{detail}"
        );
    }
    // Percent-encoded, the same search answers.
    let found = app.get(READ_KEY, "/v1/contacts?q=%E3%82%84%E3%81%BE%E3%81%A0");
    assert_eq!(found.status, 200, "{}", found.text());
    assert_eq!(found.json()["items"].as_array().map(Vec::len), Some(1));
}

#[test]
fn the_native_server_keeps_connections_and_reads_chunked_and_continued_bodies() {
    // Arrange: two requests on one connection, the second with a chunked
    // body sent after `100 Continue`, as curl sends a large upload.
    let app = TestApp::new();
    let served = app.serve(2);
    let contact = json!({"email": "chunked@example.jp", "name": "山田 太郎"}).to_string();
    let (first, rest) = contact.as_bytes().split_at(10);
    let mut request = format!(
        "GET /healthz HTTP/1.1\r\nHost: kizuna\r\n\r\n\
         POST /v1/contacts HTTP/1.1\r\nHost: kizuna\r\nAuthorization: Bearer {WRITE_KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in [first, rest] {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");

    // Act
    let (status, _, answer) = raw_exchange(&served.url(), &request);
    served.stop();

    // Assert: the health answer, then (after any 100 Continue) a 201.
    assert!(status.starts_with("HTTP/1.1 200"), "{status}\n{answer}");
    let statuses: Vec<&str> = answer
        .split("\r\n")
        .filter(|line| line.starts_with("HTTP/1.1 "))
        .filter(|line| !line.starts_with("HTTP/1.1 100"))
        .collect();
    assert_eq!(statuses.len(), 1, "{answer}");
    assert!(statuses[0].starts_with("HTTP/1.1 201"), "{answer}");
    assert_eq!(
        app.count("SELECT count(*) FROM contacts WHERE email = 'chunked@example.jp'"),
        1
    );
}

#[test]
fn a_body_over_the_limit_gets_its_413_while_the_client_is_still_sending() {
    if skip_under_spin("tests the native server's own framing") {
        return;
    }
    use std::io::{Read as _, Write as _};
    // Arrange: a 4 MiB body, four times what any route reads.
    let app = TestApp::new();
    let served = app.serve(2);
    let body = vec![b'x'; 4 << 20];
    let mut stream =
        std::net::TcpStream::connect(served.url().trim_start_matches("http://")).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("read timeout");
    let head = format!(
        "POST /v1/contacts HTTP/1.1\r\nHost: kizuna\r\nAuthorization: Bearer {WRITE_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );

    // Act: send while the answer comes back.
    let mut sender = stream.try_clone().expect("clone");
    let sending = std::thread::spawn(move || {
        let sent = sender
            .write_all(head.as_bytes())
            .and_then(|()| sender.write_all(&body));
        sent.is_ok()
    });
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let all_sent = sending.join().expect("sender");
    served.stop();

    // Assert: the answer arrives whole, before the connection ends.
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "read {read:?}, sent all {all_sent}: {answer}"
    );
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 0);
}

/// `GET /healthz` asks the database (one statement) and says which
/// engine serves it and its schema version, with no key and no secret.
#[test]
fn health_reports_the_database_engine_and_schema_version_without_secrets() {
    // Arrange
    let app = TestApp::new();

    // Act
    let health = app.request("GET", "/healthz", &[], Bytes::new());

    // Assert
    assert_eq!(health.status, 200, "{}", health.text());
    let body = health.json();
    assert_eq!(body["status"], "ok");
    let backend = if app.on_libsql() {
        "libsql"
    } else {
        "sqlite_file"
    };
    assert_eq!(body["database"]["backend"], backend, "{body}");
    let version = kizuna::db::SCHEMA_VERSION;
    assert_eq!(body["database"]["schema_version"], version, "{body}");
    assert_eq!(body["database"]["build_schema_version"], version, "{body}");
    let text = health.text();
    for secret in [UNSUBSCRIBE_SECRET, ADMIN_KEY, "whsec_"] {
        assert!(!text.contains(secret), "{text}");
    }
    if let Some(statements) = app.statements_of_last_request() {
        assert_eq!(statements, 1, "the database is asked, once");
    }
}

#[test]
fn an_unsubscribe_link_on_a_local_base_url_says_it_will_not_reach_anyone() {
    let app = TestApp::with_variables(&[("public_base_url", "http://127.0.0.1:3000")]);
    let id = app.create_contact(&json!({"email": "hanako@example.jp"}));
    let link = app.get(READ_KEY, &format!("/v1/contacts/{id}/unsubscribe-link"));
    assert_eq!(link.status, 200, "{}", link.text());
    let link = link.json();
    assert!(
        link["url"]
            .as_str()
            .is_some_and(|url| url.starts_with("http://127.0.0.1:3000/v1/forms/unsubscribe?token=")),
        "{link}"
    );
    let warning = link["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("public_base_url") && warning.contains("http://127.0.0.1:3000"),
        "{link}"
    );

    // The suite's own base URL is a real one: no warning.
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "hanako@example.jp"}));
    let link = app
        .get(READ_KEY, &format!("/v1/contacts/{id}/unsubscribe-link"))
        .json();
    assert!(link.get("warning").is_none(), "{link}");
}
