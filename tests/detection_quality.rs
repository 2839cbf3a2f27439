//! Labelled scenarios: the simulator injects incidents of every kind, detection runs straight
//! over the stream (the daemon's engine, no broker), and the alerts are scored against the
//! labels. Plus a quiet run with many keys that must raise nothing.
//! The README's figures come from the same code on longer runs (`simulate --score`).

use qos_sentinel::backtest::{run_stream, score};
use qos_sentinel::config::Config;
use qos_sentinel::sim::{Labels, SimConfig, Simulator};

const EVENING: i64 = 1_767_286_800_000; // 2026-01-01T17:00:00Z

#[test]
fn every_injected_incident_is_caught_without_false_alarms() {
    let cfg = Config::default();
    for seed in [1, 2, 3] {
        let sim = Simulator::new(SimConfig::demo(seed, EVENING, 60 * 60_000));
        let labels = Labels::of(&sim, cfg.window_ms());
        let summary = run_stream(&cfg, sim);
        let s = score(&summary.alerts, &labels);
        assert_eq!(s.recall, 1.0, "seed {seed}: {s:?}");
        assert!(s.precision >= 0.95, "seed {seed}: {s:?}");
        let delay = s.median_delay_windows.unwrap();
        assert!(delay <= 2.5, "seed {seed}: {s:?}");
        assert_eq!(summary.counters.late, 0);
    }
}

#[test]
fn quiet_traffic_over_many_keys_raises_nothing() {
    let cfg = Config::default();
    let mut sc = SimConfig::quiet(21, EVENING - 3_600_000, 120 * 60_000);
    sc.locations = 100;
    sc.cdns = 4;
    sc.peak_sessions = 6_000;
    // A quarter of the keys have no benchmark: they are watched against their own level.
    sc.unbenchmarked_share = 0.25;
    let summary = run_stream(&cfg, Simulator::new(sc));
    assert!(summary.counters.tests > 20_000, "{:?}", summary.counters);
    assert!(
        summary.counters.join_misses > 100_000,
        "{:?}",
        summary.counters
    );
    let firing: Vec<_> = summary
        .alerts
        .iter()
        .map(qos_sentinel::notify::render_line)
        .collect();
    assert!(firing.is_empty(), "{firing:#?}");
}
