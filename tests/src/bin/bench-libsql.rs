//! `bench-libsql`: Kizuna past one machine (issue 15): the same shop on a
//! single SQLite file and on the libSQL server (`sqld`) with Redis, under
//! real Spin, driven by `wrk` on loopback. Figures, not assertions.
//!
//! 1. Builds the components (`spin build` into the workspace's `target/`;
//!    `--no-build` uses what is there), installs `wrk` with `apt-get
//!    install -y wrk` if it is missing. sqld is `$SQLD`, else
//!    `../shared/tools/sqld/sqld`, else `sqld` on `PATH`; `redis-server`
//!    comes from `PATH`.
//! 2. Data: `spin up` once on an empty state folder to migrate it, then
//!    `kizuna_tests::datagen` fills the file (default 20,000 contacts,
//!    60,000 orders). The same file goes to sqld: with sqld not yet
//!    started, it is copied (checkpointed, no `-wal` or `-shm` beside it)
//!    to `<db-path>/dbs/default/data`, sqld's file for the `default`
//!    database; on its first start sqld finds no replication log and
//!    rebuilds one from that file ("replication log not found, recovering
//!    from database file"). The copy is checked through the API: the
//!    contacts a preview of "every contact" counts on sqld equal the
//!    generated count.
//! 3. Backends, in the same run: `file` (plain `spin up` with a state
//!    folder), `sqld` (one sqld and one redis-server, Spin's `default`
//!    database and key-value store on them through a runtime-config file,
//!    one Spin process) and `sqld ×2` (the same servers, two Spin
//!    processes on their own ports). sqld runs with strong durability
//!    (`servers::STRONG_DURABILITY`: the WAL synced on every commit, as
//!    Kizuna's `synchronous = FULL` does on the file). The points program is turned on
//!    (earning from order webhooks) on each database.
//! 4. Scenarios, per backend, at 4 connections (split 2 + 2 across the two
//!    processes of `sqld ×2`, one `wrk` each, run at once: requests/s is
//!    their sum, p50 and p99 the higher of the two), keep-alive and
//!    `Connection: close`: `contact by id`, `form post`, `order webhook`
//!    (Standard Webhooks, 5 lines, earning points), `redeem` (1 point,
//!    `Idempotency-Key`). Each row is the median of `--runs` runs of
//!    `--seconds`; after every run the writes are checked in the database
//!    file (for sqld its `dbs/default/data`, a WAL SQLite file, opened
//!    read-only): every 2xx webhook's order is stored, and as many bench
//!    contacts and redemptions were added as were answered 2xx.
//! 5. The write-lock ceiling of one libSQL database: order webhooks per
//!    second with 1, 2 and 4 Spin processes sharing the one sqld, 4
//!    connections per process, keep-alive.
//! 6. Where a write's time goes: for `form post` and `order webhook`, on
//!    `file` and on `sqld`, 200 requests one at a time and the median of
//!    each `Server-Timing` stage (Kizuna runs with `server_timing=true`):
//!    read, settings, connection, sql (and its statements: round trips on
//!    sqld), lock (how long the write lock was held, from `BEGIN
//!    IMMEDIATE` to the end of `COMMIT`), app, total. `1000 / lock`
//!    bounds one database's writes per second of that kind.
//!
//! Printed: each row as soon as it is measured, then the summary (ratios
//! sqld ÷ file at the same scenario and mode, the ceiling per process
//! count, the lock-derived ceilings), then the errors in Spin's and sqld's
//! logs (a 5xx's cause is logged as `unexpected error: …`). The bench
//! fails only on a 5xx, a lost write, or a setup error. Every server is
//! stopped on exit, on error too.
//!
//! Options: `--contacts N` (20000), `--orders M` (60000), `--runs R` (3),
//! `--seconds S` (10), `--seed S`, `--only TEXT` (only scenarios and
//! phases whose name contains TEXT: `contact by id`, `form post`, `order
//! webhook`, `redeem`, `ceiling (order webhook)`, `timing: form post`,
//! `timing: order webhook`), `--no-build`, `--dir PATH`, `--keep`. A quick
//! run: `--runs 1 --seconds 5`.

use anyhow::{Context as _, bail, ensure};
use kizuna_tests::bench::{mib, parse_args_with_flags, print_machine, run_in_dir};
use kizuna_tests::datagen::{self, Spec};
use kizuna_tests::load;
use kizuna_tests::scenarios::{
    Bench, HEADER, Kind, RULE, Row, Target, Timing, agent, build, call, fixtures, log_errors,
    median, migrate, points_program_on, print_log_findings, read_only, selected, time_requests,
    variables,
};
use kizuna_tests::servers::{Backing, STRONG_DURABILITY};
use kizuna_tests::spin::SpinApp;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

const USAGE: &str = "usage: bench-libsql [--contacts N] [--orders M] [--runs R] [--seconds S] [--seed S] [--only TEXT] [--no-build] [--dir PATH] [--keep]";
/// Connections of every scenario row, in all.
const CONNECTIONS: u32 = 4;
/// Connections per Spin process in the ceiling phase.
const CEILING_CONNECTIONS: u32 = 4;
const CEILING_PROCESSES: [usize; 3] = [1, 2, 4];
const CEILING_PHASE: &str = "ceiling (order webhook)";
const SCENARIOS: [Kind; 4] = [
    Kind::ContactById,
    Kind::FormPost,
    Kind::OrderWebhook,
    Kind::Redeem,
];
const TIMED: [Kind; 2] = [Kind::FormPost, Kind::OrderWebhook];
/// Requests sent one at a time per write kind and backend.
const TIMING_SAMPLES: usize = 200;

struct Options {
    contacts: u64,
    orders: u64,
    runs: u64,
    seconds: u64,
    seed: u64,
    only: Option<String>,
    build: bool,
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    let (mut contacts, mut orders, mut runs, mut seconds, mut seed) = (20_000, 60_000, 3, 10, 1);
    let (mut only, mut no_build) = (None, false);
    let Some(dir) = parse_args_with_flags(
        USAGE,
        &mut [
            ("--contacts", &mut contacts),
            ("--orders", &mut orders),
            ("--runs", &mut runs),
            ("--seconds", &mut seconds),
            ("--seed", &mut seed),
        ],
        &mut [("--only", &mut only)],
        &mut [("--no-build", &mut no_build)],
    )?
    else {
        return Ok(());
    };
    let options = Options {
        contacts,
        orders,
        runs: runs.max(1),
        seconds: seconds.max(1),
        seed,
        only,
        build: !no_build,
        keep: dir.keep,
    };
    run_in_dir(&dir, |dir| run(&options, dir))
}

/// The backends of the scenario phase, in the order they are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    File,
    Sqld,
    SqldTwice,
}

impl Backend {
    const ALL: [Backend; 3] = [Backend::File, Backend::Sqld, Backend::SqldTwice];

    fn name(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::Sqld => "sqld",
            Backend::SqldTwice => "sqld ×2",
        }
    }

    /// Appended to a scenario's name in its row's label.
    fn suffix(self) -> String {
        format!(" · {}", self.name())
    }
}

fn ceiling_suffix(processes: usize) -> String {
    format!(" · ceiling ×{processes}")
}

/// One write kind's stages on one backend.
struct Timed {
    kind: Kind,
    backend: Backend,
    timing: Timing,
}

impl Timed {
    /// Writes per second one database allows if every write holds the
    /// lock for the median time.
    fn ceiling(&self) -> f64 {
        1000.0 / self.timing.stage("lock")
    }
}

fn run(options: &Options, dir: &Path) -> anyhow::Result<()> {
    let only = options.only.as_deref();
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "bench-libsql: {} contacts, {} orders, {} runs × {} s per figure (median), {CONNECTIONS} connections",
        options.contacts, options.orders, options.runs, options.seconds
    );
    print_machine();
    load::ensure_wrk()?;
    if options.build {
        build(false)?;
    } else {
        println!("--no-build: the components already in target/wasm32-wasip2/release");
    }

    // The file backend's state is the bench folder itself (its databases
    // are cleaned up with it); the rest goes in folders of their own.
    let file_state = dir.to_owned();
    let servers_dir = dir.join("servers");
    let libsql_state = |i: usize| dir.join(format!("spin-libsql-{i}"));
    let work_dir = dir.join("wrk");

    // Fresh state: migrate under Spin, then fill the file.
    let started = Instant::now();
    migrate(&file_state)?;
    let db = file_state.join("sqlite_db.db");
    let spec = Spec {
        contacts: options.contacts,
        orders: options.orders,
        seed: options.seed,
        now: time::OffsetDateTime::now_utc(),
    };
    let generated = datagen::generate(&db, &spec)?;
    println!(
        "datagen: {} contacts, {} orders, {} points lots in {:.1} s ({:.1} MiB)",
        generated.contacts,
        generated.orders,
        generated.lots,
        started.elapsed().as_secs_f64(),
        mib(std::fs::metadata(&db)?.len()),
    );
    let fixtures = fixtures(&db, options.seed)?;

    // The same file into sqld, before its first start.
    let sqld_file = copy_into_sqld(&db, &servers_dir)?;
    let started = Instant::now();
    let backing = Backing::start(&servers_dir)?;
    ensure!(
        backing.sqld.database_file() == sqld_file,
        "sqld keeps its database at {}, not where it was copied ({})",
        backing.sqld.database_file().display(),
        sqld_file.display()
    );
    println!(
        "sqld at {} (namespace config {STRONG_DURABILITY}) and Redis at {} answered in {:.1} s",
        backing.sqld.url(),
        backing.redis.url(),
        started.elapsed().as_secs_f64()
    );
    for line in backing
        .sqld
        .log_text()
        .lines()
        .filter(|l| l.contains("recover"))
    {
        println!("  sqld: {line}");
    }

    let file_app = SpinApp::start(&file_state, &variables())?;
    let mut libsql_apps: Vec<SpinApp> = Vec::new();
    let start_libsql = |i: usize| {
        SpinApp::start_with_runtime_config(&libsql_state(i), &variables(), &backing.runtime_config)
    };
    for i in 0..2 {
        libsql_apps.push(start_libsql(i)?);
    }
    println!(
        "Kizuna on the file at {}, on sqld at {} and {}",
        file_app.url(),
        libsql_apps[0].url(),
        libsql_apps[1].url()
    );

    // The copy holds the whole shop.
    let on_file = contacts_through_api(&file_app.url())?;
    let on_sqld = contacts_through_api(&libsql_apps[0].url())?;
    let in_sqld_file: i64 =
        read_only(&sqld_file)?.query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))?;
    println!(
        "copy check: generated {} contacts; the API counts {on_file} on the file, {on_sqld} on sqld; sqld's file holds {in_sqld_file}",
        generated.contacts
    );
    ensure!(
        on_sqld == generated.contacts,
        "sqld's copy answers {on_sqld} contacts, {} were generated",
        generated.contacts
    );

    for (name, app) in [("file", &file_app), ("sqld", &libsql_apps[0])] {
        let program = points_program_on(&app.url())?;
        println!(
            "points program on {name}: version {} (earning on order webhooks)",
            program["version"]
        );
    }

    let mut bench = Bench::new(
        options.runs,
        options.seconds,
        options.seed,
        work_dir.clone(),
    );
    let target = |backend: Backend, apps: &[SpinApp]| Target {
        addrs: match backend {
            Backend::File => vec![file_app.addr],
            Backend::Sqld => vec![apps[0].addr],
            Backend::SqldTwice => apps[..2].iter().map(|a| a.addr).collect(),
        },
        db: match backend {
            Backend::File => db.clone(),
            Backend::Sqld | Backend::SqldTwice => sqld_file.clone(),
        },
        fixtures: &fixtures,
        suffix: backend.suffix(),
    };

    // The scenarios.
    let kinds: Vec<Kind> = SCENARIOS
        .into_iter()
        .filter(|k| selected(only, k.name()))
        .collect();
    if !kinds.is_empty() {
        println!();
        println!("{HEADER}");
        println!("{RULE}");
    }
    for kind in &kinds {
        for close in [false, true] {
            for backend in Backend::ALL {
                bench.measure(*kind, &target(backend, &libsql_apps), CONNECTIONS, close)?;
            }
        }
    }

    // The ceiling of one libSQL database.
    if selected(only, CEILING_PHASE) {
        println!();
        println!(
            "{CEILING_PHASE}: {CEILING_CONNECTIONS} connections per Spin process, all on one sqld"
        );
        println!("{HEADER}");
        println!("{RULE}");
        for processes in CEILING_PROCESSES {
            while libsql_apps.len() < processes {
                libsql_apps.push(start_libsql(libsql_apps.len())?);
            }
            let ceiling = Target {
                addrs: libsql_apps[..processes].iter().map(|a| a.addr).collect(),
                suffix: ceiling_suffix(processes),
                ..target(Backend::Sqld, &libsql_apps)
            };
            let connections = CEILING_CONNECTIONS * u32::try_from(processes)?;
            bench.measure(Kind::OrderWebhook, &ceiling, connections, false)?;
        }
    }

    // Where a write's time goes.
    let mut timed = Vec::new();
    let timed_kinds: Vec<Kind> = TIMED
        .into_iter()
        .filter(|k| selected(only, &format!("timing: {}", k.name())))
        .collect();
    if !timed_kinds.is_empty() {
        println!();
        println!(
            "## Where a write's time goes (median of {TIMING_SAMPLES} sequential requests, keep-alive, ms)"
        );
        println!("{TIMING_HEADER}");
        println!("{TIMING_RULE}");
    }
    for kind in timed_kinds {
        for backend in [Backend::File, Backend::Sqld] {
            let addr = target(backend, &libsql_apps).addrs[0];
            let timing =
                time_requests(&mut bench.generator, kind, addr, &fixtures, TIMING_SAMPLES)?;
            let one = Timed {
                kind,
                backend,
                timing,
            };
            println!("{}", timing_line(&one));
            for failure in &one.timing.failures {
                println!("    {} · {}: {failure}", kind.name(), backend.name());
            }
            timed.push(one);
        }
    }

    report(&bench, &timed);

    // What the logs say.
    let mut states = vec![file_state.clone()];
    states.extend((0..libsql_apps.len()).map(libsql_state));
    let errors: Vec<String> = states.iter().flat_map(|s| log_errors(s)).collect();
    let unexpected = errors
        .iter()
        .filter(|l| l.contains("unexpected error"))
        .count();
    println!();
    print_log_findings(
        "Spin logs",
        "no errors, warnings, panics or traps",
        &format!(", {unexpected} of them `unexpected error`"),
        &errors,
        20,
    );
    let sqld_errors: Vec<String> = backing
        .sqld
        .log_text()
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .map(str::to_owned)
        .collect();
    print_log_findings("sqld log", "no errors or warnings", "", &sqld_errors, 10);

    // Spin first, then the servers under it.
    drop(libsql_apps);
    drop(file_app);
    drop(backing);
    if !options.keep {
        let mut folders = vec![servers_dir, work_dir];
        folders.extend(states.into_iter().skip(1));
        for folder in folders {
            if folder.exists() {
                std::fs::remove_dir_all(&folder)
                    .with_context(|| format!("failed to remove {}", folder.display()))?;
            }
        }
    }

    let server_errors: u64 = bench
        .rows
        .iter()
        .map(|r| r.sum(|run| run.class(5)))
        .sum::<u64>()
        + timed.iter().map(|t| t.timing.class(5) as u64).sum::<u64>();
    let lost: u64 = bench.rows.iter().map(|r| r.lost).sum();
    if server_errors > 0 || lost > 0 {
        bail!("Kizuna answered {server_errors} 5xx and lost {lost} writes");
    }
    Ok(())
}

/// Copies the checkpointed database file to where sqld keeps its
/// `default` database under `servers_dir` (`Backing::start` runs sqld with
/// `--db-path servers_dir/sqld/data`): `<db-path>/dbs/default/data`.
/// sqld must not have started on that folder yet.
fn copy_into_sqld(db: &Path, servers_dir: &Path) -> anyhow::Result<PathBuf> {
    // Only the main file goes: a WAL beside it would be left behind.
    let wal = kizuna_tests::bench::with_suffix(db, "-wal");
    ensure!(
        !wal.exists() || std::fs::metadata(&wal)?.len() == 0,
        "{} is not checkpointed: {} is not empty",
        db.display(),
        wal.display()
    );
    let folder = servers_dir.join("sqld/data/dbs/default");
    ensure!(
        !folder.exists(),
        "{} exists already: sqld has run there",
        folder.display()
    );
    std::fs::create_dir_all(&folder)?;
    let to = folder.join("data");
    let started = Instant::now();
    let bytes = std::fs::copy(db, &to)
        .with_context(|| format!("failed to copy {} to {}", db.display(), to.display()))?;
    println!(
        "copied {} ({:.1} MiB) to sqld's {} in {:.2} s, before sqld's first start",
        db.display(),
        mib(bytes),
        to.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(to)
}

/// How many contacts a preview of "every contact" (with or without an
/// email) counts.
fn contacts_through_api(base: &str) -> anyhow::Result<u64> {
    let answer = call(
        &agent(),
        "POST",
        &format!("{base}/v1/segments/preview?limit=1"),
        Some(json!({"definition": {"any": [
            {"field": "has_email", "op": "eq", "value": true},
            {"field": "has_email", "op": "eq", "value": false}
        ]}})),
    )?;
    answer["count"]
        .as_u64()
        .with_context(|| format!("no count in {answer}"))
}

const TIMING_HEADER: &str = "| write | backend | read | settings | connection | sql | statements | lock | app | total | round trip | opened | non-2xx | ceiling = 1000 / lock (writes/s) |";
const TIMING_RULE: &str = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

fn timing_line(one: &Timed) -> String {
    let t = &one.timing;
    format!(
        "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {}/{} | {} | {:.0} |",
        one.kind.name(),
        one.backend.name(),
        t.stage("read"),
        t.stage("settings"),
        t.stage("connection"),
        t.stage("sql"),
        median(t.statements.clone()),
        t.stage("lock"),
        t.stage("app"),
        t.stage("total"),
        median(t.round_trips.clone()),
        t.opened,
        t.samples,
        t.samples - t.class(2),
        one.ceiling(),
    )
}

/// The slowest answer of a row's runs, in ms (sqld takes the write lock
/// from a transaction that has held it 5 s while another waits).
fn slowest(row: &Row) -> f64 {
    row.runs.iter().map(|r| r.max_ms).fold(0.0, f64::max)
}

/// A row's 5xx, with how many of them were 503 (Kizuna's "the database
/// could not complete the request, nothing was stored, send it again").
fn server_errors(row: &Row) -> String {
    let all = row.sum(|r| r.class(5));
    let unavailable = row.sum(|r| r.code(503));
    if all == 0 {
        "0".to_owned()
    } else {
        format!("{all} ({unavailable} × 503)")
    }
}

fn ratio_text(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}")
    } else {
        "–".to_owned()
    }
}

fn report(bench: &Bench, timed: &[Timed]) {
    let scenario_rows: Vec<&Row> = bench
        .rows
        .iter()
        .filter(|r| Backend::ALL.iter().any(|b| r.label.ends_with(&b.suffix())))
        .collect();
    if !scenario_rows.is_empty() {
        println!();
        println!(
            "## Scenarios at {CONNECTIONS} connections (median of runs; ratios against the file backend at the same scenario and mode)"
        );
        println!();
        println!(
            "| scenario | mode | backend | req/s | p50 ms | p99 ms | max ms | 5xx | lost writes | req/s ÷ file | p50 ÷ file | p99 ÷ file |"
        );
        println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for row in scenario_rows {
            let backend = Backend::ALL
                .into_iter()
                .find(|b| row.label.ends_with(&b.suffix()))
                .expect("a scenario row");
            let file = bench.find(
                row.kind,
                &Backend::File.suffix(),
                row.connections,
                row.close,
            );
            let ratio = |f: fn(&Row) -> f64| file.map_or(f64::NAN, |file| f(row) / f(file));
            println!(
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {} | {}{} | {} | {} | {} |",
                row.kind.name(),
                row.mode(),
                backend.name(),
                row.per_second_text(),
                row.p50(),
                row.p99(),
                slowest(row),
                server_errors(row),
                row.lost,
                if row.inexact { " (inexact)" } else { "" },
                ratio_text(ratio(Row::per_second)),
                ratio_text(ratio(Row::p50)),
                ratio_text(ratio(Row::p99)),
            );
        }
    }

    let one = bench.find(
        Kind::OrderWebhook,
        &ceiling_suffix(1),
        CEILING_CONNECTIONS,
        false,
    );
    if one.is_some() {
        println!();
        println!(
            "## Write-lock ceiling of one libSQL database: order webhooks, {CEILING_CONNECTIONS} connections per Spin process, keep-alive"
        );
        println!();
        println!(
            "| Spin processes | connections | webhooks/s | p50 ms | p99 ms | max ms | 5xx | lost writes | ÷ one process |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for processes in CEILING_PROCESSES {
            let connections = CEILING_CONNECTIONS * processes as u32;
            let Some(row) = bench.find(
                Kind::OrderWebhook,
                &ceiling_suffix(processes),
                connections,
                false,
            ) else {
                continue;
            };
            println!(
                "| {processes} | {connections} | {} | {:.2} | {:.2} | {:.0} | {} | {}{} | {} |",
                row.per_second_text(),
                row.p50(),
                row.p99(),
                slowest(row),
                server_errors(row),
                row.lost,
                if row.inexact { " (inexact)" } else { "" },
                ratio_text(one.map_or(f64::NAN, |one| row.per_second() / one.per_second())),
            );
        }
    }

    if !timed.is_empty() {
        println!();
        println!(
            "## Where a write's time goes (median of {TIMING_SAMPLES} sequential requests, keep-alive, ms)"
        );
        println!();
        println!("{TIMING_HEADER}");
        println!("{TIMING_RULE}");
        for one in timed {
            println!("{}", timing_line(one));
        }
    }
}
