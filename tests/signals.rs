//! Signals as operators send them to the daemon binary: SIGHUP reloads the rules (a bad file
//! keeps the old ones), SIGTERM ends the process cleanly with exit 0.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

async fn wait_metric(base: &str, line: &str, want: f64) {
    let start = Instant::now();
    loop {
        let got = match reqwest::get(format!("{base}/metrics")).await {
            Ok(r) => common::metric(&r.text().await.unwrap_or_default(), line),
            Err(_) => f64::NAN,
        };
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{line} is {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rules_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.http.listen = common::free_addr();
    let _cluster = common::mock_cluster(&mut cfg, 2);
    let path = common::write_config(dir.path(), &cfg, "");
    let original = std::fs::read_to_string(&path).unwrap();
    let log = dir.path().join("daemon.log");
    let mut child = common::spawn_daemon(&path, &[("RUST_LOG", "info")], &log);
    let base = format!("http://{}", cfg.http.listen);
    wait_metric(
        &base,
        "qos_sentinel_config_reloads_total{result=\"ok\"}",
        0.0,
    )
    .await;

    std::fs::write(
        &path,
        format!("{original}\n[detect]\nfire_after = 3\nfdr = 0.0005\n"),
    )
    .unwrap();
    signal(&child, "-HUP");
    wait_metric(
        &base,
        "qos_sentinel_config_reloads_total{result=\"ok\"}",
        1.0,
    )
    .await;

    std::fs::write(&path, format!("{original}\n[detect]\nfdr = 2\n")).unwrap();
    signal(&child, "-HUP");
    wait_metric(
        &base,
        "qos_sentinel_config_reloads_total{result=\"error\"}",
        1.0,
    )
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "a bad file does not stop the daemon"
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("fire_after: 3"),
        "the new rules were applied:\n{logs}"
    );
    assert!(
        logs.contains("`detect.fdr`: (2) must be in (0, 1)"),
        "{logs}"
    );

    // Rules in their own file, as shipped in alerts/: reloaded on SIGHUP too, and a mistake
    // in it is named with its line.
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "fire_after = 4\n\n[[overrides]]\ncdn = \"cdn-x\"\nenabled = false\n",
    )
    .unwrap();
    std::fs::write(&path, format!("rules_file = \"rules.toml\"\n{original}")).unwrap();
    signal(&child, "-HUP");
    wait_metric(
        &base,
        "qos_sentinel_config_reloads_total{result=\"ok\"}",
        2.0,
    )
    .await;
    std::fs::write(&rules, "fire_after = 4\nresolve_aftr = 2\n").unwrap();
    signal(&child, "-HUP");
    wait_metric(
        &base,
        "qos_sentinel_config_reloads_total{result=\"error\"}",
        2.0,
    )
    .await;
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("fire_after: 4") && logs.contains("cdn-x"),
        "the rules file was applied:\n{logs}"
    );
    assert!(
        logs.contains(
            "rules.toml:2: `resolve_aftr`: unknown field (did you mean `resolve_after`?)"
        ),
        "{logs}"
    );

    signal(&child, "-TERM");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "SIGTERM: still running"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit 0 on SIGTERM, got {status}");
}
