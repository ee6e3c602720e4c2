//! The storage ports the domain talks through: a SQL database (`Db`), a
//! key-value store (`Kv`) and a `Clock`. Two implementations exist: Spin's
//! (`crate::spin_ports`, behind the `spin` feature) and rusqlite's, in the
//! `kizuna-tests` host. The same SQL runs on both.

use anyhow::Context as _;
use time::OffsetDateTime;

/// A SQLite value, as both Spin's and rusqlite's APIs carry it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Integer(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Integer(i64::from(v))
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The rows a statement returned, with their column names.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Rows {
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(|values| Row {
            columns: &self.columns,
            values,
        })
    }
    pub fn first(&self) -> Option<Row<'_>> {
        self.iter().next()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    pub fn len(&self) -> usize {
        self.rows.len()
    }
}

/// One row, read by column name so that a reordered `SELECT` cannot
/// silently shift values into the wrong fields.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl<'a> Row<'a> {
    pub fn value(&self, column: &str) -> anyhow::Result<&'a Value> {
        let index = self
            .columns
            .iter()
            .position(|c| c == column)
            .with_context(|| format!("column `{column}` missing from result"))?;
        Ok(&self.values[index])
    }
    pub fn opt_str(&self, column: &str) -> anyhow::Result<Option<&'a str>> {
        match self.value(column)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s)),
            other => anyhow::bail!("column `{column}`: expected text, got {other:?}"),
        }
    }
    pub fn str(&self, column: &str) -> anyhow::Result<&'a str> {
        self.opt_str(column)?
            .with_context(|| format!("column `{column}` is NULL"))
    }
    pub fn opt_i64(&self, column: &str) -> anyhow::Result<Option<i64>> {
        match self.value(column)? {
            Value::Null => Ok(None),
            Value::Integer(i) => Ok(Some(*i)),
            other => anyhow::bail!("column `{column}`: expected integer, got {other:?}"),
        }
    }
    pub fn i64(&self, column: &str) -> anyhow::Result<i64> {
        self.opt_i64(column)?
            .with_context(|| format!("column `{column}` is NULL"))
    }
}

/// Why a statement failed. Constraint violations are told apart so that
/// they can become client answers (see [`DbError::is_unique_violation`]);
/// a database that cannot be reached, or that ended the connection's
/// stream or transaction, is told apart so that the caller gets a 503
/// and the connection is abandoned (see `pool::Lease`).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("constraint violated: {0}")]
    Constraint(String),
    #[error("database busy: {0}")]
    Busy(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Other(String),
}

/// What a libSQL server (through Spin's client) answers when it ended the
/// stream (idle past 10 s: `STREAM_EXPIRED`; the server restarted:
/// `Received an invalid baton`) or the transaction (its lock taken back
/// after 5 s while another writer waited: `TRANSACTION_TIMEOUT`,
/// `Transaction timed out`): nothing of the transaction was kept, and
/// the stream is never usable again.
const ENDED_MARKERS: &[&str] = &[
    "STREAM_EXPIRED",
    "stream expired",
    "Stream expired",
    "timed-out",
    "timed out",
    "baton",
];

/// SQLite result codes, as a libSQL server names them in its errors
/// (`(error code: SQLITE_INTERRUPT)`), that say the statement was stopped
/// rather than wrong: the server interrupts a transaction whose lock it
/// took back.
const TRANSIENT_CODES: &[&str] = &["SQLITE_INTERRUPT", "SQLITE_BUSY", "SQLITE_LOCKED"];

/// What Spin's libSQL client says when it cannot reach the server.
const UNREACHABLE_MARKERS: &[&str] = &[
    "error sending request",
    "onnection refused",
    "onnection reset",
    "onnection closed",
    "roken pipe",
    "http error",
    "HTTP error",
    "hyper",
    "Hrana",
];

impl DbError {
    /// Classifies a driver message. Spin's SQLite host and rusqlite pass
    /// SQLite's own message text through, and Spin's libSQL client adds
    /// the server's result code, so one classifier serves all three. A
    /// statement the server ran and refused is never "unavailable": a
    /// 503 would invite the caller to repeat a request that cannot work.
    pub fn from_message(message: String) -> Self {
        if ENDED_MARKERS.iter().any(|m| message.contains(m)) {
            DbError::Unavailable(message)
        } else if message.contains("constraint failed") {
            DbError::Constraint(message)
        } else if message.contains("database is locked") || message.contains("database is busy") {
            DbError::Busy(message)
        } else if message.contains("(error code: SQLITE_") {
            if TRANSIENT_CODES
                .iter()
                .any(|c| message.contains(&format!("{c})")))
            {
                DbError::Unavailable(message)
            } else {
                DbError::Other(message)
            }
        } else if UNREACHABLE_MARKERS.iter().any(|m| message.contains(m)) {
            DbError::Unavailable(message)
        } else {
            DbError::Other(message)
        }
    }
    /// True when the unique index named by `index_columns`
    /// (e.g. `"contacts.email"`) rejected the write.
    pub fn is_unique_violation(&self, index_columns: &str) -> bool {
        matches!(self, DbError::Constraint(m) if m.contains("UNIQUE") && m.contains(index_columns))
    }
    /// True when Spin's libSQL client refused the statement before
    /// sending it (pragmas that set a value, `wal_checkpoint`, `CREATE
    /// TEMP TABLE`): the database is a libSQL server, not a file.
    pub fn is_refused_by_libsql_client(&self) -> bool {
        matches!(self, DbError::Other(m) if m.contains("unsupported statement"))
    }
    /// True when the database could not serve the statement at all (down,
    /// busy past every retry, or it ended the stream or transaction): the
    /// caller may try again, and gets a 503 that says so.
    pub fn is_transient(&self) -> bool {
        matches!(self, DbError::Busy(_) | DbError::Unavailable(_))
    }

    /// True when a transient `DbError` is among `error`'s causes.
    pub fn is_transient_cause(error: &anyhow::Error) -> bool {
        error.chain().any(|c| {
            c.downcast_ref::<DbError>()
                .is_some_and(DbError::is_transient)
        })
    }
}

/// Which engine serves Spin's `default` database: its runtime config
/// decides, and `db::prepare` finds out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// A SQLite file on this host (Spin's default): Kizuna sets the
    /// pragmas, WAL and checkpoints itself.
    #[default]
    SqliteFile,
    /// A libSQL server (`sqld`), through Spin's `type = "libsql"`
    /// client: durability, WAL and checkpoints are the server's.
    Libsql,
}

impl Backend {
    /// How answers name it (`/healthz`, the erasure answer).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::SqliteFile => "sqlite_file",
            Backend::Libsql => "libsql",
        }
    }
}

/// The SQL database. One value is one connection, opened per request.
#[allow(async_fn_in_trait)] // components are single-threaded; the native host blocks per thread
pub trait Db {
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError>;

    /// Waits `pause` outside any transaction, so that other connections
    /// can take the write lock. SQLite has no queue for it: a waiting
    /// writer's busy handler polls with back-off (sleeps up to 100 ms), so
    /// a loop of back-to-back transactions (a sweep, a sync) would win
    /// nearly every race and starve the shop's writers. Maintenance loops
    /// call this between batches. Without an implementation: no pause.
    async fn yield_to_writers(&self, pause: std::time::Duration) {
        let _ = pause;
    }

    /// The engine behind this connection, as `db::prepare` found it. A
    /// bare connection does not know: only a prepared one (a
    /// `pool::Lease`) answers for libSQL.
    fn backend(&self) -> Backend {
        Backend::SqliteFile
    }
}

/// The key-value store: read often, written rarely, safe to rebuild.
#[allow(async_fn_in_trait)]
pub trait Kv {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>>;
    async fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()>;
    async fn delete(&self, key: &str) -> anyhow::Result<()>;
}

/// Where "now" comes from, so tests can move time.
pub trait Clock {
    fn now(&self) -> OffsetDateTime;
}

/// The wall clock. WASI 0.2+ exposes it, so Spin and native builds share it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages as Spin 4.0.2 passes them to a component, seen with sqld
    /// 0.24.33 (`Error::Io(...)` is how Spin's error prints).
    #[test]
    fn libsql_answers_are_told_apart() {
        let kind = |m: &str| match DbError::from_message(m.to_owned()) {
            DbError::Constraint(_) => "constraint",
            DbError::Busy(_) => "busy",
            DbError::Unavailable(_) => "unavailable",
            DbError::Other(_) => "other",
        };
        let cases = [
            (
                r#"Error::Io("Hrana: `cursor error: `error at step 0: (error code: TRANSACTION_TIMEOUT) `Transaction timed out```")"#,
                "unavailable",
            ),
            (
                r#"Error::Io("Hrana: `api error: `{\"message\":\"The stream has expired due to inactivity\",\"code\":\"STREAM_EXPIRED\"}``")"#,
                "unavailable",
            ),
            (
                r#"Error::Io("Hrana: `api error: `Received an invalid baton``")"#,
                "unavailable",
            ),
            (
                r#"Error::Io("Hrana: `http error: `error trying to connect: tcp connect error: Connection refused (os error 111)``")"#,
                "unavailable",
            ),
            (
                r#"Error::Io("Hrana: `cursor error: `cursor error: `error reading a body from connection: unexpected EOF during chunk size line```")"#,
                "unavailable",
            ),
            (
                r#"Error::Io("Hrana: `cursor error: `error at step 0: (error code: SQLITE_INTERRUPT) `SQLite error: interrupted```")"#,
                "unavailable",
            ),
            (
                r#"Error::Io("Hrana: `cursor error: `error at step 0: (error code: SQLITE_CONSTRAINT) `SQLite error: UNIQUE constraint failed: contacts.email```")"#,
                "constraint",
            ),
            (
                r#"Error::Io("Hrana: `cursor error: `error at step 0: (error code: SQLITE_BUSY) `SQLite error: database is locked```")"#,
                "busy",
            ),
            (
                r#"Error::Io("Hrana: `cursor error: `error at step 0: (error code: SQLITE_UNKNOWN) `SQLite error: cannot commit - no transaction is active```")"#,
                "other",
            ),
            (
                r#"Error::Io("Hrana: `cursor error: `error at step 0: (error code: SQLITE_UNKNOWN) `SQLite error: no such table: nowhere```")"#,
                "other",
            ),
            (r#"Error::Io("unsupported statement")"#, "other"),
            ("UNIQUE constraint failed: contacts.email", "constraint"),
            ("database is locked", "busy"),
            ("no such column: x", "other"),
        ];
        for (message, expected) in cases {
            assert_eq!(kind(message), expected, "{message}");
        }
        assert!(
            DbError::from_message(cases[6].0.to_owned()).is_unique_violation("contacts.email"),
            "a unique violation on libSQL is still told as one"
        );
        assert!(DbError::from_message(cases[10].0.to_owned()).is_refused_by_libsql_client());
    }
}
