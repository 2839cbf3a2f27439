//! Decoding of the two input formats (docs/formats.md, Reports and Benchmarks).
//!
//! Everything here is pure: bytes in, a typed record or a [`DecodeError`] out. A
//! `DecodeError` is always the producer's fault and never retryable; the caller routes the
//! message to the dead-letter topic with [`DecodeError::reason`] and moves on.

pub mod mapping;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::time::Millis;

/// One client quality report (docs/formats.md, Reports).
///
/// Strings borrow from the message where they can (no escapes in the JSON): decoding a
/// report allocates nothing on the hot path. `Report<'static>` owns its strings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Report<'a> {
    #[serde(with = "crate::time")]
    pub ts: Millis,
    #[serde(borrow)]
    pub session_id: Cow<'a, str>,
    #[serde(borrow)]
    pub location: Cow<'a, str>,
    #[serde(borrow)]
    pub cdn: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub device: Option<Cow<'a, str>>,
    pub played_ms: u64,
    pub rebuffer_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_kbps: Option<f64>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub error: Option<Cow<'a, str>>,
}

impl<'a> Report<'a> {
    /// A report of 20 s of smooth playback on `location` and `cdn` at `ts`, session `s`,
    /// nothing else measured: the base every test and the bench build theirs on
    /// (`Report { error: Some("E".into()), ..Report::new("L", "c", 0) }`).
    pub fn new(
        location: impl Into<Cow<'a, str>>,
        cdn: impl Into<Cow<'a, str>>,
        ts: Millis,
    ) -> Self {
        Report {
            ts,
            session_id: "s".into(),
            location: location.into(),
            cdn: cdn.into(),
            asn: None,
            device: None,
            played_ms: 20_000,
            rebuffer_ms: 0,
            startup_ms: None,
            bitrate_kbps: None,
            throughput_kbps: None,
            error: None,
        }
    }
}

impl Report<'_> {
    /// The same report owning its strings.
    pub fn into_owned(self) -> Report<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        Report {
            session_id: own(self.session_id),
            location: own(self.location),
            cdn: own(self.cdn),
            device: self.device.map(own),
            error: self.error.map(own),
            ..self
        }
    }

    /// True when this interval saw a playback failure.
    pub fn failed(&self) -> bool {
        self.error.as_deref().is_some_and(|e| !e.is_empty())
    }
}

/// What a CDN is expected to deliver at a location (docs/formats.md, Benchmarks).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Benchmark {
    #[serde(with = "crate::time")]
    pub ts: Millis,
    pub location: String,
    pub cdn: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_kbps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuffer_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
}

/// Why a message could not be used. `reason()` is a bounded label for metrics and headers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("message has no value")]
    Empty,
    #[error("not valid JSON: {0}")]
    InvalidJson(String),
    #[error("invalid field: {0}")]
    InvalidField(String),
    #[error("field `{field}` out of range: {detail}")]
    OutOfRange { field: &'static str, detail: String },
    #[error("benchmark key `{0}` is not of the form location|cdn")]
    BadKey(String),
}

impl DecodeError {
    /// Bounded reason label: one of [`DecodeError::REASONS`].
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Empty => "empty",
            DecodeError::InvalidJson(_) => "invalid_json",
            DecodeError::InvalidField(_) => "invalid_field",
            DecodeError::OutOfRange { .. } => "out_of_range",
            DecodeError::BadKey(_) => "bad_key",
        }
    }

    pub const REASONS: [&'static str; 6] = [
        "too_large",
        "empty",
        "invalid_json",
        "invalid_field",
        "out_of_range",
        "bad_key",
    ];
}

/// A message within `limit` bytes and not empty.
fn sized(bytes: &[u8], limit: usize) -> Result<(), DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(())
}

fn from_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], limit: usize) -> Result<T, DecodeError> {
    sized(bytes, limit)?;
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DecodeError::InvalidField(e.to_string()),
        _ => DecodeError::InvalidJson(e.to_string()),
    })
}

fn non_empty(field: &'static str, v: &str) -> Result<(), DecodeError> {
    if v.is_empty() {
        return Err(DecodeError::OutOfRange {
            field,
            detail: "must not be empty".into(),
        });
    }
    Ok(())
}

fn non_negative(field: &'static str, v: Option<f64>) -> Result<(), DecodeError> {
    match v {
        Some(x) if !(x.is_finite() && x >= 0.0) => Err(DecodeError::OutOfRange {
            field,
            detail: format!("{x} is not a finite number >= 0"),
        }),
        _ => Ok(()),
    }
}

fn unit_interval(field: &'static str, v: Option<f64>) -> Result<(), DecodeError> {
    match v {
        Some(x) if !(0.0..=1.0).contains(&x) => Err(DecodeError::OutOfRange {
            field,
            detail: format!("{x} is not in [0, 1]"),
        }),
        _ => Ok(()),
    }
}

/// Reads one client report: in our format, or in the users' own shape when `[input]` maps
/// it ([`mapping`]).
pub fn read_report<'b>(
    input: &mapping::InputConfig,
    bytes: &'b [u8],
    limit: usize,
) -> Result<Report<'b>, DecodeError> {
    if input.is_empty() {
        decode_report(bytes, limit)
    } else {
        mapping::decode_mapped(input, bytes, limit)
    }
}

/// Decodes and validates one client report.
pub fn decode_report(bytes: &[u8], limit: usize) -> Result<Report<'_>, DecodeError> {
    check_report(from_json(bytes, limit)?)
}

/// The checks serde's types do not make.
fn check_report(r: Report<'_>) -> Result<Report<'_>, DecodeError> {
    non_empty("session_id", &r.session_id)?;
    non_empty("location", &r.location)?;
    non_empty("cdn", &r.cdn)?;
    non_negative("bitrate_kbps", r.bitrate_kbps)?;
    non_negative("throughput_kbps", r.throughput_kbps)?;
    Ok(r)
}

/// Decodes and validates one benchmark row.
pub fn decode_benchmark(bytes: &[u8], limit: usize) -> Result<Benchmark, DecodeError> {
    let b: Benchmark = from_json(bytes, limit)?;
    non_empty("location", &b.location)?;
    non_empty("cdn", &b.cdn)?;
    non_negative("throughput_kbps", b.throughput_kbps)?;
    non_negative("startup_ms", b.startup_ms)?;
    unit_interval("rebuffer_ratio", b.rebuffer_ratio)?;
    unit_interval("error_rate", b.error_rate)?;
    Ok(b)
}

/// Splits a benchmark key `location|cdn`. Locations may contain `/` but not `|`; the CDN is
/// whatever follows the last `|`.
pub fn split_benchmark_key(key: &[u8]) -> Result<(String, String), DecodeError> {
    let s = std::str::from_utf8(key)
        .map_err(|_| DecodeError::BadKey(String::from_utf8_lossy(key).into_owned()))?;
    match s.rsplit_once('|') {
        Some((loc, cdn)) if !loc.is_empty() && !cdn.is_empty() => Ok((loc.into(), cdn.into())),
        _ => Err(DecodeError::BadKey(s.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 64 * 1024;

    #[test]
    fn decodes_minimal_report_with_either_time_form() {
        let a = br#"{"ts":"2026-01-01T00:00:10Z","session_id":"s","location":"IN/MH/Mumbai","cdn":"cdn-a","played_ms":10000,"rebuffer_ms":0}"#;
        let b = br#"{"ts":1767225610000,"session_id":"s","location":"IN/MH/Mumbai","cdn":"cdn-a","played_ms":10000,"rebuffer_ms":0,"extra":1}"#;
        let ra = decode_report(a, LIMIT).unwrap();
        let rb = decode_report(b, LIMIT).unwrap();
        assert_eq!(ra, rb);
        assert_eq!(ra.ts, 1_767_225_610_000);
        assert!(!ra.failed());
    }

    #[test]
    fn classifies_bad_reports() {
        let cases: [(&[u8], &str); 6] = [
            (b"not json", "invalid_json"),
            (br#"{"ts":1,"session_id":"s","location":"l","cdn":"c","played_ms":1}"#, "invalid_field"),
            (br#"{"ts":1,"session_id":"s","location":"l","cdn":"c","played_ms":-5,"rebuffer_ms":0}"#, "invalid_field"),
            (br#"{"ts":"yesterday","session_id":"s","location":"l","cdn":"c","played_ms":1,"rebuffer_ms":0}"#, "invalid_field"),
            (br#"{"ts":1,"session_id":"s","location":"","cdn":"c","played_ms":1,"rebuffer_ms":0}"#, "out_of_range"),
            (b"", "empty"),
        ];
        for (bytes, reason) in cases {
            let err = decode_report(bytes, LIMIT).unwrap_err();
            assert_eq!(
                err.reason(),
                reason,
                "{}: {err}",
                String::from_utf8_lossy(bytes)
            );
        }
        let big = vec![b' '; LIMIT + 1];
        assert_eq!(
            decode_report(&big, LIMIT).unwrap_err().reason(),
            "too_large"
        );
    }

    #[test]
    fn rejects_benchmark_ratios_outside_unit_interval() {
        let b = br#"{"ts":1,"location":"l","cdn":"c","error_rate":1.5}"#;
        let err = decode_benchmark(b, LIMIT).unwrap_err();
        assert!(err.to_string().contains("error_rate"), "{err}");
    }

    #[test]
    fn splits_benchmark_keys_on_last_bar() {
        assert_eq!(
            split_benchmark_key(b"IN/MH/Mumbai|cdn-a").unwrap(),
            ("IN/MH/Mumbai".into(), "cdn-a".into())
        );
        assert!(split_benchmark_key(b"nobar").is_err());
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// JSON-shaped noise: objects with the contract's field names and values of every type.
    fn jsonish() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "ts",
            "session_id",
            "location",
            "cdn",
            "asn",
            "device",
            "played_ms",
            "rebuffer_ms",
            "startup_ms",
            "bitrate_kbps",
            "throughput_kbps",
            "error",
            "error_rate",
            "rebuffer_ratio",
            "x",
        ]);
        let value = prop_oneof![
            Just("null".to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:e}")),
            "[a-zA-Z0-9/ :.-]{0,12}".prop_map(|s| format!("\"{s}\"")),
            Just("\"2026-01-01T00:00:00Z\"".to_string()),
            Just("[1,2]".to_string()),
            Just("{}".to_string()),
            Just("1e400".to_string()),
        ];
        prop::collection::vec((key, value), 0..14).prop_map(|kv| {
            let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        /// Nothing from the network can panic the decoders, and whatever they accept is valid.
        #[test]
        fn decoders_never_panic_on_json_shaped_input(s in jsonish()) {
            if let Ok(r) = decode_report(s.as_bytes(), 65_536) {
                prop_assert!(!r.location.is_empty() && !r.cdn.is_empty());
                prop_assert!(r.throughput_kbps.is_none_or(|t| t.is_finite() && t >= 0.0));
            }
            if let Ok(b) = decode_benchmark(s.as_bytes(), 65_536) {
                prop_assert!(b.error_rate.is_none_or(|e| (0.0..=1.0).contains(&e)));
            }
        }

        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_report(&bytes, 256);
            let _ = decode_benchmark(&bytes, 256);
            let _ = split_benchmark_key(&bytes);
        }
    }
}
