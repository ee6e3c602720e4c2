//! Kizuna's domain crate: every rule of the CRM, independent of HTTP
//! frameworks and of the Spin runtime.
//!
//! Layout:
//! - `ports`, `spin_ports`: the storage ports (`Db`, `Kv`, `Clock`) and
//!   their Spin implementations (feature `spin`).
//! - `db`: per-connection pragmas, migrations, the write transaction;
//!   `pool`: what an instance keeps between requests (connections,
//!   settings) and why that is safe.
//! - `http`, `error`, `auth`, `config`, `client_addr`: request plumbing,
//!   problem documents, API keys with scopes, settings from variables,
//!   the client's address (Spin's peer, or behind trusted proxies).
//! - `email`, `phone`, `profile`, `text`, `timestamp`, `ids`: values that
//!   parse, and the profile built from them.
//! - `shop_time`: the shop's time zone and its day and month boundaries.
//! - `answer_zone`: `?tz=shop`, answers with the shop's offset.
//! - `contact`, `consent`, `timeline`, `tags`: the customer record.
//! - `contact_summary`: the contact as every look-up answers it (one
//!   statement per page), the shape the staff console shares.
//! - `forms`: public lead capture, form settings, rate limits, CORS.
//! - `contacts_api`: the staff-facing contact use cases.
//! - `privacy`: export, erasure and the unsubscribe pages;
//!   `unsubscribe_link`: the signed links to them; `suppression`: the
//!   keyed list of withdrawn and erased addresses that nothing but the
//!   person's own opt-in lifts.
//! - `idempotency`: replaying a retried write's first answer.
//! - `events`: the topics of events out, the outbox and webhook endpoints.

pub mod answer_zone;
pub mod auth;
pub mod client_addr;
pub mod config;
pub mod consent;
pub mod contact;
pub mod contact_summary;
pub mod contacts_api;
pub mod db;
pub mod email;
pub mod error;
pub mod events;
pub mod forms;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod money;
pub mod phone;
pub mod points;
pub mod pool;
pub mod ports;
pub mod privacy;
pub mod profile;
pub mod purchases;
pub mod segments;
pub mod shop_time;
pub mod signatures;
#[cfg(feature = "spin")]
pub mod spin_ports;
pub mod suppression;
pub mod tags;
pub mod text;
pub mod timeline;
pub mod timestamp;
pub mod unsubscribe_link;

use config::Config;
use ports::{Clock, Db, Kv};

/// Everything a request's handler reaches: its stores, the clock and the
/// settings. Built once per request by the component's adapter.
pub struct Ctx<'a, D: Db, K: Kv> {
    pub db: &'a D,
    pub kv: &'a K,
    pub clock: &'a dyn Clock,
    pub config: &'a Config,
}
