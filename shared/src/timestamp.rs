//! Timestamps as stored and shown: RFC 3339 in UTC with fixed-width
//! microseconds, so that stored text sorts in time order.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// Formats `at` as `2026-11-22T06:00:00.000000Z`.
pub fn format(at: OffsetDateTime) -> String {
    at.to_offset(UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .expect("a UTC date-time always formats")
}

/// Parses any RFC 3339 timestamp (any offset) into UTC; `None` for text
/// that is not one, or whose UTC time falls outside years 1..=9999.
pub fn parse(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text.trim(), &Rfc3339)
        .ok()
        .and_then(|t| t.checked_to_offset(UtcOffset::UTC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_fixed_width_utc_and_reads_any_offset() {
        let t = parse("2026-11-22T15:04:05+09:00").unwrap();
        assert_eq!(format(t), "2026-11-22T06:04:05.000000Z");
        assert!(parse("2026-11-22").is_none());
        assert!(parse("yesterday").is_none());
        assert!(
            parse("9999-12-31T23:59:59-09:00").is_none(),
            "past year 9999 in UTC"
        );
    }
}
