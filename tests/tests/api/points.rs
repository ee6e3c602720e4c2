//! `/v1/points`: balances, ledger, award, redeem, adjust, program.

use crate::helpers::*;
use serde_json::json;

#[test]
fn award_then_redeem_then_refuse_beyond_the_balance() {
    // Arrange
    let app = TestApp::new();
    let id = app.create_contact(&json!({"email": "points@example.jp"}));
    let award = app.send_json(
        "POST",
        POINTS_KEY,
        "/v1/points/award",
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
