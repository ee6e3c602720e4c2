//! Routing a request to a component's `handle`, as Spin would: pick the
//! component from `spin.toml`, take an instance of it (its pool of
//! prepared connections and its settings, kept for up to
//! [`REQUESTS_PER_INSTANCE`] requests, as Spin 4 keeps a Wasm instance),
//! call it. `Server` does the same over HTTP.

use crate::manifest::{Component, Manifest, env_lookup};
use crate::stores::{LazySqliteKv, RusqliteDb};
use anyhow::Context as _;
use bytes::Bytes;
use kizuna::config::Config;
use kizuna::error::ApiError;
use kizuna::http::{MAX_BODY_BYTES, Request, Response, error_response};
use kizuna::pool::{Lease, Pool, Refreshing};
use kizuna::ports::{Clock, SystemClock};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;

/// The peer of in-process requests: a client on loopback.
pub const LOOPBACK_PEER: &str = "127.0.0.1:40000";

/// A clock tests can move.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    pub fn new(at: OffsetDateTime) -> ManualClock {
        ManualClock(Mutex::new(at))
    }
    pub fn advance(&self, by: time::Duration) {
        let mut now = self.0.lock().expect("clock lock");
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().expect("clock lock")
    }
}

/// The components this host can run, by their `spin.toml` id.
async fn call_component(
    component: &str,
    request: Request,
    ctx: &kizuna::Ctx<'_, Lease<RusqliteDb>, LazySqliteKv>,
) -> Option<Response> {
    match component {
        "contacts" => Some(kizuna_contacts::handle(request, ctx).await),
        "forms" => Some(kizuna_forms::handle(request, ctx).await),
        "purchases" => Some(kizuna_purchases::handle(request, ctx).await),
        "points" => Some(kizuna_points::handle(request, ctx).await),
        "segments" => Some(kizuna_segments::handle(request, ctx).await),
        _ => None,
    }
}

/// How many requests Spin 4 serves with one component instance before it
/// starts a fresh one.
pub const REQUESTS_PER_INSTANCE: usize = 128;

/// What one component instance keeps between its requests, as the Spin
/// adapter keeps it in the instance's statics.
#[derive(Default)]
struct Instance {
    pool: Pool<RusqliteDb>,
    settings: Refreshing<Arc<Config>>,
    served: std::sync::atomic::AtomicUsize,
}

pub struct Host {
    manifest: Manifest,
    data_dir: PathBuf,
    overrides: BTreeMap<String, String>,
    clock: Arc<dyn Clock + Send + Sync>,
    instances: Mutex<BTreeMap<String, Arc<Instance>>>,
    last_statements: std::sync::atomic::AtomicU64,
}

impl Host {
    /// A host over the workspace's `spin.toml`, keeping its databases in
    /// `data_dir` (Spin's file names: `sqlite_db.db`, `sqlite_key_value.db`).
    pub fn new(data_dir: &Path) -> anyhow::Result<Host> {
        std::fs::create_dir_all(data_dir).context("failed to create the data directory")?;
        Ok(Host {
            manifest: Manifest::workspace()?,
            data_dir: data_dir.to_owned(),
            overrides: BTreeMap::new(),
            clock: Arc::new(SystemClock),
            instances: Mutex::new(BTreeMap::new()),
            last_statements: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Sets an application variable, taking precedence over the
    /// environment (tests use this instead of process-wide env vars).
    pub fn with_variable(mut self, name: &str, value: &str) -> Host {
        self.overrides.insert(name.to_owned(), value.to_owned());
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock + Send + Sync>) -> Host {
        self.clock = clock;
        self
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("sqlite_db.db")
    }

    fn kv_path(&self) -> PathBuf {
        self.data_dir.join("sqlite_key_value.db")
    }

    /// Handles one request in-process as if it came from a client on
    /// loopback; blocks the calling thread.
    pub fn handle(&self, request: Request) -> Response {
        self.handle_from(request, LOOPBACK_PEER.parse().expect("loopback address"))
    }

    /// Handles one request from `peer`. Like Spin, the host keeps the
    /// client's own headers, `spin-*` ones included, and appends its own
    /// `spin-client-addr`, so the client's value (if any) comes first.
    pub fn handle_from(&self, mut request: Request, peer: std::net::SocketAddr) -> Response {
        if let Ok(value) = http::HeaderValue::from_str(&peer.to_string()) {
            request.headers_mut().append("spin-client-addr", value);
        }
        let Some(component) = self.manifest.route(request.uri().path()) else {
            return error_response(&ApiError::NotFound("no route matches this path".into()));
        };
        match futures::executor::block_on(self.run(component, request)) {
            Ok(response) => response,
            Err(cause) => error_response(&ApiError::Unexpected(cause)),
        }
    }

    /// The instance of `component` that serves the next request: the
    /// current one, until it has served [`REQUESTS_PER_INSTANCE`].
    fn instance(&self, component: &str) -> Arc<Instance> {
        use std::sync::atomic::Ordering;
        let mut instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        let instance = Arc::clone(instances.entry(component.to_owned()).or_default());
        if instance.served.fetch_add(1, Ordering::Relaxed) + 1 >= REQUESTS_PER_INSTANCE {
            instances.remove(component);
        }
        instance
    }

    async fn run(&self, component: &Component, request: Request) -> anyhow::Result<Response> {
        anyhow::ensure!(
            component.sqlite_databases == ["default"] && component.key_value_stores == ["default"],
            "component {} must be granted the default database and store",
            component.id
        );
        let started = std::time::Instant::now();
        let instance = self.instance(&component.id);
        let config = instance
            .settings
            .get(async || {
                let lookup = |name: &str| {
                    self.overrides
                        .get(name)
                        .cloned()
                        .or_else(|| env_lookup(name))
                };
                let variables = self.manifest.resolve_variables(component, &lookup)?;
                Config::from_variables(&variables).map(Arc::new)
            })
            .await?;
        let settings_read = started.elapsed();
        let db = instance
            .pool
            .lease(async || RusqliteDb::open(&self.database_path()))
            .await?;
        let leased = started.elapsed();
        let kv = LazySqliteKv::new(self.kv_path());
        let ctx = kizuna::Ctx {
            db: &db,
            kv: &kv,
            clock: self.clock.as_ref(),
            config: &config,
        };
        let mut response = call_component(&component.id, request, &ctx)
            .await
            .with_context(|| format!("no handler registered for component {}", component.id));
        if let Ok(response) = &mut response
            && config.server_timing
        {
            // The body came in whole: nothing to read.
            let stages = kizuna::pool::Stages {
                read: std::time::Duration::ZERO,
                settings: settings_read,
                connection: leased - settings_read,
                total: started.elapsed(),
            };
            response
                .headers_mut()
                .insert("server-timing", db.server_timing(&stages));
        }
        self.last_statements
            .store(db.statements(), std::sync::atomic::Ordering::Relaxed);
        instance.pool.give_back(db);
        response
    }

    /// How many SQL statements the last request ran (each one a host call
    /// under Spin), preparing a new connection not included.
    pub fn statements_of_last_request(&self) -> u64 {
        self.last_statements
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The host served over HTTP on a loopback port, with a pool of worker
/// threads so concurrent requests really run in parallel, each on its own
/// SQLite connection.
pub struct Server {
    server: Arc<tiny_http::Server>,
    workers: Vec<std::thread::JoinHandle<()>>,
    pub addr: std::net::SocketAddr,
}

impl Server {
    pub fn start(host: Host, listen: &str, threads: usize) -> anyhow::Result<Server> {
        let server = Arc::new(
            tiny_http::Server::http(listen)
                .map_err(|e| anyhow::anyhow!("failed to listen on {listen}: {e}"))?,
        );
        let addr = server
            .server_addr()
            .to_ip()
            .context("server has no IP address")?;
        let host = Arc::new(host);
        let workers = (0..threads.max(1))
            .map(|_| {
                let server = Arc::clone(&server);
                let host = Arc::clone(&host);
                std::thread::spawn(move || {
                    while let Ok(request) = server.recv() {
                        serve_one(&host, request);
                    }
                })
            })
            .collect();
        Ok(Server {
            server,
            workers,
            addr,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Blocks until the server stops.
    pub fn join(self) {
        for worker in self.workers {
            if worker.join().is_err() {
                eprintln!("a server worker panicked");
            }
        }
    }

    pub fn stop(self) {
        self.server.unblock();
        for _ in 1..self.workers.len() {
            self.server.unblock();
        }
        self.join();
    }
}

fn serve_one(host: &Host, mut incoming: tiny_http::Request) {
    let mut builder = http::Request::builder()
        .method(incoming.method().as_str())
        .uri(incoming.url());
    for header in incoming.headers() {
        builder = builder.header(header.field.as_str().as_str(), header.value.as_str());
    }
    let peer = incoming
        .remote_addr()
        .copied()
        .unwrap_or_else(|| LOOPBACK_PEER.parse().expect("loopback address"));
    let mut body = Vec::new();
    let read = incoming
        .as_reader()
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut body);
    let response = match (read, builder.body(Bytes::from(body))) {
        // A panic in a handler is a bug; it answers 500 and the worker
        // lives on, as a trapped Wasm instance does under Spin.
        (Ok(_), Ok(request)) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            host.handle_from(request, peer)
        }))
        .unwrap_or_else(|_| {
            error_response(&ApiError::Unexpected(anyhow::anyhow!("handler panicked")))
        }),
        _ => error_response(&ApiError::BadRequest("unreadable request".into())),
    };
    let (parts, body) = response.into_parts();
    let mut reply =
        tiny_http::Response::from_data(body.to_vec()).with_status_code(parts.status.as_u16());
    for (name, value) in &parts.headers {
        if let Ok(header) =
            tiny_http::Header::from_bytes(name.as_str().as_bytes(), value.as_bytes())
        {
            reply.add_header(header);
        }
    }
    if let Err(e) = incoming.respond(reply) {
        eprintln!("failed to send a response: {e}");
    }
}
