//! Golden backtest: a small recorded run (tests/data/golden) through the real binary; the
//! alerts it writes must equal the recorded ones byte for byte, and those must be the right
//! ones for the incidents the recording contains.
//!
//! To re-record after an intended change of detection:
//! `QOS_REGENERATE_GOLDEN=1 cargo test --test backtest_golden`, then review the diff.

use std::path::{Path, PathBuf};
use std::process::Command;

use qos_sentinel::incident::{Alert, Status};
use qos_sentinel::sim::{Event, IncidentKind, Injected, Labels, SimConfig, Simulator};

const START: i64 = 1_767_297_600_000; // 2026-01-01T20:00:00Z, the daily peak

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden")
}

fn scenario() -> SimConfig {
    let mut c = SimConfig::quiet(42, START, 30 * 60_000);
    c.locations = 2;
    c.cdns = 2;
    c.peak_sessions = 110;
    c.incidents = vec![
        Injected {
            kind: IncidentKind::FailureSpike,
            location: "IN/MH/Mumbai".into(),
            cdn: "cdn-a".into(),
            start: START + 6 * 60_000,
            end: START + 13 * 60_000,
            asn: None,
        },
        Injected {
            kind: IncidentKind::Degradation,
            location: "IN/DL/Delhi".into(),
            cdn: "cdn-a".into(),
            start: START + 15 * 60_000,
            end: START + 23 * 60_000,
            asn: None,
        },
    ];
    c
}

/// Writes the recorded input: out of order within the lateness, with two bad lines.
fn regenerate() {
    let sim = Simulator::new(scenario());
    let labels = Labels::of(&sim, 60_000);
    let (mut reports, mut benchmarks) = (Vec::new(), Vec::new());
    for e in sim {
        match e {
            Event::Report(r) => reports.push(serde_json::to_string(&r).unwrap()),
            Event::Benchmark(b) => benchmarks.push(serde_json::to_string(&b).unwrap()),
        }
    }
    // Swap neighbours now and then: arrival order is not event-time order.
    for i in (0..reports.len().saturating_sub(1)).step_by(7) {
        reports.swap(i, i + 1);
    }
    reports.insert(100, "{this is not json".into());
    reports.insert(
        200,
        r#"{"ts":"2026-01-01T20:03:00Z","location":"IN/MH/Mumbai"}"#.into(),
    );
    std::fs::create_dir_all(dir()).unwrap();
    std::fs::write(dir().join("reports.jsonl"), reports.join("\n") + "\n").unwrap();
    std::fs::write(dir().join("benchmarks.jsonl"), benchmarks.join("\n") + "\n").unwrap();
    std::fs::write(
        dir().join("labels.json"),
        serde_json::to_string_pretty(&labels).unwrap(),
    )
    .unwrap();
}

fn backtest(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .arg("backtest")
        .arg("--reports")
        .arg(dir().join("reports.jsonl"))
        .arg("--benchmarks")
        .arg(dir().join("benchmarks.jsonl"))
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn backtest_matches_the_recorded_alerts() {
    let regen = std::env::var_os("QOS_REGENERATE_GOLDEN").is_some();
    if regen {
        regenerate();
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("alerts.jsonl");
    let labels = dir().join("labels.json");
    let run = backtest(&out, &["--labels", labels.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 bad lines"),
        "bad lines are counted: {stderr}"
    );
    let got = std::fs::read_to_string(&out).unwrap();
    if regen {
        std::fs::write(dir().join("expected_alerts.jsonl"), &got).unwrap();
    }
    let want = std::fs::read_to_string(dir().join("expected_alerts.jsonl")).unwrap();
    assert_eq!(
        got, want,
        "alerts differ from tests/data/golden/expected_alerts.jsonl"
    );

    // The recording is right, not merely stable: each injected incident fires, then resolves
    // with the same id, and nothing else fires.
    let alerts: Vec<Alert> = got
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scopes = [
        ("IN/MH/Mumbai", "failure_rate"),
        ("IN/DL/Delhi", "throughput_kbps"),
    ];
    for (loc, metric) in scopes {
        let of: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.scope.location.as_deref() == Some(loc) && a.metric.as_str() == metric)
            .collect();
        assert!(of.len() >= 2, "{loc} {metric}: {of:#?}");
        assert_eq!(of[0].status, Status::Firing);
        assert_eq!(of.last().unwrap().status, Status::Resolved);
        assert!(of.iter().all(|a| a.id == of[0].id));
    }
    for a in &alerts {
        assert_eq!(a.scope.cdn.as_deref(), Some("cdn-a"), "false alarm: {a:#?}");
    }
    // Event-time order.
    assert!(
        alerts
            .windows(2)
            .all(|w| w[0].window_end <= w[1].window_end)
    );
    // --labels prints the score as JSON.
    let score: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(score["recall"], 1.0, "{score}");
    assert_eq!(score["precision"], 1.0, "{score}");
}

#[test]
fn unusable_arguments_fail_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args([
            "backtest",
            "--reports",
            "/nonexistent/r.jsonl",
            "--benchmarks",
        ])
        .arg(dir().join("benchmarks.jsonl"))
        .arg("--out")
        .arg(tmp.path().join("a.jsonl"))
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/r.jsonl"),
        "{stderr}"
    );

    let run = Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args(["backtest", "--reports", "r.jsonl"])
        .output()
        .unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("--benchmarks"));
}
