//! The one test kit of the integration tests: configs, a mock Kafka cluster on loopback and
//! the tansu broker, producers and tail consumers (built by the daemon's own `kafka` module),
//! simulated traffic, the daemon spawned, killed and settled, scrapes.

#![allow(dead_code)]

pub mod receiver;

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};

use qos_sentinel::config::Config;
use qos_sentinel::kafka::{self, KafkaConfig};
use qos_sentinel::sim::{IncidentKind, Injected, SimConfig, Simulator};

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// The Prometheus text served at `{base}/metrics`.
pub async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}

/// A config for one test: unique topics and group, state in `state_dir`. Brokers are set
/// once the cluster is up.
pub fn test_config(state_dir: &std::path::Path) -> Config {
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let mut cfg = Config::default();
    cfg.kafka.group_id = format!("g-{tag}");
    cfg.kafka.reports_topic = format!("reports-{tag}");
    cfg.kafka.benchmarks_topic = format!("benchmarks-{tag}");
    cfg.kafka.alerts_topic = format!("alerts-{tag}");
    cfg.kafka.dead_letter_topic = format!("dlq-{tag}");
    cfg.kafka.session_timeout = Duration::from_secs(3);
    cfg.state.dir = state_dir.into();
    cfg
}

/// Starts a mock cluster, creates the config's topics on it and points the config at it.
/// The cluster lives as long as the test process: a test that fails while a daemon runs then
/// still ends (librdkafka's consumer close blocks on a broker that vanished under it).
pub fn mock_cluster(
    cfg: &mut Config,
    report_partitions: i32,
) -> &'static MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster: &'static _ = Box::leak(Box::new(MockCluster::new(1).expect("mock cluster")));
    cfg.kafka.brokers = cluster.bootstrap_servers();
    let k = &cfg.kafka;
    cluster
        .create_topic(&k.reports_topic, report_partitions, 1)
        .expect("topic");
    cluster
        .create_topic(&k.benchmarks_topic, 1, 1)
        .expect("topic");
    cluster.create_topic(&k.alerts_topic, 1, 1).expect("topic");
    cluster
        .create_topic(&k.dead_letter_topic, 1, 1)
        .expect("topic");
    cluster
}

/// The tansu binary: `$TANSU`, else `~/.cache/tansu/bin/tansu`, where `scripts/deps` builds it.
pub fn tansu_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("TANSU") {
        return p.into();
    }
    let p = std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/tansu/bin/tansu");
    assert!(
        p.exists(),
        "tansu not found at {} (scripts/deps builds it: cargo install tansu --version 0.6.0 \
         --locked --features dynostore --root ~/.cache/tansu)",
        p.display()
    );
    p
}

/// A tansu broker (Apache Kafka compatible, memory storage) in a process of its own,
/// stopped when dropped.
pub struct Tansu {
    child: std::process::Child,
    bin: std::path::PathBuf,
    pub brokers: String,
}

/// Starts tansu (its output to `log`), creates the config's topics on it and points the
/// config at it.
pub fn tansu(cfg: &mut Config, report_partitions: i32, log: &std::path::Path) -> Tansu {
    let bin = tansu_bin();
    let addr = free_addr();
    let url = format!("tcp://{addr}");
    let out = std::fs::File::create(log).expect("tansu log");
    let child = std::process::Command::new(&bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("start tansu");
    let started = Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tansu did not listen within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Tansu {
        child,
        bin,
        brokers: addr,
    };
    cfg.kafka.brokers = t.brokers.clone();
    let k = &cfg.kafka;
    t.create_topic(&k.reports_topic, report_partitions);
    t.create_topic(&k.benchmarks_topic, 1);
    t.create_topic(&k.alerts_topic, 1);
    t.create_topic(&k.dead_letter_topic, 1);
    t
}

impl Tansu {
    pub fn create_topic(&self, name: &str, partitions: i32) {
        let out = std::process::Command::new(&self.bin)
            .args(["topic", "create", name, "--broker"])
            .arg(format!("tcp://{}", self.brokers))
            .args(["--partitions", &partitions.to_string()])
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test's producer: the one the bench loads traffic with ([`kafka::bulk_producer`]).
pub fn producer(brokers: &str) -> Producer {
    kafka::bulk_producer(&kafka_at(brokers)).expect("producer")
}

pub type Producer = rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>;

/// The daemon's Kafka settings with other brokers.
pub fn kafka_at(brokers: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers.into(),
        ..KafkaConfig::default()
    }
}

pub fn send(p: &Producer, topic: &str, key: &str, value: &[u8]) {
    let mut rec = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, r)) => {
                std::thread::sleep(Duration::from_millis(10)); // queue full: let it drain
                rec = r;
            }
        }
    }
}

pub fn flush(p: &Producer) {
    rdkafka::producer::Producer::flush(p, Duration::from_secs(30)).expect("flush");
}

/// A consumer reading partition 0 of `topic` from the beginning.
pub fn tail(brokers: &str, topic: &str) -> BaseConsumer {
    tail_partition(brokers, topic, 0)
}

/// A consumer reading one partition of `topic` from the beginning.
pub fn tail_partition(brokers: &str, topic: &str, partition: i32) -> BaseConsumer {
    let c = kafka::plain_consumer(&kafka_at(brokers), &format!("tail-{topic}")).expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("tpl");
    c.assign(&tpl).expect("assign");
    c
}

/// A message read back: key, value and headers as strings.
#[derive(Debug, Clone)]
pub struct Read {
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

/// Reads until `done` says so or `timeout` passes; returns everything read.
pub fn read_until(
    c: &BaseConsumer,
    timeout: Duration,
    done: impl Fn(&[Read]) -> bool,
) -> Vec<Read> {
    let start = Instant::now();
    let mut out = Vec::new();
    while start.elapsed() < timeout && !done(&out) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_string(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Read {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }
    out
}

/// 40 simulated minutes from 2026-01-01 18:00 UTC on 6 locations x 2 CDNs with a failure
/// spike (minutes 8-22) and a degradation (minutes 10-24): a few firing and resolved alerts,
/// ~100k reports, small enough for the mock cluster's partitions.
pub fn two_incident_sim() -> Simulator {
    let start = 1_767_290_400_000; // 2026-01-01T18:00:00Z
    let min = 60_000;
    let mut c = SimConfig::quiet(7, start, 40 * min);
    c.locations = 6;
    c.cdns = 2;
    c.peak_sessions = 1_000;
    let names = qos_sentinel::sim::location_names(c.locations);
    c.incidents = vec![
        Injected {
            kind: IncidentKind::FailureSpike,
            location: names[0].clone(),
            cdn: "cdn-a".into(),
            start: start + 8 * min,
            end: start + 22 * min,
            asn: None,
        },
        Injected {
            kind: IncidentKind::Degradation,
            location: names[1].clone(),
            cdn: "cdn-b".into(),
            start: start + 10 * min,
            end: start + 24 * min,
            asn: None,
        },
    ];
    Simulator::new(c)
}

/// 90 simulated minutes, 6 locations x 2 CDNs, four incidents of three kinds, ~250k reports:
/// the crash and scale-out tests' input.
pub fn four_incident_sim() -> Simulator {
    Simulator::new(four_incident_config())
}

/// [`four_incident_sim`]'s scenario, to add to.
pub fn four_incident_config() -> SimConfig {
    let start = 1_767_290_400_000;
    let min = 60_000;
    let mut c = SimConfig::quiet(23, start, 90 * min);
    c.locations = 6;
    c.cdns = 2;
    c.peak_sessions = 900;
    let names = qos_sentinel::sim::location_names(c.locations);
    let inc = |kind, i: usize, cdn: &str, from: i64, to: i64| Injected {
        kind,
        location: names[i].clone(),
        cdn: cdn.into(),
        start: start + from * min,
        end: start + to * min,
        asn: None,
    };
    c.incidents = vec![
        inc(IncidentKind::FailureSpike, 0, "cdn-a", 10, 25),
        inc(IncidentKind::Degradation, 1, "cdn-b", 30, 45),
        inc(IncidentKind::FailureSpike, 2, "cdn-b", 50, 62),
        inc(IncidentKind::Degradation, 3, "cdn-a", 65, 80),
    ];
    c
}

/// `id:status` → how many times it is among `alerts`.
pub fn changes(
    alerts: &[qos_sentinel::incident::Alert],
) -> std::collections::BTreeMap<String, usize> {
    use qos_sentinel::incident::Status;
    let mut m = std::collections::BTreeMap::new();
    for a in alerts {
        let s = match a.status {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        };
        *m.entry(format!("{}:{s}", a.id)).or_default() += 1;
    }
    m
}

/// Produces all of `sim` to the config's topics as fast as the broker takes it.
pub async fn feed_sim(cfg: &Config, sim: Simulator) -> qos_sentinel::sim::feed::FeedStats {
    let producer = qos_sentinel::kafka::producer(&cfg.kafka).expect("producer");
    let opts = qos_sentinel::sim::feed::FeedOptions {
        reports_topic: cfg.kafka.reports_topic.clone(),
        benchmarks_topic: cfg.kafka.benchmarks_topic.clone(),
        speed: 0.0,
        bad_every: 0,
    };
    qos_sentinel::sim::feed::feed(&producer, sim, &opts, None, |_, _| {})
        .await
        .expect("feed")
}

/// Alerts on the alerts topic, read until every incident that fired has resolved and nothing
/// new came for `quiet`.
pub fn settled_alerts(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    quiet: Duration,
) -> Vec<qos_sentinel::incident::Alert> {
    settled_alerts_min(brokers, topic, 0, timeout, quiet)
}

/// [`settled_alerts`], and not before there are `min` of them (a run that restarts a lot may
/// pause longer than `quiet` between them).
pub fn settled_alerts_min(
    brokers: &str,
    topic: &str,
    min: usize,
    timeout: Duration,
    quiet: Duration,
) -> Vec<qos_sentinel::incident::Alert> {
    use qos_sentinel::incident::{Alert, Status};
    let c = tail(brokers, topic);
    let start = Instant::now();
    let mut out: Vec<Alert> = Vec::new();
    let mut last_new = Instant::now();
    while start.elapsed() < timeout {
        let got = read_until(&c, Duration::from_millis(500), |r| !r.is_empty());
        for m in &got {
            out.push(
                serde_json::from_slice(m.value.as_deref().unwrap_or_default()).expect("alert JSON"),
            );
            last_new = Instant::now();
        }
        let fired: Vec<&str> = out
            .iter()
            .filter(|a| a.status == Status::Firing)
            .map(|a| a.id.as_str())
            .collect();
        let all_resolved = !fired.is_empty()
            && fired.iter().all(|id| {
                out.iter()
                    .any(|a| a.id == *id && a.status == Status::Resolved)
            });
        if all_resolved && out.len() >= min && last_new.elapsed() >= quiet {
            break;
        }
    }
    out
}

/// A config file for the daemon binary.
/// One instance of a run: its own state directory, HTTP port and config file under
/// `dir/name`; everything else as in `base`.
pub fn instance(base: &Config, dir: &std::path::Path, name: &str) -> (Config, std::path::PathBuf) {
    let mut cfg = base.clone();
    cfg.state.dir = dir.join(name).join("state");
    cfg.http.listen = free_addr();
    std::fs::create_dir_all(dir.join(name)).unwrap();
    let path = write_config(&dir.join(name), &cfg, "");
    (cfg, path)
}

/// A run's alerts once every incident has resolved, there are `at_least` of them and nothing
/// new came for `quiet` (at most 300 s).
pub fn settled(
    cfg: &Config,
    at_least: usize,
    quiet: Duration,
) -> Vec<qos_sentinel::incident::Alert> {
    settled_alerts_min(
        &cfg.kafka.brokers,
        &cfg.kafka.alerts_topic,
        at_least,
        Duration::from_secs(300),
        quiet,
    )
}

pub fn write_config(dir: &std::path::Path, cfg: &Config, receivers: &str) -> std::path::PathBuf {
    let k = &cfg.kafka;
    let text = format!(
        r#"[kafka]
brokers = "{brokers}"
group_id = "{group}"
reports_topic = "{reports}"
benchmarks_topic = "{benchmarks}"
alerts_topic = "{alerts}"
dead_letter_topic = "{dlq}"
session_timeout = "{session}ms"
{changelog}{summaries}
[window]
allowed_lateness = "10s"

[state]
dir = "{state}"
checkpoint_interval = "{checkpoint}ms"

[http]
listen = "{listen}"

[notify]
flush_timeout = "1s"
{receivers}
"#,
        brokers = k.brokers,
        session = k.session_timeout.as_millis(),
        group = k.group_id,
        reports = k.reports_topic,
        benchmarks = k.benchmarks_topic,
        alerts = k.alerts_topic,
        dlq = k.dead_letter_topic,
        state = cfg.state.dir.display(),
        checkpoint = cfg.state.checkpoint_interval.as_millis(),
        listen = cfg.http.listen,
        changelog = k
            .changelog_topic
            .as_ref()
            .map_or(String::new(), |t| format!("changelog_topic = \"{t}\"\n")),
        summaries = k
            .summaries_topic
            .as_ref()
            .map_or(String::new(), |t| format!("summaries_topic = \"{t}\"\n")),
    );
    let path = dir.join("qos-sentinel.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn spawn_daemon(
    config: &std::path::Path,
    envs: &[(&str, &str)],
    log: &std::path::Path,
) -> std::process::Child {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let out = err.try_clone().unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args(["run", "--config"])
        .arg(config)
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::from(out))
        .stderr(std::process::Stdio::from(err))
        .spawn()
        .unwrap()
}

/// Fails the test, naming the Debian package, unless `bin --version` runs.
pub fn need(bin: &str, package: &str) {
    let ok = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{bin} not found: apt-get install {package} (scripts/deps does)"
    );
}

/// A child process killed when the test ends, however it ends.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of the first exposition line starting with `prefix` (NaN if none).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A daemon running in this process with HTTP on, until [`Daemon::stop`].
pub struct Daemon {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn start_daemon(cfg: &Config) -> Daemon {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let opts = qos_sentinel::daemon::RunOptions {
        serve_http: true,
        ..Default::default()
    };
    let handle = tokio::spawn(qos_sentinel::daemon::run(cfg.clone(), opts, rx));
    Daemon { stop, handle }
}

impl Daemon {
    /// Asks for a clean shutdown and waits for it; panics if the daemon failed.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.handle.await.expect("daemon task").expect("daemon run");
    }
}

/// Event time of [`mumbai_windows`]' window 0: 2026-01-01T00:00:00Z.
pub const MUMBAI_T0: i64 = 1_767_225_600_000;

/// Benchmark rows for `IN/MH/Mumbai` on cdn-a and cdn-b (1 % failures expected).
pub fn mumbai_benchmarks(p: &Producer, topic: &str) {
    for cdn in ["cdn-a", "cdn-b"] {
        let b = qos_sentinel::decode::Benchmark {
            ts: MUMBAI_T0 - 3_600_000,
            location: "IN/MH/Mumbai".into(),
            cdn: cdn.into(),
            throughput_kbps: Some(5_500.0),
            rebuffer_ratio: Some(0.004),
            startup_ms: Some(1_000.0),
            error_rate: Some(0.01),
        };
        send(
            p,
            topic,
            &format!("IN/MH/Mumbai|{cdn}"),
            &serde_json::to_vec(&b).expect("benchmark JSON"),
        );
    }
    flush(p);
}

/// One-minute windows of reports on `IN/MH/Mumbai` x cdn-a/cdn-b, 80 per key and window;
/// cdn-a fails 25 % of its sessions when `failing` (a failure-rate incident), well under its
/// benchmark otherwise.
pub fn mumbai_windows(p: &Producer, topic: &str, windows: std::ops::Range<i64>, failing: bool) {
    use qos_sentinel::decode::Report;
    for w in windows {
        for n in 0..80i64 {
            for (ki, cdn) in ["cdn-a", "cdn-b"].iter().enumerate() {
                let i = w * 1_000 + n * 2 + ki as i64;
                let failed = if ki == 0 && failing {
                    n % 4 == 0
                } else {
                    i % 150 == 0
                };
                let r = Report {
                    session_id: format!("s{i}").into(),
                    throughput_kbps: Some(5_000.0 + (i % 11) as f64 * 100.0),
                    error: failed.then(|| "E_NETWORK".into()),
                    ..Report::new(
                        "IN/MH/Mumbai",
                        cdn.to_string(),
                        MUMBAI_T0 + w * 60_000 + n * 700,
                    )
                };
                send(
                    p,
                    topic,
                    "IN/MH/Mumbai",
                    &serde_json::to_vec(&r).expect("report JSON"),
                );
            }
        }
    }
    flush(p);
}

/// The alerts on `topic` from its start, read until one has resolved (60 s at most).
pub async fn alerts_until_resolved(
    brokers: &str,
    topic: &str,
) -> Vec<qos_sentinel::incident::Alert> {
    use qos_sentinel::incident::{Alert, Status};
    let (b, t) = (brokers.to_string(), topic.to_string());
    let alert = |r: &Read| serde_json::from_slice::<Alert>(r.value.as_deref()?).ok();
    tokio::task::spawn_blocking(move || {
        let c = tail(&b, &t);
        read_until(&c, Duration::from_secs(60), |r| {
            r.iter()
                .filter_map(alert)
                .any(|a| a.status == Status::Resolved)
        })
        .iter()
        .filter_map(alert)
        .collect()
    })
    .await
    .expect("alerts reader")
}

/// Messages dead-lettered by decoding, over every reason, in a `/metrics` text.
pub fn decode_failures(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("qos_sentinel_decode_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs the `qos-sentinel` binary with `args` and environment `env`: whether it succeeded,
/// and its stdout then stderr.
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("qos-sentinel");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
