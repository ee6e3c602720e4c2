//! `Email`: an address that parsed, in the normalised form identity uses.

use crate::text::fold_width;
use email_address::EmailAddress;

/// A syntactically valid email address, trimmed, width-folded and
/// lower-cased. The whole address is lower-cased: mailbox providers treat
/// the local part case-insensitively, and two records for `Taro@` and
/// `taro@` would split one customer in two. Provider-specific rewriting
/// (Gmail dots, `+tags`) is not applied: those can be different people's
/// addresses at other providers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("email address is empty")]
    Empty,
    #[error("email address is too long (at most 254 characters)")]
    TooLong,
    #[error("not a valid email address")]
    Invalid,
}

impl Email {
    pub fn parse(input: &str) -> Result<Email, EmailError> {
        let folded = fold_width(input.trim()).to_lowercase();
        if folded.is_empty() {
            return Err(EmailError::Empty);
        }
        if folded.len() > 254 {
            return Err(EmailError::TooLong);
        }
        // The crate accepts display-name and quoted forms; a form field
        // should hold a bare address with a dotted domain.
        let (local, domain) = folded.rsplit_once('@').ok_or(EmailError::Invalid)?;
        let plain = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c);
        if local.is_empty()
            || !local.chars().all(plain)
            || !domain.contains('.')
            || domain.starts_with(['.', '-'])
            || domain.ends_with(['.', '-'])
            || !domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            || !EmailAddress::is_valid(&folded)
        {
            return Err(EmailError::Invalid);
        }
        Ok(Email(folded))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_valid_addresses() {
        for (input, want) in [
            ("  Taro@Example.JP ", "taro@example.jp"),
            ("ｔａｒｏ＠ｅｘａｍｐｌｅ．ｊｐ", "taro@example.jp"),
            (
                "o'brien+lp@mail.example.co.jp",
                "o'brien+lp@mail.example.co.jp",
            ),
        ] {
            assert_eq!(
                Email::parse(input).unwrap().as_str(),
                want,
                "case {input:?}"
            );
        }
    }

    #[test]
    fn rejects_invalid_addresses() {
        for input in [
            "",
            "   ",
            "taro",
            "taro@",
            "@example.jp",
            "taro@localhost",
            "taro@@example.jp",
            "Taro <taro@example.jp>",
            "\"a b\"@example.jp",
            "x'; DROP TABLE contacts;--@example.jp",
            "taro@exa mple.jp",
            "taro@.example.jp",
        ] {
            assert!(
                Email::parse(input).is_err(),
                "case {input:?} should be rejected"
            );
        }
        assert_eq!(
            Email::parse(&format!("{}@example.jp", "a".repeat(250))),
            Err(EmailError::TooLong)
        );
    }
}
