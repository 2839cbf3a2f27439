//! Event time: epoch milliseconds inside, RFC 3339 (UTC, milliseconds) on the wire.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// Event time in milliseconds since the Unix epoch.
pub type Millis = i64;

/// Renders epoch milliseconds as RFC 3339 UTC with milliseconds, e.g. `2026-01-01T00:00:00.000Z`.
pub fn format_ms(ms: Millis) -> String {
    match DateTime::<Utc>::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => ms.to_string(),
    }
}

/// Parses an RFC 3339 string into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Accepts RFC 3339 strings or integer epoch milliseconds (CONTRACTS: "time").
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw<'a> {
        Int(i64),
        #[serde(borrow)]
        Str(std::borrow::Cow<'a, str>),
    }
    match Raw::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected RFC 3339 string or epoch milliseconds"))?
    {
        Raw::Int(ms) => Ok(ms),
        Raw::Str(s) => parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid RFC 3339 time `{s}`"))),
    }
}

pub fn serialize<S: Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ms(*ms))
}

/// Same as [`serialize`] for optional times (`null` when absent).
pub mod option {
    use super::*;
    pub fn serialize<S: Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_str(&format_ms(*ms)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(deserialize_with = "super::deserialize")] Millis);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

/// Wall-clock now in epoch milliseconds.
pub fn now_ms() -> Millis {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc3339_with_millis() {
        let ms = parse_rfc3339("2026-03-01T12:00:05.250+01:00").unwrap();
        assert_eq!(format_ms(ms), "2026-03-01T11:00:05.250Z");
    }
}
