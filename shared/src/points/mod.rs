//! The loyalty-points program: rules, ledger, earning from orders, API.
//!
//! - `program`: the versioned rules (earn rate and base, SKU / category
//!   multipliers, campaigns, pending days, expiry, minimum redemption,
//!   the value of a point) and the one earn calculation.
//! - `ledger`: entries, lots, allocations and debt; every movement of
//!   points, inside the caller's transaction.
//! - `orders`: the purchase-ingestion hook: earn on paid, reverse on
//!   cancel and refunds, give back points that paid for a refunded order.
//! - `api`: balances, ledger pages, award, redeem, adjust, cancel,
//!   liability, and the expiry sweep.
//!
//! Debt policy: points taken back after they were spent (a refund or a
//! cancelled earn) come first from the earn's own lot, then from the
//! contact's other unexpired lots (soonest-expiring first, then pending);
//! what is still missing becomes `debt`. The ledger balance may then be
//! negative. Every later earn pays the debt before it adds to a lot, so
//! available points and debt never exist side by side.

pub mod api;
pub mod ledger;
pub mod orders;
pub mod program;
