//! Where the engine's state goes: the local checkpoint (RocksDB, synced) and, when several
//! instances share the report partitions, each owned partition's share on the changelog
//! topic for its next owner.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};

use super::positions::Positions;
use rdkafka::producer::DeliveryFuture;

use crate::changelog::Manifest;
use crate::checkpoint::CheckpointStore;
use crate::engine::Engine;
use crate::incident::Alert;
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
}

/// Writes owned partitions' state to the changelog topic.
pub(super) struct ChangelogWriter {
    pub(super) producer: rdkafka::producer::FutureProducer,
    pub(super) topic: String,
    pub(super) reports_topic: String,
    /// Report partitions assigned to this instance now.
    pub(super) owned: HashSet<i32>,
    /// The largest record this writer produces ([`crate::changelog::chunk_limit`]): a larger
    /// share goes in chunks and a manifest.
    pub(super) chunk: usize,
    /// Per partition, the keys of the chunks its last manifest written here lists: deleted
    /// once a newer share is written.
    pub(super) chunks: HashMap<i32, Vec<String>>,
}

impl ChangelogWriter {
    /// Writes every owned partition's state, with the alerts of `alerts` that are its own
    /// (CDN-wide ones go with the lowest owned partition). Must succeed when there are alerts
    /// (they are produced only after it); otherwise a failure only makes the next owner start
    /// from an older state. Returns whether every partition's state was written.
    pub(super) async fn write(
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
        let mut records = Vec::new();
        for p in &owned {
            let Some(n) = next.get(p) else { continue };
            let share = match engine.export_partition(*p) {
                Ok(Some(share)) => share,
                Ok(None) => continue,
                Err(e) => {
                    error!(error = %e, partition = p, "Cannot encode a partition's state.");
                    continue;
                }
            };
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
            };
            match crate::changelog::encode(&header, &share) {
                Ok(v) => records.push((*p, v)),
                Err(e) => error!(error = %e, partition = p, "Cannot encode a changelog record."),
            }
        }
        let what = "write partition state to the changelog before its alerts";
        let mut backoff = crate::retry::Backoff::new(what, Some(retries));
        loop {
            let failed = self.send_all(&records).await;
            if failed == 0 {
                backoff.succeeded();
                return true;
            }
            if alerts.is_empty() {
                warn!(
                    failed,
                    "Cannot write partition state to the changelog; the next checkpoint will."
                );
                return false;
            }
            backoff
                .wait(format!("{failed} of {} records not written", records.len()))
                .await;
        }
    }

    /// Sends each partition's record to its partition of the changelog, all in flight
    /// together (a share over [`ChangelogWriter::chunk`]: its chunks first, then its
    /// manifest); how many partitions' records were not written.
    async fn send_all(&mut self, records: &[(i32, Vec<u8>)]) -> usize {
        let id = crate::notify::deliver::now_ms();
        let mut failed = 0;
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
                failed += 1;
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
                    failed += 1;
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
                failed += 1;
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

    /// Queues one record (a tombstone without `payload`) for partition `p`.
    fn send(&self, p: i32, key: &str, payload: Option<&[u8]>) -> Option<DeliveryFuture> {
        let mut record = rdkafka::producer::FutureRecord::<str, [u8]>::to(&self.topic)
            .partition(p)
            .key(key);
        if let Some(v) = payload {
            record = record.payload(v);
        }
        match self.producer.send_result(record) {
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
        let state = match self.written.delta(engine) {
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
