//! A broker outage of a minute: the daemon does not crash, /readyz turns false, and once the
//! broker is back it catches up and its alerts equal a run without the outage. A broker that
//! refuses writes wedges the loop in a retry: /healthz fails until it takes them again. A
//! broker that answers slowly slows the reads, never the loop: no turn waits on a round trip
//! per partition.

mod common;

use std::time::{Duration, Instant};

use qos_sentinel::config::Config;
use qos_sentinel::daemon::{self, RunOptions};
use qos_sentinel::incident::{Alert, Status};

fn changes(alerts: &[Alert]) -> Vec<String> {
    let mut v: Vec<String> = alerts
        .iter()
        .map(|a| {
            let s = if a.status == Status::Firing {
                "firing"
            } else {
                "resolved"
            };
            format!("{}:{s}", a.id)
        })
        .collect();
    v.sort();
    v
}

fn variant(base: &Config, dir: &std::path::Path, name: &str) -> Config {
    let mut cfg = base.clone();
    cfg.kafka.group_id = format!("{}-{name}", base.kafka.group_id);
    cfg.kafka.alerts_topic = format!("{}-{name}", base.kafka.alerts_topic);
    cfg.state.dir = dir.join(name);
    cfg.http.listen = common::free_addr();
    cfg
}

/// `path`'s status code and body, `None` while it does not answer.
async fn get(base: &str, path: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.unwrap_or_default()))
}

async fn ready(base: &str) -> Option<bool> {
    get(base, "/readyz").await.map(|(code, _)| code == 200)
}

async fn settled(cfg: &Config) -> Vec<Alert> {
    let (b, t) = (cfg.kafka.brokers.clone(), cfg.kafka.alerts_topic.clone());
    tokio::task::spawn_blocking(move || {
        common::settled_alerts(&b, &t, Duration::from_secs(180), Duration::from_secs(4))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_the_broker_loses_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,rdkafka=off,librdkafka=off")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let mut base = common::test_config(&dir.path().join("unused"));
    base.window.allowed_lateness = Duration::from_secs(10);
    let cluster = common::mock_cluster(&mut base, 4);
    for name in ["steady", "outage"] {
        cluster
            .create_topic(&format!("{}-{name}", base.kafka.alerts_topic), 1, 1)
            .unwrap();
    }
    common::feed_sim(&base, common::two_incident_sim()).await;
    let opts = RunOptions {
        print_alerts: false,
        serve_http: true,
        ..Default::default()
    };

    let steady = variant(&base, dir.path(), "steady");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let d = tokio::spawn(daemon::run(steady.clone(), opts.clone(), rx));
    let want = changes(&settled(&steady).await);
    let _ = stop.send(true);
    d.await.unwrap().unwrap();
    assert!(want.len() >= 4, "{want:?}");

    let cfg = variant(&base, dir.path(), "outage");
    let http = format!("http://{}", cfg.http.listen);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let d = tokio::spawn(daemon::run(cfg.clone(), opts, rx));
    // Down as soon as the daemon is ready and has started on the reports.
    let start = Instant::now();
    while ready(&http).await != Some(true) {
        assert!(start.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.broker_down(1).unwrap();
    let down_at = Instant::now();
    let mut saw_unready = false;
    while down_at.elapsed() < Duration::from_secs(60) {
        saw_unready |= ready(&http).await == Some(false);
        assert!(!d.is_finished(), "the daemon stopped during the outage");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        saw_unready,
        "/readyz turned false while the broker was down"
    );
    cluster.broker_up(1).unwrap();
    let start = Instant::now();
    while ready(&http).await != Some(true) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "ready again after the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = changes(&settled(&cfg).await);
    assert_eq!(
        got, want,
        "the same alerts as without the outage, none doubled"
    );
    let _ = stop.send(true);
    d.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_wedged_on_a_refused_write_fails_healthz() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.http.listen = common::free_addr();
    cfg.http.stall_timeout = Duration::from_secs(3);
    let cluster = common::mock_cluster(&mut cfg, 2);
    let changelog = format!("changelog-{}", cfg.kafka.group_id);
    cluster.create_topic(&changelog, 2, 1).unwrap();
    cfg.kafka.changelog_topic = Some(changelog);
    common::feed_sim(&cfg, common::two_incident_sim()).await;
    // From now on the broker refuses every write: the first incident's partition state must
    // reach the changelog before its alerts, and that write retries for as long as it fails.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 20_000],
    );
    let d = common::start_daemon(&cfg);
    let base = format!("http://{}", cfg.http.listen);
    let started = Instant::now();
    let mut seen_ok = false;
    let stalled = loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "/healthz never failed (ok seen: {seen_ok})"
        );
        match get(&base, "/healthz").await {
            Some((200, _)) => seen_ok = true,
            Some((503, body)) => break body,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(seen_ok, "/healthz was fine while the loop turned");
    assert!(stalled.contains("stalled"), "{stalled}");
    // The broker takes writes again: the loop goes on, /healthz recovers.
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let back = Instant::now();
    while get(&base, "/healthz").await.map(|h| h.0) != Some(200) {
        assert!(
            back.elapsed() < Duration::from_secs(120),
            "/healthz did not recover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.stop().await;
}

/// The lag of 32 partitions on a broker 250 ms away: the loop never waits for it. (It did,
/// two round trips per partition in turn every 5 s: a 16 s turn here, and at 256 partitions
/// on a busy broker a loop that read no report for minutes, left its group and closed its
/// windows empty.) The lag series still come, one per partition, and reach 0 once read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_broker_never_stalls_the_loop_for_the_lag_gauge() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.http.listen = common::free_addr();
    let cluster = common::mock_cluster(&mut cfg, 32);
    let fed = common::feed_sim(&cfg, common::two_incident_sim()).await;
    cluster
        .broker_round_trip_time(1, Duration::from_millis(250))
        .unwrap();
    let d = common::start_daemon(&cfg);
    let base = format!("http://{}", cfg.http.listen);
    let read = "qos_sentinel_records_in_total{input=\"reports\"}";
    let started = Instant::now();
    let mut last = String::new();
    let text = loop {
        let turns = |t: &str| {
            let all = common::metric(t, "qos_sentinel_loop_turn_duration_seconds_count");
            let within = common::metric(
                t,
                "qos_sentinel_loop_turn_duration_seconds_bucket{le=\"5\"}",
            );
            (all, within)
        };
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "not every report read with the lag at 0 on every partition: read {} of {}, \
             lag series {}, turns (all, within 5 s) {:?}",
            common::metric(&last, read),
            fed.reports,
            last.matches("qos_sentinel_consumer_lag_records{").count(),
            turns(&last),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some((200, text)) = get(&base, "/metrics").await else {
            continue;
        };
        last = text;
        let text = &last;
        let lags: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("qos_sentinel_consumer_lag_records{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        if common::metric(text, read) >= fed.reports as f64
            && lags.len() == 32
            && lags.iter().all(|l| *l == 0.0)
        {
            break last;
        }
    };
    let turns = common::metric(&text, "qos_sentinel_loop_turn_duration_seconds_count");
    let within_5s = common::metric(
        &text,
        "qos_sentinel_loop_turn_duration_seconds_bucket{le=\"5\"}",
    );
    assert!(turns > 0.0, "turns timed: {turns}");
    assert_eq!(
        turns, within_5s,
        "turns of the loop over 5 s with the broker 250 ms away"
    );
    d.stop().await;
}
