//! The servers Kizuna can run on past one machine, for tests and
//! benches: the libSQL server (`sqld`) and Redis, each on a free loopback
//! port with a folder of its own, stopped (and reaped) on drop, so a
//! failing test never leaves one behind. [`runtime_config`] writes the
//! Spin runtime-config file that points the `default` database and
//! key-value store at them.

use anyhow::{Context as _, bail};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Set to `libsql` (with `KIZUNA_TEST_SPIN=1`) to run the end-to-end
/// suite on sqld and Redis instead of a SQLite file.
pub const BACKEND_VARIABLE: &str = "KIZUNA_TEST_BACKEND";

/// Whether this run's Spin apps use sqld and Redis.
pub fn libsql_mode() -> bool {
    crate::spin::spin_mode() && std::env::var(BACKEND_VARIABLE).is_ok_and(|v| v == "libsql")
}

/// `$SQLD`, else the sqld kept beside the checkout, else `sqld` on `PATH`.
pub fn sqld_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SQLD").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let beside = crate::spin::workspace_root().join("../shared/tools/sqld/sqld");
    if beside.exists() {
        return beside;
    }
    PathBuf::from("sqld")
}

/// A running `sqld` with its data in a folder of its own.
pub struct Sqld {
    /// Behind a lock so that a test can restart the server while other
    /// threads drive load through the app.
    child: Mutex<Option<Child>>,
    pub addr: SocketAddr,
    /// sqld's admin API, where durability is set.
    admin: SocketAddr,
    data: PathBuf,
    log: PathBuf,
}

/// What sqld is told after every start (it forgets it on restart): sync
/// the WAL on every commit (`synchronous = FULL`), as Kizuna asks of a
/// SQLite file, so that a 2xx means the write is on disk. sqld's default,
/// `relaxed`, is `synchronous = NORMAL`: a power cut may lose the last
/// commits.
pub const STRONG_DURABILITY: &str =
    r#"{"block_reads":false,"block_writes":false,"durability_mode":"strong"}"#;

impl Sqld {
    /// Starts sqld with its data under `dir` and waits until it answers.
    pub fn start(dir: &Path) -> anyhow::Result<Sqld> {
        std::fs::create_dir_all(dir).context("failed to create sqld's folder")?;
        on_free_ports(|attempt| {
            let sqld = Sqld {
                child: Mutex::new(None),
                addr: free_loopback_port()?,
                admin: free_loopback_port()?,
                data: dir.join("data"),
                log: dir.join(format!("sqld-{attempt}.log")),
            };
            sqld.run().map(|()| sqld)
        })
    }

    fn run(&self) -> anyhow::Result<()> {
        let log = append_to(&self.log)?;
        let child = Command::new(sqld_binary())
            .arg("--db-path")
            .arg(&self.data)
            .arg("--http-listen-addr")
            .arg(self.addr.to_string())
            .arg("--admin-listen-addr")
            .arg(self.admin.to_string())
            .arg("--no-welcome")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("failed to share sqld's log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to start {}", sqld_binary().display()))?;
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        self.wait_ready(Duration::from_secs(30))?;
        let status = http_post(
            self.admin,
            "/v1/namespaces/default/config",
            STRONG_DURABILITY,
        )?;
        if status != 200 {
            bail!(
                "sqld refused strong durability ({status}): {}",
                self.log_text()
            );
        }
        Ok(())
    }

    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = exit_status(&self.child)? {
                bail!("sqld exited with {status}: {}", self.log_text());
            }
            if http_get_ok(self.addr, "/health") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "sqld did not answer within {timeout:?}: {}",
            self.log_text()
        )
    }

    /// Stops the server at once (SIGKILL, as a crash would) and starts it
    /// again on the same port and data.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        self.run()
    }

    /// Stops the server (SIGKILL) and reaps it.
    pub fn stop(&self) {
        if let Some(child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            kill_and_reap(child);
        }
    }

    /// The URL Spin's `type = "libsql"` client is given.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The SQLite file sqld keeps the `default` database in: tests read
    /// it directly, as they read Spin's own file.
    pub fn database_file(&self) -> PathBuf {
        self.data.join("dbs").join("default").join("data")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sqld {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `redis-server`, in memory only.
pub struct Redis {
    child: Mutex<Option<Child>>,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Redis {
    /// Starts Redis on a free loopback port, without persistence (a
    /// restart empties it, which is the point of the fault tests).
    pub fn start(dir: &Path) -> anyhow::Result<Redis> {
        std::fs::create_dir_all(dir).context("failed to create Redis' folder")?;
        on_free_ports(|attempt| {
            let redis = Redis {
                child: Mutex::new(None),
                addr: free_loopback_port()?,
                log: dir.join(format!("redis-{attempt}.log")),
            };
            redis.run().map(|()| redis)
        })
    }

    fn run(&self) -> anyhow::Result<()> {
        let log = append_to(&self.log)?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("failed to share Redis' log")?)
            .stderr(log)
            .spawn()
            .context("failed to start redis-server (apt-get install redis-server)")?;
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Some(status) = exit_status(&self.child)? {
                bail!("redis-server exited with {status}: {}", self.log_text());
            }
            if redis_pong(self.addr) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("redis-server did not answer: {}", self.log_text())
    }

    /// Stops Redis (SIGKILL) and reaps it; its data is gone.
    pub fn stop(&self) {
        if let Some(child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            kill_and_reap(child);
        }
    }

    /// Starts a stopped Redis again on the same port, empty.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.stop();
        self.run()
    }

    /// `GET key` in Kizuna's database (1), as Spin's store keeps keys
    /// (unprefixed).
    pub fn get(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match self.command(&[b"GET", key.as_bytes()])? {
            Reply::Bulk(value) => Ok(value),
            other => bail!("GET answered {other:?}"),
        }
    }

    /// `SET key value` in Kizuna's database (1).
    pub fn set(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        match self.command(&[b"SET", key.as_bytes(), value])? {
            Reply::Simple => Ok(()),
            other => bail!("SET answered {other:?}"),
        }
    }

    /// One command on a fresh connection, after `SELECT 1`.
    fn command(&self, parts: &[&[u8]]) -> anyhow::Result<Reply> {
        let stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .context("failed to reach Redis")?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .context("timeout")?;
        let mut reader = std::io::BufReader::new(stream.try_clone().context("clone")?);
        let mut writer = stream;
        for command in [&[b"SELECT".as_slice(), b"1"][..], parts] {
            let mut out = format!("*{}\r\n", command.len()).into_bytes();
            for part in command {
                out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
                out.extend_from_slice(part);
                out.extend_from_slice(b"\r\n");
            }
            writer.write_all(&out).context("failed to write to Redis")?;
        }
        match read_reply(&mut reader)? {
            Reply::Simple => {}
            other => bail!("SELECT 1 answered {other:?}"),
        }
        read_reply(&mut reader)
    }

    /// The URL Spin's `type = "redis"` store is given: database 1, so
    /// Kizuna's keys never mix with another user's of database 0.
    pub fn url(&self) -> String {
        format!("redis://{}/1", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The repository's example runtime config for libSQL and Redis, and the
/// two URLs in it that [`runtime_config`] replaces: the tests run on the
/// file the README tells a shop to use.
const EXAMPLE: &str = include_str!("../../deploy/runtime-config/libsql-redis.toml");
const EXAMPLE_SQLD_URL: &str = "\"http://127.0.0.1:8080\"";
const EXAMPLE_REDIS_URL: &str = "\"redis://127.0.0.1:6379/1\"";

/// Writes the runtime-config file that puts Spin's `default` database on
/// `sqld` and its `default` key-value store on `redis`: the repository's
/// example with their URLs.
pub fn runtime_config(path: &Path, sqld: &Sqld, redis: &Redis) -> anyhow::Result<()> {
    anyhow::ensure!(
        EXAMPLE.matches(EXAMPLE_SQLD_URL).count() == 1
            && EXAMPLE.matches(EXAMPLE_REDIS_URL).count() == 1,
        "deploy/runtime-config/libsql-redis.toml no longer names the example URLs"
    );
    let text = EXAMPLE
        .replace(EXAMPLE_SQLD_URL, &format!("\"{}\"", sqld.url()))
        .replace(EXAMPLE_REDIS_URL, &format!("\"{}\"", redis.url()));
    std::fs::write(path, text).context("failed to write the runtime config")
}

/// sqld and Redis for one Spin app, with the runtime config naming them.
pub struct Backing {
    pub sqld: Sqld,
    pub redis: Redis,
    pub runtime_config: PathBuf,
}

impl Backing {
    /// Starts both under `dir` and writes `dir/runtime-config.toml`.
    pub fn start(dir: &Path) -> anyhow::Result<Backing> {
        let sqld = Sqld::start(&dir.join("sqld"))?;
        let redis = Redis::start(&dir.join("redis"))?;
        let config = dir.join("runtime-config.toml");
        runtime_config(&config, &sqld, &redis)?;
        Ok(Backing {
            sqld,
            redis,
            runtime_config: config,
        })
    }
}

/// A Redis reply, as far as the tests need one.
#[derive(Debug)]
enum Reply {
    Simple,
    Bulk(Option<Vec<u8>>),
}

fn read_reply(reader: &mut impl std::io::BufRead) -> anyhow::Result<Reply> {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("failed to read from Redis")?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at_checked(1).context("an empty reply")?;
    match kind {
        "+" => Ok(Reply::Simple),
        "-" => bail!("Redis answered an error: {rest}"),
        "$" => {
            let length: i64 = rest.parse().context("a length")?;
            let Ok(length) = usize::try_from(length) else {
                return Ok(Reply::Bulk(None));
            };
            let mut value = vec![0; length + 2];
            reader.read_exact(&mut value).context("a value")?;
            value.truncate(length);
            Ok(Reply::Bulk(Some(value)))
        }
        other => bail!("an unexpected reply type {other:?}"),
    }
}

/// Starts a server with `start(attempt)`, again (up to five times) if it
/// fails: a free port can be taken between choosing it and the server
/// binding it, when many tests start servers at once.
fn on_free_ports<T>(start: impl Fn(u32) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut last_error = None;
    for attempt in 0..5 {
        match start(attempt) {
            Ok(server) => return Ok(server),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.expect("at least one attempt"))
}

/// A server's log file, appended to across restarts.
fn append_to(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("failed to open {}", path.display()))
}

/// The exit status of a server that stopped by itself.
fn exit_status(child: &Mutex<Option<Child>>) -> anyhow::Result<Option<std::process::ExitStatus>> {
    match child.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        Some(child) => child.try_wait().context("failed to poll a server"),
        None => Ok(None),
    }
}

/// SIGKILL, as a crash would, then reap. A child that already exited
/// cannot be killed, which is fine.
fn kill_and_reap(mut child: Child) {
    if let Err(e) = child.kill() {
        eprintln!("kill: {e}");
    }
    if let Err(e) = child.wait() {
        eprintln!("failed to reap a server: {e}");
    }
}

/// A loopback port free at the moment of asking.
pub(crate) fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
    listener.local_addr().context("no local address")
}

/// True when `GET path` answers 200.
pub(crate) fn http_get_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
    {
        return false;
    }
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// A JSON `POST`; the answer's status.
fn http_post(addr: SocketAddr, path: &str, body: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("failed to reach {addr}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .context("timeout")?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .context("failed to send")?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .context("failed to read the answer")?;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer}"))
}

fn redis_pong(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
        || stream.write_all(b"PING\r\n").is_err()
    {
        return false;
    }
    let mut reply = [0u8; 5];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG"
}
