//! Kizuna past one machine: two `spin up` processes on one sqld and one
//! Redis, as two machines behind a load balancer, and the faults such a
//! setup meets (sqld restarted under load, Redis lost). These run only in
//! the libSQL run (`KIZUNA_TEST_SPIN=1 KIZUNA_TEST_BACKEND=libsql`); the
//! rest of the suite runs there too, on a sqld and a Redis per test.

use crate::helpers::*;
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::sync::Mutex;

const PEOPLE: usize = 6;
const ORDERS_PER_PERSON: usize = 4;
const REDEEMS_PER_PERSON: usize = 3;
const FORMS_PER_PERSON: usize = 3;
const AWARD: i64 = 1_000;

fn email(person: usize) -> String {
    format!("shared.{person}@example.jp")
}

/// A Kizuna-format paid order of two lines, total ¥5,400.
fn order_event(person: usize, n: usize) -> Vec<u8> {
    json!({
        "type": "order.paid",
        "timestamp": "2026-11-22T02:59:30Z",
        "data": {
            "id": format!("SHARED-{person}-{n}"), "currency": "JPY",
            "placed_at": "2026-11-22T02:59:00Z", "updated_at": "2026-11-22T02:59:10Z",
            "customer": {"email": email(person), "name": "山田 太郎"},
            "subtotal": "5000", "shipping": "0", "tax": "400", "discount": "0",
            "total": "5400", "points_used": 0,
            "lines": [
                {"id": "L1", "sku": "TEA-1", "name": "煎茶", "category": "tea", "quantity": 1,
                 "unit_price": "2000", "total": "2000", "discount": "0", "tax": "160"},
                {"id": "L2", "sku": "TEA-2", "name": "玉露", "category": "tea", "quantity": 1,
                 "unit_price": "3000", "total": "3000", "discount": "0", "tax": "240"}
            ],
            "refunds": []
        }
    })
    .to_string()
    .into_bytes()
}

fn redeem(app: &TestApp, contact_id: &str, key: &str) -> TestResponse {
    app.request(
        "POST",
        "/v1/points/redeem",
        &[
            ("authorization", &bearer(POINTS_KEY)),
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ],
        json!({"contact_id": contact_id, "points": 1, "reason": "till"}).to_string(),
    )
}

fn contact_id(app: &TestApp, person: usize) -> String {
    let response = app.get(
        READ_KEY,
        &format!("/v1/contacts?email={}", email(person).replace('@', "%40")),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let items = response.json()["items"].clone();
    assert_eq!(
        items.as_array().map(Vec::len),
        Some(1),
        "one contact for {}: {items}",
        email(person)
    );
    items[0]["id"].as_str().expect("id").to_owned()
}

fn balance(app: &TestApp, id: &str) -> Json {
    let response = app.get(POINTS_KEY, &format!("/v1/points/{id}"));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

#[test]
fn two_spin_processes_on_one_sqld_keep_one_record_per_person_and_exact_points() {
    if skip_unless_libsql() {
        return;
    }
    // Arrange: two processes on one sqld and Redis; the points program
    // on; a calibration order tells what one order earns.
    let first = TestApp::new();
    let second = first.twin();
    let program = json!({"earn_rate": {"points": 1, "per_minor": 100}});
    let response = first.send_json("PUT", POINTS_ADMIN_KEY, "/v1/points/program", &program);
    assert_eq!(response.status, 200, "{}", response.text());
    let calibration = first.post_kizuna_event("msg_calibration", order_event(99, 0));
    assert_eq!(calibration.status, 200, "{}", calibration.text());
    let per_order = balance(&first, &contact_id(&first, 99))["lifetime_earned"]
        .as_i64()
        .expect("lifetime_earned");
    assert!(per_order > 0, "an order earns points");
    let ids: Vec<String> = (0..PEOPLE)
        .map(|person| {
            let created = first.send_json(
                "POST",
                WRITE_KEY,
                "/v1/contacts",
                &json!({"email": email(person)}),
            );
            assert_eq!(created.status, 201, "{}", created.text());
            let id = created.json()["id"].as_str().expect("id").to_owned();
            let award = first.request(
                "POST",
                "/v1/points/award",
                &[
                    ("authorization", &bearer(POINTS_KEY)),
                    ("content-type", "application/json"),
                    ("idempotency-key", &format!("award-{person}")),
                ],
                json!({"contact_id": id, "points": AWARD, "reason": "welcome"}).to_string(),
            );
            assert_eq!(award.status, 201, "{}", award.text());
            id
        })
        .collect();

    // Act: every write goes to both processes at once, from many threads:
    // each order webhook and each redeem twice (a retry landing on the
    // other machine), each form post once, alternating.
    let answers: Mutex<Vec<(String, u16, String)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (person, id) in ids.iter().enumerate() {
            for (which, app) in [(0, &first), (1, &second)] {
                let answers = &answers;
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    for n in 0..ORDERS_PER_PERSON {
                        let r = app.post_kizuna_event(
                            &format!("msg_shared_{person}_{n}"),
                            order_event(person, n),
                        );
                        mine.push((format!("order {person}/{n}"), r.status, r.text()));
                    }
                    for n in 0..REDEEMS_PER_PERSON {
                        let r = redeem(app, id, &format!("redeem-{person}-{n}"));
                        mine.push((format!("redeem {person}/{n}"), r.status, r.text()));
                    }
                    for n in (0..FORMS_PER_PERSON).filter(|n| n % 2 == which) {
                        let r = app.post_form(
                            "shared-lp",
                            &format!(
                                "email={}&name=%E5%B1%B1%E7%94%B0&consent_email=on",
                                email(person).replace('@', "%40")
                            ),
                            &format!("10.9.{person}.{n}"),
                        );
                        mine.push((format!("form {person}/{n}"), r.status, r.text()));
                    }
                    answers.lock().expect("answers").extend(mine);
                });
            }
        }
    });

    // Assert: every answer a success (a repeated redeem or order answers
    // as the first did), one contact per person, every order once, and
    // the points exact.
    let answers = answers.into_inner().expect("answers");
    let failures: Vec<_> = answers
        .iter()
        .filter(|(_, status, _)| *status >= 300)
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    for (person, id) in ids.iter().enumerate() {
        assert_eq!(
            &contact_id(&second, person),
            id,
            "the same contact everywhere"
        );
        let orders = first.count(&format!(
            "SELECT count(*) FROM orders WHERE contact_id = '{id}'"
        ));
        assert_eq!(
            orders, ORDERS_PER_PERSON as i64,
            "orders of person {person}"
        );
        let points = balance(&second, id);
        let earned = AWARD + per_order * ORDERS_PER_PERSON as i64;
        assert_eq!(points["lifetime_earned"], earned, "{points}");
        assert_eq!(points["redeemed"], REDEEMS_PER_PERSON as i64, "{points}");
        assert_eq!(
            points["available"].as_i64().unwrap_or(0) + points["pending"].as_i64().unwrap_or(0),
            earned - REDEEMS_PER_PERSON as i64,
            "{points}"
        );
    }
    let people = first.count("SELECT count(*) FROM contacts WHERE email LIKE 'shared.%'");
    assert_eq!(
        people,
        PEOPLE as i64 + 1,
        "the six and the calibration buyer"
    );
    let submissions =
        first.count("SELECT count(*) FROM interactions WHERE kind = 'form_submitted'");
    assert_eq!(submissions, (PEOPLE * FORMS_PER_PERSON) as i64);
}

/// Posts `count` form leads with emails `{prefix}.{n}@example.jp` from
/// `threads` threads, and returns each lead's email and status.
fn post_leads(app: &TestApp, prefix: &str, count: usize, threads: usize) -> Vec<(String, u16)> {
    let answers = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let answers = &answers;
            scope.spawn(move || {
                for n in (thread..count).step_by(threads) {
                    let address = format!("{prefix}.{n}@example.jp");
                    let response = app.post_form(
                        "fault-lp",
                        &format!(
                            "email={}&name=%E5%B1%B1%E7%94%B0&consent_email=on",
                            address.replace('@', "%40")
                        ),
                        &format!("10.8.{}.{}", n / 250, n % 250),
                    );
                    if response.status >= 300 && response.status != 503 {
                        eprintln!("{address}: {} {}", response.status, response.text());
                    }
                    answers
                        .lock()
                        .expect("answers")
                        .push((address, response.status));
                }
            });
        }
    });
    answers.into_inner().expect("answers")
}

/// Every lead answered 2xx is stored whole (contact, consent, the form
/// submission); no lead is stored in part. Returns how many were stored.
fn assert_leads_whole(app: &TestApp, prefix: &str, answers: &[(String, u16)]) -> usize {
    let db = app.db();
    let mut stored = BTreeMap::new();
    let mut statement = db
        .prepare(
            "SELECT c.email,
                    (SELECT count(*) FROM consents k WHERE k.contact_id = c.id),
                    (SELECT count(*) FROM interactions i
                     WHERE i.contact_id = c.id AND i.kind = 'form_submitted')
             FROM contacts c WHERE c.email LIKE ?1",
        )
        .expect("query");
    let rows = statement
        .query_map([format!("{prefix}.%")], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get::<_, i64>(1)?, r.get::<_, i64>(2)?),
            ))
        })
        .expect("rows");
    for row in rows {
        let (email, parts) = row.expect("row");
        stored.insert(email, parts);
    }
    for (email, parts) in &stored {
        assert_eq!(*parts, (1, 1), "{email} is stored whole");
    }
    for (email, status) in answers {
        assert!(
            (200..300).contains(status) || *status >= 500,
            "{email}: {status} is neither a success nor a server's failure"
        );
        if (200..300).contains(status) {
            assert!(
                stored.contains_key(email),
                "{email} was answered {status} but is not stored"
            );
        }
    }
    stored.len()
}

#[test]
fn a_sqld_restart_under_load_loses_no_answered_lead_and_half_writes_none() {
    if skip_unless_libsql() {
        return;
    }
    // Arrange
    let app = TestApp::new();
    assert_eq!(app.get(READ_KEY, "/healthz").status, 200);
    let sqld = &app.backing.as_ref().expect("sqld").sqld;

    // Act: leads from four threads while sqld is killed and restarted,
    // then more leads, which meet pooled connections to the old server.
    let during = std::thread::scope(|scope| {
        let load = scope.spawn(|| post_leads(&app, "restart", 300, 4));
        std::thread::sleep(std::time::Duration::from_millis(800));
        sqld.restart().expect("sqld restarted");
        load.join().expect("load")
    });
    let after = post_leads(&app, "after", 120, 4);

    // Assert: every 2xx stored whole, nothing stored in part, failures
    // are the server's (5xx), and the app serves again.
    let stored = assert_leads_whole(&app, "restart", &during);
    let answered = during
        .iter()
        .filter(|(_, s)| (200..300).contains(s))
        .count();
    assert!(
        stored >= answered,
        "{stored} stored, {answered} answered 2xx"
    );
    let failed: Vec<_> = during.iter().filter(|(_, s)| *s >= 300).collect();
    eprintln!(
        "during the restart: {answered} answered 2xx, {} failed: {failed:?}",
        failed.len()
    );
    // After the restart, a connection pooled before it fails its next
    // request with a 503 and empties its instance's pool: a few early
    // 503s, then every lead is taken.
    assert_leads_whole(&app, "after", &after);
    let refused: Vec<_> = after.iter().filter(|(_, s)| *s >= 300).collect();
    assert!(refused.iter().all(|(_, s)| *s == 503), "{refused:?}");
    assert!(refused.len() <= after.len() / 5, "{refused:?}");
    let mut in_order = after.clone();
    in_order.sort_by_key(|(email, _)| {
        email
            .trim_start_matches("after.")
            .trim_end_matches("@example.jp")
            .parse::<usize>()
            .unwrap_or(0)
    });
    let last: Vec<_> = in_order[in_order.len() - 40..]
        .iter()
        .filter(|(_, s)| *s >= 300)
        .collect();
    assert!(last.is_empty(), "the last 40 leads are all taken: {last:?}");
}

#[test]
fn losing_redis_loses_nothing_but_cache() {
    if skip_unless_libsql() {
        return;
    }
    // Arrange: a form whose settings require a name and tag its leads.
    let app = TestApp::new();
    let put = app.send_json(
        "PUT",
        FORMS_KEY,
        "/v1/forms/redis-lp/settings",
        &json!({"required_fields": ["name"], "tags": ["from-lp"]}),
    );
    assert_eq!(put.status, 200, "{}", put.text());
    let redis = &app.backing.as_ref().expect("Redis").redis;
    let lead = |n: u32, name: &str| {
        app.post_form(
            "redis-lp",
            &format!("email=kv.{n}%40example.jp&name={name}&consent_email=on"),
            &format!("10.7.0.{n}"),
        )
    };

    // Act and assert: with Redis gone, the settings still hold (from
    // SQLite), and a form without settings still takes leads.
    redis.stop();
    assert_eq!(lead(1, "").status, 422, "the name is still required");
    assert_eq!(lead(2, "%E5%B1%B1%E7%94%B0").status, 200);
    let plain = app.post_form(
        "plain-lp",
        "email=kv.3%40example.jp&consent_email=on",
        "10.7.0.3",
    );
    assert_eq!(plain.status, 200, "{}", plain.text());

    // Redis back, empty: the same.
    redis.start_again().expect("Redis started again");
    assert_eq!(lead(4, "").status, 422);
    assert_eq!(lead(5, "%E5%B1%B1%E7%94%B0").status, 200);
    let settings = app.get(FORMS_KEY, "/v1/forms/redis-lp/settings");
    assert_eq!(settings.status, 200);
    assert_eq!(settings.json()["settings"]["tags"], json!(["from-lp"]));
    for n in [2, 5] {
        let tagged = app.count(&format!(
            "SELECT count(*) FROM contact_tags t JOIN contacts c ON c.id = t.contact_id
             WHERE c.email = 'kv.{n}@example.jp' AND t.tag = 'from-lp'"
        ));
        assert_eq!(tagged, 1, "lead {n} tagged");
    }
}

#[test]
fn health_answers_503_while_sqld_is_down_and_200_once_it_is_back() {
    if skip_unless_libsql() {
        return;
    }
    // Arrange: a pooled connection to the running server.
    let app = TestApp::new();
    assert_eq!(app.get(READ_KEY, "/healthz").status, 200);
    let sqld = &app.backing.as_ref().expect("sqld").sqld;

    // Act and assert: down, then back.
    sqld.stop();
    let down = app.get(READ_KEY, "/healthz");
    assert_eq!(down.status, 503, "{}", down.text());
    assert_eq!(down.header("retry-after"), Some("2"));
    sqld.restart().expect("sqld started again");
    let up = app.get(READ_KEY, "/healthz");
    assert_eq!(up.status, 200, "{}", up.text());
    assert_eq!(up.json()["database"]["backend"], "libsql");
}
