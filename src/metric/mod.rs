//! What is measured. A metric is one type in one file: how a report folds into its window
//! accumulator and how two merge, its test against a reference, how it learns what is normal
//! for a key, how it prints and how a cohort carries it. Window accumulators, detection, the
//! learned references, rendering, the viewer-quality gauges and `rules lint` iterate over
//! [`Metric::all`] instead of naming each metric.
//!
//! Adding a metric: a file with a type that implements [`Kind`], and one line in
//! [`REGISTRY`]. A metric can be off by default ([`Kind::enabled_by_default`]), switched on in
//! the rules (`[metrics.<name>] enabled = true`).

mod bitrate;
mod failure_rate;
mod learned;
mod log_scale;
mod rebuffer_ratio;
mod report_volume;
mod slots;
mod startup;
mod tails;
mod throughput;

pub use learned::{
    BASELINE_WARMUP, Baseline, OWN_LEVEL_WARMUP, Spread, Trace, Trail, WARMUP_EFFECT,
};
pub use log_scale::{LogScale, LogStats};
pub use rebuffer_ratio::watch;
use slots::LAYOUT;
pub use slots::Slots;
pub(crate) use tails::{effective_n, t_p_value};

use crate::decode::Report;
use crate::table::Expected;
use crate::time::Millis;

/// Every metric. The order is the order in which a key's metrics are tested, so the order of
/// its findings and alerts. Registering a metric is one line here.
static REGISTRY: &[&dyn Kind] = &[
    &failure_rate::FailureRate,
    &rebuffer_ratio::RebufferRatio,
    &throughput::THROUGHPUT_KBPS,
    &startup::STARTUP_MS,
    &report_volume::ReportVolume,
    &bitrate::BITRATE_KBPS,
];

/// Most metrics [`Normals`] has room for.
pub const MAX_METRICS: usize = 8;

/// Reports are not independent: a player sends one every 10-30 s and its session's quality
/// persists, so a 60 s window holds about three correlated reports per session. t-tests use
/// n / design effect as their sample size (the standard error grows by its square root), which
/// keeps a handful of unlucky sessions on a small key from looking like hundreds of reports.
/// This is the design effect a key starts with; each key then learns its own from its clean
/// windows ([`Spread`]).
pub const DESIGN_EFFECT: f64 = 3.0;

/// One metric's behaviour. Its window state is a fixed number of `f64` slots (sums and counts
/// folded per report), laid out by the registry; [`Kind::merge`] adds them by default.
pub trait Kind: Sync {
    /// The `metric` field of alerts and the key of `[detect.metrics.<name>]`.
    fn name(&self) -> &'static str;
    /// The rule that fires on it against a benchmark (`true`) or the key's own baseline.
    fn rule(&self, against_benchmark: bool) -> &'static str;
    /// How many slots its window state has.
    fn slots(&self) -> usize;
    /// Folds one report and the benchmark valid at its event time into `s`; `normal` is what
    /// is normal for the key (for a sign test against it).
    fn add(&self, s: &mut [f64], r: &Report, expected: Option<&Expected>, normal: Normal);
    /// Adds another window state (of another key, cohort or partition).
    fn merge(&self, s: &mut [f64], o: &[f64]) {
        for (a, b) in s.iter_mut().zip(o) {
            *a += b;
        }
    }
    /// The benchmark's expectation over the window's joined reports, on the test's scale
    /// (logs for log-scale metrics); `None` without one.
    fn expected(&self, w: Window) -> Option<f64>;
    /// The window's own level on the test's scale, if it has enough samples for a key
    /// without a benchmark to learn from (`min_samples` as tuned).
    fn level(&self, w: Window, min_samples: u64) -> Option<f64>;
    /// Tests the window against `reference` (the test's scale, offset included), with
    /// `spread` the design effect its variance is scaled by (see [`Kind::prior_spread`]) and
    /// `var` the key's learned variance of one sample within a window
    /// ([`Kind::within`]), where it learns one.
    fn test(
        &self,
        w: Window,
        reference: f64,
        t: &Tuning,
        spread: f64,
        var: Option<f64>,
    ) -> Option<Outcome>;
    /// How a value reads, with its unit: `1.20 %`, `3500 kbps`.
    fn format(&self, v: f64) -> String;
    /// A finding in words: `rebuffering 3.1% vs 1.0% expected`.
    fn describe(&self, observed: f64, expected: f64) -> String;

    /// The design effect its test assumes for a key that has not learned its own
    /// ([`Spread`]); `None` for a test that does not scale a variance by one.
    fn prior_spread(&self) -> Option<f64> {
        None
    }
    /// Off until the rules switch it on.
    fn enabled_by_default(&self) -> bool {
        true
    }
    /// Whether benchmarks carry an expectation of it; if not, only the key's own level is
    /// its reference, learned whether or not the key has a benchmark.
    fn benchmarked(&self) -> bool {
        true
    }
    /// Whether a key learns its usual offset from the benchmark (log-scale metrics, and the
    /// rebuffering ratio: probes on good networks hardly ever stall, a key's viewers do).
    fn learns_offset(&self) -> bool {
        false
    }
    /// The offset from the benchmark a window shows, on the scale its reference adds it:
    /// `observed` and `expected` as its finding shows them, `offset` the one `expected`
    /// includes. By default the log ratio (log-scale metrics).
    fn raw_offset(&self, observed: f64, expected: f64, offset: f64) -> f64 {
        observed.ln() - expected.ln() + offset
    }
    /// The offsets a key may learn: clients 3x worse (or better) than the probes is not
    /// "normal" ([`learned::MAX_OFFSET`]).
    fn clamp_offset(&self, x: f64) -> f64 {
        x.clamp(-learned::MAX_OFFSET, learned::MAX_OFFSET)
    }
    /// Whether a finding (`observed` vs `expected`, relative `effect`) of a key that has not
    /// learned its offset yet is beyond what any offset explains, so that it may be bad
    /// before the key knows what is normal for it ([`WARMUP_EFFECT`] by default).
    fn beyond_any_offset(&self, _observed: f64, _expected: f64, effect: f64) -> bool {
        effect >= WARMUP_EFFECT
    }
    /// How a key's own level follows a window whose level was `x` (`bad`: the window was
    /// bad on this metric).
    fn follow(&self, b: &mut Baseline, x: f64, bad: bool, at: Millis) {
        if !bad {
            b.track(x, at);
        }
    }
    /// Whether a key whose own level is `level` is tested even in a window without reports.
    fn expects_reports(&self, _level: f64) -> bool {
        false
    }
    /// A parent scope's reference from the references of the bad keys under it, where the
    /// keys' own levels add up (`None`: the parent is tested against the benchmark only).
    fn pool(&self, _references: &[f64]) -> Option<f64> {
        None
    }
    /// Whether [`Kind::add`] compares each report with what is normal for the key (then
    /// the key's [`Normal`] is looked up for every report).
    fn sign_test(&self) -> bool {
        false
    }
    /// One report's part in a cohort's excess, as (amount, exposure): (failed, 1), (stalled
    /// ms, watched ms), ...; `None` when cohorts do not explain this metric.
    fn cohort(&self, _r: &Report, _e: Option<&Expected>, _normal: Normal) -> Option<(f64, f64)> {
        None
    }
    /// How much worse than `expected` (the finding's, as shown) a cohort made the key, from
    /// its summed amount and exposure, in the metric's own units (extra failures, extra
    /// stalled ms, extra worse-than-normal reports).
    fn excess(&self, amount: f64, exposure: f64, expected: f64) -> f64 {
        amount - exposure * expected
    }
    /// Whether a window short of samples may be tested together with the key's previous
    /// windows (its runs). A session's later reports repeat what its earlier ones said, so a
    /// run counts no more independent samples than the distinct sessions it holds
    /// ([`effective_n`]): merging windows then adds new sessions' evidence, not the same
    /// sessions again. Not for a count per window (report volume).
    fn accumulates(&self) -> bool {
        true
    }
    /// Whether it is measured once per session (session starts): a key can carry many
    /// reports and still too few of these for one window.
    fn per_session(&self) -> bool {
        false
    }
    /// Whether each report is also compared with its own session's earlier reports
    /// ([`crate::metric::Normal::session`]): then this is the report's value on the scale of
    /// that comparison (a log), else `None`.
    fn pair_value(&self, _r: &Report) -> Option<f64> {
        None
    }
    /// Tests the window's within-session differences (see [`Kind::pair_value`]) for "worse
    /// than the sessions themselves were", with `pair_spread` their design effect;
    /// `reference` is the level test's, for what is shown.
    fn test_paired(
        &self,
        _w: Window,
        _reference: f64,
        _t: &Tuning,
        _pair_spread: f64,
    ) -> Option<Outcome> {
        None
    }
    /// Whether each session's window is also a unit of evidence for this metric: then
    /// whether this report is an event (a stall) for the count of sessions that had one in
    /// the window ([`Normal::mark`]); `None` for a metric that does not count sessions.
    fn session_event(&self, _r: &Report) -> Option<bool> {
        None
    }
    /// The window's (events, sessions) for a key to learn its usual share of sessions with an
    /// event from ([`crate::metric::Spread::learn_base`]); `None` where not counted.
    fn base_measure(&self, _w: Window) -> Option<(f64, f64)> {
        None
    }
    /// Tests the window's sessions with an event against what each session's own history and
    /// `base`, the key's learned share of sessions with one in a window, expect; `reference`
    /// is the level test's, for what is shown.
    /// `clump`: the key's learned stalled session-windows per stalled session over a run
    /// ([`crate::metric::Spread::clump`]).
    fn test_base(
        &self,
        _w: Window,
        _reference: f64,
        _t: &Tuning,
        _base: f64,
        _clump: f64,
    ) -> Option<Outcome> {
        None
    }
    /// A run's (session-windows with an event, distinct sessions with one) for a key to learn
    /// how its events clump in sessions ([`crate::metric::Spread::learn_clump`]); `None` for
    /// a single window, or where not counted.
    fn clump_measure(&self, _run: Window) -> Option<(f64, f64)> {
        None
    }
    /// The window's samples' sum of squared deviations from `reference` (the test's) and
    /// their count, for a key to learn the mean squared deviation of one sample from
    /// ([`crate::metric::Spread::learn_var`]): its spread plus how far its reference is off
    /// (a reference learned by day is off at night); `None` for a metric that does not test
    /// few samples against it.
    fn deviations(&self, _w: Window, _reference: f64) -> Option<(f64, f64)> {
        None
    }
    /// The window's (or run's) samples' sum of squared deviations from their own mean and
    /// its degrees of freedom, for a key to learn the usual variance of one sample its level
    /// test's variance is moderated with ([`crate::metric::Spread::learn_var`]); `None` for
    /// a metric that does not moderate it (or learns [`Kind::deviations`] instead).
    fn within(&self, _w: Window) -> Option<(f64, f64)> {
        None
    }
    /// Whether the report is a sample of the metric's sequential test: [`Kind::add`] then needs
    /// the key's learned spread in its [`Normal`].
    fn scores(&self, _r: &Report) -> bool {
        false
    }
    /// Whether it has a sequential test ([`Kind::test_cusum`]).
    fn sequential(&self) -> bool {
        false
    }
    /// The window's step of the key's sequential test ([`crate::metric::Spread::step_cusum`]),
    /// for a metric that has one; `base` and `clump` are the key's learned usual share of
    /// sessions with an event and its clumps ([`Kind::test_base`]).
    fn cusum_step(&self, _w: Window, _base: Option<f64>, _clump: f64) -> Option<f64> {
        None
    }
    /// Tests the key's sequential test after this window: `before` is where it stood after
    /// the last one, `step` this window's ([`Kind::cusum_step`]). Evidence that accumulates
    /// over windows too small for any one test.
    fn test_cusum(
        &self,
        _w: Window,
        _reference: f64,
        _t: &Tuning,
        _before: f64,
        _step: f64,
    ) -> Option<Outcome> {
        None
    }
    /// Whether it follows each key's sessions from window to window: its [`Kind::add`] gets
    /// every report's [`SessionMark`] (its session's first report in the window, and whether
    /// that session reported in the window before), and [`Kind::follow_sessions`] learns
    /// from each window.
    fn follows_sessions(&self) -> bool {
        false
    }
    /// For a metric that follows sessions: whether a key not followed yet starts to be with
    /// this window (one too small for the metric's test never is: no state for it).
    fn starts_following(&self, _w: Window) -> bool {
        false
    }
    /// For a metric that follows sessions: learns from a window of the key (one of its
    /// windows with reports, or a silent one it [`Kind::awaits`]) into its spread, and moves
    /// its sequential test; `bad` and `suspect` as the window's verdict on the metric.
    fn follow_sessions(
        &self,
        _w: Window,
        _s: &mut Spread,
        _bad: bool,
        _suspect: bool,
        _at: Millis,
    ) {
    }
    /// Whether a key is tested in a window without reports because of what its spread holds
    /// (a metric that follows sessions).
    fn awaits(&self, _s: &Spread) -> bool {
        false
    }
    /// The first slot count this metric had before slots were appended to it: state of that
    /// layout, or of any since, still reads, the appended slots at zero.
    fn slots_before(&self) -> Option<usize> {
        None
    }
    /// Whether a finding says how many reports it rests on.
    fn counts_samples(&self) -> bool {
        true
    }
    /// The window's value as shown to people (viewer quality), and the benchmark's; `None`
    /// for a metric that is not a viewer-quality measure.
    fn shown(&self, w: Window) -> Option<(Option<f64>, Option<f64>)>;
    /// Whether a higher value is worse (for ranking keys by how bad they are).
    fn higher_is_worse(&self) -> bool {
        true
    }
    /// Where it sorts among metrics in incidents and roll-ups (the order alerts have always
    /// had); ties, and metrics that do not say, go by registry order.
    fn rank(&self) -> u8 {
        u8::MAX
    }
}

/// One window state as a metric sees it: the reports it holds, how many found a benchmark,
/// and its own slots.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub reports: u64,
    pub joined: u64,
    /// Distinct sessions its reports came from, where counted ([`crate::window::sessions`]).
    pub sessions: Option<f64>,
    pub s: &'a [f64],
}

/// What is normal for a key on one metric when a report arrives: the learned offset from
/// the benchmark, and the key's own level where it is the reference.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Normal {
    pub offset: f64,
    pub own: Option<f64>,
    /// The key's learned design effect for the metric; 0 where it has none (the metric's
    /// [`Kind::prior_spread`] applies).
    pub spread: f64,
    /// The key's learned design effect of within-session differences ([`Kind::pairs`]); 0
    /// where it has none ([`PAIR_DESIGN_EFFECT`] applies).
    pub pair_spread: f64,
    /// The report's session's own level (mean of logs over its reports of earlier windows),
    /// for a metric that pairs, where the session has one.
    pub session: Option<f64>,
    /// For a metric that counts sessions ([`Kind::session_event`]): what the report's
    /// session has shown ([`SessionMark`]).
    pub mark: SessionMark,
    /// The key's learned share of sessions with an event in a window, once warm.
    pub base: Option<f64>,
    /// The key's learned mean squared deviation of one sample ([`Kind::deviations`]), or its
    /// usual variance of one sample within a window ([`Kind::within`]), once warm.
    pub var: Option<f64>,
    /// Where the key's sequential test stood after its last window ([`Kind::test_cusum`]);
    /// set for a window's own test, not for its runs.
    pub cusum: Option<f64>,
    /// The key's learned clump of events per session over a run ([`Kind::clump_measure`]).
    pub clump: f64,
}

/// A report of a metric that counts sessions, as its session's history sees it: whether it
/// is the session's first report in its window, and its first event there; and, of the
/// session's earlier windows, how many it reported in and how many of those had an event.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SessionMark {
    pub first: bool,
    pub first_event: bool,
    /// Its first report in its window, and it reported in the window right before.
    pub continued: bool,
    pub windows: u32,
    pub event_windows: u32,
    /// The hash of the session's id ([`crate::window::sessions::hash`]).
    pub session: u64,
}

/// The design effect of within-session differences a key starts with: a session's reports
/// share the error of its own level and may drift together; each key then learns its own.
pub const PAIR_DESIGN_EFFECT: f64 = 2.0;

/// [`Normal`] per metric, by [`Metric::index`].
pub type Normals = [Normal; MAX_METRICS];

/// The settings one test runs with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    pub enabled: bool,
    pub min_samples: u64,
    pub min_relative_effect: f64,
    pub critical_relative_effect: f64,
}

/// A window's test result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// As shown (a rate, a geometric mean, a count).
    pub observed: f64,
    pub expected: f64,
    pub samples: u64,
    /// One-sided p-value of "worse than expected".
    pub p_value: f64,
    /// How much worse, relative: 0.5 = 50 % worse.
    pub effect: f64,
    /// Passed the metric's sample, effect and robustness floors.
    pub eligible: bool,
    /// This window's measure of its design effect, from which a key learns its [`Spread`]:
    /// the squared deviation in standard errors of independent samples for a test of means,
    /// reports per session for a count; `None` for tests without one.
    pub spread: Option<f64>,
    /// The same for the within-session differences of a metric that pairs.
    pub pair_spread: Option<f64>,
}

impl Outcome {
    /// Two tests of one window (the level test and the within-session or the session-count
    /// test) as one test: the more
    /// significant of those that pass the floors (else the more significant), its p-value
    /// doubled (Bonferroni over the two); what is shown (observed, expected, samples) stays
    /// the level's, where there is one.
    pub fn either(level: Option<Outcome>, paired: Option<Outcome>) -> Option<Outcome> {
        match (level, paired) {
            (Some(l), Some(p)) => {
                let chosen = if (p.eligible, -p.p_value) > (l.eligible, -l.p_value) {
                    p
                } else {
                    l
                };
                Some(Outcome {
                    p_value: (2.0 * chosen.p_value).min(1.0),
                    effect: chosen.effect,
                    eligible: chosen.eligible,
                    spread: l.spread.or(p.spread),
                    pair_spread: l.pair_spread.or(p.pair_spread),
                    ..l
                })
            }
            (l, p) => l.or(p),
        }
    }
}

/// A metric: an index into the registry. Serialised as its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Metric(u8);

impl std::fmt::Debug for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Metric {
    pub const FAILURE_RATE: Metric = Metric(0);
    pub const REBUFFER_RATIO: Metric = Metric(1);
    pub const THROUGHPUT_KBPS: Metric = Metric(2);
    pub const STARTUP_MS: Metric = Metric(3);
    pub const REPORT_VOLUME: Metric = Metric(4);

    /// Every registered metric, in registry order.
    pub fn all() -> impl Iterator<Item = Metric> {
        (0..REGISTRY.len()).map(|i| Metric(i as u8))
    }

    /// The metrics that follow sessions ([`Kind::follows_sessions`]), looked up once.
    pub fn following_sessions() -> &'static [Metric] {
        static FOLLOWING: std::sync::LazyLock<Vec<Metric>> = std::sync::LazyLock::new(|| {
            Metric::all()
                .filter(|m| m.kind().follows_sessions())
                .collect()
        });
        &FOLLOWING
    }

    pub fn named(name: &str) -> Option<Metric> {
        Metric::all().find(|m| m.as_str() == name)
    }

    /// Every metric's name, comma separated (for messages).
    pub fn names() -> String {
        Metric::all()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn kind(self) -> &'static dyn Kind {
        REGISTRY[self.0 as usize]
    }

    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub fn as_str(self) -> &'static str {
        self.kind().name()
    }

    /// Name of the rule that fires on this metric against a benchmark.
    pub fn rule(self) -> &'static str {
        self.kind().rule(true)
    }

    /// Its slots in a [`Slots`] vector.
    fn range(self) -> std::ops::Range<usize> {
        LAYOUT.offsets[self.index()]..LAYOUT.offsets[self.index() + 1]
    }
}

impl Ord for Metric {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.kind().rank(), self.0).cmp(&(o.kind().rank(), o.0))
    }
}

impl PartialOrd for Metric {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Metric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Metric::named(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown metric `{name}`, expected one of: {}",
                Metric::names()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_fits_and_names_are_unique() {
        assert!(REGISTRY.len() <= MAX_METRICS);
        let mut names: Vec<_> = Metric::all().map(|m| m.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
        for (c, name) in [
            (Metric::FAILURE_RATE, "failure_rate"),
            (Metric::REBUFFER_RATIO, "rebuffer_ratio"),
            (Metric::THROUGHPUT_KBPS, "throughput_kbps"),
            (Metric::STARTUP_MS, "startup_ms"),
            (Metric::REPORT_VOLUME, "report_volume"),
        ] {
            assert_eq!(c.as_str(), name);
        }
    }

    #[test]
    fn slots_read_back_by_name_and_tolerate_unknown_metrics() {
        let mut s = Slots::default();
        s.of_mut(Metric::FAILURE_RATE)[0] = 3.0;
        let mut bytes = Vec::new();
        ciborium::into_writer(&s, &mut bytes).unwrap();
        let back: Slots = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back, s);
        let mut map = std::collections::BTreeMap::new();
        map.insert("retired_metric".to_string(), vec![1.0]);
        map.insert("failure_rate".to_string(), vec![1.0; 2]); // another layout
        let mut bytes = Vec::new();
        ciborium::into_writer(&map, &mut bytes).unwrap();
        let back: Slots = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back, Slots::default());
    }
}
