//! Bad input's way out: a message that cannot be read goes to the dead-letter topic with the
//! reason in its headers, and the input goes on.

use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

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
    pub async fn send(&self, l: DeadLetter) -> Result<(), ProduceError> {
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
            .map_err(|(e, _)| ProduceError {
                topic: self.topic.clone(),
                source: e,
            })
    }
}
