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

use crate::engine::{DecodedKey, Engine, Record, Restoring, Settings, StateError, key_id};
use crate::field::Invalid;
use crate::table::BenchmarkTable;
use crate::window::Key;

/// The partition a record's key (after its prefix) starts with.
fn partition_of(k: &[u8]) -> Result<i32, CheckpointError> {
    let p: [u8; 4] = k
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| CheckpointError::Corrupt(format!("record key {k:?}")))?;
    Ok(i32::from_be_bytes(p))
}

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

// Keys: the engine's state as records ([`crate::engine::Record`]): `s/head` the engine's
// own, `h/<partition>` each partition's head, `b/<partition><bucket>` its sessions and
// `k/<partition><key id>` each of its keys (partitions as 4 bytes big-endian, buckets 2);
// `s/engine` the whole state as one value, as versions before records wrote it (read, then
// deleted by the next save); `s/next`, `e/<id>:<status>` per decided alert, `p/<id>:<status>`
// (the alert's JSON) per alert not yet acknowledged by the alerts topic, and
// `d/<partition>` (the alerts topic's offset after our last acknowledged alert there).
// Prefixes are kept disjoint: a prefix scan must never meet another kind.
const ENGINE: &[u8] = b"s/engine";
const HEAD: &[u8] = b"s/head";
const PART_HEADS: &[u8] = b"h/";
const SESSIONS: &[u8] = b"b/";
const KEYS: &[u8] = b"k/";
const NEXT: &[u8] = b"s/next";
const EMITTED: &[u8] = b"e/";
const PENDING: &[u8] = b"p/";
const DELIVERED: &[u8] = b"d/";

/// The engine's state as a checkpoint holds it.
pub enum Saved {
    /// One value, as versions before state records wrote it.
    Legacy(Vec<u8>),
    /// The engine's record and its partitions' heads; keys and sessions are read from the
    /// store as the engine is put back together ([`CheckpointStore::restore_engine`]).
    Records {
        engine: Vec<u8>,
        heads: Vec<(i32, Vec<u8>)>,
    },
}

/// The store key of a record.
fn record_key(r: &Record<'_>) -> Vec<u8> {
    match r {
        Record::Engine(_) => HEAD.to_vec(),
        Record::Head(p, _) => prefixed(PART_HEADS, &p.to_be_bytes()),
        Record::Sessions(p, b, _) => session_key(*p, *b),
        Record::Key(p, k, _) => key_key(*p, k),
    }
}

fn session_key(p: i32, bucket: u16) -> Vec<u8> {
    let mut k = prefixed(SESSIONS, &p.to_be_bytes());
    k.extend_from_slice(&bucket.to_be_bytes());
    k
}

fn key_key(p: i32, key: &Key) -> Vec<u8> {
    let mut k = prefixed(KEYS, &p.to_be_bytes());
    k.extend_from_slice(&key_id(key));
    k
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// A record's fingerprint: a save writes a record again only when it changed. Compared only
/// within a process. foldhash's quality hasher: SipHash over every record's bytes at every
/// checkpoint was a fifth of a checkpoint's time on the engine's thread.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0x7165_6e74_696e_656c).hash_one(bytes)
}

/// What the last save wrote, as a fingerprint of each record's bytes: the next save writes
/// only the records whose bytes changed and deletes those that are gone (Kafka Streams'
/// dirty entries of a cached store, found by comparing instead of by tracking writes).
#[derive(Default)]
pub struct Written {
    /// Whether a save has written every record since this process opened the store: until
    /// then a save first clears what an earlier run left.
    whole: bool,
    engine: u64,
    heads: HashMap<i32, u64>,
    sessions: HashMap<(i32, u16), u64>,
    keys: crate::hash::FastMap<(i32, Key), u64>,
}

/// The records a save writes and deletes.
#[derive(Default)]
pub struct Delta {
    clear: bool,
    puts: Vec<(Vec<u8>, Vec<u8>)>,
    deletes: Vec<Vec<u8>>,
}

impl Delta {
    /// Records written and deleted.
    pub fn counts(&self) -> (usize, usize) {
        (self.puts.len(), self.deletes.len())
    }

    /// Bytes written (keys and values).
    pub fn bytes(&self) -> usize {
        self.puts.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl Written {
    /// What to write so that the store holds `engine`'s records, and from then on assumes it
    /// was written (a save retries until it is).
    pub fn delta(&mut self, engine: &Engine) -> Result<Delta, StateError> {
        self.delta_seen(engine, |_, _| {})
    }

    /// [`Written::delta`], showing `seen` each record and its fingerprint on the way (the
    /// changelog's writer takes its own changes from them instead of encoding them again).
    pub fn delta_seen(
        &mut self,
        engine: &Engine,
        mut seen: impl FnMut(&Record<'_>, u64),
    ) -> Result<Delta, StateError> {
        let old = std::mem::take(self);
        let mut d = Delta {
            clear: !old.whole,
            ..Delta::default()
        };
        self.whole = true;
        engine.records(|r| {
            let fp = fingerprint(r.bytes());
            seen(&r, fp);
            let old_fp = match &r {
                Record::Engine(_) => {
                    self.engine = fp;
                    old.whole.then_some(old.engine)
                }
                Record::Head(p, _) => {
                    self.heads.insert(*p, fp);
                    old.heads.get(p).copied()
                }
                Record::Sessions(p, b, _) => {
                    self.sessions.insert((*p, *b), fp);
                    old.sessions.get(&(*p, *b)).copied()
                }
                Record::Key(p, k, _) => {
                    let key = (*p, (*k).clone());
                    let was = old.keys.get(&key).copied();
                    self.keys.insert(key, fp);
                    was
                }
            };
            if d.clear || old_fp != Some(fp) {
                d.puts.push((record_key(&r), r.into_bytes()));
            }
        })?;
        if !d.clear {
            for p in old.heads.keys().filter(|p| !self.heads.contains_key(p)) {
                d.deletes.push(prefixed(PART_HEADS, &p.to_be_bytes()));
            }
            for (p, b) in old
                .sessions
                .keys()
                .filter(|k| !self.sessions.contains_key(k))
            {
                d.deletes.push(session_key(*p, *b));
            }
            for (p, k) in old.keys.keys().filter(|k| !self.keys.contains_key(k)) {
                d.deletes.push(key_key(*p, k));
            }
        }
        Ok(d)
    }
}

/// What a checkpoint holds.
pub struct Restored {
    pub engine: Saved,
    /// Per report partition, the next offset to read: everything below is in `engine`.
    pub next: HashMap<i32, i64>,
    /// `id:status` of every alert emitted (and acknowledged by the alerts topic).
    pub emitted: HashSet<String>,
}

pub struct CheckpointStore {
    db: DB,
    path: String,
}

/// A record of a partition under a prefix: the partition, the rest of its key, its value.
type Part = (i32, Box<[u8]>, Box<[u8]>);

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

    /// Writes what the memtables hold to disk (a clean stop: the next open replays no log).
    pub fn flush(&self) -> Result<(), CheckpointError> {
        self.db.flush().map_err(|e| self.err(e))
    }

    /// The last checkpoint, if any. `topic` guards against a state dir reused for another
    /// reports topic.
    pub fn load(&self, topic: &str) -> Result<Option<Restored>, CheckpointError> {
        let engine = match self.db.get(HEAD).map_err(|e| self.err(e))? {
            Some(engine) => {
                let heads = self
                    .scan(PART_HEADS)?
                    .into_iter()
                    .map(|(k, v)| Ok((partition_of(&k)?, v)))
                    .collect::<Result<_, CheckpointError>>()?;
                Saved::Records { engine, heads }
            }
            None => match self.db.get(ENGINE).map_err(|e| self.err(e))? {
                Some(v) => Saved::Legacy(v),
                None => return Ok(None),
            },
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

    /// Puts back the engine a checkpoint holds ([`Saved`]), reading its keys and sessions
    /// from the store one by one. On failure the table is handed back.
    // The error is built once, at start-up: its size costs nothing.
    #[allow(clippy::result_large_err)]
    pub fn restore_engine(
        &self,
        cfg: impl Into<Settings>,
        table: BenchmarkTable,
        saved: &Saved,
    ) -> Result<Engine, (StateError, BenchmarkTable)> {
        let (engine, heads) = match saved {
            Saved::Legacy(v) => return Engine::restore(cfg, table, v),
            Saved::Records { engine, heads } => (engine, heads),
        };
        let mut r = Engine::restoring(cfg, table, engine, heads)?;
        let put = self
            .put_sessions(&mut r)
            .and_then(|()| self.put_keys(&mut r));
        match put {
            Ok(()) => Ok(r.finish()),
            Err(e) => Err((e, r.abandon())),
        }
    }

    /// Every entry under `prefix`: its partition, the rest of its key and its value.
    fn under<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<Part, StateError>> + 'a {
        self.db
            .prefix_iterator(prefix)
            .map(|item| item.map_err(|e| StateError::Decode(format!("{}: {e}", self.path))))
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(prefix)))
            .map(move |item| {
                let (k, v) = item?;
                let rest = &k[prefix.len()..];
                let p = partition_of(rest).map_err(|e| StateError::Decode(e.to_string()))?;
                Ok((p, rest[4..].into(), v))
            })
    }

    fn put_sessions(&self, r: &mut Restoring) -> Result<(), StateError> {
        for item in self.under(SESSIONS) {
            let (p, _, v) = item?;
            r.put_sessions(p, &v)?;
        }
        Ok(())
    }

    /// Puts every key's record back, decoded on every core (decoding is most of a restore:
    /// a million keys' records are over a gigabyte of CBOR) while this thread reads the
    /// store and puts back what is decoded.
    fn put_keys(&self, r: &mut Restoring) -> Result<(), StateError> {
        type Raw = Vec<Part>;
        type Decoded = Result<Vec<(i32, DecodedKey)>, StateError>;
        const BATCH: usize = 256;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let (raw_tx, raw_rx) = std::sync::mpsc::sync_channel::<Raw>(threads * 2);
        let raw_rx = std::sync::Mutex::new(raw_rx);
        // Unbounded, yet never more than the raw batches sent and not yet put back.
        let (dec_tx, dec_rx) = std::sync::mpsc::channel::<Decoded>();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let (raw_rx, dec_tx) = (&raw_rx, dec_tx.clone());
                s.spawn(move || {
                    loop {
                        let batch = match raw_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(batch) = batch else { return };
                        let decoded = batch
                            .into_iter()
                            .map(|(p, id, v)| DecodedKey::decode(&id, &v).map(|k| (p, k)))
                            .collect();
                        if dec_tx.send(decoded).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(dec_tx);
            let put_back = |d: Decoded, r: &mut Restoring| -> Result<(), StateError> {
                for (p, k) in d? {
                    r.put_decoded(p, k)?;
                }
                Ok(())
            };
            let mut sent = 0usize;
            let mut done = 0usize;
            let mut batch = Vec::with_capacity(BATCH);
            let mut items = self.under(KEYS).peekable();
            while let Some(item) = items.next() {
                batch.push(item?);
                if batch.len() == BATCH || items.peek().is_none() {
                    while let Ok(d) = dec_rx.try_recv() {
                        put_back(d, r)?;
                        done += 1;
                    }
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if raw_tx.send(full).is_err() {
                        return Err(StateError::Decode("a decoding thread ended".into()));
                    }
                    sent += 1;
                }
            }
            drop(raw_tx);
            while done < sent {
                let d = dec_rx
                    .recv()
                    .map_err(|_| StateError::Decode("a decoding thread ended".into()))?;
                put_back(d, r)?;
                done += 1;
            }
            Ok(())
        })
    }

    /// Writes the engine state with the read positions it covers (if given) and the newly
    /// decided alerts (`(id:status, alert JSON)`: recorded as emitted and kept as pending),
    /// atomically and synced.
    pub fn save(
        &self,
        topic: &str,
        state: Option<(&Delta, &HashMap<i32, i64>)>,
        decided: &[(String, Vec<u8>)],
        decided_at_ms: i64,
    ) -> Result<(), CheckpointError> {
        let mut batch = WriteBatch::default();
        if let Some((delta, next)) = state {
            if delta.clear {
                for prefix in [PART_HEADS, SESSIONS, KEYS] {
                    batch.delete_range(prefix, &prefix_end(prefix)[..]);
                }
            }
            batch.delete(ENGINE);
            for k in &delta.deletes {
                batch.delete(k);
            }
            for (k, v) in &delta.puts {
                batch.put(k, v);
            }
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
mod tests;
