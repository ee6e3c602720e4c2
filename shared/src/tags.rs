//! Tags: short labels staff and forms put on contacts for segmentation.

use crate::error::ApiError;
use crate::ports::Db;
use crate::text::has_control_chars;
use crate::timeline::{self, Entry, Kind};
use anyhow::Context as _;
use serde_json::json;
use time::OffsetDateTime;

/// A tag that parsed: trimmed, 1 to 64 characters, no `/` or control
/// characters (it travels in URL paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(String);

impl Tag {
    pub fn parse(input: &str) -> Result<Tag, ApiError> {
        let tag = input.trim();
        if tag.is_empty() || tag.chars().count() > 64 || tag.contains('/') || has_control_chars(tag)
        {
            return Err(ApiError::invalid(
                "tag",
                "1 to 64 characters, without `/` or control characters",
            ));
        }
        Ok(Tag(tag.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Adds `tag`; true when it was not there before.
pub async fn add(
    db: &impl Db,
    contact_id: &str,
    tag: &Tag,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<bool> {
    let rows = db
        .execute(
            "INSERT INTO contact_tags (contact_id, tag, created_at, created_by) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING RETURNING tag",
            &[contact_id.into(), tag.as_str().into(), crate::timestamp::format(now).into(), actor.into()],
        )
        .await
        .context("failed to add a tag")?;
    let added = !rows.is_empty();
    if added {
        let entry = Entry::event(Kind::TagAdded, Some(json!({ "tag": tag.as_str() })), now);
        timeline::append(db, contact_id, &entry, actor, now).await?;
    }
    Ok(added)
}

/// Removes `tag`; true when it was there.
pub async fn remove(
    db: &impl Db,
    contact_id: &str,
    tag: &Tag,
    actor: &str,
    now: OffsetDateTime,
) -> anyhow::Result<bool> {
    let rows = db
        .execute(
            "DELETE FROM contact_tags WHERE contact_id = ?1 AND tag = ?2 RETURNING tag",
            &[contact_id.into(), tag.as_str().into()],
        )
        .await
        .context("failed to remove a tag")?;
    let removed = !rows.is_empty();
    if removed {
        let entry = Entry::event(Kind::TagRemoved, Some(json!({ "tag": tag.as_str() })), now);
        timeline::append(db, contact_id, &entry, actor, now).await?;
    }
    Ok(removed)
}
