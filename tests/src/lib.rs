//! The native host: runs Kizuna's components in-process exactly as Spin
//! would, so tests, benches and local runs need no Wasm runtime.
//!
//! - `manifest`: reads `spin.toml` (routes, per-component stores and
//!   variables) and resolves variables from `SPIN_VARIABLE_*` like Spin.
//! - `stores`: the `Db` and `Kv` ports over rusqlite, one connection per
//!   request as Spin opens them.
//! - `host`: routes a request to the component's own `handle`, and serves
//!   over HTTP on loopback for end-to-end and load tests.
//! - `spin`: real `spin up` of the same manifest, for the suite and benches.
//! - `servers`: sqld and Redis on loopback, and the runtime config that
//!   puts Spin's stores on them.
//! - `scenarios`: Kizuna's requests, fixtures, write checks and `wrk`
//!   measurement shared by the benches under Spin (`bench-spin`,
//!   `bench-libsql`).
//! - `load`: HTTP load with `wrk` for the benches under Spin (a request
//!   file written in Rust, replayed by a Lua script, its figures parsed).

pub mod bench;
pub mod datagen;
pub mod host;
pub mod load;
pub mod manifest;
pub mod scenarios;
pub mod servers;
pub mod spin;
pub mod stores;

pub use host::{Host, ManualClock, Server};
