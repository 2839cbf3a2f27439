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
