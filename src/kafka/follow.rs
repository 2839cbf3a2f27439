//! Following a small topic whole, on every instance: every partition from its start, for as
//! long as the daemon runs (the shared silences, the group's alerts for the history).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::info;

use super::KafkaConfig;
use crate::retry::Backoff;

/// Most payloads handed over at once.
const BATCH: usize = 1_000;

/// Reads `topic` (every partition, from its start) on a thread named `name` until `stop`,
/// handing `apply` each batch of payloads (what came within 200 ms, at most [`BATCH`];
/// tombstones skipped). A failure (no such topic yet, a broker error) starts over after a
/// backoff, counted in `retries` and logged at most once a minute; `apply` sees the topic
/// again from its start then.
pub fn spawn(
    name: &str,
    k: &KafkaConfig,
    topic: &str,
    stop: Arc<AtomicBool>,
    retries: IntCounter,
    mut apply: impl FnMut(Vec<Vec<u8>>) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (k, topic, what) = (k.clone(), topic.to_string(), format!("read topic {topic}"));
    let group = format!("{}.{name}", k.group_id);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut backoff = Backoff::new(what, Some(retries));
            while !stop.load(Ordering::Acquire) {
                match follow(&k, &group, &topic, &stop, &mut apply) {
                    Ok(()) => return,
                    Err(e) => std::thread::sleep(backoff.failed(e)),
                }
            }
        })
}

fn follow(
    k: &KafkaConfig,
    group: &str,
    topic: &str,
    stop: &AtomicBool,
    apply: &mut impl FnMut(Vec<Vec<u8>>),
) -> Result<(), String> {
    let consumer = super::plain_consumer(k, group).map_err(|e| e.to_string())?;
    let partitions = super::partitions(consumer.client(), topic, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    if partitions.is_empty() {
        return Err(format!("topic {topic} does not exist (yet)"));
    }
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    info!(
        topic,
        partitions = partitions.len(),
        "Following the topic from its start."
    );
    while !stop.load(Ordering::Acquire) {
        let mut batch = Vec::new();
        while batch.len() < BATCH {
            let Some(m) = consumer.poll(Duration::from_millis(200)) else {
                break;
            };
            let m = m.map_err(|e| e.to_string())?;
            if let Some(p) = m.payload() {
                batch.push(p.to_vec());
            }
        }
        if !batch.is_empty() {
            apply(batch);
        }
    }
    Ok(())
}
