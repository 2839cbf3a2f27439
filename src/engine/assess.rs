//! The window test: a pure function of one closed window's keys, the references learned for
//! them and the tuning. Every metric of every key is tested against its reference, the
//! partition's window is one family for Benjamini-Hochberg, and each finding becomes a
//! verdict (bad or not, with its severity and, where the drill-down found one, its cohort).

use std::collections::HashMap;
use std::sync::Arc;

use crate::detect::DetectConfig;
use crate::detect::rules::Tuning;
use crate::detect::{self, Baseline, Finding, Metric, Normals, Reference};
use crate::incident::{Scope, Verdict};
use crate::window::{Acc, FastMap, Key};

/// What a partition has learned about its keys, borrowed for one window's test.
pub(super) struct References<'a> {
    /// Per key and metric that learns one, the offset from the benchmark.
    pub baselines: &'a FastMap<(Key, Metric), Baseline>,
    /// Per key and metric, the key's own level: where it has no benchmark, and for the
    /// metrics benchmarks do not carry (its usual report count, ...).
    pub levels: &'a FastMap<(Key, Metric), Baseline>,
    /// Per key and metric, its learned design effect.
    pub spreads: &'a FastMap<(Key, Metric), crate::metric::Spread>,
}

/// One window's keys (sorted) and the verdicts on them, each with the index of its key.
pub(super) struct Assessment {
    pub keys: Vec<(Key, Acc)>,
    /// Per key, its longest run (this window merged with its earlier ones within reach)
    /// where it has one: what a key too small for one window learns from.
    pub runs: Vec<Option<Acc>>,
    /// Per CDN, the keys of this window that were not bad on their own, merged (see
    /// [`cdn_groups`]).
    pub groups: Vec<(Key, Acc)>,
    pub verdicts: Vec<(usize, Verdict)>,
    /// The direct test of each location's aggregate (see [`test_locations`]): every
    /// verdict, under the aggregate's key (which learns from the clean ones).
    pub locations: Vec<(Key, Verdict)>,
    /// How many tests ran (findings in the family).
    pub tests: u64,
}

impl Assessment {
    pub(super) fn discoveries(&self) -> u64 {
        self.verdicts.iter().filter(|(_, v)| v.bad).count() as u64
    }
}

/// A key's own level of `m`, once warm.
pub(super) fn own_level(
    levels: &FastMap<(Key, Metric), Baseline>,
    key: &Key,
    m: Metric,
) -> Option<f64> {
    levels
        .get(&(key.clone(), m))
        .filter(|b| b.warm_level())
        .map(|b| b.offset)
}

/// What is normal for `key` on each metric `which` selects: its learned offset from the
/// benchmark where `benchmarked` (it had one) and the metric learns one, and its own level
/// where that is the reference (no benchmark, or a metric benchmarks do not carry).
pub(super) fn normals(
    refs: &References,
    key: &Key,
    benchmarked: bool,
    which: impl Fn(&dyn crate::metric::Kind) -> bool,
) -> Normals {
    let mut out = Normals::default();
    for m in Metric::all() {
        let kind = m.kind();
        if !which(kind) {
            continue;
        }
        let n = &mut out[m.index()];
        if benchmarked && kind.learns_offset() && !refs.baselines.is_empty() {
            n.offset = refs
                .baselines
                .get(&(key.clone(), m))
                .map_or(0.0, |b| b.offset);
        }
        if (!benchmarked || !kind.benchmarked()) && !refs.levels.is_empty() {
            n.own = own_level(refs.levels, key, m);
        }
    }
    out
}

/// Tests one closed window's keys against `refs`; `scan` gives a key's runs, shortest first
/// (see [`super::runs`]).
pub(super) fn assess(
    mut present: FastMap<Key, Acc>,
    refs: &References,
    scan: &dyn Fn(&Key, &Acc) -> Vec<Acc>,
    detect_cfg: &DetectConfig,
) -> Assessment {
    // Keys that usually report but sent nothing in this window are tested too.
    for ((k, m), b) in refs.levels {
        if b.warm_level() && m.kind().expects_reports(b.offset) {
            present.entry(k.clone()).or_default();
        }
    }
    // And smaller ones whose sessions of before may have vanished together.
    for ((k, m), s) in refs.spreads {
        if s.sessions > 0.0 && m.kind().follows_sessions() && m.kind().awaits(s) {
            present.entry(k.clone()).or_default();
        }
    }
    let mut keys: Vec<_> = present.into_iter().collect();
    // HashMap order is random; detection output must not be.
    keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut runs: Vec<Option<Acc>> = Vec::with_capacity(keys.len());
    let mut findings: Vec<(usize, Finding)> = Vec::new();
    for (i, (key, acc)) in keys.iter().enumerate() {
        // A silent window has no run: a run is evidence of a change that lasts until now.
        let mut scanned = if acc.reports > 0 {
            scan(key, acc)
        } else {
            Vec::new()
        };
        let found = key_findings(key, acc, &scanned, refs, detect_cfg);
        findings.extend(found.map(|f| (i, f)));
        runs.push(scanned.pop());
    }
    let p: Vec<f64> = findings.iter().map(|(_, f)| f.p_value).collect();
    let discovered = detect::benjamini_hochberg(&p, detect_cfg.fdr);
    let tests = findings.len() as u64;
    let mut verdicts: Vec<(usize, Verdict)> = Vec::with_capacity(findings.len());
    for ((i, mut finding), disc) in findings.into_iter().zip(discovered) {
        let bad = disc && finding.eligible;
        let (k, acc) = &keys[i];
        let t = detect_cfg.tuning(Some(&k.location), Some(&k.cdn), finding.metric);
        if bad && let Some(c) = &acc.cohorts {
            finding.cohort = c.explain(finding.metric, finding.expected);
        }
        verdicts.push((
            i,
            Verdict {
                scope: Scope::pair(&k.location, &k.cdn),
                severity: detect::severity(finding.effect, &t),
                finding,
                bad,
                before: Vec::new(),
            },
        ));
    }
    let groups = cdn_groups(&keys, &verdicts);
    let locations = test_locations(&keys, &verdicts, refs, detect_cfg);
    Assessment {
        keys,
        runs,
        groups,
        verdicts,
        locations,
        tests,
    }
}

/// The key a location's aggregate (every CDN there) learns under: the location, and the
/// mark as its CDN (no CDN name that decoding accepts has it).
pub(super) fn location_key(location: &Arc<str>) -> Key {
    Key {
        location: location.clone(),
        cdn: Arc::from(GROUP_MARK.to_string()),
    }
}

/// The direct test of every location's aggregate: the keys of a location (at least two CDNs)
/// whose every report found a benchmark, merged and tested as one against the benchmarks
/// shifted by what the aggregate learned is normal for it (until warm only critical
/// deviations count); the partition's locations are one family for Benjamini-Hochberg. A
/// viewer-side problem at one location (its ISP, its last mile) shows on every CDN there,
/// each key too small to show it alone, or some bad on their own and the others not yet:
/// the aggregate is bad on a metric only when every key tested on it there deviates beyond
/// the floors (bad or not), so that one CDN's incident never names its location.
fn test_locations(
    keys: &[(Key, Acc)],
    verdicts: &[(usize, Verdict)],
    refs: &References,
    detect_cfg: &DetectConfig,
) -> Vec<(Key, Verdict)> {
    let mut merged: std::collections::BTreeMap<&Arc<str>, (Acc, usize)> = Default::default();
    for (key, acc) in keys {
        if acc.reports == 0 || acc.joined < acc.reports {
            continue;
        }
        let (m, n) = merged.entry(&key.location).or_default();
        m.merge_sums(acc);
        *n += 1;
    }
    // Per location and metric: (keys tested on it, keys deviating beyond the floors).
    let mut deviating: HashMap<(&str, Metric), (usize, usize)> = HashMap::new();
    for (i, v) in verdicts {
        let e = deviating
            .entry((&*keys[*i].0.location, v.finding.metric))
            .or_default();
        e.0 += 1;
        e.1 += usize::from(v.bad || v.finding.eligible);
    }
    let mut findings = Vec::new();
    for (location, (acc, n)) in merged {
        if n < 2 {
            continue; // one CDN: its key was tested
        }
        let key = location_key(location);
        let tune = |m| detect_cfg.tuning(Some(location), None, m);
        let mut normals = Normals::default();
        for m in Metric::all().filter(|m| m.kind().learns_offset()) {
            if let Some(b) = refs.baselines.get(&(key.clone(), m)) {
                normals[m.index()].offset = b.offset;
            }
        }
        for mut f in detect::evaluate_with(&acc, &tune, &normals) {
            let warm = !f.metric.kind().learns_offset()
                || refs
                    .baselines
                    .get(&(key.clone(), f.metric))
                    .is_some_and(Baseline::warm);
            let every = deviating
                .get(&(&**location, f.metric))
                .is_some_and(|(tested, dev)| *tested >= 2 && dev == tested);
            f.eligible &= every && f.may_be_bad(warm, tune(f.metric).critical_relative_effect);
            findings.push((key.clone(), f));
        }
    }
    let p: Vec<f64> = findings.iter().map(|(_, f)| f.p_value).collect();
    let discovered = detect::benjamini_hochberg(&p, detect_cfg.fdr);
    findings
        .into_iter()
        .zip(discovered)
        .map(|((key, finding), d)| {
            let t = detect_cfg.tuning(Some(&key.location), None, finding.metric);
            let v = Verdict {
                scope: Scope::location_wide(&key.location),
                severity: detect::severity(finding.effect, &t),
                bad: d && finding.eligible,
                finding,
                before: Vec::new(),
            };
            (key, v)
        })
        .collect()
}

/// What starts the location of a group key (a CDN's aggregate): a control character no
/// location that decoding accepts has.
pub(super) const GROUP_MARK: char = '\u{1f}';

/// The key a CDN's aggregate travels under: the mark, then the region (none: all of the
/// partition's locations).
pub(super) fn group_key(cdn: &Arc<str>, region: Option<&str>) -> Key {
    Key {
        location: Arc::from(format!("{GROUP_MARK}{}", region.unwrap_or_default())),
        cdn: cdn.clone(),
    }
}

/// Per CDN, and per CDN within each region, the keys of a window that were not bad on any
/// metric, merged: the evidence of a deviation that no key shows on its own (many small keys
/// each below any floor). Only keys whose every report found a benchmark count (the aggregate
/// is compared with the benchmarks' expectations, offset by what it learned is normal for it).
fn cdn_groups(keys: &[(Key, Acc)], verdicts: &[(usize, Verdict)]) -> Vec<(Key, Acc)> {
    let bad: std::collections::HashSet<usize> = verdicts
        .iter()
        .filter(|(_, v)| v.bad)
        .map(|(i, _)| *i)
        .collect();
    let mut groups: std::collections::BTreeMap<(Arc<str>, Option<&str>), Acc> = Default::default();
    for (i, (key, acc)) in keys.iter().enumerate() {
        if bad.contains(&i) || acc.reports == 0 || acc.joined < acc.reports {
            continue;
        }
        if let Some(region) = crate::incident::prefix_of(&key.location) {
            let g = groups.entry((key.cdn.clone(), Some(region))).or_default();
            g.merge_sums(acc);
        }
        groups
            .entry((key.cdn.clone(), None))
            .or_default()
            .merge_sums(acc);
    }
    groups
        .into_iter()
        .map(|((cdn, region), acc)| (group_key(&cdn, region), acc))
        .collect()
}

/// A key's findings over the windows that end with this one: this window alone, then each
/// of its runs (shortest first), each metric at the length that shows it worst. A change that
/// began a few windows ago shows best in the run that holds only those windows; a key too
/// small for one window is decided on a run. The smallest p-value over the lengths tested is
/// multiplied by how many were tested (Bonferroni), so the scan is one test of the window's
/// family like any other, under the same floors and Benjamini-Hochberg procedure. A metric
/// this window alone (with samples enough for its level) shows within the floors is settled
/// by it: a run is evidence of a change that lasts until now, not of one that has ended
/// (which would keep an incident open).
fn scan(
    acc: &Acc,
    runs: &[Acc],
    tune: &dyn Fn(Metric) -> Tuning,
    normals: &Normals,
) -> Vec<Finding> {
    let mut best: Vec<(Finding, usize)> = detect::evaluate_with(acc, tune, normals)
        .into_iter()
        .map(|f| (f, 1))
        .collect();
    if runs.is_empty() {
        return best.into_iter().map(|(f, _)| f).collect();
    }
    // Settled: within the floors on a window with samples enough for its level alone (a
    // window too small for that was tested on its within-session differences only, which
    // fade as sessions learn the new level: its runs still hold the level's evidence).
    let settled: Vec<Metric> = best
        .iter()
        .filter(|(f, _)| {
            let m = f.metric;
            !f.eligible && m.kind().level(acc.window(m), tune(m).min_samples).is_some()
        })
        .map(|(f, _)| f.metric)
        .collect();
    let again = |m: Metric| {
        let mut t = tune(m);
        t.enabled &= m.kind().accumulates() && !settled.contains(&m);
        t
    };
    // The sequential test is the window's own: it already holds the windows before.
    let mut alone = *normals;
    for n in alone.iter_mut() {
        n.cusum = None;
    }
    for run in runs {
        for f in detect::evaluate_with(run, &again, &alone) {
            match best.iter_mut().find(|(b, _)| b.metric == f.metric) {
                Some((b, tested)) => {
                    *tested += 1;
                    // The most significant length that passes the floors, else the most
                    // significant one.
                    if (f.eligible, -f.p_value) > (b.eligible, -b.p_value) {
                        *b = f;
                    }
                }
                None => best.push((f, 1)),
            }
        }
    }
    best.into_iter()
        .map(|(mut f, tested)| {
            f.p_value = (f.p_value * tested as f64).min(1.0);
            f
        })
        .collect()
}

/// Every finding on one key: each metric against its reference, on this window or, for a
/// metric short of samples in it, on the key's runs.
fn key_findings(
    key: &Key,
    acc: &Acc,
    runs: &[Acc],
    refs: &References,
    detect_cfg: &DetectConfig,
) -> impl Iterator<Item = Finding> {
    let mut normals = normals(refs, key, acc.joined > 0, |_| true);
    for m in Metric::all() {
        let Some(s) = refs.spreads.get(&(key.clone(), m)) else {
            continue;
        };
        if let Some(prior) = m.kind().prior_spread() {
            normals[m.index()].spread = s.value(prior);
        }
        normals[m.index()].pair_spread = s.pair_value(crate::metric::PAIR_DESIGN_EFFECT);
        normals[m.index()].base = s.base();
        normals[m.index()].clump = s.clump();
        normals[m.index()].var = s.var();
        normals[m.index()].cusum = Some(f64::from(s.cusum));
    }
    let tune = |m| detect_cfg.tuning(Some(&key.location), Some(&key.cdn), m);
    let mut out = scan(acc, runs, &tune, &normals);
    let exposure = acc.exposure();
    for f in &mut out {
        // A finding on a run counts this window's viewers only: impact adds windows up.
        f.exposure = Some(exposure);
        let warm = f.reference != Reference::Benchmark
            || !f.metric.kind().learns_offset()
            || refs
                .baselines
                .get(&(key.clone(), f.metric))
                .is_some_and(Baseline::warm);
        // Not yet known what is normal here: only a deviation beyond any offset counts.
        f.eligible &= f.may_be_bad(warm, tune(f.metric).critical_relative_effect);
    }
    out.into_iter()
}
