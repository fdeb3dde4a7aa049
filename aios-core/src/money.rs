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
/// ```
/// use aios_core::Money;
/// let a = Money::from_minor(1_250);
/// assert_eq!((a + Money::from_minor(5)).to_string(), "12.55");
/// ```
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(i64);

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
