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

/// Accepts RFC 3339 strings or integer epoch milliseconds (docs/formats.md: a time).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    // A visitor rather than an untagged enum: no buffering of the value, no second attempt
    // (this runs for every report on the hot path).
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Millis;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("RFC 3339 string or epoch milliseconds")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Millis, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Millis, E> {
            Millis::try_from(v)
                .map_err(|_| E::custom(format!("epoch milliseconds {v} out of range")))
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Millis, E> {
            parse_rfc3339(s).ok_or_else(|| E::custom(format!("invalid RFC 3339 time `{s}`")))
        }
    }
    d.deserialize_any(Visitor)
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
/// The `n` least recently seen of `items` (when each was last seen, the item): what a cap
/// evicts first. Ties at the cut go in no particular order.
pub fn least_recent<K>(mut items: Vec<(Millis, K)>, n: usize) -> Vec<K> {
    if n == 0 {
        return Vec::new();
    }
    if n < items.len() {
        items.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
        items.truncate(n);
    }
    items.into_iter().map(|(_, k)| k).collect()
}

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
