//! The changelog topic: each report partition's state, written at every checkpoint, so that
//! the partition's next owner in the consumer group takes it over where it was (Kafka
//! Streams' changelog: one record per state key, compacted).
//!
//! Partition p of the changelog holds report partition p's state as records: one per
//! location+CDN key (`k/` and the key's id: its windows and everything learned about it), one
//! per session bucket (`s/` and the bucket), and the partition's head under key `p`: a JSON
//! [`Header`] (where reading resumes, the alerts that were decided but maybe not yet
//! produced) followed by the engine's CBOR head of the partition (window bounds, incidents,
//! stashed verdicts; on partition 0 the CDN-wide stage). A checkpoint writes only the records
//! that changed since the last one, tombstones for the keys that left, and the head last:
//! the head commits the records before it. A reader takes, per record key, the last value
//! written before the last head ([`read_partition`]); compaction keeps one per key. No record
//! grows with the number of keys in a partition.
//!
//! A head larger than the producer takes in one record (`message.max.bytes`, 1,000,000 by
//! default) goes in chunks first, each under a key of its own (`p/<write id>/<i>`), then the
//! record under key p is a [`Manifest`] that lists them by offset. A write that fails
//! half-way leaves the last manifest and its chunks as they were (new chunks never reuse a
//! key); the writer deletes (tombstones) the chunks of the manifest it replaced. Versions
//! before per-key records wrote the partition's whole share under key p (the header has no
//! `format`): such a share is still read and taken over.

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
    #[error("partition state: {0}")]
    State(String),
    #[error(
        "the changelog holds state of layout version {found}; this version reads {supported} \
         (and the whole shares of the versions before)"
    )]
    Version { found: u32, supported: u32 },
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
    #[error(
        "{topic}/{partition}: nothing read for {timeout:?} (from offset {from}), not at its end"
    )]
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
    /// Not 0: the share after the header is the partition's head, its keys and sessions are
    /// records of their own, all of this state layout version ([`RECORDS`] when written
    /// here). Absent (0) in versions before: the whole share.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub format: u32,
    /// With [`RECORDS`]: how many key and session records the state has (a reader that finds
    /// fewer says so: records lost to retention).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub records: u64,
}

/// [`Header::format`] of a state in records written by this version: the engine's state
/// layout version. A reader of another version refuses records of this one
/// ([`ChangelogError::Version`]).
pub const RECORDS: u32 = crate::engine::STATE_VERSION;

fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}

/// A key's record key on the changelog (its id: [`crate::engine::key_id`]).
pub fn key_record(id: &[u8]) -> Vec<u8> {
    let mut k = b"k/".to_vec();
    k.extend_from_slice(id);
    k
}

/// A session bucket's record key on the changelog.
pub fn session_record(bucket: u16) -> Vec<u8> {
    let mut k = b"s/".to_vec();
    k.extend_from_slice(&bucket.to_be_bytes());
    k
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
        crate::kafka::end_reader(k, "-changelog-reader", "earliest", true).map_err(kafka)?;
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

/// Reads `partition` of `topic` from `start` to its end, each record to `on_record`.
/// `timeout` bounds a stretch without progress, not the whole read: a partition of a hundred
/// thousand keys' records takes longer than any fixed budget on a slow link, and a take-over
/// that gives up starts the partition empty. After a round of `timeout` that delivered
/// records, reading goes on from the next one.
fn read_on<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
    start: i64,
    timeout: Duration,
    mut on_record: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), ChangelogError> {
    let mut from = start;
    // The first round starts at a record, which must arrive before the end counts; a later
    // round may start at the end.
    let mut first = true;
    loop {
        let how = Read {
            timeout,
            fail_on_error: true,
            end_after_a_record: first,
        };
        let mut last = None;
        let end = read_to_end(
            consumer,
            topic,
            &[(partition, Offset::Offset(from))],
            how,
            |m| {
                last = Some(m.offset());
                on_record(m);
                Next::More
            },
        )
        .map_err(|source| ChangelogError::Kafka {
            topic: topic.to_string(),
            partition,
            source,
        })?;
        if end.complete {
            return Ok(());
        }
        match last {
            Some(offset) => {
                from = offset + 1;
                first = false;
            }
            None => {
                return Err(ChangelogError::NotToTheEnd {
                    topic: topic.to_string(),
                    partition,
                    from,
                    timeout,
                });
            }
        }
    }
}

/// A partition's state as the changelog holds it.
pub enum State {
    /// The whole share, as versions before per-key records wrote it.
    Whole(Vec<u8>),
    /// The partition's head and the records it commits.
    Records(Records),
}

/// A partition's head and the key and session records its last head commits.
#[derive(Default)]
pub struct Records {
    pub head: Vec<u8>,
    /// Session buckets' records, in the order of their record keys.
    pub sessions: Vec<Vec<u8>>,
    /// Keys' ids ([`crate::engine::key_id`]) and records, in the order of their ids.
    pub keys: Vec<(Vec<u8>, Vec<u8>)>,
    /// Per record key, the fingerprint ([`crate::checkpoint::fingerprint`]) of the value
    /// taken; 0 where the changelog's last record of that key is another (a write that did
    /// not finish): the next write writes those again.
    pub written: HashMap<Vec<u8>, u64>,
    /// Records of a write whose head never came, taken because nothing of their keys
    /// came before them (compacted away): their keys may count some reports twice.
    pub ahead: usize,
    /// Records the head counts that are not there (lost to retention).
    pub missing: u64,
}

/// Report partition `partition`'s state on the changelog, if it has one: its last head's
/// header and the state it commits (read from the partition's start: compaction keeps it
/// to one record per key). An error if it cannot be read or is not that partition's of
/// `reports_topic` (a changelog shared by mistake).
pub fn read_partition(
    k: &KafkaConfig,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Option<(Header, State)>, ChangelogError> {
    let kafka = |source| ChangelogError::Kafka {
        topic: topic.to_string(),
        partition,
        source,
    };
    let consumer =
        crate::kafka::end_reader(k, "-changelog-reader", "earliest", true).map_err(kafka)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(kafka)?;
    if high <= low {
        return Ok(None);
    }
    // Per record key its last value (None: a tombstone), committed by a head or not yet.
    type Values = HashMap<Vec<u8>, Option<Vec<u8>>>;
    let (mut committed, mut pending) = (Values::new(), Values::new());
    let head_key = partition.to_string();
    let mut last = None;
    // Read to the end fetching reports, not to the offset lookup's high watermark (some
    // brokers, tansu 0.6, answer it short of the last batch).
    read_on(&consumer, topic, partition, low, timeout, |m| {
        let Some(key) = m.key() else { return };
        if key == head_key.as_bytes() {
            if let Some(v) = m.payload() {
                last = Some(v.to_vec());
                committed.extend(pending.drain());
            }
        } else if key.starts_with(b"k/") || key.starts_with(b"s/") {
            pending.insert(key.to_vec(), m.payload().map(<[u8]>::to_vec));
        }
    })?;
    let Some(last) = last else {
        return Ok(None);
    };
    let (value, chunks) = match Manifest::of(&last) {
        None => (last, Vec::new()),
        Some(manifest) => {
            let manifest = manifest?;
            let value = read_chunks(k, topic, partition, &manifest, timeout)?;
            (value, manifest.chunks.into_iter().map(|(k, _)| k).collect())
        }
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
    if header.format == 0 {
        return Ok(Some((header, State::Whole(share.to_vec()))));
    }
    if header.format != RECORDS {
        return Err(ChangelogError::Version {
            found: header.format,
            supported: RECORDS,
        });
    }
    let mut r = Records {
        head: share.to_vec(),
        ..Records::default()
    };
    // A write whose head never came: its records are not this state's, and its keys are
    // written again by the next write. Where nothing came before them they are all there is.
    let mut again = Vec::new();
    for (key, v) in pending {
        match (committed.get(&key), v) {
            (Some(Some(_)), _) => again.push(key),
            (_, Some(v)) => {
                r.ahead += 1;
                again.push(key.clone());
                committed.insert(key, Some(v));
            }
            (_, None) => {}
        }
    }
    let mut live: Vec<(Vec<u8>, Vec<u8>)> = committed
        .into_iter()
        .filter_map(|(key, v)| Some((key, v?)))
        .collect();
    live.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (key, v) in live {
        r.written
            .insert(key.clone(), crate::checkpoint::fingerprint(&v));
        match key.strip_prefix(b"k/") {
            Some(id) => r.keys.push((id.to_vec(), v)),
            None => r.sessions.push(v),
        }
    }
    for key in again {
        r.written.insert(key, 0);
    }
    r.missing = header
        .records
        .saturating_sub((r.keys.len() + r.sessions.len()) as u64);
    Ok(Some((header, State::Records(r))))
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
            format: RECORDS,
            records: 3,
        };
        let v = encode(&h, b"share").unwrap();
        let (back, share) = decode(&v).unwrap();
        assert_eq!((back.partition, back.next, share), (3, 42, &b"share"[..]));
        assert_eq!(back.delivered, h.delivered);
        assert_eq!((back.format, back.records), (RECORDS, 3));
        assert!(decode(b"\0\0").is_err());
        assert!(decode(b"\0\0\0\x09{}").is_err());
        assert!(decode(b"\0\0\0\x02{]").is_err());
    }
}
