//! Statistical detection: is a key's window significantly worse than its benchmark?
//!
//! Pure and synchronous. Each metric gets the test that fits its shape:
//! - failure rate is a proportion: exact binomial upper tail against the expected rate;
//! - rebuffering ratio is a ratio of sums dominated by few sessions: a t-test on the ratio
//!   estimator with a delta-method standard error (one stalled session inflates the variance
//!   instead of the mean), and the deviation must survive removing the worst report;
//! - throughput and startup time are skewed: one-sample t-test on the log scale against the
//!   log of the expected value (a geometric-mean comparison).
//!
//! A finding is bad only if it passes a minimum sample count, a minimum relative effect and,
//! across every test of the same window, the Benjamini-Hochberg procedure at `fdr`.

use serde::{Deserialize, Serialize};
use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, StudentsT};

pub mod config;
pub mod rules;

pub use config::DetectConfig;

use crate::window::{Acc, LogStats};
use rules::Tuning;

/// What is measured. Names are the `metric` field of alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    RebufferRatio,
    FailureRate,
    ThroughputKbps,
    StartupMs,
    /// Reports per window: a key that goes quiet is news (a full outage sends no quality
    /// reports at all).
    ReportVolume,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::RebufferRatio,
        Metric::FailureRate,
        Metric::ThroughputKbps,
        Metric::StartupMs,
        Metric::ReportVolume,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::RebufferRatio => "rebuffer_ratio",
            Metric::FailureRate => "failure_rate",
            Metric::ThroughputKbps => "throughput_kbps",
            Metric::StartupMs => "startup_ms",
            Metric::ReportVolume => "report_volume",
        }
    }

    /// Name of the rule that fires on this metric against a benchmark.
    pub fn rule(self) -> &'static str {
        self.rule_for(Reference::Benchmark)
    }

    /// Name of the rule that fires on this metric against `reference`.
    pub fn rule_for(self, reference: Reference) -> &'static str {
        match (self, reference) {
            (Metric::RebufferRatio, Reference::Benchmark) => "rebuffering_above_benchmark",
            (Metric::FailureRate, Reference::Benchmark) => "failures_above_benchmark",
            (Metric::ThroughputKbps, Reference::Benchmark) => "throughput_below_benchmark",
            (Metric::StartupMs, Reference::Benchmark) => "startup_above_benchmark",
            (Metric::RebufferRatio, Reference::Baseline) => "rebuffering_above_baseline",
            (Metric::FailureRate, Reference::Baseline) => "failures_above_baseline",
            (Metric::ThroughputKbps, Reference::Baseline) => "throughput_below_baseline",
            (Metric::StartupMs, Reference::Baseline) => "startup_above_baseline",
            (Metric::ReportVolume, _) => "reports_below_usual",
        }
    }
}

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

/// A key's own learned levels, used where it has no benchmark (`None` until warm).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OwnLevels {
    pub failure_rate: Option<f64>,
    pub rebuffer_ratio: Option<f64>,
    /// Mean of ln(throughput).
    pub throughput_log: Option<f64>,
    /// Mean of ln(startup ms).
    pub startup_log: Option<f64>,
}

/// Windows of history a key without a benchmark needs before its own level is trusted.
pub const OWN_LEVEL_WARMUP: u32 = 5;

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
}

impl Finding {
    /// Name of the rule this finding belongs to.
    pub fn rule(&self) -> &'static str {
        self.metric.rule_for(self.reference)
    }
}

/// Smallest expected failure rate and rebuffering ratio used as a null hypothesis: a benchmark
/// of exactly 0 would otherwise make a single failure "infinitely" worse.
const MIN_EXPECTED_RATE: f64 = 0.002;
/// Absolute floors: a deviation smaller than this is not worth a page whatever its ratio.
const MIN_FAILURE_RATE_DELTA: f64 = 0.01;
const MIN_REBUFFER_DELTA: f64 = 0.005;
/// Reports are not independent: a player sends one every 10-30 s and its session's quality
/// persists, so a 60 s window holds about three correlated reports per session. t-tests use
/// n / DESIGN_EFFECT as their sample size (the standard error grows by its square root), which
/// keeps a handful of unlucky sessions on a small key from looking like hundreds of reports.
pub const DESIGN_EFFECT: f64 = 3.0;

/// Share of reports on the worse side of normal before a log-scale deviation counts as broad.
const MIN_WORSE_SHARE: f64 = 0.7;

fn t_upper(t: f64, df: f64) -> f64 {
    if !t.is_finite() {
        return if t > 0.0 { 0.0 } else { 1.0 };
    }
    match StudentsT::new(0.0, 1.0, df.max(1.0)) {
        Ok(d) => d.sf(t),
        Err(_) => 1.0,
    }
}

/// What is normal for one key relative to its benchmark, learned from its clean windows.
///
/// Clients see a CDN somewhat differently from its probes (last mile), by an amount that
/// differs per key but is stable. For the log-scale metrics the learned offset
/// `ln(observed) - ln(benchmark)` shifts the expectation, so a stable offset never fires and a
/// deviation from what is normal for the key does. Bad windows are not learned from, so an
/// incident is not absorbed while it lasts (a slow drift over many windows is).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    pub offset: f64,
    pub windows: u32,
    pub last_seen: crate::time::Millis,
}

/// Windows a baseline needs before it is trusted; until then only critical deviations fire.
pub const BASELINE_WARMUP: u32 = 3;
/// Largest offset learned: clients 3x worse (or better) than the probes is not "normal".
const MAX_OFFSET: f64 = 1.0986; // ln 3

impl Baseline {
    /// Learns from one clean window whose raw log ratio to the benchmark was `x`.
    pub fn learn(&mut self, x: f64, at: crate::time::Millis) {
        self.track(x.clamp(-MAX_OFFSET, MAX_OFFSET), at);
    }

    pub fn warm(&self) -> bool {
        self.windows >= BASELINE_WARMUP
    }

    /// Follows a level slowly even through bad windows, so that a lasting change (traffic
    /// steered away for good) becomes the new normal after a few dozen windows.
    pub fn drift(&mut self, x: f64) {
        self.offset += 0.03 * (x - self.offset);
    }

    /// Tracks a key's own level (no clamping: levels are not ratios): a running mean while
    /// warming up, then an EWMA over about ten windows.
    pub fn track(&mut self, x: f64, at: crate::time::Millis) {
        let a = if self.windows < 10 {
            1.0 / (self.windows as f64 + 1.0)
        } else {
            0.1
        };
        self.offset += a * (x - self.offset);
        self.windows = self.windows.saturating_add(1);
        self.last_seen = at;
    }
}

/// Learned log offsets applied to one key's expectations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Offsets {
    pub throughput: f64,
    pub startup: f64,
}

/// Tests every metric of `acc` that has an expectation and enough samples.
pub fn evaluate(acc: &Acc, cfg: &DetectConfig) -> Vec<Finding> {
    evaluate_with(
        acc,
        &|m| cfg.tuning(None, None, m),
        &Offsets::default(),
        &OwnLevels::default(),
    )
}

/// Like [`evaluate`], with expectations shifted by what is normal for the key, and the key's
/// own levels where it has no benchmark.
pub fn evaluate_with(
    acc: &Acc,
    tune: &dyn Fn(Metric) -> Tuning,
    offsets: &Offsets,
    own: &OwnLevels,
) -> Vec<Finding> {
    let mut out = Vec::with_capacity(4);

    let failure_ref = if acc.exp_error_n > 0 {
        Some((
            acc.exp_error_sum / acc.exp_error_n as f64,
            Reference::Benchmark,
        ))
    } else {
        own.failure_rate.map(|x| (x, Reference::Baseline))
    };
    let t = tune(Metric::FailureRate);
    if let Some((p0, reference)) = failure_ref
        && t.enabled
        && acc.reports >= t.min_samples
    {
        let p0 = p0.max(MIN_EXPECTED_RATE);
        let obs = acc.failure_rate();
        let p_value = match Binomial::new(p0, acc.reports) {
            // P(X >= k) = P(X > k - 1)
            Ok(b) if acc.failures > 0 => b.sf(acc.failures - 1),
            _ => 1.0,
        };
        let effect = obs / p0 - 1.0;
        out.push(Finding {
            metric: Metric::FailureRate,
            observed: obs,
            expected: p0,
            samples: acc.reports,
            p_value,
            effect,
            eligible: effect >= t.min_relative_effect && obs - p0 >= MIN_FAILURE_RATE_DELTA,
            reference,
            cohort: None,
        });
    }

    let rebuffer_ref = if acc.exp_rebuffer_d > 0.0 {
        Some((
            acc.exp_rebuffer_wsum / acc.exp_rebuffer_d,
            Reference::Benchmark,
        ))
    } else {
        own.rebuffer_ratio.map(|x| (x, Reference::Baseline))
    };
    let t = tune(Metric::RebufferRatio);
    let min_eff = t.min_relative_effect;
    if let Some((e, reference)) = rebuffer_ref
        && t.enabled
        && acc.reports >= t.min_samples
        && acc.sum_d > 0.0
    {
        let e = e.max(MIN_EXPECTED_RATE);
        let n = acc.reports as f64;
        let r = acc.rebuffer_ratio();
        // Delta method: Var(R) ≈ s² / (n·mean_d²) with s² the variance of r_i - R·d_i.
        let s2 = ((acc.sum_rr - 2.0 * r * acc.sum_rd + r * r * acc.sum_dd) / (n - 1.0)).max(0.0);
        let mean_d = acc.sum_d / n;
        let n_eff = (n / DESIGN_EFFECT).max(2.0);
        let se = (s2 / n_eff).sqrt() / mean_d;
        let p_value = if se > 0.0 {
            t_upper((r - e) / se, n_eff - 1.0)
        } else if r > e {
            0.0
        } else {
            1.0
        };
        let without_worst = if acc.sum_d - acc.max_r_d > 0.0 {
            (acc.sum_r - acc.max_r) / (acc.sum_d - acc.max_r_d)
        } else {
            0.0
        };
        let effect = r / e - 1.0;
        out.push(Finding {
            metric: Metric::RebufferRatio,
            observed: r,
            expected: e,
            samples: acc.reports,
            p_value,
            effect,
            eligible: effect >= min_eff
                && r - e >= MIN_REBUFFER_DELTA
                && without_worst / e - 1.0 >= min_eff,
            reference,
            cohort: None,
        });
    }

    let log_test = |stats: &LogStats,
                    exp_log_sum: f64,
                    exp_n: u64,
                    higher_is_bad: bool,
                    metric,
                    offset: f64,
                    own_log: Option<f64>,
                    (cmp, worse): (u64, u64)| {
        let t = tune(metric);
        let min_n = if metric == Metric::StartupMs {
            // Only a session's first report carries startup time.
            (t.min_samples / 3).max(10)
        } else {
            t.min_samples
        };
        if !t.enabled || stats.n < min_n {
            return None;
        }
        let (mu0, reference) = if exp_n > 0 {
            (exp_log_sum / exp_n as f64 + offset, Reference::Benchmark)
        } else {
            (own_log?, Reference::Baseline)
        };
        let m = stats.mean_log();
        // Startup time is reported once per session: those reports are independent.
        let deff = if metric == Metric::StartupMs {
            1.0
        } else {
            DESIGN_EFFECT
        };
        let n_eff = (stats.n as f64 / deff).max(2.0);
        let se = (stats.var_log() / n_eff).sqrt();
        let diff = if higher_is_bad { m - mu0 } else { mu0 - m };
        let p_value = if se > 0.0 {
            t_upper(diff / se, n_eff - 1.0)
        } else if diff > 0.0 {
            0.0
        } else {
            1.0
        };
        // Under "as normal" about half the reports fall on the worse side of what is normal for
        // the key. A mean dragged down by a few terrible sessions leaves that share near half;
        // a real degradation moves most reports.
        let broad = cmp > 0 && worse as f64 >= MIN_WORSE_SHARE * cmp as f64;
        let effect = diff.exp() - 1.0;
        Some(Finding {
            metric,
            observed: m.exp(),
            expected: mu0.exp(),
            samples: stats.n,
            p_value,
            effect,
            eligible: effect >= t.min_relative_effect && broad,
            reference,
            cohort: None,
        })
    };
    out.extend(log_test(
        &acc.throughput,
        acc.exp_throughput_log_sum,
        acc.exp_throughput_n,
        false,
        Metric::ThroughputKbps,
        offsets.throughput,
        own.throughput_log,
        (acc.throughput_cmp, acc.throughput_worse),
    ));
    out.extend(log_test(
        &acc.startup,
        acc.exp_startup_log_sum,
        acc.exp_startup_n,
        true,
        Metric::StartupMs,
        offsets.startup,
        own.startup_log,
        (acc.startup_cmp, acc.startup_worse),
    ));
    out
}

/// Fewest usual reports per window before a key's silence is tested.
pub const MIN_USUAL_VOLUME: f64 = 60.0;

/// Is a key's report count far below its usual level? Lower-tail Poisson test, and the count
/// must have at least halved: load curves and session churn move counts, outages cut them.
pub fn evaluate_volume(observed: u64, usual: f64, t: &Tuning) -> Option<Finding> {
    if !t.enabled || usual < MIN_USUAL_VOLUME {
        return None;
    }
    // Reports come in sessions (about DESIGN_EFFECT per window each), so counts vary more
    // than a Poisson of reports: test the count of "session equivalents".
    let p_value = match statrs::distribution::Poisson::new(usual / DESIGN_EFFECT) {
        Ok(d) => d.cdf((observed as f64 / DESIGN_EFFECT).floor() as u64),
        Err(_) => 1.0,
    };
    let effect = usual / (observed.max(1) as f64) - 1.0;
    Some(Finding {
        metric: Metric::ReportVolume,
        observed: observed as f64,
        expected: usual,
        samples: observed,
        p_value,
        effect,
        eligible: (observed as f64) <= 0.5 * usual && effect >= t.min_relative_effect,
        reference: Reference::Baseline,
        cohort: None,
    })
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
            ts: 0,
            session_id: format!("s{i}").into(),
            location: "L".into(),
            cdn: "c".into(),
            asn: None,
            device: None,
            played_ms: 20_000 - rebuffer_ms.min(20_000),
            rebuffer_ms,
            startup_ms: None,
            bitrate_kbps: None,
            throughput_kbps: Some(tp),
            error: error.then(|| "E1".into()),
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
        let f = finding(&acc, Metric::FailureRate);
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
        let f = finding(&acc, Metric::RebufferRatio);
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
        let f = finding(&acc, Metric::RebufferRatio);
        assert!(f.eligible && f.p_value < 1e-6, "{f:?}");
    }

    #[test]
    fn throughput_drop_uses_log_scale() {
        let mut acc = Acc::default();
        for i in 0..100 {
            let tp = 2_000.0 * (1.0 + (i % 5) as f64 * 0.1);
            acc.add(&report(i, 0, tp, false), Some(&bench()));
        }
        let f = finding(&acc, Metric::ThroughputKbps);
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
                    ts: 0,
                    session_id: format!("s{i}").into(),
                    location: "L".into(),
                    cdn: "c".into(),
                    asn: None,
                    device: None,
                    played_ms: 20_000 - rebuf,
                    rebuffer_ms: *rebuf,
                    startup_ms: Some(800),
                    bitrate_kbps: None,
                    throughput_kbps: Some(*tp),
                    error: failed.then(|| "E".into()),
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
                .into_iter().find(|f| f.metric == Metric::FailureRate).map(|f| f.p_value);
            let (a, b) = (p(k), p(k + 1));
            prop_assert!(b <= a, "{:?} {:?}", a, b);
        }
    }
}
