//! End to end through a real Kafka-protocol broker (librdkafka's mock cluster on loopback):
//! benchmarks and reports in, one known incident, alerts and dead letters out.

mod common;

use std::time::Duration;

use qos_sentinel::daemon::{self, RunOptions};
use qos_sentinel::decode::{Benchmark, Report};
use qos_sentinel::incident::{Alert, Status};
use qos_sentinel::time::format_ms;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const W: i64 = 60_000;
const KEYS: [(&str, &str); 4] = [
    ("IN/MH/Mumbai", "cdn-a"),
    ("IN/MH/Mumbai", "cdn-b"),
    ("US/NY/NewYork", "cdn-a"),
    ("US/NY/NewYork", "cdn-b"),
];
/// Failure spike on (Mumbai, cdn-a) in windows 4..8.
const BAD: (usize, std::ops::Range<i64>) = (0, 4..8);

/// Asks the daemon to stop and waits up to `secs` for a clean shutdown.
async fn stop(
    tx: &tokio::sync::watch::Sender<bool>,
    daemon: tokio::task::JoinHandle<anyhow::Result<()>>,
    secs: u64,
    what: &str,
) {
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(secs), daemon)
        .await
        .expect(what)
        .unwrap()
        .unwrap();
}

fn report(loc: &str, cdn: &str, ts: i64, i: i64, failed: bool) -> Report<'static> {
    Report {
        session_id: format!("s{i}").into(),
        asn: Some(64_500),
        device: Some("tv".into()),
        played_ms: 19_500,
        rebuffer_ms: if i % 10 == 0 { 800 } else { 0 },
        startup_ms: (i % 5 == 0).then_some(900 + (i % 7) as u64 * 40),
        bitrate_kbps: Some(3_500.0),
        throughput_kbps: Some(5_000.0 + ((i * 37) % 11) as f64 * 150.0),
        error: failed.then(|| "E_NETWORK".into()),
        ..Report::new(loc.to_string(), cdn.to_string(), ts)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_fires_and_resolves_and_bad_messages_are_dead_lettered() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,qos_sentinel=debug,rdkafka=off,librdkafka=off")
        .with_test_writer()
        .try_init();
    let state = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(state.path());
    cfg.window.allowed_lateness = Duration::from_secs(10);
    cfg.http.listen = common::free_addr();
    let cluster = common::mock_cluster(&mut cfg, 3);
    let brokers = cluster.bootstrap_servers();
    let k = cfg.kafka.clone();
    let p = common::producer(&brokers);
    for (loc, cdn) in KEYS {
        let b = Benchmark {
            ts: T0 - 3_600_000,
            location: loc.into(),
            cdn: cdn.into(),
            throughput_kbps: Some(5_500.0),
            rebuffer_ratio: Some(0.004),
            startup_ms: Some(1_000.0),
            error_rate: Some(0.01),
        };
        common::send(
            &p,
            &k.benchmarks_topic,
            &format!("{loc}|{cdn}"),
            &serde_json::to_vec(&b).unwrap(),
        );
    }
    common::flush(&p);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opts = RunOptions {
        print_alerts: false,
        serve_http: true,
        ..Default::default()
    };
    let daemon = tokio::spawn(daemon::run(cfg.clone(), opts.clone(), stop_rx));

    // 16 windows of 80 reports per key, interleaved in time; two malformed messages early on.
    let mut i = 0;
    for w in 0..16 {
        for n in 0..80 {
            for (ki, (loc, cdn)) in KEYS.iter().enumerate() {
                i += 1;
                let ts = T0 + w * W + n * 700 + ki as i64;
                let failed = if ki == BAD.0 && BAD.1.contains(&w) {
                    n % 4 == 0 // 25 %
                } else {
                    i % 150 == 0 // well under the 1 % benchmark
                };
                let r = report(loc, cdn, ts, i, failed);
                common::send(&p, &k.reports_topic, loc, &serde_json::to_vec(&r).unwrap());
            }
            if w == 1 && n == 0 {
                common::send(&p, &k.reports_topic, "IN/MH/Mumbai", b"{not json");
                common::send(
                    &p,
                    &k.reports_topic,
                    "IN/MH/Mumbai",
                    br#"{"ts":1767225660000,"session_id":"x","location":"IN/MH/Mumbai","cdn":"cdn-a","played_ms":100}"#,
                );
            }
        }
    }
    common::flush(&p);

    let alerts_c = common::tail(&brokers, &k.alerts_topic);
    let read = common::read_until(&alerts_c, Duration::from_secs(90), |r| r.len() >= 2);
    // Give a spurious extra alert the chance to show up before judging "exactly".
    let extra = common::read_until(&alerts_c, Duration::from_secs(3), |_| false);
    let alerts: Vec<Alert> = read
        .iter()
        .chain(extra.iter())
        .map(|m| serde_json::from_slice(m.value.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(
        alerts.len(),
        2,
        "exactly one firing and one resolved: {alerts:#?}"
    );
    let (fire, res) = (&alerts[0], &alerts[1]);
    assert_eq!(fire.status, Status::Firing);
    assert_eq!(fire.scope.location.as_deref(), Some("IN/MH/Mumbai"));
    assert_eq!(fire.scope.cdn.as_deref(), Some("cdn-a"));
    assert_eq!(fire.metric.as_str(), "failure_rate");
    assert_eq!(
        format_ms(fire.started_at),
        format_ms(T0 + 4 * W),
        "started with the first bad window"
    );
    assert_eq!(fire.window_start, T0 + 5 * W, "fired after two bad windows");
    assert!((fire.observed - 0.25).abs() < 0.02, "{fire:?}");
    assert!((fire.expected.unwrap() - 0.01).abs() < 1e-9, "{fire:?}");
    assert!(fire.p_value.unwrap() < 1e-6);
    assert_eq!(
        read[0].key.as_deref(),
        Some("location=IN/MH/Mumbai,cdn=cdn-a")
    );
    assert_eq!(res.status, Status::Resolved);
    assert_eq!(res.id, fire.id);
    assert_eq!(res.resolved_at, Some(T0 + 8 * W));

    let dlq = common::tail(&brokers, &k.dead_letter_topic);
    let letters = common::read_until(&dlq, Duration::from_secs(30), |r| r.len() >= 2);
    assert_eq!(letters.len(), 2);
    let reason = |m: &common::Read| {
        m.headers
            .iter()
            .find(|(k, _)| k == "reason")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(reason(&letters[0]), "invalid_json");
    assert_eq!(reason(&letters[1]), "invalid_field");
    assert_eq!(
        letters[0].value.as_deref(),
        Some(&b"{not json"[..]),
        "original bytes kept"
    );
    assert!(
        letters[1]
            .headers
            .iter()
            .any(|(k, v)| k == "error" && v.contains("rebuffer_ms"))
    );

    // The metrics an operator scrapes exist and moved with what happened.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let base = format!("http://{}", cfg.http.listen);
    let metrics = common::scrape(&base).await;
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{metrics}"))
    };
    let reports = 16.0 * 80.0 * 4.0;
    let exact = [
        (
            r#"qos_sentinel_records_in_total{input="reports"}"#,
            reports + 2.0,
        ),
        (r#"qos_sentinel_records_in_total{input="benchmarks"}"#, 4.0),
        (
            r#"qos_sentinel_decode_failures_total{reason="invalid_json"}"#,
            1.0,
        ),
        (
            r#"qos_sentinel_decode_failures_total{reason="invalid_field"}"#,
            1.0,
        ),
        (
            r#"qos_sentinel_decode_failures_total{reason="too_large"}"#,
            0.0,
        ),
        ("qos_sentinel_dead_letters_total", 2.0),
        (r#"qos_sentinel_alerts_total{status="firing"}"#, 1.0),
        (r#"qos_sentinel_alerts_total{status="resolved"}"#, 1.0),
        (r#"qos_sentinel_join_total{result="hit"}"#, reports),
        (r#"qos_sentinel_join_total{result="miss"}"#, 0.0),
    ];
    for (series, want) in exact {
        assert_eq!(value(series), want, "{series}");
    }
    assert!(value("qos_sentinel_windows_closed_total") >= 14.0);
    assert_eq!(value("qos_sentinel_benchmark_versions"), 4.0);
    // Every close that produced alerts was timed to the broker's ack (firing and resolved may
    // come out of one close when the watermark jumps over several windows).
    let acks = value("qos_sentinel_alert_ack_duration_seconds_count");
    assert!((1.0..=2.0).contains(&acks), "{acks}");
    assert!(value("qos_sentinel_alert_ack_duration_seconds_sum") < 10.0);
    assert!(value("qos_sentinel_detection_duration_seconds_count") >= 1.0);
    for path in ["/healthz", "/readyz"] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }

    stop(&stop_tx, daemon, 30, "daemon stops on shutdown").await;

    // The benchmark cache holds the rows and how far the topic was read, so a restart
    // neither re-reads the topic nor starts with an empty table.
    {
        let store = qos_sentinel::table::store::TableStore::open(state.path()).unwrap();
        assert_eq!(store.next_offset(&k.benchmarks_topic, 0).unwrap(), Some(4));
        assert_eq!(store.load().unwrap().len(), 4);
    }
    let mut again = cfg.clone();
    again.http.listen = common::free_addr();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let restarted = tokio::spawn(daemon::run(again.clone(), opts, stop_rx));
    let base = format!("http://{}", again.http.listen);
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "restarted daemon becomes ready");
    // Gauges are published on the next tick after readiness.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let metrics = common::scrape(&base).await;
    assert!(
        metrics.contains("qos_sentinel_benchmark_versions 4"),
        "table loaded from the cache:\n{metrics}"
    );
    assert!(
        metrics.contains("qos_sentinel_records_in_total{input=\"benchmarks\"} 0"),
        "benchmark topic not re-read:\n{metrics}"
    );
    stop(
        &stop_tx,
        restarted,
        30,
        "restarted daemon stops on shutdown",
    )
    .await;
}

/// Bad input does not throttle good input. Each dead letter used to be awaited inline, a
/// broker round trip each: with a 100 ms round trip, 2,000 bad messages held the good reports
/// behind them for over 3 minutes. In flight together they take a few round trips. Every
/// letter is still on the dead-letter topic after a shutdown that follows at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_in_flight_do_not_hold_up_the_good_ones() {
    const BAD_N: usize = 2_000;
    const GOOD_N: usize = 2_000;
    let state = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(state.path());
    let cluster = common::mock_cluster(&mut cfg, 1);
    let brokers = cluster.bootstrap_servers();
    let k = cfg.kafka.clone();
    let p = common::producer(&brokers);
    for i in 0..BAD_N {
        common::send(
            &p,
            &k.reports_topic,
            "bad",
            format!("{{not json {i}").as_bytes(),
        );
    }
    for i in 0..GOOD_N {
        let (loc, cdn) = KEYS[i % KEYS.len()];
        let r = report(loc, cdn, T0 + (i as i64) * 150, i as i64, false);
        common::send(&p, &k.reports_topic, loc, &serde_json::to_vec(&r).unwrap());
    }
    common::flush(&p);
    cluster
        .broker_round_trip_time(1, Duration::from_millis(100))
        .unwrap();

    let metrics = std::sync::Arc::new(qos_sentinel::metrics::Metrics::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opts = RunOptions {
        metrics: Some(metrics.clone()),
        ..Default::default()
    };
    let daemon = tokio::spawn(daemon::run(cfg.clone(), opts, stop_rx));
    let records = metrics.records_in.with_label_values(&["reports"]);
    let start = std::time::Instant::now();
    while records.get() < (BAD_N + GOOD_N) as u64 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        records.get(),
        (BAD_N + GOOD_N) as u64,
        "every message read within a minute of a 100 ms round trip"
    );
    stop(&stop_tx, daemon, 60, "daemon stops").await;
    assert_eq!(metrics.dead_letters.get(), BAD_N as u64);
    assert_eq!(metrics.dead_letters_in_flight.get(), 0);
    let tail = common::tail(&brokers, &k.dead_letter_topic);
    let letters = common::read_until(&tail, Duration::from_secs(30), |r| r.len() >= BAD_N);
    assert_eq!(
        letters.len(),
        BAD_N,
        "every bad message on the dead-letter topic"
    );
    assert_eq!(
        letters[BAD_N - 1].value.as_deref(),
        Some(format!("{{not json {}", BAD_N - 1).as_bytes())
    );
}

/// #18: a flood of distinct benchmark keys stays under `window.max_benchmark_keys`, in the
/// table and in its RocksDB cache, and the keys reports join are not the ones evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_benchmark_keys_stays_under_its_cap_in_memory_and_on_disk() {
    const CAP: usize = 500;
    const FLOOD: usize = 10_000;
    let state = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(state.path());
    cfg.window.max_benchmark_keys = CAP;
    let cluster = common::mock_cluster(&mut cfg, 1);
    let brokers = cluster.bootstrap_servers();
    let k = cfg.kafka.clone();
    let p = common::producer(&brokers);
    common::mumbai_benchmarks(&p, &k.benchmarks_topic);

    let metrics = std::sync::Arc::new(qos_sentinel::metrics::Metrics::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opts = RunOptions {
        metrics: Some(metrics.clone()),
        ..Default::default()
    };
    let daemon = tokio::spawn(daemon::run(cfg.clone(), opts, stop_rx));
    let wait_for = |what: &'static str, done: Box<dyn Fn() -> bool + Send>| async move {
        let start = std::time::Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "timed out: {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Reports join the Mumbai keys (they are seen at the reports' event times) ...
    common::mumbai_windows(&p, &k.reports_topic, 0..3, false);
    let hits = metrics.join.with_label_values(&["hit"]);
    let h = hits.clone();
    wait_for("reports joined", Box::new(move || h.get() >= 480)).await;
    // ... then a flood of keys published half an hour before them.
    for i in 0..FLOOD {
        let b = Benchmark {
            ts: common::MUMBAI_T0 - 1_800_000,
            location: format!("FL/{}/{i}", i % 97),
            cdn: "cdn-x".into(),
            throughput_kbps: Some(5_000.0),
            rebuffer_ratio: None,
            startup_ms: None,
            error_rate: Some(0.01),
        };
        let key = format!("{}|cdn-x", b.location);
        common::send(
            &p,
            &k.benchmarks_topic,
            &key,
            &serde_json::to_vec(&b).unwrap(),
        );
    }
    common::flush(&p);
    let evicted = metrics.keys_evicted.with_label_values(&["benchmarks"]);
    let e = evicted.clone();
    wait_for(
        "flood evicted",
        Box::new(move || e.get() >= (FLOOD + 2 - CAP) as u64),
    )
    .await;
    let held = metrics.benchmark_keys.get();
    assert!(
        held > 0 && held <= CAP as i64,
        "benchmark keys held: {held}, cap {CAP}"
    );
    // The Mumbai keys still join: nothing reports use was evicted.
    common::mumbai_windows(&p, &k.reports_topic, 3..6, false);
    let h = hits.clone();
    wait_for(
        "reports joined after the flood",
        Box::new(move || h.get() >= 960),
    )
    .await;
    assert_eq!(
        metrics.join.with_label_values(&["miss"]).get(),
        0,
        "every report joined its benchmark"
    );
    stop(&stop_tx, daemon, 60, "daemon stops").await;
    // The cache holds what the table holds: at most the cap, the Mumbai keys among them.
    let store = qos_sentinel::table::store::TableStore::open(state.path()).unwrap();
    let table = store.load().unwrap();
    assert!(
        table.keys() <= CAP,
        "RocksDB cache keys after the flood: {}, cap {CAP}",
        table.keys()
    );
    assert!(
        table
            .as_of("IN/MH/Mumbai", "cdn-a", common::MUMBAI_T0)
            .is_some()
    );
}
