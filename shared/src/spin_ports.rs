//! The ports over Spin's SQLite and key-value host interfaces. Compiled only
//! with the `spin` feature, so native builds and tests never link spin-sdk
//! (whose host calls abort outside a Wasm host).

use crate::error::ApiError;
use crate::http::{MAX_BODY_BYTES, error_response};
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
    /// An async wait (WASIp3 `wait-for`): the instance's other requests
    /// go on meanwhile, unlike a blocking sleep.
    async fn yield_to_writers(&self, pause: std::time::Duration) {
        let nanos = u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX);
        spin_sdk::wasip3::clocks::monotonic_clock::wait_for(nanos).await;
    }

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

/// A component's whole Spin entry point: read the body (at most one byte
/// past [`MAX_BODY_BYTES`], so an oversized upload is refused without
/// being held), read the component's variables, open the stores, prepare
/// the database, call `handler`, and return its response.
pub async fn serve<F>(
    request: spin_sdk::http::Request,
    variable_names: &[&str],
    handler: F,
) -> http::Response<spin_sdk::http::FullBody<bytes::Bytes>>
where
    F: AsyncFnOnce(crate::http::Request, &crate::Ctx<'_, SpinDb, SpinKv>) -> crate::http::Response,
{
    use futures::StreamExt as _;
    use spin_sdk::http::body::IncomingBodyExt as _;

    let (parts, body) = request.into_parts();
    let mut stream = body.stream();
    let mut buffer = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => buffer.extend_from_slice(&bytes),
            Err(_) => {
                let error = ApiError::BadRequest("the body could not be read".into());
                return error_response(&error).map(spin_sdk::http::FullBody::new);
            }
        }
        if buffer.len() > MAX_BODY_BYTES {
            buffer.truncate(MAX_BODY_BYTES + 1);
            break;
        }
    }
    let request = http::Request::from_parts(parts, bytes::Bytes::from(buffer));
    let response = async {
        let variables = read_variables(variable_names).await;
        let config = crate::config::Config::from_variables(&variables)?;
        let db = SpinDb::open_default().await?;
        crate::db::prepare(&db).await?;
        let kv = SpinKv::open_default().await?;
        let ctx = crate::Ctx {
            db: &db,
            kv: &kv,
            clock: &crate::ports::SystemClock,
            config: &config,
        };
        anyhow::Ok(handler(request, &ctx).await)
    }
    .await
    .unwrap_or_else(|cause| error_response(&ApiError::Unexpected(cause)));
    response.map(spin_sdk::http::FullBody::new)
}
