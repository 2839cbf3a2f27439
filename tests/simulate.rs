//! `qos-sentinel simulate --brokers`: the simulator feeds a real Kafka-protocol broker.

mod common;

use std::process::Command;
use std::time::Duration;

use qos_sentinel::decode::{decode_benchmark, decode_report};

#[test]
fn simulate_feeds_both_topics_with_valid_keyed_messages() {
    let state = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(state.path());
    let cluster = common::mock_cluster(&mut cfg, 2);
    let brokers = cluster.bootstrap_servers();
    let k = &cfg.kafka;
    let out = Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args([
            "simulate",
            "--brokers",
            &brokers,
            "--minutes",
            "2",
            "--speed",
            "0",
        ])
        .args(["--locations", "3", "--cdns", "2", "--peak-sessions", "40"])
        .args(["--start", "2026-01-01T20:00:00Z"])
        .args([
            "--reports-topic",
            &k.reports_topic,
            "--benchmarks-topic",
            &k.benchmarks_topic,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let sent: u64 = stderr
        .rsplit("simulate: sent ")
        .next()
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stderr}"));
    assert!(sent >= 200, "{stderr}");

    let b = common::tail(&brokers, &k.benchmarks_topic);
    let rows = common::read_until(&b, Duration::from_secs(20), |r| r.len() >= 6);
    assert_eq!(rows.len(), 6, "one benchmark per location and CDN");
    for r in &rows {
        let v = decode_benchmark(r.value.as_deref().unwrap(), 65_536).unwrap();
        assert_eq!(
            r.key.as_deref(),
            Some(format!("{}|{}", v.location, v.cdn).as_str())
        );
    }

    // Reports are spread over both partitions by location key; read both.
    let mut total = 0;
    let mut distinct = std::collections::HashSet::<(String, i64)>::new();
    for p in 0..2 {
        let c = common::tail_partition(&brokers, &k.reports_topic, p);
        let msgs = common::read_until(&c, Duration::from_secs(5), |_| false);
        for m in &msgs {
            let r = decode_report(m.value.as_deref().unwrap(), 65_536).unwrap();
            distinct.insert((r.session_id.to_string(), r.ts));
            assert_eq!(
                m.key.as_deref(),
                Some(r.location.as_ref()),
                "keyed by location"
            );
        }
        total += msgs.len() as u64;
    }
    assert_eq!(distinct.len() as u64, sent, "{stderr}");
    assert_eq!(total, sent, "no duplicates: {stderr}");
}
