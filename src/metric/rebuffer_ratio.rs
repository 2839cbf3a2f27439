//! Rebuffering as a ratio of sums, Σ stalled ms / Σ watched ms, dominated by few sessions: a
//! t-test on the ratio estimator with a delta-method standard error (one stalled session
//! inflates the variance instead of the mean), and the deviation must survive removing the
//! worst report.

use super::{DESIGN_EFFECT, Kind, Normal, Outcome, Tuning, Window, effective_n, t_p_value};
use crate::decode::Report;
use crate::table::Expected;

/// Smallest expected ratio used as a null hypothesis (a benchmark of 0 would make any stall
/// infinitely worse).
const MIN_EXPECTED_RATIO: f64 = 0.002;
/// A deviation smaller than this is not worth a page whatever its ratio.
const MIN_DELTA: f64 = 0.005;

// Slots: with r = rebuffer ms and d = played + rebuffer ms of each report, Σr, Σd, Σr², Σd²,
// Σrd; the report with the most rebuffering (r, d); Σ d·expected ratio and Σ d over joined
// reports (the denominator-weighted expectation).
const R: usize = 0;
const D: usize = 1;
const RR: usize = 2;
const DD: usize = 3;
const RD: usize = 4;
const MAX_R: usize = 5;
const MAX_R_D: usize = 6;
const EXP_WSUM: usize = 7;
const EXP_D: usize = 8;

pub struct RebufferRatio;

fn ratio(s: &[f64]) -> f64 {
    if s[D] > 0.0 { s[R] / s[D] } else { 0.0 }
}

impl Kind for RebufferRatio {
    fn name(&self) -> &'static str {
        "rebuffer_ratio"
    }

    fn rule(&self, against_benchmark: bool) -> &'static str {
        if against_benchmark {
            "rebuffering_above_benchmark"
        } else {
            "rebuffering_above_baseline"
        }
    }

    fn slots(&self) -> usize {
        9
    }

    fn add(&self, s: &mut [f64], r: &Report, expected: Option<&Expected>, _: Normal) {
        let rb = r.rebuffer_ms as f64;
        let d = r.played_ms as f64 + rb;
        s[R] += rb;
        s[D] += d;
        s[RR] += rb * rb;
        s[DD] += d * d;
        s[RD] += rb * d;
        if rb > s[MAX_R] {
            s[MAX_R] = rb;
            s[MAX_R_D] = d;
        }
        if let Some(x) = expected.and_then(|e| e.rebuffer_ratio) {
            s[EXP_WSUM] += d * x;
            s[EXP_D] += d;
        }
    }

    fn merge(&self, s: &mut [f64], o: &[f64]) {
        for i in [R, D, RR, DD, RD, EXP_WSUM, EXP_D] {
            s[i] += o[i];
        }
        if o[MAX_R] > s[MAX_R] {
            s[MAX_R] = o[MAX_R];
            s[MAX_R_D] = o[MAX_R_D];
        }
    }

    fn expected(&self, w: Window) -> Option<f64> {
        (w.s[EXP_D] > 0.0).then(|| w.s[EXP_WSUM] / w.s[EXP_D])
    }

    fn level(&self, w: Window, min_samples: u64) -> Option<f64> {
        (w.reports >= min_samples && w.s[D] > 0.0).then(|| ratio(w.s))
    }

    fn test(&self, w: Window, reference: f64, t: &Tuning, spread: f64) -> Option<Outcome> {
        let s = w.s;
        if w.reports < t.min_samples || s[D] <= 0.0 {
            return None;
        }
        let e = reference.max(MIN_EXPECTED_RATIO);
        let n = w.reports as f64;
        let r = ratio(s);
        // Delta method: Var(R) ≈ s² / (n·mean_d²) with s² the variance of r_i - R·d_i.
        let s2 = ((s[RR] - 2.0 * r * s[RD] + r * r * s[DD]) / (n - 1.0)).max(0.0);
        let mean_d = s[D] / n;
        let n_eff = effective_n(n, spread, w.sessions);
        let se = (s2 / n_eff).sqrt() / mean_d;
        let p_value = t_p_value(r - e, se, n_eff - 1.0);
        let se_independent = (s2 / n).sqrt() / mean_d;
        let z2 = (se_independent > 0.0).then(|| ((r - e) / se_independent).powi(2));
        let without_worst = if s[D] - s[MAX_R_D] > 0.0 {
            (s[R] - s[MAX_R]) / (s[D] - s[MAX_R_D])
        } else {
            0.0
        };
        let effect = r / e - 1.0;
        let min_eff = t.min_relative_effect;
        Some(Outcome {
            observed: r,
            expected: e,
            samples: w.reports,
            p_value,
            effect,
            eligible: effect >= min_eff && r - e >= MIN_DELTA && without_worst / e - 1.0 >= min_eff,
            spread: z2,
            pair_spread: None,
        })
    }

    fn prior_spread(&self) -> Option<f64> {
        Some(DESIGN_EFFECT)
    }

    fn format(&self, v: f64) -> String {
        format!("{:.2} %", v * 100.0)
    }

    fn describe(&self, observed: f64, expected: f64) -> String {
        format!(
            "rebuffering {:.1}% vs {:.1}% expected",
            observed * 100.0,
            expected * 100.0
        )
    }

    fn cohort(&self, r: &Report, _: Option<&Expected>, _: Normal) -> Option<(f64, f64)> {
        Some((r.rebuffer_ms as f64, (r.played_ms + r.rebuffer_ms) as f64))
    }

    fn shown(&self, w: Window) -> Option<(Option<f64>, Option<f64>)> {
        Some((Some(ratio(w.s)), self.expected(w)))
    }

    fn rank(&self) -> u8 {
        0
    }
}
