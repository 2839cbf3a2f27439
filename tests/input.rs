//! Users' own beacons through a real Kafka-protocol broker (librdkafka's mock cluster): the
//! daemon with an `[input]` mapping reads (a) a player beacon of another shape (nested
//! objects, other names, seconds, a boolean failure) and (b) CDN log lines carrying CMCD with
//! the shipped `config/cmcd.toml`; in each a failure spike on one CDN fires and resolves, and
//! no message is dead-lettered.

mod common;

use qos_sentinel::config::InputConfig;
use qos_sentinel::decode::Report;
use qos_sentinel::incident::{Alert, Status};

const CDNS: [&str; 2] = ["cdn-a", "cdn-b"];

/// 80 reports per CDN and window at Mumbai; cdn-a fails a quarter of them in windows 4-7.
fn reports() -> Vec<Report<'static>> {
    let mut out = Vec::new();
    for w in 0..12i64 {
        for n in 0..80i64 {
            for (ki, cdn) in CDNS.iter().enumerate() {
                let i = w * 1_000 + n * 2 + ki as i64;
                let failed = ki == 0 && (4..8).contains(&w) && n % 4 == 0;
                out.push(Report {
                    session_id: format!("s{}", i % 97).into(),
                    played_ms: 4_000,
                    rebuffer_ms: 0,
                    bitrate_kbps: Some(3_000.0),
                    throughput_kbps: Some(5_000.0 + (i % 11) as f64 * 100.0),
                    error: failed.then(|| "E".into()),
                    ..Report::new(
                        "IN/MH/Mumbai",
                        cdn.to_string(),
                        common::MUMBAI_T0 + w * 60_000 + n * 700,
                    )
                });
            }
        }
    }
    out
}

/// Feeds `reports()` rendered by `render` to a daemon reading them through `input`; returns
/// its alerts once one resolved, and its metrics.
async fn run(input: InputConfig, render: impl Fn(&Report) -> String) -> (Vec<Alert>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(dir.path());
    cfg.http.listen = common::free_addr();
    cfg.input = input;
    common::mock_cluster(&mut cfg, 2);
    let p = common::producer(&cfg.kafka.brokers);
    common::mumbai_benchmarks(&p, &cfg.kafka.benchmarks_topic);
    let all = reports();
    for r in &all {
        common::send(
            &p,
            &cfg.kafka.reports_topic,
            &r.location,
            render(r).as_bytes(),
        );
    }
    common::flush(&p);
    let daemon = common::start_daemon(&cfg);
    let alerts = common::alerts_until_resolved(&cfg.kafka.brokers, &cfg.kafka.alerts_topic).await;
    let metrics = common::scrape(&format!("http://{}", cfg.http.listen)).await;
    daemon.stop().await;
    let read = common::metric(&metrics, "qos_sentinel_records_in_total{input=\"reports\"}");
    assert_eq!(read, all.len() as f64, "every message read");
    (alerts, metrics)
}

fn check(alerts: &[Alert], metrics: &str) {
    assert_eq!(
        common::decode_failures(metrics),
        0.0,
        "no message dead-lettered"
    );
    for status in [Status::Firing, Status::Resolved] {
        assert!(
            alerts.iter().any(|a| a.status == status
                && a.scope.cdn.as_deref() == Some("cdn-a")
                && a.metric.as_str() == "failure_rate"),
            "cdn-a's failures {status:?}: {alerts:#?}"
        );
    }
    assert!(
        alerts
            .iter()
            .all(|a| a.scope.cdn.as_deref() != Some("cdn-b")),
        "nothing on cdn-b: {alerts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_beacon_of_another_shape() {
    let input: InputConfig = toml::from_str(
        r#"
        ts = { path = "time_s", scale = 1000 }
        session_id = "session.id"
        location = "viewer.geo"
        cdn = "delivery.cdn"
        played_ms = { path = "playback.played_s", scale = 1000 }
        rebuffer_ms = { path = "playback.stalled_s", scale = 1000 }
        bitrate_kbps = "video.bitrate_kbps"
        throughput_kbps = "network.bandwidth_kbps"
        error = "playback.failed"
        "#,
    )
    .expect("mapping");
    input.validate().expect("valid mapping");
    let (alerts, metrics) = run(input, |r| {
        serde_json::json!({
            "time_s": r.ts as f64 / 1000.0,
            "session": {"id": r.session_id},
            "viewer": {"geo": r.location, "lang": "en"},
            "delivery": {"cdn": r.cdn},
            "playback": {
                "played_s": r.played_ms as f64 / 1000.0,
                "stalled_s": r.rebuffer_ms as f64 / 1000.0,
                "failed": r.failed(),
            },
            "video": {"bitrate_kbps": r.bitrate_kbps},
            "network": {"bandwidth_kbps": r.throughput_kbps},
        })
        .to_string()
    })
    .await;
    check(&alerts, &metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdn_log_lines_with_cmcd_through_the_shipped_mapping() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/cmcd.toml");
    let cfg = qos_sentinel::config::Config::load(std::path::Path::new(shipped), std::iter::empty())
        .expect("config/cmcd.toml");
    let (alerts, metrics) = run(cfg.input, |r| {
        let cmcd = format!(
            "br={},d={},mtp={},ot=v,sf=d,sid=\"{}\"",
            r.bitrate_kbps.unwrap_or_default(),
            r.played_ms,
            r.throughput_kbps.unwrap_or_default(),
            r.session_id
        );
        serde_json::json!({
            "timestamp": r.ts as f64 / 1000.0,
            "client_geo": r.location,
            "cdn": r.cdn,
            "sc_status": if r.failed() { 503 } else { 200 },
            "cmcd": cmcd,
        })
        .to_string()
    })
    .await;
    check(&alerts, &metrics);
}
