//! `TestApp`: a fresh temporary database per test, with API keys of each
//! scope, and helpers to call it and look inside. It runs the native host
//! in-process, or, with `KIZUNA_TEST_SPIN=1`, a real `spin up` per test
//! over the same state folder, reached over HTTP; with also
//! `KIZUNA_TEST_BACKEND=libsql`, that Spin app keeps its data in a sqld
//! and a Redis of its own. Tests that need the manual clock or the native
//! host itself call `skip_under_spin` and say why; tests that need a
//! SQLite file call `skip_on_libsql`.

#![allow(dead_code)] // each suite uses a different subset

use bytes::Bytes;
use kizuna::auth::key_digest;
use kizuna_tests::servers::{Backing, libsql_mode};
use kizuna_tests::spin::{SpinApp, spin_mode};
use kizuna_tests::{Host, ManualClock, Server};
use serde_json::Value as Json;
use std::sync::Arc;

pub const ADMIN_KEY: &str = "test-admin-key-0000";
pub const READ_KEY: &str = "test-read-key-1111";
pub const WRITE_KEY: &str = "test-write-key-2222";
pub const FORMS_KEY: &str = "test-forms-key-3333";
pub const UNSUBSCRIBE_SECRET: &str = "test-unsubscribe-secret-0123456789";
/// The network tests connect from; its `X-Forwarded-For` is believed.
pub const TEST_PROXY: &str = "127.0.0.0/8";
pub const LP_ORIGIN: &str = "https://lp.example.jp";
/// Standard Webhooks secret for `/v1/webhooks/orders` (base64 after `whsec_`).
pub const ORDERS_SECRET: &str = "whsec_dGVzdC1vcmRlcnMtd2ViaG9vay1zZWNyZXQ=";
pub const SHOPIFY_SECRET: &str = "shpss_test_shopify_secret";
pub const WOO_SECRET: &str = "test-woocommerce-secret";
pub const ORDERS_KEY: &str = "test-orders-key-4444";
/// `points:read`, `points:redeem` and `points:award`.
pub const POINTS_KEY: &str = "test-points-key-5555";
/// `points:read` and `points:admin`.
pub const POINTS_ADMIN_KEY: &str = "test-points-admin-key-6666";
/// `segments:read`, `segments:write` and `segments:export`.
pub const SEGMENTS_KEY: &str = "test-segments-key-7777";
/// A till: `points:read` and `points:redeem` only.
pub const POINTS_REDEEM_KEY: &str = "test-points-redeem-key-8888";
/// A campaign tool: `points:award` only.
pub const POINTS_AWARD_KEY: &str = "test-points-award-key-9999";
/// An analytics dashboard: `segments:read` only (ids, counts, analytics).
pub const SEGMENTS_READ_KEY: &str = "test-segments-read-key-aaaa";

/// Manages webhook endpoints, without `segments:export`.
pub const WEBHOOKS_KEY: &str = "test-webhooks-key-bbbb";
/// Manages webhook endpoints that may carry personal data.
pub const WEBHOOKS_EXPORT_KEY: &str = "test-webhooks-export-key-cccc";
/// Encrypts webhook endpoint secrets at rest.
pub const WEBHOOK_SECRET_KEY: &str = "test-webhook-secret-key-0123456789abcdef";

pub fn api_keys_variable() -> String {
    serde_json::json!([
        {"name": "admin", "sha256": key_digest(ADMIN_KEY), "scopes": ["*"]},
        {"name": "reader", "sha256": key_digest(READ_KEY), "scopes": ["contacts:read"]},
        {"name": "writer", "sha256": key_digest(WRITE_KEY), "scopes": ["contacts:read", "contacts:write"]},
        {"name": "forms", "sha256": key_digest(FORMS_KEY), "scopes": ["forms:admin"]},
        {"name": "orders", "sha256": key_digest(ORDERS_KEY), "scopes": ["orders:read"]},
        {"name": "points", "sha256": key_digest(POINTS_KEY), "scopes": ["points:read", "points:redeem", "points:award"]},
        {"name": "points-admin", "sha256": key_digest(POINTS_ADMIN_KEY), "scopes": ["points:read", "points:admin"]},
        {"name": "segments", "sha256": key_digest(SEGMENTS_KEY), "scopes": ["segments:read", "segments:write", "segments:export"]},
        {"name": "till", "sha256": key_digest(POINTS_REDEEM_KEY), "scopes": ["points:read", "points:redeem"]},
        {"name": "campaigns", "sha256": key_digest(POINTS_AWARD_KEY), "scopes": ["points:award"]},
        {"name": "dashboard", "sha256": key_digest(SEGMENTS_READ_KEY), "scopes": ["segments:read"]},
        {"name": "webhooks", "sha256": key_digest(WEBHOOKS_KEY), "scopes": ["webhooks:admin"]},
        {"name": "webhooks-export", "sha256": key_digest(WEBHOOKS_EXPORT_KEY), "scopes": ["webhooks:admin", "segments:export"]},
    ])
    .to_string()
}

/// Where a test's requests go.
pub enum Target {
    Native(Arc<Host>),
    Spin(SpinApp, ureq::Agent),
}

pub struct TestApp {
    pub target: Target,
    /// sqld and Redis under the Spin app, in the libSQL run
    /// (`KIZUNA_TEST_BACKEND=libsql`); dropped after `target`, so Spin
    /// stops before its stores do.
    pub backing: Option<Backing>,
    /// The variables it was started with (a twin gets the same).
    variables: Vec<(String, String)>,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
}

/// True when this run targets real Spin; prints why the calling test does
/// not run there. Use as `if skip_under_spin("…") { return; }`.
pub fn skip_under_spin(reason: &str) -> bool {
    let skip = spin_mode();
    if skip {
        eprintln!("skipped under Spin: {reason}");
    }
    skip
}

/// The `Authorization` value for `key`.
pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// True when this run keeps Spin's data on sqld and Redis; prints why
/// the calling test does not run there.
pub fn skip_on_libsql(reason: &str) -> bool {
    let skip = libsql_mode();
    if skip {
        eprintln!("skipped on libSQL: {reason}");
    }
    skip
}

/// The HTTP client for a Spin app: statuses are answers, not errors, and
/// redirects are the test's to see.
fn test_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .allow_non_standard_methods(true)
        .build()
        .into()
}

/// True when this run does not keep Spin's data on sqld and Redis, for
/// tests that need them (two processes on one sqld, its faults); prints
/// why the calling test does not run.
pub fn skip_unless_libsql() -> bool {
    let skip = !libsql_mode();
    if skip {
        eprintln!("skipped: runs on sqld and Redis only (KIZUNA_TEST_BACKEND=libsql)");
    }
    skip
}

/// The variables every test app starts with.
fn base_variables() -> Vec<(String, String)> {
    [
        ("api_keys", api_keys_variable()),
        ("unsubscribe_secret", UNSUBSCRIBE_SECRET.to_owned()),
        ("allowed_origins", LP_ORIGIN.to_owned()),
        ("public_base_url", "https://crm.example.jp".to_owned()),
        ("orders_webhook_secrets", ORDERS_SECRET.to_owned()),
        ("shopify_webhook_secrets", SHOPIFY_SECRET.to_owned()),
        ("woocommerce_webhook_secrets", WOO_SECRET.to_owned()),
        ("webhook_secret_key", WEBHOOK_SECRET_KEY.to_owned()),
        // Tests reach the app from loopback, as a load balancer would, and
        // name the client they play in `X-Forwarded-For`.
        ("trusted_proxies", TEST_PROXY.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub struct TestResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Asserts a problem document with `status`, naming `case` on failure.
    pub fn assert_problem(&self, status: u16, case: &str) -> Json {
        assert_eq!(self.status, status, "case {case}: body {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "case {case}"
        );
        let problem = self.json();
        assert_eq!(problem["status"], status, "case {case}");
        assert!(
            problem["title"].is_string() && problem["detail"].is_string(),
            "case {case}"
        );
        problem
    }
}

pub fn start_time() -> time::OffsetDateTime {
    time::macros::datetime!(2026-11-22 03:00:00 UTC)
}

impl TestApp {
    pub fn new() -> TestApp {
        TestApp::with_variables(&[])
    }

    pub fn with_variables(extra: &[(&str, &str)]) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::new(start_time()));
        let mut variables = base_variables();
        for (name, value) in extra {
            variables.retain(|(n, _)| n != name);
            variables.push(((*name).to_owned(), (*value).to_owned()));
        }
        let mut backing = None;
        let target = if spin_mode() {
            let spin = if libsql_mode() {
                let servers = Backing::start(&dir.path().join("servers")).expect("sqld and Redis");
                let spin = SpinApp::start_with_runtime_config(
                    dir.path(),
                    &variables,
                    &servers.runtime_config,
                )
                .expect("spin up on sqld and Redis");
                backing = Some(servers);
                spin
            } else {
                SpinApp::start(dir.path(), &variables).expect("spin up")
            };
            Target::Spin(spin, test_agent())
        } else {
            let mut host = Host::new(dir.path())
                .expect("host")
                .with_clock(clock.clone());
            for (name, value) in &variables {
                host = host.with_variable(name, value);
            }
            Target::Native(Arc::new(host))
        };
        TestApp {
            target,
            backing,
            variables,
            clock,
            dir,
        }
    }

    /// A second `spin up` of the same app on the same sqld and Redis, as
    /// a second machine behind a load balancer would be (libSQL run only).
    /// Its requests go to its own port; its data is this app's.
    pub fn twin(&self) -> TestApp {
        let backing = self.backing.as_ref().expect("a twin needs sqld and Redis");
        let dir = tempfile::tempdir().expect("temp dir");
        let spin = SpinApp::start_with_runtime_config(
            dir.path(),
            &self.variables,
            &backing.runtime_config,
        )
        .expect("a second spin up on the same sqld and Redis");
        TestApp {
            target: Target::Spin(spin, test_agent()),
            backing: None,
            variables: self.variables.clone(),
            clock: self.clock.clone(),
            dir,
        }
    }

    pub fn under_spin(&self) -> bool {
        matches!(self.target, Target::Spin(..))
    }

    /// The app's present: the manual clock natively, the real one under
    /// Spin.
    pub fn now(&self) -> time::OffsetDateTime {
        match self.target {
            Target::Native(_) => kizuna::ports::Clock::now(self.clock.as_ref()),
            Target::Spin(..) => time::OffsetDateTime::now_utc(),
        }
    }

    /// Under Spin, waits until a new minute has begun if this one is
    /// nearly over, so that a test counting posts against the per-minute
    /// form limit does not straddle two windows.
    pub fn clear_of_minute_boundary(&self) {
        if self.under_spin() {
            let second = self.now().second();
            if second >= 50 {
                std::thread::sleep(std::time::Duration::from_millis(
                    u64::from(61 - second) * 1000,
                ));
            }
        }
    }

    /// The statements the last request ran, counted by the native host;
    /// `None` under Spin.
    pub fn statements_of_last_request(&self) -> Option<u64> {
        match &self.target {
            Target::Native(host) => Some(host.statements_of_last_request()),
            Target::Spin(..) => None,
        }
    }

    /// The SQLite file behind the app: Spin's own, or the one sqld keeps.
    pub fn database_path(&self) -> std::path::PathBuf {
        match &self.backing {
            Some(backing) => backing.sqld.database_file(),
            None => self.dir.path().join("sqlite_db.db"),
        }
    }

    /// True when the app runs on sqld and Redis.
    pub fn on_libsql(&self) -> bool {
        self.backing.is_some()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> TestResponse {
        let body: Bytes = body.into();
        match &self.target {
            Target::Native(host) => {
                let mut builder = http::Request::builder().method(method).uri(path);
                for (name, value) in headers {
                    builder = builder.header(*name, *value);
                }
                let response = host.handle(builder.body(body).expect("request"));
                let (parts, body) = response.into_parts();
                TestResponse {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body,
                }
            }
            Target::Spin(spin, agent) => {
                let mut builder = http::Request::builder()
                    .method(method)
                    .uri(format!("{}{path}", spin.url()));
                for (name, value) in headers {
                    builder = builder.header(*name, *value);
                }
                let request = builder.body(body.to_vec()).expect("request");
                let mut response = agent
                    .run(request)
                    .unwrap_or_else(|e| panic!("{method} {path} under Spin: {e}"));
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(u64::MAX)
                    .read_to_vec()
                    .unwrap_or_else(|e| panic!("{method} {path} under Spin: body: {e}"));
                TestResponse {
                    status,
                    headers,
                    body: Bytes::from(body),
                }
            }
        }
    }

    pub fn get(&self, key: &str, path: &str) -> TestResponse {
        self.request(
            "GET",
            path,
            &[("authorization", &format!("Bearer {key}"))],
            Bytes::new(),
        )
    }

    pub fn send_json(&self, method: &str, key: &str, path: &str, body: &Json) -> TestResponse {
        self.request(
            method,
            path,
            &[
                ("authorization", &format!("Bearer {key}")),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
    }

    /// A browser-style form post from `ip` (through the trusted proxy).
    pub fn post_form(&self, form_id: &str, body: &str, ip: &str) -> TestResponse {
        self.request(
            "POST",
            &format!("/v1/forms/{form_id}"),
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "text/html"),
                ("x-forwarded-for", ip),
                ("referer", "https://lp.example.jp/spring?utm_source=ad"),
            ],
            body.to_owned(),
        )
    }

    /// A Kizuna-format order event (Standard Webhooks), signed now on the
    /// app's clock with the configured secret.
    pub fn post_kizuna_event(&self, msg_id: &str, body: Vec<u8>) -> TestResponse {
        let ts = self.now().unix_timestamp();
        let signature = kizuna::signatures::sign_standard(ORDERS_SECRET, msg_id, ts, &body);
        self.request(
            "POST",
            "/v1/webhooks/orders",
            &[
                ("content-type", "application/json"),
                ("webhook-id", msg_id),
                ("webhook-timestamp", &ts.to_string()),
                ("webhook-signature", &signature),
            ],
            body,
        )
    }

    /// A script's JSON form post from `ip` (through the trusted proxy).
    pub fn post_form_json(&self, form_id: &str, body: &Json, ip: &str) -> TestResponse {
        self.request(
            "POST",
            &format!("/v1/forms/{form_id}"),
            &[
                ("content-type", "application/json"),
                ("accept", "application/json"),
                ("x-forwarded-for", ip),
            ],
            body.to_string(),
        )
    }

    /// Creates a contact through the API and returns its id.
    pub fn create_contact(&self, body: &Json) -> String {
        let response = self.send_json("POST", WRITE_KEY, "/v1/contacts", body);
        assert_eq!(response.status, 201, "create: {}", response.text());
        response.json()["id"].as_str().expect("id").to_owned()
    }

    /// A view of the database for assertions. On sqld it is read-only:
    /// a write that bypassed the server would not be in its log.
    pub fn db(&self) -> rusqlite::Connection {
        if self.on_libsql() {
            rusqlite::Connection::open_with_flags(
                self.database_path(),
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .expect("open sqld's file")
        } else {
            rusqlite::Connection::open(self.database_path()).expect("open db")
        }
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    /// Row counts of every table that holds contact data: "nothing stored"
    /// means these did not change.
    pub fn table_counts(&self) -> Vec<(String, i64)> {
        [
            "contacts",
            "interactions",
            "consents",
            "contact_tags",
            "contact_search",
            "idempotency_keys",
            "erasures",
            "events",
        ]
        .iter()
        .map(|t| {
            (
                (*t).to_owned(),
                self.count(&format!("SELECT count(*) FROM {t}")),
            )
        })
        .collect()
    }

    /// Serves this app over HTTP on a loopback port: natively, a server
    /// over the same folder (with a high form rate limit, so load tests
    /// measure concurrency); under Spin, the running `spin up` itself.
    pub fn serve(&self, threads: usize) -> Served<'_> {
        self.serve_with(threads, None)
    }

    /// Like `serve`, natively on the app's manual clock.
    pub fn serve_on_app_clock(&self, threads: usize) -> Served<'_> {
        self.serve_with(threads, Some(self.clock.clone()))
    }

    fn serve_with(&self, threads: usize, clock: Option<Arc<ManualClock>>) -> Served<'_> {
        match &self.target {
            Target::Spin(spin, _) => Served::Spin(spin),
            Target::Native(_) => {
                let mut host = Host::new(self.dir.path()).expect("host");
                for (name, value) in base_variables() {
                    host = host.with_variable(&name, &value);
                }
                host = host.with_variable("form_rate_limit_per_minute", "1000");
                if let Some(clock) = clock {
                    host = host.with_clock(clock);
                }
                Served::Native(Server::start(host, "127.0.0.1:0", threads).expect("server"))
            }
        }
    }
}

/// An HTTP server for a test that needs real connections.
pub enum Served<'a> {
    Native(Server),
    Spin(&'a SpinApp),
}

impl Served<'_> {
    pub fn url(&self) -> String {
        match self {
            Served::Native(server) => server.url(),
            Served::Spin(spin) => spin.url(),
        }
    }

    /// Stops a native server; a Spin app stops with its `TestApp`.
    pub fn stop(self) {
        if let Served::Native(server) = self {
            server.stop();
        }
    }
}

impl Drop for TestApp {
    /// A failing test under Spin shows what Spin (and sqld) logged: the
    /// cause of a 5xx is only there.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Target::Spin(spin, _) = &self.target {
            let log = spin.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- spin up's log, last lines:");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            // What the components wrote to stderr (`unexpected error: …`).
            let logs = self.dir.path().join("logs");
            for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                if !tail.is_empty() {
                    eprintln!("--- {}, last lines:", entry.path().display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        if let Some(backing) = &self.backing {
            let log = backing.sqld.log_text();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("--- sqld's log, last lines:");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}
