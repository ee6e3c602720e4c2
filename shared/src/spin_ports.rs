//! The ports over Spin's SQLite and key-value host interfaces, and the
//! per-instance state a component keeps between requests (see
//! `crate::pool` for why each piece is safe to keep). Compiled only with
//! the `spin` feature, so native builds and tests never link spin-sdk
//! (whose host calls abort outside a Wasm host).

use crate::config::Config;
use crate::error::ApiError;
use crate::http::{MAX_BODY_BYTES, error_response};
use crate::pool::{Lease, Pool, Refreshing};
use crate::ports::{Db, DbError, Kv, Rows, Value};
use spin_sdk::{key_value, sqlite};
use std::cell::RefCell;
use std::rc::Rc;

/// Spin's `default` database: one connection, lent to one request at a
/// time from the instance's pool.
pub struct SpinDb(sqlite::Connection);

impl SpinDb {
    pub async fn open_default() -> anyhow::Result<Self> {
        let connection = sqlite::Connection::open_default().await.map_err(|e| {
            anyhow::Error::from(DbError::from_message(e.to_string()))
                .context("failed to open the default database")
        })?;
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

thread_local! {
    /// The instance's idle connections (a component instance is one
    /// thread; `thread_local` keeps Spin's handles off any `Sync` bound).
    static POOL: Rc<Pool<SpinDb>> = Rc::new(Pool::new());
    /// The instance's settings, re-read every `pool::SETTINGS_REFRESH`.
    static SETTINGS: Rc<Refreshing<Rc<Config>>> = Rc::new(Refreshing::new());
    /// The instance's handle on the default store, opened by the first
    /// request that uses it.
    static STORE: RefCell<Option<Rc<key_value::Store>>> = const { RefCell::new(None) };
}

/// Spin's `default` key-value store, opened on first use: most requests
/// never touch it, and opening it is a slow host call.
pub struct SpinKv;

impl SpinKv {
    async fn store(&self) -> anyhow::Result<Rc<key_value::Store>> {
        if let Some(store) = STORE.with_borrow(Clone::clone) {
            return Ok(store);
        }
        let store = Rc::new(
            key_value::Store::open_default()
                .await
                .map_err(|e| anyhow::anyhow!("failed to open the default key-value store: {e}"))?,
        );
        STORE.set(Some(Rc::clone(&store)));
        Ok(store)
    }

    /// After a failed call the handle is not trusted again: the next use
    /// reopens the store.
    fn checked<T>(result: Result<T, key_value::Error>, what: &'static str) -> anyhow::Result<T> {
        result.map_err(|e| {
            STORE.set(None);
            anyhow::anyhow!("{e}").context(what)
        })
    }
}

impl Kv for SpinKv {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Self::checked(self.store().await?.get(key).await, "key-value get failed")
    }
    async fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        Self::checked(
            self.store().await?.set(key, value).await,
            "key-value set failed",
        )
    }
    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        Self::checked(
            self.store().await?.delete(key).await,
            "key-value delete failed",
        )
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
/// being held), take the instance's settings and a prepared connection
/// from its pool, call `handler`, give the connection back, and return
/// the response.
pub async fn serve<F>(
    request: spin_sdk::http::Request,
    variable_names: &[&str],
    handler: F,
) -> http::Response<spin_sdk::http::FullBody<bytes::Bytes>>
where
    F: AsyncFn(
        crate::http::Request,
        &crate::Ctx<'_, Lease<SpinDb>, SpinKv>,
    ) -> crate::http::Response,
{
    use futures::StreamExt as _;
    use spin_sdk::http::body::IncomingBodyExt as _;

    let started = std::time::Instant::now();
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
    let read = started.elapsed();
    let response = async {
        let settings = SETTINGS.with(Rc::clone);
        let config = settings
            .get(async || {
                let variables = read_variables(variable_names).await;
                Config::from_variables(&variables).map(Rc::new)
            })
            .await?;
        let settings_read = started.elapsed();
        let zone = match crate::answer_zone::asked(&request, config.shop_offset) {
            Ok(zone) => zone,
            Err(error) => return anyhow::Ok(error_response(&error)),
        };
        let pool = POOL.with(Rc::clone);
        let leased = std::cell::Cell::new(settings_read);
        let (mut response, db) = pool
            .run(SpinDb::open_default, async |db: &Lease<SpinDb>| {
                leased.set(started.elapsed());
                let ctx = crate::Ctx {
                    db,
                    kv: &SpinKv,
                    clock: &crate::ports::SystemClock,
                    config: &config,
                };
                handler(crate::http::duplicate(&request), &ctx).await
            })
            .await?;
        let leased = leased.get();
        if config.server_timing {
            let stages = crate::pool::Stages {
                read,
                settings: settings_read - read,
                connection: leased - settings_read,
                total: started.elapsed(),
            };
            response
                .headers_mut()
                .insert("server-timing", db.server_timing(&stages));
        }
        pool.give_back(db);
        anyhow::Ok(match zone {
            Some(offset) => crate::answer_zone::rewrite(response, offset),
            None => response,
        })
    }
    .await
    .unwrap_or_else(|cause| error_response(&ApiError::Unexpected(cause)));
    response.map(spin_sdk::http::FullBody::new)
}
