//! The one home for Kafka: every rdkafka client of the daemon, the benchmark and the demo is
//! built here (the config's passthrough options applied to all), with its context; the
//! metadata questions (partitions of a topic); and reading partitions to their end
//! ([`read::read_to_end`], one implementation for every such read). No other module
//! constructs an rdkafka client.

mod config;
pub mod follow;
pub mod read;

pub use config::KafkaConfig;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{
    BaseProducer, DefaultProducerContext, FutureProducer, Producer, ThreadedProducer,
};

/// A produce that the broker did not acknowledge.
#[derive(Debug, thiserror::Error)]
#[error("Kafka produce to {topic}: {source}")]
pub struct ProduceError {
    pub topic: String,
    pub source: KafkaError,
}

/// How long a produce may wait in librdkafka's queue before it is reported as failed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Base client settings shared by every client: brokers plus passed-through options.
fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, value) in &k.options {
        c.set(key, value);
    }
    c
}

/// How long a member may stay silent before the group drops it (`kafka.session_timeout`),
/// and its heartbeats, a third of that.
fn group_timing<'c>(c: &'c mut ClientConfig, k: &KafkaConfig) -> &'c mut ClientConfig {
    c.set(
        "session.timeout.ms",
        k.session_timeout.as_millis().to_string(),
    )
    .set(
        "heartbeat.interval.ms",
        (k.session_timeout.as_millis() / 3).max(100).to_string(),
    )
}

/// The report consumer, with its context.
pub type ReportsConsumer = StreamConsumer<ReportsContext>;

/// Consumer of client reports in the configured group, subscribed to the reports topic.
///
/// Offsets: auto-commit is on but auto *store* is off: the daemon stores, per partition, the
/// lowest offset still needed by an open window (see `Windows::pending_offsets`), so a crash
/// replays whatever had not yet been turned into closed windows and alerts.
pub fn reports_consumer(k: &KafkaConfig) -> Result<ReportsConsumer, KafkaError> {
    let mut c = client_config(k);
    c.set("group.id", &k.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        // librdkafka pauses fetching for this long once its prefetch queue is full (default
        // 1 s): a consumer that is slower than the fetcher, as every real one is during a
        // catch-up, then idles most of each second (measured: 125k/s instead of 700k/s).
        .set("fetch.queue.backoff.ms", "10")
        // The daemon stops waiting for a partition read to its end that never delivered.
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky");
    let consumer: ReportsConsumer = group_timing(&mut c, k)
        // The group's join state, for the daemon's watchdog (see `ReportsContext::unsettled`).
        .set("statistics.interval.ms", "5000")
        .create_with_context(ReportsContext::default())?;
    consumer.subscribe(&[&k.reports_topic])?;
    Ok(consumer)
}

/// The `rekey` stage's consumer of a session-keyed topic, in group `group`: offsets are
/// committed by the stage, only once a batch is on the reports topic.
pub fn rekey_consumer(
    k: &KafkaConfig,
    group: &str,
    topic: &str,
) -> Result<StreamConsumer, KafkaError> {
    let mut c = client_config(k);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = group_timing(&mut c, k).create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Leaves the group and joins it again as a new member: for a member whose join has not
/// settled for long (a coordinator that lost it, or holds its join).
pub fn rejoin(consumer: &ReportsConsumer, topic: &str) -> Result<(), KafkaError> {
    consumer.unsubscribe();
    consumer.context().settled_now();
    consumer.subscribe(&[topic])
}

/// Reads the summaries topic (one partition) from `next`, outside the consumer group:
/// every instance reads all of it (the CDN-wide stage across instances).
pub fn summaries_consumer(
    k: &KafkaConfig,
    topic: &str,
    next: i64,
) -> Result<StreamConsumer, KafkaError> {
    let consumer: StreamConsumer = client_config(k)
        .set("group.id", format!("{}.summaries", k.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "20")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Offset(next))?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// The benchmark reader's consumer: partitions assigned by hand, never committed.
pub fn benchmark_consumer(k: &KafkaConfig) -> Result<BaseConsumer, KafkaError> {
    client_config(k)
        // Required by librdkafka even though partitions are assigned by hand and never committed.
        .set("group.id", format!("{}-benchmarks", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
}

/// A consumer that reads partitions to their end ([`read::read_to_end`]): never commits,
/// reports partition EOF. `group` is appended to the configured group id (librdkafka needs
/// one even though partitions are assigned by hand); `reset` is where an offset past the end
/// reads from ("earliest" or "latest"); `eager` asks the broker to answer fetches within
/// 10 ms (for short reads on the start-up path).
pub fn end_reader(
    k: &KafkaConfig,
    group: &str,
    reset: &str,
    eager: bool,
) -> Result<BaseConsumer<ToTheEnd>, KafkaError> {
    let mut c = client_config(k);
    if eager {
        c.set("fetch.wait.max.ms", "10");
    }
    c.set("group.id", format!("{}{group}", k.group_id))
        .set("enable.auto.commit", "false")
        // Not a second's pause each time the prefetch queue fills (librdkafka's default):
        // a take-over reads its changelog partition, hundreds of thousands of records, as fast
        // as it puts them away (`bench-takeover`, 200,000 records on tansu: 4.6 s -> 1.0 s).
        .set("fetch.queue.backoff.ms", "10")
        // The end is where fetching reports it (partition EOF), not the offset lookup's high
        // watermark: some brokers (tansu 0.6) answer that one short of the last batch.
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", reset)
        .create_with_context(ToTheEnd)
}

/// A plain consumer with partitions assigned by hand and no commits, in group `group_id`
/// (the benchmark's read ceiling, the demo's view of the alerts topic).
pub fn plain_consumer(k: &KafkaConfig, group_id: &str) -> Result<BaseConsumer, KafkaError> {
    client_config(k)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .create()
}

/// The idempotent producer every output shares (alerts, dead letters, changelog, summaries).
pub fn producer(k: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    client_config(k)
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string())
        .create()
}

/// A producer for bulk loading (the benchmark's traffic): large batches, no idempotence;
/// lz4 unless `kafka.options` names a `compression.type`.
pub fn bulk_producer(
    k: &KafkaConfig,
) -> Result<ThreadedProducer<DefaultProducerContext>, KafkaError> {
    let codec = k
        .options
        .get("compression.type")
        .map_or("lz4", String::as_str);
    client_config(k)
        .set("compression.type", codec)
        .set("linger.ms", "50")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()
}

/// A client that only asks for metadata (the broker probe).
pub fn metadata_client(k: &KafkaConfig) -> Result<BaseProducer, KafkaError> {
    client_config(k).create()
}

/// The partitions of `topic` (none if it does not exist), from any client.
pub fn partitions<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError> {
    let md = client.fetch_metadata(Some(topic), timeout)?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// How many partitions `topic` has (0 if it does not exist), asked through `producer`.
pub fn partition_count(
    producer: &FutureProducer,
    topic: &str,
    timeout: Duration,
) -> Result<usize, KafkaError> {
    partitions(producer.client(), topic, timeout).map(|p| p.len())
}

/// Notes that partitions were revoked, as it happens: inside the consumer's poll, before the
/// poll hands out anything else, so the daemon stops deciding for a partition the moment it
/// has moved away (its next owner takes it over from the changelog).
///
/// It also follows the group's join state from librdkafka's statistics.
#[derive(Default)]
pub struct ReportsContext {
    revoked: AtomicBool,
    group: std::sync::Mutex<GroupState>,
}

/// The consumer's join state as its last statistics gave it.
#[derive(Default)]
struct GroupState {
    join_state: String,
    /// Since when it has not been `steady` (a member in the group with its assignment).
    unsettled_since: Option<std::time::Instant>,
}

impl ReportsContext {
    /// Whether partitions were revoked since the last call.
    pub fn take_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed) && self.revoked.swap(false, Ordering::AcqRel)
    }

    /// How long the consumer has been in the group's join protocol without settling, and
    /// its join state (`wait-join`, `wait-sync`, ...); `None` while it is settled. A member
    /// with no partitions (more members than partitions) is settled too.
    pub fn unsettled(&self) -> Option<(Duration, String)> {
        let g = self.group.lock().ok()?;
        g.unsettled_since
            .map(|since| (since.elapsed(), g.join_state.clone()))
    }

    /// Whether the last statistics found it a settled member of its group (`steady`), with
    /// or without partitions.
    pub fn steady(&self) -> bool {
        self.group
            .lock()
            .is_ok_and(|g| g.unsettled_since.is_none() && g.join_state == "steady")
    }

    /// Starts the unsettled clock anew (after a rejoin).
    fn settled_now(&self) {
        if let Ok(mut g) = self.group.lock() {
            g.unsettled_since = None;
        }
    }
}

impl ClientContext for ReportsContext {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let (Some(cg), Ok(mut g)) = (statistics.cgrp, self.group.lock()) else {
            return;
        };
        if cg.join_state == "steady" {
            g.unsettled_since = None;
        } else if g.unsettled_since.is_none() {
            g.unsettled_since = Some(std::time::Instant::now());
        }
        g.join_state = cg.join_state;
    }
}

impl ConsumerContext for ReportsContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Revoke(_)) {
            self.revoked.store(true, Ordering::Release);
        }
    }
}

/// Context of the consumers that read a partition to its end (partition EOF as a signal).
#[derive(Default)]
pub struct ToTheEnd;

impl ClientContext for ToTheEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

impl ConsumerContext for ToTheEnd {}

/// librdkafka's errors as the default context logs them, but a partition's end: consumers
/// that ask for partition EOF events read them as a signal (rdkafka hands every error event
/// to the context as well).
fn log_client_error(error: KafkaError, reason: &str) {
    if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
        tracing::trace!(reason, "Partition read to its end.");
    } else {
        tracing::error!("librdkafka: {}: {}", error, reason);
    }
}
