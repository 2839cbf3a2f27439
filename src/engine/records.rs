//! The engine's state as the records of a key-value store, as Kafka Streams keeps a task's
//! state: one record per location+CDN key of a partition (its open windows' accumulators,
//! everything learned about it, its run of small windows), the partition's live sessions in
//! [`SESSION_BUCKETS`] records by their id's hash, one head per partition (window bounds,
//! incidents) and one for the engine (the CDN-wide stage, stashed verdicts, counters). No
//! record grows with the number of keys, so a store (the checkpoint, the changelog) can write
//! only the records that changed, and none of them comes near a size limit.
//!
//! Every record is CBOR. The engine's record carries [`STATE_VERSION`]; state of another
//! version is refused as a whole ([`StateError::Version`]), state of the layout before records
//! (version 1, one value) still restores through [`Engine::restore`].

use std::collections::{BTreeMap, VecDeque};

use super::codec::{decode, encode};
use super::decide::Stash;
use super::paired::SessionBucket;
use super::part::Part;
use super::peers::Peers;
use super::{Counters, Engine, Settings, StateError};
use crate::detect::{Baseline, Metric};
use crate::incident::Incidents;
use crate::metric::Spread;
use crate::table::BenchmarkTable;
use crate::time::Millis;
use crate::window::{Acc, AccNow, Key, Windows, WindowsHead};

/// The layout of state records written by this version. 1 was the whole state as one value.
pub const STATE_VERSION: u32 = 2;

/// Session records per partition.
pub const SESSION_BUCKETS: u16 = 256;

/// One record of the engine's state, as [`Engine::records`] hands it out.
pub enum Record<'a> {
    /// The engine's own record (one).
    Engine(Vec<u8>),
    /// A partition's head.
    Head(i32, Vec<u8>),
    /// One bucket of a partition's sessions.
    Sessions(i32, u16, Vec<u8>),
    /// One location+CDN key of a partition.
    Key(i32, &'a Key, Vec<u8>),
}

impl Record<'_> {
    /// The record's bytes, borrowed.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Record::Engine(v) | Record::Head(_, v) | Record::Sessions(_, _, v) => v,
            Record::Key(_, _, v) => v,
        }
    }

    /// The record's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Record::Engine(v) | Record::Head(_, v) | Record::Sessions(_, _, v) => v,
            Record::Key(_, _, v) => v,
        }
    }
}

/// A key's name in a store: its location's length (2 bytes, big-endian), location, CDN.
pub fn key_id(k: &Key) -> Vec<u8> {
    let (l, c) = (k.location.as_bytes(), k.cdn.as_bytes());
    let len = u16::try_from(l.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(2 + l.len() + c.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&l[..usize::from(len)]);
    out.extend_from_slice(c);
    out
}

/// (location, CDN) of a [`key_id`].
pub fn parse_key_id(id: &[u8]) -> Result<(&str, &str), StateError> {
    let bad = || StateError::Decode(format!("state key id {id:?}"));
    let (len, rest) = id.split_first_chunk::<2>().ok_or_else(bad)?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err(bad());
    }
    let (l, c) = rest.split_at(len);
    Ok((
        std::str::from_utf8(l).map_err(|_| bad())?,
        std::str::from_utf8(c).map_err(|_| bad())?,
    ))
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One key's state in its partition.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyOf<A, B, S, R> {
    /// Open windows' accumulators, by window start.
    #[serde(rename = "o", default, skip_serializing_if = "Vec::is_empty")]
    open: Vec<(Millis, A)>,
    /// Learned offsets from the benchmark, per metric.
    #[serde(rename = "b", default, skip_serializing_if = "Vec::is_empty")]
    baselines: Vec<(Metric, B)>,
    /// Own levels, per metric.
    #[serde(rename = "l", default, skip_serializing_if = "Vec::is_empty")]
    levels: Vec<(Metric, B)>,
    /// Learned spreads, per metric.
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    spreads: Vec<(Metric, S)>,
    /// Its recent small windows.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    runs: Option<R>,
    #[serde(rename = "x", default, skip_serializing_if = "is_false")]
    suspect: bool,
    #[serde(rename = "h", default, skip_serializing_if = "is_false")]
    held: bool,
}

impl<A, B, S, R> Default for KeyOf<A, B, S, R> {
    fn default() -> Self {
        KeyOf {
            open: Vec::new(),
            baselines: Vec::new(),
            levels: Vec::new(),
            spreads: Vec::new(),
            runs: None,
            suspect: false,
            held: false,
        }
    }
}

type KeyRef<'a> = KeyOf<&'a Acc, &'a Baseline, &'a Spread, &'a VecDeque<(Millis, Acc)>>;
// Decoded with the current layout's accumulator only (see [`AccNow`]).
type KeyOwned = KeyOf<AccNow, Baseline, Spread, VecDeque<(Millis, AccNow)>>;

/// A partition's head: what is not any one key's.
#[derive(serde::Serialize, serde::Deserialize)]
struct HeadOf<W, I> {
    windows: W,
    incidents: I,
    decided_until: Millis,
}

/// The engine's own record.
#[derive(serde::Serialize, serde::Deserialize)]
struct EngineOf<Stashes, Inc, Pe, Count> {
    version: u32,
    shape: (Millis, Millis),
    stash: Stashes,
    decided_until: Millis,
    incidents: Inc,
    #[serde(default)]
    peers: Option<Pe>,
    counters: Count,
    closes_since_prune: u32,
}

/// Only the version of an engine record (of any layout).
#[derive(serde::Deserialize)]
struct VersionOnly {
    #[serde(default)]
    version: u32,
}

impl Part {
    /// Each key's state, borrowed, with its parts in a stable order.
    fn key_states(&self) -> crate::hash::FastMap<&Key, KeyRef<'_>> {
        let mut out: crate::hash::FastMap<&Key, KeyRef<'_>> = Default::default();
        for (start, k, a) in self.windows.accs() {
            out.entry(k).or_default().open.push((start, a));
        }
        for ((k, m), b) in &self.baselines {
            out.entry(k).or_default().baselines.push((*m, b));
        }
        for ((k, m), b) in &self.levels {
            out.entry(k).or_default().levels.push((*m, b));
        }
        for ((k, m), s) in &self.spreads {
            out.entry(k).or_default().spreads.push((*m, s));
        }
        for (k, r) in &self.runs.keys {
            out.entry(k).or_default().runs = Some(r);
        }
        for k in &self.suspects {
            out.entry(k).or_default().suspect = true;
        }
        for k in &self.held {
            out.entry(k).or_default().held = true;
        }
        for s in out.values_mut() {
            s.baselines.sort_unstable_by_key(|(m, _)| *m);
            s.levels.sort_unstable_by_key(|(m, _)| *m);
            s.spreads.sort_unstable_by_key(|(m, _)| *m);
        }
        out
    }

    /// A part from its head, without keys or sessions yet.
    fn from_head(head: HeadOf<WindowsHead, Incidents>) -> Part {
        Part {
            windows: Windows::from_head(head.windows),
            baselines: Default::default(),
            levels: Default::default(),
            volumes: Default::default(),
            spreads: Default::default(),
            suspects: Default::default(),
            held: Default::default(),
            runs: Default::default(),
            sessions: Default::default(),
            incidents: head.incidents,
            decided_until: head.decided_until,
            learned_bound: None,
        }
    }

    /// Puts back one key's decoded record.
    fn put_key(&mut self, k: DecodedKey) {
        let key = self.windows.key(&k.location, &k.cdn);
        let s = k.state;
        for (start, a) in s.open {
            self.windows.put_acc(start, key.clone(), a.into());
        }
        for (m, b) in s.baselines {
            self.baselines.insert((key.clone(), m), b);
        }
        for (m, b) in s.levels {
            self.levels.insert((key.clone(), m), b);
        }
        for (m, sp) in s.spreads {
            self.spreads.insert((key.clone(), m), sp);
        }
        if let Some(r) = s.runs {
            let r = r.into_iter().map(|(start, a)| (start, a.into())).collect();
            self.runs.keys.insert(key.clone(), r);
        }
        if s.suspect {
            self.suspects.insert(key.clone());
        }
        if s.held {
            self.held.insert(key);
        }
    }
}

/// One key's record, decoded (on any thread: [`DecodedKey::decode`]) and not yet put back
/// ([`Restoring::put_decoded`]).
pub struct DecodedKey {
    location: String,
    cdn: String,
    state: KeyOwned,
}

impl DecodedKey {
    /// Decodes a key's record (its id: [`key_id`]).
    pub fn decode(id: &[u8], bytes: &[u8]) -> Result<DecodedKey, StateError> {
        let (location, cdn) = parse_key_id(id)?;
        Ok(DecodedKey {
            location: location.to_string(),
            cdn: cdn.to_string(),
            state: decode(bytes)?,
        })
    }
}

/// An engine being put back together from its records ([`Engine::records`]): the engine's
/// record and every partition's head first, then keys and session buckets in any order.
pub struct Restoring {
    engine: Engine,
}

impl Restoring {
    /// One key's record of `partition` (its id: [`key_id`]).
    pub fn put_key(&mut self, partition: i32, id: &[u8], bytes: &[u8]) -> Result<(), StateError> {
        let k = DecodedKey::decode(id, bytes)?;
        self.put_decoded(partition, k)
    }

    /// One key's record of `partition`, decoded.
    pub fn put_decoded(&mut self, partition: i32, k: DecodedKey) -> Result<(), StateError> {
        self.part(partition)?.put_key(k);
        Ok(())
    }

    /// One session bucket of `partition`.
    pub fn put_sessions(&mut self, partition: i32, bytes: &[u8]) -> Result<(), StateError> {
        let b: SessionBucket = decode(bytes)?;
        self.part(partition)?.sessions.put_bucket(b);
        Ok(())
    }

    fn part(&mut self, partition: i32) -> Result<&mut Part, StateError> {
        self.engine.parts.get_mut(&partition).ok_or_else(|| {
            StateError::Decode(format!(
                "a record of partition {partition}, which has no head"
            ))
        })
    }

    /// Gives up: the benchmark table back.
    pub fn abandon(self) -> BenchmarkTable {
        self.engine.into_table()
    }

    /// The engine, ready to go on.
    pub fn finish(mut self) -> Engine {
        let max_keys = self.engine.cfg.window.max_keys;
        for part in self.engine.parts.values_mut() {
            part.settle(max_keys);
        }
        self.engine.ready = true;
        self.engine
    }
}

impl Engine {
    /// The engine's state as records (not the benchmark table, which has its own cache),
    /// handed to `f` one by one: the engine's own, then per partition its head, its session
    /// buckets and its keys.
    pub fn records(&self, mut f: impl FnMut(Record<'_>)) -> Result<(), StateError> {
        f(Record::Engine(encode(&EngineOf {
            version: STATE_VERSION,
            shape: (self.cfg.window_ms(), self.cfg.lateness_ms()),
            stash: &self.stash,
            decided_until: self.decided_until,
            incidents: &self.incidents,
            peers: self.peers.as_ref(),
            counters: &self.counters,
            closes_since_prune: self.closes_since_prune,
        })?));
        for (p, part) in &self.parts {
            f(Record::Head(
                *p,
                encode(&HeadOf {
                    windows: part.windows.head(),
                    incidents: &part.incidents,
                    decided_until: part.decided_until,
                })?,
            ));
            for (i, b) in part.sessions.buckets(SESSION_BUCKETS).iter().enumerate() {
                f(Record::Sessions(*p, i as u16, encode(b)?));
            }
            encode_keys(*p, part.key_states(), &mut f)?;
        }
        Ok(())
    }

    /// Starts putting an engine back together from its own record and its partitions'
    /// heads. Fails if a record does not decode, is of another [`STATE_VERSION`], or was
    /// written with another window size or lateness. On failure the table is handed back.
    // The error is built once, at start-up: its size costs nothing.
    #[allow(clippy::result_large_err)]
    pub fn restoring(
        cfg: impl Into<Settings>,
        table: BenchmarkTable,
        engine: &[u8],
        heads: &[(i32, Vec<u8>)],
    ) -> Result<Restoring, (StateError, BenchmarkTable)> {
        type Own = EngineOf<BTreeMap<Millis, BTreeMap<i32, Stash>>, Incidents, Peers, Counters>;
        let cfg: Settings = cfg.into();
        let version = match decode::<VersionOnly>(engine) {
            Ok(v) => v.version,
            Err(e) => return Err((e, table)),
        };
        if version != STATE_VERSION {
            return Err((
                StateError::Version {
                    found: version,
                    supported: STATE_VERSION,
                },
                table,
            ));
        }
        let s: Own = match decode(engine) {
            Ok(s) => s,
            Err(e) => return Err((e, table)),
        };
        if s.shape != (cfg.window_ms(), cfg.lateness_ms()) {
            return Err((StateError::Shape, table));
        }
        let mut parts = BTreeMap::new();
        for (p, bytes) in heads {
            match decode::<HeadOf<WindowsHead, Incidents>>(bytes) {
                Ok(h) => parts.insert(*p, Part::from_head(h)),
                Err(e) => return Err((e, table)),
            };
        }
        let mut e = Self::with_table(cfg, table);
        e.parts = parts;
        e.stash = s.stash;
        e.decided_until = s.decided_until;
        e.incidents = s.incidents;
        e.peers = s.peers;
        e.counters = s.counters;
        e.closes_since_prune = s.closes_since_prune;
        Ok(Restoring { engine: e })
    }
}

/// A partition's head as its changelog record carries it, read back.
type ShareHead = super::codec::ShareOf<HeadOf<WindowsHead, Incidents>, Stash, Incidents, Peers>;

impl Engine {
    /// One partition's state as records, for the changelog (one record per key, so that only
    /// the changed ones are written and none grows with the partition): first its head
    /// (`Record::Head`: the head with the verdicts stashed for it and, on partition 0 of a
    /// peered engine, the CDN-wide stage), then its session buckets and its keys. False if
    /// this engine has nothing for the partition.
    pub fn partition_records(
        &self,
        partition: i32,
        mut f: impl FnMut(Record<'_>),
    ) -> Result<bool, StateError> {
        let (Some(part), Some(head)) =
            (self.parts.get(&partition), self.partition_head(partition)?)
        else {
            return Ok(false);
        };
        f(Record::Head(partition, head));
        for (i, b) in part.sessions.buckets(SESSION_BUCKETS).iter().enumerate() {
            f(Record::Sessions(partition, i as u16, encode(b)?));
        }
        encode_keys(partition, part.key_states(), &mut f)?;
        Ok(true)
    }

    /// A partition's head as its changelog record carries it (the head with the verdicts
    /// stashed for it and, on partition 0 of a peered engine, the CDN-wide stage); `None` if
    /// this engine has nothing for the partition.
    pub fn partition_head(&self, partition: i32) -> Result<Option<Vec<u8>>, StateError> {
        let Some(part) = self.parts.get(&partition) else {
            return Ok(None);
        };
        let head = HeadOf {
            windows: part.windows.head(),
            incidents: &part.incidents,
            decided_until: part.decided_until,
        };
        encode(&self.share_of(partition, head)).map(Some)
    }

    /// Takes a partition over from its records ([`Engine::partition_records`], taken
    /// elsewhere): its head, session buckets and keys (id: [`key_id`], record), replacing
    /// whatever this engine had for it. Everything is decoded (the keys on every core) before
    /// anything is replaced: on error the engine is as it was.
    pub fn absorb_records(
        &mut self,
        partition: i32,
        head: &[u8],
        sessions: &[Vec<u8>],
        keys: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), StateError> {
        let share: ShareHead = decode(head)?;
        self.check_share(&share, partition)?;
        let mut part = Part::from_head(share.part);
        for b in sessions {
            part.sessions.put_bucket(decode(b)?);
        }
        for k in decode_keys(keys)? {
            part.put_key(k);
        }
        self.take_part(partition, part, share.stash);
        Ok(())
    }
}

/// Keys encoded together: a batch is split over every core, then handed out in order.
const ENCODE_BATCH: usize = 8_192;

/// Under this many keys a batch is encoded on this thread alone.
const ENCODE_ALONE: usize = 1_024;

/// Partition `p`'s keys' records, encoded on every core (most of a checkpoint's time on the
/// engine's thread is encoding: a million keys' records are over a gigabyte of CBOR), handed
/// to `f` on this thread.
fn encode_keys(
    p: i32,
    states: crate::hash::FastMap<&Key, KeyRef<'_>>,
    f: &mut impl FnMut(Record<'_>),
) -> Result<(), StateError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let states: Vec<(&Key, KeyRef<'_>)> = states.into_iter().collect();
    let encode_all = |c: &[(&Key, KeyRef<'_>)]| -> Result<Vec<Vec<u8>>, StateError> {
        c.iter().map(|(_, s)| encode(s)).collect()
    };
    for batch in states.chunks(ENCODE_BATCH) {
        let encoded = if threads == 1 || batch.len() < ENCODE_ALONE {
            vec![encode_all(batch)]
        } else {
            let per = batch.len().div_ceil(threads);
            std::thread::scope(|s| {
                let mut parts = batch.chunks(per);
                let first = parts.next().unwrap_or_default();
                let handles: Vec<_> = parts.map(|c| s.spawn(move || encode_all(c))).collect();
                let mut out = vec![encode_all(first)];
                for h in handles {
                    out.push(h.join().unwrap_or_else(|_| {
                        Err(StateError::Encode("an encoding thread panicked".into()))
                    }));
                }
                out
            })
        };
        let mut keys = batch.iter().map(|(k, _)| *k);
        for part in encoded {
            // The part's records first: zip pulls from its first iterator first.
            for (bytes, k) in part?.into_iter().zip(keys.by_ref()) {
                f(Record::Key(p, k, bytes));
            }
        }
    }
    Ok(())
}

/// Keys' records decoded on every core.
fn decode_keys(keys: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<DecodedKey>, StateError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let per = keys.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(id, v)| DecodedKey::decode(id, v))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for h in handles {
            let decoded = h
                .join()
                .map_err(|_| StateError::Decode("a decoding thread panicked".into()))??;
            out.extend(decoded);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::decode::Report;

    /// Keys encoded on every core in batches: each key's record is its own state's, every key
    /// once, over several batches and a part batch (a key lost at the seam between two
    /// threads' parts shows here).
    #[test]
    fn keys_encoded_on_every_core_are_each_keys_own_record() {
        const KEYS: usize = 2 * ENCODE_BATCH + 777;
        let cfg = crate::config::Config::default();
        let mut e = Engine::new(&cfg);
        e.add_partition(0);
        for k in 0..KEYS {
            let r = Report {
                throughput_kbps: Some(1_000.0 + k as f64),
                ..Report::new(format!("XX/{k}"), "cdn-a".to_string(), 1_000)
            };
            e.on_report(&r, Some((0, k as i64)));
        }
        let part = &e.parts[&0];
        let want: HashMap<Vec<u8>, Vec<u8>> = part
            .key_states()
            .into_iter()
            .map(|(k, s)| (key_id(k), encode(&s).expect("encodes")))
            .collect();
        let mut got = HashMap::new();
        e.partition_records(0, |r| {
            if let Record::Key(_, k, v) = r {
                assert!(got.insert(key_id(k), v).is_none(), "a key twice");
            }
        })
        .expect("encodes");
        assert_eq!(got.len(), KEYS);
        assert!(got == want, "a key's record is another's");
    }
}
