//! The shop's time zone: the one place that reads `shop_timezone`, holds
//! its default, and turns it into calendar boundaries — the start of a
//! shop day (segments' relative dates), the first instant of a shop month
//! (points valid "to the end of the month") and month keys in SQL (the
//! liability report). Everything that counts days or months in shop time
//! takes the offset parsed here (`Config::shop_offset`).
//!
//! A zone is a fixed offset: zones without daylight saving (Asia/Tokyo)
//! are exact as one, zones with it are refused rather than guessed.

use time::{Date, Month, OffsetDateTime, Time, UtcOffset};

/// The zone used when `shop_timezone` is not set.
pub const DEFAULT_ZONE: &str = "Asia/Tokyo";

/// [`DEFAULT_ZONE`] as an offset, for code that runs without settings
/// (unit tests, benches, the order hook until its component reads the
/// variable).
pub const DEFAULT: UtcOffset = match UtcOffset::from_hms(9, 0, 0) {
    Ok(offset) => offset,
    Err(_) => UtcOffset::UTC,
};

/// Parses `shop_timezone`: an IANA zone without daylight saving
/// (`Asia/Tokyo`, `UTC`) or an offset `±HH:MM` up to 14 hours.
pub fn parse(text: &str) -> Option<UtcOffset> {
    let known = [
        ("Asia/Tokyo", 9, 0),
        ("Asia/Seoul", 9, 0),
        ("Asia/Shanghai", 8, 0),
        ("Asia/Taipei", 8, 0),
        ("Asia/Hong_Kong", 8, 0),
        ("Asia/Singapore", 8, 0),
        ("Asia/Bangkok", 7, 0),
        ("Asia/Jakarta", 7, 0),
        ("Asia/Kolkata", 5, 30),
        ("UTC", 0, 0),
        ("Etc/UTC", 0, 0),
    ];
    if let Some((_, hours, minutes)) = known.iter().find(|(name, _, _)| *name == text) {
        return UtcOffset::from_hms(*hours, *minutes, 0).ok();
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (hours, minutes) = rest.split_once(':')?;
    let (hours, minutes): (i8, i8) = (hours.parse().ok()?, minutes.parse().ok()?);
    if !(0..=14).contains(&hours) || !(0..60).contains(&minutes) {
        return None;
    }
    UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()
}

/// The start (midnight, shop time) of the shop day `at` falls in, or
/// `None` at the ends of the representable range.
pub fn start_of_day(at: OffsetDateTime, offset: UtcOffset) -> Option<OffsetDateTime> {
    let local = at.checked_to_offset(offset)?;
    Some(local.date().with_time(Time::MIDNIGHT).assume_offset(offset))
}

/// The first instant, in UTC, of the shop month `months` after the one
/// `at` falls in (0: the start of `at`'s own month, 1: the next month's
/// first instant, i.e. the end of `at`'s month). `None` out of range.
pub fn month_start(at: OffsetDateTime, months: i64, offset: UtcOffset) -> Option<OffsetDateTime> {
    let local = at.checked_to_offset(offset)?;
    let index = i64::from(local.year())
        .checked_mul(12)?
        .checked_add(i64::from(u8::from(local.month())) - 1)?
        .checked_add(months)?;
    let year = i32::try_from(index.div_euclid(12)).ok()?;
    let month = Month::try_from(u8::try_from(index.rem_euclid(12) + 1).ok()?).ok()?;
    let first = Date::from_calendar_date(year, month, 1).ok()?;
    first
        .with_time(Time::MIDNIGHT)
        .assume_offset(offset)
        .checked_to_offset(UtcOffset::UTC)
}

/// The shop month `at` falls in, as `YYYY-MM`.
pub fn month_key(at: OffsetDateTime, offset: UtcOffset) -> Option<String> {
    let local = at.checked_to_offset(offset)?;
    Some(format!(
        "{:04}-{:02}",
        local.year(),
        u8::from(local.month())
    ))
}

/// `at` in shop time as `2026-11-22 07:05:00`, for CSV files: Excel (and
/// LibreOffice, Google Sheets) reads this shape as a date and time in
/// every locale, where an RFC 3339 string with `T`, fractions and an
/// offset stays text. The zone is not written, so the file's header and
/// the README say which it is; the fraction of a second is dropped.
pub fn spreadsheet(at: OffsetDateTime, offset: UtcOffset) -> Option<String> {
    let local = at.checked_to_offset(offset)?;
    Some(format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        local.year(),
        u8::from(local.month()),
        local.day(),
        local.hour(),
        local.minute(),
        local.second()
    ))
}

/// A SQLite date modifier (`'+32400 seconds'`) that moves a stored UTC
/// time into shop time, for `strftime` grouping in SQL.
pub fn sqlite_modifier(offset: UtcOffset) -> String {
    format!("{:+} seconds", offset.whole_seconds())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{datetime, offset};

    #[test]
    fn time_zones_are_fixed_offsets_or_refused() {
        assert_eq!(parse(DEFAULT_ZONE), Some(DEFAULT));
        assert_eq!(parse("Asia/Tokyo"), Some(offset!(+9)));
        assert_eq!(parse("Asia/Kolkata"), Some(offset!(+5:30)));
        assert_eq!(parse("UTC"), Some(UtcOffset::UTC));
        assert_eq!(parse("+00:00"), Some(UtcOffset::UTC));
        assert_eq!(parse("-03:00"), Some(offset!(-3)));
        assert_eq!(parse("-03:30"), Some(offset!(-3:30)));
        for bad in ["Europe/Berlin", "America/New_York", "+15:00", "9", "", "+9"] {
            assert_eq!(parse(bad), None, "case {bad:?}");
        }
    }

    #[test]
    fn days_and_months_follow_the_zone() {
        // 2026-11-30 23:30 in Tokyo is still 14:30 on the 30th in UTC and
        // 2026-12-01 00:30 in Tokyo is 15:30 on the 30th in UTC.
        let late = datetime!(2026-11-30 14:30 UTC);
        let after = datetime!(2026-11-30 15:30 UTC);
        let tokyo = offset!(+9);
        assert_eq!(
            start_of_day(after, tokyo),
            Some(datetime!(2026-12-01 00:00 +9))
        );
        assert_eq!(
            start_of_day(after, UtcOffset::UTC),
            Some(datetime!(2026-11-30 00:00 UTC))
        );
        assert_eq!(month_key(late, tokyo).as_deref(), Some("2026-11"));
        assert_eq!(month_key(after, tokyo).as_deref(), Some("2026-12"));
        assert_eq!(month_key(after, UtcOffset::UTC).as_deref(), Some("2026-11"));
        assert_eq!(
            month_start(late, 1, tokyo),
            Some(datetime!(2026-11-30 15:00 UTC))
        );
        assert_eq!(
            month_start(after, 1, UtcOffset::UTC),
            Some(datetime!(2026-12-01 00:00 UTC))
        );
        assert_eq!(
            month_start(after, 0, offset!(-5)),
            Some(datetime!(2026-11-01 05:00 UTC))
        );
        // Across years, both ways.
        assert_eq!(
            month_start(late, 14, tokyo),
            Some(datetime!(2028-01-01 00:00 +9))
        );
        assert_eq!(
            month_start(late, -11, tokyo),
            Some(datetime!(2025-12-01 00:00 +9))
        );
        assert_eq!(month_start(late, i64::MAX, tokyo), None);
        assert_eq!(sqlite_modifier(tokyo), "+32400 seconds");
        assert_eq!(sqlite_modifier(offset!(-3:30)), "-12600 seconds");
        assert_eq!(sqlite_modifier(UtcOffset::UTC), "+0 seconds");
    }

    #[test]
    fn spreadsheet_times_are_shop_local_without_zone_or_fraction() {
        // 22:05:30.5 UTC on the 21st is 07:05:30 on the 22nd in Tokyo.
        let at = datetime!(2026-11-21 22:05:30.5 UTC);
        assert_eq!(
            spreadsheet(at, offset!(+9)).as_deref(),
            Some("2026-11-22 07:05:30")
        );
        assert_eq!(
            spreadsheet(at, UtcOffset::UTC).as_deref(),
            Some("2026-11-21 22:05:30")
        );
        assert_eq!(
            spreadsheet(at, offset!(-3:30)).as_deref(),
            Some("2026-11-21 18:35:30")
        );
    }
}
