//! Outputs: alerts to the Kafka alerts topic (keyed by scope, idempotent producer), to HTTP
//! receivers through a durable outbox ([`deliver`]), and bad input to the dead-letter topic
//! (original key and value, reason in headers).

mod bucket;
pub mod config;
pub mod deliver;
mod delivery_metrics;
pub mod outbox;
pub mod receive;
pub mod render;
mod request;

use std::time::Duration;

use rdkafka::Offset;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::incident::Alert;
use crate::kafka::read::{Next, Read};
use crate::kafka::{self, KafkaConfig};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("Kafka produce to {topic}: {source}")]
    Produce { topic: String, source: KafkaError },
    #[error("cannot encode alert: {0}")]
    Encode(#[from] serde_json::Error),
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

/// `id:status` of an alert, the unit of "emitted once"; `id:firing:critical` for a firing
/// at critical severity, so that an incident escalating from warning to critical is a change
/// of its own (receivers routed to critical only are paged by it), not a repeat.
pub fn change_key(a: &Alert) -> String {
    use crate::detect::Severity;
    use crate::incident::Status;
    match (a.status, a.severity) {
        (Status::Firing, Severity::Critical) => format!("{}:firing:critical", a.id),
        (Status::Firing, Severity::Warning) => format!("{}:firing", a.id),
        (Status::Resolved, _) => format!("{}:resolved", a.id),
    }
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
    use rdkafka::consumer::Consumer;
    let started = std::time::Instant::now();
    let consumer = kafka::end_reader(k, ".alerts-lookup", "earliest", false)?;
    let partitions = kafka::partitions(consumer.client(), topic, timeout)?;
    let mut found = std::collections::HashSet::new();
    if partitions.is_empty() || wanted.is_empty() {
        return Ok(found);
    }
    let start: Vec<(i32, Offset)> = partitions
        .iter()
        .map(|p| {
            (
                *p,
                from.get(p)
                    .map_or(Offset::Beginning, |o| Offset::Offset(*o)),
            )
        })
        .collect();
    let how = Read {
        timeout: timeout.saturating_sub(started.elapsed()),
        fail_on_error: true,
        end_after_a_record: false,
    };
    let end = kafka::read::read_to_end(&consumer, topic, &start, how, |m| {
        if let Some(a) = m
            .payload()
            .and_then(|v| serde_json::from_slice::<Alert>(v).ok())
        {
            let c = change_key(&a);
            if wanted.contains(&c) {
                found.insert(c);
            }
        }
        if found.len() < wanted.len() {
            Next::More
        } else {
            Next::Stop
        }
    })?;
    if !end.complete {
        return Err(KafkaError::MessageConsumption(
            rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
        ));
    }
    Ok(found)
}

/// The incidents whose last state change on the alerts topic is a firing one (read from its
/// start to its end within `timeout`; errors on the way, a broker of other partitions down,
/// only fail it when the end is not reached).
pub fn firing_on_topic(
    k: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Alert>, KafkaError> {
    use rdkafka::consumer::Consumer;
    let started = std::time::Instant::now();
    let consumer = kafka::end_reader(k, ".alerts-firing", "earliest", false)?;
    let partitions = kafka::partitions(consumer.client(), topic, timeout)?;
    let start: Vec<(i32, Offset)> = partitions.iter().map(|p| (*p, Offset::Beginning)).collect();
    let how = Read {
        timeout: timeout.saturating_sub(started.elapsed()),
        fail_on_error: false,
        end_after_a_record: false,
    };
    let mut last: std::collections::HashMap<String, Alert> = std::collections::HashMap::new();
    let end = kafka::read::read_to_end(&consumer, topic, &start, how, |m| {
        if let Some(a) = m
            .payload()
            .and_then(|v| serde_json::from_slice::<Alert>(v).ok())
        {
            // Only the firing ones are kept: the memory is that of the incidents open now.
            if a.status == crate::incident::Status::Firing {
                last.insert(a.id.clone(), a);
            } else {
                last.remove(&a.id);
            }
        }
        Next::More
    })?;
    if !end.complete {
        return Err(KafkaError::MessageConsumption(
            rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
        ));
    }
    Ok(last.into_values().collect())
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
