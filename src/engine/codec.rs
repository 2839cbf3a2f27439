//! The engine's state as bytes (CBOR): the whole of it for a checkpoint, one partition's share
//! for the changelog (another instance takes the partition over from it), and the summaries
//! of the peered CDN-wide stage. Each layout is one generic struct, written from borrowed
//! fields and read back into owned ones, so the two can not drift apart.

use std::collections::BTreeMap;

use super::Settings;
use super::decide::Stash;
use super::part::Part;
use super::peers::Peers;
use super::{Counters, Engine, StateError};
use crate::incident::Incidents;
use crate::table::BenchmarkTable;
use crate::time::Millis;

pub(super) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StateError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| StateError::Encode(e.to_string()))?;
    Ok(out)
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StateError> {
    ciborium::from_reader(bytes).map_err(|e| StateError::Decode(e.to_string()))
}

/// Window size and allowed lateness: state taken with another shape does not line up.
type Shape = (Millis, Millis);

fn shape(cfg: &Settings) -> Shape {
    (cfg.window_ms(), cfg.lateness_ms())
}

fn check_shape(cfg: &Settings, got: Shape) -> Result<(), StateError> {
    if got == shape(cfg) {
        Ok(())
    } else {
        Err(StateError::Shape)
    }
}

/// A checkpoint: every part, the stash, the CDN-wide incidents and stage, the counters.
#[derive(serde::Serialize, serde::Deserialize)]
struct StateOf<Parts, Stashes, Inc, Pe, Count> {
    shape: Shape,
    parts: Parts,
    stash: Stashes,
    decided_until: Millis,
    incidents: Inc,
    #[serde(default)]
    peers: Option<Pe>,
    counters: Count,
    closes_since_prune: u32,
}

/// One partition's share of the state, as another instance takes it over.
/// `part` is the whole [`Part`], or only its head where its keys and sessions are records of
/// their own (the changelog's records, [`Engine::partition_records`]).
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct ShareOf<P, S, Inc, Pe> {
    pub(super) shape: Shape,
    pub(super) partition: i32,
    pub(super) part: P,
    pub(super) stash: BTreeMap<Millis, S>,
    /// Partition 0's share also carries the CDN-wide stage (see [`Peers`]).
    #[serde(default)]
    pub(super) cdn: Option<CdnOf<Inc, Pe>>,
}

/// The CDN-wide stage as partition 0's share carries it: a new instance starts its own
/// from it, then reads the summaries topic on from `peers.next`.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct CdnOf<Inc, Pe> {
    decided_until: Millis,
    incidents: Inc,
    peers: Pe,
}

type Share = ShareOf<Part, Stash, Incidents, Peers>;

impl Engine {
    /// The engine's state (windows, stashed verdicts, incidents, learned baselines, counters;
    /// not the benchmark table, which has its own cache) as CBOR, for a checkpoint.
    pub fn snapshot(&self) -> Result<Vec<u8>, StateError> {
        encode(&StateOf {
            shape: shape(&self.cfg),
            parts: &self.parts,
            stash: &self.stash,
            decided_until: self.decided_until,
            incidents: &self.incidents,
            peers: self.peers.as_ref(),
            counters: &self.counters,
            closes_since_prune: self.closes_since_prune,
        })
    }

    /// An engine from a [`Engine::snapshot`]. Fails if the bytes do not decode or were taken
    /// with another window size or lateness (their windows would not line up).
    /// On failure the table is handed back.
    // The error is built once, at start-up: its size costs nothing.
    #[allow(clippy::result_large_err)]
    pub fn restore(
        cfg: impl Into<Settings>,
        table: BenchmarkTable,
        bytes: &[u8],
    ) -> Result<Self, (StateError, BenchmarkTable)> {
        type State = StateOf<
            BTreeMap<i32, Part>,
            BTreeMap<Millis, BTreeMap<i32, Stash>>,
            Incidents,
            Peers,
            Counters,
        >;
        let cfg: Settings = cfg.into();
        let s: State = match decode(bytes) {
            Ok(s) => s,
            Err(e) => return Err((e, table)),
        };
        if let Err(e) = check_shape(&cfg, s.shape) {
            return Err((e, table));
        }
        let max_keys = cfg.window.max_keys;
        let mut e = Self::with_table(cfg, table);
        e.parts = s.parts;
        for part in e.parts.values_mut() {
            part.settle(max_keys);
        }
        e.stash = s.stash;
        e.decided_until = s.decided_until;
        e.incidents = s.incidents;
        e.peers = s.peers;
        e.counters = s.counters;
        e.closes_since_prune = s.closes_since_prune;
        e.ready = true;
        Ok(e)
    }

    /// One partition's whole state (windows, what is normal for its keys, its incidents and
    /// its undecided verdicts) as CBOR, for another instance to take the partition over.
    /// `None` if this engine has nothing for it.
    pub fn export_partition(&self, partition: i32) -> Result<Option<Vec<u8>>, StateError> {
        let Some(part) = self.parts.get(&partition) else {
            return Ok(None);
        };
        encode(&self.share_of(partition, part)).map(Some)
    }

    /// A partition's share around `part` (all of it, or its head): the verdicts stashed for
    /// it and, on partition 0 of a peered engine, the CDN-wide stage.
    pub(super) fn share_of<P>(
        &self,
        partition: i32,
        part: P,
    ) -> ShareOf<P, &Stash, &Incidents, &Peers> {
        ShareOf {
            shape: shape(&self.cfg),
            partition,
            part,
            stash: self
                .stash
                .iter()
                .filter_map(|(start, w)| w.get(&partition).map(|s| (*start, s)))
                .collect(),
            cdn: self
                .peers
                .as_ref()
                .filter(|_| partition == 0)
                .map(|peers| CdnOf {
                    decided_until: self.decided_until,
                    incidents: &self.incidents,
                    peers,
                }),
        }
    }

    /// Takes over a partition from an [`Engine::export_partition`] taken elsewhere, replacing
    /// whatever this engine had for it. Its windows catch up on their own: the ones this
    /// engine decided already are decided again for this partition alone.
    pub fn absorb_partition(&mut self, partition: i32, bytes: &[u8]) -> Result<(), StateError> {
        let share: Share = decode(bytes)?;
        self.check_share(&share, partition)?;
        self.take_part(partition, share.part, share.stash);
        Ok(())
    }

    /// A share taken with this engine's window shape, of `partition`.
    pub(super) fn check_share<P, S, Inc, Pe>(
        &self,
        share: &ShareOf<P, S, Inc, Pe>,
        partition: i32,
    ) -> Result<(), StateError> {
        check_shape(&self.cfg, share.shape)?;
        if share.partition != partition {
            return Err(StateError::WrongShare {
                share: share.partition,
                partition,
            });
        }
        Ok(())
    }

    /// Puts a partition taken over in place of whatever this engine had for it, with the
    /// verdicts stashed for it.
    pub(super) fn take_part(
        &mut self,
        partition: i32,
        mut part: Part,
        stash: BTreeMap<Millis, Stash>,
    ) {
        self.drop_partition(partition);
        part.settle(self.cfg.window.max_keys);
        self.parts.insert(partition, part);
        for (start, s) in stash {
            self.stash.entry(start).or_default().insert(partition, s);
        }
        self.ready = true;
    }

    /// Starts the CDN-wide stage from partition 0's changelog share (an instance without a
    /// checkpoint of its own joining the others); returns the summaries offset to read on
    /// from, or `None` if the share has no CDN-wide stage.
    /// The share may be whole or a head ([`Engine::partition_records`]).
    pub fn adopt_cdn_stage(&mut self, bytes: &[u8]) -> Result<Option<i64>, StateError> {
        type AnyShare = ShareOf<serde::de::IgnoredAny, serde::de::IgnoredAny, Incidents, Peers>;
        let share: AnyShare = decode(bytes)?;
        check_shape(&self.cfg, share.shape)?;
        let (Some(cdn), Some(peers)) = (share.cdn, &mut self.peers) else {
            return Ok(None);
        };
        peers.adopt(cdn.peers);
        self.incidents = cdn.incidents;
        self.decided_until = cdn.decided_until;
        self.ready = true;
        Ok(Some(peers.next))
    }
}
