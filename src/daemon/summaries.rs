//! Closing windows, and the summaries topic that carries the closes to the other instances
//! when they share the report partitions (see `engine::peers`).

use std::time::Instant;

use tracing::error;

use super::emit::Closing;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::time::Millis;

/// Closes what the watermark (or `until`) allows and times the detection; sends the
/// summaries of the windows closed to the other instances.
pub(super) fn close(
    engine: &mut Engine,
    metrics: &Metrics,
    until: Option<Millis>,
    summaries: Option<&Summaries>,
) -> Closing {
    let started = Instant::now();
    let before = engine.decisions();
    let alerts = match until {
        Some(t) => engine.close_until(t),
        None => engine.close_ready(),
    };
    if let Some(s) = summaries {
        s.publish(engine);
    }
    let decided = engine.decisions() > before;
    if decided {
        metrics
            .detection_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    Closing {
        alerts,
        started,
        closed: decided,
    }
}

/// The summaries topic: this instance's partitions' summaries go out, everyone's come back.
pub(super) struct Summaries {
    pub(super) producer: rdkafka::producer::FutureProducer,
    pub(super) topic: String,
}

impl Summaries {
    /// Queues the engine's new summaries (all to partition 0, so every reader sees one
    /// order; keyed by report partition). The idempotent producer keeps their order.
    pub(super) fn publish(&self, engine: &mut Engine) {
        let out = match engine.take_summaries() {
            Ok(out) => out,
            Err(e) => {
                error!(error = %e, "Cannot encode partitions' summaries.");
                return;
            }
        };
        for (p, bytes) in out {
            let key = p.to_string();
            let record = rdkafka::producer::FutureRecord::to(&self.topic)
                .partition(0)
                .key(&key)
                .payload(&bytes);
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    tokio::spawn(async move {
                        if !matches!(delivery.await, Ok(Ok(_))) {
                            error!(
                                partition = p,
                                "A summary was not delivered: the CDN-wide stage of every instance waits for this partition's next one."
                            );
                        }
                    });
                }
                Err((e, _)) => {
                    error!(error = %e, partition = p, "Cannot queue a summary: the CDN-wide stage waits for this partition's next one.");
                }
            }
        }
    }
}

/// The next record of the summaries topic; never, without one.
pub(super) async fn next_summary(
    consumer: Option<&rdkafka::consumer::StreamConsumer>,
) -> rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>> {
    match consumer {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}
