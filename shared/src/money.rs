//! Money: integer minor units and an ISO 4217 currency, never a float.
//! Decimal strings from shops (`"1234.50"`) are parsed exactly.

use iso_currency::Currency as IsoCurrency;

/// An ISO 4217 currency that parsed, with its number of minor digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency(IsoCurrency);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("not an ISO 4217 currency code")]
    UnknownCurrency,
    #[error("not a decimal amount")]
    NotADecimal,
    #[error("more decimal places than the currency has")]
    TooPrecise,
    #[error("amount out of range")]
    OutOfRange,
}

impl Currency {
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        let code = code.trim().to_ascii_uppercase();
        let currency = IsoCurrency::from_code(&code).ok_or(MoneyError::UnknownCurrency)?;
        // Funds and metals (XAU, XXX…) have no minor unit: not shop money.
        currency.exponent().ok_or(MoneyError::UnknownCurrency)?;
        Ok(Currency(currency))
    }
    pub fn code(self) -> &'static str {
        self.0.code()
    }
    /// Digits after the decimal point: 0 for JPY, 2 for USD, 3 for KWD.
    pub fn exponent(self) -> u32 {
        u32::from(self.0.exponent().unwrap_or(0))
    }

    /// Parses `"1234.50"` into minor units. Trailing zeros beyond the
    /// currency's digits are accepted (`"1000.00"` JPY is 1000, as some
    /// platforms format every currency with two decimals); any other
    /// extra digit is refused, never rounded.
    pub fn parse_amount(self, text: &str) -> Result<i64, MoneyError> {
        let text = text.trim();
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !all_digits(whole)
            || !all_digits(fraction)
            || (digits.contains('.') && fraction.is_empty())
        {
            return Err(MoneyError::NotADecimal);
        }
        let exponent = self.exponent() as usize;
        let (kept, extra) = fraction.split_at(fraction.len().min(exponent));
        if extra.bytes().any(|b| b != b'0') {
            return Err(MoneyError::TooPrecise);
        }
        let mut minor: i64 = 0;
        for b in whole
            .bytes()
            .chain(kept.bytes())
            .chain(std::iter::repeat_n(b'0', exponent - kept.len()))
        {
            minor = minor
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(b - b'0')))
                .ok_or(MoneyError::OutOfRange)?;
        }
        // A trillion in major units is beyond any order; a bound keeps
        // sums of many orders far from overflow.
        if minor > 10_i64.pow(12 + self.exponent()) {
            return Err(MoneyError::OutOfRange);
        }
        Ok(if negative { -minor } else { minor })
    }

    /// Minor units from a JSON number that must be an integer count of
    /// minor units (Kizuna's own event format).
    pub fn check_minor(self, minor: i64) -> Result<i64, MoneyError> {
        if minor.unsigned_abs() > 10_u64.pow(12 + self.exponent()) {
            return Err(MoneyError::OutOfRange);
        }
        Ok(minor)
    }

    /// `minor` units as a decimal amount in major units, the inverse of
    /// [`Currency::parse_amount`]: `1234` is `"1234"` in JPY and
    /// `"12.34"` in USD (for spreadsheets, whose cells hold major units).
    pub fn format_amount(self, minor: i64) -> String {
        let exponent = self.exponent();
        if exponent == 0 {
            return minor.to_string();
        }
        let scale = 10_u64.pow(exponent);
        let (whole, fraction) = (minor.unsigned_abs() / scale, minor.unsigned_abs() % scale);
        let sign = if minor < 0 { "-" } else { "" };
        format!(
            "{sign}{whole}.{fraction:0width$}",
            width = exponent as usize
        )
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_amounts_per_currency() {
        let jpy = Currency::parse("jpy").unwrap();
        let usd = Currency::parse("USD").unwrap();
        let kwd = Currency::parse("KWD").unwrap();
        for (currency, text, want) in [
            (jpy, "1000", 1000),
            (jpy, "1000.00", 1000),
            (jpy, "-300", -300),
            (usd, "12.34", 1234),
            (usd, "12.3", 1230),
            (usd, "12", 1200),
            (usd, "0.10", 10),
            (kwd, "1.234", 1234),
        ] {
            assert_eq!(
                currency.parse_amount(text),
                Ok(want),
                "case {currency} {text}"
            );
        }
    }

    #[test]
    fn formats_minor_units_as_major_amounts() {
        let jpy = Currency::parse("JPY").unwrap();
        let usd = Currency::parse("USD").unwrap();
        let kwd = Currency::parse("KWD").unwrap();
        for (currency, minor, want) in [
            (jpy, 1234, "1234"),
            (jpy, -300, "-300"),
            (usd, 1234, "12.34"),
            (usd, 5, "0.05"),
            (usd, -5, "-0.05"),
            (kwd, 1234, "1.234"),
            (usd, i64::MIN, "-92233720368547758.08"),
        ] {
            assert_eq!(
                currency.format_amount(minor),
                want,
                "case {currency} {minor}"
            );
            if minor != i64::MIN {
                assert_eq!(currency.parse_amount(want), Ok(minor), "round trip {want}");
            }
        }
    }

    #[test]
    fn refuses_inexact_or_malformed_amounts() {
        let jpy = Currency::parse("JPY").unwrap();
        let usd = Currency::parse("USD").unwrap();
        for (currency, text, want) in [
            (jpy, "1000.5", MoneyError::TooPrecise),
            (usd, "1.005", MoneyError::TooPrecise),
            (usd, "1e3", MoneyError::NotADecimal),
            (usd, "", MoneyError::NotADecimal),
            (usd, ".5", MoneyError::NotADecimal),
            (usd, "5.", MoneyError::NotADecimal),
            (usd, "1,000.00", MoneyError::NotADecimal),
            (usd, "NaN", MoneyError::NotADecimal),
            (usd, "99999999999999999999999", MoneyError::OutOfRange),
        ] {
            assert_eq!(
                currency.parse_amount(text),
                Err(want),
                "case {currency} {text:?}"
            );
        }
        assert_eq!(Currency::parse("ABC"), Err(MoneyError::UnknownCurrency));
        assert_eq!(Currency::parse("XAU"), Err(MoneyError::UnknownCurrency));
    }
}
