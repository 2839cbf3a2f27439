//! The daemon and `backtest` run the same detection: for one recorded input, with an incident
//! that begins as a warning and escalates to critical, the daemon's alerts topic (through a
//! Kafka-protocol broker, librdkafka's mock cluster) equals `backtest`'s output line for line
//! by id, status and severity. The daemon once dropped the escalation as a repeat of
//! `id:firing`: receivers routed to critical alerts were never paged for it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use qos_sentinel::detect::Severity;
use qos_sentinel::incident::{Alert, Status};
use qos_sentinel::sim::{Event, SimConfig, Simulator};

const START: i64 = 1_767_297_600_000; // 2026-01-01T20:00:00Z
const MIN: i64 = 60_000;

/// A quiet half hour on 2 x 2 keys where one key's throughput falls to 60 % of normal from
/// minute 8 (a warning), to 20 % from minute 14 (critical), and recovers at minute 22.
fn write_input(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut c = SimConfig::quiet(5, START, 32 * MIN);
    c.locations = 2;
    c.cdns = 2;
    c.peak_sessions = 160;
    let sim = Simulator::new(c);
    let victim = qos_sentinel::sim::location_names(2)[0].clone();
    let (mut reports, mut benchmarks) = (String::new(), String::new());
    for e in sim {
        match e {
            Event::Report(r) => {
                let mut v = serde_json::to_value(&r).unwrap();
                let factor = match r.ts - START {
                    t if r.location == victim
                        && r.cdn == "cdn-a"
                        && (8 * MIN..14 * MIN).contains(&t) =>
                    {
                        0.6
                    }
                    t if r.location == victim
                        && r.cdn == "cdn-a"
                        && (14 * MIN..22 * MIN).contains(&t) =>
                    {
                        0.2
                    }
                    _ => 1.0,
                };
                if let Some(t) = r.throughput_kbps {
                    v["throughput_kbps"] = serde_json::json!(t * factor);
                }
                reports.push_str(&format!("{v}\n"));
            }
            Event::Benchmark(b) => {
                benchmarks.push_str(&format!("{}\n", serde_json::to_string(&b).unwrap()))
            }
        }
    }
    let (r, b) = (dir.join("reports.jsonl"), dir.join("benchmarks.jsonl"));
    std::fs::write(&r, reports).unwrap();
    std::fs::write(&b, benchmarks).unwrap();
    (r, b)
}

fn lines(alerts: &[Alert]) -> Vec<(String, Status, Severity)> {
    alerts
        .iter()
        .map(|a| (a.id.clone(), a.status, a.severity))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_topic_equals_backtest_escalations_included() {
    let dir = tempfile::tempdir().unwrap();
    let (reports, benchmarks) = write_input(dir.path());

    let out = dir.path().join("alerts.jsonl");
    let run = Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args(["backtest", "--reports"])
        .arg(&reports)
        .arg("--benchmarks")
        .arg(&benchmarks)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let backtest: Vec<Alert> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want = lines(&backtest);
    // The scenario is what it claims: one incident fires as a warning, then as critical.
    let escalated = backtest.iter().any(|a| {
        a.status == Status::Firing
            && a.severity == Severity::Critical
            && backtest.iter().any(|w| {
                w.id == a.id && w.status == Status::Firing && w.severity == Severity::Warning
            })
    });
    assert!(escalated, "no escalation in the scenario: {want:?}");

    // The same lines through the daemon: benchmarks first, then the reports in file order.
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.http.listen = common::free_addr();
    common::mock_cluster(&mut cfg, 1);
    let p = common::producer(&cfg.kafka.brokers);
    for l in std::fs::read_to_string(&benchmarks).unwrap().lines() {
        let b: serde_json::Value = serde_json::from_str(l).unwrap();
        let key = format!(
            "{}|{}",
            b["location"].as_str().unwrap(),
            b["cdn"].as_str().unwrap()
        );
        common::send(&p, &cfg.kafka.benchmarks_topic, &key, l.as_bytes());
    }
    common::flush(&p);
    let daemon = common::start_daemon(&cfg);
    for l in std::fs::read_to_string(&reports).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(l).unwrap();
        common::send(
            &p,
            &cfg.kafka.reports_topic,
            r["location"].as_str().unwrap(),
            l.as_bytes(),
        );
    }
    common::flush(&p);
    let c = cfg.clone();
    let n = want.len();
    let got = tokio::task::spawn_blocking(move || common::settled(&c, n, Duration::from_secs(5)))
        .await
        .unwrap();
    daemon.stop().await;
    assert_eq!(
        lines(&got),
        want,
        "the alerts topic differs from backtest's output"
    );
}
