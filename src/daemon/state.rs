//! Where the engine's state goes: the local checkpoint (RocksDB, synced) and, when several
//! instances share the report partitions, each owned partition's share on the changelog
//! topic for its next owner.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};

use super::positions::Positions;
use rdkafka::producer::DeliveryFuture;

use crate::changelog::Manifest;
use crate::checkpoint::CheckpointStore;
use crate::engine::Engine;
use crate::incident::Alert;
use crate::kafka::KafkaConfig;
use crate::notify;

/// The checkpoint store and the alerts emitted so far (by `id:status`).
pub(super) struct Checkpointer {
    pub(super) store: CheckpointStore,
    pub(super) topic: String,
    pub(super) emitted: HashSet<String>,
    /// What the checkpoint holds of the engine's state: a save writes only what changed.
    pub(super) written: crate::checkpoint::Written,
    /// Closes without alerts checkpoint at most this often (catching up on a backlog closes
    /// many windows a second; each checkpoint encodes the whole state and syncs it).
    pub(super) interval: Duration,
    pub(super) last: Option<Instant>,
    /// Windows closed since the last checkpoint.
    pub(super) dirty: bool,
    /// Where each partition's state goes for its next owner, when several instances share.
    pub(super) changelog: Option<ChangelogWriter>,
    /// Flushed before each checkpoint: the summaries of the windows in it must be out (a
    /// restore would not send them again).
    pub(super) flush_first: Option<rdkafka::producer::FutureProducer>,
    /// Dead letters in flight: acknowledged before each checkpoint (the offsets behind them
    /// move on with it).
    pub(super) dead_letters: Option<crate::source::InFlight>,
    /// `qos_sentinel_retries_total`, for the checkpoint and changelog loops.
    pub(super) retries: prometheus::IntCounterVec,
    /// `qos_sentinel_state_*_total{store="checkpoint"}`.
    pub(super) writes: Option<crate::metrics::StateWrites>,
}

/// Writes owned partitions' state to the changelog topic.
pub struct ChangelogWriter {
    pub(super) producer: rdkafka::producer::FutureProducer,
    pub(super) topic: String,
    pub(super) reports_topic: String,
    /// Report partitions assigned to this instance now.
    pub(super) owned: HashSet<i32>,
    /// The largest record this writer produces ([`crate::changelog::chunk_limit`]): a larger
    /// share goes in chunks and a manifest.
    pub(super) chunk: usize,
    /// Per partition, the keys of the chunks its last manifest written here lists: deleted
    /// once a newer head is written.
    pub(super) chunks: HashMap<i32, Vec<String>>,
    /// Per partition, its records on the changelog as written here or read at its take-over
    /// (record key, fingerprint; 0: to be written again): a write sends only the records
    /// whose fingerprint changed and tombstones for the keys gone.
    pub(super) written: HashMap<i32, HashMap<Vec<u8>, u64>>,
    /// `qos_sentinel_state_*_total{store="changelog"}`.
    pub(super) writes: Option<crate::metrics::StateWrites>,
    /// Owned partitions' records as the checkpoint's pass saw them ([`ChangelogWriter::see`]),
    /// for the write that follows it: their keys are not encoded a second time.
    pub(super) seen: HashMap<i32, Seen>,
}

/// A partition's records noted for its next write: those whose fingerprint differs from the
/// changelog's (a tombstone without a value comes later), and every record's fingerprint.
#[derive(Default)]
pub(super) struct Seen {
    records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    now: HashMap<Vec<u8>, u64>,
}

impl Seen {
    /// Notes a key or session record (not a head) with its fingerprint, against `old`.
    fn note(
        &mut self,
        old: Option<&HashMap<Vec<u8>, u64>>,
        r: &crate::engine::Record<'_>,
        fp: u64,
    ) {
        use crate::engine::Record;
        let key = match r {
            Record::Sessions(_, b, _) => crate::changelog::session_record(*b),
            Record::Key(_, k, _) => crate::changelog::key_record(&crate::engine::key_id(k)),
            Record::Engine(_) | Record::Head(..) => return,
        };
        if old.and_then(|o| o.get(&key)) != Some(&fp) {
            self.records.push((key.clone(), Some(r.bytes().to_vec())));
        }
        self.now.insert(key, fp);
    }
}

/// One partition's write: its changed records (a tombstone without a value), its head's
/// record value and what its records are once written (record key, fingerprint).
struct PartWrite {
    p: i32,
    records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    head: Vec<u8>,
    now: HashMap<Vec<u8>, u64>,
}

/// Records in flight: the write each belongs to and its delivery.
type InFlight = VecDeque<(usize, Option<DeliveryFuture>)>;

impl ChangelogWriter {
    /// A writer to `topic` for the partitions of `k`'s reports topic, owning none yet.
    pub fn new(producer: rdkafka::producer::FutureProducer, topic: &str, k: &KafkaConfig) -> Self {
        ChangelogWriter {
            producer,
            topic: topic.to_string(),
            reports_topic: k.reports_topic.clone(),
            owned: HashSet::new(),
            chunk: crate::changelog::chunk_limit(k),
            chunks: HashMap::new(),
            written: HashMap::new(),
            writes: None,
            seen: HashMap::new(),
        }
    }

    /// A record of the engine's state and its fingerprint, as the checkpoint's pass encodes
    /// them: an owned partition's key and session records are kept for the next
    /// [`ChangelogWriter::write`] of the same state.
    pub(super) fn see(&mut self, r: &crate::engine::Record<'_>, fp: u64) {
        use crate::engine::Record;
        let (Record::Sessions(p, ..) | Record::Key(p, ..)) = r else {
            return;
        };
        if self.owned.contains(p) {
            let seen = self.seen.entry(*p).or_default();
            seen.note(self.written.get(p), r, fp);
        }
    }

    /// Forgets what [`ChangelogWriter::see`] kept (a pass that did not finish).
    pub(super) fn unsee(&mut self) {
        self.seen.clear();
    }

    /// Counts what it writes in `writes` (`store="changelog"`).
    pub fn count_in(&mut self, writes: crate::metrics::StateWrites) {
        self.writes = Some(writes);
    }

    /// Owns report partitions `partitions` (only those are written).
    pub fn own(&mut self, partitions: impl IntoIterator<Item = i32>) {
        self.owned = partitions.into_iter().collect();
    }

    /// Writes every owned partition's state (the records that changed since its last write
    /// here, tombstones for keys gone, then its head), with the alerts of `alerts` that are
    /// its own (CDN-wide ones go with the lowest owned partition). Must succeed when there
    /// are alerts (they are produced only after it); otherwise a failure only makes the next
    /// owner start from an older state. Returns whether every partition's state was written.
    pub async fn write(
        &mut self,
        engine: &Engine,
        next: &HashMap<i32, i64>,
        alerts: &[Alert],
        delivered: &HashMap<i32, i64>,
        retries: prometheus::IntCounter,
    ) -> bool {
        let mut owned: Vec<i32> = self.owned.iter().copied().collect();
        owned.sort_unstable();
        let home = |a: &Alert| {
            a.scope
                .location
                .as_deref()
                .and_then(|l| engine.home_of(l))
                .or_else(|| owned.first().copied())
        };
        let mut writes = Vec::new();
        for p in &owned {
            let Some(n) = next.get(p) else { continue };
            let header = crate::changelog::Header {
                reports_topic: self.reports_topic.clone(),
                partition: *p,
                next: *n,
                pending: alerts
                    .iter()
                    .filter(|a| home(a) == Some(*p))
                    .cloned()
                    .collect(),
                delivered: delivered.clone(),
                chunks: Vec::new(),
                format: crate::changelog::RECORDS,
                records: 0,
            };
            match self.changes(engine, *p, header) {
                Ok(Some(w)) => writes.push(w),
                Ok(None) => {}
                Err(e) => error!(error = %e, partition = p, "Cannot encode a partition's state."),
            }
        }
        self.seen.clear();
        let what = "write partition state to the changelog before its alerts";
        let mut backoff = crate::retry::Backoff::new(what, Some(retries));
        loop {
            let failed = self.send_all(&writes).await;
            let all = writes.len();
            for w in std::mem::take(&mut writes) {
                if failed.contains(&w.p) {
                    // Written again by the next write, deleted again if still gone.
                    let known = self.written.entry(w.p).or_default();
                    for (key, _) in &w.records {
                        known.insert(key.clone(), 0);
                    }
                    writes.push(w);
                } else {
                    if let Some(m) = &self.writes {
                        let deleted = w.records.iter().filter(|(_, v)| v.is_none()).count();
                        let bytes: usize = w
                            .records
                            .iter()
                            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                            .sum();
                        m.add(
                            "changelog",
                            w.records.len() - deleted + 1,
                            deleted,
                            bytes + w.head.len(),
                        );
                    }
                    self.written.insert(w.p, w.now);
                }
            }
            if failed.is_empty() {
                backoff.succeeded();
                return true;
            }
            if alerts.is_empty() {
                warn!(
                    failed = failed.len(),
                    "Cannot write partition state to the changelog; the next checkpoint will."
                );
                return false;
            }
            backoff
                .wait(format!("{} of {all} partitions not written", failed.len()))
                .await;
        }
    }

    /// Partition `p`'s records that changed since its last write here, the tombstones of
    /// those gone and its head's value; `None` if the engine has nothing for it. The records
    /// come from the checkpoint's pass when it saw them, else are encoded here.
    fn changes(
        &mut self,
        engine: &Engine,
        p: i32,
        mut header: crate::changelog::Header,
    ) -> Result<Option<PartWrite>, crate::changelog::ChangelogError> {
        use crate::engine::Record;
        let state =
            |e: crate::engine::StateError| crate::changelog::ChangelogError::State(e.to_string());
        let old = self.written.get(&p);
        let seen = match self.seen.remove(&p) {
            Some(seen) => seen,
            None => {
                let mut seen = Seen::default();
                engine
                    .partition_records(p, |r| {
                        if !matches!(r, Record::Head(..)) {
                            seen.note(old, &r, crate::checkpoint::fingerprint(r.bytes()));
                        }
                    })
                    .map_err(state)?;
                seen
            }
        };
        let Some(head) = engine.partition_head(p).map_err(state)? else {
            return Ok(None);
        };
        let Seen { mut records, now } = seen;
        for key in old.into_iter().flat_map(|o| o.keys()) {
            if !now.contains_key(key) {
                records.push((key.clone(), None));
            }
        }
        header.records = now.len() as u64;
        let head = crate::changelog::encode(&header, &head)?;
        Ok(Some(PartWrite {
            p,
            records,
            head,
            now,
        }))
    }

    /// Sends every partition's changed records, all in flight together; then the head of
    /// each partition whose records were all written (a head over [`ChangelogWriter::chunk`]:
    /// its chunks first, then its manifest). The partitions not written.
    async fn send_all(&mut self, writes: &[PartWrite]) -> Vec<i32> {
        let mut bad = vec![false; writes.len()];
        let mut inflight = InFlight::new();
        for (i, w) in writes.iter().enumerate() {
            for (key, v) in &w.records {
                let f = self
                    .queue(w.p, key, v.as_deref(), &mut inflight, &mut bad)
                    .await;
                inflight.push_back((i, f));
            }
        }
        while let Some((i, f)) = inflight.pop_front() {
            if delivered(f).await.is_none() {
                bad[i] = true;
            }
        }
        let heads: Vec<(i32, Vec<u8>)> = writes
            .iter()
            .zip(&bad)
            .filter(|(_, bad)| !**bad)
            .map(|(w, _)| (w.p, w.head.clone()))
            .collect();
        let mut failed = self.send_heads(&heads).await;
        failed.extend(
            writes
                .iter()
                .zip(&bad)
                .filter(|(_, b)| **b)
                .map(|(w, _)| w.p),
        );
        failed
    }

    /// Queues one record; while the producer's queue is full, waits for the oldest record in
    /// flight (noting in `bad` the write of one that failed).
    async fn queue(
        &self,
        p: i32,
        key: &[u8],
        payload: Option<&[u8]>,
        inflight: &mut InFlight,
        bad: &mut [bool],
    ) -> Option<DeliveryFuture> {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        let mut record = self.record(p, key, payload);
        loop {
            match self.producer.send_result(record) {
                Ok(f) => return Some(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    match inflight.pop_front() {
                        Some((i, f)) => {
                            if delivered(f).await.is_none() {
                                bad[i] = true;
                            }
                        }
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((e, _)) => {
                    debug!(error = %e, partition = p, bytes = payload.map_or(0, <[u8]>::len), "Changelog record not queued.");
                    return None;
                }
            }
        }
    }

    /// Sends each partition's head to its partition of the changelog, all in flight
    /// together (a head over [`ChangelogWriter::chunk`]: its chunks first, then its
    /// manifest); the partitions whose head was not written.
    async fn send_heads(&mut self, records: &[(i32, Vec<u8>)]) -> Vec<i32> {
        let id = crate::notify::deliver::now_ms();
        let mut failed = Vec::new();
        // Chunks of the large shares, all in flight together.
        let mut chunked: Vec<(i32, usize, ChunksInFlight)> = Vec::new();
        for (p, v) in records.iter().filter(|(_, v)| v.len() > self.chunk) {
            let parts = v
                .chunks(self.chunk)
                .enumerate()
                .map(|(i, c)| {
                    let key = format!("{p}/{id}/{i}");
                    let f = self.send(*p, &key, Some(c));
                    (key, f)
                })
                .collect();
            chunked.push((*p, v.len(), parts));
        }
        let mut manifests = Vec::new();
        for (p, len, parts) in chunked {
            let mut chunks = Vec::with_capacity(parts.len());
            for (key, f) in parts {
                match delivered(f).await {
                    Some(offset) => chunks.push((key, offset)),
                    None => break,
                }
            }
            if chunks.len() < len.div_ceil(self.chunk) {
                failed.push(p);
                continue;
            }
            let manifest = Manifest { chunks, len };
            match manifest.encode() {
                Ok(v) => {
                    let keys: Vec<String> = manifest.chunks.into_iter().map(|(k, _)| k).collect();
                    manifests.push((p, v, keys));
                }
                Err(e) => {
                    error!(error = %e, partition = p, "Cannot encode a changelog manifest.");
                    failed.push(p);
                }
            }
        }
        // Then each partition's record: its whole share or its manifest.
        let mut last = Vec::new();
        for (p, v) in records.iter().filter(|(_, v)| v.len() <= self.chunk) {
            last.push((*p, self.send(*p, &p.to_string(), Some(v)), Vec::new()));
        }
        for (p, v, keys) in manifests {
            last.push((p, self.send(p, &p.to_string(), Some(&v)), keys));
        }
        for (p, f, keys) in last {
            if delivered(f).await.is_none() {
                failed.push(p);
                continue;
            }
            // Written: the chunks of the share it replaced can go.
            let old = if keys.is_empty() {
                self.chunks.remove(&p)
            } else {
                self.chunks.insert(p, keys)
            };
            for key in old.unwrap_or_default() {
                if delivered(self.send(p, &key, None)).await.is_none() {
                    debug!(partition = p, key, "Old changelog chunk not deleted.");
                }
            }
        }
        failed
    }

    /// One record (a tombstone without `payload`) for partition `p`.
    fn record<'a>(
        &'a self,
        p: i32,
        key: &'a [u8],
        payload: Option<&'a [u8]>,
    ) -> rdkafka::producer::FutureRecord<'a, [u8], [u8]> {
        let record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(&self.topic)
            .partition(p)
            .key(key);
        match payload {
            Some(v) => record.payload(v),
            None => record,
        }
    }

    /// Queues one record (a tombstone without `payload`) for partition `p`.
    fn send(&self, p: i32, key: &str, payload: Option<&[u8]>) -> Option<DeliveryFuture> {
        match self
            .producer
            .send_result(self.record(p, key.as_bytes(), payload))
        {
            Ok(f) => Some(f),
            Err((e, _)) => {
                debug!(error = %e, partition = p, key, bytes = payload.map_or(0, <[u8]>::len), chunk = self.chunk, "Changelog record not queued.");
                None
            }
        }
    }
}

/// A share's chunks in flight: their keys and deliveries.
type ChunksInFlight = Vec<(String, Option<DeliveryFuture>)>;

/// The offset a queued record was written at, if it was.
async fn delivered(f: Option<DeliveryFuture>) -> Option<i64> {
    match f?.await {
        Ok(Ok(delivery)) => Some(delivery.offset),
        Ok(Err((e, _))) => {
            debug!(error = %e, "Changelog record not written.");
            None
        }
        Err(_) => None,
    }
}

impl Checkpointer {
    /// Writes the state, the read positions and the newly decided alerts (retrying until the
    /// disk takes them), then moves the committable offsets up to this state.
    pub(super) async fn save(&mut self, engine: &Engine, pos: &mut Positions, alerts: &[Alert]) {
        if let Some(dlq) = &mut self.dead_letters {
            dlq.settle().await;
        }
        if let Some(producer) = &self.flush_first {
            use rdkafka::producer::Producer;
            if let Err(e) = tokio::task::block_in_place(|| producer.flush(Duration::from_secs(10)))
            {
                error!(error = %e, "Summaries not all delivered before the checkpoint.");
            }
        }
        let mut decided = Vec::with_capacity(alerts.len());
        for a in alerts {
            match serde_json::to_vec(a) {
                Ok(v) => decided.push((notify::change_key(a), v)),
                Err(e) => error!(error = %e, id = %a.id, "Cannot encode an alert."),
            }
        }
        // One pass encodes the state for both stores: the changelog's writer keeps what it
        // needs of each record as the checkpoint's delta sees it.
        let cl = &mut self.changelog;
        let delta = self.written.delta_seen(engine, |r, fp| {
            if let Some(cl) = cl.as_mut() {
                cl.see(r, fp);
            }
        });
        let state = match delta {
            Ok(d) => {
                let (put, deleted) = d.counts();
                debug!(
                    put,
                    deleted,
                    bytes = d.bytes(),
                    "Checkpointing the changed state records."
                );
                Some(d)
            }
            Err(e) => {
                if let Some(cl) = &mut self.changelog {
                    cl.unsee();
                }
                error!(error = %e, "Cannot encode the engine state; only the alerts are checkpointed.");
                self.written = crate::checkpoint::Written::default();
                None
            }
        };
        let now = crate::notify::deliver::now_ms();
        let ckpt_state = state.as_ref().map(|s| (s, &pos.next));
        let counter = self.retries.with_label_values(&["checkpoint"]);
        crate::retry::until_ok("write the checkpoint", Some(counter), || {
            self.store.save(&self.topic, ckpt_state, &decided, now)
        })
        .await;
        if let (Some(m), Some(d)) = (&self.writes, &state) {
            let (put, deleted) = d.counts();
            m.add("checkpoint", put, deleted, d.bytes());
        }
        self.emitted.extend(decided.into_iter().map(|(k, _)| k));
        let mut shared = true;
        if let (Some(cl), Some(_)) = (&mut self.changelog, &state) {
            let delivered = self.store.delivered().unwrap_or_default();
            let counter = self.retries.with_label_values(&["changelog"]);
            shared = cl
                .write(engine, &pos.next, alerts, &delivered, counter)
                .await;
        }
        // Offsets past what the changelog has would be lost to the partitions' next owner.
        if state.is_some() && shared {
            pos.checkpointed(engine);
            self.last = Some(Instant::now());
            self.dirty = false;
        }
    }
}
