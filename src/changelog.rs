//! The changelog topic: each report partition's state, written at every checkpoint, so that
//! the partition's next owner in the consumer group takes it over where it was (Kafka
//! Streams' changelog, per partition rather than per key).
//!
//! Partition p of the changelog holds report partition p's state; each record (key: the
//! partition number) is a whole share: a JSON header (where reading resumes, the alerts that
//! were decided but maybe not yet produced) followed by the engine's CBOR share. Only the
//! last record of a partition matters: compaction keeps it.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::Offset;
use rdkafka::consumer::Consumer;

use crate::incident::Alert;
use crate::kafka::KafkaConfig;
use crate::kafka::read::{Next, Read, read_to_end};

#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error("changelog header: {0}")]
    Header(#[from] serde_json::Error),
    #[error("changelog header too long")]
    HeaderTooLong,
    #[error("changelog record shorter than its length prefix")]
    Truncated,
    #[error("changelog header of {header} bytes in a record of {record}")]
    Short { header: usize, record: usize },
    #[error("{topic}/{partition}: {source}")]
    Kafka {
        topic: String,
        partition: i32,
        source: rdkafka::error::KafkaError,
    },
    #[error("{topic}/{partition}: not read to its end (from offset {from}) within {timeout:?}")]
    NotToTheEnd {
        topic: String,
        partition: i32,
        from: i64,
        timeout: Duration,
    },
    #[error("the record is {found_topic}/{found_partition}'s, not {topic}/{partition}'s")]
    NotThisPartitions {
        found_topic: String,
        found_partition: i32,
        topic: String,
        partition: i32,
    },
}

impl ChangelogError {
    /// A broker that did not answer (in time): worth reading again. A record that does not
    /// decode stays so.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ChangelogError::Kafka { .. } | ChangelogError::NotToTheEnd { .. }
        )
    }
}

/// What comes with a partition's state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// The reports topic the state was read from (a changelog shared by mistake is ignored).
    pub reports_topic: String,
    pub partition: i32,
    /// Next report offset to read.
    pub next: i64,
    /// Alerts decided with this state and produced only after it was written: the next
    /// owner looks them up on the alerts topic and sends those missing.
    pub pending: Vec<Alert>,
    /// Alerts topic positions after the writer's last acknowledged alerts (where to look).
    pub delivered: HashMap<i32, i64>,
}

/// Header and share as one record value: 4-byte big-endian header length, header, share.
pub fn encode(header: &Header, share: &[u8]) -> Result<Vec<u8>, ChangelogError> {
    let h = serde_json::to_vec(header)?;
    let len = u32::try_from(h.len()).map_err(|_| ChangelogError::HeaderTooLong)?;
    let mut out = Vec::with_capacity(4 + h.len() + share.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(share);
    Ok(out)
}

/// The header and the share of a record value.
pub fn decode(value: &[u8]) -> Result<(Header, &[u8]), ChangelogError> {
    let (len, rest) = value
        .split_first_chunk::<4>()
        .ok_or(ChangelogError::Truncated)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(ChangelogError::Short {
            header: len,
            record: value.len(),
        });
    }
    let (h, share) = rest.split_at(len);
    let header = serde_json::from_slice(h)?;
    Ok((header, share))
}

/// The last record of changelog partition `partition`, if it has one (blocking).
fn read_last(
    k: &KafkaConfig,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, ChangelogError> {
    let kafka = |source| ChangelogError::Kafka {
        topic: topic.to_string(),
        partition,
        source,
    };
    let consumer =
        crate::kafka::end_reader(k, "-changelog-reader", "earliest", false).map_err(kafka)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(kafka)?;
    if high <= low {
        return Ok(None);
    }
    // The last record is at high - 1, or further (some brokers, tansu 0.6, answer the offset
    // lookup with the last batch's first offset + 1): read on to the end fetching reports.
    let how = Read {
        timeout,
        fail_on_error: true,
        end_after_a_record: true,
    };
    let mut last = None;
    let from = [(partition, Offset::Offset(high - 1))];
    let end = read_to_end(&consumer, topic, &from, how, |m| {
        last = Some(m.payload().unwrap_or_default().to_vec());
        Next::More
    })
    .map_err(kafka)?;
    if end.complete {
        return Ok(last);
    }
    Err(ChangelogError::NotToTheEnd {
        topic: topic.to_string(),
        partition,
        from: high - 1,
        timeout,
    })
}

/// Report partition `partition`'s last share on the changelog, if it has one: its header and
/// the engine's share. An error if it cannot be read or is not that partition's of
/// `reports_topic` (a changelog shared by mistake).
pub fn read_share(
    k: &KafkaConfig,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Option<(Header, Vec<u8>)>, ChangelogError> {
    let Some(value) = read_last(k, topic, partition, timeout)? else {
        return Ok(None);
    };
    let (header, share) = decode(&value)?;
    if header.reports_topic != k.reports_topic || header.partition != partition {
        return Err(ChangelogError::NotThisPartitions {
            found_topic: header.reports_topic,
            found_partition: header.partition,
            topic: k.reports_topic.clone(),
            partition,
        });
    }
    Ok(Some((header, share.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_decodes_to_what_was_encoded_and_garbage_is_an_error() {
        let h = Header {
            reports_topic: "r".into(),
            partition: 3,
            next: 42,
            pending: Vec::new(),
            delivered: HashMap::from([(0, 7)]),
        };
        let v = encode(&h, b"share").unwrap();
        let (back, share) = decode(&v).unwrap();
        assert_eq!((back.partition, back.next, share), (3, 42, &b"share"[..]));
        assert_eq!(back.delivered, h.delivered);
        assert!(decode(b"\0\0").is_err());
        assert!(decode(b"\0\0\0\x09{}").is_err());
        assert!(decode(b"\0\0\0\x02{]").is_err());
    }
}
