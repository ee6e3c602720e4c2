//! `bench-spin`: Kizuna's speed under real Spin (issue 9), beside two
//! baselines that show what Spin itself costs per request, driven by `wrk`
//! on loopback.
//!
//! 1. Builds the current code for `wasm32-wasip2` into the workspace's
//!    `target/` (`spin build` of `spin.toml`, and `cargo build` of the two
//!    baseline components in `tests/baselines/`), and installs `wrk` with
//!    `apt-get install -y wrk` if it is missing.
//! 2. Fresh state: `spin up` once on an empty state folder to migrate it,
//!    then fills the file with `kizuna_tests::datagen` (default 100,000
//!    contacts, 300,000 orders, data ending now), and starts Kizuna again
//!    on it with `trusted_proxies=127.0.0.0/8` (every form post comes from
//!    its own `X-Forwarded-For` address and email, so none is rate
//!    limited). It turns the points program on (`PUT
//!    /v1/points/program`: earning from order webhooks) and saves a
//!    three-condition segment (has an email, at least one order, last
//!    order within 365 days).
//! 3. Starts the baselines (`tests/baselines/spin.toml`) in their own
//!    state folder: `GET /hello` (200 `hello`) and `POST /insert` (opens
//!    the default database, sets Kizuna's four pragmas, commits one insert
//!    into a WAL file).
//! 4. For each scenario, at 4 and 16 connections, with keep-alive and
//!    with `Connection: close`: `--runs` (default 3) runs of `--seconds`
//!    (default 10) of `wrk` (`kizuna_tests::load`), requests generated
//!    afresh for each run (every write unique: emails, order ids,
//!    idempotency keys; webhooks signed with the current time). The row
//!    holds the median of the runs' requests/s, p50 and p99. Scenarios:
//!    `hello` and `bare insert` (baselines), `contact by id`, `contact by
//!    phone`, `points balance`, `segment count`, `segment csv` (a page of
//!    10,000 members), `form post`, `order webhook` (Standard Webhooks, 5
//!    lines, earning points), `redeem` (1 point, `Idempotency-Key`).
//! 5. Where the time goes: per Kizuna scenario, 300 requests one at a
//!    time, and the median of each stage their `Server-Timing` header
//!    reports (Kizuna runs with `server_timing=true`).
//! 6. `mixed`: `--mixed-seconds` (default 60) at 64 connections, 70 %
//!    reads (by id, by phone, points balance), 20 % form posts, 10 %
//!    webhooks.
//! 7. With `--million PATH` (a database of a million contacts made by the
//!    data generator, e.g. kept by another bench with `--keep`): copies it
//!    to a fresh state folder and measures segment count and CSV page on
//!    it too.
//!
//! Writes are checked after every run, in the database file: every 2xx
//! webhook's order (its id from the answer) is stored, and as many bench
//! contacts (forms) and redemptions were added as were answered 2xx.
//!
//! Printed: each row as soon as it is measured, then the whole table with
//! ratios against the baselines (reads against `hello`, writes against
//! `bare insert`, at the same connections and mode), the goals with ✓/✗
//! (figures, never asserted), the mixed phase, and errors found in Spin's
//! logs. The bench fails only on a 5xx from Kizuna, a lost write, or a
//! setup error.
//!
//! Options: `--contacts N` (100000), `--orders M` (300000), `--runs R`
//! (3), `--seconds S` (10), `--mixed-seconds S` (60), `--seed S`,
//! `--only TEXT` (only scenarios whose name contains TEXT, e.g. `form`,
//! `mixed`; the baselines they are compared with run too), `--million
//! PATH`, `--dir PATH`, `--keep`. A quick run: `--runs 1 --seconds 3
//! --mixed-seconds 10`.

use anyhow::{Context as _, bail, ensure};
use kizuna::auth::key_digest;
use kizuna_tests::bench::{BenchDir, Lcg, parse_args_with_text, print_machine, run_in_dir};
use kizuna_tests::datagen::{self, Spec};
use kizuna_tests::load::{self, Load, LoadResult, Request};
use kizuna_tests::spin::{SpinApp, spin_binary, workspace_root};
use rusqlite::OpenFlags;
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const KEY: &str = "bench-spin-admin-key";
/// `whsec_` + base64 of `bench-spin-orders-secret-key`.
const ORDERS_SECRET: &str = "whsec_YmVuY2gtc3Bpbi1vcmRlcnMtc2VjcmV0LWtleQ==";
const USAGE: &str = "usage: bench-spin [--contacts N] [--orders M] [--runs R] [--seconds S] [--mixed-seconds S] [--seed S] [--only TEXT] [--million PATH] [--dir PATH] [--keep]";
const CONNECTIONS: [u32; 2] = [4, 16];
const MIXED_CONNECTIONS: u32 = 64;
/// A contact with at least this many available points can be a redeemer.
const REDEEMER_POINTS: i64 = 300;

struct Options {
    contacts: u64,
    orders: u64,
    runs: u64,
    seconds: u64,
    mixed_seconds: u64,
    seed: u64,
    only: Option<String>,
    million: Option<PathBuf>,
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    let (mut contacts, mut orders, mut runs, mut seconds, mut mixed_seconds, mut seed) =
        (100_000, 300_000, 3, 10, 60, 1);
    let (mut only, mut million) = (None, None);
    let Some(dir) = parse_args_with_text(
        USAGE,
        &mut [
            ("--contacts", &mut contacts),
            ("--orders", &mut orders),
            ("--runs", &mut runs),
            ("--seconds", &mut seconds),
            ("--mixed-seconds", &mut mixed_seconds),
            ("--seed", &mut seed),
        ],
        &mut [("--only", &mut only), ("--million", &mut million)],
    )?
    else {
        return Ok(());
    };
    let options = Options {
        contacts,
        orders,
        runs: runs.max(1),
        seconds: seconds.max(1),
        mixed_seconds: mixed_seconds.max(1),
        seed,
        only,
        million: million.map(PathBuf::from),
        keep: dir.keep,
    };
    let BenchDir { dir, keep } = dir;
    run_in_dir(&BenchDir { dir, keep }, |dir| run(&options, dir))
}

// ---------------------------------------------------------------- scenarios

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hello,
    Insert,
    ContactById,
    ContactByPhone,
    PointsBalance,
    SegmentCount,
    SegmentCsv,
    FormPost,
    OrderWebhook,
    Redeem,
}

/// What a scenario is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Baseline,
    Read,
    Write,
}

impl Kind {
    const ALL: [Kind; 10] = [
        Kind::Hello,
        Kind::Insert,
        Kind::ContactById,
        Kind::ContactByPhone,
        Kind::PointsBalance,
        Kind::SegmentCount,
        Kind::SegmentCsv,
        Kind::FormPost,
        Kind::OrderWebhook,
        Kind::Redeem,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Insert => "bare insert",
            Kind::ContactById => "contact by id",
            Kind::ContactByPhone => "contact by phone",
            Kind::PointsBalance => "points balance",
            Kind::SegmentCount => "segment count",
            Kind::SegmentCsv => "segment csv",
            Kind::FormPost => "form post",
            Kind::OrderWebhook => "order webhook",
            Kind::Redeem => "redeem",
        }
    }

    fn family(self) -> Family {
        match self {
            Kind::Hello | Kind::Insert => Family::Baseline,
            Kind::FormPost | Kind::OrderWebhook | Kind::Redeem => Family::Write,
            _ => Family::Read,
        }
    }

    /// The baseline this scenario's figures are divided by.
    fn baseline(self) -> Option<Kind> {
        match self.family() {
            Family::Baseline => None,
            Family::Read => Some(Kind::Hello),
            Family::Write => Some(Kind::Insert),
        }
    }

    /// A first guess of requests/s, to size the request file (3× this ×
    /// seconds); raised to what was seen once measured.
    fn first_estimate(self) -> f64 {
        match self {
            Kind::Hello => 8_000.0,
            Kind::SegmentCount | Kind::SegmentCsv => 200.0,
            Kind::Insert | Kind::FormPost | Kind::OrderWebhook | Kind::Redeem => 1_000.0,
            _ => 3_000.0,
        }
    }
}

/// The ids and values requests are made of, read from the database.
struct Fixtures {
    contact_ids: Vec<String>,
    phones: Vec<String>,
    points_ids: Vec<String>,
    redeemers: Vec<String>,
    buyer_emails: Vec<String>,
    segment_id: String,
}

/// Makes requests; every write gets the next number, so no two writes in
/// the whole bench are alike.
struct Generator {
    lcg: Lcg,
    next_write: u64,
}

impl Generator {
    fn pick<'a>(&mut self, values: &'a [String]) -> &'a str {
        &values[usize::try_from(self.lcg.below(values.len() as u64)).expect("an index")]
    }

    fn write_number(&mut self) -> u64 {
        self.next_write += 1;
        self.next_write
    }

    fn request(&mut self, kind: Kind, fixtures: &Fixtures) -> Request {
        let auth = format!("Bearer {KEY}");
        match kind {
            Kind::Hello => Request::get("/hello"),
            Kind::Insert => {
                let n = self.write_number();
                Request::post(
                    "/insert",
                    json!({"n": n, "email": format!("bench-{n}@bench.example.jp")}).to_string(),
                )
                .header("Content-Type", "application/json")
            }
            Kind::ContactById => {
                Request::get(format!("/v1/contacts/{}", self.pick(&fixtures.contact_ids)))
                    .header("Authorization", auth)
            }
            Kind::ContactByPhone => Request::get(format!(
                "/v1/contacts?phone={}",
                self.pick(&fixtures.phones)
            ))
            .header("Authorization", auth),
            Kind::PointsBalance => {
                Request::get(format!("/v1/points/{}", self.pick(&fixtures.points_ids)))
                    .header("Authorization", auth)
            }
            Kind::SegmentCount => {
                Request::get(format!("/v1/segments/{}/count", fixtures.segment_id))
                    .header("Authorization", auth)
            }
            Kind::SegmentCsv => Request::get(format!(
                "/v1/segments/{}/contacts?format=csv&limit=10000",
                fixtures.segment_id
            ))
            .header("Authorization", auth),
            Kind::FormPost => {
                let n = self.write_number();
                let body = json!({
                    "email": format!("bench-{n}@bench.example.jp"),
                    "family_name": "山田", "given_name": "花子",
                    "consent_email": true,
                    "utm_source": "bench", "utm_campaign": "bench-spin",
                });
                Request::post("/v1/forms/bench-spin", body.to_string())
                    .header("Content-Type", "application/json")
                    .header("Accept", "application/json")
                    .header(
                        "X-Forwarded-For",
                        format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
                    )
            }
            Kind::OrderWebhook => {
                let n = self.write_number();
                let email = self.pick(&fixtures.buyer_emails).to_owned();
                order_webhook(n, &email)
            }
            Kind::Redeem => {
                let n = self.write_number();
                let contact = self.pick(&fixtures.redeemers);
                Request::post(
                    "/v1/points/redeem",
                    json!({"contact_id": contact, "points": 1, "order_ref": format!("BR-{n}")})
                        .to_string(),
                )
                .header("Authorization", auth)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", format!("bench-redeem-{n}"))
            }
        }
    }

    /// 70 % reads (by id, by phone, points balance), 20 % forms, 10 %
    /// webhooks.
    fn mixed(&mut self, fixtures: &Fixtures) -> Request {
        let kind = match self.lcg.below(100) {
            0..70 => [Kind::ContactById, Kind::ContactByPhone, Kind::PointsBalance]
                [usize::try_from(self.lcg.below(3)).expect("an index")],
            70..90 => Kind::FormPost,
            _ => Kind::OrderWebhook,
        };
        self.request(kind, fixtures)
    }
}

/// A signed Standard Webhooks `order.paid` of 5 lines, id `BENCH-{n}`.
fn order_webhook(n: u64, email: &str) -> Request {
    let now = time::OffsetDateTime::now_utc();
    let order_id = format!("BENCH-{n}");
    let lines = [
        ("TEA-01", "煎茶", "tea", 2, 1200),
        ("TEA-05", "ほうじ茶", "tea", 1, 900),
        ("SWEETS-02", "羊羹", "sweets", 1, 1500),
        ("WARE-03", "湯呑み", "tableware", 1, 2400),
        ("SWEETS-07", "最中", "sweets", 3, 400),
    ];
    let subtotal: i64 = lines.iter().map(|l| l.3 * l.4).sum();
    let body = json!({
        "type": "order.paid",
        "data": {
            "id": order_id, "currency": "JPY", "placed_at": kizuna::timestamp::format(now),
            "customer": {"email": email},
            "subtotal": subtotal.to_string(), "shipping": "0", "tax": (subtotal * 8 / 108).to_string(),
            "total": subtotal.to_string(),
            "lines": lines.iter().map(|(sku, name, category, quantity, price)| json!({
                "sku": sku, "name": name, "category": category,
                "quantity": quantity, "unit_price": price.to_string()
            })).collect::<Vec<_>>()
        }
    })
    .to_string();
    let message_id = format!("msg_bench_{n}");
    let ts = now.unix_timestamp();
    let signature =
        kizuna::signatures::sign_standard(ORDERS_SECRET, &message_id, ts, body.as_bytes());
    Request::post("/v1/webhooks/orders", body)
        .header("Content-Type", "application/json")
        .header("webhook-id", message_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
}

// ---------------------------------------------------------------- measuring

/// One scenario at one connection count and mode, over its runs.
struct Row {
    kind: Kind,
    label: String,
    connections: u32,
    close: bool,
    runs: Vec<LoadResult>,
    /// Writes answered 2xx but absent from the database.
    lost: u64,
    /// A run wrapped around its writes: duplicates, so counts are inexact.
    inexact: bool,
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        f64::midpoint(values[mid - 1], values[mid])
    }
}

impl Row {
    fn per_second(&self) -> f64 {
        median(self.runs.iter().map(LoadResult::per_second).collect())
    }
    fn p50(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p50_ms).collect())
    }
    fn p99(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p99_ms).collect())
    }
    fn sum(&self, f: impl Fn(&LoadResult) -> u64) -> u64 {
        self.runs.iter().map(f).sum()
    }
    /// Requests/s, or a note when no request finished within a run
    /// (a route slower than the run: raise `--seconds`).
    fn per_second_text(&self) -> String {
        if self.sum(|r| r.requests) == 0 {
            "none finished".to_owned()
        } else {
            format!("{:.1}", self.per_second())
        }
    }
    fn mode(&self) -> &'static str {
        if self.close { "close" } else { "keep-alive" }
    }
}

const HEADER: &str = "| scenario | conns | mode | req/s | p50 ms | p99 ms | responses | non-2xx | 5xx | socket errors | wraps | lost writes |";
const RULE: &str = "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

fn row_line(row: &Row) -> String {
    format!(
        "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {}{} |",
        row.label,
        row.connections,
        row.mode(),
        row.per_second_text(),
        row.p50(),
        row.p99(),
        row.sum(|r| r.requests),
        row.sum(|r| r.requests - r.class(2)),
        row.sum(|r| r.class(5)),
        row.sum(|r| r.socket_errors.total()),
        row.sum(|r| r.wraps),
        row.lost,
        if row.inexact { " (inexact)" } else { "" },
    )
}

/// The database rows a kind of write leaves, to count before and after.
fn stored_count(db: &Path, kind: Kind) -> anyhow::Result<Option<i64>> {
    let sql = match kind {
        Kind::FormPost => {
            "SELECT count(*) FROM contacts WHERE email LIKE 'bench-%@bench.example.jp'"
        }
        Kind::Redeem => {
            "SELECT count(*) FROM points_entries WHERE kind = 'redeem' AND order_ref LIKE 'BR-%'"
        }
        Kind::Insert => "SELECT count(*) FROM bench_inserts",
        _ => return Ok(None),
    };
    let connection = read_only(db)?;
    Ok(Some(connection.query_row(sql, [], |r| r.get(0))?))
}

fn read_only(db: &Path) -> anyhow::Result<rusqlite::Connection> {
    let connection = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("failed to open {}", db.display()))?;
    connection.busy_timeout(Duration::from_secs(30))?;
    Ok(connection)
}

/// Order ids answered 2xx but not stored.
fn missing_orders(db: &Path, ids: &[String]) -> anyhow::Result<u64> {
    let connection = read_only(db)?;
    let mut statement = connection.prepare("SELECT count(*) FROM orders WHERE id = ?1")?;
    let mut missing = 0;
    for id in ids {
        let n: i64 = statement.query_row([id], |r| r.get(0))?;
        if n == 0 {
            missing += 1;
            if missing <= 3 {
                eprintln!("lost write: order {id} was answered 2xx but is not stored");
            }
        }
    }
    Ok(missing)
}

/// Where an app is and what its requests are made of.
struct Target<'a> {
    addr: std::net::SocketAddr,
    db: PathBuf,
    fixtures: &'a Fixtures,
    /// Appended to the scenario's name (`" (1M)"`).
    suffix: &'static str,
}

struct Bench<'a> {
    options: &'a Options,
    work_dir: PathBuf,
    generator: Generator,
    estimates: Vec<(Kind, f64)>,
    rows: Vec<Row>,
}

impl Bench<'_> {
    fn estimate(&self, kind: Kind) -> f64 {
        self.estimates
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(kind.first_estimate(), |(_, e)| *e)
    }

    fn raise_estimate(&mut self, kind: Kind, seen: f64) {
        match self.estimates.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, e)) => *e = e.max(seen),
            None => self.estimates.push((kind, kind.first_estimate().max(seen))),
        }
    }

    fn measure(
        &mut self,
        kind: Kind,
        target: &Target<'_>,
        connections: u32,
        close: bool,
    ) -> anyhow::Result<()> {
        let mut row = Row {
            kind,
            label: format!("{}{}", kind.name(), target.suffix),
            connections,
            close,
            runs: Vec::new(),
            lost: 0,
            inexact: false,
        };
        for _ in 0..self.options.runs {
            let seconds = self.options.seconds;
            let count = (3.0 * self.estimate(kind) * seconds as f64) as usize;
            let count = if kind.family() == Family::Write || kind == Kind::Insert {
                count.max(2_000)
            } else {
                count.clamp(2_000, 100_000)
            };
            let requests: Vec<Request> = (0..count)
                .map(|_| self.generator.request(kind, target.fixtures))
                .collect();
            let before = stored_count(&target.db, kind)?;
            let load = Load {
                addr: target.addr,
                connections,
                duration: Duration::from_secs(seconds),
                close,
                timeout: Duration::from_secs(60),
                capture: (kind == Kind::OrderWebhook).then_some("order_id"),
                work_dir: self.work_dir.clone(),
            };
            let result = load::run(&load, &requests)?;
            drop(requests);
            self.raise_estimate(kind, result.per_second());
            let writes = kind.family() == Family::Write || kind == Kind::Insert;
            if writes && result.wraps > 0 {
                row.inexact = true;
            }
            let lost = match (kind, before, stored_count(&target.db, kind)?) {
                (Kind::OrderWebhook, ..) => missing_orders(&target.db, &result.captured)?,
                (_, Some(before), Some(after)) => {
                    let stored = u64::try_from(after - before).unwrap_or(0);
                    result.class(2).saturating_sub(stored)
                }
                _ => 0,
            };
            if lost > 0 && !row.inexact {
                eprintln!(
                    "{}: {} answered 2xx, {lost} of them not stored",
                    row.label,
                    result.class(2)
                );
            }
            if !row.inexact {
                row.lost += lost;
            }
            for sample in &result.samples {
                println!("    {}: {sample}", row.label);
            }
            row.runs.push(result);
        }
        println!("{}", row_line(&row));
        self.rows.push(row);
        Ok(())
    }

    fn find(&self, kind: Kind, suffix: &str, connections: u32, close: bool) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.kind == kind
                && r.label.ends_with(suffix)
                && r.connections == connections
                && r.close == close
        })
    }
}

// ---------------------------------------------------------------- set-up

fn variables() -> Vec<(String, String)> {
    [
        (
            "api_keys",
            json!([{"name": "bench", "sha256": key_digest(KEY), "scopes": ["*"]}]).to_string(),
        ),
        ("unsubscribe_secret", "bench-spin-unsubscribe-secret".into()),
        ("orders_webhook_secrets", ORDERS_SECRET.into()),
        (
            "shopify_webhook_secrets",
            "bench-spin-unused-shopify-secret".into(),
        ),
        (
            "woocommerce_webhook_secrets",
            "bench-spin-unused-woo-secret".into(),
        ),
        // The form posts play many clients behind one proxy (the bench),
        // each from its own address: none is rate limited.
        ("trusted_proxies", "127.0.0.0/8".into()),
        // Every answer says where its time went (see `timing_phase`).
        ("server_timing", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn build() -> anyhow::Result<()> {
    let root = workspace_root();
    let target = root.join("target");
    let started = Instant::now();
    println!(
        "building the components (spin build, CARGO_TARGET_DIR={})",
        target.display()
    );
    let status = Command::new(spin_binary())
        .arg("build")
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .context("failed to run spin build")?;
    ensure!(status.success(), "spin build failed");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--release",
            "-p",
            "kizuna-baseline-hello",
            "-p",
            "kizuna-baseline-bare-insert",
        ])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .context("failed to build the baselines")?;
    ensure!(status.success(), "building the baselines failed");
    println!("built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn agent() -> ureq::Agent {
    kizuna_tests::bench::http_agent()
}

/// One JSON request with the bench key; the answer's body.
fn call(agent: &ureq::Agent, method: &str, url: &str, body: Option<Json>) -> anyhow::Result<Json> {
    kizuna_tests::bench::call_json(agent, KEY, method, url, body)
}

/// Saves the three-condition segment; its id and member count.
fn create_segment(base: &str) -> anyhow::Result<(String, u64)> {
    let agent = agent();
    let segment = call(
        &agent,
        "POST",
        &format!("{base}/v1/segments"),
        Some(json!({
            "name": "bench-spin: recent buyers with an email",
            "definition": {"all": [
                {"field": "has_email", "op": "eq", "value": true},
                {"field": "order_count", "op": "gte", "value": 1},
                {"field": "last_order_at", "op": "within_last_days", "value": 365}
            ]}
        })),
    )?;
    let id = segment["id"].as_str().context("segment id")?.to_owned();
    let count = call(
        &agent,
        "GET",
        &format!("{base}/v1/segments/{id}/count"),
        None,
    )?;
    let members = count["count"]
        .as_u64()
        .with_context(|| format!("no count in {count}"))?;
    Ok((id, members))
}

/// Reads the ids requests are made of from the generated database.
fn fixtures(db: &Path, seed: u64) -> anyhow::Result<Fixtures> {
    let connection = read_only(db)?;
    let column = |sql: &str| -> anyhow::Result<Vec<String>> {
        let mut statement = connection.prepare(sql)?;
        let values = statement
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(values)
    };
    // A reproducible sample of about 20,000 of each.
    let sample = |values: Vec<String>| -> Vec<String> {
        let mut lcg = Lcg(seed);
        let step = (values.len() / 20_000).max(1) as u64;
        let offset = usize::try_from(lcg.below(step)).expect("an offset");
        values
            .into_iter()
            .skip(offset)
            .step_by(step as usize)
            .collect()
    };
    let now = kizuna::timestamp::format(time::OffsetDateTime::now_utc());
    let redeemers = {
        let mut statement = connection.prepare(
            "SELECT l.contact_id FROM points_lots l
             JOIN points_accounts a ON a.contact_id = l.contact_id AND a.debt = 0
             WHERE l.remaining > 0 AND l.available_at <= ?1
               AND (l.expires_at IS NULL OR l.expires_at > ?1)
             GROUP BY l.contact_id HAVING sum(l.remaining) >= ?2
             ORDER BY l.contact_id LIMIT 5000",
        )?;
        statement
            .query_map(rusqlite::params![now, REDEEMER_POINTS], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?
    };
    let fixtures = Fixtures {
        contact_ids: sample(column("SELECT id FROM contacts ORDER BY id")?),
        // Staff type the national format: +81 90… is 090….
        phones: sample(column(
            "SELECT '0' || substr(phone, 4) FROM contacts WHERE phone LIKE '+81%' ORDER BY id",
        )?),
        points_ids: sample(column(
            "SELECT contact_id FROM points_accounts ORDER BY contact_id",
        )?),
        redeemers,
        buyer_emails: sample(column(
            "SELECT email FROM contacts WHERE email IS NOT NULL AND order_count > 0 ORDER BY id",
        )?),
        segment_id: String::new(),
    };
    for (name, values) in [
        ("contact ids", &fixtures.contact_ids),
        ("phones", &fixtures.phones),
        ("points accounts", &fixtures.points_ids),
        ("redeemers", &fixtures.redeemers),
        ("buyer emails", &fixtures.buyer_emails),
    ] {
        ensure!(!values.is_empty(), "the generated shop has no {name}");
    }
    println!(
        "fixtures: {} contact ids, {} phones, {} points accounts, {} redeemers (≥ {REDEEMER_POINTS} points), {} buyer emails",
        fixtures.contact_ids.len(),
        fixtures.phones.len(),
        fixtures.points_ids.len(),
        fixtures.redeemers.len(),
        fixtures.buyer_emails.len()
    );
    Ok(fixtures)
}

/// Migrates a fresh state folder with Kizuna's own first request under
/// Spin (the schema comes from the components being measured).
fn migrate(state: &Path) -> anyhow::Result<()> {
    let spin = SpinApp::start(state, &variables())?;
    call(
        &agent(),
        "GET",
        &format!("{}/v1/segments", spin.url()),
        None,
    )?;
    Ok(())
}

/// The baseline app's state folder: `bench_inserts` in a WAL file.
fn prepare_baselines(state: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(state)?;
    let connection = rusqlite::Connection::open(state.join("sqlite_db.db"))?;
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    ensure!(mode == "wal", "the baseline file refused WAL: {mode}");
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS bench_inserts (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
    )?;
    Ok(())
}

/// Lines of Spin's logs (and the components' stderr) that look like
/// errors.
fn log_errors(state: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for dir in [state.to_owned(), state.join("logs")] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("spin-up-") || name.ends_with("stderr.txt") {
                    files.push(entry.path());
                }
            }
        }
    }
    let mut lines = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let lower = line.to_lowercase();
            if ["error", "panic", "trap", "warn"]
                .iter()
                .any(|w| lower.contains(w))
            {
                lines.push(format!("{}: {line}", file.display()));
            }
        }
    }
    lines
}

// ---------------------------------------------------------------- the run

fn selected(options: &Options, name: &str) -> bool {
    options
        .only
        .as_deref()
        .is_none_or(|only| name.contains(only))
}

fn run(options: &Options, dir: &Path) -> anyhow::Result<()> {
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "bench-spin: {} contacts, {} orders, {} runs × {} s per figure (median), mixed {} s at {MIXED_CONNECTIONS} connections",
        options.contacts, options.orders, options.runs, options.seconds, options.mixed_seconds
    );
    print_machine();
    load::ensure_wrk()?;
    build()?;

    let kizuna_state = dir.to_owned();
    let baseline_state = dir.join("baselines");
    let million_state = dir.join("million");
    let work_dir = dir.join("wrk");

    // Fresh state: migrate under Spin, then fill the file.
    let started = Instant::now();
    migrate(&kizuna_state)?;
    let db = kizuna_state.join("sqlite_db.db");
    let spec = Spec {
        contacts: options.contacts,
        orders: options.orders,
        seed: options.seed,
        now: time::OffsetDateTime::now_utc(),
    };
    let generated = datagen::generate(&db, &spec)?;
    println!(
        "datagen: {} contacts, {} orders, {} points lots in {:.1} s",
        generated.contacts,
        generated.orders,
        generated.lots,
        started.elapsed().as_secs_f64()
    );
    let mut fixtures = fixtures(&db, options.seed)?;

    let kizuna = SpinApp::start(&kizuna_state, &variables())?;
    let base = kizuna.url();
    let program = call(
        &agent(),
        "PUT",
        &format!("{base}/v1/points/program"),
        Some(json!({
            "earn_rate": {"points": 1, "per_minor": 100}, "earn_base": "subtotal",
            "category_multipliers": {"tea": 2}, "min_redeem": 1
        })),
    )?;
    println!(
        "points program: version {} (earning on order webhooks)",
        program["version"]
    );
    let (segment_id, members) = create_segment(&base)?;
    println!(
        "saved segment {segment_id}: {members} members (has email, ≥ 1 order, last order within 365 days)"
    );
    if members < 10_000 {
        println!("note: fewer than 10,000 members, so the CSV page holds {members} rows");
    }
    fixtures.segment_id = segment_id;

    prepare_baselines(&baseline_state)?;
    let baselines = SpinApp::start_manifest(
        &workspace_root().join("tests/baselines/spin.toml"),
        &baseline_state,
        &[],
    )?;
    println!("Kizuna at {base}, baselines at {}", baselines.url());

    let mut bench = Bench {
        options,
        work_dir: work_dir.clone(),
        generator: Generator {
            lcg: Lcg(options.seed),
            next_write: 0,
        },
        estimates: Vec::new(),
        rows: Vec::new(),
    };
    let kizuna_target = Target {
        addr: kizuna.addr,
        db: db.clone(),
        fixtures: &fixtures,
        suffix: "",
    };
    let baseline_target = Target {
        addr: baselines.addr,
        db: baseline_state.join("sqlite_db.db"),
        fixtures: &fixtures,
        suffix: "",
    };
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|kind| match kind.family() {
            Family::Baseline => {
                selected(options, kind.name())
                    || Kind::ALL
                        .iter()
                        .any(|k| k.baseline() == Some(*kind) && selected(options, k.name()))
            }
            _ => selected(options, kind.name()),
        })
        .collect();
    println!();
    println!("{HEADER}");
    println!("{RULE}");
    for kind in &kinds {
        let target = if kind.family() == Family::Baseline {
            &baseline_target
        } else {
            &kizuna_target
        };
        for close in [false, true] {
            for connections in CONNECTIONS {
                bench.measure(*kind, target, connections, close)?;
            }
        }
    }

    // Where one request's time goes, stage by stage.
    timing_phase(&mut bench, &kizuna_target, &kinds)?;

    // The mixed phase.
    let mixed = if selected(options, "mixed") {
        Some(mixed_phase(&mut bench, &kizuna_target)?)
    } else {
        None
    };

    // A million contacts, if given.
    let mut million_app = None;
    if let Some(path) = &options.million {
        let segment_kinds: Vec<Kind> = [Kind::SegmentCount, Kind::SegmentCsv]
            .into_iter()
            .filter(|k| selected(options, k.name()))
            .collect();
        if !segment_kinds.is_empty() {
            std::fs::create_dir_all(&million_state)?;
            for suffix in ["", "-wal"] {
                let from = kizuna_tests::bench::with_suffix(path, suffix);
                if from.exists() {
                    std::fs::copy(&from, million_state.join(format!("sqlite_db.db{suffix}")))
                        .with_context(|| format!("failed to copy {}", from.display()))?;
                }
            }
            let app = SpinApp::start(&million_state, &variables())?;
            let (segment_id, members) = create_segment(&app.url())?;
            println!("1M: saved segment {segment_id}: {members} members");
            let million_fixtures = Fixtures {
                segment_id,
                ..fixtures_for_segments_only()
            };
            let target = Target {
                addr: app.addr,
                db: million_state.join("sqlite_db.db"),
                fixtures: &million_fixtures,
                suffix: " (1M)",
            };
            for kind in segment_kinds {
                for close in [false, true] {
                    for connections in CONNECTIONS {
                        bench.measure(kind, &target, connections, close)?;
                    }
                }
            }
            million_app = Some(app);
        }
    }

    report(&bench, mixed.as_ref());
    let errors: Vec<String> = [&kizuna_state, &baseline_state, &million_state]
        .iter()
        .flat_map(|state| log_errors(state))
        .collect();
    println!();
    if errors.is_empty() {
        println!("Spin logs: no errors, warnings, panics or traps");
    } else {
        println!(
            "Spin logs: {} lines with errors or warnings (first 20):",
            errors.len()
        );
        for line in errors.iter().take(20) {
            println!("  {line}");
        }
    }
    drop(million_app);
    drop(baselines);
    drop(kizuna);
    if !options.keep {
        for folder in [&baseline_state, &million_state, &work_dir] {
            if folder.exists() {
                std::fs::remove_dir_all(folder)?;
            }
        }
    }

    let kizuna_5xx: u64 = bench
        .rows
        .iter()
        .filter(|r| r.kind.family() != Family::Baseline)
        .map(|r| r.sum(|run| run.class(5)))
        .sum::<u64>()
        + mixed.as_ref().map_or(0, |m| m.result.class(5));
    let lost: u64 = bench
        .rows
        .iter()
        .filter(|r| r.kind.family() != Family::Baseline)
        .map(|r| r.lost)
        .sum::<u64>()
        + mixed.as_ref().map_or(0, |m| m.lost_forms + m.lost_orders);
    if kizuna_5xx > 0 || lost > 0 {
        bail!("Kizuna answered {kizuna_5xx} 5xx and lost {lost} writes");
    }
    Ok(())
}

/// Requests sent one at a time per scenario to read their stages.
const TIMING_SAMPLES: usize = 300;

/// One request at a time (no queueing), per Kizuna scenario: the median
/// of each stage its `Server-Timing` answer reports (body read, settings,
/// connection from the pool or opened, SQL statements, the rest of the
/// handler, the whole component), beside the client's round trip.
fn timing_phase(bench: &mut Bench<'_>, target: &Target<'_>, kinds: &[Kind]) -> anyhow::Result<()> {
    println!();
    println!(
        "## Where one request's time goes (median of {TIMING_SAMPLES} sequential requests, keep-alive, ms)"
    );
    println!(
        "| scenario | read | settings | connection | sql | statements | app | component total | round trip | opened |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let agent = agent();
    for kind in kinds.iter().filter(|k| k.family() != Family::Baseline) {
        let samples = if matches!(kind, Kind::SegmentCount | Kind::SegmentCsv) {
            TIMING_SAMPLES / 10
        } else {
            TIMING_SAMPLES
        };
        let mut stages: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        let mut statements = Vec::new();
        let mut round_trips = Vec::new();
        let mut opened = 0;
        for _ in 0..samples {
            let request = bench.generator.request(*kind, target.fixtures);
            let mut builder = http::Request::builder()
                .method(request.method)
                .uri(format!("http://{}{}", target.addr, request.path));
            for (name, value) in &request.headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            let started = Instant::now();
            let mut response = agent.run(builder.body(request.body)?)?;
            response.body_mut().read_to_vec()?;
            round_trips.push(started.elapsed().as_secs_f64() * 1000.0);
            let timing = response
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            for stage in timing.split(", ") {
                let mut fields = stage.split(';');
                let name = fields.next().unwrap_or("").to_owned();
                for field in fields {
                    if let Some(ms) = field.strip_prefix("dur=") {
                        stages
                            .entry(name.clone())
                            .or_default()
                            .push(ms.parse().unwrap_or(0.0));
                    } else if let Some(text) = field.strip_prefix("desc=") {
                        let text = text.trim_matches('"');
                        if let Some(n) = text.strip_suffix(" statements") {
                            statements.push(n.parse::<f64>().unwrap_or(0.0));
                        }
                        if text == "opened" {
                            opened += 1;
                        }
                    }
                }
            }
        }
        let stage = |name: &str| stages.get(name).map_or(f64::NAN, |v| median(v.clone()));
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.3} | {opened}/{samples} |",
            kind.name(),
            stage("read"),
            stage("settings"),
            stage("connection"),
            stage("sql"),
            median(statements),
            stage("app"),
            stage("total"),
            median(round_trips),
        );
    }
    Ok(())
}

fn fixtures_for_segments_only() -> Fixtures {
    Fixtures {
        contact_ids: Vec::new(),
        phones: Vec::new(),
        points_ids: Vec::new(),
        redeemers: Vec::new(),
        buyer_emails: Vec::new(),
        segment_id: String::new(),
    }
}

struct Mixed {
    result: LoadResult,
    forms_2xx: u64,
    forms_stored: i64,
    orders_2xx: u64,
    lost_forms: u64,
    lost_orders: u64,
    inexact: bool,
}

fn mixed_phase(bench: &mut Bench<'_>, target: &Target<'_>) -> anyhow::Result<Mixed> {
    let seconds = bench.options.mixed_seconds;
    let rate = [Kind::ContactById, Kind::FormPost, Kind::OrderWebhook]
        .iter()
        .map(|k| bench.estimate(*k))
        .fold(1_000.0, f64::max);
    let count = ((3.0 * rate * seconds as f64) as usize).clamp(5_000, 400_000);
    println!();
    println!(
        "mixed: {seconds} s at {MIXED_CONNECTIONS} connections, keep-alive, 70 % reads / 20 % forms / 10 % webhooks ({count} requests prepared)"
    );
    let requests: Vec<Request> = (0..count)
        .map(|_| bench.generator.mixed(target.fixtures))
        .collect();
    let before = stored_count(&target.db, Kind::FormPost)?.unwrap_or(0);
    let load = Load {
        addr: target.addr,
        connections: MIXED_CONNECTIONS,
        duration: Duration::from_secs(seconds),
        close: false,
        timeout: Duration::from_secs(60),
        capture: Some("order_id"),
        work_dir: bench.work_dir.clone(),
    };
    let result = load::run(&load, &requests)?;
    drop(requests);
    for sample in &result.samples {
        println!("    mixed: {sample}");
    }
    let after = stored_count(&target.db, Kind::FormPost)?.unwrap_or(0);
    let forms_stored = after - before;
    // Only form posts answer 202; only webhooks answer with an order id.
    let forms_2xx = result.code(202);
    let orders_2xx = result.captured.len() as u64;
    let inexact = result.wraps > 0;
    let lost_forms = if inexact {
        0
    } else {
        forms_2xx.saturating_sub(u64::try_from(forms_stored).unwrap_or(0))
    };
    let lost_orders = missing_orders(&target.db, &result.captured)?;
    Ok(Mixed {
        result,
        forms_2xx,
        forms_stored,
        orders_2xx,
        lost_forms,
        lost_orders,
        inexact,
    })
}

fn ratio_text(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}")
    } else {
        "–".to_owned()
    }
}

fn report(bench: &Bench<'_>, mixed: Option<&Mixed>) {
    println!();
    println!(
        "## All figures (median of runs; ratios against the baseline at the same connections and mode: reads / hello, writes / bare insert)"
    );
    println!();
    println!(
        "| scenario | conns | mode | req/s | p50 ms | p99 ms | non-2xx | 5xx | req/s ÷ baseline | p99 ÷ baseline |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &bench.rows {
        let baseline = row
            .kind
            .baseline()
            .and_then(|b| bench.find(b, "", row.connections, row.close));
        let (speed, p99) = baseline.map_or((f64::NAN, f64::NAN), |b| {
            (row.per_second() / b.per_second(), row.p99() / b.p99())
        });
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} |",
            row.label,
            row.connections,
            row.mode(),
            row.per_second_text(),
            row.p50(),
            row.p99(),
            row.sum(|r| r.requests - r.class(2)),
            row.sum(|r| r.class(5)),
            ratio_text(speed),
            ratio_text(p99),
        );
    }

    println!();
    println!("## Goals (figures, not assertions)");
    println!();
    println!("| goal | measured | target | met |");
    println!("|---|---:|---:|:---:|");
    let goal = |text: String, measured: Option<f64>, target: f64, at_least: bool| {
        let (value, met) = match measured {
            Some(v) if v.is_finite() => (
                format!("{v:.2}"),
                if (at_least && v >= target) || (!at_least && v <= target) {
                    "✓"
                } else {
                    "✗"
                },
            ),
            _ => ("not measured".to_owned(), "–"),
        };
        let target = format!("{} {target}", if at_least { "≥" } else { "≤" });
        println!("| {text} | {value} | {target} | {met} |");
    };
    let ratio = |kind: Kind, connections: u32, f: fn(&Row) -> f64| -> Option<f64> {
        let row = bench.find(kind, "", connections, false)?;
        let base = bench.find(kind.baseline()?, "", connections, false)?;
        Some(f(row) / f(base))
    };
    for kind in [Kind::ContactById, Kind::ContactByPhone, Kind::PointsBalance] {
        goal(
            format!("{} req/s ÷ hello (16 conns, keep-alive)", kind.name()),
            ratio(kind, 16, Row::per_second),
            0.35,
            true,
        );
    }
    for (kind, target) in [
        (Kind::FormPost, 0.6),
        (Kind::OrderWebhook, 0.35),
        (Kind::Redeem, 0.5),
    ] {
        goal(
            format!("{} req/s ÷ bare insert (4 conns, keep-alive)", kind.name()),
            ratio(kind, 4, Row::per_second),
            target,
            true,
        );
    }
    for kind in [Kind::FormPost, Kind::OrderWebhook, Kind::Redeem] {
        goal(
            format!(
                "{} p99 ÷ bare insert p99 (4 conns, keep-alive)",
                kind.name()
            ),
            ratio(kind, 4, Row::p99),
            3.0,
            false,
        );
    }
    if let Some(m) = mixed {
        goal(
            "mixed: 5xx".to_owned(),
            Some(m.result.class(5) as f64),
            0.0,
            false,
        );
        goal(
            "mixed: lost writes".to_owned(),
            Some((m.lost_forms + m.lost_orders) as f64),
            0.0,
            false,
        );
    }

    if let Some(m) = mixed {
        let r = &m.result;
        println!();
        println!("## Mixed ({MIXED_CONNECTIONS} connections, keep-alive)");
        println!();
        println!(
            "{} responses in {:.1} s: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.0} ms; statuses {}; socket errors {} (connect {}, read {}, write {}, timeout {}); wraps {}",
            r.requests,
            r.duration.as_secs_f64(),
            r.per_second(),
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.codes_text(),
            r.socket_errors.total(),
            r.socket_errors.connect,
            r.socket_errors.read,
            r.socket_errors.write,
            r.socket_errors.timeout,
            r.wraps,
        );
        println!(
            "5xx: {}; form posts answered 202: {}, bench contacts added: {} (lost {}); webhooks answered 2xx: {}, of their orders missing: {}{}",
            r.class(5),
            m.forms_2xx,
            m.forms_stored,
            m.lost_forms,
            m.orders_2xx,
            m.lost_orders,
            if m.inexact {
                " (requests wrapped: form count inexact)"
            } else {
                ""
            }
        );
    }
}
