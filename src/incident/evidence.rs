//! What an incident's windows showed: one [`Point`] per window of its scope since its bad run
//! began, and for a key's incident the two before it (from the key's trail,
//! [`crate::metric::Trail`]), which the evidence page draws; and the viewer [`Impact`] its bad
//! windows add up to (every alert carries it). Both come from the windows' accumulators; no
//! raw report is kept.

use serde::{Deserialize, Serialize};

use crate::detect::{Exposure, Finding, Metric, Severity};
use crate::time::Millis;
use crate::window::cohort::Cohort;

/// One window of an incident's scope, as tested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    #[serde(with = "crate::time")]
    pub window_start: Millis,
    #[serde(with = "crate::time")]
    pub window_end: Millis,
    pub metric: Metric,
    pub observed: f64,
    pub expected: f64,
    pub samples: u64,
    pub p_value: f64,
    /// Judged bad (significant and past every floor) in this window.
    pub bad: bool,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<Cohort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure: Option<Exposure>,
}

impl Point {
    pub fn of(f: &Finding, bad: bool, severity: Severity, window: (Millis, Millis)) -> Point {
        Point {
            window_start: window.0,
            window_end: window.1,
            metric: f.metric,
            observed: f.observed,
            expected: f.expected,
            samples: f.samples,
            p_value: f.p_value,
            bad,
            severity,
            cohort: f.cohort.clone(),
            exposure: f.exposure,
        }
    }
}

/// A point of the incident `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    pub id: String,
    pub point: Point,
}

/// Most windows of a bad run kept before it fires (a run longer than `fire_after` only
/// happens across thin windows).
pub const MAX_PENDING: usize = 8;

/// Viewers an incident reached so far, over the windows judged bad since it began.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Impact {
    /// Reports in its bad windows.
    pub reports: u64,
    /// The most sessions in one of its bad windows: at least this many viewers watched it.
    pub sessions: u64,
    /// Minutes watched (played and stalled) in its bad windows: degraded playback.
    pub degraded_minutes: f64,
    /// Rebuffering incidents: minutes stalled beyond what was expected in those windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excess_stalled_minutes: Option<f64>,
    /// Incidents of a key gone quiet (an outage sends no reports): the reports usual in
    /// those windows that did not come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_reports: Option<f64>,
}

impl Impact {
    /// Adds a bad window.
    pub fn add(&mut self, p: &Point) {
        if p.metric == Metric::REPORT_VOLUME {
            *self.missing_reports.get_or_insert(0.0) += (p.expected - p.observed).max(0.0);
        }
        let Some(e) = p.exposure else { return };
        self.reports += e.reports;
        self.sessions = self.sessions.max(e.sessions);
        self.degraded_minutes += e.watched_ms / 60_000.0;
        if p.metric == Metric::REBUFFER_RATIO {
            let excess = ((p.observed - p.expected) * e.watched_ms).max(0.0) / 60_000.0;
            *self.excess_stalled_minutes.get_or_insert(0.0) += excess;
        }
    }

    /// Whether there is anything to say.
    pub fn any(&self) -> bool {
        self.reports > 0 || self.missing_reports.is_some_and(|m| m >= 1.0)
    }

    /// In words, for summaries: `120 sessions, 340 min of playback affected so far`.
    pub fn describe(&self) -> String {
        if self.reports == 0
            && let Some(m) = self.missing_reports
        {
            return format!("{m:.0} usual reports missing so far");
        }
        let stalled = self.excess_stalled_minutes.map_or(String::new(), |m| {
            format!(", {m:.0} min stalled beyond expected")
        });
        format!(
            "{} sessions, {:.0} min of playback affected so far{stalled}",
            self.sessions, self.degraded_minutes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(observed: f64, sessions: u64, watched_min: f64) -> Point {
        Point {
            window_start: 0,
            window_end: 60_000,
            metric: Metric::REBUFFER_RATIO,
            observed,
            expected: 0.01,
            samples: 40,
            p_value: 1e-6,
            bad: true,
            severity: Severity::Critical,
            cohort: None,
            exposure: Some(Exposure {
                reports: 40,
                sessions,
                watched_ms: watched_min * 60_000.0,
                stalled_ms: observed * watched_min * 60_000.0,
            }),
        }
    }

    #[test]
    fn impact_adds_windows_and_counts_the_stall_beyond_expected() {
        let mut i = Impact::default();
        i.add(&point(0.11, 30, 100.0));
        i.add(&point(0.21, 20, 50.0));
        assert_eq!(i.reports, 80);
        assert_eq!(
            i.sessions, 30,
            "the most in one window, not a sum of session-windows"
        );
        assert!((i.degraded_minutes - 150.0).abs() < 1e-9);
        // 10 % of 100 min and 20 % of 50 min beyond the expected 1 %.
        let excess = i.excess_stalled_minutes.unwrap();
        assert!((excess - 20.0).abs() < 1e-9, "{excess}");
        assert!(
            i.describe().contains("30 sessions, 150 min"),
            "{}",
            i.describe()
        );
    }

    #[test]
    fn a_key_gone_quiet_counts_the_reports_that_did_not_come() {
        let mut i = Impact::default();
        assert!(!i.any());
        for observed in [0.0, 12.0] {
            i.add(&Point {
                metric: Metric::REPORT_VOLUME,
                observed,
                expected: 220.0,
                exposure: None,
                ..point(0.0, 0, 0.0)
            });
        }
        assert_eq!(i.missing_reports, Some(428.0));
        assert!(i.any());
        assert_eq!(i.describe(), "428 usual reports missing so far");
    }
}
