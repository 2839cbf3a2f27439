//! Silences shared by a group through `kafka.silences_topic` (compacted, keyed by silence id):
//! a write is produced there and acknowledged before it answers; every instance reads the
//! topic from its start, all the time, and applies each version it finds.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use prometheus::IntCounter;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::warn;

use super::{Publish, Silence, Silences};
use crate::kafka::KafkaConfig;
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

/// Reads `topic` from its start into `store` on a thread of its own until `stop` (see
/// [`crate::kafka::follow`]).
pub fn spawn_reader(
    k: &KafkaConfig,
    topic: &str,
    store: Arc<Silences>,
    stop: Arc<AtomicBool>,
    retries: IntCounter,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    crate::kafka::follow::spawn("silences", k, topic, stop, retries, move |batch| {
        let mut read = Vec::with_capacity(batch.len());
        for payload in batch {
            match serde_json::from_slice::<Silence>(&payload) {
                Ok(s) => read.push(s),
                Err(e) => warn!(error = %e, "Not a silence on the silences topic: skipped."),
            }
        }
        if let Err(e) = store.apply_all(read, now_ms()) {
            warn!(error = %e, "Cannot keep the shared silences.");
        }
    })
}
