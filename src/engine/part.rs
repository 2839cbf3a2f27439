//! One source partition's task, as Kafka Streams has one per input partition: its windows and
//! watermark, what is normal for its keys, and the incidents on its locations. It records a
//! report, tests a window it closed, learns from the clean ones and decides its own incidents.
//! Everything here depends only on that partition's records, in their order.

use std::collections::{HashMap, HashSet};

use super::Settings;
use super::assess::{self, Assessment, References};
use super::decide::{Grouping, Tested, flatten, roll_up};
use super::paired::SessionLevels;
use super::runs::Runs;
use crate::decode::Report;
use crate::detect::DetectConfig;
use crate::detect::{Baseline, Metric, Normals, Reference, Severity};
use crate::incident::{Alert, Incidents, Verdict};
use crate::metric::{Spread, Trace};
use crate::table::Expected;
use crate::time::Millis;
use crate::window::{Acc, Closed, FastMap, FastSet, Key, Recorded, Windows};

/// One source partition's share of the state (input without partitions is partition -1).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Part {
    pub(super) windows: Windows,
    /// What is normal per key and metric that learns it, relative to the benchmark.
    pub(super) baselines: FastMap<(Key, Metric), Baseline>,
    /// Own levels per key and metric (rates, means of logs, usual reports per window):
    /// where the key has no benchmark, and for the metrics benchmarks do not carry.
    pub(super) levels: FastMap<(Key, Metric), Baseline>,
    /// Usual reports per key, as state written before they were a metric's own level kept
    /// them; [`Part::settle`] moves them into `levels`.
    #[serde(default, skip_serializing)]
    pub(super) volumes: FastMap<Key, Baseline>,
    /// Per key and metric whose test scales a variance, its learned design effect.
    #[serde(default)]
    pub(super) spreads: FastMap<(Key, Metric), Spread>,
    /// Keys bad in the last closed window: their reports are also counted per cohort (ASN,
    /// device) so that an incident can name the cohort behind it.
    #[serde(default)]
    pub(super) suspects: FastSet<Key>,
    /// Keys under suspicion: their last closed window deviated on some metric (bad, or beyond
    /// the floors without being significant yet): their sessions hold their own levels
    /// ([`SessionLevels::observe`]).
    #[serde(default, skip_serializing_if = "FastSet::is_empty")]
    pub(super) held: FastSet<Key>,
    /// Small keys' recent windows, so that their evidence adds up.
    #[serde(default)]
    pub(super) runs: Runs,
    /// What each live session has shown so far, for the metrics that pair.
    #[serde(default)]
    pub(super) sessions: SessionLevels,
    /// Incidents on its locations and location+CDN pairs.
    pub(super) incidents: Incidents,
    /// Every window ending at or before this has been decided for its incidents.
    pub(super) decided_until: Millis,
    /// An upper bound of the keys with learned normals: distinct keys counted at the last
    /// check, plus the entries inserted since ([`Part::cap_learned`] counts again only when
    /// it passes the cap).
    #[serde(skip)]
    pub(super) learned_bound: Option<usize>,
}

impl Part {
    pub(super) fn new(cfg: &Settings) -> Self {
        Part {
            windows: Windows::new(cfg.window_ms(), cfg.lateness_ms(), cfg.window.max_keys),
            baselines: FastMap::default(),
            levels: FastMap::default(),
            volumes: FastMap::default(),
            spreads: FastMap::default(),
            suspects: FastSet::default(),
            held: FastSet::default(),
            runs: Runs::default(),
            sessions: SessionLevels::default(),
            incidents: Incidents::new(),
            decided_until: Millis::MIN,
            learned_bound: Some(0),
        }
    }

    /// Keys with learned normals (levels, offsets, spreads), each counted once.
    fn learned_last_seen(&self) -> HashMap<&Key, Millis> {
        let mut seen: HashMap<&Key, Millis> = HashMap::new();
        for ((k, _), b) in self.levels.iter().chain(self.baselines.iter()) {
            let e = seen.entry(k).or_insert(b.last_seen);
            *e = (*e).max(b.last_seen);
        }
        for ((k, _), sp) in &self.spreads {
            let e = seen.entry(k).or_insert(sp.last_seen);
            *e = (*e).max(sp.last_seen);
        }
        seen
    }

    /// Keys with learned normals.
    pub(super) fn learned_keys(&self) -> usize {
        self.learned_last_seen().len()
    }

    /// Entries of learned normals (one per key and metric).
    pub(super) fn learned_entries(&self) -> usize {
        self.levels.len() + self.baselines.len() + self.spreads.len()
    }

    /// Keeps at most `max` keys' learned normals: past it, the least recently seen keys
    /// forget theirs, down to nine tenths of `max` (so that a flood of new keys pays for one
    /// count per tenth of the cap). Returns how many keys were evicted.
    pub(super) fn cap_learned(&mut self, max: usize) -> u64 {
        if self.learned_bound.is_some_and(|b| b <= max) {
            return 0;
        }
        let seen = self.learned_last_seen();
        if seen.len() <= max {
            self.learned_bound = Some(seen.len());
            return 0;
        }
        let keep = max - max / 10;
        let excess = seen.len() - keep;
        let by_age = seen.into_iter().map(|(k, t)| (t, k)).collect();
        let gone: HashSet<Key> = crate::time::least_recent(by_age, excess)
            .into_iter()
            .cloned()
            .collect();
        self.levels.retain(|(k, _), _| !gone.contains(k));
        self.baselines.retain(|(k, _), _| !gone.contains(k));
        self.spreads.retain(|(k, _), _| !gone.contains(k));
        self.learned_bound = Some(keep);
        gone.len() as u64
    }

    fn references(&self) -> References<'_> {
        References {
            baselines: &self.baselines,
            levels: &self.levels,
            spreads: &self.spreads,
        }
    }

    /// Readies a part read from a checkpoint or a changelog share: the key cap as configured
    /// now, and usual report counts from state of an earlier layout in `levels`.
    pub(super) fn settle(&mut self, max_keys: usize) {
        self.windows.set_max_keys(max_keys);
        for (k, b) in self.volumes.drain() {
            self.levels.insert((k, Metric::REPORT_VOLUME), b);
        }
    }

    /// The locations this part has history of (with repeats).
    pub(super) fn locations(&self) -> impl Iterator<Item = &str> {
        self.levels.keys().map(|(k, _)| &*k.location)
    }

    /// Whether this part has history of keys at `location`.
    pub(super) fn knows_location(&self, location: &str) -> bool {
        self.levels.keys().any(|(k, _)| &*k.location == location)
    }

    /// Folds a report, joined with `expected` (the benchmark valid at its event time), into
    /// its window, with the key's learned normal applied.
    pub(super) fn record(
        &mut self,
        r: &Report,
        expected: Option<&Expected>,
        source: Option<(i32, i64)>,
    ) -> Recorded {
        if self.windows.refuses(&r.location, &r.cdn, r.ts) {
            return Recorded::KeyCapExceeded; // before any interning or lookup of its normals
        }
        let learned =
            !self.baselines.is_empty() || !self.levels.is_empty() || !self.spreads.is_empty();
        // Interned once, where anything needs it before the window does.
        let key = (learned || !self.suspects.is_empty() || !self.held.is_empty())
            .then(|| self.windows.key(&r.location, &r.cdn));
        let mut normals = match &key {
            Some(key) if learned => {
                assess::normals(&self.references(), key, expected.is_some(), |k| {
                    k.sign_test()
                })
            }
            _ => Normals::default(),
        };
        if let Some(key) = &key {
            // A sample of a sequential test is scored against the key's learned spread.
            for m in Metric::all() {
                if m.kind().scores(r) {
                    normals[m.index()].var =
                        self.spreads.get(&(key.clone(), m)).and_then(|s| s.var());
                }
            }
        }
        let mut session = None; // the id's hash and the window, once per report
        let mut marked = None;
        let hold = !self.held.is_empty() && key.as_ref().is_some_and(|k| self.held.contains(k));
        for m in Metric::all() {
            let kind = m.kind();
            let (pair, event) = (kind.pair_value(r), kind.session_event(r));
            if pair.is_none() && event.is_none() {
                continue;
            }
            let (id, window) = *session.get_or_insert_with(|| {
                (
                    crate::window::sessions::hash(&r.session_id),
                    self.windows.start_of(r.ts),
                )
            });
            let n = &mut normals[m.index()];
            if let Some(x) = pair {
                n.session = self.sessions.observe(id, m.index(), window, x, hold);
            } else if let Some(event) = event {
                n.mark =
                    self.sessions
                        .mark(id, m.index(), (window, self.windows.size()), event, hold);
                marked.get_or_insert(n.mark);
            }
        }
        // Whether the session is new in its window, and continues from the one before, is
        // the session's, not a metric's: a metric that follows sessions shares the mark.
        if let Some(mark) = marked {
            for m in Metric::following_sessions() {
                normals[m.index()].mark = mark;
            }
        }
        let suspect = key.as_ref().is_some_and(|k| self.suspects.contains(k));
        self.windows
            .record_keyed(&r.location, &r.cdn, key, r.ts, source, |acc| {
                if suspect && acc.cohorts.is_none() {
                    acc.cohorts = Some(Box::default());
                }
                acc.add_with(r, expected, &normals)
            })
    }

    /// Tests a window this partition closed (its keys are one family for the multiple-test
    /// correction), then learns what is normal from it.
    pub(super) fn test(&mut self, w: &mut Closed, detect: &DetectConfig) -> Assessment {
        let keys = std::mem::take(&mut w.keys);
        let (start, size) = (w.start, w.end - w.start);
        let runs = &self.runs;
        let span = detect.run_windows;
        let scan = |k: &Key, a: &Acc| runs.scan(k, (start, size), span, a);
        let mut assessment = assess::assess(keys, &self.references(), &scan, detect);
        self.trail(&mut assessment, start, size, w.end);
        self.suspects = assessment
            .verdicts
            .iter()
            .filter(|(_, v)| v.bad)
            .map(|(i, _)| assessment.keys[*i].0.clone())
            .collect();
        self.held = assessment
            .verdicts
            .iter()
            .filter(|(_, v)| v.bad || v.finding.eligible)
            .map(|(i, _)| assessment.keys[*i].0.clone())
            .collect();
        self.learn(detect.min_samples, &assessment, w.end);
        // A small key keeps its window for the next runs: one of fewer than 4 x `min_samples`
        // reports (a window alone decides only large deviations there), or with too few
        // session starts among its reports.
        let short = |a: &Acc| {
            a.reports < 4 * detect.min_samples
                || Metric::all().any(|m| {
                    let kind = m.kind();
                    kind.accumulates()
                        && kind.per_session()
                        && kind.level(a.window(m), detect.min_samples).is_none()
                })
        };
        self.runs.push((start, size), &assessment.keys, short, span);
        assessment
    }

    /// Each bad verdict on a key gets the key's last windows tested on its metric (the
    /// "before" of an incident it may start); then this window joins the trail of every key
    /// and metric tested. The trail lives in the key's spread: where the metric learns one
    /// only the key's learning makes the entry (an entry's presence starts its sequential
    /// test); a metric that learns none (failure rate) gets an entry for its trail, seen as
    /// long as it is tested.
    fn trail(&mut self, a: &mut Assessment, start: Millis, size: Millis, at: Millis) {
        use crate::incident::evidence::Point;
        let mut inserted = 0;
        for (i, v) in &mut a.verdicts {
            let m = v.finding.metric;
            let kind = m.kind();
            let plain = kind.prior_spread().is_none() && !kind.sequential();
            let k = (a.keys[*i].0.clone(), m);
            let s = match self.spreads.get_mut(&k) {
                Some(s) => s,
                None if plain => {
                    inserted += 1;
                    self.spreads.entry(k).or_default()
                }
                None => continue,
            };
            if plain {
                s.last_seen = at;
            }
            if v.bad {
                v.before = s
                    .trail
                    .before(start)
                    .map(|t| Point {
                        window_start: t.start,
                        window_end: t.start + size,
                        metric: m,
                        observed: f64::from(t.observed),
                        expected: f64::from(t.expected),
                        samples: u64::from(t.samples),
                        p_value: f64::from(t.p_value),
                        bad: t.bad,
                        severity: if t.critical {
                            Severity::Critical
                        } else {
                            Severity::Warning
                        },
                        cohort: None,
                        exposure: None,
                    })
                    .collect();
            }
            let f = &v.finding;
            s.trail.push(Trace {
                start,
                observed: f.observed as f32,
                expected: f.expected as f32,
                samples: u32::try_from(f.samples).unwrap_or(u32::MAX),
                p_value: f.p_value as f32,
                bad: v.bad,
                critical: v.severity == Severity::Critical,
            });
        }
        self.learned_bound = self.learned_bound.map(|b| b + inserted);
    }

    /// After the window starting at `start` (of `size`) was tested: forgets the sessions that
    /// have sent nothing since the window before it (ended), then the least recently seen
    /// beyond `max`; returns how many the cap evicted.
    pub(super) fn prune_sessions(&mut self, start: Millis, size: Millis, max: usize) -> u64 {
        self.sessions.prune(start - size, max)
    }

    /// Sessions (and metrics) whose own levels are held.
    pub(super) fn session_levels(&self) -> usize {
        self.sessions.len()
    }

    /// Windows held in small keys' runs.
    pub(super) fn run_windows(&self) -> usize {
        self.runs.windows()
    }

    /// Decides this partition's incidents (location-wide parents and location+CDN scopes)
    /// for the window `[start, end)` from its stashed keys; `outer` holds the CDN-wide
    /// incidents they may belong to.
    pub(super) fn decide(
        &mut self,
        start: Millis,
        end: Millis,
        stashed: Vec<Tested>,
        locations: Vec<Verdict>,
        detect: &DetectConfig,
        outer: &Incidents,
    ) -> Vec<Alert> {
        let (keys, verdicts) = flatten(stashed);
        let mut all = roll_up(detect, &keys, &verdicts, Grouping::Location);
        // A location's aggregate bad where no roll-up of its keys bad on their own says so.
        for v in locations {
            let m = v.finding.metric;
            if !all
                .iter()
                .any(|p| p.scope == v.scope && p.finding.metric == m)
            {
                all.push(v);
            }
        }
        all.extend(verdicts.into_iter().map(|(_, v)| v));
        let alerts = self
            .incidents
            .apply_under(start, end, all, detect, Some(outer));
        self.decided_until = end;
        alerts
    }

    /// Learns what is normal from a tested window: every key's own levels where they are
    /// its reference (each metric follows its window as it says), and the offsets from the
    /// benchmark of its clean findings.
    fn learn(&mut self, min_n: u64, a: &Assessment, at: Millis) {
        let (keys, verdicts, runs) = (&a.keys, &a.verdicts, &a.runs);
        let (mut bad, mut suspect) = (HashSet::new(), HashSet::new());
        for (i, v) in verdicts {
            if v.bad {
                bad.insert((*i, v.finding.metric));
            } else if v.finding.eligible {
                suspect.insert((*i, v.finding.metric));
            }
        }
        let mut inserted = 0usize;
        for (i, (key, acc)) in keys.iter().enumerate() {
            for m in Metric::all() {
                let kind = m.kind();
                if kind.benchmarked() && acc.joined > 0 {
                    continue; // the benchmark is its reference
                }
                // A key too small for one window learns from its run.
                let run = a.runs[i].as_ref().filter(|_| kind.accumulates());
                let level = kind.level(acc.window(m), min_n);
                let Some(x) = level.or_else(|| kind.level(run?.window(m), min_n)) else {
                    continue;
                };
                let is_bad = bad.contains(&(i, m));
                if let Some(b) = self.levels.get_mut(&(key.clone(), m)) {
                    if suspect.contains(&(i, m)) && b.warm_level() {
                        b.lean(x, at); // not significant (yet): followed only slowly
                    } else {
                        kind.follow(b, x, is_bad, at);
                    }
                } else {
                    let mut b = Baseline::default();
                    kind.follow(&mut b, x, is_bad, at);
                    if b != Baseline::default() {
                        self.levels.insert((key.clone(), m), b);
                        inserted += 1;
                    }
                }
            }
        }
        // A key's usual share of sessions with an event and its samples' squared deviations
        // from its reference, from its window alone.
        let references: Vec<Normals> = keys
            .iter()
            .map(|(key, acc)| {
                assess::normals(&self.references(), key, acc.joined > 0, |k| k.per_session())
            })
            .collect();
        for (i, (key, acc)) in keys.iter().enumerate() {
            for m in Metric::all() {
                let (kind, w) = (m.kind(), acc.window(m));
                let normal = references[i][m.index()];
                let reference = match kind.expected(w) {
                    Some(e) => Some(e + normal.offset),
                    None => normal.own,
                };
                if let Some(s) = self.spreads.get_mut(&(key.clone(), m))
                    && let Some(step) = kind.cusum_step(w, s.base(), s.clump())
                {
                    s.step_cusum(step, at);
                }
                // Else the variance within the window (or, for a key short of samples in one,
                // its longest run) where the level test ran on it.
                let within = reference.and_then(|r| kind.deviations(w, r)).or_else(|| {
                    let run = || runs[i].as_ref().map(|r| r.window(m));
                    let tested = Some(w)
                        .filter(|w| kind.level(*w, min_n).is_some())
                        .or_else(|| run().filter(|r| kind.level(*r, min_n).is_some()))?;
                    kind.within(tested)
                });
                let base = kind.base_measure(w);
                let clump = runs[i]
                    .as_ref()
                    .and_then(|r| kind.clump_measure(r.window(m)));
                if (base.is_none() && within.is_none()) || bad.contains(&(i, m)) {
                    continue;
                }
                let k = (key.clone(), m);
                let s = match self.spreads.get_mut(&k) {
                    Some(s) => s,
                    None => {
                        inserted += 1;
                        self.spreads.entry(k).or_default()
                    }
                };
                let slow = suspect.contains(&(i, m));
                if let Some((events, sessions)) = base {
                    s.learn_base(events, sessions, at, slow);
                }
                if let Some((ss, df)) = within {
                    s.learn_var(ss, df, at, slow);
                }
                if let Some((x, d)) = clump {
                    s.learn_clump(x, d, at, slow);
                }
            }
        }
        // How each small key's sessions come and go, and whether they vanished together.
        for (i, (key, acc)) in keys.iter().enumerate() {
            for &m in Metric::following_sessions() {
                let (kind, k) = (m.kind(), (key.clone(), m));
                if self
                    .levels
                    .get(&k)
                    .is_some_and(|b| kind.expects_reports(b.offset))
                {
                    continue; // large enough for its count's own test
                }
                let w = acc.window(m);
                let s = match self.spreads.get_mut(&k) {
                    Some(s) => s,
                    None if kind.starts_following(w) => {
                        inserted += 1;
                        self.spreads.entry(k).or_default()
                    }
                    None => continue,
                };
                let (is_bad, slow) = (bad.contains(&(i, m)), suspect.contains(&(i, m)));
                kind.follow_sessions(w, s, is_bad, slow, at);
            }
        }
        for (i, v) in verdicts {
            let m = v.finding.metric;
            if m.kind().sequential()
                && let Some(s) = self.spreads.get_mut(&(keys[*i].0.clone(), m))
            {
                s.verdict(v.bad);
            }
            let level = v.finding.spread.zip(m.kind().prior_spread());
            if !v.bad && (level.is_some() || v.finding.pair_spread.is_some()) {
                let k = (keys[*i].0.clone(), m);
                let s = match self.spreads.get_mut(&k) {
                    Some(s) => s,
                    None => {
                        inserted += 1;
                        self.spreads.entry(k).or_default()
                    }
                };
                if let Some((x, prior)) = level {
                    s.learn(x, prior, at, v.finding.eligible);
                }
                if let Some(x) = v.finding.pair_spread {
                    s.learn_pair(x, crate::metric::PAIR_DESIGN_EFFECT, at, v.finding.eligible);
                }
            }
            let key = (keys[*i].0.clone(), m);
            if v.finding.reference != Reference::Benchmark
                || !m.kind().learns_offset()
                || !Baseline::teaches(self.baselines.get(&key), v.bad)
            {
                continue;
            }
            inserted += self.teach_offset(key, v, at);
        }
        // Each location's aggregate learns its offset from the benchmark like a key.
        for (key, v) in &a.locations {
            let m = v.finding.metric;
            let k = (key.clone(), m);
            if !m.kind().learns_offset() || !Baseline::teaches(self.baselines.get(&k), v.bad) {
                continue;
            }
            inserted += self.teach_offset(k, v, at);
        }
        // Every new entry may be a new key.
        self.learned_bound = self.learned_bound.map(|b| b + inserted);
    }

    /// Teaches `key`'s offset from the benchmark with a window's verdict on it; 1 where that
    /// made a new entry.
    fn teach_offset(&mut self, key: (Key, Metric), v: &Verdict, at: Millis) -> usize {
        let new = usize::from(!self.baselines.contains_key(&key));
        let b = self.baselines.entry(key).or_default();
        // The finding's expectation already includes the offset used: undo it.
        let raw = v.finding.raw_offset(b.offset);
        if v.finding.eligible && b.warm() {
            // Beyond the floors but not (yet) significant: the start of an incident on a
            // small key, more often than not. Learned at full speed it would be absorbed
            // before its evidence adds up; a lasting shift is still followed, slowly.
            b.lean_offset(raw, at);
        } else {
            b.learn(raw, at);
        }
        new
    }

    /// Keys unseen since `horizon` forget what was normal for them.
    pub(super) fn forget_before(&mut self, horizon: Millis) {
        self.baselines.retain(|_, b| b.last_seen >= horizon);
        self.levels.retain(|_, b| b.last_seen >= horizon);
        self.spreads.retain(|_, s| s.last_seen >= horizon);
    }
}
