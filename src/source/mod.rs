//! Kafka inputs: the client-report consumer (consumer group) and the benchmark reader (every
//! instance reads every partition, resuming from the offsets cached in RocksDB), and the
//! dead-letter topic where bad input goes. The clients themselves are built in `kafka`.

mod dead_letter;

pub use dead_letter::{DeadLetters, InFlight, MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES};

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::decode::{self, DecodeError};
use crate::kafka;
use crate::kafka::KafkaConfig;
use crate::kafka::read::{Next, Read, read_to_end};
use crate::metrics::Metrics;
use crate::table::Expected;
use crate::table::store::{Change, TableStore};
use crate::time::Millis;
use serde::{Deserialize, Serialize};

use crate::field::Invalid;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted message value in bytes; larger ones go to the dead-letter topic.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

const fn default_max_message_bytes() -> usize {
    64 * 1024
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: default_max_message_bytes(),
        }
    }
}

impl LimitsConfig {
    /// Checks values; field paths are relative to `[limits]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_message_bytes < 256 {
            return Err(Invalid::new(
                "max_message_bytes",
                format!("({}) must be at least 256", self.max_message_bytes),
            ));
        }
        Ok(())
    }
}

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

/// Which of `wanted` (partition, offset) end before that offset in `topic`: found by
/// reading to the end (some brokers, tansu 0.6, answer offset lookups short of the last
/// batch), with one consumer for all of them. Only a partition read to its end short of the
/// offset counts; one that cannot be read in `timeout` does not. Blocking.
pub fn ends_before(
    k: &KafkaConfig,
    topic: &str,
    wanted: &[(i32, i64)],
    timeout: Duration,
) -> HashSet<i32> {
    if wanted.is_empty() {
        return HashSet::new();
    }
    // Past the end: read from the end (an EOF at once).
    let Ok(consumer) = kafka::end_reader(k, ".position-check", "latest", true) else {
        return HashSet::new();
    };
    // From the record before each offset: it arrives unless the partition ends short (the
    // end comes first).
    let from: Vec<(i32, Offset)> = wanted
        .iter()
        .map(|(p, o)| (*p, Offset::Offset((*o - 1).max(0))))
        .collect();
    let how = Read {
        timeout,
        fail_on_error: false,
        end_after_a_record: false,
    };
    read_to_end(&consumer, topic, &from, how, |_| Next::DonePartition)
        .map(|end| end.ended)
        .unwrap_or_default()
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
    k: &KafkaConfig,
    limits: &LimitsConfig,
    store: Arc<TableStore>,
    updates: UnboundedSender<BenchmarkUpdate>,
    dead_letters: DeadLetters,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
) -> Result<BenchmarkReader, SourceError> {
    let topic = k.benchmarks_topic.clone();
    let limit = limits.max_message_bytes;
    let consumer = kafka::benchmark_consumer(k)?;
    let partitions = kafka::partitions(consumer.client(), &topic, Duration::from_secs(10))?;
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
            let mut letters = rt.block_on(async { InFlight::new(dead_letters, &metrics) });
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
                    let parsed = parse_benchmark(&msg, limit);
                    match parsed {
                        Ok(u) => batch.push(u),
                        // The bad message is kept on the dead-letter topic; read on past it.
                        Err(e) => dead_letter(&rt, &mut letters, &metrics, &e, &msg),
                    }
                    if let Some(x) = pos.iter_mut().find(|x| x.0 == p) {
                        x.1 = x.1.max(o + 1);
                    }
                }
                if polled > 0 {
                    // The offsets below go past the bad messages: their letters first.
                    rt.block_on(letters.settle());
                    let offsets: Vec<(i32, i64)> = pos.iter().map(|(p, n, _)| (*p, *n)).collect();
                    persist(&store, &batch, &topic, &offsets)?;
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

/// A benchmark message as a table update: a row, or a tombstone ending the row of its key at
/// the message's timestamp.
fn parse_benchmark<M: Message>(msg: &M, limit: usize) -> Result<BenchmarkUpdate, DecodeError> {
    match msg.payload() {
        None => {
            let ts = msg
                .timestamp()
                .to_millis()
                .unwrap_or_else(crate::time::now_ms);
            decode::split_benchmark_key(msg.key().unwrap_or_default()).map(|(location, cdn)| {
                BenchmarkUpdate {
                    location,
                    cdn,
                    ts,
                    row: None,
                }
            })
        }
        Some(v) => decode::decode_benchmark(v, limit).map(|b| BenchmarkUpdate {
            row: Some(Expected::from(&b)),
            location: b.location,
            cdn: b.cdn,
            ts: b.ts,
        }),
    }
}

/// Writes a batch of updates and the offsets read up to, in one RocksDB batch.
fn persist(
    store: &TableStore,
    batch: &[BenchmarkUpdate],
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), SourceError> {
    let changes: Vec<Change<'_>> = batch
        .iter()
        .map(|u| Change {
            location: &u.location,
            cdn: &u.cdn,
            ts: u.ts,
            row: u.row,
        })
        .collect();
    store.write(&changes, topic, offsets)?;
    Ok(())
}

fn dead_letter<M: Message>(
    rt: &tokio::runtime::Handle,
    letters: &mut InFlight,
    metrics: &Metrics,
    err: &DecodeError,
    msg: &M,
) {
    metrics
        .decode_failures
        .with_label_values(&[err.reason()])
        .inc();
    rt.block_on(letters.push_message(msg, err));
}
