//! The window test: a pure function of one closed window's keys, the references learned for
//! them and the tuning. Every metric of every key is tested against its reference, the
//! partition's window is one family for Benjamini-Hochberg, and each finding becomes a
//! verdict (bad or not, with its severity and, where the drill-down found one, its cohort).

use std::collections::HashMap;

use crate::detect::DetectConfig;
use crate::detect::{self, Baseline, Finding, Metric, Offsets, OwnLevels, Reference};
use crate::incident::{Scope, Verdict};
use crate::window::{Acc, Key};

/// What a partition has learned about its keys, borrowed for one window's test.
pub(super) struct References<'a> {
    /// Per key and log-scale metric, the offset from the benchmark.
    pub baselines: &'a HashMap<(Key, Metric), Baseline>,
    /// Own levels of keys without a benchmark.
    pub levels: &'a HashMap<(Key, Metric), Baseline>,
    /// Usual reports per window.
    pub volumes: &'a HashMap<Key, Baseline>,
}

/// One window's keys (sorted) and the verdicts on them, each with the index of its key.
pub(super) struct Assessment {
    pub keys: Vec<(Key, Acc)>,
    pub verdicts: Vec<(usize, Verdict)>,
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
    levels: &HashMap<(Key, Metric), Baseline>,
    key: &Key,
    m: Metric,
) -> Option<f64> {
    levels
        .get(&(key.clone(), m))
        .filter(|b| b.windows >= detect::OWN_LEVEL_WARMUP)
        .map(|b| b.offset)
}

/// Tests one closed window's keys against `refs`.
pub(super) fn assess(
    mut present: HashMap<Key, Acc>,
    refs: &References,
    detect_cfg: &DetectConfig,
) -> Assessment {
    // Keys that usually report but sent nothing in this window are tested too.
    for (k, b) in refs.volumes {
        if b.windows >= detect::OWN_LEVEL_WARMUP && b.offset >= detect::MIN_USUAL_VOLUME {
            present.entry(k.clone()).or_default();
        }
    }
    let mut keys: Vec<_> = present.into_iter().collect();
    // HashMap order is random; detection output must not be.
    keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut findings: Vec<(usize, Finding)> = Vec::new();
    for (i, (key, acc)) in keys.iter().enumerate() {
        findings.extend(key_findings(key, acc, refs, detect_cfg).map(|f| (i, f)));
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
            finding.cohort = c.explain(&finding);
        }
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
    Assessment {
        keys,
        verdicts,
        tests,
    }
}

/// Every finding on one key: each metric against its reference, and its volume against
/// what it usually sends.
fn key_findings(
    key: &Key,
    acc: &Acc,
    refs: &References,
    detect_cfg: &DetectConfig,
) -> impl Iterator<Item = Finding> {
    let base = |m| {
        refs.baselines
            .get(&(key.clone(), m))
            .copied()
            .unwrap_or_default()
    };
    let (tp, su) = (base(Metric::ThroughputKbps), base(Metric::StartupMs));
    let offsets = Offsets {
        throughput: tp.offset,
        startup: su.offset,
    };
    let own = if acc.joined == 0 && !refs.levels.is_empty() {
        let level = |m| own_level(refs.levels, key, m);
        OwnLevels {
            failure_rate: level(Metric::FailureRate),
            rebuffer_ratio: level(Metric::RebufferRatio),
            throughput_log: level(Metric::ThroughputKbps),
            startup_log: level(Metric::StartupMs),
        }
    } else {
        OwnLevels::default()
    };
    let tune = |m| detect_cfg.tuning(Some(&key.location), Some(&key.cdn), m);
    let mut out = detect::evaluate_with(acc, &tune, &offsets, &own);
    for f in &mut out {
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
    }
    if let Some(b) = refs.volumes.get(key)
        && b.windows >= detect::OWN_LEVEL_WARMUP
        && let Some(f) = detect::evaluate_volume(acc.reports, b.offset, &tune(Metric::ReportVolume))
    {
        out.push(f);
    }
    out.into_iter()
}
