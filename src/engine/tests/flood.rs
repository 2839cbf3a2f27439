//! A flood of new keys every window (#18): learned normals, the interner and the state
//! written to checkpoints stay under their caps, however long it lasts.

use std::fmt::Write;

use super::*;

/// New keys per window, windows (past the 120 windows after which unseen keys forget).
const NEW_KEYS: usize = 200_000;
const WINDOWS: i64 = 130;

#[test]
fn a_flood_of_new_keys_every_window_stays_under_the_caps() {
    let mut cfg = Settings::default();
    cfg.window.max_keys = 2_000;
    cfg.window.max_learned_keys = 6_000;
    let max_learned = cfg.window.max_learned_keys;
    let mut e = Engine::new(cfg);
    let mut loc = String::new();
    let mut sizes = Vec::new();
    for w in 0..WINDOWS {
        for i in 0..NEW_KEYS {
            loc.clear();
            let _ = write!(loc, "FL/{w}/{i}");
            let ts = w * W + (i as i64 * 59_000) / NEW_KEYS as i64;
            let r = Report {
                throughput_kbps: Some(4_000.0 + (i % 7) as f64 * 100.0),
                ..Report::new(loc.as_str(), "cdn-a", ts)
            };
            e.on_report(&r, Some((0, w * NEW_KEYS as i64 + i as i64)));
        }
        e.close_ready();
        let learned = e.learned_keys().get(&0).copied().unwrap_or(0);
        assert!(
            learned <= max_learned,
            "window {w}: {learned} keys with learned normals, cap {max_learned}"
        );
        let (_, open_keys) = e.open_stats();
        assert!(open_keys <= 2 * 2_000, "window {w}: {open_keys} open keys");
        if w % 10 == 9 {
            sizes.push(e.snapshot().expect("snapshot").len());
        }
    }
    let c = e.counters();
    assert!(
        c.key_cap > 0,
        "the window cap dropped the rest of the flood"
    );
    assert!(
        c.learned_evicted > 0,
        "keys evicted to stay under the cap: {}",
        c.learned_evicted
    );
    // The checkpoint stops growing once the cap is reached: no more than a fifth over the
    // size after 20 windows (itself a few thousand keys' worth).
    let (early, last) = (sizes[1], sizes[sizes.len() - 1]);
    assert!(
        last as f64 <= early as f64 * 1.2,
        "checkpoint bytes after 20 windows {early}, after {WINDOWS}: {last} ({sizes:?})"
    );
}
