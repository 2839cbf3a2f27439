//! Each session against itself: a small key whose viewers are on very different networks.

use super::*;

/// An engine with six keys `XX/L0`..`XX/L5` on CDN `c`, each benchmarked at `throughput`.
fn six_keys_at(throughput: f64) -> (Engine, Vec<String>) {
    let mut e = Engine::new(Settings::default());
    let locs: Vec<String> = (0..6).map(|i| format!("XX/L{i}")).collect();
    for l in &locs {
        let row = Expected {
            throughput_kbps: Some(throughput),
            ..Default::default()
        };
        e.on_benchmark(l, "c", 0, Some(row));
    }
    (e, locs)
}

/// Six keys of about 16 reports a window: a session starts at each key every window and
/// plays four (reporting every 15 s), each on a network of its own for its life (a fast home
/// at twice the probes' throughput, a slow one at a fifth, mobile at half...), so which
/// sessions happen to play moves a key's window mean more than a drop to a half does. From
/// window 25 to 35 every session at `L0` gets a third of its throughput when `drop`.
fn mixed_small_keys(drop: bool) -> Vec<Alert> {
    let (mut e, locs) = six_keys_at(8_000.0);
    const NETWORKS: [f64; 5] = [2.0, 0.2, 0.5, 1.0, 0.35];
    let mut out = Vec::new();
    for w in 0..45i64 {
        for tick in 0..4i64 {
            for (k, l) in locs.iter().enumerate() {
                // The sessions started in the last four windows.
                for started in (w - 3).max(0)..=w {
                    let id = started * 7 + k as i64;
                    let network =
                        NETWORKS[(id.wrapping_mul(2_654_435_761) >> 7).rem_euclid(5) as usize];
                    let noise = 1.0 + 0.25 * ((id * 31 + w * 7 + tick * 3) as f64).sin();
                    let slow = drop && k == 0 && (25..35).contains(&w);
                    let tp = 8_000.0 * network * noise / if slow { 3.0 } else { 1.0 };
                    let r = Report {
                        session_id: format!("{k}-{started}").into(),
                        throughput_kbps: Some(tp),
                        ..Report::new(l.clone(), "c", w * W + tick * 15_000 + k as i64 * 100)
                    };
                    e.on_report(&r, None);
                }
            }
        }
        out.extend(e.close_ready());
    }
    out.extend(e.close_until(46 * W));
    out
}

#[test]
fn a_small_key_of_mixed_networks_that_drops_is_caught_by_its_sessions() {
    let alerts = mixed_small_keys(true);
    let firing = crate::incident::firing(&alerts);
    assert_eq!(firing.len(), 1, "{alerts:#?}");
    let a = firing[0];
    assert_eq!(a.scope, Scope::pair("XX/L0", "c"), "{a:#?}");
    assert_eq!(a.metric, Metric::THROUGHPUT_KBPS);
    // Two windows to fire (fire_after), at most one more.
    assert!(a.window_start <= 27 * W, "{a:#?}");
    assert!(
        alerts
            .iter()
            .any(|a| a.status == Status::Resolved && a.window_start < 40 * W)
    );
    // Without the drop, the same mix of networks raises nothing.
    let quiet = mixed_small_keys(false);
    assert!(quiet.is_empty(), "{quiet:#?}");
}

/// A uniform number in [0, 1) from its arguments (deterministic).
fn uniform(a: i64, b: i64, c: i64) -> f64 {
    let mut x = (a as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (b as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)
        ^ (c as u64).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    x = x.wrapping_mul(0xd6e8_feb8_6659_fd93);
    x ^= x >> 32;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Six keys of about 16 reports a window (a session starts at each key every window and
/// plays four, reporting every 15 s); a report stalls now and then (4 %), most stalls short,
/// a few long. At `XX/L1` one session of each four is on a bad cell and stalls on every
/// report: what one viewer does, not the CDN. From window 25 to 35, when `stalls`, every
/// session at `XX/L0` stalls on 40 % of its reports.
fn stalling_small_keys(stalls: bool) -> Vec<Alert> {
    let mut e = Engine::new(Settings::default());
    let locs: Vec<String> = (0..6).map(|i| format!("XX/L{i}")).collect();
    for l in &locs {
        let row = Expected {
            rebuffer_ratio: Some(0.01),
            ..Default::default()
        };
        e.on_benchmark(l, "c", 0, Some(row));
    }
    let mut out = Vec::new();
    for w in 0..45i64 {
        for tick in 0..4i64 {
            for (k, l) in locs.iter().enumerate() {
                for started in (w - 3).max(0)..=w {
                    let id = started * 7 + k as i64;
                    let bad_cell = k == 1 && started % 4 == 0;
                    let chance = if stalls && k == 0 && (25..35).contains(&w) {
                        0.4
                    } else if bad_cell {
                        1.0
                    } else {
                        0.04
                    };
                    let stalled = uniform(id, w, tick) < chance;
                    // Pareto-like: most stalls under a second, a few most of the interval.
                    let rebuffer_ms = if stalled {
                        (400.0 / uniform(id, w, tick + 10).max(0.03)).min(13_000.0) as u64
                    } else {
                        0
                    };
                    let r = Report {
                        session_id: format!("{k}-{started}").into(),
                        played_ms: 15_000 - rebuffer_ms,
                        rebuffer_ms,
                        throughput_kbps: None,
                        ..Report::new(l.clone(), "c", w * W + tick * 15_000 + k as i64 * 100)
                    };
                    e.on_report(&r, None);
                }
            }
        }
        out.extend(e.close_ready());
    }
    out.extend(e.close_until(46 * W));
    out
}

#[test]
fn a_small_key_whose_sessions_start_stalling_is_caught_by_counting_them() {
    let alerts = stalling_small_keys(true);
    let firing = crate::incident::firing(&alerts);
    assert_eq!(firing.len(), 1, "{alerts:#?}");
    let a = firing[0];
    assert_eq!(a.scope, Scope::pair("XX/L0", "c"), "{a:#?}");
    assert_eq!(a.metric, Metric::REBUFFER_RATIO);
    // Within four windows of the change (a run's stalled session-windows count in the key's
    // learned clumps since 2026-12-06: a window later than before).
    assert!(a.window_start <= 29 * W, "{a:#?}");
    assert!(
        alerts
            .iter()
            .any(|a| a.status == Status::Resolved && a.window_start < 40 * W)
    );
    // One viewer stalling on every report (XX/L1's bad cells) is not an incident.
    let quiet = stalling_small_keys(false);
    assert!(quiet.is_empty(), "{quiet:#?}");
}

/// Six keys of about 24 reports a window: at each, 1.2 sessions start a window on average
/// and each ends with a chance of a fifth a window (so about six play), reporting every
/// 15 s. When `outage`, `XX/L0` stops serving 17 s into window 50 until window 62: its
/// sessions end there and none starts.
fn vanishing_small_keys(outage: bool) -> Vec<Alert> {
    let (mut e, locs) = six_keys_at(8_000.0);
    let (down, up) = (50 * W + 17_000, 62 * W);
    // Sessions as (key, id, first window, last window, offset of its reports).
    let mut sessions = Vec::new();
    for w in 0..75i64 {
        for k in 0..locs.len() as i64 {
            for j in 0..3 {
                if uniform(k, w, j) >= 0.4 {
                    continue;
                }
                let life = 1 + (uniform(k, w, j + 10).max(1e-9).ln() / 0.8f64.ln()) as i64;
                let offset = (uniform(k, w, j + 20) * 15_000.0) as i64;
                sessions.push((k, w * 3 + j, w, w + life - 1, offset));
            }
        }
    }
    let mut out = Vec::new();
    for w in 0..75i64 {
        for tick in 0..4i64 {
            for &(k, id, first, last, offset) in &sessions {
                let ts = w * W + tick * 15_000 + offset;
                if !(first..=last).contains(&w) {
                    continue;
                }
                // The outage ends every session it meets; none starts during it.
                if outage && k == 0 && ts >= down && (first * W) < up {
                    continue;
                }
                let r = Report {
                    session_id: format!("{k}-{id}").into(),
                    throughput_kbps: Some(8_000.0),
                    ..Report::new(locs[k as usize].clone(), "c", ts)
                };
                e.on_report(&r, None);
            }
        }
        out.extend(e.close_ready());
    }
    out.extend(e.close_until(76 * W));
    out
}

#[test]
fn a_small_key_whose_sessions_vanish_together_is_an_outage() {
    let alerts = vanishing_small_keys(true);
    let firing = crate::incident::firing(&alerts);
    assert_eq!(firing.len(), 1, "{alerts:#?}");
    let a = firing[0];
    assert_eq!(a.scope, Scope::pair("XX/L0", "c"), "{a:#?}");
    assert_eq!(a.metric, Metric::REPORT_VOLUME);
    assert!(
        a.expected.is_some_and(|e| e < 60.0),
        "a key too small for its count's test: {a:#?}"
    );
    assert!((51 * W..=56 * W).contains(&a.window_start), "{a:#?}");
    // Resolved once its reports are back (its silence is tested only while it lasts).
    let resolved = alerts
        .iter()
        .find(|r| r.status == Status::Resolved && r.id == a.id)
        .expect("resolved");
    assert!(resolved.window_start <= 72 * W, "{resolved:#?}");
    assert!(resolved.summary.contains("reports again"), "{resolved:#?}");
    // The same keys' sessions ending one by one, and keys falling silent with nothing
    // wrong, raise nothing.
    let quiet = vanishing_small_keys(false);
    assert!(quiet.is_empty(), "{quiet:#?}");
}
