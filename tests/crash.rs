//! Crash consistency: the daemon (a child process) is killed with SIGKILL at random moments
//! while it works through a recorded stream on a broker in a process of its own (tansu);
//! all its alerts, taken together, must equal an uninterrupted run's by id and
//! status: none lost, none doubled, none resolved without firing.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use qos_sentinel::config::Config;
use qos_sentinel::incident::{Alert, Status};
use qos_sentinel::sim::{IncidentKind, Injected, SimConfig, Simulator};

const KILLS: usize = 20;

/// A run of its own: own group, alerts topic and state; same input topics.
fn run_config(base: &Config, dir: &std::path::Path, name: &str) -> (Config, std::path::PathBuf) {
    let mut cfg = base.clone();
    cfg.kafka.group_id = format!("{}-{name}", base.kafka.group_id);
    cfg.kafka.alerts_topic = format!("{}-{name}", base.kafka.alerts_topic);
    common::instance(&cfg, dir, name)
}

/// The run's alerts once every incident has resolved, there are `at_least` of them (a run
/// that restarts a lot pauses longer than the quiet period) and nothing new came for 5 s.
fn settled(cfg: &Config, at_least: usize) -> Vec<Alert> {
    common::settled(cfg, at_least, Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_of_a_run_killed_20_times_equal_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = common::test_config(&dir.path().join("unused"));
    let broker = common::tansu(&mut base, 8, &dir.path().join("tansu.log"));
    // Short lives between kills: checkpoint often, so that each one gets somewhere.
    base.state.checkpoint_interval = Duration::from_secs(1);
    for name in ["golden", "crashy"] {
        broker.create_topic(&format!("{}-{name}", base.kafka.alerts_topic), 1);
    }
    let stats = common::feed_sim(&base, common::four_incident_sim()).await;
    assert!(stats.reports > 100_000, "{stats:?}");

    // The uninterrupted run.
    let (golden_cfg, golden_path) = run_config(&base, dir.path(), "golden");
    let log = dir.path().join("golden.log");
    let mut child = common::spawn_daemon(&golden_path, &[("RUST_LOG", "info")], &log);
    let gc = golden_cfg.clone();
    // Not before four incidents fired and resolved: on a loaded machine the run may pause
    // longer than the quiet period between two of them (CI once stopped after three).
    let golden = tokio::task::spawn_blocking(move || settled(&gc, 8))
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let want = common::changes(&golden);
    assert!(want.len() >= 8, "four incidents fire and resolve: {want:?}");
    assert!(
        want.values().all(|n| *n == 1),
        "golden run has no repeats: {want:?}"
    );

    // The same input, killed with SIGKILL at random moments.
    let (crash_cfg, crash_path) = run_config(&base, dir.path(), "crashy");
    let log = dir.path().join("crashy.log");
    let mut rng = qos_sentinel::sim::Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    let started = Instant::now();
    for _ in 0..KILLS {
        let mut child = common::spawn_daemon(&crash_path, &[("RUST_LOG", "info")], &log);
        // The group waits out the killed member's session (3 s) before the new one gets
        // its partitions, and a new member takes up to 4 s in all to get them on a slow
        // machine: each life is about 2-7 s of work after that.
        let ms = 6_000 + rng.below(5_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let mut child = common::spawn_daemon(&crash_path, &[("RUST_LOG", "info")], &log);
    let cc = crash_cfg.clone();
    // At least as many as the golden run (the last life may start slowly), then quiet.
    let at_least = golden.len();
    let crashy = tokio::task::spawn_blocking(move || settled(&cc, at_least))
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let got = common::changes(&crashy);
    // Restores from different checkpoints: the lives between kills got somewhere.
    let restores = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split("Restored the engine from its checkpoint")
                .nth(1)
                .map(str::to_string)
        })
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert!(
        restores >= KILLS / 2,
        "most restarts restore a newer checkpoint ({restores} distinct):\n{}",
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("librdkafka"))
            .take(80)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        got,
        want,
        "after {KILLS} kills over {:?}, the alerts differ from the uninterrupted run; the \
         crashy run's warnings:\n{}",
        started.elapsed(),
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("librdkafka") && (l.contains("WARN") || l.contains("ERROR")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Never resolved without firing first, in topic order.
    let mut fired = std::collections::HashSet::new();
    for a in &crashy {
        match a.status {
            Status::Firing => {
                fired.insert(a.id.clone());
            }
            Status::Resolved => assert!(fired.contains(&a.id), "{} resolved before firing", a.id),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_from_another_cluster_is_ignored() {
    use qos_sentinel::daemon::{self, RunOptions};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.window.allowed_lateness = Duration::from_secs(10);
    cfg.http.listen = common::free_addr();
    let _first = common::mock_cluster(&mut cfg, 2);
    common::feed_sim(&cfg, common::two_incident_sim()).await;
    let opts = RunOptions {
        serve_http: false,
        ..Default::default()
    };
    let (stop, rx) = tokio::sync::watch::channel(false);
    let d = tokio::spawn(daemon::run(cfg.clone(), opts.clone(), rx));
    let first = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || settled(&cfg, 0)
    })
    .await
    .unwrap();
    let _ = stop.send(true);
    d.await.unwrap().unwrap();
    assert!(!first.is_empty());

    // The same topic names on a new, shorter-lived cluster; the same state directory.
    let second = common::mock_cluster(&mut cfg, 2);
    let start = 1_767_290_400_000;
    let mut sc = SimConfig::quiet(8, start, 25 * 60_000);
    sc.locations = 6;
    sc.cdns = 2;
    sc.peak_sessions = 1_000;
    sc.incidents = vec![Injected {
        kind: IncidentKind::FailureSpike,
        location: qos_sentinel::sim::location_names(6)[4].clone(),
        cdn: "cdn-a".into(),
        start: start + 8 * 60_000,
        end: start + 18 * 60_000,
        asn: None,
    }];
    common::feed_sim(&cfg, Simulator::new(sc)).await;
    assert_eq!(cfg.kafka.brokers, second.bootstrap_servers());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let d = tokio::spawn(daemon::run(cfg.clone(), opts, rx));
    let loc = qos_sentinel::sim::location_names(6)[4].clone();
    let again: Vec<Alert> = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || {
            let c = common::tail(&cfg.kafka.brokers, &cfg.kafka.alerts_topic);
            common::read_until(&c, Duration::from_secs(120), |r| {
                r.iter().any(|m| {
                    serde_json::from_slice::<Alert>(m.value.as_deref().unwrap_or_default())
                        .is_ok_and(|a| a.scope.location.as_deref() == Some(loc.as_str()))
                })
            })
            .iter()
            .map(|m| serde_json::from_slice(m.value.as_deref().unwrap_or_default()).unwrap())
            .collect()
        }
    })
    .await
    .unwrap();
    let _ = stop.send(true);
    d.await.unwrap().unwrap();
    assert!(
        again.iter().any(|a| a.status == Status::Firing
            && a.scope.location.as_deref()
                == Some(qos_sentinel::sim::location_names(6)[4].as_str())),
        "the new cluster's incident is found, not skipped: {again:?}"
    );
}

/// An alert for the pending-alerts test.
fn alert(id: &str, status: &str) -> Alert {
    serde_json::from_value(serde_json::json!({
        "id": id, "status": status, "rule": "failure_rate", "severity": "critical",
        "scope": {"location": "loc-1", "cdn": "cdn-a"}, "metric": "failure_rate",
        "observed": 0.2, "expected": 0.01, "samples": 500, "p_value": 1e-9,
        "window_start": "2026-01-01T10:00:00Z", "window_end": "2026-01-01T10:01:00Z",
        "started_at": "2026-01-01T10:00:00Z",
        "resolved_at": if status == "resolved" { serde_json::json!("2026-01-01T10:05:00Z") } else { serde_json::Value::Null },
        "summary": "test"
    }))
    .unwrap()
}

/// A run killed between deciding alerts (checkpoint) and their acknowledgement leaves them
/// pending; some reached the alerts topic, some did not. The next start sends exactly the
/// missing ones: each is on the topic once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_pending_at_a_kill_are_on_the_topic_once_after_restart() {
    use qos_sentinel::checkpoint::CheckpointStore;
    use qos_sentinel::notify::change_key;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.http.listen = common::free_addr();
    let cluster = common::mock_cluster(&mut cfg, 2);
    // Two partitions: the lookup must read every one.
    cfg.kafka.alerts_topic = format!("{}-2p", cfg.kafka.alerts_topic);
    cluster.create_topic(&cfg.kafka.alerts_topic, 2, 1).unwrap();
    let p = common::producer(&cfg.kafka.brokers);
    let send = |a: &Alert, part: i32| {
        let v = serde_json::to_vec(a).unwrap();
        let rec = rdkafka::producer::BaseRecord::to(&cfg.kafka.alerts_topic)
            .key("loc-1/cdn-a")
            .payload(&v)
            .partition(part);
        p.poll(Duration::ZERO);
        p.send(rec).map_err(|(e, _)| e).unwrap();
    };
    // History: alerts acknowledged before the last confirmed position (not looked at), then
    // two of the three pending ones, as a killed run left them.
    let (old, a, b, c) = (
        alert("0000000000000099", "firing"),
        alert("00000000000000aa", "firing"),
        alert("00000000000000bb", "firing"),
        alert("00000000000000aa", "resolved"),
    );
    send(&old, 0);
    send(&old, 1);
    common::flush(&p);
    std::fs::create_dir_all(&cfg.state.dir).unwrap();
    {
        let store = CheckpointStore::open(&cfg.state.dir).unwrap();
        store.confirm(&[], &[(0, 0), (1, 0)]).unwrap();
        let decided: Vec<(String, Vec<u8>)> = [&a, &b, &c]
            .iter()
            .map(|x| (change_key(x), serde_json::to_vec(x).unwrap()))
            .collect();
        store
            .save(&cfg.kafka.reports_topic, None, &decided, 1_000)
            .unwrap();
    }
    send(&a, 1);
    send(&c, 0);
    common::flush(&p);

    let d = common::start_daemon(&cfg);
    let (brokers, topic) = (cfg.kafka.brokers.clone(), cfg.kafka.alerts_topic.clone());
    let read_all = move || {
        let mut all: Vec<Alert> = Vec::new();
        for part in 0..2 {
            let t = common::tail_partition(&brokers, &topic, part);
            for m in common::read_until(&t, Duration::from_secs(1), |_| false) {
                all.push(serde_json::from_slice(m.value.as_deref().unwrap_or_default()).unwrap());
            }
        }
        all
    };
    let missing = change_key(&b);
    let got = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60)
            && !read_all().iter().any(|x| change_key(x) == missing)
        {}
        // Anything sent twice would be there by now.
        std::thread::sleep(Duration::from_secs(2));
        read_all()
    })
    .await
    .unwrap();
    d.stop().await;
    let want: BTreeMap<String, usize> = [
        ("0000000000000099:firing".to_string(), 2),
        ("00000000000000aa:firing".to_string(), 1),
        ("00000000000000aa:resolved".to_string(), 1),
        ("00000000000000bb:firing".to_string(), 1),
    ]
    .into();
    assert_eq!(common::changes(&got), want);
    let store = CheckpointStore::open(&cfg.state.dir).unwrap();
    assert!(store.pending().unwrap().is_empty(), "nothing left pending");
}
