//! Whole numbers as JSON Schema counts them: `5` and `5.0` are the same
//! integer. serde's integer types refuse `5.0`, so a request body that the
//! OpenAPI document calls valid would be refused; the integer fields of
//! request bodies read through [`optional`] instead.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{self, Visitor};

/// Reads an optional whole number (`null` is `None`) that fits `T`, given
/// as an integer or as a float with no fractional part. Use with
/// `#[serde(default, deserialize_with = "swarm_core::whole::optional")]`.
pub fn optional<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    d.deserialize_any(Whole(PhantomData))
}

struct Whole<T>(PhantomData<T>);

impl<'de, T: TryFrom<u64>> Visitor<'de> for Whole<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number, at least 0")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        T::try_from(v)
            .map(Some)
            .map_err(|_| E::custom(format!("{v} is too large")))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // 2^64 as f64 is the first float past u64::MAX.
        if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
            self.visit_u64(v as u64)
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "super::optional")]
        n: Option<u32>,
    }

    fn n(json: &str) -> Result<Option<u32>, String> {
        serde_json::from_str::<Body>(json)
            .map(|b| b.n)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn integral_floats_are_whole_numbers() {
        assert_eq!(n(r#"{"n": 5}"#), Ok(Some(5)));
        assert_eq!(n(r#"{"n": 5.0}"#), Ok(Some(5)));
        assert_eq!(n(r#"{"n": 0e3}"#), Ok(Some(0)));
        assert_eq!(n(r#"{"n": null}"#), Ok(None));
        assert_eq!(n("{}"), Ok(None));
        assert_eq!(n(r#"{"n": 4294967295}"#), Ok(Some(u32::MAX)));
        for bad in [
            "5.5",
            "-1",
            "-1.0",
            "4294967296",
            "1e30",
            "\"5\"",
            "true",
            "[]",
        ] {
            let e = n(&format!(r#"{{"n": {bad}}}"#)).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(n(r#"{"n": "5"}"#).unwrap_err().contains("a whole number"));
    }
}
