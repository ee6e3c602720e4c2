//! End-to-end suites: every request goes through the native host, routed
//! by `spin.toml` to the component's own `handle`, over a fresh database.

mod answers;
mod contacts;
mod events;
mod forms;
mod helpers;
mod points;
mod points_properties;
mod purchases;
mod scale_out;
mod segments;
mod segments_properties;
mod statements;
mod storage;
mod webhook_endpoints;
