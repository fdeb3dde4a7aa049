//! Money in integer minor units, token usage, and prices that turn usage into cost.

use std::collections::HashMap;
use std::ops::{Add, AddAssign, Sub};

use serde::{Deserialize, Serialize};

use crate::ModelId;

/// An amount of money in integer minor units (cents, for example) of the organisation's
/// accounting currency. There are no floats anywhere money is handled.
///
/// Arithmetic saturates instead of wrapping; use the `checked_*` methods where an overflow
/// must be detected.
///
/// It is written as an integer of minor units (`20000`), and read from either that or a
/// decimal string of major units with at most two decimals (`"200.00"`, `"200"`, `"0.5"`),
/// so a manifest may say `amount_above = "200.00"`.
///
/// ```
/// use aios_core::Money;
/// let a = Money::from_minor(1_250);
/// assert_eq!((a + Money::from_minor(5)).to_string(), "12.55");
/// assert_eq!("200.00".parse::<Money>().unwrap(), Money::from_minor(20_000));
/// let m: Money = serde_json::from_str("\"12.5\"").unwrap();
/// assert_eq!(m, Money::from_minor(1_250));
/// assert!("12.345".parse::<Money>().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Money(i64);

/// A string is not an amount of money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an amount of money: {problem} (write it like `200.00`)")]
pub struct MoneyParseError {
    /// What was read.
    pub input: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl std::str::FromStr for Money {
    type Err = MoneyParseError;

    /// Reads a decimal amount of major units: an optional `-`, digits, and optionally a `.`
    /// with one or two digits (`"200.00"`, `"-3.5"`, `"7"`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |problem| MoneyParseError {
            input: s.to_string(),
            problem,
        };
        let t = s.trim();
        let (negative, digits) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let (whole, frac) = match digits.split_once('.') {
            Some((w, f)) => (w, f),
            None => (digits, ""),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("expected digits before the decimal point"));
        }
        if digits.contains('.') && frac.is_empty() {
            return Err(err("expected digits after the decimal point"));
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("expected digits after the decimal point"));
        }
        if frac.len() > 2 {
            return Err(err("more than two decimals"));
        }
        let cents = match frac.len() {
            0 => 0,
            1 => i64::from(frac.as_bytes()[0] - b'0') * 10,
            _ => i64::from(frac.as_bytes()[0] - b'0') * 10 + i64::from(frac.as_bytes()[1] - b'0'),
        };
        let minor = whole
            .parse::<i64>()
            .ok()
            .and_then(|w| w.checked_mul(100))
            .and_then(|w| w.checked_add(cents))
            .ok_or_else(|| err("too large"))?;
        Ok(Money(if negative { -minor } else { minor }))
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Money;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer of minor units (20000) or a decimal string (\"200.00\")")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Money, E> {
                Ok(Money(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Money, E> {
                i64::try_from(v)
                    .map(Money)
                    .map_err(|_| E::custom("amount of money too large"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Money, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Money {
    /// Nothing.
    pub const ZERO: Money = Money(0);

    /// An amount of `minor` minor units.
    pub const fn from_minor(minor: i64) -> Self {
        Money(minor)
    }

    /// The amount in minor units.
    pub const fn minor(self) -> i64 {
        self.0
    }

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    /// `self - other`, or `None` on overflow.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    /// Whether the amount is below zero.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, rhs: Money) -> Money {
        Money(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign for Money {
    fn add_assign(&mut self, rhs: Money) {
        self.0 = self.0.saturating_add(rhs.0);
    }
}

impl Sub for Money {
    type Output = Money;
    fn sub(self, rhs: Money) -> Money {
        Money(self.0.saturating_sub(rhs.0))
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, |a, b| a + b)
    }
}

impl std::fmt::Display for Money {
    /// Two decimal places: `1234` minor units print as `12.34`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// Tokens consumed by one or more model calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub input: u64,
    /// Completion tokens.
    pub output: u64,
}

impl TokenUsage {
    /// Usage of `input` prompt and `output` completion tokens.
    pub const fn new(input: u64, output: u64) -> Self {
        Self { input, output }
    }

    /// Input plus output.
    pub const fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

impl Add for TokenUsage {
    type Output = TokenUsage;
    fn add(self, rhs: TokenUsage) -> TokenUsage {
        TokenUsage {
            input: self.input.saturating_add(rhs.input),
            output: self.output.saturating_add(rhs.output),
        }
    }
}

impl AddAssign for TokenUsage {
    fn add_assign(&mut self, rhs: TokenUsage) {
        *self = *self + rhs;
    }
}

/// What one model charges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelPrice {
    /// Price of one million prompt tokens, in minor units.
    pub input_per_million: Money,
    /// Price of one million completion tokens, in minor units.
    pub output_per_million: Money,
    /// A flat fee per call, in minor units.
    #[serde(default)]
    pub per_call: Money,
}

impl ModelPrice {
    /// The cost of `usage` for one call, rounded up to the next minor unit so that cost is
    /// never under-counted.
    pub fn cost(&self, usage: TokenUsage) -> Money {
        fn part(tokens: u64, per_million: Money) -> i128 {
            let num = tokens as i128 * per_million.minor() as i128;
            // ceiling division for non-negative prices
            if num <= 0 {
                num / 1_000_000
            } else {
                (num + 999_999) / 1_000_000
            }
        }
        let total = part(usage.input, self.input_per_million)
            + part(usage.output, self.output_per_million)
            + self.per_call.minor() as i128;
        Money::from_minor(total.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }
}

/// Prices per model; turns usage into cost.
///
/// ```
/// use aios_core::{ModelId, ModelPrice, Money, PriceTable, TokenUsage};
/// let mut prices = PriceTable::default();
/// prices.set(ModelId::new("small"), ModelPrice {
///     input_per_million: Money::from_minor(30),
///     output_per_million: Money::from_minor(60),
///     per_call: Money::ZERO,
/// });
/// let cost = prices.cost(&ModelId::new("small"), TokenUsage::new(1_000_000, 500_000));
/// assert_eq!(cost, Some(Money::from_minor(60)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PriceTable {
    prices: HashMap<ModelId, ModelPrice>,
}

impl PriceTable {
    /// Sets the price of `model`.
    pub fn set(&mut self, model: ModelId, price: ModelPrice) -> &mut Self {
        self.prices.insert(model, price);
        self
    }

    /// The price of `model`, if known.
    pub fn get(&self, model: &ModelId) -> Option<&ModelPrice> {
        self.prices.get(model)
    }

    /// The cost of `usage` on `model`, or `None` if the model has no price (callers decide;
    /// governance treats an unknown price as a reason to deny).
    pub fn cost(&self, model: &ModelId, usage: TokenUsage) -> Option<Money> {
        self.prices.get(model).map(|p| p.cost(usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_and_never_floats() {
        let p = ModelPrice {
            input_per_million: Money::from_minor(1),
            output_per_million: Money::from_minor(3),
            per_call: Money::from_minor(2),
        };
        assert_eq!(p.cost(TokenUsage::new(1, 0)), Money::from_minor(3));
        assert_eq!(p.cost(TokenUsage::new(0, 0)), Money::from_minor(2));
        assert_eq!(
            p.cost(TokenUsage::new(2_000_000, 1_000_000)),
            Money::from_minor(7)
        );
    }

    #[test]
    fn money_parses_decimal_strings_and_refuses_the_rest() {
        for (text, minor) in [
            ("200.00", 20_000),
            ("200", 20_000),
            ("0.5", 50),
            ("-3.07", -307),
            (" 12.30 ", 1_230),
        ] {
            assert_eq!(
                text.parse::<Money>(),
                Ok(Money::from_minor(minor)),
                "{text}"
            );
        }
        for text in [
            "",
            ".5",
            "5.",
            "1.234",
            "1,00",
            "abc",
            "--1",
            "1e3",
            "99999999999999999999",
        ] {
            assert!(text.parse::<Money>().is_err(), "{text} parsed");
        }
        let m: Money = serde_json::from_str("1234").unwrap();
        assert_eq!(m, Money::from_minor(1_234));
        assert!(
            serde_json::from_str::<Money>("1.5").is_err(),
            "a float is ambiguous"
        );
        assert_eq!(serde_json::to_string(&Money::from_minor(5)).unwrap(), "5");
    }

    #[test]
    fn money_formats_and_saturates() {
        assert_eq!(Money::from_minor(-5).to_string(), "-0.05");
        assert_eq!(
            Money::from_minor(i64::MAX) + Money::from_minor(1),
            Money::from_minor(i64::MAX)
        );
        assert_eq!(
            Money::from_minor(i64::MAX).checked_add(Money::from_minor(1)),
            None
        );
    }
}
