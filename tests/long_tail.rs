//! The long tail: labelled scenarios from a world this repository's simulator does not make,
//! shaped like a real service's traffic rather than like the traffic detection was tuned on.
//!
//! - Zipf-popular keys: most location+CDN keys carry 5-40 reports a window, a few carry more.
//! - Sessions are the unit: each keeps its network for its life (fast home, slow home or
//!   mobile, heavy-tailed across sessions, mobile reports dipping), reports every 10, 15 or
//!   30 s (players differ), lives a log-normal few minutes, starts once (startup time), and
//!   a failed start sends one error report and ends.
//! - Some keys have no benchmark; probes measure what a fast home network would see.
//! - Incidents on small keys of every kind (throughput down to a third with stalls, stalls
//!   alone, failures, startup regression, outage), and a CDN degrading over a region of keys
//!   each too small to show it alone.
//!
//! Scored per key-size band (the key's reports a window): recall, precision, median delay.
//! `LONG_TAIL_*` variables scale the quiet run up for the README's figures (see there).

mod labelled;

use labelled::reference::{Params, reference};
use labelled::{
    KeyRef, MIDNIGHT, MINUTE, Plan, Totals, Versus, firing_lines, poisson, quiet_versus, schedule,
    shuffled,
};
use qos_sentinel::backtest::run_stream;
use qos_sentinel::config::Config;
use qos_sentinel::decode::{Benchmark, Report};
use qos_sentinel::incident::{Alert, Status};
use qos_sentinel::sim::{Event, IncidentKind, Injected, Labels, Rng};
use std::collections::{HashMap, HashSet};

/// One location+CDN of the world.
#[derive(Debug, Clone)]
struct KeyModel {
    location: String,
    cdn: String,
    /// Session arrivals a minute.
    arrivals: f64,
    /// What a fast home network sees, kbps.
    throughput: f64,
    /// Stall chance per report on a fast home network.
    stall: f64,
    startup_ms: f64,
    /// Failed starts per session.
    failure: f64,
    benchmarked: bool,
}

/// A session's network for its life.
#[derive(Debug, Clone, Copy)]
enum Class {
    FastHome,
    SlowHome,
    Mobile,
}

#[derive(Debug)]
struct Session {
    id: u64,
    key: usize,
    class: Class,
    /// Multiplier on the key's throughput, fixed for the session.
    quality: f64,
    interval: i64,
    next: i64,
    end: i64,
    started: bool,
}

/// What an incident does to a key's traffic.
#[derive(Debug, Clone, Copy, Default)]
struct Effect {
    throughput: f64,
    stall: f64,
    startup: f64,
    /// Extra chance of an error per report.
    errors: f64,
    silent: bool,
}

#[derive(Debug, Clone)]
struct Planned {
    injected: Injected,
    effect: Effect,
    /// On every CDN of the location (a viewer-side problem: its ISP, its last mile).
    every_cdn: bool,
}

impl Planned {
    fn hits(&self, k: &KeyModel, ts: i64) -> bool {
        let i = &self.injected;
        ts >= i.start
            && ts < i.end
            && (self.every_cdn || k.cdn == i.cdn)
            && match i.kind {
                IncidentKind::RegionalCdnDegradation => k.location.starts_with(&i.location),
                _ => k.location == i.location,
            }
    }
}

struct World {
    rng: Rng,
    keys: Vec<KeyModel>,
    incidents: Vec<Planned>,
    sessions: Vec<Session>,
    next_id: u64,
    now: i64,
    end: i64,
    /// Night-time load is a fraction of the day's.
    load: f64,
    buffer: std::collections::VecDeque<Event>,
}

/// Mean reports a window of a session (players report every 10, 15 or 30 s).
const REPORTS_PER_SESSION_MINUTE: f64 = (6.0 + 4.0 + 2.0) / 3.0;
/// Mean session life, minutes (log-normal, median 5).
const MEAN_LIFE_MINUTES: f64 = 6.2;

impl World {
    /// `regions` x `cities` locations x `cdns` CDNs; key sizes Zipf-distributed so that the
    /// typical key carries about `median` reports a window at full load.
    fn new(seed: u64, regions: usize, cities: usize, cdns: usize, median: f64) -> World {
        let mut rng = Rng::new(seed ^ 0x1006_7a11);
        let mut keys = Vec::new();
        let n = regions * cities * cdns;
        // Popularity by a shuffled Zipf rank, so that big and small keys mix in every region.
        let ranks = shuffled(&mut rng, n);
        let zipf = |r: usize| 1.0 / (r as f64 + 1.0).powf(0.8);
        let median_weight = zipf(n / 2);
        let mut i = 0;
        for r in 0..regions {
            for c in 0..cities {
                let location = format!("R{r:02}/Z{c}/City{r}x{c}");
                let base = rng.lognormal(9.3, 0.3); // ~11 Mbps for a fast home
                for d in 0..cdns {
                    let reports = median * zipf(ranks[i]) / median_weight;
                    keys.push(KeyModel {
                        location: location.clone(),
                        cdn: format!("net-{}", (b'p' + d as u8) as char),
                        arrivals: reports / REPORTS_PER_SESSION_MINUTE / MEAN_LIFE_MINUTES,
                        throughput: base * rng.lognormal(0.0, 0.25),
                        stall: 0.015 * rng.lognormal(0.0, 0.4),
                        startup_ms: 1_100.0 * rng.lognormal(0.0, 0.3),
                        failure: 0.006 * rng.lognormal(0.0, 0.4),
                        benchmarked: rng.f64() >= 0.1,
                    });
                    i += 1;
                }
            }
        }
        World {
            rng,
            keys,
            incidents: Vec::new(),
            sessions: Vec::new(),
            next_id: 0,
            now: 0,
            end: 0,
            load: 1.0,
            buffer: Default::default(),
        }
    }

    fn run(mut self, start: i64, minutes: i64, load: f64) -> World {
        self.now = start;
        self.end = start + minutes * MINUTE;
        self.load = load;
        // Sessions already playing at the start.
        for k in 0..self.keys.len() {
            let live = self.keys[k].arrivals * load * MEAN_LIFE_MINUTES;
            for _ in 0..poisson(&mut self.rng, live) {
                let back = self.rng.below(5 * MINUTE as u64) as i64;
                let mut s = self.session(k, start - back);
                s.next = start + (s.next - start).rem_euclid(s.interval);
                s.started = true;
                self.sessions.push(s);
            }
        }
        self
    }

    fn session(&mut self, key: usize, at: i64) -> Session {
        let rng = &mut self.rng;
        let class = match rng.f64() {
            x if x < 0.5 => Class::FastHome,
            x if x < 0.75 => Class::SlowHome,
            _ => Class::Mobile,
        };
        let quality = match class {
            Class::FastHome => rng.lognormal(0.0, 0.35),
            Class::SlowHome => rng.lognormal((0.3f64).ln(), 0.5),
            Class::Mobile => rng.lognormal((0.45f64).ln(), 0.8),
        };
        let interval = [10_000, 15_000, 30_000][rng.below(3) as usize];
        let life = (rng.lognormal((5.0f64).ln(), 0.7) * MINUTE as f64) as i64;
        self.next_id += 1;
        Session {
            id: self.next_id,
            key,
            class,
            quality,
            interval,
            next: at + rng.below(interval as u64) as i64,
            end: at + life.max(20_000),
            started: false,
        }
    }

    fn effect(&self, k: usize, ts: i64) -> Effect {
        let key = &self.keys[k];
        let mut e = Effect {
            throughput: 1.0,
            stall: 1.0,
            startup: 1.0,
            ..Effect::default()
        };
        for p in self.incidents.iter().filter(|p| p.hits(key, ts)) {
            e.throughput *= p.effect.throughput;
            e.stall *= p.effect.stall;
            e.startup *= p.effect.startup;
            e.errors += p.effect.errors;
            e.silent |= p.effect.silent;
        }
        e
    }

    fn report(&mut self, i: usize, ts: i64) -> Option<Report<'static>> {
        let (k, class, quality, interval, started, id) = {
            let s = &self.sessions[i];
            (s.key, s.class, s.quality, s.interval, s.started, s.id)
        };
        let e = self.effect(k, ts);
        if e.silent {
            return None;
        }
        let key = self.keys[k].clone();
        let rng = &mut self.rng;
        self.sessions[i].started = true;
        let mobile = matches!(class, Class::Mobile);
        let mut tp = key.throughput * quality * e.throughput * rng.lognormal(0.0, 0.25);
        if mobile && rng.chance(0.1) {
            tp *= 0.2; // a tunnel, a crowded cell
        }
        let stall_chance = key.stall
            * match class {
                Class::FastHome => 1.0,
                Class::SlowHome => 3.0,
                Class::Mobile => 6.0,
            }
            * e.stall;
        let stall = if rng.chance(stall_chance.min(0.9)) {
            // Pareto stalls: most short, a few most of the interval.
            (400.0 / rng.f64().max(1e-6).powf(1.0 / 1.4)).min(interval as f64 * 0.9)
        } else {
            0.0
        };
        let startup = (!started).then(|| {
            let c = match class {
                Class::FastHome => 1.0,
                Class::SlowHome => 1.5,
                Class::Mobile => 2.0,
            };
            (key.startup_ms * c * e.startup * rng.lognormal(0.0, 0.45)) as u64
        });
        let failed = if started {
            rng.chance(e.errors)
        } else {
            rng.chance(key.failure * if mobile { 2.5 } else { 1.0 } + e.errors)
        };
        if failed && !started {
            self.sessions[i].end = ts; // a failed start ends the session
        }
        Some(Report {
            ts,
            session_id: format!("x{id:x}").into(),
            asn: Some(64_600 + (id % 7) as u32),
            device: Some(if mobile { "phone" } else { "tv" }.into()),
            played_ms: if failed && !started {
                0
            } else {
                (interval as f64 - stall) as u64
            },
            rebuffer_ms: stall as u64,
            startup_ms: if failed && !started { None } else { startup },
            throughput_kbps: Some(tp.round().max(1.0)),
            error: failed.then(|| "E_SEGMENT".into()),
            ..Report::new(key.location, key.cdn, ts)
        })
    }

    fn benchmarks(&mut self, ts: i64) {
        for key in self.keys.clone() {
            if !key.benchmarked {
                continue;
            }
            let noise = self.rng.lognormal(0.0, 0.05);
            self.buffer.push_back(Event::Benchmark(Benchmark {
                ts,
                location: key.location.clone(),
                cdn: key.cdn.clone(),
                // Probes sit on good networks; a CDN-side incident shows on them too, but
                // the players' view is what is tested.
                throughput_kbps: Some(key.throughput * 0.9 * noise),
                rebuffer_ratio: Some(key.stall * 0.08),
                startup_ms: Some(key.startup_ms * 0.9),
                error_rate: Some(key.failure / 3.0),
            }));
        }
    }

    /// One minute of traffic into the buffer, in event-time order.
    fn minute(&mut self) {
        let (from, to) = (self.now, self.now + MINUTE);
        if (from - MIDNIGHT).rem_euclid(5 * MINUTE) == 0 {
            self.benchmarks(from);
        }
        for k in 0..self.keys.len() {
            let arrivals = poisson(&mut self.rng, self.keys[k].arrivals * self.load);
            for _ in 0..arrivals {
                let at = from + self.rng.below(MINUTE as u64) as i64;
                let s = self.session(k, at);
                self.sessions.push(s);
            }
        }
        let mut out = Vec::new();
        for i in 0..self.sessions.len() {
            while self.sessions[i].next < to && self.sessions[i].next < self.sessions[i].end {
                let ts = self.sessions[i].next.max(from);
                self.sessions[i].next += self.sessions[i].interval;
                if let Some(r) = self.report(i, ts) {
                    out.push(r);
                }
            }
        }
        self.sessions.retain(|s| s.next < s.end);
        out.sort_by_key(|r| r.ts);
        self.buffer.extend(out.into_iter().map(Event::Report));
        self.now = to;
    }

    fn labels(&self) -> Labels {
        let locations: Vec<String> = self.keys.iter().map(|k| k.location.clone()).collect();
        labelled::labels(self.incidents.iter().map(|p| &p.injected), &locations)
    }
}

impl Iterator for World {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        while self.buffer.is_empty() {
            if self.now >= self.end {
                return None;
            }
            self.minute();
        }
        self.buffer.pop_front()
    }
}

/// The scenario of one seed: 8 regions x 6 cities x 3 CDNs (144 keys, median 15 reports a
/// window), 150 minutes of evening load, nine incidents after a 40-minute warm-up.
fn scenario(seed: u64) -> (World, Vec<&'static str>) {
    let start = MIDNIGHT + 18 * 60 * MINUTE;
    let world = || World::new(seed, 8, 6, 3, 15.0);
    // Each key's size as measured: its reports a window over the 40 quiet minutes before the
    // first incident (the same traffic as the run's, which is the same until then).
    let mut counts = std::collections::HashMap::<(String, String), f64>::new();
    for e in world().run(start, 40, 1.0) {
        if let Event::Report(r) = e {
            *counts.entry((r.location.into(), r.cdn.into())).or_default() += 1.0 / 40.0;
        }
    }
    let mut w = world();
    let sizes: Vec<f64> = w
        .keys
        .iter()
        .map(|k| {
            counts
                .get(&(k.location.clone(), k.cdn.clone()))
                .copied()
                .unwrap_or(0.0)
        })
        .collect();
    // Keys by band, benchmarked ones for the per-key incidents, in a seeded order.
    let mut rng = Rng::new(seed ^ 0x5eed);
    let order = shuffled(&mut rng, w.keys.len());
    let plan: Vec<Plan<Effect>> = vec![
        (
            IncidentKind::Degradation,
            Effect {
                throughput: 1.0 / 3.0,
                stall: 7.0,
                ..fx()
            },
            10.0,
            30.0,
            14,
        ),
        (
            IncidentKind::Degradation,
            Effect {
                throughput: 1.0 / 3.0,
                stall: 7.0,
                ..fx()
            },
            30.0,
            200.0,
            10,
        ),
        (
            IncidentKind::Degradation,
            Effect { stall: 7.0, ..fx() },
            10.0,
            30.0,
            16,
        ),
        (
            IncidentKind::FailureSpike,
            Effect {
                errors: 0.12,
                ..fx()
            },
            10.0,
            30.0,
            14,
        ),
        (
            IncidentKind::FailureSpike,
            Effect {
                errors: 0.12,
                ..fx()
            },
            30.0,
            200.0,
            10,
        ),
        (
            IncidentKind::StartupRegression,
            Effect {
                startup: 3.0,
                ..fx()
            },
            20.0,
            90.0,
            18,
        ),
        (
            IncidentKind::Outage,
            Effect {
                silent: true,
                ..fx()
            },
            10.0,
            30.0,
            12,
        ),
        (
            IncidentKind::Degradation,
            Effect {
                throughput: 1.0 / 3.0,
                stall: 7.0,
                ..fx()
            },
            5.0,
            10.0,
            16,
        ),
    ];
    let keys: Vec<KeyRef> = w
        .keys
        .iter()
        .map(|k| KeyRef {
            location: &k.location,
            cdn: &k.cdn,
            benchmarked: k.benchmarked,
        })
        .collect();
    // Two incidents at a time at most, starting mid-window.
    let (planned, at) = schedule(plan, &keys, &sizes, &order, start + 40 * MINUTE, 17_000);
    let mut bands = Vec::new();
    for (injected, effect, band) in planned {
        bands.push(band);
        w.incidents.push(Planned {
            injected,
            effect,
            every_cdn: false,
        });
    }
    // A CDN degrading over one region's keys (each small).
    let region = "R03/";
    w.incidents.push(Planned {
        injected: Injected {
            kind: IncidentKind::RegionalCdnDegradation,
            location: region.into(),
            cdn: "net-q".into(),
            start: at + 5 * MINUTE + 31_000,
            end: at + 20 * MINUTE,
            asn: None,
        },
        effect: Effect {
            throughput: 0.4,
            stall: 5.0,
            ..fx()
        },
        every_cdn: false,
    });
    bands.push("regional");
    (w.run(start, 150, 1.0), bands)
}

fn fx() -> Effect {
    Effect {
        throughput: 1.0,
        stall: 1.0,
        startup: 1.0,
        ..Effect::default()
    }
}

#[test]
fn small_keys_incidents_are_caught_per_band() {
    let cfg = Config::default();
    let mut totals = Totals::default();
    let mut versus = Versus::default();
    for seed in [1, 2, 3] {
        let (world, bands) = scenario(seed);
        let labels = world.labels();
        let summary = run_stream(&cfg, world);
        let all = totals.add(seed, &summary.alerts, &labels, &bands);
        assert!(all.precision >= 0.95, "seed {seed}: {all:?}");
        let reference = reference(scenario(seed).0, Params::default());
        versus.add(&summary.alerts, &reference, &labels, &bands);
    }
    eprintln!("{totals:?}");
    // The plain per-key reference issue #17 measured against (Poisson tails, z-scores, two
    // windows to fire) catches fewer here and pages falsely dozens of times (2026-12-06: 14
    // of 27 and 129 false alerts against 18 and none).
    eprintln!("{versus:?}");
    assert!(versus.ours.0 >= versus.reference.0, "{versus:?}");
    assert!(versus.ours.1 < versus.reference.1, "{versus:?}");
    // What this version catches (README, "Measured detection quality"): a floor against
    // regressions, not the targets of issue #17, which the 10-30 band does not meet yet.
    let recall = |b: &str| totals.recall(b);
    // A key under suspicion holds its sessions' own levels and its spread (seed 1's 30+
    // drop and seed 2's 10-30 one were missed while they learned the drop).
    assert_eq!(recall("30+"), 1.0, "{totals:?}");
    assert!(recall("10-30") >= 0.4, "{totals:?}");
    // Stalled sessions counted against each session's own history (seed 3's stalls-only
    // incident was missed before: 6 of 15).
    assert!(recall("10-30") >= 0.45, "{totals:?}");
    // The key's sequential test of its session starts (seeds 1 and 2's startup regressions,
    // about one start a window, were missed before: 7 of 15). Since 2026-12-06 a start
    // counts at most two standard deviations in it (the false-alarm bound did not hold with
    // three, and recorded sessions paged on a chance cluster of slow starts): seed 1's
    // regression is missed again, 8 of 15.
    assert!(recall("10-30") >= 0.5, "{totals:?}");
    // A small key's sessions followed from window to window, its silence tested as the
    // sessions that vanished together (the outages of seeds 1 and 2 were missed before:
    // 8 of 15; seed 3's key had 5 sessions, then 2 in the outage's first 17 s).
    assert!(recall("10-30") >= 0.65, "{totals:?}");
    // A window too small for its level alone no longer stops the runs that hold the level's
    // evidence (seed 1's 5-10 key was missed before).
    assert!(recall("5-10") >= 0.3, "{totals:?}");
    assert_eq!(recall("regional"), 1.0, "{totals:?}");
}

/// A location whose every CDN degrades at once (its viewers' ISP), each of its keys too small
/// to show it alone (5-20 reports a window), is raised as one location-wide incident: the
/// location's aggregate is tested directly, not only rolled up from keys bad on their own.
#[test]
fn a_location_degrading_on_every_cdn_of_small_keys_is_one_location_incident() {
    let start = MIDNIGHT + 18 * 60 * MINUTE;
    for seed in [5, 6] {
        let world = || World::new(seed, 8, 6, 3, 15.0);
        // Each key's reports a window, measured over the 40 minutes before the incident.
        let mut counts = std::collections::HashMap::<(String, String), f64>::new();
        for e in world().run(start, 40, 1.0) {
            if let Event::Report(r) = e {
                *counts.entry((r.location.into(), r.cdn.into())).or_default() += 1.0 / 40.0;
            }
        }
        let size = |k: &KeyModel| {
            counts
                .get(&(k.location.clone(), k.cdn.clone()))
                .copied()
                .unwrap_or(0.0)
        };
        let mut w = world();
        let mut locations: Vec<String> = w.keys.iter().map(|k| k.location.clone()).collect();
        locations.dedup();
        let location = locations
            .into_iter()
            .find(|l| {
                let keys: Vec<&KeyModel> = w.keys.iter().filter(|k| &k.location == l).collect();
                keys.len() == 3
                    && keys
                        .iter()
                        .all(|k| k.benchmarked && (5.0..20.0).contains(&size(k)))
            })
            .expect("a location of small keys");
        let begin = start + 40 * MINUTE + 17_000;
        let end = begin + 15 * MINUTE;
        w.incidents.push(Planned {
            injected: Injected {
                kind: IncidentKind::Degradation,
                location: location.clone(),
                cdn: "*".into(),
                start: begin,
                end,
                asn: None,
            },
            effect: Effect {
                throughput: 0.4,
                stall: 5.0,
                ..fx()
            },
            every_cdn: true,
        });
        let summary = run_stream(&Config::default(), w.run(start, 80, 1.0));
        for l in firing_lines(&summary.alerts) {
            eprintln!("seed {seed}: {l}");
        }
        let firing: Vec<&Alert> = summary
            .alerts
            .iter()
            .filter(|a| a.status == Status::Firing)
            .collect();
        let at_location = firing.iter().find(|a| {
            a.scope.location.as_deref() == Some(&location)
                && a.scope.cdn.is_none()
                && a.window_start >= begin - MINUTE
                && a.window_end <= end + 2 * MINUTE
        });
        assert!(
            at_location.is_some(),
            "seed {seed}: no location-wide incident at {location}"
        );
        // Nothing anywhere else.
        assert!(
            firing
                .iter()
                .all(|a| a.scope.location.as_deref() == Some(&location)),
            "seed {seed}"
        );
    }
}

/// Quiet traffic of the same world raises nothing: `regions` x `cities` x 4 CDNs at `load`
/// (night-time is a fraction of the evening), for `minutes` from midnight.
fn quiet(seed: u64, regions: usize, cities: usize, minutes: i64, load: f64) -> Vec<String> {
    let cfg = Config::default();
    let world = World::new(seed, regions, cities, 4, 15.0).run(MIDNIGHT, minutes, load);
    let summary = run_stream(&cfg, world);
    eprintln!(
        "quiet seed {seed}: {} keys, {} reports, {} tests, {} alerts",
        regions * cities * 4,
        summary.reports,
        summary.counters.tests,
        summary.alerts.len()
    );
    firing_lines(&summary.alerts)
}

#[test]
fn quiet_nights_of_small_keys_raise_nothing() {
    for seed in [7, 8] {
        let lines = quiet(seed, 8, 8, 240, 0.4);
        assert!(lines.is_empty(), "seed {seed}: {lines:#?}");
    }
}

/// The README's quiet figure: `LONG_TAIL_KEYS` keys (a multiple of 40) for `LONG_TAIL_HOURS`
/// hours from midnight, half the evening's load: `cargo test --test long_tail -- --ignored`
/// (24 h over 1,000 keys: 24.7 M reports, about 6 minutes in a debug build).
#[test]
#[ignore]
fn quiet_day_at_scale() {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let keys = var("LONG_TAIL_KEYS", 1_000);
    let hours = var("LONG_TAIL_HOURS", 24) as i64;
    let lines = quiet(
        var("LONG_TAIL_SEED", 11) as u64,
        keys / 40,
        10,
        hours * 60,
        0.5,
    );
    assert!(lines.is_empty(), "{lines:#?}");
}

/// The plain reference (`labelled::reference`) on the quiet nights of
/// `quiet_nights_of_small_keys_raise_nothing`, at `REFERENCE_P` (default 1e-3): it pages
/// where qos-sentinel raises nothing (README, "Measured detection quality").
/// `REFERENCE_P=1e-9 cargo test --test long_tail reference -- --ignored --nocapture`.
#[test]
#[ignore]
fn the_reference_on_quiet_nights() {
    for seed in [7, 8] {
        let world = || World::new(seed, 8, 8, 4, 15.0).run(MIDNIGHT, 240, 0.4);
        let ours = run_stream(&Config::default(), world()).alerts;
        quiet_versus(seed, &ours, &reference(world(), Params::default()));
    }
}

/// Each key's (`location|cdn`) reports, and its sessions per minute.
type Minutes = HashMap<String, (u64, HashMap<i64, HashSet<String>>)>;

fn sessions_per_minute(events: impl Iterator<Item = Event>) -> Minutes {
    let mut out = Minutes::new();
    for e in events {
        if let Event::Report(r) = e {
            let (reports, minutes) = out.entry(format!("{}|{}", r.location, r.cdn)).or_default();
            *reports += 1;
            minutes
                .entry(r.ts / MINUTE)
                .or_default()
                .insert(r.session_id.to_string());
        }
    }
    out
}

/// What a test of vanished sessions would stand on (README, "Measured detection quality"):
/// in this world a key of 10-30 reports a window falls silent for 3 windows or more, with
/// nothing wrong, only after a window of few sessions (its last ones ended together), while
/// each long-tail outage hit a key with at least 5 sessions in its last full window. A
/// measurement, not a floor of the detector (which does not test this yet):
/// `cargo test --test long_tail silences -- --ignored --nocapture` (about a minute).
#[test]
#[ignore]
fn natural_silences_follow_few_sessions_and_outages_many() {
    let hours = 6;
    let world = World::new(11, 25, 10, 4, 15.0).run(MIDNIGHT, hours * 60, 1.0);
    let (first, last) = (MIDNIGHT / MINUTE + 10, MIDNIGHT / MINUTE + hours * 60 - 10);
    // Silences of 3 windows or more, by the sessions of the window before (12: 12 or more).
    let mut after = [0u32; 13];
    let mut keys = 0;
    for (reports, minutes) in sessions_per_minute(world).values() {
        if !(10.0..30.0).contains(&(*reports as f64 / (hours * 60) as f64)) {
            continue;
        }
        keys += 1;
        for t in first..last {
            let before = minutes.get(&(t - 1)).map_or(0, HashSet::len);
            if before > 0 && (t..t + 3).all(|m| !minutes.contains_key(&m)) {
                after[before.min(12)] += 1;
            }
        }
    }
    eprintln!(
        "{keys} keys of 10-30 reports a window, {hours} h: silences of 3+ windows after \
         0..12 sessions {after:?}"
    );
    assert!(
        keys > 300 && after[1] > 100,
        "small keys fall silent: {after:?}"
    );
    assert_eq!(after[5..].iter().sum::<u32>(), 0, "{after:?}");
    for seed in [1, 2, 3] {
        let (world, _) = scenario(seed);
        let outage = world
            .incidents
            .iter()
            .find(|p| p.effect.silent)
            .map(|p| p.injected.clone())
            .expect("an outage");
        let key = format!("{}|{}", outage.location, outage.cdn);
        let full = outage.start / MINUTE - 1;
        let per = sessions_per_minute(world);
        let before = per[&key].1.get(&full).map_or(0, HashSet::len);
        eprintln!("seed {seed}: the outage at {key} followed a window of {before} sessions");
        assert!(before >= 5, "seed {seed}: {before}");
    }
}
