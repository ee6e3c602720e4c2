//! `POST /v1/forms/{form_id}`: public lead capture.

use crate::helpers::*;
use serde_json::json;

#[test]
fn a_browser_form_post_creates_a_lead_and_redirects() {
    let app = TestApp::new();
    let response = app.post_form(
        "spring",
        "email=Taro%40Example.JP&phone=090-1234-5678&family_name=%E5%B1%B1%E7%94%B0&given_name=%E5%A4%AA%E9%83%8E&utm_source=google&consent_email=on&_redirect=https%3A%2F%2Flp.example.jp%2Fthanks",
        "203.0.113.7",
    );
    assert_eq!(response.status, 303, "{}", response.text());
    assert_eq!(response.header("location"), Some("https://lp.example.jp/thanks"));

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
    assert_eq!(app.count("SELECT count(*) FROM interactions WHERE kind = 'form_submitted'"), 2);
}
