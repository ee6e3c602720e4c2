//! The ports over Spin's SQLite and key-value host interfaces. Compiled only
//! with the `spin` feature, so native builds and tests never link spin-sdk
//! (whose host calls abort outside a Wasm host).

use crate::ports::{Db, DbError, Kv, Rows, Value};
use anyhow::Context as _;
use spin_sdk::{key_value, sqlite};

/// Spin's `default` database: one connection per request.
pub struct SpinDb(sqlite::Connection);

impl SpinDb {
    pub async fn open_default() -> anyhow::Result<Self> {
        let connection = sqlite::Connection::open_default()
            .await
            .map_err(|e| anyhow::anyhow!("failed to open the default database: {e}"))?;
        Ok(SpinDb(connection))
    }
}

fn to_spin(value: &Value) -> sqlite::Value {
    match value {
        Value::Null => sqlite::Value::Null,
        Value::Integer(i) => sqlite::Value::Integer(*i),
        Value::Real(r) => sqlite::Value::Real(*r),
        Value::Text(s) => sqlite::Value::Text(s.clone()),
        Value::Blob(b) => sqlite::Value::Blob(b.clone()),
    }
}

fn from_spin(value: sqlite::Value) -> Value {
    match value {
        sqlite::Value::Null => Value::Null,
        sqlite::Value::Integer(i) => Value::Integer(i),
        sqlite::Value::Real(r) => Value::Real(r),
        sqlite::Value::Text(s) => Value::Text(s),
        sqlite::Value::Blob(b) => Value::Blob(b),
    }
}

impl Db for SpinDb {
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        let result = self
            .0
            .execute(sql, params.iter().map(to_spin).collect::<Vec<_>>())
            .await
            .map_err(|e| DbError::from_message(e.to_string()))?;
        let columns = result.columns().to_vec();
        let rows = result
            .collect()
            .await
            .map_err(|e| DbError::from_message(e.to_string()))?;
        Ok(Rows {
            columns,
            rows: rows
                .into_iter()
                .map(|row| row.values.into_iter().map(from_spin).collect())
                .collect(),
        })
    }
}

/// Spin's `default` key-value store.
pub struct SpinKv(key_value::Store);

impl SpinKv {
    pub async fn open_default() -> anyhow::Result<Self> {
        let store = key_value::Store::open_default()
            .await
            .map_err(|e| anyhow::anyhow!("failed to open the default key-value store: {e}"))?;
        Ok(SpinKv(store))
    }
}

impl Kv for SpinKv {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.0
            .get(key)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("key-value get failed")
    }
    async fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        self.0
            .set(key, value)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("key-value set failed")
    }
    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.0
            .delete(key)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("key-value delete failed")
    }
}

/// Reads every variable in `names` from Spin; a variable that is not set
/// is absent from the map (required secrets are enforced by `spin.toml`).
pub async fn read_variables(names: &[&str]) -> std::collections::BTreeMap<String, String> {
    let mut values = std::collections::BTreeMap::new();
    for name in names {
        if let Ok(value) = spin_sdk::variables::get(name).await {
            values.insert((*name).to_owned(), value);
        }
    }
    values
}
