//! The viewer-quality view of a closed window: totals over every key and the worst keys,
//! for the live page and the viewer-quality gauges.

use crate::time::Millis;
use crate::window::{Acc, Key};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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

pub(super) fn key_quality(key: &Key, acc: &Acc) -> KeyQuality {
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

/// Worst first, at most [`WORST_KEYS`] (ties broken by name, so the order does not depend on
/// which partition was merged first).
pub(super) fn sort_worst(worst: &mut Vec<KeyQuality>) {
    worst.sort_by(|a, b| {
        b.badness
            .total_cmp(&a.badness)
            .then(b.reports.cmp(&a.reports))
            .then_with(|| (&a.location, &a.cdn).cmp(&(&b.location, &b.cdn)))
    });
    worst.truncate(WORST_KEYS);
}
