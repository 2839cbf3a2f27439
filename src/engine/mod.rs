//! The pure core of the pipeline: as-of join, windows, detection and incidents, with no I/O.
//!
//! The daemon, the backtest and the benchmarks all drive this same type, so the backtest runs
//! exactly the daemon's detection.
//!
//! Work is split by source partition, as Kafka Streams splits it into tasks. Each partition
//! has a [`part::Part`]: its own windows and watermark, and what is normal for its keys. A
//! partition closes a window when its own event time has passed it, and tests that window's
//! keys as one family ([`assess`]: the multiple-test correction runs per partition and
//! window). Everything in a part therefore depends only on that partition's records, in
//! their order, not on how reads of several partitions interleave (a catch-up after a restart
//! reads them at other relative speeds than a live run). The verdicts wait in a stash until
//! the [`frontier`] says every partition that holds windows back has closed the window; then
//! it is decided ([`decide`]): CDN-wide grouping over all partitions first, then each
//! partition's own incidents, which live in its part. A part is therefore the whole state of
//! a partition: [`Engine::partition_records`] hands it to another instance as records (the
//! changelog, [`records`]). With the partitions spread over instances the CDN-wide stage runs on every
//! partition's summaries ([`peers`]).
//!
//! | file | concern |
//! |---|---|
//! | `part.rs` | one partition's task: record, test a closed window, learn, its own incidents |
//! | `assess.rs` | the window test, a pure function of keys, references and tuning |
//! | `frontier.rs` | when a window may be decided (alone or peered); idle and revoked partitions |
//! | `decide.rs` | the stash and the cross-partition decision, roll-up to CDN and location |
//! | `peers.rs` | the summaries protocol of the CDN-wide stage across instances |
//! | `codec.rs` | checkpoint, changelog share and summary bytes |
//! | `records.rs` | the state as a store's records: one per key, per partition, per session bucket (the checkpoint's and the changelog's) |
//! | `quality.rs` | the viewer-quality view of the last window |

mod assess;
mod codec;
mod decide;
mod frontier;
mod paired;
mod part;
mod peers;
mod quality;
mod records;
mod runs;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use crate::decode::Report;
use crate::detect::DetectConfig;
use crate::incident::evidence::Evidence;
use crate::incident::{Alert, Incidents};
use crate::table::{BenchmarkTable, Expected};
use crate::time::Millis;
use crate::window::Recorded;
use crate::window::WindowConfig;

use decide::Stash;
use frontier::Frontier;
use part::Part;
use peers::Peers;
pub use quality::{KeyQuality, Quality, WORST_KEYS};
pub use records::{DecodedKey, Record, Restoring, STATE_VERSION, key_id, parse_key_id};

/// Plain counters of what the engine did; the shell exports them as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub accepted: u64,
    pub late: u64,
    pub key_cap: u64,
    pub join_hits: u64,
    pub join_misses: u64,
    pub windows_closed: u64,
    pub tests: u64,
    pub discoveries: u64,
    pub alerts: u64,
    /// Keys whose learned normals were evicted to stay under `window.max_learned_keys`.
    #[serde(default)]
    pub learned_evicted: u64,
    /// Sessions whose own levels were evicted to stay under `window.max_sessions`.
    #[serde(default)]
    pub sessions_evicted: u64,
    /// Benchmark keys evicted to stay under `window.max_benchmark_keys` (since start).
    #[serde(default, skip_serializing)]
    pub benchmark_evicted: u64,
}

/// Why state bytes (a checkpoint, a changelog share, a summary) could not be used. None of
/// these is helped by a retry: the bytes are what they are.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("encoding state: {0}")]
    Encode(String),
    #[error("decoding state: {0}")]
    Decode(String),
    #[error("window.size or window.allowed_lateness changed")]
    Shape,
    #[error("the share is partition {share}'s, not {partition}'s")]
    WrongShare { share: i32, partition: i32 },
    #[error("state of version {found}; this version reads {supported}")]
    Version { found: u32, supported: u32 },
    #[error("summary of partition {partition}, the reports topic has {partitions}")]
    UnknownPartition { partition: i32, partitions: i32 },
}

/// How many closed windows of benchmark history to keep behind the watermark.
const TABLE_HISTORY_WINDOWS: i64 = 120;

/// Most empty windows decided at once after a gap in all input.
const MAX_GAP_WINDOWS: i64 = 120;

/// What the engine needs from the config: the window shape and the detection tuning, never a
/// receiver's secrets (`&Config` converts: `Engine::new(&cfg)`).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub window: WindowConfig,
    pub detect: DetectConfig,
}

impl From<&Settings> for Settings {
    fn from(s: &Settings) -> Self {
        s.clone()
    }
}

impl Settings {
    pub fn window_ms(&self) -> Millis {
        self.window.size_ms()
    }

    pub fn lateness_ms(&self) -> Millis {
        self.window.lateness_ms()
    }
}

/// Event times beyond this (about 73 million years from 1970, either way) are refused by
/// [`Engine::on_report`]: window arithmetic on them would overflow.
pub const EVENT_TIME_LIMIT: Millis = 1 << 61;

/// Most evidence points handed out at once (a close of many windows with many incidents).
pub const MAX_EVIDENCE: usize = 100_000;

pub struct Engine {
    cfg: Settings,
    table: BenchmarkTable,
    parts: BTreeMap<i32, Part>,
    /// Which partitions hold the decision of windows back.
    frontier: Frontier,
    /// Verdicts per window start and partition, waiting for the slower partitions.
    stash: BTreeMap<Millis, BTreeMap<i32, Stash>>,
    /// Every window ending at or before this has been decided.
    decided_until: Millis,
    /// Whether a record may have made a window closable (cheap check per report).
    ready: bool,
    /// Windows decided again for partitions catching up (not in `counters`: a window counts
    /// once there).
    redecided: u64,
    /// CDN-wide incidents (the others live in the partitions' parts).
    incidents: Incidents,
    /// With the partitions spread over several instances: every partition's progress and
    /// bad keys, from the summaries topic. The CDN-wide stage then runs on them (the same
    /// way on every instance); `None`: this instance alone decides over the parts it holds.
    peers: Option<Peers>,
    counters: Counters,
    closes_since_prune: u32,
    /// Viewer quality of the last closed window: totals and the worst keys.
    quality: Quality,
    /// The windows tested on firing incidents, until taken; `None`: not kept (backtests).
    evidence: Option<Vec<Evidence>>,
}

impl Engine {
    pub fn new(cfg: impl Into<Settings>) -> Self {
        Self::with_table(cfg, BenchmarkTable::new())
    }

    /// Starts from a benchmark table loaded elsewhere (the RocksDB cache).
    pub fn with_table(cfg: impl Into<Settings>, mut table: BenchmarkTable) -> Self {
        let cfg: Settings = cfg.into();
        table.set_max_keys(cfg.window.max_benchmark_keys);
        Self {
            cfg,
            table,
            parts: BTreeMap::new(),
            frontier: Frontier::default(),
            stash: BTreeMap::new(),
            decided_until: Millis::MIN,
            ready: false,
            redecided: 0,
            incidents: Incidents::new(),
            peers: None,
            counters: Counters::default(),
            closes_since_prune: 0,
            quality: Quality::default(),
            evidence: None,
        }
    }

    /// Keeps the windows tested on firing incidents for [`Engine::take_evidence`] (the
    /// daemon's evidence pages).
    pub fn keep_evidence(&mut self) {
        self.evidence.get_or_insert_with(Vec::new);
    }

    /// The windows tested on firing incidents since the last call; the newest
    /// [`MAX_EVIDENCE`] if more were left.
    pub fn take_evidence(&mut self) -> Vec<Evidence> {
        let Some(kept) = &mut self.evidence else {
            return Vec::new();
        };
        let mut out = std::mem::take(kept);
        if out.len() > MAX_EVIDENCE {
            out.drain(..out.len() - MAX_EVIDENCE);
        }
        out
    }

    /// The benchmark table, giving up the rest.
    pub fn into_table(self) -> BenchmarkTable {
        self.table
    }

    /// Replaces the detection rules (SIGHUP); open windows and incidents carry on.
    pub fn set_detect(&mut self, detect: DetectConfig) {
        self.cfg.detect = detect;
    }

    /// Viewer quality of the last closed window.
    pub fn quality(&self) -> &Quality {
        &self.quality
    }

    pub fn counters(&self) -> Counters {
        Counters {
            benchmark_evicted: self.table.evicted(),
            ..self.counters
        }
    }

    /// How many times a window was decided, including again for partitions catching up:
    /// the state changed when it moves.
    pub fn decisions(&self) -> u64 {
        self.counters.windows_closed + self.redecided
    }

    pub fn table(&self) -> &BenchmarkTable {
        &self.table
    }

    /// Benchmark versions the table let go of (pruned, evicted) since the last call, for the
    /// cache behind it to delete too.
    pub fn take_table_removals(&mut self) -> Vec<crate::table::Removed> {
        self.table.take_removed()
    }

    /// Learned normals held over all partitions (one entry per key and metric that learns;
    /// cheap, for the gauge).
    pub fn learned_entries(&self) -> usize {
        self.parts.values().map(Part::learned_entries).sum()
    }

    /// Keys with learned normals in each partition (walks them all: for tests and tools).
    pub fn learned_keys(&self) -> BTreeMap<i32, usize> {
        self.parts
            .iter()
            .map(|(p, part)| (*p, part.learned_keys()))
            .collect()
    }

    /// Open windows and keys over all of them, summed over the partitions.
    pub fn open_stats(&self) -> (usize, usize) {
        self.parts
            .values()
            .map(|p| p.windows.open_stats())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Windows of small keys held for their runs (at most `detect.run_windows - 1` per key
    /// of a recent window: bounded by `window.max_keys`).
    pub fn run_windows(&self) -> usize {
        self.parts.values().map(Part::run_windows).sum()
    }

    /// Sessions whose own levels are held, over all partitions (at most
    /// `window.max_sessions` per partition).
    pub fn session_levels(&self) -> usize {
        self.parts.values().map(Part::session_levels).sum()
    }

    pub fn firing(&self) -> usize {
        // Peered, every instance holds the CDN-wide incidents; partition 0's owner counts them.
        let cdn = match &self.peers {
            Some(_) if !self.has_partition(0) => 0,
            _ => self.incidents.firing(),
        };
        cdn + self
            .parts
            .values()
            .map(|p| p.incidents.firing())
            .sum::<usize>()
    }

    /// The window size, ms.
    pub fn window_ms(&self) -> Millis {
        self.cfg.window_ms()
    }

    /// Whether the CDN-wide stage is shared with other instances.
    pub fn is_peered(&self) -> bool {
        self.peers.is_some()
    }

    /// The last firing alert of each incident firing on `partition`'s locations.
    pub fn firing_alerts_of(&self, partition: i32) -> Vec<Alert> {
        self.parts
            .get(&partition)
            .map_or_else(Vec::new, |p| p.incidents.firing_alerts())
    }

    /// The last firing alert of each CDN-wide (or CDN-in-a-region) incident firing, where this
    /// instance speaks for them: peered, partition 0's owner does.
    pub fn cdn_firing_alerts(&self) -> Vec<Alert> {
        match &self.peers {
            Some(_) if !self.has_partition(0) => Vec::new(),
            _ => self.incidents.firing_alerts(),
        }
    }

    /// Applies a benchmark row (or a tombstone, `None`) valid from `ts`.
    pub fn on_benchmark(&mut self, location: &str, cdn: &str, ts: Millis, row: Option<Expected>) {
        self.table.upsert(location, cdn, ts, row);
    }

    /// Joins a report with the benchmark valid at its event time and folds it into its window.
    pub fn on_report(&mut self, r: &Report, source: Option<(i32, i64)>) -> Recorded {
        // Entry points bound event time to the clock (`WindowConfig::check_event_time`); this
        // keeps window arithmetic from overflowing whatever the caller (counted as late).
        if !(-EVENT_TIME_LIMIT..=EVENT_TIME_LIMIT).contains(&r.ts) {
            self.counters.late += 1;
            return Recorded::Late;
        }
        let p = source.map_or(-1, |s| s.0);
        if self.frontier.wake(p) {
            self.ready = true;
        }
        let expected = self.table.join(&r.location, &r.cdn, r.ts);
        let joined = expected.is_some();
        let part = part_entry(&mut self.parts, &self.cfg, p);
        let out = part.record(r, expected, source);
        self.ready |= part.windows.has_ready();
        match out {
            Recorded::Accepted => {
                self.counters.accepted += 1;
                if joined {
                    self.counters.join_hits += 1;
                } else {
                    self.counters.join_misses += 1;
                }
            }
            Recorded::Late => self.counters.late += 1,
            Recorded::KeyCapExceeded => self.counters.key_cap += 1,
        }
        out
    }

    /// The slowest partition's watermark, over those that hold windows back; with every
    /// owned partition idle, the newest. `None` while one of them has sent nothing yet, or
    /// with none owned.
    pub fn watermark(&self) -> Option<Millis> {
        self.frontier.watermark(&self.parts)
    }

    /// Registers a source partition this instance now owns; windows wait for its input.
    pub fn add_partition(&mut self, partition: i32) {
        self.frontier.own(partition);
        part_entry(&mut self.parts, &self.cfg, partition);
    }

    /// Registered partitions that hold windows back and have not delivered a record yet.
    pub fn silent_partitions(&self) -> Vec<i32> {
        self.parts
            .iter()
            .filter(|(p, part)| !self.frontier.is_idle(**p) && part.windows.newest().is_none())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Per registered partition: newest event time (if any) and whether it is idle.
    pub fn partition_state(&self) -> BTreeMap<i32, (Option<Millis>, bool)> {
        self.parts
            .iter()
            .map(|(p, part)| (*p, (part.windows.newest(), self.frontier.is_idle(*p))))
            .collect()
    }

    pub fn has_partition(&self, partition: i32) -> bool {
        self.parts.contains_key(&partition) && !self.frontier.is_revoked(partition)
    }

    /// A source partition without input for a while: stop waiting for it.
    pub fn set_partition_idle(&mut self, partition: i32) {
        if self.parts.contains_key(&partition) && self.frontier.set_idle(partition) {
            self.ready = true;
        }
    }

    /// A source partition this instance no longer owns: windows stop waiting for it; its
    /// state stays (it may come back, or its records may still be in flight).
    pub fn remove_partition(&mut self, partition: i32) {
        if self.parts.contains_key(&partition) {
            self.frontier.revoke(partition);
            self.ready = true;
        }
    }

    /// Forgets a partition's state (it was handed to another instance).
    pub fn drop_partition(&mut self, partition: i32) {
        self.parts.remove(&partition);
        self.frontier.forget(partition);
        for w in self.stash.values_mut() {
            w.remove(&partition);
        }
        self.stash.retain(|_, w| !w.is_empty());
        if let Some(peers) = &mut self.peers {
            peers.forget_partition(partition);
        }
        self.ready = true;
    }

    /// Partitions this engine holds state for (owned, idle or revoked).
    pub fn partitions(&self) -> Vec<i32> {
        self.parts.keys().copied().collect()
    }

    /// The partition whose state knows `location` (its keys' history), if any.
    /// The locations the given partitions hold history of (one walk over their keys).
    pub fn locations_of(
        &self,
        partitions: &std::collections::HashSet<i32>,
    ) -> std::collections::HashSet<&str> {
        self.parts
            .iter()
            .filter(|(p, _)| partitions.contains(p))
            .flat_map(|(_, part)| part.locations())
            .collect()
    }

    pub fn home_of(&self, location: &str) -> Option<i32> {
        self.parts
            .iter()
            .find(|(_, part)| part.knows_location(location))
            .map(|(p, _)| *p)
    }

    /// Whether a window may be ready to close or decide (cheap).
    pub fn has_ready(&self) -> bool {
        self.ready
    }

    /// Closes every window the partitions' watermarks have passed and decides those every
    /// partition has closed; returns the alerts they caused.
    pub fn close_ready(&mut self) -> Vec<Alert> {
        self.ready = false;
        let mut closed = Vec::new();
        for (p, part) in self.parts.iter_mut() {
            if part.windows.has_ready() {
                closed.push((*p, part.windows.close_ready()));
            }
        }
        self.test_closed(closed)
    }

    /// Closes and decides every window ending at or before `watermark` in every partition
    /// (used when input is idle, and to flush at the end of a backtest).
    pub fn close_until(&mut self, watermark: Millis) -> Vec<Alert> {
        let mut closed = Vec::new();
        for (p, part) in self.parts.iter_mut() {
            closed.push((*p, part.windows.close_until(watermark)));
        }
        self.test_closed(closed)
    }

    fn test_closed(&mut self, closed: Vec<(i32, Vec<crate::window::Closed>)>) -> Vec<Alert> {
        for (p, windows) in closed {
            for w in windows {
                self.stage_one(p, w);
            }
        }
        self.decide()
    }

    /// Lowest source offset per partition still needed by an open or undecided window.
    pub fn pending_offsets(&self) -> HashMap<i32, i64> {
        let mut out: HashMap<i32, i64> = HashMap::new();
        let stashed = self
            .stash
            .values()
            .flat_map(|w| w.values())
            .flat_map(|s| s.min_offsets.iter());
        for (p, o) in self
            .parts
            .values()
            .flat_map(|part| part.windows.pending_offsets())
            .chain(stashed.map(|(p, o)| (*p, *o)))
        {
            let m = out.entry(p).or_insert(o);
            *m = (*m).min(o);
        }
        out
    }
}

/// `partition`'s part in `parts`, created if new. A new part starts from nothing: its first
/// windows may be older than what the others have decided (a partition taken over without
/// state replays from its committed offset); they are decided for its own incidents as it
/// catches up, holding the others' decisions back meanwhile. (A free function: the caller
/// holds a borrow of the table while it records.)
fn part_entry<'a>(
    parts: &'a mut BTreeMap<i32, Part>,
    cfg: &Settings,
    partition: i32,
) -> &'a mut Part {
    parts.entry(partition).or_insert_with(|| Part::new(cfg))
}
