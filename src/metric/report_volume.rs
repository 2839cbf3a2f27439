//! Reports per window: a key that goes quiet is news (a full outage sends no quality reports
//! at all). A key of at least [`MIN_USUAL_VOLUME`] reports a window is compared with its own
//! usual count, by a lower-tail Poisson test.
//!
//! A smaller key falls silent often with nothing wrong: its few sessions end, and none
//! starts for a few minutes. What an outage does that chance rarely does is end *every*
//! session at once. So such a key's sessions are followed from window to window (which of a
//! window's sessions reported in the window before): the key learns the share of its
//! sessions that end in a window, `h`, and how many arrive in one, `λ`. When a window has
//! no reports, the chance of that silence is at most
//!
//! * `h^n`: all `n` sessions of its last window with reports ended before the next, or
//! * `(1 - (1 - h)²)^m · h^a`: all `m` of the window before that ended within two windows,
//!   and the `a` that arrived in the last one within one (an outage that began during the
//!   last window, which then holds only the sessions that reported before it),
//!
//! times `exp(-λ)` for each further silent window (no session arrived; counted for at most
//! [`ARRIVAL_WINDOWS`]). The p-value is twice the smaller (Bonferroni over the two), a
//! sequential test kept in the key's spread ([`Spread::cusum`], in nats). Sessions are
//! assumed to end independently of each other; a vanishing of fewer than
//! [`MIN_VANISHED`] sessions is never evidence (measured, in `tests/long_tail.rs`: keys of
//! 10-30 reports a window fell silent for 3 windows or more hundreds of times after a window
//! of 1 or 2 sessions, never after 5 or more).

use super::{Baseline, DESIGN_EFFECT, Kind, Normal, Outcome, Spread, Tuning, Window};
use crate::decode::Report;
use crate::table::Expected;
use crate::time::Millis;

/// Fewest usual reports per window before a key's silence is tested by its count.
pub const MIN_USUAL_VOLUME: f64 = 60.0;
/// Fewest sessions whose vanishing together is evidence of an outage.
pub const MIN_VANISHED: f64 = 3.0;
/// Silent windows whose missing arrivals add to the evidence.
pub const ARRIVAL_WINDOWS: u8 = 15;
/// Silent windows after which a key is no longer tested for its vanished sessions.
pub const SILENCE_MEMORY: u8 = 15;

/// Largest p-value of a silence that is tested: one that could not be a discovery at the
/// default false discovery rate even as the only test of its window.
const MAX_TESTED_P: f64 = 1e-3;

/// Slots: the window's sessions (first reports), and those of them that reported in the
/// window before.
const SESSIONS: usize = 0;
const CONTINUED: usize = 1;

/// The evidence, in nats, that a silence from the next window on would be: every session of
/// a window (`n`, `c` of them continued from the `before` of the window before) vanished
/// together, with `h` the key's share of sessions that end in a window (see the module).
fn vanished(n: f64, c: f64, before: f64, h: f64) -> f64 {
    let h = h.clamp(1e-3, 0.999);
    let one = if n >= MIN_VANISHED { -n * h.ln() } else { 0.0 };
    let two_windows = 1.0 - (1.0 - h).powi(2);
    let two = if before >= MIN_VANISHED {
        -before * two_windows.ln() - (n - c).max(0.0) * h.ln()
    } else {
        0.0
    };
    one.max(two)
}

pub struct ReportVolume;

impl Kind for ReportVolume {
    fn name(&self) -> &'static str {
        "report_volume"
    }

    fn rule(&self, _: bool) -> &'static str {
        "reports_below_usual"
    }

    fn slots(&self) -> usize {
        2 // its count is the window's; its sessions, and those continued from the window before
    }

    fn slots_before(&self) -> Option<usize> {
        Some(0)
    }

    fn add(&self, s: &mut [f64], _: &Report, _: Option<&Expected>, normal: Normal) {
        let mark = normal.mark;
        if mark.first {
            s[SESSIONS] += 1.0;
            if mark.continued {
                s[CONTINUED] += 1.0;
            }
        }
    }

    fn follows_sessions(&self) -> bool {
        true
    }

    /// A key is followed from its first window of [`MIN_VANISHED`] sessions or more.
    fn starts_following(&self, w: Window) -> bool {
        w.s[SESSIONS] >= MIN_VANISHED
    }

    /// Learns the key's share of sessions that end in a window and the sessions that arrive
    /// in one (not from a bad window; a suspect one at a tenth of the weight), then sets its
    /// sequential test: after a window with reports, the evidence a silence would be; after a
    /// silent one, that plus the arrivals missed.
    fn follow_sessions(&self, w: Window, s: &mut Spread, bad: bool, suspect: bool, at: Millis) {
        let last = f64::from(s.sessions);
        // The window before had reports (and `last` sessions), or was silent and followed.
        let right_before = s.silent == 0 && last > 0.0;
        let known = right_before || s.silent > 0;
        if w.reports == 0 {
            if right_before && !bad {
                s.learn_base(last, last, at, suspect);
                s.learn_arrivals(0.0, at, suspect);
            }
            s.silent = s.silent.saturating_add(1);
            if s.silent <= ARRIVAL_WINDOWS && s.cusum > 0.0 {
                s.cusum += s.arrivals().unwrap_or(0.0) as f32;
            }
            if s.silent >= SILENCE_MEMORY {
                (s.sessions, s.cusum) = (0.0, 0.0);
            }
            return;
        }
        let n = w.s[SESSIONS].round();
        let c = w.s[CONTINUED].round().min(n);
        if !bad {
            if right_before {
                s.learn_base((last - c).max(0.0), last, at, suspect);
            }
            if known {
                s.learn_arrivals(n - c, at, suspect);
            }
        }
        let before = if right_before { last } else { 0.0 };
        s.cusum = s.base().map_or(0.0, |h| vanished(n, c, before, h)) as f32;
        (s.sessions, s.silent) = (n as f32, 0);
        s.last_seen = at;
    }

    /// A key too small for its count's test is tested in a silent window while its sessions
    /// of before may have vanished together.
    fn awaits(&self, s: &Spread) -> bool {
        s.sessions > 0.0 && (s.silent == 0 || s.cusum > 0.0)
    }

    /// The silence of a key too small for its count's test: its sessions of before vanished
    /// together (see the module). `before` is the evidence up to the last window; this
    /// window's missing arrivals count from the next.
    fn test_cusum(
        &self,
        w: Window,
        usual: f64,
        t: &Tuning,
        before: f64,
        _: f64,
    ) -> Option<Outcome> {
        let p_value = (2.0 * (-before).exp()).min(1.0);
        // A silence that could not be a discovery even alone in its family is not counted
        // in it, after Tarone's rule for discrete tests (1990), which leaves out hypotheses
        // that cannot reach significance: most silences of small keys are such. Here the
        // silence is seen before it is left out, so this is less conservative than Tarone's;
        // the quiet runs (README) measure what it costs in false incidents.
        if w.reports > 0 || p_value > MAX_TESTED_P || usual >= MIN_USUAL_VOLUME {
            return None;
        }
        let effect = usual - 1.0; // usual / max(observed, 1) - 1, as the count's test
        Some(Outcome {
            observed: 0.0,
            expected: usual,
            samples: 0,
            p_value,
            effect,
            eligible: effect >= t.min_relative_effect,
            spread: None,
            pair_spread: None,
        })
    }

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
