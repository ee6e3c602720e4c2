//! Purchases: EC orders from webhooks, turned into orders on the right
//! customer, with the customer's counters and lifecycle always right.
//!
//! - `model`: the source-independent order, refund and event, and the
//!   checks every event passes before anything is stored.
//! - `kizuna_format`, `shopify`, `woocommerce`: each source's payloads
//!   mapped faithfully onto the model.
//! - `ingest`: applying an event inside the request's transaction:
//!   customer matching, the order, refunds, counters, timeline. Its
//!   `apply` is the one call later hooks (points) build on.
//! - `checkout_consent`: the marketing consent an order reports, recorded
//!   on the buyer with its proof, never over a later change or the
//!   suppression list.
//! - `receivers`: signature checks and event identity per source.
//! - `auth_failures`: refused signatures, counted per source and minute.
//! - `receive`: a verified delivery end to end: de-duplication by event
//!   identity, the deliveries log, the answer.
//! - `api`: the orders and deliveries read API.

pub mod api;
pub mod auth_failures;
pub mod checkout_consent;
pub mod ingest;
pub mod kizuna_format;
pub mod model;
pub mod receive;
pub mod receivers;
pub mod shopify;
pub mod woocommerce;

pub use model::{Event, Order, Source};

/// Webhook bodies above this are refused (413) before signatures are checked.
pub const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;
