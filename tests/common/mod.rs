//! Helpers shared by the integration tests: a mock Kafka cluster on loopback, unique topic
//! names, producers and tail consumers.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use qos_sentinel::config::Config;

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
pub fn mock_cluster(
    cfg: &mut Config,
    report_partitions: i32,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
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

pub fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

pub fn send(p: &BaseProducer, topic: &str, key: &str, value: &[u8]) {
    let mut rec = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, r)) => {
                p.poll(Duration::from_millis(10));
                rec = r;
            }
        }
    }
}

pub fn flush(p: &BaseProducer) {
    p.flush(Duration::from_secs(30)).expect("flush");
}

/// A consumer reading partition 0 of `topic` from the beginning.
pub fn tail(brokers: &str, topic: &str) -> BaseConsumer {
    tail_partition(brokers, topic, 0)
}

/// A consumer reading one partition of `topic` from the beginning.
pub fn tail_partition(brokers: &str, topic: &str, partition: i32) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("tail-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
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
