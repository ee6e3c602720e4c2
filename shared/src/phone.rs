//! Phone number normalisation: turns what people type ("090-1234-5678",
//! "+81 (0)90 1234 5678", full-width digits) into one canonical E.164 string,
//! so contacts can be deduplicated and searched by phone. It is hand-written
//! rather than built on the `phonenumber` crate because that crate adds about
//! 1.9 MB to the wasm component (the budget is 2 MB in total) and re-parses its
//! metadata on every request, since Spin instantiates per request. We only need
//! a handful of regions, validated precisely for JP and by length elsewhere.

use std::fmt;

/// Longer input is rejected before any work: no real number gets near this,
/// even with separators, and it bounds the cost of hostile input.
const MAX_INPUT_CHARS: usize = 64;

/// E.164 allows at most 15 digits; fewer than 8 is not a dialable number.
const E164_MIN_DIGITS: usize = 8;
const E164_MAX_DIGITS: usize = 15;

/// A phone number in E.164 form (`+819012345678`). A value that exists is valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

impl Phone {
    /// Normalises `input` to E.164. Numbers without an international prefix
    /// (`+`, `00`, or the region's own such as JP `010`) are read as national
    /// numbers of `default_region`.
    pub fn parse(input: &str, default_region: Region) -> Result<Phone, PhoneError> {
        let (plus, digits) = scan(input)?;
        if digits.is_empty() {
            return Err(if plus {
                PhoneError::TooShort
            } else {
                PhoneError::Empty
            });
        }
        let international = if plus {
            Some(digits.as_str())
        } else {
            default_region.strip_international_prefix(&digits)
        };
        match international {
            Some(rest) => parse_international(rest, default_region),
            None => parse_national(&digits, default_region),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Digits only, no '+' (e.g. for search terms).
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    /// A Japanese number as written in Japan (`090-1234-5678`,
    /// `03-1234-5678`, `0120-123-456`); `None` for other countries.
    ///
    /// Mobile, IP and M2M numbers, free dial, navi dial and the 2-digit
    /// area codes of Tokyo and Osaka are grouped exactly. Other
    /// geographic numbers are grouped 3-3-4, the shape of the large
    /// cities' area codes (011, 045, 052, 092…): placing the hyphen after
    /// a 4- or 5-digit area code (0467, 01267) needs the ministry's table
    /// of about 600 codes, which is not worth its size here. The digits
    /// are always exact, so the number dials the same either way.
    pub fn japanese_national(&self) -> Option<String> {
        let nsn = self.0.strip_prefix("+81")?;
        let (head, middle) = match (nsn.len(), nsn.as_bytes().first()?) {
            (10, _) if nsn.starts_with("800") => (3, 3),
            (10, _) => (2, 4),
            (9, _)
                if ["120", "570", "990", "180"]
                    .iter()
                    .any(|p| nsn.starts_with(p)) =>
            {
                (3, 3)
            }
            (9, b'3' | b'6') => (1, 4),
            (9, _) => (2, 3),
            _ => return None,
        };
        let (area, rest) = nsn.split_at(head);
        let (exchange, line) = rest.split_at(middle);
        Some(format!("0{area}-{exchange}-{line}"))
    }
}

impl AsRef<str> for Phone {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a phone number or region code was rejected. The messages are shown to
/// API users, so they never repeat the input (it may be personal data or junk).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("phone number is empty")]
    Empty,
    #[error(
        "phone number may contain only digits, spaces and the separators - . ( ) /, \
         with an optional leading +"
    )]
    InvalidCharacters,
    #[error("'+' may appear only once, at the start of a phone number")]
    MisplacedPlus,
    #[error("phone number has too few digits")]
    TooShort,
    #[error("phone number is too long")]
    TooLong,
    #[error("phone number has an invalid country code")]
    InvalidCountryCode,
    #[error("phone number is not a valid {0} number")]
    InvalidForRegion(Region),
    /// Holds the rejected code for logs; the message deliberately omits it.
    #[error("unknown region code; expected an ISO 3166-1 alpha-2 code such as JP or US")]
    UnknownRegion(String),
}

/// A region whose numbering plan we know. The variants are ISO 3166-1 alpha-2
/// codes, spelled as the standard writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    JP,
    US,
    CA,
    GB,
    KR,
    TW,
    CN,
    HK,
    SG,
    AU,
    DE,
    FR,
}

/// What a region's national numbers look like once written without separators.
struct Plan {
    /// Dialled before a national number inside the country and dropped after
    /// the country code.
    trunk: Option<char>,
    /// JP and most trunk-'0' countries always write the trunk prefix, so a
    /// national number without it is a mistake (often a foreign number missing
    /// its '+'). NANP's '1' and China's '0' (mobiles never take it) are optional.
    trunk_required: bool,
    /// Length range of the national significant number.
    nsn_len: (usize, usize),
}

impl Region {
    /// US precedes CA so that a foreign "+1" number is attributed to US when
    /// the default region does not settle it.
    const ALL: [Region; 12] = [
        Region::JP,
        Region::US,
        Region::CA,
        Region::GB,
        Region::KR,
        Region::TW,
        Region::CN,
        Region::HK,
        Region::SG,
        Region::AU,
        Region::DE,
        Region::FR,
    ];

    /// Parses an ISO 3166-1 alpha-2 code, case-insensitive ("jp", "JP").
    pub fn parse(code: &str) -> Result<Region, PhoneError> {
        Self::ALL
            .into_iter()
            .find(|region| region.as_str().eq_ignore_ascii_case(code))
            .ok_or_else(|| PhoneError::UnknownRegion(code.to_owned()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Region::JP => "JP",
            Region::US => "US",
            Region::CA => "CA",
            Region::GB => "GB",
            Region::KR => "KR",
            Region::TW => "TW",
            Region::CN => "CN",
            Region::HK => "HK",
            Region::SG => "SG",
            Region::AU => "AU",
            Region::DE => "DE",
            Region::FR => "FR",
        }
    }

    /// The E.164 country calling code, without '+' ("81").
    pub fn country_code(self) -> &'static str {
        match self {
            Region::JP => "81",
            Region::US | Region::CA => "1",
            Region::GB => "44",
            Region::KR => "82",
            Region::TW => "886",
            Region::CN => "86",
            Region::HK => "852",
            Region::SG => "65",
            Region::AU => "61",
            Region::DE => "49",
            Region::FR => "33",
        }
    }

    // The ranges are deliberately loose outside JP: they catch typos and junk
    // without encoding every country's allocation table.
    fn plan(self) -> Plan {
        let (trunk, trunk_required, nsn_len) = match self {
            // JP's 9-vs-10 split depends on the prefix; see `validate_jp`.
            Region::JP => (Some('0'), true, (9, 10)),
            Region::US | Region::CA => (Some('1'), false, (10, 10)),
            Region::GB => (Some('0'), true, (9, 10)),
            Region::KR => (Some('0'), true, (8, 10)),
            Region::TW => (Some('0'), true, (8, 9)),
            Region::CN => (Some('0'), false, (9, 11)),
            Region::HK | Region::SG => (None, false, (8, 8)),
            Region::AU | Region::FR => (Some('0'), true, (9, 9)),
            Region::DE => (Some('0'), true, (6, 13)),
        };
        Plan {
            trunk,
            trunk_required,
            nsn_len,
        }
    }

    /// Returns the digits after an international call prefix, if `digits`
    /// starts with one as dialled from this region. Region-specific prefixes
    /// are tried first because AU's "0011" would otherwise read as "00" + "11".
    fn strip_international_prefix(self, digits: &str) -> Option<&str> {
        let own: &[&str] = match self {
            Region::JP => &["010"],
            Region::US | Region::CA => &["011"],
            Region::AU => &["0011"],
            _ => &[],
        };
        own.iter()
            .chain(&["00"])
            .find_map(|prefix| digits.strip_prefix(prefix))
    }

    /// The known region whose country code starts `digits`. Country codes are
    /// prefix-free, so at most one code matches; only US/CA share one.
    fn for_country_code(digits: &str, default_region: Region) -> Option<Region> {
        if digits.starts_with(default_region.country_code()) {
            return Some(default_region);
        }
        Self::ALL
            .into_iter()
            .find(|region| digits.starts_with(region.country_code()))
    }

    fn validate_nsn(self, nsn: &str) -> Result<(), PhoneError> {
        let (min, max) = self.plan().nsn_len;
        if nsn.len() < min {
            return Err(PhoneError::TooShort);
        }
        if nsn.len() > max {
            return Err(PhoneError::TooLong);
        }
        // In every plan here a leading '0' is a trunk or international prefix,
        // never the start of a subscriber number.
        if nsn.starts_with('0') {
            return Err(PhoneError::InvalidForRegion(self));
        }
        match self {
            Region::JP => validate_jp(nsn),
            Region::US | Region::CA => validate_nanp(nsn, self),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks the characters and returns whether a leading '+' was present along
/// with the ASCII digits.
fn scan(input: &str) -> Result<(bool, String), PhoneError> {
    if input.chars().nth(MAX_INPUT_CHARS).is_some() {
        return Err(PhoneError::TooLong);
    }
    let mut plus = false;
    let mut digits = String::with_capacity(E164_MAX_DIGITS);
    for c in input.chars().map(to_ascii) {
        match c {
            '0'..='9' => digits.push(c),
            // Separators may precede it, as in "(+81) 90-…"; digits may not.
            '+' if !plus && digits.is_empty() => plus = true,
            '+' => return Err(PhoneError::MisplacedPlus),
            ' ' | '\t' | '-' | '.' | '(' | ')' | '/' => {}
            _ => return Err(PhoneError::InvalidCharacters),
        }
    }
    Ok((plus, digits))
}

/// Maps the full-width and dash-like characters that Japanese IMEs and
/// copy-pasted web pages produce onto their ASCII equivalents.
fn to_ascii(c: char) -> char {
    match c {
        '\u{FF10}'..='\u{FF19}' => char::from_digit(u32::from(c) - 0xFF10, 10).unwrap_or(c),
        '\u{FF0B}' => '+',
        '\u{FF0D}' | '\u{2212}' | '\u{30FC}' | '\u{2010}'..='\u{2015}' => '-',
        '\u{FF08}' => '(',
        '\u{FF09}' => ')',
        '\u{FF0E}' => '.',
        '\u{FF0F}' => '/',
        '\u{3000}' | '\u{00A0}' => ' ',
        _ => c,
    }
}

/// `rest` is everything after the '+' or international call prefix.
fn parse_international(rest: &str, default_region: Region) -> Result<Phone, PhoneError> {
    if rest.is_empty() {
        return Err(PhoneError::TooShort);
    }
    if rest.starts_with('0') {
        return Err(PhoneError::InvalidCountryCode);
    }
    let Some(region) = Region::for_country_code(rest, default_region) else {
        // Without the plan we cannot split off the country code, so only the
        // E.164 length can be checked.
        if rest.len() < E164_MIN_DIGITS {
            return Err(PhoneError::TooShort);
        }
        if rest.len() > E164_MAX_DIGITS {
            return Err(PhoneError::TooLong);
        }
        return Ok(Phone(format!("+{rest}")));
    };
    let country_code = region.country_code();
    let mut nsn = &rest[country_code.len()..];
    // "+81 (0)90…" and "+81 090…" keep the national trunk '0' by mistake.
    if region.plan().trunk == Some('0') {
        nsn = nsn.strip_prefix('0').unwrap_or(nsn);
    }
    region.validate_nsn(nsn)?;
    Ok(Phone(format!("+{country_code}{nsn}")))
}

fn parse_national(digits: &str, region: Region) -> Result<Phone, PhoneError> {
    let plan = region.plan();
    let nsn = match plan.trunk.and_then(|trunk| digits.strip_prefix(trunk)) {
        Some(nsn) => nsn,
        None if plan.trunk_required => return Err(PhoneError::InvalidForRegion(region)),
        None => digits,
    };
    region.validate_nsn(nsn)?;
    Ok(Phone(format!("+{}{nsn}", region.country_code())))
}

/// `nsn` is 9 or 10 digits and does not start with '0'.
fn validate_jp(nsn: &str) -> Result<(), PhoneError> {
    // 010 is the international call prefix, so no national number starts with it.
    if nsn.starts_with("10") {
        return Err(PhoneError::InvalidForRegion(Region::JP));
    }
    // Only mobile/PHS (070/080/090), IP phone (050), M2M/pager (020) and 0800
    // free dial (inside 080) have 10 digits after the trunk '0'; geographic
    // numbers, 0120 free dial and 0570 navi dial have 9.
    let ten_digit = ["20", "50", "70", "80", "90"]
        .iter()
        .any(|prefix| nsn.starts_with(prefix));
    match (ten_digit, nsn.len()) {
        (true, 9) => Err(PhoneError::TooShort),
        (false, 10) => Err(PhoneError::TooLong),
        _ => Ok(()),
    }
}

/// `nsn` is 10 digits. Area codes and exchanges start with 2-9; a 0 or 1 there
/// means a mistyped or operator-prefixed number.
fn validate_nanp(nsn: &str, region: Region) -> Result<(), PhoneError> {
    let bytes = nsn.as_bytes();
    if matches!(bytes[0], b'0' | b'1') || matches!(bytes[3], b'0' | b'1') {
        return Err(PhoneError::InvalidForRegion(region));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OK: &[(&str, Region, &str)] = &[
        // JP national
        ("090-1234-5678", Region::JP, "+819012345678"),
        ("080-1234-5678", Region::JP, "+818012345678"),
        ("070-1234-5678", Region::JP, "+817012345678"),
        ("050-1234-5678", Region::JP, "+815012345678"),
        ("020-1234-5678", Region::JP, "+812012345678"),
        ("03-1234-5678", Region::JP, "+81312345678"),
        ("06.1234.5678", Region::JP, "+81612345678"),
        ("011-123-4567", Region::JP, "+81111234567"),
        ("0467-12-3456", Region::JP, "+81467123456"),
        ("0120-123-456", Region::JP, "+81120123456"),
        ("0570-123-456", Region::JP, "+81570123456"),
        ("0800-123-4567", Region::JP, "+818001234567"),
        ("(090)1234-5678", Region::JP, "+819012345678"),
        ("090/1234/5678", Region::JP, "+819012345678"),
        ("  090 1234 5678\t", Region::JP, "+819012345678"),
        ("09012345678", Region::JP, "+819012345678"),
        // JP full-width
        ("０９０－１２３４－５６７８", Region::JP, "+819012345678"),
        ("０９０ー１２３４ー５６７８", Region::JP, "+819012345678"),
        ("０９０−１２３４‐５６７８", Region::JP, "+819012345678"),
        ("（０３）１２３４―５６７８", Region::JP, "+81312345678"),
        (
            "＋８１　９０　１２３４　５６７８",
            Region::JP,
            "+819012345678",
        ),
        // JP international
        ("+81 90 1234 5678", Region::JP, "+819012345678"),
        ("+81-90-1234-5678", Region::JP, "+819012345678"),
        ("+81 (0)90 1234 5678", Region::JP, "+819012345678"),
        ("+81 090 1234 5678", Region::JP, "+819012345678"),
        ("+819012345678", Region::JP, "+819012345678"),
        ("(+81) 90-1234-5678", Region::JP, "+819012345678"),
        ("010-81-90-1234-5678", Region::JP, "+819012345678"),
        ("0081 90 1234 5678", Region::JP, "+819012345678"),
        ("+81 3 1234 5678", Region::JP, "+81312345678"),
        ("+81 90 1234 5678", Region::US, "+819012345678"),
        ("011 81 90 1234 5678", Region::US, "+819012345678"),
        ("0011 81 90 1234 5678", Region::AU, "+819012345678"),
        // Other known regions, written internationally from JP
        ("+1 (415) 555-2671", Region::JP, "+14155552671"),
        ("+44 20 7946 0958", Region::JP, "+442079460958"),
        ("+44 (0)20 7946 0958", Region::JP, "+442079460958"),
        ("+33 (0)6 12 34 56 78", Region::JP, "+33612345678"),
        ("+852 2345 6789", Region::JP, "+85223456789"),
        ("+886 912 345 678", Region::JP, "+886912345678"),
        // Unknown country codes get the E.164 length check only
        ("+39 06 1234 5678", Region::JP, "+390612345678"),
        ("+7 495 123-45-67", Region::JP, "+74951234567"),
        // Other regions, national
        ("(415) 555-2671", Region::US, "+14155552671"),
        ("1-415-555-2671", Region::US, "+14155552671"),
        ("415.555.2671", Region::US, "+14155552671"),
        ("416 555 0123", Region::CA, "+14165550123"),
        ("020 7946 0958", Region::GB, "+442079460958"),
        ("07700 900123", Region::GB, "+447700900123"),
        ("010-1234-5678", Region::KR, "+821012345678"),
        ("02-123-4567", Region::KR, "+8221234567"),
        ("0912-345-678", Region::TW, "+886912345678"),
        ("02-2345-6789", Region::TW, "+886223456789"),
        ("138 0013 8000", Region::CN, "+8613800138000"),
        ("010-1234-5678", Region::CN, "+861012345678"),
        ("2345 6789", Region::HK, "+85223456789"),
        ("6123 4567", Region::SG, "+6561234567"),
        ("0412 345 678", Region::AU, "+61412345678"),
        ("(02) 9876 5432", Region::AU, "+61298765432"),
        ("030 1234567", Region::DE, "+49301234567"),
        ("0151 12345678", Region::DE, "+4915112345678"),
        ("06 12 34 56 78", Region::FR, "+33612345678"),
    ];

    const ERR: &[(&str, Region, PhoneError)] = &[
        ("", Region::JP, PhoneError::Empty),
        ("   ", Region::JP, PhoneError::Empty),
        ("\u{3000}", Region::JP, PhoneError::Empty),
        ("--", Region::JP, PhoneError::Empty),
        ("abc", Region::JP, PhoneError::InvalidCharacters),
        (
            "090-1234-5678 ext 12",
            Region::JP,
            PhoneError::InvalidCharacters,
        ),
        ("090-1234-5678#1", Region::JP, PhoneError::InvalidCharacters),
        ("090_1234_5678", Region::JP, PhoneError::InvalidCharacters),
        ("1' OR '1'='1", Region::JP, PhoneError::InvalidCharacters),
        ("090-1234-567", Region::JP, PhoneError::TooShort),
        ("090-1234-56789", Region::JP, PhoneError::TooLong),
        ("03-1234-56789", Region::JP, PhoneError::TooLong),
        ("03-1234-567", Region::JP, PhoneError::TooShort),
        ("0120-123-4567", Region::JP, PhoneError::TooLong),
        ("050-1234-567", Region::JP, PhoneError::TooShort),
        ("0", Region::JP, PhoneError::TooShort),
        ("+", Region::JP, PhoneError::TooShort),
        ("+81", Region::JP, PhoneError::TooShort),
        ("010", Region::JP, PhoneError::TooShort),
        ("++81 90 1234 5678", Region::JP, PhoneError::MisplacedPlus),
        ("090+1234-5678", Region::JP, PhoneError::MisplacedPlus),
        ("+81+90 1234 5678", Region::JP, PhoneError::MisplacedPlus),
        (
            "+0 90 1234 5678",
            Region::JP,
            PhoneError::InvalidCountryCode,
        ),
        (
            "+00 81 90 1234 5678",
            Region::JP,
            PhoneError::InvalidCountryCode,
        ),
        // "00" is the international call prefix, so this reads as "+00000000".
        ("0000000000", Region::JP, PhoneError::InvalidCountryCode),
        ("0000000000", Region::HK, PhoneError::InvalidCountryCode),
        ("0 0000 0000", Region::US, PhoneError::InvalidCountryCode),
        (
            "81 90 1234 5678",
            Region::JP,
            PhoneError::InvalidForRegion(Region::JP),
        ),
        (
            "9012345678",
            Region::JP,
            PhoneError::InvalidForRegion(Region::JP),
        ),
        (
            "+81 00 1234 5678",
            Region::JP,
            PhoneError::InvalidForRegion(Region::JP),
        ),
        (
            "+81 10 1234 5678",
            Region::JP,
            PhoneError::InvalidForRegion(Region::JP),
        ),
        ("+81 90 1234 567", Region::JP, PhoneError::TooShort),
        ("+999 1234", Region::JP, PhoneError::TooShort),
        ("+999 1234 5678 9012 3", Region::JP, PhoneError::TooLong),
        (
            "(015) 555-2671",
            Region::US,
            PhoneError::InvalidForRegion(Region::US),
        ),
        (
            "415-155-2671",
            Region::US,
            PhoneError::InvalidForRegion(Region::US),
        ),
        (
            "+1 016 555 0123",
            Region::CA,
            PhoneError::InvalidForRegion(Region::CA),
        ),
        (
            "+1 016 555 0123",
            Region::JP,
            PhoneError::InvalidForRegion(Region::US),
        ),
        ("555-2671", Region::US, PhoneError::TooShort),
        ("1 415 555 26711", Region::US, PhoneError::TooLong),
        (
            "20 7946 0958",
            Region::GB,
            PhoneError::InvalidForRegion(Region::GB),
        ),
        ("2345 678", Region::HK, PhoneError::TooShort),
        ("06 12 34 56 789", Region::FR, PhoneError::TooLong),
    ];

    #[test]
    fn parses_valid_numbers() {
        for &(input, region, want) in OK {
            let got = Phone::parse(input, region);
            assert_eq!(
                got.as_ref().map(Phone::as_str),
                Ok(want),
                "case {input:?} in {region}"
            );
        }
    }

    #[test]
    fn rejects_invalid_numbers() {
        for (input, region, want) in ERR {
            let got = Phone::parse(input, *region);
            assert_eq!(got, Err(want.clone()), "case {input:?} in {region}");
        }
    }

    #[test]
    fn japanese_numbers_are_written_as_in_japan() {
        for (input, want) in [
            ("090-1234-5678", Some("090-1234-5678")),
            ("+81 80 1234 5678", Some("080-1234-5678")),
            ("050-1234-5678", Some("050-1234-5678")),
            ("020-1234-5678", Some("020-1234-5678")),
            ("0800-123-4567", Some("0800-123-4567")),
            ("0120-123-456", Some("0120-123-456")),
            ("0570-123-456", Some("0570-123-456")),
            ("03-1234-5678", Some("03-1234-5678")),
            ("06.1234.5678", Some("06-1234-5678")),
            ("045-123-4567", Some("045-123-4567")),
            ("011-123-4567", Some("011-123-4567")),
            ("+1 (415) 555-2671", None),
            ("+44 20 7946 0958", None),
        ] {
            let phone = Phone::parse(input, Region::JP).unwrap();
            assert_eq!(phone.japanese_national().as_deref(), want, "case {input}");
        }
    }

    #[test]
    fn rejects_overlong_input() {
        for input in ["9".repeat(200), " ".repeat(65), "０".repeat(65)] {
            let got = Phone::parse(&input, Region::JP);
            assert_eq!(got, Err(PhoneError::TooLong), "case {input:?}");
        }
    }

    #[test]
    fn error_messages_do_not_echo_input() {
        for (input, region, _) in ERR {
            let message = Phone::parse(input, *region).unwrap_err().to_string();
            let input = input.trim();
            if input.chars().count() >= 4 {
                assert!(!message.contains(input), "case {input:?}: {message}");
            }
        }
        let message = Region::parse("ZZ").unwrap_err().to_string();
        assert!(!message.contains("ZZ"), "{message}");
    }

    #[test]
    fn output_is_a_fixed_point() {
        for &(input, region, _) in OK {
            let phone = Phone::parse(input, region).unwrap();
            for other in Region::ALL {
                let again = Phone::parse(phone.as_str(), other);
                assert_eq!(
                    again.as_ref(),
                    Ok(&phone),
                    "case {input:?} reparsed in {other}"
                );
            }
        }
    }

    #[test]
    fn accessors() {
        let phone = Phone::parse("090-1234-5678", Region::JP).unwrap();
        assert_eq!(phone.as_str(), "+819012345678");
        assert_eq!(phone.digits(), "819012345678");
        assert_eq!(phone.as_ref(), "+819012345678");
        assert_eq!(phone.to_string(), "+819012345678");
        for &(input, region, _) in OK {
            let phone = Phone::parse(input, region).unwrap();
            let digits = phone.digits();
            assert!(
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()),
                "case {input:?}: {digits:?}"
            );
        }
    }

    #[test]
    fn region_parse() {
        let cases = [
            ("JP", Ok(Region::JP)),
            ("jp", Ok(Region::JP)),
            ("Jp", Ok(Region::JP)),
            ("us", Ok(Region::US)),
            ("gB", Ok(Region::GB)),
            ("", Err(PhoneError::UnknownRegion(String::new()))),
            ("XX", Err(PhoneError::UnknownRegion("XX".into()))),
            ("JPN", Err(PhoneError::UnknownRegion("JPN".into()))),
            ("UK", Err(PhoneError::UnknownRegion("UK".into()))),
            (" JP", Err(PhoneError::UnknownRegion(" JP".into()))),
        ];
        for (input, want) in cases {
            assert_eq!(Region::parse(input), want, "case {input:?}");
        }
        for region in Region::ALL {
            let code = region.as_str();
            assert_eq!(Region::parse(code), Ok(region), "case {code:?}");
            let lower = code.to_ascii_lowercase();
            assert_eq!(Region::parse(&lower), Ok(region), "case {lower:?}");
        }
    }

    #[test]
    fn country_codes() {
        assert_eq!(Region::JP.country_code(), "81");
        assert_eq!(Region::US.country_code(), "1");
        assert_eq!(Region::CA.country_code(), "1");
        assert_eq!(Region::TW.country_code(), "886");
    }

    #[test]
    fn plans_fit_e164() {
        for region in Region::ALL {
            let (min, max) = region.plan().nsn_len;
            let cc = region.country_code().len();
            assert!(
                (E164_MIN_DIGITS..=E164_MAX_DIGITS).contains(&(cc + min))
                    && cc + max <= E164_MAX_DIGITS,
                "case {region}"
            );
        }
    }

    fn region() -> impl Strategy<Value = Region> {
        proptest::sample::select(Region::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn any_accepted_value_is_e164(input in "[0-9０-９+＋ ()ー-]{0,24}", region in region()) {
            if let Ok(phone) = Phone::parse(&input, region) {
                let digits = phone.digits();
                prop_assert!(phone.as_str().starts_with('+'));
                prop_assert!(!digits.starts_with('0'));
                prop_assert!((E164_MIN_DIGITS..=E164_MAX_DIGITS).contains(&digits.len()));
                prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()));
                prop_assert_eq!(Phone::parse(phone.as_str(), region), Ok(phone.clone()));
            }
        }

        #[test]
        fn arbitrary_text_never_panics(input in "\\PC{0,80}", region in region()) {
            if let Ok(phone) = Phone::parse(&input, region) {
                prop_assert!(phone.as_str().starts_with('+'));
            }
        }
    }
}
