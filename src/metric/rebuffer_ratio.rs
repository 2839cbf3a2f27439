//! Rebuffering as a ratio of sums, Σ stalled ms / Σ watched ms, dominated by few sessions: a
//! t-test on the ratio estimator with a delta-method standard error (one stalled session
//! inflates the variance instead of the mean), and the deviation must survive removing the
//! worst report.
//!
//! A small key's ratio has no power: a few sessions, Pareto-long stalls. There each
//! session's window is the unit of evidence as well: how many of the window's (or run's)
//! sessions stalled at all, against what each session's own history of stalls and the key's
//! learned usual share expect ([`RebufferRatio::test_base`]). A session counts once a window
//! however often it stalls, and one that always stalls (a viewer on a bad cell) expects to.

use statrs::distribution::{Binomial, DiscreteCDF};

use super::{DESIGN_EFFECT, Kind, Normal, Outcome, Tuning, Window, effective_n, t_p_value};
use crate::decode::Report;
use crate::table::Expected;

/// Smallest expected ratio used as a null hypothesis (a benchmark of 0 would make any stall
/// infinitely worse).
const MIN_EXPECTED_RATIO: f64 = 0.002;
/// A deviation smaller than this is not worth a page whatever its ratio.
const MIN_DELTA: f64 = 0.005;
/// Most a key's usual rebuffering may lie above its benchmark's (points of watch time): a
/// CDN's probes on good networks hardly ever stall, a key's viewers on mobile and weak Wi-Fi
/// do (0.2-5.5 % in `tests/real_sessions.rs`'s recorded sessions, by the location's share of
/// 4G viewers), so each key learns its usual excess like the log-scale metrics learn their
/// offsets. Beyond this much more stalling than the probes is not "normal".
const MAX_EXCESS: f64 = 0.10;

// Slots: with r = rebuffer ms and d = played + rebuffer ms of each report, Σr, Σd, Σr², Σd²,
// Σrd; the report with the most rebuffering (r, d); Σ d·expected ratio and Σ d over joined
// reports (the denominator-weighted expectation); then the sessions of the window, those of
// them that stalled, 1 for a window with reports (summed: the windows of a run), the stalled
// sessions' bitmap and what the sessions' histories expect.
/// A window's watch time from its rebuffering slots: the sessions that began in it, stalled
/// and watched (played + stalled) milliseconds. For the viewer impact of incidents.
pub fn watch(s: &[f64]) -> (f64, f64, f64) {
    (s[SESSIONS], s[R], s[D])
}

const R: usize = 0;
const D: usize = 1;
const RR: usize = 2;
const DD: usize = 3;
const RD: usize = 4;
const MAX_R: usize = 5;
const MAX_R_D: usize = 6;
const EXP_WSUM: usize = 7;
const EXP_D: usize = 8;
const SESSIONS: usize = 9;
const STALLED: usize = 10;
const WINDOWS: usize = 11;
/// The stalled sessions' hashed ids, a 64-bit bitmap in two slots of 32 bits (integers, so
/// exact as `f64`), merged by OR: distinct stalled sessions over a run.
const STALLED_LO: usize = 12;
const STALLED_HI: usize = 13;
/// What the sessions' own histories expect of the window's session-windows: Σ stalled
/// windows / (windows + [`HISTORY_PRIOR`]) and Σ [`HISTORY_PRIOR`] / (windows +
/// [`HISTORY_PRIOR`]), the weight left to the key's usual share.
const OWN: usize = 14;
const PRIOR: usize = 15;

/// Weight, in windows, of the key's usual share in a session's own share of windows with a
/// stall.
const HISTORY_PRIOR: f64 = 2.0;

/// Session-windows a session test needs, and stalled ones beyond the expected.
const MIN_SESSIONS: f64 = 4.0;
const MIN_EXTRA_STALLED: f64 = 3.0;
/// The share of session-windows with a stall must be this much above the expected (points).
const MIN_SHARE_DELTA: f64 = 0.05;
/// Smallest usual share of sessions that stall tested against.
const MIN_BASE_SHARE: f64 = 0.02;
/// The sequential test's alternative: session-windows stall this many times as often as
/// expected.
const CUSUM_RATIO: f64 = 3.0;
/// Sessions a window may have for its step to climb, and to be tested sequentially.
const CUSUM_MAX_SESSIONS: f64 = 10.0;

pub struct RebufferRatio;

/// A 32-bit half of the stalled sessions' bitmap.
fn bits(x: f64) -> u32 {
    x as u32
}

/// Distinct stalled sessions, by linear counting over the bitmap; `None` when saturated.
fn stalled_sessions(s: &[f64]) -> Option<f64> {
    let set = f64::from(bits(s[STALLED_LO]).count_ones() + bits(s[STALLED_HI]).count_ones());
    let zeros = 64.0 - set;
    (zeros > 0.0).then(|| -64.0 * (zeros / 64.0).ln())
}

/// The stalled session-windows a window's (or run's) sessions expect: each session's own
/// share of windows with a stall, shrunk towards the key's usual share `base` by
/// [`HISTORY_PRIOR`] windows.
fn expected_stalled(s: &[f64], base: f64) -> f64 {
    s[OWN] + base.clamp(MIN_BASE_SHARE, 0.95) * s[PRIOR]
}

fn ratio(s: &[f64]) -> f64 {
    if s[D] > 0.0 { s[R] / s[D] } else { 0.0 }
}

impl Kind for RebufferRatio {
    fn name(&self) -> &'static str {
        "rebuffer_ratio"
    }

    fn rule(&self, against_benchmark: bool) -> &'static str {
        if against_benchmark {
            "rebuffering_above_benchmark"
        } else {
            "rebuffering_above_baseline"
        }
    }

    fn slots(&self) -> usize {
        16
    }

    fn slots_before(&self) -> Option<usize> {
        Some(9)
    }

    fn add(&self, s: &mut [f64], r: &Report, expected: Option<&Expected>, normal: Normal) {
        let k = normal.mark;
        if k.first {
            let h = f64::from(k.windows) + HISTORY_PRIOR;
            s[SESSIONS] += 1.0;
            s[OWN] += f64::from(k.event_windows) / h;
            s[PRIOR] += HISTORY_PRIOR / h;
        }
        s[WINDOWS] = 1.0;
        s[STALLED] += f64::from(u8::from(k.first_event));
        if k.first_event {
            // Once a window per stalled session: its id's hash, as the session map has it.
            let bit = k.session % 64;
            let (slot, bit) = if bit < 32 {
                (STALLED_LO, bit)
            } else {
                (STALLED_HI, bit - 32)
            };
            s[slot] = f64::from(bits(s[slot]) | (1 << bit));
        }
        let rb = r.rebuffer_ms as f64;
        let d = r.played_ms as f64 + rb;
        s[R] += rb;
        s[D] += d;
        s[RR] += rb * rb;
        s[DD] += d * d;
        s[RD] += rb * d;
        if rb > s[MAX_R] {
            s[MAX_R] = rb;
            s[MAX_R_D] = d;
        }
        if let Some(x) = expected.and_then(|e| e.rebuffer_ratio) {
            s[EXP_WSUM] += d * x;
            s[EXP_D] += d;
        }
    }

    fn merge(&self, s: &mut [f64], o: &[f64]) {
        for i in [
            R, D, RR, DD, RD, EXP_WSUM, EXP_D, SESSIONS, STALLED, WINDOWS, OWN, PRIOR,
        ] {
            s[i] += o[i];
        }
        for i in [STALLED_LO, STALLED_HI] {
            s[i] = f64::from(bits(s[i]) | bits(o[i]));
        }
        if o[MAX_R] > s[MAX_R] {
            s[MAX_R] = o[MAX_R];
            s[MAX_R_D] = o[MAX_R_D];
        }
    }

    fn expected(&self, w: Window) -> Option<f64> {
        (w.s[EXP_D] > 0.0).then(|| w.s[EXP_WSUM] / w.s[EXP_D])
    }

    /// The key's usual excess over the benchmark, in points of watch time (added to the
    /// benchmark's ratio).
    fn learns_offset(&self) -> bool {
        true
    }

    fn raw_offset(&self, observed: f64, expected: f64, offset: f64) -> f64 {
        observed - expected + offset
    }

    fn clamp_offset(&self, x: f64) -> f64 {
        x.clamp(0.0, MAX_EXCESS)
    }

    /// Before a key has learned its excess: only more than [`MAX_EXCESS`] above the
    /// benchmark.
    fn beyond_any_offset(&self, observed: f64, expected: f64, _effect: f64) -> bool {
        observed - expected > MAX_EXCESS
    }

    fn level(&self, w: Window, min_samples: u64) -> Option<f64> {
        (w.reports >= min_samples && w.s[D] > 0.0).then(|| ratio(w.s))
    }

    fn test(
        &self,
        w: Window,
        reference: f64,
        t: &Tuning,
        spread: f64,
        _var: Option<f64>,
    ) -> Option<Outcome> {
        let s = w.s;
        if w.reports < t.min_samples || s[D] <= 0.0 {
            return None;
        }
        let e = reference.max(MIN_EXPECTED_RATIO);
        let n = w.reports as f64;
        let r = ratio(s);
        // Delta method: Var(R) ≈ s² / (n·mean_d²) with s² the variance of r_i - R·d_i.
        let s2 = ((s[RR] - 2.0 * r * s[RD] + r * r * s[DD]) / (n - 1.0)).max(0.0);
        let mean_d = s[D] / n;
        let n_eff = effective_n(n, spread, w.sessions);
        let se = (s2 / n_eff).sqrt() / mean_d;
        let p_value = t_p_value(r - e, se, n_eff - 1.0);
        let se_independent = (s2 / n).sqrt() / mean_d;
        let z2 = (se_independent > 0.0).then(|| ((r - e) / se_independent).powi(2));
        let without_worst = if s[D] - s[MAX_R_D] > 0.0 {
            (s[R] - s[MAX_R]) / (s[D] - s[MAX_R_D])
        } else {
            0.0
        };
        let effect = r / e - 1.0;
        let min_eff = t.min_relative_effect;
        Some(Outcome {
            observed: r,
            expected: e,
            samples: w.reports,
            p_value,
            effect,
            eligible: effect >= min_eff && r - e >= MIN_DELTA && without_worst / e - 1.0 >= min_eff,
            spread: z2,
            pair_spread: None,
        })
    }

    fn session_event(&self, r: &Report) -> Option<bool> {
        Some(r.rebuffer_ms > 0)
    }

    fn clump_measure(&self, run: Window) -> Option<(f64, f64)> {
        let s = run.s;
        (s[WINDOWS] > 1.0 && s[STALLED] >= 1.0).then(|| {
            (
                s[STALLED],
                stalled_sessions(s).map_or(s[STALLED], f64::round),
            )
        })
    }

    fn base_measure(&self, w: Window) -> Option<(f64, f64)> {
        (w.s[SESSIONS] > 0.0).then(|| (w.s[STALLED], w.s[SESSIONS]))
    }

    /// Each session against its own history: the window's (or run's) session-windows with a
    /// stall against what the sessions' own shares of windows with a stall expect, each
    /// shrunk towards `base`, the key's usual share, by [`HISTORY_PRIOR`] windows (a new
    /// session expects `base`); the binomial upper tail at their mean chance, which bounds
    /// the tail of their own chances (Hoeffding's theorem). A
    /// viewer on a bad cell who stalls in every window expects to, so stalls the way its
    /// sessions always did are not evidence, and sessions that start stalling together are.
    /// Eligible with at least [`MIN_EXTRA_STALLED`] stalled session-windows beyond the
    /// expected, at least three distinct sessions stalled, the share of session-windows up by
    /// [`MIN_SHARE_DELTA`] and by the relative floor, and still a stalled session-window beyond
    /// the expected without two sessions that stalled in every window (one or two viewers
    /// walking into a bad cell are not the CDN).
    fn test_base(
        &self,
        w: Window,
        reference: f64,
        t: &Tuning,
        base: f64,
        clump: f64,
    ) -> Option<Outcome> {
        let s = w.s;
        let (windows, n, x) = (s[WINDOWS], s[SESSIONS].round(), s[STALLED].round());
        if n < MIN_SESSIONS || s[D] <= 0.0 {
            return None;
        }
        let expected = expected_stalled(s, base).max(MIN_BASE_SHARE);
        // Over a run, a session's windows are not independent: one whose network turns weak
        // stalls in its next windows too, before its history has learned it. So its stalled
        // session-windows come in clumps of the key's learned size (`clump`, stalled
        // session-windows per stalled session over its clean runs) and count as that many
        // fewer independent ones. Before, four sessions of a quiet night's key that turned
        // weak for a few windows each paged at p = 7e-12 (`tests/real_sessions.rs`).
        let k = if windows > 1.0 { clump.max(1.0) } else { 1.0 };
        let (n_eff, x_eff) = ((n / k).round().max(1.0), (x / k).round());
        // Each session-window stalls with its own chance; with their mean, the binomial's
        // upper tail bounds theirs beyond the mean plus one (Hoeffding, 1956).
        let p_value = match Binomial::new((expected / n).min(1.0), n_eff as u64) {
            Ok(d) if x_eff >= 1.0 => d.sf(x_eff as u64 - 1),
            Ok(_) => 1.0,
            Err(_) => return None,
        };
        // Within one window each session counts once already; over a run, by the bitmap.
        let distinct = if windows <= 1.0 {
            x
        } else {
            stalled_sessions(s).map_or(x, f64::round)
        };
        let effect = x / expected - 1.0;
        let beyond_two = (x - 2.0 * windows) - expected;
        let e = reference.max(MIN_EXPECTED_RATIO);
        Some(Outcome {
            observed: ratio(s),
            expected: e,
            samples: w.reports,
            p_value,
            effect,
            eligible: effect >= t.min_relative_effect
                && x - expected >= MIN_EXTRA_STALLED
                && distinct >= 3.0
                && (x - expected) / n >= MIN_SHARE_DELTA
                && beyond_two >= 1.0
                && ratio(s) > e,
            spread: None,
            pair_spread: None,
        })
    }

    fn sequential(&self) -> bool {
        true
    }

    /// The window's log-likelihood ratio of its session-windows with a stall: that they
    /// stall [`CUSUM_RATIO`] times as often as expected, against as expected (each session's
    /// own history shrunk towards the key's usual share `base`, as in [`Kind::test_base`]),
    /// over the key's learned `clump`. A session counts once a window; one that always
    /// stalls expects to, once its history knows it.
    fn cusum_step(&self, w: Window, base: Option<f64>, clump: f64) -> Option<f64> {
        let s = w.s;
        let (n, x) = (s[SESSIONS].round(), s[STALLED].round());
        let base = base?;
        if n < 1.0 {
            return None;
        }
        let q0 = (expected_stalled(s, base) / n).clamp(MIN_BASE_SHARE, 0.95);
        let q1 = (CUSUM_RATIO * q0).min(0.95);
        if q1 <= q0 {
            return None;
        }
        let llr = x * (q1 / q0).ln() + (n - x) * ((1.0 - q1) / (1.0 - q0)).ln();
        // A window of more sessions is decided by the window's and runs' tests; there the
        // test only falls (the small excesses of many sessions would add up, and a big
        // key's stalls vary from window to window more than independent sessions').
        let llr = if n > CUSUM_MAX_SESSIONS {
            llr.min(0.0)
        } else {
            llr
        };
        Some(llr / clump.max(1.0))
    }

    /// The key's sequential test of stalled sessions (a Bernoulli CUSUM of
    /// [`Kind::cusum_step`]): `before` where it stood after the last window, plus this
    /// window's `step`. Its p-value is `exp(-S)`: under the null each session-window stalls
    /// with its own chance, whose mean is the expected one, and then E[exp(step)] <= 1
    /// (Jensen, the log being concave; dividing by the clump keeps it so), so the CUSUM's
    /// exponential is a supermartingale and climbs to S with chance at most exp(-S) (Ville).
    /// It sees what no window shows: a small key whose few sessions stall, window after
    /// window, where they did not before (recorded sessions: a CDN three times slower at a
    /// key of a few sessions, missed by every window's tests as the sessions' histories and
    /// the key's usual share learned the stalls). Eligible while this window
    /// climbs with at least three stalled sessions, or two that are at least half of its
    /// sessions (one or two viewers walking into a bad cell among several are not the CDN;
    /// with two among six to eight, a key of recorded sessions under no incident paged), and
    /// rebuffering beyond the floors.
    fn test_cusum(
        &self,
        w: Window,
        reference: f64,
        t: &Tuning,
        before: f64,
        step: f64,
    ) -> Option<Outcome> {
        let s = w.s;
        if s[D] <= 0.0 || s[SESSIONS] < 1.0 || s[SESSIONS] > CUSUM_MAX_SESSIONS {
            return None;
        }
        let e = reference.max(MIN_EXPECTED_RATIO);
        let (r, x) = (ratio(s), s[STALLED].round());
        let effect = r / e - 1.0;
        Some(Outcome {
            observed: r,
            expected: e,
            samples: w.reports,
            p_value: (-(before + step).max(0.0)).exp(),
            effect,
            eligible: step > 0.0
                && (x >= 3.0 || (x >= 2.0 && 2.0 * s[STALLED] >= s[SESSIONS]))
                && effect >= t.min_relative_effect
                && r - e >= MIN_DELTA,
            spread: None,
            pair_spread: None,
        })
    }

    fn prior_spread(&self) -> Option<f64> {
        Some(DESIGN_EFFECT)
    }

    fn format(&self, v: f64) -> String {
        format!("{:.2} %", v * 100.0)
    }

    fn describe(&self, observed: f64, expected: f64) -> String {
        format!(
            "rebuffering {:.1}% vs {:.1}% expected",
            observed * 100.0,
            expected * 100.0
        )
    }

    fn cohort(&self, r: &Report, _: Option<&Expected>, _: Normal) -> Option<(f64, f64)> {
        Some((r.rebuffer_ms as f64, (r.played_ms + r.rebuffer_ms) as f64))
    }

    fn shown(&self, w: Window) -> Option<(Option<f64>, Option<f64>)> {
        Some((Some(ratio(w.s)), self.expected(w)))
    }

    fn rank(&self) -> u8 {
        0
    }
}
