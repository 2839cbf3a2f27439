//! Playback failures per report: a proportion, tested with the exact binomial upper tail
//! against the expected rate.

use statrs::distribution::{Binomial, DiscreteCDF};

use super::{Kind, Normal, Outcome, Tuning, Window};
use crate::decode::Report;
use crate::table::Expected;

/// Smallest expected rate used as a null hypothesis: a benchmark of exactly 0 would otherwise
/// make a single failure "infinitely" worse.
const MIN_EXPECTED_RATE: f64 = 0.002;
/// A deviation smaller than this is not worth a page whatever its ratio.
const MIN_DELTA: f64 = 0.01;

// Slots: failed reports; Σ expected rate and count over joined reports with one.
const FAILURES: usize = 0;
const EXP_SUM: usize = 1;
const EXP_N: usize = 2;

pub struct FailureRate;

fn rate(w: Window) -> f64 {
    if w.reports > 0 {
        w.s[FAILURES] / w.reports as f64
    } else {
        0.0
    }
}

impl Kind for FailureRate {
    fn name(&self) -> &'static str {
        "failure_rate"
    }

    fn rule(&self, against_benchmark: bool) -> &'static str {
        if against_benchmark {
            "failures_above_benchmark"
        } else {
            "failures_above_baseline"
        }
    }

    fn slots(&self) -> usize {
        3
    }

    fn add(&self, s: &mut [f64], r: &Report, expected: Option<&Expected>, _: Normal) {
        if r.failed() {
            s[FAILURES] += 1.0;
        }
        if let Some(x) = expected.and_then(|e| e.error_rate) {
            s[EXP_SUM] += x;
            s[EXP_N] += 1.0;
        }
    }

    fn expected(&self, w: Window) -> Option<f64> {
        (w.s[EXP_N] > 0.0).then(|| w.s[EXP_SUM] / w.s[EXP_N])
    }

    fn level(&self, w: Window, min_samples: u64) -> Option<f64> {
        (w.reports >= min_samples).then(|| rate(w))
    }

    fn test(
        &self,
        w: Window,
        reference: f64,
        t: &Tuning,
        _: f64,
        _: Option<f64>,
    ) -> Option<Outcome> {
        if w.reports < t.min_samples {
            return None;
        }
        let p0 = reference.max(MIN_EXPECTED_RATE);
        let obs = rate(w);
        let failures = w.s[FAILURES] as u64;
        let p_value = match Binomial::new(p0, w.reports) {
            // P(X >= k) = P(X > k - 1)
            Ok(b) if failures > 0 => b.sf(failures - 1),
            _ => 1.0,
        };
        let effect = obs / p0 - 1.0;
        Some(Outcome {
            observed: obs,
            expected: p0,
            samples: w.reports,
            p_value,
            effect,
            eligible: effect >= t.min_relative_effect && obs - p0 >= MIN_DELTA,
            spread: None,
            pair_spread: None,
        })
    }

    fn format(&self, v: f64) -> String {
        format!("{:.2} %", v * 100.0)
    }

    fn describe(&self, observed: f64, expected: f64) -> String {
        format!(
            "playback failures {:.1}% vs {:.1}% expected",
            observed * 100.0,
            expected * 100.0
        )
    }

    fn cohort(&self, r: &Report, _: Option<&Expected>, _: Normal) -> Option<(f64, f64)> {
        Some((f64::from(u8::from(r.failed())), 1.0))
    }

    fn shown(&self, w: Window) -> Option<(Option<f64>, Option<f64>)> {
        Some((Some(rate(w)), self.expected(w)))
    }

    fn rank(&self) -> u8 {
        1
    }
}
