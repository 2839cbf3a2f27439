//! A plain per-key reference detector, the kind issue #17 compared qos-sentinel against:
//! each location+CDN key on its own, each one-minute window tested against the key's own
//! history (an exponentially weighted mean of its clean windows) with Poisson tails for
//! counts (failed reports, reports with stalls, reports a window) and z-scores for the
//! means of log throughput and log startup; two anomalous windows in a row fire, two normal
//! ones resolve; no grouping, no benchmarks, no sessions. It reads the same events as the
//! engine and answers with alerts the same scoring reads, so the labelled worlds can say
//! what such a detector catches and what it pages on where qos-sentinel does not.

use std::collections::{BTreeMap, HashMap};

use qos_sentinel::detect::Severity;
use qos_sentinel::incident::{Alert, Scope, Status};
use qos_sentinel::metric::Metric;
use qos_sentinel::sim::Event;
use statrs::distribution::{DiscreteCDF, Poisson};

use super::MINUTE;

/// Its knobs: the one-sided p-value a window must reach, and the windows a key learns before
/// it is tested.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub p: f64,
    pub warmup: u32,
}

impl Default for Params {
    /// p = 1e-3 (z = 3.1), ten windows; `REFERENCE_P` sets another p.
    fn default() -> Self {
        Params {
            p: std::env::var("REFERENCE_P")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1e-3),
            warmup: 10,
        }
    }
}

#[derive(Default)]
struct Win {
    n: f64,
    failed: f64,
    stalled: f64,
    tp: (f64, f64, f64),
    su: (f64, f64, f64),
}

/// A key's history: EWMA of its clean windows.
#[derive(Default)]
struct Base {
    seen: u32,
    count: f64,
    count_sq: f64,
    fail: f64,
    stall: f64,
    tp: (f64, f64),
    su: (f64, f64),
    tp_seen: u32,
    su_seen: u32,
    streak: [u32; 5],
    calm: [u32; 5],
    firing: [bool; 5],
}

const METRICS: [Metric; 5] = [
    Metric::FAILURE_RATE,
    Metric::REBUFFER_RATIO,
    Metric::THROUGHPUT_KBPS,
    Metric::STARTUP_MS,
    Metric::REPORT_VOLUME,
];

fn ewma(old: f64, new: f64, seen: u32) -> f64 {
    let a = (1.0 / f64::from(seen + 1)).max(0.05);
    old + a * (new - old)
}

fn upper(x: f64, mean: f64) -> f64 {
    match Poisson::new(mean.max(1e-9)) {
        Ok(d) if x >= 1.0 => d.sf(x as u64 - 1),
        _ => 1.0,
    }
}

/// Standard normal lower tail.
fn phi(z: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(-z / std::f64::consts::SQRT_2)
}

fn add(s: &mut (f64, f64, f64), v: f64) {
    s.0 += 1.0;
    s.1 += v;
    s.2 += v * v;
}

/// Runs the reference over `events` (reports in rough event-time order) and returns its
/// firing alerts.
pub fn reference(events: impl Iterator<Item = Event>, params: Params) -> Vec<Alert> {
    let mut open: BTreeMap<i64, HashMap<(String, String), Win>> = BTreeMap::new();
    let mut keys: BTreeMap<(String, String), Base> = BTreeMap::new();
    let mut alerts = Vec::new();
    let mut latest = i64::MIN;
    for e in events {
        let Event::Report(r) = e else { continue };
        let minute = r.ts.div_euclid(MINUTE);
        latest = latest.max(minute);
        let key = (r.location.to_string(), r.cdn.to_string());
        keys.entry(key.clone()).or_default();
        let w = open.entry(minute).or_default().entry(key).or_default();
        w.n += 1.0;
        w.failed += f64::from(u8::from(r.error.is_some()));
        w.stalled += f64::from(u8::from(r.rebuffer_ms > 0));
        if let Some(t) = r.throughput_kbps.filter(|t| *t > 0.0) {
            add(&mut w.tp, t.ln());
        }
        if let Some(s) = r.startup_ms.filter(|s| *s > 0) {
            add(&mut w.su, (s as f64).ln());
        }
        while let Some((&m, _)) = open.first_key_value() {
            if m >= latest - 1 {
                break;
            }
            let Some((m, wins)) = open.pop_first() else {
                break;
            };
            close(m, wins, &mut keys, params, &mut alerts);
        }
    }
    while let Some((m, wins)) = open.pop_first() {
        close(m, wins, &mut keys, params, &mut alerts);
    }
    alerts
}

fn close(
    minute: i64,
    mut wins: HashMap<(String, String), Win>,
    keys: &mut BTreeMap<(String, String), Base>,
    params: Params,
    alerts: &mut Vec<Alert>,
) {
    for (key, b) in keys.iter_mut() {
        let w = wins.remove(key).unwrap_or_default();
        let mut ps = [1.0; 5];
        if b.seen >= params.warmup {
            ps[0] = upper(w.failed, w.n * b.fail.max(0.002));
            ps[1] = upper(w.stalled, w.n * b.stall.max(0.005));
            // The window's mean against the spread of the key's window means.
            let z = |s: (f64, f64, f64), (mean, sq): (f64, f64)| {
                let sd = (sq - mean * mean).max(1e-6).sqrt();
                phi(-(s.1 / s.0 - mean) / sd)
            };
            if w.tp.0 > 0.0 && b.tp_seen >= params.warmup {
                ps[2] = z(w.tp, b.tp);
            }
            if w.su.0 > 0.0 && b.su_seen >= params.warmup {
                ps[3] = 1.0 - z(w.su, b.su);
            }
            // Reports come in sessions: the count's own window-to-window spread, not a
            // Poisson's.
            let sd = (b.count_sq - b.count * b.count).max(b.count).sqrt();
            ps[4] = phi((w.n - b.count) / sd);
        }
        for (i, p) in ps.iter().enumerate() {
            if *p < params.p {
                b.streak[i] += 1;
                b.calm[i] = 0;
            } else {
                b.streak[i] = 0;
                b.calm[i] += 1;
            }
            if b.streak[i] == 2 && !b.firing[i] {
                b.firing[i] = true;
                let scope = Scope::pair(&key.0, &key.1);
                let start = (minute - 1) * MINUTE;
                alerts.push(Alert {
                    id: format!("ref-{}-{}-{start}", scope, METRICS[i].as_str()),
                    status: Status::Firing,
                    rule: "reference".into(),
                    severity: Severity::Warning,
                    scope,
                    metric: METRICS[i],
                    observed: 0.0,
                    expected: None,
                    samples: w.n as u64,
                    p_value: Some(*p),
                    window_start: minute * MINUTE,
                    window_end: (minute + 1) * MINUTE,
                    started_at: start,
                    resolved_at: None,
                    summary: format!("reference: {} p = {p:.1e}", METRICS[i].as_str()),
                    parent_id: None,
                    cohort: None,
                    impact: None,
                    silenced_by: Vec::new(),
                });
            }
            if b.calm[i] >= 2 {
                b.firing[i] = false;
            }
        }
        // Learn from the window where nothing looked wrong.
        if ps.iter().all(|p| *p >= params.p) && !b.firing.iter().any(|f| *f) {
            b.count = ewma(b.count, w.n, b.seen);
            b.count_sq = ewma(b.count_sq, w.n * w.n, b.seen);
            if w.n > 0.0 {
                b.fail = ewma(b.fail, w.failed / w.n, b.seen);
                b.stall = ewma(b.stall, w.stalled / w.n, b.seen);
            }
            b.seen += 1;
            if w.tp.0 > 0.0 {
                let m = w.tp.1 / w.tp.0;
                b.tp.0 = ewma(b.tp.0, m, b.tp_seen);
                b.tp.1 = ewma(b.tp.1, m * m, b.tp_seen);
                b.tp_seen += 1;
            }
            if w.su.0 > 0.0 {
                let m = w.su.1 / w.su.0;
                b.su.0 = ewma(b.su.0, m, b.su_seen);
                b.su.1 = ewma(b.su.1, m * m, b.su_seen);
                b.su_seen += 1;
            }
        }
    }
}
