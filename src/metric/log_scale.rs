//! Skewed metrics (throughput, startup time, bitrate) tested on the log scale: a one-sample
//! t-test of the window's mean log against the log of the expected value (a geometric-mean
//! comparison), and a sign test so that a mean dragged by a few terrible sessions does not
//! count as a broad degradation. One [`LogScale`] value per metric, in its own file.

use super::{DESIGN_EFFECT, Kind, Normal, Outcome, Tuning, Window, effective_n, t_p_value};
use crate::decode::Report;
use crate::table::Expected;

/// Share of reports on the worse side of normal before a log-scale deviation counts as broad.
const MIN_WORSE_SHARE: f64 = 0.7;

// Slots: count, Σ ln x, Σ (ln x)², Σ x; Σ ln(expected) and count over joined reports with
// one; reports compared with what is normal for the key, and how many were worse.
const N: usize = 0;
const SUM: usize = 1;
const SUM_SQ: usize = 2;
const SUM_X: usize = 3;
const EXP_LOG_SUM: usize = 4;
const EXP_N: usize = 5;
const CMP: usize = 6;
const WORSE: usize = 7;
// Metrics that pair ([`LogScale::paired`]) also keep, over the reports whose session had a
// level of its own: their count, Σ d and Σ d² of d = ln x - the session's level, and how many
// were worse than it.
const PAIR_N: usize = 8;
const PAIR_SUM: usize = 9;
const PAIR_SQ: usize = 10;
const PAIR_WORSE: usize = 11;
// Metrics that test few samples ([`LogScale::tests_few`]) also keep a slot no test reads any
// more (the largest ln x, for a z-test of a few starts without the worst of them, removed
// 2026-12-06: the sequential test covers those keys with a bound that holds on heavy tails,
// and that z-test paged three quiet nights of recorded sessions; the slot stays so that
// state written before reads as it was), and the window's step of the key's sequential test:
// Σ (min(z, CUSUM_CLIP) - CUSUM_DRIFT) over its samples, z being each sample's deviation from
// the key's reference in its learned standard deviations (samples seen before the key had
// learned one add nothing).
const CUSUM: usize = 9;
/// A sample counts at most this many standard deviations in the sequential test: one start
/// in a hundred takes ten times the usual, and recorded startups are heavier-tailed than
/// normal (1.5 % of starts beyond 3 standard deviations in `tests/real_sessions.rs`, 0.13 %
/// for a normal). Was 3 until 2026-12-06: a quiet night of recorded sessions paged on a
/// chance cluster of five slow starts among eleven (p = 3e-7), and with a clip of 3 the
/// bound below does not hold for a reference off by 0.6 standard deviations (0.84, not 1.25).
const CUSUM_CLIP: f64 = 2.0;
/// What each sample must exceed to add evidence (in standard deviations): a key as usual
/// drifts down by this much a sample, one whose samples are worse by more climbs.
const CUSUM_DRIFT: f64 = 1.0;
/// The sequential test's p-value is `exp(-CUSUM_THETA x S)`: the chance that a random walk
/// of steps `min(z, 2) - 1` ever climbs to S (Lundberg's bound: the θ that solves
/// E[exp(θ (min(z, 2) - 1))] = 1 is 2.77 for standard normal z, 1.19 for a reference off by
/// 0.6 standard deviations, 1.56 for one off by 0.3 with the spread underestimated by a
/// fifth, 2.4 for the recorded sessions' startups).
const CUSUM_THETA: f64 = 1.25;

/// Weight, in sessions, of a key's usual variance of one report in the variance its level
/// test uses.
const MODERATION_DF: f64 = 8.0;

/// The variance a level test uses: the window's own, `var` over `df` (its effective sample
/// size less one), pulled towards the key's `usual` one (learned from its clean windows,
/// [`Kind::within`]) with the weight of [`MODERATION_DF`] degrees of freedom, as a moderated
/// t-test pulls each of thousands of small samples' variances towards their common prior
/// (Smyth, 2004), but only ever up. A window of a few sessions that all happen to be on
/// slow networks has a low mean and a small spread together: tested with its own variance
/// alone, such dips on keys of 9-40 reports paged three times in five quiet nights of
/// recorded sessions (p = 1e-6 to 4e-7). An incident that slows every session keeps their
/// spread, and loses nothing to it. Its degrees of freedom stay the window's: with them
/// raised by the prior's, as the moderated t has it, recorded sessions' quiet nights paged
/// more, not less (their variance is not the same from window to window).
fn moderated(var: f64, df: f64, usual: Option<f64>) -> f64 {
    let df = df.max(1.0);
    match usual {
        Some(u) if u.is_finite() && u > 0.0 => {
            var.max((df * var + MODERATION_DF * u) / (df + MODERATION_DF))
        }
        _ => var,
    }
}

/// Count, mean and variance of `ln(x)` over a window's slots.
#[derive(Debug, Clone, Copy)]
pub struct LogStats<'a>(&'a [f64]);

impl LogStats<'_> {
    pub fn n(&self) -> u64 {
        self.0[N] as u64
    }

    pub fn mean_log(&self) -> f64 {
        self.0[SUM] / self.0[N]
    }

    /// Sample variance of ln(x).
    pub fn var_log(&self) -> f64 {
        let n = self.0[N];
        if n < 2.0 {
            return 0.0;
        }
        ((self.0[SUM_SQ] - self.0[SUM] * self.0[SUM] / n) / (n - 1.0)).max(0.0)
    }

    /// Arithmetic mean of x.
    pub fn mean(&self) -> f64 {
        self.0[SUM_X] / self.0[N]
    }
}

/// Whether most of the window's samples were on the worse side of what is normal for the
/// key. Under "as normal" about half are; a mean dragged down by a few terrible sessions
/// leaves that share near half, a real degradation moves most of them.
fn broad(s: &[f64]) -> bool {
    s[CMP] > 0.0 && s[WORSE] >= MIN_WORSE_SHARE * s[CMP]
}

/// `ln(x)`, floored at 1 so that zero throughput or startup does not produce -inf.
fn ln(x: f64) -> f64 {
    x.max(1.0).ln()
}

/// A log-scale metric: which report field it reads, what benchmark field it is compared with
/// (if any), and which direction is worse.
pub struct LogScale {
    pub name: &'static str,
    /// Rules against a benchmark and against the key's own baseline.
    pub rules: (&'static str, &'static str),
    /// "throughput": how a finding names it.
    pub label: &'static str,
    pub unit: &'static str,
    pub value: fn(&Report) -> Option<f64>,
    pub benchmark: Option<fn(&Expected) -> Option<f64>>,
    pub higher_is_worse: bool,
    /// Reported once per session (startup): those reports are independent, and fewer of them
    /// are needed (a third of `min_samples`, at least 10).
    pub once_per_session: bool,
    pub enabled_by_default: bool,
    pub rank: u8,
    /// Each report is also compared with its session's own earlier reports
    /// ([`crate::metric::Kind::pairs`]): per-report measures a session keeps its network
    /// for (throughput), not once-per-session ones.
    pub paired: bool,
}

impl LogScale {
    pub fn stats<'a>(&self, w: Window<'a>) -> LogStats<'a> {
        LogStats(w.s)
    }

    fn bench(&self, e: Option<&Expected>) -> Option<f64> {
        self.benchmark.and_then(|f| e.and_then(f))
    }

    /// Whether the report was worse than normal for the key: than its benchmark shifted by
    /// the key's offset, or than the key's own level where it has no benchmark.
    fn worse(&self, r: &Report, expected: Option<&Expected>, normal: Normal) -> Option<bool> {
        let x = ln((self.value)(r)?);
        let level = match self.bench(expected) {
            Some(b) => ln(b) + normal.offset,
            None => normal.own?,
        };
        Some(if self.higher_is_worse {
            x > level
        } else {
            x < level
        })
    }

    /// Whether few samples are tested against the key's learned spread (once-per-session
    /// samples where higher is worse: startup).
    fn tests_few(&self) -> bool {
        self.once_per_session && self.higher_is_worse && !self.paired
    }

    fn min_samples(&self, min_samples: u64) -> u64 {
        if self.once_per_session {
            (min_samples / 3).max(10)
        } else {
            min_samples
        }
    }
}

impl Kind for LogScale {
    fn name(&self) -> &'static str {
        self.name
    }

    fn rule(&self, against_benchmark: bool) -> &'static str {
        if against_benchmark {
            self.rules.0
        } else {
            self.rules.1
        }
    }

    fn slots(&self) -> usize {
        if self.paired {
            12
        } else if self.tests_few() {
            10
        } else {
            8
        }
    }

    fn slots_before(&self) -> Option<usize> {
        self.tests_few().then_some(8)
    }

    fn merge(&self, s: &mut [f64], o: &[f64]) {
        for (a, b) in s.iter_mut().zip(o).take(8) {
            *a += b;
        }
        if self.paired {
            for i in PAIR_N..=PAIR_WORSE {
                s[i] += o[i];
            }
        } else if self.tests_few() {
            s[CUSUM] += o[CUSUM];
        }
    }

    fn add(&self, s: &mut [f64], r: &Report, expected: Option<&Expected>, normal: Normal) {
        if let Some(x) = (self.value)(r) {
            let l = ln(x);
            if self.tests_few() {
                let level = match self.bench(expected) {
                    Some(b) => Some(ln(b) + normal.offset),
                    None => normal.own,
                };
                if let (Some(level), Some(var)) = (level, normal.var.filter(|v| *v > 0.0)) {
                    let z = (l - level) / var.sqrt();
                    s[CUSUM] += z.min(CUSUM_CLIP) - CUSUM_DRIFT;
                }
            }
            s[N] += 1.0;
            s[SUM] += l;
            s[SUM_SQ] += l * l;
            s[SUM_X] += x;
            if let Some(b) = self.bench(expected) {
                s[EXP_LOG_SUM] += ln(b);
                s[EXP_N] += 1.0;
            }
        }
        if let Some(w) = self.worse(r, expected, normal) {
            s[CMP] += 1.0;
            s[WORSE] += f64::from(u8::from(w));
        }
        if let (true, Some(own), Some(x)) = (self.paired, normal.session, (self.value)(r)) {
            let d = ln(x) - own;
            s[PAIR_N] += 1.0;
            s[PAIR_SUM] += d;
            s[PAIR_SQ] += d * d;
            s[PAIR_WORSE] += f64::from(u8::from(if self.higher_is_worse {
                d > 0.0
            } else {
                d < 0.0
            }));
        }
    }

    fn expected(&self, w: Window) -> Option<f64> {
        (w.s[EXP_N] > 0.0).then(|| w.s[EXP_LOG_SUM] / w.s[EXP_N])
    }

    fn level(&self, w: Window, min_samples: u64) -> Option<f64> {
        let stats = self.stats(w);
        (stats.n() >= self.min_samples(min_samples)).then(|| stats.mean_log())
    }

    fn test(
        &self,
        w: Window,
        reference: f64,
        t: &Tuning,
        spread: f64,
        var: Option<f64>,
    ) -> Option<Outcome> {
        let stats = self.stats(w);
        if stats.n() < self.min_samples(t.min_samples) {
            return None;
        }
        let m = stats.mean_log();
        let n = stats.n() as f64;
        let n_eff = effective_n(n, spread, w.sessions);
        let usual = var.filter(|_| !self.once_per_session);
        let var = moderated(stats.var_log(), n_eff - 1.0, usual);
        let se = (var / n_eff).sqrt();
        let diff = if self.higher_is_worse {
            m - reference
        } else {
            reference - m
        };
        let p_value = t_p_value(diff, se, n_eff - 1.0);
        let se_independent = (var / n).sqrt();
        let z2 = (se_independent > 0.0).then(|| (diff / se_independent).powi(2));
        let broad = broad(w.s);
        let effect = diff.exp() - 1.0;
        Some(Outcome {
            observed: m.exp(),
            expected: reference.exp(),
            samples: stats.n(),
            p_value,
            effect,
            eligible: effect >= t.min_relative_effect && broad,
            spread: z2,
            pair_spread: None,
        })
    }

    /// Once-per-session samples (startup) are independent: with the key's learned mean
    /// squared deviation of one from its reference, a window or run of 4 to `min_samples` of
    /// them is a z-test of their mean log without the worst of them, with the sign test of
    /// the level test (most of them worse). Fewer than 4 are not tested.
    fn deviations(&self, w: Window, reference: f64) -> Option<(f64, f64)> {
        let s = w.s;
        let n = s[N];
        (self.tests_few() && n >= 1.0).then(|| {
            let ss = s[SUM_SQ] - 2.0 * reference * s[SUM] + n * reference * reference;
            (ss.max(0.0), n)
        })
    }

    /// Per-report metrics (throughput, bitrate) learn the usual variance of one report
    /// within a window, pooled over the key's clean windows (or runs) its level test ran on.
    fn within(&self, w: Window) -> Option<(f64, f64)> {
        let stats = self.stats(w);
        let n = stats.n() as f64;
        (!self.once_per_session && n >= 2.0).then(|| (stats.var_log() * (n - 1.0), n - 1.0))
    }

    fn scores(&self, r: &Report) -> bool {
        self.tests_few() && (self.value)(r).is_some()
    }

    fn sequential(&self) -> bool {
        self.tests_few()
    }

    fn cusum_step(&self, w: Window, _base: Option<f64>, _clump: f64) -> Option<f64> {
        (self.tests_few() && w.s[CUSUM] != 0.0).then(|| w.s[CUSUM])
    }

    /// The key's sequential test (a CUSUM of clipped z-scores): `before`, where it stood
    /// after the last window, plus this window's step. Bad while it stands high and this
    /// window's samples still climb, most of them worse than usual.
    fn test_cusum(
        &self,
        w: Window,
        reference: f64,
        t: &Tuning,
        before: f64,
        step: f64,
    ) -> Option<Outcome> {
        let stats = self.stats(w);
        if !self.tests_few() || stats.n() == 0 {
            return None;
        }
        // Zero where no sample was scored (the key's spread not learned yet): the window is
        // still a finding, which teaches the key its offset from the benchmark.
        let level = (before + step).max(0.0);
        let diff = stats.mean_log() - reference;
        let effect = diff.exp() - 1.0;
        Some(Outcome {
            observed: stats.mean_log().exp(),
            expected: reference.exp(),
            samples: stats.n(),
            p_value: (-CUSUM_THETA * level).exp(),
            effect,
            eligible: step > 0.0 && effect >= t.min_relative_effect && broad(w.s),
            spread: None,
            pair_spread: None,
        })
    }

    /// The change every session of a key sees at once, whatever networks the key's viewers
    /// are on: a one-sample t-test of the reports' differences from their sessions' own
    /// earlier level, over `n / pair_spread` observations (the key's learned design effect of
    /// those differences), with the sign test of the level test (most of them worse). A
    /// window's reports whose sessions have no history yet are not paired: a third of
    /// `min_samples` pairs (at least 10) are enough, as each compares a session with itself.
    fn test_paired(
        &self,
        w: Window,
        reference: f64,
        t: &Tuning,
        pair_spread: f64,
    ) -> Option<Outcome> {
        if !self.paired {
            return None;
        }
        let s = w.s;
        let n = s[PAIR_N];
        if n < (t.min_samples / 3).max(10) as f64 {
            return None;
        }
        let mean = s[PAIR_SUM] / n;
        let var = ((s[PAIR_SQ] - s[PAIR_SUM] * s[PAIR_SUM] / n) / (n - 1.0)).max(0.0);
        let diff = if self.higher_is_worse { mean } else { -mean };
        let n_eff = (n / pair_spread.max(1.0)).max(2.0);
        let p_value = t_p_value(diff, (var / n_eff).sqrt(), n_eff - 1.0);
        let se_independent = (var / n).sqrt();
        let z2 = (se_independent > 0.0).then(|| (diff / se_independent).powi(2));
        let effect = diff.exp() - 1.0;
        let broad = s[PAIR_WORSE] >= MIN_WORSE_SHARE * n;
        let stats = self.stats(w);
        Some(Outcome {
            // Pairs are reports with a value: the window has a level to show.
            observed: stats.mean_log().exp(),
            expected: reference.exp(),
            samples: stats.n(),
            p_value,
            effect,
            eligible: effect >= t.min_relative_effect && broad,
            spread: None,
            pair_spread: z2,
        })
    }

    fn pair_value(&self, r: &Report) -> Option<f64> {
        self.paired.then(|| (self.value)(r).map(ln)).flatten()
    }

    fn format(&self, v: f64) -> String {
        format!("{v:.0} {}", self.unit)
    }

    fn describe(&self, observed: f64, expected: f64) -> String {
        let (label, unit) = (self.label, self.unit);
        format!("{label} {observed:.0} {unit} vs {expected:.0} {unit} expected")
    }

    fn enabled_by_default(&self) -> bool {
        self.enabled_by_default
    }

    /// A session's reports repeat its network, so their design effect is learned per key;
    /// session starts are one per session, independent (no design effect to learn).
    fn prior_spread(&self) -> Option<f64> {
        (!self.once_per_session).then_some(DESIGN_EFFECT)
    }

    fn benchmarked(&self) -> bool {
        self.benchmark.is_some()
    }

    fn learns_offset(&self) -> bool {
        self.benchmark.is_some()
    }

    fn sign_test(&self) -> bool {
        true
    }

    fn per_session(&self) -> bool {
        self.once_per_session
    }

    fn cohort(&self, r: &Report, e: Option<&Expected>, normal: Normal) -> Option<(f64, f64)> {
        // Extra worse-than-normal reports: worse ones beyond the half expected as normal.
        self.worse(r, e, normal)
            .map(|w| (f64::from(u8::from(w)), 0.5))
    }

    fn excess(&self, amount: f64, exposure: f64, _expected: f64) -> f64 {
        amount - exposure
    }

    fn shown(&self, w: Window) -> Option<(Option<f64>, Option<f64>)> {
        let stats = self.stats(w);
        let observed = (stats.n() > 0).then(|| stats.mean_log().exp());
        Some((observed, self.expected(w).map(f64::exp)))
    }

    fn higher_is_worse(&self) -> bool {
        self.higher_is_worse
    }

    fn rank(&self) -> u8 {
        self.rank
    }
}
