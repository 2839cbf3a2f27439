//! Simulated traffic, in the spirit of Eventsim: many locations and CDNs with skewed
//! popularity, a daily load curve, heavy-tailed per-session quality, a few sessions on terrible
//! home networks (noise, not incidents), benchmark updates every few minutes, and scheduled
//! incidents of several kinds. Deterministic for a seed; emits events in event-time order.

pub mod feed;
mod labels;
pub mod network;
mod rng;

pub use labels::{LabelledIncident, Labels};
pub use network::Networks;
pub use rng::Rng;

use serde::{Deserialize, Serialize};

use crate::decode::{Benchmark, Report};
use crate::incident::Scope;
use crate::time::Millis;
use rng::cumulative;

const CITIES: &[&str] = &[
    "IN/MH/Mumbai",
    "IN/DL/Delhi",
    "US/NY/NewYork",
    "BR/SP/SaoPaulo",
    "IN/KA/Bengaluru",
    "US/CA/LosAngeles",
    "GB/ENG/London",
    "BR/RJ/RioDeJaneiro",
    "ID/JK/Jakarta",
    "DE/BE/Berlin",
    "MX/CMX/MexicoCity",
    "IN/TG/Hyderabad",
    "FR/IDF/Paris",
    "US/TX/Dallas",
    "JP/13/Tokyo",
    "IN/TN/Chennai",
    "BR/MG/BeloHorizonte",
    "US/IL/Chicago",
    "NG/LA/Lagos",
    "GB/ENG/Manchester",
    "IN/WB/Kolkata",
    "AU/NSW/Sydney",
    "ZA/GT/Johannesburg",
    "DE/BY/Munich",
    "EG/C/Cairo",
    "BR/RS/PortoAlegre",
    "US/WA/Seattle",
    "IN/GJ/Ahmedabad",
    "CA/ON/Toronto",
    "ES/MD/Madrid",
];
const DEVICES: &[&str] = &["tv", "mobile", "desktop", "tablet", "console"];
const ERRORS: &[&str] = &["E_NETWORK", "E_MANIFEST_404", "E_DRM", "E_DECODE"];

/// Kinds of injected incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// One location+CDN: throughput collapses and rebuffering rises.
    Degradation,
    /// One CDN across every location whose id starts with a region prefix.
    RegionalCdnDegradation,
    /// Playback failures spike for one location+CDN.
    FailureSpike,
    /// Startup time regresses for one location+CDN.
    StartupRegression,
    /// One location+CDN stops sending reports at all (players cannot even start).
    Outage,
}

impl IncidentKind {
    /// Metrics the incident visibly moves.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            IncidentKind::Degradation | IncidentKind::RegionalCdnDegradation => {
                &["throughput_kbps", "rebuffer_ratio"]
            }
            IncidentKind::FailureSpike => &["failure_rate"],
            IncidentKind::StartupRegression => &["startup_ms"],
            IncidentKind::Outage => &["report_volume"],
        }
    }
}

/// One scheduled incident. `location` is an exact id, or for regional incidents a prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Injected {
    pub kind: IncidentKind,
    pub location: String,
    pub cdn: String,
    #[serde(with = "crate::time")]
    pub start: Millis,
    #[serde(with = "crate::time")]
    pub end: Millis,
    /// Only sessions on this network (ASN) are hit: a peering or ISP problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
}

impl Injected {
    /// Whether a session on `asn` at this key and time is hit.
    fn hits(&self, location: &str, cdn: &str, ts: Millis, asn: Option<u32>) -> bool {
        (self.asn.is_none() || self.asn == asn)
            && ts >= self.start
            && ts < self.end
            && cdn == self.cdn
            && match self.kind {
                IncidentKind::RegionalCdnDegradation => location.starts_with(&self.location),
                _ => location == self.location,
            }
    }

    /// The per-key scopes a detector is expected to raise for this incident.
    pub fn scopes(&self, locations: &[String]) -> Vec<Scope> {
        match self.kind {
            IncidentKind::RegionalCdnDegradation => std::iter::once(Scope::cdn_wide(&self.cdn))
                .chain(
                    crate::incident::prefix_of(&self.location)
                        .or(Some(self.location.trim_end_matches('/')))
                        .filter(|r| !r.is_empty())
                        .map(|r| Scope::cdn_under(r, &self.cdn)),
                )
                .chain(
                    locations
                        .iter()
                        .filter(|l| l.starts_with(&self.location))
                        .map(|l| Scope::pair(l, &self.cdn)),
                )
                .collect(),
            _ => vec![Scope::pair(&self.location, &self.cdn)],
        }
    }

    pub fn describe(&self) -> String {
        let what = match self.kind {
            IncidentKind::Degradation => format!("{} degrades at {}", self.cdn, self.location),
            IncidentKind::RegionalCdnDegradation => {
                format!("{} degrades across {}*", self.cdn, self.location)
            }
            IncidentKind::FailureSpike => {
                format!(
                    "playback failures spike on {} at {}",
                    self.cdn, self.location
                )
            }
            IncidentKind::StartupRegression => {
                format!(
                    "startup time regresses on {} at {}",
                    self.cdn, self.location
                )
            }
            IncidentKind::Outage => {
                format!("{} stops serving {} (no reports)", self.cdn, self.location)
            }
        };
        format!(
            "{what}, {} to {}",
            crate::time::format_ms(self.start),
            crate::time::format_ms(self.end)
        )
    }
}

/// Parameters of a simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Event time the simulation starts at.
    pub start: Millis,
    pub duration: Millis,
    pub locations: usize,
    pub cdns: usize,
    /// Concurrent sessions at the daily peak.
    pub peak_sessions: usize,
    /// Each session reports once per interval.
    pub report_interval: Millis,
    /// Each (location, cdn) gets a new benchmark this often.
    pub benchmark_interval: Millis,
    /// Share of sessions on a terrible home network.
    pub terrible_share: f64,
    /// Share of (location, cdn) keys whose CDN publishes no benchmark at all.
    pub unbenchmarked_share: f64,
    /// How sessions' networks differ ([`network`]).
    pub networks: Networks,
    pub incidents: Vec<Injected>,
}

impl SimConfig {
    /// A quiet world: no incidents.
    pub fn quiet(seed: u64, start: Millis, duration: Millis) -> Self {
        SimConfig {
            seed,
            start,
            duration,
            locations: 24,
            cdns: 4,
            peak_sessions: 4_000,
            report_interval: 20_000,
            benchmark_interval: 300_000,
            terrible_share: 0.01,
            unbenchmarked_share: 0.0,
            networks: Networks::Even,
            incidents: Vec::new(),
        }
    }

    /// The demo's story: four incidents of different kinds, staggered over `duration`.
    pub fn demo(seed: u64, start: Millis, duration: Millis) -> Self {
        let mut c = Self::quiet(seed, start, duration);
        let at = |f: f64| start + (duration as f64 * f) as Millis;
        let names = location_names(c.locations);
        c.incidents = vec![
            Injected {
                kind: IncidentKind::Degradation,
                location: names[0].clone(),
                cdn: "cdn-a".into(),
                start: at(0.12),
                end: at(0.30),
                asn: None,
            },
            Injected {
                kind: IncidentKind::FailureSpike,
                location: names[1].clone(),
                cdn: "cdn-b".into(),
                start: at(0.30),
                end: at(0.45),
                asn: None,
            },
            Injected {
                kind: IncidentKind::StartupRegression,
                location: names[2].clone(),
                cdn: "cdn-a".into(),
                start: at(0.48),
                end: at(0.65),
                asn: None,
            },
            Injected {
                kind: IncidentKind::RegionalCdnDegradation,
                location: "IN/".into(),
                cdn: "cdn-c".into(),
                start: at(0.68),
                end: at(0.85),
                asn: None,
            },
            // At the same time as another incident, elsewhere: on-call gets both.
            Injected {
                kind: IncidentKind::Outage,
                location: names[3].clone(),
                cdn: "cdn-a".into(),
                start: at(0.35),
                end: at(0.47),
                asn: None,
            },
        ];
        c
    }
}

/// Location ids: real-looking cities first, synthetic ones beyond them.
/// Networks (ASNs) per location; sessions spread evenly over them.
pub const NETWORKS_PER_LOCATION: u32 = 5;

/// The `k`-th network (ASN) of the location at `index` of [`location_names`].
pub const fn network(index: usize, k: u32) -> u32 {
    64_500 + index as u32 * 7 + k
}

pub fn location_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match CITIES.get(i) {
            Some(c) => (*c).to_string(),
            None => format!("ZZ/R{}/City{}", i % 97, i),
        })
        .collect()
}

pub fn cdn_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i {
            0..26 => format!("cdn-{}", (b'a' + i as u8) as char),
            _ => format!("cdn-{i}"),
        })
        .collect()
}

/// What clients at a key see on average when nothing is wrong.
#[derive(Debug, Clone, Copy)]
struct Quality {
    throughput_kbps: f64,
    stall_prob: f64,
    stall_mean_ms: f64,
    startup_ms: f64,
    error_rate: f64,
}

struct Session {
    id: u64,
    loc: usize,
    cdn: usize,
    asn: u32,
    device: usize,
    /// Multiplier on the key's throughput: heavy-tailed across sessions.
    quality: f64,
    terrible: bool,
    /// Its network class ([`network::CLASSES`]) with [`Networks::Classes`].
    class: Option<u8>,
    /// Offset of this session's reports inside each interval.
    phase: Millis,
    started: bool,
    remaining: u32,
}

/// One simulated input event.
#[derive(Debug, Clone)]
pub enum Event {
    Report(Report<'static>),
    Benchmark(Benchmark),
}

impl Event {
    pub fn ts(&self) -> Millis {
        match self {
            Event::Report(r) => r.ts,
            Event::Benchmark(b) => b.ts,
        }
    }
}

pub struct Simulator {
    cfg: SimConfig,
    rng: Rng,
    locations: Vec<String>,
    cdns: Vec<String>,
    loc_weights: Vec<f64>,
    cdn_weights: Vec<Vec<f64>>,
    quality: Vec<Vec<Quality>>,
    /// Stable per-key ratio of probe-measured to client-seen quality (last-mile offset).
    probe_offset: Vec<Vec<f64>>,
    sessions: Vec<Session>,
    next_session: u64,
    now: Millis,
    next_benchmark: Millis,
    buffer: std::collections::VecDeque<Event>,
}

impl Simulator {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let locations = location_names(cfg.locations.max(1));
        let cdns = cdn_names(cfg.cdns.max(1));
        // Zipf-like popularity of locations.
        let loc_weights: Vec<f64> = (0..locations.len())
            .map(|i| 1.0 / (i as f64 + 1.0).powf(0.9))
            .collect();
        let mut cdn_weights = Vec::new();
        let mut quality = Vec::new();
        let mut probe_offset = Vec::new();
        for _ in &locations {
            let base_tp = rng.lognormal(8.7, 0.35); // ~6 Mbps median across locations
            let mut w = Vec::new();
            let mut q = Vec::new();
            let mut o = Vec::new();
            for c in 0..cdns.len() {
                // Each location prefers some CDNs (traffic steering).
                w.push(rng.lognormal(0.0, 0.6) / (c as f64 + 1.0).sqrt());
                q.push(Quality {
                    throughput_kbps: base_tp * rng.lognormal(0.0, 0.2),
                    stall_prob: 0.04 * rng.lognormal(0.0, 0.3),
                    stall_mean_ms: 1_500.0,
                    startup_ms: 900.0 * rng.lognormal(0.0, 0.25),
                    error_rate: 0.004 * rng.lognormal(0.0, 0.4),
                });
                o.push(0.9 + 0.1 * rng.f64());
            }
            cdn_weights.push(cumulative(&w));
            quality.push(q);
            probe_offset.push(o);
        }
        let start = cfg.start;
        Simulator {
            loc_weights: cumulative(&loc_weights),
            rng,
            locations,
            cdns,
            cdn_weights,
            quality,
            probe_offset,
            sessions: Vec::new(),
            next_session: 0,
            now: start,
            next_benchmark: start,
            buffer: Default::default(),
            cfg,
        }
    }

    pub fn locations(&self) -> &[String] {
        &self.locations
    }

    pub fn cdns(&self) -> &[String] {
        &self.cdns
    }

    pub fn incidents(&self) -> &[Injected] {
        &self.cfg.incidents
    }

    /// Daily load curve: quiet at 04:00 UTC, peak at 20:00 UTC.
    fn load(&self, ts: Millis) -> f64 {
        let hour = (ts.rem_euclid(86_400_000)) as f64 / 3_600_000.0;
        let phase = (hour - 20.0) / 24.0 * 2.0 * std::f64::consts::PI;
        0.6 + 0.4 * phase.cos()
    }

    fn new_session(&mut self) -> Session {
        let loc = self.rng.pick(&self.loc_weights);
        let cdn = self.rng.pick(&self.cdn_weights[loc]);
        let id = self.next_session;
        self.next_session += 1;
        let terrible = self.rng.chance(self.cfg.terrible_share);
        let class =
            (self.cfg.networks == Networks::Classes).then(|| network::pick(&mut self.rng, loc));
        let sigma = class.map_or(0.35, |c| network::CLASSES[c as usize].session_sigma);
        Session {
            id,
            loc,
            cdn,
            asn: network(loc, self.rng.below(NETWORKS_PER_LOCATION as u64) as u32),
            device: self.rng.below(DEVICES.len() as u64) as usize,
            quality: self.rng.lognormal(0.0, sigma),
            terrible,
            class,
            phase: self.rng.below(self.cfg.report_interval as u64) as Millis,
            started: false,
            // Ten minutes on average, whatever the report interval.
            remaining: 1 + self
                .rng
                .exponential(600_000.0 / self.cfg.report_interval.max(1) as f64)
                as u32,
        }
    }

    fn effects(&self, loc: usize, cdn: usize, asn: u32, ts: Millis) -> (f64, f64, f64, f64) {
        // (throughput x, stall x, startup x, error rate override)
        let (mut tp, mut stall, mut startup, mut err) = (1.0, 1.0, 1.0, 0.0_f64);
        for inc in &self.cfg.incidents {
            if inc.hits(&self.locations[loc], &self.cdns[cdn], ts, Some(asn)) {
                match inc.kind {
                    IncidentKind::Degradation | IncidentKind::RegionalCdnDegradation => {
                        tp *= 0.3;
                        stall *= 5.0;
                    }
                    IncidentKind::FailureSpike => err = err.max(0.12),
                    IncidentKind::StartupRegression => startup *= 3.5,
                    IncidentKind::Outage => {}
                }
            }
        }
        (tp, stall, startup, err)
    }

    fn report(&mut self, i: usize, ts: Millis) -> Report<'static> {
        let interval = self.cfg.report_interval as f64;
        let s = &self.sessions[i];
        let (loc, cdn, terrible, quality) = (s.loc, s.cdn, s.terrible, s.quality);
        let class = s.class.map(|c| network::CLASSES[c as usize]);
        let q = self.quality[loc][cdn];
        let (tp_x, mut stall_x, mut startup_x, err_override) = self.effects(loc, cdn, s.asn, ts);
        let net = if terrible { 0.12 } else { 1.0 };
        let spread = match &class {
            Some(c) => {
                stall_x *= c.stalls;
                startup_x *= c.startup;
                c.throughput * network::report_throughput(&mut self.rng, c)
            }
            None => self.rng.lognormal(0.0, 0.15),
        };
        let throughput = q.throughput_kbps * quality * net * tp_x * spread;
        let stall_prob = (q.stall_prob * stall_x * if terrible { 12.0 } else { 1.0 }).min(0.95);
        let mut rebuffer = if self.rng.chance(stall_prob) {
            self.rng
                .exponential(q.stall_mean_ms * if terrible { 4.0 } else { 1.0 })
        } else {
            0.0
        };
        rebuffer = rebuffer.min(interval);
        let err_rate = if err_override > 0.0 {
            err_override
        } else {
            q.error_rate * class.map_or(1.0, |c| c.failures)
        };
        let failed = self
            .rng
            .chance(if terrible { err_rate * 5.0 } else { err_rate });
        let startup = (!self.sessions[i].started).then(|| {
            let base = q.startup_ms * startup_x * self.rng.lognormal(0.0, 0.4);
            (if terrible { base * 4.0 } else { base }) as u64
        });
        let s = &mut self.sessions[i];
        s.started = true;
        let played = if failed {
            (interval - rebuffer) * self.rng.f64()
        } else {
            interval - rebuffer
        };
        Report {
            ts,
            session_id: format!("s{:08x}", s.id).into(),
            location: self.locations[loc].clone().into(),
            cdn: self.cdns[cdn].clone().into(),
            asn: Some(s.asn),
            device: Some(DEVICES[s.device].into()),
            played_ms: played.max(0.0) as u64,
            rebuffer_ms: rebuffer as u64,
            startup_ms: startup,
            bitrate_kbps: Some((throughput * 0.7).min(8_000.0).round()),
            throughput_kbps: Some(throughput.round()),
            error: failed.then(|| ERRORS[self.rng.below(ERRORS.len() as u64) as usize].into()),
        }
    }

    fn benchmarks(&mut self, ts: Millis) {
        for l in 0..self.locations.len() {
            for c in 0..self.cdns.len() {
                // Deterministic per key, independent of the random stream.
                let h = (l as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    ^ (c as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
                if ((h >> 11) as f64 / (1u64 << 53) as f64) < self.cfg.unbenchmarked_share {
                    continue;
                }
                let q = self.quality[l][c];
                let off = self.probe_offset[l][c];
                let noise = |rng: &mut Rng| rng.lognormal(0.0, 0.04);
                // Probes see the key's normal quality a little better than clients do.
                // Terrible home networks stall 12x as often and 4x as long: part of normal.
                let terrible = 1.0 + self.cfg.terrible_share * 47.0;
                // Rates are calibrated on the location's clients: its mix of networks.
                let (stalls, failures) = match self.cfg.networks {
                    Networks::Even => (1.0, 1.0),
                    Networks::Classes => (
                        network::mean_at(l, |c| c.stalls),
                        network::mean_at(l, |c| c.failures),
                    ),
                };
                let stall_ratio = q.stall_prob * q.stall_mean_ms * terrible * stalls
                    / self.cfg.report_interval as f64;
                let b = Benchmark {
                    ts: ts + self.rng.below(5_000) as Millis,
                    location: self.locations[l].clone(),
                    cdn: self.cdns[c].clone(),
                    throughput_kbps: Some((q.throughput_kbps / off * noise(&mut self.rng)).round()),
                    rebuffer_ratio: Some(stall_ratio * off * noise(&mut self.rng)),
                    startup_ms: Some((q.startup_ms * off * noise(&mut self.rng)).round()),
                    error_rate: Some(q.error_rate * failures * off * noise(&mut self.rng)),
                };
                self.buffer.push_back(Event::Benchmark(b));
            }
        }
    }

    /// Advances one report interval, buffering its events.
    fn step(&mut self) {
        let t = self.now;
        if t >= self.next_benchmark {
            self.benchmarks(t);
            self.next_benchmark = t + self.cfg.benchmark_interval;
        }
        let target = (self.cfg.peak_sessions as f64 * self.load(t)) as usize;
        self.sessions.retain(|s| s.remaining > 0);
        while self.sessions.len() < target {
            let s = self.new_session();
            self.sessions.push(s);
        }
        let mut reports = Vec::with_capacity(self.sessions.len());
        for i in 0..self.sessions.len() {
            let ts = t + self.sessions[i].phase;
            let (loc, cdn) = (self.sessions[i].loc, self.sessions[i].cdn);
            let silenced = self.cfg.incidents.iter().any(|inc| {
                inc.kind == IncidentKind::Outage
                    && inc.hits(
                        &self.locations[loc],
                        &self.cdns[cdn],
                        ts,
                        Some(self.sessions[i].asn),
                    )
            });
            if !silenced {
                reports.push(self.report(i, ts));
            }
            self.sessions[i].remaining -= 1;
        }
        reports.sort_by_key(|r| r.ts);
        self.buffer.extend(reports.into_iter().map(Event::Report));
        self.now = t + self.cfg.report_interval;
    }
}

impl Iterator for Simulator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Some(e);
            }
            if self.now >= self.cfg.start + self.cfg.duration {
                return None;
            }
            self.step();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_ordered_and_skewed() {
        let cfg = SimConfig::quiet(3, 0, 600_000);
        let a: Vec<Event> = Simulator::new(cfg.clone()).collect();
        let b: Vec<Event> = Simulator::new(cfg).collect();
        assert_eq!(a.len(), b.len());
        assert!(a.len() > 10_000);
        let mut per_loc = std::collections::HashMap::<String, usize>::new();
        let mut last: Millis = 0;
        let mut disorder = 0;
        for e in &a {
            if let Event::Report(r) = e {
                *per_loc.entry(r.location.to_string()).or_default() += 1;
                disorder = disorder.max(last - r.ts);
                last = last.max(r.ts);
            }
        }
        assert!(
            disorder <= 20_000,
            "out of order by at most one interval: {disorder}"
        );
        let top = per_loc["IN/MH/Mumbai"];
        let tail = per_loc.values().min().copied().unwrap_or(0);
        assert!(top > 5 * tail, "popularity is skewed: {top} vs {tail}");
    }

    #[test]
    fn incidents_move_their_metric_only_in_scope_and_time() {
        let mut cfg = SimConfig::quiet(5, 0, 1_200_000);
        cfg.incidents = vec![Injected {
            kind: IncidentKind::FailureSpike,
            location: "IN/MH/Mumbai".into(),
            cdn: "cdn-a".into(),
            start: 600_000,
            end: 1_200_000,
            asn: None,
        }];
        let (mut before, mut during) = ((0, 0), (0, 0));
        for e in Simulator::new(cfg) {
            if let Event::Report(r) = e
                && r.location == "IN/MH/Mumbai"
                && r.cdn == "cdn-a"
            {
                let slot = if r.ts < 600_000 {
                    &mut before
                } else {
                    &mut during
                };
                slot.0 += 1;
                slot.1 += usize::from(r.failed());
            }
        }
        let rate = |(n, f): (usize, usize)| f as f64 / n as f64;
        assert!(rate(before) < 0.03, "{before:?}");
        assert!(rate(during) > 0.09, "{during:?}");
    }
}
