//! A contact's editable profile: the fields a form or staff may set, each
//! parsed into its checked form. Forms and the contact API share these
//! rules, so a value stored by either is valid for both.

use crate::email::Email;
use crate::error::FieldError;
use crate::phone::{Phone, Region};
use crate::text::{fold_width, has_control_chars};
use std::collections::BTreeMap;
use time::{Date, Month};

/// Text fields of the profile, with the longest value each accepts.
pub const TEXT_FIELDS: &[(&str, usize)] = &[
    ("name", 200),
    ("family_name", 100),
    ("given_name", 100),
    ("family_name_kana", 100),
    ("given_name_kana", 100),
    ("company", 200),
    ("address", 500),
];

/// Bounds on free-form attributes: other form fields kept as they came.
pub const MAX_ATTRIBUTES_PER_SUBMISSION: usize = 50;
pub const MAX_ATTRIBUTES_PER_CONTACT: usize = 200;
pub const MAX_ATTRIBUTE_KEY_CHARS: usize = 64;
pub const MAX_ATTRIBUTE_VALUE_CHARS: usize = 1000;

/// Parsed profile values. `None` means "not given".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    /// name, family_name, … in `TEXT_FIELDS` order.
    pub texts: BTreeMap<&'static str, String>,
    pub postal_code: Option<String>,
    pub birthday: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

impl Profile {
    pub fn text(&self, field: &str) -> Option<&str> {
        self.texts.get(field).map(String::as_str)
    }

    /// When only family and given names are given, the display name is
    /// "family given", the usual Japanese order.
    pub fn fill_display_name(&mut self) {
        if self.texts.contains_key("name") {
            return;
        }
        let joined = [self.text("family_name"), self.text("given_name")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        if !joined.is_empty() {
            self.texts.insert("name", joined);
        }
    }

    pub fn is_empty_identity(&self) -> bool {
        self.email.is_none() && self.phone.is_none()
    }
}

/// Parses one field into `profile`, collecting a `FieldError` on failure.
/// Returns false when `field` is not a profile field.
pub fn parse_field(
    profile: &mut Profile,
    field: &str,
    raw: &str,
    region: Region,
    errors: &mut Vec<FieldError>,
) -> bool {
    let value = raw.trim();
    match field {
        "email" => {
            if !value.is_empty() {
                match Email::parse(value) {
                    Ok(email) => profile.email = Some(email),
                    Err(e) => errors.push(FieldError::new("email", e.to_string())),
                }
            }
        }
        "phone" => {
            if !value.is_empty() {
                match Phone::parse(value, region) {
                    Ok(phone) => profile.phone = Some(phone),
                    Err(e) => errors.push(FieldError::new("phone", e.to_string())),
                }
            }
        }
        "postal_code" => {
            if !value.is_empty() {
                match parse_postal_code(value) {
                    Some(code) => profile.postal_code = Some(code),
                    None => errors.push(FieldError::new(
                        "postal_code",
                        "not a postal code (e.g. 150-0001)",
                    )),
                }
            }
        }
        "birthday" => {
            if !value.is_empty() {
                match parse_birthday(value) {
                    Some(date) => profile.birthday = Some(date),
                    None => errors.push(FieldError::new(
                        "birthday",
                        "not a date of birth as YYYY-MM-DD",
                    )),
                }
            }
        }
        _ => {
            let Some((name, max)) = TEXT_FIELDS.iter().find(|(n, _)| *n == field) else {
                return false;
            };
            if let Some(text) = check_text(name, value, *max, errors) {
                profile.texts.insert(name, text);
            }
        }
    }
    true
}

/// Trimmed text within `max` characters and free of control characters;
/// empty text is "not given". Quotes, SQL and markup are kept verbatim:
/// values only ever reach SQL as parameters.
pub fn check_text(
    field: &str,
    value: &str,
    max: usize,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.chars().count() > max {
        errors.push(FieldError::new(field, format!("at most {max} characters")));
        return None;
    }
    if has_control_chars(value) {
        errors.push(FieldError::new(field, "contains control characters"));
        return None;
    }
    Some(value.to_owned())
}

/// Checks an attribute's key and value, adding it to `profile`.
pub fn add_attribute(profile: &mut Profile, key: &str, value: &str, errors: &mut Vec<FieldError>) {
    // Names only ever go into JSON, so any printable name a form builder
    // produces (`interest[]`, `お問い合わせ内容`) is kept as it came.
    let valid_key = !key.trim().is_empty()
        && key.chars().count() <= MAX_ATTRIBUTE_KEY_CHARS
        && !has_control_chars(key);
    if !valid_key {
        errors.push(FieldError::new(
            "attributes",
            format!("field names are 1 to {MAX_ATTRIBUTE_KEY_CHARS} printable characters"),
        ));
        return;
    }
    let field = format!("attributes.{key}");
    if let Some(text) = check_text(&field, value, MAX_ATTRIBUTE_VALUE_CHARS, errors) {
        // A checkbox group repeats its name; keep every ticked value.
        profile
            .attributes
            .entry(key.to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&text);
            })
            .or_insert(text);
    }
}

/// Japanese postal codes (7 digits) become `NNN-NNNN`; other countries'
/// short alphanumeric codes are kept upper-cased.
pub fn parse_postal_code(value: &str) -> Option<String> {
    let folded = fold_width(value).replace(['〒', 'ー', '−'], "-");
    let folded = folded.trim().trim_start_matches('-').trim();
    let digits: String = folded.chars().filter(char::is_ascii_digit).collect();
    if folded.chars().all(|c| c.is_ascii_digit() || c == '-') {
        // Digits only: Japan's 7 digits, or another country's plain
        // 3-6 digit code, or a US ZIP+4. Anything else is a typo.
        let zip_plus_four = folded.len() == 10 && folded.as_bytes()[5] == b'-' && digits.len() == 9;
        return match digits.len() {
            7 => Some(format!("{}-{}", &digits[..3], &digits[3..])),
            3..=6 if !folded.contains('-') => Some(digits),
            _ if zip_plus_four => Some(folded.to_owned()),
            _ => None,
        };
    }
    let ok = (3..=10).contains(&folded.len())
        && folded
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '-');
    ok.then(|| folded.to_ascii_uppercase())
}

/// `YYYY-MM-DD` (or with `/`), a real date from 1900 on.
pub fn parse_birthday(value: &str) -> Option<String> {
    let folded = fold_width(value).replace('/', "-");
    let mut parts = folded.trim().split('-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1900..=2100).contains(&year) {
        return None;
    }
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    Some(date.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postal_codes() {
        for (input, want) in [
            ("150-0001", Some("150-0001")),
            ("1500001", Some("150-0001")),
            ("〒１５０－０００１", Some("150-0001")),
            ("SW1A 1AA", Some("SW1A 1AA")),
            ("150-00011", None),
            ("'; --", None),
        ] {
            assert_eq!(parse_postal_code(input).as_deref(), want, "case {input:?}");
        }
    }

    #[test]
    fn birthdays() {
        assert_eq!(parse_birthday("1990-04-01").as_deref(), Some("1990-04-01"));
        assert_eq!(parse_birthday("1990/4/1").as_deref(), Some("1990-04-01"));
        for bad in [
            "1990-02-30",
            "90-04-01",
            "1990-04",
            "tomorrow",
            "1800-01-01",
        ] {
            assert_eq!(parse_birthday(bad), None, "case {bad:?}");
        }
    }

    #[test]
    fn text_is_bounded_and_kept_verbatim() {
        let mut errors = vec![];
        assert_eq!(
            check_text(
                "name",
                " Robert'); DROP TABLE contacts;-- ",
                200,
                &mut errors
            )
            .as_deref(),
            Some("Robert'); DROP TABLE contacts;--")
        );
        assert_eq!(check_text("name", &"x".repeat(201), 200, &mut errors), None);
        assert_eq!(check_text("name", "a\u{0}b", 200, &mut errors), None);
        assert_eq!(errors.len(), 2);
    }
}
