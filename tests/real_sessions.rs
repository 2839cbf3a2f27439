//! Real sessions: labelled scenarios whose viewers are real recorded video sessions, not a
//! model of them. Each session replays one of the 590 chunk-level traces of the Lumos dataset
//! (`tests/data/lumos`, MIT: Wi-Fi 2.4/5 GHz and 4G, strong to weak signal, 2 s and 4 s
//! chunks, the recorded rendition bitrate, chunk size and delivery time of every chunk)
//! through a player's buffer (playback starts with chunk 1 in, a request when the buffer is at
//! or below 12 s, a stall when a delivery outlasts the buffer), and reports what that player
//! saw every 10, 20 or 30 s: played and stalled time, the throughput of the chunks delivered
//! in the interval, their bitrate, the startup time once.
//!
//! What the world adds to the traces: keys (8 regions x 6 cities x 3 CDNs) of Zipf
//! popularity, most of them 5-40 reports a window; each location its own share of 4G
//! viewers; each key its own speed factor on the recorded delivery times; viewers who leave
//! before the trace ends (log-normal, median 4 minutes); a few failed starts (0.4 %, 1 % on
//! 4G: the traces record none); probes that measure what strong Wi-Fi sees. Incidents act on
//! the replay: a CDN slower by a factor stretches delivery times (stalls follow from the
//! buffer, not from a rate), hiccups add seconds to some deliveries, a startup regression
//! stretches the first two deliveries and the player's start, failures end sessions.
//!
//! Scored per key-size band like `tests/long_tail.rs` (README, "Measured detection quality").

mod labelled;

use std::io::Read;

use labelled::reference::{Params, reference};
use labelled::{
    KeyRef, MIDNIGHT, MINUTE, Plan, Totals, Versus, firing_lines, poisson, quiet_versus, schedule,
    shuffled,
};
use qos_sentinel::backtest::run_stream;
use qos_sentinel::config::Config;
use qos_sentinel::decode::{Benchmark, Report};
use qos_sentinel::sim::{Event, IncidentKind, Injected, Labels, Rng};
use serde::Deserialize;

#[derive(Deserialize)]
struct Dataset {
    sessions: Vec<Trace>,
}

/// One recorded session: per chunk (row 0 is the init segment or manifest).
#[derive(Deserialize)]
struct Trace {
    conn: String,
    chunk_s: f64,
    startup_ms: f64,
    mean_thr_kbps: f64,
    signal: String,
    bitrate_kbps: Vec<f64>,
    size_kbit: Vec<f64>,
    delivery_ms: Vec<f64>,
}

impl Trace {
    fn mobile(&self) -> bool {
        self.conn == "4g"
    }
}

fn traces() -> Vec<Trace> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/lumos/lumos_sessions.json.gz"
    );
    let file = std::fs::File::open(path).expect("the Lumos sessions in tests/data/lumos");
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("gzip");
    let d: Dataset = serde_json::from_str(&text).expect("the derived Lumos format");
    assert_eq!(d.sessions.len(), 590);
    d.sessions
}

#[derive(Debug, Clone)]
struct KeyModel {
    location: String,
    cdn: String,
    /// Session arrivals a minute.
    arrivals: f64,
    /// Multiplier on every recorded delivery speed.
    speed: f64,
    /// Share of 4G viewers (the location's).
    mobile: f64,
    benchmarked: bool,
}

/// What an incident does to the replay of a key's sessions.
#[derive(Debug, Clone, Copy)]
struct Effect {
    /// Multiplier on delivery speed (1/3: every chunk takes three times as long).
    speed: f64,
    /// Chance per chunk of a hiccup that adds seconds to its delivery.
    hiccup: f64,
    /// Multiplier on the startup (the first two deliveries and the player's start).
    startup: f64,
    /// Chance per report of a fatal error (the session ends), and added to failed starts.
    errors: f64,
    silent: bool,
}

const CLEAN: Effect = Effect {
    speed: 1.0,
    hiccup: 0.0,
    startup: 1.0,
    errors: 0.0,
    silent: false,
};

#[derive(Debug, Clone)]
struct Planned {
    injected: Injected,
    effect: Effect,
}

impl Planned {
    fn hits(&self, k: &KeyModel, ts: i64) -> bool {
        let i = &self.injected;
        ts >= i.start
            && ts < i.end
            && k.cdn == i.cdn
            && match i.kind {
                IncidentKind::RegionalCdnDegradation => k.location.starts_with(&i.location),
                _ => k.location == i.location,
            }
    }
}

/// The player's view of one replayed session: what it played and stalled when, the chunks
/// it received.
#[derive(Default)]
struct Replay {
    /// (from, to, stalled)
    spans: Vec<(i64, i64, bool)>,
    /// (delivered at, kbit, delivery ms, bitrate kbps)
    chunks: Vec<(i64, f64, f64, f64)>,
    playing_from: i64,
    startup_ms: u64,
    end: i64,
}

/// The player's buffer level at which it requests the next chunk (the dataset's fitted 12 s).
const BUFFER_MS: f64 = 12_000.0;
/// Minutes the world runs before it sends anything (longer than any session).
const BURN_IN_MINUTES: i64 = 15;

struct World {
    rng: Rng,
    traces: std::rc::Rc<Vec<Trace>>,
    /// Indices of the Wi-Fi and the 4G traces.
    wifi: Vec<usize>,
    cellular: Vec<usize>,
    keys: Vec<KeyModel>,
    incidents: Vec<Planned>,
    pending: Vec<Report<'static>>,
    next_id: u64,
    now: i64,
    /// Nothing before this is sent (see [`World::run`]).
    emit_from: i64,
    end: i64,
    load: f64,
    buffer: std::collections::VecDeque<Event>,
    /// What strong Wi-Fi sees, kbps and startup ms (the probes' view).
    strong_kbps: f64,
    strong_startup_ms: f64,
}

/// Mean reports a session sends, measured on this world's quiet traffic (viewers leave at a
/// log-normal median of 4 minutes or at the trace's end; players report every 10, 20, 30 s).
const REPORTS_PER_SESSION: f64 = 11.0;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl World {
    fn new(
        traces: std::rc::Rc<Vec<Trace>>,
        seed: u64,
        regions: usize,
        cities: usize,
        cdns: usize,
        median_reports: f64,
    ) -> World {
        let mut rng = Rng::new(seed ^ 0x1a05_0de0);
        let n = regions * cities * cdns;
        // Popularity by a shuffled Zipf rank, so that big and small keys mix in every region.
        let ranks = shuffled(&mut rng, n);
        let zipf = |r: usize| 1.0 / (r as f64 + 1.0).powf(0.8);
        let median_weight = zipf(n / 2);
        let mut keys = Vec::new();
        for r in 0..regions {
            for c in 0..cities {
                let location = format!("R{r:02}/Z{c}/City{r}x{c}");
                let mobile = 0.1 + 0.5 * rng.f64();
                let base = rng.lognormal(0.0, 0.1);
                for d in 0..cdns {
                    let reports = median_reports * zipf(ranks[keys.len()]) / median_weight;
                    keys.push(KeyModel {
                        location: location.clone(),
                        cdn: format!("cdn-{}", (b'k' + d as u8) as char),
                        arrivals: reports / REPORTS_PER_SESSION,
                        speed: base * rng.lognormal(0.0, 0.05),
                        mobile,
                        benchmarked: rng.f64() >= 0.1,
                    });
                }
            }
        }
        let strong = |f: fn(&Trace) -> f64| {
            median(
                traces
                    .iter()
                    .filter(|t| !t.mobile() && t.signal == "strong")
                    .map(f)
                    .collect(),
            )
        };
        World {
            rng,
            wifi: (0..traces.len()).filter(|&i| !traces[i].mobile()).collect(),
            cellular: (0..traces.len()).filter(|&i| traces[i].mobile()).collect(),
            strong_kbps: strong(|t| t.mean_thr_kbps),
            strong_startup_ms: strong(|t| t.startup_ms),
            traces,
            keys,
            incidents: Vec::new(),
            pending: Vec::new(),
            next_id: 0,
            now: 0,
            emit_from: 0,
            end: 0,
            load: 1.0,
            buffer: Default::default(),
        }
    }

    /// The world from `start` for `minutes` at `load`. It runs from a quarter of an hour
    /// before, sending nothing, so that its sessions are as many and as old as they always
    /// are when the first report goes out (seeding only sessions that began in the minutes
    /// before `start` left the first windows with more sessions, and more of them past their
    /// slow first chunks, than any later: keys learned offsets from them and three paged
    /// when the mix settled, on a quiet night).
    fn run(mut self, start: i64, minutes: i64, load: f64) -> World {
        self.now = start - BURN_IN_MINUTES * MINUTE;
        self.emit_from = start;
        self.end = start + minutes * MINUTE;
        self.load = load;
        self
    }

    fn effect(&self, k: usize, ts: i64) -> Effect {
        let key = &self.keys[k];
        let mut e = CLEAN;
        for p in self.incidents.iter().filter(|p| p.hits(key, ts)) {
            e.speed *= p.effect.speed;
            e.hiccup += p.effect.hiccup;
            e.startup *= p.effect.startup;
            e.errors += p.effect.errors;
            e.silent |= p.effect.silent;
        }
        e
    }

    /// A chunk's delivery time at `at` on key `k`.
    fn delivery(&mut self, k: usize, recorded_ms: f64, at: i64) -> f64 {
        let e = self.effect(k, at);
        let mut d = recorded_ms / (self.keys[k].speed * e.speed);
        if self.rng.chance(e.hiccup) {
            // A cache miss, a retried request: Pareto seconds.
            d += (3_000.0 / self.rng.f64().max(1e-6).powf(1.0 / 1.5)).min(30_000.0);
        }
        d
    }

    /// Replays trace `t` for a viewer who arrives at `at` and stays `life` ms at most.
    fn replay(&mut self, k: usize, t: usize, at: i64, life: i64) -> Replay {
        let traces = self.traces.clone();
        let trace = &traces[t];
        let chunk_ms = trace.chunk_s * 1000.0;
        let e = self.effect(k, at);
        let player = self.rng.lognormal((300.0f64).ln(), 0.4);
        let first = self.delivery(k, trace.delivery_ms[0], at);
        let second = self.delivery(k, trace.delivery_ms[1], at + first as i64);
        let startup = (player + first + second) * e.startup;
        let mut r = Replay {
            startup_ms: startup as u64,
            playing_from: at + startup as i64,
            ..Replay::default()
        };
        r.chunks.push((
            r.playing_from,
            trace.size_kbit[1],
            second,
            trace.bitrate_kbps[1],
        ));
        let leave = at + life;
        let mut now = r.playing_from as f64;
        let mut level = chunk_ms;
        for i in 2..trace.delivery_ms.len() {
            if now as i64 >= leave {
                break;
            }
            if level > BUFFER_MS {
                r.spans
                    .push((now as i64, (now + level - BUFFER_MS) as i64, false));
                now += level - BUFFER_MS;
                level = BUFFER_MS;
            }
            let d = self.delivery(k, trace.delivery_ms[i], now as i64);
            if d <= level {
                r.spans.push((now as i64, (now + d) as i64, false));
                level -= d;
            } else {
                r.spans.push((now as i64, (now + level) as i64, false));
                r.spans.push(((now + level) as i64, (now + d) as i64, true));
                level = 0.0;
            }
            now += d;
            level += chunk_ms;
            r.chunks
                .push((now as i64, trace.size_kbit[i], d, trace.bitrate_kbps[i]));
        }
        r.spans.push((now as i64, (now + level) as i64, false));
        r.end = ((now + level) as i64).min(leave);
        r
    }

    /// A viewer arriving at key `k` at `at`: its reports go to `pending`.
    fn session(&mut self, k: usize, at: i64) {
        if self.effect(k, at).silent {
            return; // the player cannot even reach the CDN: no report
        }
        let mobile = self.rng.chance(self.keys[k].mobile);
        let n = if mobile {
            self.cellular.len()
        } else {
            self.wifi.len()
        } as u64;
        let pick = self.rng.below(n) as usize;
        let t = if mobile {
            self.cellular[pick]
        } else {
            self.wifi[pick]
        };
        let life = (self.rng.lognormal((4.0f64).ln(), 0.7) * MINUTE as f64) as i64;
        let interval = [10_000, 20_000, 30_000][self.rng.below(3) as usize];
        self.next_id += 1;
        let id: std::borrow::Cow<'static, str> = format!("r{:x}", self.next_id).into();
        let key = self.keys[k].clone();
        let base = Report {
            session_id: id,
            asn: Some(64_700 + (self.next_id % 5) as u32),
            device: Some(if mobile { "phone" } else { "tv" }.into()),
            ..Report::new(key.location, key.cdn, at)
        };
        let fail_start = if mobile { 0.01 } else { 0.004 } + self.effect(k, at).errors;
        if self.rng.chance(fail_start) {
            let ts = at + 2_000 + self.rng.below(6_000) as i64;
            self.pending.push(Report {
                ts,
                played_ms: 0,
                rebuffer_ms: 0,
                error: Some("E_START".into()),
                ..base
            });
            return;
        }
        let r = self.replay(k, t, at, life.max(20_000));
        let mut from = at;
        let mut started = false;
        while from < r.end {
            let to = (from + interval).min(r.end);
            let overlap = |a: i64, b: i64| (b.min(to) - a.max(from)).max(0) as u64;
            let played = r
                .spans
                .iter()
                .filter(|s| !s.2)
                .map(|s| overlap(s.0, s.1))
                .sum();
            let stalled = r
                .spans
                .iter()
                .filter(|s| s.2)
                .map(|s| overlap(s.0, s.1))
                .sum();
            let delivered: Vec<_> = r
                .chunks
                .iter()
                .filter(|c| c.0 > from && c.0 <= to)
                .collect();
            let kbit: f64 = delivered.iter().map(|c| c.1).sum();
            let ms: f64 = delivered.iter().map(|c| c.2).sum();
            let startup = (!started && r.playing_from <= to).then_some(r.startup_ms);
            started |= startup.is_some();
            let fatal = self.rng.chance(self.effect(k, to).errors + 0.0003);
            self.pending.push(Report {
                ts: to,
                played_ms: played,
                rebuffer_ms: stalled,
                startup_ms: startup,
                throughput_kbps: (ms > 0.0).then(|| (kbit * 1000.0 / ms).round().max(1.0)),
                bitrate_kbps: delivered.last().map(|c| c.3),
                error: fatal.then(|| "E_SEGMENT".into()),
                ..base.clone()
            });
            if fatal {
                break;
            }
            from = to;
        }
    }

    fn benchmarks(&mut self, ts: i64) {
        for key in self.keys.clone() {
            if !key.benchmarked {
                continue;
            }
            let noise = self.rng.lognormal(0.0, 0.05);
            self.buffer.push_back(Event::Benchmark(Benchmark {
                ts,
                location: key.location,
                cdn: key.cdn,
                throughput_kbps: Some(self.strong_kbps * key.speed * 0.9 * noise),
                rebuffer_ratio: Some(0.002),
                startup_ms: Some(self.strong_startup_ms / key.speed + 300.0),
                error_rate: Some(0.003),
            }));
        }
    }

    /// One minute of traffic into the buffer, in event-time order.
    fn minute(&mut self) {
        let (from, to) = (self.now, self.now + MINUTE);
        if (from - MIDNIGHT).rem_euclid(5 * MINUTE) == 0 && from >= self.emit_from {
            self.benchmarks(from);
        }
        for k in 0..self.keys.len() {
            for _ in 0..poisson(&mut self.rng, self.keys[k].arrivals * self.load) {
                let at = from + self.rng.below(MINUTE as u64) as i64;
                self.session(k, at);
            }
        }
        let (mut due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|r| r.ts < to);
        self.pending = rest;
        // An outage silences the sessions already playing too.
        let emit_from = self.emit_from;
        due.retain(|r| r.ts >= emit_from);
        due.retain(|r| {
            let k = self
                .keys
                .iter()
                .position(|k| k.location == r.location && k.cdn == r.cdn);
            k.is_none_or(|k| !self.effect(k, r.ts).silent)
        });
        due.sort_by_key(|r| r.ts);
        self.buffer.extend(due.into_iter().map(Event::Report));
        self.now = to;
    }

    /// The incidents' labels. A slower CDN stretches the first deliveries too, so its
    /// startup times are as much its symptom as throughput and stalls.
    fn labels(&self) -> Labels {
        let locations: Vec<String> = self.keys.iter().map(|k| k.location.clone()).collect();
        let mut l = labelled::labels(self.incidents.iter().map(|p| &p.injected), &locations);
        for (l, p) in l.incidents.iter_mut().zip(&self.incidents) {
            if p.effect.speed < 1.0 {
                l.metrics.push("startup_ms".into());
            }
        }
        l
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

/// Each key's reports a window over `minutes` of quiet traffic from `start`;
/// `REAL_SESSIONS_KEYS=1` prints each key's share of 4G viewers, size, rebuffering and
/// failures (what the recorded sessions make of the world).
fn sizes(w: World, start: i64, minutes: i64) -> Vec<f64> {
    let keys: Vec<(String, String, f64)> = w
        .keys
        .iter()
        .map(|k| (k.location.clone(), k.cdn.clone(), k.mobile))
        .collect();
    // Per key: reports, stalled ms, watched ms, errors.
    let mut sums = vec![[0.0; 4]; keys.len()];
    for e in w.run(start, minutes, 1.0) {
        if let Event::Report(r) = e
            && let Some(i) = keys.iter().position(|k| k.0 == r.location && k.1 == r.cdn)
        {
            let s = &mut sums[i];
            s[0] += 1.0;
            s[1] += r.rebuffer_ms as f64;
            s[2] += (r.rebuffer_ms + r.played_ms) as f64;
            s[3] += f64::from(u8::from(r.error.is_some()));
        }
    }
    if std::env::var_os("REAL_SESSIONS_KEYS").is_some() {
        for (k, s) in keys.iter().zip(&sums) {
            eprintln!(
                "{} {}: 4G {:.2}, {:.1} reports a window, rebuffering {:.2} %, failures {:.2} %",
                k.0,
                k.1,
                k.2,
                s[0] / minutes as f64,
                100.0 * s[1] / s[2].max(1.0),
                100.0 * s[3] / s[0].max(1.0)
            );
        }
    }
    sums.iter().map(|s| s[0] / minutes as f64).collect()
}

/// `REAL_SESSIONS_TRACE=<location>|<cdn>` prints that key's reports as they go to detection.
fn traced(world: World) -> impl Iterator<Item = Event> {
    let key = std::env::var("REAL_SESSIONS_TRACE").ok();
    world.inspect(move |e| {
        if let (Some(k), Event::Report(r)) = (&key, e)
            && *k == format!("{}|{}", r.location, r.cdn)
        {
            eprintln!(
                "TRACE {} {} played {} stalled {} startup {:?} kbps {:?} error {:?}",
                qos_sentinel::time::format_ms(r.ts),
                r.session_id,
                r.played_ms,
                r.rebuffer_ms,
                r.startup_ms,
                r.throughput_kbps,
                r.error
            );
        }
    })
}

/// The scenario of one seed: 144 keys (median 15 reports a window), 150 evening minutes,
/// nine incidents after 40 quiet minutes, each on a key picked by its measured size.
fn scenario(traces: &std::rc::Rc<Vec<Trace>>, seed: u64) -> (World, Vec<&'static str>) {
    let start = MIDNIGHT + 18 * 60 * MINUTE;
    let world = || World::new(traces.clone(), seed, 8, 6, 3, 15.0);
    let size = sizes(world(), start, 40);
    let mut w = world();
    let order = shuffled(&mut Rng::new(seed ^ 0x5eed), w.keys.len());
    let slower = Effect {
        speed: 1.0 / 3.0,
        ..CLEAN
    };
    let plan: Vec<Plan<Effect>> = vec![
        (IncidentKind::Degradation, slower, 10.0, 30.0, 14),
        (IncidentKind::Degradation, slower, 30.0, 300.0, 10),
        (
            IncidentKind::Degradation,
            Effect {
                hiccup: 0.15,
                ..CLEAN
            },
            10.0,
            30.0,
            16,
        ),
        (
            IncidentKind::FailureSpike,
            Effect {
                errors: 0.12,
                ..CLEAN
            },
            10.0,
            30.0,
            14,
        ),
        (
            IncidentKind::FailureSpike,
            Effect {
                errors: 0.12,
                ..CLEAN
            },
            30.0,
            300.0,
            10,
        ),
        (
            IncidentKind::StartupRegression,
            Effect {
                startup: 3.0,
                ..CLEAN
            },
            20.0,
            90.0,
            18,
        ),
        (
            IncidentKind::Outage,
            Effect {
                silent: true,
                ..CLEAN
            },
            10.0,
            30.0,
            12,
        ),
        (IncidentKind::Degradation, slower, 5.0, 10.0, 16),
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
    let (planned, at) = schedule(plan, &keys, &size, &order, start + 40 * MINUTE, 23_000);
    let mut bands = Vec::new();
    for (injected, effect, band) in planned {
        bands.push(band);
        w.incidents.push(Planned { injected, effect });
    }
    // A CDN slower over one region's keys, each small.
    w.incidents.push(Planned {
        injected: Injected {
            kind: IncidentKind::RegionalCdnDegradation,
            location: "R05/".into(),
            cdn: "cdn-l".into(),
            start: at + 5 * MINUTE + 31_000,
            end: at + 20 * MINUTE,
            asn: None,
        },
        effect: Effect {
            speed: 0.4,
            ..CLEAN
        },
    });
    bands.push("regional");
    (w.run(start, 150, 1.0), bands)
}

/// `REAL_SESSIONS_SEEDS=4,5,6` runs other seeds than `default`.
fn seeds(default: &[u64]) -> Vec<u64> {
    std::env::var("REAL_SESSIONS_SEEDS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// What this version catches on real sessions (README, "Measured detection quality"): floors
/// against regressions, not issue #17's targets.
#[test]
fn real_sessions_incidents_are_caught_per_band() {
    let traces = std::rc::Rc::new(traces());
    let cfg = Config::default();
    let mut totals = Totals::default();
    let mut versus = Versus::default();
    let mut scores = Vec::new();
    for seed in seeds(&[1, 2, 3]) {
        let (world, bands) = scenario(&traces, seed);
        let labels = world.labels();
        let summary = run_stream(&cfg, traced(world));
        eprintln!("seed {seed}: {} reports", summary.reports);
        scores.push(totals.add(seed, &summary.alerts, &labels, &bands));
        let reference = reference(scenario(&traces, seed).0, Params::default());
        versus.add(&summary.alerts, &reference, &labels, &bands);
    }
    eprintln!("{totals:?}");
    // The plain per-key reference issue #17 measured against (Poisson tails, z-scores, two
    // windows to fire): about as many caught, at hundreds of false alerts (2026-12-06: 16
    // of 27 and 385 false alerts against 20 and 4).
    eprintln!("{versus:?}");
    assert!(versus.ours.0 >= versus.reference.0, "{versus:?}");
    assert!(versus.ours.1 * 10 < versus.reference.1, "{versus:?}");
    for s in &scores {
        eprintln!("{s:?}");
    }
    // Each key learns its usual rebuffering over the probes' (before, seed 1's precision
    // was 0.46: keys and CDN aggregates of 4G-heavy locations paged on their usual stalls).
    assert!(scores.iter().all(|s| s.precision >= 0.8), "{scores:#?}");
    assert!(totals.recall("30+") >= 0.85, "{totals:?}");
    assert_eq!(totals.recall("regional"), 1.0, "{totals:?}");
    let caught: usize = totals.0.values().map(|t| t.1).sum();
    assert!(caught >= 16, "{totals:?}");
    // Rebuffering's sequential test of stalled sessions (seeds 1 and 3's 5-10 keys and seed
    // 1's 10-30 throughput-and-stalls key: a CDN three times slower over a few sessions,
    // missed by every window's tests as the sessions' histories and the key's usual share
    // learned the stalls; the plain reference caught the two 5-10 ones by its count of
    // stalled reports): 17 before.
    assert!(caught >= 20, "{totals:?}");
}

/// Quiet nights of real sessions: 8 regions x 10 cities x 4 CDNs (320 keys) at 0.4 of the
/// evening's load for 6 hours from midnight.
#[test]
fn quiet_nights_of_real_sessions() {
    let traces = std::rc::Rc::new(traces());
    let mut lines = Vec::new();
    for seed in seeds(&[7, 8]) {
        let world = World::new(traces.clone(), seed, 8, 10, 4, 15.0).run(MIDNIGHT, 360, 0.4);
        let summary = run_stream(&Config::default(), traced(world));
        let firing = firing_lines(&summary.alerts);
        eprintln!(
            "quiet seed {seed}: {} reports, {} tests, {} firing",
            summary.reports,
            summary.counters.tests,
            firing.len()
        );
        for l in &firing {
            eprintln!("  {l}");
        }
        lines.extend(firing);
    }
    // Nothing on these seeds (seeds 4 and 5 still raise two rebuffering pages and one
    // throughput page: README). Before the z-test of a few session starts was removed in
    // favour of the sequential test alone, seeds 7 and 8 raised three startup pages on 4-6
    // heavy-tailed recorded starts (p = 1e-7); before a run's stalled session-windows
    // counted in the key's learned clumps, sessions of one key that turned weak for a few
    // windows each paged on rebuffering (p = 7e-12 on an earlier version of this world);
    // before a level test's variance was pulled towards the key's usual one, seed 7 paged
    // "5291 vs 10036 kbps over 311 reports" (checked 2026-12-06).
    assert!(lines.is_empty(), "{lines:#?}");
}

/// The plain reference (`labelled::reference`) on the quiet nights of
/// `quiet_nights_of_real_sessions` (`REAL_SESSIONS_SEEDS` for others), at `REFERENCE_P`
/// (default 1e-3): it pages where qos-sentinel raises nothing or little (README, "Real
/// recorded sessions"). `cargo test --test real_sessions reference -- --ignored --nocapture`.
#[test]
#[ignore]
fn the_reference_on_quiet_nights() {
    let traces = std::rc::Rc::new(traces());
    for seed in seeds(&[7, 8]) {
        let world = || World::new(traces.clone(), seed, 8, 10, 4, 15.0).run(MIDNIGHT, 360, 0.4);
        let ours = run_stream(&Config::default(), world()).alerts;
        quiet_versus(seed, &ours, &reference(world(), Params::default()));
    }
}
