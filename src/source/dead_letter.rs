//! Bad input's way out: a message that cannot be read goes to the dead-letter topic with the
//! reason in its headers, and the input goes on.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::decode::DecodeError;

/// A dead letter's parts, borrowed from the consumed message and its error.
struct Letter<'a> {
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    reason: &'static str,
    error: &'a str,
    source: &'a str,
}

impl Letter<'_> {
    /// Bytes it holds (key, payload, texts).
    fn size(&self) -> usize {
        self.key.map_or(0, <[u8]>::len)
            + self.value.map_or(0, <[u8]>::len)
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
}

/// The record of one letter: its key and payload, the reason in headers.
fn record<'a>(topic: &'a str, l: &Letter<'a>) -> FutureRecord<'a, [u8], [u8]> {
    let headers = OwnedHeaders::new_with_capacity(3)
        .insert(Header {
            key: "reason",
            value: Some(l.reason),
        })
        .insert(Header {
            key: "error",
            value: Some(l.error),
        })
        .insert(Header {
            key: "source",
            value: Some(l.source),
        });
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if let Some(k) = l.key {
        record = record.key(k);
    }
    if let Some(v) = l.value {
        record = record.payload(v);
    }
    record
}

/// Dead letters on their way: produced without waiting, at most [`MAX_IN_FLIGHT`] letters
/// (and [`MAX_IN_FLIGHT_BYTES`] of them) unacknowledged at once, and all acknowledged by
/// [`InFlight::settle`], which a reader calls before it makes the offsets behind them
/// durable (a checkpoint, a commit). Bad input then costs what a good message costs, not a
/// broker round trip each: the producer copies the letter into its queue and the
/// acknowledgements are collected in order, without a task each.
pub struct InFlight {
    dlq: DeadLetters,
    /// Each send's letter size and its acknowledgement, oldest first.
    pending: VecDeque<(usize, DeliveryFuture)>,
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
            pending: VecDeque::new(),
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

    /// Puts a consumed message that cannot be read in flight, with the reason (waits only
    /// while the flight is full); its key and payload are copied once, by the producer.
    pub async fn push_message<M: Message>(&mut self, msg: &M, err: &DecodeError) {
        let error = err.to_string();
        let source = format!("{}/{}/{}", msg.topic(), msg.partition(), msg.offset());
        let letter = Letter {
            key: msg.key(),
            value: msg.payload(),
            reason: err.reason(),
            error: &error,
            source: &source,
        };
        self.put(&letter).await;
    }

    async fn put(&mut self, l: &Letter<'_>) {
        let size = l.size();
        while !self.pending.is_empty()
            && (self.pending.len() >= MAX_IN_FLIGHT || self.bytes + size > MAX_IN_FLIGHT_BYTES)
        {
            self.land_one().await;
        }
        // Letters acknowledged meanwhile are counted here, so the queue holds those in flight.
        self.collect();
        // Queued here, in input order (the producer keeps it); only the acknowledgement is
        // awaited later.
        let delivery = loop {
            let sent = self
                .dlq
                .producer
                .send_result(record(&self.dlq.topic, l))
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
        self.gauge.inc();
        self.bytes += size;
        self.pending.push_back((size, delivery));
    }

    /// Counts the letters at the head of the flight that the broker has acknowledged,
    /// without waiting.
    pub fn collect(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        while let Some((_, front)) = self.pending.front_mut() {
            let Poll::Ready(done) = Pin::new(front).poll(&mut cx) else {
                break;
            };
            self.landed(done);
        }
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

    /// Waits for the oldest send to end; whether it was written.
    async fn land_one(&mut self) -> bool {
        match self.pending.front_mut() {
            Some((_, front)) => {
                let done = front.await;
                self.landed(done)
            }
            None => true,
        }
    }

    /// Takes the head of the flight, acknowledged as `done`: counts it; whether it was written.
    fn landed<E>(&mut self, done: Result<OwnedDeliveryResult, E>) -> bool {
        if let Some((size, _)) = self.pending.pop_front() {
            self.bytes = self.bytes.saturating_sub(size);
        }
        self.gauge.dec();
        match done {
            Ok(Ok(_)) => {
                self.written.inc();
                true
            }
            Ok(Err((e, _))) => {
                tracing::debug!(error = %e, "Dead letter not written.");
                self.failed.inc();
                false
            }
            // The producer went away before it answered.
            Err(_) => {
                self.failed.inc();
                false
            }
        }
    }
}
