//! HTTP load generation with `wrk`, for the benches under real Spin: the
//! request file, the Lua script that replays it, running `wrk`, and
//! parsing what it reports into a [`LoadResult`].
//!
//! The Rust side writes every request in advance (so it can sign
//! webhooks and make every write unique), three lines each: `METHOD
//! PATH`, the headers joined by tabs (`name: value\tname: value`), and
//! the body on one line (may be empty). The script loads its share in
//! `init`: thread `t` of `T` takes requests `t, t+T, t+2T, …`, so no two
//! threads send the same request; a thread that runs out starts again and
//! counts the wrap (for writes a wrap means duplicates: generate enough).
//! In `Connection: close` mode every request carries that header and `wrk`
//! reconnects for each. `response` counts statuses per thread, prints the
//! first three non-2xx bodies of each thread (`KIZUNA-WRK-BODY …`), and can
//! capture a JSON string field from 2xx bodies into a file (the ids of the
//! orders a webhook stored, to check afterwards that each is there);
//! `done` sums over threads and prints one `KIZUNA-WRK key=value …` line.

use anyhow::{Context as _, bail, ensure};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One HTTP request to replay.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: &'static str,
    /// Path and query, already percent-encoded.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn get(path: impl Into<String>) -> Request {
        Request {
            method: "GET",
            path: path.into(),
            headers: Vec::new(),
            body: String::new(),
        }
    }

    pub fn post(path: impl Into<String>, body: impl Into<String>) -> Request {
        Request {
            method: "POST",
            path: path.into(),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Request {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// One `wrk` run.
#[derive(Debug, Clone)]
pub struct Load {
    pub addr: SocketAddr,
    pub connections: u32,
    pub duration: Duration,
    /// Send `Connection: close` on every request (a new connection each).
    pub close: bool,
    /// A request slower than this counts as a timeout (`wrk --timeout`).
    pub timeout: Duration,
    /// Capture this JSON string field (`"name":"value"`) from 2xx bodies.
    pub capture: Option<&'static str>,
    /// Where the request file, the script and captures are written.
    pub work_dir: PathBuf,
}

/// Socket-level failures `wrk` counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
}

impl SocketErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

/// What one `wrk` run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Responses received.
    pub requests: u64,
    pub duration: Duration,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Responses per status code.
    pub codes: BTreeMap<u16, u64>,
    /// How many times a thread ran out of requests and started again.
    pub wraps: u64,
    pub socket_errors: SocketErrors,
    /// The first non-2xx bodies, for debugging.
    pub samples: Vec<String>,
    /// The captured field of every 2xx body that had it.
    pub captured: Vec<String>,
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.duration.as_secs_f64().max(1e-9)
    }

    /// Responses whose status is in `class`xx (2 for 2xx).
    pub fn class(&self, class: u16) -> u64 {
        self.codes
            .iter()
            .filter(|(code, _)| **code / 100 == class)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn code(&self, code: u16) -> u64 {
        self.codes.get(&code).copied().unwrap_or(0)
    }

    /// `"200:1234 404:2"`.
    pub fn codes_text(&self) -> String {
        self.codes
            .iter()
            .map(|(code, n)| format!("{code}:{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `wrk` on `PATH`, installed with `apt-get install -y wrk` when missing.
pub fn ensure_wrk() -> anyhow::Result<()> {
    if wrk_present() {
        return Ok(());
    }
    println!("wrk is missing: installing it with `apt-get install -y wrk`");
    let status = Command::new("apt-get")
        .args(["install", "-y", "wrk"])
        .status()
        .context("failed to run apt-get")?;
    if !status.success() || !wrk_present() {
        let update = Command::new("apt-get").arg("update").status();
        ensure!(update.is_ok_and(|s| s.success()), "apt-get update failed");
        let status = Command::new("apt-get")
            .args(["install", "-y", "wrk"])
            .status()
            .context("failed to run apt-get")?;
        ensure!(status.success() && wrk_present(), "could not install wrk");
    }
    Ok(())
}

fn wrk_present() -> bool {
    Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wrk"))
}

/// Writes `requests` in the script's format to `path`.
pub fn write_requests(path: &Path, requests: &[Request]) -> anyhow::Result<()> {
    let mut text = String::with_capacity(requests.len() * 256);
    for request in requests {
        let one_line = |s: &str| !s.contains(['\n', '\r']);
        ensure!(
            one_line(&request.path) && !request.path.contains(' '),
            "a request path must be one word: {:?}",
            request.path
        );
        ensure!(
            one_line(&request.body),
            "a request body must be one line: {:?}",
            request.body
        );
        let headers = request
            .headers
            .iter()
            .map(|(name, value)| {
                ensure!(
                    one_line(name)
                        && one_line(value)
                        && !name.contains([':', '\t'])
                        && !value.contains('\t'),
                    "a header must be one line without tabs: {name}: {value}"
                );
                Ok(format!("{name}: {value}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
            .join("\t");
        writeln!(text, "{} {}", request.method, request.path)?;
        writeln!(text, "{headers}")?;
        writeln!(text, "{}", request.body)?;
    }
    std::fs::write(path, text).with_context(|| format!("failed to write {}", path.display()))
}

/// A Lua string literal (long brackets cannot hold every path safely).
fn lua_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            '\n' => quoted.push_str("\\n"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

fn script(requests: &Path, threads: u32, load: &Load) -> String {
    let capture_pattern = load.capture.map_or("nil".to_owned(), |name| {
        lua_string(&format!("\"{name}\"%s*:%s*\"([^\"]*)\""))
    });
    format!(
        r#"-- Written by kizuna_tests::load: replays a request file (see load.rs).
local REQUESTS = {requests}
local THREADS = {threads}
local CLOSE = {close}
local CAPTURE = {capture_pattern}
local CAPTURE_DIR = {capture_dir}

local setup_count = 0
local all_threads = {{}}

function setup(thread)
  thread:set("thread_index", setup_count)
  setup_count = setup_count + 1
  table.insert(all_threads, thread)
end

function init(args)
  reqs = {{}}
  local file = assert(io.open(REQUESTS, "r"))
  local n = 0
  while true do
    local head = file:read("*l")
    if not head then break end
    local header_line = file:read("*l") or ""
    local body = file:read("*l") or ""
    if n % THREADS == thread_index then
      local method, path = head:match("^(%S+) (.*)$")
      local headers = {{}}
      for h in header_line:gmatch("[^\t]+") do
        local name, value = h:match("^([^:]+):%s*(.*)$")
        if name then headers[name] = value end
      end
      if CLOSE then headers["Connection"] = "close" end
      if body == "" then body = nil end
      reqs[#reqs + 1] = wrk.format(method, path, headers, body)
    end
    n = n + 1
  end
  file:close()
  next_index = 1
  wraps = 0
  codes = {{}}
  shown = 0
  if CAPTURE then
    capture_file = assert(io.open(CAPTURE_DIR .. "/captured-" .. thread_index .. ".txt", "w"))
  end
end

function request()
  if next_index > #reqs then
    next_index = 1
    wraps = wraps + 1
  end
  local r = reqs[next_index]
  next_index = next_index + 1
  return r
end

function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
  if status < 300 then
    if CAPTURE and body then
      local value = body:match(CAPTURE)
      if value then
        capture_file:write(value, "\n")
        capture_file:flush()
      end
    end
  elseif shown < 3 then
    shown = shown + 1
    local text = (body or ""):sub(1, 400):gsub("[\r\n]", " ")
    io.write(string.format("KIZUNA-WRK-BODY thread=%d status=%d %s\n", thread_index, status, text))
  end
end

function done(summary, latency, requests)
  local all_codes = {{}}
  local all_wraps = 0
  for _, thread in ipairs(all_threads) do
    local thread_codes = thread:get("codes") or {{}}
    for code, count in pairs(thread_codes) do
      all_codes[code] = (all_codes[code] or 0) + count
    end
    all_wraps = all_wraps + (thread:get("wraps") or 0)
  end
  local parts = {{}}
  for code, count in pairs(all_codes) do
    parts[#parts + 1] = string.format("%d:%d", code, count)
  end
  local e = summary.errors
  io.write(string.format(
    "KIZUNA-WRK requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d wraps=%d connect=%d read=%d write=%d timeout=%d codes=%s\n",
    summary.requests, summary.duration,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(99)), math.floor(latency.max),
    all_wraps, e.connect, e.read, e.write, e.timeout, table.concat(parts, ",")))
end
"#,
        requests = lua_string(&requests.display().to_string()),
        close = load.close,
        capture_dir = lua_string(&load.work_dir.display().to_string()),
    )
}

/// Runs `wrk` with `requests` (at least one per `wrk` thread).
pub fn run(load: &Load, requests: &[Request]) -> anyhow::Result<LoadResult> {
    let threads = load.connections.clamp(1, 2);
    ensure!(
        requests.len() >= threads as usize,
        "wrk needs at least {threads} requests"
    );
    std::fs::create_dir_all(&load.work_dir)?;
    for thread in 0..threads {
        let path = capture_path(&load.work_dir, thread);
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
    }
    let requests_path = load.work_dir.join("requests.txt");
    write_requests(&requests_path, requests)?;
    let script_path = load.work_dir.join("replay.lua");
    std::fs::write(&script_path, script(&requests_path, threads, load))?;
    let output = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .arg(format!("--timeout={}s", load.timeout.as_secs().max(1)))
        .arg("--latency")
        .arg("-s")
        .arg(&script_path)
        .arg(format!("http://{}", load.addr))
        .output()
        .context("failed to run wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("wrk failed ({}): {stderr}\n{stdout}", output.status);
    }
    let mut result = parse(&stdout).with_context(|| format!("wrk said: {stdout}\n{stderr}"))?;
    for thread in 0..threads {
        let path = capture_path(&load.work_dir, thread);
        if let Ok(text) = std::fs::read_to_string(&path) {
            result
                .captured
                .extend(text.lines().filter(|l| !l.is_empty()).map(str::to_owned));
        }
    }
    std::fs::remove_file(&requests_path)?;
    Ok(result)
}

fn capture_path(dir: &Path, thread: u32) -> PathBuf {
    dir.join(format!("captured-{thread}.txt"))
}

/// Parses the script's `KIZUNA-WRK` line and its `KIZUNA-WRK-BODY` samples.
pub fn parse(stdout: &str) -> anyhow::Result<LoadResult> {
    let mut result = LoadResult::default();
    let mut summary = None;
    for line in stdout.lines() {
        if let Some(sample) = line.strip_prefix("KIZUNA-WRK-BODY ") {
            result.samples.push(sample.to_owned());
        } else if let Some(fields) = line.strip_prefix("KIZUNA-WRK ") {
            summary = Some(fields.to_owned());
        }
    }
    let summary = summary.context("no KIZUNA-WRK line")?;
    let mut fields = BTreeMap::new();
    for field in summary.split_whitespace() {
        let (key, value) = field.split_once('=').context("a key=value field")?;
        fields.insert(key, value);
    }
    let number = |key: &str| -> anyhow::Result<u64> {
        fields
            .get(key)
            .with_context(|| format!("no {key}"))?
            .parse()
            .with_context(|| format!("{key} is not a number"))
    };
    result.requests = number("requests")?;
    result.duration = Duration::from_micros(number("duration_us")?);
    result.p50_ms = number("p50_us")? as f64 / 1000.0;
    result.p99_ms = number("p99_us")? as f64 / 1000.0;
    result.max_ms = number("max_us")? as f64 / 1000.0;
    result.wraps = number("wraps")?;
    result.socket_errors = SocketErrors {
        connect: number("connect")?,
        read: number("read")?,
        write: number("write")?,
        timeout: number("timeout")?,
    };
    for pair in fields
        .get("codes")
        .copied()
        .unwrap_or("")
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let (code, count) = pair.split_once(':').context("code:count")?;
        result.codes.insert(code.parse()?, count.parse()?);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_is_parsed() {
        let out = "Running 1s test\nKIZUNA-WRK-BODY thread=0 status=429 {\"title\":\"slow down\"}\nKIZUNA-WRK requests=10 duration_us=2000000 p50_us=1500 p99_us=9000 max_us=12000 wraps=1 connect=0 read=2 write=0 timeout=1 codes=200:8,429:2\n";
        let result = parse(out).unwrap();
        assert_eq!(result.requests, 10);
        assert!((result.per_second() - 5.0).abs() < 1e-9);
        assert!((result.p50_ms - 1.5).abs() < 1e-9);
        assert_eq!(result.class(2), 8);
        assert_eq!(result.class(4), 2);
        assert_eq!(result.socket_errors.total(), 3);
        assert_eq!(result.samples.len(), 1);
    }
}
