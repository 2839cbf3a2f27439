//! Accumulators as checkpoints, changelog shares and summaries wrote them before each metric
//! had its own file: one named field per sum. They read into the metrics' slots, so a
//! restart after the upgrade carries on where it stopped. (Their cohort sums are dropped: the
//! drill-down starts again with the next window.)

use super::Acc;
use crate::metric::{Metric, Slots};

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct NamedLog {
    n: u64,
    sum: f64,
    sum_sq: f64,
    sum_x: f64,
}

#[derive(serde::Deserialize)]
pub(super) struct NamedAcc {
    reports: u64,
    failures: u64,
    sum_r: f64,
    sum_d: f64,
    sum_rr: f64,
    sum_dd: f64,
    sum_rd: f64,
    max_r: f64,
    max_r_d: f64,
    throughput: NamedLog,
    startup: NamedLog,
    joined: u64,
    exp_error_sum: f64,
    exp_error_n: u64,
    exp_rebuffer_wsum: f64,
    exp_rebuffer_d: f64,
    exp_throughput_log_sum: f64,
    exp_throughput_n: u64,
    exp_startup_log_sum: f64,
    exp_startup_n: u64,
    throughput_cmp: u64,
    throughput_worse: u64,
    startup_cmp: u64,
    startup_worse: u64,
}

impl From<NamedAcc> for Acc {
    fn from(a: NamedAcc) -> Self {
        let mut m = Slots::default();
        // In each metric's slot order (see its file).
        m.of_mut(Metric::FAILURE_RATE).copy_from_slice(&[
            a.failures as f64,
            a.exp_error_sum,
            a.exp_error_n as f64,
        ]);
        m.of_mut(Metric::REBUFFER_RATIO)[..9].copy_from_slice(&[
            a.sum_r,
            a.sum_d,
            a.sum_rr,
            a.sum_dd,
            a.sum_rd,
            a.max_r,
            a.max_r_d,
            a.exp_rebuffer_wsum,
            a.exp_rebuffer_d,
        ]);
        let log = |l: &NamedLog, exp_sum: f64, exp_n: u64, cmp: u64, worse: u64| {
            [
                l.n as f64,
                l.sum,
                l.sum_sq,
                l.sum_x,
                exp_sum,
                exp_n as f64,
                cmp as f64,
                worse as f64,
            ]
        };
        m.of_mut(Metric::THROUGHPUT_KBPS)[..8].copy_from_slice(&log(
            &a.throughput,
            a.exp_throughput_log_sum,
            a.exp_throughput_n,
            a.throughput_cmp,
            a.throughput_worse,
        ));
        m.of_mut(Metric::STARTUP_MS)[..8].copy_from_slice(&log(
            &a.startup,
            a.exp_startup_log_sum,
            a.exp_startup_n,
            a.startup_cmp,
            a.startup_worse,
        ));
        Acc {
            reports: a.reports,
            joined: a.joined,
            metrics: m,
            sessions: Default::default(),
            cohorts: None,
        }
    }
}
