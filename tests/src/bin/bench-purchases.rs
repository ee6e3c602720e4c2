//! `bench-purchases`: how fast Kizuna ingests signed order webhooks on a
//! full database, next to what bare SQLite manages on the same disk with
//! the same durability settings.
//!
//! What it measures, all in one process and one run:
//!
//! 1. Pre-loads `--contacts` contacts (default 100,000) and `--orders`
//!    orders (default 300,000, spread over the contacts at random, so 3 per
//!    contact on average) straight into the host's database file with
//!    rusqlite, in the real schema: each order `paid`, from source
//!    `kizuna`, with 5 lines, placed over the last two years; each contact
//!    with a search row per email and name and the counters
//!    (`order_count`, `total_spent_minor`, average, first and last order,
//!    lifecycle stage) its orders give; every other contact linked to a
//!    shop customer id in `contact_external_ids`. What those orders'
//!    arrival would have left is there too: an `order_placed` timeline
//!    entry, a `webhook_events` row and an `applied` delivery per order.
//!    Then it checkpoints and syncs the file, so the measured phases start
//!    from a clean, durable file.
//! 2. **order ingest**: `--requests` sequential `POST /v1/webhooks/orders`
//!    through `Host::handle`, i.e. the whole component: a fresh connection
//!    and pragmas per request, the Standard Webhooks signature check over
//!    the raw body, parsing and validation, event de-duplication, customer
//!    matching (email, then insert or fill-empty update), the order and
//!    its 5 lines, the order's status, the contact's counters, a timeline
//!    entry and the delivery log, in one `BEGIN IMMEDIATE` transaction
//!    with `synchronous = FULL`. Each request is an `order.paid` event in
//!    Kizuna's own format for a new order, signed with a unique
//!    `webhook-id` and the current time. Even requests name a new
//!    customer email (create path), odd ones the email of a preloaded
//!    contact (matched path). Every answer must be 200 with
//!    `"status":"applied"` or the bench panics.
//! 3. **baseline insert**: a separate file in the same directory, with the
//!    same pragmas (WAL, `synchronous = FULL`, `busy_timeout`,
//!    `secure_delete`, `foreign_keys`), tables `orders` and `order_lines`
//!    with the real columns, keys and indexes (no contacts table, so no
//!    foreign key to it), pre-filled with the same orders and lines, then
//!    `BEGIN IMMEDIATE; INSERT` one order `; INSERT` its 5 lines `; COMMIT`
//!    per request on one open connection with cached statements: the floor
//!    set by storing the same rows in one fsync'd commit on this disk.
//!
//! Run it in release (debug numbers mean nothing):
//!
//! ```text
//! cargo run --release -p kizuna-tests --bin bench-purchases
//! cargo run --release -p kizuna-tests --bin bench-purchases -- --contacts 10000 --orders 30000 --requests 500
//! ```
//!
//! Options: `--contacts N` (default 100000), `--orders M` (default
//! 300000), `--requests R` (default 2000), `--dir PATH` (default a new
//! directory under the system temp dir; it must not already hold a Kizuna
//! or baseline database), `--keep` (leave the databases behind instead of
//! deleting them).
//!
//! Reading the output: one row per scenario with the number of requests,
//! throughput (requests per second of wall time over the whole sequential
//! loop, one request at a time) and per-request latency percentiles (p50,
//! p99, max, in milliseconds, nearest-rank). Only `Host::handle` is timed:
//! building and signing the event is the sender's work. The ratio
//! compares Kizuna with its baseline: a throughput ratio of 0.50 means
//! Kizuna ingests half as many orders per second as the bare insert; a p50
//! ratio of 2.0 means its median request takes twice as long. Writes are
//! usually bound by the fsyncs per commit, so compare them on the same
//! machine and disk only; the context lines say which machine, SQLite
//! version and directory the numbers come from. The final lines give the
//! database sizes (main file and WAL) and the row counts, which are
//! checked against what the run wrote: `M + R` orders with `5 (M + R)`
//! lines, one new contact per create-path request, and contact counters
//! that add up to the orders.

use anyhow::ensure;
use bytes::Bytes;
use kizuna::auth::key_digest;
use kizuna::signatures::sign_standard;
use kizuna::text::search_fold;
use kizuna::timestamp;
use kizuna_tests::Host;
use kizuna_tests::bench::{
    BenchDir, Lcg, Stats, baseline_path, body_text, database_size, file_size, measure, mib,
    open_baseline, parse_args, print_machine, print_ratios, print_table, request, run_in_dir,
    settle, uuid_like,
};
use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use serde_json::{Value as Json, json};
use std::path::Path;
use std::time::Instant;
use time::OffsetDateTime;

const READ_KEY: &str = "bench-orders-read-key-0123456789";
/// Standard Webhooks secret: `whsec_` and the base64 of the key.
const ORDERS_SECRET: &str = "whsec_YmVuY2gtb3JkZXJzLXdlYmhvb2stc2VjcmV0LTAxMjM=";
const SHOPIFY_SECRET: &str = "bench-shopify-secret-0123456789";
const WOO_SECRET: &str = "bench-woocommerce-secret-0123456789";
/// Rows per transaction while pre-loading (contacts, or orders).
const PRELOAD_BATCH: u64 = 10_000;
const LINES_PER_ORDER: usize = 5;
/// Preloaded orders are placed within this many seconds before the run.
const TWO_YEARS: i64 = 2 * 365 * 24 * 60 * 60;
const SKUS: u64 = 400;
const CATEGORIES: &[&str] = &[
    "tea",
    "coffee",
    "sweets",
    "snacks",
    "noodles",
    "seasoning",
    "tableware",
    "gift",
];
/// UUID prefixes of preloaded rows, one per table.
const CONTACT_IDS: u32 = 0x0190_0000;
const ORDER_IDS: u32 = 0x0191_0000;
const INTERACTION_IDS: u32 = 0x0192_0000;
const DELIVERY_IDS: u32 = 0x0193_0000;

struct Options {
    contacts: u64,
    orders: u64,
    requests: u64,
    dir: BenchDir,
}

const USAGE: &str =
    "usage: bench-purchases [--contacts N] [--orders M] [--requests R] [--dir PATH] [--keep]";

fn parse_options() -> anyhow::Result<Option<Options>> {
    let (mut contacts, mut orders, mut requests) = (100_000, 300_000, 2_000);
    let Some(dir) = parse_args(
        USAGE,
        &mut [
            ("--contacts", &mut contacts),
            ("--orders", &mut orders),
            ("--requests", &mut requests),
        ],
    )?
    else {
        return Ok(None);
    };
    let options = Options {
        contacts,
        orders,
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

/// One order line: what a shop sends and what ends up in `order_lines`.
struct LinePlan {
    sku: u64,
    quantity: i64,
    unit_price: i64,
}

impl LinePlan {
    fn random(pick: &mut Lcg) -> LinePlan {
        LinePlan {
            sku: pick.below(SKUS),
            quantity: 1 + pick.below(3) as i64,
            unit_price: (5 + pick.below(96) as i64) * 100,
        }
    }
    fn sku(&self) -> String {
        format!("SKU-{:04}", self.sku)
    }
    fn name(&self) -> String {
        format!("Bench product {}", self.sku)
    }
    fn category(&self) -> &'static str {
        CATEGORIES[(self.sku % CATEGORIES.len() as u64) as usize]
    }
    fn total(&self) -> i64 {
        self.quantity * self.unit_price
    }
    /// Japan's 10 % consumption tax, included in the price.
    fn tax(&self) -> i64 {
        self.total() / 11
    }
}

/// One order: whose it is, when it was placed, and its lines; amounts in
/// yen, tax included, shipping free from 10,000 yen.
struct OrderPlan {
    contact: u64,
    placed_at: i64,
    lines: [LinePlan; LINES_PER_ORDER],
}

impl OrderPlan {
    fn random(pick: &mut Lcg, contact: u64, placed_at: i64) -> OrderPlan {
        OrderPlan {
            contact,
            placed_at,
            lines: std::array::from_fn(|_| LinePlan::random(pick)),
        }
    }
    fn subtotal(&self) -> i64 {
        self.lines.iter().map(LinePlan::total).sum()
    }
    fn shipping(&self) -> i64 {
        if self.subtotal() >= 10_000 { 0 } else { 500 }
    }
    fn tax(&self) -> i64 {
        self.lines.iter().map(LinePlan::tax).sum()
    }
    fn total(&self) -> i64 {
        self.subtotal() + self.shipping()
    }
    fn placed_text(&self) -> String {
        timestamp::format(unix(self.placed_at))
    }
}

fn unix(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(seconds).expect("a time within range")
}

/// The preloaded orders, sorted by the time they were placed so that ids
/// follow time as UUID v7 ids do.
fn plan_orders(contacts: u64, orders: u64, now: i64) -> Vec<OrderPlan> {
    let mut pick = Lcg(0x0bde_0001);
    let mut plans: Vec<OrderPlan> = (0..orders)
        .map(|_| {
            let contact = pick.below(contacts);
            // At least a day old, so no preloaded order is newer than the run's.
            let placed_at = now - 86_400 - pick.below(TWO_YEARS as u64 - 86_400) as i64;
            OrderPlan::random(&mut pick, contact, placed_at)
        })
        .collect();
    plans.sort_by_key(|p| p.placed_at);
    plans
}

/// What `refresh_contact` derives from a contact's paid orders.
#[derive(Clone, Default)]
struct Counters {
    count: i64,
    spent: i64,
    first: Option<i64>,
    last: Option<i64>,
}

impl Counters {
    fn stage(&self) -> &'static str {
        match self.count {
            0 => "lead",
            1 => "customer",
            _ => "repeat",
        }
    }
}

fn build_host(dir: &Path) -> anyhow::Result<Host> {
    let api_keys = json!([
        {"name": "bench-orders", "sha256": key_digest(READ_KEY), "scopes": ["orders:read"]},
    ])
    .to_string();
    Ok(Host::new(dir)?
        .with_variable("api_keys", &api_keys)
        .with_variable("default_phone_region", "JP")
        .with_variable("shop_currency", "JPY")
        .with_variable("orders_webhook_secrets", ORDERS_SECRET)
        .with_variable("shopify_webhook_secrets", SHOPIFY_SECRET)
        .with_variable("woocommerce_webhook_secrets", WOO_SECRET))
}

fn contact_id(i: u64) -> String {
    uuid_like(CONTACT_IDS, i)
}

fn contact_email(i: u64) -> String {
    format!("user{i}@example.jp")
}

fn contact_name(i: u64) -> String {
    format!("Bench User {i}")
}

/// Inserts one paid order and its lines, as the preload and the baseline
/// both store them (cached statements on the transaction's connection).
fn insert_order(
    tx: &Transaction<'_>,
    id: &str,
    external_id: &str,
    contact_id: &str,
    plan: &OrderPlan,
) -> rusqlite::Result<()> {
    let placed = plan.placed_text();
    tx.prepare_cached(
        "INSERT INTO orders (id, source, external_id, contact_id, order_number, status, currency,
             subtotal_minor, shipping_minor, tax_minor, discount_minor, total_minor, points_used,
             paid, cancelled, placed_at, paid_at, created_at, updated_at)
         VALUES (?1, 'kizuna', ?2, ?3, ?4, 'paid', 'JPY', ?5, ?6, ?7, 0, ?8, 0, 1, 0, ?9, ?9, ?9, ?9)",
    )?
    .execute(params![
        id,
        external_id,
        contact_id,
        format!("#{external_id}"),
        plan.subtotal(),
        plan.shipping(),
        plan.tax(),
        plan.total(),
        placed
    ])?;
    let mut line = tx.prepare_cached(
        "INSERT INTO order_lines (order_id, line_no, external_id, sku, product_name, category,
             quantity, unit_price_minor, line_total_minor, discount_minor, tax_minor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10)",
    )?;
    for (n, l) in plan.lines.iter().enumerate() {
        line.execute(params![
            id,
            n + 1,
            format!("L{}", n + 1),
            l.sku(),
            l.name(),
            l.category(),
            l.quantity,
            l.unit_price,
            l.total(),
            l.tax()
        ])?;
    }
    Ok(())
}

/// Writes the contacts, their orders and what those orders' arrival left
/// straight into Kizuna's schema, in large transactions, with
/// `synchronous = OFF` for speed (the file is checkpointed and synced at
/// the end). Returns the number of rows written.
fn preload(path: &Path, contacts: u64, plans: &[OrderPlan], now: i64) -> anyhow::Result<u64> {
    let mut connection = Connection::open(path)?;
    connection.execute_batch(
        "PRAGMA synchronous = OFF; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    )?;
    let mode: String = connection.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    ensure!(
        mode == "wal",
        "the migration should have set WAL, found {mode}"
    );
    let mut counters = vec![Counters::default(); usize::try_from(contacts)?];
    for plan in plans {
        let c = &mut counters[plan.contact as usize];
        c.count += 1;
        c.spent += plan.total();
        c.first = Some(c.first.map_or(plan.placed_at, |f| f.min(plan.placed_at)));
        c.last = Some(c.last.map_or(plan.placed_at, |l| l.max(plan.placed_at)));
    }
    // Every contact existed before the oldest order.
    let created = timestamp::format(unix(now - TWO_YEARS - 86_400));
    let mut rows = 0;

    let mut next = 0;
    while next < contacts {
        let end = (next + PRELOAD_BATCH).min(contacts);
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut contact = tx.prepare(
                "INSERT INTO contacts (id, email, phone, name, attributes, lifecycle_stage, source,
                     order_count, total_spent_minor, average_order_value_minor, first_order_at,
                     last_order_at, created_at, created_by, updated_at, updated_by)
                 VALUES (?1, ?2, ?3, ?4, '{}', ?5, 'webhook:kizuna', ?6, ?7, ?8, ?9, ?10,
                     ?11, 'webhook:kizuna', ?11, 'webhook:kizuna')",
            )?;
            let mut search =
                tx.prepare("INSERT INTO contact_search (term, contact_id) VALUES (?1, ?2)")?;
            let mut link = tx.prepare(
                "INSERT INTO contact_external_ids (source, external_id, contact_id, created_at)
                 VALUES ('kizuna', ?1, ?2, ?3)",
            )?;
            for i in next..end {
                let id = contact_id(i);
                let email = contact_email(i);
                let name = contact_name(i);
                let c = &counters[i as usize];
                contact.execute(params![
                    id,
                    email,
                    format!("+8190{i:08}"),
                    name,
                    c.stage(),
                    c.count,
                    c.spent,
                    if c.count > 0 { c.spent / c.count } else { 0 },
                    c.first.map(|t| timestamp::format(unix(t))),
                    c.last.map(|t| timestamp::format(unix(t))),
                    created
                ])?;
                // What `refresh_search_terms` stores: the folded email and name.
                search.execute(params![search_fold(&email), id])?;
                search.execute(params![search_fold(&name), id])?;
                rows += 3;
                if i.is_multiple_of(2) {
                    link.execute(params![format!("C{i}"), id, created])?;
                    rows += 1;
                }
            }
        }
        tx.commit()?;
        next = end;
    }

    for (batch, chunk) in plans.chunks(PRELOAD_BATCH as usize).enumerate() {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (n, plan) in chunk.iter().enumerate() {
            let k = (batch * PRELOAD_BATCH as usize + n) as u64;
            let id = uuid_like(ORDER_IDS, k);
            let external_id = format!("bench-{k}");
            let event_id = format!("msg_bench_{k}");
            let contact = contact_id(plan.contact);
            let placed = plan.placed_text();
            insert_order(&tx, &id, &external_id, &contact, plan)?;
            // The timeline entry, event and delivery the webhook left.
            let data = json!({"order_id": id, "source": "kizuna", "external_id": external_id,
                "number": format!("#{external_id}"), "total_minor": plan.total(),
                "currency": "JPY", "event": "paid"});
            tx.prepare_cached(
                "INSERT INTO interactions (id, contact_id, kind, data, occurred_at, recorded_at, recorded_by)
                 VALUES (?1, ?2, 'order_placed', ?3, ?4, ?4, 'webhook:kizuna')",
            )?
            .execute(params![
                uuid_like(INTERACTION_IDS, k),
                contact,
                data.to_string(),
                placed
            ])?;
            tx.prepare_cached(
                "INSERT INTO webhook_events (source, event_id, topic, received_at)
                 VALUES ('kizuna', ?1, 'order.paid', ?2)",
            )?
            .execute(params![event_id, placed])?;
            tx.prepare_cached(
                "INSERT INTO webhook_deliveries (id, source, event_id, delivery_id, topic,
                     order_external_id, received_at, outcome)
                 VALUES (?1, 'kizuna', ?2, ?2, 'order.paid', ?3, ?4, 'applied')",
            )?
            .execute(params![
                uuid_like(DELIVERY_IDS, k),
                event_id,
                external_id,
                placed
            ])?;
            rows += 4 + LINES_PER_ORDER as u64;
        }
        tx.commit()?;
    }
    settle(&connection, path)?;
    Ok(rows)
}

/// The `order.paid` event of request `j` in Kizuna's own format, and the
/// order it describes. Even requests name a new customer, odd ones a
/// preloaded contact (by email, with the phone and name it already has).
fn event_body(j: u64, pick: &mut Lcg, contacts: u64, now: OffsetDateTime) -> (String, OrderPlan) {
    let (contact, customer) = if j.is_multiple_of(2) {
        (
            contacts + j,
            json!({"email": format!("buyer{j}@example.jp"), "name": format!("Bench Buyer {j}"),
                   "phone": format!("080-{:04}-{:04}", j / 10_000 % 10_000, j % 10_000)}),
        )
    } else {
        let i = pick.below(contacts);
        (
            i,
            json!({"email": contact_email(i), "name": contact_name(i), "phone": format!("090{i:08}")}),
        )
    };
    let plan = OrderPlan::random(pick, contact, now.unix_timestamp());
    let placed = plan.placed_text();
    let lines: Vec<Json> = plan
        .lines
        .iter()
        .enumerate()
        .map(|(n, l)| {
            json!({"id": format!("L{}", n + 1), "sku": l.sku(), "name": l.name(),
                   "category": l.category(), "quantity": l.quantity,
                   "unit_price": l.unit_price.to_string(), "total": l.total().to_string(),
                   "discount": "0", "tax": l.tax().to_string()})
        })
        .collect();
    let body = json!({
        "type": "order.paid",
        "timestamp": placed,
        "data": {
            "id": format!("new-{j}"), "number": format!("#new-{j}"), "currency": "JPY",
            "placed_at": placed, "updated_at": placed,
            "customer": customer,
            "subtotal": plan.subtotal().to_string(), "shipping": plan.shipping().to_string(),
            "tax": plan.tax().to_string(), "discount": "0", "total": plan.total().to_string(),
            "points_used": 0,
            "lines": lines,
        }
    });
    (body.to_string(), plan)
}

/// Returns the stats and the sum of the ingested orders' totals.
fn order_ingest(host: &Host, contacts: u64, requests: u64) -> (Stats, i64) {
    let mut pick = Lcg(0x0bde_0002);
    let mut spent = 0;
    let stats = measure("order ingest", requests, |j| {
        let now = OffsetDateTime::now_utc();
        let (body, plan) = event_body(j, &mut pick, contacts, now);
        spent += plan.total();
        let webhook_id = format!("msg_run_{j}");
        let ts = now.unix_timestamp();
        let signature = sign_standard(ORDERS_SECRET, &webhook_id, ts, body.as_bytes());
        let req = request(
            "POST",
            "/v1/webhooks/orders",
            &[
                ("content-type", "application/json"),
                ("webhook-id", &webhook_id),
                ("webhook-timestamp", &ts.to_string()),
                ("webhook-signature", &signature),
            ],
            body,
        );
        let started = Instant::now();
        let response = host.handle(req);
        let elapsed = started.elapsed();
        assert_eq!(
            response.status(),
            200,
            "order {j}: {}",
            body_text(&response)
        );
        let answer: Json = serde_json::from_slice(response.body()).expect("ingest answers JSON");
        assert!(
            answer["status"] == "applied" && answer["order_id"].is_string(),
            "order {j}: {answer}"
        );
        elapsed
    });
    (stats, spent)
}

/// The real `orders` and `order_lines` of migration 0002, without the
/// foreign key to `contacts` (the baseline has no contacts table).
const BASELINE_SCHEMA: &str = "
CREATE TABLE orders (
    id                  TEXT PRIMARY KEY,
    source              TEXT NOT NULL,
    external_id         TEXT NOT NULL,
    contact_id          TEXT,
    order_number        TEXT,
    status              TEXT NOT NULL,
    currency            TEXT NOT NULL,
    subtotal_minor      INTEGER NOT NULL,
    shipping_minor      INTEGER NOT NULL,
    tax_minor           INTEGER NOT NULL,
    discount_minor      INTEGER NOT NULL,
    total_minor         INTEGER NOT NULL,
    points_used         INTEGER NOT NULL DEFAULT 0,
    refunded_minor      INTEGER NOT NULL DEFAULT 0,
    paid                INTEGER NOT NULL DEFAULT 0,
    cancelled           INTEGER NOT NULL DEFAULT 0,
    placed_at           TEXT NOT NULL,
    paid_at             TEXT,
    cancelled_at        TEXT,
    source_updated_at   TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    UNIQUE (source, external_id)
) STRICT;
CREATE INDEX orders_contact_idx ON orders (contact_id, placed_at DESC, id DESC);
CREATE TABLE order_lines (
    order_id          TEXT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no           INTEGER NOT NULL,
    external_id       TEXT,
    sku               TEXT,
    product_name      TEXT,
    category          TEXT,
    quantity          INTEGER NOT NULL,
    unit_price_minor  INTEGER NOT NULL,
    line_total_minor  INTEGER NOT NULL,
    discount_minor    INTEGER NOT NULL DEFAULT 0,
    tax_minor         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (order_id, line_no)
) STRICT, WITHOUT ROWID;
CREATE INDEX order_lines_sku_idx ON order_lines (sku) WHERE sku IS NOT NULL;
CREATE INDEX order_lines_category_idx ON order_lines (category) WHERE category IS NOT NULL;
";

fn baseline(
    path: &Path,
    contacts: u64,
    plans: &[OrderPlan],
    requests: u64,
) -> anyhow::Result<Stats> {
    let mut connection = open_baseline(path)?;
    connection.execute_batch(BASELINE_SCHEMA)?;
    for (batch, chunk) in plans.chunks(PRELOAD_BATCH as usize).enumerate() {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (n, plan) in chunk.iter().enumerate() {
            let k = (batch * PRELOAD_BATCH as usize + n) as u64;
            insert_order(
                &tx,
                &uuid_like(ORDER_IDS, k),
                &format!("bench-{k}"),
                &contact_id(plan.contact),
                plan,
            )?;
        }
        tx.commit()?;
    }
    settle(&connection, path)?;

    let mut pick = Lcg(0x0bde_0003);
    Ok(measure("baseline insert", requests, |j| {
        let now = OffsetDateTime::now_utc();
        let contact = pick.below(contacts);
        let plan = OrderPlan::random(&mut pick, contact, now.unix_timestamp());
        let id = kizuna::ids::new_id(now);
        let external_id = format!("new-{j}");
        let contact = contact_id(contact);
        let started = Instant::now();
        let tx = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("BEGIN IMMEDIATE");
        insert_order(&tx, &id, &external_id, &contact, &plan).expect("baseline insert");
        tx.commit().expect("COMMIT");
        started.elapsed()
    }))
}

fn run(options: &Options, dir: &Path) -> anyhow::Result<()> {
    let host = build_host(dir)?;
    let database = host.database_path();
    let baseline_path = baseline_path(dir);

    println!(
        "bench-purchases: {} contacts, {} orders of {LINES_PER_ORDER} lines, {} requests per scenario",
        options.contacts, options.orders, options.requests
    );
    print_machine();
    println!("directory: {}", dir.display());

    // The first request runs the migrations (and switches the file to WAL).
    let first = host.handle(request(
        "GET",
        "/v1/orders?limit=1",
        &[("authorization", &format!("Bearer {READ_KEY}"))],
        Bytes::new(),
    ));
    ensure!(
        first.status() == 200,
        "first request failed: {}",
        body_text(&first)
    );

    let now = OffsetDateTime::now_utc().unix_timestamp();
    let plans = plan_orders(options.contacts, options.orders, now);
    let started = Instant::now();
    let rows = preload(&database, options.contacts, &plans, now)?;
    let took = started.elapsed();
    println!(
        "preload: {} contacts, {} orders, {} lines ({rows} rows in all) in {:.2} s ({:.0} rows/s), {:.1} MiB",
        options.contacts,
        options.orders,
        options.orders * LINES_PER_ORDER as u64,
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
        mib(file_size(&database))
    );

    let (ingest, ingested_spend) = order_ingest(&host, options.contacts, options.requests);
    let base = baseline(&baseline_path, options.contacts, &plans, options.requests)?;

    println!();
    print_table(&[&ingest, &base]);
    println!();
    print_ratios(&[("order ingest / baseline insert", &ingest, &base)]);

    let count = |path: &Path, sql: &str| -> anyhow::Result<i64> {
        Ok(Connection::open(path)?.query_row(sql, [], |r| r.get(0))?)
    };
    let orders = count(&database, "SELECT count(*) FROM orders")?;
    let lines = count(&database, "SELECT count(*) FROM order_lines")?;
    let contacts = count(&database, "SELECT count(*) FROM contacts")?;
    let applied = count(
        &database,
        "SELECT count(*) FROM webhook_deliveries WHERE outcome = 'applied'",
    )?;
    let placed = count(
        &database,
        "SELECT count(*) FROM interactions WHERE kind = 'order_placed'",
    )?;
    let counted = count(&database, "SELECT sum(order_count) FROM contacts")?;
    let spent = count(&database, "SELECT sum(total_spent_minor) FROM contacts")?;
    let totals = count(&database, "SELECT sum(total_minor) FROM orders")?;
    let base_orders = count(&baseline_path, "SELECT count(*) FROM orders")?;
    let base_lines = count(&baseline_path, "SELECT count(*) FROM order_lines")?;
    let expected_orders = i64::try_from(options.orders + options.requests)?;
    let expected_lines = expected_orders * LINES_PER_ORDER as i64;
    let expected_contacts = i64::try_from(options.contacts + options.requests.div_ceil(2))?;
    let preloaded_spend: i64 = plans.iter().map(OrderPlan::total).sum();
    println!();
    println!(
        "kizuna database: {}; {orders} orders (expected {expected_orders}), \
         {lines} order lines (expected {expected_lines}), {contacts} contacts (expected \
         {expected_contacts}), {applied} applied deliveries, {placed} order_placed entries",
        database_size(&database),
    );
    println!(
        "baseline database: {}; {base_orders} orders, {base_lines} order lines",
        database_size(&baseline_path)
    );
    ensure!(
        orders == expected_orders && base_orders == expected_orders,
        "expected {expected_orders} orders, found {orders} (baseline {base_orders})"
    );
    ensure!(
        lines == expected_lines && base_lines == expected_lines,
        "expected {expected_lines} order lines, found {lines} (baseline {base_lines})"
    );
    ensure!(
        contacts == expected_contacts,
        "expected {expected_contacts} contacts after the run, found {contacts}"
    );
    ensure!(
        applied == expected_orders && placed == expected_orders,
        "expected one applied delivery and one timeline entry per order"
    );
    ensure!(
        counted == expected_orders && spent == totals && totals == preloaded_spend + ingested_spend,
        "contact counters do not add up: {counted} orders and {spent} yen counted, \
         {totals} yen in orders, {} yen sent",
        preloaded_spend + ingested_spend
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let Some(options) = parse_options()? else {
        return Ok(());
    };
    run_in_dir(&options.dir, |dir| run(&options, dir))
}
