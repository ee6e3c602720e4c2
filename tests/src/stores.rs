//! The `Db` and `Kv` ports over rusqlite. Like Spin, the host sets no
//! pragmas of its own: the domain's `db::prepare` does that (through its
//! `pool`), so native runs see what Spin would.

use kizuna::ports::{Db, DbError, Kv, Rows, Value};
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use std::path::Path;

pub struct RusqliteDb(rusqlite::Connection);

impl RusqliteDb {
    pub fn open(path: &Path) -> anyhow::Result<RusqliteDb> {
        Ok(RusqliteDb(rusqlite::Connection::open(path)?))
    }
}

struct Param<'a>(&'a Value);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Owned(SqlValue::Null),
            Value::Integer(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
            Value::Real(r) => ToSqlOutput::Owned(SqlValue::Real(*r)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

/// `KIZUNA_TRACE_SQL=1` prints every statement the native host runs, to
/// see what a request costs.
fn trace_sql() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var("KIZUNA_TRACE_SQL").is_ok_and(|v| v == "1"))
}

fn db_error(e: rusqlite::Error) -> DbError {
    DbError::from_message(e.to_string())
}

impl Db for RusqliteDb {
    /// The native host runs each request on its own thread.
    async fn yield_to_writers(&self, pause: std::time::Duration) {
        std::thread::sleep(pause);
    }

    async fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        if trace_sql() {
            eprintln!(
                "sql: {}",
                sql.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
        let mut statement = self.0.prepare(sql).map_err(db_error)?;
        let columns: Vec<String> = statement
            .column_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let params: Vec<Param<'_>> = params.iter().map(Param).collect();
        let mut query = statement
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(db_error)?;
        let mut rows = Vec::new();
        while let Some(row) = query.next().map_err(db_error)? {
            let mut values = Vec::with_capacity(columns.len());
            for index in 0..columns.len() {
                values.push(match row.get_ref(index).map_err(db_error)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(i) => Value::Integer(i),
                    ValueRef::Real(r) => Value::Real(r),
                    ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                });
            }
            rows.push(values);
        }
        Ok(Rows { columns, rows })
    }
}

/// Spin's default key-value store is SQLite-backed too; this uses Spin's
/// own table (`spin_key_value`, keyed by store and key) in Spin's file
/// name, so `kizuna-local` and `spin up` can share a `.spin/` directory.
pub struct SqliteKv(rusqlite::Connection);

impl SqliteKv {
    pub fn open(path: &Path) -> anyhow::Result<SqliteKv> {
        let connection = rusqlite::Connection::open(path)?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.execute(
            "CREATE TABLE IF NOT EXISTS spin_key_value (
                store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                PRIMARY KEY (store, key))",
            [],
        )?;
        Ok(SqliteKv(connection))
    }
}

impl Kv for SqliteKv {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        use rusqlite::OptionalExtension as _;
        Ok(self
            .0
            .query_row(
                "SELECT value FROM spin_key_value WHERE store = 'default' AND key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?)
    }
    async fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.0.execute(
            "INSERT INTO spin_key_value (store, key, value) VALUES ('default', ?1, ?2)
             ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
            rusqlite::params![key, value],
        )?;
        Ok(())
    }
    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.0.execute(
            "DELETE FROM spin_key_value WHERE store = 'default' AND key = ?1",
            [key],
        )?;
        Ok(())
    }
}

/// The key-value store opened by the first call that uses it, as the Spin
/// adapter does: most requests never touch it.
pub struct LazySqliteKv {
    path: std::path::PathBuf,
    store: std::cell::OnceCell<SqliteKv>,
}

impl LazySqliteKv {
    pub fn new(path: std::path::PathBuf) -> LazySqliteKv {
        LazySqliteKv {
            path,
            store: std::cell::OnceCell::new(),
        }
    }

    fn store(&self) -> anyhow::Result<&SqliteKv> {
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let store = SqliteKv::open(&self.path)?;
        Ok(self.store.get_or_init(|| store))
    }
}

impl Kv for LazySqliteKv {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.store()?.get(key).await
    }
    async fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.store()?.set(key, value).await
    }
    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.store()?.delete(key).await
    }
}
