//! `POST /v1/forms/{form_id}`: public lead capture.

use crate::helpers::*;
use serde_json::{Value as Json, json};

#[test]
fn a_browser_form_post_creates_a_lead_and_redirects() {
    let app = TestApp::new();
    let response = app.post_form(
        "spring",
        "email=Taro%40Example.JP&phone=090-1234-5678&family_name=%E5%B1%B1%E7%94%B0&given_name=%E5%A4%AA%E9%83%8E&utm_source=google&consent_email=on&_redirect=https%3A%2F%2Flp.example.jp%2Fthanks",
        "203.0.113.7",
    );
    assert_eq!(response.status, 303, "{}", response.text());
    assert_eq!(
        response.header("location"),
        Some("https://lp.example.jp/thanks")
    );

    let found = app.get(READ_KEY, "/v1/contacts?phone=09012345678");
    assert_eq!(found.status, 200);
    let items = found.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    let id = items[0]["id"].as_str().unwrap();
    let contact = app.get(READ_KEY, &format!("/v1/contacts/{id}")).json();
    assert_eq!(contact["email"], "taro@example.jp");
    assert_eq!(contact["phone"], "+819012345678");
    assert_eq!(contact["name"], "山田 太郎");
    assert_eq!(contact["lifecycle_stage"], "lead");
    assert_eq!(contact["first_touch"]["source"], "form:spring");
    assert_eq!(contact["first_touch"]["utm"]["utm_source"], "google");
    assert_eq!(contact["consents"]["email"]["status"], "granted");
    let ip: String = app
        .db()
        .query_row("SELECT ip_truncated FROM consents", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ip, "203.0.113.0/24");
}

#[test]
fn a_json_post_gets_202_and_never_reveals_an_existing_contact() {
    let app = TestApp::new();
    let first = app.post_form_json("lp", &json!({"email": "hanako@example.jp"}), "198.51.100.1");
    let second = app.post_form_json("lp", &json!({"email": "hanako@example.jp"}), "198.51.100.1");
    for response in [&first, &second] {
        assert_eq!(response.status, 202);
        assert_eq!(response.json(), json!({"status": "accepted"}));
    }
    assert_eq!(first.body, second.body);
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
    assert_eq!(
        app.count("SELECT count(*) FROM interactions WHERE kind = 'form_submitted'"),
        2
    );
}

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

const IP: &str = "203.0.113.7";
const REFERER: &str = "https://lp.example.jp/spring?utm_source=ad";
const FORM: &str = "application/x-www-form-urlencoded";
const JSON: &str = "application/json";

/// Percent-encodes one value the way a browser encodes a form field.
fn pct(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A urlencoded body from field pairs.
fn form_body(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The first request opens the database and runs the migrations, so that
/// counts can be taken before anything else happens.
fn started(app: &TestApp) {
    let response = app.get(READ_KEY, "/v1/contacts");
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Contact data plus the rate-limit buckets: "nothing stored" means none
/// of these row counts changed.
fn stored(app: &TestApp) -> Vec<(String, i64)> {
    let mut counts = app.table_counts();
    counts.push((
        "rate_limits".to_owned(),
        app.count("SELECT count(*) FROM rate_limits"),
    ));
    counts
}

/// A form post with explicit headers. The default `Accept` (a browser's
/// for a urlencoded body, a script's for JSON) gives way to one in `extra`.
fn post(
    app: &TestApp,
    form_id: &str,
    content_type: Option<&str>,
    extra: &[(&str, &str)],
    body: impl Into<bytes::Bytes>,
) -> TestResponse {
    let mut headers: Vec<(&str, &str)> = vec![("x-forwarded-for", IP), ("referer", REFERER)];
    if let Some(content_type) = content_type {
        headers.push(("content-type", content_type));
    }
    if let Some(content_type) = content_type
        && !extra
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("accept"))
    {
        headers.push((
            "accept",
            if content_type == JSON {
                JSON
            } else {
                "text/html"
            },
        ));
    }
    headers.extend_from_slice(extra);
    app.request("POST", &format!("/v1/forms/{form_id}"), &headers, body)
}

/// A script's JSON post from `origin`.
fn post_json_from_origin(app: &TestApp, form_id: &str, body: &Json, origin: &str) -> TestResponse {
    post(
        app,
        form_id,
        Some(JSON),
        &[("origin", origin)],
        body.to_string(),
    )
}

fn put_settings(app: &TestApp, key: &str, form_id: &str, settings: &Json) -> TestResponse {
    app.send_json(
        "PUT",
        key,
        &format!("/v1/forms/{form_id}/settings"),
        settings,
    )
}

fn configure(app: &TestApp, form_id: &str, settings: &Json) {
    let response = put_settings(app, FORMS_KEY, form_id, settings);
    assert_eq!(
        response.status,
        200,
        "settings for {form_id}: {}",
        response.text()
    );
}

/// The contact with `email`, read through the API.
fn contact_by_email(app: &TestApp, email: &str) -> Json {
    let found = app.get(READ_KEY, &format!("/v1/contacts?email={}", pct(email)));
    assert_eq!(found.status, 200, "{}", found.text());
    let items = found.json()["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 1, "contacts with {email}: {items:?}");
    let id = items[0]["id"].as_str().expect("id");
    contact_by_id(app, id)
}

fn contact_by_id(app: &TestApp, id: &str) -> Json {
    let response = app.get(READ_KEY, &format!("/v1/contacts/{id}"));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// The id of the one contact in the database.
fn only_contact_id(app: &TestApp) -> String {
    assert_eq!(
        app.count("SELECT count(*) FROM contacts"),
        1,
        "exactly one contact"
    );
    app.db()
        .query_row("SELECT id FROM contacts", [], |r| r.get(0))
        .expect("contact id")
}

/// The contact's `form_submitted` timeline entries, newest first.
fn form_entries(app: &TestApp, id: &str) -> Vec<Json> {
    let response = app.get(READ_KEY, &format!("/v1/contacts/{id}/timeline"));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["kind"] == "form_submitted")
        .cloned()
        .collect()
}

/// Asserts the page a browser gets for a refused post: `status`, HTML,
/// each of `fields` named as the form named it; returns the page.
fn assert_refusal_page(
    response: &TestResponse,
    status: u16,
    fields: &[&str],
    case: &str,
) -> String {
    assert_eq!(response.status, status, "case {case}: {}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("text/html; charset=utf-8"),
        "case {case}"
    );
    let page = response.text();
    for field in fields {
        assert!(
            page.contains(&format!("<code>{field}</code>")),
            "case {case}: the page does not name {field}: {page}"
        );
    }
    page
}

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

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

struct BadInput {
    case: &'static str,
    form_id: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// Fields the problem's `errors` must name (422 only).
    fields: &'static [&'static str],
}

fn bad(
    case: &'static str,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    fields: &'static [&'static str],
) -> BadInput {
    BadInput {
        case,
        form_id: "lp",
        content_type,
        body: body.into(),
        status,
        fields,
    }
}

fn bad_inputs() -> Vec<BadInput> {
    let many_fields_form = (0..200)
        .map(|i| format!("f{i}=x"))
        .collect::<Vec<_>>()
        .join("&")
        + "&email=many%40example.jp";
    let mut many_fields_json = serde_json::Map::new();
    many_fields_json.insert("email".into(), json!("many@example.jp"));
    for i in 0..200 {
        many_fields_json.insert(format!("f{i}"), json!("x"));
    }
    let padded = |len: usize| format!("email=big%40example.jp&_pad={}", "x".repeat(len));
    let redirect =
        |target: &str| form_body(&[("email", "redirect@example.jp"), ("_redirect", target)]);
    let mut cases = vec![
        bad("empty form body", Some(FORM), "", 422, &["email"]),
        bad("empty JSON body", Some(JSON), "", 400, &[]),
        bad(
            "neither email nor phone",
            Some(FORM),
            "name=Taro&company=ACME",
            422,
            &["email"],
        ),
        bad(
            "neither email nor phone (JSON)",
            Some(JSON),
            r#"{"name":"Taro"}"#,
            422,
            &["email"],
        ),
        bad(
            "blank email and phone",
            Some(FORM),
            "email=+++&phone=",
            422,
            &["email"],
        ),
        bad(
            "invalid email",
            Some(FORM),
            "email=taro%40",
            422,
            &["email"],
        ),
        bad(
            "invalid email (JSON)",
            Some(JSON),
            r#"{"email":"taro@localhost"}"#,
            422,
            &["email"],
        ),
        bad("invalid phone", Some(FORM), "phone=12", 422, &["phone"]),
        bad(
            "valid email but invalid phone",
            Some(FORM),
            "email=ok%40example.jp&phone=abc",
            422,
            &["phone"],
        ),
        bad(
            "text/plain",
            Some("text/plain"),
            "email=plain%40example.jp",
            415,
            &[],
        ),
        bad("no content type", None, "email=none%40example.jp", 415, &[]),
        bad(
            "multipart",
            Some("multipart/form-data; boundary=x"),
            "--x--",
            415,
            &[],
        ),
        bad("1 MiB body", Some(FORM), padded(1024 * 1024), 413, &[]),
        bad("17 KiB body", Some(FORM), padded(17 * 1024), 413, &[]),
        bad(
            "17 KiB JSON body",
            Some(JSON),
            json!({"email": "big@example.jp", "_pad": "x".repeat(17 * 1024)}).to_string(),
            413,
            &[],
        ),
        bad(
            "invalid UTF-8 form",
            Some(FORM),
            b"email=a%40example.jp&name=\xff\xfe".to_vec(),
            400,
            &[],
        ),
        bad(
            "invalid UTF-8 JSON",
            Some(JSON),
            b"{\"email\":\"a@example.jp\",\"name\":\"\xff\"}".to_vec(),
            400,
            &[],
        ),
        bad(
            "email as an array",
            Some(JSON),
            r#"{"email":["a@example.jp"]}"#,
            422,
            &["email"],
        ),
        bad(
            "email as an object",
            Some(JSON),
            r#"{"email":{"x":1}}"#,
            422,
            &["email"],
        ),
        bad(
            "JSON array instead of object",
            Some(JSON),
            r#"[{"email":"a@example.jp"}]"#,
            422,
            &[],
        ),
        bad(
            "invalid JSON",
            Some(JSON),
            r#"{"email": "a@example.jp""#,
            400,
            &[],
        ),
        bad(
            "JSON with trailing garbage",
            Some(JSON),
            r#"{"email": "a@example.jp"} x"#,
            400,
            &[],
        ),
        bad(
            "200 extra fields",
            Some(FORM),
            many_fields_form,
            422,
            &["attributes"],
        ),
        bad(
            "200 extra fields (JSON)",
            Some(JSON),
            Json::Object(many_fields_json).to_string(),
            422,
            &["attributes"],
        ),
        bad(
            "attribute name over 64 characters",
            Some(FORM),
            "email=a%40example.jp&aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=x",
            422,
            &["attributes"],
        ),
        bad(
            "name too long",
            Some(FORM),
            format!("email=a%40example.jp&name={}", "x".repeat(201)),
            422,
            &["name"],
        ),
        bad(
            "control character in company",
            Some(FORM),
            "email=a%40example.jp&company=a%00b",
            422,
            &["company"],
        ),
        bad(
            "invalid postal code",
            Some(FORM),
            "email=a%40example.jp&postal_code=150-00011",
            422,
            &["postal_code"],
        ),
        bad(
            "invalid birthday",
            Some(FORM),
            "email=a%40example.jp&birthday=1990-02-30",
            422,
            &["birthday"],
        ),
        bad(
            "utm_source too long",
            Some(FORM),
            format!("email=a%40example.jp&utm_source={}", "x".repeat(201)),
            422,
            &["utm_source"],
        ),
        bad(
            "foreign-origin redirect",
            Some(FORM),
            redirect("https://evil.example/"),
            422,
            &["_redirect"],
        ),
        bad(
            "javascript: redirect",
            Some(FORM),
            redirect("javascript:alert(1)"),
            422,
            &["_redirect"],
        ),
        bad(
            "data: redirect",
            Some(FORM),
            redirect("data:text/html,<script>alert(1)</script>"),
            422,
            &["_redirect"],
        ),
        bad(
            "scheme-relative redirect",
            Some(FORM),
            redirect("//evil.example/"),
            422,
            &["_redirect"],
        ),
        bad(
            "user-info redirect",
            Some(FORM),
            redirect("https://lp.example.jp@evil.example/"),
            422,
            &["_redirect"],
        ),
        bad(
            "look-alike host redirect",
            Some(FORM),
            redirect("https://lp.example.jp.evil.example/"),
            422,
            &["_redirect"],
        ),
        bad(
            "downgraded scheme redirect",
            Some(FORM),
            redirect("http://lp.example.jp/thanks"),
            422,
            &["_redirect"],
        ),
        bad(
            "other port redirect",
            Some(FORM),
            redirect("https://lp.example.jp:8443/thanks"),
            422,
            &["_redirect"],
        ),
        bad(
            "foreign-origin redirect (JSON)",
            Some(JSON),
            json!({"email": "a@example.jp", "_redirect": "https://evil.example/"}).to_string(),
            422,
            &["_redirect"],
        ),
    ];
    cases.push(BadInput {
        case: "required fields from settings missing",
        form_id: "req",
        content_type: Some(FORM),
        body: b"email=req%40example.jp".to_vec(),
        status: 422,
        fields: &["name", "phone"],
    });
    cases.push(BadInput {
        case: "required consent from settings missing",
        form_id: "req-consent",
        content_type: Some(FORM),
        body: b"email=req%40example.jp&consent_email=off".to_vec(),
        status: 422,
        fields: &["consent_email"],
    });
    cases
}

#[test]
fn bad_input_gets_a_problem_document_and_stores_nothing() {
    // Arrange
    let app = TestApp::new();
    configure(&app, "req", &json!({"required_fields": ["name", "phone"]}));
    configure(
        &app,
        "req-consent",
        &json!({"required_fields": ["consent_email"]}),
    );
    started(&app);

    for case in bad_inputs() {
        for accept in ["application/problem+json", "text/html"] {
            let name = format!("{} (Accept: {accept})", case.case);
            let before = stored(&app);

            // Act
            let response = post(
                &app,
                case.form_id,
                case.content_type,
                &[("accept", accept)],
                case.body.clone(),
            );

            // Assert: a browser sees a page naming the fields of a 422;
            // every other refusal, and any script, the problem document.
            if accept == "text/html" && case.status == 422 {
                let fields: Vec<&str> = case
                    .fields
                    .iter()
                    .map(|f| f.strip_prefix("attributes.").unwrap_or(f))
                    .collect();
                assert_refusal_page(&response, 422, &fields, &name);
            } else {
                let problem = response.assert_problem(case.status, &name);
                let fields = error_fields(&problem);
                for field in case.fields {
                    assert!(
                        fields.iter().any(|f| f == field),
                        "case {name}: errors {fields:?} lack {field}"
                    );
                }
            }
            assert_eq!(stored(&app), before, "case {name}: something was stored");
        }
    }
}

#[test]
fn the_form_body_limit_is_16_kib() {
    // Arrange: bodies of exactly the limit and one byte over it.
    let app = TestApp::new();
    let prefix = "email=limit%40example.jp&_pad=";
    let at_limit = format!("{prefix}{}", "x".repeat(16 * 1024 - prefix.len()));
    let over_limit = format!("{at_limit}x");
    assert_eq!(at_limit.len(), 16 * 1024);

    // Act
    let over = app.post_form("lp", &over_limit, IP);
    let at = app.post_form("lp", &at_limit, IP);

    // Assert
    over.assert_problem(413, "16 KiB + 1 byte");
    assert_eq!(at.status, 200, "16 KiB exactly: {}", at.text());
    assert_eq!(
        app.count("SELECT count(*) FROM contacts WHERE email = 'limit@example.jp'"),
        1
    );
}

#[test]
fn fifty_extra_fields_are_kept_and_fifty_one_are_refused() {
    // Arrange
    let app = TestApp::new();
    let body = |email: &str, n: usize| {
        let extras: Vec<String> = (0..n).map(|i| format!("f{i}=v{i}")).collect();
        format!("email={}&{}", pct(email), extras.join("&"))
    };

    // Act
    let fifty = app.post_form("lp", &body("fifty@example.jp", 50), IP);
    let fifty_one = post(
        &app,
        "lp",
        Some(FORM),
        &[("accept", "application/problem+json")],
        body("fifty-one@example.jp", 51),
    );

    // Assert
    assert_eq!(fifty.status, 200, "{}", fifty.text());
    let contact = contact_by_email(&app, "fifty@example.jp");
    assert_eq!(
        contact["attributes"].as_object().expect("attributes").len(),
        50
    );
    assert_eq!(contact["attributes"]["f49"], "v49");
    let problem = fifty_one.assert_problem(422, "51 extra fields");
    assert_eq!(error_fields(&problem), ["attributes"]);
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
}

// ---------------------------------------------------------------------------
// Verbatim storage
// ---------------------------------------------------------------------------

const NASTY: &[(&str, &str)] = &[
    ("name", r#"O'Brien "Bob"; DROP TABLE contacts;--"#),
    ("company", "ACME' OR '1'='1"),
    (
        "address",
        r#"1-2-3 "Shibuya"'); DELETE FROM contacts WHERE ('1'='1"#,
    ),
    ("family_name_kana", "ヤマダ'--"),
    ("given_name_kana", r#"タロウ"; --"#),
    ("utm_source", "google'--"),
    ("utm_medium", r#"cpc" OR 1=1 --"#),
    ("utm_campaign", "spring'); DROP TABLE interactions;--"),
    ("utm_term", "%' OR '%'='"),
    ("utm_content", "<script>alert('x')</script>"),
    ("note", r#"it's "fine"; SELECT * FROM contacts; --"#),
];

#[test]
fn quotes_and_sql_fragments_are_stored_verbatim() {
    for transport in ["form", "json"] {
        // Arrange
        let app = TestApp::new();
        let email = format!("o'brien+{transport}@example.jp");
        let mut pairs: Vec<(&str, &str)> = vec![("email", &email)];
        pairs.extend_from_slice(NASTY);

        // Act
        let response = match transport {
            "form" => app.post_form("lp", &form_body(&pairs), IP),
            _ => {
                let body: serde_json::Map<String, Json> = pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), json!(v)))
                    .collect();
                app.post_form_json("lp", &Json::Object(body), IP)
            }
        };

        // Assert
        assert!(
            response.status == 200 || response.status == 202,
            "{transport}: {} {}",
            response.status,
            response.text()
        );
        let contact = contact_by_email(&app, &email);
        for (field, value) in NASTY {
            let stored = match *field {
                f if f.starts_with("utm_") => &contact["first_touch"]["utm"][f],
                "note" => &contact["attributes"]["note"],
                f => &contact[f],
            };
            assert_eq!(stored, *value, "{transport}: field {field}");
        }
        let id = contact["id"].as_str().expect("id");
        let entries = form_entries(&app, id);
        assert_eq!(entries.len(), 1, "{transport}");
        for (field, value) in NASTY {
            assert_eq!(
                entries[0]["data"]["fields"][field], *value,
                "{transport}: timeline field {field}"
            );
        }
        let row: (String, String) = app
            .db()
            .query_row(
                "SELECT name, utm_campaign FROM contacts WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("row");
        assert_eq!(row.0, NASTY[0].1, "{transport}");
        assert_eq!(row.1, NASTY[7].1, "{transport}");
        assert_eq!(app.count("SELECT count(*) FROM contacts"), 1, "{transport}");
    }
}

// ---------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------

#[test]
fn the_same_email_in_any_case_width_or_spacing_is_one_contact() {
    // Arrange
    let app = TestApp::new();
    let spellings = [
        "Taro@Example.JP",
        "  taro@example.jp  ",
        "ｔａｒｏ＠ｅｘａｍｐｌｅ．ｊｐ",
        "\u{3000}TARO@EXAMPLE.JP\u{3000}",
    ];

    // Act
    for email in spellings {
        let response = app.post_form("lp", &form_body(&[("email", email)]), IP);
        assert_eq!(response.status, 200, "case {email:?}: {}", response.text());
    }

    // Assert
    let id = only_contact_id(&app);
    assert_eq!(contact_by_id(&app, &id)["email"], "taro@example.jp");
    assert_eq!(form_entries(&app, &id).len(), spellings.len());
}

#[test]
fn phone_only_submissions_in_different_formats_are_one_contact() {
    // Arrange
    let app = TestApp::new();

    // Act
    for phone in [
        "090-1234-5678",
        "+81 90 1234 5678",
        "０９０－１２３４－５６７８",
    ] {
        let response = app.post_form_json("lp", &json!({"phone": phone}), IP);
        assert_eq!(response.status, 202, "case {phone:?}: {}", response.text());
    }
    let with_email = app.post_form_json(
        "lp",
        &json!({"phone": "09012345678", "email": "later@example.jp"}),
        IP,
    );

    // Assert
    assert_eq!(with_email.status, 202, "{}", with_email.text());
    let id = only_contact_id(&app);
    let contact = contact_by_id(&app, &id);
    assert_eq!(contact["phone"], "+819012345678");
    assert_eq!(
        contact["email"], "later@example.jp",
        "the phone-only contact gained the email"
    );
    assert_eq!(form_entries(&app, &id).len(), 4);
}

#[test]
fn an_anonymous_submission_fills_empty_fields_but_never_overwrites() {
    // Arrange
    let app = TestApp::new();
    let first = app.post_form(
        "lp",
        &form_body(&[
            ("email", "owner@example.jp"),
            ("name", "山田 太郎"),
            ("interest", "shoes"),
        ]),
        IP,
    );
    assert_eq!(first.status, 200, "{}", first.text());

    // Act
    let second = app.post_form(
        "lp",
        &form_body(&[
            ("email", "OWNER@example.jp"),
            ("name", "Mallory"),
            ("company", "株式会社サンプル"),
            ("interest", "bags"),
            ("size", "M"),
        ]),
        "198.51.100.9",
    );

    // Assert
    assert_eq!(second.status, 200, "{}", second.text());
    let contact = contact_by_email(&app, "owner@example.jp");
    assert_eq!(contact["name"], "山田 太郎", "stored name kept");
    assert_eq!(
        contact["company"], "株式会社サンプル",
        "empty company filled"
    );
    assert_eq!(
        contact["attributes"],
        json!({"interest": "shoes", "size": "M"}),
        "first value of each attribute kept"
    );
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
}

// ---------------------------------------------------------------------------
// First touch and timeline
// ---------------------------------------------------------------------------

#[test]
fn first_touch_is_kept_and_each_submission_is_on_the_timeline() {
    // Arrange
    let app = TestApp::new();
    let first = app.post_form(
        "spring",
        "email=touch%40example.jp&utm_source=google&utm_medium=cpc&utm_campaign=spring",
        IP,
    );
    assert_eq!(first.status, 200, "{}", first.text());
    app.clock.advance(time::Duration::seconds(1));

    // Act
    let second = app.post_form_json(
        "summer",
        &json!({"email": "touch@example.jp", "utm_source": "newsletter", "page": "https://lp.example.jp/summer"}),
        IP,
    );

    // Assert
    assert_eq!(second.status, 202, "{}", second.text());
    let contact = contact_by_email(&app, "touch@example.jp");
    let touch = &contact["first_touch"];
    assert_eq!(touch["source"], "form:spring");
    assert_eq!(touch["form_id"], "spring");
    assert_eq!(touch["page"], REFERER);
    assert_eq!(
        touch["utm"],
        json!({"utm_source": "google", "utm_medium": "cpc", "utm_campaign": "spring"})
    );
    let entries = form_entries(&app, contact["id"].as_str().expect("id"));
    assert_eq!(entries.len(), 2, "{entries:?}");
    let (newest, oldest) = (&entries[0]["data"], &entries[1]["data"]);
    assert_eq!(newest["form_id"], "summer");
    assert_eq!(newest["page"], "https://lp.example.jp/summer");
    assert_eq!(newest["utm"], json!({"utm_source": "newsletter"}));
    assert_eq!(oldest["form_id"], "spring");
    assert_eq!(oldest["page"], REFERER);
    assert_eq!(
        oldest["utm"],
        json!({"utm_source": "google", "utm_medium": "cpc", "utm_campaign": "spring"})
    );
}

// ---------------------------------------------------------------------------
// Consent
// ---------------------------------------------------------------------------

#[test]
fn a_ticked_consent_box_records_consent_with_its_proof() {
    // Arrange: the form's wording is v2.
    let app = TestApp::new();
    configure(&app, "spring", &json!({"consent_text_version": "v2"}));

    // Act
    let response = app.post_form(
        "spring",
        "email=consent%40example.jp&consent_email=on&consent_text_version=v2",
        "203.0.113.77",
    );

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let contact = contact_by_email(&app, "consent@example.jp");
    let email = &contact["consents"]["email"];
    assert_eq!(email["status"], "granted");
    assert_eq!(email["reason"], "form");
    assert_eq!(email["text_version"], "v2");
    assert_eq!(email["form_id"], "spring");
    assert_eq!(email["page"], REFERER);
    let row: (String, String, String, String, String, String) = app
        .db()
        .query_row(
            "SELECT channel, status, form_id, page_url, text_version, ip_truncated FROM consents WHERE contact_id = ?1",
            [contact["id"].as_str().expect("id")],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .expect("one consent row");
    assert_eq!(
        row,
        (
            "email".to_owned(),
            "granted".to_owned(),
            "spring".to_owned(),
            REFERER.to_owned(),
            "v2".to_owned(),
            "203.0.113.0/24".to_owned()
        )
    );
}

#[test]
fn consent_from_an_ipv6_client_keeps_only_the_48_bit_prefix() {
    // Arrange
    let app = TestApp::new();

    // Act
    let response = app.request(
        "POST",
        "/v1/forms/spring",
        &[
            ("content-type", FORM),
            ("accept", "text/html"),
            ("x-forwarded-for", "2001:db8:abcd:12::1"),
        ],
        "email=v6%40example.jp&consent_email=1",
    );

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let ip: String = app
        .db()
        .query_row("SELECT ip_truncated FROM consents", [], |r| r.get(0))
        .expect("one consent row");
    assert_eq!(ip, "2001:db8:abcd::/48");
}

#[test]
fn without_a_ticked_consent_box_no_consent_is_recorded() {
    // Arrange
    let app = TestApp::new();
    let cases = [
        ("no checkbox", "email=none%40example.jp"),
        (
            "unticked (empty)",
            "email=empty%40example.jp&consent_email=",
        ),
        ("off", "email=off%40example.jp&consent_email=off"),
        ("0", "email=zero%40example.jp&consent_email=0"),
        ("ticked but no email", "phone=09011112222&consent_email=on"),
    ];

    for (case, body) in cases {
        // Act
        let response = app.post_form("spring", body, IP);

        // Assert
        assert_eq!(response.status, 200, "case {case}: {}", response.text());
    }
    assert_eq!(
        app.count("SELECT count(*) FROM contacts"),
        cases.len() as i64
    );
    assert_eq!(app.count("SELECT count(*) FROM consents"), 0);
    assert_eq!(
        app.count("SELECT count(*) FROM interactions WHERE kind = 'consent_granted'"),
        0
    );
    assert_eq!(
        contact_by_email(&app, "none@example.jp")["consents"],
        json!({})
    );
}

// ---------------------------------------------------------------------------
// Honeypot
// ---------------------------------------------------------------------------

#[test]
fn a_filled_honeypot_gets_the_success_answer_and_stores_nothing() {
    struct Case {
        case: &'static str,
        content_type: &'static str,
        real: String,
        bot: String,
    }
    let cases = [
        Case {
            case: "browser, thank-you page",
            content_type: FORM,
            real: "email=real1%40example.jp".into(),
            bot: "email=bot1%40example.jp&name=Bot&_hp=http%3A%2F%2Fspam.example".into(),
        },
        Case {
            case: "browser, redirect",
            content_type: FORM,
            real: "email=real2%40example.jp&_redirect=https%3A%2F%2Flp.example.jp%2Fthanks".into(),
            bot: "email=bot2%40example.jp&_hp=x&_redirect=https%3A%2F%2Flp.example.jp%2Fthanks"
                .into(),
        },
        Case {
            case: "browser, bot without email",
            content_type: FORM,
            real: "email=real3%40example.jp".into(),
            bot: "name=Bot&company=Spam&_hp=anything".into(),
        },
        Case {
            case: "JSON",
            content_type: JSON,
            real: json!({"email": "real4@example.jp"}).to_string(),
            bot: json!({"email": "bot4@example.jp", "_hp": "anything"}).to_string(),
        },
    ];
    for case in cases {
        // Arrange
        let app = TestApp::new();
        let real = post(&app, "lp", Some(case.content_type), &[], case.real);
        assert!(real.status < 400, "case {}: {}", case.case, real.text());
        let before = app.table_counts();

        // Act
        let bot = post(&app, "lp", Some(case.content_type), &[], case.bot);

        // Assert
        assert_eq!(bot.status, real.status, "case {}", case.case);
        assert_eq!(
            bot.header("location"),
            real.header("location"),
            "case {}",
            case.case
        );
        assert_eq!(
            bot.header("content-type"),
            real.header("content-type"),
            "case {}",
            case.case
        );
        assert_eq!(bot.body, real.body, "case {}", case.case);
        assert_eq!(
            app.table_counts(),
            before,
            "case {}: the bot's submission was stored",
            case.case
        );
    }
}

// ---------------------------------------------------------------------------
// Rate limit
// ---------------------------------------------------------------------------

/// JSON posts from loopback with `headers` added, numbered from `first`.
fn post_from_loopback(app: &TestApp, n: usize, headers: &[(&str, &str)]) -> TestResponse {
    let mut all = vec![("content-type", JSON), ("accept", JSON)];
    all.extend_from_slice(headers);
    app.request(
        "POST",
        "/v1/forms/lp",
        &all,
        json!({"email": format!("spoof{n}@example.jp"), "consent_email": true}).to_string(),
    )
}

#[test]
fn a_forged_spin_client_addr_neither_escapes_the_rate_limit_nor_becomes_the_proof() {
    // Arrange: no trusted proxy, so the TCP peer (loopback) is the client.
    let app = TestApp::with_variables(&[("trusted_proxies", "")]);
    app.clear_of_minute_boundary();
    for n in 0..10 {
        let forged = format!("8.8.8.{n}:1234");
        let response = post_from_loopback(&app, n, &[("spin-client-addr", &forged)]);
        assert_eq!(response.status, 202, "post {n}: {}", response.text());
    }
    let before = stored(&app);

    // Act
    let refused = post_from_loopback(&app, 10, &[("spin-client-addr", "9.9.9.9:1")]);

    // Assert
    refused.assert_problem(429, "11th post with a fresh forged address");
    assert_eq!(stored(&app), before, "the refused post was stored");
    let proofs: Vec<String> = app
        .db()
        .prepare("SELECT DISTINCT ip_truncated FROM consents")
        .expect("query")
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("proofs");
    assert_eq!(proofs, ["127.0.0.0/24"], "the proof names the real peer");
}

/// The rate-limit table as stored: (bucket, window, hits), sorted.
fn rate_limit_rows(app: &TestApp) -> Vec<(String, i64, i64)> {
    app.db()
        .prepare("SELECT bucket, window_start, hits FROM rate_limits ORDER BY bucket")
        .expect("query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rate limits")
}

#[test]
fn a_refused_post_writes_nothing() {
    // Arrange: one client has used its ten posts this minute.
    let app = TestApp::new();
    app.clear_of_minute_boundary();
    for n in 0..10 {
        let response = post_from_loopback(&app, n, &[("x-forwarded-for", IP)]);
        assert_eq!(response.status, 202, "post {n}: {}", response.text());
    }
    let counters = rate_limit_rows(&app);
    let stored_before = stored(&app);

    // Act
    let refused: Vec<u16> = (10..15)
        .map(|n| post_from_loopback(&app, n, &[("x-forwarded-for", IP)]).status)
        .collect();

    // Assert
    assert_eq!(refused, [429; 5]);
    assert_eq!(rate_limit_rows(&app), counters, "a refusal moved a counter");
    assert_eq!(stored(&app), stored_before);
}

#[test]
fn strangers_cannot_grow_a_contacts_record_without_bound() {
    // Arrange: one address, posted by many clients (each under its own
    // rate limit) with consent ticked.
    let app = TestApp::new();
    let post = |n: usize| {
        app.request(
            "POST",
            "/v1/forms/lp",
            &[
                ("content-type", JSON),
                ("accept", JSON),
                ("x-forwarded-for", &format!("203.0.113.{n}")),
            ],
            json!({"email": "target@example.jp", "consent_email": true, "n": n}).to_string(),
        )
    };

    // Act
    let statuses: Vec<u16> = (0..25).map(|n| post(n).status).collect();

    // Assert: every post is answered the same, but the record stops growing.
    assert_eq!(statuses, [202; 25]);
    assert_eq!(
        app.count("SELECT count(*) FROM interactions WHERE kind = 'form_submitted'"),
        20
    );
    assert!(
        app.count("SELECT count(*) FROM consents") <= 20,
        "consent records grew past the bound"
    );
    let repeats = app.count(
        "SELECT json_extract(data, '$.repeats_not_recorded') FROM interactions
         WHERE kind = 'form_submitted' ORDER BY occurred_at DESC, id DESC LIMIT 1",
    );
    assert_eq!(repeats, 5, "the posts past the bound are counted");
}

#[test]
fn forwarding_headers_are_believed_only_from_a_trusted_proxy() {
    let cases = [
        ("no trusted proxy", "", 10),
        ("another network is trusted", "10.0.0.0/8", 10),
        ("loopback is the trusted proxy", TEST_PROXY, 11),
    ];
    for (case, trusted, accepted) in cases {
        // Arrange
        let app = TestApp::with_variables(&[("trusted_proxies", trusted)]);
        app.clear_of_minute_boundary();

        // Act: eleven posts, each naming another client in both headers.
        let statuses: Vec<u16> = (0..11)
            .map(|n| {
                let xff = format!("203.0.113.{n}");
                let forwarded = format!("for=198.51.100.{n}");
                post_from_loopback(
                    &app,
                    n,
                    &[("x-forwarded-for", &xff), ("forwarded", &forwarded)],
                )
                .status
            })
            .collect();

        // Assert
        let passed = statuses.iter().filter(|s| **s == 202).count();
        assert_eq!(passed, accepted, "case {case}: {statuses:?}");
        if accepted == 11 {
            let proofs =
                app.count("SELECT count(*) FROM consents WHERE ip_truncated = '203.0.113.0/24'");
            assert_eq!(proofs, 11, "case {case}: X-Forwarded-For names the client");
        }
    }
}

#[test]
fn the_eleventh_submission_in_a_minute_from_one_ip_to_one_form_is_refused() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    let body = |n: &str| format!("email=rl{n}%40example.jp");
    for i in 1..=10 {
        let response = app.post_form("lp", &body(&i.to_string()), IP);
        assert_eq!(response.status, 200, "submission {i}: {}", response.text());
    }
    let before = stored(&app);

    // Act
    let refused = app.post_form("lp", &body("11"), IP);

    // Assert: the browser is told when to try again.
    let page = assert_refusal_page(&refused, 429, &[], "11th submission");
    assert!(
        page.contains("60 秒") && page.contains("60 seconds"),
        "{page}"
    );
    assert_eq!(refused.header("retry-after"), Some("60"));
    assert_eq!(stored(&app), before, "the refused submission was stored");
    assert_eq!(
        app.count("SELECT count(*) FROM contacts WHERE email = 'rl11@example.jp'"),
        0
    );

    let other_ip = app.post_form("lp", &body("other-ip"), "198.51.100.2");
    assert_eq!(other_ip.status, 200, "another IP: {}", other_ip.text());
    let other_form = app.post_form("summer", &body("other-form"), IP);
    assert_eq!(
        other_form.status,
        200,
        "another form: {}",
        other_form.text()
    );

    app.clock.advance(time::Duration::seconds(30));
    let still_refused = app.post_form("lp", &body("half-minute"), IP);
    assert_refusal_page(&still_refused, 429, &[], "30 s later");
    assert_eq!(still_refused.header("retry-after"), Some("30"));

    app.clock.advance(time::Duration::seconds(31));
    let next_minute = app.post_form("lp", &body("next-minute"), IP);
    assert_eq!(
        next_minute.status,
        200,
        "61 s later: {}",
        next_minute.text()
    );
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 13);
}

#[test]
fn a_json_caller_that_is_rate_limited_gets_a_problem_document() {
    // Arrange
    let app = TestApp::new();
    for i in 0..10 {
        let response = app.post_form_json("lp", &json!({"email": format!("j{i}@example.jp")}), IP);
        assert_eq!(response.status, 202, "submission {i}: {}", response.text());
    }
    let before = stored(&app);

    // Act
    let refused = app.post_form_json("lp", &json!({"email": "j10@example.jp"}), IP);

    // Assert
    refused.assert_problem(429, "JSON 11th submission");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(stored(&app), before);
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

#[test]
fn a_browser_is_redirected_to_the_forms_thank_you_url_else_the_default() {
    // Arrange
    let app = TestApp::with_variables(&[("default_thank_you_url", "https://lp.example.jp/ty")]);
    configure(
        &app,
        "spring",
        &json!({"thank_you_url": "https://lp.example.jp/spring/thanks"}),
    );
    let cases = [
        (
            "form's thank_you_url",
            "spring",
            "email=a%40example.jp",
            "https://lp.example.jp/spring/thanks",
        ),
        (
            "default_thank_you_url",
            "autumn",
            "email=b%40example.jp",
            "https://lp.example.jp/ty",
        ),
        (
            "_redirect wins",
            "spring",
            "email=c%40example.jp&_redirect=https%3A%2F%2Flp.example.jp%2Fown",
            "https://lp.example.jp/own",
        ),
    ];

    for (case, form_id, body, location) in cases {
        // Act
        let response = app.post_form(form_id, body, IP);

        // Assert
        assert_eq!(response.status, 303, "case {case}: {}", response.text());
        assert_eq!(response.header("location"), Some(location), "case {case}");
    }
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 3);
}

#[test]
fn without_any_thank_you_url_a_browser_gets_a_thank_you_page() {
    // Arrange
    let app = TestApp::new();

    // Act
    let response = app.post_form("lp", "email=page%40example.jp", IP);

    // Assert
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(response.text().contains("Thank you"), "{}", response.text());
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
}

#[test]
fn the_answer_never_reveals_whether_the_contact_existed() {
    type Variables = &'static [(&'static str, &'static str)];
    let cases: [(&str, Variables, &str); 3] = [
        ("thank-you page", &[], FORM),
        (
            "redirect",
            &[("default_thank_you_url", "https://lp.example.jp/ty")],
            FORM,
        ),
        ("JSON", &[], JSON),
    ];
    for (case, variables, content_type) in cases {
        // Arrange
        let app = TestApp::with_variables(variables);
        let body = match content_type {
            JSON => json!({"email": "known@example.jp", "name": "Known"}).to_string(),
            _ => "email=known%40example.jp&name=Known".to_owned(),
        };

        // Act
        let new = post(&app, "lp", Some(content_type), &[], body.clone());
        let known = post(&app, "lp", Some(content_type), &[], body);

        // Assert
        assert!(new.status < 400, "case {case}: {}", new.text());
        assert_eq!(known.status, new.status, "case {case}");
        // Spin's `date` header names the second each answer was sent in.
        let without_date = |headers: &http::HeaderMap| {
            let mut headers = headers.clone();
            headers.remove(http::header::DATE);
            headers
        };
        assert_eq!(
            without_date(&known.headers),
            without_date(&new.headers),
            "case {case}"
        );
        assert_eq!(known.body, new.body, "case {case}");
        assert_eq!(app.count("SELECT count(*) FROM contacts"), 1, "case {case}");
    }
}

#[test]
fn a_redirect_answer_always_carries_a_location_header() {
    // A 303 without Location leaves the visitor on a blank page. A target
    // that cannot be sent as a header must be refused or percent-encoded.
    let cases = [
        ("non-ASCII path", "https://lp.example.jp/ありがとう"),
        (
            "CR LF in the target",
            "https://lp.example.jp/thanks\r\nSet-Cookie: a=b",
        ),
    ];
    let mut failures = Vec::new();
    for (case, target) in cases {
        // Arrange
        let app = TestApp::new();
        started(&app);
        let before = stored(&app);

        // Act
        let response = app.post_form(
            "lp",
            &form_body(&[("email", "loc@example.jp"), ("_redirect", target)]),
            IP,
        );

        // Assert
        match (response.status, response.header("location")) {
            (303, Some(location)) if location.starts_with("https://lp.example.jp/") => {}
            (303, location) => {
                failures.push(format!("case {case}: 303 with Location {location:?}"))
            }
            _ => {
                assert_refusal_page(&response, 422, &["_redirect"], case);
                assert_eq!(stored(&app), before, "case {case}");
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_thank_you_url_that_is_saved_is_a_usable_location() {
    // Arrange
    let app = TestApp::new();
    let saved = put_settings(
        &app,
        FORMS_KEY,
        "spring",
        &json!({"thank_you_url": "https://lp.example.jp/ありがとう"}),
    );
    if saved.status != 200 {
        // Refusing such a URL up front is as good as encoding it.
        saved.assert_problem(422, "non-ASCII thank_you_url");
        return;
    }

    // Act
    let response = app.post_form("spring", "email=ty%40example.jp", IP);

    // Assert
    assert_eq!(response.status, 303, "{}", response.text());
    let location = response
        .header("location")
        .expect("a 303 without a Location header");
    assert!(location.starts_with("https://lp.example.jp/"), "{location}");
}

// ---------------------------------------------------------------------------
// Form settings
// ---------------------------------------------------------------------------

#[test]
fn form_settings_round_trip() {
    if skip_under_spin("needs the manual clock") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    let unconfigured = app.get(FORMS_KEY, "/v1/forms/spring/settings");
    assert_eq!(unconfigured.status, 200, "{}", unconfigured.text());
    assert_eq!(unconfigured.json()["configured"], false);
    assert_eq!(unconfigured.json()["settings"]["tags"], json!([]));

    // Act
    let saved = put_settings(
        &app,
        FORMS_KEY,
        "spring",
        &json!({
            "thank_you_url": "https://lp.example.jp/thanks",
            "error_url": "https://lp.example.jp/form-error?lang=ja",
            "allowed_origins": ["https://Shop.Example.com/"],
            "required_fields": ["name"],
            "tags": ["spring-2026"],
            "consent_text_version": "v3",
        }),
    );
    let read = app.get(ADMIN_KEY, "/v1/forms/spring/settings");

    // Assert
    assert_eq!(saved.status, 200, "{}", saved.text());
    let expected = json!({
        "form_id": "spring",
        "configured": true,
        "updated_at": "2026-11-22T03:00:00.000000Z",
        "updated_by": "key:forms",
        "settings": {
            "thank_you_url": "https://lp.example.jp/thanks",
            "error_url": "https://lp.example.jp/form-error?lang=ja",
            "allowed_origins": ["https://shop.example.com"],
            "allowed_origins_mode": "add",
            "required_fields": ["name"],
            "tags": ["spring-2026"],
            "consent_text_version": "v3",
            "consent_texts": {},
        },
    });
    assert_eq!(saved.json(), expected);
    assert_eq!(read.status, 200);
    assert_eq!(read.json(), expected);
    assert_eq!(
        app.get(FORMS_KEY, "/v1/forms/autumn/settings").json()["configured"],
        false
    );
}

#[test]
fn form_settings_need_the_forms_admin_scope() {
    // Arrange
    let app = TestApp::new();
    let original = json!({"tags": ["original"]});
    configure(&app, "spring", &original);
    let cases: [(&str, Option<&str>, u16); 6] = [
        ("forms key", Some(FORMS_KEY), 200),
        ("admin key", Some(ADMIN_KEY), 200),
        ("read key", Some(READ_KEY), 403),
        ("write key", Some(WRITE_KEY), 403),
        ("unknown key", Some("not-a-key"), 401),
        ("no key", None, 401),
    ];

    for (case, key, status) in cases {
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut headers: Vec<(&str, &str)> = vec![("content-type", JSON)];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth));
        }

        // Act
        let get = app.request("GET", "/v1/forms/spring/settings", &headers, "");
        let put = app.request(
            "PUT",
            "/v1/forms/spring/settings",
            &headers,
            json!({"tags": [case]}).to_string(),
        );

        // Assert
        for (method, response) in [("GET", &get), ("PUT", &put)] {
            if status == 200 {
                assert_eq!(
                    response.status,
                    200,
                    "case {case} {method}: {}",
                    response.text()
                );
            } else {
                response.assert_problem(status, &format!("{case} {method}"));
            }
            if status == 401 {
                assert_eq!(
                    response.header("www-authenticate"),
                    Some("Bearer"),
                    "case {case} {method}"
                );
            }
        }
        if status == 200 {
            // Put the original back for the next case.
            configure(&app, "spring", &original);
        } else {
            let now = app.get(FORMS_KEY, "/v1/forms/spring/settings").json();
            assert_eq!(
                now["settings"]["tags"],
                json!(["original"]),
                "case {case}: settings changed"
            );
        }
    }
}

#[test]
fn invalid_form_settings_are_refused_and_change_nothing() {
    // Arrange
    let app = TestApp::new();
    configure(
        &app,
        "spring",
        &json!({"thank_you_url": "https://lp.example.jp/thanks"}),
    );
    let before = app.get(FORMS_KEY, "/v1/forms/spring/settings").json();
    // (case, content type, body, status, fields the problem names)
    type Case = (
        &'static str,
        Option<&'static str>,
        String,
        u16,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (
            "javascript: thank_you_url",
            Some(JSON),
            json!({"thank_you_url": "javascript:x"}).to_string(),
            422,
            &["thank_you_url"],
        ),
        (
            "relative thank_you_url",
            Some(JSON),
            json!({"thank_you_url": "/thanks"}).to_string(),
            422,
            &["thank_you_url"],
        ),
        (
            "relative error_url",
            Some(JSON),
            json!({"error_url": "/error"}).to_string(),
            422,
            &["error_url"],
        ),
        (
            "javascript: error_url",
            Some(JSON),
            json!({"error_url": "javascript:x"}).to_string(),
            422,
            &["error_url"],
        ),
        (
            "unknown required field",
            Some(JSON),
            json!({"required_fields": ["order_count"]}).to_string(),
            422,
            &["required_fields"],
        ),
        (
            "both at once",
            Some(JSON),
            json!({"thank_you_url": "javascript:x", "required_fields": ["order_count"]})
                .to_string(),
            422,
            &["thank_you_url", "required_fields"],
        ),
        (
            "origin without scheme",
            Some(JSON),
            json!({"allowed_origins": ["lp.example.jp"]}).to_string(),
            422,
            &["allowed_origins"],
        ),
        (
            "tag with a slash",
            Some(JSON),
            json!({"tags": ["a/b"]}).to_string(),
            422,
            &["tags"],
        ),
        (
            "empty consent version",
            Some(JSON),
            json!({"consent_text_version": ""}).to_string(),
            422,
            &["consent_text_version"],
        ),
        (
            "21 tags",
            Some(JSON),
            json!({"tags": (0..21).map(|i| format!("t{i}")).collect::<Vec<_>>()}).to_string(),
            422,
            &[],
        ),
        (
            "unknown setting",
            Some(JSON),
            json!({"thanks_url": "https://lp.example.jp/"}).to_string(),
            422,
            &[],
        ),
        (
            "tags as a string",
            Some(JSON),
            json!({"tags": "spring"}).to_string(),
            422,
            &[],
        ),
        (
            "invalid JSON",
            Some(JSON),
            "{\"tags\": [".to_owned(),
            400,
            &[],
        ),
        (
            "text/plain",
            Some("text/plain"),
            json!({"tags": ["x"]}).to_string(),
            415,
            &[],
        ),
    ];

    for (case, content_type, body, status, fields) in cases {
        let auth = format!("Bearer {FORMS_KEY}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(content_type) = content_type {
            headers.push(("content-type", content_type));
        }

        // Act
        let response = app.request("PUT", "/v1/forms/spring/settings", &headers, body);

        // Assert
        let problem = response.assert_problem(status, case);
        let named = error_fields(&problem);
        for field in fields {
            assert!(
                named.iter().any(|f| f == field),
                "case {case}: errors {named:?} lack {field}"
            );
        }
        assert_eq!(
            app.get(FORMS_KEY, "/v1/forms/spring/settings").json(),
            before,
            "case {case}: settings changed"
        );
    }
}

#[test]
fn settings_tags_are_applied_to_the_lead() {
    // Arrange
    let app = TestApp::new();
    configure(&app, "spring", &json!({"tags": ["spring-2026", "lp"]}));

    // Act
    let first = app.post_form("spring", "email=tagged%40example.jp", IP);
    let again = app.post_form("spring", "email=tagged%40example.jp", IP);
    let other = app.post_form("autumn", "email=untagged%40example.jp", IP);

    // Assert
    for response in [&first, &again, &other] {
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert_eq!(
        contact_by_email(&app, "tagged@example.jp")["tags"],
        json!(["lp", "spring-2026"])
    );
    assert_eq!(
        contact_by_email(&app, "untagged@example.jp")["tags"],
        json!([])
    );
    assert_eq!(app.count("SELECT count(*) FROM contact_tags"), 2);
}

#[test]
fn settings_allowed_origins_make_a_redirect_to_that_origin_acceptable() {
    // Arrange
    let app = TestApp::new();
    configure(
        &app,
        "spring",
        &json!({"allowed_origins": ["https://shop.example.com"]}),
    );
    let body = |email: &str| {
        form_body(&[
            ("email", email),
            ("_redirect", "https://shop.example.com/thanks"),
        ])
    };

    // Act
    let own_form = app.post_form("spring", &body("shop@example.jp"), IP);
    let other_form = app.post_form("autumn", &body("elsewhere@example.jp"), IP);

    // Assert
    assert_eq!(own_form.status, 303, "{}", own_form.text());
    assert_eq!(
        own_form.header("location"),
        Some("https://shop.example.com/thanks")
    );
    assert_refusal_page(&other_form, 422, &["_redirect"], "another form's origin");
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
}

fn patch_settings(app: &TestApp, key: &str, form_id: &str, patch: &Json) -> TestResponse {
    app.send_json(
        "PATCH",
        key,
        &format!("/v1/forms/{form_id}/settings"),
        patch,
    )
}

#[test]
fn a_settings_patch_changes_only_what_it_names() {
    // Arrange
    let app = TestApp::new();
    let full = json!({
        "thank_you_url": "https://lp.example.jp/thanks",
        "error_url": "https://lp.example.jp/form-error",
        "allowed_origins": ["https://shop.example.com"],
        "required_fields": ["name"],
        "tags": ["spring-2026"],
        "consent_text_version": "v3",
        "consent_texts": {"v2": "旧文言", "v3": "メールマガジンを受け取る"},
    });
    configure(&app, "spring", &full);

    // Act: a new wording becomes current, the oldest goes, the tags are
    // replaced and the error page is dropped
    let patched = patch_settings(
        &app,
        FORMS_KEY,
        "spring",
        &json!({
            "consent_texts": {"v4": "新商品とセールのお知らせを受け取る", "v2": null},
            "consent_text_version": "v4",
            "tags": ["autumn-2026"],
            "error_url": null,
        }),
    );

    // Assert
    assert_eq!(patched.status, 200, "{}", patched.text());
    let expected = json!({
        "thank_you_url": "https://lp.example.jp/thanks",
        "error_url": null,
        "allowed_origins": ["https://shop.example.com"],
        "allowed_origins_mode": "add",
        "required_fields": ["name"],
        "tags": ["autumn-2026"],
        "consent_text_version": "v4",
        "consent_texts": {"v3": "メールマガジンを受け取る", "v4": "新商品とセールのお知らせを受け取る"},
    });
    assert_eq!(patched.json()["settings"], expected);
    assert_eq!(patched.json()["updated_by"], "key:forms");
    let read = app.get(FORMS_KEY, "/v1/forms/spring/settings").json();
    assert_eq!(read["settings"], expected);
    let (stored, _, by) = settings_row(&app, "spring").expect("a row");
    assert_eq!(stored, expected, "what is stored is what was answered");
    assert_eq!(by, "key:forms");

    // Act: the merge-patch media type, on a form nobody set up yet
    let fresh = app.request(
        "PATCH",
        "/v1/forms/autumn/settings",
        &[
            ("authorization", &bearer(FORMS_KEY)),
            ("content-type", "application/merge-patch+json"),
        ],
        json!({"tags": ["autumn"]}).to_string(),
    );

    // Assert: it starts from the defaults
    assert_eq!(fresh.status, 200, "{}", fresh.text());
    let fresh = fresh.json();
    assert_eq!(fresh["configured"], true);
    assert_eq!(fresh["settings"]["tags"], json!(["autumn"]));
    assert_eq!(fresh["settings"]["thank_you_url"], Json::Null);
    assert_eq!(fresh["settings"]["required_fields"], json!([]));
}

#[test]
fn an_invalid_settings_patch_is_refused_and_changes_nothing() {
    // Arrange
    let app = TestApp::new();
    configure(
        &app,
        "spring",
        &json!({"thank_you_url": "https://lp.example.jp/thanks", "tags": ["spring"],
                "consent_text_version": "v3", "consent_texts": {"v3": "メールマガジンを受け取る"}}),
    );
    let before = settings_row(&app, "spring");
    // (case, content type, body, status, fields the problem names)
    let cases: [(&str, &str, String, u16, &[&str]); 10] = [
        (
            "an unknown setting",
            JSON,
            json!({"thanks_url": "https://lp.example.jp/", "tags": ["x"]}).to_string(),
            422,
            &["thanks_url"],
        ),
        (
            "two unknown settings",
            JSON,
            json!({"a": 1, "b": 2}).to_string(),
            422,
            &["a", "b"],
        ),
        (
            "tags as a string",
            JSON,
            json!({"tags": "spring"}).to_string(),
            422,
            &["tags"],
        ),
        (
            "an unknown origins mode",
            JSON,
            json!({"allowed_origins_mode": "only"}).to_string(),
            422,
            &["allowed_origins_mode"],
        ),
        (
            "a javascript: thank-you URL",
            JSON,
            json!({"thank_you_url": "javascript:x"}).to_string(),
            422,
            &["thank_you_url"],
        ),
        (
            "a current version without wording",
            JSON,
            json!({"consent_text_version": "v9"}).to_string(),
            422,
            &["consent_text_version"],
        ),
        (
            "the current version's wording removed",
            JSON,
            json!({"consent_texts": {"v3": null, "v4": "新"}}).to_string(),
            422,
            &["consent_text_version"],
        ),
        ("not an object", JSON, "[1]".to_owned(), 422, &[]),
        ("invalid JSON", JSON, "{\"tags\": [".to_owned(), 400, &[]),
        (
            "text/plain",
            "text/plain",
            json!({"tags": ["x"]}).to_string(),
            415,
            &[],
        ),
    ];

    for (case, content_type, body, status, fields) in cases {
        // Act
        let response = app.request(
            "PATCH",
            "/v1/forms/spring/settings",
            &[
                ("authorization", &bearer(FORMS_KEY)),
                ("content-type", content_type),
            ],
            body,
        );

        // Assert
        let problem = response.assert_problem(status, case);
        let named = error_fields(&problem);
        for field in fields {
            assert!(
                named.iter().any(|f| f == field),
                "case {case}: errors {named:?} lack {field}"
            );
        }
        assert_eq!(
            settings_row(&app, "spring"),
            before,
            "case {case}: settings changed"
        );
    }
    for (case, key, status) in [
        ("read key", READ_KEY, 403),
        ("unknown key", "not-a-key", 401),
    ] {
        patch_settings(&app, key, "spring", &json!({"tags": ["x"]})).assert_problem(status, case);
        assert_eq!(
            settings_row(&app, "spring"),
            before,
            "case {case}: settings changed"
        );
    }
}

#[test]
fn a_form_can_replace_the_global_origins_with_its_own() {
    // Arrange: `spring` is embedded on the shop's own site only; the
    // variable allows the landing-page host (LP_ORIGIN) for every form.
    let app = TestApp::new();
    let shop = "https://shop.example.com";
    configure(
        &app,
        "spring",
        &json!({"allowed_origins": [shop], "allowed_origins_mode": "replace"}),
    );
    let redirect_to = |form_id: &str, origin: &str, n: usize| {
        app.post_form(
            form_id,
            &form_body(&[
                ("email", &format!("origins{n}@example.jp")),
                ("_redirect", &format!("{origin}/thanks")),
            ]),
            IP,
        )
    };

    // Act
    let own_preflight = preflight(&app, "spring", Some(shop));
    let global_preflight = preflight(&app, "spring", Some(LP_ORIGIN));
    let other_form_preflight = preflight(&app, "autumn", Some(LP_ORIGIN));
    let own_redirect = redirect_to("spring", shop, 1);
    let global_redirect = redirect_to("spring", LP_ORIGIN, 2);
    let global_script = post_json_from_origin(
        &app,
        "spring",
        &json!({"email": "origins3@example.jp"}),
        LP_ORIGIN,
    );

    // Assert
    assert_eq!(own_preflight.status, 204, "{}", own_preflight.text());
    global_preflight.assert_problem(403, "the variable's origin, replaced");
    assert_eq!(
        other_form_preflight.status, 204,
        "other forms keep the variable's"
    );
    assert_eq!(own_redirect.status, 303, "{}", own_redirect.text());
    assert_eq!(
        own_redirect.header("location"),
        Some("https://shop.example.com/thanks")
    );
    assert_refusal_page(
        &global_redirect,
        422,
        &["_redirect"],
        "the variable's origin, replaced",
    );
    assert_eq!(global_script.status, 202, "a post is taken from anywhere");
    assert_eq!(
        global_script.header("access-control-allow-origin"),
        None,
        "but only the form's own origins may read the answer"
    );
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 2);

    // Act: back to adding, by removing the mode
    let patched = patch_settings(
        &app,
        FORMS_KEY,
        "spring",
        &json!({"allowed_origins_mode": null}),
    );

    // Assert
    assert_eq!(patched.json()["settings"]["allowed_origins_mode"], "add");
    assert_eq!(preflight(&app, "spring", Some(LP_ORIGIN)).status, 204);
}

/// `GET /v1/forms` with `query`, as the forms key.
fn list_forms(app: &TestApp, query: &str) -> TestResponse {
    app.get(FORMS_KEY, &format!("/v1/forms{query}"))
}

#[test]
fn the_forms_list_shows_every_form_with_its_settings_and_latest_submission() {
    // Arrange: `autumn` is set up and took nothing; `spring` is set up and
    // took two posts; `sprnig` (a typo in a page) took one, unconfigured.
    let app = TestApp::new();
    configure(&app, "autumn", &json!({"tags": ["autumn"]}));
    configure(&app, "spring", &json!({"tags": ["spring"]}));
    let post_to = |form_id: &str, email: &str| {
        let response = app.post_form(form_id, &form_body(&[("email", email)]), IP);
        assert_eq!(response.status, 200, "{}", response.text());
        app.now()
    };
    post_to("spring", "first@example.jp");
    if !app.under_spin() {
        app.clock.advance(time::Duration::minutes(5));
    }
    let spring_latest = post_to("spring", "second@example.jp");
    let typo_latest = post_to("sprnig", "typo@example.jp");

    // Act
    let all = list_forms(&app, "");

    // Assert
    assert_eq!(all.status, 200, "{}", all.text());
    if let Some(statements) = app.statements_of_last_request() {
        assert!(statements <= 1, "one statement per page: {statements}");
    }
    let all = all.json();
    let items = all["items"].as_array().expect("items").clone();
    let ids: Vec<&str> = items
        .iter()
        .map(|i| i["form_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["autumn", "spring", "sprnig"]);
    assert_eq!(all["next_cursor"], Json::Null);
    assert_eq!(items[0]["configured"], true);
    assert_eq!(items[0]["settings"]["tags"], json!(["autumn"]));
    assert_eq!(items[0]["last_submission_at"], Json::Null);
    assert_eq!(items[0]["updated_by"], "key:forms");
    assert_eq!(items[1]["settings"]["tags"], json!(["spring"]));
    assert_eq!(items[2]["configured"], false);
    assert_eq!(items[2]["settings"]["tags"], json!([]));
    if !app.under_spin() {
        let at = |t: time::OffsetDateTime| kizuna::timestamp::format(t);
        assert_eq!(items[1]["last_submission_at"], at(spring_latest).as_str());
        assert_eq!(items[2]["last_submission_at"], at(typo_latest).as_str());
    } else {
        assert!(
            items[1]["last_submission_at"].is_string()
                && items[2]["last_submission_at"].is_string()
        );
    }

    // Act: page by page
    let mut paged = Vec::new();
    let mut query = "?limit=1".to_owned();
    loop {
        let page = list_forms(&app, &query);
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        paged.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=1&cursor={cursor}"),
            None => break,
        }
        assert!(paged.len() <= 3, "paging ends");
    }

    // Assert
    assert_eq!(paged, items);

    // Refused
    list_forms(&app, "?form_id=spring").assert_problem(422, "an unknown parameter");
    list_forms(&app, "?limit=0").assert_problem(422, "limit 0");
    list_forms(&app, "?cursor=nope").assert_problem(422, "a bad cursor");
    app.get(READ_KEY, "/v1/forms")
        .assert_problem(403, "read key");
    app.request("GET", "/v1/forms", &[], "")
        .assert_problem(401, "no key");
}

#[test]
fn an_erased_persons_submission_no_longer_dates_the_form() {
    // Arrange
    let app = TestApp::new();
    let response = app.post_form("winter", &form_body(&[("email", "gone@example.jp")]), IP);
    assert_eq!(response.status, 200, "{}", response.text());
    let id = only_contact_id(&app);
    assert!(list_forms(&app, "").json()["items"][0]["last_submission_at"].is_string());

    // Act
    let erased = app.request(
        "DELETE",
        &format!("/v1/contacts/{id}"),
        &[("authorization", &bearer(ADMIN_KEY))],
        "",
    );

    // Assert
    assert_eq!(erased.status, 200, "{}", erased.text());
    let items = list_forms(&app, "").json()["items"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        items.is_empty(),
        "no trace of the erased person's form: {items:?}"
    );
}

#[test]
fn the_configured_consent_wording_is_the_proof_and_a_posted_version_only_if_known() {
    // Arrange: the form shows v3 now and showed v2 before.
    let app = TestApp::new();
    configure(
        &app,
        "spring",
        &json!({"consent_text_version": "v3",
                "consent_texts": {"v2": "メールでお知らせを受け取る（旧）", "v3": "メールマガジンを受け取る"}}),
    );
    let cases = [
        ("none posted", "", "v3"),
        (
            "an older wording the form knows",
            "&consent_text_version=v2",
            "v2",
        ),
        ("the current one", "&consent_text_version=v3", "v3"),
        (
            "one the submitter made up",
            "&consent_text_version=forged",
            "v3",
        ),
    ];
    for (n, (case, extra, recorded)) in cases.iter().enumerate() {
        // Act
        let body = format!("email=ver{n}%40example.jp&consent_email=on{extra}");
        let response = app.post_form("spring", &body, IP);

        // Assert
        assert_eq!(response.status, 200, "case {case}: {}", response.text());
        let contact = contact_by_email(&app, &format!("ver{n}@example.jp"));
        assert_eq!(
            contact["consents"]["email"]["text_version"], *recorded,
            "case {case}"
        );
    }
}

#[test]
fn a_form_without_configured_wording_keeps_no_posted_version() {
    // Arrange
    let app = TestApp::new();

    // Act
    let response = app.post_form(
        "plain",
        "email=noversion%40example.jp&consent_email=on&consent_text_version=forged",
        IP,
    );

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let email = &contact_by_email(&app, "noversion@example.jp")["consents"]["email"];
    assert_eq!(email["status"], "granted");
    assert_eq!(email["text_version"], Json::Null);
}

/// SHA-256 of "メールマガジンを受け取る" (UTF-8), computed apart from Kizuna.
const V3_WORDING_SHA256: &str = "b434fb2823e2b6d0c51430d6377a333d8c9d95b23a9bc795f561d205dd20c699";

#[test]
fn a_form_consent_keeps_the_digest_of_the_wording_the_person_saw() {
    // Arrange
    let app = TestApp::new();
    configure(
        &app,
        "spring",
        &json!({"consent_text_version": "v3",
                "consent_texts": {"v2": "メールでお知らせを受け取る（旧）", "v3": "メールマガジンを受け取る"}}),
    );
    configure(&app, "label-only", &json!({"consent_text_version": "v1"}));

    // Act
    let response = app.post_form("spring", "email=wording%40example.jp&consent_email=on", IP);
    let label_only = app.post_form(
        "label-only",
        "email=label%40example.jp&consent_email=on",
        IP,
    );

    // Assert: the digest with the record, the wording in the export.
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(label_only.status, 200, "{}", label_only.text());
    let contact = contact_by_email(&app, "wording@example.jp");
    let email = &contact["consents"]["email"];
    assert_eq!(email["text_version"], "v3");
    assert_eq!(email["text_sha256"], V3_WORDING_SHA256);
    let id = contact["id"].as_str().expect("id").to_owned();
    let export = |app: &TestApp| {
        let response = app.get(ADMIN_KEY, &format!("/v1/contacts/{id}/export"));
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()["consent_log"][0].clone()
    };
    let logged = export(&app);
    assert_eq!(logged["text_version"], "v3");
    assert_eq!(logged["text_sha256"], V3_WORDING_SHA256);
    assert_eq!(logged["text"], "メールマガジンを受け取る");
    let label = &contact_by_email(&app, "label@example.jp")["consents"]["email"];
    assert_eq!(label["text_version"], "v1");
    assert_eq!(label["text_sha256"], Json::Null, "no wording, no digest");

    // Act: the shop rewrites v3's wording in place.
    configure(
        &app,
        "spring",
        &json!({"consent_text_version": "v3", "consent_texts": {"v3": "お得な情報を受け取る"}}),
    );

    // Assert: the record still proves what was seen; the export no longer
    // shows a text that is not the one the digest names.
    let logged = export(&app);
    assert_eq!(logged["text_sha256"], V3_WORDING_SHA256);
    assert_eq!(logged["text"], Json::Null);
}

// ---------------------------------------------------------------------------
// Where form settings are kept
// ---------------------------------------------------------------------------

/// The key-value store's file in the app's state folder: Spin's name and
/// table, which the native host uses too, so a test can reach it either way.
fn kv_path(app: &TestApp) -> std::path::PathBuf {
    app.dir.path().join("sqlite_key_value.db")
}

fn kv_store(app: &TestApp) -> kizuna_tests::stores::SqliteKv {
    kizuna_tests::stores::SqliteKv::open(&kv_path(app)).expect("the key-value store")
}

fn kv_get(app: &TestApp, key: &str) -> Option<Vec<u8>> {
    use kizuna::ports::Kv as _;
    if let Some(backing) = &app.backing {
        return backing.redis.get(key).expect("Redis GET");
    }
    futures::executor::block_on(kv_store(app).get(key)).expect("key-value get")
}

fn kv_set(app: &TestApp, key: &str, value: &[u8]) {
    use kizuna::ports::Kv as _;
    if let Some(backing) = &app.backing {
        return backing.redis.set(key, value).expect("Redis SET");
    }
    futures::executor::block_on(kv_store(app).set(key, value)).expect("key-value set");
}

/// Empties the key-value store, as a Redis restart without persistence
/// would (on Redis: that restart).
fn wipe_kv(app: &TestApp) {
    if let Some(backing) = &app.backing {
        backing.redis.start_again().expect("Redis restarted");
        return;
    }
    drop(kv_store(app)); // creates the table if nothing has yet
    rusqlite::Connection::open(kv_path(app))
        .expect("the key-value store")
        .execute("DELETE FROM spin_key_value", [])
        .expect("wipe the key-value store");
}

/// The `form_settings` row of `form_id`: settings, updated_at, updated_by.
fn settings_row(app: &TestApp, form_id: &str) -> Option<(Json, String, String)> {
    use rusqlite::OptionalExtension as _;
    app.db()
        .query_row(
            "SELECT settings, updated_at, updated_by FROM form_settings WHERE form_id = ?1",
            [form_id],
            |r| {
                let settings: String = r.get(0)?;
                Ok((
                    serde_json::from_str(&settings).expect("settings JSON"),
                    r.get(1)?,
                    r.get(2)?,
                ))
            },
        )
        .optional()
        .expect("form_settings")
}

/// Where a release before form settings moved to SQLite kept them.
const LEGACY_SPRING_KEY: &str = "forms/spring/settings";

/// What such a release kept for `spring`: settings with their author and
/// time, as JSON.
fn legacy_spring_settings() -> Json {
    json!({
        "settings": {
            "thank_you_url": "https://lp.example.jp/legacy-thanks",
            "required_fields": ["name"],
            "tags": ["legacy"],
            "consent_text_version": "v1",
        },
        "updated_at": "2026-04-01T09:00:00.000000Z",
        "updated_by": "key:admin",
    })
}

#[test]
fn form_settings_survive_the_loss_of_the_key_value_store() {
    // Arrange
    let app = TestApp::new();
    configure(
        &app,
        "spring",
        &json!({
            "thank_you_url": "https://lp.example.jp/thanks",
            "required_fields": ["name"],
            "tags": ["spring-2026"],
            "consent_text_version": "v3",
            "consent_texts": {"v2": "旧文言", "v3": "メールマガジンを受け取る"},
        }),
    );
    let saved = app.get(FORMS_KEY, "/v1/forms/spring/settings");
    assert_eq!(saved.status, 200, "{}", saved.text());
    let saved = saved.json();

    // Act: the key-value store is lost, as a Redis restart would lose it.
    let in_kv = kv_get(&app, LEGACY_SPRING_KEY);
    wipe_kv(&app);
    let read = app.get(FORMS_KEY, "/v1/forms/spring/settings");
    let without_name = app.post_form("spring", "email=kept%40example.jp", IP);
    let with_name = app.post_form(
        "spring",
        "email=kept%40example.jp&name=%E5%B1%B1%E7%94%B0",
        IP,
    );

    // Assert
    assert_eq!(
        in_kv, None,
        "form settings were written to the key-value store"
    );
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json(), saved);
    let (settings, updated_at, updated_by) =
        settings_row(&app, "spring").expect("a form_settings row");
    assert_eq!(settings, saved["settings"]);
    assert_eq!(
        updated_at,
        saved["updated_at"].as_str().expect("updated_at")
    );
    assert_eq!(updated_by, "key:forms");
    assert_refusal_page(&without_name, 422, &["name"], "required name");
    assert_eq!(with_name.status, 303, "{}", with_name.text());
    assert_eq!(
        with_name.header("location"),
        Some("https://lp.example.jp/thanks")
    );
    assert_eq!(
        contact_by_email(&app, "kept@example.jp")["tags"],
        json!(["spring-2026"])
    );
}

#[test]
fn settings_an_earlier_release_kept_in_the_key_value_store_are_honoured_and_moved() {
    if skip_on_libsql("no release before this one ran on libSQL: nothing to move from Redis") {
        return;
    }
    // Arrange: no row, only what an earlier release left in the store.
    let app = TestApp::new();
    started(&app);
    let legacy = legacy_spring_settings();
    kv_set(&app, LEGACY_SPRING_KEY, legacy.to_string().as_bytes());
    assert_eq!(settings_row(&app, "spring"), None);

    // Act
    let without_name = app.post_form("spring", "email=legacy%40example.jp", IP);
    let with_name = app.post_form(
        "spring",
        "email=legacy%40example.jp&name=%E5%B1%B1%E7%94%B0",
        IP,
    );
    wipe_kv(&app);
    let read = app.get(FORMS_KEY, "/v1/forms/spring/settings");

    // Assert: honoured by the first post, and in the table from then on.
    assert_refusal_page(&without_name, 422, &["name"], "required name");
    assert_eq!(with_name.status, 303, "{}", with_name.text());
    assert_eq!(
        with_name.header("location"),
        Some("https://lp.example.jp/legacy-thanks")
    );
    assert_eq!(
        contact_by_email(&app, "legacy@example.jp")["tags"],
        json!(["legacy"])
    );
    let expected_settings = json!({
        "thank_you_url": "https://lp.example.jp/legacy-thanks",
        "error_url": null,
        "allowed_origins": [],
        "allowed_origins_mode": "add",
        "required_fields": ["name"],
        "tags": ["legacy"],
        "consent_text_version": "v1",
        "consent_texts": {},
    });
    assert_eq!(
        settings_row(&app, "spring"),
        Some((
            expected_settings.clone(),
            "2026-04-01T09:00:00.000000Z".to_owned(),
            "key:admin".to_owned(),
        ))
    );
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(
        read.json(),
        json!({
            "form_id": "spring",
            "configured": true,
            "updated_at": "2026-04-01T09:00:00.000000Z",
            "updated_by": "key:admin",
            "settings": expected_settings,
        })
    );
}

#[test]
fn settings_put_after_the_move_win_over_what_the_key_value_store_still_holds() {
    if skip_on_libsql("no release before this one ran on libSQL: nothing to move from Redis") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    let legacy = legacy_spring_settings().to_string();
    kv_set(&app, LEGACY_SPRING_KEY, legacy.as_bytes());

    // Act: new settings saved before anything read the old ones.
    configure(&app, "spring", &json!({"tags": ["new"]}));
    let read = app.get(FORMS_KEY, "/v1/forms/spring/settings").json();
    let post = app.post_form("spring", "email=new%40example.jp", IP);

    // Assert: no name required, no legacy redirect or tag, and the old
    // entry left as it was (nothing writes form settings there).
    assert_eq!(read["settings"]["tags"], json!(["new"]));
    assert_eq!(read["settings"]["required_fields"], json!([]));
    assert_eq!(post.status, 200, "{}", post.text());
    assert_eq!(
        contact_by_email(&app, "new@example.jp")["tags"],
        json!(["new"])
    );
    assert_eq!(kv_get(&app, LEGACY_SPRING_KEY), Some(legacy.into_bytes()));
}

#[test]
fn an_unreadable_legacy_entry_is_taken_as_no_settings() {
    if skip_on_libsql("no release before this one ran on libSQL: nothing to move from Redis") {
        return;
    }
    // Arrange
    let app = TestApp::new();
    kv_set(&app, LEGACY_SPRING_KEY, b"{\"settings\": {\"tags\": [");

    // Act
    let post = app.post_form("spring", "email=broken%40example.jp", IP);
    let read = app.get(FORMS_KEY, "/v1/forms/spring/settings");

    // Assert: the lead is taken with the defaults, and nothing was moved.
    assert_eq!(post.status, 200, "{}", post.text());
    assert_eq!(
        contact_by_email(&app, "broken@example.jp")["tags"],
        json!([])
    );
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["configured"], false);
    assert_eq!(settings_row(&app, "spring"), None);
}

#[test]
fn a_key_value_store_that_fails_does_not_stop_a_form() {
    if skip_under_spin("replaces the key-value store's file, which `spin up` holds open") {
        return;
    }
    // Arrange: the store's file is not a database, so every look-up fails.
    let app = TestApp::new();
    std::fs::write(kv_path(&app), vec![b'x'; 4096]).expect("write the store's file");
    configure(&app, "autumn", &json!({"tags": ["autumn"]}));

    // Act
    let unconfigured = app.post_form("spring", "email=down%40example.jp", IP);
    let configured = app.post_form("autumn", "email=up%40example.jp", IP);
    let read = app.get(FORMS_KEY, "/v1/forms/spring/settings");

    // Assert: the legacy look-up failed, and the defaults answered.
    assert_eq!(unconfigured.status, 200, "{}", unconfigured.text());
    assert_eq!(contact_by_email(&app, "down@example.jp")["tags"], json!([]));
    assert_eq!(configured.status, 200, "{}", configured.text());
    assert_eq!(
        contact_by_email(&app, "up@example.jp")["tags"],
        json!(["autumn"])
    );
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["configured"], false);
}

// ---------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------

fn preflight(app: &TestApp, form_id: &str, origin: Option<&str>) -> TestResponse {
    let mut headers = vec![
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type"),
    ];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    app.request("OPTIONS", &format!("/v1/forms/{form_id}"), &headers, "")
}

#[test]
fn a_preflight_from_an_allowed_origin_is_answered_with_its_allowances() {
    // Arrange
    let app = TestApp::new();
    configure(
        &app,
        "spring",
        &json!({"allowed_origins": ["https://shop.example.com"]}),
    );
    let cases = [
        ("variable's origin", "x", LP_ORIGIN),
        ("form's own origin", "spring", "https://shop.example.com"),
    ];

    for (case, form_id, origin) in cases {
        // Act
        let response = preflight(&app, form_id, Some(origin));

        // Assert
        assert_eq!(response.status, 204, "case {case}: {}", response.text());
        assert_eq!(
            response.header("access-control-allow-origin"),
            Some(origin),
            "case {case}"
        );
        let methods = response
            .header("access-control-allow-methods")
            .unwrap_or_default();
        assert!(methods.contains("POST"), "case {case}: {methods}");
        let allowed_headers = response
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            allowed_headers.contains("content-type"),
            "case {case}: {allowed_headers}"
        );
        assert!(response.body.is_empty(), "case {case}");
    }
}

#[test]
fn a_preflight_from_any_other_origin_is_forbidden() {
    // Arrange
    let app = TestApp::new();
    configure(
        &app,
        "spring",
        &json!({"allowed_origins": ["https://shop.example.com"]}),
    );
    let cases = [
        ("foreign origin", "x", Some("https://evil.example")),
        ("no origin", "x", None),
        ("allowed host over http", "x", Some("http://lp.example.jp")),
        (
            "another form's origin",
            "autumn",
            Some("https://shop.example.com"),
        ),
        ("null origin", "x", Some("null")),
    ];

    for (case, form_id, origin) in cases {
        // Act
        let response = preflight(&app, form_id, origin);

        // Assert
        response.assert_problem(403, case);
        assert_eq!(
            response.header("access-control-allow-origin"),
            None,
            "case {case}"
        );
    }
}

#[test]
fn json_posts_get_cors_headers_only_for_allowed_origins() {
    // Arrange
    let app = TestApp::new();
    configure(
        &app,
        "spring",
        &json!({"allowed_origins": ["https://shop.example.com"]}),
    );
    let cases = [
        ("variable's origin", "lp", LP_ORIGIN, Some(LP_ORIGIN)),
        (
            "form's own origin",
            "spring",
            "https://shop.example.com",
            Some("https://shop.example.com"),
        ),
        ("foreign origin", "lp", "https://evil.example", None),
        (
            "another form's origin",
            "lp",
            "https://shop.example.com",
            None,
        ),
    ];

    for (i, (case, form_id, origin, allow)) in cases.into_iter().enumerate() {
        // Act
        let response = post_json_from_origin(
            &app,
            form_id,
            &json!({"email": format!("cors{i}@example.jp")}),
            origin,
        );

        // Assert
        assert_eq!(response.status, 202, "case {case}: {}", response.text());
        assert_eq!(
            response.header("access-control-allow-origin"),
            allow,
            "case {case}"
        );
    }
}

#[test]
fn a_refused_json_post_from_an_allowed_origin_is_readable_by_its_script() {
    // Arrange
    let app = TestApp::new();
    configure(
        &app,
        "spring",
        &json!({"allowed_origins": ["https://shop.example.com"]}),
    );
    started(&app);
    let cases = [
        ("variable's origin", "lp", LP_ORIGIN, Some(LP_ORIGIN)),
        (
            "form's own origin",
            "spring",
            "https://shop.example.com",
            Some("https://shop.example.com"),
        ),
        ("foreign origin", "lp", "https://evil.example", None),
    ];

    for (case, form_id, origin, allow) in cases {
        let before = stored(&app);

        // Act
        let response =
            post_json_from_origin(&app, form_id, &json!({"email": "not-an-email"}), origin);

        // Assert
        response.assert_problem(422, case);
        assert_eq!(
            response.header("access-control-allow-origin"),
            allow,
            "case {case}"
        );
        assert_eq!(stored(&app), before, "case {case}");
    }
}

// ---------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------

#[test]
fn unknown_routes_and_methods_are_refused() {
    // Arrange
    let app = TestApp::new();
    started(&app);
    let admin = format!("Bearer {ADMIN_KEY}");
    let cases: [(&str, &str, &str, u16, Option<&str>); 10] = [
        (
            "POST the list of forms",
            "POST",
            "/v1/forms",
            405,
            Some("GET"),
        ),
        (
            "the list with a slash",
            "POST",
            "/v1/forms/",
            405,
            Some("GET"),
        ),
        ("below a form", "POST", "/v1/forms/lp/extra", 404, None),
        (
            "below settings",
            "GET",
            "/v1/forms/lp/settings/extra",
            404,
            None,
        ),
        ("singular forms", "POST", "/v1/form/lp", 404, None),
        ("other version", "POST", "/v2/forms/lp", 404, None),
        (
            "GET a form",
            "GET",
            "/v1/forms/x",
            405,
            Some("POST, OPTIONS"),
        ),
        (
            "PUT a form",
            "PUT",
            "/v1/forms/x",
            405,
            Some("POST, OPTIONS"),
        ),
        (
            "DELETE a form",
            "DELETE",
            "/v1/forms/x",
            405,
            Some("POST, OPTIONS"),
        ),
        (
            "DELETE settings",
            "DELETE",
            "/v1/forms/x/settings",
            405,
            Some("GET, PUT, PATCH"),
        ),
    ];

    for (case, method, path, status, allow) in cases {
        let before = stored(&app);

        // Act
        let response = app.request(
            method,
            path,
            &[
                ("content-type", FORM),
                ("authorization", &admin),
                ("x-forwarded-for", "203.0.113.7"),
            ],
            "email=route%40example.jp",
        );

        // Assert
        response.assert_problem(status, case);
        if let Some(allow) = allow {
            assert_eq!(response.header("allow"), Some(allow), "case {case}");
        }
        assert_eq!(stored(&app), before, "case {case}");
    }
}

#[test]
fn unsubscribe_is_not_a_form() {
    // Arrange
    let app = TestApp::new();
    started(&app);
    let before = stored(&app);

    // Act
    let lead = app.post_form("unsubscribe", "email=unsub%40example.jp&name=Taro", IP);
    let get_settings = app.get(ADMIN_KEY, "/v1/forms/unsubscribe/settings");
    let put_unsubscribe = put_settings(&app, ADMIN_KEY, "unsubscribe", &json!({"tags": ["x"]}));
    let options = preflight(&app, "unsubscribe", Some(LP_ORIGIN));

    // Assert
    assert!(
        (400..500).contains(&lead.status)
            && lead.header("content-type") == Some("application/problem+json"),
        "a lead posted to unsubscribe: {} {}",
        lead.status,
        lead.text()
    );
    assert_eq!(
        stored(&app),
        before,
        "a lead posted to unsubscribe was stored"
    );
    get_settings.assert_problem(404, "GET unsubscribe settings");
    put_unsubscribe.assert_problem(404, "PUT unsubscribe settings");
    assert_ne!(
        options.status, 204,
        "unsubscribe preflight must not be allowed like a form"
    );
}

#[test]
fn form_ids_with_bad_characters_are_not_forms() {
    // Arrange
    let app = TestApp::new();
    started(&app);
    let too_long = "x".repeat(65);
    let cases = [
        ("dot", "a.b"),
        ("space", "a%20b"),
        ("encoded slash", "a%2Fb"),
        ("quote", "a%27b"),
        ("semicolon", "a%3Bb"),
        ("non-ASCII", "%E3%81%82"),
        ("65 characters", too_long.as_str()),
    ];

    for (case, form_id) in cases {
        let before = stored(&app);

        // Act
        let posted = app.post_form(form_id, "email=badid%40example.jp", IP);
        let settings = app.get(ADMIN_KEY, &format!("/v1/forms/{form_id}/settings"));

        // Assert
        posted.assert_problem(404, case);
        settings.assert_problem(404, &format!("{case} settings"));
        assert_eq!(stored(&app), before, "case {case}");
    }

    let longest = app.post_form(&"x".repeat(64), "email=longest%40example.jp", IP);
    assert_eq!(
        longest.status,
        200,
        "a 64-character id is a form: {}",
        longest.text()
    );
}

// ---------------------------------------------------------------------------
// Concurrency over real HTTP
// ---------------------------------------------------------------------------

/// POSTs each JSON body from its own thread, all released at once; returns
/// (status, body) per request, or status 0 with the transport error.
fn post_concurrently(url: &str, bodies: Vec<String>) -> Vec<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let barrier = std::sync::Barrier::new(bodies.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = bodies
            .into_iter()
            .map(|body| {
                let (agent, barrier) = (&agent, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    match agent
                        .post(url)
                        .header("content-type", JSON)
                        .header("accept", JSON)
                        .send(body)
                    {
                        Ok(mut response) => {
                            let status = response.status().as_u16();
                            (
                                status,
                                response.body_mut().read_to_string().unwrap_or_default(),
                            )
                        }
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

#[test]
fn fifty_concurrent_posts_of_one_email_make_one_contact() {
    // Arrange: a limit high enough that only concurrency is measured.
    let app = TestApp::with_variables(&[("form_rate_limit_per_minute", "1000")]);
    let server = app.serve(32);
    let url = format!("{}/v1/forms/lp", server.url());
    let bodies = (0..50)
        .map(|i| json!({"email": "same@example.jp", "n": i}).to_string())
        .collect();

    // Act
    let answers = post_concurrently(&url, bodies);
    server.stop();

    // Assert
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 202, "request {i}: {body}");
        assert_eq!(
            serde_json::from_str::<Json>(body).ok(),
            Some(json!({"status": "accepted"})),
            "request {i}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 1);
    // Twenty entries a day at most; every other post is counted on them.
    assert_eq!(
        app.count("SELECT count(*) FROM interactions WHERE kind = 'form_submitted'"),
        20
    );
    assert_eq!(
        app.count(
            "SELECT coalesce(sum(json_extract(data, '$.repeats_not_recorded')), 0)
             FROM interactions WHERE kind = 'form_submitted'"
        ),
        30
    );
    assert_eq!(
        app.count("SELECT count(DISTINCT contact_id) FROM interactions"),
        1
    );
}

#[test]
fn fifty_concurrent_posts_of_different_emails_make_fifty_contacts() {
    // Arrange: a limit high enough that only concurrency is measured.
    let app = TestApp::with_variables(&[("form_rate_limit_per_minute", "1000")]);
    let server = app.serve(32);
    let url = format!("{}/v1/forms/lp", server.url());
    let bodies = (0..50)
        .map(|i| json!({"email": format!("lead{i}@example.jp")}).to_string())
        .collect();

    // Act
    let answers = post_concurrently(&url, bodies);
    server.stop();

    // Assert
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 202, "request {i}: {body}");
    }
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 50);
    assert_eq!(app.count("SELECT count(DISTINCT email) FROM contacts"), 50);
    assert_eq!(
        app.count("SELECT count(*) FROM interactions WHERE kind = 'form_submitted'"),
        50
    );
}

#[test]
fn a_fresh_form_opt_in_after_a_withdrawal_grants_again_and_lifts_the_suppression() {
    // Arrange: a subscriber who then unsubscribed, so staff cannot
    // re-grant the address.
    let app = TestApp::new();
    let first = app.post_form_json(
        "lp",
        &json!({"email": "optout@example.jp", "consent_email": true}),
        IP,
    );
    assert_eq!(first.status, 202);
    let id = only_contact_id(&app);
    let consent_path = format!("/v1/contacts/{id}/consents");
    let withdrawn = app.send_json(
        "POST",
        WRITE_KEY,
        &consent_path,
        &json!({"channel": "email", "status": "withdrawn", "reason": "unsubscribed"}),
    );
    assert_eq!(withdrawn.status, 201, "{}", withdrawn.text());
    let staff = app.send_json(
        "POST",
        WRITE_KEY,
        &consent_path,
        &json!({"channel": "email", "status": "granted", "reason": "manual"}),
    );
    staff.assert_problem(409, "staff re-grant of a suppressed address");
    assert_eq!(
        contact_by_id(&app, &id)["consents"]["email"]["status"],
        "withdrawn"
    );
    if !app.under_spin() {
        app.clock.advance(time::Duration::seconds(1));
    } else {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }

    // Act: the person ticks the box on a form again.
    let again = app.post_form_json(
        "lp",
        &json!({"email": "optout@example.jp", "consent_email": true}),
        "198.51.100.9",
    );

    // Assert: granted, with the form as proof, and the lift recorded.
    assert_eq!(again.status, 202);
    let contact = contact_by_id(&app, &id);
    assert_eq!(contact["consents"]["email"]["status"], "granted");
    let entries = form_entries(&app, &id);
    assert_eq!(entries[0]["data"]["consent_recorded"], true);
    assert_eq!(entries[0]["data"]["suppression_lifted"], true);
    assert_eq!(
        app.count("SELECT count(*) FROM suppressions WHERE lifted_by = 'form:lp'"),
        1
    );
}

#[test]
fn form_builders_field_names_are_kept_and_checkbox_groups_count_once() {
    // Arrange: names real form builders produce, and a 60-box checkbox group.
    let app = TestApp::new();
    let mut pairs = vec![
        ("email", "builder@example.jp"),
        ("interest[]", "tea"),
        ("interest[]", "sweets"),
        ("お問い合わせ内容", "配送について"),
        ("my field", "x"),
    ];
    let ticks: Vec<String> = (0..60).map(|i| format!("option-{i}")).collect();
    for tick in &ticks {
        pairs.push(("boxes", tick));
    }

    // Act
    let response = post(&app, "lp", Some(FORM), &[], form_body(&pairs));

    // Assert
    assert_eq!(response.status, 200, "{}", response.text());
    let contact = contact_by_email(&app, "builder@example.jp");
    assert_eq!(contact["attributes"]["interest[]"], "tea, sweets");
    assert_eq!(contact["attributes"]["お問い合わせ内容"], "配送について");
    assert_eq!(contact["attributes"]["my field"], "x");
    assert!(
        contact["attributes"]["boxes"]
            .as_str()
            .unwrap()
            .ends_with("option-59")
    );
}

#[test]
fn inventing_form_ids_does_not_multiply_a_clients_allowance() {
    // Arrange: the per-form limit is 10 a minute, 50 across all forms.
    let app = TestApp::new();

    // Act: one client posts to 51 different forms.
    let answers: Vec<u16> = (0..51)
        .map(|i| {
            app.post_form_json(
                &format!("form{i}"),
                &json!({"email": format!("spray{i}@example.jp")}),
                "192.0.2.44",
            )
            .status
        })
        .collect();

    // Assert
    assert!(answers[..50].iter().all(|s| *s == 202), "{answers:?}");
    assert_eq!(answers[50], 429);
}

#[test]
fn one_ipv6_subscriber_line_is_one_client() {
    // Arrange
    let app = TestApp::new();

    // Act: eleven posts from eleven addresses of one /64.
    let answers: Vec<u16> = (1..=11)
        .map(|i| {
            let client = format!("2001:db8:1:2::{i:x}");
            app.request(
                "POST",
                "/v1/forms/lp",
                &[
                    ("content-type", JSON),
                    ("accept", JSON),
                    ("x-forwarded-for", &client),
                ],
                json!({"email": format!("v6-{i}@example.jp")}).to_string(),
            )
            .status
        })
        .collect();

    // Assert
    assert!(answers[..10].iter().all(|s| *s == 202), "{answers:?}");
    assert_eq!(answers[10], 429);
}

// ---------------------------------------------------------------------------
// UTM from the landing page's URL
// ---------------------------------------------------------------------------

/// A browser's urlencoded post with `referer` (or none).
fn post_with_referer(app: &TestApp, body: &str, referer: Option<&str>) -> TestResponse {
    let mut headers = vec![
        ("content-type", FORM),
        ("accept", "text/html"),
        ("x-forwarded-for", IP),
    ];
    if let Some(referer) = referer {
        headers.push(("referer", referer));
    }
    app.request("POST", "/v1/forms/spring", &headers, body.to_owned())
}

#[test]
fn utm_missing_from_the_body_comes_from_the_page_field_then_the_referer() {
    // Arrange
    let app = TestApp::new();
    let page = "https://lp.example.jp/spring?utm_source=page&utm_campaign=%E6%98%A5%E3%81%AE%E6%96%B0%E8%8C%B6";
    let referer =
        "https://lp.example.jp/spring?utm_source=referer&utm_medium=referer-medium&utm_term=tea";
    let cases = [
        (
            "page field, then the Referer for what it lacks",
            "utm-page@example.jp",
            form_body(&[("email", "utm-page@example.jp"), ("page", page)]),
            Some(referer),
            json!({
                "utm_source": "page",
                "utm_campaign": "春の新茶",
                "utm_medium": "referer-medium",
                "utm_term": "tea",
            }),
        ),
        (
            "the Referer alone",
            "utm-referer@example.jp",
            form_body(&[("email", "utm-referer@example.jp")]),
            Some(referer),
            json!({"utm_source": "referer", "utm_medium": "referer-medium", "utm_term": "tea"}),
        ),
        (
            "body values win, key by key",
            "utm-body@example.jp",
            form_body(&[
                ("email", "utm-body@example.jp"),
                ("utm_source", "body"),
                ("utm_content", "banner"),
                ("page", page),
            ]),
            Some(referer),
            json!({
                "utm_source": "body",
                "utm_content": "banner",
                "utm_campaign": "春の新茶",
                "utm_medium": "referer-medium",
                "utm_term": "tea",
            }),
        ),
        (
            "an origin-only Referer (the browser default cross-origin) carries none",
            "utm-origin@example.jp",
            form_body(&[("email", "utm-origin@example.jp")]),
            Some("https://lp.example.jp/"),
            json!({}),
        ),
    ];
    for (case, email, body, referer, expected) in cases {
        // Act
        let response = post_with_referer(&app, &body, referer);

        // Assert: on the first touch and on the timeline entry.
        assert_eq!(response.status, 200, "case {case}: {}", response.text());
        let contact = contact_by_email(&app, email);
        let first_utm = &contact["first_touch"]["utm"];
        if expected == json!({}) {
            assert!(
                first_utm.is_null() || *first_utm == json!({}),
                "case {case}: {first_utm}"
            );
        } else {
            assert_eq!(*first_utm, expected, "case {case}");
        }
        let entries = form_entries(&app, contact["id"].as_str().expect("id"));
        assert_eq!(entries[0]["data"]["utm"], expected, "case {case}");
    }
}

// ---------------------------------------------------------------------------
// What a browser sees when its post is refused
// ---------------------------------------------------------------------------

#[test]
fn a_browser_refused_for_its_fields_sees_a_page_naming_them_in_japanese_and_english() {
    // Arrange
    let app = TestApp::new();
    configure(
        &app,
        "spring",
        &json!({"required_fields": ["name", "consent_email"]}),
    );
    started(&app);
    let before = stored(&app);
    let body = form_body(&[("company", "茶舗やまだ")]);

    // Act
    let browser = post(
        &app,
        "spring",
        Some(FORM),
        &[("origin", LP_ORIGIN)],
        body.clone(),
    );
    let script = post(
        &app,
        "spring",
        Some(FORM),
        &[("accept", "application/json")],
        body.clone(),
    );
    let fetch_default = post(&app, "spring", Some(FORM), &[("accept", "*/*")], body);

    // Assert
    let page = assert_refusal_page(
        &browser,
        422,
        &["email", "name", "consent_email"],
        "browser",
    );
    for text in [
        "入力内容をご確認ください",
        "Please check the form",
        "メールアドレス / Email",
        "メールアドレスか電話番号のどちらかをご入力ください",
        "an email or a phone number is required",
        "お名前 / Name",
        "必須項目です",
        "メール配信への同意 / Consent to email",
        "同意のチェックが必要です",
    ] {
        assert!(page.contains(text), "the page lacks {text:?}: {page}");
    }
    assert_eq!(
        browser.header("access-control-allow-origin"),
        Some(LP_ORIGIN)
    );
    for (case, response) in [("script", &script), ("Accept: */*", &fetch_default)] {
        let problem = response.assert_problem(422, case);
        assert_eq!(
            error_fields(&problem),
            ["email", "name", "consent_email"],
            "case {case}"
        );
    }
    assert_eq!(stored(&app), before, "a refused post stored something");
}

#[test]
fn a_rate_limited_browser_sees_a_page_saying_when_to_try_again() {
    // Arrange: the form's ten posts this minute are used.
    let app = TestApp::new();
    app.clear_of_minute_boundary();
    for i in 0..10 {
        let response = app.post_form_json("lp", &json!({"email": format!("r{i}@example.jp")}), IP);
        assert_eq!(response.status, 202, "post {i}: {}", response.text());
    }
    let before = stored(&app);

    // Act
    let browser = app.post_form("lp", "email=r10%40example.jp", IP);
    let script = app.post_form_json("lp", &json!({"email": "r10@example.jp"}), IP);

    // Assert
    let page = assert_refusal_page(&browser, 429, &[], "browser");
    let retry_after = browser
        .header("retry-after")
        .expect("a Retry-After header")
        .to_owned();
    for text in [
        format!("{retry_after} 秒ほど待ってから"),
        format!("wait {retry_after} seconds"),
        "しばらくしてからもう一度お試しください".to_owned(),
    ] {
        assert!(page.contains(&text), "the page lacks {text:?}: {page}");
    }
    if !app.under_spin() {
        assert_eq!(retry_after, "60");
    }
    script.assert_problem(429, "script");
    assert_eq!(stored(&app), before, "a refused post stored something");
}

#[test]
fn a_form_with_an_error_url_sends_a_refused_browser_there_with_the_reason() {
    // Arrange
    let app = TestApp::new();
    app.clear_of_minute_boundary();
    configure(
        &app,
        "spring",
        &json!({
            "required_fields": ["name"],
            "error_url": "https://lp.example.jp/お問い合わせ/error?lang=ja#form",
        }),
    );
    let error_page = "https://lp.example.jp/%E3%81%8A%E5%95%8F%E3%81%84%E5%90%88%E3%82%8F%E3%81%9B/error?lang=ja";

    // Act: fields missing, then a _redirect elsewhere, then too many posts.
    let missing = post(
        &app,
        "spring",
        Some(FORM),
        &[],
        form_body(&[("company", "x")]),
    );
    let bad_redirect = post(
        &app,
        "spring",
        Some(FORM),
        &[],
        form_body(&[
            ("email", "er@example.jp"),
            ("name", "山田"),
            ("_redirect", "https://evil.example.net/"),
        ]),
    );
    let script = post(
        &app,
        "spring",
        Some(FORM),
        &[("accept", "application/problem+json")],
        form_body(&[("company", "x")]),
    );
    for i in 0..10 {
        let response = app.post_form_json(
            "spring",
            &json!({"email": format!("er{i}@example.jp"), "name": "山田"}),
            IP,
        );
        assert_eq!(response.status, 202, "post {i}: {}", response.text());
    }
    let limited = post(
        &app,
        "spring",
        Some(FORM),
        &[],
        form_body(&[("email", "er10@example.jp"), ("name", "山田")]),
    );

    // Assert: the form's own query and fragment kept, the reason added.
    for (case, response, query) in [
        (
            "missing fields",
            &missing,
            "error=validation&fields=email,name",
        ),
        (
            "bad _redirect",
            &bad_redirect,
            "error=validation&fields=_redirect",
        ),
    ] {
        assert_eq!(response.status, 303, "case {case}: {}", response.text());
        assert_eq!(
            response.header("location"),
            Some(format!("{error_page}&{query}#form").as_str()),
            "case {case}"
        );
    }
    assert_eq!(limited.status, 303, "rate limited: {}", limited.text());
    let location = limited.header("location").expect("a Location");
    let seconds = location
        .strip_prefix(&format!("{error_page}&error=rate_limited&retry_after="))
        .and_then(|rest| rest.strip_suffix("#form"))
        .unwrap_or_else(|| panic!("rate limited: {location}"));
    assert!(
        seconds.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s)),
        "{location}"
    );
    if !app.under_spin() {
        assert_eq!(seconds, "60");
    }
    assert_eq!(
        error_fields(&script.assert_problem(422, "script")),
        ["email", "name"]
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM contacts WHERE email IN ('er@example.jp', 'er10@example.jp')"
        ),
        0
    );
}

#[test]
fn a_hostile_field_name_is_escaped_on_the_page_and_encoded_in_the_error_url() {
    // Arrange: an extra field whose value is too long names the field.
    let app = TestApp::new();
    configure(
        &app,
        "with-error-url",
        &json!({"error_url": "https://lp.example.jp/error"}),
    );
    let hostile = "<script>alert('x')</script>";
    let body = form_body(&[("email", "xss@example.jp"), (hostile, &"x".repeat(1001))]);

    // Act
    let page = post(&app, "plain", Some(FORM), &[], body.clone());
    let redirected = post(&app, "with-error-url", Some(FORM), &[], body);

    // Assert
    let html = assert_refusal_page(
        &page,
        422,
        &["&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"],
        "hostile name",
    );
    assert!(!html.contains(hostile), "{html}");
    assert!(!html.contains("<script"), "{html}");
    assert_eq!(redirected.status, 303, "{}", redirected.text());
    assert_eq!(
        redirected.header("location"),
        Some(
            "https://lp.example.jp/error?error=validation&fields=%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E"
        )
    );
    assert_eq!(app.count("SELECT count(*) FROM contacts"), 0);
}
