//! The end-to-end benchmark in smoke mode: it still runs through the in-process broker, reads
//! back every record it produced (bare consumer and daemon) and reports every figure. No
//! timing is asserted: benchmarks are not timed tests.

use std::process::Command;

#[test]
fn bench_command_measures_every_figure_on_a_small_run() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("figures.json");
    let out = Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args(["bench", "--reports", "30000", "--partitions", "8"])
        .args(["--keys", "500,2000", "--bad-share", "0.5", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for row in [
        "bare consumer (ceiling)",
        "ratio to ceiling",
        "restart with 2000 keys",
        "engine loop turns while consuming",
        "engine loop held by a checkpoint at 2000 keys",
    ] {
        assert!(table.contains(row), "no `{row}` row in:\n{table}");
    }
    let f: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(f["reports"], 30_000);
    // Half of the messages bad: each is a dead letter, all written before the daemon stopped.
    let bad = f["bad_messages"].as_u64().unwrap();
    assert!((14_999..=15_000).contains(&bad), "{f}");
    assert_eq!(f["dead_letters"].as_u64(), Some(bad), "{f}");
    assert!(
        table.contains(&format!(
            "bad messages (dead letters written) | {bad} of 30000 ({bad})"
        )),
        "{table}"
    );
    for rate in ["produce_per_s", "ceiling_per_s", "daemon_per_s"] {
        assert!(f[rate].as_f64().unwrap() > 0.0, "{rate}: {f}");
    }
    let memory = f["memory"].as_array().unwrap();
    assert_eq!(memory.len(), 2);
    assert_eq!(memory[0]["keys"], 500);
    assert!(
        memory[0]["restart_ms"].is_null(),
        "only the largest restarts"
    );
    assert!(memory[1]["restart_ms"].as_u64().is_some(), "{f}");
    assert!(memory[1]["checkpoint_bytes"].as_u64().unwrap() > 0);
    // Latency figures exist exactly when alerts were delivered to the webhook.
    let delivered = f["alerts_delivered"].as_u64().unwrap();
    assert_eq!(f["alert_latency_p99_ms"].is_null(), delivered == 0, "{f}");
}

#[test]
fn bench_refuses_a_run_the_broker_cannot_hold() {
    // One partition cannot keep 300,000 reports (the in-process broker keeps 5 MiB each): the
    // bench must say so instead of measuring a topic that lost records.
    let out = Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args([
            "bench",
            "--reports",
            "300000",
            "--partitions",
            "1",
            "--keys",
            "10",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--partitions"), "{err}");
}

/// The take-over figure on the in-process broker: a partition of 2,000 keys written one record
/// per key and taken over; every key comes back (it fails otherwise), every figure is there.
/// On a run larger than the in-process broker keeps (5 MiB of compressed batches a partition)
/// it says so: records the head counts are missing.
#[test]
fn bench_takeover_takes_a_partition_over_and_refuses_what_the_broker_lost() {
    let out = Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args(["bench-takeover", "--keys", "2000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench-takeover failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["keys"], 2_000, "{f}");
    assert!(f["records"].as_u64().unwrap() > 2_000, "{f}");
    for figure in [
        "bytes",
        "write_ms",
        "rewrite_ms",
        "read_ms",
        "absorb_ms",
        "takeover_ms",
    ] {
        assert!(f[figure].is_u64(), "no {figure} in {f}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args(["bench-takeover", "--keys", "40000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use --brokers"), "{err}");
}
