//! `[input]`: reports in the users' own JSON. Each field of the report format
//! (docs/formats.md) is read from a path in the user's message, with a unit factor, a default,
//! a boolean's numbers, or the failure codes that count; paths that hold a CMCD string
//! (CTA-5004, as CDNs write it into their logs) are parsed into objects first. The result is
//! checked as any report is: what cannot be read is bad input naming the user's path.
//!
//! With no `[input]` the hot path (serde straight into [`Report`]) is untouched.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{DecodeError, Report, check_report};
use crate::field::Invalid;

/// Where one report field comes from. In TOML a string is a path: `session_id = "sess.id"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FieldMap {
    /// Dot-separated path in the message (`playback.stall_s`); `cmcd.sid` inside a CMCD path.
    pub path: String,
    /// Numbers are multiplied by it (seconds to milliseconds: 1000).
    pub scale: Option<f64>,
    /// The value when the path is absent or null (`0` makes a required field optional).
    pub default: Option<Value>,
    /// A boolean's number: `bs = true` (a CMCD buffer starvation) as `if_true` milliseconds.
    pub if_true: Option<f64>,
    pub if_false: Option<f64>,
    /// `error` only: the values that are failures (HTTP statuses, codes); others are not.
    pub failure_values: Vec<Value>,
    /// `error` only: the values that are not failures (`0`, `"OK"`); others are.
    pub ok_values: Vec<Value>,
}

/// A field's table in TOML (`{ path = "...", scale = 1000 }`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldTable {
    path: String,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    if_true: Option<f64>,
    #[serde(default)]
    if_false: Option<f64>,
    #[serde(default)]
    failure_values: Vec<Value>,
    #[serde(default)]
    ok_values: Vec<Value>,
}

impl<'de> Deserialize<'de> for FieldMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = FieldMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a path (\"a.b\") or a table { path = \"a.b\", scale = ... }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FieldMap, E> {
                Ok(FieldMap {
                    path: v.into(),
                    ..FieldMap::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<FieldMap, A::Error> {
                let t = FieldTable::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(FieldMap {
                    path: t.path,
                    scale: t.scale,
                    default: t.default,
                    if_true: t.if_true,
                    if_false: t.if_false,
                    failure_values: t.failure_values,
                    ok_values: t.ok_values,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `[input]`: every report field's source; a field not named is read from its own name at
/// the top level, as in our format.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Paths whose value is a CMCD string (`br=3200,bs,sid="6e2f"`, or URL-encoded as in a
    /// query string), read as an object: `cmcd.sid` is then the session id in `cmcd`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmcd: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<FieldMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<FieldMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<FieldMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdn: Option<FieldMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<FieldMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<FieldMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub played_ms: Option<FieldMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuffer_ms: Option<FieldMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_ms: Option<FieldMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<FieldMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_kbps: Option<FieldMap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<FieldMap>,
}

/// How a report field's value is read.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Time,
    Text,
    Count,
    Number,
    Failure,
}

/// The report's fields: name, kind, required.
const FIELDS: [(&str, Kind, bool); 12] = [
    ("ts", Kind::Time, true),
    ("session_id", Kind::Text, true),
    ("location", Kind::Text, true),
    ("cdn", Kind::Text, true),
    ("asn", Kind::Count, false),
    ("device", Kind::Text, false),
    ("played_ms", Kind::Count, true),
    ("rebuffer_ms", Kind::Count, true),
    ("startup_ms", Kind::Count, false),
    ("bitrate_kbps", Kind::Number, false),
    ("throughput_kbps", Kind::Number, false),
    ("error", Kind::Failure, false),
];

impl InputConfig {
    pub fn is_empty(&self) -> bool {
        *self == InputConfig::default()
    }

    fn get(&self, field: &str) -> Option<&FieldMap> {
        match field {
            "ts" => self.ts.as_ref(),
            "session_id" => self.session_id.as_ref(),
            "location" => self.location.as_ref(),
            "cdn" => self.cdn.as_ref(),
            "asn" => self.asn.as_ref(),
            "device" => self.device.as_ref(),
            "played_ms" => self.played_ms.as_ref(),
            "rebuffer_ms" => self.rebuffer_ms.as_ref(),
            "startup_ms" => self.startup_ms.as_ref(),
            "bitrate_kbps" => self.bitrate_kbps.as_ref(),
            "throughput_kbps" => self.throughput_kbps.as_ref(),
            "error" => self.error.as_ref(),
            _ => None,
        }
    }

    /// Paths well formed, factors positive, each option on a field it means something for.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (i, p) in self.cmcd.iter().enumerate() {
            check_path(p).map_err(|m| Invalid::new(format!("cmcd[{i}]"), m))?;
        }
        for (name, kind, _) in FIELDS {
            let Some(m) = self.get(name) else { continue };
            let bad = |key: &str, msg: String| {
                let at = if key.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}.{key}")
                };
                Err(Invalid::new(at, msg))
            };
            if let Err(msg) = check_path(&m.path) {
                return bad("path", msg);
            }
            if let Some(s) = m.scale
                && !(s.is_finite() && s > 0.0)
            {
                return bad("scale", format!("({s}) must be a positive number"));
            }
            if m.scale.is_some() && matches!(kind, Kind::Text | Kind::Failure) {
                return bad("scale", format!("{name} is not a number"));
            }
            let numeric = matches!(kind, Kind::Count | Kind::Number);
            for (key, v) in [("if_true", m.if_true), ("if_false", m.if_false)] {
                match v {
                    Some(_) if !numeric => {
                        return bad(key, format!("{name} is not a number of the report"));
                    }
                    Some(x) if !(x.is_finite() && x >= 0.0) => {
                        return bad(key, format!("({x}) must be a number >= 0"));
                    }
                    _ => {}
                }
            }
            let lists = !m.failure_values.is_empty() || !m.ok_values.is_empty();
            if lists && kind != Kind::Failure {
                return bad(
                    "",
                    "failure_values and ok_values are for `error` only".into(),
                );
            }
            if !m.failure_values.is_empty() && !m.ok_values.is_empty() {
                return bad("", "give failure_values or ok_values, not both".into());
            }
            if let Some(d) = &m.default {
                let fits = match kind {
                    Kind::Time => d.is_string() || d.is_number(),
                    Kind::Text => d.is_string(),
                    Kind::Count | Kind::Number => d.is_number() || d.is_boolean(),
                    Kind::Failure => true,
                };
                if !fits {
                    return bad("default", format!("({d}) does not fit {name}"));
                }
            }
        }
        Ok(())
    }
}

fn check_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.split('.').any(str::is_empty) {
        return Err(format!(
            "(\"{p}\") must be dot-separated names, e.g. \"playback.stall_ms\""
        ));
    }
    Ok(())
}

/// The value at a dot-separated path.
fn at<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// Reads a mapped report from `bytes`.
pub fn decode_mapped(
    input: &InputConfig,
    bytes: &[u8],
    limit: usize,
) -> Result<Report<'static>, DecodeError> {
    super::sized(bytes, limit)?;
    let mut doc: Value =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    for path in &input.cmcd {
        let Some(Value::String(s)) = at(&doc, path) else {
            continue;
        };
        let parsed = parse_cmcd(s)
            .map_err(|e| DecodeError::InvalidField(format!("`{path}` (CMCD): {e}")))?;
        if let Some(slot) = at_mut(&mut doc, path) {
            *slot = Value::Object(parsed);
        }
    }
    let mut out = Map::new();
    for (name, kind, required) in FIELDS {
        let own = FieldMap {
            path: name.into(),
            ..FieldMap::default()
        };
        let m = input.get(name).unwrap_or(&own);
        let found = at(&doc, &m.path).filter(|v| !v.is_null());
        let Some(v) = found.or(m.default.as_ref()) else {
            if required {
                return Err(DecodeError::InvalidField(format!(
                    "missing field `{}` (the report's `{name}`)",
                    m.path
                )));
            }
            continue;
        };
        let wrong = |what: &str| {
            DecodeError::InvalidField(format!(
                "`{}` (the report's `{name}`): {what}, not {v}",
                m.path
            ))
        };
        let value = match kind {
            Kind::Text => match v {
                Value::String(_) => v.clone(),
                Value::Number(n) => Value::String(n.to_string()),
                _ => return Err(wrong("expected a string")),
            },
            Kind::Time => match v {
                Value::String(_) => v.clone(),
                Value::Number(n) => {
                    let ms = n.as_f64().unwrap_or(f64::NAN) * m.scale.unwrap_or(1.0);
                    if !ms.is_finite() {
                        return Err(wrong("expected a time"));
                    }
                    Value::from(ms.round() as i64)
                }
                _ => return Err(wrong("expected a time (RFC 3339 or a number)")),
            },
            Kind::Count | Kind::Number => {
                let x = match v {
                    Value::Number(n) => n.as_f64().unwrap_or(f64::NAN) * m.scale.unwrap_or(1.0),
                    Value::Bool(true) if m.if_true.is_some() => m.if_true.unwrap_or_default(),
                    Value::Bool(false) if m.if_false.is_some() || m.if_true.is_some() => {
                        m.if_false.unwrap_or(0.0)
                    }
                    _ => return Err(wrong("expected a number")),
                };
                if !(x.is_finite() && x >= 0.0) {
                    return Err(DecodeError::OutOfRange {
                        field: name_static(name),
                        detail: format!("`{}`: {x} is not a finite number >= 0", m.path),
                    });
                }
                if kind == Kind::Count {
                    Value::from(x.round() as u64)
                } else {
                    Value::from(x)
                }
            }
            Kind::Failure => failure(m, v),
        };
        out.insert(name.into(), value);
    }
    let r = Report::deserialize(Value::Object(out))
        .map_err(|e| DecodeError::InvalidField(e.to_string()))?;
    check_report(r)
}

/// A failure code or null: null, false and "" are none; true is `failed`; a listed value
/// decides by the lists; any other value is a failure with itself as the code.
fn failure(m: &FieldMap, v: &Value) -> Value {
    let code = match v {
        Value::Null | Value::Bool(false) => return Value::Null,
        Value::Bool(true) => "failed".to_string(),
        Value::String(s) if s.is_empty() => return Value::Null,
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let listed = |list: &[Value]| list.iter().any(|x| x == v || x.as_str() == Some(&code));
    let failed = if !m.failure_values.is_empty() {
        listed(&m.failure_values)
    } else {
        !listed(&m.ok_values)
    };
    if failed {
        Value::String(code)
    } else {
        Value::Null
    }
}

fn name_static(name: &str) -> &'static str {
    FIELDS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or("input", |(n, _, _)| n)
}

fn at_mut<'v>(v: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    path.split('.').try_fold(v, |v, k| v.get_mut(k))
}

/// A CMCD payload (CTA-5004): comma-separated `key=value` pairs; a key alone is `true`; a
/// quoted value is a string (`\"` escapes a quote), a number is a number, anything else a
/// token (a string). URL-encoded payloads (`br%3D3200%2Cbs`) are decoded first.
pub fn parse_cmcd(text: &str) -> Result<Map<String, Value>, String> {
    let text = if text.contains('%') {
        percent_decode(text)?
    } else {
        text.to_string()
    };
    let c: Vec<char> = text.chars().collect();
    let mut out = Map::new();
    let mut i = 0;
    while i < c.len() {
        let start = i;
        while i < c.len() && c[i] != '=' && c[i] != ',' {
            i += 1;
        }
        let key = c[start..i].iter().collect::<String>().trim().to_string();
        if key.is_empty() || !key.chars().all(|k| k.is_ascii_alphanumeric() || k == '-') {
            return Err(format!("bad key \"{key}\""));
        }
        let value = if c.get(i) == Some(&'=') {
            i += 1;
            if c.get(i) == Some(&'"') {
                i += 1;
                let mut s = String::new();
                loop {
                    match c.get(i) {
                        Some('\\') => {
                            s.extend(c.get(i + 1));
                            i += 2;
                        }
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                        None => return Err(format!("unterminated string for \"{key}\"")),
                    }
                }
                Value::String(s)
            } else {
                let from = i;
                while i < c.len() && c[i] != ',' {
                    i += 1;
                }
                let raw = c[from..i].iter().collect::<String>().trim().to_string();
                match raw
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    Some(n) => Value::Number(n),
                    None => Value::String(raw),
                }
            }
        } else {
            Value::Bool(true)
        };
        out.insert(key.clone(), value);
        match c.get(i) {
            None => {}
            Some(',') => i += 1,
            Some(_) => return Err(format!("expected `,` after \"{key}\"")),
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape %{hex}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once %-decoded".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(toml_text: &str) -> InputConfig {
        let i: InputConfig = toml::from_str(toml_text).expect("input");
        i.validate().expect("valid");
        i
    }

    #[test]
    fn a_nested_beacon_in_seconds_with_a_boolean_failure() {
        let i = input(
            r#"
            ts = "time"
            session_id = "sess.id"
            location = "geo.city"
            cdn = "edge"
            played_ms = { path = "playback.played_s", scale = 1000 }
            rebuffer_ms = { path = "playback.stall_s", scale = 1000 }
            startup_ms = { path = "playback.startup_s", scale = 1000 }
            throughput_kbps = "net.kbps"
            error = "failed"
            "#,
        );
        let msg = br#"{"time":"2026-12-06T21:03:00Z","sess":{"id":"abc"},"geo":{"city":"IN/MH/Mumbai"},
            "edge":"cdn-a","playback":{"played_s":9.5,"stall_s":0.5,"startup_s":1.2},"net":{"kbps":5000},"failed":true}"#;
        let r = decode_mapped(&i, msg, 1 << 16).expect("report");
        assert_eq!(
            (r.session_id.as_ref(), r.location.as_ref(), r.cdn.as_ref()),
            ("abc", "IN/MH/Mumbai", "cdn-a")
        );
        assert_eq!(
            (r.played_ms, r.rebuffer_ms, r.startup_ms),
            (9_500, 500, Some(1_200))
        );
        assert_eq!(r.throughput_kbps, Some(5_000.0));
        assert_eq!(r.error.as_deref(), Some("failed"));
        let ok = String::from_utf8_lossy(msg).replace("\"failed\":true", "\"failed\":false");
        assert!(
            !decode_mapped(&i, ok.as_bytes(), 1 << 16)
                .expect("ok")
                .failed()
        );
        // A required field missing: bad input naming the user's path.
        let missing = String::from_utf8_lossy(msg).replace("\"played_s\":9.5,", "");
        let e = decode_mapped(&i, missing.as_bytes(), 1 << 16).expect_err("missing");
        assert!(e.to_string().contains("`playback.played_s`"), "{e}");
        assert_eq!(e.reason(), "invalid_field");
        let negative = String::from_utf8_lossy(msg).replace("9.5", "-1");
        let e = decode_mapped(&i, negative.as_bytes(), 1 << 16).expect_err("negative");
        assert_eq!(e.reason(), "out_of_range", "{e}");
    }

    #[test]
    fn a_cdn_log_line_with_cmcd() {
        let i = input(
            r#"
            cmcd = ["cmcd"]
            ts = { path = "timestamp", scale = 1000 }
            session_id = "cmcd.sid"
            location = "client_geo"
            played_ms = { path = "cmcd.d", default = 0 }
            rebuffer_ms = { path = "cmcd.bs", if_true = 1000, default = 0 }
            bitrate_kbps = "cmcd.br"
            throughput_kbps = "cmcd.mtp"
            error = { path = "sc_status", failure_values = [500, 502, 503, 504] }
            "#,
        );
        let line = |status: u16, cmcd: &str| {
            format!(
                r#"{{"timestamp":1765054980.5,"client_geo":"IN/MH/Mumbai","cdn":"cdn-a","sc_status":{status},"cmcd":"{cmcd}"}}"#
            )
        };
        let plain = r#"br=3200,bl=21300,bs,d=4004,mtp=25400,ot=v,sf=d,sid=\"6e2f-c457\",su"#;
        let r = decode_mapped(&i, line(200, plain).as_bytes(), 1 << 16).expect("report");
        assert_eq!(r.ts, 1_765_054_980_500);
        assert_eq!(r.session_id, "6e2f-c457");
        assert_eq!((r.played_ms, r.rebuffer_ms), (4_004, 1_000));
        assert_eq!(
            (r.bitrate_kbps, r.throughput_kbps),
            (Some(3_200.0), Some(25_400.0))
        );
        assert!(!r.failed());
        let r = decode_mapped(&i, line(503, plain).as_bytes(), 1 << 16).expect("report");
        assert_eq!(r.error.as_deref(), Some("503"));
        // No starvation, no object duration; URL-encoded as in a query string.
        let encoded = "br%3D3200%2Cmtp%3D25400%2Csid%3D%226e2f-c457%22";
        let r = decode_mapped(&i, line(200, encoded).as_bytes(), 1 << 16).expect("encoded");
        assert_eq!((r.played_ms, r.rebuffer_ms), (0, 0));
        assert_eq!(r.session_id, "6e2f-c457");
        let e = decode_mapped(&i, line(200, "br=1,sid=\\\"open").as_bytes(), 1 << 16)
            .expect_err("unterminated");
        assert!(e.to_string().contains("`cmcd` (CMCD)"), "{e}");
    }

    #[test]
    fn cmcd_keys_values_and_flags() {
        let m = parse_cmcd(r#"bs,br=3200,ot=v,sid="a,\"b",pr=1.25,"#).expect("cmcd");
        assert_eq!(m["bs"], Value::Bool(true));
        assert_eq!(m["br"].as_f64(), Some(3200.0));
        assert_eq!(m["ot"], "v");
        assert_eq!(m["sid"], "a,\"b");
        assert_eq!(m["pr"].as_f64(), Some(1.25));
        assert!(parse_cmcd("=1").is_err());
        assert!(parse_cmcd(r#"sid="x"y"#).is_err());
        assert!(parse_cmcd("").expect("empty").is_empty());
    }

    #[test]
    fn a_mapping_that_cannot_work_is_refused_naming_the_field() {
        let cases = [
            ("played_ms = \"a..b\"", "played_ms.path"),
            ("location = { path = \"geo\", scale = 2 }", "location.scale"),
            (
                "played_ms = { path = \"p\", scale = -1 }",
                "played_ms.scale",
            ),
            (
                "played_ms = { path = \"p\", failure_values = [1] }",
                "played_ms",
            ),
            (
                "error = { path = \"e\", failure_values = [1], ok_values = [0] }",
                "error",
            ),
            ("device = { path = \"d\", if_true = 1 }", "device.if_true"),
            ("cdn = { path = \"c\", default = 3 }", "cdn.default"),
            ("cmcd = [\"\"]", "cmcd[0]"),
        ];
        for (text, field) in cases {
            let i: InputConfig = toml::from_str(text).expect(text);
            let e = i.validate().expect_err(text);
            assert_eq!(e.field, field, "{text}: {}", e.message);
        }
        let e = toml::from_str::<InputConfig>("played_ms = { path = \"p\", scael = 1 }")
            .expect_err("unknown key");
        assert!(e.to_string().contains("scael"), "{e}");
    }
}
