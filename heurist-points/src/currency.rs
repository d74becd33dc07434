//! The two point currencies and amounts typed by currency.
//!
//! Waifu Points pay image jobs and Llama Points pay LLM jobs; the network never adds them
//! together. [`Amount<Waifu>`] and [`Amount<Llama>`] are different types, so a sum across
//! currencies does not compile. Amounts are whole micro-points (millionths of a point):
//! integer sums are exact and the same in any order.

use std::fmt;
use std::iter::Sum;
use std::marker::PhantomData;
use std::ops::{Add, AddAssign};
use std::str::FromStr;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use crate::decimal::SCALE;
use crate::error::PointsError;

/// A point currency, as stored in the ledger and printed by tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Currency {
    /// Waifu Points, earned by image jobs.
    Waifu,
    /// Llama Points, earned by LLM jobs.
    Llama,
}

impl Currency {
    /// Both currencies, in a fixed order.
    pub const ALL: [Currency; 2] = [Currency::Waifu, Currency::Llama];

    /// The lowercase name used in JSON and in the ledger (`waifu`, `llama`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Currency::Waifu => "waifu",
            Currency::Llama => "llama",
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Currency {
    type Err = PointsError;

    fn from_str(s: &str) -> Result<Self, PointsError> {
        match s {
            "waifu" => Ok(Currency::Waifu),
            "llama" => Ok(Currency::Llama),
            other => Err(PointsError::InvalidEntry {
                field: "currency",
                value: other.to_owned(),
                expected: "waifu or llama",
            }),
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A type-level currency: [`Waifu`] or [`Llama`]. Sealed.
pub trait CurrencyKind: sealed::Sealed + Copy + fmt::Debug + Default + 'static {
    /// The run-time currency.
    const CURRENCY: Currency;
}

/// The type of Waifu Points amounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Waifu;

/// The type of Llama Points amounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Llama;

impl sealed::Sealed for Waifu {}
impl sealed::Sealed for Llama {}
impl CurrencyKind for Waifu {
    const CURRENCY: Currency = Currency::Waifu;
}
impl CurrencyKind for Llama {
    const CURRENCY: Currency = Currency::Llama;
}

/// A non-negative amount of one currency, in micro-points.
///
/// ```
/// use heurist_points::{Amount, Waifu};
/// let a = Amount::<Waifu>::from_micro(300_000) + Amount::from_micro(700_000);
/// assert_eq!(a.micro(), 1_000_000);
/// ```
///
/// Adding a Llama amount to a Waifu amount does not compile:
///
/// ```compile_fail
/// use heurist_points::{Amount, Llama, Waifu};
/// let _ = Amount::<Waifu>::from_micro(1) + Amount::<Llama>::from_micro(1);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount<C: CurrencyKind> {
    micro: u64,
    currency: PhantomData<C>,
}

impl<C: CurrencyKind> Amount<C> {
    /// Zero points.
    pub const ZERO: Self = Self { micro: 0, currency: PhantomData };

    /// The amount of `micro` micro-points.
    pub const fn from_micro(micro: u64) -> Self {
        Self { micro, currency: PhantomData }
    }

    /// The amount in micro-points.
    pub const fn micro(self) -> u64 {
        self.micro
    }

    /// The currency.
    pub const fn currency(self) -> Currency {
        C::CURRENCY
    }

    /// The sum, `None` on overflow.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.micro.checked_add(other.micro).map(Self::from_micro)
    }

    /// The amount in points, for display only.
    pub fn to_f64(self) -> f64 {
        self.micro as f64 / SCALE as f64
    }
}

impl<C: CurrencyKind> Add for Amount<C> {
    type Output = Self;

    /// Saturates at `u64::MAX` micro-points (1.8e13 points), far past any real total.
    fn add(self, other: Self) -> Self {
        Self::from_micro(self.micro.saturating_add(other.micro))
    }
}

impl<C: CurrencyKind> AddAssign for Amount<C> {
    fn add_assign(&mut self, other: Self) {
        *self = *self + other;
    }
}

impl<C: CurrencyKind> Sum for Amount<C> {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::ZERO, Add::add)
    }
}

/// The points of one job: an amount in exactly one currency.
///
/// Serialises as the CLI prints it, `{"currency": "waifu", "points": 0.3}`, the number
/// being the micro-point amount divided by 10^6 (display only; keep [`Points::micro`] for
/// sums).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Points {
    /// Waifu Points of an image job.
    Waifu(Amount<Waifu>),
    /// Llama Points of an LLM job.
    Llama(Amount<Llama>),
}

impl Points {
    /// Zero points of `currency`.
    pub const fn zero(currency: Currency) -> Self {
        match currency {
            Currency::Waifu => Points::Waifu(Amount::ZERO),
            Currency::Llama => Points::Llama(Amount::ZERO),
        }
    }

    /// `micro` micro-points of `currency`.
    pub const fn from_micro(currency: Currency, micro: u64) -> Self {
        match currency {
            Currency::Waifu => Points::Waifu(Amount::from_micro(micro)),
            Currency::Llama => Points::Llama(Amount::from_micro(micro)),
        }
    }

    /// The currency.
    pub const fn currency(self) -> Currency {
        match self {
            Points::Waifu(_) => Currency::Waifu,
            Points::Llama(_) => Currency::Llama,
        }
    }

    /// The amount in micro-points.
    pub const fn micro(self) -> u64 {
        match self {
            Points::Waifu(a) => a.micro(),
            Points::Llama(a) => a.micro(),
        }
    }

    /// The amount in points, for display only.
    pub fn to_f64(self) -> f64 {
        self.micro() as f64 / SCALE as f64
    }
}

impl Serialize for Points {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Points", 2)?;
        s.serialize_field("currency", &self.currency())?;
        s.serialize_field("points", &self.to_f64())?;
        s.end()
    }
}

/// Running totals of both currencies, kept apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Totals {
    /// The Waifu total.
    pub waifu: Amount<Waifu>,
    /// The Llama total.
    pub llama: Amount<Llama>,
}

impl Totals {
    /// Adds the points of one job to its currency's total.
    pub fn add(&mut self, points: Points) {
        match points {
            Points::Waifu(a) => self.waifu += a,
            Points::Llama(a) => self.llama += a,
        }
    }
}

impl AddAssign for Totals {
    fn add_assign(&mut self, other: Self) {
        self.waifu += other.waifu;
        self.llama += other.llama;
    }
}

impl Extend<Points> for Totals {
    fn extend<I: IntoIterator<Item = Points>>(&mut self, iter: I) {
        for p in iter {
            self.add(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_serialise_as_the_cli_prints_them() {
        let p = Points::from_micro(Currency::Llama, 240_000);
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"currency":"llama","points":0.24}"#);
        let p = Points::from_micro(Currency::Waifu, 3_333_333);
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"currency":"waifu","points":3.333333}"#);
    }

    #[test]
    fn totals_keep_currencies_apart() {
        let mut t = Totals::default();
        t.extend([
            Points::from_micro(Currency::Waifu, 5),
            Points::from_micro(Currency::Llama, 7),
            Points::from_micro(Currency::Waifu, 1),
        ]);
        assert_eq!(t.waifu.micro(), 6);
        assert_eq!(t.llama.micro(), 7);
    }

    #[test]
    fn currency_round_trips_through_text() {
        for c in Currency::ALL {
            assert_eq!(c.as_str().parse::<Currency>().unwrap(), c);
        }
        assert!("points".parse::<Currency>().is_err());
    }
}
