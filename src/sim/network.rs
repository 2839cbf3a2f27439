//! What viewers' own networks do to a session: with [`Networks::Classes`] every session
//! lives on one network class for its whole life (fast home, slow home, mobile), each with its
//! own level and heavy-tailed spread, and mobile sessions dip now and then (hand-overs,
//! congestion). A key's window then holds a few sessions that disagree with each other far
//! more than reports of one session do, and the mix moves from window to window: the traffic
//! a small key sees at night. [`Networks::Even`] is the simulator's first world (one
//! log-normal quality per session), kept so that seeds reproduce.

use super::Rng;

/// How sessions' networks are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Networks {
    /// One log-normal quality per session (σ 0.35), the same for every key.
    #[default]
    Even,
    /// Persistent network classes per session, with a mix that differs per location.
    Classes,
}

impl std::str::FromStr for Networks {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "even" => Ok(Networks::Even),
            "classes" => Ok(Networks::Classes),
            _ => Err(format!(
                "unknown network mix `{s}`, expected even or classes"
            )),
        }
    }
}

/// One network class: multipliers on the key's normal quality.
#[derive(Debug, Clone, Copy)]
pub struct Class {
    pub name: &'static str,
    /// Median throughput of its sessions relative to the key's.
    pub throughput: f64,
    /// σ of ln(throughput) across its sessions.
    pub session_sigma: f64,
    /// σ of ln(throughput) across one session's reports.
    pub report_sigma: f64,
    /// Chance that a report falls into a dip (a fifth of the session's throughput).
    pub dip: f64,
    pub stalls: f64,
    pub startup: f64,
    pub failures: f64,
}

/// The classes, in the order of [`Class`] indices.
pub const CLASSES: [Class; 3] = [
    Class {
        name: "fast_home",
        throughput: 1.6,
        session_sigma: 0.3,
        report_sigma: 0.1,
        dip: 0.0,
        stalls: 0.5,
        startup: 0.8,
        failures: 0.8,
    },
    Class {
        name: "slow_home",
        throughput: 0.5,
        session_sigma: 0.45,
        report_sigma: 0.2,
        dip: 0.02,
        stalls: 1.5,
        startup: 1.3,
        failures: 1.2,
    },
    Class {
        name: "mobile",
        throughput: 0.3,
        session_sigma: 0.7,
        report_sigma: 0.45,
        dip: 0.08,
        stalls: 3.0,
        startup: 1.8,
        failures: 2.0,
    },
];

/// Share of mobile sessions at the location with index `loc` (10 % to 45 %, fixed per
/// location and independent of the random stream); slow homes take 35 %, fast homes the rest.
pub fn mobile_share(loc: usize) -> f64 {
    let h = (loc as u64 ^ 0x5bd1_e995).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    0.10 + 0.35 * ((h >> 11) as f64 / (1u64 << 53) as f64)
}

/// Draws a session's class at location `loc`.
pub fn pick(rng: &mut Rng, loc: usize) -> u8 {
    let u = rng.f64();
    let mobile = mobile_share(loc);
    if u < mobile {
        2
    } else if u < mobile + 0.35 {
        1
    } else {
        0
    }
}

/// Mean of `f` over a location's sessions: what a benchmark calibrated on clients of the
/// location (rates of stalls and failures) expects.
pub fn mean_at(loc: usize, f: impl Fn(&Class) -> f64) -> f64 {
    let mobile = mobile_share(loc);
    let shares = [1.0 - mobile - 0.35, 0.35, mobile];
    CLASSES.iter().zip(shares).map(|(c, s)| s * f(c)).sum()
}

/// One report's throughput multiplier for a session of class `c`: its report-to-report
/// spread and, now and then, a dip.
pub fn report_throughput(rng: &mut Rng, c: &Class) -> f64 {
    let dip = if c.dip > 0.0 && rng.chance(c.dip) {
        0.2
    } else {
        1.0
    };
    rng.lognormal(0.0, c.report_sigma) * dip
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_differ_per_location() {
        let shares: Vec<f64> = (0..50).map(mobile_share).collect();
        assert!(shares.iter().all(|s| (0.10..=0.45).contains(s)));
        let (lo, hi) = shares
            .iter()
            .fold((1.0_f64, 0.0_f64), |(l, h), s| (l.min(*s), h.max(*s)));
        assert!(hi - lo > 0.2, "{lo}..{hi}");
        assert!((mean_at(3, |_| 1.0) - 1.0).abs() < 1e-12);
        let mut rng = Rng::new(7);
        let n = 20_000;
        let mobile = (0..n).filter(|_| pick(&mut rng, 3) == 2).count() as f64 / n as f64;
        assert!((mobile - mobile_share(3)).abs() < 0.02, "{mobile}");
    }
}
