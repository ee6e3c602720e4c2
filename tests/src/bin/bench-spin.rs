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
use kizuna_tests::bench::{BenchDir, parse_args_with_text, print_machine, run_in_dir};
use kizuna_tests::datagen::{self, Spec};
use kizuna_tests::load::{self, Load, LoadResult, Request};
use kizuna_tests::scenarios::{
    Bench, Family, Fixtures, HEADER, Kind, RULE, Row, Target, build, create_segment, fixtures,
    log_errors, median, migrate, missing_orders, points_program_on, print_log_findings, selected,
    stored_count, time_requests, variables,
};
use kizuna_tests::spin::{SpinApp, workspace_root};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: bench-spin [--contacts N] [--orders M] [--runs R] [--seconds S] [--mixed-seconds S] [--seed S] [--only TEXT] [--million PATH] [--dir PATH] [--keep]";
const CONNECTIONS: [u32; 2] = [4, 16];
const MIXED_CONNECTIONS: u32 = 64;

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

// ---------------------------------------------------------------- set-up

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

// ---------------------------------------------------------------- the run

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
    build(true)?;

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
    let program = points_program_on(&base)?;
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

    let mut bench = Bench::new(
        options.runs,
        options.seconds,
        options.seed,
        work_dir.clone(),
    );
    let kizuna_target = Target {
        addrs: vec![kizuna.addr],
        db: db.clone(),
        fixtures: &fixtures,
        suffix: String::new(),
    };
    let baseline_target = Target {
        addrs: vec![baselines.addr],
        db: baseline_state.join("sqlite_db.db"),
        fixtures: &fixtures,
        suffix: String::new(),
    };
    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|kind| match kind.family() {
            Family::Baseline => {
                selected(options.only.as_deref(), kind.name())
                    || Kind::ALL.iter().any(|k| {
                        k.baseline() == Some(*kind) && selected(options.only.as_deref(), k.name())
                    })
            }
            _ => selected(options.only.as_deref(), kind.name()),
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
    let mixed = if selected(options.only.as_deref(), "mixed") {
        Some(mixed_phase(
            &mut bench,
            &kizuna_target,
            options.mixed_seconds,
        )?)
    } else {
        None
    };

    // A million contacts, if given.
    let mut million_app = None;
    if let Some(path) = &options.million {
        let segment_kinds: Vec<Kind> = [Kind::SegmentCount, Kind::SegmentCsv]
            .into_iter()
            .filter(|k| selected(options.only.as_deref(), k.name()))
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
                ..Fixtures::default()
            };
            let target = Target {
                addrs: vec![app.addr],
                db: million_state.join("sqlite_db.db"),
                fixtures: &million_fixtures,
                suffix: " (1M)".to_owned(),
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
    print_log_findings(
        "Spin logs",
        "no errors, warnings, panics or traps",
        "",
        &errors,
        20,
    );
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
fn timing_phase(bench: &mut Bench, target: &Target<'_>, kinds: &[Kind]) -> anyhow::Result<()> {
    println!();
    println!(
        "## Where one request's time goes (median of {TIMING_SAMPLES} sequential requests, keep-alive, ms)"
    );
    println!(
        "| scenario | read | settings | connection | sql | statements | app | component total | round trip | opened |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for kind in kinds.iter().filter(|k| k.family() != Family::Baseline) {
        let samples = if matches!(kind, Kind::SegmentCount | Kind::SegmentCsv) {
            TIMING_SAMPLES / 10
        } else {
            TIMING_SAMPLES
        };
        let timing = time_requests(
            &mut bench.generator,
            *kind,
            target.addrs[0],
            target.fixtures,
            samples,
        )?;
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.3} | {}/{samples} |",
            kind.name(),
            timing.stage("read"),
            timing.stage("settings"),
            timing.stage("connection"),
            timing.stage("sql"),
            median(timing.statements.clone()),
            timing.stage("app"),
            timing.stage("total"),
            median(timing.round_trips.clone()),
            timing.opened,
        );
    }
    Ok(())
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

fn mixed_phase(bench: &mut Bench, target: &Target<'_>, seconds: u64) -> anyhow::Result<Mixed> {
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
        addr: target.addrs[0],
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

fn report(bench: &Bench, mixed: Option<&Mixed>) {
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
