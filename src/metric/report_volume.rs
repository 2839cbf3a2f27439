//! Reports per window: a key that goes quiet is news (a full outage sends no quality reports
//! at all). Compared with the key's own usual count, by a lower-tail Poisson test.

use super::{Baseline, DESIGN_EFFECT, Kind, Normal, Outcome, Tuning, Window};
use crate::decode::Report;
use crate::table::Expected;
use crate::time::Millis;

/// Fewest usual reports per window before a key's silence is tested.
pub const MIN_USUAL_VOLUME: f64 = 60.0;

pub struct ReportVolume;

impl Kind for ReportVolume {
    fn name(&self) -> &'static str {
        "report_volume"
    }

    fn rule(&self, _: bool) -> &'static str {
        "reports_below_usual"
    }

    fn slots(&self) -> usize {
        0 // the window's report count is all it needs
    }

    fn add(&self, _: &mut [f64], _: &Report, _: Option<&Expected>, _: Normal) {}

    fn expected(&self, _: Window) -> Option<f64> {
        None
    }

    /// Every window counts, silent ones included.
    fn level(&self, w: Window, _: u64) -> Option<f64> {
        Some(w.reports as f64)
    }

    /// The count must have at least halved: load curves and session churn move counts,
    /// outages cut them.
    fn test(
        &self,
        w: Window,
        usual: f64,
        t: &Tuning,
        spread: f64,
        _: Option<f64>,
    ) -> Option<Outcome> {
        if usual < MIN_USUAL_VOLUME {
            return None;
        }
        let observed = w.reports;
        // Reports come in sessions (several per window each, as many as the player's report
        // interval makes), so counts vary more than a Poisson of reports: test the count of
        // "session equivalents", with the key's learned design effect.
        let deff = spread.max(1.0);
        let p_value = match statrs::distribution::Poisson::new(usual / deff) {
            Ok(d) => {
                use statrs::distribution::DiscreteCDF;
                d.cdf((observed as f64 / deff).floor() as u64)
            }
            Err(_) => 1.0,
        };
        // The design effect of a count is its reports per session.
        let per_session = w
            .sessions
            .filter(|s| *s >= 1.0)
            .map(|s| observed as f64 / s);
        let effect = usual / (observed.max(1) as f64) - 1.0;
        Some(Outcome {
            observed: observed as f64,
            expected: usual,
            samples: observed,
            p_value,
            effect,
            eligible: (observed as f64) <= 0.5 * usual && effect >= t.min_relative_effect,
            spread: per_session,
            pair_spread: None,
        })
    }

    fn format(&self, v: f64) -> String {
        format!("{v:.0} reports")
    }

    fn describe(&self, observed: f64, expected: f64) -> String {
        format!("{observed:.0} reports in the window vs {expected:.0} usual")
    }

    fn benchmarked(&self) -> bool {
        false
    }

    fn prior_spread(&self) -> Option<f64> {
        Some(DESIGN_EFFECT)
    }

    /// Follows the count even through bad windows (slowly), so traffic steered away for good
    /// becomes the new usual; a silent window does not keep the key alive.
    fn follow(&self, b: &mut Baseline, x: f64, bad: bool, at: Millis) {
        let seen = b.last_seen;
        if bad {
            b.drift(x);
        } else {
            b.track(x, at);
        }
        if x == 0.0 {
            b.last_seen = seen; // silent keys age out
        }
    }

    /// A count per window: a run's sum is no window's count.
    fn accumulates(&self) -> bool {
        false
    }

    fn expects_reports(&self, level: f64) -> bool {
        level >= MIN_USUAL_VOLUME
    }

    /// A parent's usual count is the sum of its keys'.
    fn pool(&self, references: &[f64]) -> Option<f64> {
        Some(references.iter().sum())
    }

    fn counts_samples(&self) -> bool {
        false
    }

    fn shown(&self, _: Window) -> Option<(Option<f64>, Option<f64>)> {
        None
    }

    fn higher_is_worse(&self) -> bool {
        false
    }

    fn rank(&self) -> u8 {
        4
    }
}
