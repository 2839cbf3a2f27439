//! The reports consumer's place in its group: a member whose join does not settle (here the
//! coordinator fails every JoinGroup) says so, counts it and joins again as a new member,
//! and reads its partitions once the coordinator answers. A member without partitions in a
//! settled group (a standby) is ready.

mod common;

use std::time::{Duration, Instant};

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// `/readyz`'s status and body (0 and the error while the daemon does not answer).
async fn readyz(base: &str) -> (u16, String) {
    match reqwest::get(format!("{base}/readyz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

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
    let (code, body) = readyz(&base).await;
    assert_eq!(code, 503, "not ready without partitions: {body}");
    assert!(
        body.starts_with("not ready:\n") && body.contains("settled member of the consumer group"),
        "the body says why: {body}"
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

/// More instances than partitions: the one without a partition is a standby, ready (behind a
/// Kubernetes Service or a load balancer it is where the partition goes when the other
/// leaves), and its `/readyz` says so. Before, it stayed 503 for as long as it had none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_without_partitions_is_ready_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("unused"));
    common::mock_cluster(&mut cfg, 1);
    let mut children = Vec::new();
    let mut members = Vec::new();
    for name in ["a", "b"] {
        let mut c = cfg.clone();
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        c.state.dir = home.join("state");
        c.http.listen = common::free_addr();
        let path = common::write_config(&home, &c, "");
        let log = home.join("daemon.log");
        children.push(common::Killed(common::spawn_daemon(
            &path,
            &[("RUST_LOG", "info")],
            &log,
        )));
        members.push((format!("http://{}", c.http.listen), log));
    }
    let start = Instant::now();
    let bodies = loop {
        let mut answers = Vec::new();
        for (base, _) in &members {
            answers.push(readyz(base).await);
        }
        if answers.iter().all(|(code, _)| *code == 200) {
            break answers;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not both ready: {answers:#?}\n{}",
            members
                .iter()
                .map(|(_, log)| std::fs::read_to_string(log).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let owner = bodies
        .iter()
        .filter(|(_, b)| b.starts_with("ready: consuming 1 report partition"))
        .count();
    let standby = bodies
        .iter()
        .filter(|(_, b)| b.starts_with("ready: standby") && b.contains("partitions 0\n"))
        .count();
    assert_eq!((owner, standby), (1, 1), "{bodies:#?}");
}
