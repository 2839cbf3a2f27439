//! Checkpoints of the engine (RocksDB, `<state.dir>/checkpoint`): its state, how far each
//! report partition was read into it, and which alerts were already emitted, written in one
//! synced batch after every window close.
//!
//! After a crash the daemon restores the state, skips the records the state already holds
//! (offsets below the checkpoint's) and drops alerts it regenerates that were emitted before,
//! so the alerts of a run killed at any moment, taken together, are those of an uninterrupted
//! run: none lost, none doubled.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint RocksDB at {path}: {error}")]
    Db { path: String, error: rocksdb::Error },
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
}

// Keys: `s/engine`, `s/next`, and `e/<id>:<status>` per emitted alert (prefixes kept
// disjoint: the emitted scan must never meet the state).
const ENGINE: &[u8] = b"s/engine";
const NEXT: &[u8] = b"s/next";
const EMITTED: &[u8] = b"e/";

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

fn emitted_key(change: &str) -> Vec<u8> {
    let mut k = EMITTED.to_vec();
    k.extend_from_slice(change.as_bytes());
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
        let mut emitted = HashSet::new();
        for item in self
            .db
            .iterator(IteratorMode::From(EMITTED, rocksdb::Direction::Forward))
        {
            let (k, _) = item.map_err(|e| self.err(e))?;
            let Some(change) = k.strip_prefix(EMITTED) else {
                break;
            };
            emitted.insert(String::from_utf8_lossy(change).into_owned());
        }
        Ok(Some(Restored {
            engine,
            next: next.1,
            emitted,
        }))
    }

    /// Writes the engine state, the read positions and newly emitted alerts, atomically and
    /// synced.
    pub fn save(
        &self,
        topic: &str,
        engine: &[u8],
        next: &HashMap<i32, i64>,
        emitted: &[String],
        emitted_at_ms: i64,
    ) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        batch.put(ENGINE, engine);
        let n = serde_json::to_vec(&(topic, next))
            .map_err(|e| CheckpointError::Corrupt(e.to_string()))?;
        batch.put(NEXT, n);
        for c in emitted {
            batch.put(emitted_key(c), emitted_at_ms.to_be_bytes());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo).map_err(|e| self.err(e))
    }

    /// Forgets emitted alerts recorded before `before_ms` (wall clock): a replay reaches back
    /// at most to the oldest open window, never days.
    pub fn prune_emitted(&self, before_ms: i64) -> Result<usize, CheckpointError> {
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for item in self
            .db
            .iterator(IteratorMode::From(EMITTED, rocksdb::Direction::Forward))
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(EMITTED) {
                break;
            }
            let at = v.as_ref().try_into().map(i64::from_be_bytes).unwrap_or(0);
            if at < before_ms {
                batch.delete(&k);
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
            s.save("reports", b"state-1", &next, &["a:firing".into()], 1_000)
                .unwrap();
            s.save("reports", b"state-2", &next, &["a:resolved".into()], 2_000)
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
        assert_eq!(s.prune_emitted(1_500).unwrap(), 1);
        let r = s.load("reports").unwrap().unwrap();
        assert_eq!(r.emitted, ["a:resolved".to_string()].into());
    }
}
