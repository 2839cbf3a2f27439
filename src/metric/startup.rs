//! Startup time, carried by a session's first report only, higher is worse, against the
//! benchmark's.

use super::LogScale;

pub static STARTUP_MS: LogScale = LogScale {
    name: "startup_ms",
    rules: ("startup_above_benchmark", "startup_above_baseline"),
    label: "startup",
    unit: "ms",
    value: |r| r.startup_ms.map(|s| s as f64),
    benchmark: Some(|e| e.startup_ms),
    higher_is_worse: true,
    once_per_session: true,
    enabled_by_default: true,
    rank: 3,
    paired: false,
};
