//! Human-readable durations (`"10s"`, `"250ms"`, `"2m"`) and sizes
//! (`"128MiB"`, `"1GiB"`, `"512KiB"`, `"4096"`), as written in `wisp.toml`
//! and in the API's JSON.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A duration written with a unit: `ms`, `s`, `m` or `h`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

/// A size in bytes, written as a number of bytes or with a unit:
/// `KiB`, `MiB`, `GiB` (or `KB`, `MB`, `GB` for powers of ten).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A duration or a size that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a valid {what} (examples: {examples})")]
pub struct UnitError {
    text: String,
    what: &'static str,
    examples: &'static str,
}

/// Splits `"128MiB"` into `(128, "MiB")`.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim()))
}

impl FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        let error = || UnitError {
            text: text.to_owned(),
            what: "duration",
            examples: "\"250ms\", \"10s\", \"5m\", \"1h\"",
        };
        let (number, unit) = split_number(text.trim()).ok_or_else(error)?;
        let millis = match unit {
            "ms" => Some(number),
            "s" => number.checked_mul(1_000),
            "m" => number.checked_mul(60_000),
            "h" => number.checked_mul(3_600_000),
            _ => None,
        }
        .ok_or_else(error)?;
        Ok(Self(Duration::from_millis(millis)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        match millis {
            m if m != 0 && m.is_multiple_of(3_600_000) => write!(f, "{}h", m / 3_600_000),
            m if m != 0 && m.is_multiple_of(60_000) => write!(f, "{}m", m / 60_000),
            m if m.is_multiple_of(1_000) => write!(f, "{}s", m / 1_000),
            m => write!(f, "{m}ms"),
        }
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        let error = || UnitError {
            text: text.to_owned(),
            what: "size",
            examples: "\"4096\", \"512KiB\", \"128MiB\", \"1GiB\"",
        };
        let (number, unit) = split_number(text.trim()).ok_or_else(error)?;
        let factor: u64 = match unit {
            "" | "B" => 1,
            // `Ki`, `Mi`, `Gi` are the spellings OpenFaaS and Kubernetes use in `limits`.
            "KiB" | "Ki" => 1 << 10,
            "MiB" | "Mi" => 1 << 20,
            "GiB" | "Gi" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(error()),
        };
        number.checked_mul(factor).map(Self).ok_or_else(error)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        for (factor, unit) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
            if bytes != 0 && bytes.is_multiple_of(factor) {
                return write!(f, "{}{unit}", bytes / factor);
            }
        }
        write!(f, "{bytes}")
    }
}

macro_rules! serde_as_string {
    ($type:ty, $expecting:literal, bare_numbers: $bare_numbers:literal) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl de::Visitor<'_> for Visitor {
                    type Value = $type;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, text: &str) -> Result<$type, E> {
                        text.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, number: u64) -> Result<$type, E> {
                        number.to_string().parse().map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, number: i64) -> Result<$type, E> {
                        number.to_string().parse().map_err(E::custom)
                    }
                }
                deserializer.deserialize_any(Visitor)
            }
        }

        /// A string; for a size, a bare number of bytes too.
        impl utoipa::PartialSchema for $type {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
                let text = ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some($expecting));
                if $bare_numbers {
                    let bytes = ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0));
                    OneOfBuilder::new().item(text).item(bytes).into()
                } else {
                    text.into()
                }
            }
        }

        impl utoipa::ToSchema for $type {}
    };
}

// A bare number is no duration (it has no unit): only sizes take one.
serde_as_string!(HumanDuration, "a duration such as \"10s\"", bare_numbers: false);
serde_as_string!(ByteSize, "a size such as \"128MiB\"", bare_numbers: true);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (text, millis, shown) in [
            ("250ms", 250, "250ms"),
            ("10s", 10_000, "10s"),
            ("5m", 300_000, "5m"),
            ("1h", 3_600_000, "1h"),
            ("1500ms", 1_500, "1500ms"),
            ("60s", 60_000, "1m"),
        ] {
            let parsed: HumanDuration = text.parse().unwrap();
            assert_eq!(parsed.0, Duration::from_millis(millis));
            assert_eq!(parsed.to_string(), shown);
        }
        for bad in ["", "10", "s", "10 sec", "-1s", "1.5s"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_and_print() {
        for (text, bytes, shown) in [
            ("4096", 4096, "4KiB"),
            ("128MiB", 128 << 20, "128MiB"),
            ("1GiB", 1 << 30, "1GiB"),
            ("100MB", 100_000_000, "100000000"),
            ("7", 7, "7"),
            ("256Mi", 256 << 20, "256MiB"),
        ] {
            let parsed: ByteSize = text.parse().unwrap();
            assert_eq!(parsed.0, bytes);
            assert_eq!(parsed.to_string(), shown);
        }
        for bad in ["", "MiB", "12 parsecs", "99999999999999GiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
    }
}
