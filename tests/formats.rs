//! `docs/formats.md` is the reference users rely on: its tables are read here and held to the
//! code. Every documented report and benchmark field is decoded, a required one missing is
//! bad input naming it, an optional one missing is not; an alert with every optional part
//! set has exactly the documented fields; the dead-letter reasons are the documented ones.

use std::collections::{BTreeMap, BTreeSet};

use qos_sentinel::decode::{DecodeError, decode_benchmark, decode_report};
use qos_sentinel::detect::Severity;
use qos_sentinel::incident::evidence::Impact;
use qos_sentinel::incident::{Alert, Scope, Status};
use qos_sentinel::metric::Metric;
use qos_sentinel::window::cohort::Cohort;

const LIMIT: usize = 1 << 20;

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/formats.md"))
        .expect("docs/formats.md")
}

/// The rows of the first table under `## {section}`: first cell (backticks removed, a cell
/// naming two fields split) and the fourth cell when there is one (required / always).
fn table(section: &str) -> Vec<(String, String)> {
    let text = doc();
    let start = text
        .find(&format!("## {section}"))
        .unwrap_or_else(|| panic!("no section {section}"));
    let rest = &text[start..];
    let mut rows = Vec::new();
    let mut started = false;
    for line in rest.lines().skip(1) {
        if line.starts_with("## ") {
            break;
        }
        if !line.starts_with('|') {
            if started {
                break;
            }
            continue;
        }
        started = true;
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells[0].starts_with("---") || !cells[0].starts_with('`') {
            continue; // the header and its rule
        }
        let flag = cells.get(2).copied().unwrap_or_default().to_string();
        for name in cells[0].split(',') {
            rows.push((name.trim().trim_matches('`').to_string(), flag.clone()));
        }
    }
    assert!(!rows.is_empty(), "section {section} has no table");
    rows
}

/// A value of the documented field for a full example; a field documented here but not
/// known to this test fails, so the page and the test move together.
fn sample(field: &str) -> serde_json::Value {
    use serde_json::json;
    match field {
        "ts" => json!("2026-12-06T21:03:00Z"),
        "session_id" => json!("s-1"),
        "location" => json!("IN/MH/Mumbai"),
        "cdn" => json!("cdn-a"),
        "asn" => json!(64512),
        "device" => json!("tv"),
        "played_ms" => json!(9_000),
        "rebuffer_ms" => json!(1_000),
        "startup_ms" => json!(1_200),
        "bitrate_kbps" | "throughput_kbps" => json!(4_500.5),
        "error" => json!("E42"),
        "rebuffer_ratio" | "error_rate" => json!(0.01),
        other => panic!("docs/formats.md documents `{other}`: give this test a sample of it"),
    }
}

fn full(rows: &[(String, String)]) -> serde_json::Map<String, serde_json::Value> {
    rows.iter().map(|(f, _)| (f.clone(), sample(f))).collect()
}

fn bytes(m: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    serde_json::to_vec(m).expect("json")
}

#[test]
fn every_documented_report_field_is_read_as_documented() {
    let rows = table("Reports (input)");
    let mut m = full(&rows);
    m.insert("unknown_extra".into(), serde_json::json!({"ignored": true}));
    let full_bytes = bytes(&m);
    let r = decode_report(&full_bytes, LIMIT).expect("the full report decodes");
    assert_eq!(
        (
            r.session_id.as_ref(),
            r.location.as_ref(),
            r.cdn.as_ref(),
            r.asn,
            r.device.as_deref(),
        ),
        ("s-1", "IN/MH/Mumbai", "cdn-a", Some(64512), Some("tv"))
    );
    assert_eq!(
        (r.played_ms, r.rebuffer_ms, r.startup_ms),
        (9_000, 1_000, Some(1_200))
    );
    assert_eq!(
        (r.bitrate_kbps, r.throughput_kbps),
        (Some(4_500.5), Some(4_500.5))
    );
    assert_eq!(r.error.as_deref(), Some("E42"));
    assert_eq!(
        r.ts,
        qos_sentinel::time::parse_rfc3339("2026-12-06T21:03:00Z").expect("ts")
    );
    // Times as epoch milliseconds too.
    m.insert("ts".into(), serde_json::json!(r.ts));
    assert_eq!(decode_report(&bytes(&m), LIMIT).expect("ms").ts, r.ts);
    // `error` null: no failure.
    m.insert("error".into(), serde_json::Value::Null);
    assert!(
        !decode_report(&bytes(&m), LIMIT)
            .expect("null error")
            .failed()
    );
    presence_as_documented(&rows, |b| decode_report(b, LIMIT).map(|_| ()));
}

#[test]
fn every_documented_benchmark_field_is_read_as_documented() {
    let rows = table("Benchmarks (input)");
    let m = full(&rows);
    let b = decode_benchmark(&bytes(&m), LIMIT).expect("the full benchmark decodes");
    assert_eq!(
        (b.location.as_str(), b.cdn.as_str()),
        ("IN/MH/Mumbai", "cdn-a")
    );
    assert_eq!(
        (
            b.throughput_kbps,
            b.rebuffer_ratio,
            b.startup_ms,
            b.error_rate
        ),
        (Some(4_500.5), Some(0.01), Some(1_200.0), Some(0.01))
    );
    presence_as_documented(&rows, |b| decode_benchmark(b, LIMIT).map(|_| ()));
    // Out of the documented range: bad input naming the field.
    let mut m = full(&rows);
    m.insert("error_rate".into(), serde_json::json!(1.5));
    let e = decode_benchmark(&bytes(&m), LIMIT).expect_err("1.5 is not a rate");
    assert!(e.to_string().contains("error_rate"), "{e}");
}

/// A required field missing is bad input that names it; an optional one missing is fine.
fn presence_as_documented(
    rows: &[(String, String)],
    decode: impl Fn(&[u8]) -> Result<(), DecodeError>,
) {
    for (field, required) in rows {
        let mut m = full(rows);
        m.remove(field);
        match (required.as_str(), decode(&bytes(&m))) {
            ("yes", Ok(())) => {
                panic!("`{field}` is documented as required, yet it may be left out")
            }
            ("yes", Err(e)) => assert!(e.to_string().contains(field.as_str()), "{field}: {e}"),
            ("no", Err(e)) => panic!("`{field}` is documented as optional, yet without it: {e}"),
            ("no", Ok(())) => {}
            (other, _) => panic!("`{field}`: required is `{other}`, not yes or no"),
        }
    }
}

#[test]
fn an_alert_has_exactly_the_documented_fields() {
    let a = Alert {
        id: "00226e304a6652cc".into(),
        status: Status::Firing,
        rule: "throughput_below_benchmark".into(),
        severity: Severity::Critical,
        scope: Scope::pair("IN/DL/Delhi", "cdn-c"),
        metric: Metric::THROUGHPUT_KBPS,
        observed: 1_243.0,
        expected: Some(4_349.0),
        samples: 93,
        p_value: Some(3.6e-20),
        window_start: 0,
        window_end: 60_000,
        started_at: 0,
        resolved_at: Some(120_000),
        summary: "cdn-c at IN/DL/Delhi: throughput 1243 kbps vs 4349 kbps expected".into(),
        parent_id: Some("b5bb450bfd32308f".into()),
        cohort: Some(Cohort {
            dimension: "asn".into(),
            value: "64512".into(),
            share: 0.9,
            traffic_share: 0.2,
        }),
        impact: Some(Impact {
            reports: 1_204,
            sessions: 96,
            degraded_minutes: 410.0,
            excess_stalled_minutes: None,
            missing_reports: None,
        }),
        silenced_by: vec!["7f3c2a91d0e4b658".into()],
    };
    let v = serde_json::to_value(&a).expect("json");
    let written: BTreeSet<String> = v.as_object().expect("object").keys().cloned().collect();
    let rows = table("Alerts (output)");
    let documented: BTreeSet<String> = rows.iter().map(|(f, _)| f.clone()).collect();
    assert_eq!(written, documented, "docs/formats.md and the alert differ");
    let always: BTreeMap<&str, &str> = rows.iter().map(|(f, a)| (f.as_str(), a.as_str())).collect();
    // What is documented as optional is left out when absent; the rest is always written.
    let bare = Alert {
        parent_id: None,
        cohort: None,
        impact: None,
        silenced_by: Vec::new(),
        ..a.clone()
    };
    let bare = serde_json::to_value(&bare).expect("json");
    for (field, flag) in always {
        assert_eq!(
            bare.get(field).is_some(),
            flag == "yes",
            "`{field}` documented as always: {flag}"
        );
    }
    assert_eq!(
        v["window_end"], "1970-01-01T00:01:00.000Z",
        "times are RFC 3339 UTC with ms"
    );
    // Every scope the page names is what the alert's scope writes.
    let text = doc();
    for scope in [
        Scope::pair("IN/MH/Mumbai", "cdn-a"),
        Scope::cdn_wide("cdn-a"),
        Scope::cdn_under("IN", "cdn-a"),
        Scope::location_wide("IN/MH/Mumbai"),
    ] {
        let key = format!("`{scope}`");
        assert!(
            text.contains(&key),
            "the key {key} is not in docs/formats.md"
        );
        let json = serde_json::to_string(&scope)
            .expect("json")
            .replace(',', ", ")
            .replace(':', ": ");
        let json = json
            .replace("\"cdn-a\"", "...")
            .replace("\"IN/MH/Mumbai\"", "...");
        assert!(
            text.contains(&format!("`{json}`")),
            "the scope {json} is not in docs/formats.md"
        );
    }
}

#[test]
fn the_dead_letter_reasons_are_the_documented_ones() {
    let text = doc();
    let row = text
        .lines()
        .find(|l| l.starts_with("| `reason` |"))
        .expect("the reason header row");
    let documented: BTreeSet<&str> = row
        .split('`')
        .skip(3)
        .step_by(2)
        .filter(|w| *w != "reason" && !w.starts_with("qos_sentinel_"))
        .collect();
    let code: BTreeSet<&str> = DecodeError::REASONS.into_iter().collect();
    assert_eq!(documented, code);
}
