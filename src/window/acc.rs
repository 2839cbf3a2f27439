//! Per-window, per-key accumulators: the report count and every metric's sums, from which
//! each metric and its test statistic are computed at close time, in constant memory per key.
//! What each metric keeps is its own business ([`crate::metric`]).

use super::cohort::Cohorts;
use super::sessions::Sessions;
use crate::decode::Report;
use crate::metric::{Metric, Normals, Slots, Window};
use crate::table::Expected;

/// How many viewers and how much watching a window of a scope holds.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Exposure {
    pub reports: u64,
    /// Sessions with reports in the window.
    pub sessions: u64,
    /// Played plus stalled milliseconds.
    pub watched_ms: f64,
    pub stalled_ms: f64,
}

/// Everything one window keeps about one key.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "AccRepr")]
pub struct Acc {
    pub reports: u64,
    /// Reports that found a benchmark valid at their event time.
    pub joined: u64,
    /// Every metric's sums.
    pub metrics: Slots,
    /// The sessions its reports came from.
    #[serde(default)]
    pub sessions: Sessions,
    /// Per-cohort sums for the drill-down, only for keys under suspicion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohorts: Option<Box<Cohorts>>,
}

impl Acc {
    /// Folds in one report and the benchmark valid at its event time, if any.
    pub fn add(&mut self, r: &Report, expected: Option<&Expected>) {
        self.add_with(r, expected, &Normals::default());
    }

    /// Like [`Acc::add`], with what is normal for the key, for the sign tests.
    pub fn add_with(&mut self, r: &Report, expected: Option<&Expected>, normals: &Normals) {
        self.reports += 1;
        self.sessions.add(&r.session_id);
        if expected.is_some() {
            self.joined += 1;
        }
        self.metrics.add(r, expected, normals);
        if let Some(c) = self.cohorts.as_mut() {
            c.add(r, expected, normals);
        }
    }

    /// Adds another key's accumulator (for rolling keys up to a CDN or a location).
    pub fn merge(&mut self, o: &Acc) {
        self.merge_sums(o);
        if let Some(c) = &o.cohorts {
            self.cohorts.get_or_insert_default().merge(c);
        }
    }

    /// Adds another accumulator's counts and sums, leaving its cohorts out.
    pub fn merge_sums(&mut self, o: &Acc) {
        self.reports += o.reports;
        self.joined += o.joined;
        self.sessions.merge(&o.sessions);
        self.metrics.merge(&o.metrics);
    }

    /// The window as metric `m` sees it.
    pub fn window(&self, m: Metric) -> Window<'_> {
        Window {
            reports: self.reports,
            joined: self.joined,
            sessions: self.sessions.estimate(self.reports),
            s: self.metrics.of(m),
        }
    }

    /// How many viewers and how much watching the window holds.
    pub fn exposure(&self) -> Exposure {
        let (started, stalled, watched) =
            crate::metric::watch(self.metrics.of(crate::metric::Metric::REBUFFER_RATIO));
        // The window's sessions as the session map marks them (each once a window); the
        // bitmap's estimate where it does not (a map past its cap).
        let sessions = if started > 0.0 {
            started
        } else {
            self.sessions.estimate(self.reports).unwrap_or(0.0)
        };
        Exposure {
            reports: self.reports,
            sessions: sessions.round() as u64,
            watched_ms: watched,
            stalled_ms: stalled,
        }
    }

    /// What people read for `m` in this window, and the benchmark's (viewer quality).
    pub fn shown(&self, m: Metric) -> Option<(Option<f64>, Option<f64>)> {
        m.kind().shown(self.window(m))
    }
}

/// An accumulator as written now, or as checkpoints before metrics had their own files wrote
/// it (one named field per sum); those read into the same slots.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum AccRepr {
    Now(AccNow),
    Named(super::legacy::NamedAcc),
}

/// An accumulator in the current layout only, decoded straight (the untagged [`AccRepr`]
/// buffers every value to try each layout in turn: most of a restore's time). The state's
/// per-key records ([`crate::engine::Record`]) were never written in another layout.
#[derive(Default, serde::Deserialize)]
pub struct AccNow {
    reports: u64,
    joined: u64,
    metrics: Slots,
    #[serde(default)]
    sessions: Sessions,
    #[serde(default)]
    cohorts: Option<Box<Cohorts>>,
}

impl From<AccNow> for Acc {
    fn from(a: AccNow) -> Self {
        Acc {
            reports: a.reports,
            joined: a.joined,
            metrics: a.metrics,
            sessions: a.sessions,
            cohorts: a.cohorts,
        }
    }
}

impl From<AccRepr> for Acc {
    fn from(r: AccRepr) -> Self {
        match r {
            AccRepr::Now(a) => a.into(),
            AccRepr::Named(n) => n.into(),
        }
    }
}
