//! Timestamps as stored and shown: RFC 3339 in UTC with fixed-width
//! microseconds, so that stored text sorts in time order.

use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use time::{OffsetDateTime, UtcOffset};

/// The earliest moment Kizuna stores or compares with stored text.
pub const MIN: OffsetDateTime = datetime!(0001-01-01 00:00:00 UTC);
/// The latest: the last whole microsecond of year 9999, in UTC. Between
/// the two, [`format`] gives fixed-width text that sorts in time order.
pub const MAX: OffsetDateTime = datetime!(9999-12-31 23:59:59.999_999 UTC);

/// Whether `at` lies within [`MIN`]..=[`MAX`].
pub fn in_range(at: OffsetDateTime) -> bool {
    (MIN..=MAX).contains(&at)
}

/// Formats `at` as `2026-11-22T06:00:00.000000Z`. Written out rather
/// than through `time`'s format descriptions, whose formatting code is
/// some 20 KB of every component (each must stay under 1,000,000
/// bytes: see `.ci/run`).
pub fn format(at: OffsetDateTime) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// Formats `at` in `offset` as `2026-11-22T15:00:00.000000+09:00`: the
/// same instant as [`format`], for a caller that asked for the shop's
/// zone (`?tz=shop`).
pub fn format_in(at: OffsetDateTime, offset: UtcOffset) -> Option<String> {
    if offset == UtcOffset::UTC {
        return Some(format(at));
    }
    let local = at.checked_to_offset(offset)?;
    let (hours, minutes, _) = offset.as_hms();
    let sign = if offset.is_negative() { '-' } else { '+' };
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}{sign}{:02}:{:02}",
        local.year(),
        u8::from(local.month()),
        local.day(),
        local.hour(),
        local.minute(),
        local.second(),
        local.microsecond(),
        hours.unsigned_abs(),
        minutes.unsigned_abs()
    ))
}

/// Whether `text` has exactly the shape [`format`] writes (27 characters,
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`): how an answer's timestamps are told
/// apart from other text without a list of field names.
pub fn is_stored_form(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 27
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            4 | 7 => *byte == b'-',
            10 => *byte == b'T',
            13 | 16 => *byte == b':',
            19 => *byte == b'.',
            26 => *byte == b'Z',
            _ => byte.is_ascii_digit(),
        })
}

/// Parses any RFC 3339 timestamp (any offset) into UTC; `None` for text
/// that is not one, or whose UTC time falls outside [`MIN`]..=[`MAX`]
/// (years 1..=9999), which stored text could not keep in order.
pub fn parse(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text.trim(), &Rfc3339)
        .ok()
        .and_then(|t| t.checked_to_offset(UtcOffset::UTC))
        .filter(|t| in_range(*t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_fixed_width_utc_and_reads_any_offset() {
        let t = parse("2026-11-22T15:04:05+09:00").unwrap();
        assert_eq!(format(t), "2026-11-22T06:04:05.000000Z");
        let t = parse("2026-01-02T03:04:05.123456789Z").unwrap();
        assert_eq!(
            format(t),
            "2026-01-02T03:04:05.123456Z",
            "microseconds, truncated"
        );
        assert!(parse("2026-11-22").is_none());
        assert!(parse("yesterday").is_none());
        assert!(
            parse("9999-12-31T23:59:59-09:00").is_none(),
            "past year 9999 in UTC"
        );
    }

    #[test]
    fn formats_in_an_offset_and_knows_its_own_shape() {
        let t = parse("2026-11-21T22:05:00Z").unwrap();
        let tokyo = UtcOffset::from_hms(9, 0, 0).unwrap();
        assert_eq!(
            format_in(t, tokyo).as_deref(),
            Some("2026-11-22T07:05:00.000000+09:00")
        );
        let kolkata_west = UtcOffset::from_hms(-5, -30, 0).unwrap();
        assert_eq!(
            format_in(t, kolkata_west).as_deref(),
            Some("2026-11-21T16:35:00.000000-05:30")
        );
        assert_eq!(format_in(t, UtcOffset::UTC), Some(format(t)));
        assert_eq!(parse(&format_in(t, tokyo).unwrap()), Some(t));
        assert!(is_stored_form(&format(t)));
        assert!(is_stored_form(&format(MAX)));
        for other in [
            "2026-11-22T07:05:00.000000+09:00",
            "2026-11-22T07:05:00Z",
            "2026-11-22",
            "2026-11-22T07:05:00.00000aZ",
            "2026-11-22 07:05:00.000000Z",
            "",
        ] {
            assert!(!is_stored_form(other), "{other}");
        }
    }

    #[test]
    fn only_years_1_to_9999_in_utc_parse() {
        for (text, want) in [
            ("0001-01-01T00:00:00Z", Some(MIN)),
            ("9999-12-31T23:59:59.999999Z", Some(MAX)),
            ("0000-12-31T23:59:59.999999Z", None),
            ("0001-01-01T08:59:59+09:00", None),
            ("0001-01-01T00:00:00+23:59", None),
            ("0000-01-01T00:00:00-23:59", None),
            ("9999-12-31T23:59:59.9999999Z", None),
            ("9999-12-31T23:59:59-23:59", None),
        ] {
            assert_eq!(parse(text), want, "{text}");
        }
        assert_eq!(format(MIN), "0001-01-01T00:00:00.000000Z");
        assert_eq!(format(MAX), "9999-12-31T23:59:59.999999Z");
    }
}
