//! `/v1/segments` and `/v1/analytics`.

use crate::helpers::*;
use serde_json::json;

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
