//! One source partition's task, as Kafka Streams has one per input partition: its windows and
//! watermark, what is normal for its keys, and the incidents on its locations. It records a
//! report, tests a window it closed, learns from the clean ones and decides its own incidents.
//! Everything here depends only on that partition's records, in their order.

use std::collections::{HashMap, HashSet};

use super::Settings;
use super::assess::{self, Assessment, References};
use super::decide::{Grouping, Tested, flatten, roll_up};
use crate::decode::Report;
use crate::detect::DetectConfig;
use crate::detect::{Baseline, Metric, Reference};
use crate::incident::{Alert, Incidents, Verdict};
use crate::table::Expected;
use crate::time::Millis;
use crate::window::{Acc, Closed, Key, Normal, Recorded, Windows};

/// One source partition's share of the state (input without partitions is partition -1).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Part {
    pub(super) windows: Windows,
    /// What is normal per key and log-scale metric, relative to the benchmark.
    baselines: HashMap<(Key, Metric), Baseline>,
    /// Own levels of keys without a benchmark (rates, or means of logs).
    levels: HashMap<(Key, Metric), Baseline>,
    /// Usual reports per window of each key, to notice silence.
    pub(super) volumes: HashMap<Key, Baseline>,
    /// Keys bad in the last closed window: their reports are also counted per cohort (ASN,
    /// device) so that an incident can name the cohort behind it.
    #[serde(default)]
    suspects: HashSet<Key>,
    /// Incidents on its locations and location+CDN pairs.
    pub(super) incidents: Incidents,
    /// Every window ending at or before this has been decided for its incidents.
    pub(super) decided_until: Millis,
}

impl Part {
    pub(super) fn new(cfg: &Settings) -> Self {
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

    fn references(&self) -> References<'_> {
        References {
            baselines: &self.baselines,
            levels: &self.levels,
            volumes: &self.volumes,
        }
    }

    /// Folds a report, joined with `expected` (the benchmark valid at its event time), into
    /// its window, with the key's learned normal applied.
    pub(super) fn record(
        &mut self,
        r: &Report,
        expected: Option<&Expected>,
        source: Option<(i32, i64)>,
    ) -> Recorded {
        let mut normal = Normal::default();
        if expected.is_some() && !self.baselines.is_empty() {
            let key = self.windows.key(&r.location, &r.cdn);
            let off = |m| {
                self.baselines
                    .get(&(key.clone(), m))
                    .map_or(0.0, |b| b.offset)
            };
            normal.throughput_offset = off(Metric::ThroughputKbps);
            normal.startup_offset = off(Metric::StartupMs);
        } else if expected.is_none() && !self.levels.is_empty() {
            let key = self.windows.key(&r.location, &r.cdn);
            let level = |m| assess::own_level(&self.levels, &key, m);
            normal.own_throughput_log = level(Metric::ThroughputKbps);
            normal.own_startup_log = level(Metric::StartupMs);
        }
        let suspect = !self.suspects.is_empty()
            && self
                .suspects
                .contains(&self.windows.key(&r.location, &r.cdn));
        self.windows
            .record(&r.location, &r.cdn, r.ts, source, |acc| {
                if suspect && acc.cohorts.is_none() {
                    acc.cohorts = Some(Box::default());
                }
                acc.add_with(r, expected, &normal)
            })
    }

    /// Tests a window this partition closed (its keys are one family for the multiple-test
    /// correction), then learns what is normal from it.
    pub(super) fn test(&mut self, w: &mut Closed, detect: &DetectConfig) -> Assessment {
        let keys = std::mem::take(&mut w.keys);
        let assessment = assess::assess(keys, &self.references(), detect);
        self.suspects = assessment
            .verdicts
            .iter()
            .filter(|(_, v)| v.bad)
            .map(|(i, _)| assessment.keys[*i].0.clone())
            .collect();
        self.learn(
            detect.min_samples,
            &assessment.keys,
            &assessment.verdicts,
            w.end,
        );
        assessment
    }

    /// Decides this partition's incidents (location-wide parents and location+CDN scopes)
    /// for the window `[start, end)` from its stashed keys; `outer` holds the CDN-wide
    /// incidents they may belong to.
    pub(super) fn decide(
        &mut self,
        start: Millis,
        end: Millis,
        stashed: Vec<Tested>,
        detect: &DetectConfig,
        outer: &Incidents,
    ) -> Vec<Alert> {
        let (keys, verdicts) = flatten(stashed);
        let mut all = roll_up(detect, &keys, &verdicts, Grouping::Location);
        all.extend(verdicts.into_iter().map(|(_, v)| v));
        let alerts = self
            .incidents
            .apply_under(start, end, all, detect, Some(outer));
        self.decided_until = end;
        alerts
    }

    /// Updates the per-key baselines from the clean windows' log-scale findings.
    fn learn(
        &mut self,
        min_n: u64,
        keys: &[(Key, Acc)],
        verdicts: &[(usize, Verdict)],
        at: Millis,
    ) {
        let mut bad = HashSet::new();
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
    pub(super) fn forget_before(&mut self, horizon: Millis) {
        self.baselines.retain(|_, b| b.last_seen >= horizon);
        self.levels.retain(|_, b| b.last_seen >= horizon);
        self.volumes.retain(|_, b| b.last_seen >= horizon);
    }
}
