//! JSON integers as JSON Schema reads them: `5` and `5.0` are both the integer 5 (a number
//! with a zero fractional part is an `integer`), so a client or fuzzer that writes counts
//! as floats is not refused for the spelling. `1.5`, strings and numbers beyond ±2^53 (where
//! a float is no longer exact) are still type errors (422).

use serde::de::{Error, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};
use std::fmt;

/// The largest integer a float holds exactly.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// `#[serde(deserialize_with = "crate::domain::integral::deserialize")]` for an `i64`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    deserializer.deserialize_any(Integral)
}

/// The same for an `Option<i64>` (absent or `null`: `None`; add `#[serde(default)]`).
pub fn option<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "deserialize")] i64);
    Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(v)| v))
}

struct Integral;

impl Visitor<'_> for Integral {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 && v.abs() <= EXACT {
            Ok(v as i64)
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct Count {
        #[serde(deserialize_with = "super::deserialize")]
        n: i64,
    }

    fn parse(json: &str) -> Result<i64, String> {
        serde_json::from_str::<Count>(&format!(r#"{{"n":{json}}}"#))
            .map(|c| c.n)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn integral_floats_are_integers_and_the_rest_is_refused() {
        assert_eq!(parse("5"), Ok(5));
        assert_eq!(parse("-3"), Ok(-3));
        assert_eq!(parse("5.0"), Ok(5));
        assert_eq!(parse("-0.0"), Ok(0));
        assert_eq!(parse("1e3"), Ok(1000));
        assert_eq!(parse("9007199254740992.0"), Ok(9_007_199_254_740_992));
        for bad in [
            "1.5",
            "1e30",
            "9007199254740994.0",
            "9223372036854775808",
            "\"5\"",
            "null",
            "true",
        ] {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
    }
}
