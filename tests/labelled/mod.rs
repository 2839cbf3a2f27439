//! Scoring shared by the labelled worlds of `tests/long_tail.rs` and `tests/real_sessions.rs`:
//! key-size bands, per-band scores, the firing lines a test prints.
#![allow(dead_code)] // each test crate uses its own part

pub mod reference;

use qos_sentinel::backtest::{Score, score};
use qos_sentinel::incident::{Alert, Status};
use qos_sentinel::sim::{LabelledIncident, Labels, Rng};

pub const MINUTE: i64 = 60_000;
/// 2026-11-20T00:00:00Z.
pub const MIDNIGHT: i64 = 1_795_132_800_000;

/// Key-size bands, by reports a window.
pub const BANDS: [(&str, f64, f64); 3] = [
    ("5-10", 5.0, 10.0),
    ("10-30", 10.0, 30.0),
    ("30+", 30.0, f64::INFINITY),
];

pub fn band_of(reports: f64) -> &'static str {
    BANDS
        .iter()
        .find(|(_, lo, hi)| reports >= *lo && reports < *hi)
        .map_or("<5", |b| b.0)
}

pub fn poisson(rng: &mut Rng, mean: f64) -> u64 {
    if mean > 30.0 {
        return (mean + mean.sqrt() * rng.normal()).round().max(0.0) as u64;
    }
    let (l, mut k, mut p) = ((-mean).exp(), 0, 1.0);
    loop {
        p *= rng.f64();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

/// A seeded shuffle of `0..n`.
pub fn shuffled(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    order
}

pub fn firing_lines(alerts: &[Alert]) -> Vec<String> {
    alerts
        .iter()
        .filter(|a| a.status == Status::Firing)
        .map(qos_sentinel::notify::render_line)
        .collect()
}

/// Whether `alerts` catch the one incident `l`.
pub fn caught(l: &LabelledIncident, alerts: &[Alert]) -> bool {
    let single = Labels {
        window_ms: MINUTE,
        incidents: vec![l.clone()],
    };
    score(alerts, &single).detected == 1
}

/// Per band: the score of that band's incidents (precision over the alerts whose scope is
/// one of that band's incidents' or no incident's).
pub fn by_band(
    alerts: &[Alert],
    labels: &Labels,
    bands: &[&'static str],
) -> Vec<(&'static str, Score)> {
    let mut names: Vec<&'static str> = bands.to_vec();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|b| {
            let sub = Labels {
                window_ms: labels.window_ms,
                incidents: labels
                    .incidents
                    .iter()
                    .zip(bands)
                    .filter(|(_, x)| **x == b)
                    .map(|(l, _)| l.clone())
                    .collect(),
            };
            (b, score(alerts, &sub))
        })
        .collect()
}

/// Totals over seeds, per band: incidents, detected, delays.
#[derive(Debug, Default)]
pub struct Totals(pub std::collections::BTreeMap<&'static str, (usize, usize, Vec<f64>)>);

impl Totals {
    /// Scores one seed's run, prints what was caught and missed, and adds it to the totals;
    /// returns the run's overall score.
    pub fn add(
        &mut self,
        seed: u64,
        alerts: &[Alert],
        labels: &Labels,
        bands: &[&'static str],
    ) -> Score {
        let all = score(alerts, labels);
        for (l, b) in labels.incidents.iter().zip(bands) {
            let what = if caught(l, alerts) {
                "caught"
            } else {
                "MISSED"
            };
            eprintln!("  {what} [{b}] {}", l.injected.describe());
        }
        eprintln!("seed {seed}: {all:?}");
        for a in alerts {
            eprintln!("  {}", qos_sentinel::notify::render_line(a));
        }
        for (b, s) in by_band(alerts, labels, bands) {
            eprintln!("  band {b}: {s:?}");
            let t = self.0.entry(b).or_default();
            t.0 += s.incidents;
            t.1 += s.detected;
            t.2.extend(s.median_delay_windows);
        }
        all
    }

    pub fn recall(&self, band: &str) -> f64 {
        self.0.get(band).map_or(0.0, |t| t.1 as f64 / t.0 as f64)
    }
}

/// The labels of `incidents` in a world of `locations` (one entry per key is fine).
pub fn labels<'a>(
    incidents: impl Iterator<Item = &'a qos_sentinel::sim::Injected>,
    locations: &[String],
) -> Labels {
    Labels {
        window_ms: MINUTE,
        incidents: incidents
            .map(|i| LabelledIncident {
                injected: i.clone(),
                scopes: i.scopes(locations),
                metrics: i.kind.metrics().iter().map(|m| m.to_string()).collect(),
            })
            .collect(),
    }
}

/// One per-key incident to plan: its kind, what it does to the world, the band of key sizes
/// it goes on (reports a window, `lo..hi`) and how many minutes it lasts.
pub type Plan<E> = (qos_sentinel::sim::IncidentKind, E, f64, f64, i64);

/// A world's keys as the scheduler sees them: location, CDN, benchmarked.
pub struct KeyRef<'a> {
    pub location: &'a str,
    pub cdn: &'a str,
    pub benchmarked: bool,
}

/// Puts each incident of `plan` on a benchmarked key of its band (by `sizes`, each key's
/// measured reports a window), the first in `order` at a location no earlier incident took;
/// the first starts `into_window` ms into the window at `first`, the next 7 then 13 minutes
/// later in turn (two incidents at a time at most). Returns each incident with its effect
/// and its key's band, and when the next one would start.
pub fn schedule<E>(
    plan: Vec<Plan<E>>,
    keys: &[KeyRef],
    sizes: &[f64],
    order: &[usize],
    first: i64,
    into_window: i64,
) -> (Vec<(qos_sentinel::sim::Injected, E, &'static str)>, i64) {
    let mut taken: Vec<usize> = Vec::new();
    let mut out = Vec::new();
    let mut at = first;
    for (i, (kind, effect, lo, hi, minutes)) in plan.into_iter().enumerate() {
        let k = order
            .iter()
            .copied()
            .find(|&k| {
                (lo..hi).contains(&sizes[k])
                    && keys[k].benchmarked
                    && !taken.iter().any(|&t| keys[t].location == keys[k].location)
            })
            .expect("a key of that size");
        taken.push(k);
        let begin = at + into_window;
        let injected = qos_sentinel::sim::Injected {
            kind,
            location: keys[k].location.to_string(),
            cdn: keys[k].cdn.to_string(),
            start: begin,
            end: begin + minutes * MINUTE,
            asn: None,
        };
        out.push((injected, effect, band_of(sizes[k])));
        at += if i % 2 == 0 { 7 * MINUTE } else { 13 * MINUTE };
    }
    (out, at)
}

/// qos-sentinel beside the plain reference (`reference`) on the same runs: incidents caught
/// and false alerts (firing alerts matching no incident) of each, summed over runs.
#[derive(Debug, Default)]
pub struct Versus {
    pub ours: (usize, usize),
    pub reference: (usize, usize),
}

impl Versus {
    /// Adds one run; prints the incidents only one of the two caught.
    pub fn add(&mut self, alerts: &[Alert], reference: &[Alert], labels: &Labels, bands: &[&str]) {
        for (l, b) in labels.incidents.iter().zip(bands) {
            match (caught(l, alerts), caught(l, reference)) {
                (false, true) => {
                    eprintln!("  reference only [{b}] {}", l.injected.describe());
                    for a in reference.iter().filter(|a| l.scopes.contains(&a.scope)) {
                        eprintln!("    {}", qos_sentinel::notify::render_line(a));
                    }
                }
                (true, false) => eprintln!("  ours only [{b}] {}", l.injected.describe()),
                _ => {}
            }
        }
        for a in alerts.iter().filter(|a| a.status == Status::Firing) {
            if score(std::slice::from_ref(a), labels).true_alerts == 0 {
                eprintln!("  ours false: {}", qos_sentinel::notify::render_line(a));
            }
        }
        let tally = |s: Score| (s.detected, s.firing_alerts - s.true_alerts);
        let (a, r) = (
            tally(score(alerts, labels)),
            tally(score(reference, labels)),
        );
        self.ours = (self.ours.0 + a.0, self.ours.1 + a.1);
        self.reference = (self.reference.0 + r.0, self.reference.1 + r.1);
    }
}

/// A quiet night of qos-sentinel's `ours` and the reference's `theirs` alerts: prints the
/// reference's pages, and checks that it pages more.
pub fn quiet_versus(seed: u64, ours: &[Alert], theirs: &[Alert]) {
    let (ours, theirs) = (firing_lines(ours), firing_lines(theirs));
    eprintln!(
        "quiet seed {seed}: ours {}, reference {}",
        ours.len(),
        theirs.len()
    );
    for l in &theirs {
        eprintln!("  {l}");
    }
    assert!(ours.len() < theirs.len(), "seed {seed}: {ours:#?}");
}
