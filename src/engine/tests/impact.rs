//! Viewer impact and evidence on a scenario whose viewers are known
//! ([`super::against_rebuffer_benchmark`]): every window 30 sessions send 4 reports of 15 s
//! each (30 minutes watched); in windows 20-25 every other session stalls 3 s of each report
//! (3 minutes stalled, 10 % of watch time) against a usual 2 %.

use super::*;

#[test]
fn an_incident_counts_the_viewers_and_stalled_minutes_of_its_bad_windows() {
    let (alerts, evidence) = against_rebuffer_benchmark_with_evidence(34, 20..26);
    let fired = crate::incident::firing(&alerts);
    assert_eq!(fired.len(), 1, "{alerts:#?}");
    let id = &fired[0].id;
    let resolved = alerts
        .iter()
        .find(|a| a.status == Status::Resolved && &a.id == id)
        .expect("resolved");
    let points: Vec<_> = evidence.iter().filter(|e| &e.id == id).collect();
    assert!(
        points
            .iter()
            .all(|e| e.point.metric == Metric::REBUFFER_RATIO)
    );
    let bad: Vec<_> = points.iter().filter(|e| e.point.bad).collect();
    // Only the stalling windows are bad, and the evidence goes on to the clean ones after.
    assert!((2..=6).contains(&bad.len()), "{points:#?}");
    assert!(
        bad.iter()
            .all(|e| (20 * W..26 * W).contains(&e.point.window_start))
    );
    assert!(
        points
            .iter()
            .any(|e| !e.point.bad && e.point.window_start >= 26 * W)
    );
    let n = bad.len() as f64;
    let impact = resolved.impact.expect("impact on the resolution");
    assert_eq!(impact.reports, 120 * bad.len() as u64);
    assert_eq!(impact.sessions, 30);
    assert!(
        (impact.degraded_minutes - 30.0 * n).abs() < 1e-6,
        "{impact:?}"
    );
    // 3 of the 30 minutes stalled in each bad window, beyond what each expected.
    let beyond: f64 = bad.iter().map(|e| 3.0 - e.point.expected * 30.0).sum();
    let excess = impact
        .excess_stalled_minutes
        .expect("rebuffering counts stalls");
    assert!((excess - beyond).abs() < 1e-6, "{excess} vs {beyond}");
    assert!(
        excess > 2.0 * n,
        "most of the 3 minutes were beyond the usual 2 %"
    );
    // The firing alert already says so, in its summary too.
    let first = fired[0].impact.expect("impact on the firing");
    assert!(first.reports >= 240 && first.sessions == 30, "{first:?}");
    assert!(
        fired[0].summary.contains("30 sessions, "),
        "{}",
        fired[0].summary
    );
}

/// The evidence begins a few windows before the incident did: the key's last windows tested
/// on its metric (clean, at its usual 2 %), then the bad run; none of them counts as impact.
#[test]
fn an_incidents_evidence_shows_the_windows_before_it() {
    let (alerts, evidence) = against_rebuffer_benchmark_with_evidence(34, 20..26);
    let fired = crate::incident::firing(&alerts);
    assert_eq!(fired.len(), 1, "{alerts:#?}");
    let (id, started) = (&fired[0].id, fired[0].started_at);
    let mut before: Vec<_> = evidence
        .iter()
        .filter(|e| &e.id == id && e.point.window_start < started)
        .map(|e| &e.point)
        .collect();
    before.sort_by_key(|p| p.window_start);
    let starts: Vec<i64> = before.iter().map(|p| p.window_start / W).collect();
    assert_eq!(starts, [18, 19], "{before:#?}");
    for p in &before {
        assert!(!p.bad && p.metric == Metric::REBUFFER_RATIO, "{p:?}");
        assert_eq!(p.window_end - p.window_start, W);
        assert_eq!(p.samples, 120, "{p:?}");
        // The key's usual 2 % (one session in ten stalls 3 s of 15), near what it expects.
        assert!((p.observed - 0.02).abs() < 0.005, "{p:?}");
        assert!(p.p_value > 0.01 && p.expected > 0.01, "{p:?}");
    }
    let impact = fired[0].impact.expect("impact");
    let bad_windows = evidence
        .iter()
        .filter(|e| &e.id == id && e.point.bad && e.point.window_start <= fired[0].window_start)
        .count() as u64;
    assert_eq!(impact.reports, 120 * bad_windows, "{impact:?}");
}
