//! [`Decimal`]: an exact decimal with six fractional digits, stored as an integer count of
//! millionths.
//!
//! Rule sets hold multipliers such as `0.24` or `1.2`. Binary floating point cannot hold
//! them exactly, and a sum of rounded products depends on the order of the sum. So every
//! multiplier, factor, share and duration in a rule set is read as a decimal into whole
//! millionths (`0.24` → `240_000`), and points are computed with integers only. A TOML or
//! JSON number is read through its shortest round-trip decimal text, which is the text the
//! author wrote for any value with at most 15 significant digits; a string (`"0.24"`) is
//! read as it stands. More than six fractional digits is an error, never a silent rounding.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{PointsError, Result};

/// Millionths in one unit.
pub(crate) const SCALE: i64 = 1_000_000;

/// A decimal number with at most six fractional digits, held as an integer of millionths.
///
/// ```
/// use heurist_points::Decimal;
/// let m: Decimal = "0.24".parse()?;
/// assert_eq!(m.millionths(), 240_000);
/// assert_eq!(m.to_string(), "0.24");
/// # Ok::<(), heurist_points::PointsError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Decimal(i64);

impl Decimal {
    /// Zero.
    pub const ZERO: Self = Self(0);
    /// One.
    pub const ONE: Self = Self(SCALE);

    /// The decimal of `millionths` millionths.
    pub const fn from_millionths(millionths: i64) -> Self {
        Self(millionths)
    }

    /// The decimal of a whole number, `None` if it does not fit.
    pub const fn from_int(value: i64) -> Option<Self> {
        match value.checked_mul(SCALE) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The value in millionths.
    pub const fn millionths(self) -> i64 {
        self.0
    }

    /// Whether the value is below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// The nearest `f64`, for display only (never for arithmetic).
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / SCALE as f64
    }

    /// Reads an `f64` through its shortest round-trip decimal text.
    ///
    /// With `round_up`, digits past the sixth are rounded up instead of refused: a latency
    /// of `18.0000001` s must count as past an 18 s deadline, never as on it.
    pub fn from_f64(value: f64, round_up: bool) -> Result<Self> {
        if !value.is_finite() {
            return Err(PointsError::InvalidDecimal { value: value.to_string() });
        }
        // `{}` of an f64 never uses an exponent and is the shortest text that reads back
        // to the same f64.
        parse(&value.to_string(), round_up)
    }
}

impl FromStr for Decimal {
    type Err = PointsError;

    fn from_str(s: &str) -> Result<Self> {
        parse(s, false)
    }
}

/// Parses `[-+]digits[.digits]` into millionths.
fn parse(text: &str, round_up: bool) -> Result<Decimal> {
    let bad = || PointsError::InvalidDecimal { value: text.to_owned() };
    let s = text.trim();
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (int_part, frac_part) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(bad());
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit()) || !frac_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let mut value: i64 = 0;
    for b in int_part.bytes() {
        value = value.checked_mul(10).and_then(|v| v.checked_add(i64::from(b - b'0'))).ok_or_else(bad)?;
    }
    value = value.checked_mul(SCALE).ok_or_else(bad)?;
    let mut place = SCALE / 10;
    let mut rest_nonzero = false;
    for (i, b) in frac_part.bytes().enumerate() {
        let digit = i64::from(b - b'0');
        if i < 6 {
            value = value.checked_add(digit * place).ok_or_else(bad)?;
            place /= 10;
        } else if digit != 0 {
            rest_nonzero = true;
        }
    }
    if rest_nonzero {
        if !round_up {
            return Err(bad());
        }
        // Away from zero for the magnitude; the sign is applied below.
        value = value.checked_add(1).ok_or_else(bad)?;
    }
    Ok(Decimal(if negative { -value } else { value }))
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let int = abs / SCALE as u64;
        let frac = abs % SCALE as u64;
        if frac == 0 {
            return write!(f, "{sign}{int}");
        }
        let digits = format!("{frac:06}");
        write!(f, "{sign}{int}.{}", digits.trim_end_matches('0'))
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        // A number reads back to the same millionths for any value below 10^9 (15
        // significant digits); that covers every multiplier and duration of a rule set.
        serializer.serialize_f64(self.to_f64())
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(DecimalVisitor)
    }
}

struct DecimalVisitor;

impl Visitor<'_> for DecimalVisitor {
    type Value = Decimal;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number with at most 6 fractional digits, or such a number as a string")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Decimal, E> {
        Decimal::from_int(v).ok_or_else(|| E::custom(format!("{v} is too large")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Decimal, E> {
        i64::try_from(v)
            .ok()
            .and_then(Decimal::from_int)
            .ok_or_else(|| E::custom(format!("{v} is too large")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Decimal, E> {
        Decimal::from_f64(v, false).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Decimal, E> {
        v.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        let cases = [
            ("0.3", 300_000),
            ("0.24", 240_000),
            ("1", 1_000_000),
            ("1.2", 1_200_000),
            ("10", 10_000_000),
            ("-0.5", -500_000),
            ("0.000001", 1),
            (".5", 500_000),
            ("18.", 18_000_000),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Decimal>().unwrap().millionths(), want, "{text}");
        }
    }

    #[test]
    fn refuses_extra_digits_and_junk() {
        for text in ["0.0000001", "1e3", "", ".", "1.2.3", "abc", "- 1", "99999999999999999999"] {
            assert!(text.parse::<Decimal>().is_err(), "{text}");
        }
    }

    #[test]
    fn f64_goes_through_shortest_text() {
        // 0.1 + 0.2 is 0.30000000000000004 in binary: seventeen digits, refused, where a
        // naive `(x * 1e6).round()` would silently take it as 0.3.
        assert!(Decimal::from_f64(0.1 + 0.2, false).is_err());
        assert_eq!(Decimal::from_f64(0.24, false).unwrap().millionths(), 240_000);
        // Rounded up past six digits when asked.
        assert_eq!(Decimal::from_f64(18.000_000_1, true).unwrap().millionths(), 18_000_001);
        assert_eq!(Decimal::from_f64(18.0, true).unwrap().millionths(), 18_000_000);
        assert!(Decimal::from_f64(f64::NAN, true).is_err());
    }

    #[test]
    fn displays_without_trailing_zeros() {
        assert_eq!(Decimal::from_millionths(300_000).to_string(), "0.3");
        assert_eq!(Decimal::from_millionths(-1_500_000).to_string(), "-1.5");
        assert_eq!(Decimal::from_millionths(10_000_000).to_string(), "10");
    }

    #[test]
    fn serde_reads_numbers_and_strings() {
        let v: Vec<Decimal> = serde_json::from_str(r#"[0.3, 1, "1.2", -2]"#).unwrap();
        let m: Vec<i64> = v.iter().map(|d| d.millionths()).collect();
        assert_eq!(m, [300_000, 1_000_000, 1_200_000, -2_000_000]);
        assert_eq!(serde_json::to_string(&v[0]).unwrap(), "0.3");
    }
}
