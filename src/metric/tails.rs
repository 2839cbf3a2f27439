//! The tails the metrics' tests read their p-values from, and the sample size a test of means
//! may claim.

/// A window's effective sample size for a test of means: its `n` samples over the design
/// effect `spread`, and never more than the sessions they came from (a session's reports
/// repeat its network), at least 2.
pub(crate) fn effective_n(n: f64, spread: f64, sessions: Option<f64>) -> f64 {
    let by_spread = n / spread.max(1.0);
    sessions.map_or(by_spread, |s| by_spread.min(s)).max(2.0)
}

/// Student's t upper tail, `P(T > t)`.
pub(crate) fn t_upper(t: f64, df: f64) -> f64 {
    use statrs::distribution::{ContinuousCDF, StudentsT};
    if !t.is_finite() {
        return if t > 0.0 { 0.0 } else { 1.0 };
    }
    match StudentsT::new(0.0, 1.0, df.max(1.0)) {
        Ok(d) => d.sf(t),
        Err(_) => 1.0,
    }
}

/// A t-test's one-sided p-value for a deviation `diff` with standard error `se`.
pub(crate) fn t_p_value(diff: f64, se: f64, df: f64) -> f64 {
    if se > 0.0 {
        t_upper(diff / se, df)
    } else if diff > 0.0 {
        0.0
    } else {
        1.0
    }
}
