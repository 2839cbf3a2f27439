//! The loop's handlers against a real (mock) Kafka group: what a rebalance must change
//! before anything is decided.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;

use super::*;
use crate::decode::Report;
use crate::table::Expected;

const W: i64 = 60_000;

/// The runner `run` assembles, without the threads around it (benchmark reader, probes,
/// HTTP): its handlers are called directly.
fn runner(cfg: &Config) -> Runner {
    let metrics = Arc::new(Metrics::new());
    let live = Arc::new(Live::default());
    let store = open_table(cfg).expect("table");
    let (engine, next, ckpt) = restore(cfg, &store, &metrics.retries).expect("restore");
    let producer = kafka::producer(&cfg.kafka).expect("producer");
    let opts = RunOptions::default();
    let history =
        Arc::new(crate::history::History::open(&cfg.state.dir, &cfg.history).expect("history"));
    let outputs = outputs(cfg, &opts, &metrics, &live, &producer, &history).expect("outputs");
    let mut ckpt = ckpt;
    ckpt.changelog = changelog(cfg, &producer).expect("changelog");
    Runner {
        idle_grace: cfg.window.size + cfg.window.allowed_lateness,
        last_progress: (Instant::now(), engine.watermark()),
        last_probe: Instant::now(),
        lag: Default::default(),
        adopted: HashSet::new(),
        orphans: orphans::Orphans::default(),
        reports_in: metrics.records_in.with_label_values(&["reports"]),
        summaries_in: metrics.records_in.with_label_values(&["summaries"]),
        cfg: cfg.clone(),
        opts,
        engine,
        metrics,
        readiness: Arc::new(Readiness::default()),
        outputs,
        ckpt,
        pos: positions::Positions::new(next),
        summaries: None,
        store: store.clone(),
    }
}

/// A member of `group` on `cluster` with its state in `dir` and a changelog (more than one
/// instance: it hands a partition's state to its next owner); the topics created, the
/// reports and the changelog with `partitions` each.
fn with_changelog(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    dir: &std::path::Path,
    group: &str,
    partitions: i32,
) -> Config {
    let mut cfg = Config::default();
    cfg.kafka.brokers = cluster.bootstrap_servers();
    cfg.kafka.group_id = group.into();
    cfg.kafka.session_timeout = Duration::from_secs(3);
    cfg.kafka.changelog_topic = Some("changelog".into());
    cfg.state.dir = dir.into();
    let k = &cfg.kafka;
    cluster
        .create_topic(&k.reports_topic, partitions, 1)
        .expect("topic");
    cluster
        .create_topic("changelog", partitions, 1)
        .expect("topic");
    for t in [&k.alerts_topic, &k.dead_letter_topic, &k.benchmarks_topic] {
        cluster.create_topic(t, 1, 1).expect("topic");
    }
    cfg
}

/// Polls `consumers` until `done` holds of their assignments (a rebalance runs inside the
/// poll, as in the daemon's loop).
async fn poll_until(consumers: &[&kafka::ReportsConsumer], done: impl Fn(&[usize]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sizes: Vec<usize> = consumers
            .iter()
            .map(|c| c.assignment().map(|t| t.count()).unwrap_or(0))
            .collect();
        if done(&sizes) {
            return;
        }
        assert!(Instant::now() < deadline, "no rebalance: {sizes:?}");
        for c in consumers {
            let _ = tokio::time::timeout(Duration::from_millis(50), c.recv()).await;
        }
    }
}

/// 60 reports at `loc`/cdn-a in window `w` from `partition`, a fifth of them failed when
/// `bad`.
fn window(e: &mut crate::engine::Engine, loc: &str, partition: i32, w: i64, bad: bool) {
    for n in 0..60 {
        let r = Report {
            session_id: format!("{loc}-{w}-{n}").into(),
            throughput_kbps: Some(5_000.0),
            error: (bad && n % 5 == 0).then(|| "E".into()),
            ..Report::new(loc.to_string(), "cdn-a".to_string(), w * W + n * 1_000)
        };
        e.on_report(&r, Some((partition, w * 60 + n)));
    }
}

/// A partition moves to a new member while its incident's windows wait to be closed; a
/// summary (here the summaries consumer's error: any event of that branch) is the next
/// event. The windows are closed then, but not for the partition that moved: its new owner
/// decides it (before, this instance paged it too, and kept reminding it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_after_a_revocation_decides_nothing_for_the_partition_that_moved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = MockCluster::new(1).expect("mock cluster");
    let cfg = with_changelog(&cluster, dir.path(), "revoke-test", 2);

    let mut r = runner(&cfg);
    let a = kafka::reports_consumer(&cfg.kafka).expect("consumer");
    poll_until(&[&a], |n| n[0] == 2).await;
    assert!(r.sync(&a).await, "both partitions assigned");
    a.context().take_revoked();
    let row = Expected {
        error_rate: Some(0.01),
        ..Default::default()
    };
    let locs = ["IN/P0", "IN/P1"];
    for (p, loc) in locs.iter().enumerate() {
        r.engine.on_benchmark(loc, "cdn-a", 0, Some(row));
        for w in 0..2 {
            window(&mut r.engine, loc, p as i32, w, false);
        }
    }
    assert!(r.engine.close_ready().is_empty(), "clean windows");
    for (p, loc) in locs.iter().enumerate() {
        for w in 2..5 {
            window(&mut r.engine, loc, p as i32, w, true);
        }
        window(&mut r.engine, loc, p as i32, 7, false);
    }
    assert!(r.engine.has_ready(), "bad windows wait to be closed");

    // A second member joins: one partition moves to it.
    let b = kafka::reports_consumer(&cfg.kafka).expect("consumer");
    poll_until(&[&a, &b], |n| n[0] == 1 && n[1] == 1).await;
    let kept = a.assignment().expect("assignment").elements()[0].partition();
    let moved = 1 - kept;

    r.on_summaries(&a, None, Err(KafkaError::NoMessageReceived))
        .await;
    let live = r.outputs.live.snapshot();
    let firing: Vec<&str> = live["firing"]
        .as_array()
        .expect("firing")
        .iter()
        .filter_map(|a| a["scope"]["location"].as_str())
        .collect();
    assert!(
        firing.contains(&locs[kept as usize]),
        "the partition kept is decided: {firing:?}"
    );
    assert!(
        !firing.contains(&locs[moved as usize]),
        "nothing is decided for partition {moved}, which moved away: {firing:?}"
    );
    assert!(!r.engine.has_partition(moved));
}

/// Receivers hear of a decided state change only once the changelog holds it. A member
/// killed after telling a webhook an incident resolved, before its partition's state with
/// that resolution reached the changelog, left the next owner a state where the incident
/// still fired: it reminded the webhook of it as firing after its resolution (scale_out, one
/// CI run in four). Here the changelog write cannot finish (its broker is down) and the
/// close is cut off as a kill would cut it: the outbox must still be empty. Once the broker
/// is back the same close goes through, outbox included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_hear_of_an_alert_only_after_the_changelog_holds_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = MockCluster::new(1).expect("mock cluster");
    let mut cfg = with_changelog(&cluster, dir.path(), "order-test", 1);
    // A webhook nobody answers: what reaches the outbox stays there.
    cfg.notify.receivers = vec![
        toml::from_str(
            "name = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\nmax_age = \"0s\"",
        )
        .expect("receiver"),
    ];
    let mut r = runner(&cfg);
    let a = kafka::reports_consumer(&cfg.kafka).expect("consumer");
    poll_until(&[&a], |n| n[0] == 1).await;
    assert!(r.sync(&a).await, "the partition is assigned");
    let row = Expected {
        error_rate: Some(0.01),
        ..Default::default()
    };
    r.engine.on_benchmark("IN/P0", "cdn-a", 0, Some(row));
    for w in 0..2 {
        window(&mut r.engine, "IN/P0", 0, w, false);
    }
    assert!(r.engine.close_ready().is_empty(), "clean windows");
    for w in 2..5 {
        window(&mut r.engine, "IN/P0", 0, w, true);
    }
    window(&mut r.engine, "IN/P0", 0, 7, false);
    let alerts = r.engine.close_ready();
    assert!(!alerts.is_empty(), "the bad windows fire");
    // As if read from the topic: the partition's state has a read position to be written with.
    r.pos.next.insert(0, 8 * 60);
    let closing = |alerts: &[crate::incident::Alert]| emit::Closing {
        alerts: alerts.to_vec(),
        started: Instant::now(),
        closed: true,
    };

    cluster.broker_down(1).expect("broker down");
    let cut = tokio::time::timeout(
        Duration::from_secs(2),
        emit::finish(
            &mut r.ckpt,
            &r.engine,
            &mut r.pos,
            &r.outputs,
            closing(&alerts),
        ),
    )
    .await;
    assert!(cut.is_err(), "the changelog write cannot finish");
    assert_eq!(
        r.outputs.dispatcher.pending(),
        0,
        "nothing reaches the receivers before the changelog holds it"
    );

    cluster.broker_up(1).expect("broker up");
    // The restart after that kill: the local checkpoint has them decided and pending, the
    // alerts topic does not have them, so the receivers get them now, and the topic.
    let restart = tokio::time::timeout(
        Duration::from_secs(60),
        emit::send_pending(&r.ckpt.store, &r.outputs),
    )
    .await;
    assert!(matches!(restart, Ok(Ok(()))), "{restart:?}");
    assert!(
        r.outputs.dispatcher.pending() > 0,
        "the receivers get what was pending"
    );
    let on_topic = crate::notify::find_on_topic(
        &cfg.kafka,
        &cfg.kafka.alerts_topic,
        &HashMap::new(),
        &alerts.iter().map(crate::notify::change_key).collect(),
        Duration::from_secs(20),
    )
    .expect("alerts topic");
    assert_eq!(on_topic.len(), alerts.len(), "and the alerts topic");
}

mod changelog;
