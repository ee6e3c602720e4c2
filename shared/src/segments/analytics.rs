//! Analytics over the customer base: RFM scores and churn risk, the VIP
//! threshold, and the answers behind `/v1/analytics` (summary, RFM grid,
//! cross-sell).
//!
//! Which orders count: the same as the contact counters
//! (`purchases::ingest::refresh_contact`): `paid = 1 AND cancelled = 0
//! AND status <> 'refunded'`, spend net of refunds and never below zero
//! per order. Erased contacts never count.
//!
//! # Freshness
//!
//! - The summary and cross-sell are computed from the live tables on every
//!   request, each in one statement (one consistent snapshot); their
//!   `computed_at` is the time of the request.
//! - RFM scores, churn risk and the VIP threshold are recomputed on demand
//!   and cached in SQLite, in `rfm_scores` and `analytics_state` (not in
//!   the key-value store: segment SQL joins them, and they are replaced in
//!   the same transaction that records their time). Every answer built
//!   from them carries the `computed_at` of the computation it used, and
//!   churn risk is judged as of that time.
//! - Whoever reads them first calls [`ensure_fresh`]. While the cached
//!   computation is less than [`RFM_MAX_AGE`] from now (either way, so a
//!   clock set back also recomputes) it is used as is. Otherwise the
//!   caller recomputes without ever holding the write lock for long, so
//!   that writers (webhooks, points) are not held up and a libSQL server
//!   (which takes back a lock held over 5 s) never ends the work: the
//!   quintile boundaries are read under one read snapshot, then the
//!   scores are written beside the current ones, tagged with their own
//!   computation time, in transactions of [`RFM_BATCH`] customers, and
//!   one short transaction makes them current (`analytics_state` row
//!   `rfm`). Readers join only the current computation
//!   ([`CURRENT_RFM_SQL`]); the previous one is deleted afterwards, in
//!   batches too.
//! - Concurrent callers compute once: the first one records a claim
//!   (`analytics_state` row `rfm_claim`, its `computed_at` being the time
//!   of the claim). While a claim younger than [`RFM_CLAIM_TTL`] stands,
//!   other callers answer from the previous computation, stale but dated,
//!   instead of starting a second one; only when there is no previous
//!   computation at all do they compute too, and the re-check in the swap
//!   keeps the first result. A caller that dies mid-way leaves a claim
//!   that expires after `RFM_CLAIM_TTL`.
//! - [`refresh`] recomputes regardless of age. A contact erased since the
//!   computation keeps its `rfm_scores` row until the next one, so readers
//!   join live contacts.
//!
//! # Definitions
//!
//! - Customers: live contacts with `order_count > 0`.
//! - RFM: `NTILE(5)` over customers, 5 best: recency by `last_order_at`
//!   (most recent = 5), frequency by `order_count`, monetary by
//!   `total_spent_minor`. Equal values are ordered by contact id, so the
//!   quintiles have equal sizes (±1) and a tie that straddles a boundary
//!   splits the same way on every run. The boundaries are those of the
//!   snapshot the computation started from; a customer whose figures
//!   change while the batches run is scored on the new figures against
//!   those boundaries.
//! - Churn risk: `none` below 2 counted orders. Otherwise, with `gap` the
//!   median of the customer's own gaps in days between consecutive counted
//!   orders and `since` the days from the last one to the computation:
//!   `high` when `since > 2 × gap` (the `at_risk` built-in), `medium` when
//!   `since > gap`, else `low`.
//! - VIP threshold: among live contacts with net spend above zero on
//!   counted orders placed in the last [`VIP_WINDOW`], the spend of the
//!   `ceil(n / 10)`-th highest, so at least a tenth of them reach it. No
//!   such contact: no threshold (stored as NULL, read as 0).

use crate::Ctx;
use crate::db::{read_snapshot, transaction};
use crate::error::ApiError;
use crate::http::{Request, Response, json_response, query_pairs, query_param};
use crate::ports::{Db, Kv, Value};
use crate::timestamp;
use anyhow::Context as _;
use http::StatusCode;
use serde_json::{Value as Json, json};
use time::{Duration, OffsetDateTime};

/// How old a cached RFM computation may be before a reader recomputes it.
pub const RFM_MAX_AGE: Duration = Duration::minutes(10);

/// How long a claim to recompute stands before another caller may take
/// over (the claimer is presumed dead).
pub const RFM_CLAIM_TTL: Duration = Duration::minutes(5);

/// The spend window of the VIP threshold.
pub const VIP_WINDOW: Duration = Duration::days(365);

/// `analytics_state` names.
const RFM_STATE: &str = "rfm";
const CLAIM_STATE: &str = "rfm_claim";
const VIP_STATE: &str = "vip_threshold";

/// Cross-sell page size bounds.
const CROSS_SELL_DEFAULT_LIMIT: i64 = 10;
const CROSS_SELL_MAX_LIMIT: i64 = 50;
const MAX_ITEM_CHARS: usize = 255;

/// How many customers one scoring transaction covers: a few
/// milliseconds of work, far from the 5 s a libSQL server lets a write
/// transaction hold its lock.
pub const RFM_BATCH: i64 = 2_000;

/// The computation readers use, as a scalar subquery: join
/// `rfm_scores r` with `r.computed_at = {CURRENT_RFM_SQL}`.
pub const CURRENT_RFM_SQL: &str = "(SELECT computed_at FROM analytics_state WHERE name = 'rfm')";

/// The customers RFM scores, in one place for the boundaries and the
/// batches: `r`, `f` and `m` are the three measures.
const CUSTOMERS_SQL: &str = "
SELECT id, COALESCE(last_order_at, '') AS r, order_count AS f, total_spent_minor AS m,
       order_count, last_order_at
FROM contacts
WHERE erased_at IS NULL AND order_count > 0";

/// The measures whose quintiles RFM reads, with the column of each in
/// [`CUSTOMERS_SQL`].
const MEASURES: [&str; 3] = ["r", "f", "m"];

/// The customers of one batch: ids after `?2` up to `?3`.
fn batch_sql() -> String {
    // The score of a measure is 1 plus the boundaries at or below the
    // customer's (value, id); a missing boundary (fewer than five
    // customers) is NULL and counts for none.
    let score = |measure: &str, first: usize| -> String {
        (0..4)
            .map(|g| {
                let p = first + 2 * g;
                format!("COALESCE((b.{measure}, b.id) >= (?{p}, ?{}), 0)", p + 1)
            })
            .collect::<Vec<_>>()
            .join(" + ")
    };
    format!(
        "
WITH batch AS (
    SELECT * FROM ({CUSTOMERS_SQL}) WHERE id > ?2 AND id <= ?3
),
gaps AS (
    SELECT contact_id,
           julianday(placed_at)
             - julianday(LAG(placed_at) OVER (PARTITION BY contact_id ORDER BY placed_at)) AS gap
    FROM orders
    WHERE contact_id IN (SELECT id FROM batch)
      AND paid = 1 AND cancelled = 0 AND status <> 'refunded'
),
ranked AS (
    SELECT contact_id, gap,
           ROW_NUMBER() OVER (PARTITION BY contact_id ORDER BY gap) AS k,
           COUNT(*) OVER (PARTITION BY contact_id) AS n
    FROM gaps
    WHERE gap IS NOT NULL
),
medians AS (
    SELECT contact_id, AVG(gap) AS median_gap
    FROM ranked
    WHERE k IN ((n + 1) / 2, (n + 2) / 2)
    GROUP BY contact_id
)
INSERT INTO rfm_scores (computed_at, contact_id, recency, frequency, monetary, churn_risk)
SELECT ?1, b.id, 1 + {r}, 1 + {f}, 1 + {m},
       CASE
           WHEN b.order_count < 2 OR md.median_gap IS NULL THEN 'none'
           WHEN julianday(?1) - julianday(b.last_order_at) > 2 * md.median_gap THEN 'high'
           WHEN julianday(?1) - julianday(b.last_order_at) > md.median_gap THEN 'medium'
           ELSE 'low'
       END
FROM batch b
LEFT JOIN medians md ON md.contact_id = b.id
ON CONFLICT DO NOTHING",
        r = score("r", 4),
        f = score("f", 12),
        m = score("m", 20),
    )
}

/// The VIP threshold; `?1` is the start of the spend window. No row when
/// nobody spent in the window.
const VIP_SQL: &str = "
WITH spend AS (
    SELECT o.contact_id, SUM(MAX(o.total_minor - o.refunded_minor, 0)) AS spent
    FROM orders o
    JOIN contacts c ON c.id = o.contact_id
    WHERE c.erased_at IS NULL AND o.paid = 1 AND o.cancelled = 0 AND o.status <> 'refunded'
      AND o.placed_at >= ?1
    GROUP BY o.contact_id
    HAVING spent > 0
),
ranked AS (
    SELECT spent, ROW_NUMBER() OVER (ORDER BY spent DESC) AS k, COUNT(*) OVER () AS n
    FROM spend
)
SELECT spent FROM ranked WHERE k = (n + 9) / 10";

const UPSERT_STATE_SQL: &str = "
INSERT INTO analytics_state (name, value, computed_at) VALUES (?1, ?2, ?3)
ON CONFLICT (name) DO UPDATE SET value = excluded.value, computed_at = excluded.computed_at";

/// When RFM was last computed, and when a recomputation was claimed.
#[derive(Debug, Default)]
struct RfmState {
    computed_at: Option<String>,
    claimed_at: Option<String>,
}

async fn rfm_state(db: &impl Db) -> anyhow::Result<RfmState> {
    let rows = db
        .execute(
            "SELECT name, computed_at FROM analytics_state WHERE name IN (?1, ?2)",
            &[RFM_STATE.into(), CLAIM_STATE.into()],
        )
        .await
        .context("failed to read when RFM was computed")?;
    let mut state = RfmState::default();
    for row in rows.iter() {
        let at = Some(row.str("computed_at")?.to_owned());
        match row.str("name")? {
            RFM_STATE => state.computed_at = at,
            _ => state.claimed_at = at,
        }
    }
    Ok(state)
}

/// True when `at` is less than `max` from `now`, in either direction; a
/// time that does not parse is never recent.
fn is_recent(at: &str, now: OffsetDateTime, max: Duration) -> bool {
    timestamp::parse(at).is_some_and(|at| (now - at).abs() < max)
}

/// What a caller that found the cache stale does.
enum Claim {
    /// Answer with this computation: fresh after all, or the previous one
    /// while another caller recomputes.
    Use(String),
    /// Recompute.
    Compute,
}

/// Makes sure RFM scores, churn risk and the VIP threshold are at most
/// `RFM_MAX_AGE` old, recomputing them if not, and returns the time of
/// the computation to use. While another request is recomputing, that is
/// the previous computation, possibly older (see the module's notes).
///
/// Call it OUTSIDE any transaction: it opens its own `BEGIN IMMEDIATE`
/// transactions (SQLite has no nested `BEGIN`).
pub async fn ensure_fresh(db: &impl Db, now: OffsetDateTime) -> anyhow::Result<String> {
    if let Some(at) = rfm_state(db).await?.computed_at
        && is_recent(&at, now, RFM_MAX_AGE)
    {
        return Ok(at);
    }
    let claim = transaction(db, async || {
        let state = rfm_state(db).await?;
        if let Some(at) = state.computed_at {
            let claimed = state
                .claimed_at
                .is_some_and(|c| is_recent(&c, now, RFM_CLAIM_TTL));
            if claimed || is_recent(&at, now, RFM_MAX_AGE) {
                return Ok::<_, anyhow::Error>(Claim::Use(at));
            }
        }
        set_state(db, CLAIM_STATE, None, &timestamp::format(now)).await?;
        Ok(Claim::Compute)
    })
    .await?;
    match claim {
        Claim::Use(at) => Ok(at),
        Claim::Compute => recompute(db, now, true).await,
    }
}

/// Recomputes now, however fresh the cache is (call it outside a
/// transaction). For tests, benchmarks and a manual refresh.
pub async fn refresh(db: &impl Db, now: OffsetDateTime) -> anyhow::Result<String> {
    recompute(db, now, false).await
}

/// The quintile boundaries, the scores in batches, then the swap (see
/// the module's notes). With `keep_fresh`, a fresh computation that
/// another caller made current meanwhile wins, and this one's rows go.
async fn recompute(db: &impl Db, now: OffsetDateTime, keep_fresh: bool) -> anyhow::Result<String> {
    let at = timestamp::format(now);
    let scored = async || -> anyhow::Result<Option<i64>> {
        let (boundaries, threshold) = read_snapshot(db, async || {
            let boundaries = quintile_boundaries(db).await?;
            let since = timestamp::format(now - VIP_WINDOW);
            let rows = db
                .execute(VIP_SQL, &[since.into()])
                .await
                .context("failed to compute the VIP threshold")?;
            let threshold = match rows.first() {
                Some(row) => row.opt_i64("spent")?,
                None => None,
            };
            Ok::<_, anyhow::Error>((boundaries, threshold))
        })
        .await?;
        score_in_batches(db, &at, &boundaries).await?;
        Ok(threshold)
    };
    let threshold = match scored().await {
        Ok(threshold) => threshold,
        Err(e) => {
            // Let the next caller try at once rather than after the TTL.
            if let Err(release) = db
                .execute(
                    "DELETE FROM analytics_state WHERE name = ?1 AND computed_at = ?2",
                    &[CLAIM_STATE.into(), at.as_str().into()],
                )
                .await
            {
                eprintln!("failed to release the RFM claim: {release}");
            }
            if let Err(cleanup) = delete_computation(db, &at).await {
                eprintln!("failed to delete an unfinished RFM computation: {cleanup:#}");
            }
            return Err(e);
        }
    };
    let (used, replaced) = transaction(db, async || {
        let current = rfm_state(db).await?.computed_at;
        if keep_fresh
            && let Some(other) = &current
            && is_recent(other, now, RFM_MAX_AGE)
        {
            return Ok::<_, anyhow::Error>((other.clone(), Some(at.clone())));
        }
        set_state(db, VIP_STATE, threshold, &at).await?;
        set_state(db, RFM_STATE, None, &at).await?;
        db.execute(
            "DELETE FROM analytics_state WHERE name = ?1",
            &[CLAIM_STATE.into()],
        )
        .await
        .context("failed to release the RFM claim")?;
        Ok((at.clone(), current.filter(|c| *c != at)))
    })
    .await?;
    if let Some(old) = replaced
        && let Err(e) = delete_computation(db, &old).await
    {
        // The rows are never read again; the next computation retries.
        eprintln!("failed to delete the previous RFM computation: {e:#}");
    }
    Ok(used)
}

/// Each measure's four boundaries, as (value, contact id) of the first
/// customer of quintiles 2 to 5 in `NTILE(5)`'s order; `None` where a
/// quintile is empty (fewer than five customers). Run inside a read
/// snapshot.
async fn quintile_boundaries(db: &impl Db) -> anyhow::Result<Vec<Option<(Value, Value)>>> {
    let rows = db
        .execute(&format!("SELECT count(*) AS n FROM ({CUSTOMERS_SQL})"), &[])
        .await
        .context("failed to count the customers")?;
    let n = rows.first().context("a count")?.i64("n")?;
    // NTILE(5) gives the first `n % 5` quintiles one row more: quintile
    // g + 1 starts at 0-based rank g * (n / 5) + min(g, n % 5).
    let starts: Vec<i64> = (1..=4).map(|g| g * (n / 5) + g.min(n % 5)).collect();
    let mut boundaries = Vec::with_capacity(12);
    for measure in MEASURES {
        let rows = db
            .execute(
                &format!(
                    "SELECT k, value, id FROM (
                         SELECT {measure} AS value, id,
                                ROW_NUMBER() OVER (ORDER BY {measure}, id) - 1 AS k
                         FROM ({CUSTOMERS_SQL}))
                     WHERE k IN (?1, ?2, ?3, ?4)"
                ),
                &starts
                    .iter()
                    .map(|k| Value::Integer(*k))
                    .collect::<Vec<_>>(),
            )
            .await
            .with_context(|| format!("failed to find the `{measure}` quintiles"))?;
        for start in &starts {
            let found = rows
                .iter()
                .find(|row| row.i64("k").is_ok_and(|k| k == *start))
                .map(|row| -> anyhow::Result<(Value, Value)> {
                    Ok((row.value("value")?.clone(), row.value("id")?.clone()))
                })
                .transpose()?;
            boundaries.push(found);
        }
    }
    Ok(boundaries)
}

/// Writes computation `at`'s scores, [`RFM_BATCH`] customers per
/// transaction, pausing between batches as long as each held the lock.
async fn score_in_batches(
    db: &impl Db,
    at: &str,
    boundaries: &[Option<(Value, Value)>],
) -> anyhow::Result<()> {
    let sql = batch_sql();
    let mut params: Vec<Value> = vec![at.into(), Value::Null, Value::Null];
    for boundary in boundaries {
        let (value, id) = boundary.clone().unwrap_or((Value::Null, Value::Null));
        params.extend([value, id]);
    }
    let mut after = String::new();
    loop {
        let rows = db
            .execute(
                &format!(
                    "SELECT max(id) AS last_id FROM (
                         SELECT id FROM ({CUSTOMERS_SQL}) WHERE id > ?1 ORDER BY id LIMIT ?2)"
                ),
                &[after.as_str().into(), RFM_BATCH.into()],
            )
            .await
            .context("failed to find the next RFM batch")?;
        let Some(last) = rows
            .first()
            .map(|r| r.opt_str("last_id"))
            .transpose()?
            .flatten()
        else {
            return Ok(());
        };
        let last = last.to_owned();
        params[1] = after.as_str().into();
        params[2] = last.as_str().into();
        let held = std::cell::Cell::new(std::time::Duration::ZERO);
        transaction(db, async || {
            let locked = std::time::Instant::now();
            db.execute(&sql, &params)
                .await
                .context("failed to store a batch of RFM scores")?;
            held.set(locked.elapsed());
            Ok::<_, anyhow::Error>(())
        })
        .await?;
        db.yield_to_writers(held.get()).await;
        after = last;
    }
}

/// Deletes computation `at`'s scores, a batch per transaction.
async fn delete_computation(db: &impl Db, at: &str) -> anyhow::Result<()> {
    loop {
        let held = std::cell::Cell::new(std::time::Duration::ZERO);
        let deleted = transaction(db, async || {
            let locked = std::time::Instant::now();
            let rows = db
                .execute(
                    "DELETE FROM rfm_scores WHERE computed_at = ?1 AND contact_id IN (
                         SELECT contact_id FROM rfm_scores WHERE computed_at = ?1 LIMIT ?2)
                     RETURNING 1",
                    &[at.into(), (RFM_BATCH * 5).into()],
                )
                .await
                .context("failed to delete RFM scores")?;
            held.set(locked.elapsed());
            Ok::<_, anyhow::Error>(rows.len())
        })
        .await?;
        if deleted == 0 {
            return Ok(());
        }
        db.yield_to_writers(held.get()).await;
    }
}

async fn set_state(db: &impl Db, name: &str, value: Option<i64>, at: &str) -> anyhow::Result<()> {
    db.execute(UPSERT_STATE_SQL, &[name.into(), value.into(), at.into()])
        .await
        .with_context(|| format!("failed to record `{name}` in the analytics state"))?;
    Ok(())
}

/// The VIP spend threshold in minor units: `configured` when the shop set
/// one, else the computed one (0 when there is none). Reads the cache as
/// it is: call [`ensure_fresh`] first.
pub async fn vip_threshold(db: &impl Db, configured: Option<i64>) -> anyhow::Result<i64> {
    if let Some(value) = configured {
        return Ok(value);
    }
    let rows = db
        .execute(
            "SELECT value FROM analytics_state WHERE name = ?1",
            &[VIP_STATE.into()],
        )
        .await
        .context("failed to read the VIP threshold")?;
    Ok(match rows.first() {
        Some(row) => row.opt_i64("value")?.unwrap_or(0),
        None => 0,
    })
}

/// `GET /v1/analytics/summary`: live counts in one statement.
pub async fn summary<D: Db, K: Kv>(ctx: &Ctx<'_, D, K>) -> Result<Response, ApiError> {
    let now = timestamp::format(ctx.clock.now());
    // Points outstanding as `points::api::liability` counts them: what
    // unexpired lots still hold, usable now or pending.
    let rows = ctx
        .db
        .execute(
            "SELECT count(*) AS contacts,
                    COALESCE(SUM(order_count = 0), 0) AS leads,
                    COALESCE(SUM(order_count >= 1), 0) AS customers,
                    COALESCE(SUM(order_count >= 2), 0) AS repeat_customers,
                    COALESCE(SUM(order_count), 0) AS orders,
                    COALESCE(SUM(total_spent_minor), 0) AS spent,
                    (SELECT COALESCE(SUM(CASE WHEN available_at <= ?1 THEN remaining END), 0)
                     FROM points_lots
                     WHERE remaining > 0 AND (expires_at IS NULL OR expires_at > ?1)) AS points_available,
                    (SELECT COALESCE(SUM(CASE WHEN available_at > ?1 THEN remaining END), 0)
                     FROM points_lots
                     WHERE remaining > 0 AND (expires_at IS NULL OR expires_at > ?1)) AS points_pending
             FROM contacts
             WHERE erased_at IS NULL",
            &[now.as_str().into()],
        )
        .await
        .context("failed to compute the summary")?;
    let row = rows.first().context("the summary returned no row")?;
    let customers = row.i64("customers")?;
    let repeat = row.i64("repeat_customers")?;
    let orders = row.i64("orders")?;
    let spent = row.i64("spent")?;
    let available = row.i64("points_available")?;
    let pending = row.i64("points_pending")?;
    let per = |total: i64, count: i64| if count > 0 { total / count } else { 0 };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "contacts": row.i64("contacts")?,
            "leads": row.i64("leads")?,
            "customers": customers,
            "repeat_customers": repeat,
            "repeat_rate": ratio(repeat, customers),
            "orders": orders,
            "net_sales_minor": spent,
            "average_order_value_minor": per(spent, orders),
            "average_spend_per_customer_minor": per(spent, customers),
            "points_outstanding": available + pending,
            "points_available": available,
            "points_pending": pending,
            "currency": ctx.config.shop_currency.code(),
            "computed_at": now,
        }),
    ))
}

/// `GET /v1/analytics/rfm`: customers and their spend in each of the 25
/// recency × frequency cells (recency 5 → 1, frequency 1 → 5, empty cells
/// included), from the cached scores.
pub async fn rfm_grid<D: Db, K: Kv>(ctx: &Ctx<'_, D, K>) -> Result<Response, ApiError> {
    let computed_at = ensure_fresh(ctx.db, ctx.clock.now()).await?;
    let rows = ctx
        .db
        .execute(
            &format!(
                "SELECT r.recency, r.frequency, count(*) AS customers,
                        COALESCE(SUM(c.total_spent_minor), 0) AS spent
                 FROM rfm_scores r
                 JOIN contacts c ON c.id = r.contact_id
                 WHERE r.computed_at = {CURRENT_RFM_SQL} AND c.erased_at IS NULL
                 GROUP BY r.recency, r.frequency"
            ),
            &[],
        )
        .await
        .context("failed to read the RFM grid")?;
    let mut grid = [[(0_i64, 0_i64); 5]; 5];
    for row in rows.iter() {
        let cell = |column: &str| -> anyhow::Result<usize> {
            let score = row.i64(column)?;
            anyhow::ensure!(
                (1..=5).contains(&score),
                "{column} score {score} out of range"
            );
            usize::try_from(score - 1).context("score")
        };
        grid[cell("recency")?][cell("frequency")?] = (row.i64("customers")?, row.i64("spent")?);
    }
    let mut cells = Vec::with_capacity(25);
    let (mut customers, mut spend) = (0, 0);
    for recency in (1..=5_usize).rev() {
        for frequency in 1..=5_usize {
            let (count, spent) = grid[recency - 1][frequency - 1];
            customers += count;
            spend += spent;
            cells.push(json!({
                "recency": recency,
                "frequency": frequency,
                "count": count,
                "spend_minor": spent,
            }));
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "cells": cells,
            "customers": customers,
            "spend_minor": spend,
            "currency": ctx.config.shop_currency.code(),
            "computed_at": computed_at,
            "max_age_seconds": RFM_MAX_AGE.whole_seconds(),
        }),
    ))
}

/// What cross-sell groups lines by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Basis {
    Sku,
    Category,
}

impl Basis {
    /// The `order_lines` column, and the name of the query parameter and
    /// of the response field. The only text that enters the SQL.
    fn column(self) -> &'static str {
        match self {
            Basis::Sku => "sku",
            Basis::Category => "category",
        }
    }
}

/// Reads `sku` or `category` (exactly one) and `limit`.
fn cross_sell_query(pairs: &[(String, String)]) -> Result<(Basis, String, i64), ApiError> {
    let (basis, item) = match (query_param(pairs, "sku"), query_param(pairs, "category")) {
        (Some(sku), None) => (Basis::Sku, sku),
        (None, Some(category)) => (Basis::Category, category),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "category",
                "give either `sku` or `category`, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "sku",
                "give the item as `sku=…` or `category=…`",
            ));
        }
    };
    let chars = item.chars().count();
    if chars == 0 || chars > MAX_ITEM_CHARS || item.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            basis.column(),
            format!("must be 1 to {MAX_ITEM_CHARS} characters, without control characters"),
        ));
    }
    let limit = match query_param(pairs, "limit") {
        None => CROSS_SELL_DEFAULT_LIMIT,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=CROSS_SELL_MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format!("must be a whole number from 1 to {CROSS_SELL_MAX_LIMIT}"),
                ));
            }
        },
    };
    Ok((basis, item.to_owned(), limit))
}

/// The cross-sell statement for one basis. `?1` is the item, `?2` the
/// rank (0-based) of the last item served. Always one row at least: the
/// base item's customers and all customers, with `item` NULL when no other
/// item was bought by them; otherwise one row per candidate item: those
/// whose `together` count reaches the `?2`-th largest (ties included, so
/// the caller can break them by lift).
fn cross_sell_sql(basis: Basis) -> String {
    let col = basis.column();
    format!(
        "
WITH base AS (
    SELECT DISTINCT o.contact_id
    FROM order_lines l
    JOIN orders o ON o.id = l.order_id
    JOIN contacts c ON c.id = o.contact_id
    WHERE l.{col} = ?1
      AND o.paid = 1 AND o.cancelled = 0 AND o.status <> 'refunded'
      AND c.erased_at IS NULL
),
co AS (
    SELECT l.{col} AS item, COUNT(DISTINCT b.contact_id) AS together
    FROM base b
    JOIN orders o ON o.contact_id = b.contact_id
    JOIN order_lines l ON l.order_id = o.id
    WHERE o.paid = 1 AND o.cancelled = 0 AND o.status <> 'refunded'
      AND l.{col} IS NOT NULL AND l.{col} <> ?1
    GROUP BY l.{col}
),
cut AS (
    SELECT together FROM co ORDER BY together DESC LIMIT 1 OFFSET ?2
),
candidates AS (
    SELECT item, together FROM co
    WHERE together >= COALESCE((SELECT together FROM cut), 0)
),
item_buyers AS (
    SELECT l.{col} AS item, COUNT(DISTINCT o.contact_id) AS buyers
    FROM order_lines l
    JOIN orders o ON o.id = l.order_id
    JOIN contacts c ON c.id = o.contact_id
    WHERE l.{col} IS NOT NULL AND l.{col} IN (SELECT item FROM candidates)
      AND o.paid = 1 AND o.cancelled = 0 AND o.status <> 'refunded'
      AND c.erased_at IS NULL
    GROUP BY l.{col}
)
SELECT (SELECT COUNT(*) FROM base) AS base_customers,
       (SELECT COUNT(*) FROM contacts WHERE erased_at IS NULL AND order_count > 0) AS customers,
       x.item, x.together, x.buyers
FROM (SELECT 1) AS one
LEFT JOIN (
    SELECT cd.item AS item, cd.together AS together, ib.buyers AS buyers
    FROM candidates cd
    JOIN item_buyers ib ON ib.item = cd.item
) AS x ON 1"
    )
}

/// One co-purchased item and its association with the base item.
#[derive(Debug, Clone, PartialEq)]
struct Association {
    item: String,
    together: i64,
    buyers: i64,
    support: f64,
    confidence: f64,
    lift: f64,
}

impl Association {
    /// `customers`: N, customers with any counted order; `base`: |A|;
    /// `buyers`: |B|; `together`: |A ∩ B|.
    fn new(item: String, together: i64, buyers: i64, base: i64, customers: i64) -> Self {
        let (t, b, a, n) = (
            together as f64,
            buyers as f64,
            base as f64,
            customers as f64,
        );
        let div = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
        Association {
            item,
            together,
            buyers,
            support: div(t, n),
            confidence: div(t, a),
            lift: div(t * n, a * b),
        }
    }
}

/// Most co-purchased first, then the strongest lift, then by name.
fn rank(mut items: Vec<Association>, limit: usize) -> Vec<Association> {
    items.sort_by(|x, y| {
        y.together
            .cmp(&x.together)
            .then(y.lift.total_cmp(&x.lift))
            .then_with(|| x.item.cmp(&y.item))
    });
    items.truncate(limit);
    items
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn ratio(part: i64, whole: i64) -> f64 {
    if whole > 0 {
        round4(part as f64 / whole as f64)
    } else {
        0.0
    }
}

/// `GET /v1/analytics/cross-sell?sku=…` (or `category=…`, optional
/// `limit` 1–50, default 10): the items most often bought by the same
/// customers as the given one, live, with support, confidence and lift.
/// An item nobody bought answers an empty list.
pub async fn cross_sell<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    request: &Request,
) -> Result<Response, ApiError> {
    let (basis, item, limit) =
        cross_sell_query(&query_pairs(request, &["sku", "category", "limit"])?)?;
    let now = timestamp::format(ctx.clock.now());
    let rows = ctx
        .db
        .execute(
            &cross_sell_sql(basis),
            &[item.as_str().into(), Value::Integer(limit - 1)],
        )
        .await
        .context("failed to compute cross-sell")?;
    let first = rows.first().context("cross-sell returned no row")?;
    let base = first.i64("base_customers")?;
    let customers = first.i64("customers")?;
    let mut associations = Vec::new();
    for row in rows.iter() {
        if let Some(other) = row.opt_str("item")? {
            associations.push(Association::new(
                other.to_owned(),
                row.i64("together")?,
                row.i64("buyers")?,
                base,
                customers,
            ));
        }
    }
    let limit = usize::try_from(limit).context("limit")?;
    let items: Vec<Json> = rank(associations, limit)
        .into_iter()
        .map(|a| {
            json!({
                basis.column(): a.item,
                "customers_both": a.together,
                "customers_item": a.buyers,
                "support": round4(a.support),
                "confidence": round4(a.confidence),
                "lift": round4(a.lift),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "base": { basis.column(): item, "customers": base },
            "customers": customers,
            "items": items,
            "computed_at": now,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn field_of(error: ApiError) -> String {
        match error {
            ApiError::Validation(errors) => errors[0].field.clone(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn cross_sell_takes_exactly_one_item_and_a_bounded_limit() {
        assert_eq!(
            cross_sell_query(&pairs(&[("sku", "A-1")])).unwrap(),
            (Basis::Sku, "A-1".to_owned(), 10)
        );
        assert_eq!(
            cross_sell_query(&pairs(&[("category", "tea"), ("limit", "50")])).unwrap(),
            (Basis::Category, "tea".to_owned(), 50)
        );
        assert_eq!(field_of(cross_sell_query(&pairs(&[])).unwrap_err()), "sku");
        assert_eq!(
            field_of(cross_sell_query(&pairs(&[("sku", "a"), ("category", "b")])).unwrap_err()),
            "category"
        );
        assert_eq!(
            field_of(cross_sell_query(&pairs(&[("sku", "")])).unwrap_err()),
            "sku"
        );
        for limit in ["0", "51", "-1", "ten", "1.5"] {
            assert_eq!(
                field_of(cross_sell_query(&pairs(&[("sku", "a"), ("limit", limit)])).unwrap_err()),
                "limit"
            );
        }
    }

    #[test]
    fn sql_holds_only_the_whitelisted_column() {
        for basis in [Basis::Sku, Basis::Category] {
            let sql = cross_sell_sql(basis);
            assert!(sql.contains(&format!("l.{} = ?1", basis.column())));
            assert!(!sql.contains('{'));
        }
    }

    #[test]
    fn association_measures_and_ranking() {
        // N = 10 customers, |A| = 4, |B| = 5, both = 2.
        let a = Association::new("b".into(), 2, 5, 4, 10);
        assert_eq!(round4(a.support), 0.2);
        assert_eq!(round4(a.confidence), 0.5);
        assert_eq!(round4(a.lift), 1.0);
        let ranked = rank(
            vec![
                Association::new("c".into(), 2, 8, 4, 10),
                Association::new("d".into(), 3, 9, 4, 10),
                a,
                Association::new("a".into(), 2, 5, 4, 10),
            ],
            3,
        );
        let names: Vec<&str> = ranked.iter().map(|x| x.item.as_str()).collect();
        assert_eq!(names, ["d", "a", "b"]);
    }

    #[test]
    fn ratios_round_to_four_places() {
        assert_eq!(ratio(1, 3), 0.3333);
        assert_eq!(ratio(2, 3), 0.6667);
        assert_eq!(ratio(1, 0), 0.0);
        assert_eq!(round4(1.23456), 1.2346);
    }

    #[test]
    fn freshness_is_within_the_max_age_either_way() {
        let now = timestamp::parse("2026-11-22T06:00:00Z").unwrap();
        let at = |offset: Duration| timestamp::format(now + offset);
        assert!(is_recent(&at(Duration::ZERO), now, RFM_MAX_AGE));
        assert!(is_recent(&at(-Duration::minutes(9)), now, RFM_MAX_AGE));
        assert!(!is_recent(&at(-Duration::minutes(10)), now, RFM_MAX_AGE));
        assert!(is_recent(&at(Duration::minutes(9)), now, RFM_MAX_AGE));
        assert!(!is_recent(&at(Duration::minutes(11)), now, RFM_MAX_AGE));
        assert!(!is_recent("not a time", now, RFM_MAX_AGE));
    }
}
