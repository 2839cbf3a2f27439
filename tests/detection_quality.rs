//! Labelled scenarios: the simulator injects incidents of every kind, detection runs straight
//! over the stream (the daemon's engine, no broker), and the alerts are scored against the
//! labels. Plus a quiet run with many keys that must raise nothing.
//! The README's figures come from the same code on longer runs (`simulate --score`).

use qos_sentinel::backtest::{run_stream, score};
use qos_sentinel::config::Config;
use qos_sentinel::sim::{Labels, Networks, SimConfig, Simulator};

const EVENING: i64 = 1_767_286_800_000; // 2026-01-01T17:00:00Z

fn nothing_fired(alerts: &[qos_sentinel::incident::Alert]) {
    let lines: Vec<_> = alerts
        .iter()
        .map(qos_sentinel::notify::render_line)
        .collect();
    assert!(lines.is_empty(), "{lines:#?}");
}

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

/// The same incidents among viewers on fast home, slow home and mobile networks (each
/// session keeps its class; mobile ones dip now and then), which the detector was not tuned on.
#[test]
fn every_injected_incident_is_caught_among_mixed_networks() {
    let cfg = Config::default();
    for seed in [1, 2] {
        let mut sc = SimConfig::demo(seed, EVENING, 60 * 60_000);
        sc.networks = Networks::Classes;
        let sim = Simulator::new(sc);
        let labels = Labels::of(&sim, cfg.window_ms());
        let summary = run_stream(&cfg, sim);
        let s = score(&summary.alerts, &labels);
        assert_eq!(s.recall, 1.0, "seed {seed}: {s:?}");
        assert!(s.precision >= 0.95, "seed {seed}: {s:?}");
    }
    // Players reporting every 6 s: ten reports per session a window, so report counts swing
    // as sessions come and go. With the design effect of counts fixed at 3 (not measured as
    // reports per session) three keys paged `reports_below_usual` here, e.g. `cdn-b at
    // JP/13/Tokyo: 103 reports in the window vs 221 usual`. Seed 1 misses the startup
    // regression at US/NY/NewYork (a start every few windows there; README).
    for (seed, recall) in [(1, 0.8), (2, 1.0)] {
        let mut sc = SimConfig::demo(seed, EVENING, 60 * 60_000);
        sc.networks = Networks::Classes;
        sc.report_interval = 6_000;
        let sim = Simulator::new(sc);
        let labels = Labels::of(&sim, cfg.window_ms());
        let summary = run_stream(&cfg, sim);
        let s = score(&summary.alerts, &labels);
        assert!(s.recall >= recall, "6 s reports, seed {seed}: {s:?}");
        assert_eq!(s.precision, 1.0, "6 s reports, seed {seed}: {s:?}");
    }
}

/// Small keys at night, viewers on mixed networks, players reporting every 6 s: a key's
/// window holds ten correlated reports from each of a handful of sessions that disagree with
/// each other, and its first windows show clients at half of what the probes measure. Nothing
/// is wrong and nothing may fire. With the design effect fixed at 3 two keys paged on a quiet
/// night's dip ("throughput 462 kbps vs 2454 kbps expected over 30 reports" at 02:16), and
/// four more in their first window, before they knew their offset from the benchmark.
#[test]
fn small_keys_of_mixed_networks_raise_nothing_on_a_quiet_night() {
    let cfg = Config::default();
    let night = 1_795_132_800_000; // 2026-11-20T00:00:00Z
    let mut sc = SimConfig::quiet(5, night, 360 * 60_000);
    sc.locations = 80;
    sc.peak_sessions = 150;
    sc.networks = Networks::Classes;
    sc.report_interval = 6_000;
    let summary = run_stream(&cfg, Simulator::new(sc));
    assert!(summary.counters.tests > 4_000, "{:?}", summary.counters);
    nothing_fired(&summary.alerts);
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
    nothing_fired(&summary.alerts);
}

#[test]
fn an_incident_on_one_network_names_that_network() {
    use qos_sentinel::incident::Status;
    use qos_sentinel::sim::{IncidentKind, Injected, location_names, network};
    let cfg = Config::default();
    for seed in [4, 5] {
        let mut sc = SimConfig::demo(seed, EVENING, 60 * 60_000);
        let names = location_names(sc.locations);
        let (first, second) = (sc.incidents[0].clone(), sc.incidents[1].clone());
        // The failure spike hits only one of the location's five networks; the degradation
        // stays on every network and must not be pinned on one.
        sc.incidents = vec![
            first.clone(),
            Injected {
                kind: IncidentKind::FailureSpike,
                asn: Some(network(1, 2)),
                ..second
            },
        ];
        assert_eq!(sc.incidents[1].location, names[1]);
        let sim = Simulator::new(sc);
        let labels = Labels::of(&sim, cfg.window_ms());
        let summary = run_stream(&cfg, sim);
        let s = score(&summary.alerts, &labels);
        assert_eq!(s.recall, 1.0, "seed {seed}: {s:?}");
        let firing = |loc: &str| {
            summary
                .alerts
                .iter()
                .filter(|a| a.status == Status::Firing && a.scope.location.as_deref() == Some(loc))
                .collect::<Vec<_>>()
        };
        let spike = firing(&names[1]);
        assert!(!spike.is_empty(), "seed {seed}");
        for a in &spike {
            let c = a.cohort.as_ref().expect("the failing network is named");
            assert_eq!(
                (c.dimension.as_str(), c.value.clone()),
                ("asn", network(1, 2).to_string())
            );
            assert!(c.share >= 0.6 && c.traffic_share < 0.35, "{c:?}");
            assert!(
                a.summary.contains(&format!("AS{}", network(1, 2))),
                "{}",
                a.summary
            );
        }
        for a in firing(&first.location) {
            assert_eq!(a.cohort, None, "seed {seed}: {}", a.summary);
        }
    }
}
