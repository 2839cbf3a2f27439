//! The durable outbox between detection and receivers (RocksDB, `<state.dir>/outbox`).
//!
//! Detection writes a delivery per receiver (synced to disk) before the offsets behind it can
//! be committed; a receiver's worker sends its deliveries in order and deletes each once the
//! receiver took it. After a crash the pending ones are still here and are sent on start.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use crate::incident::Alert;
use crate::time::Millis;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox RocksDB at {path}: {error}")]
    Db { path: String, error: rocksdb::Error },
    #[error("corrupt outbox entry: {0}")]
    Corrupt(String),
}

/// One message to one receiver: a group of alerts that changed together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub alerts: Vec<Alert>,
    /// 0 for a state change; n for the n-th reminder of a firing incident.
    pub repeat: u32,
    /// Wall-clock time it was queued, epoch ms: the retry deadline counts from here.
    pub queued_ms: Millis,
    /// Wall-clock time, epoch ms, the window close that produced these alerts began (absent
    /// for reminders): sent to webhooks as `X-QoS-Detected-At` so receivers can measure
    /// detection-to-delivery latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_ms: Option<Millis>,
}

pub struct Outbox {
    db: DB,
    path: String,
    next_seq: AtomicU64,
    /// Entries per receiver. Guarded so that counting and deleting agree.
    depth: Mutex<HashMap<String, usize>>,
}

/// Key of a delivery: `<receiver> 0x00 <sequence, big-endian>`, so a prefix scan yields one
/// receiver's deliveries in the order they were queued.
pub type Key = Vec<u8>;

fn key(receiver: &str, seq: u64) -> Key {
    let mut k = Vec::with_capacity(receiver.len() + 9);
    k.extend_from_slice(receiver.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn split(k: &[u8]) -> Option<(&str, u64)> {
    let (name, seq) = k.split_at_checked(k.len().checked_sub(9)?)?;
    let seq: [u8; 8] = seq.get(1..)?.try_into().ok()?;
    Some((std::str::from_utf8(name).ok()?, u64::from_be_bytes(seq)))
}

impl Outbox {
    pub fn open(dir: &Path) -> Result<Self, OutboxError> {
        let path = dir.join("outbox");
        let p = path.display().to_string();
        let db = crate::table::store::open_db(&path).map_err(|error| OutboxError::Db {
            path: p.clone(),
            error,
        })?;
        let mut depth = HashMap::new();
        let mut max_seq = 0;
        for item in db.iterator(IteratorMode::Start) {
            let (k, _) = item.map_err(|error| OutboxError::Db {
                path: p.clone(),
                error,
            })?;
            let (name, seq) = split(&k).ok_or_else(|| OutboxError::Corrupt(format!("{k:?}")))?;
            *depth.entry(name.to_string()).or_insert(0) += 1;
            max_seq = max_seq.max(seq + 1);
        }
        Ok(Outbox {
            db,
            path: p,
            next_seq: AtomicU64::new(max_seq),
            depth: Mutex::new(depth),
        })
    }

    fn err(&self, error: rocksdb::Error) -> OutboxError {
        OutboxError::Db {
            path: self.path.clone(),
            error,
        }
    }

    fn depths(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.depth.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues deliveries, `(receiver, delivery)`, in one synced write. Where a receiver would
    /// hold more than `max` the oldest are dropped; returns how many were dropped per receiver.
    pub fn push(
        &self,
        items: &[(&str, Delivery)],
        max: usize,
    ) -> Result<Vec<(String, usize)>, OutboxError> {
        let mut batch = WriteBatch::default();
        let mut depth = self.depths();
        let mut added: HashMap<&str, usize> = HashMap::new();
        for (r, d) in items {
            let v = serde_json::to_vec(d).map_err(|e| OutboxError::Corrupt(e.to_string()))?;
            batch.put(key(r, self.next_seq.fetch_add(1, Ordering::Relaxed)), v);
            *added.entry(r).or_insert(0) += 1;
        }
        let mut dropped = Vec::new();
        for (r, n) in &added {
            let have = depth.get(*r).copied().unwrap_or(0);
            let over = (have + n).saturating_sub(max);
            if over > 0 {
                // Oldest first; new entries are not in the DB yet, so at most `have` go.
                let old = self.keys(r, over.min(have))?;
                for k in &old {
                    batch.delete(k);
                }
                dropped.push((r.to_string(), old.len()));
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| self.err(e))?;
        for (r, n) in added {
            *depth.entry(r.to_string()).or_insert(0) += n;
        }
        for (r, n) in &dropped {
            if let Some(d) = depth.get_mut(r) {
                *d = d.saturating_sub(*n);
            }
        }
        Ok(dropped)
    }

    fn keys(&self, receiver: &str, limit: usize) -> Result<Vec<Key>, OutboxError> {
        let mut prefix = receiver.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        let iter = self
            .db
            .iterator(IteratorMode::From(&prefix, rocksdb::Direction::Forward));
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                break;
            }
            out.push(k.to_vec());
        }
        Ok(out)
    }

    /// The oldest delivery waiting for `receiver`.
    pub fn head(&self, receiver: &str) -> Result<Option<(Key, Delivery)>, OutboxError> {
        let Some(k) = self.keys(receiver, 1)?.pop() else {
            return Ok(None);
        };
        let Some(v) = self.db.get(&k).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let d = serde_json::from_slice(&v).map_err(|e| OutboxError::Corrupt(e.to_string()))?;
        Ok(Some((k, d)))
    }

    /// Deletes a delivery; false if it was gone already (dropped while in flight).
    pub fn remove(&self, k: &[u8]) -> Result<bool, OutboxError> {
        let mut depth = self.depths();
        if self.db.get(k).map_err(|e| self.err(e))?.is_none() {
            return Ok(false);
        }
        self.db.delete(k).map_err(|e| self.err(e))?;
        if let Some((name, _)) = split(k)
            && let Some(d) = depth.get_mut(name)
        {
            *d = d.saturating_sub(1);
        }
        Ok(true)
    }

    /// Deliveries waiting for `receiver`.
    pub fn depth(&self, receiver: &str) -> usize {
        self.depths().get(receiver).copied().unwrap_or(0)
    }

    /// Deletes every delivery of `receiver` (one no longer configured); returns how many.
    pub fn purge(&self, receiver: &str) -> Result<usize, OutboxError> {
        let keys = self.keys(receiver, usize::MAX)?;
        let mut depth = self.depths();
        let mut batch = WriteBatch::default();
        for k in &keys {
            batch.delete(k);
        }
        self.db.write(batch).map_err(|e| self.err(e))?;
        depth.remove(receiver);
        Ok(keys.len())
    }

    /// Receivers with deliveries waiting.
    pub fn receivers(&self) -> Vec<String> {
        self.depths()
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// Bytes on disk and in memtables.
    pub fn size_bytes(&self) -> u64 {
        crate::table::store::db_size(&self.db)
    }

    /// Deliveries waiting over all receivers.
    pub fn total(&self) -> usize {
        self.depths().values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::Status;

    fn delivery(n: u32) -> Delivery {
        let mut a = crate::notify::render::tests::alert(Status::Firing);
        a.samples = u64::from(n);
        Delivery {
            alerts: vec![a],
            repeat: 0,
            queued_ms: 0,
            detected_ms: None,
        }
    }

    #[test]
    fn fifo_per_receiver_survives_reopen_and_drops_oldest_over_max() {
        let dir = tempfile::tempdir().unwrap();
        {
            let o = Outbox::open(dir.path()).unwrap();
            o.push(
                &[("a", delivery(1)), ("b", delivery(2)), ("a", delivery(3))],
                10,
            )
            .unwrap();
            assert_eq!((o.depth("a"), o.depth("b")), (2, 1));
            let (k, d) = o.head("a").unwrap().unwrap();
            assert_eq!(d.alerts[0].samples, 1);
            assert!(o.remove(&k).unwrap());
            assert!(!o.remove(&k).unwrap());
        }
        let o = Outbox::open(dir.path()).unwrap();
        assert_eq!((o.depth("a"), o.depth("b"), o.total()), (1, 1, 2));
        assert_eq!(o.head("a").unwrap().unwrap().1.alerts[0].samples, 3);
        // A name that is a prefix of another does not see its entries.
        assert!(o.head("").unwrap().is_none());
        let dropped = o
            .push(&[("b", delivery(4)), ("b", delivery(5))], 2)
            .unwrap();
        assert_eq!(dropped, vec![("b".to_string(), 1)]);
        assert_eq!(o.depth("b"), 2);
        assert_eq!(o.head("b").unwrap().unwrap().1.alerts[0].samples, 4);
    }
}
