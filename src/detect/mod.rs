//! Statistical detection: is a key's window significantly worse than what is normal for it?
//!
//! Pure and synchronous. Each metric brings the test that fits its shape
//! ([`crate::metric`]): an exact binomial tail for failures, a delta-method t-test for the
//! rebuffering ratio of sums, log-scale t-tests with a sign test for skewed metrics, a
//! Poisson tail for a key going quiet. Here every metric of a window is tested against its
//! reference: the benchmark (shifted by what the key learned is normal for it), or the key's
//! own level where it has no benchmark.
//!
//! A finding is bad only if it passes a minimum sample count, a minimum relative effect and,
//! across every test of the same window, the Benjamini-Hochberg procedure at `fdr`.

use serde::{Deserialize, Serialize};

pub mod config;
pub mod rules;

pub use crate::metric::{
    BASELINE_WARMUP, Baseline, DESIGN_EFFECT, Metric, Normals, OWN_LEVEL_WARMUP,
};
pub use config::DetectConfig;

use crate::window::Acc;
pub use crate::window::Exposure;
use rules::Tuning;

/// What a finding was compared with: the CDN's benchmark (adjusted by the key's learned
/// offset), or, for a key without a benchmark, the key's own learned level.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Reference {
    #[default]
    Benchmark,
    Baseline,
}

/// Severity of a finding or incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One metric of one key in one window, compared with its expectation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    pub metric: Metric,
    pub observed: f64,
    pub expected: f64,
    pub samples: u64,
    /// One-sided p-value of "worse than expected".
    pub p_value: f64,
    /// How much worse, relative: 0.5 = 50 % worse (for throughput: expected/observed - 1).
    pub effect: f64,
    /// Passed the sample, effect and robustness floors (before the multiple-test correction).
    pub eligible: bool,
    pub reference: Reference,
    /// The client cohort (ASN, device) that carries most of the deviation, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<crate::window::cohort::Cohort>,
    /// The viewers and watching of the window tested (for a key tested over a run of
    /// windows: of its last window), for the incident's viewer impact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<Exposure>,
    /// The window's measure of its design effect, from which the key learns its spread
    /// (local: not part of summaries or alerts).
    #[serde(skip)]
    pub spread: Option<f64>,
    /// The same for its within-session differences, where the metric pairs.
    #[serde(skip)]
    pub pair_spread: Option<f64>,
}

impl Finding {
    /// Whether it may be bad for a key (or aggregate) whose offset from the benchmark is
    /// `warm` or not: before, only a deviation beyond what any offset explains may.
    pub fn may_be_bad(&self, warm: bool, critical: f64) -> bool {
        let kind = self.metric.kind();
        let beyond = kind.beyond_any_offset(self.observed, self.expected, self.effect);
        Baseline::eligible(warm, beyond, self.effect, critical)
    }

    /// The offset from the benchmark this finding shows (its expectation included `offset`),
    /// clamped as its metric allows: what a key learns from it.
    pub fn raw_offset(&self, offset: f64) -> f64 {
        let kind = self.metric.kind();
        kind.clamp_offset(kind.raw_offset(self.observed, self.expected, offset))
    }

    /// `metric`'s outcome of a test against `reference`.
    pub fn of(metric: Metric, o: crate::metric::Outcome, reference: Reference) -> Finding {
        Finding {
            metric,
            observed: o.observed,
            expected: o.expected,
            samples: o.samples,
            p_value: o.p_value,
            effect: o.effect,
            eligible: o.eligible,
            reference,
            cohort: None,
            exposure: None,
            spread: o.spread,
            pair_spread: o.pair_spread,
        }
    }

    /// Name of the rule this finding belongs to.
    pub fn rule(&self) -> &'static str {
        self.metric
            .kind()
            .rule(self.reference == Reference::Benchmark)
    }
}

/// Tests every metric of `acc` that has a benchmark and enough samples.
pub fn evaluate(acc: &Acc, cfg: &DetectConfig) -> Vec<Finding> {
    evaluate_with(acc, &|m| cfg.tuning(None, None, m), &Normals::default())
}

/// Like [`evaluate`], with expectations shifted by what is normal for the key (its learned
/// offsets), and the key's own levels where they are the reference.
pub fn evaluate_with(
    acc: &Acc,
    tune: &dyn Fn(Metric) -> Tuning,
    normals: &Normals,
) -> Vec<Finding> {
    let mut out = Vec::with_capacity(4);
    // The window's viewers, counted once and only when something is found.
    let mut exposure = None;
    for m in Metric::all() {
        let kind = m.kind();
        let w = acc.window(m);
        let normal = normals[m.index()];
        let (reference, against) = match kind.expected(w) {
            Some(e) => (e + normal.offset, Reference::Benchmark),
            None => match normal.own {
                Some(level) => (level, Reference::Baseline),
                None => continue,
            },
        };
        let t = tune(m);
        if !t.enabled {
            continue;
        }
        let spread = if normal.spread > 0.0 {
            normal.spread
        } else {
            kind.prior_spread().unwrap_or(1.0)
        };
        let pair_spread = match normal.pair_spread {
            s if s > 0.0 => s,
            _ => crate::metric::PAIR_DESIGN_EFFECT,
        };
        let level = kind.test(w, reference, &t, spread, normal.var);
        let paired = kind.test_paired(w, reference, &t, pair_spread);
        let counted = normal
            .base
            .and_then(|base| kind.test_base(w, reference, &t, base, normal.clump));
        let sequential = normal.cusum.and_then(|before| {
            let step = kind.cusum_step(w, normal.base, normal.clump);
            kind.test_cusum(w, reference, &t, before, step.unwrap_or(0.0))
        });
        let either = crate::metric::Outcome::either;
        let found = either(either(level, paired), counted);
        if let Some(o) = either(found, sequential) {
            let mut f = Finding::of(m, o, against);
            f.exposure = Some(*exposure.get_or_insert_with(|| acc.exposure()));
            out.push(f);
        }
    }
    out
}

/// Benjamini-Hochberg: which of `p_values` are discoveries at false discovery rate `q`.
pub fn benjamini_hochberg(p_values: &[f64], q: f64) -> Vec<bool> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| p_values[*a].total_cmp(&p_values[*b]));
    let mut cutoff = None;
    for (rank, &i) in order.iter().enumerate() {
        if p_values[i] <= (rank + 1) as f64 / m as f64 * q {
            cutoff = Some(rank);
        }
    }
    let mut out = vec![false; m];
    if let Some(c) = cutoff {
        for &i in &order[..=c] {
            out[i] = true;
        }
    }
    out
}

/// Severity from the size of the deviation.
pub fn severity(effect: f64, t: &Tuning) -> Severity {
    if effect >= t.critical_relative_effect {
        Severity::Critical
    } else {
        Severity::Warning
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Report;
    use crate::table::Expected;

    fn cfg() -> DetectConfig {
        DetectConfig::default()
    }

    fn report(i: u64, rebuffer_ms: u64, tp: f64, error: bool) -> Report<'static> {
        Report {
            session_id: format!("s{i}").into(),
            played_ms: 20_000 - rebuffer_ms.min(20_000),
            rebuffer_ms,
            throughput_kbps: Some(tp),
            error: error.then(|| "E1".into()),
            ..Report::new("L", "c", 0)
        }
    }

    fn bench() -> Expected {
        Expected {
            throughput_kbps: Some(5_000.0),
            rebuffer_ratio: Some(0.01),
            startup_ms: Some(1_000.0),
            error_rate: Some(0.01),
        }
    }

    fn finding(acc: &Acc, m: Metric) -> Finding {
        evaluate(acc, &cfg())
            .into_iter()
            .find(|f| f.metric == m)
            .unwrap()
    }

    #[test]
    fn healthy_window_is_not_eligible() {
        let mut acc = Acc::default();
        for i in 0..200 {
            // 1 % rebuffering, throughput around the benchmark, 1 failure in 100.
            let tp = 5_000.0 * if i % 2 == 0 { 1.2 } else { 0.85 };
            acc.add(&report(i, 200, tp, i % 100 == 0), Some(&bench()));
        }
        for f in evaluate(&acc, &cfg()) {
            assert!(!f.eligible, "{f:?}");
            assert!(f.p_value > 0.01, "{f:?}");
        }
    }

    #[test]
    fn failure_spike_is_significant_and_eligible() {
        let mut acc = Acc::default();
        for i in 0..200 {
            acc.add(&report(i, 200, 5_000.0, i % 10 == 0), Some(&bench()));
        }
        let f = finding(&acc, Metric::FAILURE_RATE);
        assert!(f.eligible && f.p_value < 1e-6, "{f:?}");
        assert!((f.observed - 0.1).abs() < 1e-9);
    }

    #[test]
    fn one_terrible_session_does_not_make_rebuffering_eligible() {
        let mut acc = Acc::default();
        for i in 0..100 {
            acc.add(&report(i, 200, 5_000.0, false), Some(&bench()));
        }
        acc.add(&report(999, 19_000, 300.0, false), Some(&bench()));
        let f = finding(&acc, Metric::REBUFFER_RATIO);
        assert!(f.effect > 0.3, "the ratio of sums does move: {f:?}");
        assert!(!f.eligible, "{f:?}");
    }

    #[test]
    fn widespread_rebuffering_is_found() {
        let mut acc = Acc::default();
        for i in 0..100 {
            acc.add(
                &report(i, 1_000 + (i % 7) * 100, 5_000.0, false),
                Some(&bench()),
            );
        }
        let f = finding(&acc, Metric::REBUFFER_RATIO);
        assert!(f.eligible && f.p_value < 1e-6, "{f:?}");
    }

    #[test]
    fn throughput_drop_uses_log_scale() {
        let mut acc = Acc::default();
        for i in 0..100 {
            let tp = 2_000.0 * (1.0 + (i % 5) as f64 * 0.1);
            acc.add(&report(i, 0, tp, false), Some(&bench()));
        }
        let f = finding(&acc, Metric::THROUGHPUT_KBPS);
        assert!(f.eligible && f.p_value < 1e-6, "{f:?}");
        assert!(f.effect > 1.0, "5000 vs ~2400 is more than 2x worse: {f:?}");
        assert_eq!(
            severity(f.effect, &cfg().tuning(None, None, f.metric)),
            Severity::Critical
        );
    }

    #[test]
    fn too_few_samples_are_not_tested() {
        let mut acc = Acc::default();
        for i in 0..10 {
            acc.add(&report(i, 10_000, 100.0, true), Some(&bench()));
        }
        assert!(evaluate(&acc, &cfg()).is_empty());
    }

    #[test]
    fn benjamini_hochberg_matches_hand_computation() {
        // m = 5, q = 0.05: thresholds 0.01 0.02 0.03 0.04 0.05; largest k with p(k) <= k/m q is 3.
        let p = [0.045, 0.001, 0.5, 0.025, 0.012];
        assert_eq!(
            benjamini_hochberg(&p, 0.05),
            vec![false, true, false, true, true]
        );
        assert_eq!(benjamini_hochberg(&[], 0.05), Vec::<bool>::new());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::decode::Report;
    use crate::table::Expected;
    use proptest::prelude::*;

    fn acc_of(rows: &[(u64, f64, bool)], bench: &Expected) -> Acc {
        let mut acc = Acc::default();
        for (i, (rebuf, tp, failed)) in rows.iter().enumerate() {
            acc.add(
                &Report {
                    session_id: format!("s{i}").into(),
                    played_ms: 20_000 - rebuf,
                    rebuffer_ms: *rebuf,
                    startup_ms: Some(800),
                    throughput_kbps: Some(*tp),
                    error: failed.then(|| "E".into()),
                    ..Report::new("L", "c", 0)
                },
                Some(bench),
            );
        }
        acc
    }

    proptest! {
        /// A window no worse than its benchmark on every metric is never eligible, whatever
        /// the sample size or spread.
        #[test]
        fn never_flags_quality_at_or_better_than_benchmark(
            rows in proptest::collection::vec((0u64..200, 5_000.0f64..20_000.0, Just(false)), 2..300),
        ) {
            let bench = Expected {
                throughput_kbps: Some(5_000.0),
                rebuffer_ratio: Some(0.01),
                startup_ms: Some(1_000.0),
                error_rate: Some(0.01),
            };
            for f in evaluate(&acc_of(&rows, &bench), &DetectConfig::default()) {
                prop_assert!(!f.eligible, "{:?}", f);
            }
        }

        /// More failures in the same number of reports never makes the evidence weaker.
        #[test]
        fn failure_p_value_is_monotone(n in 30u64..400, k in 0u64..60) {
            let k = k.min(n - 1);
            let bench = Expected { error_rate: Some(0.02), ..Default::default() };
            let rows = |k: u64| (0..n).map(|i| (0, 5_000.0, i < k)).collect::<Vec<_>>();
            let p = |k| evaluate(&acc_of(&rows(k), &bench), &DetectConfig::default())
                .into_iter().find(|f| f.metric == Metric::FAILURE_RATE).map(|f| f.p_value);
            let (a, b) = (p(k), p(k + 1));
            prop_assert!(b <= a, "{:?} {:?}", a, b);
        }
    }
}
