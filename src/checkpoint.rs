//! Checkpoints of the engine (RocksDB, `<state.dir>/checkpoint`): its state, how far each
//! report partition was read into it, and which alerts were already decided, written in one
//! synced batch (at once when a close raised alerts, otherwise at most every
//! `state.checkpoint_interval`).
//!
//! Alerts are decided here before they are produced: the batch that records `id:status` as
//! emitted also keeps the alert as *pending* until the alerts topic acknowledged it. After a
//! crash the daemon restores the state, skips the records the state already holds (offsets
//! below the checkpoint's), drops alerts it regenerates that were decided before, and looks
//! up its pending alerts on the alerts topic (from the positions of its last acknowledged
//! produce) to send only those that are not there. So the alerts of a run killed at any
//! moment, taken together, are those of an uninterrupted run: none lost, none doubled.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::field::Invalid;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the RocksDB database (benchmark table and its consumed offsets).
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Most often the engine state is checkpointed when windows close without alerts (a
    /// close with alerts always checkpoints). Offsets are committed only up to the last
    /// checkpoint, so a longer interval means a longer replay after a crash, never a loss.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("./qos-sentinel-state")
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
            checkpoint_interval: default_checkpoint_interval(),
        }
    }
}

impl StateConfig {
    /// Checks values; field paths are relative to `[state]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.checkpoint_interval.is_zero() {
            return Err(Invalid::new("checkpoint_interval", "(0s) must be positive"));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint RocksDB at {path}: {error}")]
    Db { path: String, error: rocksdb::Error },
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
}

// Keys: `s/engine`, `s/next`, `e/<id>:<status>` per decided alert, `p/<id>:<status>` (the
// alert's JSON) per alert not yet acknowledged by the alerts topic, and `d/<partition>` (the
// alerts topic's offset after our last acknowledged alert there). Prefixes are kept
// disjoint: a prefix scan must never meet another kind.
const ENGINE: &[u8] = b"s/engine";
const NEXT: &[u8] = b"s/next";
const EMITTED: &[u8] = b"e/";
const PENDING: &[u8] = b"p/";
const DELIVERED: &[u8] = b"d/";

/// What a checkpoint holds.
pub struct Restored {
    pub engine: Vec<u8>,
    /// Per report partition, the next offset to read: everything below is in `engine`.
    pub next: HashMap<i32, i64>,
    /// `id:status` of every alert emitted (and acknowledged by the alerts topic).
    pub emitted: HashSet<String>,
}

pub struct CheckpointStore {
    db: DB,
    path: String,
}

/// A key (without its prefix) and its value.
type Entry = (Vec<u8>, Vec<u8>);

fn prefixed(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(rest);
    k
}

impl CheckpointStore {
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let path = dir.join("checkpoint");
        let p = path.display().to_string();
        let db = crate::table::store::open_db(&path).map_err(|error| CheckpointError::Db {
            path: p.clone(),
            error,
        })?;
        Ok(Self { db, path: p })
    }

    fn err(&self, error: rocksdb::Error) -> CheckpointError {
        CheckpointError::Db {
            path: self.path.clone(),
            error,
        }
    }

    /// The last checkpoint, if any. `topic` guards against a state dir reused for another
    /// reports topic.
    pub fn load(&self, topic: &str) -> Result<Option<Restored>, CheckpointError> {
        let Some(engine) = self.db.get(ENGINE).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let next: (String, HashMap<i32, i64>) = match self.db.get(NEXT).map_err(|e| self.err(e))? {
            Some(v) => {
                serde_json::from_slice(&v).map_err(|e| CheckpointError::Corrupt(e.to_string()))?
            }
            None => return Ok(None),
        };
        if next.0 != topic {
            return Ok(None);
        }
        let emitted = self
            .scan(EMITTED)?
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect();
        Ok(Some(Restored {
            engine,
            next: next.1,
            emitted,
        }))
    }

    /// `(key without prefix, value)` of every entry under `prefix`.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Entry>, CheckpointError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(prefix, rocksdb::Direction::Forward))
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let Some(rest) = k.strip_prefix(prefix) else {
                break;
            };
            out.push((rest.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Writes the engine state with the read positions it covers (if given) and the newly
    /// decided alerts (`(id:status, alert JSON)`: recorded as emitted and kept as pending),
    /// atomically and synced.
    pub fn save(
        &self,
        topic: &str,
        state: Option<(&[u8], &HashMap<i32, i64>)>,
        decided: &[(String, Vec<u8>)],
        decided_at_ms: i64,
    ) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        if let Some((engine, next)) = state {
            batch.put(ENGINE, engine);
            let n = serde_json::to_vec(&(topic, next))
                .map_err(|e| CheckpointError::Corrupt(e.to_string()))?;
            batch.put(NEXT, n);
        }
        for (change, alert) in decided {
            batch.put(
                prefixed(EMITTED, change.as_bytes()),
                decided_at_ms.to_be_bytes(),
            );
            batch.put(prefixed(PENDING, change.as_bytes()), alert);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| self.err(e))
    }

    /// Alerts decided but not yet acknowledged by the alerts topic: `(id:status, JSON)`.
    pub fn pending(&self) -> Result<Vec<(String, Vec<u8>)>, CheckpointError> {
        Ok(self
            .scan(PENDING)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    /// Per alerts-topic partition, the offset after the last alert of ours it acknowledged:
    /// pending alerts, if they got there, are at or after it.
    pub fn delivered(&self) -> Result<HashMap<i32, i64>, CheckpointError> {
        let mut out = HashMap::new();
        for (k, v) in self.scan(DELIVERED)? {
            let p: [u8; 4] = k
                .as_slice()
                .try_into()
                .map_err(|_| CheckpointError::Corrupt(format!("alerts partition key {k:?}")))?;
            let o: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| CheckpointError::Corrupt(format!("alerts partition offset {v:?}")))?;
            out.insert(i32::from_be_bytes(p), i64::from_be_bytes(o));
        }
        Ok(out)
    }

    /// The alerts topic acknowledged `changes`, the last of them at `acked` (partition,
    /// offset): they are no longer pending. Not synced: if this write is lost, the pending
    /// alerts are looked up on the topic again and found there.
    pub fn confirm(&self, changes: &[String], acked: &[(i32, i64)]) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        for c in changes {
            batch.delete(prefixed(PENDING, c.as_bytes()));
        }
        let mut after: HashMap<i32, i64> = HashMap::new();
        for (p, o) in acked {
            let e = after.entry(*p).or_insert(o + 1);
            *e = (*e).max(o + 1);
        }
        for (p, o) in after {
            batch.put(prefixed(DELIVERED, &p.to_be_bytes()), o.to_be_bytes());
        }
        self.db.write(batch).map_err(|e| self.err(e))
    }

    /// Forgets emitted alerts recorded before `before_ms` (wall clock): a replay reaches back
    /// at most to the oldest open window, never days.
    pub fn prune_emitted(&self, before_ms: i64) -> Result<usize, CheckpointError> {
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for (k, v) in self.scan(EMITTED)? {
            let at = v.as_slice().try_into().map(i64::from_be_bytes).unwrap_or(0);
            if at < before_ms {
                batch.delete(prefixed(EMITTED, &k));
                n += 1;
            }
        }
        self.db.write(batch).map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Bytes on disk and in memtables.
    pub fn size_bytes(&self) -> u64 {
        crate::table::store::db_size(&self.db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_state_positions_and_emitted_alerts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = CheckpointStore::open(dir.path()).unwrap();
            assert!(s.load("reports").unwrap().is_none());
            let next: HashMap<i32, i64> = [(0, 10), (3, 7)].into();
            s.save(
                "reports",
                Some((b"state-1", &next)),
                &[("a:firing".into(), b"{1}".to_vec())],
                1_000,
            )
            .unwrap();
            s.confirm(&["a:firing".into()], &[(0, 41), (2, 5), (0, 40)])
                .unwrap();
            s.save(
                "reports",
                Some((b"state-2", &next)),
                &[("a:resolved".into(), b"{2}".to_vec())],
                2_000,
            )
            .unwrap();
        }
        let s = CheckpointStore::open(dir.path()).unwrap();
        assert!(s.load("other-topic").unwrap().is_none());
        let r = s.load("reports").unwrap().unwrap();
        assert_eq!(r.engine, b"state-2");
        assert_eq!(r.next, [(0, 10), (3, 7)].into());
        assert_eq!(
            r.emitted,
            ["a:firing".to_string(), "a:resolved".to_string()].into()
        );
        // Only the unacknowledged alert is pending; positions are one past the last ack.
        assert_eq!(
            s.pending().unwrap(),
            vec![("a:resolved".into(), b"{2}".to_vec())]
        );
        assert_eq!(s.delivered().unwrap(), [(0, 42), (2, 6)].into());
        assert_eq!(s.prune_emitted(1_500).unwrap(), 1);
        let r = s.load("reports").unwrap().unwrap();
        assert_eq!(r.emitted, ["a:resolved".to_string()].into());
    }
}
