//! Each session against itself: a small key whose viewers are on very different networks.

use super::*;

/// Six keys of about 16 reports a window: a session starts at each key every window and
/// plays four (reporting every 15 s), each on a network of its own for its life (a fast home
/// at twice the probes' throughput, a slow one at a fifth, mobile at half...), so which
/// sessions happen to play moves a key's window mean more than a drop to a half does. From
/// window 25 to 35 every session at `L0` gets a third of its throughput when `drop`.
fn mixed_small_keys(drop: bool) -> Vec<Alert> {
    let mut e = Engine::new(Settings::default());
    let locs: Vec<String> = (0..6).map(|i| format!("XX/L{i}")).collect();
    for l in &locs {
        let row = Expected {
            throughput_kbps: Some(8_000.0),
            ..Default::default()
        };
        e.on_benchmark(l, "c", 0, Some(row));
    }
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
