//! Real Spin for tests and benches: `spin up` of this workspace's
//! `spin.toml` on a free loopback port, with a state folder and variables
//! of the caller's choosing, stopped (and its process reaped) on drop, so
//! a failing test never leaves a server behind.
//!
//! The components must have been built first (`spin build`, or
//! `cargo build --release --target wasm32-wasip2 -p kizuna-…`).

use anyhow::{Context as _, bail};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set (to anything but `0`) to run the end-to-end suite against `spin up`.
pub const SPIN_MODE_VARIABLE: &str = "KIZUNA_TEST_SPIN";

/// Whether the end-to-end suite targets real Spin in this run.
pub fn spin_mode() -> bool {
    std::env::var(SPIN_MODE_VARIABLE).is_ok_and(|v| !v.is_empty() && v != "0")
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// `$SPIN`, else the Spin 4.0.2 kept beside the checkout, else `spin` on
/// `PATH`.
pub fn spin_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SPIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let beside = workspace_root().join("../shared/tools/spin-4.0.2/spin");
    if beside.exists() {
        return beside;
    }
    PathBuf::from("spin")
}

/// A running `spin up`.
pub struct SpinApp {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl SpinApp {
    /// Starts the app with `state_dir` as its state folder (databases at
    /// `state_dir/sqlite_db.db` and `state_dir/sqlite_key_value.db`) and
    /// waits until it answers HTTP.
    pub fn start(state_dir: &Path, variables: &[(String, String)]) -> anyhow::Result<SpinApp> {
        Self::start_manifest(&workspace_root().join("spin.toml"), state_dir, variables)
    }

    /// Like `start`, with Spin's stores where `runtime_config` says (e.g.
    /// sqld and Redis, `servers::runtime_config`).
    pub fn start_with_runtime_config(
        state_dir: &Path,
        variables: &[(String, String)],
        runtime_config: &Path,
    ) -> anyhow::Result<SpinApp> {
        Self::start_full(
            &workspace_root().join("spin.toml"),
            state_dir,
            variables,
            Some(runtime_config),
        )
    }

    /// Like `start`, for another manifest (a bench's baseline app).
    pub fn start_manifest(
        manifest: &Path,
        state_dir: &Path,
        variables: &[(String, String)],
    ) -> anyhow::Result<SpinApp> {
        Self::start_full(manifest, state_dir, variables, None)
    }

    fn start_full(
        manifest: &Path,
        state_dir: &Path,
        variables: &[(String, String)],
        runtime_config: Option<&Path>,
    ) -> anyhow::Result<SpinApp> {
        std::fs::create_dir_all(state_dir).context("failed to create Spin's state folder")?;
        let mut last_error = None;
        // A free port can be taken between choosing it and Spin binding
        // it (tests start many apps at once): try a few.
        for attempt in 0..5 {
            let log = state_dir.join(format!("spin-up-{attempt}.log"));
            match Self::try_start(manifest, state_dir, variables, runtime_config, &log) {
                Ok(app) => return Ok(app),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    fn try_start(
        manifest: &Path,
        state_dir: &Path,
        variables: &[(String, String)],
        runtime_config: Option<&Path>,
        log: &Path,
    ) -> anyhow::Result<SpinApp> {
        let addr = crate::servers::free_loopback_port()?;
        let log_file = std::fs::File::create(log).context("failed to create Spin's log")?;
        let mut command = Command::new(spin_binary());
        command
            .arg("up")
            .arg("--from")
            .arg(manifest)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--state-dir")
            .arg(state_dir)
            // `spin up` runs the app in a child process (`spin trigger
            // http`): give both a process group of their own, so stopping
            // the group stops the server too.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("failed to share Spin's log")?)
            .stderr(log_file);
        for (name, value) in variables {
            command.arg("--variable").arg(format!("{name}={value}"));
        }
        if let Some(path) = runtime_config {
            command.arg("--runtime-config-file").arg(path);
        }
        // Extra `spin up` flags for experiments, e.g.
        // `KIZUNA_SPIN_ARGS="--max-instance-concurrent-reuse-count 1"`.
        if let Ok(extra) = std::env::var("KIZUNA_SPIN_ARGS") {
            command.args(extra.split_whitespace());
        }
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {}", spin_binary().display()))?;
        let mut app = SpinApp {
            child,
            addr,
            log: log.to_owned(),
        };
        app.wait_ready(Duration::from_secs(60))?;
        Ok(app)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().context("failed to poll spin")? {
                bail!("spin up exited with {status}: {}", self.log_text());
            }
            // Another test's server may hold the port and answer (it was
            // free when chosen): only ours, which says it is serving this
            // address in its own log, counts.
            let log = self.log_text();
            if log.contains("is already in use") {
                bail!("the port was taken before spin up bound it: {log}");
            }
            if log.contains(&format!("Serving http://{}", self.addr)) && answers_http(self.addr) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!(
            "spin up did not answer within {timeout:?}: {}",
            self.log_text()
        )
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What Spin printed so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SpinApp {
    /// Stops `spin up` and its trigger process: TERM to the group, then
    /// KILL if it is still there after two seconds.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        signal_group("-TERM", &group);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) && !group_alive(&group) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group("-KILL", &group);
        if let Err(e) = self.child.wait() {
            eprintln!("failed to reap spin: {e}");
        }
    }
}

/// `kill` from the system: the workspace forbids `unsafe`, so no libc.
fn signal_group(signal: &str, group: &str) {
    match Command::new("kill").args([signal, "--", group]).output() {
        Ok(_) => {}
        Err(e) => eprintln!("failed to signal spin's process group: {e}"),
    }
}

fn group_alive(group: &str) -> bool {
    Command::new("kill")
        .args(["-0", "--", group])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Spin's own health route answers once the app is loaded.
fn answers_http(addr: SocketAddr) -> bool {
    crate::servers::http_get_ok(addr, "/.well-known/spin/health")
}
