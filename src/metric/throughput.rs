//! Delivered throughput per report, lower is worse, against the benchmark's.

use super::LogScale;

pub static THROUGHPUT_KBPS: LogScale = LogScale {
    name: "throughput_kbps",
    rules: ("throughput_below_benchmark", "throughput_below_baseline"),
    label: "throughput",
    unit: "kbps",
    value: |r| r.throughput_kbps,
    benchmark: Some(|e| e.throughput_kbps),
    higher_is_worse: false,
    once_per_session: false,
    enabled_by_default: true,
    rank: 2,
    paired: true,
};
