//! Opening a request's database connection: per-connection pragmas, the
//! numbered migrations (tracked by `PRAGMA user_version`), and the one
//! `BEGIN IMMEDIATE` transaction a write request runs in.
//!
//! Durability: the migration switches the file to WAL, so readers never
//! wait for writers and a commit appends to the log instead of rewriting
//! pages. Each connection sets `synchronous = FULL`: a 2xx means the lead,
//! order or ledger entry is on disk, even after a power cut, at the price
//! of one fsync per commit. `secure_delete` overwrites deleted content so
//! that an erased person's data does not linger in free pages.

use crate::ports::{Backend, Db, DbError, Value};
use anyhow::Context as _;

/// The migrations, in order. Migration `n` (1-based) brings the schema to
/// `user_version = n`. Append only: never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_contacts.sql"),
    include_str!("migrations/0002_orders.sql"),
    include_str!("migrations/0003_points.sql"),
    include_str!("migrations/0004_segments.sql"),
    include_str!("migrations/0005_suppressions.sql"),
    include_str!("migrations/0006_points_related_index.sql"),
    include_str!("migrations/0007_form_settings.sql"),
    include_str!("migrations/0008_rfm_computations.sql"),
    include_str!("migrations/0009_consent_proof.sql"),
    include_str!("migrations/0010_interaction_handling.sql"),
    include_str!("migrations/0011_webhook_auth_failures_and_lookups.sql"),
    include_str!("migrations/0013_category_nocase_index.sql"),
    include_str!("migrations/0014_events_outbox.sql"),
    include_str!("migrations/0015_webhook_endpoints.sql"),
];

/// The schema version this build expects.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long SQLite's own busy handler waits for a lock before answering
/// busy. It sleeps between polls (1, 2, 5, 10, 15, 20 ms, later up to
/// 100 ms), so a writer in one instance missed the lock for up to a
/// second while writers of another instance took it back to back (Spin
/// overlaps an instance it retires with the next one). 50 ms keeps its
/// sleeps short; `begin_immediate` then polls every 1–3 ms without
/// blocking the instance, for up to `BEGIN_RETRY_FOR`. Readers never
/// wait for writers in WAL; their rare waits (a connection recovering
/// the WAL index, a checkpoint resetting the log) are asked again by
/// `pool::Lease` for up to `pool::BUSY_RETRY_FOR`.
const BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 50";

/// Prepares a freshly opened connection and tells which engine serves
/// it: pragmas first, then migrations if the database is behind. Call
/// once per connection, before any other statement
/// (`pool::Pool::lease` does).
///
/// Spin's libSQL client refuses, before sending, every pragma that sets
/// a value except `foreign_keys` and `user_version`: the refusal of
/// `busy_timeout` is how a libSQL server is recognised, with no setting
/// to keep in step with the runtime config. On libSQL the server owns
/// durability (`sqld` syncs its WAL on commit), lock waits (it queues
/// writers and takes the lock back from a transaction older than 5 s),
/// WAL and checkpoints; `secure_delete` cannot be asked for (see
/// `privacy` for what erasure guarantees there).
pub async fn prepare(db: &impl Db) -> anyhow::Result<Backend> {
    // On a fresh file, racing first requests wait while one of them
    // migrates (before WAL, even a pragma waits for its lock); on libSQL
    // a migration that waited or ran past the server's 5 s is interrupted
    // and rolled back whole. Every step is safe to repeat (the version
    // is checked again inside the migration's transaction).
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match prepare_once(db).await {
            Ok(backend) => return Ok(backend),
            Err(e) if DbError::is_transient_cause(&e) && started.elapsed() < BEGIN_RETRY_FOR => {
                db.yield_to_writers(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn prepare_once(db: &impl Db) -> anyhow::Result<Backend> {
    const FOREIGN_KEYS: &str = "PRAGMA foreign_keys = ON";
    db.execute(FOREIGN_KEYS, &[])
        .await
        .with_context(|| format!("failed to set `{FOREIGN_KEYS}`"))?;
    let backend = match db.execute(BUSY_TIMEOUT, &[]).await {
        Ok(_) => Backend::SqliteFile,
        Err(e) if e.is_refused_by_libsql_client() => Backend::Libsql,
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!("failed to set `{BUSY_TIMEOUT}`")));
        }
    };
    if backend == Backend::SqliteFile {
        for pragma in ["PRAGMA synchronous = FULL", "PRAGMA secure_delete = ON"] {
            db.execute(pragma, &[])
                .await
                .with_context(|| format!("failed to set `{pragma}`"))?;
        }
    }
    migrate_with(db, MIGRATIONS, backend).await?;
    Ok(backend)
}

/// What `GET /healthz` reports: the database answered just now (one
/// statement, so a pooled connection to a server that went away fails
/// here and the probe gets a 503), which engine serves it, and its schema
/// version beside this build's. Nothing secret.
pub async fn health(db: &impl Db) -> anyhow::Result<serde_json::Value> {
    let version = user_version(db).await?;
    Ok(serde_json::json!({
        "status": "ok",
        "database": {
            "backend": db.backend().as_str(),
            "schema_version": version,
            "build_schema_version": SCHEMA_VERSION,
        },
    }))
}

async fn user_version(db: &impl Db) -> anyhow::Result<i64> {
    let rows = db
        .execute("PRAGMA user_version", &[])
        .await
        .context("failed to read the schema version")?;
    match rows.rows.first().and_then(|r| r.first()) {
        Some(Value::Integer(v)) => Ok(*v),
        other => anyhow::bail!("unexpected user_version result: {other:?}"),
    }
}

/// Applies the migrations the file lacks. Two requests may race here on a
/// fresh file: the version is re-read inside `BEGIN IMMEDIATE`, which only
/// one connection holds at a time, so each migration runs exactly once.
pub async fn migrate(db: &impl Db) -> anyhow::Result<()> {
    migrate_with(db, MIGRATIONS, db.backend()).await
}

/// [`migrate`] over a given list of migrations (tests run it on copies).
async fn migrate_with(db: &impl Db, migrations: &[&str], backend: Backend) -> anyhow::Result<()> {
    let target = migrations.len() as i64;
    if user_version(db).await? >= target {
        return Ok(());
    }
    transaction(db, async || {
        let current = user_version(db).await?;
        if current > target {
            anyhow::bail!("database schema {current} is newer than this build ({target})");
        }
        let skip = usize::try_from(current).unwrap_or(0);
        for (index, sql) in migrations.iter().enumerate().skip(skip) {
            for statement in split_statements(sql) {
                db.execute(&statement, &[])
                    .await
                    .with_context(|| format!("migration {} failed", index + 1))?;
            }
        }
        db.execute(&format!("PRAGMA user_version = {target}"), &[])
            .await
            .context("failed to record the schema version")?;
        Ok(())
    })
    .await?;
    match backend {
        Backend::SqliteFile => switch_to_wal(db).await,
        Backend::Libsql => Ok(()),
    }
}

/// WAL is a property of the file and cannot change inside a transaction.
/// Switching needs a moment with no other connection in the file, and
/// SQLite answers "busy" at once rather than waiting, so racing first
/// requests retry briefly. If the file is still busy after that, it stays
/// in rollback mode (correct, only slower) and a later migration retries.
async fn switch_to_wal(db: &impl Db) -> anyhow::Result<()> {
    for _ in 0..100 {
        match db.execute("PRAGMA journal_mode = WAL", &[]).await {
            Ok(_) => return Ok(()),
            Err(DbError::Busy(_)) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(other) => return Err(anyhow::Error::from(other).context("failed to switch to WAL")),
        }
    }
    eprintln!("journal_mode = WAL postponed: the database stayed busy");
    Ok(())
}

/// Spin's `execute` runs one statement at a time, so a migration file is
/// split into statements: each ends with `;` at the end of a line.
/// Migrations therefore keep `;` out of string literals and triggers.
/// Lines end in LF or CRLF (a Windows checkout), and the statements are
/// the same either way, joined with LF. A `--` comment line never ends a
/// statement, even when it ends with `;`; comment and blank lines
/// between statements are dropped.
fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    // `lines` strips a trailing `\r` along with the `\n`; a lone `\r`
    // (old Mac line ends) is a line end too.
    for line in sql.lines().flat_map(|l| l.split('\r')) {
        let line = line.trim_end();
        let comment = line.trim_start().starts_with("--");
        if current.is_empty() && (line.is_empty() || comment) {
            continue;
        }
        current.push(line);
        if !comment && line.ends_with(';') {
            let statement = current.join("\n");
            let statement = statement.trim();
            statements.push(
                statement
                    .strip_suffix(';')
                    .unwrap_or(statement)
                    .trim_end()
                    .to_owned(),
            );
            current.clear();
        }
    }
    let rest = current.join("\n");
    if !rest
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
    {
        statements.push(rest.trim().to_owned());
    }
    statements
}

/// Runs `work` inside `BEGIN IMMEDIATE … COMMIT`, rolling back on error.
/// IMMEDIATE takes the write lock up front, so a read-then-write inside
/// cannot interleave with another writer, and a lock wait happens at
/// `BEGIN` (bounded by `busy_timeout`) rather than as a deadlock later.
pub async fn transaction<D, T, E>(db: &D, work: impl AsyncFnOnce() -> Result<T, E>) -> Result<T, E>
where
    D: Db,
    E: From<anyhow::Error>,
{
    begin_immediate(db).await?;
    match work().await {
        Ok(value) => {
            if let Err(e) = db.execute("COMMIT", &[]).await {
                rollback(db).await;
                return Err(anyhow::Error::from(e).context("failed to commit").into());
            }
            Ok(value)
        }
        Err(e) => {
            rollback(db).await;
            Err(e)
        }
    }
}

/// How long a writer keeps asking for the write lock before giving up.
/// A busy database is not the caller's fault: waiting (each attempt up to
/// `busy_timeout`) is better than a 500, and 30 s is within what
/// webhooks and browsers wait.
pub const BEGIN_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// `BEGIN IMMEDIATE`, retried while the database stays busy. SQLite's
/// lock has no queue and its busy handler polls with growing sleeps, so
/// under a steady stream of writers one of them can lose every poll for
/// the whole `busy_timeout`; a fresh attempt after a short, jittered
/// pause outside SQLite (`Db::yield_to_writers`, which lets the rest of
/// a Spin instance run) starts polling quickly again.
async fn begin_immediate(db: &impl Db) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match db.execute("BEGIN IMMEDIATE", &[]).await {
            Ok(_) => return Ok(()),
            Err(DbError::Busy(_)) if started.elapsed() < BEGIN_RETRY_FOR => {
                let jitter = u64::from(started.elapsed().subsec_nanos() % 3);
                db.yield_to_writers(std::time::Duration::from_millis(1 + jitter))
                    .await;
            }
            Err(e) => {
                return Err(anyhow::Error::from(e).context("failed to begin a transaction"));
            }
        }
    }
}

/// Runs reads in one deferred transaction, so that an answer built from
/// several statements sees one snapshot of the file (WAL readers never
/// block writers).
pub async fn read_snapshot<D, T, E>(
    db: &D,
    work: impl AsyncFnOnce() -> Result<T, E>,
) -> Result<T, E>
where
    D: Db,
    E: From<anyhow::Error>,
{
    db.execute("BEGIN", &[])
        .await
        .context("failed to begin a read")?;
    let result = work().await;
    if let Err(e) = db.execute("COMMIT", &[]).await {
        rollback(db).await;
        if result.is_ok() {
            return Err(anyhow::Error::from(e)
                .context("failed to end a read")
                .into());
        }
    }
    result
}

async fn rollback(db: &impl Db) {
    // The work's own error is what the caller needs; a failed rollback
    // (e.g. SQLite already rolled back) is only worth a log line: a
    // connection whose transaction failed is closed, never reused
    // (`pool::Lease`).
    if let Err(e) = db.execute("ROLLBACK", &[]).await {
        eprintln!("rollback failed: {e}");
    }
}

/// After erasing personal data: copy the WAL into the main file and
/// truncate the log, so no old page image with the erased values stays in
/// `-wal`. Best effort: with readers active the checkpoint may stop early;
/// the next checkpoint then finishes the job. Answers whether it ran: on
/// libSQL the client may not checkpoint, and the server's own
/// checkpoints (`sqld --checkpoint-interval-s`) do it.
pub async fn checkpoint_truncate(db: &impl Db) -> Result<bool, DbError> {
    if db.backend() == Backend::Libsql {
        return Ok(false);
    }
    // Waiting the full busy timeout for readers to finish would stall the
    // erasure answer by seconds; a short wait, then the next checkpoint.
    db.execute("PRAGMA busy_timeout = 250", &[]).await?;
    let checkpoint = db.execute("PRAGMA wal_checkpoint(TRUNCATE)", &[]).await;
    // The connection goes back to its pool: restore the usual wait.
    db.execute(BUSY_TIMEOUT, &[]).await?;
    checkpoint.map(|_| true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Rows;
    use std::cell::{Cell, RefCell};

    /// A database that records the statements it is given and keeps
    /// `user_version`; it refuses what Spin's `execute` would not run as
    /// one statement (text after a `;`, or a carriage return).
    #[derive(Default)]
    struct Recorder {
        version: Cell<i64>,
        statements: RefCell<Vec<String>>,
    }

    impl Db for Recorder {
        async fn execute(&self, sql: &str, _params: &[Value]) -> Result<Rows, DbError> {
            if sql == "PRAGMA user_version" {
                return Ok(Rows {
                    columns: vec!["user_version".to_owned()],
                    rows: vec![vec![Value::Integer(self.version.get())]],
                });
            }
            if let Some(v) = sql.strip_prefix("PRAGMA user_version = ") {
                self.version.set(v.parse().expect("a version"));
            }
            let code: String = sql
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .map(|l| l.split(" --").next().unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n");
            if sql.contains('\r') || code.trim_end_matches(';').contains(';') {
                return Err(DbError::Other(format!("not one statement: {sql}")));
            }
            self.statements.borrow_mut().push(sql.to_owned());
            Ok(Rows::default())
        }
    }

    fn crlf(sql: &str) -> String {
        sql.replace("\r\n", "\n").replace('\n', "\r\n")
    }

    fn run(migrations: &[&str]) -> Vec<String> {
        let db = Recorder::default();
        futures::executor::block_on(migrate_with(&db, migrations, Backend::SqliteFile))
            .expect("migrations run");
        assert_eq!(db.version.get(), migrations.len() as i64);
        db.statements.into_inner()
    }

    #[test]
    fn every_migration_splits_into_the_same_statements_with_lf_and_crlf() {
        for (index, sql) in MIGRATIONS.iter().enumerate() {
            let lf = split_statements(sql);
            assert!(!lf.is_empty(), "migration {}", index + 1);
            for statement in &lf {
                let first = statement.split_whitespace().next().unwrap_or("");
                assert!(
                    matches!(
                        first,
                        "CREATE" | "INSERT" | "ALTER" | "DROP" | "UPDATE" | "DELETE" | "PRAGMA"
                    ),
                    "migration {}: {statement}",
                    index + 1
                );
                assert!(!statement.ends_with(';') && !statement.contains('\r'));
            }
            assert_eq!(
                split_statements(&crlf(sql)),
                lf,
                "migration {} as CRLF",
                index + 1
            );
            assert_eq!(
                split_statements(&sql.replace('\n', "\r")),
                lf,
                "migration {} with CR line ends",
                index + 1
            );
        }
    }

    #[test]
    fn every_migration_runs_with_crlf_line_endings() {
        let lf = run(MIGRATIONS);
        let crlf: Vec<String> = MIGRATIONS.iter().map(|sql| crlf(sql)).collect();
        let crlf: Vec<&str> = crlf.iter().map(String::as_str).collect();
        assert_eq!(run(&crlf), lf);
        assert!(lf.contains(&format!("PRAGMA user_version = {SCHEMA_VERSION}")));
        assert!(lf.len() > MIGRATIONS.len() * 2, "{lf:?}");
    }

    #[test]
    fn splitting_keeps_comments_inside_statements_and_ignores_them_between() {
        let sql = "-- a header;\r\n\r\nCREATE TABLE t (\r\n    a TEXT, -- a; b\r\n    -- note;\r\n    b TEXT\r\n);  \r\n-- between;\r\nCREATE INDEX i ON t (a);\r\nCREATE INDEX j ON t (b)";
        assert_eq!(
            split_statements(sql),
            vec![
                "CREATE TABLE t (\n    a TEXT, -- a; b\n    -- note;\n    b TEXT\n)",
                "CREATE INDEX i ON t (a)",
                "CREATE INDEX j ON t (b)",
            ]
        );
    }
}
