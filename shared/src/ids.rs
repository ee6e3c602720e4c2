//! Identifiers: UUID v7 strings, time-ordered so that keyset pagination
//! by id is also pagination by creation time.

use std::sync::Mutex;
use time::OffsetDateTime;
use uuid::{ContextV7, Timestamp, Uuid};

/// Keeps ids made within one millisecond in the order they were made, so
/// that two timeline entries of one request never swap places.
static CONTEXT: Mutex<ContextV7> = Mutex::new(ContextV7::new());

/// A new UUID v7 stamped with `now` (from the `Clock`, so tests control it).
pub fn new_id(now: OffsetDateTime) -> String {
    let nanos = now.unix_timestamp_nanos();
    let seconds = u64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(0);
    let subsec = u32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0);
    Uuid::new_v7(Timestamp::from_unix(&CONTEXT, seconds, subsec)).to_string()
}

/// A contact's id. Exists only in canonical, hyphenated lower-case form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContactId(String);

impl ContactId {
    /// Parses a path segment; anything that is not a UUID is not an id.
    pub fn parse(text: &str) -> Option<ContactId> {
        Uuid::try_parse(text)
            .ok()
            .map(|u| ContactId(u.hyphenated().to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ContactId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_parse_canonically() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let a = new_id(t);
        let b = new_id(t + time::Duration::milliseconds(1));
        assert!(a < b);
        let same: Vec<String> = (0..100).map(|_| new_id(t)).collect();
        assert!(
            same.windows(2).all(|w| w[0] < w[1]),
            "ids of one instant keep their order"
        );
        let upper = a.to_uppercase();
        assert_eq!(ContactId::parse(&upper).unwrap().as_str(), a);
        assert!(ContactId::parse("1 OR 1=1").is_none());
    }
}
