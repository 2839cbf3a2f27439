//! `qos-sentinel rekey` through a real Kafka-protocol broker (librdkafka's mock cluster; the
//! stage is the binary, a process of its own): reports keyed by session move to the reports
//! topic keyed by location, each location in one partition; bad messages go to the
//! dead-letter topic with their reason; the stage killed with SIGKILL mid-way and started
//! again loses nothing (at least once); the daemon then fires the incident they carry.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use qos_sentinel::decode::Report;
use qos_sentinel::incident::Status;

const LOCATIONS: [&str; 4] = [
    "IN/MH/Mumbai",
    "US/NY/NewYork",
    "BR/SP/SaoPaulo",
    "DE/BE/Berlin",
];

/// 14 windows of 90 reports per location and CDN; cdn-a at Mumbai fails a quarter of its
/// reports in windows 4-7.
fn reports() -> Vec<Report<'static>> {
    let mut out = Vec::new();
    for w in 0..14i64 {
        for n in 0..90i64 {
            for loc in LOCATIONS {
                for cdn in ["cdn-a", "cdn-b"] {
                    let failed =
                        loc == LOCATIONS[0] && cdn == "cdn-a" && (4..8).contains(&w) && n % 4 == 0;
                    out.push(Report {
                        session_id: format!("{loc}-{cdn}-{}", n % 40).into(),
                        throughput_kbps: Some(5_000.0 + (n % 11) as f64 * 100.0),
                        error: failed.then(|| "E".into()),
                        ..Report::new(
                            loc,
                            cdn.to_string(),
                            common::MUMBAI_T0 + w * 60_000 + n * 600,
                        )
                    });
                }
            }
        }
    }
    out
}

/// A message read back: partition, key, value, headers.
type Moved = (i32, String, Vec<u8>, Vec<(String, String)>);

/// Every message of every partition of `topic`, read until there are `at_least` (and, with
/// `settle`, a round of reads brought nothing new), or 30 s passed.
fn read_all(
    brokers: &str,
    topic: &str,
    partitions: i32,
    at_least: usize,
    settle: bool,
) -> Vec<Moved> {
    let consumers: Vec<_> = (0..partitions)
        .map(|p| (p, common::tail_partition(brokers, topic, p)))
        .collect();
    let start = Instant::now();
    let mut out: Vec<Moved> = Vec::new();
    while start.elapsed() < Duration::from_secs(30) {
        let mut news = 0;
        for (p, c) in &consumers {
            for r in common::read_until(c, Duration::from_millis(300), |_| false) {
                news += 1;
                out.push((
                    *p,
                    r.key.unwrap_or_default(),
                    r.value.unwrap_or_default(),
                    r.headers,
                ));
            }
        }
        if out.len() >= at_least && (!settle || news == 0) {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_keyed_reports_move_to_location_keys_at_least_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.http.listen = common::free_addr();
    let cluster = common::mock_cluster(&mut cfg, 3);
    let beacons = format!("beacons-{}", cfg.kafka.group_id);
    cluster.create_topic(&beacons, 4, 1).expect("topic");
    let brokers = cfg.kafka.brokers.clone();
    let p = common::producer(&brokers);
    common::mumbai_benchmarks(&p, &cfg.kafka.benchmarks_topic);
    let all = reports();
    for r in &all {
        let v = serde_json::to_vec(r).unwrap();
        common::send(&p, &beacons, &r.session_id, &v);
    }
    common::send(&p, &beacons, "s-bad-1", b"not json");
    common::send(
        &p,
        &beacons,
        "s-bad-2",
        br#"{"ts":1767225600000,"session_id":"s","cdn":"cdn-a","played_ms":1,"rebuffer_ms":0}"#,
    );
    common::flush(&p);

    // A slow broker, so that the kill lands while batches are in flight.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(150))
        .expect("rtt");
    let config = common::write_config(dir.path(), &cfg, "");
    let log = dir.path().join("rekey.log");
    let spawn = || {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        common::Killed(
            std::process::Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
                .args(["rekey", "--config"])
                .arg(&config)
                .args(["--from", &beacons])
                .env("RUST_LOG", "info")
                .stderr(err)
                .spawn()
                .unwrap(),
        )
    };
    let mut first = spawn();
    let (b, t) = (brokers.clone(), cfg.kafka.reports_topic.clone());
    let moved_some = tokio::task::spawn_blocking(move || read_all(&b, &t, 3, 1, false).len())
        .await
        .unwrap();
    assert!(
        moved_some > 0,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();
    cluster
        .broker_round_trip_time(1, Duration::from_millis(0))
        .expect("rtt");
    let _second = spawn();

    let (b, t, n) = (brokers.clone(), cfg.kafka.reports_topic.clone(), all.len());
    let moved = tokio::task::spawn_blocking(move || read_all(&b, &t, 3, n, true))
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    let mut partition_of: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (p, key, value, _) in &moved {
        let r: Report = serde_json::from_slice(value).expect("a report, unchanged");
        assert_eq!(key, r.location.as_ref(), "keyed by location");
        partition_of.entry(key.clone()).or_default().insert(*p);
        seen.insert((
            r.location.to_string(),
            r.cdn.to_string(),
            r.session_id.to_string(),
            r.ts,
        ));
    }
    let want: BTreeSet<_> = all
        .iter()
        .map(|r| {
            (
                r.location.to_string(),
                r.cdn.to_string(),
                r.session_id.to_string(),
                r.ts,
            )
        })
        .collect();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        want.difference(&seen).count(),
        0,
        "reports lost across the kill ({} moved, {} wanted):\n{log_text}",
        moved.len(),
        want.len()
    );
    assert_eq!(seen.len(), want.len(), "nothing but the reports");
    assert!(
        partition_of.values().all(|ps| ps.len() == 1),
        "each location in one partition: {partition_of:?}"
    );
    eprintln!(
        "moved {} messages for {} reports across the kill",
        moved.len(),
        want.len()
    );

    // The two bad messages: on the dead-letter topic with their reason.
    let (b, t) = (brokers.clone(), cfg.kafka.dead_letter_topic.clone());
    let letters = tokio::task::spawn_blocking(move || read_all(&b, &t, 1, 2, true))
        .await
        .unwrap();
    let reasons: BTreeSet<String> = letters
        .iter()
        .filter_map(|(_, _, _, h)| {
            h.iter()
                .find(|(k, _)| k == "reason")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from(["invalid_json".to_string(), "invalid_field".to_string()]),
        "{letters:?}"
    );

    // The daemon reads what the stage wrote: the incident fires and resolves.
    let daemon = common::start_daemon(&cfg);
    let alerts = common::alerts_until_resolved(&brokers, &cfg.kafka.alerts_topic).await;
    daemon.stop().await;
    assert!(
        alerts.iter().any(|a| a.status == Status::Firing
            && a.scope.location.as_deref() == Some(LOCATIONS[0])
            && a.scope.cdn.as_deref() == Some("cdn-a")),
        "{alerts:#?}"
    );
}
