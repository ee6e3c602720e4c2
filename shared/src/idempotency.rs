//! Replaying a retried write: the first answer to an `Idempotency-Key` is
//! saved in the same transaction as its effect; a repeat with the same
//! body gets that answer back and changes nothing, a repeat with another
//! body is refused (422).

use crate::Ctx;
use crate::auth::Actor;
use crate::db::transaction;
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::ports::{Db, Kv};
use crate::timestamp;
use anyhow::Context as _;
use bytes::Bytes;
use http::HeaderMap;
use http::StatusCode;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// A key a client sent: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
        let Some(value) = headers.get("idempotency-key") else {
            return Ok(None);
        };
        let text = value.to_str().unwrap_or("").trim();
        if text.is_empty() || text.len() > 255 || !text.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                "1 to 255 visible ASCII characters",
            ));
        }
        Ok(Some(IdempotencyKey(text.to_owned())))
    }
}

/// What to do with a request that carries a key.
/// The request hash of a saved answer whose contact was erased: the
/// digest of the request (which held personal data) is gone, and every
/// retry with the key gets `ERASED_ANSWER`.
pub const ERASED_HASH: &str = "erased";
pub const ERASED_STATUS: u16 = 410;

/// What a retry after erasure is told (a problem document).
pub fn erased_answer() -> String {
    serde_json::json!({
        "type": "https://kizuna.dev/problems/erased",
        "title": "Gone",
        "status": ERASED_STATUS,
        "detail": "the contact this request created or changed was erased; it is not created again",
    })
    .to_string()
}

pub enum NextAction {
    Start,
    Replay { status: u16, body: String },
}

/// Digest of what makes two requests "the same": method, path and body.
pub fn request_hash(method: &str, path: &str, body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hex::encode(hasher.finalize())
}

/// Looks the key up inside the caller's transaction.
pub async fn check(
    db: &impl Db,
    actor: &str,
    key: &IdempotencyKey,
    hash: &str,
) -> Result<NextAction, ApiError> {
    let rows = db
        .execute(
            "SELECT request_hash, response_status, response_body FROM idempotency_keys
             WHERE actor = ?1 AND key = ?2",
            &[actor.into(), key.0.as_str().into()],
        )
        .await
        .context("failed to read an idempotency key")?;
    let Some(row) = rows.first() else {
        return Ok(NextAction::Start);
    };
    // The contact this key created or changed was erased: a retry must
    // not bring the person back, whatever it carries.
    if row.str("request_hash")? == ERASED_HASH {
        return Ok(NextAction::Replay {
            status: u16::try_from(row.i64("response_status")?).context("stored status")?,
            body: row.str("response_body")?.to_owned(),
        });
    }
    if row.str("request_hash")? != hash {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "this key was already used for a different request",
        ));
    }
    Ok(NextAction::Replay {
        status: u16::try_from(row.i64("response_status")?).context("stored status")?,
        body: row.str("response_body")?.to_owned(),
    })
}

/// Saves the answer, in the same transaction as the effect.
#[allow(clippy::too_many_arguments)]
pub async fn save(
    db: &impl Db,
    actor: &str,
    key: &IdempotencyKey,
    hash: &str,
    status: u16,
    body: &str,
    contact_id: Option<&str>,
    now: &str,
) -> anyhow::Result<()> {
    db.execute(
        "INSERT INTO idempotency_keys (actor, key, request_hash, response_status, response_body, contact_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        &[
            actor.into(),
            key.0.as_str().into(),
            hash.into(),
            i64::from(status).into(),
            body.into(),
            contact_id.into(),
            now.into(),
        ],
    )
    .await
    .context("failed to save an idempotency key")?;
    Ok(())
}

/// The answer of a write, before it is saved for replays.
pub struct WriteAnswer {
    pub status: StatusCode,
    pub body: Json,
    pub contact_id: Option<String>,
}

/// Runs `work` in one transaction, replaying a saved answer when the
/// request repeats an `Idempotency-Key`.
pub async fn write<D: Db, K: Kv>(
    ctx: &Ctx<'_, D, K>,
    actor: &Actor,
    request: &Request,
    work: impl AsyncFnOnce() -> Result<WriteAnswer, ApiError>,
) -> Result<Response, ApiError> {
    let key = IdempotencyKey::from_headers(request.headers())?;
    let hash = request_hash(
        request.method().as_str(),
        request.uri().path(),
        request.body(),
    );
    let actor_label = actor.label();
    let (status, body) = transaction(
        ctx.db,
        async || -> Result<(StatusCode, String), ApiError> {
            if let Some(key) = &key
                && let NextAction::Replay { status, body } =
                    check(ctx.db, &actor_label, key, &hash).await?
            {
                return Ok((StatusCode::from_u16(status).context("stored status")?, body));
            }
            let answer = work().await?;
            let body = answer.body.to_string();
            if let Some(key) = &key {
                let now = timestamp::format(ctx.clock.now());
                save(
                    ctx.db,
                    &actor_label,
                    key,
                    &hash,
                    answer.status.as_u16(),
                    &body,
                    answer.contact_id.as_deref(),
                    &now,
                )
                .await?;
            }
            Ok((answer.status, body))
        },
    )
    .await?;
    let content_type = if status.as_u16() == ERASED_STATUS {
        "application/problem+json"
    } else {
        "application/json"
    };
    Ok(http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Bytes::from(body))
        .expect("static headers are valid"))
}
