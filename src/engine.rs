//! The pure core of the pipeline: as-of join, windows, detection and incidents, with no I/O.
//!
//! The daemon, the backtest and the benchmarks all drive this same type, so the backtest runs
//! exactly the daemon's detection.
//!
//! Work is split by source partition, as Kafka Streams splits it into tasks. Each partition
//! has a [`Part`]: its own windows and watermark, and what is normal for its keys. A partition
//! closes a window when its own event time has passed it, and tests that window's keys as one
//! family (the multiple-test correction runs per partition and window). Everything in a part
//! therefore depends only on that partition's records, in their order, not on how reads of
//! several partitions interleave (a catch-up after a restart reads them at other relative
//! speeds than a live run). The verdicts wait in a stash until every partition that is not
//! idle has closed the window; then the window is decided: CDN-wide grouping over all
//! partitions first, then each partition's own incidents (location-wide parents and
//! location+CDN scopes), which live in its part. A part is therefore the whole state of a
//! partition: [`Engine::export_partition`] hands it to another instance (the changelog).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::config::Config;
use crate::decode::Report;
use crate::detect::{self, Baseline, Finding, Metric, Offsets, OwnLevels, Reference};
use crate::incident::{Alert, Incidents, Scope, Verdict};
use crate::table::{BenchmarkTable, Expected};
use crate::time::Millis;
use crate::window::{Acc, Closed, Key, Normal, Recorded, Windows};

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
}

/// How many closed windows of benchmark history to keep behind the watermark.
const TABLE_HISTORY_WINDOWS: i64 = 120;

/// Most empty windows decided at once after a gap in all input.
const MAX_GAP_WINDOWS: i64 = 120;

/// One source partition's share of the state (input without partitions is partition -1).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Part {
    windows: Windows,
    /// What is normal per key and log-scale metric, relative to the benchmark.
    baselines: HashMap<(Key, Metric), Baseline>,
    /// Own levels of keys without a benchmark (rates, or means of logs).
    levels: HashMap<(Key, Metric), Baseline>,
    /// Usual reports per window of each key, to notice silence.
    volumes: HashMap<Key, Baseline>,
    /// Keys bad in the last closed window: their reports are also counted per cohort (ASN,
    /// device) so that an incident can name the cohort behind it.
    #[serde(default)]
    suspects: HashSet<Key>,
    /// Incidents on its locations and location+CDN pairs.
    incidents: Incidents,
    /// Every window ending at or before this has been decided for its incidents.
    decided_until: Millis,
}

impl Part {
    fn new(cfg: &Config) -> Self {
        Part {
            windows: Windows::new(cfg.window_ms(), cfg.lateness_ms(), cfg.window.max_keys),
            baselines: HashMap::new(),
            levels: HashMap::new(),
            volumes: HashMap::new(),
            suspects: HashSet::new(),
            incidents: Incidents::new(),
            decided_until: Millis::MIN,
        }
    }

    /// Updates the per-key baselines from the clean windows' log-scale findings.
    fn learn(
        &mut self,
        min_n: u64,
        keys: &[(Key, Acc)],
        verdicts: &[(usize, Verdict)],
        at: Millis,
    ) {
        let mut bad = std::collections::HashSet::new();
        for (i, v) in verdicts {
            if v.bad {
                bad.insert((*i, v.finding.metric));
            }
        }
        for (i, (key, acc)) in keys.iter().enumerate() {
            let b = self.volumes.entry(key.clone()).or_default();
            let x = acc.reports as f64;
            let seen = b.last_seen;
            if bad.contains(&(i, Metric::ReportVolume)) {
                b.drift(x);
            } else {
                b.track(x, at);
            }
            if acc.reports == 0 {
                b.last_seen = seen; // silent keys age out
            }
        }
        // Keys without a benchmark learn their own level of every metric with enough samples.
        for (i, (key, acc)) in keys.iter().enumerate() {
            if acc.joined > 0 {
                continue;
            }
            let observed = [
                (
                    Metric::FailureRate,
                    acc.reports >= min_n,
                    acc.failure_rate(),
                ),
                (
                    Metric::RebufferRatio,
                    acc.reports >= min_n && acc.sum_d > 0.0,
                    acc.rebuffer_ratio(),
                ),
                (
                    Metric::ThroughputKbps,
                    acc.throughput.n >= min_n,
                    acc.throughput.mean_log(),
                ),
                (
                    Metric::StartupMs,
                    acc.startup.n >= (min_n / 3).max(10),
                    acc.startup.mean_log(),
                ),
            ];
            for (m, enough, x) in observed {
                if enough && !bad.contains(&(i, m)) {
                    self.levels
                        .entry((key.clone(), m))
                        .or_default()
                        .track(x, at);
                }
            }
        }
        for (i, v) in verdicts {
            let m = v.finding.metric;
            if v.bad
                || v.finding.reference != Reference::Benchmark
                || !matches!(m, Metric::ThroughputKbps | Metric::StartupMs)
            {
                continue;
            }
            let b = self.baselines.entry((keys[*i].0.clone(), m)).or_default();
            // The finding's expectation already includes the offset used: undo it.
            let raw = v.finding.observed.ln() - v.finding.expected.ln() + b.offset;
            b.learn(raw, at);
        }
    }

    /// Keys unseen since `horizon` forget what was normal for them.
    fn forget_before(&mut self, horizon: Millis) {
        self.baselines.retain(|_, b| b.last_seen >= horizon);
        self.levels.retain(|_, b| b.last_seen >= horizon);
        self.volumes.retain(|_, b| b.last_seen >= horizon);
    }
}

/// A partition's verdicts on one window, until every partition has closed it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Stash {
    /// Keys with findings: their verdicts, and their accumulator where a verdict is bad (the
    /// evidence of a CDN-wide or location-wide parent; empty otherwise).
    keys: Vec<Tested>,
    reports: Acc,
    key_count: usize,
    worst: Vec<KeyQuality>,
    /// Lowest source offset per partition that contributed (for safe commits).
    min_offsets: HashMap<i32, i64>,
}

/// One partition's news for the instances that share the report partitions, on the
/// summaries topic: how far it has closed windows, whether its owner stopped waiting for it
/// (idle), and the keys it found bad in the windows it closed (the evidence of CDN-wide
/// incidents; clean keys are not needed there).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Summary {
    partition: i32,
    closed_until: Millis,
    idle: bool,
    windows: Vec<(Millis, Vec<Tested>)>,
}

/// The CDN-wide stage when report partitions are spread over several instances. A CDN bad
/// at many locations is bad in many partitions, so no instance sees all of its evidence.
/// Every instance therefore publishes its partitions' [`Summary`]s to one summaries topic
/// and reads all of them back; every instance runs the CDN-wide stage on that one stream
/// (its own partitions included), so they all hold the same CDN-wide incidents: a
/// location+CDN incident finds its CDN-wide parent anywhere, and whoever owns report
/// partition 0 sends the CDN-wide alerts (as part of that partition's decisions, so they
/// move with it: its changelog share carries them).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Peers {
    /// Partitions of the reports topic: a window is decided once all have closed it.
    partitions: i32,
    /// Per partition, from its last summary: closed until, idle.
    progress: BTreeMap<i32, (Millis, bool)>,
    /// Bad keys per window and partition, until the window is decided.
    bad: BTreeMap<Millis, BTreeMap<i32, Vec<Tested>>>,
    /// CDN-wide alerts per window, sent by partition 0's owner as it decides the window.
    cdn_alerts: BTreeMap<Millis, Vec<Alert>>,
    /// Next offset to read on the summaries topic.
    next: i64,
    /// Bad keys of the windows owned partitions closed since the last summary.
    #[serde(skip)]
    outgoing: BTreeMap<i32, Vec<(Millis, Vec<Tested>)>>,
    /// What the last summary of each owned partition said (closed until, idle).
    #[serde(skip)]
    published: BTreeMap<i32, (Millis, bool)>,
    /// Summaries to send.
    #[serde(skip)]
    outbox: Vec<Summary>,
}

impl Peers {
    /// How far the partitions that hold windows back have closed (with all of them idle,
    /// the furthest): idle partitions close as far. `None` until every partition has been
    /// heard of.
    fn frontier(&self) -> Option<Millis> {
        if (self.progress.len() as i32) < self.partitions {
            return None;
        }
        let holding = self.progress.values().filter(|(_, idle)| !idle);
        let f = if holding.clone().next().is_some() {
            holding.map(|(c, _)| *c).min()
        } else {
            self.progress.values().map(|(c, _)| *c).max()
        };
        f.filter(|f| *f != Millis::MIN)
    }

    /// How far every partition has closed: windows up to here have all their evidence.
    fn decidable(&self) -> Option<Millis> {
        if (self.progress.len() as i32) < self.partitions {
            return None;
        }
        self.progress
            .values()
            .map(|(c, _)| *c)
            .min()
            .filter(|f| *f != Millis::MIN)
    }
}

/// Worst first, at most [`WORST_KEYS`] (ties broken by name, so the order does not depend on
/// which partition was merged first).
fn sort_worst(worst: &mut Vec<KeyQuality>) {
    worst.sort_by(|a, b| {
        b.badness
            .total_cmp(&a.badness)
            .then(b.reports.cmp(&a.reports))
            .then_with(|| (&a.location, &a.cdn).cmp(&(&b.location, &b.cdn)))
    });
    worst.truncate(WORST_KEYS);
}

pub struct Engine {
    cfg: Config,
    table: BenchmarkTable,
    parts: BTreeMap<i32, Part>,
    /// Partitions that do not hold the decision of windows back: idle ones (no input for a
    /// while) and revoked ones. They close as far as the others have.
    idle: BTreeSet<i32>,
    /// Partitions revoked in a rebalance (their state stays until they come back).
    revoked: BTreeSet<i32>,
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
}

#[derive(serde::Serialize)]
struct StateRef<'a> {
    shape: (Millis, Millis),
    parts: &'a BTreeMap<i32, Part>,
    stash: &'a BTreeMap<Millis, BTreeMap<i32, Stash>>,
    decided_until: Millis,
    incidents: &'a Incidents,
    peers: Option<&'a Peers>,
    counters: &'a Counters,
    closes_since_prune: u32,
}

/// One partition's share of the state, as another instance takes it over.
#[derive(serde::Serialize)]
struct ShareRef<'a> {
    shape: (Millis, Millis),
    partition: i32,
    part: &'a Part,
    stash: BTreeMap<Millis, &'a Stash>,
    /// Partition 0's share also carries the CDN-wide stage (see [`Peers`]).
    cdn: Option<CdnRef<'a>>,
}

/// The CDN-wide stage as partition 0's share carries it: a new instance starts its own
/// from it, then reads the summaries topic on from `peers.next`.
#[derive(serde::Serialize)]
struct CdnRef<'a> {
    decided_until: Millis,
    incidents: &'a Incidents,
    peers: &'a Peers,
}

#[derive(serde::Deserialize)]
struct Cdn {
    decided_until: Millis,
    incidents: Incidents,
    peers: Peers,
}

#[derive(serde::Deserialize)]
struct Share {
    shape: (Millis, Millis),
    partition: i32,
    part: Part,
    stash: BTreeMap<Millis, Stash>,
    #[serde(default)]
    cdn: Option<Cdn>,
}

#[derive(serde::Deserialize)]
struct State {
    shape: (Millis, Millis),
    parts: BTreeMap<i32, Part>,
    stash: BTreeMap<Millis, BTreeMap<i32, Stash>>,
    decided_until: Millis,
    incidents: Incidents,
    #[serde(default)]
    peers: Option<Peers>,
    counters: Counters,
    closes_since_prune: u32,
}
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyQuality {
    pub location: String,
    pub cdn: String,
    pub reports: u64,
    pub rebuffer_ratio: f64,
    pub failure_rate: f64,
    /// Geometric means (the tests work on logs).
    pub throughput_kbps: Option<f64>,
    pub startup_ms: Option<f64>,
    pub expected_rebuffer_ratio: Option<f64>,
    pub expected_failure_rate: Option<f64>,
    pub expected_throughput_kbps: Option<f64>,
    pub expected_startup_ms: Option<f64>,
    /// How much worse than expected its worst metric is (0.5 = 50 % worse); 0 when unknown.
    pub badness: f64,
}

/// Viewer quality of one closed window: totals over all keys and the `top` worst keys.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Quality {
    #[serde(with = "crate::time")]
    pub window_start: Millis,
    pub keys: usize,
    pub reports: u64,
    pub rebuffer_ratio: f64,
    pub failure_rate: f64,
    pub worst: Vec<KeyQuality>,
}

/// Most keys kept in [`Quality::worst`]: the cap on per-key metric labels.
pub const WORST_KEYS: usize = 20;

fn key_quality(key: &Key, acc: &Acc) -> KeyQuality {
    let mean = |n: u64, s: f64| (n > 0).then(|| s / n as f64);
    let geo = |l: &crate::window::LogStats| (l.n > 0).then(|| l.mean_log().exp());
    let throughput = geo(&acc.throughput);
    let startup = geo(&acc.startup);
    let exp_rebuf = (acc.exp_rebuffer_d > 0.0).then(|| acc.exp_rebuffer_wsum / acc.exp_rebuffer_d);
    let exp_fail = mean(acc.exp_error_n, acc.exp_error_sum);
    let exp_tp = mean(acc.exp_throughput_n, acc.exp_throughput_log_sum).map(f64::exp);
    let exp_su = mean(acc.exp_startup_n, acc.exp_startup_log_sum).map(f64::exp);
    let worse = |obs: Option<f64>, exp: Option<f64>, higher_is_worse: bool| match (obs, exp) {
        (Some(o), Some(e)) if o > 0.0 && e > 0.0 => {
            if higher_is_worse {
                o / e - 1.0
            } else {
                e / o - 1.0
            }
        }
        _ => 0.0,
    };
    let (rr, fr) = (acc.rebuffer_ratio(), acc.failure_rate());
    let badness = [
        worse(Some(rr), exp_rebuf, true),
        worse(Some(fr), exp_fail, true),
        worse(throughput, exp_tp, false),
        worse(startup, exp_su, true),
    ]
    .into_iter()
    .fold(0.0, f64::max);
    KeyQuality {
        location: key.location.to_string(),
        cdn: key.cdn.to_string(),
        reports: acc.reports,
        rebuffer_ratio: rr,
        failure_rate: fr,
        throughput_kbps: throughput,
        startup_ms: startup,
        expected_rebuffer_ratio: exp_rebuf,
        expected_failure_rate: exp_fail,
        expected_throughput_kbps: exp_tp,
        expected_startup_ms: exp_su,
        badness,
    }
}

/// A key's own level of `m`, once warm.
fn own_level(levels: &HashMap<(Key, Metric), Baseline>, key: &Key, m: Metric) -> Option<f64> {
    levels
        .get(&(key.clone(), m))
        .filter(|b| b.windows >= detect::OWN_LEVEL_WARMUP)
        .map(|b| b.offset)
}

impl Engine {
    pub fn new(cfg: &Config) -> Self {
        Self::with_table(cfg, BenchmarkTable::new())
    }

    /// Starts from a benchmark table loaded elsewhere (the RocksDB cache).
    pub fn with_table(cfg: &Config, table: BenchmarkTable) -> Self {
        Self {
            cfg: cfg.clone(),
            table,
            parts: BTreeMap::new(),
            idle: BTreeSet::new(),
            revoked: BTreeSet::new(),
            stash: BTreeMap::new(),
            decided_until: Millis::MIN,
            ready: false,
            redecided: 0,
            incidents: Incidents::new(),
            peers: None,
            counters: Counters::default(),
            closes_since_prune: 0,
            quality: Quality::default(),
        }
    }

    /// The engine's state (windows, stashed verdicts, incidents, learned baselines, counters;
    /// not the benchmark table, which has its own cache) as CBOR, for a checkpoint.
    pub fn snapshot(&self) -> Result<Vec<u8>, String> {
        let state = StateRef {
            shape: (self.cfg.window_ms(), self.cfg.lateness_ms()),
            parts: &self.parts,
            stash: &self.stash,
            decided_until: self.decided_until,
            incidents: &self.incidents,
            peers: self.peers.as_ref(),
            counters: &self.counters,
            closes_since_prune: self.closes_since_prune,
        };
        let mut out = Vec::new();
        ciborium::into_writer(&state, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// An engine from a [`Engine::snapshot`]. Fails if the bytes do not decode or were taken
    /// with another window size or lateness (their windows would not line up).
    /// On failure the table is handed back.
    pub fn restore(
        cfg: &Config,
        table: BenchmarkTable,
        bytes: &[u8],
    ) -> Result<Self, (String, BenchmarkTable)> {
        let s: State = match ciborium::from_reader(bytes) {
            Ok(s) => s,
            Err(e) => return Err((e.to_string(), table)),
        };
        if s.shape != (cfg.window_ms(), cfg.lateness_ms()) {
            return Err((
                "window.size or window.allowed_lateness changed".into(),
                table,
            ));
        }
        let mut e = Self::with_table(cfg, table);
        e.parts = s.parts;
        for part in e.parts.values_mut() {
            part.windows.set_max_keys(cfg.window.max_keys);
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

    /// The benchmark table, giving up the rest.
    pub fn into_table(self) -> BenchmarkTable {
        self.table
    }

    /// Replaces the detection rules (SIGHUP); open windows and incidents carry on.
    pub fn set_detect(&mut self, detect: crate::config::DetectConfig) {
        self.cfg.detect = detect;
    }

    /// Viewer quality of the last closed window.
    pub fn quality(&self) -> &Quality {
        &self.quality
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// How many times a window was decided, including again for partitions catching up:
    /// the state changed when it moves.
    pub fn decisions(&self) -> u64 {
        self.counters.windows_closed + self.redecided
    }

    pub fn table(&self) -> &BenchmarkTable {
        &self.table
    }

    /// Open windows and keys over all of them, summed over the partitions.
    pub fn open_stats(&self) -> (usize, usize) {
        self.parts
            .values()
            .map(|p| p.windows.open_stats())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
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

    /// Applies a benchmark row (or a tombstone, `None`) valid from `ts`.
    pub fn on_benchmark(&mut self, location: &str, cdn: &str, ts: Millis, row: Option<Expected>) {
        self.table.upsert(location, cdn, ts, row);
    }

    /// A part for `partition`, created if new.
    fn part_mut(&mut self, partition: i32) -> &mut Part {
        part_entry(&mut self.parts, &self.cfg, partition)
    }

    /// Joins a report with the benchmark valid at its event time and folds it into its window.
    pub fn on_report(&mut self, r: &Report, source: Option<(i32, i64)>) -> Recorded {
        let p = source.map_or(-1, |s| s.0);
        if !self.idle.is_empty() && !self.revoked.contains(&p) && self.idle.remove(&p) {
            self.ready = true;
        }
        let expected = self.table.as_of(&r.location, &r.cdn, r.ts);
        let joined = expected.is_some();
        let part = part_entry(&mut self.parts, &self.cfg, p);
        let mut normal = Normal::default();
        if joined && !part.baselines.is_empty() {
            let key = part.windows.key(&r.location, &r.cdn);
            let off = |m| {
                part.baselines
                    .get(&(key.clone(), m))
                    .map_or(0.0, |b| b.offset)
            };
            normal.throughput_offset = off(Metric::ThroughputKbps);
            normal.startup_offset = off(Metric::StartupMs);
        } else if !joined && !part.levels.is_empty() {
            let key = part.windows.key(&r.location, &r.cdn);
            let level = |m| own_level(&part.levels, &key, m);
            normal.own_throughput_log = level(Metric::ThroughputKbps);
            normal.own_startup_log = level(Metric::StartupMs);
        }
        let suspect = !part.suspects.is_empty()
            && part
                .suspects
                .contains(&part.windows.key(&r.location, &r.cdn));
        let out = part
            .windows
            .record(&r.location, &r.cdn, r.ts, source, |acc| {
                if suspect && acc.cohorts.is_none() {
                    acc.cohorts = Some(Box::default());
                }
                acc.add_with(r, expected, &normal)
            });
        let ready = part.windows.has_ready();
        self.ready |= ready;
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
        let owned = self.parts.iter().filter(|(p, _)| !self.revoked.contains(p));
        let mut holding = owned
            .clone()
            .filter(|(p, _)| !self.idle.contains(p))
            .map(|(_, part)| part.windows.watermark())
            .peekable();
        if holding.peek().is_some() {
            holding.min().flatten()
        } else {
            owned.filter_map(|(_, part)| part.windows.watermark()).max()
        }
    }

    /// Registers a source partition this instance now owns; windows wait for its input.
    pub fn add_partition(&mut self, partition: i32) {
        self.revoked.remove(&partition);
        self.idle.remove(&partition);
        self.part_mut(partition);
    }

    /// Registered partitions that hold windows back and have not delivered a record yet.
    pub fn silent_partitions(&self) -> Vec<i32> {
        self.parts
            .iter()
            .filter(|(p, part)| !self.idle.contains(p) && part.windows.newest(**p).is_none())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Per registered partition: newest event time (if any) and whether it is idle.
    pub fn partition_state(&self) -> BTreeMap<i32, (Option<Millis>, bool)> {
        self.parts
            .iter()
            .map(|(p, part)| (*p, (part.windows.newest(*p), self.idle.contains(p))))
            .collect()
    }

    pub fn has_partition(&self, partition: i32) -> bool {
        self.parts.contains_key(&partition) && !self.revoked.contains(&partition)
    }

    /// A source partition without input for a while: stop waiting for it.
    pub fn set_partition_idle(&mut self, partition: i32) {
        if self.parts.contains_key(&partition) && self.idle.insert(partition) {
            self.ready = true;
        }
    }

    /// A source partition this instance no longer owns: windows stop waiting for it; its
    /// state stays (it may come back, or its records may still be in flight).
    pub fn remove_partition(&mut self, partition: i32) {
        if self.parts.contains_key(&partition) {
            self.revoked.insert(partition);
            self.idle.insert(partition);
            self.ready = true;
        }
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
        for (p, windows) in closed {
            for w in windows {
                self.stage_one(p, w);
            }
        }
        self.decide()
    }

    /// Closes and decides every window ending at or before `watermark` in every partition
    /// (used when input is idle, and to flush at the end of a backtest).
    pub fn close_until(&mut self, watermark: Millis) -> Vec<Alert> {
        let mut closed = Vec::new();
        for (p, part) in self.parts.iter_mut() {
            closed.push((*p, part.windows.close_until(watermark)));
        }
        for (p, windows) in closed {
            for w in windows {
                self.stage_one(p, w);
            }
        }
        self.decide()
    }

    /// Partitions this engine holds state for (owned, idle or revoked).
    pub fn partitions(&self) -> Vec<i32> {
        self.parts.keys().copied().collect()
    }

    /// The partition whose state knows `location` (its keys' history), if any.
    pub fn home_of(&self, location: &str) -> Option<i32> {
        self.parts
            .iter()
            .find(|(_, part)| part.volumes.keys().any(|k| &*k.location == location))
            .map(|(p, _)| *p)
    }

    /// One partition's whole state (windows, what is normal for its keys, its incidents and
    /// its undecided verdicts) as CBOR, for another instance to take the partition over.
    /// `None` if this engine has nothing for it.
    pub fn export_partition(&self, partition: i32) -> Result<Option<Vec<u8>>, String> {
        let Some(part) = self.parts.get(&partition) else {
            return Ok(None);
        };
        let share = ShareRef {
            shape: (self.cfg.window_ms(), self.cfg.lateness_ms()),
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
                .map(|peers| CdnRef {
                    decided_until: self.decided_until,
                    incidents: &self.incidents,
                    peers,
                }),
        };
        let mut out = Vec::new();
        ciborium::into_writer(&share, &mut out).map_err(|e| e.to_string())?;
        Ok(Some(out))
    }

    /// Takes over a partition from an [`Engine::export_partition`] taken elsewhere, replacing
    /// whatever this engine had for it. Its windows catch up on their own: the ones this
    /// engine decided already are decided again for this partition alone.
    pub fn absorb_partition(&mut self, partition: i32, bytes: &[u8]) -> Result<(), String> {
        let share: Share = ciborium::from_reader(bytes).map_err(|e| e.to_string())?;
        if share.shape != (self.cfg.window_ms(), self.cfg.lateness_ms()) {
            return Err("window.size or window.allowed_lateness differ".into());
        }
        if share.partition != partition {
            return Err(format!(
                "the share is partition {}'s, not {partition}'s",
                share.partition
            ));
        }
        self.drop_partition(partition);
        let mut part = share.part;
        part.windows.set_max_keys(self.cfg.window.max_keys);
        self.parts.insert(partition, part);
        for (start, s) in share.stash {
            self.stash.entry(start).or_default().insert(partition, s);
        }
        self.ready = true;
        Ok(())
    }

    /// Forgets a partition's state (it was handed to another instance).
    pub fn drop_partition(&mut self, partition: i32) {
        self.parts.remove(&partition);
        self.idle.remove(&partition);
        self.revoked.remove(&partition);
        for w in self.stash.values_mut() {
            w.remove(&partition);
        }
        self.stash.retain(|_, w| !w.is_empty());
        if let Some(peers) = &mut self.peers {
            peers.published.remove(&partition);
            peers.outgoing.remove(&partition);
        }
        self.ready = true;
    }

    /// Spreads the CDN-wide stage over the instances sharing `partitions` report partitions
    /// (see [`Peers`]): from now on windows are decided as the summaries topic, read back
    /// through [`Engine::on_summary`], allows. Keeps what a restored checkpoint had.
    pub fn share_with_peers(&mut self, partitions: i32) {
        let peers = self.peers.get_or_insert_with(Peers::default);
        peers.partitions = partitions;
        peers.published.clear();
        self.ready = true;
    }

    /// The next offset to read on the summaries topic, when peered.
    pub fn summaries_next(&self) -> Option<i64> {
        self.peers.as_ref().map(|p| p.next)
    }

    /// Starts the CDN-wide stage from partition 0's changelog share (an instance without a
    /// checkpoint of its own joining the others); returns the summaries offset to read on
    /// from, or `None` if the share has no CDN-wide stage.
    pub fn adopt_cdn_stage(&mut self, bytes: &[u8]) -> Result<Option<i64>, String> {
        let share: Share = ciborium::from_reader(bytes).map_err(|e| e.to_string())?;
        if share.shape != (self.cfg.window_ms(), self.cfg.lateness_ms()) {
            return Err("window.size or window.allowed_lateness differ".into());
        }
        let (Some(cdn), Some(peers)) = (share.cdn, &mut self.peers) else {
            return Ok(None);
        };
        let partitions = peers.partitions;
        *peers = cdn.peers;
        peers.partitions = partitions;
        self.incidents = cdn.incidents;
        self.decided_until = cdn.decided_until;
        self.ready = true;
        Ok(Some(peers.next))
    }

    /// One record of the summaries topic, at `offset` (records before the stage's position,
    /// read again after a restart, are skipped). [`Engine::close_ready`] then decides what
    /// it allows.
    pub fn on_summary(&mut self, offset: i64, bytes: &[u8]) -> Result<(), String> {
        let size = self.cfg.window_ms();
        let Some(peers) = &mut self.peers else {
            return Ok(());
        };
        if offset < peers.next {
            return Ok(());
        }
        peers.next = offset + 1;
        let s: Summary = ciborium::from_reader(bytes).map_err(|e| e.to_string())?;
        if !(0..peers.partitions).contains(&s.partition) {
            return Err(format!(
                "summary of partition {}, the reports topic has {}",
                s.partition, peers.partitions
            ));
        }
        peers.progress.insert(s.partition, (s.closed_until, s.idle));
        for (start, keys) in s.windows {
            // A window decided already (a new owner closing it again) keeps its decision.
            if start + size > self.decided_until {
                peers
                    .bad
                    .entry(start)
                    .or_default()
                    .insert(s.partition, keys);
            }
        }
        self.ready = true;
        Ok(())
    }

    /// Summaries of the owned partitions to send to the summaries topic, in order, with
    /// their partition (the record key).
    pub fn take_summaries(&mut self) -> Result<Vec<(i32, Vec<u8>)>, String> {
        let Some(peers) = &mut self.peers else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(peers.outbox.len());
        for s in peers.outbox.drain(..) {
            let mut bytes = Vec::new();
            ciborium::into_writer(&s, &mut bytes).map_err(|e| e.to_string())?;
            out.push((s.partition, bytes));
        }
        Ok(out)
    }

    /// Queues a summary for each owned partition whose progress changed or that closed
    /// windows with bad keys.
    fn collect_summaries(&mut self) {
        let Some(peers) = &mut self.peers else {
            return;
        };
        for (p, part) in &self.parts {
            if self.revoked.contains(p) {
                continue;
            }
            let now = (part.windows.closed_until(), self.idle.contains(p));
            let windows = peers.outgoing.remove(p).unwrap_or_default();
            if windows.is_empty() && peers.published.get(p) == Some(&now) {
                continue;
            }
            peers.published.insert(*p, now);
            peers.outbox.push(Summary {
                partition: *p,
                closed_until: now.0,
                idle: now.1,
                windows,
            });
        }
        peers.outgoing.clear();
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

    /// Tests one partition's closed window: its keys are one family for the multiple-test
    /// correction. What is normal for its keys learns from it; the verdicts wait in the stash.
    fn stage_one(&mut self, partition: i32, w: Closed) {
        let cfg = &self.cfg;
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        let mut present = w.keys;
        // Keys that usually report but sent nothing in this window are tested too.
        for (k, b) in &part.volumes {
            if b.windows >= detect::OWN_LEVEL_WARMUP && b.offset >= detect::MIN_USUAL_VOLUME {
                present.entry(k.clone()).or_default();
            }
        }
        let mut keys: Vec<_> = present.into_iter().collect();
        // HashMap order is random; detection output must not be.
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut findings: Vec<(usize, Finding)> = Vec::new();
        for (i, (key, acc)) in keys.iter().enumerate() {
            let base = |m| {
                part.baselines
                    .get(&(key.clone(), m))
                    .copied()
                    .unwrap_or_default()
            };
            let (tp, su) = (base(Metric::ThroughputKbps), base(Metric::StartupMs));
            let offsets = Offsets {
                throughput: tp.offset,
                startup: su.offset,
            };
            let own = if acc.joined == 0 && !part.levels.is_empty() {
                let level = |m| own_level(&part.levels, key, m);
                OwnLevels {
                    failure_rate: level(Metric::FailureRate),
                    rebuffer_ratio: level(Metric::RebufferRatio),
                    throughput_log: level(Metric::ThroughputKbps),
                    startup_log: level(Metric::StartupMs),
                }
            } else {
                OwnLevels::default()
            };
            let detect = &cfg.detect;
            let tune = |m| detect.tuning(Some(&key.location), Some(&key.cdn), m);
            for mut f in detect::evaluate_with(acc, &tune, &offsets, &own) {
                let warm = match (f.reference, f.metric) {
                    (Reference::Baseline, _) => true, // own levels are only used warm
                    (_, Metric::ThroughputKbps) => tp.warm(),
                    (_, Metric::StartupMs) => su.warm(),
                    _ => true,
                };
                if !warm {
                    // Not yet known what is normal here: only a critical deviation counts.
                    f.eligible &= f.effect >= tune(f.metric).critical_relative_effect;
                }
                findings.push((i, f));
            }
            if let Some(b) = part.volumes.get(key)
                && b.windows >= detect::OWN_LEVEL_WARMUP
                && let Some(f) =
                    detect::evaluate_volume(acc.reports, b.offset, &tune(Metric::ReportVolume))
            {
                findings.push((i, f));
            }
        }
        let p: Vec<f64> = findings.iter().map(|(_, f)| f.p_value).collect();
        let discovered = detect::benjamini_hochberg(&p, cfg.detect.fdr);
        self.counters.tests += findings.len() as u64;
        let mut verdicts: Vec<(usize, Verdict)> = Vec::with_capacity(findings.len());
        for ((i, finding), disc) in findings.into_iter().zip(discovered) {
            let bad = disc && finding.eligible;
            self.counters.discoveries += u64::from(bad);
            let k = &keys[i].0;
            let t = cfg
                .detect
                .tuning(Some(&k.location), Some(&k.cdn), finding.metric);
            verdicts.push((
                i,
                Verdict {
                    scope: Scope::pair(&k.location, &k.cdn),
                    severity: detect::severity(finding.effect, &t),
                    finding,
                    bad,
                },
            ));
        }
        for (i, v) in verdicts.iter_mut() {
            if v.bad
                && let Some(c) = &keys[*i].1.cohorts
            {
                v.finding.cohort = c.explain(&v.finding);
            }
        }
        part.suspects = verdicts
            .iter()
            .filter(|(_, v)| v.bad)
            .map(|(i, _)| keys[*i].0.clone())
            .collect();
        part.learn(cfg.detect.min_samples, &keys, &verdicts, w.end);

        let stash = self
            .stash
            .entry(w.start)
            .or_default()
            .entry(partition)
            .or_default();
        for (k, acc) in &keys {
            if acc.reports == 0 {
                continue;
            }
            stash.reports.merge(acc);
            if acc.reports >= cfg.detect.min_samples {
                stash.worst.push(key_quality(k, acc));
            }
        }
        sort_worst(&mut stash.worst);
        stash.key_count += keys.len();
        for (p, o) in w.min_offsets {
            let m = stash.min_offsets.entry(p).or_insert(o);
            *m = (*m).min(o);
        }
        let mut grouped: Vec<Vec<Verdict>> = vec![Vec::new(); keys.len()];
        for (i, v) in verdicts {
            grouped[i].push(v);
        }
        let mut bad = Vec::new();
        for ((key, mut acc), vs) in keys.into_iter().zip(grouped) {
            if vs.is_empty() {
                continue;
            }
            if vs.iter().any(|v| v.bad) {
                acc.cohorts = None;
                if self.peers.is_some() {
                    bad.push((key.clone(), acc.clone(), vs.clone()));
                }
            } else {
                acc = Acc::default();
            }
            stash.keys.push((key, acc, vs));
        }
        if let Some(peers) = &mut self.peers
            && !bad.is_empty()
        {
            peers
                .outgoing
                .entry(partition)
                .or_default()
                .push((w.start, bad));
        }
    }

    /// Decides, in order, every window that all partitions holding windows back have closed.
    /// Idle and revoked partitions first close as far.
    fn decide(&mut self) -> Vec<Alert> {
        if self.peers.is_some() {
            return self.decide_peered();
        }
        // Revoked partitions count for nothing: with every partition revoked (before the
        // first assignment, or while a broker is away) nothing is decided.
        let owned = self.parts.iter().filter(|(p, _)| !self.revoked.contains(p));
        let holding: Vec<Millis> = owned
            .clone()
            .filter(|(p, _)| !self.idle.contains(p))
            .map(|(_, part)| part.windows.closed_until())
            .collect();
        let frontier = if holding.is_empty() {
            owned.map(|(_, part)| part.windows.closed_until()).max()
        } else {
            holding.into_iter().min()
        };
        let Some(frontier) = frontier.filter(|f| *f != Millis::MIN) else {
            return Vec::new();
        };
        self.close_behind(frontier, false);
        self.decide_until(frontier)
    }

    /// Like [`Engine::decide`] with the partitions spread over instances: idle owned
    /// partitions close as far as the summaries say the others have; windows every
    /// partition has closed (by the summaries, this instance's own included) are decided.
    fn decide_peered(&mut self) -> Vec<Alert> {
        if let Some(f) = self.peers.as_ref().and_then(Peers::frontier) {
            self.close_behind(f, true);
        }
        self.collect_summaries();
        let Some(upto) = self.peers.as_ref().and_then(Peers::decidable) else {
            return Vec::new();
        };
        let alerts = self.decide_until(upto);
        let size = self.cfg.window_ms();
        let horizon = self.decided_until - MAX_GAP_WINDOWS * size;
        if let Some(peers) = &mut self.peers {
            peers.cdn_alerts.retain(|s, _| s + size > horizon);
            let decided = self.decided_until;
            peers.bad.retain(|s, _| s + size > decided);
        }
        alerts
    }

    /// Closes the parts behind `frontier` (only the idle ones, with `idle_only`; revoked ones
    /// too, unless peered) up to it, testing the windows that closes.
    fn close_behind(&mut self, frontier: Millis, idle_only: bool) {
        let peered = self.peers.is_some();
        let mut behind = Vec::new();
        for (p, part) in self.parts.iter_mut() {
            if (!idle_only || self.idle.contains(p))
                && !(peered && self.revoked.contains(p))
                && part.windows.closed_until() < frontier
            {
                behind.push((*p, part.windows.close_until(frontier)));
            }
        }
        for (p, windows) in behind {
            for w in windows {
                self.stage_one(p, w);
            }
        }
    }

    /// Decides, in window order, every window ending at or before `upto` with stashed
    /// verdicts or (peered) partitions' bad keys, and the empty ones between them.
    fn decide_until(&mut self, upto: Millis) -> Vec<Alert> {
        let size = self.cfg.window_ms();
        let mut alerts = Vec::new();
        loop {
            let first_bad = self
                .peers
                .as_ref()
                .and_then(|p| p.bad.keys().next().copied());
            let next = [first_bad, self.stash.keys().next().copied()]
                .into_iter()
                .flatten()
                .min()
                .filter(|s| s + size <= upto);
            // Windows nobody had anything for are decided too (as empty ones): silence is news.
            let gap_end = next.unwrap_or(upto);
            if self.decided_until != Millis::MIN {
                let mut s = self.decided_until.max(gap_end - MAX_GAP_WINDOWS * size);
                while s + size <= gap_end {
                    alerts.extend(self.stage_two(s, BTreeMap::new()));
                    s += size;
                }
            }
            let Some(start) = next else {
                self.decided_until = self.decided_until.max(upto);
                break;
            };
            let stash = self.stash.remove(&start).unwrap_or_default();
            alerts.extend(self.stage_two(start, stash));
            self.decided_until = self.decided_until.max(start + size);
        }
        alerts
    }

    /// Decides one window over all partitions' verdicts: CDN-wide parents over all of them,
    /// then each partition's incidents (location-wide parents and location+CDN scopes).
    /// A window decided before is decided again only for partitions behind it (one taken
    /// over from another instance, catching up).
    fn stage_two(&mut self, start: Millis, mut stashed: BTreeMap<i32, Stash>) -> Vec<Alert> {
        let end = start + self.cfg.window_ms();
        let fresh = end > self.decided_until;
        if !fresh {
            self.redecided += 1;
        }
        let mut alerts = Vec::new();
        if fresh {
            self.counters.windows_closed += 1;
            let (mut reports, mut key_count, mut worst) = (Acc::default(), 0, Vec::new());
            for s in stashed.values() {
                reports.merge(&s.reports);
                key_count += s.key_count;
                worst.extend(s.worst.iter().cloned());
            }
            sort_worst(&mut worst);
            self.quality = Quality {
                window_start: start,
                keys: key_count,
                reports: reports.reports,
                rebuffer_ratio: reports.rebuffer_ratio(),
                failure_rate: reports.failure_rate(),
                worst,
            };
            let bad: Vec<Tested> = match &mut self.peers {
                // Every partition's, as their summaries said.
                Some(peers) => peers
                    .bad
                    .remove(&start)
                    .into_iter()
                    .flat_map(|w| w.into_values())
                    .flatten()
                    .collect(),
                None => stashed
                    .values()
                    .flat_map(|s| s.keys.iter())
                    .filter(|(_, _, vs)| vs.iter().any(|v| v.bad))
                    .cloned()
                    .collect(),
            };
            let (keys, verdicts) = flatten(bad);
            let parents = roll_up(&self.cfg.detect, &keys, &verdicts, Grouping::Cdn);
            let cdn = self.incidents.apply(start, end, parents, &self.cfg.detect);
            match &mut self.peers {
                Some(peers) if !cdn.is_empty() => {
                    peers.cdn_alerts.insert(start, cdn);
                }
                Some(_) => {}
                None => alerts.extend(cdn),
            }
        }
        for (p, part) in self.parts.iter_mut() {
            if part.decided_until >= end {
                continue;
            }
            if let Some(peers) = &self.peers {
                // A part that has not closed the window yet (catching up) decides it later.
                if self.revoked.contains(p) || part.windows.closed_until() < end {
                    continue;
                }
                // Partition 0's owner sends the CDN-wide alerts of the windows it decides.
                if *p == 0 {
                    let from = if part.decided_until == Millis::MIN {
                        start
                    } else {
                        part.decided_until
                    };
                    for (_, cdn) in peers.cdn_alerts.range(from..end) {
                        alerts.extend(cdn.iter().cloned());
                    }
                }
            }
            let groups = stashed.remove(p).map(|s| s.keys).unwrap_or_default();
            let (keys, verdicts) = flatten(groups);
            let mut all = roll_up(&self.cfg.detect, &keys, &verdicts, Grouping::Location);
            all.extend(verdicts.into_iter().map(|(_, v)| v));
            alerts.extend(part.incidents.apply_under(
                start,
                end,
                all,
                &self.cfg.detect,
                Some(&self.incidents),
            ));
            part.decided_until = end;
        }
        self.counters.alerts += alerts.len() as u64;
        if fresh {
            self.closes_since_prune += 1;
        }
        if self.closes_since_prune >= 10 {
            self.closes_since_prune = 0;
            let horizon = end - TABLE_HISTORY_WINDOWS * self.cfg.window_ms();
            self.table.prune_before(horizon);
            for part in self.parts.values_mut() {
                part.forget_before(horizon);
            }
        }
        alerts
    }
}

/// Which parents [`roll_up`] raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grouping {
    /// One CDN at many locations: spans partitions, decided over all of them.
    Cdn,
    /// Every CDN at one location: a location is in one partition.
    Location,
}

/// A key with its accumulator and its verdicts, as a partition stashes them.
type Tested = (Key, Acc, Vec<Verdict>);

/// Keys with their accumulators, and verdicts with the index of their key: the parallel
/// lists detection works on.
type Flat = (Vec<(Key, Acc)>, Vec<(usize, Verdict)>);

/// Stashed keys sorted by key, as the parallel lists detection works on.
fn flatten(mut groups: Vec<Tested>) -> Flat {
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let mut keys = Vec::with_capacity(groups.len());
    let mut verdicts = Vec::new();
    for (i, (key, acc, vs)) in groups.into_iter().enumerate() {
        keys.push((key, acc));
        verdicts.extend(vs.into_iter().map(|v| (i, v)));
    }
    (keys, verdicts)
}

/// Root-cause grouping. A CDN bad on one metric at `group_min_locations` or more
/// locations is one CDN-wide incident; a location bad on one metric on every CDN tested
/// there (two or more) is one location-wide incident. The parent's evidence is the
/// merged accumulators of the bad keys under it. `grouping` says which of the two to raise.
fn roll_up(
    detect_cfg: &crate::config::DetectConfig,
    keys: &[(Key, Acc)],
    verdicts: &[(usize, Verdict)],
    grouping: Grouping,
) -> Vec<Verdict> {
    let mut by_cdn: BTreeMap<(Metric, &str), Vec<usize>> = BTreeMap::new();
    let mut by_loc: BTreeMap<(Metric, &str), (Vec<usize>, usize)> = BTreeMap::new();
    for (i, v) in verdicts {
        let k = &keys[*i].0;
        let m = v.finding.metric;
        let e = by_loc.entry((m, &*k.location)).or_default();
        e.1 += 1;
        if v.bad {
            by_cdn.entry((m, &*k.cdn)).or_default().push(*i);
            e.0.push(*i);
        }
    }
    let mut out = Vec::new();
    let mut parent = |metric: Metric, idx: &[usize], scope: Scope| {
        let t = detect_cfg.tuning(scope.location.as_deref(), scope.cdn.as_deref(), metric);
        if metric == Metric::ReportVolume {
            let (obs, usual) = verdicts
                .iter()
                .filter(|(j, v)| idx.contains(j) && v.finding.metric == metric)
                .fold((0.0, 0.0), |(o, u), (_, v)| {
                    (o + v.finding.observed, u + v.finding.expected)
                });
            if let Some(finding) = detect::evaluate_volume(obs as u64, usual, &t) {
                out.push(Verdict {
                    scope,
                    severity: detect::severity(finding.effect, &t),
                    finding,
                    bad: true,
                });
            }
            return;
        }
        let mut merged = Acc::default();
        for i in idx {
            merged.merge(&keys[*i].1);
        }
        let tune = |m| detect_cfg.tuning(scope.location.as_deref(), scope.cdn.as_deref(), m);
        let own = OwnLevels::default();
        if let Some(finding) = detect::evaluate_with(&merged, &tune, &Offsets::default(), &own)
            .into_iter()
            .find(|f| f.metric == metric)
        {
            out.push(Verdict {
                scope,
                severity: detect::severity(finding.effect, &t),
                finding,
                bad: true,
            });
        }
    };
    for ((m, cdn), idx) in by_cdn.iter().filter(|_| grouping == Grouping::Cdn) {
        if idx.len() >= detect_cfg.group_min_locations {
            parent(
                *m,
                idx,
                Scope {
                    location: None,
                    cdn: Some((*cdn).into()),
                },
            );
        }
    }
    for ((m, loc), (idx, tested)) in by_loc.iter().filter(|_| grouping == Grouping::Location) {
        if idx.len() >= 2 && idx.len() == *tested {
            parent(
                *m,
                idx,
                Scope {
                    location: Some((*loc).into()),
                    cdn: None,
                },
            );
        }
    }
    out
}

/// `partition`'s part in `parts`, created if new. A new part starts from nothing: its first
/// windows may be older than what the others have decided (a partition taken over without
/// state replays from its committed offset); they are decided for its own incidents as it
/// catches up, holding the others' decisions back meanwhile.
fn part_entry<'a>(
    parts: &'a mut BTreeMap<i32, Part>,
    cfg: &Config,
    partition: i32,
) -> &'a mut Part {
    parts.entry(partition).or_insert_with(|| Part::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::Status;

    const W: i64 = 60_000;

    fn report(loc: &str, cdn: &str, ts: i64, i: i64, failed: bool) -> Report<'static> {
        Report {
            ts,
            session_id: format!("s{i}").into(),
            location: loc.to_string().into(),
            cdn: cdn.to_string().into(),
            asn: None,
            device: None,
            played_ms: 20_000,
            rebuffer_ms: 0,
            startup_ms: None,
            bitrate_kbps: None,
            throughput_kbps: Some(5_000.0),
            error: failed.then(|| "E".into()),
        }
    }

    /// Runs `windows` windows of 60 reports per key; `bad(loc, cdn, window)` says which
    /// keys have a 20 % failure rate.
    fn run(
        locs: &[&str],
        cdns: &[&str],
        windows: i64,
        bad: impl Fn(&str, &str, i64) -> bool,
    ) -> Vec<Alert> {
        let mut e = Engine::new(&Config::default());
        for l in locs {
            for c in cdns {
                let row = Expected {
                    error_rate: Some(0.01),
                    ..Default::default()
                };
                e.on_benchmark(l, c, 0, Some(row));
            }
        }
        let mut out = Vec::new();
        let mut i = 0;
        for w in 0..windows {
            for n in 0..60 {
                for l in locs {
                    for c in cdns {
                        i += 1;
                        let failed = bad(l, c, w) && n % 5 == 0;
                        e.on_report(&report(l, c, w * W + n * 1_000, i, failed), None);
                    }
                }
            }
            out.extend(e.close_ready());
        }
        out.extend(e.close_until(windows * W + W));
        out
    }

    #[test]
    fn many_locations_of_one_cdn_raise_one_cdn_wide_parent() {
        let locs = ["IN/A", "IN/B", "IN/C", "US/D"];
        let alerts = run(&locs, &["cdn-a", "cdn-b"], 10, |l, c, w| {
            c == "cdn-a" && l.starts_with("IN/") && (2..5).contains(&w)
        });
        let firing: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.status == Status::Firing)
            .collect();
        let parent = firing
            .iter()
            .find(|a| a.scope.location.is_none())
            .expect("a CDN-wide incident");
        assert_eq!(parent.scope.cdn.as_deref(), Some("cdn-a"));
        assert_eq!(parent.samples, 180, "evidence is the three bad keys merged");
        let children: Vec<&&Alert> = firing
            .iter()
            .filter(|a| a.scope.location.is_some())
            .collect();
        assert_eq!(children.len(), 3);
        for c in &children {
            assert_eq!(c.parent_id.as_deref(), Some(parent.id.as_str()), "{c:?}");
            assert!(c.scope.location.as_deref().unwrap().starts_with("IN/"));
        }
        let resolved = alerts
            .iter()
            .filter(|a| a.status == Status::Resolved)
            .count();
        assert_eq!(resolved, 4, "parent and children all resolve");
    }

    #[test]
    fn every_cdn_bad_at_one_location_raises_a_location_wide_parent() {
        let alerts = run(&["IN/A", "US/D"], &["cdn-a", "cdn-b"], 8, |l, _, w| {
            l == "US/D" && (2..5).contains(&w)
        });
        let parent = alerts
            .iter()
            .find(|a| a.status == Status::Firing && a.scope.cdn.is_none())
            .expect("a location-wide incident");
        assert_eq!(parent.scope.location.as_deref(), Some("US/D"));
        assert!(
            alerts
                .iter()
                .filter(|a| a.status == Status::Firing && a.scope.cdn.is_some())
                .all(|a| a.parent_id.as_deref() == Some(parent.id.as_str()))
        );
    }

    #[test]
    fn one_bad_key_gets_no_parent() {
        let alerts = run(
            &["IN/A", "IN/B", "IN/C"],
            &["cdn-a", "cdn-b"],
            8,
            |l, c, w| l == "IN/A" && c == "cdn-a" && (2..5).contains(&w),
        );
        assert_eq!(alerts.len(), 2, "{alerts:#?}");
        assert!(
            alerts.iter().all(|a| a.parent_id.is_none()
                && a.scope.cdn.is_some()
                && a.scope.location.is_some())
        );
    }

    #[test]
    fn a_stable_offset_from_the_benchmark_is_learned_not_paged() {
        let mut e = Engine::new(&Config::default());
        let row = Expected {
            throughput_kbps: Some(5_000.0),
            ..Default::default()
        };
        e.on_benchmark("L", "c", 0, Some(row));
        let mut alerts = Vec::new();
        let mut i = 0;
        for w in 0..20 {
            // Clients see 40 % less than the probes (last mile) for 12 windows, then a real
            // drop to a third of that.
            let level = if w < 12 { 3_000.0 } else { 1_000.0 };
            for n in 0..90 {
                i += 1;
                let mut r = report("L", "c", w * W + n * 600, i, false);
                r.throughput_kbps = Some(level * (1.0 + ((i * 37) % 11) as f64 * 0.04));
                e.on_report(&r, None);
            }
            alerts.extend(e.close_ready());
        }
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let a = &alerts[0];
        assert_eq!(a.metric, Metric::ThroughputKbps);
        assert_eq!(a.started_at, 12 * W, "fires on the drop, not on the offset");
        let expected = a.expected.unwrap();
        assert!(
            (3_000.0..4_000.0).contains(&expected),
            "compared with what is normal: {expected}"
        );
    }

    #[test]
    fn a_key_without_benchmark_is_watched_against_its_own_level() {
        let mut e = Engine::new(&Config::default());
        let mut alerts = Vec::new();
        let mut i = 0;
        for w in 0..16 {
            for n in 0..100 {
                i += 1;
                // 1 % failures for 10 windows, then 20 %.
                let failed = if w < 10 { i % 100 == 0 } else { n % 5 == 0 };
                e.on_report(
                    &report("NEW/Place", "cdn-z", w * W + n * 500, i, failed),
                    None,
                );
            }
            alerts.extend(e.close_ready());
        }
        assert_eq!(e.counters().join_hits, 0);
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        let a = &alerts[0];
        assert_eq!(a.rule, "failures_above_baseline");
        assert_eq!(a.started_at, 10 * W);
        assert!((a.expected.unwrap() - 0.01).abs() < 0.005, "{a:?}");
    }

    #[test]
    fn a_key_that_goes_silent_is_an_incident() {
        let mut e = Engine::new(&Config::default());
        let mut alerts = Vec::new();
        let mut i = 0;
        for w in 0..30 {
            for n in 0..100 {
                for loc in ["A", "B"] {
                    // B stops reporting entirely in windows 8..12 (an outage sends nothing).
                    if loc == "B" && (8..12).contains(&w) {
                        continue;
                    }
                    i += 1;
                    e.on_report(&report(loc, "c", w * W + n * 500, i, false), None);
                }
            }
            alerts.extend(e.close_ready());
        }
        assert_eq!(alerts.len(), 2, "{alerts:#?}");
        let (fire, res) = (&alerts[0], &alerts[1]);
        assert_eq!(fire.rule, "reports_below_usual");
        assert_eq!(fire.scope, Scope::pair("B", "c"));
        assert_eq!(fire.observed, 0.0);
        assert!((fire.expected.unwrap() - 100.0).abs() < 5.0, "{fire:?}");
        assert_eq!(fire.started_at, 8 * W);
        assert_eq!(res.id, fire.id);
        assert_eq!(res.resolved_at, Some(12 * W));
        assert_eq!(
            res.window_start,
            14 * W,
            "three clean windows after the return: {res:?}"
        );
    }

    #[test]
    fn a_restored_snapshot_continues_exactly_like_the_original() {
        use crate::sim::{Event, SimConfig, Simulator};
        let start = 1_767_290_400_000;
        let cfg = Config::default();
        let events: Vec<Event> = Simulator::new(SimConfig::demo(5, start, 60 * 60_000)).collect();
        let cut = events.len() / 2;
        let mut a = Engine::new(&cfg);
        let mut alerts_a = Vec::new();
        let mut seen_benchmarks = Vec::new();
        let feed = |e: &mut Engine, ev: &Event, out: &mut Vec<Alert>| match ev {
            Event::Benchmark(b) => {
                e.on_benchmark(&b.location, &b.cdn, b.ts, Some(Expected::from(b)));
            }
            Event::Report(r) => {
                e.on_report(r, Some((0, 0)));
                out.extend(e.close_ready());
            }
        };
        for ev in &events[..cut] {
            if let Event::Benchmark(b) = ev {
                seen_benchmarks.push(b.clone());
            }
            feed(&mut a, ev, &mut alerts_a);
        }
        let snap = a.snapshot().unwrap();
        let mut b = Engine::restore(&cfg, BenchmarkTable::new(), &snap)
            .map_err(|e| e.0)
            .unwrap();
        for bm in &seen_benchmarks {
            b.on_benchmark(&bm.location, &bm.cdn, bm.ts, Some(Expected::from(bm)));
        }
        assert_eq!(a.counters(), b.counters());
        let (mut rest_a, mut rest_b) = (Vec::new(), Vec::new());
        for ev in &events[cut..] {
            feed(&mut a, ev, &mut rest_a);
            feed(&mut b, ev, &mut rest_b);
        }
        rest_a.extend(a.close_until(start + 2 * 3_600_000));
        rest_b.extend(b.close_until(start + 2 * 3_600_000));
        assert!(
            !alerts_a.is_empty() && !rest_a.is_empty(),
            "incidents on both sides of the cut"
        );
        assert_eq!(rest_a, rest_b);
        assert_eq!(a.counters(), b.counters());
        // A snapshot taken with another window size is refused.
        let mut other = cfg.clone();
        other.window.size = std::time::Duration::from_secs(30);
        assert!(Engine::restore(&other, BenchmarkTable::new(), &snap).is_err());
    }

    /// 6 locations x 2 CDNs, quiet but for `incidents` (kind, location, CDN, first and last
    /// minute), over `minutes`; the events and their end.
    fn scenario(
        seed: u64,
        minutes: i64,
        incidents: &[(crate::sim::IncidentKind, &str, &str, i64, i64)],
    ) -> (Vec<crate::sim::Event>, i64) {
        use crate::sim::{Injected, SimConfig, Simulator};
        let start = 1_767_290_400_000;
        let min = 60_000;
        let mut c = SimConfig::quiet(seed, start, minutes * min);
        c.locations = 6;
        c.cdns = 2;
        c.peak_sessions = 600;
        c.incidents = incidents
            .iter()
            .map(|(kind, location, cdn, from, to)| Injected {
                kind: *kind,
                location: (*location).into(),
                cdn: (*cdn).into(),
                start: start + from * min,
                end: start + to * min,
                asn: None,
            })
            .collect();
        (Simulator::new(c).collect(), start + minutes * min)
    }

    /// The crash test's scenario, shorter: three location+CDN incidents.
    fn partitioned_scenario() -> (Vec<crate::sim::Event>, i64) {
        use crate::sim::IncidentKind::{Degradation, FailureSpike};
        let names = crate::sim::location_names(6);
        scenario(
            23,
            70,
            &[
                (FailureSpike, &names[0], "cdn-a", 10, 25),
                (Degradation, &names[1], "cdn-b", 30, 45),
                (FailureSpike, &names[2], "cdn-b", 50, 62),
            ],
        )
    }

    /// A location+CDN incident, then a CDN degrading across the three "IN/" locations, which
    /// [`partition_of`] spreads over partitions 0, 2 and 3.
    fn cdn_wide_scenario() -> (Vec<crate::sim::Event>, i64) {
        use crate::sim::IncidentKind::{FailureSpike, RegionalCdnDegradation};
        let names = crate::sim::location_names(6);
        scenario(
            29,
            60,
            &[
                (FailureSpike, &names[3], "cdn-b", 10, 22),
                (RegionalCdnDegradation, "IN/", "cdn-a", 30, 45),
            ],
        )
    }

    /// Which of 4 test partitions a location's reports go to.
    fn partition_of(location: &str) -> usize {
        let h = location
            .bytes()
            .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        (h % 4) as usize
    }

    /// Runs `events` with reports split over 4 partitions by location; `next` picks the
    /// partition whose next record is read (among those with records left).
    fn run_partitioned(
        events: &[crate::sim::Event],
        end: i64,
        mut next: impl FnMut(&[usize]) -> usize,
    ) -> Vec<Alert> {
        use crate::sim::Event;
        let mut e = Engine::new(&Config::default());
        let mut queues: Vec<std::collections::VecDeque<&Report>> = vec![Default::default(); 4];
        for ev in events {
            match ev {
                Event::Benchmark(b) => {
                    e.on_benchmark(&b.location, &b.cdn, b.ts, Some(Expected::from(b)))
                }
                Event::Report(r) => queues[partition_of(&r.location)].push_back(r),
            }
        }
        for p in 0..4 {
            e.add_partition(p);
        }
        let mut out = Vec::new();
        let mut offsets = [0i64; 4];
        loop {
            let left: Vec<usize> = (0..4).filter(|p| !queues[*p].is_empty()).collect();
            if left.is_empty() {
                break;
            }
            let p = next(&left);
            let r = queues[p]
                .pop_front()
                .expect("a partition with records left");
            offsets[p] += 1;
            e.on_report(r, Some((p as i32, offsets[p])));
            if e.has_ready() {
                out.extend(e.close_ready());
            }
            if queues[p].is_empty() {
                // Read to its end: the daemon stops waiting for such a partition.
                e.set_partition_idle(p as i32);
                out.extend(e.close_ready());
            }
        }
        out.extend(e.close_until(end + 10 * W));
        out
    }

    #[test]
    fn alerts_do_not_depend_on_how_reads_of_partitions_interleave() {
        let (events, end) = partitioned_scenario();
        // Reports in event-time order across partitions, as a live run reads them: the
        // partition whose next report is oldest goes first.
        let in_order = {
            let mut queues_ts: Vec<std::collections::VecDeque<i64>> = vec![Default::default(); 4];
            for ev in &events {
                if let crate::sim::Event::Report(r) = ev {
                    queues_ts[partition_of(&r.location)].push_back(r.ts);
                }
            }
            run_partitioned(&events, end, |left| {
                let p = *left
                    .iter()
                    .min_by_key(|p| queues_ts[**p].front().copied().unwrap_or(i64::MAX))
                    .expect("a partition");
                queues_ts[p].pop_front();
                p
            })
        };
        let fired = in_order
            .iter()
            .filter(|a| a.status == crate::incident::Status::Firing)
            .count();
        assert!(fired >= 3, "the incidents fire: {in_order:#?}");
        // Whole alerts: ids, and the evidence in them (observed, p-values, samples) too.
        let ids = |alerts: &[Alert]| -> Vec<String> {
            let mut v: Vec<_> = alerts.iter().map(|a| format!("{a:?}")).collect();
            v.sort();
            v
        };
        // A catch-up reads partitions in bursts of different sizes, one far behind the others.
        for seed in [1u64, 2, 3] {
            let mut rng = crate::sim::Rng::new(seed);
            let mut burst = (0usize, 0u64);
            let shuffled = run_partitioned(&events, end, |left| {
                if burst.1 == 0 || !left.contains(&burst.0) {
                    // Partition 0 is read least often: it falls far behind.
                    let pick = left[rng.below(left.len() as u64) as usize];
                    let pick = if pick == 0 && rng.below(3) > 0 {
                        left[left.len() - 1]
                    } else {
                        pick
                    };
                    burst = (pick, 1 + rng.below(5_000));
                }
                burst.1 -= 1;
                burst.0
            });
            assert_eq!(ids(&shuffled), ids(&in_order), "seed {seed}");
        }
    }

    /// Reads the owned partitions' reports in event-time order, up to event time `until`;
    /// `on_close` sees the engine and the read positions after every close.
    fn read_owned(
        e: &mut Engine,
        queues: &[Vec<&Report>],
        pos: &mut [usize],
        owned: &[usize],
        until: i64,
        mut on_close: impl FnMut(&Engine, &[usize], &[Alert]),
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        loop {
            let next = owned
                .iter()
                .filter(|p| pos[**p] < queues[**p].len())
                .min_by_key(|p| queues[**p][pos[**p]].ts)
                .copied();
            let Some(p) = next.filter(|p| queues[*p][pos[*p]].ts < until) else {
                break;
            };
            let r = queues[p][pos[p]];
            pos[p] += 1;
            e.on_report(r, Some((p as i32, pos[p] as i64)));
            if pos[p] == queues[p].len() {
                e.set_partition_idle(p as i32);
            }
            if e.has_ready() {
                let alerts = e.close_ready();
                on_close(e, pos, &alerts);
                out.extend(alerts);
            }
        }
        out
    }

    #[test]
    fn a_partition_taken_over_from_its_last_share_alerts_as_if_never_moved() {
        let (events, end) = partitioned_scenario();
        let cfg = Config::default();
        let fresh = || {
            let mut e = Engine::new(&cfg);
            for ev in &events {
                if let crate::sim::Event::Benchmark(b) = ev {
                    e.on_benchmark(&b.location, &b.cdn, b.ts, Some(Expected::from(b)));
                }
            }
            e
        };
        let mut queues: Vec<Vec<&Report>> = vec![Vec::new(); 4];
        for ev in &events {
            if let crate::sim::Event::Report(r) = ev {
                queues[partition_of(&r.location)].push(r);
            }
        }
        let ids = |alerts: &[Alert]| -> Vec<(String, String)> {
            let mut v: Vec<_> = alerts
                .iter()
                .map(|a| (a.id.clone(), format!("{:?}", a.status)))
                .collect();
            v.sort();
            v
        };
        let all = [0, 1, 2, 3];
        let mut single = fresh();
        for p in all {
            single.add_partition(p as i32);
        }
        let mut want = read_owned(
            &mut single,
            &queues,
            &mut [0; 4],
            &all,
            i64::MAX,
            |_, _, _| {},
        );
        want.extend(single.close_until(end + 10 * W));
        assert!(
            want.iter()
                .filter(|a| a.status == crate::incident::Status::Firing)
                .count()
                >= 3,
            "{want:#?}"
        );
        let start = end - 70 * W;
        // The victim dies early and the survivor is ahead, then the other way round.
        for (victim_until, survivor_until) in [(20, 50), (50, 20), (35, 35)] {
            let (mut a, mut b) = (fresh(), fresh());
            let (mut pos_a, mut pos_b) = ([0usize; 4], [0usize; 4]);
            for p in [0, 1] {
                a.add_partition(p);
            }
            for p in [2, 3] {
                b.add_partition(p);
            }
            // The victim's last checkpoint: its shares and positions, and the alerts emitted
            // up to it (those decided after it die with it, as in the daemon).
            let mut last = None;
            let mut emitted = 0;
            let mut a_alerts = Vec::new();
            let got_a = read_owned(
                &mut a,
                &queues,
                &mut pos_a,
                &[0, 1],
                start + victim_until * W,
                |e, pos, alerts| {
                    a_alerts.extend(alerts.iter().cloned());
                    emitted = a_alerts.len();
                    let shares: Vec<_> = [0, 1]
                        .iter()
                        .map(|p| e.export_partition(*p).unwrap().unwrap())
                        .collect();
                    last = Some((shares, pos.to_vec()));
                },
            );
            assert_eq!(got_a.len(), a_alerts.len());
            let mut got = a_alerts[..emitted].to_vec();
            got.extend(read_owned(
                &mut b,
                &queues,
                &mut pos_b,
                &[2, 3],
                start + survivor_until * W,
                |_, _, _| {},
            ));
            let (shares, pos) = last.expect("the victim checkpointed");
            for (p, share) in [0, 1].iter().zip(&shares) {
                b.absorb_partition(*p, share).unwrap();
                pos_b[*p as usize] = pos[*p as usize];
            }
            got.extend(read_owned(
                &mut b,
                &queues,
                &mut pos_b,
                &all,
                i64::MAX,
                |_, _, _| {},
            ));
            got.extend(b.close_until(end + 10 * W));
            assert_eq!(
                ids(&got),
                ids(&want),
                "victim killed at minute {victim_until}, survivor at {survivor_until}"
            );
        }
    }

    /// Two engines, each owning some of the 4 partitions, peered through an in-memory
    /// summaries log that both read; reports are read in event-time order.
    fn run_peered(events: &[crate::sim::Event], end: i64, owners: [usize; 4]) -> Vec<Alert> {
        use crate::sim::Event;
        let cfg = Config::default();
        let mut engines: Vec<(Engine, usize)> = (0..2)
            .map(|_| {
                let mut e = Engine::new(&cfg);
                e.share_with_peers(4);
                (e, 0)
            })
            .collect();
        let mut queues: Vec<std::collections::VecDeque<&Report>> = vec![Default::default(); 4];
        for ev in events {
            match ev {
                Event::Benchmark(b) => {
                    for (e, _) in &mut engines {
                        e.on_benchmark(&b.location, &b.cdn, b.ts, Some(Expected::from(b)));
                    }
                }
                Event::Report(r) => queues[partition_of(&r.location)].push_back(r),
            }
        }
        for (p, o) in owners.iter().enumerate() {
            engines[*o].0.add_partition(p as i32);
        }
        let mut log: Vec<Vec<u8>> = Vec::new();
        let mut out = Vec::new();
        // Until nothing moves: every engine reads the log on, decides, and publishes.
        let pump = |engines: &mut Vec<(Engine, usize)>,
                    log: &mut Vec<Vec<u8>>,
                    out: &mut Vec<Alert>| loop {
            let mut moved = false;
            for (e, read) in engines.iter_mut() {
                while *read < log.len() {
                    e.on_summary(*read as i64, &log[*read]).expect("a summary");
                    *read += 1;
                }
                if e.has_ready() {
                    out.extend(e.close_ready());
                }
                let sent = e.take_summaries().expect("encodes");
                moved |= !sent.is_empty();
                log.extend(sent.into_iter().map(|(_, b)| b));
            }
            if !moved {
                break;
            }
        };
        let mut offsets = [0i64; 4];
        loop {
            let next = (0..4)
                .filter(|p| !queues[*p].is_empty())
                .min_by_key(|p| queues[*p].front().map(|r| r.ts));
            let Some(p) = next else { break };
            let r = queues[p]
                .pop_front()
                .expect("a partition with records left");
            offsets[p] += 1;
            let e = &mut engines[owners[p]].0;
            e.on_report(r, Some((p as i32, offsets[p])));
            if queues[p].is_empty() {
                e.set_partition_idle(p as i32);
            }
            pump(&mut engines, &mut log, &mut out);
        }
        for (e, _) in &mut engines {
            out.extend(e.close_until(end + 10 * W));
        }
        pump(&mut engines, &mut log, &mut out);
        out
    }

    #[test]
    fn instances_sharing_partitions_raise_the_cdn_wide_incidents_one_instance_would() {
        let (events, end) = cdn_wide_scenario();
        let mut queues_ts: Vec<std::collections::VecDeque<i64>> = vec![Default::default(); 4];
        for ev in &events {
            if let crate::sim::Event::Report(r) = ev {
                queues_ts[partition_of(&r.location)].push_back(r.ts);
            }
        }
        let single = run_partitioned(&events, end, |left| {
            let p = *left
                .iter()
                .min_by_key(|p| queues_ts[**p].front().copied().unwrap_or(i64::MAX))
                .expect("a partition");
            queues_ts[p].pop_front();
            p
        });
        let cdn_wide: Vec<&Alert> = single
            .iter()
            .filter(|a| a.scope.location.is_none())
            .collect();
        assert!(
            cdn_wide
                .iter()
                .any(|a| a.status == crate::incident::Status::Firing)
                && cdn_wide
                    .iter()
                    .any(|a| a.status == crate::incident::Status::Resolved),
            "the scenario has a CDN-wide incident: {single:#?}"
        );
        // Whole alerts (ids, parents, evidence), each once.
        let all = |alerts: &[Alert]| -> Vec<String> {
            let mut v: Vec<_> = alerts.iter().map(|a| format!("{a:?}")).collect();
            v.sort();
            v
        };
        // The "IN/" locations' partitions (0, 2, 3) on both instances; partition 0's owner
        // sends the CDN-wide alerts: either instance.
        for owners in [[0, 0, 1, 1], [1, 0, 0, 1]] {
            let peered = run_peered(&events, end, owners);
            assert_eq!(all(&peered), all(&single), "owners {owners:?}");
        }
    }
}
