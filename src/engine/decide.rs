//! The cross-partition decision: partitions' verdicts on a window wait in a stash until the
//! frontier says every partition has closed it; then the window is decided in order:
//! CDN-wide roll-up over all partitions' bad keys first, then each partition's own incidents
//! (location-wide parents and location+CDN scopes), and the quality view.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::assess::{Assessment, GROUP_MARK};
use super::quality::{
    KeyQuality, Quality, country_of, group_into, groups_quality, key_quality, sort_worst, totals,
};
use super::{Engine, MAX_GAP_WINDOWS, TABLE_HISTORY_WINDOWS};
use crate::detect::DetectConfig;
use crate::detect::{self, Baseline, Metric, Normals};
use crate::incident::{Alert, Scope, Verdict};
use crate::time::Millis;
use crate::window::{Acc, Closed, Key};

/// A key with its accumulator and its verdicts, as a partition stashes them.
pub(super) type Tested = (Key, Acc, Vec<Verdict>);

/// Keys with their accumulators, and verdicts with the index of their key: the parallel
/// lists detection works on.
type Flat = (Vec<(Key, Acc)>, Vec<(usize, Verdict)>);

/// A partition's verdicts on one window, until every partition has closed it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Stash {
    /// Keys with findings: their verdicts, and their accumulator where a verdict is bad (the
    /// evidence of a CDN-wide or location-wide parent; empty otherwise).
    pub(super) keys: Vec<Tested>,
    reports: Acc,
    key_count: usize,
    worst: Vec<KeyQuality>,
    /// Per CDN, the partition's keys that were not bad on their own, merged (the direct
    /// test of the CDN's aggregate).
    #[serde(default)]
    groups: Vec<(Key, Acc)>,
    /// The partition's locations whose aggregate was bad (decided with its own incidents).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    locations: Vec<Verdict>,
    /// Lowest source offset per partition that contributed (for safe commits).
    pub(super) min_offsets: HashMap<i32, i64>,
    /// The partition's keys per CDN and per country, merged (the quality view's groups).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    by_cdn: BTreeMap<String, Acc>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    by_country: BTreeMap<String, Acc>,
}

impl Stash {
    /// Adds a partition's tested window; with `share_bad`, returns its bad keys (with their
    /// evidence) for the other instances.
    fn add(&mut self, a: Assessment, w: &Closed, min_samples: u64, share_bad: bool) -> Vec<Tested> {
        for (k, acc) in &a.keys {
            if acc.reports == 0 {
                continue;
            }
            self.reports.merge(acc);
            group_into(&mut self.by_cdn, &k.cdn, acc);
            group_into(&mut self.by_country, country_of(&k.location), acc);
            if acc.reports >= min_samples {
                self.worst.push(key_quality(k, acc));
            }
        }
        sort_worst(&mut self.worst);
        self.key_count += a.keys.len();
        for (p, o) in &w.min_offsets {
            let m = self.min_offsets.entry(*p).or_insert(*o);
            *m = (*m).min(*o);
        }
        let mut bad = Vec::new();
        if share_bad {
            // The CDN aggregates travel with the bad keys, under their group keys.
            bad.extend(
                a.groups
                    .iter()
                    .map(|(k, acc)| (k.clone(), acc.clone(), Vec::new())),
            );
        }
        self.groups.extend(a.groups);
        self.locations.extend(
            a.locations
                .into_iter()
                .filter(|(_, v)| v.bad)
                .map(|(_, v)| v),
        );
        let mut grouped: Vec<Vec<Verdict>> = vec![Vec::new(); a.keys.len()];
        for (i, v) in a.verdicts {
            grouped[i].push(v);
        }
        for ((key, mut acc), vs) in a.keys.into_iter().zip(grouped) {
            if vs.is_empty() {
                continue;
            }
            if vs.iter().any(|v| v.bad) {
                acc.cohorts = None;
                if share_bad {
                    bad.push((key.clone(), acc.clone(), vs.clone()));
                }
            } else {
                acc = Acc::default();
            }
            self.keys.push((key, acc, vs));
        }
        bad
    }
}

/// The quality view of a window from every partition's stash.
fn quality_of(start: Millis, stashed: &BTreeMap<i32, Stash>) -> Quality {
    let (mut reports, mut keys, mut worst) = (Acc::default(), 0, Vec::new());
    let (mut cdns, mut countries) = (BTreeMap::new(), BTreeMap::new());
    for s in stashed.values() {
        reports.merge(&s.reports);
        keys += s.key_count;
        worst.extend(s.worst.iter().cloned());
        for (name, acc) in &s.by_cdn {
            group_into(&mut cdns, name, acc);
        }
        for (name, acc) in &s.by_country {
            group_into(&mut countries, name, acc);
        }
    }
    sort_worst(&mut worst);
    Quality {
        window_start: start,
        keys,
        reports: reports.reports,
        totals: totals(&reports),
        worst,
        cdns: groups_quality(&cdns),
        countries: groups_quality(&countries),
    }
}

impl Engine {
    /// Tests one partition's closed window. What is normal for its keys learns from it; the
    /// verdicts wait in the stash (and, peered, its bad keys go out in its next summary).
    pub(super) fn stage_one(&mut self, partition: i32, mut w: Closed) {
        let Some(part) = self.parts.get_mut(&partition) else {
            return;
        };
        let a = part.test(&mut w, &self.cfg.detect);
        self.counters.learned_evicted += part.cap_learned(self.cfg.window.max_learned_keys);
        self.counters.sessions_evicted +=
            part.prune_sessions(w.start, w.end - w.start, self.cfg.window.max_sessions);
        self.counters.tests += a.tests;
        self.counters.discoveries += a.discoveries();
        let stash = self
            .stash
            .entry(w.start)
            .or_default()
            .entry(partition)
            .or_default();
        let peered = self.peers.is_some();
        let bad = stash.add(a, &w, self.cfg.detect.min_samples, peered);
        if let Some(peers) = &mut self.peers {
            peers.closed(partition, w.start, bad);
        }
    }

    /// Decides, in order, every window the frontier allows. The parts behind it (idle ones,
    /// and revoked ones unless peered) first close as far.
    pub(super) fn decide(&mut self) -> Vec<Alert> {
        let peered = self.peers.is_some();
        if let Some(to) = self.frontier.close_to(&self.parts, self.peers.as_ref()) {
            let mut behind = Vec::new();
            for (p, part) in self.parts.iter_mut() {
                if self.frontier.closes_behind(*p, peered) && part.windows.closed_until() < to {
                    behind.push((*p, part.windows.close_until(to)));
                }
            }
            for (p, windows) in behind {
                for w in windows {
                    self.stage_one(p, w);
                }
            }
        }
        self.collect_summaries();
        let Some(upto) = self.frontier.decidable(&self.parts, self.peers.as_ref()) else {
            return Vec::new();
        };
        let alerts = self.decide_until(upto);
        let (size, decided) = (self.cfg.window_ms(), self.decided_until);
        if let Some(peers) = &mut self.peers {
            peers.forget_decided(decided, size);
        }
        alerts
    }

    /// Decides, in window order, every window ending at or before `upto` with stashed
    /// verdicts or (peered) partitions' bad keys, and the empty ones between them.
    fn decide_until(&mut self, upto: Millis) -> Vec<Alert> {
        let size = self.cfg.window_ms();
        let mut alerts = Vec::new();
        loop {
            let first_bad = self.peers.as_ref().and_then(|p| p.first_window());
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
        let mut alerts = Vec::new();
        if fresh {
            self.counters.windows_closed += 1;
            self.quality = quality_of(start, &stashed);
            let (groups, bad): (Vec<Tested>, Vec<Tested>) = match &mut self.peers {
                // Every partition's, as their summaries said.
                Some(peers) => peers.take_bad(start).into_iter().partition(is_group),
                None => {
                    let groups = stashed.values().flat_map(|s| s.groups.iter());
                    let bad = stashed.values().flat_map(|s| s.keys.iter());
                    let bad = bad.filter(|(_, _, vs)| vs.iter().any(|v| v.bad));
                    (
                        groups
                            .map(|(k, a)| (k.clone(), a.clone(), Vec::new()))
                            .collect(),
                        bad.cloned().collect(),
                    )
                }
            };
            let (keys, verdicts) = flatten(bad);
            // Where each CDN had keys that were not bad (its regional aggregates).
            let clean: Vec<(Arc<str>, &str)> = groups
                .iter()
                .filter_map(|(k, _, _)| {
                    let region = k.location.strip_prefix(GROUP_MARK)?;
                    (!region.is_empty()).then(|| (k.cdn.clone(), region))
                })
                .collect();
            let grouping = Grouping::Cdn { clean: &clean };
            let mut parents = roll_up(&self.cfg.detect, &keys, &verdicts, grouping);
            let learned = &mut self.incidents.baselines;
            let direct = test_cdns(&self.cfg.detect, groups, &parents, learned, end);
            self.counters.learned_evicted +=
                cap_by_last_seen(learned, self.cfg.window.max_learned_keys);
            parents.extend(direct);
            let cdn = self.incidents.apply(start, end, parents, &self.cfg.detect);
            if let Some(kept) = &mut self.evidence {
                kept.extend(self.incidents.take_evidence());
            }
            match &mut self.peers {
                Some(peers) => peers.hold_cdn_alerts(start, cdn),
                None => alerts.extend(cdn),
            }
        } else {
            self.redecided += 1;
        }
        for (p, part) in self.parts.iter_mut() {
            if part.decided_until >= end {
                continue;
            }
            if let Some(peers) = &self.peers {
                // A part that has not closed the window yet (catching up) decides it later.
                if self.frontier.is_revoked(*p) || part.windows.closed_until() < end {
                    continue;
                }
                // Partition 0's owner sends the CDN-wide alerts of the windows it decides.
                if *p == 0 {
                    alerts.extend(peers.cdn_alerts_for(part.decided_until, start, end));
                }
            }
            let (keys, locations) = stashed
                .remove(p)
                .map(|s| (s.keys, s.locations))
                .unwrap_or_default();
            alerts.extend(part.decide(
                start,
                end,
                keys,
                locations,
                &self.cfg.detect,
                &self.incidents,
            ));
            if let Some(kept) = &mut self.evidence {
                kept.extend(part.incidents.take_evidence());
            }
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
            self.incidents
                .baselines
                .retain(|_, b| b.last_seen >= horizon);
        }
        alerts
    }
}

/// Keeps at most `max` of the aggregates' learned offsets, the least recently seen going
/// first; how many went.
fn cap_by_last_seen(learned: &mut BTreeMap<(String, Metric), Baseline>, max: usize) -> u64 {
    let excess = learned.len().saturating_sub(max);
    if excess == 0 {
        return 0;
    }
    let seen = learned.iter().map(|(k, b)| (b.last_seen, k)).collect();
    let gone: Vec<(String, Metric)> = crate::time::least_recent(seen, excess)
        .into_iter()
        .cloned()
        .collect();
    for k in &gone {
        learned.remove(k);
    }
    gone.len() as u64
}

/// Whether a stashed entry is a CDN aggregate (see [`super::assess::group_key`]).
fn is_group(t: &Tested) -> bool {
    t.0.location.starts_with(GROUP_MARK)
}

/// The direct test of every CDN's aggregate over all partitions, and of every CDN's within
/// each region: the keys that were not bad on their own, merged, tested as one against the
/// benchmarks shifted by what the aggregate learned is normal for it (`learned`, from its
/// clean windows; until warm only critical deviations count), all aggregates of the window
/// one family for Benjamini-Hochberg. An aggregate bad on a metric that `parents` (the
/// roll-up of keys bad on their own) does not already cover is one verdict: CDN-wide when
/// the CDN's aggregate is bad (its regions then say nothing more), else one for each bad
/// region of the CDN: a degradation spread over keys each too small to show it.
fn test_cdns(
    detect_cfg: &DetectConfig,
    groups: Vec<Tested>,
    parents: &[Verdict],
    learned: &mut BTreeMap<(String, Metric), Baseline>,
    at: Millis,
) -> Vec<Verdict> {
    let mut merged: BTreeMap<Scope, Acc> = BTreeMap::new();
    for (k, acc, _) in groups {
        merged.entry(group_scope(&k)).or_default().merge(&acc);
    }
    let name = |s: &Scope| s.to_string();
    let mut findings = Vec::new();
    for (scope, acc) in &merged {
        let cdn = scope.cdn.as_deref().unwrap_or_default();
        let tune = |m| detect_cfg.tuning(None, Some(cdn), m);
        let mut normals = Normals::default();
        for m in Metric::all().filter(|m| m.kind().learns_offset()) {
            if let Some(b) = learned.get(&(name(scope), m)) {
                normals[m.index()].offset = b.offset;
            }
        }
        for mut f in detect::evaluate_with(acc, &tune, &normals) {
            let warm = !f.metric.kind().learns_offset()
                || learned
                    .get(&(name(scope), f.metric))
                    .is_some_and(Baseline::warm);
            f.eligible &= f.may_be_bad(warm, tune(f.metric).critical_relative_effect);
            findings.push((scope.clone(), f));
        }
    }
    let p: Vec<f64> = findings.iter().map(|(_, f)| f.p_value).collect();
    let discovered = detect::benjamini_hochberg(&p, detect_cfg.fdr);
    let mut bad = Vec::new();
    for ((scope, finding), d) in findings.into_iter().zip(discovered) {
        let is_bad = d && finding.eligible;
        let key = (name(&scope), finding.metric);
        if finding.metric.kind().learns_offset() && Baseline::teaches(learned.get(&key), is_bad) {
            let b = learned.entry(key).or_default();
            // The expectation already includes the offset used: undo it.
            b.learn(finding.raw_offset(b.offset), at);
        }
        if is_bad {
            bad.push((scope, finding));
        }
    }
    // Per CDN and metric: CDN-wide when its aggregate is bad and no region, or at least
    // `group_min_locations` regions, are (a degradation everywhere); otherwise each bad region
    // (the most specific scope that explains it). The roll-up's parents cover their CDN.
    let mut out = Vec::new();
    let rolled_up = |cdn: Option<&str>, m: Metric| {
        parents
            .iter()
            .any(|v| v.finding.metric == m && v.scope.cdn.as_deref() == cdn)
    };
    for (scope, finding) in &bad {
        let (cdn, m) = (scope.cdn.as_deref(), finding.metric);
        if rolled_up(cdn, m) {
            continue;
        }
        let regions = bad
            .iter()
            .filter(|(s, f)| f.metric == m && s.cdn.as_deref() == cdn && s.prefix.is_some())
            .count();
        let cdn_bad = bad
            .iter()
            .any(|(s, f)| f.metric == m && s.cdn.as_deref() == cdn && s.prefix.is_none());
        let everywhere = cdn_bad && (regions == 0 || regions >= detect_cfg.group_min_locations);
        if everywhere != scope.prefix.is_none() {
            continue;
        }
        let t = detect_cfg.tuning(None, cdn, m);
        out.push(Verdict {
            scope: scope.clone(),
            severity: detect::severity(finding.effect, &t),
            finding: finding.clone(),
            bad: true,
            before: Vec::new(),
        });
    }
    out
}

/// The scope a group key stands for (see [`super::assess::group_key`]).
fn group_scope(k: &Key) -> Scope {
    let region = k.location.trim_start_matches(GROUP_MARK);
    if region.is_empty() {
        Scope::cdn_wide(&k.cdn)
    } else {
        Scope::cdn_under(region, &k.cdn)
    }
}

/// Which parents [`roll_up`] raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Grouping<'a> {
    /// One CDN at many locations: spans partitions, decided over all of them. `clean`: the
    /// regions where each CDN had keys that were not bad, so that a CDN bad at locations of
    /// one region only is that region's incident.
    Cdn { clean: &'a [(Arc<str>, &'a str)] },
    /// Every CDN at one location: a location is in one partition.
    Location,
}

/// Stashed keys sorted by key, as the parallel lists detection works on.
pub(super) fn flatten(mut groups: Vec<Tested>) -> Flat {
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
/// locations is one CDN-wide incident (of the CDN within a region, when they are all under
/// one prefix); a location bad on one metric on every CDN tested
/// there (two or more) is one location-wide incident. The parent's evidence is the
/// merged accumulators of the bad keys under it. `grouping` says which of the two to raise.
pub(super) fn roll_up(
    detect_cfg: &DetectConfig,
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
        // The parent's evidence: its bad keys merged, against the benchmark, or against
        // their own references pooled where the metric's references add up.
        let mut merged = Acc::default();
        for i in idx {
            merged.merge(&keys[*i].1);
        }
        let pooled: Vec<f64> = verdicts
            .iter()
            .filter(|(j, v)| idx.contains(j) && v.finding.metric == metric)
            .map(|(_, v)| v.finding.expected)
            .collect();
        let mut normals = Normals::default();
        normals[metric.index()].own = metric.kind().pool(&pooled);
        let tune = |m| detect_cfg.tuning(scope.location.as_deref(), scope.cdn.as_deref(), m);
        let finding = detect::evaluate_with(&merged, &tune, &normals)
            .into_iter()
            .find(|f| f.metric == metric);
        if let Some(finding) = finding {
            out.push(Verdict {
                scope,
                severity: detect::severity(finding.effect, &t),
                finding,
                bad: true,
                before: Vec::new(),
            });
        }
    };
    let clean = match grouping {
        Grouping::Cdn { clean } => clean,
        Grouping::Location => &[],
    };
    for ((m, cdn), idx) in by_cdn.iter().filter(|_| grouping != Grouping::Location) {
        if idx.len() >= detect_cfg.group_min_locations {
            // The most specific scope that holds them all: their region (the locations under
            // one prefix) when they are all in one and the CDN was tested elsewhere too, else
            // the CDN.
            let region_of = |i: usize| crate::incident::prefix_of(&keys[i].0.location);
            let region = region_of(idx[0]);
            let one_region = region.is_some()
                && idx.iter().all(|i| region_of(*i) == region)
                && clean
                    .iter()
                    .any(|(c, r)| **c == **cdn && Some(*r) != region);
            let scope = match region {
                Some(r) if one_region => Scope::cdn_under(r, cdn),
                _ => Scope::cdn_wide(cdn),
            };
            parent(*m, idx, scope);
        }
    }
    for ((m, loc), (idx, tested)) in by_loc.iter().filter(|_| grouping == Grouping::Location) {
        if idx.len() >= 2 && idx.len() == *tested {
            parent(*m, idx, Scope::location_wide(loc));
        }
    }
    out
}
