//! What a component instance keeps between the requests it serves, so
//! that a request spends its time on the customer and not on setup:
//! prepared database connections ([`Pool`], lent out as a [`Lease`]) and
//! settings read from variables ([`Refreshing`]).
//!
//! Spin 4 reuses an instance for up to 128 requests, up to 16 of them at
//! a time, and its statics live as long as the instance; the native host
//! models the same (see `kizuna-tests`' `host`). Why each cache is safe:
//! - **A connection serves one request at a time.** A request leases its
//!   own, so concurrent requests of an instance never share a
//!   transaction. It goes back to the pool only if every transaction it
//!   began ended with a successful `COMMIT` or `ROLLBACK`, and no
//!   statement failed inside one. A connection that saw an error inside
//!   a transaction is closed, never reused: on libSQL a server that
//!   stole the stream's lock would run the next statements outside any
//!   transaction, and on SQLite closing is the surest rollback.
//! - **A request that traps** takes the whole instance down with its
//!   statics; Spin closes the instance's connections and SQLite rolls
//!   back whatever was open. A request that is dropped mid-way (the
//!   client left) drops its lease, which closes the connection.
//! - **Idle connections expire** after [`IDLE_FOR`]: a libSQL stream
//!   times out after about 10 s without use, and a reopened connection
//!   sees every pragma afresh.
//! - **Pragmas and the schema check run once per connection**
//!   (`db::prepare`). Migrations only add, so a connection prepared
//!   before another instance migrated the file keeps working (SQLite
//!   re-prepares statements when the schema changes); a newer build
//!   runs in new instances, which migrate before they serve.
//! - **Writers queue in the instance** before `BEGIN IMMEDIATE` (an async
//!   FIFO lock, held until the transaction ends): SQLite's lock has no
//!   queue, and its busy handler sleeps up to 100 ms between polls, so
//!   writers of one instance racing for it left the lock idle while they
//!   slept. Across instances SQLite's busy handler still decides. A
//!   request that traps or is dropped releases its place with its lease.
//! - **Settings** are re-read after [`SETTINGS_REFRESH`], and an instance
//!   lives at most 128 requests: a rotated secret or a revoked API key
//!   takes effect within seconds, never later than that.

use crate::ports::{Backend, Db, DbError, Rows, Value};
use futures::lock::{Mutex as AsyncMutex, OwnedMutexGuard};
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a connection may sit idle in the pool before it is closed.
pub const IDLE_FOR: Duration = Duration::from_secs(9);

/// How many idle connections an instance keeps: Spin runs at most 16 of
/// an instance's requests at a time.
pub const MAX_IDLE: usize = 16;

/// How long a statement answered "busy" is asked again (every
/// [`BUSY_RETRY_PAUSE`]) before the error stands. SQLite's own wait is
/// short (`db::BUSY_TIMEOUT`); `BEGIN IMMEDIATE` has its own, longer
/// retry (`db::BEGIN_RETRY_FOR`).
pub const BUSY_RETRY_FOR: Duration = Duration::from_secs(5);
const BUSY_RETRY_PAUSE: Duration = Duration::from_millis(2);

/// How long settings read from variables are trusted before re-reading.
pub const SETTINGS_REFRESH: Duration = Duration::from_secs(10);

/// How many times [`Pool::run`] tries a request the database failed
/// before any of it was stored.
pub const TRIES: usize = 3;

/// The idle, prepared connections of one instance.
pub struct Pool<C> {
    idle: Mutex<Vec<(C, Backend, Instant)>>,
    writers: std::sync::OnceLock<Arc<AsyncMutex<()>>>,
}

impl<C: Db> Default for Pool<C> {
    fn default() -> Self {
        Pool::new()
    }
}

impl<C: Db> Pool<C> {
    pub const fn new() -> Pool<C> {
        Pool {
            idle: Mutex::new(Vec::new()),
            writers: std::sync::OnceLock::new(),
        }
    }

    /// A connection for one request: the most recently returned idle one,
    /// else a new one from `open`, prepared (`db::prepare`) before use.
    pub async fn lease(
        &self,
        open: impl AsyncFnOnce() -> anyhow::Result<C>,
    ) -> anyhow::Result<Lease<C>> {
        let writers = Arc::clone(self.writers.get_or_init(|| Arc::new(AsyncMutex::new(()))));
        if let Some((connection, backend)) = self.take_idle() {
            return Ok(Lease::new(connection, backend, false, writers));
        }
        let connection = open().await?;
        let backend = crate::db::prepare(&connection).await?;
        Ok(Lease::new(connection, backend, true, writers))
    }

    /// Runs one request's `work` on a leased connection and returns its
    /// answer with the lease (give it back with [`Pool::give_back`]). When
    /// the database failed the request before any of it was stored
    /// ([`Lease::may_run_again`]: libSQL took the write lock back from
    /// its transaction, or a restarted server forgot the pooled stream),
    /// the work runs again on a fresh connection, up to [`TRIES`] times in
    /// all, so a caller sees a 503 only when every try failed. (A loaded
    /// sqld has been seen to interrupt a plain read twice in a row.)
    pub async fn run<T>(
        &self,
        open: impl AsyncFn() -> anyhow::Result<C>,
        work: impl AsyncFn(&Lease<C>) -> T,
    ) -> anyhow::Result<(T, Lease<C>)> {
        let mut tries = 1;
        loop {
            let lease = self.lease(async || open().await).await?;
            let answer = work(&lease).await;
            if tries == TRIES || !lease.may_run_again() {
                return Ok((answer, lease));
            }
            // Closed, and the pool's other connections with it.
            self.give_back(lease);
            tries += 1;
        }
    }

    fn take_idle(&self) -> Option<(C, Backend)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // The newest first: the oldest are the likeliest to have expired,
        // and they are dropped here.
        while let Some((connection, backend, since)) = idle.pop() {
            if since.elapsed() < IDLE_FOR {
                return Some((connection, backend));
            }
            idle.clear();
            drop(connection);
        }
        None
    }

    /// Ends a request's lease: the connection goes back to the pool if
    /// it is clean (see [`Lease::into_reusable`]), else it is closed.
    pub fn give_back(&self, lease: Lease<C>) {
        let backend = lease.backend;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if lease.unavailable.get() {
            // A restarted libSQL server knows none of the streams: each
            // idle connection would fail one more request.
            idle.clear();
        }
        let Some(connection) = lease.into_reusable() else {
            return;
        };
        if idle.len() < MAX_IDLE {
            idle.push((connection, backend, Instant::now()));
        }
    }

    /// How many connections wait in the pool (for tests).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A connection lent to one request. It watches the transactions the
/// request runs, so that only a clean connection goes back to the pool.
pub struct Lease<C> {
    connection: C,
    backend: Backend,
    in_transaction: Cell<bool>,
    spoiled: Cell<bool>,
    /// Successful `COMMIT`s, and whether a write ran outside any
    /// transaction (autocommitted): either means part of the request is
    /// stored, so it may not run again.
    commits: Cell<u32>,
    wrote_outside: Cell<bool>,
    /// Set when a `COMMIT`, or a write outside a transaction, failed as
    /// unavailable: the server may have applied it before the answer
    /// was lost.
    uncertain: Cell<bool>,
    /// Set when the database could not serve a statement: the server
    /// went away or ended streams, so the pool's other idle connections
    /// are likely dead too.
    unavailable: Cell<bool>,
    /// Set when the database ended this connection's stream or
    /// transaction (`DbError::Unavailable`) inside a transaction: no
    /// further statement is sent, since on libSQL it would run outside
    /// the transaction the request believes it is in.
    abandoned: Cell<bool>,
    statements: Cell<u64>,
    waited: Cell<Duration>,
    /// When the write transaction under way took the lock, and how long
    /// the request's write transactions held it in all: the figure that
    /// bounds a single database's writes per second.
    locked_at: Cell<Option<Instant>>,
    held: Cell<Duration>,
    opened: bool,
    writers: Arc<AsyncMutex<()>>,
    /// This request's turn at writing, from its first `BEGIN IMMEDIATE`
    /// until its transaction ends.
    writing: RefCell<Option<OwnedMutexGuard<()>>>,
}

impl<C: Db> Lease<C> {
    fn new(
        connection: C,
        backend: Backend,
        opened: bool,
        writers: Arc<AsyncMutex<()>>,
    ) -> Lease<C> {
        Lease {
            connection,
            backend,
            in_transaction: Cell::new(false),
            spoiled: Cell::new(false),
            abandoned: Cell::new(false),
            unavailable: Cell::new(false),
            commits: Cell::new(0),
            wrote_outside: Cell::new(false),
            uncertain: Cell::new(false),
            statements: Cell::new(0),
            waited: Cell::new(Duration::ZERO),
            locked_at: Cell::new(None),
            held: Cell::new(Duration::ZERO),
            opened,
            writers,
            writing: RefCell::new(None),
        }
    }

    /// How many statements the request ran on this lease.
    pub fn statements(&self) -> u64 {
        self.statements.get()
    }

    /// How long the request waited for its statements (lock waits and
    /// pauses included).
    pub fn statement_time(&self) -> Duration {
        self.waited.get()
    }

    /// How long the request's write transactions held the write lock,
    /// from a successful `BEGIN IMMEDIATE` to the end of its `COMMIT` or
    /// `ROLLBACK`.
    pub fn lock_time(&self) -> Duration {
        self.held.get()
    }

    /// True when the database failed the request (ended its transaction,
    /// forgot its stream, went away) before any of it was stored: no
    /// `COMMIT` succeeded, nothing was written outside a transaction, and
    /// no write's fate is unknown. Such a request may run again, whole,
    /// on a fresh connection.
    pub fn may_run_again(&self) -> bool {
        self.unavailable.get()
            && self.commits.get() == 0
            && !self.wrote_outside.get()
            && !self.uncertain.get()
    }

    /// Whether the connection was opened (and prepared) for this request
    /// rather than taken from the pool.
    pub fn opened(&self) -> bool {
        self.opened
    }

    /// The connection, if the request left it outside any transaction and
    /// no statement failed inside one.
    pub fn into_reusable(self) -> Option<C> {
        (!self.in_transaction.get() && !self.spoiled.get()).then_some(self.connection)
    }
}

/// How long a request spent before its handler ran, and in all.
#[derive(Debug, Clone, Copy)]
pub struct Stages {
    pub read: Duration,
    pub settings: Duration,
    pub connection: Duration,
    pub total: Duration,
}

impl<C: Db> Lease<C> {
    /// The `Server-Timing` value of the request this lease served: the
    /// stages before the handler, its statements, and the rest (`app`).
    pub fn server_timing(&self, stages: &Stages) -> http::HeaderValue {
        let sql = self.statement_time();
        let before = stages.read + stages.settings + stages.connection;
        let app = stages.total.saturating_sub(before).saturating_sub(sql);
        let how = if self.opened { "opened" } else { "pooled" };
        crate::http::server_timing(&[
            ("read", stages.read, None),
            ("settings", stages.settings, None),
            ("connection", stages.connection, Some(how.to_owned())),
            (
                "sql",
                sql,
                Some(format!("{} statements", self.statements())),
            ),
            ("lock", self.lock_time(), None),
            ("app", app, None),
            ("total", stages.total, None),
        ])
    }
}

/// `COMMIT` or `END`.
fn is_commit(sql: &str) -> bool {
    let verb = sql.split_whitespace().next().unwrap_or("");
    verb.eq_ignore_ascii_case("COMMIT") || verb.eq_ignore_ascii_case("END")
}

/// A statement that may change data (a `WITH` may end in a write).
fn is_write(sql: &str) -> bool {
    let verb = sql.split_whitespace().next().unwrap_or("");
    [
        "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH", "CREATE", "DROP", "ALTER",
    ]
    .iter()
    .any(|w| verb.eq_ignore_ascii_case(w))
}

/// What a statement does to the connection's transaction state.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Effect {
    BeginsWriting,
    Begins,
    Ends,
    Other,
}

fn effect(sql: &str) -> Effect {
    let mut words = sql.split_whitespace();
    let verb = words.next().unwrap_or("");
    if verb.eq_ignore_ascii_case("BEGIN")
        && words.next().is_some_and(|w| {
            w.eq_ignore_ascii_case("IMMEDIATE") || w.eq_ignore_ascii_case("EXCLUSIVE")
        })
    {
        Effect::BeginsWriting
    } else if verb.eq_ignore_ascii_case("BEGIN") {
        Effect::Begins
    } else if verb.eq_ignore_ascii_case("COMMIT")
        || verb.eq_ignore_ascii_case("END")
        || verb.eq_ignore_ascii_case("ROLLBACK")
    {
        Effect::Ends
    } else {
        Effect::Other
    }
}

impl<C: Db> Db for Lease<C> {
    async fn execute(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        let effect = effect(sql);
        if self.abandoned.get() {
            return self.after_abandon(sql);
        }
        self.statements.set(self.statements.get() + 1);
        let started = Instant::now();
        if effect == Effect::BeginsWriting && self.writing.borrow().is_none() {
            let turn = Arc::clone(&self.writers).lock_owned().await;
            *self.writing.borrow_mut() = Some(turn);
        }
        let mut result = self.connection.execute(sql, params).await;
        // A busy answer means the statement did nothing: a reader that
        // met a WAL-index recovery or a checkpoint's reset asks again.
        while matches!(result, Err(DbError::Busy(_)))
            && effect != Effect::BeginsWriting
            && started.elapsed() < BUSY_RETRY_FOR
        {
            self.connection.yield_to_writers(BUSY_RETRY_PAUSE).await;
            result = self.connection.execute(sql, params).await;
        }
        self.waited.set(self.waited.get() + started.elapsed());
        if effect == Effect::Ends
            && let Some(at) = self.locked_at.take()
        {
            self.held.set(self.held.get() + at.elapsed());
        }
        // A stream the server ended (or a server that went away) is not
        // trusted again, in a transaction or not.
        let writes = is_write(sql);
        if matches!(result, Err(DbError::Unavailable(_))) {
            self.spoiled.set(true);
            self.unavailable.set(true);
            if is_commit(sql) || (writes && !self.in_transaction.get()) {
                self.uncertain.set(true);
            }
        }
        if result.is_ok() {
            if is_commit(sql) {
                self.commits.set(self.commits.get() + 1);
            } else if writes && !self.in_transaction.get() {
                self.wrote_outside.set(true);
            }
        }
        match (&result, effect) {
            (Ok(_), Effect::BeginsWriting) => {
                self.in_transaction.set(true);
                self.locked_at.set(Some(Instant::now()));
            }
            (Ok(_), Effect::Begins) => self.in_transaction.set(true),
            (Ok(_), Effect::Ends) => self.in_transaction.set(false),
            // A failed COMMIT or ROLLBACK leaves the state unknown.
            (Err(_), Effect::Ends) => self.spoiled.set(true),
            // Busy: `db::transaction` asks again, keeping its turn.
            (Err(DbError::Busy(_)), Effect::BeginsWriting) => {}
            (Err(_), Effect::BeginsWriting) => {
                self.writing.borrow_mut().take();
            }
            (Err(DbError::Unavailable(_)), _) if self.in_transaction.get() => {
                self.spoiled.set(true);
                self.abandoned.set(true);
            }
            (Err(_), _) if self.in_transaction.get() => self.spoiled.set(true),
            _ => {}
        }
        if !self.in_transaction.get() && effect != Effect::BeginsWriting {
            self.writing.borrow_mut().take();
        }
        result
    }

    async fn yield_to_writers(&self, pause: Duration) {
        self.connection.yield_to_writers(pause).await;
    }

    fn backend(&self) -> Backend {
        self.backend
    }
}

impl<C> Lease<C> {
    /// A statement after the connection was abandoned: `ROLLBACK` ends
    /// the request's transaction on this side (the server has already
    /// ended it); anything else, `COMMIT` included, fails as unavailable,
    /// so no write is reported as done.
    fn after_abandon(&self, sql: &str) -> Result<Rows, DbError> {
        if sql
            .trim_start()
            .get(..8)
            .is_some_and(|v| v.eq_ignore_ascii_case("ROLLBACK"))
        {
            self.in_transaction.set(false);
            self.writing.borrow_mut().take();
            return Ok(Rows::default());
        }
        Err(DbError::Unavailable(
            "the database ended this connection's transaction; nothing of it was kept".into(),
        ))
    }
}

/// A value re-read after [`SETTINGS_REFRESH`].
pub struct Refreshing<T> {
    current: Mutex<Option<(T, Instant)>>,
}

impl<T: Clone> Default for Refreshing<T> {
    fn default() -> Self {
        Refreshing::new()
    }
}

impl<T: Clone> Refreshing<T> {
    pub const fn new() -> Refreshing<T> {
        Refreshing {
            current: Mutex::new(None),
        }
    }

    /// The value, read with `read` if there is none yet or it is older
    /// than [`SETTINGS_REFRESH`]. A failed read is not kept, so the next
    /// request tries again.
    pub async fn get<E>(&self, read: impl AsyncFnOnce() -> Result<T, E>) -> Result<T, E> {
        if let Some((value, at)) = &*self.current.lock().unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < SETTINGS_REFRESH
        {
            return Ok(value.clone());
        }
        let value = read().await?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((value.clone(), Instant::now()));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A connection that fails the statements it is told to, answers
    /// "busy" to the next `busy` statements, and records what it ran;
    /// `user_version` answers the current schema.
    /// With `libsql`, it refuses what Spin's libSQL client refuses
    /// (pragmas that set a value, but `foreign_keys` and `user_version`);
    /// `gone` statements answer as a server that ended the stream.
    #[derive(Default)]
    struct Fake {
        fail: RefCell<Vec<&'static str>>,
        gone: RefCell<Vec<&'static str>>,
        busy: Cell<u32>,
        libsql: bool,
        ran: Rc<RefCell<Vec<String>>>,
    }

    impl Db for Fake {
        async fn execute(&self, sql: &str, _params: &[Value]) -> Result<Rows, DbError> {
            if self.libsql
                && sql.starts_with("PRAGMA")
                && sql.contains('=')
                && !sql.contains("foreign_keys")
                && !sql.contains("user_version")
            {
                return Err(DbError::from_message(
                    "Error::Io(\"unsupported statement\")".into(),
                ));
            }
            self.ran.borrow_mut().push(sql.to_owned());
            if self.busy.get() > 0 {
                self.busy.set(self.busy.get() - 1);
                return Err(DbError::Busy("database is locked".into()));
            }
            if self.fail.borrow().contains(&sql) {
                return Err(DbError::Other(format!("failed: {sql}")));
            }
            if self.gone.borrow().contains(&sql) {
                return Err(DbError::from_message("STREAM_EXPIRED".into()));
            }
            if sql == "PRAGMA user_version" {
                return Ok(Rows {
                    columns: vec!["user_version".into()],
                    rows: vec![vec![Value::Integer(crate::db::SCHEMA_VERSION)]],
                });
            }
            Ok(Rows::default())
        }
    }

    fn lease(pool: &Pool<Fake>, ran: &Rc<RefCell<Vec<String>>>) -> Lease<Fake> {
        let ran = Rc::clone(ran);
        block_on(pool.lease(async || {
            Ok(Fake {
                ran,
                ..Fake::default()
            })
        }))
        .expect("a lease")
    }

    fn run(lease: &Lease<Fake>, sql: &str) -> Result<Rows, DbError> {
        block_on(lease.execute(sql, &[]))
    }

    #[test]
    fn a_connection_is_prepared_once_and_reused_after_a_clean_request() {
        let pool = Pool::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        let first = lease(&pool, &ran);
        let prepared = ran.borrow().len();
        assert!(
            ran.borrow()
                .iter()
                .any(|s| s.starts_with("PRAGMA busy_timeout"))
        );
        run(&first, "BEGIN IMMEDIATE").expect("begin");
        run(&first, "INSERT").expect("insert");
        run(&first, "COMMIT").expect("commit");
        assert_eq!(first.statements(), 3);
        pool.give_back(first);
        assert_eq!(pool.idle_count(), 1);

        let second = lease(&pool, &ran);
        assert_eq!(pool.idle_count(), 0);
        run(&second, "SELECT").expect("select");
        assert_eq!(
            ran.borrow().len(),
            prepared + 4,
            "no pragma or schema check again"
        );
    }

    #[test]
    fn an_error_inside_a_transaction_closes_the_connection() {
        let pool = Pool::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        let lease = lease(&pool, &ran);
        lease.connection.fail.borrow_mut().push("INSERT");
        run(&lease, "BEGIN IMMEDIATE").expect("begin");
        assert!(run(&lease, "INSERT").is_err());
        run(&lease, "ROLLBACK").expect("rollback");
        pool.give_back(lease);
        assert_eq!(pool.idle_count(), 0);
    }

    #[test]
    fn a_libsql_server_is_recognised_and_given_no_refused_pragma() {
        let pool = Pool::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        let sent = Rc::clone(&ran);
        let first = block_on(pool.lease(async || {
            Ok(Fake {
                libsql: true,
                ran: sent,
                ..Fake::default()
            })
        }))
        .expect("a lease");
        assert_eq!(first.backend(), Backend::Libsql);
        assert_eq!(
            *ran.borrow(),
            ["PRAGMA foreign_keys = ON", "PRAGMA user_version"]
        );
        pool.give_back(first);
        let again =
            block_on(pool.lease(async || unreachable!("pooled"))).expect("the pooled connection");
        assert_eq!(again.backend(), Backend::Libsql, "remembered in the pool");

        let file = lease(&Pool::new(), &ran);
        assert_eq!(file.backend(), Backend::SqliteFile);
    }

    #[test]
    fn a_transaction_the_server_ended_sends_nothing_more_and_cannot_commit() {
        let pool = Pool::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        let lease = lease(&pool, &ran);
        lease.connection.gone.borrow_mut().push("UPDATE one");
        run(&lease, "BEGIN IMMEDIATE").expect("begin");
        let error = run(&lease, "UPDATE one").expect_err("the stream is gone");
        assert!(matches!(error, DbError::Unavailable(_)), "{error:?}");
        let sent = ran.borrow().len();
        assert!(matches!(
            run(&lease, "UPDATE two"),
            Err(DbError::Unavailable(_))
        ));
        assert!(matches!(
            run(&lease, "COMMIT"),
            Err(DbError::Unavailable(_))
        ));
        run(&lease, "ROLLBACK").expect("ended on this side");
        assert_eq!(ran.borrow().len(), sent, "nothing sent after the loss");
        pool.give_back(lease);
        assert_eq!(pool.idle_count(), 0, "closed, never reused");
    }

    #[test]
    fn an_unavailable_database_empties_the_pool() {
        let pool = Pool::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        let (one, two) = (lease(&pool, &ran), lease(&pool, &ran));
        pool.give_back(one);
        assert_eq!(pool.idle_count(), 1);
        two.connection.gone.borrow_mut().push("SELECT");
        assert!(matches!(run(&two, "SELECT"), Err(DbError::Unavailable(_))));
        pool.give_back(two);
        assert_eq!(pool.idle_count(), 0, "neither connection is kept");
    }

    #[test]
    fn a_request_the_server_failed_before_storing_anything_runs_again() {
        let pool = Pool::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        let tries = Cell::new(0);
        let opened = Cell::new(0);
        let (answer, lease) = block_on(pool.run(
            async || {
                opened.set(opened.get() + 1);
                let fake = Fake {
                    ran: Rc::clone(&ran),
                    ..Fake::default()
                };
                if opened.get() < TRIES {
                    fake.gone.borrow_mut().push("UPDATE one");
                }
                Ok(fake)
            },
            async |db: &Lease<Fake>| {
                tries.set(tries.get() + 1);
                crate::db::transaction(db, async || {
                    db.execute("UPDATE one", &[]).await?;
                    Ok::<_, anyhow::Error>(())
                })
                .await
                .is_ok()
            },
        ))
        .expect("a lease");
        assert!(answer, "the last try succeeded");
        assert_eq!(tries.get(), TRIES);
        assert!(!lease.may_run_again());
    }

    #[test]
    fn a_request_that_stored_something_never_runs_again() {
        for stored_first in ["COMMIT", "INSERT outside"] {
            let pool = Pool::new();
            let ran = Rc::new(RefCell::new(Vec::new()));
            let lease = lease(&pool, &ran);
            if stored_first == "COMMIT" {
                run(&lease, "BEGIN IMMEDIATE").expect("begin");
                run(&lease, "COMMIT").expect("commit");
            } else {
                run(&lease, "INSERT INTO t VALUES (1)").expect("autocommit");
            }
            lease.connection.gone.borrow_mut().push("BEGIN IMMEDIATE");
            assert!(run(&lease, "BEGIN IMMEDIATE").is_err());
            assert!(!lease.may_run_again(), "{stored_first}");
        }
        // A COMMIT whose answer was lost may have been applied.
        let pool = Pool::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        let lease = lease(&pool, &ran);
        lease.connection.gone.borrow_mut().push("COMMIT");
        run(&lease, "BEGIN IMMEDIATE").expect("begin");
        assert!(run(&lease, "COMMIT").is_err());
        assert!(!lease.may_run_again(), "a lost COMMIT is uncertain");
    }

    #[test]
    fn an_error_outside_a_transaction_keeps_the_connection() {
        let pool = Pool::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        let lease = lease(&pool, &ran);
        lease.connection.fail.borrow_mut().push("INSERT");
        assert!(run(&lease, "INSERT").is_err());
        pool.give_back(lease);
        assert_eq!(pool.idle_count(), 1);
    }

    #[test]
    fn a_transaction_left_open_or_a_failed_commit_closes_the_connection() {
        let pool = Pool::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        let open = lease(&pool, &ran);
        run(&open, "BEGIN").expect("begin");
        run(&open, "SELECT").expect("select");
        pool.give_back(open);
        assert_eq!(pool.idle_count(), 0);

        let failed = lease(&pool, &ran);
        failed.connection.fail.borrow_mut().push("COMMIT");
        run(&failed, "BEGIN IMMEDIATE").expect("begin");
        assert!(run(&failed, "COMMIT").is_err());
        pool.give_back(failed);
        assert_eq!(pool.idle_count(), 0);
    }

    #[test]
    fn a_connection_that_fails_to_prepare_is_not_lent() {
        let pool: Pool<Fake> = Pool::new();
        let result = block_on(pool.lease(async || {
            let fake = Fake::default();
            fake.fail.borrow_mut().push("PRAGMA foreign_keys = ON");
            Ok(fake)
        }));
        assert!(result.is_err());
        assert_eq!(pool.idle_count(), 0);
    }

    #[test]
    fn the_pool_keeps_at_most_max_idle_connections() {
        let pool = Pool::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        let leases: Vec<_> = (0..MAX_IDLE + 3).map(|_| lease(&pool, &ran)).collect();
        for lease in leases {
            pool.give_back(lease);
        }
        assert_eq!(pool.idle_count(), MAX_IDLE);
    }

    #[test]
    fn writers_of_one_instance_take_turns_and_readers_do_not_wait() {
        use futures::FutureExt as _;
        let pool = Pool::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        let first = lease(&pool, &ran);
        let second = lease(&pool, &ran);
        run(&first, "BEGIN IMMEDIATE").expect("begin");

        // The second writer waits for the first to end its transaction.
        let mut waiting = Box::pin(second.execute("BEGIN IMMEDIATE", &[]));
        assert!((&mut waiting).now_or_never().is_none());
        // A read snapshot does not queue.
        run(&second, "SELECT").expect("a read while the first writes");
        run(&first, "COMMIT").expect("commit");
        assert!(block_on(waiting).is_ok());
        run(&second, "ROLLBACK").expect("rollback");

        // A lease dropped mid-transaction gives up its turn.
        let third = lease(&pool, &ran);
        run(&third, "BEGIN IMMEDIATE").expect("begin");
        drop(third);
        let fourth = lease(&pool, &ran);
        assert!(
            fourth
                .execute("BEGIN IMMEDIATE", &[])
                .now_or_never()
                .is_some()
        );
    }

    #[test]
    fn a_busy_statement_is_asked_again_but_begin_immediate_is_left_to_its_caller() {
        let pool = Pool::new();
        let ran = Rc::new(RefCell::new(Vec::new()));
        let lease = lease(&pool, &ran);
        lease.connection.busy.set(2);
        assert!(run(&lease, "SELECT").is_ok());
        assert_eq!(lease.statements(), 1);
        assert_eq!(ran.borrow().iter().filter(|s| *s == "SELECT").count(), 3);

        lease.connection.busy.set(1);
        assert!(matches!(
            run(&lease, "BEGIN IMMEDIATE"),
            Err(DbError::Busy(_))
        ));
        assert!(run(&lease, "BEGIN IMMEDIATE").is_ok());
    }

    #[test]
    fn settings_are_read_once_until_they_are_stale() {
        let settings: Refreshing<u32> = Refreshing::new();
        let reads = Cell::new(0);
        for _ in 0..3 {
            let value = block_on(settings.get(async || {
                reads.set(reads.get() + 1);
                Ok::<_, ()>(7)
            }));
            assert_eq!(value, Ok(7));
        }
        assert_eq!(reads.get(), 1);
        let failing: Refreshing<u32> = Refreshing::new();
        assert_eq!(block_on(failing.get(async || Err("unset"))), Err("unset"));
        assert_eq!(block_on(failing.get(async || Ok::<_, &str>(3))), Ok(3));
    }
}
