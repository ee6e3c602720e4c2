//! Kizuna's scenarios under real Spin, shared by `bench-spin` and
//! `bench-libsql`: the bench key, secrets and variables, the requests each
//! scenario sends (made afresh, every write unique), the ids they are made
//! of (read from a generated shop), the checks that every write answered
//! 2xx is stored, the `wrk` measurement of one scenario against one or
//! more Spin processes ([`Bench::measure`]), and the per-stage medians of
//! the `Server-Timing` header ([`time_requests`]).

use crate::bench::Lcg;
use crate::load::{self, Load, LoadResult, Request};
use crate::spin::{SpinApp, spin_binary, workspace_root};
use anyhow::{Context as _, ensure};
use kizuna::auth::key_digest;
use rusqlite::OpenFlags;
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The bench's API key (every scope).
pub const KEY: &str = "bench-spin-admin-key";
/// `whsec_` + base64 of `bench-spin-orders-secret-key`.
pub const ORDERS_SECRET: &str = "whsec_YmVuY2gtc3Bpbi1vcmRlcnMtc2VjcmV0LWtleQ==";
/// A contact with at least this many available points can be a redeemer.
pub const REDEEMER_POINTS: i64 = 300;

// ---------------------------------------------------------------- scenarios

/// A scenario: one kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
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
pub enum Family {
    Baseline,
    Read,
    Write,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
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

    pub fn name(self) -> &'static str {
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

    pub fn family(self) -> Family {
        match self {
            Kind::Hello | Kind::Insert => Family::Baseline,
            Kind::FormPost | Kind::OrderWebhook | Kind::Redeem => Family::Write,
            _ => Family::Read,
        }
    }

    /// The baseline this scenario's figures are divided by.
    pub fn baseline(self) -> Option<Kind> {
        match self.family() {
            Family::Baseline => None,
            Family::Read => Some(Kind::Hello),
            Family::Write => Some(Kind::Insert),
        }
    }

    /// A first guess of requests/s, to size the request file (3× this ×
    /// seconds); raised to what was seen once measured.
    pub fn first_estimate(self) -> f64 {
        match self {
            Kind::Hello => 8_000.0,
            Kind::SegmentCount | Kind::SegmentCsv => 200.0,
            Kind::Insert | Kind::FormPost | Kind::OrderWebhook | Kind::Redeem => 1_000.0,
            _ => 3_000.0,
        }
    }
}

/// The ids and values requests are made of, read from the database.
#[derive(Debug, Clone, Default)]
pub struct Fixtures {
    pub contact_ids: Vec<String>,
    pub phones: Vec<String>,
    pub points_ids: Vec<String>,
    pub redeemers: Vec<String>,
    pub buyer_emails: Vec<String>,
    pub segment_id: String,
}

/// Makes requests; every write gets the next number, so no two writes in
/// the whole bench are alike.
pub struct Generator {
    pub lcg: Lcg,
    pub next_write: u64,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            lcg: Lcg(seed),
            next_write: 0,
        }
    }

    pub fn pick<'a>(&mut self, values: &'a [String]) -> &'a str {
        &values[usize::try_from(self.lcg.below(values.len() as u64)).expect("an index")]
    }

    pub fn write_number(&mut self) -> u64 {
        self.next_write += 1;
        self.next_write
    }

    pub fn request(&mut self, kind: Kind, fixtures: &Fixtures) -> Request {
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
    pub fn mixed(&mut self, fixtures: &Fixtures) -> Request {
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
pub fn order_webhook(n: u64, email: &str) -> Request {
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
pub struct Row {
    pub kind: Kind,
    pub label: String,
    pub connections: u32,
    pub close: bool,
    pub runs: Vec<LoadResult>,
    /// Writes answered 2xx but absent from the database.
    pub lost: u64,
    /// A run wrapped around its writes: duplicates, so counts are inexact.
    pub inexact: bool,
}

pub fn median(mut values: Vec<f64>) -> f64 {
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
    pub fn per_second(&self) -> f64 {
        median(self.runs.iter().map(LoadResult::per_second).collect())
    }
    pub fn p50(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p50_ms).collect())
    }
    pub fn p99(&self) -> f64 {
        median(self.runs.iter().map(|r| r.p99_ms).collect())
    }
    pub fn sum(&self, f: impl Fn(&LoadResult) -> u64) -> u64 {
        self.runs.iter().map(f).sum()
    }
    /// Requests/s, or a note when no request finished within a run
    /// (a route slower than the run: raise `--seconds`).
    pub fn per_second_text(&self) -> String {
        if self.sum(|r| r.requests) == 0 {
            "none finished".to_owned()
        } else {
            format!("{:.1}", self.per_second())
        }
    }
    pub fn mode(&self) -> &'static str {
        if self.close { "close" } else { "keep-alive" }
    }
}

pub const HEADER: &str = "| scenario | conns | mode | req/s | p50 ms | p99 ms | responses | non-2xx | 5xx | socket errors | wraps | lost writes |";
pub const RULE: &str = "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

pub fn row_line(row: &Row) -> String {
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
pub fn stored_count(db: &Path, kind: Kind) -> anyhow::Result<Option<i64>> {
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

pub fn read_only(db: &Path) -> anyhow::Result<rusqlite::Connection> {
    let connection = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("failed to open {}", db.display()))?;
    connection.busy_timeout(Duration::from_secs(30))?;
    Ok(connection)
}

/// Order ids answered 2xx but not stored.
pub fn missing_orders(db: &Path, ids: &[String]) -> anyhow::Result<u64> {
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
pub struct Target<'a> {
    /// One address per Spin process serving the same database; a
    /// measurement splits its connections evenly across them.
    pub addrs: Vec<SocketAddr>,
    /// The database file the writes land in, read to check them.
    pub db: PathBuf,
    pub fixtures: &'a Fixtures,
    /// Appended to the scenario's name (`" (1M)"`).
    pub suffix: String,
}

/// The rows measured so far, and what the next requests are made from.
pub struct Bench {
    /// Runs per row (the row holds their medians).
    pub runs: u64,
    /// Seconds per run.
    pub seconds: u64,
    /// Where `wrk`'s request files, scripts and captures go.
    pub work_dir: PathBuf,
    pub generator: Generator,
    pub estimates: Vec<(Kind, f64)>,
    pub rows: Vec<Row>,
}

impl Bench {
    pub fn new(runs: u64, seconds: u64, seed: u64, work_dir: PathBuf) -> Bench {
        Bench {
            runs,
            seconds,
            work_dir,
            generator: Generator::new(seed),
            estimates: Vec::new(),
            rows: Vec::new(),
        }
    }

    pub fn estimate(&self, kind: Kind) -> f64 {
        self.estimates
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(kind.first_estimate(), |(_, e)| *e)
    }

    pub fn raise_estimate(&mut self, kind: Kind, seen: f64) {
        match self.estimates.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, e)) => *e = e.max(seen),
            None => self.estimates.push((kind, kind.first_estimate().max(seen))),
        }
    }

    /// Measures `kind` at `connections` in all (split evenly across the
    /// target's processes, one `wrk` each, all at once), `runs` times,
    /// checks the writes in the database after each run, prints the row
    /// and keeps it.
    pub fn measure(
        &mut self,
        kind: Kind,
        target: &Target<'_>,
        connections: u32,
        close: bool,
    ) -> anyhow::Result<()> {
        ensure!(!target.addrs.is_empty(), "a target needs a Spin process");
        let mut row = Row {
            kind,
            label: format!("{}{}", kind.name(), target.suffix),
            connections,
            close,
            runs: Vec::new(),
            lost: 0,
            inexact: false,
        };
        let processes = u32::try_from(target.addrs.len()).context("too many processes")?;
        for _ in 0..self.runs {
            let seconds = self.seconds;
            let count = (3.0 * self.estimate(kind) * seconds as f64) as usize;
            let count = if kind.family() == Family::Write || kind == Kind::Insert {
                count.max(2_000)
            } else {
                count.clamp(2_000, 100_000)
            };
            // As many requests per process as one would need alone.
            let requests: Vec<Vec<Request>> = target
                .addrs
                .iter()
                .map(|_| {
                    (0..count)
                        .map(|_| self.generator.request(kind, target.fixtures))
                        .collect()
                })
                .collect();
            let before = stored_count(&target.db, kind)?;
            let loads: Vec<Load> = target
                .addrs
                .iter()
                .enumerate()
                .map(|(i, addr)| Load {
                    addr: *addr,
                    connections: (connections / processes).max(1),
                    duration: Duration::from_secs(seconds),
                    close,
                    timeout: Duration::from_secs(60),
                    capture: (kind == Kind::OrderWebhook).then_some("order_id"),
                    work_dir: if processes == 1 {
                        self.work_dir.clone()
                    } else {
                        self.work_dir.join(format!("process-{i}"))
                    },
                })
                .collect();
            let result = run_at_once(&loads, &requests)?;
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

    pub fn find(&self, kind: Kind, suffix: &str, connections: u32, close: bool) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.kind == kind
                && r.label.ends_with(suffix)
                && r.connections == connections
                && r.close == close
        })
    }
}

/// Runs one `wrk` per load, all at once (one alone needs no thread), and
/// combines what they measured with [`combine`].
fn run_at_once(loads: &[Load], requests: &[Vec<Request>]) -> anyhow::Result<LoadResult> {
    if let ([load], [requests]) = (loads, requests) {
        return load::run(load, requests);
    }
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = loads
            .iter()
            .zip(requests)
            .map(|(load, requests)| scope.spawn(move || load::run(load, requests)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a wrk thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    Ok(combine(results))
}

/// What several `wrk` runs at once measured together: responses, statuses,
/// errors and captures summed over the runs, over the longest run's
/// duration (so requests/s is their sum); p50, p99 and max the highest of
/// the runs' (percentiles of the union cannot be had from `wrk`'s
/// summaries).
pub fn combine(results: Vec<LoadResult>) -> LoadResult {
    let mut all = LoadResult::default();
    for result in results {
        all.requests += result.requests;
        all.duration = all.duration.max(result.duration);
        all.p50_ms = all.p50_ms.max(result.p50_ms);
        all.p99_ms = all.p99_ms.max(result.p99_ms);
        all.max_ms = all.max_ms.max(result.max_ms);
        for (code, n) in result.codes {
            *all.codes.entry(code).or_default() += n;
        }
        all.wraps += result.wraps;
        all.socket_errors.connect += result.socket_errors.connect;
        all.socket_errors.read += result.socket_errors.read;
        all.socket_errors.write += result.socket_errors.write;
        all.socket_errors.timeout += result.socket_errors.timeout;
        all.samples.extend(result.samples);
        all.captured.extend(result.captured);
    }
    all
}

// ---------------------------------------------------------------- set-up

// ---------------------------------------------------------------- set-up

/// Kizuna's variables for the benches: the bench key and webhook
/// secrets, every form post's `X-Forwarded-For` trusted (so none is rate
/// limited), and `server_timing=true`.
pub fn variables() -> Vec<(String, String)> {
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
        (
            "webhook_secret_key",
            "bench-spin-webhook-secret-key-0123456789".into(),
        ),
        // The form posts play many clients behind one proxy (the bench),
        // each from its own address: none is rate limited.
        ("trusted_proxies", "127.0.0.0/8".into()),
        // Every answer says where its time went (see `time_requests`).
        ("server_timing", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Builds the current code for `wasm32-wasip2` into the workspace's
/// `target/` (`spin build` of `spin.toml`), and with `baselines` the two
/// baseline components of `tests/baselines/` too.
pub fn build(baselines: bool) -> anyhow::Result<()> {
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
    if !baselines {
        println!("built in {:.0} s", started.elapsed().as_secs_f64());
        return Ok(());
    }
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

/// The HTTP client of the benches under Spin.
pub fn agent() -> ureq::Agent {
    crate::bench::http_agent()
}

/// One JSON request with the bench key; the answer's body.
pub fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<Json>,
) -> anyhow::Result<Json> {
    crate::bench::call_json(agent, KEY, method, url, body)
}

/// Saves the three-condition segment; its id and member count.
pub fn create_segment(base: &str) -> anyhow::Result<(String, u64)> {
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
pub fn fixtures(db: &Path, seed: u64) -> anyhow::Result<Fixtures> {
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
pub fn migrate(state: &Path) -> anyhow::Result<()> {
    let spin = SpinApp::start(state, &variables())?;
    call(
        &agent(),
        "GET",
        &format!("{}/v1/segments", spin.url()),
        None,
    )?;
    Ok(())
}

/// Turns the points program on (earning from order webhooks: 1 point per
/// 100 minor units of the subtotal, tea ×2); the program's answer.
pub fn points_program_on(base: &str) -> anyhow::Result<Json> {
    call(
        &agent(),
        "PUT",
        &format!("{base}/v1/points/program"),
        Some(json!({
            "earn_rate": {"points": 1, "per_minor": 100}, "earn_base": "subtotal",
            "category_multipliers": {"tea": 2}, "min_redeem": 1
        })),
    )
}

/// Lines of Spin's logs (and the components' stderr) that look like
/// errors.
pub fn log_errors(state: &Path) -> Vec<String> {
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

/// Prints what a server's logs held: `clean` when nothing, else the
/// count (with `detail`, e.g. how many are unexpected errors) and the
/// first `first` lines.
pub fn print_log_findings(what: &str, clean: &str, detail: &str, lines: &[String], first: usize) {
    if lines.is_empty() {
        println!("{what}: {clean}");
        return;
    }
    println!(
        "{what}: {} lines with errors or warnings{detail} (first {first}):",
        lines.len()
    );
    for line in lines.iter().take(first) {
        println!("  {line}");
    }
}

/// Whether a scenario or phase called `name` runs under `--only TEXT`
/// (`None`: everything runs).
pub fn selected(only: Option<&str>, name: &str) -> bool {
    only.is_none_or(|only| name.contains(only))
}

// ---------------------------------------------------------------- stages

/// What requests sent one at a time said about their time, from their
/// `Server-Timing` headers: every stage's durations (ms) by name, the
/// statements each ran (`sql`'s `desc`), the client's round trips (ms),
/// how many opened a connection rather than took a pooled one, the
/// statuses answered, and the first three non-2xx answers (status and
/// body).
#[derive(Debug, Clone, Default)]
pub struct Timing {
    pub samples: usize,
    pub stages: BTreeMap<String, Vec<f64>>,
    pub statements: Vec<f64>,
    pub round_trips: Vec<f64>,
    pub opened: usize,
    pub statuses: BTreeMap<u16, usize>,
    pub failures: Vec<String>,
}

impl Timing {
    /// The median of a stage, in ms (NaN when no answer reported it).
    pub fn stage(&self, name: &str) -> f64 {
        self.stages
            .get(name)
            .map_or(f64::NAN, |v| median(v.clone()))
    }

    /// Answers with a status in `class`xx (5 for 5xx).
    pub fn class(&self, class: u16) -> usize {
        self.statuses
            .iter()
            .filter(|(code, _)| **code / 100 == class)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Sends `samples` requests of `kind` to `addr` one after another (no
/// queueing, keep-alive) and collects their `Server-Timing` stages.
pub fn time_requests(
    generator: &mut Generator,
    kind: Kind,
    addr: SocketAddr,
    fixtures: &Fixtures,
    samples: usize,
) -> anyhow::Result<Timing> {
    let agent = agent();
    let mut timing = Timing {
        samples,
        ..Timing::default()
    };
    for _ in 0..samples {
        let request = generator.request(kind, fixtures);
        let mut builder = http::Request::builder()
            .method(request.method)
            .uri(format!("http://{addr}{}", request.path));
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let started = Instant::now();
        let mut response = agent.run(builder.body(request.body)?)?;
        let body = response.body_mut().read_to_vec()?;
        timing
            .round_trips
            .push(started.elapsed().as_secs_f64() * 1000.0);
        let status = response.status().as_u16();
        *timing.statuses.entry(status).or_default() += 1;
        if status >= 300 && timing.failures.len() < 3 {
            let text = String::from_utf8_lossy(&body);
            timing.failures.push(format!(
                "{status} {}",
                text.chars().take(400).collect::<String>()
            ));
        }
        let header = response
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        for stage in header.split(", ") {
            let mut fields = stage.split(';');
            let name = fields.next().unwrap_or("").to_owned();
            for field in fields {
                if let Some(ms) = field.strip_prefix("dur=") {
                    timing
                        .stages
                        .entry(name.clone())
                        .or_default()
                        .push(ms.parse().unwrap_or(0.0));
                } else if let Some(text) = field.strip_prefix("desc=") {
                    let text = text.trim_matches('"');
                    if let Some(n) = text.strip_suffix(" statements") {
                        timing.statements.push(n.parse::<f64>().unwrap_or(0.0));
                    }
                    if text == "opened" {
                        timing.opened += 1;
                    }
                }
            }
        }
    }
    Ok(timing)
}
