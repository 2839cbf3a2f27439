//! Outputs: alerts to the Kafka alerts topic (keyed by scope, idempotent producer), to HTTP
//! receivers through a durable outbox ([`deliver`]), and bad input to the dead-letter topic
//! (original key and value, reason in headers).

pub mod deliver;
pub mod outbox;
pub mod render;

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::decode::DecodeError;
use crate::incident::Alert;
use crate::source::client_config;

/// How long a produce may wait in librdkafka's queue before it is reported as failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("Kafka produce to {topic}: {source}")]
    Produce { topic: String, source: KafkaError },
    #[error("cannot encode alert: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The idempotent producer every output shares.
pub fn producer(k: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    client_config(k)
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string())
        .create()
}

/// Produces alerts to the alerts topic.
#[derive(Clone)]
pub struct AlertSink {
    producer: FutureProducer,
    topic: String,
}

impl AlertSink {
    pub fn new(producer: FutureProducer, topic: &str) -> Self {
        Self {
            producer,
            topic: topic.into(),
        }
    }

    /// Sends every alert and waits for the broker's answer to each: where it landed,
    /// `(partition, offset)`, or why not. Order is kept per scope (one key, one partition; the
    /// idempotent producer keeps order on retries).
    pub async fn send_each(&self, alerts: &[Alert]) -> Vec<Result<(i32, i64), NotifyError>> {
        let mut pending = Vec::with_capacity(alerts.len());
        for a in alerts {
            let key = a.scope.to_string();
            let fut = serde_json::to_vec(a)
                .map_err(NotifyError::from)
                .and_then(|value| {
                    let record = FutureRecord::to(&self.topic).key(&key).payload(&value);
                    self.producer
                        .send_result(record)
                        .map_err(|(e, _)| self.error(e))
                });
            pending.push(fut);
        }
        let mut out = Vec::with_capacity(pending.len());
        for fut in pending {
            out.push(match fut {
                Err(e) => Err(e),
                Ok(fut) => match fut.await {
                    Ok(Ok(d)) => Ok((d.partition, d.offset)),
                    Ok(Err((e, _))) => Err(self.error(e)),
                    Err(_) => Err(self.error(KafkaError::Canceled)),
                },
            });
        }
        out
    }

    fn error(&self, source: KafkaError) -> NotifyError {
        NotifyError::Produce {
            topic: self.topic.clone(),
            source,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// `id:status` of an alert, the unit of "emitted once".
pub fn change_key(a: &Alert) -> String {
    let status = match a.status {
        crate::incident::Status::Firing => "firing",
        crate::incident::Status::Resolved => "resolved",
    };
    format!("{}:{status}", a.id)
}

/// Which of `wanted` (`id:status`) are on the alerts topic at or after `from` (per partition;
/// partitions not in it are read from their start), up to the topic's current end. Blocking.
/// An error means the topic could not be read to its end within `timeout`.
pub fn find_on_topic(
    k: &KafkaConfig,
    topic: &str,
    from: &std::collections::HashMap<i32, i64>,
    wanted: &std::collections::HashSet<String>,
    timeout: Duration,
) -> Result<std::collections::HashSet<String>, KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let started = std::time::Instant::now();
    let left = || timeout.saturating_sub(started.elapsed());
    let consumer: BaseConsumer<crate::source::ToTheEnd> = client_config(k)
        .set("group.id", format!("{}.alerts-lookup", k.group_id))
        .set("enable.auto.commit", "false")
        // The end is where fetching reports it (partition EOF), not the offset lookup's high
        // watermark: some brokers (tansu 0.6) answer that one short of the last batch.
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create_with_context(crate::source::ToTheEnd)?;
    let meta = consumer.fetch_metadata(Some(topic), left())?;
    let partitions: Vec<i32> = meta
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut reading = std::collections::HashSet::new();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let start = from
            .get(&p)
            .map_or(Offset::Beginning, |o| Offset::Offset(*o));
        tpl.add_partition_offset(topic, p, start)?;
        reading.insert(p);
    }
    let mut found = std::collections::HashSet::new();
    if reading.is_empty() {
        return Ok(found);
    }
    consumer.assign(&tpl)?;
    while !reading.is_empty() && found.len() < wanted.len() {
        if left().is_zero() {
            return Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        match consumer.poll(left().min(Duration::from_millis(200))) {
            Some(Ok(m)) => {
                if let Some(a) = m
                    .payload()
                    .and_then(|v| serde_json::from_slice::<Alert>(v).ok())
                {
                    let c = change_key(&a);
                    if wanted.contains(&c) {
                        found.insert(c);
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                reading.remove(&p);
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(found)
}

/// A bad message, ready for the dead-letter topic.
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub reason: &'static str,
    pub error: String,
    pub source: String,
}

impl DeadLetter {
    pub fn from_message<M: Message>(msg: &M, err: &DecodeError) -> Self {
        DeadLetter {
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            reason: err.reason(),
            error: err.to_string(),
            source: format!("{}/{}/{}", msg.topic(), msg.partition(), msg.offset()),
        }
    }
}

/// Writes bad input to the dead-letter topic.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: &str) -> Self {
        Self {
            producer,
            topic: topic.into(),
        }
    }

    /// Sends one letter and waits for the broker's acknowledgement.
    pub async fn send(&self, l: DeadLetter) -> Result<(), NotifyError> {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "reason",
                value: Some(l.reason),
            })
            .insert(Header {
                key: "error",
                value: Some(&l.error),
            })
            .insert(Header {
                key: "source",
                value: Some(&l.source),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = &l.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &l.value {
            record = record.payload(v.as_slice());
        }
        self.producer
            .send(record, SEND_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(e, _)| NotifyError::Produce {
                topic: self.topic.clone(),
                source: e,
            })
    }
}

/// One readable line per alert, for the console and the demo.
pub fn render_line(a: &Alert) -> String {
    let status = match a.status {
        crate::incident::Status::Firing => "FIRING  ",
        crate::incident::Status::Resolved => "RESOLVED",
    };
    let p = a.p_value.map(|p| format!(" p={p:.1e}")).unwrap_or_default();
    let indent = if a.parent_id.is_some() {
        "  \u{21b3} "
    } else {
        ""
    };
    format!(
        "{indent}{status} [{sev}] {id} {rule}: {summary} (window {ws}, n={n}{p})",
        sev = a.severity.as_str(),
        id = a.id,
        rule = a.rule,
        summary = a.summary,
        ws = crate::time::format_ms(a.window_start),
        n = a.samples,
    )
}
