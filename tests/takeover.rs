//! A take-over whose changelog read fails. A new owner (here: an instance with a fresh state
//! directory, as on a new machine) takes partition 0 over from the changelog while the
//! changelog's leader (broker 2 of librdkafka's mock cluster) is down. It reads again; when
//! the leader comes back in time it takes the state over, and the incident that fired before
//! resolves with its own id. When the leader stays away, the partition starts empty, says so,
//! and the incident its last owner left firing is resolved, never left firing forever. And a
//! partition whose state is larger than the producer takes in one record goes over in chunks.

mod common;

use std::time::{Duration, Instant};

use qos_sentinel::config::Config;
use qos_sentinel::daemon::{self, RunOptions};
use qos_sentinel::incident::{Alert, Status};
use qos_sentinel::metrics::Metrics;
use rdkafka::mocking::MockCluster;

type Cluster = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// Two brokers; every topic led by broker 1 but the changelog, led by broker 2.
fn two_brokers(cfg: &mut Config) -> &'static Cluster {
    let cluster: &'static Cluster = Box::leak(Box::new(MockCluster::new(2).expect("mock cluster")));
    cfg.kafka.brokers = cluster.bootstrap_servers();
    let changelog = format!("changelog-{}", cfg.kafka.group_id);
    let k = &cfg.kafka;
    for t in [
        &k.reports_topic,
        &k.benchmarks_topic,
        &k.alerts_topic,
        &k.dead_letter_topic,
        &changelog,
    ] {
        cluster.create_topic(t, 1, 1).expect("topic");
    }
    for t in [
        &k.reports_topic,
        &k.benchmarks_topic,
        &k.alerts_topic,
        &k.dead_letter_topic,
    ] {
        cluster.partition_leader(t, 0, Some(1)).expect("leader");
    }
    cluster
        .partition_leader(&changelog, 0, Some(2))
        .expect("leader");
    cluster
        .coordinator(
            rdkafka::mocking::MockCoordinator::Group(k.group_id.clone()),
            1,
        )
        .expect("coordinator");
    cfg.kafka.changelog_topic = Some(changelog);
    cluster
}

struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: std::sync::Arc<Metrics>,
}

fn start(cfg: &Config) -> Running {
    // The daemons' logs, shown when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,rdkafka=off,librdkafka=off")
        .with_test_writer()
        .try_init();
    let metrics = std::sync::Arc::new(Metrics::new());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let opts = RunOptions {
        metrics: Some(metrics.clone()),
        ..Default::default()
    };
    let handle = tokio::spawn(daemon::run(cfg.clone(), opts, rx));
    Running {
        stop,
        handle,
        metrics,
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("daemon stops")
            .expect("daemon task")
            .expect("daemon run");
    }
}

fn alerts(cfg: &Config, until: impl Fn(&[Alert]) -> bool) -> Vec<Alert> {
    let c = common::tail(&cfg.kafka.brokers, &cfg.kafka.alerts_topic);
    let parse = |r: &[common::Read]| -> Vec<Alert> {
        r.iter()
            .filter_map(|m| serde_json::from_slice(m.value.as_deref()?).ok())
            .collect()
    };
    let read = common::read_until(&c, Duration::from_secs(120), |r| until(&parse(r)));
    parse(&read)
}

/// The first owner: an incident fires on partition 0, its state goes to the changelog, and
/// the owner leaves. Returns the incident's id.
async fn first_owner(cfg: &Config, dir: &std::path::Path) -> String {
    let p = common::producer(&cfg.kafka.brokers);
    common::mumbai_benchmarks(&p, &cfg.kafka.benchmarks_topic);
    common::mumbai_windows(&p, &cfg.kafka.reports_topic, 0..3, false);
    common::mumbai_windows(&p, &cfg.kafka.reports_topic, 3..10, true);
    let mut first = cfg.clone();
    first.state.dir = dir.join("first");
    let d = start(&first);
    let fired = tokio::task::block_in_place(|| alerts(cfg, |a| !a.is_empty()));
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].status, Status::Firing);
    d.stop().await;
    fired[0].id.clone()
}

/// The first owner's run, then a second owner (a fresh state directory) started while the
/// changelog's leader is down: (config, cluster, the incident's id, the second owner).
async fn second_owner_while_the_changelog_is_down(
    dir: &std::path::Path,
) -> (Config, &'static Cluster, String, Running) {
    let mut cfg = common::test_config(&dir.join("unused"));
    let cluster = two_brokers(&mut cfg);
    let id = first_owner(&cfg, dir).await;
    cluster.broker_down(2).unwrap();
    let mut second = cfg.clone();
    second.state.dir = dir.join("second");
    let d = start(&second);
    (cfg, cluster, id, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_reads_the_changelog_again_until_its_leader_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, cluster, id, d) = second_owner_while_the_changelog_is_down(dir.path()).await;
    let retries = d.metrics.retries.with_label_values(&["changelog_read"]);
    let t = Instant::now();
    while retries.get() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "the changelog read was never retried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.broker_up(2).unwrap();

    // The state came over: the incident goes on under its id and resolves when clean.
    let p = common::producer(&cfg.kafka.brokers);
    common::mumbai_windows(&p, &cfg.kafka.reports_topic, 10..20, false);
    let all = tokio::task::block_in_place(|| {
        alerts(&cfg, |a| a.iter().any(|a| a.status == Status::Resolved))
    });
    let changes: Vec<(&str, Status)> = all.iter().map(|a| (a.id.as_str(), a.status)).collect();
    assert_eq!(
        changes,
        [
            (id.as_str(), Status::Firing),
            (id.as_str(), Status::Resolved)
        ],
        "{all:#?}"
    );
    assert!(
        !all[1].summary.contains("could not be taken over"),
        "resolved on evidence: {}",
        all[1].summary
    );
    assert_eq!(d.metrics.partitions_started_empty.get(), 0);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_starts_empty_resolves_what_its_last_owner_left_firing() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, cluster, id, d) = second_owner_while_the_changelog_is_down(dir.path()).await;
    let t = Instant::now();
    while d.metrics.partitions_started_empty.get() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(150),
            "the partition never started empty"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        d.metrics
            .retries
            .with_label_values(&["changelog_read"])
            .get(),
        3,
        "read four times before giving up"
    );
    // The changelog takes this owner's writes again; the location's reports arrive here.
    cluster.broker_up(2).unwrap();
    let p = common::producer(&cfg.kafka.brokers);
    common::mumbai_windows(&p, &cfg.kafka.reports_topic, 10..20, false);
    let all = tokio::task::block_in_place(|| {
        alerts(&cfg, |a| {
            a.iter().any(|a| a.id == id && a.status == Status::Resolved)
        })
    });
    let orphan: Vec<&Alert> = all.iter().filter(|a| a.id == id).collect();
    assert_eq!(orphan.len(), 2, "fired, then resolved here: {all:#?}");
    assert_eq!(orphan[1].status, Status::Resolved);
    assert!(
        orphan[1].summary.contains("could not be taken over"),
        "says why: {}",
        orphan[1].summary
    );
    assert_eq!(d.metrics.orphaned_incidents.get(), 0);
    d.stop().await;
}

/// One report each for `keys` small keys (no benchmark) in window `w`, on the one partition.
fn small_keys(p: &common::Producer, topic: &str, keys: usize, w: i64) {
    for k in 0..keys {
        let r = qos_sentinel::decode::Report {
            session_id: format!("k{k}-{w}").into(),
            throughput_kbps: Some(3_000.0 + (k % 7) as f64 * 100.0),
            played_ms: 10_000,
            ..qos_sentinel::decode::Report::new(
                format!("XX/{k}"),
                "cdn-a".to_string(),
                common::MUMBAI_T0 + w * 60_000 + (k as i64 % 50) * 1_000,
            )
        };
        common::send(p, topic, "IN/MH/Mumbai", &serde_json::to_vec(&r).unwrap());
    }
    common::flush(p);
}

/// Thousands of keys in one report partition, a producer limited to 64 KiB a message
/// (`kafka.options`): the partition's state goes to the changelog one record per key, so the
/// first owner keeps consuming, checkpointing and alerting (before chunks, then records: the
/// producer refused the share's one record, and the write, which the alert waits for,
/// retried forever: no alert); a second owner takes the state over from the records and
/// resolves the incident under its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_of_thousands_of_keys_goes_over_through_a_64_kib_producer() {
    const KEYS: usize = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("unused"));
    let cluster = common::mock_cluster(&mut cfg, 1);
    let changelog = format!("changelog-{}", cfg.kafka.group_id);
    cluster.create_topic(&changelog, 1, 1).expect("topic");
    cfg.kafka.changelog_topic = Some(changelog.clone());
    cfg.kafka
        .options
        .insert("message.max.bytes".into(), "65536".into());
    let topic = cfg.kafka.reports_topic.clone();
    let p = common::producer(&cfg.kafka.brokers);
    common::mumbai_benchmarks(&p, &cfg.kafka.benchmarks_topic);
    for w in 0..10 {
        small_keys(&p, &topic, KEYS, w);
        common::mumbai_windows(&p, &topic, w..w + 1, w >= 3);
    }
    let mut first = cfg.clone();
    first.state.dir = dir.path().join("first");
    let d = start(&first);
    let fired = tokio::task::block_in_place(|| alerts(&cfg, |a| !a.is_empty()));
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].status, Status::Firing);
    // What the checkpoints wrote, counted: every key at least once in each store.
    let w = &d.metrics.state_writes;
    for store in ["checkpoint", "changelog"] {
        let records = w.records.with_label_values(&[store]).get();
        assert!(records >= KEYS as u64, "{store}: {records} records");
        assert!(w.bytes.with_label_values(&[store]).get() > 500 * records);
    }
    d.stop().await;
    let records = tokio::task::block_in_place(|| {
        let c = common::tail(&cfg.kafka.brokers, &changelog);
        common::read_until(&c, Duration::from_secs(5), |_| false)
    });
    let key_records = records
        .iter()
        .filter(|m| m.key.as_deref().is_some_and(|k| k.starts_with("k/")))
        .count();
    assert!(
        key_records >= KEYS,
        "the state went one record per key: {key_records}"
    );
    assert!(
        records
            .iter()
            .all(|m| m.value.as_ref().is_none_or(|v| v.len() < 65_536)),
        "every record under the producer's limit"
    );

    let mut second = cfg.clone();
    second.state.dir = dir.path().join("second");
    let d = start(&second);
    for w in 10..18 {
        small_keys(&p, &topic, KEYS, w);
        common::mumbai_windows(&p, &topic, w..w + 1, false);
    }
    let all = tokio::task::block_in_place(|| {
        alerts(&cfg, |a| a.iter().any(|a| a.status == Status::Resolved))
    });
    let changes: Vec<(&str, Status)> = all.iter().map(|a| (a.id.as_str(), a.status)).collect();
    assert_eq!(
        changes,
        [
            (fired[0].id.as_str(), Status::Firing),
            (fired[0].id.as_str(), Status::Resolved)
        ],
        "{all:#?}"
    );
    assert_eq!(d.metrics.partitions_started_empty.get(), 0);
    assert!(
        !all[1].summary.contains("could not be taken over"),
        "resolved on evidence: {}",
        all[1].summary
    );
    d.stop().await;
}
