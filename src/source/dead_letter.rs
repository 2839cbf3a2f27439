//! Bad input's way out: a message that cannot be read goes to the dead-letter topic with the
//! reason in its headers, and the input goes on.

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::decode::DecodeError;
use crate::kafka::{ProduceError, SEND_TIMEOUT};

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

    /// Bytes it holds (key, payload, texts).
    fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self.error.len()
            + self.source.len()
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

    /// The record of one letter: its key and payload, the reason in headers.
    fn record<'a>(&'a self, l: &'a DeadLetter) -> FutureRecord<'a, [u8], [u8]> {
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
        record
    }

    /// Sends one letter and waits for the broker's acknowledgement ([`InFlight`] keeps many
    /// going at once).
    pub async fn send(&self, l: DeadLetter) -> Result<(), ProduceError> {
        self.producer
            .send(self.record(&l), SEND_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(e, _)| ProduceError {
                topic: self.topic.clone(),
                source: e,
            })
    }
}

/// Dead letters on their way: produced without waiting, at most [`MAX_IN_FLIGHT`] letters
/// (and [`MAX_IN_FLIGHT_BYTES`] of them) unacknowledged at once, and all acknowledged by
/// [`InFlight::settle`], which a reader calls before it makes the offsets behind them
/// durable (a checkpoint, a commit). Bad input then costs what a good message costs, not a
/// broker round trip each.
pub struct InFlight {
    dlq: DeadLetters,
    /// Each send's letter size and whether the broker took it.
    pending: tokio::task::JoinSet<(usize, bool)>,
    bytes: usize,
    written: prometheus::IntCounter,
    failed: prometheus::IntCounter,
    gauge: prometheus::IntGauge,
}

/// Unacknowledged dead letters, at most.
pub const MAX_IN_FLIGHT: usize = 10_000;
/// Unacknowledged dead-letter bytes (keys and payloads), at most.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

impl InFlight {
    pub fn new(dlq: DeadLetters, metrics: &crate::metrics::Metrics) -> Self {
        InFlight {
            dlq,
            pending: tokio::task::JoinSet::new(),
            bytes: 0,
            written: metrics.dead_letters.clone(),
            failed: metrics.dead_letter_failures.clone(),
            gauge: metrics.dead_letters_in_flight.clone(),
        }
    }

    /// Letters sent and not yet settled.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Puts a letter in flight; waits only while the flight is full. Must run inside the
    /// Tokio runtime.
    pub async fn push(&mut self, l: DeadLetter) {
        let size = l.size();
        while !self.pending.is_empty()
            && (self.pending.len() >= MAX_IN_FLIGHT || self.bytes + size > MAX_IN_FLIGHT_BYTES)
        {
            self.land_one().await;
        }
        // Landed letters are also collected here, so the set holds only those in flight.
        while let Some(done) = self.pending.try_join_next() {
            self.landed(done);
        }
        // Queued here, in input order (the producer keeps it); only the acknowledgement is
        // awaited in the set.
        let delivery = loop {
            let sent = self
                .dlq
                .producer
                .send_result(self.dlq.record(&l))
                .map_err(|(e, _)| e);
            match sent {
                Ok(d) => break Some(d),
                Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                    if self.pending.is_empty() {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    } else {
                        self.land_one().await;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Dead letter not queued.");
                    break None;
                }
            }
        };
        let Some(delivery) = delivery else {
            self.failed.inc();
            return;
        };
        let (written, failed, gauge) = (
            self.written.clone(),
            self.failed.clone(),
            self.gauge.clone(),
        );
        gauge.inc();
        self.bytes += size;
        self.pending.spawn(async move {
            let ok = match delivery.await {
                Ok(Ok(_)) => {
                    written.inc();
                    true
                }
                Ok(Err((e, _))) => {
                    tracing::debug!(error = %e, "Dead letter not written.");
                    failed.inc();
                    false
                }
                Err(_) => {
                    failed.inc();
                    false
                }
            };
            gauge.dec();
            (size, ok)
        });
    }

    /// Waits until every letter in flight is acknowledged (or failed: counted, logged once).
    /// Returns how many failed.
    pub async fn settle(&mut self) -> usize {
        let mut failed = 0;
        while !self.pending.is_empty() {
            failed += usize::from(!self.land_one().await);
        }
        if failed > 0 {
            tracing::error!(
                failed,
                topic = %self.dlq.topic,
                "Dead letters not written (the broker did not take them in time); the offsets behind them move on."
            );
        }
        failed
    }

    /// Waits for one send to end; whether it was written.
    async fn land_one(&mut self) -> bool {
        match self.pending.join_next().await {
            Some(done) => self.landed(done),
            None => true,
        }
    }

    fn landed(&mut self, done: Result<(usize, bool), tokio::task::JoinError>) -> bool {
        match done {
            Ok((size, ok)) => {
                self.bytes = self.bytes.saturating_sub(size);
                ok
            }
            // A send that panicked or was cancelled: counted as failed.
            Err(e) => {
                tracing::debug!(error = %e, "Dead-letter task ended abnormally.");
                self.failed.inc();
                self.gauge.dec();
                if self.pending.is_empty() {
                    self.bytes = 0;
                }
                false
            }
        }
    }
}
