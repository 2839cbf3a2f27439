//! The daemon and `backtest` run the same detection: for one recorded input, with an incident
//! that begins as a warning and escalates to critical, the daemon's alerts topic (through a
//! Kafka-protocol broker, librdkafka's mock cluster) equals `backtest`'s output line for line
//! by id, status and severity. The daemon once dropped the escalation as a repeat of
//! `id:firing`: receivers routed to critical alerts were never paged for it. And reports from
//! wild clocks (1970, year 1, 2100, 9999, the i64 extremes) mixed in change no alert in either:
//! they once closed hundreds of empty windows (false pages), hid every alert, or hung backtest.

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

/// A recording's lines.
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn lines(alerts: &[Alert]) -> Vec<(String, Status, Severity)> {
    alerts
        .iter()
        .map(|a| (a.id.clone(), a.status, a.severity))
        .collect()
}

/// `backtest` over the files, in at most 60 s; its alerts and its summary line.
fn backtest(dir: &Path, reports: &Path, benchmarks: &Path) -> (Vec<Alert>, String) {
    let out = dir.join("alerts.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args(["backtest", "--reports"])
        .arg(reports)
        .arg("--benchmarks")
        .arg(benchmarks)
        .arg("--out")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("backtest of {} ran over 60 s", reports.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let alerts = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (alerts, stderr)
}

/// The daemon's alerts over the benchmark file and `reports` (lines, in this order) through a
/// broker, once `n` have come and all resolved; those of windows within the recording (once
/// its input stops, the daemon advances event time by the wall clock and, a minute later,
/// pages the silence as `reports_below_usual`; a backtest's input just ends). And the dead
/// letters it wrote, once there are `dead` of them.
async fn daemon(
    dir: &Path,
    benchmarks: &Path,
    reports: &[String],
    n: usize,
    dead: usize,
) -> (Vec<Alert>, Vec<String>) {
    let mut cfg = common::test_config(&dir.join("state"));
    cfg.http.listen = common::free_addr();
    common::mock_cluster(&mut cfg, 1);
    let p = common::producer(&cfg.kafka.brokers);
    for l in std::fs::read_to_string(benchmarks).unwrap().lines() {
        let b: serde_json::Value = serde_json::from_str(l).unwrap();
        let key = format!(
            "{}|{}",
            b["location"].as_str().unwrap(),
            b["cdn"].as_str().unwrap()
        );
        common::send(&p, &cfg.kafka.benchmarks_topic, &key, l.as_bytes());
    }
    common::flush(&p);
    let d = common::start_daemon(&cfg);
    for l in reports {
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
    let got = tokio::task::spawn_blocking(move || common::settled(&c, n, Duration::from_secs(5)))
        .await
        .unwrap();
    let (brokers, topic) = (
        cfg.kafka.brokers.clone(),
        cfg.kafka.dead_letter_topic.clone(),
    );
    let letters = tokio::task::spawn_blocking(move || {
        let c = common::tail(&brokers, &topic);
        common::read_until(&c, Duration::from_secs(30), |r| r.len() >= dead)
    })
    .await
    .unwrap()
    .iter()
    .map(|m| {
        let error = m.headers.iter().find(|(k, _)| k == "error");
        format!(
            "{} | {}",
            error.map_or("", |(_, v)| v.as_str()),
            String::from_utf8_lossy(m.value.as_deref().unwrap_or_default())
        )
    })
    .collect();
    d.stop().await;
    let recorded = got
        .into_iter()
        .filter(|a| a.window_end <= START + 32 * MIN)
        .collect();
    (recorded, letters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_topic_equals_backtest_escalations_included() {
    let dir = tempfile::tempdir().unwrap();
    let (reports, benchmarks) = write_input(dir.path());
    let (alerts, _) = backtest(dir.path(), &reports, &benchmarks);
    let want = lines(&alerts);
    // The scenario is what it claims: one incident fires as a warning, then as critical.
    let escalated = alerts.iter().any(|a| {
        a.status == Status::Firing
            && a.severity == Severity::Critical
            && alerts.iter().any(|w| {
                w.id == a.id && w.status == Status::Firing && w.severity == Severity::Warning
            })
    });
    assert!(escalated, "no escalation in the scenario: {want:?}");

    let input = lines_of(&reports);
    let (got, _) = daemon(dir.path(), &benchmarks, &input, want.len(), 0).await;
    assert_eq!(
        lines(&got),
        want,
        "the alerts topic differs from backtest's output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wild_clocks_change_no_alert_in_the_daemon_or_backtest() {
    let dir = tempfile::tempdir().unwrap();
    let (reports, benchmarks) = write_input(dir.path());
    let (clean, _) = backtest(dir.path(), &reports, &benchmarks);
    let want = lines(&clean);
    assert!(want.len() >= 3, "{want:?}");

    // Reports of the incident's key, dated by broken clocks, among the good ones.
    let mut input = lines_of(&reports);
    let template: serde_json::Value = serde_json::from_str(&input[input.len() / 2]).unwrap();
    let wild = [
        serde_json::json!("1970-01-01T00:00:00Z"),
        serde_json::json!("0001-01-01T00:00:00Z"),
        serde_json::json!("2100-01-01T00:00:00Z"),
        serde_json::json!("9999-12-31T23:59:59Z"),
        serde_json::json!(i64::MAX),
        serde_json::json!(i64::MIN),
    ];
    for (i, ts) in wild.iter().enumerate() {
        let mut r = template.clone();
        r["ts"] = ts.clone();
        r["session_id"] = serde_json::json!(format!("wild-{i}"));
        input.insert((i + 1) * input.len() / 8, r.to_string());
    }
    let wild_file = dir.path().join("wild.jsonl");
    std::fs::write(&wild_file, input.join("\n")).unwrap();

    let (alerts, stderr) = backtest(dir.path(), &wild_file, &benchmarks);
    assert_eq!(
        lines(&alerts),
        want,
        "backtest: the wild clocks changed the alerts"
    );
    assert!(stderr.contains("6 bad lines"), "{stderr}");

    let (got, letters) = daemon(dir.path(), &benchmarks, &input, want.len(), wild.len()).await;
    assert_eq!(
        lines(&got),
        want,
        "daemon: the wild clocks changed the alerts"
    );
    assert_eq!(
        letters.len(),
        wild.len(),
        "each wild report is a dead letter: {letters:?}"
    );
    for l in &letters {
        assert!(
            l.starts_with("field `ts` out of range: event time") && l.contains("wild-"),
            "{l}"
        );
    }
}
