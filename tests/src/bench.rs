//! What the benches in `src/bin/bench-*.rs` share: argument parsing,
//! reproducible picks, timing and nearest-rank percentiles, the baseline
//! connection with Kizuna's durability settings, and the printed table.
//!
//! Every bench runs in one process and one run: it measures Kizuna
//! through `Host::handle` and, next to it, a bare rusqlite baseline on the
//! same disk, then prints one row per scenario (requests, throughput,
//! p50/p99/max latency in milliseconds) and the Kizuna / baseline ratios.

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a bench keeps its databases.
pub struct BenchDir {
    /// `--dir`; `None` means a new directory under the system temp dir.
    pub dir: Option<PathBuf>,
    /// `--keep`: leave the databases behind.
    pub keep: bool,
}

/// Parses `--dir PATH`, `--keep`, `-h`/`--help` and the bench's own
/// numeric options (`numbers`: each flag and where its value goes, which
/// holds the default until then). `None` when help was printed.
pub fn parse_args(
    usage: &str,
    numbers: &mut [(&str, &mut u64)],
) -> anyhow::Result<Option<BenchDir>> {
    parse_args_with_text(usage, numbers, &mut [])
}

/// Like [`parse_args`], with text options too (`texts`: each flag and
/// where its value goes; `None` until given).
pub fn parse_args_with_text(
    usage: &str,
    numbers: &mut [(&str, &mut u64)],
    texts: &mut [(&str, &mut Option<String>)],
) -> anyhow::Result<Option<BenchDir>> {
    parse_args_with_flags(usage, numbers, texts, &mut [])
}

/// Like [`parse_args_with_text`], with flags that take no value too
/// (`flags`: each flag and the bool it sets).
pub fn parse_args_with_flags(
    usage: &str,
    numbers: &mut [(&str, &mut u64)],
    texts: &mut [(&str, &mut Option<String>)],
    flags: &mut [(&str, &mut bool)],
) -> anyhow::Result<Option<BenchDir>> {
    let mut bench_dir = BenchDir {
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
            "--dir" => bench_dir.dir = Some(value()?.into()),
            "--keep" => bench_dir.keep = true,
            "-h" | "--help" => {
                println!("{usage}");
                return Ok(None);
            }
            other => {
                if let Some((flag, target)) = numbers.iter_mut().find(|(flag, _)| *flag == other) {
                    **target = value()?
                        .parse()
                        .with_context(|| format!("{flag} takes a number"))?;
                } else if let Some((_, target)) = texts.iter_mut().find(|(flag, _)| *flag == other)
                {
                    **target = Some(value()?);
                } else if let Some((_, target)) = flags.iter_mut().find(|(flag, _)| *flag == other)
                {
                    **target = true;
                } else {
                    bail!("unknown argument {other}\n{usage}");
                }
            }
        }
    }
    Ok(Some(bench_dir))
}

/// A 64-bit linear congruential generator: reproducible pseudo-random
/// picks without a `rand` dependency.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// A canonical UUID (version 7 and variant bits set) unique per `n`.
pub fn uuid_like(prefix: u32, n: u64) -> String {
    format!("{prefix:08x}-0000-7000-8000-{n:012x}")
}

/// A canonical UUID v7 stamped with `unix_ms` and unique per `n`: rows
/// preloaded with these ids sort by time, as Kizuna's own ids do, and
/// before any id Kizuna makes later.
pub fn uuid_v7_like(unix_ms: u64, n: u64) -> String {
    format!(
        "{:08x}-{:04x}-7000-8000-{n:012x}",
        (unix_ms >> 16) & 0xffff_ffff,
        unix_ms & 0xffff
    )
}

/// The `EXPLAIN QUERY PLAN` of `sql` with `params`, one line per step,
/// indented under its parent step.
pub fn query_plan(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<String>> {
    let mut statement = connection.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let steps = statement
        .query_map(params, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut depths: Vec<(i64, usize)> = Vec::new();
    Ok(steps
        .into_iter()
        .map(|(id, parent, detail)| {
            let depth = depths
                .iter()
                .find(|(step, _)| *step == parent)
                .map_or(0, |(_, d)| d + 1);
            depths.push((id, depth));
            format!("{}{detail}", "  ".repeat(depth))
        })
        .collect())
}

/// Prints a query plan from [`query_plan`] under a title, indented.
pub fn print_plan(title: &str, plan: &[String]) {
    println!("{title}:");
    for step in plan {
        println!("  {step}");
    }
}

/// Kizuna's query parameters as rusqlite values, to run SQL that Kizuna
/// generates (its compiled segment conditions, say) on a bare connection.
pub fn sql_values(params: &[kizuna::ports::Value]) -> Vec<rusqlite::types::Value> {
    use kizuna::ports::Value;
    use rusqlite::types::Value as SqlValue;
    params
        .iter()
        .map(|value| match value {
            Value::Null => SqlValue::Null,
            Value::Integer(i) => SqlValue::Integer(*i),
            Value::Real(r) => SqlValue::Real(*r),
            Value::Text(t) => SqlValue::Text(t.clone()),
            Value::Blob(b) => SqlValue::Blob(b.clone()),
        })
        .collect()
}

/// Per-request latencies of one scenario and the wall time of its loop.
pub struct Stats {
    pub name: &'static str,
    pub wall: Duration,
    pub latencies: Vec<Duration>,
}

impl Stats {
    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }
    /// Nearest-rank percentile, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
    }
    pub fn max_ms(&self) -> f64 {
        self.latencies
            .iter()
            .max()
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }
}

/// Runs `one(j)` for `j` in `0..count`, timing each call and the loop.
pub fn measure(name: &'static str, count: u64, mut one: impl FnMut(u64) -> Duration) -> Stats {
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

pub fn request(
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

pub fn body_text(response: &kizuna::http::Response) -> String {
    String::from_utf8_lossy(response.body()).into_owned()
}

/// Copies the WAL into the main file, empties it and syncs the file, so
/// that the next phase neither inherits a long WAL nor pays for flushing
/// the previous phase's dirty pages.
pub fn settle(connection: &Connection, path: &Path) -> anyhow::Result<()> {
    let (busy, _, _): (i64, i64, i64) =
        connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    ensure!(busy == 0, "checkpoint of {} was blocked", path.display());
    std::fs::File::open(path)?.sync_all()?;
    Ok(())
}

/// The same durability settings Kizuna uses: WAL (set by its migration)
/// plus the per-connection pragmas of `db::prepare`.
pub fn open_baseline(path: &Path) -> anyhow::Result<Connection> {
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

/// The baseline's file: in the bench's directory, next to Kizuna's.
pub fn baseline_path(dir: &Path) -> PathBuf {
    dir.join("baseline.db")
}

pub fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `"12.3 MiB + WAL 0.4 MiB"` for a database file.
pub fn database_size(path: &Path) -> String {
    format!(
        "{:.1} MiB + WAL {:.1} MiB",
        mib(file_size(path)),
        mib(file_size(&with_suffix(path, "-wal")))
    )
}

/// The context line: which machine, SQLite and build the numbers come from.
pub fn print_machine() {
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
}

/// One row per scenario, under a header.
pub fn print_table(rows: &[&Stats]) {
    println!(
        "{:<18} {:>8} {:>12} {:>10} {:>10} {:>10}",
        "scenario", "requests", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    for stats in rows {
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
}

/// Kizuna / baseline ratios, one line per (label, Kizuna, baseline).
pub fn print_ratios(pairs: &[(&str, &Stats, &Stats)]) {
    println!(
        "ratios (Kizuna / baseline; throughput above 1 is faster, p50/p99 above 1 is slower):"
    );
    for (label, kizuna, base) in pairs {
        println!(
            "{label:<34} throughput {:>7.3}x   p50 {:>7.2}x   p99 {:>7.2}x",
            kizuna.throughput() / base.throughput(),
            kizuna.percentile_ms(50.0) / base.percentile_ms(50.0),
            kizuna.percentile_ms(99.0) / base.percentile_ms(99.0),
        );
    }
}

/// The files a bench writes in its directory: the host's databases (Spin's
/// file names) and the baseline, each with its WAL, shared memory and
/// rollback journal.
fn database_files(dir: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    ["sqlite_db.db", "sqlite_key_value.db", "baseline.db"]
        .into_iter()
        .flat_map(move |base| {
            ["", "-wal", "-shm", "-journal"]
                .into_iter()
                .map(move |suffix| dir.join(format!("{base}{suffix}")))
        })
}

/// Runs `run` over the bench's directory (`--dir`, or a new one under the
/// system temp dir), then deletes what the bench created unless `--keep`:
/// the whole directory if it made it, otherwise only its database files.
/// A directory that already holds one of those files is refused before
/// anything runs, so nothing of its own is deleted. A failed assertion
/// panics; the databases are still cleaned up.
pub fn run_in_dir(
    bench_dir: &BenchDir,
    run: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = bench_dir.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("kizuna-bench-{}", std::process::id()))
    });
    let created_dir = !dir.exists();
    ensure!(
        !database_files(&dir).any(|path| path.exists()),
        "{} already holds a bench database; use an empty directory",
        dir.display()
    );
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&dir)));
    if bench_dir.keep {
        println!("kept the databases in {}", dir.display());
    } else {
        clean_up(&dir, created_dir);
    }
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn clean_up(dir: &Path, created_dir: bool) {
    let result = if created_dir {
        std::fs::remove_dir_all(dir)
    } else {
        let mut result = Ok(());
        for path in database_files(dir) {
            if path.exists() {
                result = result.and(std::fs::remove_file(path));
            }
        }
        result
    };
    if let Err(e) = result {
        eprintln!("failed to clean up {}: {e}", dir.display());
    }
}

/// The HTTP client of the Spin benches: statuses are answers, not errors.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(600)))
        .build()
        .into()
}

/// One JSON request with `key` as the bearer; the answer's body, which
/// must be a 2xx.
pub fn call_json(
    agent: &ureq::Agent,
    key: &str,
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context as _;
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.map(|b| b.to_string()).unwrap_or_default())?;
    let mut response = agent
        .run(request)
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_string()?;
    anyhow::ensure!(status < 300, "{method} {url}: {status} {text}");
    Ok(serde_json::from_str(&text)?)
}
