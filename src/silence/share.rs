//! Silences shared by a group through `kafka.silences_topic` (compacted, keyed by silence id):
//! a write is produced there and acknowledged before it answers; every instance reads the
//! topic from its start, all the time, and applies each version it finds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::{info, warn};

use super::{Publish, Silence, Silences};
use crate::kafka::KafkaConfig;
use crate::retry::Backoff;
use crate::time::now_ms;

/// Writes go to `topic` through `producer`, keyed by the silence's id.
pub fn publisher(producer: FutureProducer, topic: String) -> Publish {
    Arc::new(move |s: Silence| {
        let (producer, topic) = (producer.clone(), topic.clone());
        Box::pin(async move {
            let value = serde_json::to_vec(&s).map_err(|e| e.to_string())?;
            let record = FutureRecord::to(&topic).key(&s.id).payload(&value);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .map(|_| ())
                .map_err(|(e, _)| format!("{topic}: {e}"))
        })
    })
}

/// Reads `topic` from its start into `store` on a thread of its own until `stop`; a failure
/// to read is retried (counted in `retries`, logged at most once a minute).
pub fn spawn_reader(
    k: &KafkaConfig,
    topic: &str,
    store: Arc<Silences>,
    stop: Arc<AtomicBool>,
    retries: IntCounter,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (k, topic) = (k.clone(), topic.to_string());
    std::thread::Builder::new()
        .name("silences".into())
        .spawn(move || {
            let mut backoff = Backoff::new("read the silences topic", Some(retries.clone()));
            while !stop.load(Ordering::Acquire) {
                match read(&k, &topic, &store, &stop) {
                    Ok(()) => return,
                    Err(e) => std::thread::sleep(backoff.failed(e)),
                }
            }
        })
}

/// Assigns every partition of `topic` from its start and applies what comes, until `stop`.
fn read(k: &KafkaConfig, topic: &str, store: &Silences, stop: &AtomicBool) -> Result<(), String> {
    let consumer = crate::kafka::plain_consumer(k, &format!("{}.silences", k.group_id))
        .map_err(|e| e.to_string())?;
    let partitions = crate::kafka::partitions(consumer.client(), topic, Duration::from_secs(10))
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
        "Reading the shared silences."
    );
    while !stop.load(Ordering::Acquire) {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map_err(|e| e.to_string())?;
        let Some(payload) = m.payload() else {
            continue; // a tombstone: the silence is long gone
        };
        match serde_json::from_slice::<Silence>(payload) {
            Ok(s) => {
                if let Err(e) = store.apply(s, now_ms()) {
                    warn!(error = %e, "Cannot keep a shared silence.");
                }
            }
            Err(e) => {
                warn!(error = %e, offset = m.offset(), "Not a silence on the silences topic: skipped.")
            }
        }
    }
    Ok(())
}
