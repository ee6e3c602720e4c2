//! `bench-contacts`: how fast Kizuna captures leads and finds contacts by
//! phone on a full database, next to what bare SQLite manages on the same
//! disk with the same durability settings.
//!
//! What it measures, all in one process and one run:
//!
//! 1. Pre-loads `--contacts` contacts (default 100,000) straight into the
//!    host's database file with rusqlite (real schema, a search row per
//!    email and name), then checkpoints and syncs it, so the measured
//!    phases start from a clean, durable file.
//! 2. **form capture**: `--requests` sequential `POST /v1/forms/bench`
//!    (urlencoded, `Accept: application/json`, a different client IP each
//!    time) through `Host::handle`, i.e. the whole component: a fresh
//!    connection and pragmas per request, the rate-limit upsert, identity
//!    resolution, insert or fill-empty update, timeline entry and consent
//!    record, each in one `BEGIN IMMEDIATE` transaction with
//!    `synchronous = FULL`. Even requests post a new email (insert path),
//!    odd ones an email from the preload (fill path). Every answer must be
//!    202 or the bench panics.
//! 3. **phone lookup**: `--requests` `GET /v1/contacts?phone=090…` (national
//!    format of preloaded numbers) with a `contacts:read` key; each answer
//!    must be 200 with exactly that one contact.
//! 4. **baseline insert**: a separate file in the same directory, with the
//!    same pragmas (WAL, `synchronous = FULL`, `busy_timeout`,
//!    `secure_delete`, `foreign_keys`), a table `(id TEXT PRIMARY KEY,
//!    email TEXT UNIQUE, data TEXT)` pre-filled with the same number of
//!    rows, then one row per `BEGIN IMMEDIATE; INSERT; COMMIT` on one open
//!    connection with a cached statement: the floor set by one fsync'd
//!    commit on this disk.
//! 5. **baseline lookup**: point look-ups by the unique email on that
//!    table with a prepared statement on one open connection.
//!
//! Run it in release (debug numbers mean nothing):
//!
//! ```text
//! cargo run --release -p kizuna-tests --bin bench-contacts
//! cargo run --release -p kizuna-tests --bin bench-contacts -- --contacts 10000 --requests 500
//! ```
//!
//! Options: `--contacts N` (default 100000), `--requests M` (default 2000),
//! `--dir PATH` (default a new directory under the system temp dir; it must
//! not already hold a Kizuna or baseline database), `--keep` (leave the
//! databases behind instead of deleting them).
//!
//! Reading the output: one row per scenario with the number of requests,
//! throughput (requests per second of wall time over the whole sequential
//! loop, one request at a time) and per-request latency percentiles (p50,
//! p99, max, in milliseconds, nearest-rank). The ratios compare Kizuna
//! with its baseline: a throughput ratio of 0.50 means Kizuna does half as
//! many requests per second as the bare insert; a p50 ratio of 2.0 means
//! its median request takes twice as long. Writes are usually bound by the
//! fsyncs per commit, so compare them on the same machine and disk only;
//! the context lines say which machine, SQLite version and directory the
//! numbers come from. The final lines give the database size (main file
//! and WAL) and the row counts, which are checked against what the run
//! wrote.

use anyhow::ensure;
use bytes::Bytes;
use kizuna::auth::key_digest;
use kizuna_tests::Host;
use kizuna_tests::bench::{
    BenchDir, Lcg, Stats, baseline_path, body_text, database_size, file_size, measure, mib,
    open_baseline, parse_args, print_machine, print_ratios, print_table, request, run_in_dir,
    settle, uuid_like,
};
use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::Value as Json;
use std::path::Path;
use std::time::Instant;

const READ_KEY: &str = "bench-read-key-0123456789";
const UNSUBSCRIBE_SECRET: &str = "bench-unsubscribe-secret-0123456789";
const FIXED_TIME: &str = "2026-11-01T00:00:00.000000Z";
/// Rows per transaction while pre-loading.
const PRELOAD_BATCH: u64 = 10_000;

struct Options {
    contacts: u64,
    requests: u64,
    dir: BenchDir,
}

const USAGE: &str = "usage: bench-contacts [--contacts N] [--requests M] [--dir PATH] [--keep]";

fn parse_options() -> anyhow::Result<Option<Options>> {
    let (mut contacts, mut requests) = (100_000, 2_000);
    let Some(dir) = parse_args(
        USAGE,
        &mut [("--contacts", &mut contacts), ("--requests", &mut requests)],
    )?
    else {
        return Ok(None);
    };
    let options = Options {
        contacts,
        requests,
        dir,
    };
    ensure!(options.contacts >= 1, "--contacts must be at least 1");
    ensure!(
        options.contacts <= 99_999_999,
        "--contacts must fit in 8 phone digits"
    );
    ensure!(options.requests >= 2, "--requests must be at least 2");
    Ok(Some(options))
}

fn build_host(dir: &Path) -> anyhow::Result<Host> {
    let api_keys = serde_json::json!([
        {"name": "bench-reader", "sha256": key_digest(READ_KEY), "scopes": ["contacts:read"]},
    ])
    .to_string();
    Ok(Host::new(dir)?
        .with_variable("api_keys", &api_keys)
        .with_variable("unsubscribe_secret", UNSUBSCRIBE_SECRET)
        .with_variable("default_phone_region", "JP")
        // High enough never to refuse, so the rate-limit statement still
        // runs on every submission but never turns it into a 429.
        .with_variable("form_rate_limit_per_minute", "1000000000"))
}

/// Writes `count` contacts straight into Kizuna's schema, in large
/// transactions, with `synchronous = OFF` for speed (the file is
/// checkpointed and synced at the end).
fn preload(path: &Path, count: u64) -> anyhow::Result<()> {
    let mut connection = Connection::open(path)?;
    connection.execute_batch(
        "PRAGMA synchronous = OFF; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    )?;
    let mode: String = connection.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    ensure!(
        mode == "wal",
        "the migration should have set WAL, found {mode}"
    );
    let mut next = 0;
    while next < count {
        let end = (next + PRELOAD_BATCH).min(count);
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut contact = tx.prepare(
                "INSERT INTO contacts (id, email, phone, name, attributes, source,
                     created_at, created_by, updated_at, updated_by)
                 VALUES (?1, ?2, ?3, ?4, '{}', 'bench', ?5, 'bench', ?5, 'bench')",
            )?;
            let mut search =
                tx.prepare("INSERT INTO contact_search (term, contact_id) VALUES (?1, ?2)")?;
            for i in next..end {
                let id = uuid_like(0x0190_0000, i);
                let email = format!("user{i}@example.jp");
                contact.execute(params![
                    id,
                    email,
                    format!("+8190{i:08}"),
                    format!("Bench User {i}"),
                    FIXED_TIME
                ])?;
                // What `refresh_search_terms` stores: the folded email and name.
                search.execute(params![email, id])?;
                search.execute(params![format!("benchuser{i}"), id])?;
            }
        }
        tx.commit()?;
        next = end;
    }
    settle(&connection, path)
}

fn form_capture(host: &Host, contacts: u64, requests: u64) -> Stats {
    let mut pick = Lcg(0x5eed_f0f0);
    measure("form capture", requests, |j| {
        let body = if j % 2 == 0 {
            format!(
                "email=new{j}%40example.jp&phone=080-{:04}-{:04}&name=Bench+Lead+{j}\
                 &company=Kizuna&consent_email=on&utm_source=bench&page=https%3A%2F%2Flp.example.jp%2Fbench",
                j / 10_000 % 10_000,
                j % 10_000
            )
        } else {
            let i = pick.below(contacts);
            format!(
                "email=user{i}%40example.jp&phone=090{i:08}&name=Bench+User+{i}\
                 &company=Kizuna&consent_email=on&utm_source=bench&page=https%3A%2F%2Flp.example.jp%2Fbench"
            )
        };
        let client: std::net::SocketAddr = format!("10.0.{}.{}:1234", j % 250, j / 250 % 250)
            .parse()
            .expect("client address");
        let req = request(
            "POST",
            "/v1/forms/bench",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "application/json"),
            ],
            body,
        );
        let started = Instant::now();
        let response = host.handle_from(req, client);
        let elapsed = started.elapsed();
        assert_eq!(
            response.status(),
            202,
            "form request {j}: {}",
            body_text(&response)
        );
        elapsed
    })
}

fn phone_lookup(host: &Host, contacts: u64, requests: u64) -> Stats {
    let mut pick = Lcg(0x0901_2345);
    let authorization = format!("Bearer {READ_KEY}");
    measure("phone lookup", requests, |j| {
        let i = pick.below(contacts);
        let req = request(
            "GET",
            &format!("/v1/contacts?phone=090{i:08}"),
            &[("authorization", &authorization)],
            Bytes::new(),
        );
        let started = Instant::now();
        let response = host.handle(req);
        let elapsed = started.elapsed();
        assert_eq!(
            response.status(),
            200,
            "lookup {j}: {}",
            body_text(&response)
        );
        let page: Json = serde_json::from_slice(response.body()).expect("lookup answers JSON");
        let items = page["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "lookup {j} of 090{i:08}: {page}");
        assert_eq!(items[0]["phone"], format!("+8190{i:08}"), "lookup {j}");
        elapsed
    })
}

fn baseline_data(i: u64) -> String {
    serde_json::json!({"phone": format!("+8190{i:08}"), "name": format!("Bench User {i}"), "source": "bench"}).to_string()
}

fn baseline(path: &Path, contacts: u64, requests: u64) -> anyhow::Result<(Stats, Stats)> {
    let mut connection = open_baseline(path)?;
    connection.execute_batch(
        "CREATE TABLE baseline (id TEXT PRIMARY KEY, email TEXT UNIQUE, data TEXT) STRICT",
    )?;
    {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert =
                tx.prepare("INSERT INTO baseline (id, email, data) VALUES (?1, ?2, ?3)")?;
            for i in 0..contacts {
                insert.execute(params![
                    uuid_like(0x0190_0000, i),
                    format!("user{i}@example.jp"),
                    baseline_data(i)
                ])?;
            }
        }
        tx.commit()?;
    }
    settle(&connection, path)?;

    let inserts = measure("baseline insert", requests, |j| {
        let id = uuid_like(0x0191_0000, j);
        let email = format!("new{j}@example.jp");
        let data = baseline_data(j);
        let started = Instant::now();
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("BEGIN IMMEDIATE");
        tx.prepare_cached("INSERT INTO baseline (id, email, data) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![id, email, data]))
            .expect("baseline insert");
        tx.commit().expect("COMMIT");
        started.elapsed()
    });

    let mut pick = Lcg(0x00e3_a011);
    let mut lookup = connection.prepare("SELECT id, email, data FROM baseline WHERE email = ?1")?;
    let lookups = measure("baseline lookup", requests, |j| {
        let i = pick.below(contacts);
        let email = format!("user{i}@example.jp");
        let started = Instant::now();
        let (id, found, data): (String, String, String) = lookup
            .query_row([&email], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("baseline lookup");
        let elapsed = started.elapsed();
        assert!(
            found == email && !id.is_empty() && !data.is_empty(),
            "baseline lookup {j}"
        );
        elapsed
    });
    Ok((inserts, lookups))
}

fn run(options: &Options, dir: &Path) -> anyhow::Result<()> {
    let host = build_host(dir)?;
    let database = host.database_path();
    let baseline_path = baseline_path(dir);

    println!(
        "bench-contacts: {} contacts, {} requests per scenario",
        options.contacts, options.requests
    );
    print_machine();
    println!("directory: {}", dir.display());

    // The first request runs the migrations (and switches the file to WAL).
    let first = host.handle(request(
        "GET",
        "/v1/contacts?limit=1",
        &[("authorization", &format!("Bearer {READ_KEY}"))],
        Bytes::new(),
    ));
    ensure!(
        first.status() == 200,
        "first request failed: {}",
        body_text(&first)
    );

    let started = Instant::now();
    preload(&database, options.contacts)?;
    let took = started.elapsed();
    println!(
        "preload: {} contacts in {:.2} s ({:.0} rows/s), {:.1} MiB",
        options.contacts,
        took.as_secs_f64(),
        options.contacts as f64 / took.as_secs_f64(),
        mib(file_size(&database))
    );

    let forms = form_capture(&host, options.contacts, options.requests);
    let lookups = phone_lookup(&host, options.contacts, options.requests);
    let (base_inserts, base_lookups) =
        baseline(&baseline_path, options.contacts, options.requests)?;

    println!();
    print_table(&[&forms, &lookups, &base_inserts, &base_lookups]);
    println!();
    print_ratios(&[
        ("form capture / baseline insert", &forms, &base_inserts),
        ("phone lookup / baseline lookup", &lookups, &base_lookups),
    ]);

    let check = Connection::open(&database)?;
    let count = |sql: &str| -> anyhow::Result<u64> { Ok(check.query_row(sql, [], |r| r.get(0))?) };
    let contacts = count("SELECT count(*) FROM contacts")?;
    let interactions = count("SELECT count(*) FROM interactions WHERE kind = 'form_submitted'")?;
    let consents = count("SELECT count(*) FROM consents")?;
    drop(check);
    let new_leads = options.requests.div_ceil(2);
    println!();
    println!(
        "kizuna database: {}; {contacts} contacts (expected {}), \
         {interactions} form_submitted entries, {consents} consent records",
        database_size(&database),
        options.contacts + new_leads,
    );
    println!("baseline database: {}", database_size(&baseline_path));
    ensure!(
        contacts == options.contacts + new_leads,
        "expected {} contacts after the run, found {contacts}",
        options.contacts + new_leads
    );
    ensure!(
        interactions == options.requests,
        "expected one interaction per submission"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let Some(options) = parse_options()? else {
        return Ok(());
    };
    run_in_dir(&options.dir, |dir| run(&options, dir))
}
