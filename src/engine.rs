//! The pure core of the pipeline: as-of join, windows, detection and incidents, with no I/O.
//!
//! The daemon, the backtest and the benchmarks all drive this same type, so the backtest runs
//! exactly the daemon's detection.

use std::collections::{BTreeMap, HashMap, HashSet};

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

pub struct Engine {
    cfg: Config,
    table: BenchmarkTable,
    windows: Windows,
    incidents: Incidents,
    counters: Counters,
    closes_since_prune: u32,
    /// What is normal per key and log-scale metric, relative to the benchmark.
    baselines: HashMap<(Key, Metric), Baseline>,
    /// Own levels of keys without a benchmark (rates, or means of logs).
    levels: HashMap<(Key, Metric), Baseline>,
    /// Usual reports per window of each key, to notice silence.
    volumes: HashMap<Key, Baseline>,
    /// Viewer quality of the last closed window: totals and the worst keys.
    quality: Quality,
    /// Keys bad in the last closed window: their reports are also counted per cohort (ASN,
    /// device) so that an incident can name the cohort behind it.
    suspects: HashSet<Key>,
}

#[derive(serde::Serialize)]
struct StateRef<'a> {
    windows: &'a Windows,
    incidents: &'a Incidents,
    counters: &'a Counters,
    closes_since_prune: u32,
    baselines: &'a HashMap<(Key, Metric), Baseline>,
    levels: &'a HashMap<(Key, Metric), Baseline>,
    volumes: &'a HashMap<Key, Baseline>,
    suspects: &'a HashSet<Key>,
}

#[derive(serde::Deserialize)]
struct State {
    windows: Windows,
    incidents: Incidents,
    counters: Counters,
    closes_since_prune: u32,
    baselines: HashMap<(Key, Metric), Baseline>,
    levels: HashMap<(Key, Metric), Baseline>,
    volumes: HashMap<Key, Baseline>,
    #[serde(default)]
    suspects: HashSet<Key>,
}

/// One key's viewer quality in a closed window, with what its benchmark expected.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
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
            windows: Windows::new(cfg.window_ms(), cfg.lateness_ms(), cfg.window.max_keys),
            cfg: cfg.clone(),
            table,
            incidents: Incidents::new(),
            counters: Counters::default(),
            closes_since_prune: 0,
            baselines: HashMap::new(),
            levels: HashMap::new(),
            volumes: HashMap::new(),
            quality: Quality::default(),
            suspects: HashSet::new(),
        }
    }

    /// The engine's state (windows, incidents, learned baselines, counters; not the
    /// benchmark table, which has its own cache) as CBOR, for a checkpoint.
    pub fn snapshot(&self) -> Result<Vec<u8>, String> {
        let state = StateRef {
            windows: &self.windows,
            incidents: &self.incidents,
            counters: &self.counters,
            closes_since_prune: self.closes_since_prune,
            baselines: &self.baselines,
            levels: &self.levels,
            volumes: &self.volumes,
            suspects: &self.suspects,
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
        let shape = Windows::new(cfg.window_ms(), cfg.lateness_ms(), cfg.window.max_keys);
        if !s.windows.same_shape(&shape) {
            return Err((
                "window.size or window.allowed_lateness changed".into(),
                table,
            ));
        }
        let mut e = Self::with_table(cfg, table);
        e.windows = s.windows;
        e.windows.set_max_keys(cfg.window.max_keys);
        e.incidents = s.incidents;
        e.counters = s.counters;
        e.closes_since_prune = s.closes_since_prune;
        e.baselines = s.baselines;
        e.levels = s.levels;
        e.volumes = s.volumes;
        e.suspects = s.suspects;
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

    pub fn table(&self) -> &BenchmarkTable {
        &self.table
    }

    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    pub fn firing(&self) -> usize {
        self.incidents.firing()
    }

    /// Applies a benchmark row (or a tombstone, `None`) valid from `ts`.
    pub fn on_benchmark(&mut self, location: &str, cdn: &str, ts: Millis, row: Option<Expected>) {
        self.table.upsert(location, cdn, ts, row);
    }

    /// Joins a report with the benchmark valid at its event time and folds it into its window.
    pub fn on_report(&mut self, r: &Report, source: Option<(i32, i64)>) -> Recorded {
        let expected = self.table.as_of(&r.location, &r.cdn, r.ts);
        let joined = expected.is_some();
        let mut normal = Normal::default();
        if joined && !self.baselines.is_empty() {
            let key = self.windows.key(&r.location, &r.cdn);
            let off = |m| {
                self.baselines
                    .get(&(key.clone(), m))
                    .map_or(0.0, |b| b.offset)
            };
            normal.throughput_offset = off(Metric::ThroughputKbps);
            normal.startup_offset = off(Metric::StartupMs);
        } else if !joined && !self.levels.is_empty() {
            let key = self.windows.key(&r.location, &r.cdn);
            let level = |m| own_level(&self.levels, &key, m);
            normal.own_throughput_log = level(Metric::ThroughputKbps);
            normal.own_startup_log = level(Metric::StartupMs);
        }
        let suspect = !self.suspects.is_empty()
            && self
                .suspects
                .contains(&self.windows.key(&r.location, &r.cdn));
        let out = self
            .windows
            .record(&r.location, &r.cdn, r.ts, source, |acc| {
                if suspect && acc.cohorts.is_none() {
                    acc.cohorts = Some(Box::default());
                }
                acc.add_with(r, expected, &normal)
            });
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

    pub fn watermark(&self) -> Option<Millis> {
        self.windows.watermark()
    }

    /// Registers a source partition this instance now owns; windows wait for its input.
    pub fn add_partition(&mut self, partition: i32) {
        self.windows.add_partition(partition);
    }

    /// Registered partitions that have not delivered a record yet.
    pub fn silent_partitions(&self) -> Vec<i32> {
        self.windows.silent_partitions()
    }

    /// Per registered partition: newest event time (if any) and whether it is idle.
    pub fn partition_state(&self) -> BTreeMap<i32, (Option<Millis>, bool)> {
        self.windows.partition_state()
    }

    pub fn has_partition(&self, partition: i32) -> bool {
        self.windows.has_partition(partition)
    }

    /// A source partition without input for a while: stop waiting for it.
    pub fn set_partition_idle(&mut self, partition: i32) {
        self.windows.set_idle(partition);
    }

    /// A source partition this instance no longer owns.
    pub fn remove_partition(&mut self, partition: i32) {
        self.windows.remove_partition(partition);
    }

    /// Whether the watermark has passed a window that is still open (cheap).
    pub fn has_ready(&self) -> bool {
        self.windows.has_ready()
    }

    /// Closes every window the watermark has passed and returns the alerts they caused.
    pub fn close_ready(&mut self) -> Vec<Alert> {
        let closed = self.windows.close_ready();
        self.detect(closed)
    }

    /// Closes every window ending at or before `watermark` (used when input is idle, and to
    /// flush at the end of a backtest).
    pub fn close_until(&mut self, watermark: Millis) -> Vec<Alert> {
        let closed = self.windows.close_until(watermark);
        self.detect(closed)
    }

    /// Lowest source offset per partition still needed by an open window.
    pub fn pending_offsets(&self) -> std::collections::HashMap<i32, i64> {
        self.windows.pending_offsets()
    }

    fn detect(&mut self, closed: Vec<Closed>) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for w in closed {
            self.counters.windows_closed += 1;
            let mut present = w.keys;
            // Keys that usually report but sent nothing in this window are tested too.
            for (k, b) in &self.volumes {
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
                    self.baselines
                        .get(&(key.clone(), m))
                        .copied()
                        .unwrap_or_default()
                };
                let (tp, su) = (base(Metric::ThroughputKbps), base(Metric::StartupMs));
                let offsets = Offsets {
                    throughput: tp.offset,
                    startup: su.offset,
                };
                let own = if acc.joined == 0 && !self.levels.is_empty() {
                    let level = |m| own_level(&self.levels, key, m);
                    OwnLevels {
                        failure_rate: level(Metric::FailureRate),
                        rebuffer_ratio: level(Metric::RebufferRatio),
                        throughput_log: level(Metric::ThroughputKbps),
                        startup_log: level(Metric::StartupMs),
                    }
                } else {
                    OwnLevels::default()
                };
                let detect = &self.cfg.detect;
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
                if let Some(b) = self.volumes.get(key)
                    && b.windows >= detect::OWN_LEVEL_WARMUP
                    && let Some(f) =
                        detect::evaluate_volume(acc.reports, b.offset, &tune(Metric::ReportVolume))
                {
                    findings.push((i, f));
                }
            }
            self.quality = self.summarise(w.start, &keys);
            let p: Vec<f64> = findings.iter().map(|(_, f)| f.p_value).collect();
            let discovered = detect::benjamini_hochberg(&p, self.cfg.detect.fdr);
            self.counters.tests += findings.len() as u64;
            let mut verdicts: Vec<(usize, Verdict)> = findings
                .into_iter()
                .zip(discovered)
                .map(|((i, finding), disc)| {
                    let bad = disc && finding.eligible;
                    self.counters.discoveries += u64::from(bad);
                    let k = &keys[i].0;
                    let scope = Scope::pair(&k.location, &k.cdn);
                    let t = self
                        .cfg
                        .detect
                        .tuning(Some(&k.location), Some(&k.cdn), finding.metric);
                    (
                        i,
                        Verdict {
                            scope,
                            severity: detect::severity(finding.effect, &t),
                            finding,
                            bad,
                        },
                    )
                })
                .collect();
            for (i, v) in verdicts.iter_mut() {
                if v.bad
                    && let Some(c) = &keys[*i].1.cohorts
                {
                    v.finding.cohort = c.explain(&v.finding);
                }
            }
            self.suspects = verdicts
                .iter()
                .filter(|(_, v)| v.bad)
                .map(|(i, _)| keys[*i].0.clone())
                .collect();
            self.learn(&keys, &verdicts, w.end);
            let parents = self.roll_up(&keys, &verdicts);
            let mut all: Vec<Verdict> = parents;
            all.extend(verdicts.drain(..).map(|(_, v)| v));
            let out = self.incidents.apply(w.start, w.end, all, &self.cfg.detect);
            self.counters.alerts += out.len() as u64;
            alerts.extend(out);
            self.closes_since_prune += 1;
            if self.closes_since_prune >= 10 {
                self.closes_since_prune = 0;
                let horizon = w.end - TABLE_HISTORY_WINDOWS * self.windows.size();
                self.table.prune_before(horizon);
                // Keys unseen for as long forget what was normal for them.
                self.baselines.retain(|_, b| b.last_seen >= horizon);
                self.levels.retain(|_, b| b.last_seen >= horizon);
                self.volumes.retain(|_, b| b.last_seen >= horizon);
            }
        }
        alerts
    }

    fn summarise(&self, start: Millis, keys: &[(Key, Acc)]) -> Quality {
        let mut total = Acc::default();
        let mut worst: Vec<KeyQuality> = Vec::new();
        for (k, acc) in keys {
            if acc.reports == 0 {
                continue;
            }
            total.merge(acc);
            if acc.reports >= self.cfg.detect.min_samples {
                worst.push(key_quality(k, acc));
            }
        }
        worst.sort_by(|a, b| {
            b.badness
                .total_cmp(&a.badness)
                .then(b.reports.cmp(&a.reports))
        });
        worst.truncate(WORST_KEYS);
        Quality {
            window_start: start,
            keys: keys.len(),
            reports: total.reports,
            rebuffer_ratio: total.rebuffer_ratio(),
            failure_rate: total.failure_rate(),
            worst,
        }
    }

    /// Updates the per-key baselines from the clean windows' log-scale findings.
    fn learn(&mut self, keys: &[(Key, Acc)], verdicts: &[(usize, Verdict)], at: Millis) {
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
        let min_n = self.cfg.detect.min_samples;
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

    /// Root-cause grouping. A CDN bad on one metric at `group_min_locations` or more
    /// locations is one CDN-wide incident; a location bad on one metric on every CDN tested
    /// there (two or more) is one location-wide incident. The parent's evidence is the
    /// merged accumulators of the bad keys under it.
    fn roll_up(&self, keys: &[(Key, Acc)], verdicts: &[(usize, Verdict)]) -> Vec<Verdict> {
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
            let t = self
                .cfg
                .detect
                .tuning(scope.location.as_deref(), scope.cdn.as_deref(), metric);
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
            let tune = |m| {
                self.cfg
                    .detect
                    .tuning(scope.location.as_deref(), scope.cdn.as_deref(), m)
            };
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
        for ((m, cdn), idx) in &by_cdn {
            if idx.len() >= self.cfg.detect.group_min_locations {
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
        for ((m, loc), (idx, tested)) in &by_loc {
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
}
