//! cty numbers: arbitrary-precision decimals (plus the two infinities cty
//! allows), so values like 2^64 or 0.1 survive a round trip through the
//! provider exactly as Terraform sent them.

use std::fmt;
use std::str::FromStr;

use bigdecimal::{BigDecimal, ToPrimitive};

#[derive(Debug, Clone)]
pub enum Number {
    Finite(BigDecimal),
    PositiveInfinity,
    NegativeInfinity,
}

/// How a number goes on the msgpack wire, following cty's encoder: int64
/// when exact, else float64 when exact and not an integer, else a decimal
/// string.
#[derive(Debug, PartialEq)]
pub(crate) enum WireNumber {
    Int(i64),
    Float(f64),
    Decimal(String),
}

impl Number {
    pub fn from_f64(f: f64) -> Option<Number> {
        if f == f64::INFINITY {
            Some(Number::PositiveInfinity)
        } else if f == f64::NEG_INFINITY {
            Some(Number::NegativeInfinity)
        } else {
            BigDecimal::try_from(f).ok().map(Number::Finite)
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Number::Finite(d) if d.is_integer() => d.to_i64(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> f64 {
        match self {
            Number::Finite(d) => d.to_f64().unwrap_or(f64::NAN),
            Number::PositiveInfinity => f64::INFINITY,
            Number::NegativeInfinity => f64::NEG_INFINITY,
        }
    }

    pub(crate) fn to_wire(&self) -> WireNumber {
        match self {
            Number::PositiveInfinity => WireNumber::Float(f64::INFINITY),
            Number::NegativeInfinity => WireNumber::Float(f64::NEG_INFINITY),
            Number::Finite(d) => {
                if d.is_integer() {
                    if let Some(i) = d.to_i64() {
                        return WireNumber::Int(i);
                    }
                } else if let Some(f) = d.to_f64()
                    && f.is_finite()
                    && BigDecimal::try_from(f).is_ok_and(|back| back == *d)
                {
                    return WireNumber::Float(f);
                }
                WireNumber::Decimal(canonical(d))
            }
        }
    }
}

/// Plain decimal notation without exponent or trailing zeros, as cty
/// formats numbers (`Text('f', -1)`).
fn canonical(d: &BigDecimal) -> String {
    d.normalized().to_plain_string()
}

impl PartialEq for Number {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Number::Finite(a), Number::Finite(b)) => a == b,
            (Number::PositiveInfinity, Number::PositiveInfinity) => true,
            (Number::NegativeInfinity, Number::NegativeInfinity) => true,
            _ => false,
        }
    }
}

impl From<i64> for Number {
    fn from(i: i64) -> Self {
        Number::Finite(BigDecimal::from(i))
    }
}

impl From<u64> for Number {
    fn from(u: u64) -> Self {
        Number::Finite(BigDecimal::from(u))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a number")]
pub struct ParseNumberError(String);

impl FromStr for Number {
    type Err = ParseNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "+Inf" | "Inf" | "+inf" | "inf" => Ok(Number::PositiveInfinity),
            "-Inf" | "-inf" => Ok(Number::NegativeInfinity),
            t => BigDecimal::from_str(t).map(Number::Finite).map_err(|_| ParseNumberError(s.to_owned())),
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Finite(d) => f.write_str(&canonical(d)),
            Number::PositiveInfinity => f.write_str("+Inf"),
            Number::NegativeInfinity => f.write_str("-Inf"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(s: &str) -> WireNumber {
        Number::from_str(s).expect("test number").to_wire()
    }

    #[test]
    fn follows_cty_wire_rules() {
        assert_eq!(wire("-5"), WireNumber::Int(-5));
        assert_eq!(wire("9223372036854775807"), WireNumber::Int(i64::MAX));
        assert_eq!(wire("9223372036854775808"), WireNumber::Decimal("9223372036854775808".into()));
        assert_eq!(wire("18446744073709551615"), WireNumber::Decimal("18446744073709551615".into()));
        assert_eq!(wire("0.5"), WireNumber::Float(0.5));
        assert_eq!(wire("1.25"), WireNumber::Float(1.25));
        assert_eq!(wire("0.1"), WireNumber::Decimal("0.1".into()));
        assert_eq!(wire("1e40"), WireNumber::Decimal(format!("1{}", "0".repeat(40))));
        assert_eq!(wire("2.000"), WireNumber::Int(2));
    }
}
