//! `/v1/contacts`: the staff contact API.

use crate::helpers::*;
use serde_json::json;

#[test]
fn create_then_update_by_email() {
    let app = TestApp::new();
    let created = app.send_json("POST", WRITE_KEY, "/v1/contacts", &json!({"email": "a@example.jp", "name": "A"}));
    assert_eq!(created.status, 201, "{}", created.text());
    let updated = app.send_json("POST", WRITE_KEY, "/v1/contacts", &json!({"email": "A@example.jp", "name": "B"}));
    assert_eq!(updated.status, 200, "{}", updated.text());
    assert_eq!(updated.json()["id"], created.json()["id"]);
    assert_eq!(updated.json()["name"], "B");
}
