//! What a key has learned to be normal for it, per metric: its offset from the benchmark
//! (log-scale metrics) or, where it is the reference, its own level.

use crate::time::Millis;

/// Windows of history a key's own level needs before it is trusted.
pub const OWN_LEVEL_WARMUP: u32 = 5;

/// Windows a baseline needs before it is trusted; until then only critical deviations fire.
pub const BASELINE_WARMUP: u32 = 3;

/// Largest offset learned: clients 3x worse (or better) than the probes is not "normal".
pub(super) const MAX_OFFSET: f64 = 1.0986; // ln 3

/// Smallest relative effect that counts while a key has not learned its offset from the
/// benchmark: beyond what any offset explains (3x, [`MAX_OFFSET`]) with room for one small
/// window's noise. Clients on mobile and slow home networks commonly see half of what a
/// CDN's probes measure; on a first start that is not an incident.
pub const WARMUP_EFFECT: f64 = 3.0;

/// What is normal for one key relative to its benchmark, learned from its clean windows (or,
/// used as an own level, the key's own level).
///
/// Clients see a CDN somewhat differently from its probes (last mile), by an amount that
/// differs per key but is stable. For the log-scale metrics the learned offset
/// `ln(observed) - ln(benchmark)` shifts the expectation, so a stable offset never fires and a
/// deviation from what is normal for the key does. Bad windows are not learned from, so an
/// incident is not absorbed while it lasts (a slow drift over many windows is).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    pub offset: f64,
    pub windows: u32,
    pub last_seen: Millis,
}

impl Baseline {
    /// Learns from one clean window whose raw offset from the benchmark was `x`, clamped as
    /// the metric allows ([`crate::metric::Kind::clamp_offset`]).
    pub fn learn(&mut self, x: f64, at: Millis) {
        self.track(x, at);
    }

    pub fn warm(&self) -> bool {
        self.windows >= BASELINE_WARMUP
    }

    /// Whether a finding of relative `effect` may be bad against a baseline `warm` or not
    /// (`beyond`: beyond what any offset explains, [`crate::metric::Kind::beyond_any_offset`];
    /// `critical`: the metric's critical effect).
    pub fn eligible(warm: bool, beyond: bool, effect: f64, critical: f64) -> bool {
        warm || (beyond && effect >= critical)
    }

    /// Whether a window whose finding was `bad` teaches the offset: clean ones do, and every
    /// window until the baseline is warm (what is normal for the key is not known yet, so
    /// "bad" may be its normal; an incident already under way when the key is first seen is
    /// learned as normal, and shows as a change when it ends).
    pub fn teaches(baseline: Option<&Baseline>, bad: bool) -> bool {
        !bad || !baseline.is_some_and(Baseline::warm)
    }

    /// Whether it is warm enough to be a key's own level.
    pub fn warm_level(&self) -> bool {
        self.windows >= OWN_LEVEL_WARMUP
    }

    /// Follows a window that deviates beyond the floors without being significant: only as
    /// fast as [`Baseline::drift`], and the key counts as seen.
    pub fn lean(&mut self, x: f64, at: Millis) {
        self.drift(x);
        self.last_seen = at;
    }

    /// [`Baseline::lean`] for an offset from the benchmark (clamped by the caller as for
    /// [`Baseline::learn`]).
    pub fn lean_offset(&mut self, x: f64, at: Millis) {
        self.lean(x, at);
    }

    /// Follows a level slowly even through bad windows, so that a lasting change (traffic
    /// steered away for good) becomes the new normal after a few dozen windows.
    pub fn drift(&mut self, x: f64) {
        self.offset += 0.03 * (x - self.offset);
    }

    /// Tracks a key's own level (no clamping: levels are not ratios): a running mean while
    /// warming up, then an EWMA over about ten windows.
    pub fn track(&mut self, x: f64, at: Millis) {
        let a = if self.windows < 10 {
            1.0 / (self.windows as f64 + 1.0)
        } else {
            0.1
        };
        self.offset += a * (x - self.offset);
        self.windows = self.windows.saturating_add(1);
        self.last_seen = at;
    }
}

/// Clean windows a key's spread is learned over (an EWMA of about this many, a running mean
/// before).
const SPREAD_MEMORY: f64 = 40.0;
/// Weight, in windows, of the metric's prior design effect in a key's spread.
const SPREAD_PRIOR_WEIGHT: f64 = 5.0;
/// One window's measure counts up to this many times the current spread (bounded influence: a
/// window that is not bad enough to be flagged, early in an incident, cannot move it far).
const SPREAD_CLIP: f64 = 6.0;
/// E[min(χ²₁, 6)]: the clipped mean of an unclipped spread of 1.
const SPREAD_CLIP_MEAN: f64 = 0.954;

/// How much one key's window statistic of one metric varies beyond what its samples would
/// give if they were independent: its design effect, learned from its own clean windows as the
/// mean of z², z being the window's deviation from its reference in standard errors of
/// independent samples (for report counts: the mean number of reports per session). A
/// session reports several times a window and keeps its network, so a key whose viewers mix
/// fast home, slow home and mobile networks varies far more than its report count says, and a
/// key of steady viewers less. Shrunk towards the metric's prior while few windows back it;
/// never below 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spread {
    /// Mean of the clipped measures, each divided by [`SPREAD_CLIP_MEAN`].
    pub phi: f32,
    pub windows: u16,
    pub last_seen: Millis,
    /// The same for the metric's within-session differences, where it pairs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pair_phi: f32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pair_windows: u16,
    /// For a metric that counts sessions ([`crate::metric::Kind::session_event`]): its
    /// sessions with an event and its sessions, summed over clean windows with a memory of
    /// about [`BASE_MEMORY`] windows, and the windows learned from.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub base_events: f32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub base_sessions: f32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub base_windows: u16,
    /// For a metric tested on few samples ([`crate::metric::Kind::deviations`]): its clean
    /// windows' sums of squared deviations from their reference and sample counts; for one
    /// whose level test moderates its variance ([`crate::metric::Kind::within`]): its clean
    /// windows' (or runs') sums of squared deviations from their own mean and degrees of
    /// freedom. A memory of about [`BASE_MEMORY`] windows.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub var_ss: f32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub var_df: f32,
    /// For a metric with a sequential test ([`crate::metric::Kind::test_cusum`]): where it
    /// stands (never below zero).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cusum: f32,
    /// Whether the key's last tested window was bad on the metric ([`Spread::verdict`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bad: bool,
    /// For a metric that counts sessions with an event: over its clean runs, the
    /// session-windows with one and the distinct sessions they came from, with a memory of
    /// about [`BASE_MEMORY`] runs ([`Spread::clump`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clump_x: f32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clump_d: f32,
    /// For a metric that follows a key's sessions ([`crate::metric::Kind::follow_sessions`]):
    /// the sessions of the key's last window with reports, and the windows without any
    /// since (its sessions' share that end in a window is learned in `base_*`, the sessions
    /// that arrive in a window in `var_*`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sessions: f32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub silent: u8,
    /// The sessions that arrived in a window, and the windows, with a memory of about
    /// [`RECENT_MEMORY`] windows (the key's recent rate, next to the long one in `var_*`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recent_arrived: f32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recent_windows: f32,
    /// The key's last windows tested on the metric, for an incident's evidence (in memory
    /// only: a restored key's trail starts again).
    #[serde(skip)]
    pub trail: Trail,
}

/// Windows a [`Trail`] keeps.
pub const TRAIL: usize = 2;

/// A key's last [`TRAIL`] windows tested on one metric, newest first: the "before" of an
/// incident's evidence (what the key showed in the windows before its first bad one).
/// Compact (64 bytes), kept in the key's [`Spread`] so that it costs no map entry.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Trail([Option<Trace>; TRAIL]);

/// One window of a [`Trail`]: what its test found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trace {
    pub start: Millis,
    pub observed: f32,
    pub expected: f32,
    pub samples: u32,
    pub p_value: f32,
    pub bad: bool,
    pub critical: bool,
}

impl Trail {
    /// Adds the window tested last (windows come in order; one not newer is ignored).
    pub fn push(&mut self, t: Trace) {
        if self.0[0].is_some_and(|last| last.start >= t.start) {
            return;
        }
        self.0.rotate_right(1);
        self.0[0] = Some(t);
    }

    /// The windows kept that started before `start`, oldest first.
    pub fn before(&self, start: Millis) -> impl Iterator<Item = Trace> + '_ {
        self.0
            .iter()
            .rev()
            .flatten()
            .copied()
            .filter(move |t| t.start < start)
    }
}

/// Samples a key's mean squared deviation of one sample needs before it is tested against.
const VAR_MIN_DF: f32 = 20.0;
/// Its prior, a standard deviation of 0.6 on the log scale (startup times), with the
/// weight of this many degrees of freedom.
const VAR_PRIOR: f64 = 0.36;
const VAR_PRIOR_DF: f64 = 5.0;

/// Windows a key's recent rate of arriving sessions is learned over.
const RECENT_MEMORY: f32 = 10.0;

/// Windows a key's usual share of sessions with an event is learned over.
const BASE_MEMORY: f32 = 30.0;
/// Windows it needs before it is tested against, and session-windows.
pub const BASE_WARMUP: u16 = 10;
const BASE_MIN_SESSIONS: f32 = 40.0;
/// Weight, in session-windows, of the prior share (a fifth) in the usual share.
const BASE_PRIOR_SESSIONS: f64 = 5.0;
/// Prior clump of events per session over a run, with the weight of this many sessions.
const CLUMP_PRIOR: f64 = 1.5;
const CLUMP_PRIOR_SESSIONS: f64 = 5.0;

/// Adds a window's (or run's) `x` and `y` to two sums with a memory of about
/// [`BASE_MEMORY`] of them; a suspect one at a tenth of the weight.
fn decay_sums(a: &mut f32, b: &mut f32, x: f64, y: f64, suspect: bool) {
    let w = if suspect { 0.1 } else { 1.0 };
    let keep = 1.0 - w / BASE_MEMORY;
    *a = *a * keep + w * x as f32;
    *b = *b * keep + w * y as f32;
}

fn is_zero<T: Default + PartialEq>(x: &T) -> bool {
    *x == T::default()
}

/// One window's measure `x` into a spread's mean (`phi` over `windows`); a suspect one at a
/// tenth of the rate, not counted as a window.
fn absorb(phi: &mut f32, windows: &mut u16, x: f64, prior: f64, suspect: bool) {
    let x = x.min(SPREAD_CLIP * value(*phi, *windows, prior)) / SPREAD_CLIP_MEAN;
    let a = 1.0 / (f64::from(*windows) + 1.0).min(SPREAD_MEMORY);
    let old = f64::from(*phi);
    if suspect {
        if *windows > 0 {
            *phi = (old + 0.1 * a * (x - old)) as f32;
        }
        return;
    }
    *phi = (old + a * (x - old)) as f32;
    *windows = windows.saturating_add(1);
}

/// A spread's design effect: its mean shrunk towards `prior` while few windows back it.
fn value(phi: f32, windows: u16, prior: f64) -> f64 {
    let w = f64::from(windows).min(SPREAD_MEMORY);
    ((SPREAD_PRIOR_WEIGHT * prior + w * f64::from(phi)) / (SPREAD_PRIOR_WEIGHT + w)).max(1.0)
}

impl Spread {
    /// Learns from one window that was not bad whose measure of its design effect was `x`
    /// (z², or reports per session); `suspect`: it deviated beyond the floors without being
    /// significant, so it teaches at a tenth of the rate (a small key's incident is suspect
    /// for a few windows before its evidence adds up: learned at full rate, its own z² would
    /// inflate the spread it is tested with, window after window, until it never adds up).
    pub fn learn(&mut self, x: f64, prior: f64, at: Millis, suspect: bool) {
        if x.is_finite() {
            absorb(&mut self.phi, &mut self.windows, x, prior, suspect);
            self.last_seen = at;
        }
    }

    /// Learns the design effect of within-session differences from one window, as
    /// [`Spread::learn`].
    pub fn learn_pair(&mut self, x: f64, prior: f64, at: Millis, suspect: bool) {
        if x.is_finite() {
            absorb(
                &mut self.pair_phi,
                &mut self.pair_windows,
                x,
                prior,
                suspect,
            );
            self.last_seen = at;
        }
    }

    /// Learns the usual share of sessions with an event from a window that was not bad on
    /// the metric: `events` of its `sessions`; a suspect one at a tenth of the weight.
    pub fn learn_base(&mut self, events: f64, sessions: f64, at: Millis, suspect: bool) {
        if !(events.is_finite() && sessions.is_finite() && sessions > 0.0) {
            return;
        }
        decay_sums(
            &mut self.base_events,
            &mut self.base_sessions,
            events,
            sessions,
            suspect,
        );
        if !suspect {
            self.base_windows = self.base_windows.saturating_add(1);
        }
        self.last_seen = at;
    }

    /// The usual share of sessions with an event in a window, once learned over
    /// [`BASE_WARMUP`] windows and [`BASE_MIN_SESSIONS`] session-windows; shrunk towards a
    /// fifth by the weight of [`BASE_PRIOR_SESSIONS`] (a key that has seen few sessions, or
    /// none stall, is not assumed never to).
    pub fn base(&self) -> Option<f64> {
        (self.base_windows >= BASE_WARMUP && self.base_sessions >= BASE_MIN_SESSIONS).then(|| {
            (f64::from(self.base_events) + 0.2 * BASE_PRIOR_SESSIONS)
                / (f64::from(self.base_sessions) + BASE_PRIOR_SESSIONS)
        })
    }

    /// Learns how events clump in sessions from a run that was not bad on the metric: `x`
    /// session-windows with an event from `d` distinct sessions; a suspect one at a tenth of
    /// the weight.
    pub fn learn_clump(&mut self, x: f64, d: f64, at: Millis, suspect: bool) {
        if !(x.is_finite() && d.is_finite() && d > 0.0 && x >= d) {
            return;
        }
        decay_sums(&mut self.clump_x, &mut self.clump_d, x, d, suspect);
        self.last_seen = at;
    }

    /// Session-windows with an event per session with one, over a run: what one stalling
    /// session adds to a run's count when nothing is wrong (a session whose network turned
    /// weak stalls for several windows), shrunk towards [`CLUMP_PRIOR`]; at least 1.
    pub fn clump(&self) -> f64 {
        ((f64::from(self.clump_x) + CLUMP_PRIOR * CLUMP_PRIOR_SESSIONS)
            / (f64::from(self.clump_d) + CLUMP_PRIOR_SESSIONS))
            .max(1.0)
    }

    /// Learns the mean squared deviation of one sample from its reference from a window
    /// that was not bad on the metric: `ss` over `df` samples; a suspect one at a tenth of
    /// the weight.
    pub fn learn_var(&mut self, ss: f64, df: f64, at: Millis, suspect: bool) {
        if !(ss.is_finite() && df.is_finite() && df > 0.0 && ss >= 0.0) {
            return;
        }
        decay_sums(&mut self.var_ss, &mut self.var_df, ss, df, suspect);
        self.last_seen = at;
    }

    /// Moves the key's sequential test by a window's step, bad windows included: it is the
    /// evidence, not what is learned as normal.
    pub fn step_cusum(&mut self, step: f64, at: Millis) {
        if step.is_finite() {
            self.cusum = (f64::from(self.cusum) + step).max(0.0) as f32;
            self.last_seen = at;
        }
    }

    /// Notes whether a tested window was bad on the metric. The sequential test starts again
    /// from zero once a bad streak ends, as a CUSUM restarts after its alarm: left standing
    /// as high as the incident took it, it fired again on a single slow start minutes after
    /// the incident resolved (`simulate` small keys seed 31: one startup regression raised
    /// twice).
    pub fn verdict(&mut self, bad: bool) {
        if !bad && self.bad {
            self.cusum = 0.0;
        }
        self.bad = bad;
    }

    /// Learns how many sessions arrive in a window (sessions that did not report in the
    /// window before) from one window whose window before is known; a suspect one at a
    /// tenth of the weight. Kept in the sums [`Spread::learn_var`] keeps for other metrics.
    pub fn learn_arrivals(&mut self, arrived: f64, at: Millis, suspect: bool) {
        let arrived = arrived.max(0.0);
        self.learn_var(arrived, 1.0, at, suspect);
        let w = if suspect { 0.1 } else { 1.0 };
        let keep = 1.0 - w / RECENT_MEMORY;
        self.recent_arrived = self.recent_arrived * keep + w * arrived as f32;
        self.recent_windows = self.recent_windows * keep + w;
    }

    /// Sessions arriving in a window, once learned over about [`VAR_MIN_DF`] windows: the
    /// lower of the key's long and recent rates (an evening's load falls for hours: the
    /// long rate lags behind it), shrunk towards none by the weight of [`VAR_PRIOR_DF`]
    /// windows and of one. Fewer arrivals make a silence less telling.
    pub fn arrivals(&self) -> Option<f64> {
        (self.var_df >= VAR_MIN_DF).then(|| {
            let long = f64::from(self.var_ss) / (f64::from(self.var_df) + VAR_PRIOR_DF);
            let recent = f64::from(self.recent_arrived) / (f64::from(self.recent_windows) + 1.0);
            long.min(recent)
        })
    }

    /// The mean squared deviation of one sample from its reference, once learned over
    /// [`VAR_MIN_DF`] samples (shrunk towards [`VAR_PRIOR`]).
    pub fn var(&self) -> Option<f64> {
        (self.var_df >= VAR_MIN_DF).then(|| {
            (f64::from(self.var_ss) + VAR_PRIOR * VAR_PRIOR_DF)
                / (f64::from(self.var_df) + VAR_PRIOR_DF)
        })
    }

    /// The design effect to test with.
    pub fn value(&self, prior: f64) -> f64 {
        value(self.phi, self.windows, prior)
    }

    /// The design effect of within-session differences to test with.
    pub fn pair_value(&self, prior: f64) -> f64 {
        value(self.pair_phi, self.pair_windows, prior)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Rng;

    /// z of windows whose statistic varies `phi` times as much as independent samples say.
    fn learned(phi: f64, windows: usize, prior: f64) -> f64 {
        let mut rng = Rng::new(3);
        let mut s = Spread::default();
        for i in 0..windows {
            s.learn(rng.normal().powi(2) * phi, prior, i as Millis, false);
        }
        s.value(prior)
    }

    #[test]
    fn a_key_learns_its_own_design_effect() {
        // Starts at the prior, moves to what the windows show, either way.
        assert_eq!(Spread::default().value(3.0), 3.0);
        let high = learned(12.0, 300, 3.0);
        assert!((9.0..15.0).contains(&high), "{high}");
        let low = learned(1.2, 300, 3.0);
        assert!((1.0..2.0).contains(&low), "{low}");
        assert!(
            learned(0.2, 300, 3.0) >= 1.0,
            "never below independent samples"
        );
        // One wild window moves it by a bounded amount.
        let mut s = Spread::default();
        for i in 0..100 {
            s.learn(1.0, 1.0, i, false);
        }
        let before = s.value(1.0);
        s.learn(1e6, 1.0, 100, false);
        assert!(s.value(1.0) < before * 1.2, "{before} -> {}", s.value(1.0));
        s.learn(f64::NAN, 1.0, 101, false);
        assert!(s.value(1.0).is_finite());
    }
}
