//! `/v1/webhook-endpoints`, end to end: the create / list / read / update
//! / delete / rotate round trip; the secret shown once and stored only
//! encrypted; every bad input a 422 naming its field with nothing stored;
//! the 100-endpoint limit; the allow-list variable; scopes.

use crate::helpers::*;
use serde_json::{Value as Json, json};

const PATH: &str = "/v1/webhook-endpoints";

fn endpoint(url: &str) -> Json {
    json!({"url": url, "topics": ["order.paid", "points.earned"]})
}

fn create(app: &TestApp, body: &Json) -> Json {
    let response = app.send_json("POST", WEBHOOKS_KEY, PATH, body);
    assert_eq!(response.status, 201, "create: {}", response.text());
    response.json()
}

/// Every stored column of every endpoint, as text: what "nothing
/// changed" and "no plain secret" are checked against.
fn stored(app: &TestApp) -> Vec<String> {
    let db = app.db();
    let mut statement = db
        .prepare("SELECT * FROM webhook_endpoints ORDER BY id")
        .expect("select");
    let columns = statement.column_count();
    statement
        .query_map([], |row| {
            (0..columns)
                .map(|i| {
                    let value: rusqlite::types::Value = row.get(i)?;
                    Ok(format!("{value:?}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|values| values.join("|"))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("row")
}

/// The app with its schema in place (the first request migrates).
fn migrated(app: &TestApp) {
    let response = app.get(WEBHOOKS_KEY, PATH);
    assert_eq!(response.status, 200, "{}", response.text());
}

#[test]
fn an_endpoint_is_created_read_listed_changed_rotated_and_deleted() {
    // Arrange
    let app = TestApp::new();

    // Act: create
    let created = create(
        &app,
        &json!({
            "url": "https://hooks.example.jp/kizuna",
            "topics": ["points.earned", "order.paid", "order.paid"],
            "description": "  LINE配信ツール  ",
            "enabled": true,
        }),
    );

    // Assert: the answer, with its secret this once
    let id = created["id"].as_str().expect("id").to_owned();
    let secret = created["secret"].as_str().expect("secret").to_owned();
    // `whsec_` and the base64 of 24 random bytes (32 characters, no padding).
    let encoded = secret.strip_prefix("whsec_").expect("whsec_ prefix");
    assert_eq!(encoded.len(), 32, "{secret}");
    assert!(
        encoded
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/'),
        "{secret}"
    );
    assert_eq!(created["url"], "https://hooks.example.jp/kizuna");
    assert_eq!(created["topics"], json!(["order.paid", "points.earned"]));
    assert_eq!(created["description"], "LINE配信ツール");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["include_personal_data"], false);
    assert_eq!(created["disabled_reason"], Json::Null);
    assert_eq!(created["secret_hint"], secret[secret.len() - 4..]);
    assert_eq!(created["secret_rotated_at"], Json::Null);
    assert_eq!(created["created_by"], "key:webhooks");
    // Stored encrypted: no row holds the secret or any `whsec_` text.
    let rows = stored(&app);
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].contains("whsec_"), "{}", rows[0]);
    assert!(!rows[0].contains(&secret[6..]), "{}", rows[0]);
    let sealed: String = app
        .db()
        .query_row("SELECT secret FROM webhook_endpoints", [], |r| r.get(0))
        .unwrap();
    assert!(sealed.starts_with("v1:"), "{sealed}");

    // Act / Assert: read and list never show the secret
    let read = app.get(WEBHOOKS_KEY, &format!("{PATH}/{id}"));
    assert_eq!(read.status, 200, "{}", read.text());
    let mut expected = created.clone();
    expected.as_object_mut().unwrap().remove("secret");
    assert_eq!(read.json(), expected);
    let list = app.get(WEBHOOKS_KEY, PATH);
    assert_eq!(list.status, 200);
    assert_eq!(
        list.json(),
        json!({"items": [expected], "next_cursor": null})
    );
    assert!(!list.text().contains(&secret), "{}", list.text());

    // Act: a merge patch
    app.clock.advance(time::Duration::minutes(5));
    let patched = app.send_json(
        "PATCH",
        WEBHOOKS_KEY,
        &format!("{PATH}/{id}"),
        &json!({"url": "https://hooks.example.jp/v2", "topics": ["*"], "description": null, "enabled": false}),
    );

    // Assert
    assert_eq!(patched.status, 200, "{}", patched.text());
    let patched = patched.json();
    assert_eq!(patched["url"], "https://hooks.example.jp/v2");
    assert_eq!(patched["topics"], json!(["*"]));
    assert_eq!(patched["description"], Json::Null);
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["include_personal_data"], false, "untouched");
    assert_eq!(patched["secret_hint"], created["secret_hint"], "untouched");
    assert_ne!(patched["updated_at"], created["updated_at"]);
    assert!(patched.get("secret").is_none());

    // Act: rotate with the default overlap
    let rotated = app.send_json(
        "POST",
        WEBHOOKS_KEY,
        &format!("{PATH}/{id}/rotate-secret"),
        &json!({}),
    );

    // Assert: a new secret, once; the old one kept (encrypted) for 24 h
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    let rotated = rotated.json();
    let new_secret = rotated["secret"].as_str().expect("new secret").to_owned();
    assert!(new_secret.starts_with("whsec_") && new_secret != secret);
    assert_eq!(rotated["secret_hint"], new_secret[new_secret.len() - 4..]);
    // Stamped by the app's clock (the test's own under the native host,
    // the real one under Spin), and the overlap is exactly 24 h from it.
    let at = |name: &str| {
        rotated[name]
            .as_str()
            .and_then(kizuna::timestamp::parse)
            .unwrap_or_else(|| panic!("{name}: {rotated}"))
    };
    let rotated_at = at("secret_rotated_at");
    assert!(
        (rotated_at - app.now()).abs() < time::Duration::minutes(5),
        "{rotated}"
    );
    assert_eq!(
        at("previous_secret_expires_at") - rotated_at,
        time::Duration::hours(24)
    );
    let (current, previous): (String, String) = app
        .db()
        .query_row(
            "SELECT secret, previous_secret FROM webhook_endpoints",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(previous, sealed, "the old secret keeps signing");
    assert_ne!(current, sealed);
    let rows = stored(&app);
    assert!(!rows[0].contains("whsec_") && !rows[0].contains(&new_secret[6..]));
    let read = app.get(WEBHOOKS_KEY, &format!("{PATH}/{id}")).json();
    assert!(read.get("secret").is_none() && !read.to_string().contains(&new_secret));

    // Act: rotate with no overlap (a leaked secret): the old one stops at once
    let rotated = app.request(
        "POST",
        &format!("{PATH}/{id}/rotate-secret"),
        &[
            ("authorization", &bearer(WEBHOOKS_KEY)),
            ("content-type", "application/json"),
        ],
        r#"{"overlap_hours": 0}"#,
    );
    assert_eq!(rotated.status, 200, "{}", rotated.text());
    assert_eq!(rotated.json()["previous_secret_expires_at"], Json::Null);
    assert_eq!(
        app.count("SELECT count(*) FROM webhook_endpoints WHERE previous_secret IS NULL"),
        1
    );

    // Act / Assert: delete, then it is gone
    let deleted = app.request(
        "DELETE",
        &format!("{PATH}/{id}"),
        &[("authorization", &bearer(WEBHOOKS_KEY))],
        "",
    );
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert_eq!(app.count("SELECT count(*) FROM webhook_endpoints"), 0);
    for (method, path) in [
        ("GET", format!("{PATH}/{id}")),
        ("DELETE", format!("{PATH}/{id}")),
        ("PATCH", format!("{PATH}/{id}")),
        ("POST", format!("{PATH}/{id}/rotate-secret")),
        ("GET", format!("{PATH}/not-an-id")),
    ] {
        let response = app.request(
            method,
            &path,
            &[
                ("authorization", &bearer(WEBHOOKS_KEY)),
                ("content-type", "application/json"),
            ],
            if method == "PATCH" { "{}" } else { "" },
        );
        response.assert_problem(404, &format!("{method} {path}"));
    }
}

#[test]
fn bad_input_is_a_422_naming_the_field_and_stores_nothing() {
    // Arrange
    let app = TestApp::new();
    let kept = create(&app, &endpoint("https://hooks.example.jp/kept"));
    let kept_path = format!("{PATH}/{}", kept["id"].as_str().unwrap());
    let before = stored(&app);
    let long_url = format!("https://hooks.example.jp/{}", "a".repeat(2048));
    let cases: Vec<(&str, Json, &str)> = vec![
        ("plain http", endpoint("http://hooks.example.jp/x"), "/url"),
        ("not a URL", endpoint("hooks.example.jp/x"), "/url"),
        ("ftp", endpoint("ftp://hooks.example.jp/x"), "/url"),
        (
            "user info",
            endpoint("https://me:pw@hooks.example.jp/x"),
            "/url",
        ),
        ("loopback", endpoint("https://127.0.0.1/x"), "/url"),
        ("localhost", endpoint("https://localhost:8443/x"), "/url"),
        ("private v4", endpoint("https://10.0.0.1/x"), "/url"),
        (
            "link-local (cloud metadata)",
            endpoint("https://169.254.169.254/latest"),
            "/url",
        ),
        ("CGNAT", endpoint("https://100.64.1.1/x"), "/url"),
        ("unspecified", endpoint("https://0.0.0.0/x"), "/url"),
        ("decimal IPv4", endpoint("https://2130706433/x"), "/url"),
        ("hex IPv4", endpoint("https://0x0a.0.0.1/x"), "/url"),
        ("v6 loopback", endpoint("https://[::1]/x"), "/url"),
        (
            "v6 unique local",
            endpoint("https://[fd12:3456::1]/x"),
            "/url",
        ),
        (
            "v4-mapped private",
            endpoint("https://[::ffff:10.0.0.1]/x"),
            "/url",
        ),
        ("too long URL", endpoint(&long_url), "/url"),
        (
            "URL not a string",
            json!({"url": 42, "topics": ["order.paid"]}),
            "/url",
        ),
        ("no URL", json!({"topics": ["order.paid"]}), "/url"),
        (
            "unknown topic",
            json!({"url": "https://a.example.jp/", "topics": ["order.shipped"]}),
            "/topics/0",
        ),
        (
            "pattern topic",
            json!({"url": "https://a.example.jp/", "topics": ["order.paid", "points.*"]}),
            "/topics/1",
        ),
        (
            "empty topics",
            json!({"url": "https://a.example.jp/", "topics": []}),
            "/topics",
        ),
        (
            "topics not a list",
            json!({"url": "https://a.example.jp/", "topics": "order.paid"}),
            "/topics",
        ),
        (
            "star with others",
            json!({"url": "https://a.example.jp/", "topics": ["*", "order.paid"]}),
            "/topics",
        ),
        (
            "no topics",
            json!({"url": "https://a.example.jp/"}),
            "/topics",
        ),
        (
            "huge description",
            json!({"url": "https://a.example.jp/", "topics": ["order.paid"], "description": "説".repeat(501)}),
            "/description",
        ),
        (
            "control characters",
            json!({"url": "https://a.example.jp/", "topics": ["order.paid"], "description": "a\u{7}b"}),
            "/description",
        ),
        (
            "enabled not a boolean",
            json!({"url": "https://a.example.jp/", "topics": ["order.paid"], "enabled": "yes"}),
            "/enabled",
        ),
        (
            "personal data not a boolean",
            json!({"url": "https://a.example.jp/", "topics": ["order.paid"], "include_personal_data": 1}),
            "/include_personal_data",
        ),
        (
            "unknown member",
            json!({"url": "https://a.example.jp/", "topics": ["order.paid"], "secret": "whsec_mine"}),
            "/secret",
        ),
    ];

    for (case, body, field) in &cases {
        // Act: as a create, and (where it is a change) as a patch
        let response = app.send_json("POST", WEBHOOKS_KEY, PATH, body);

        // Assert
        let problem = response.assert_problem(422, case);
        let fields: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("case {case}: {problem}"))
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(fields.contains(field), "case {case}: {problem}");
        if !case.starts_with("no ") {
            let mut patch = body.clone();
            let patch = patch.as_object_mut().unwrap();
            if *field != "/url" {
                patch.remove("url");
            }
            let response = app.send_json("PATCH", WEBHOOKS_KEY, &kept_path, &json!(patch));
            let problem = response.assert_problem(422, &format!("{case} (patch)"));
            assert!(
                problem["errors"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["field"] == *field)),
                "case {case} (patch): {problem}"
            );
        }
        assert_eq!(stored(&app), before, "case {case}: nothing stored");
    }

    // Rotation takes only its overlap.
    for (case, body, field) in [
        (
            "negative overlap",
            json!({"overlap_hours": -1}),
            "/overlap_hours",
        ),
        (
            "overlap past a week",
            json!({"overlap_hours": 169}),
            "/overlap_hours",
        ),
        (
            "fractional overlap",
            json!({"overlap_hours": 1.5}),
            "/overlap_hours",
        ),
        ("unknown member", json!({"overlap": 1}), "/overlap"),
    ] {
        let response = app.send_json(
            "POST",
            WEBHOOKS_KEY,
            &format!("{kept_path}/rotate-secret"),
            &body,
        );
        let problem = response.assert_problem(422, case);
        assert_eq!(
            problem["errors"][0]["field"], field,
            "case {case}: {problem}"
        );
        assert_eq!(stored(&app), before, "case {case}: nothing stored");
    }
}

#[test]
fn the_101st_endpoint_is_refused() {
    // Arrange
    let app = TestApp::new();
    for n in 0..100 {
        create(&app, &endpoint(&format!("https://hooks.example.jp/{n}")));
    }
    let before = stored(&app);

    // Act
    let response = app.send_json(
        "POST",
        WEBHOOKS_KEY,
        PATH,
        &endpoint("https://hooks.example.jp/100"),
    );

    // Assert
    let problem = response.assert_problem(422, "101st endpoint");
    assert_eq!(problem["errors"][0]["field"], "", "{problem}");
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 100")),
        "{problem}"
    );
    assert_eq!(stored(&app), before);

    // After a delete there is room again.
    let first = app.get(WEBHOOKS_KEY, &format!("{PATH}?limit=1")).json()["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deleted = app.request(
        "DELETE",
        &format!("{PATH}/{first}"),
        &[("authorization", &bearer(WEBHOOKS_KEY))],
        "",
    );
    assert_eq!(deleted.status, 204);
    create(&app, &endpoint("https://hooks.example.jp/100"));
}

#[test]
fn the_list_pages_by_keyset_and_refuses_unknown_parameters() {
    // Arrange
    let app = TestApp::new();
    let ids: Vec<String> = (0..5)
        .map(|n| {
            create(&app, &endpoint(&format!("https://hooks.example.jp/{n}")))["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();

    // Act: pages of two
    let mut seen = Vec::new();
    let mut path = format!("{PATH}?limit=2");
    loop {
        let page = app.get(WEBHOOKS_KEY, &path);
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("{PATH}?limit=2&cursor={cursor}"),
            None => break,
        }
    }

    // Assert
    assert_eq!(seen, ids);
    for (case, query, field) in [
        ("unknown parameter", "?topic=order.paid", "topic"),
        ("bad cursor", "?cursor=bm9wZQ", "cursor"),
        ("limit zero", "?limit=0", "limit"),
        ("limit past 100", "?limit=101", "limit"),
    ] {
        let problem = app
            .get(WEBHOOKS_KEY, &format!("{PATH}{query}"))
            .assert_problem(422, case);
        assert_eq!(problem["errors"][0]["field"], field, "case {case}");
    }
}

#[test]
fn the_allow_list_variable_narrows_hosts_and_opens_plain_http_to_named_ones() {
    // Arrange
    let app = TestApp::with_variables(&[(
        "webhook_allowed_hosts",
        "https://*.zapier.com, hooks.example.jp, http://127.0.0.1:*",
    )]);
    migrated(&app);

    // Act / Assert
    for url in [
        "https://hooks.zapier.com/hooks/catch/1/abc",
        "https://hooks.example.jp/kizuna",
        "http://127.0.0.1:8099/receiver",
    ] {
        create(&app, &endpoint(url));
    }
    for (case, url) in [
        ("host not allowed", "https://other.example.jp/x"),
        ("suffix is not its own host", "https://zapier.com/x"),
        (
            "plain http to an https-only entry",
            "http://hooks.zapier.com/x",
        ),
        ("another loopback address", "http://127.0.0.2:8099/x"),
        ("private address not listed", "https://192.168.0.10/x"),
    ] {
        let before = stored(&app);
        let response = app.send_json("POST", WEBHOOKS_KEY, PATH, &endpoint(url));
        let problem = response.assert_problem(422, case);
        assert_eq!(problem["errors"][0]["field"], "/url", "case {case}");
        assert_eq!(stored(&app), before, "case {case}");
    }
}

#[test]
fn keys_need_webhooks_admin_and_personal_data_needs_segments_export() {
    // Arrange
    let app = TestApp::new();
    let id = create(&app, &endpoint("https://hooks.example.jp/x"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = stored(&app);
    let one = format!("{PATH}/{id}");
    let rotate = format!("{one}/rotate-secret");

    // Act / Assert: no key, or a key without the scope
    for (method, path) in [
        ("GET", PATH),
        ("POST", PATH),
        ("GET", one.as_str()),
        ("PATCH", one.as_str()),
        ("DELETE", one.as_str()),
        ("POST", rotate.as_str()),
    ] {
        let body = endpoint("https://hooks.example.jp/y");
        let anonymous = app.request(
            method,
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        );
        anonymous.assert_problem(401, &format!("{method} {path} without a key"));
        for key in [READ_KEY, SEGMENTS_KEY] {
            app.send_json(method, key, path, &body)
                .assert_problem(403, &format!("{method} {path} with {key}"));
        }
    }
    assert_eq!(stored(&app), before);

    // Personal data in payloads: only with segments:export as well.
    let personal =
        json!({"url": "https://crm.example.jp/in", "topics": ["*"], "include_personal_data": true});
    let problem = app
        .send_json("POST", WEBHOOKS_KEY, PATH, &personal)
        .assert_problem(403, "create with personal data");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("segments:export"),
        "{problem}"
    );
    app.send_json(
        "PATCH",
        WEBHOOKS_KEY,
        &one,
        &json!({"include_personal_data": true}),
    )
    .assert_problem(403, "patch to personal data");
    assert_eq!(stored(&app), before);
    // Turning it off, or leaving it off, needs no more than webhooks:admin.
    let off = app.send_json(
        "PATCH",
        WEBHOOKS_KEY,
        &one,
        &json!({"include_personal_data": false}),
    );
    assert_eq!(off.status, 200, "{}", off.text());

    let created = app.send_json("POST", WEBHOOKS_EXPORT_KEY, PATH, &personal);
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["include_personal_data"], true);
    let patched = app.send_json(
        "PATCH",
        WEBHOOKS_EXPORT_KEY,
        &one,
        &json!({"include_personal_data": true}),
    );
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.json()["include_personal_data"], true);
}

#[test]
fn without_its_secret_key_the_component_fails_loudly_and_stores_nothing() {
    if skip_under_spin("Spin refuses to start without a required variable") {
        return;
    }
    // Arrange
    let app = TestApp::with_variables(&[("webhook_secret_key", "")]);
    migrated(&app);

    // Act
    let response = app.send_json(
        "POST",
        WEBHOOKS_KEY,
        PATH,
        &endpoint("https://hooks.example.jp/x"),
    );

    // Assert
    response.assert_problem(500, "no webhook_secret_key");
    assert!(
        !response.text().contains("webhook_secret_key"),
        "causes are logged, not sent"
    );
    assert_eq!(app.count("SELECT count(*) FROM webhook_endpoints"), 0);
}
