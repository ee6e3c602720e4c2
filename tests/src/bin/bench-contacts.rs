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

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use kizuna::auth::key_digest;
use kizuna_tests::Host;
use rusqlite::{Connection, TransactionBehavior, params};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const READ_KEY: &str = "bench-read-key-0123456789";
const UNSUBSCRIBE_SECRET: &str = "bench-unsubscribe-secret-0123456789";
const FIXED_TIME: &str = "2026-11-01T00:00:00.000000Z";
/// Rows per transaction while pre-loading.
const PRELOAD_BATCH: u64 = 10_000;

struct Options {
    contacts: u64,
    requests: u64,
    dir: Option<PathBuf>,
    keep: bool,
}

const USAGE: &str = "usage: bench-contacts [--contacts N] [--requests M] [--dir PATH] [--keep]";

fn parse_options() -> anyhow::Result<Option<Options>> {
    let mut options = Options {
        contacts: 100_000,
        requests: 2_000,
        dir: None,
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--contacts" => {
                options.contacts = value()?.parse().context("--contacts takes a number")?
            }
            "--requests" => {
                options.requests = value()?.parse().context("--requests takes a number")?
            }
            "--dir" => options.dir = Some(value()?.into()),
            "--keep" => options.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    ensure!(options.contacts >= 1, "--contacts must be at least 1");
    ensure!(
        options.contacts <= 99_999_999,
        "--contacts must fit in 8 phone digits"
    );
    ensure!(options.requests >= 2, "--requests must be at least 2");
    Ok(Some(options))
}

/// A 64-bit linear congruential generator: reproducible pseudo-random
/// picks without a `rand` dependency.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// A canonical UUID (version 7 and variant bits set) unique per `n`.
fn uuid_like(prefix: u32, n: u64) -> String {
    format!("{prefix:08x}-0000-7000-8000-{n:012x}")
}

/// Per-request latencies of one scenario and the wall time of its loop.
struct Stats {
    name: &'static str,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
    /// Nearest-rank percentile, in milliseconds.
    fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
    }
    fn max_ms(&self) -> f64 {
        self.latencies
            .iter()
            .max()
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }
}

/// Runs `one(j)` for `j` in `0..count`, timing each call and the loop.
fn measure(name: &'static str, count: u64, mut one: impl FnMut(u64) -> Duration) -> Stats {
    let mut latencies = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let started = Instant::now();
    for j in 0..count {
        latencies.push(one(j));
    }
    Stats {
        name,
        wall: started.elapsed(),
        latencies,
    }
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

fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> kizuna::http::Request {
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.into()).expect("a valid request")
}

fn body_text(response: &kizuna::http::Response) -> String {
    String::from_utf8_lossy(response.body()).into_owned()
}

/// Copies the WAL into the main file, empties it and syncs the file, so
/// that the next phase neither inherits a long WAL nor pays for flushing
/// the previous phase's dirty pages.
fn settle(connection: &Connection, path: &Path) -> anyhow::Result<()> {
    let (busy, _, _): (i64, i64, i64) =
        connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    ensure!(busy == 0, "checkpoint of {} was blocked", path.display());
    std::fs::File::open(path)?.sync_all()?;
    Ok(())
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
        let client = format!("10.0.{}.{}:1234", j % 250, j / 250 % 250);
        let req = request(
            "POST",
            "/v1/forms/bench",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("accept", "application/json"),
                ("spin-client-addr", &client),
            ],
            body,
        );
        let started = Instant::now();
        let response = host.handle(req);
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

/// The same durability settings Kizuna uses: WAL (set by its migration)
/// plus the per-connection pragmas of `db::prepare`.
fn open_baseline(path: &Path) -> anyhow::Result<Connection> {
    let connection = Connection::open(path)?;
    let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    ensure!(mode == "wal", "baseline refused WAL: {mode}");
    connection.execute_batch(
        "PRAGMA busy_timeout = 5000;
         PRAGMA foreign_keys = ON;
         PRAGMA synchronous = FULL;
         PRAGMA secure_delete = ON;",
    )?;
    Ok(connection)
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

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn print_row(stats: &Stats) {
    println!(
        "{:<18} {:>8} {:>12.1} {:>10.3} {:>10.3} {:>10.3}",
        stats.name,
        stats.latencies.len(),
        stats.throughput(),
        stats.percentile_ms(50.0),
        stats.percentile_ms(99.0),
        stats.max_ms()
    );
}

fn print_ratios(label: &str, kizuna: &Stats, base: &Stats) {
    println!(
        "{label:<34} throughput {:>7.3}x   p50 {:>7.2}x   p99 {:>7.2}x",
        kizuna.throughput() / base.throughput(),
        kizuna.percentile_ms(50.0) / base.percentile_ms(50.0),
        kizuna.percentile_ms(99.0) / base.percentile_ms(99.0),
    );
}

fn run(options: &Options, dir: &Path) -> anyhow::Result<()> {
    let host = build_host(dir)?;
    let database = host.database_path();
    let baseline_path = dir.join("baseline.db");
    ensure!(
        !database.exists() && !baseline_path.exists(),
        "{} already holds a bench database; use an empty directory",
        dir.display()
    );

    println!(
        "bench-contacts: {} contacts, {} requests per scenario",
        options.contacts, options.requests
    );
    println!(
        "machine: {} logical CPUs, {}/{}, SQLite {}, {} build",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::env::consts::OS,
        std::env::consts::ARCH,
        rusqlite::version(),
        if cfg!(debug_assertions) {
            "DEBUG (numbers not meaningful)"
        } else {
            "release"
        },
    );
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
    println!(
        "{:<18} {:>8} {:>12} {:>10} {:>10} {:>10}",
        "scenario", "requests", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    for stats in [&forms, &lookups, &base_inserts, &base_lookups] {
        print_row(stats);
    }
    println!();
    println!(
        "ratios (Kizuna / baseline; throughput above 1 is faster, p50/p99 above 1 is slower):"
    );
    print_ratios("form capture / baseline insert", &forms, &base_inserts);
    print_ratios("phone lookup / baseline lookup", &lookups, &base_lookups);

    let check = Connection::open(&database)?;
    let count = |sql: &str| -> anyhow::Result<u64> { Ok(check.query_row(sql, [], |r| r.get(0))?) };
    let contacts = count("SELECT count(*) FROM contacts")?;
    let interactions = count("SELECT count(*) FROM interactions WHERE kind = 'form_submitted'")?;
    let consents = count("SELECT count(*) FROM consents")?;
    drop(check);
    let new_leads = options.requests.div_ceil(2);
    println!();
    println!(
        "kizuna database: {:.1} MiB + WAL {:.1} MiB; {contacts} contacts (expected {}), \
         {interactions} form_submitted entries, {consents} consent records",
        mib(file_size(&database)),
        mib(file_size(&with_suffix(&database, "-wal"))),
        options.contacts + new_leads,
    );
    println!(
        "baseline database: {:.1} MiB + WAL {:.1} MiB",
        mib(file_size(&baseline_path)),
        mib(file_size(&with_suffix(&baseline_path, "-wal"))),
    );
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

/// Deletes what the bench created: the whole directory if it made it,
/// otherwise only its database files.
fn clean_up(dir: &Path, created_dir: bool) {
    let result = if created_dir {
        std::fs::remove_dir_all(dir)
    } else {
        let mut result = Ok(());
        for base in ["sqlite_db.db", "sqlite_key_value.db", "baseline.db"] {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let path = dir.join(format!("{base}{suffix}"));
                if path.exists() {
                    result = result.and(std::fs::remove_file(path));
                }
            }
        }
        result
    };
    if let Err(e) = result {
        eprintln!("failed to clean up {}: {e}", dir.display());
    }
}

fn main() -> anyhow::Result<()> {
    let Some(options) = parse_options()? else {
        return Ok(());
    };
    let dir = options.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("kizuna-bench-{}", std::process::id()))
    });
    let created_dir = !dir.exists();
    // A failed assertion panics; the databases are still cleaned up.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&options, &dir)));
    if options.keep {
        println!("kept the databases in {}", dir.display());
    } else {
        clean_up(&dir, created_dir);
    }
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
