//! The changelog topic: each report partition's state, written at every checkpoint, so that
//! the partition's next owner in the consumer group takes it over where it was (Kafka
//! Streams' changelog, per partition rather than per key).
//!
//! Partition p of the changelog holds report partition p's state; each record (key: the
//! partition number) is a whole share: a JSON header (where reading resumes, the alerts that
//! were decided but maybe not yet produced) followed by the engine's CBOR share. Only the
//! last record of a partition matters: compaction keeps it.
//!
//! A share larger than the producer takes in one record (`message.max.bytes`, 1,000,000 by
//! default: about 1,700 keys) goes in chunks first, each under a key of its own
//! (`p/<write id>/<i>`), then the record under key p is a [`Manifest`] that lists them by
//! offset. A write that fails half-way leaves the last manifest and its chunks as they were
//! (new chunks never reuse a key); the writer deletes (tombstones) the chunks of the manifest
//! it replaced, so compaction keeps one share's chunks per partition.

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
    #[error("changelog manifest: chunk at offset {offset} missing (compacted or not read)")]
    MissingChunk { offset: i64 },
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
    /// The keys of the chunks the share was read from, if it was chunked (not written: the
    /// reader fills it in, so that its next write deletes them).
    #[serde(skip)]
    pub chunks: Vec<String>,
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

/// What a manifest value starts with (a record's 4-byte header length never does: it would be
/// over a gigabyte).
const MANIFEST: &[u8] = b"QSCHUNKS";

/// The record under a partition's key when its share went in chunks: the chunks' keys and
/// offsets in order, and the record's length.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub chunks: Vec<(String, i64)>,
    pub len: usize,
}

impl Manifest {
    pub fn encode(&self) -> Result<Vec<u8>, ChangelogError> {
        let mut out = MANIFEST.to_vec();
        out.extend(serde_json::to_vec(self)?);
        Ok(out)
    }

    /// The manifest a record value is, if it is one.
    pub fn of(value: &[u8]) -> Option<Result<Manifest, ChangelogError>> {
        let json = value.strip_prefix(MANIFEST)?;
        Some(serde_json::from_slice(json).map_err(ChangelogError::from))
    }
}

/// The largest chunk of a share: under the producer's `message.max.bytes` (from
/// `kafka.options`, else librdkafka's 1,000,000) by the room a record's key, headers and
/// framing take.
pub fn chunk_limit(k: &KafkaConfig) -> usize {
    let max = k
        .options
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(1_000_000);
    max.saturating_sub(16 * 1024).max(max / 2).max(1)
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

/// A partition's last record (its chunks put together) and the keys of its chunks.
type LastRecord = (Vec<u8>, Vec<String>);

/// The last record of changelog partition `partition`, if it has one, its chunks put together
/// when it is a manifest (blocking).
fn read_last(
    k: &KafkaConfig,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Option<LastRecord>, ChangelogError> {
    let Some(last) = read_last_record(k, topic, partition, timeout)? else {
        return Ok(None);
    };
    let Some(manifest) = Manifest::of(&last) else {
        return Ok(Some((last, Vec::new())));
    };
    let manifest = manifest?;
    let value = read_chunks(k, topic, partition, &manifest, timeout)?;
    Ok(Some((
        value,
        manifest.chunks.into_iter().map(|(k, _)| k).collect(),
    )))
}

/// A manifest's chunks, read from the first one's offset, put together.
fn read_chunks(
    k: &KafkaConfig,
    topic: &str,
    partition: i32,
    manifest: &Manifest,
    timeout: Duration,
) -> Result<Vec<u8>, ChangelogError> {
    let kafka = |source| ChangelogError::Kafka {
        topic: topic.to_string(),
        partition,
        source,
    };
    let Some(first) = manifest.chunks.iter().map(|(_, o)| *o).min() else {
        return Ok(Vec::new());
    };
    let wanted: HashMap<i64, usize> = manifest
        .chunks
        .iter()
        .enumerate()
        .map(|(i, (_, o))| (*o, i))
        .collect();
    let consumer =
        crate::kafka::end_reader(k, "-changelog-reader", "earliest", false).map_err(kafka)?;
    let mut parts: Vec<Option<Vec<u8>>> = vec![None; manifest.chunks.len()];
    read_on(&consumer, topic, partition, first, timeout, |m| {
        if let Some(i) = wanted.get(&m.offset()) {
            let key = m.key().unwrap_or_default();
            if key == manifest.chunks[*i].0.as_bytes() {
                parts[*i] = Some(m.payload().unwrap_or_default().to_vec());
            }
        }
    })?;
    let mut out = Vec::with_capacity(manifest.len);
    for (i, part) in parts.into_iter().enumerate() {
        let part = part.ok_or(ChangelogError::MissingChunk {
            offset: manifest.chunks[i].1,
        })?;
        out.extend_from_slice(&part);
    }
    Ok(out)
}

/// The last record of changelog partition `partition`, as it is.
fn read_last_record(
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
    // The partition's own record may be further back, behind the tombstones of the chunks it
    // replaced: read from further back, twice as far each time, until it shows.
    let key = partition.to_string();
    let mut back = 1;
    loop {
        let start = (high - back).max(low);
        let mut last = None;
        read_on(&consumer, topic, partition, start, timeout, |m| {
            if m.key() == Some(key.as_bytes()) {
                last = Some(m.payload().unwrap_or_default().to_vec());
            }
        })?;
        if last.is_some() || start == low {
            return Ok(last);
        }
        back *= 2;
    }
}

/// Reads `partition` of `topic` from `start` to its end, each record to `on_record`.
fn read_on<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
    start: i64,
    timeout: Duration,
    mut on_record: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), ChangelogError> {
    let how = Read {
        timeout,
        fail_on_error: true,
        end_after_a_record: true,
    };
    let from = [(partition, Offset::Offset(start))];
    let end = read_to_end(consumer, topic, &from, how, |m| {
        on_record(m);
        Next::More
    })
    .map_err(|source| ChangelogError::Kafka {
        topic: topic.to_string(),
        partition,
        source,
    })?;
    if !end.complete {
        return Err(ChangelogError::NotToTheEnd {
            topic: topic.to_string(),
            partition,
            from: start,
            timeout,
        });
    }
    Ok(())
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
    let Some((value, chunks)) = read_last(k, topic, partition, timeout)? else {
        return Ok(None);
    };
    let (mut header, share) = decode(&value)?;
    header.chunks = chunks;
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
            chunks: Vec::new(),
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
