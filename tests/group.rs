//! The reports consumer's place in its group: a member whose join does not settle (here the
//! coordinator fails every JoinGroup) says so, counts it and joins again as a new member,
//! and reads its partitions once the coordinator answers.

mod common;

use std::time::{Duration, Instant};

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

async fn metric(base: &str, line: &str) -> f64 {
    match reqwest::get(format!("{base}/metrics")).await {
        Ok(r) => common::metric(&r.text().await.unwrap_or_default(), line),
        Err(_) => f64::NAN,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_that_does_not_settle_is_visible_and_retried_as_a_new_member() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.http.listen = common::free_addr();
    // The test config's session (3 s): a rejoin after 30 s unsettled.
    let cluster = common::mock_cluster(&mut cfg, 2);
    cluster.request_errors(
        RDKafkaApiKey::JoinGroup,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 5_000],
    );
    let path = common::write_config(dir.path(), &cfg, "");
    let log = dir.path().join("daemon.log");
    let _child = common::Killed(common::spawn_daemon(&path, &[("RUST_LOG", "info")], &log));
    let base = format!("http://{}", cfg.http.listen);
    let line = "qos_sentinel_retries_total{loop=\"group_join\"}";
    let start = Instant::now();
    // NaN (no answer yet) counts as not yet.
    while metric(&base, line)
        .await
        .partial_cmp(&1.0)
        .is_none_or(|o| o.is_lt())
    {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no rejoin counted: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("The consumer group has not settled"),
        "the rejoin is logged: {text}"
    );
    assert_eq!(
        reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status(),
        503,
        "not ready without partitions"
    );
    // The coordinator answers again: the member joins and gets its partitions.
    cluster.clear_request_errors(RDKafkaApiKey::JoinGroup);
    let start = Instant::now();
    loop {
        let ready = reqwest::get(format!("{base}/readyz"))
            .await
            .unwrap()
            .status();
        if ready == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never joined: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
