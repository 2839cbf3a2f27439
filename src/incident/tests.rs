//! The incident state machine alone.
use super::*;

fn verdict(bad: bool) -> Verdict {
    Verdict {
        scope: Scope::pair("L", "c"),
        finding: Finding {
            metric: Metric::FAILURE_RATE,
            observed: if bad { 0.2 } else { 0.01 },
            expected: 0.01,
            samples: 100,
            p_value: if bad { 1e-9 } else { 0.5 },
            effect: if bad { 19.0 } else { 0.0 },
            eligible: bad,
            reference: Default::default(),
            cohort: None,
            exposure: None,
            spread: None,
            pair_spread: None,
        },
        bad,
        severity: if bad {
            Severity::Critical
        } else {
            Severity::Warning
        },
        before: Vec::new(),
    }
}

#[test]
fn fires_after_n_bad_windows_and_resolves_after_k_clean_with_the_same_id() {
    let cfg = DetectConfig::default(); // fire after 2, resolve after 3
    let mut inc = Incidents::new();
    let w = 60_000;
    let mut all = Vec::new();
    let pattern = [false, true, true, true, false, false, false, false];
    for (i, bad) in pattern.iter().enumerate() {
        let s = i as i64 * w;
        all.extend(inc.apply(s, s + w, vec![verdict(*bad)], &cfg));
    }
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all[0].status, Status::Firing);
    assert_eq!(all[0].started_at, w, "started with the first bad window");
    assert_eq!(all[0].window_start, 2 * w, "fired in the second bad window");
    assert_eq!(all[0].severity, Severity::Critical);
    assert_eq!(all[1].status, Status::Resolved);
    assert_eq!(all[1].id, all[0].id);
    assert_eq!(
        all[1].resolved_at,
        Some(4 * w),
        "resolved where the clean run began"
    );
    assert_eq!(inc.firing(), 0);
    assert!(inc.tracks.is_empty(), "no state kept for clean keys");
}

#[test]
fn a_resolution_never_quotes_its_last_bad_window_as_normal() {
    let cfg = DetectConfig::default();
    let wide = |bad: bool| Verdict {
        scope: Scope {
            prefix: None,
            location: None,
            cdn: Some("c".into()),
        },
        ..verdict(bad)
    };
    // A CDN-wide incident fires; then its keys are no longer bad together: the scope has
    // no verdict at all in the windows that resolve it.
    let mut inc = Incidents::new();
    let mut out = Vec::new();
    for i in 0..6 {
        let s = i * 60_000;
        let v = if i < 3 { vec![wide(true)] } else { vec![] };
        out.extend(inc.apply(s, s + 60_000, v, &cfg));
    }
    let resolved = out.iter().find(|a| a.status == Status::Resolved).unwrap();
    assert!(
        resolved
            .summary
            .contains("too few of its keys are bad together")
            && !resolved
                .summary
                .contains("back to normal (playback failures 20.0%"),
        "{}",
        resolved.summary
    );
    // A key that resolves on clean windows quotes them.
    let mut inc = Incidents::new();
    let mut out = Vec::new();
    for (i, bad) in [true, true, false, false, false].iter().enumerate() {
        let s = i as i64 * 60_000;
        out.extend(inc.apply(s, s + 60_000, vec![verdict(*bad)], &cfg));
    }
    let resolved = out.iter().find(|a| a.status == Status::Resolved).unwrap();
    assert!(
        resolved
            .summary
            .contains("back to normal (playback failures 1.0%"),
        "{}",
        resolved.summary
    );
}

#[test]
fn impact_and_evidence_count_every_window_of_the_bad_run() {
    let cfg = DetectConfig::default();
    let mut inc = Incidents::new();
    let with = |bad: bool, reports: u64| {
        let mut v = verdict(bad);
        v.finding.exposure = Some(crate::detect::Exposure {
            reports,
            sessions: reports / 4,
            watched_ms: reports as f64 * 20_000.0,
            stalled_ms: 0.0,
        });
        v
    };
    let mut out = Vec::new();
    let mut points = Vec::new();
    for (i, (bad, n)) in [
        (false, 90),
        (true, 100),
        (true, 120),
        (true, 80),
        (false, 60),
    ]
    .into_iter()
    .enumerate()
    {
        let s = i as i64 * 60_000;
        out.extend(inc.apply(s, s + 60_000, vec![with(bad, n)], &cfg));
        points.extend(inc.take_evidence());
    }
    let fired = &out[0];
    let impact = fired.impact.expect("impact");
    assert_eq!(impact.reports, 220, "both windows of the run that fired it");
    assert_eq!(impact.sessions, 30);
    assert!((impact.degraded_minutes - 220.0 / 3.0).abs() < 1e-9);
    assert!(
        fired.summary.contains("30 sessions, 73 min"),
        "{}",
        fired.summary
    );
    // Evidence: the run's two windows, the bad one after and the clean one, by its id.
    let ends: Vec<i64> = points.iter().map(|e| e.point.window_end / 60_000).collect();
    assert_eq!(ends, [2, 3, 4, 5]);
    assert!(points.iter().all(|e| e.id == fired.id));
    assert_eq!(
        points.iter().map(|e| e.point.bad).collect::<Vec<_>>(),
        [true, true, true, false]
    );
}

#[test]
fn a_single_bad_window_does_not_fire() {
    let cfg = DetectConfig::default();
    let mut inc = Incidents::new();
    let mut out = Vec::new();
    for (i, bad) in [true, false, true, false].iter().enumerate() {
        let s = i as i64 * 60_000;
        out.extend(inc.apply(s, s + 60_000, vec![verdict(*bad)], &cfg));
    }
    assert!(out.is_empty());
}

#[test]
fn windows_without_data_count_towards_resolution() {
    let cfg = DetectConfig::default();
    let mut inc = Incidents::new();
    inc.apply(0, 60_000, vec![verdict(true)], &cfg);
    assert_eq!(
        inc.apply(60_000, 120_000, vec![verdict(true)], &cfg).len(),
        1
    );
    let mut resolved = Vec::new();
    for i in 2..11 {
        resolved.extend(inc.apply(i * 60_000, (i + 1) * 60_000, vec![], &cfg));
    }
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].status, Status::Resolved);
}

#[test]
fn ids_are_stable_and_distinct() {
    let s = Scope::pair("L", "c");
    assert_eq!(incident_id("r", &s, 1), incident_id("r", &s, 1));
    assert_ne!(incident_id("r", &s, 1), incident_id("r", &s, 2));
    assert_ne!(incident_id("r", &s, 1), incident_id("q", &s, 1));
    // Pinned: an id must not change between releases, or a restart would re-page.
    assert_eq!(incident_id("r", &s, 1).len(), 16);
}

/// A run's evidence starts with the windows its first bad verdict brought (the key's trail);
/// one of them bad (an earlier run that never fired) is shown, not counted as impact.
#[test]
fn the_windows_before_a_run_are_evidence_but_not_impact() {
    let cfg = DetectConfig::default();
    let mut inc = Incidents::new();
    let exposure = Some(crate::detect::Exposure {
        reports: 100,
        sessions: 25,
        watched_ms: 2_000_000.0,
        stalled_ms: 0.0,
    });
    let point = |w: i64, bad: bool| {
        let mut p = Point::of(
            &verdict(bad).finding,
            bad,
            Severity::Warning,
            (w, w + 60_000),
        );
        p.exposure = exposure;
        p
    };
    let mut first = verdict(true);
    first.finding.exposure = exposure;
    first.before = vec![point(0, true), point(60_000, false)];
    let mut second = verdict(true);
    second.finding.exposure = exposure;
    let mut out = inc.apply(120_000, 180_000, vec![first], &cfg);
    out.extend(inc.apply(180_000, 240_000, vec![second], &cfg));
    let evidence = inc.take_evidence();
    let starts: Vec<i64> = evidence
        .iter()
        .map(|e| e.point.window_start / 60_000)
        .collect();
    assert_eq!(starts, [0, 1, 2, 3]);
    let fired = out
        .iter()
        .find(|a| a.status == Status::Firing)
        .expect("fired");
    assert_eq!(fired.started_at, 120_000);
    assert_eq!(
        fired.impact.expect("impact").reports,
        200,
        "the run's two windows only"
    );
}
