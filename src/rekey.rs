//! `qos-sentinel rekey`: reports keyed by session, as players' beacon pipelines often key
//! them, moved to the reports topic keyed by location, so that one location's reports land in
//! one partition and one instance (what a Kafka Streams repartition topic does). Each message
//! is read as the daemon reads it (with the config's `[input]` mapping); its value and headers
//! go on unchanged. Bad input goes to the dead-letter topic with the reason, as in the daemon.
//!
//! At least once: a batch's offsets are committed only after every message of it is
//! acknowledged on the reports topic or on the dead-letter topic. A kill in between sends
//! that batch again (the daemon then counts those reports twice); none is lost. Any number
//! of `rekey` processes share the work as one consumer group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::decode;
use crate::kafka;
use crate::metrics::Metrics;
use crate::source::{DeadLetters, InFlight};

/// Messages in one batch, at most.
const BATCH: usize = 2_000;
/// How long a batch waits for more messages after its first.
const LINGER: Duration = Duration::from_millis(100);

/// Where from, in which group.
pub struct RekeyOptions {
    /// The session-keyed topic.
    pub from: String,
    /// Consumer group of the stage (default `<kafka.group_id>-rekey`).
    pub group: String,
}

/// What a run moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RekeyStats {
    pub moved: u64,
    pub dead_letters: u64,
}

/// `qos-sentinel rekey`: the stage until `stop`, with `/metrics` and `/healthz` on `http`.
pub async fn command(
    cfg: &Config,
    from: String,
    group: Option<String>,
    http: Option<String>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let group = group.unwrap_or_else(|| format!("{}-rekey", cfg.kafka.group_id));
    let metrics = Arc::new(Metrics::new());
    let readiness = Arc::new(crate::http::Readiness::default());
    if let Some(addr) = http {
        let app = crate::http::router(crate::http::Pages::probes(
            metrics.clone(),
            readiness.clone(),
        ));
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on --http {addr}: {e}"))?;
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let opts = RekeyOptions { from, group };
    let stats = run(cfg, &opts, &metrics, stop, || readiness.beat()).await?;
    eprintln!(
        "rekey: moved {} reports, {} dead letters",
        stats.moved, stats.dead_letters
    );
    Ok(())
}

/// Runs the stage until `stop`; `beat` is called at every turn of its loop (liveness).
pub async fn run(
    cfg: &Config,
    opts: &RekeyOptions,
    metrics: &Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    beat: impl Fn(),
) -> anyhow::Result<RekeyStats> {
    anyhow::ensure!(
        opts.from != cfg.kafka.reports_topic,
        "rekey reads {} and writes kafka.reports_topic: they must differ",
        opts.from
    );
    let consumer = kafka::rekey_consumer(&cfg.kafka, &opts.group, &opts.from)?;
    let producer = kafka::producer(&cfg.kafka)?;
    let mut dlq = InFlight::new(
        DeadLetters::new(producer.clone(), &cfg.kafka.dead_letter_topic),
        metrics,
    );
    let read = metrics.records_in.with_label_values(&["rekey"]);
    let mut stats = RekeyStats::default();
    let mut last_log = Instant::now();
    info!(from = %opts.from, to = %cfg.kafka.reports_topic, group = %opts.group, "Re-keying reports by location.");
    loop {
        beat();
        let first = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            m = consumer.recv() => m,
        };
        let mut batch = Vec::new();
        match first {
            Ok(m) => batch.push(m.detach()),
            Err(e) => {
                warn!(error = %e, "Consumer error.");
                continue;
            }
        }
        let until = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => warn!(error = %e, "Consumer error."),
                Err(_) => break,
            }
        }
        read.inc_by(batch.len() as u64);
        let moved = move_batch(cfg, &producer, &mut dlq, metrics, &batch).await;
        stats.moved += moved;
        stats.dead_letters += batch.len() as u64 - moved;
        dlq.settle().await;
        commit(&consumer, &batch);
        if last_log.elapsed() >= Duration::from_secs(10) {
            last_log = Instant::now();
            info!(
                moved = stats.moved,
                dead_letters = stats.dead_letters,
                "Re-keying."
            );
        }
    }
    info!(
        moved = stats.moved,
        dead_letters = stats.dead_letters,
        "Re-keying stopped."
    );
    Ok(stats)
}

/// Produces the batch's readable messages to the reports topic keyed by location (until the
/// broker acknowledges each) and puts the others in flight to the dead-letter topic; how
/// many were moved.
async fn move_batch(
    cfg: &Config,
    producer: &FutureProducer,
    dlq: &mut InFlight,
    metrics: &Metrics,
    batch: &[OwnedMessage],
) -> u64 {
    let limit = cfg.limits.max_message_bytes;
    let mut todo: Vec<(&OwnedMessage, String)> = Vec::with_capacity(batch.len());
    for m in batch {
        let read = m.payload().map_or(Err(decode::DecodeError::Empty), |v| {
            decode::read_report(&cfg.input, v, limit)
        });
        match read {
            Ok(r) => todo.push((m, r.location.into_owned())),
            Err(e) => {
                metrics
                    .decode_failures
                    .with_label_values(&[e.reason()])
                    .inc();
                dlq.push_message(m, &e).await;
            }
        }
    }
    let moved = todo.len() as u64;
    let counter = metrics.retries.with_label_values(&["rekey_produce"]);
    let mut backoff =
        crate::retry::Backoff::new("move reports to the reports topic", Some(counter));
    while !todo.is_empty() {
        let sends: Vec<_> = todo
            .iter()
            .map(|(m, location)| {
                let mut record = FutureRecord::<str, [u8]>::to(&cfg.kafka.reports_topic)
                    .key(location.as_str())
                    .payload(m.payload().unwrap_or_default());
                if let Some(h) = m.headers() {
                    record = record.headers(h.clone());
                }
                producer.send_result(record).ok()
            })
            .collect();
        let mut failed = Vec::new();
        let mut why = String::new();
        for (item, send) in todo.into_iter().zip(sends) {
            let done = match send {
                Some(f) => match f.await {
                    Ok(Ok(_)) => true,
                    Ok(Err((e, _))) => {
                        why = e.to_string();
                        false
                    }
                    Err(_) => false,
                },
                None => false,
            };
            if !done {
                failed.push(item);
            }
        }
        todo = failed;
        if !todo.is_empty() {
            backoff
                .wait(format!("{} reports not acknowledged: {why}", todo.len()))
                .await;
        }
    }
    backoff.succeeded();
    moved
}

/// Commits the offsets after the batch (the next message of each partition).
fn commit(consumer: &rdkafka::consumer::StreamConsumer, batch: &[OwnedMessage]) {
    let mut next: HashMap<(String, i32), i64> = HashMap::new();
    for m in batch {
        let e = next
            .entry((m.topic().to_string(), m.partition()))
            .or_default();
        *e = (*e).max(m.offset() + 1);
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    for ((topic, p), o) in next {
        if let Err(e) = tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(o)) {
            warn!(error = %e, "Offset not committable.");
        }
    }
    // A failed commit (a rebalance in progress) is covered by the next batch's, or the batch
    // is read again by the partition's next owner: at least once.
    if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
        warn!(error = %e, "Commit failed; the batch may be read again.");
    }
}
