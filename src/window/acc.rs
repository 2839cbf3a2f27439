//! Per-window, per-key accumulators: sums from which every metric and its test statistic
//! can be computed at close time, in constant memory per key.

use super::cohort::{Cohorts, Compared};
use crate::decode::Report;
use crate::table::Expected;

/// Count, sum and sum of squares of `ln(x)`, for log-scale tests of skewed metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogStats {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
    /// Plain sum of x, for the arithmetic mean shown to humans.
    pub sum_x: f64,
}

impl LogStats {
    pub fn push(&mut self, x: f64) {
        // Floor at 1 so that zero throughput or startup does not produce -inf.
        let l = x.max(1.0).ln();
        self.n += 1;
        self.sum += l;
        self.sum_sq += l * l;
        self.sum_x += x;
    }

    pub fn mean_log(&self) -> f64 {
        self.sum / self.n as f64
    }

    /// Sample variance of ln(x).
    pub fn var_log(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
    }

    pub fn mean(&self) -> f64 {
        self.sum_x / self.n as f64
    }

    pub fn merge(&mut self, o: &LogStats) {
        self.n += o.n;
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
        self.sum_x += o.sum_x;
    }
}

/// What is normal for a key, as known when a report arrives: learned log offsets from the
/// benchmark, and the key's own log levels where it has no benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Normal {
    pub throughput_offset: f64,
    pub startup_offset: f64,
    pub own_throughput_log: Option<f64>,
    pub own_startup_log: Option<f64>,
}

/// Everything one window keeps about one key.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Acc {
    pub reports: u64,
    pub failures: u64,
    /// Rebuffering as a ratio of sums: r = rebuffer_ms, d = played_ms + rebuffer_ms.
    pub sum_r: f64,
    pub sum_d: f64,
    pub sum_rr: f64,
    pub sum_dd: f64,
    pub sum_rd: f64,
    /// The single report with the most rebuffering, so a test can check that the deviation
    /// does not rest on one session alone.
    pub max_r: f64,
    pub max_r_d: f64,
    pub throughput: LogStats,
    pub startup: LogStats,
    pub bitrate_sum: f64,
    pub bitrate_n: u64,
    /// Reports that found a benchmark valid at their event time.
    pub joined: u64,
    pub exp_error_sum: f64,
    pub exp_error_n: u64,
    /// Σ d·expected_ratio and Σ d over joined reports (denominator-weighted expectation).
    pub exp_rebuffer_wsum: f64,
    pub exp_rebuffer_d: f64,
    pub exp_throughput_log_sum: f64,
    pub exp_throughput_n: u64,
    pub exp_startup_log_sum: f64,
    pub exp_startup_n: u64,
    /// Sign test counts: reports compared with their (offset-adjusted) benchmark, and how many
    /// were worse. Robust where a few terrible sessions move a mean.
    pub throughput_cmp: u64,
    pub throughput_worse: u64,
    pub startup_cmp: u64,
    pub startup_worse: u64,
    /// Per-cohort sums for the drill-down, only for keys under suspicion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohorts: Option<Box<Cohorts>>,
}

impl Acc {
    /// Folds in one report and the benchmark valid at its event time, if any.
    pub fn add(&mut self, r: &Report, expected: Option<&Expected>) {
        self.add_with(r, expected, &Normal::default());
    }

    /// Like [`Acc::add`], with what is normal for the key, for the sign-test comparison.
    pub fn add_with(&mut self, r: &Report, expected: Option<&Expected>, normal: &Normal) {
        let throughput_offset = normal.throughput_offset;
        let startup_offset = normal.startup_offset;
        self.reports += 1;
        if r.failed() {
            self.failures += 1;
        }
        let rb = r.rebuffer_ms as f64;
        let d = r.played_ms as f64 + rb;
        self.sum_r += rb;
        self.sum_d += d;
        self.sum_rr += rb * rb;
        self.sum_dd += d * d;
        self.sum_rd += rb * d;
        if rb > self.max_r {
            self.max_r = rb;
            self.max_r_d = d;
        }
        if let Some(t) = r.throughput_kbps {
            self.throughput.push(t);
        }
        if let Some(s) = r.startup_ms {
            self.startup.push(s as f64);
        }
        if let Some(b) = r.bitrate_kbps {
            self.bitrate_sum += b;
            self.bitrate_n += 1;
        }
        let mut cmp = Compared::default();
        let has = |f: fn(&Expected) -> Option<f64>| expected.and_then(f).is_some();
        if !has(|e| e.throughput_kbps)
            && let (Some(level), Some(t)) = (normal.own_throughput_log, r.throughput_kbps)
        {
            cmp.throughput_worse = Some(t.max(1.0).ln() < level);
        }
        if !has(|e| e.startup_ms)
            && let (Some(level), Some(s)) = (normal.own_startup_log, r.startup_ms)
        {
            cmp.startup_worse = Some((s as f64).max(1.0).ln() > level);
        }
        if let Some(e) = expected {
            self.joined += 1;
            if let Some(x) = e.error_rate {
                self.exp_error_sum += x;
                self.exp_error_n += 1;
            }
            if let Some(x) = e.rebuffer_ratio {
                self.exp_rebuffer_wsum += d * x;
                self.exp_rebuffer_d += d;
            }
            if let (Some(x), Some(t)) = (e.throughput_kbps, r.throughput_kbps) {
                let l = x.max(1.0).ln();
                self.exp_throughput_log_sum += l;
                self.exp_throughput_n += 1;
                cmp.throughput_worse = Some(t.max(1.0).ln() < l + throughput_offset);
            }
            if let (Some(x), Some(s)) = (e.startup_ms, r.startup_ms) {
                let l = x.max(1.0).ln();
                self.exp_startup_log_sum += l;
                self.exp_startup_n += 1;
                cmp.startup_worse = Some((s as f64).max(1.0).ln() > l + startup_offset);
            }
        }
        if let Some(w) = cmp.throughput_worse {
            self.throughput_cmp += 1;
            self.throughput_worse += u64::from(w);
        }
        if let Some(w) = cmp.startup_worse {
            self.startup_cmp += 1;
            self.startup_worse += u64::from(w);
        }
        if let Some(c) = self.cohorts.as_mut() {
            c.add(r, cmp);
        }
    }

    /// Adds another key's accumulator (for rolling keys up to a CDN or a location).
    pub fn merge(&mut self, o: &Acc) {
        self.reports += o.reports;
        self.failures += o.failures;
        self.sum_r += o.sum_r;
        self.sum_d += o.sum_d;
        self.sum_rr += o.sum_rr;
        self.sum_dd += o.sum_dd;
        self.sum_rd += o.sum_rd;
        if o.max_r > self.max_r {
            self.max_r = o.max_r;
            self.max_r_d = o.max_r_d;
        }
        self.throughput.merge(&o.throughput);
        self.startup.merge(&o.startup);
        self.bitrate_sum += o.bitrate_sum;
        self.bitrate_n += o.bitrate_n;
        self.joined += o.joined;
        self.exp_error_sum += o.exp_error_sum;
        self.exp_error_n += o.exp_error_n;
        self.exp_rebuffer_wsum += o.exp_rebuffer_wsum;
        self.exp_rebuffer_d += o.exp_rebuffer_d;
        self.exp_throughput_log_sum += o.exp_throughput_log_sum;
        self.exp_throughput_n += o.exp_throughput_n;
        self.exp_startup_log_sum += o.exp_startup_log_sum;
        self.exp_startup_n += o.exp_startup_n;
        self.throughput_cmp += o.throughput_cmp;
        self.throughput_worse += o.throughput_worse;
        self.startup_cmp += o.startup_cmp;
        self.startup_worse += o.startup_worse;
        if let Some(c) = &o.cohorts {
            self.cohorts.get_or_insert_default().merge(c);
        }
    }

    /// Σrebuffer / Σ(played + rebuffer), 0 with no playback.
    pub fn rebuffer_ratio(&self) -> f64 {
        if self.sum_d > 0.0 {
            self.sum_r / self.sum_d
        } else {
            0.0
        }
    }

    pub fn failure_rate(&self) -> f64 {
        if self.reports > 0 {
            self.failures as f64 / self.reports as f64
        } else {
            0.0
        }
    }
}
