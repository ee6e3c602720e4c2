//! Segments and analytics: the right customers, from live data.
//!
//! - `definition`: the JSON segment language, parsed and bounded, with a
//!   JSON pointer on every error.
//! - `compile`: a definition to one parameterised SQL query over indexed
//!   columns; field names come only from the whitelist, values only as
//!   parameters.
//! - `analytics`: RFM scores, churn risk and the VIP threshold (cached in
//!   SQLite with their computation time), summary, RFM grid, cross-sell.
//! - `api`: preview, saved segments, members (JSON and CSV), counts.
//! - `members`: the member fields a caller selects, the statement that
//!   reads them, and their JSON and CSV (Excel-ready) forms.
//! - `changes`: delta sync (who joined and left since a token), evaluated
//!   outside the write lock and recorded in short batches.

pub mod analytics;
pub mod api;
pub mod changes;
pub mod compile;
pub mod definition;
pub mod members;
