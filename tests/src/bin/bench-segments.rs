//! `bench-segments`: how fast Kizuna counts, pages and exports a typical
//! saved segment and recomputes the RFM scores on a full shop, next to
//! hand-written SQL returning the same rows through bare rusqlite on the
//! same file.
//!
//! What it measures, all in one process and one run:
//!
//! 1. Generates a shop with `kizuna_tests::datagen` (deterministic for a
//!    `--seed`) straight into the host's migrated database file:
//!    `--contacts` contacts (default 1,000,000) with tags and email
//!    consents, `--orders` orders (default 3,000,000) with 1 to 4 lines
//!    and some refunds, the contacts' order counters, and a year of
//!    loyalty points (entries, lots, allocations, accounts). Every time is
//!    before a fixed `now` (2026-11-22T03:00:00Z), which is also the
//!    host's clock, so the same seed gives the same segment and figures to
//!    compare. Then it checks that every contact's counters match its
//!    orders and that every points account adds up (`sum(entries) =
//!    sum(open lots' remaining) - debt`), and checkpoints and syncs the
//!    file. Nothing runs `ANALYZE`: SQLite plans without statistics, as
//!    it does for Kizuna in production.
//! 2. Creates the saved segment through the API (`POST /v1/segments`): a
//!    typical three-condition one, `{"all": [total_spent >= X,
//!    last_order_at within_last_days 90, tags contains "newsletter"]}`,
//!    with X the largest multiple of 1,000 yen that lets about one contact
//!    in 250 in (4,000 of a million), read from the data.
//! 3. **segment count**: `--requests` sequential `GET
//!    /v1/segments/{id}/count` through `Host::handle` (the whole
//!    component: a fresh connection and pragmas, the key check, loading
//!    and compiling the definition, the count, and storing it as the
//!    segment's last count in a durable write). **generated count**: the
//!    count statement Kizuna runs, prepared once on one bare connection to
//!    the same file with Kizuna's pragmas (WAL, `busy_timeout`,
//!    `foreign_keys`, `synchronous = FULL`, `secure_delete`): what the
//!    generated SQL costs without the component around it. **baseline
//!    count**: a hand-written `count(*)` joining `contact_tags` (by its tag
//!    index) to `contacts`, prepared once on that connection.
//! 4. **first page (50)**: `--requests` `GET
//!    /v1/segments/{id}/contacts?limit=50` (JSON). **generated page**: the
//!    member statement Kizuna runs for it, on the bare connection.
//!    **baseline page**: the hand-written keyset query for the same 50 rows
//!    (`id`, `email`, `phone`, `name`, the default fields), in id order.
//! 5. **CSV export**: 3 full exports, each `GET
//!    /v1/segments/{id}/contacts?format=csv&limit=10000` following the
//!    `Next-Cursor` header until there is none; timed from the first
//!    request to the last body. **baseline export**: the same pages by
//!    keyset (`contact_id > last`) with the hand-written query, written
//!    into the same CSV text (RFC 4180 quoting and the formula guard).
//! 6. **RFM recompute**: 3 runs of `GET /v1/analytics/rfm` after deleting
//!    the cached computation's `analytics_state` row (not timed), so that
//!    `analytics::ensure_fresh` recomputes: the RFM scores and churn risk
//!    of every customer into `rfm_scores`, the VIP threshold, then the
//!    grid. **baseline RFM**: one hand-written `NTILE(5)` query over the
//!    customers returning every customer's recency, frequency and
//!    monetary score, aggregated into the same grid in Rust. It computes
//!    neither churn risk nor the VIP threshold and stores nothing: it is
//!    the floor for the scores alone.
//!
//! Every answer is checked against the baseline's, or the bench panics:
//! the same count, the same first page, byte for byte the same CSV, the
//! same 25 grid cells, and `rfm_scores` equal to the baseline's scores
//! for every customer. The generated SQL is compiled in the bench with
//! `segments::compile` and the host's `now`, its member query built as
//! `segments::api` builds it, and both run on the bare connection too
//! (same count, same first page), so the printed `EXPLAIN QUERY PLAN`s are
//! those of the statements Kizuna ran.
//!
//! Run it in release (debug numbers mean nothing):
//!
//! ```text
//! cargo run --release -p kizuna-tests --bin bench-segments
//! cargo run --release -p kizuna-tests --bin bench-segments -- --contacts 20000 --orders 60000 --requests 50
//! ```
//!
//! Options: `--contacts N` (default 1000000), `--orders M` (default
//! 3000000), `--requests R` (default 200) for count and first page,
//! `--seed S` (default 1), `--dir PATH` (default a new directory under
//! the system temp dir; it must not already hold a Kizuna or baseline
//! database), `--keep` (leave the database behind instead of deleting
//! it). At the default size the generator needs about 2 GiB of memory
//! (the plan and a 1 GiB page cache), takes under three minutes on two
//! cores, and the database about 5 GiB of disk.
//!
//! Reading the output: the generator's line gives the rows written per
//! table and the rate; then the segment, the query plans, and one row per
//! scenario with the number of requests (or runs), throughput (per second
//! of wall time over the sequential loop) and latency percentiles (p50,
//! p99, max, in milliseconds, nearest-rank; with 3 runs p99 is the
//! slowest). Only `Host::handle` (or the bare statements and the Rust
//! that turns their rows into the answer) is timed. A ratio of 10.0 at
//! p50 means Kizuna's median takes ten times as long as the baseline's;
//! the `generated ... / baseline ...` ratios show how much of that is the
//! generated SQL itself (its plan), the rest being the component's own
//! work. The count request also makes a durable write (it stores the
//! last count), so its ratio holds one fsync'd commit on this disk as
//! well; compare on the same machine and disk only.

use anyhow::ensure;
use bytes::Bytes;
use kizuna::auth::key_digest;
use kizuna::ports::Value;
use kizuna::segments::compile::{Compiled, Env, compile};
use kizuna::segments::definition;
use kizuna::segments::members::{self, MemberField};
use kizuna::shop_time::DEFAULT as SHOP_OFFSET;
use kizuna::timestamp;
use kizuna_tests::bench::{
    BenchDir, Stats, body_text, database_size, measure, mib, open_baseline, parse_args,
    print_machine, print_plan, print_ratios, print_table, query_plan, request, run_in_dir,
    sql_values,
};
use kizuna_tests::datagen::{self, Spec, TAGS};
use kizuna_tests::{Host, ManualClock};
use rusqlite::{Connection, params};
use serde_json::{Value as Json, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::macros::datetime;
use time::{OffsetDateTime, Time, UtcOffset};

/// `segments:read`, `segments:write` and `segments:export` (the members
/// pages read the default, personal fields).
const SEGMENTS_KEY: &str = "bench-segments-key-0123456789";
/// The tag of the segment: the most common one.
const TAG: &str = "newsletter";
const WITHIN_DAYS: i64 = 90;
/// About one contact in this many is in the segment.
const MEMBER_SHARE: u64 = 250;
const PAGE: usize = 50;
const EXPORT_PAGE: usize = 10_000;
const EXPORT_RUNS: u64 = 3;
const RFM_RUNS: u64 = 3;

/// The host's clock and the end of the generated data.
const NOW: OffsetDateTime = datetime!(2026-11-22 03:00:00 UTC);

/// The segment's members, as one might write the query by hand: the tag
/// index gives the tagged contacts in id order, each one checked by its
/// primary key. `?1` spend, `?2` the earliest last order, `?3` the tag.
const BASELINE_COUNT: &str =
    "SELECT count(*) FROM contact_tags t JOIN contacts c ON c.id = t.contact_id
     WHERE t.tag = ?3 AND c.total_spent_minor >= ?1 AND c.last_order_at >= ?2
       AND c.erased_at IS NULL";

/// One page after `?4` (`''` for the first), at most `?5` rows.
const BASELINE_PAGE: &str = "SELECT c.id, c.email, c.phone, c.name
     FROM contact_tags t JOIN contacts c ON c.id = t.contact_id
     WHERE t.tag = ?3 AND t.contact_id > ?4 AND c.total_spent_minor >= ?1
       AND c.last_order_at >= ?2 AND c.erased_at IS NULL
     ORDER BY t.contact_id LIMIT ?5";

/// Every customer's scores, as `analytics` defines them.
const BASELINE_RFM: &str = "SELECT id, total_spent_minor,
            NTILE(5) OVER (ORDER BY last_order_at, id) AS recency,
            NTILE(5) OVER (ORDER BY order_count, id) AS frequency,
            NTILE(5) OVER (ORDER BY total_spent_minor, id) AS monetary
     FROM contacts
     WHERE erased_at IS NULL AND order_count > 0";

struct Options {
    contacts: u64,
    orders: u64,
    requests: u64,
    seed: u64,
    dir: BenchDir,
}

const USAGE: &str = "usage: bench-segments [--contacts N] [--orders M] [--requests R] [--seed S] [--dir PATH] [--keep]";

fn parse_options() -> anyhow::Result<Option<Options>> {
    let (mut contacts, mut orders, mut requests, mut seed) = (1_000_000, 3_000_000, 200, 1);
    let Some(dir) = parse_args(
        USAGE,
        &mut [
            ("--contacts", &mut contacts),
            ("--orders", &mut orders),
            ("--requests", &mut requests),
            ("--seed", &mut seed),
        ],
    )?
    else {
        return Ok(None);
    };
    let options = Options {
        contacts,
        orders,
        requests,
        seed,
        dir,
    };
    ensure!(
        options.contacts >= 1_000,
        "--contacts must be at least 1000"
    );
    ensure!(
        options.contacts <= 99_999_999,
        "--contacts must fit in 8 phone digits"
    );
    ensure!(options.orders >= 1, "--orders must be at least 1");
    ensure!(options.requests >= 2, "--requests must be at least 2");
    Ok(Some(options))
}

fn build_host(dir: &Path) -> anyhow::Result<Host> {
    let api_keys = json!([
        {"name": "bench-segments", "sha256": key_digest(SEGMENTS_KEY), "scopes": ["segments:read", "segments:write", "segments:export"]},
    ])
    .to_string();
    Ok(Host::new(dir)?
        .with_variable("api_keys", &api_keys)
        .with_variable("shop_currency", "JPY")
        .with_clock(Arc::new(ManualClock::new(NOW))))
}

fn get_request(uri: &str) -> kizuna::http::Request {
    request(
        "GET",
        uri,
        &[("authorization", &format!("Bearer {SEGMENTS_KEY}"))],
        Bytes::new(),
    )
}

fn get(host: &Host, uri: &str) -> kizuna::http::Response {
    host.handle(get_request(uri))
}

/// The start of the shop-local day `days` days before `now`, as
/// `within_last_days` reads it.
fn days_ago(now: OffsetDateTime, days: i64) -> String {
    let local = now.to_offset(SHOP_OFFSET);
    timestamp::format(
        (local
            .date()
            .with_time(Time::MIDNIGHT)
            .assume_offset(SHOP_OFFSET)
            - time::Duration::days(days))
        .to_offset(UtcOffset::UTC),
    )
}

/// The largest multiple of 1,000 yen of spend that lets about `target`
/// of the tagged, recent contacts in (at least 1,000 yen).
fn spend_threshold(connection: &Connection, since: &str, target: u64) -> anyhow::Result<i64> {
    let spend: Option<i64> = connection
        .query_row(
            "SELECT c.total_spent_minor FROM contact_tags t JOIN contacts c ON c.id = t.contact_id
             WHERE t.tag = ?1 AND c.last_order_at >= ?2 AND c.erased_at IS NULL
             ORDER BY c.total_spent_minor DESC LIMIT 1 OFFSET ?3",
            params![TAG, since, target.saturating_sub(1)],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    Ok((spend.unwrap_or(0) / 1_000 * 1_000).max(1_000))
}

/// The member statement Kizuna runs for a page of the default fields
/// (`segments::members::page_query`, the builder `segments::api` uses).
fn member_sql(compiled: &Compiled) -> String {
    member_query(compiled, None, PAGE).0
}

fn member_params(
    compiled: &Compiled,
    after: Option<&str>,
    limit: usize,
) -> Vec<rusqlite::types::Value> {
    sql_values(&member_query(compiled, after, limit).1)
}

fn member_query(compiled: &Compiled, after: Option<&str>, limit: usize) -> (String, Vec<Value>) {
    members::page_query(
        &compiled.sql,
        &compiled.params,
        MemberField::DEFAULT,
        after,
        NOW,
        limit,
    )
}

fn count_sql(compiled: &Compiled) -> String {
    format!(
        "SELECT count(*) AS n FROM contacts c WHERE {}",
        compiled.sql
    )
}

/// A member as the default fields show it: id, email, phone, name.
type Member = (String, Option<String>, Option<String>, Option<String>);

/// The segment's parameters as the baseline binds them.
struct Segment {
    spend: i64,
    since: String,
}

/// The baseline's page of at most `limit` members after `after`.
fn baseline_page(
    statement: &mut rusqlite::Statement<'_>,
    segment: &Segment,
    after: &str,
    limit: usize,
) -> rusqlite::Result<Vec<Member>> {
    statement
        .query_map(
            params![segment.spend, segment.since, TAG, after, limit],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?
        .collect()
}

/// RFC 4180 quoting and the guard against spreadsheet formulas, as
/// Kizuna's CSV writes them (Japanese phones are written as in Japan
/// first, by `members::phone_cell`).
fn csv_escape(value: &str) -> String {
    let guarded = if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if guarded.contains([',', '"', '\n', '\r']) || guarded != value {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

fn csv_row(out: &mut String, member: &Member) {
    let (id, email, phone, name) = member;
    let phone = phone.as_deref().map(members::phone_cell);
    let fields = [
        Some(id.as_str()),
        email.as_deref(),
        phone.as_deref(),
        name.as_deref(),
    ];
    let values: Vec<String> = fields.iter().map(|f| csv_escape(f.unwrap_or(""))).collect();
    out.push_str(&values.join(","));
    out.push_str("\r\n");
}

/// The whole export by the baseline: keyset pages of `EXPORT_PAGE`.
fn baseline_export(
    statement: &mut rusqlite::Statement<'_>,
    segment: &Segment,
) -> rusqlite::Result<(String, usize)> {
    let mut csv = String::from("id,email,phone,name\r\n");
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let page = baseline_page(statement, segment, &after, EXPORT_PAGE)?;
        pages += 1;
        for member in &page {
            csv_row(&mut csv, member);
        }
        match page.last() {
            Some(last) if page.len() == EXPORT_PAGE => after.clone_from(&last.0),
            _ => return Ok((csv, pages)),
        }
    }
}

/// 25 cells, `[recency - 1][frequency - 1]`: customers and their spend.
type Grid = [[(i64, i64); 5]; 5];

/// A customer's id and recency, frequency and monetary scores.
type Score = (String, i64, i64, i64);

/// Every customer's scores by the baseline, and the grid.
fn baseline_rfm(statement: &mut rusqlite::Statement<'_>) -> rusqlite::Result<(Vec<Score>, Grid)> {
    let mut grid = [[(0, 0); 5]; 5];
    let mut scores = Vec::new();
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let (id, spent, r, f, m): (String, i64, i64, i64, i64) = (
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
        );
        let cell = &mut grid[(r - 1) as usize][(f - 1) as usize];
        cell.0 += 1;
        cell.1 += spent;
        scores.push((id, r, f, m));
    }
    Ok((scores, grid))
}

/// The grid of a `GET /v1/analytics/rfm` answer.
fn answer_grid(answer: &Json) -> Grid {
    let mut grid = [[(0, 0); 5]; 5];
    for cell in answer["cells"].as_array().expect("cells") {
        let score = |name: &str| cell[name].as_u64().expect("a score") as usize - 1;
        grid[score("recency")][score("frequency")] = (
            cell["count"].as_i64().expect("count"),
            cell["spend_minor"].as_i64().expect("spend"),
        );
    }
    grid
}

fn counts(host: &Host, segment_id: &str, requests: u64, expected: i64) -> Stats {
    let uri = format!("/v1/segments/{segment_id}/count");
    measure("segment count", requests, |j| {
        let req = get_request(&uri);
        let started = Instant::now();
        let response = host.handle(req);
        let elapsed = started.elapsed();
        assert_eq!(
            response.status(),
            200,
            "count {j}: {}",
            body_text(&response)
        );
        let answer: Json = serde_json::from_slice(response.body()).expect("count answers JSON");
        assert_eq!(answer["count"], expected, "count {j}: {answer}");
        elapsed
    })
}

fn first_pages(host: &Host, segment_id: &str, requests: u64, expected: &[Member]) -> Stats {
    let uri = format!("/v1/segments/{segment_id}/contacts?limit={PAGE}");
    measure("first page (50)", requests, |j| {
        let req = get_request(&uri);
        let started = Instant::now();
        let response = host.handle(req);
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 200, "page {j}: {}", body_text(&response));
        let answer: Json = serde_json::from_slice(response.body()).expect("page answers JSON");
        let text = |v: &Json| v.as_str().map(str::to_owned);
        let members: Vec<Member> = answer["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|m| {
                (
                    text(&m["id"]).expect("an id"),
                    text(&m["email"]),
                    text(&m["phone"]),
                    text(&m["name"]),
                )
            })
            .collect();
        assert!(members == expected, "page {j}: not the baseline's members");
        elapsed
    })
}

/// One full CSV export through the API: the text and the pages fetched.
fn export(host: &Host, segment_id: &str) -> (String, usize) {
    let mut csv = String::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut uri = format!("/v1/segments/{segment_id}/contacts?format=csv&limit={EXPORT_PAGE}");
        if let Some(cursor) = &cursor {
            uri.push_str(&format!("&cursor={cursor}"));
        }
        let response = get(host, &uri);
        assert_eq!(
            response.status(),
            200,
            "export page {pages}: {}",
            body_text(&response)
        );
        pages += 1;
        csv.push_str(std::str::from_utf8(response.body()).expect("CSV is UTF-8"));
        cursor = response
            .headers()
            .get("next-cursor")
            .map(|v| v.to_str().expect("an ASCII cursor").to_owned());
        if cursor.is_none() {
            return (csv, pages);
        }
    }
}

fn exports(host: &Host, segment_id: &str, expected: &str) -> (Stats, usize) {
    let mut pages = 0;
    let stats = measure("CSV export", EXPORT_RUNS, |j| {
        let started = Instant::now();
        let (csv, fetched) = export(host, segment_id);
        let elapsed = started.elapsed();
        assert!(
            csv == expected,
            "export {j}: not the baseline's CSV ({} bytes, expected {})",
            csv.len(),
            expected.len()
        );
        pages = fetched;
        elapsed
    });
    (stats, pages)
}

/// Forgets when RFM was computed, so that the next reader recomputes.
fn invalidate_rfm(connection: &Connection) -> rusqlite::Result<usize> {
    connection.execute("DELETE FROM analytics_state WHERE name = 'rfm'", [])
}

fn rfm_recomputes(host: &Host, connection: &Connection, expected: &Grid) -> Stats {
    measure("RFM recompute", RFM_RUNS, |j| {
        invalidate_rfm(connection).expect("invalidate the RFM computation");
        let req = get_request("/v1/analytics/rfm");
        let started = Instant::now();
        let response = host.handle(req);
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 200, "RFM {j}: {}", body_text(&response));
        let answer: Json = serde_json::from_slice(response.body()).expect("RFM answers JSON");
        assert_eq!(
            answer["computed_at"],
            timestamp::format(NOW),
            "RFM {j}: not recomputed"
        );
        assert!(
            answer_grid(&answer) == *expected,
            "RFM {j}: not the baseline's grid: {answer}"
        );
        elapsed
    })
}

fn timed<T>(mut one: impl FnMut() -> T) -> (Duration, T) {
    let started = Instant::now();
    let value = one();
    (started.elapsed(), value)
}

fn run(options: &Options, dir: &Path) -> anyhow::Result<()> {
    ensure!(
        TAGS.iter().any(|(tag, _)| *tag == TAG),
        "the generator has no tag {TAG}"
    );
    let host = build_host(dir)?;
    let database = host.database_path();
    println!(
        "bench-segments: {} contacts, {} orders, seed {}, {} requests per scenario, now {}",
        options.contacts,
        options.orders,
        options.seed,
        options.requests,
        timestamp::format(NOW)
    );
    print_machine();
    println!("directory: {}", dir.display());

    // The first request runs the migrations (and switches the file to WAL).
    let first = get(&host, "/v1/segments");
    ensure!(
        first.status() == 200,
        "first request failed: {}",
        body_text(&first)
    );

    let spec = Spec {
        contacts: options.contacts,
        orders: options.orders,
        seed: options.seed,
        now: NOW,
    };
    let generated = datagen::generate(&database, &spec)?;
    let rows = generated.rows();
    println!(
        "datagen: {} contacts ({} customers), {} tags, {} consents, {} orders, {} lines, {} refunds, \
         {} points entries, {} lots, {} allocations, {} accounts: {rows} rows in {:.1} s \
         (planned in {:.1} s, written in {:.1} s: {:.0} rows/s), {:.1} MiB",
        generated.contacts,
        generated.customers,
        generated.tags,
        generated.consents,
        generated.orders,
        generated.lines,
        generated.refunds,
        generated.entries,
        generated.lots,
        generated.allocations,
        generated.accounts,
        (generated.planned + generated.written).as_secs_f64(),
        generated.planned.as_secs_f64(),
        generated.written.as_secs_f64(),
        rows as f64 / generated.written.as_secs_f64(),
        mib(kizuna_tests::bench::file_size(&database)),
    );

    let baseline = open_baseline(&database)?;
    let (took, checked) = timed(|| datagen::verify(&baseline));
    let checked = checked?;
    ensure!(
        checked.counters_off == 0 && checked.ledgers_off == 0,
        "generated data is inconsistent: {checked:?}"
    );
    println!(
        "checked in {:.1} s: every contact's counters match its orders, every points account adds up",
        took.as_secs_f64()
    );

    // The segment, with X read from the data.
    let since = days_ago(NOW, WITHIN_DAYS);
    let spend = spend_threshold(&baseline, &since, options.contacts / MEMBER_SHARE)?;
    let segment = Segment { spend, since };
    let definition = json!({"all": [
        {"field": "total_spent", "op": "gte", "value": spend},
        {"field": "last_order_at", "op": "within_last_days", "value": WITHIN_DAYS},
        {"field": "tags", "op": "contains", "value": TAG},
    ]});
    let created = host.handle(request(
        "POST",
        "/v1/segments",
        &[
            ("authorization", &format!("Bearer {SEGMENTS_KEY}")),
            ("content-type", "application/json"),
        ],
        json!({"name": "bench: recent newsletter spenders", "definition": definition}).to_string(),
    ));
    ensure!(
        created.status() == 201,
        "creating the segment failed: {}",
        body_text(&created)
    );
    let created: Json = serde_json::from_slice(created.body())?;
    let segment_id = created["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no segment id in {created}"))?
        .to_owned();

    // What Kizuna runs for it, compiled here with the host's `now`.
    let node = definition::parse(&definition).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let compiled = compile(
        &node,
        &Env {
            now: NOW,
            vip_threshold: 0,
        },
        false,
    );
    ensure!(
        compiled.params
            == [
                Value::Integer(spend),
                Value::Text(segment.since.clone()),
                Value::Text(TAG.to_owned())
            ],
        "the compiled parameters are not the baseline's: {:?}",
        compiled.params
    );

    // The expected answers, by the baseline (not timed).
    let mut count_statement = baseline.prepare(BASELINE_COUNT)?;
    let mut page_statement = baseline.prepare(BASELINE_PAGE)?;
    let mut rfm_statement = baseline.prepare(BASELINE_RFM)?;
    let count_of = |statement: &mut rusqlite::Statement<'_>| -> rusqlite::Result<i64> {
        statement.query_row(params![segment.spend, segment.since, TAG], |r| r.get(0))
    };
    let members = count_of(&mut count_statement)?;
    let first_page = baseline_page(&mut page_statement, &segment, "", PAGE)?;
    let (expected_csv, baseline_pages) = baseline_export(&mut page_statement, &segment)?;
    ensure!(
        i64::try_from(expected_csv.lines().count())? == members + 1,
        "the baseline export does not hold every member"
    );
    // The generated statements return the same rows on the bare connection.
    let generated_count: i64 = baseline.query_row(
        &count_sql(&compiled),
        rusqlite::params_from_iter(sql_values(&compiled.params)),
        |r| r.get(0),
    )?;
    ensure!(
        generated_count == members,
        "generated count {generated_count}, baseline {members}"
    );
    let generated_page: Vec<String> = baseline
        .prepare(&member_sql(&compiled))?
        .query_map(
            rusqlite::params_from_iter(member_params(&compiled, None, PAGE)),
            |r| r.get(0),
        )?
        .take(PAGE)
        .collect::<rusqlite::Result<_>>()?;
    ensure!(
        generated_page.iter().eq(first_page.iter().map(|m| &m.0)),
        "the generated member query's first page is not the baseline's"
    );
    let (tagged, recent, spenders): (i64, i64, i64) = baseline.query_row(
        "SELECT (SELECT count(*) FROM contact_tags WHERE tag = ?1),
                (SELECT count(*) FROM contacts WHERE last_order_at >= ?2),
                (SELECT count(*) FROM contacts WHERE total_spent_minor >= ?3)",
        params![TAG, segment.since, segment.spend],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    println!(
        "segment {segment_id}: {definition}\n  {members} members; alone, each condition matches: \
         total_spent >= {spend} {spenders}, last order since {} {recent}, tag {TAG} {tagged}",
        segment.since
    );

    println!();
    print_plan(
        "generated count SQL",
        &[count_sql(&compiled)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")],
    );
    print_plan(
        "its plan",
        &query_plan(
            &baseline,
            &count_sql(&compiled),
            rusqlite::params_from_iter(sql_values(&compiled.params)),
        )?,
    );
    print_plan(
        "generated member page SQL (first page; later pages bind the cursor)",
        &[member_sql(&compiled)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")],
    );
    print_plan(
        "its plan",
        &query_plan(
            &baseline,
            &member_sql(&compiled),
            rusqlite::params_from_iter(member_params(&compiled, None, PAGE)),
        )?,
    );
    let base_count_plan = query_plan(
        &baseline,
        BASELINE_COUNT,
        params![spend, segment.since, TAG],
    )?;
    print_plan("baseline count plan", &base_count_plan);
    let base_page_plan = query_plan(
        &baseline,
        BASELINE_PAGE,
        params![spend, segment.since, TAG, "", PAGE],
    )?;
    print_plan("baseline page plan", &base_page_plan);
    print_plan(
        "baseline RFM plan",
        &query_plan(&baseline, BASELINE_RFM, [])?,
    );
    ensure!(
        base_page_plan
            .iter()
            .any(|s| s.contains("contact_tags_tag_idx"))
            && !base_page_plan.iter().any(|s| s.contains("TEMP B-TREE")),
        "the baseline page should walk the tag index in id order"
    );
    println!();

    let count_stats = counts(&host, &segment_id, options.requests, members);
    let base_count = measure("baseline count", options.requests, |j| {
        let (elapsed, found) = timed(|| count_of(&mut count_statement).expect("baseline count"));
        assert_eq!(found, members, "baseline count {j}");
        elapsed
    });
    let mut generated_count_statement = baseline.prepare(&count_sql(&compiled))?;
    let bare_count = measure("generated count", options.requests, |j| {
        let (elapsed, found) = timed(|| {
            generated_count_statement
                .query_row(
                    rusqlite::params_from_iter(sql_values(&compiled.params)),
                    |r| r.get::<_, i64>(0),
                )
                .expect("generated count")
        });
        assert_eq!(found, members, "generated count {j}");
        elapsed
    });
    let page_stats = first_pages(&host, &segment_id, options.requests, &first_page);
    let base_page = measure("baseline page", options.requests, |j| {
        let (elapsed, found) = timed(|| {
            baseline_page(&mut page_statement, &segment, "", PAGE).expect("baseline page")
        });
        assert!(found == first_page, "baseline page {j}");
        elapsed
    });
    let mut generated_page_statement = baseline.prepare(&member_sql(&compiled))?;
    let bare_page = measure("generated page", options.requests, |j| {
        let (elapsed, found) = timed(|| {
            generated_page_statement
                .query_map(
                    rusqlite::params_from_iter(member_params(&compiled, None, PAGE)),
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .and_then(|rows| rows.take(PAGE).collect::<rusqlite::Result<Vec<Member>>>())
                .expect("generated page")
        });
        assert!(found == first_page, "generated page {j}");
        elapsed
    });
    let (export_stats, export_pages) = exports(&host, &segment_id, &expected_csv);
    let base_export = measure("baseline export", EXPORT_RUNS, |j| {
        let (elapsed, (csv, _)) =
            timed(|| baseline_export(&mut page_statement, &segment).expect("baseline export"));
        assert!(csv == expected_csv, "baseline export {j}");
        elapsed
    });
    let (scores, grid) = baseline_rfm(&mut rfm_statement)?;
    let rfm_stats = rfm_recomputes(&host, &baseline, &grid);
    let base_rfm = measure("baseline RFM", RFM_RUNS, |j| {
        let (elapsed, found) = timed(|| baseline_rfm(&mut rfm_statement).expect("baseline RFM"));
        assert!(
            found.1 == grid && found.0.len() == scores.len(),
            "baseline RFM {j}"
        );
        elapsed
    });
    // Kizuna's stored scores are the baseline's, customer by customer.
    let mut stored = baseline.prepare(
        "SELECT contact_id, recency, frequency, monetary FROM rfm_scores ORDER BY contact_id",
    )?;
    let stored: Vec<Score> = stored
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut expected_scores = scores;
    expected_scores.sort_unstable();
    ensure!(
        stored == expected_scores,
        "rfm_scores ({} rows) differ from the baseline's scores ({} customers)",
        stored.len(),
        expected_scores.len()
    );

    println!();
    print_table(&[
        &count_stats,
        &bare_count,
        &base_count,
        &page_stats,
        &bare_page,
        &base_page,
        &export_stats,
        &base_export,
        &rfm_stats,
        &base_rfm,
    ]);
    println!();
    print_ratios(&[
        ("segment count / baseline count", &count_stats, &base_count),
        ("generated count / baseline count", &bare_count, &base_count),
        ("first page / baseline page", &page_stats, &base_page),
        ("generated page / baseline page", &bare_page, &base_page),
        ("CSV export / baseline export", &export_stats, &base_export),
        ("RFM recompute / baseline RFM", &rfm_stats, &base_rfm),
    ]);
    println!();
    println!(
        "CSV export: {members} rows, {} bytes, {export_pages} page(s) of up to {EXPORT_PAGE} \
         (baseline {baseline_pages}), identical to the baseline's; RFM: {} customers scored, \
         rfm_scores identical to the baseline's scores, grid identical",
        expected_csv.len(),
        stored.len(),
    );
    drop(stored);
    println!("kizuna database: {}", database_size(&database));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let Some(options) = parse_options()? else {
        return Ok(());
    };
    run_in_dir(&options.dir, |dir| run(&options, dir))
}
