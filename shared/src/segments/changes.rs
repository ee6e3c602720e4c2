//! Delta sync of a saved segment (`GET /v1/segments/{id}/changes`): who
//! joined and who left since a token, for mail and ad tools that mirror
//! a segment.
//!
//! Membership is kept as versioned rows (`segment_members`: joined at a
//! version, left at a later one), so "member at version v" is defined for
//! every version, and each consumer's token is just the version it last
//! saw. A sync runs in three named steps, none of which evaluates the
//! segment under the write lock:
//!
//! 1. [`evaluate`]: in one read snapshot, the members now and the open
//!    membership rows; their difference is the joins and leaves.
//! 2. [`record`]: those joins and leaves under the next version, in short
//!    write transactions of at most [`WRITE_BATCH`] rows, each followed
//!    by a pause outside the lock as long as it held the lock (not counting
//!    its wait for it; `Db::yield_to_writers`); the version row moves last. Rows of a version not yet published change nothing for
//!    readers (membership at an earlier version ignores them), and a sync
//!    cut short is completed by the next one.
//! 3. [`list_page`]: the net change between the caller's version and the
//!    new one, by contact id, a page at a time; `next_cursor` continues the
//!    same listing without evaluating again.
//!
//! With `fields=` (the members' rules), `joined` and `left` hold member
//! objects instead of ids, read in one statement per page as they are
//! now, and each leaver says why it left ([`LeaveReason`]).
//!
//! Two syncs racing may both write the next version from what each saw;
//! a contact whose change one of them missed is corrected by the next
//! sync, as with any change made after a sync.

use super::compile::{Compiled, Env, LATEST_EMAIL_CONSENT, compile_in};
use super::members::{self, MemberField};
use crate::Ctx;
use crate::db::{read_snapshot, transaction};
use crate::error::ApiError;
use crate::http::{
    Request, Response, decode_cursor, encode_cursor, json_response, query_pairs, query_param,
};
use crate::ports::{Db, Kv};
use crate::timestamp;
use anyhow::Context as _;
use http::StatusCode;
use serde_json::{Value as Json, json};
use std::collections::HashMap;

/// Membership rows written per write transaction.
pub const WRITE_BATCH: usize = 2_000;
/// Ids per page of `joined` and `left` together: default and maximum.
pub const PAGE_DEFAULT: usize = 1_000;
pub const PAGE_MAX: usize = 10_000;

/// Why a contact left a segment, as it stands when the change is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The contact was erased: a mirror should delete its copy.
    Erased,
    /// An email segment's member withdrew email consent (and would match
    /// otherwise): a mail tool should mark the address unsubscribed.
    ConsentWithdrawn,
    /// The definition no longer matches (a tag removed, an order
    /// refunded, time passing; also a consent condition the definition
    /// names itself).
    NoLongerMatching,
}

impl LeaveReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Erased => "erased",
            LeaveReason::ConsentWithdrawn => "consent_withdrawn",
            LeaveReason::NoLongerMatching => "no_longer_matching",
        }
    }
}

/// `GET /v1/segments/{id}/changes?since=&limit=[&fields=]` or
/// `?cursor=&limit=[&fields=]`. `may_export` allows personal fields.
pub async fn changes<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    id: &str,
    request: &Request,
    may_export: impl FnOnce() -> Result<(), ApiError>,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(request, &["since", "cursor", "limit", "fields"])?;
    let limit = crate::http::limit_between(&pairs, PAGE_DEFAULT, PAGE_MAX)?;
    let fields = match query_param(&pairs, "fields") {
        Some(text) => Some(super::api::allowed_fields(Some(text), may_export)?),
        None => None,
    };
    let (segment, compiled, env, _) = super::api::compiled_segment(ctx, id).await?;
    let segment_id = segment["id"].as_str().unwrap_or_default().to_owned();
    let (since, version, after) = match query_param(&pairs, "cursor") {
        Some(cursor) => {
            if query_param(&pairs, "since").is_some() {
                return Err(ApiError::invalid(
                    "cursor",
                    "give `since` or `cursor`, not both",
                ));
            }
            parse_cursor(&segment_id, cursor)?
        }
        None => {
            let since = parse_since(&segment_id, query_param(&pairs, "since"))?;
            let version = sync(ctx.db, &segment_id, &compiled, since, env.now).await?;
            (since, version, String::new())
        }
    };
    let (joined, left, last) =
        list_page(ctx.db, &segment_id, since, version, &after, limit).await?;
    let next_cursor = last
        .map(|last| encode_cursor(&[&segment_id, &since.to_string(), &version.to_string(), &last]));
    let (joined, left) = match &fields {
        Some(fields) => with_fields(ctx, &segment, &env, fields, &joined, &left).await?,
        None => (json!(joined), json!(left)),
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "segment_id": segment_id,
            "joined": joined,
            "left": left,
            "next_cursor": next_cursor,
            "token": encode_cursor(&[&segment_id, &version.to_string()]),
            "as_of": timestamp::format(env.now),
        }),
    ))
}

/// The page's joiners and leavers as member objects with `fields`, each
/// leaver with its `reason`; one statement for the page. An erased
/// contact has only its id and reason: its other fields are null.
async fn with_fields<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    segment: &Json,
    env: &Env,
    fields: &[MemberField],
    joined: &[String],
    left: &[String],
) -> Result<(Json, Json), ApiError> {
    // Whether a leaver of an email segment still matches its definition
    // is what tells a withdrawal from a change of the data.
    let (extra, extra_params) = if segment["purpose"] == "email" && !left.is_empty() {
        let node = super::definition::parse_in(&segment["definition"], ctx.config.shop_offset)?;
        let base = compile_in(&node, env, false, ctx.config.shop_offset);
        (
            format!(
                ", c.erased_at, {LATEST_EMAIL_CONSENT} AS email_consent, \
                 COALESCE(({}), 0) AS matches_definition",
                base.sql
            ),
            base.params,
        )
    } else {
        (
            ", c.erased_at, NULL AS email_consent, 0 AS matches_definition".to_owned(),
            Vec::new(),
        )
    };
    let ids: Vec<String> = joined.iter().chain(left).cloned().collect();
    let rows = members::by_ids(ctx.db, fields, &ids, env.now, &extra, extra_params).await?;
    let mut found: HashMap<String, (Json, LeaveReason)> = HashMap::new();
    for row in rows.iter() {
        let id = row.str("id")?.to_owned();
        let (member, reason) = if row.opt_str("erased_at")?.is_some() {
            (members::erased(&id, fields), LeaveReason::Erased)
        } else {
            let withdrawn = row.opt_str("email_consent")? == Some("withdrawn")
                && row.i64("matches_definition")? != 0;
            let reason = if withdrawn {
                LeaveReason::ConsentWithdrawn
            } else {
                LeaveReason::NoLongerMatching
            };
            (members::to_json(row, fields, ctx.config)?, reason)
        };
        found.insert(id, (member, reason));
    }
    let mut take = |id: &String| -> Result<(Json, LeaveReason), ApiError> {
        match found.remove(id) {
            Some(entry) => Ok(entry),
            // Contacts are never deleted (erasure keeps a tombstone).
            None => Ok((members::erased(id, fields), LeaveReason::Erased)),
        }
    };
    let mut joined_members = Vec::with_capacity(joined.len());
    for id in joined {
        joined_members.push(take(id)?.0);
    }
    let mut left_members = Vec::with_capacity(left.len());
    for id in left {
        let (mut member, reason) = take(id)?;
        if let Json::Object(object) = &mut member {
            object.insert("reason".to_owned(), reason.as_str().into());
        }
        left_members.push(member);
    }
    Ok((Json::Array(joined_members), Json::Array(left_members)))
}

fn parse_since(segment_id: &str, token: Option<&str>) -> Result<i64, ApiError> {
    let Some(token) = token else { return Ok(0) };
    let bad = || ApiError::invalid("since", "not a token this API returned for this segment");
    let parts = decode_cursor(token, 2)
        .map_err(|_| ApiError::invalid("since", "not a token this API returned"))?;
    match (parts[0] == segment_id, parts[1].parse::<i64>()) {
        (true, Ok(version)) if version >= 0 => Ok(version),
        _ => Err(bad()),
    }
}

fn parse_cursor(segment_id: &str, cursor: &str) -> Result<(i64, i64, String), ApiError> {
    let bad = || ApiError::invalid("cursor", "not a cursor this API returned for this segment");
    let parts = decode_cursor(cursor, 4).map_err(|_| bad())?;
    match (
        parts[0] == segment_id,
        parts[1].parse::<i64>(),
        parts[2].parse::<i64>(),
    ) {
        (true, Ok(since), Ok(version)) if 0 <= since && since <= version => {
            Ok((since, version, parts[3].clone()))
        }
        _ => Err(bad()),
    }
}

async fn current_version(db: &impl Db, segment_id: &str) -> anyhow::Result<i64> {
    let rows = db
        .execute(
            "SELECT version FROM segment_versions WHERE segment_id = ?1",
            &[segment_id.into()],
        )
        .await
        .context("failed to read the segment version")?;
    Ok(rows
        .first()
        .map(|r| r.i64("version"))
        .transpose()?
        .unwrap_or(0))
}

/// Brings the segment's membership up to date and returns the version
/// that describes it.
async fn sync(
    db: &impl Db,
    segment_id: &str,
    compiled: &Compiled,
    since: i64,
    now: time::OffsetDateTime,
) -> Result<i64, ApiError> {
    let current = current_version(db, segment_id).await?;
    if since > current {
        return Err(ApiError::invalid("since", "a token from the future"));
    }
    let (joins, leaves) = evaluate(db, segment_id, compiled).await?;
    if joins.is_empty() && leaves.is_empty() && current > 0 {
        return Ok(current);
    }
    let next = current + 1;
    record(db, segment_id, next, &joins, &leaves, now).await?;
    Ok(next)
}

/// Step 1: the contacts to record as joined and as left, from one read
/// snapshot (no write lock).
async fn evaluate(
    db: &impl Db,
    segment_id: &str,
    compiled: &Compiled,
) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let (now, open) = read_snapshot(
        db,
        async || -> anyhow::Result<(Vec<String>, Vec<String>)> {
            let now = db
                .execute(
                    &format!(
                        "SELECT c.id FROM contacts c WHERE {} ORDER BY c.id",
                        compiled.sql
                    ),
                    &compiled.params,
                )
                .await
                .context("failed to evaluate a segment")?;
            let open = db
                .execute(
                    "SELECT contact_id FROM segment_members
                 WHERE segment_id = ?1 AND left_version IS NULL ORDER BY contact_id",
                    &[segment_id.into()],
                )
                .await
                .context("failed to read the segment's members")?;
            let ids = |rows: &crate::ports::Rows, column: &str| -> anyhow::Result<Vec<String>> {
                rows.iter()
                    .map(|r| r.str(column).map(str::to_owned))
                    .collect()
            };
            Ok((ids(&now, "id")?, ids(&open, "contact_id")?))
        },
    )
    .await?;
    Ok(sorted_difference(&now, &open))
}

/// (in `now` but not `open`, in `open` but not `now`), both sorted.
fn sorted_difference(now: &[String], open: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < now.len() || j < open.len() {
        match (now.get(i), open.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                joins.push(a.clone());
                i += 1;
            }
            (Some(_), Some(b)) => {
                leaves.push(b.clone());
                j += 1;
            }
            (Some(a), None) => {
                joins.push(a.clone());
                i += 1;
            }
            (None, Some(b)) => {
                leaves.push(b.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (joins, leaves)
}

/// Step 2: the joins and leaves under `version`, in short transactions;
/// the version row moves in the last one.
async fn record(
    db: &impl Db,
    segment_id: &str,
    version: i64,
    joins: &[String],
    leaves: &[String],
    now: time::OffsetDateTime,
) -> anyhow::Result<()> {
    for batch in joins.chunks(WRITE_BATCH) {
        let ids = serde_json::to_string(batch).context("ids")?;
        let held = std::cell::Cell::new(std::time::Duration::ZERO);
        transaction(db, async || -> anyhow::Result<()> {
            let locked = std::time::Instant::now();
            db.execute(
                "INSERT INTO segment_members (segment_id, contact_id, joined_version)
                 SELECT ?1, j.value, ?2 FROM json_each(?3) j
                 WHERE NOT EXISTS (SELECT 1 FROM segment_members m WHERE m.segment_id = ?1
                                   AND m.contact_id = j.value AND m.left_version IS NULL)
                 ON CONFLICT DO NOTHING",
                &[segment_id.into(), version.into(), ids.into()],
            )
            .await
            .context("failed to record joins")?;
            held.set(locked.elapsed());
            Ok(())
        })
        .await?;
        db.yield_to_writers(held.get()).await;
    }
    for batch in leaves.chunks(WRITE_BATCH) {
        let ids = serde_json::to_string(batch).context("ids")?;
        let held = std::cell::Cell::new(std::time::Duration::ZERO);
        transaction(db, async || -> anyhow::Result<()> {
            let locked = std::time::Instant::now();
            db.execute(
                "UPDATE segment_members SET left_version = ?2
                 WHERE segment_id = ?1 AND left_version IS NULL
                   AND contact_id IN (SELECT value FROM json_each(?3))",
                &[segment_id.into(), version.into(), ids.into()],
            )
            .await
            .context("failed to record leaves")?;
            held.set(locked.elapsed());
            Ok(())
        })
        .await?;
        db.yield_to_writers(held.get()).await;
    }
    transaction(db, async || -> anyhow::Result<()> {
        db.execute(
            "INSERT INTO segment_versions (segment_id, version, synced_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (segment_id) DO UPDATE SET
                 version = max(version, excluded.version), synced_at = excluded.synced_at",
            &[
                segment_id.into(),
                version.into(),
                timestamp::format(now).into(),
            ],
        )
        .await
        .context("failed to store the segment version")?;
        Ok(())
    })
    .await
}

/// Step 3: contacts after `after` whose membership differs between
/// versions `since` and `version`, at most `limit`, split into joined and
/// left; and the last id if more follow.
async fn list_page(
    db: &impl Db,
    segment_id: &str,
    since: i64,
    version: i64,
    after: &str,
    limit: usize,
) -> anyhow::Result<(Vec<String>, Vec<String>, Option<String>)> {
    let member_at = |v: &str| {
        format!(
            "EXISTS (SELECT 1 FROM segment_members p WHERE p.segment_id = ?1 AND p.contact_id = c.contact_id
                     AND p.joined_version <= {v} AND (p.left_version IS NULL OR p.left_version > {v}))"
        )
    };
    let rows = db
        .execute(
            &format!(
                "SELECT contact_id, now_member FROM (
                     SELECT c.contact_id, {was} AS was_member, {is} AS now_member
                     FROM (SELECT DISTINCT contact_id FROM segment_members
                           WHERE segment_id = ?1 AND contact_id > ?4
                             AND ((joined_version > ?2 AND joined_version <= ?3)
                                  OR (left_version > ?2 AND left_version <= ?3))) c)
                 WHERE was_member <> now_member
                 ORDER BY contact_id LIMIT ?5",
                was = member_at("?2"),
                is = member_at("?3"),
            ),
            &[
                segment_id.into(),
                since.into(),
                version.into(),
                after.into(),
                i64::try_from(limit + 1).unwrap_or(i64::MAX).into(),
            ],
        )
        .await
        .context("failed to list membership changes")?;
    let (mut joined, mut left, mut last) = (Vec::new(), Vec::new(), None);
    for (index, row) in rows.iter().enumerate() {
        if index == limit {
            last = rows
                .iter()
                .nth(limit - 1)
                .map(|r| r.str("contact_id").map(str::to_owned))
                .transpose()?;
            break;
        }
        let id = row.str("contact_id")?.to_owned();
        if row.i64("now_member")? == 1 {
            joined.push(id);
        } else {
            left.push(id);
        }
    }
    Ok((joined, left, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_difference_of_two_sorted_lists() {
        let (joins, leaves) =
            sorted_difference(&ids(&["a", "c", "d", "f"]), &ids(&["b", "c", "f", "g"]));
        assert_eq!(joins, ids(&["a", "d"]));
        assert_eq!(leaves, ids(&["b", "g"]));
        assert_eq!(sorted_difference(&[], &ids(&["x"])), (vec![], ids(&["x"])));
    }
}
