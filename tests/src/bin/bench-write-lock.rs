//! `bench-write-lock`: do heavy maintenance requests hold up the writers
//! a shop depends on? Under real Spin (`spin up` of this workspace, the
//! components built first with `spin build`), on a generated shop.
//!
//! 1. Generates a shop with `kizuna_tests::datagen` (default 200,000
//!    contacts, 300,000 orders) whose data ends `--age-days` (default
//!    200) before the real clock, so that the lots earned in the points
//!    program's first months are past their expiry now and still open:
//!    `POST /v1/points/expire-due` has them all to close.
//! 2. Starts `spin up` on it and creates a broad saved segment (every
//!    contact with an email: nine in ten).
//! 3. **writers alone**: `--writers` clients (default 4; half post landing
//!    page forms, half post signed Standard Webhooks orders of 2 lines
//!    with earning) for `--seconds` (default 10).
//! 4. **writers + maintenance**: the same writers while, concurrently,
//!    one client runs the segment's first delta sync (`GET
//!    /v1/segments/{id}/changes`, following `next_cursor` to the end) and
//!    another sweeps expired points (`POST /v1/points/expire-due` until
//!    it answers `"more": false`). The phase lasts until both are done.
//!
//! Printed: per phase, writer requests, requests/s, p50, p99 and max
//! latency, and the count of 5xx and other failures; the maintenance
//! requests' durations and what they did (members joined, pages, lots
//! expired, sweep calls). Figures, not assertions, except that a 5xx
//! from any writer fails the run (it is a bug).

use anyhow::{Context as _, bail, ensure};
use kizuna::auth::key_digest;
use kizuna_tests::bench::{BenchDir, parse_args, print_machine, run_in_dir};
use kizuna_tests::datagen::{self, Spec};
use kizuna_tests::spin::SpinApp;
use serde_json::{Value as Json, json};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "bench-write-lock-admin-key";
const ORDERS_SECRET: &str = "whsec_YmVuY2gtd3JpdGUtbG9jay1vcmRlcnMtc2VjcmV0";
const USAGE: &str = "usage: bench-write-lock [--contacts N] [--orders M] [--age-days D] [--writers W] [--seconds S] [--seed S] [--dir PATH] [--keep]";

struct Options {
    contacts: u64,
    orders: u64,
    age_days: u64,
    writers: u64,
    seconds: u64,
    seed: u64,
    dir: BenchDir,
}

fn main() -> anyhow::Result<()> {
    let (mut contacts, mut orders, mut age_days, mut writers, mut seconds, mut seed) =
        (200_000, 300_000, 200, 4, 10, 1);
    let Some(dir) = parse_args(
        USAGE,
        &mut [
            ("--contacts", &mut contacts),
            ("--orders", &mut orders),
            ("--age-days", &mut age_days),
            ("--writers", &mut writers),
            ("--seconds", &mut seconds),
            ("--seed", &mut seed),
        ],
    )?
    else {
        return Ok(());
    };
    let options = Options {
        contacts,
        orders,
        age_days,
        writers: writers.max(2),
        seconds,
        seed,
        dir,
    };
    run_in_dir(&options.dir, |dir| run(&options, dir))
}

fn variables() -> Vec<(String, String)> {
    [
        (
            "api_keys",
            json!([{"name": "bench", "sha256": key_digest(KEY), "scopes": ["*"]}]).to_string(),
        ),
        (
            "unsubscribe_secret",
            "bench-write-lock-unsubscribe-secret".into(),
        ),
        ("orders_webhook_secrets", ORDERS_SECRET.into()),
        (
            "shopify_webhook_secrets",
            "bench-unused-shopify-secret".into(),
        ),
        (
            "woocommerce_webhook_secrets",
            "bench-unused-woo-secret".into(),
        ),
        (
            "webhook_secret_key",
            "bench-unused-webhook-secret-key-0123456789".into(),
        ),
        // The writers play many clients behind one proxy (the bench).
        ("trusted_proxies", "127.0.0.0/8".into()),
        ("form_rate_limit_per_minute", "1000000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn run(options: &Options, dir: &std::path::Path) -> anyhow::Result<()> {
    println!(
        "bench-write-lock: {} contacts, {} orders, data ending {} days ago, {} writers, {} s alone",
        options.contacts, options.orders, options.age_days, options.writers, options.seconds
    );
    print_machine();
    // Migrate with the native host, then fill the file.
    let host = kizuna_tests::Host::new(dir)?
        .with_variable("api_keys", &variables()[0].1)
        .with_variable("unsubscribe_secret", "bench-write-lock-unsubscribe-secret")
        .with_variable("orders_webhook_secrets", ORDERS_SECRET)
        .with_variable("shopify_webhook_secrets", "x-unused-secret-xxxxxxxx")
        .with_variable("woocommerce_webhook_secrets", "x-unused-secret-xxxxxxxx");
    let first = host.handle(
        http::Request::builder()
            .uri("/v1/segments")
            .header("authorization", format!("Bearer {KEY}"))
            .body(bytes::Bytes::new())?,
    );
    ensure!(first.status() == 200, "migration request failed");
    let now = time::OffsetDateTime::now_utc();
    let data_now = now - time::Duration::days(i64::try_from(options.age_days)?);
    let spec = Spec {
        contacts: options.contacts,
        orders: options.orders,
        seed: options.seed,
        now: data_now,
    };
    let generated = datagen::generate(&host.database_path(), &spec)?;
    println!(
        "datagen: {} contacts, {} orders, {} lots in {:.1} s",
        generated.contacts,
        generated.orders,
        generated.lots,
        (generated.planned + generated.written).as_secs_f64()
    );
    let due: i64 = rusqlite::Connection::open(host.database_path())?.query_row(
        "SELECT count(*) FROM points_lots WHERE remaining > 0 AND expires_at <= ?1",
        [kizuna::timestamp::format(now)],
        |r| r.get(0),
    )?;
    println!("open lots past their expiry now: {due}");
    drop(host);

    let spin = SpinApp::start(dir, &variables())?;
    let base = spin.url();
    let agent = agent();
    let segment = call(
        &agent,
        "POST",
        &format!("{base}/v1/segments"),
        Some(json!({"name": "everyone with an email",
                    "definition": {"field": "has_email", "op": "eq", "value": true}})),
    )?;
    let segment_id = segment["id"].as_str().context("segment id")?.to_owned();

    let alone = writers_phase(options, &base, 0, |stop| {
        std::thread::sleep(Duration::from_secs(options.seconds));
        stop.store(true, Ordering::SeqCst);
        Ok(Vec::new())
    })?;
    let busy = writers_phase(options, &base, 1, |stop| {
        let result = std::thread::scope(|scope| {
            let sync = scope.spawn(|| delta_sync(&base, &segment_id));
            let sweep = scope.spawn(|| sweep(&base));
            let sync = sync.join().expect("sync thread");
            let sweep = sweep.join().expect("sweep thread");
            Ok::<_, anyhow::Error>(vec![sync?, sweep?])
        });
        stop.store(true, Ordering::SeqCst);
        result
    })?;
    println!();
    println!(
        "| phase | writer requests | req/s | p50 ms | p99 ms | max ms | 5xx | other failures |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, phase) in [("writers alone", &alone), ("writers + sync + sweep", &busy)] {
        println!(
            "| {name} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} |",
            phase.latencies.len(),
            phase.latencies.len() as f64 / phase.elapsed.as_secs_f64(),
            percentile(&phase.latencies, 50.0),
            percentile(&phase.latencies, 99.0),
            percentile(&phase.latencies, 100.0),
            phase.server_errors,
            phase.other_failures,
        );
    }
    println!();
    for line in &busy.maintenance {
        println!("{line}");
    }
    println!(
        "writers' p99 with maintenance / alone: {:.2}",
        percentile(&busy.latencies, 99.0) / percentile(&alone.latencies, 99.0).max(0.001)
    );
    if alone.server_errors + busy.server_errors > 0 {
        bail!("a writer got a 5xx");
    }
    Ok(())
}

struct Phase {
    latencies: Vec<f64>,
    elapsed: Duration,
    server_errors: u64,
    other_failures: u64,
    maintenance: Vec<String>,
}

fn agent() -> ureq::Agent {
    kizuna_tests::bench::http_agent()
}

/// One JSON request with the bench key; the answer's body.
fn call(agent: &ureq::Agent, method: &str, url: &str, body: Option<Json>) -> anyhow::Result<Json> {
    kizuna_tests::bench::call_json(agent, KEY, method, url, body)
}

/// Runs the writers until `during` returns and sets the stop flag.
fn writers_phase(
    options: &Options,
    base: &str,
    phase: u64,
    during: impl FnOnce(&AtomicBool) -> anyhow::Result<Vec<String>> + Send,
) -> anyhow::Result<Phase> {
    let stop = AtomicBool::new(false);
    let latencies = Mutex::new(Vec::new());
    let (server_errors, other_failures) = (AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    let maintenance = std::thread::scope(|scope| {
        for writer in 0..options.writers {
            let (stop, latencies) = (&stop, &latencies);
            let (server_errors, other_failures) = (&server_errors, &other_failures);
            scope.spawn(move || {
                let agent = agent();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let status = if writer % 2 == 0 {
                        post_form(&agent, base, phase, writer, n)
                    } else {
                        post_order(&agent, base, phase, writer, n)
                    };
                    let ms = started.elapsed().as_secs_f64() * 1000.0;
                    match status {
                        Ok(s) if s < 300 => latencies.lock().expect("latencies").push(ms),
                        Ok(s) if s >= 500 => {
                            server_errors.fetch_add(1, Ordering::SeqCst);
                            eprintln!("writer {writer}: {s} after {ms:.0} ms");
                        }
                        _ => {
                            other_failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    n += 1;
                }
            });
        }
        during(&stop)
    })?;
    Ok(Phase {
        latencies: latencies.into_inner().expect("latencies"),
        elapsed: started.elapsed(),
        server_errors: server_errors.into_inner(),
        other_failures: other_failures.into_inner(),
        maintenance,
    })
}

/// Sends a writer's request; its status (the body is read and dropped).
fn send(agent: &ureq::Agent, request: http::Request<String>) -> anyhow::Result<u16> {
    let mut response = agent.run(request)?;
    let status = response.status().as_u16();
    drop(response.body_mut().read_to_vec());
    Ok(status)
}

fn post_form(
    agent: &ureq::Agent,
    base: &str,
    phase: u64,
    writer: u64,
    n: u64,
) -> anyhow::Result<u16> {
    let body = json!({
        "email": format!("lead-{phase}-{writer}-{n}@bench.example.jp"),
        "consent_email": true, "utm_source": "bench"
    });
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("{base}/v1/forms/bench"))
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header(
            "x-forwarded-for",
            format!("10.{phase}.{}.{}", writer, n % 250),
        )
        .body(body.to_string())?;
    send(agent, request)
}

fn post_order(
    agent: &ureq::Agent,
    base: &str,
    phase: u64,
    writer: u64,
    n: u64,
) -> anyhow::Result<u16> {
    let now = time::OffsetDateTime::now_utc();
    let at = kizuna::timestamp::format(now);
    let order_id = format!("BENCH-{phase}-{writer}-{n}");
    let body = json!({
        "type": "order.paid",
        "data": {
            "id": order_id, "currency": "JPY", "placed_at": at,
            "customer": {"id": format!("M-{writer}-{}", n % 500), "email": format!("buyer-{writer}-{}@bench.example.jp", n % 500)},
            "subtotal": "3000", "shipping": "0", "tax": "240", "total": "3000",
            "lines": [
                {"sku": "TEA-01", "name": "煎茶", "category": "tea", "quantity": 1, "unit_price": "2000"},
                {"sku": "SWEETS-01", "name": "羊羹", "category": "sweets", "quantity": 1, "unit_price": "1000"}
            ]
        }
    })
    .to_string();
    let message_id = format!("msg_{order_id}");
    let ts = now.unix_timestamp();
    let signature =
        kizuna::signatures::sign_standard(ORDERS_SECRET, &message_id, ts, body.as_bytes());
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("{base}/v1/webhooks/orders"))
        .header("content-type", "application/json")
        .header("webhook-id", &message_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body)?;
    send(agent, request)
}

/// The segment's first delta sync, followed to its last page.
fn delta_sync(base: &str, segment_id: &str) -> anyhow::Result<String> {
    let agent = agent();
    let started = Instant::now();
    let first = call(
        &agent,
        "GET",
        &format!("{base}/v1/segments/{segment_id}/changes?limit=10000"),
        None,
    )?;
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut joined = first["joined"].as_array().map_or(0, Vec::len);
    let mut pages = 1;
    let mut cursor = first["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let page = call(
            &agent,
            "GET",
            &format!("{base}/v1/segments/{segment_id}/changes?limit=10000&cursor={c}"),
            None,
        )?;
        joined += page["joined"].as_array().map_or(0, Vec::len);
        pages += 1;
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    Ok(format!(
        "delta sync: {joined} joined over {pages} pages; first page (evaluate + record + list) {first_ms:.0} ms, all pages {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    ))
}

/// `expire-due` until it has nothing more to do.
fn sweep(base: &str) -> anyhow::Result<String> {
    let agent = agent();
    let started = Instant::now();
    let (mut expired, mut calls, mut longest) = (0u64, 0u64, 0f64);
    loop {
        let call_started = Instant::now();
        let answer = call(
            &agent,
            "POST",
            &format!("{base}/v1/points/expire-due"),
            Some(json!({})),
        )?;
        longest = longest.max(call_started.elapsed().as_secs_f64() * 1000.0);
        calls += 1;
        expired += answer["expired_lots"].as_u64().unwrap_or(0);
        if answer["more"] != json!(true) {
            break;
        }
    }
    Ok(format!(
        "expire-due: {expired} lots expired in {calls} calls, {:.0} ms in all, longest call {longest:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    ))
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
