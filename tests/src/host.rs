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
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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
        "events" => Some(kizuna_events::handle(request, ctx).await),
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
        let zone = match kizuna::answer_zone::asked(&request, config.shop_offset) {
            Ok(zone) => zone,
            Err(error) => return Ok(error_response(&error)),
        };
        let kv = LazySqliteKv::new(self.kv_path());
        let leased = std::cell::Cell::new(settings_read);
        let (mut response, db) = instance
            .pool
            .run(
                async || RusqliteDb::open(&self.database_path()),
                async |db: &kizuna::pool::Lease<RusqliteDb>| {
                    leased.set(started.elapsed());
                    let ctx = kizuna::Ctx {
                        db,
                        kv: &kv,
                        clock: self.clock.as_ref(),
                        config: &config,
                    };
                    call_component(&component.id, kizuna::http::duplicate(&request), &ctx)
                        .await
                        .with_context(|| {
                            format!("no handler registered for component {}", component.id)
                        })
                },
            )
            .await?;
        let leased = leased.get();
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
        response.map(|response| match zone {
            Some(offset) => kizuna::answer_zone::rewrite(response, offset),
            None => response,
        })
    }

    /// How many SQL statements the last request ran (each one a host call
    /// under Spin), preparing a new connection not included.
    pub fn statements_of_last_request(&self) -> u64 {
        self.last_statements
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The host served over HTTP/1.1 on a loopback port: a thread per
/// connection, and at most `threads` requests in the handlers at once,
/// so concurrent requests really run in parallel, each on its own SQLite
/// connection.
///
/// The wire protocol is Kizuna's own (over `httparse`), not a server
/// crate's, for one answer no crate gave: a request line with raw
/// non-ASCII bytes in it (`?q=やまだ` typed into curl) must get a 400
/// problem document that says to percent-encode, not a dropped
/// connection. Spin refuses such a request with a bare 400 before any
/// component runs, so that answer is the native host's alone.
pub struct Server {
    shared: Arc<Shared>,
    acceptor: Option<std::thread::JoinHandle<()>>,
    pub addr: SocketAddr,
}

/// What the acceptor and the connection threads share.
struct Shared {
    host: Host,
    stopping: AtomicBool,
    /// A handle on each open connection, so that `stop` can end them.
    open: Mutex<BTreeMap<u64, TcpStream>>,
    connections: Mutex<Vec<std::thread::JoinHandle<()>>>,
    slots: Slots,
}

/// A counting semaphore: at most `threads` requests in the handlers.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Slot<'a>(&'a Slots);

impl Slots {
    fn take(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

impl Server {
    pub fn start(host: Host, listen: &str, threads: usize) -> anyhow::Result<Server> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("failed to listen on {listen}"))?;
        let addr = listener.local_addr().context("server has no address")?;
        let shared = Arc::new(Shared {
            host,
            stopping: AtomicBool::new(false),
            open: Mutex::new(BTreeMap::new()),
            connections: Mutex::new(Vec::new()),
            slots: Slots {
                free: Mutex::new(threads.max(1)),
                freed: Condvar::new(),
            },
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(&shared, &listener))
        };
        Ok(Server {
            shared,
            acceptor: Some(acceptor),
            addr,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Blocks until the server stops.
    pub fn join(mut self) {
        if let Some(acceptor) = self.acceptor.take()
            && acceptor.join().is_err()
        {
            eprintln!("the server's acceptor panicked");
        }
    }

    /// Stops accepting, ends every open connection (a request in a
    /// handler finishes first) and waits for their threads.
    pub fn stop(self) {
        drop(self);
    }

    fn shut_down(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The acceptor is blocked in `accept`: one connection wakes it.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        if let Err(e) = TcpStream::connect(wake) {
            eprintln!("could not wake the server's acceptor: {e}");
        }
        if acceptor.join().is_err() {
            eprintln!("the server's acceptor panicked");
        }
        for stream in lock(&self.shared.open).values() {
            // Already closed by its client: nothing to end.
            stream.shutdown(Shutdown::Both).ok();
        }
        let connections = std::mem::take(&mut *lock(&self.shared.connections));
        for connection in connections {
            if connection.join().is_err() {
                eprintln!("a server connection thread panicked");
            }
        }
    }
}

impl Drop for Server {
    /// A test that fails before `stop` leaves no server behind.
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors, say: let connections close.
                eprintln!("failed to accept a connection: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        match stream.try_clone() {
            Ok(handle) => {
                lock(&shared.open).insert(id, handle);
            }
            Err(e) => {
                eprintln!("failed to keep a handle on a connection: {e}");
                continue;
            }
        }
        let worker = {
            let shared = Arc::clone(shared);
            std::thread::spawn(move || {
                serve_connection(&shared, stream);
                lock(&shared.open).remove(&id);
            })
        };
        let mut connections = lock(&shared.connections);
        connections.retain(|c| !c.is_finished());
        connections.push(worker);
    }
}

/// The most a request line and its headers may take.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves the requests of one connection in turn until either side
/// closes it.
fn serve_connection(shared: &Shared, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| LOOPBACK_PEER.parse().expect("loopback address"));
    if let Err(e) = stream.set_nodelay(true) {
        eprintln!("failed to set TCP_NODELAY: {e}");
    }
    let mut reader = match stream.try_clone() {
        Ok(read_half) => BufReader::new(read_half),
        Err(e) => {
            eprintln!("failed to read a connection: {e}");
            return;
        }
    };
    let mut writer = stream;
    while !shared.stopping.load(Ordering::SeqCst) {
        let exchange = match read_request(&mut reader, &mut writer) {
            Ok(Some(exchange)) => exchange,
            // Closed between requests, or unreadable: nothing to answer.
            Ok(None) | Err(_) => return,
        };
        let keep_alive = exchange.keep_alive && !shared.stopping.load(Ordering::SeqCst);
        let response = match exchange.request {
            Ok(request) => {
                let _slot = shared.slots.take();
                // A panic in a handler is a bug; it answers 500 and the
                // connection lives on, as a trapped Wasm instance does
                // under Spin.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    shared.host.handle_from(request, peer)
                }))
                .unwrap_or_else(|_| {
                    error_response(&ApiError::Unexpected(anyhow::anyhow!("handler panicked")))
                })
            }
            Err(refused) => error_response(&refused),
        };
        let bytes = response_bytes(response, exchange.head_only, exchange.version, keep_alive);
        if writer
            .write_all(&bytes)
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
        if !keep_alive {
            linger(&mut reader, &writer);
            return;
        }
    }
}

/// Closes after an answer the way servers do (a lingering close): the
/// client may still be sending a body the server did not read (one over
/// the size limit, say), and closing on unread bytes would reset the
/// connection before the client reads the answer. Ends when the client
/// closes, after 2 s of silence, or past 16 MiB.
fn linger(reader: &mut BufReader<TcpStream>, writer: &TcpStream) {
    if writer.shutdown(Shutdown::Write).is_err()
        || writer
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .is_err()
    {
        return;
    }
    // Whatever comes, or an error, ends it the same way.
    std::io::copy(&mut reader.by_ref().take(16 << 20), &mut std::io::sink()).ok();
}

/// One request read off the wire: the request, or why it is refused.
struct Exchange {
    request: Result<Request, ApiError>,
    version: http::Version,
    head_only: bool,
    /// False when the client asked to close, or when the connection can
    /// carry no further request (a refused head, a body left unread).
    keep_alive: bool,
}

impl Exchange {
    fn refused(detail: impl Into<String>) -> Exchange {
        Exchange {
            request: Err(ApiError::BadRequest(detail.into())),
            version: http::Version::HTTP_11,
            head_only: false,
            keep_alive: false,
        }
    }
}

/// What a request line with raw non-ASCII bytes is told.
pub const RAW_NON_ASCII_DETAIL: &str = "the request target holds raw non-ASCII bytes \
    (text such as やまだ typed into a URL), which a URL cannot carry: percent-encode them as \
    UTF-8 (q=%E3%82%84%E3%81%BE%E3%81%A0), e.g. curl -G --data-urlencode 'q=やまだ' \
    \"$BASE/v1/contacts\"";

/// Reads the next request: `None` when the client closed the connection
/// between requests.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> std::io::Result<Option<Exchange>> {
    let head = match read_head(reader)? {
        Head::Closed => return Ok(None),
        Head::TooLarge => {
            return Ok(Some(Exchange::refused(format!(
                "the request line and headers must be at most {MAX_HEAD_BYTES} bytes"
            ))));
        }
        Head::Complete(head) => head,
    };
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    if !head[..line_end].is_ascii() {
        return Ok(Some(Exchange::refused(RAW_NON_ASCII_DETAIL)));
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Ok(Some(Exchange::refused("the request head is incomplete")));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Ok(Some(Exchange::refused("at most 128 headers")));
        }
        Err(e @ (httparse::Error::HeaderName | httparse::Error::HeaderValue)) => {
            return Ok(Some(Exchange::refused(format!(
                "a header is malformed: {e}"
            ))));
        }
        Err(e) => {
            return Ok(Some(Exchange::refused(format!(
                "the request line is malformed ({e}): it is METHOD TARGET HTTP/1.1, and a \
                 space or any other character a URL cannot carry must be percent-encoded"
            ))));
        }
    }
    let version = if parsed.version == Some(0) {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    };
    let method = parsed.method.unwrap_or_default();
    let mut builder = http::Request::builder()
        .method(method)
        .uri(parsed.path.unwrap_or_default())
        .version(version);
    let mut connection = String::new();
    let mut expects_continue = false;
    let mut content_lengths = Vec::new();
    let mut transfer_encoding = None::<String>;
    for header in parsed.headers.iter() {
        let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
        match header.name.to_ascii_lowercase().as_str() {
            "connection" => {
                connection.push_str(&value);
                connection.push(',');
            }
            "expect" => expects_continue |= value.trim() == "100-continue",
            "content-length" => content_lengths.push(value.trim().to_owned()),
            "transfer-encoding" => {
                transfer_encoding = Some(value.rsplit(',').next().unwrap_or("").trim().to_owned());
            }
            _ => {}
        }
        builder = builder.header(header.name, header.value);
    }
    let tokens: Vec<&str> = connection.split(',').map(str::trim).collect();
    let mut keep_alive = match version {
        http::Version::HTTP_10 => tokens.contains(&"keep-alive"),
        _ => !tokens.contains(&"close"),
    };
    let head_only = method.eq_ignore_ascii_case("HEAD");
    let framing = if let Some(coding) = transfer_encoding {
        // With both, Transfer-Encoding wins and the connection ends
        // after the answer (RFC 9112, 6.1).
        keep_alive &= content_lengths.is_empty();
        if coding != "chunked" {
            return Ok(Some(Exchange::refused(
                "a request body's Transfer-Encoding must end in chunked",
            )));
        }
        Framing::Chunked
    } else if let Some(first) = content_lengths.first() {
        match first.parse::<u64>() {
            Ok(length) if content_lengths.iter().all(|l| l == first) => Framing::Length(length),
            _ => return Ok(Some(Exchange::refused("the Content-Length is not valid"))),
        }
    } else {
        Framing::Length(0)
    };
    if expects_continue && version == http::Version::HTTP_11 && framing != Framing::Length(0) {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }
    // Past the limit the handler answers 413 from what was read; the
    // rest stays unread, so the connection cannot carry another request.
    let limit = MAX_BODY_BYTES as u64 + 1;
    let (body, whole) = match framing {
        Framing::Length(length) => {
            let take = length.min(limit);
            let mut body = Vec::with_capacity(usize::try_from(take).unwrap_or(0));
            reader.by_ref().take(take).read_to_end(&mut body)?;
            if (body.len() as u64) < take {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            (body, take == length)
        }
        Framing::Chunked => match read_chunked(reader, limit)? {
            Some(body) => (body, true),
            None => {
                return Ok(Some(Exchange::refused(
                    "the chunked request body is malformed",
                )));
            }
        },
    };
    keep_alive &= whole;
    let request = builder.body(Bytes::from(body)).map_err(|e| {
        ApiError::BadRequest(format!(
            "the request cannot be read ({e}); percent-encode any character a URL cannot carry"
        ))
    });
    keep_alive &= request.is_ok();
    Ok(Some(Exchange {
        request,
        version,
        head_only,
        keep_alive,
    }))
}

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
}

enum Head {
    Closed,
    TooLarge,
    Complete(Vec<u8>),
}

/// Reads up to and including the empty line that ends a request head,
/// skipping empty lines before the request line (RFC 9112, 2.2).
fn read_head(reader: &mut impl BufRead) -> std::io::Result<Head> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let room = (MAX_HEAD_BYTES + 1).saturating_sub(start) as u64;
        let read = reader.by_ref().take(room).read_until(b'\n', &mut head)?;
        if head.len() > MAX_HEAD_BYTES {
            return Ok(Head::TooLarge);
        }
        if read == 0 || !head.ends_with(b"\n") {
            return if head.is_empty() {
                Ok(Head::Closed)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        if matches!(&head[start..], b"\r\n" | b"\n") {
            if start == 0 {
                head.clear();
                continue;
            }
            return Ok(Head::Complete(head));
        }
    }
}

/// A chunked body, trailers skipped, cut at `limit` bytes (the caller
/// then refuses it whole); `None` when the chunking is malformed.
fn read_chunked(reader: &mut impl BufRead, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let mut line = Vec::new();
        reader.by_ref().take(1024).read_until(b'\n', &mut line)?;
        let text = String::from_utf8_lossy(&line);
        let size = text.split(';').next().unwrap_or("").trim();
        let Ok(size) = u64::from_str_radix(size, 16) else {
            return Ok(None);
        };
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                reader.by_ref().take(8192).read_until(b'\n', &mut line)?;
                if line.is_empty() || !line.ends_with(b"\n") {
                    return Ok(None);
                }
                if matches!(line.as_slice(), b"\r\n" | b"\n") {
                    return Ok(Some(body));
                }
            }
        }
        let room = limit.saturating_sub(body.len() as u64);
        let take = size.min(room);
        let before = body.len();
        reader.by_ref().take(take).read_to_end(&mut body)?;
        if ((body.len() - before) as u64) < take {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if take < size {
            return Ok(Some(body));
        }
        line.clear();
        reader.by_ref().take(2).read_until(b'\n', &mut line)?;
        if !matches!(line.as_slice(), b"\r\n" | b"\n") {
            return Ok(None);
        }
    }
}

/// The response as bytes on the wire. Framing headers are the server's:
/// a handler's own `Content-Length`, `Transfer-Encoding` or `Connection`
/// is dropped.
fn response_bytes(
    response: Response,
    head_only: bool,
    version: http::Version,
    keep_alive: bool,
) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\ndate: {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            http_date(OffsetDateTime::now_utc())
        )
        .as_bytes(),
    );
    for (name, value) in &parts.headers {
        if matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection" | "date"
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    if !bodiless {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == http::Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && !bodiless {
        out.extend_from_slice(&body);
    }
    out
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), for `Date`.
fn http_date(at: OffsetDateTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let at = at.to_offset(time::UtcOffset::UTC);
    let weekday = &at.weekday().to_string()[..3];
    format!(
        "{weekday}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        at.day(),
        MONTHS[usize::from(u8::from(at.month())) - 1],
        at.year(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_imf_fixdates() {
        let at = time::macros::datetime!(1994-11-06 08:49:37 UTC);
        assert_eq!(http_date(at), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn heads_end_at_the_empty_line_and_are_bounded() {
        let mut input: &[u8] = b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\nrest";
        let Head::Complete(head) = read_head(&mut input).unwrap() else {
            panic!("a complete head");
        };
        assert_eq!(head, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(input, b"rest");
        let mut empty: &[u8] = b"";
        assert!(matches!(read_head(&mut empty).unwrap(), Head::Closed));
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert!(matches!(
            read_head(&mut huge.as_bytes()).unwrap(),
            Head::TooLarge
        ));
    }

    #[test]
    fn chunked_bodies_are_joined_and_cut_at_the_limit() {
        let mut input: &[u8] = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nTrailer: 1\r\n\r\nnext";
        assert_eq!(
            read_chunked(&mut input, 100).unwrap().as_deref(),
            Some(&b"hello world"[..])
        );
        assert_eq!(input, b"next");
        let mut long: &[u8] = b"a\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(
            read_chunked(&mut long, 4).unwrap().as_deref(),
            Some(&b"0123"[..])
        );
        let mut bad: &[u8] = b"zz\r\n";
        assert_eq!(read_chunked(&mut bad, 4).unwrap(), None);
    }
}
