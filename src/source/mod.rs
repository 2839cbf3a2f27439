//! Kafka inputs: the client-report consumer (consumer group) and the benchmark reader (every
//! instance reads every partition, resuming from the offsets cached in RocksDB).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::config::{Config, KafkaConfig};
use crate::decode::{self, DecodeError};
use crate::metrics::Metrics;
use crate::notify::{DeadLetter, DeadLetters};
use crate::table::Expected;
use crate::table::store::{Change, TableStore};
use crate::time::Millis;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {0} has no partitions (does it exist?)")]
    NoPartitions(String),
    #[error("cannot start the benchmark reader thread: {0}")]
    Thread(std::io::Error),
    #[error("benchmark cache: {0}")]
    Store(#[from] crate::table::store::StoreError),
}

/// Base client settings shared by every client: brokers plus passed-through options.
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    for (key, value) in &k.options {
        c.set(key, value);
    }
    c
}

/// Consumer of client reports in the configured group.
///
/// Offsets: auto-commit is on but auto *store* is off: the daemon stores, per partition, the
/// lowest offset still needed by an open window (see `Windows::pending_offsets`), so a crash
/// replays whatever had not yet been turned into closed windows and alerts.
pub fn reports_consumer(cfg: &Config) -> Result<ReportsConsumer, SourceError> {
    let k = &cfg.kafka;
    let consumer: ReportsConsumer = client_config(k)
        .set("group.id", &k.group_id)
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
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "session.timeout.ms",
            k.session_timeout.as_millis().to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (k.session_timeout.as_millis() / 3).max(100).to_string(),
        )
        .create_with_context(ReportsContext::default())?;
    consumer.subscribe(&[&k.reports_topic])?;
    Ok(consumer)
}

/// Reads the summaries topic (one partition) from `next`, outside the consumer group:
/// every instance reads all of it (the CDN-wide stage across instances).
pub fn summaries_consumer(
    k: &KafkaConfig,
    topic: &str,
    next: i64,
) -> Result<StreamConsumer, SourceError> {
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

/// Which of `wanted` (partition, offset) end before that offset in `topic`: found by
/// reading to the end (some brokers, tansu 0.6, answer offset lookups short of the last
/// batch), with one consumer for all of them. Only a partition read to its end short of the
/// offset counts; one that cannot be read in `timeout` does not. Blocking.
pub fn ends_before(
    k: &KafkaConfig,
    topic: &str,
    wanted: &[(i32, i64)],
    timeout: Duration,
) -> std::collections::HashSet<i32> {
    let mut short = std::collections::HashSet::new();
    if wanted.is_empty() {
        return short;
    }
    let Ok(consumer) = client_config(k)
        .set("group.id", format!("{}.position-check", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // Past the end: read from the end (an EOF at once).
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "10")
        .create_with_context::<_, BaseConsumer<ToTheEnd>>(ToTheEnd)
    else {
        return short;
    };
    let mut tpl = TopicPartitionList::new();
    for (p, o) in wanted {
        // From the record before the offset: it arrives unless the partition ends short.
        if tpl
            .add_partition_offset(topic, *p, Offset::Offset((*o - 1).max(0)))
            .is_err()
        {
            return short;
        }
    }
    if consumer.assign(&tpl).is_err() {
        return short;
    }
    let mut open: std::collections::HashSet<i32> = wanted.iter().map(|(p, _)| *p).collect();
    let started = std::time::Instant::now();
    while !open.is_empty() && started.elapsed() < timeout {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                open.remove(&m.partition());
            }
            // The end came before the record just below the offset: it ends short of it.
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                if open.remove(&p) {
                    short.insert(p);
                }
            }
            Some(Err(_)) | None => {}
        }
    }
    short
}

/// The report consumer, with its context.
pub type ReportsConsumer = StreamConsumer<ReportsContext>;

/// Notes that partitions were revoked, as it happens: inside the consumer's poll, before the
/// poll hands out anything else, so the daemon stops deciding for a partition the moment it
/// has moved away (its next owner takes it over from the changelog).
#[derive(Default)]
pub struct ReportsContext {
    revoked: AtomicBool,
}

impl ReportsContext {
    /// Whether partitions were revoked since the last call.
    pub fn take_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed) && self.revoked.swap(false, Ordering::AcqRel)
    }
}

impl ClientContext for ReportsContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

/// librdkafka's errors as the default context logs them, but a partition's end: consumers
/// that ask for partition EOF events read them as a signal (rdkafka hands every error event
/// to the context as well).
fn log_client_error(error: rdkafka::error::KafkaError, reason: &str) {
    if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
        tracing::trace!(reason, "Partition read to its end.");
    } else {
        tracing::error!("librdkafka: {}: {}", error, reason);
    }
}

/// Context of the consumers that read a partition to its end (partition EOF as a signal).
#[derive(Default)]
pub struct ToTheEnd;

impl ClientContext for ToTheEnd {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

impl ConsumerContext for ToTheEnd {}

impl ConsumerContext for ReportsContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Revoke(_)) {
            self.revoked.store(true, Ordering::Release);
        }
    }
}

/// One benchmark table change, sent from the reader thread to the engine.
#[derive(Debug, Clone)]
pub struct BenchmarkUpdate {
    pub location: String,
    pub cdn: String,
    pub ts: Millis,
    pub row: Option<Expected>,
}

/// Reads the benchmark topic on a thread of its own (RocksDB I/O stays off the async workers).
pub struct BenchmarkReader {
    pub caught_up: Arc<AtomicBool>,
    pub handle: std::thread::JoinHandle<Result<(), SourceError>>,
}

#[allow(clippy::too_many_arguments)]
pub fn spawn_benchmark_reader(
    cfg: &Config,
    store: Arc<TableStore>,
    updates: UnboundedSender<BenchmarkUpdate>,
    dead_letters: DeadLetters,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
) -> Result<BenchmarkReader, SourceError> {
    let k = &cfg.kafka;
    let topic = k.benchmarks_topic.clone();
    let limit = cfg.limits.max_message_bytes;
    let consumer: BaseConsumer = client_config(k)
        // Required by librdkafka even though partitions are assigned by hand and never committed.
        .set("group.id", format!("{}-benchmarks", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(SourceError::NoPartitions(topic));
    }
    let mut tpl = TopicPartitionList::new();
    let mut targets = Vec::new();
    for p in &partitions {
        let start = store.next_offset(&topic, *p)?;
        tpl.add_partition_offset(&topic, *p, start.map_or(Offset::Beginning, Offset::Offset))?;
        let (_, high) = consumer.fetch_watermarks(&topic, *p, Duration::from_secs(10))?;
        targets.push((*p, start.unwrap_or(0), high));
    }
    consumer.assign(&tpl)?;
    info!(%topic, partitions = partitions.len(), "Reading benchmarks.");
    let caught_up = Arc::new(AtomicBool::new(false));
    let flag = caught_up.clone();
    let handle = std::thread::Builder::new()
        .name("benchmarks".into())
        .spawn(move || {
            // (partition, next offset to read, high watermark at start)
            let mut pos = targets;
            let check = |pos: &[(i32, i64, i64)]| pos.iter().all(|(_, next, high)| next >= high);
            if check(&pos) {
                flag.store(true, Ordering::Release);
            }
            while !stop.load(Ordering::Acquire) {
                let mut batch: Vec<BenchmarkUpdate> = Vec::new();
                let mut timeout = Duration::from_millis(200);
                let mut polled = 0usize;
                while polled < 1_000 {
                    let Some(res) = consumer.poll(timeout) else {
                        break;
                    };
                    timeout = Duration::ZERO;
                    polled += 1;
                    let msg = match res {
                        Ok(m) => m,
                        Err(e) => {
                            warn!(error = %e, "Benchmark consumer error.");
                            break;
                        }
                    };
                    metrics.records_in.with_label_values(&["benchmarks"]).inc();
                    let (p, o) = (msg.partition(), msg.offset());
                    let parsed = match msg.payload() {
                        None => {
                            // Tombstone: the row ends at the message's timestamp.
                            let ts = msg
                                .timestamp()
                                .to_millis()
                                .unwrap_or_else(crate::time::now_ms);
                            decode::split_benchmark_key(msg.key().unwrap_or_default()).map(
                                |(location, cdn)| BenchmarkUpdate {
                                    location,
                                    cdn,
                                    ts,
                                    row: None,
                                },
                            )
                        }
                        Some(v) => decode::decode_benchmark(v, limit).map(|b| BenchmarkUpdate {
                            row: Some(Expected::from(&b)),
                            location: b.location,
                            cdn: b.cdn,
                            ts: b.ts,
                        }),
                    };
                    match parsed {
                        Ok(u) => batch.push(u),
                        // The bad message is kept on the dead-letter topic; read on past it.
                        Err(e) => dead_letter(&rt, &dead_letters, &metrics, &e, &msg),
                    }
                    if let Some(x) = pos.iter_mut().find(|x| x.0 == p) {
                        x.1 = x.1.max(o + 1);
                    }
                }
                if polled > 0 {
                    let changes: Vec<Change<'_>> = batch
                        .iter()
                        .map(|u| Change {
                            location: &u.location,
                            cdn: &u.cdn,
                            ts: u.ts,
                            row: u.row,
                        })
                        .collect();
                    let offsets: Vec<(i32, i64)> = pos.iter().map(|(p, n, _)| (*p, *n)).collect();
                    store.write(&changes, &topic, &offsets)?;
                    for u in batch {
                        if updates.send(u).is_err() {
                            return Ok(()); // The engine is gone: shutting down.
                        }
                    }
                }
                if !flag.load(Ordering::Relaxed) && check(&pos) {
                    info!("Benchmark table caught up.");
                    flag.store(true, Ordering::Release);
                }
            }
            Ok(())
        })
        .map_err(SourceError::Thread)?;
    Ok(BenchmarkReader { caught_up, handle })
}

fn dead_letter<M: Message>(
    rt: &tokio::runtime::Handle,
    dlq: &DeadLetters,
    metrics: &Metrics,
    err: &DecodeError,
    msg: &M,
) {
    metrics
        .decode_failures
        .with_label_values(&[err.reason()])
        .inc();
    let letter = DeadLetter::from_message(msg, err);
    if let Err(e) = rt.block_on(dlq.send(letter)) {
        warn!(error = %e, "Could not write to the dead-letter topic.");
    } else {
        metrics.dead_letters.inc();
    }
}
