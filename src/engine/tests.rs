//! The engine through its public interface: grouping, learned references, silence,
//! snapshots, partitions read in any order, hand-over and the peered CDN-wide stage.

use super::*;
use crate::detect::Metric;
use crate::incident::{Scope, Status};

const W: i64 = 60_000;

fn report(loc: &str, cdn: &str, ts: i64, i: i64, failed: bool) -> Report<'static> {
    Report {
        ts,
        session_id: format!("s{i}").into(),
        location: loc.to_string().into(),
        cdn: cdn.to_string().into(),
        asn: None,
        device: None,
        played_ms: 20_000,
        rebuffer_ms: 0,
        startup_ms: None,
        bitrate_kbps: None,
        throughput_kbps: Some(5_000.0),
        error: failed.then(|| "E".into()),
    }
}

/// Runs `windows` windows of 60 reports per key; `bad(loc, cdn, window)` says which
/// keys have a 20 % failure rate.
fn run(
    locs: &[&str],
    cdns: &[&str],
    windows: i64,
    bad: impl Fn(&str, &str, i64) -> bool,
) -> Vec<Alert> {
    let mut e = Engine::new(Settings::default());
    for l in locs {
        for c in cdns {
            let row = Expected {
                error_rate: Some(0.01),
                ..Default::default()
            };
            e.on_benchmark(l, c, 0, Some(row));
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    for w in 0..windows {
        for n in 0..60 {
            for l in locs {
                for c in cdns {
                    i += 1;
                    let failed = bad(l, c, w) && n % 5 == 0;
                    e.on_report(&report(l, c, w * W + n * 1_000, i, failed), None);
                }
            }
        }
        out.extend(e.close_ready());
    }
    out.extend(e.close_until(windows * W + W));
    out
}

#[test]
fn many_locations_of_one_cdn_raise_one_cdn_wide_parent() {
    let locs = ["IN/A", "IN/B", "IN/C", "US/D"];
    let alerts = run(&locs, &["cdn-a", "cdn-b"], 10, |l, c, w| {
        c == "cdn-a" && l.starts_with("IN/") && (2..5).contains(&w)
    });
    let firing: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.status == Status::Firing)
        .collect();
    let parent = firing
        .iter()
        .find(|a| a.scope.location.is_none())
        .expect("a CDN-wide incident");
    assert_eq!(parent.scope.cdn.as_deref(), Some("cdn-a"));
    assert_eq!(parent.samples, 180, "evidence is the three bad keys merged");
    let children: Vec<&&Alert> = firing
        .iter()
        .filter(|a| a.scope.location.is_some())
        .collect();
    assert_eq!(children.len(), 3);
    for c in &children {
        assert_eq!(c.parent_id.as_deref(), Some(parent.id.as_str()), "{c:?}");
        assert!(c.scope.location.as_deref().unwrap().starts_with("IN/"));
    }
    let resolved = alerts
        .iter()
        .filter(|a| a.status == Status::Resolved)
        .count();
    assert_eq!(resolved, 4, "parent and children all resolve");
}

#[test]
fn every_cdn_bad_at_one_location_raises_a_location_wide_parent() {
    let alerts = run(&["IN/A", "US/D"], &["cdn-a", "cdn-b"], 8, |l, _, w| {
        l == "US/D" && (2..5).contains(&w)
    });
    let parent = alerts
        .iter()
        .find(|a| a.status == Status::Firing && a.scope.cdn.is_none())
        .expect("a location-wide incident");
    assert_eq!(parent.scope.location.as_deref(), Some("US/D"));
    assert!(
        alerts
            .iter()
            .filter(|a| a.status == Status::Firing && a.scope.cdn.is_some())
            .all(|a| a.parent_id.as_deref() == Some(parent.id.as_str()))
    );
}

#[test]
fn one_bad_key_gets_no_parent() {
    let alerts = run(
        &["IN/A", "IN/B", "IN/C"],
        &["cdn-a", "cdn-b"],
        8,
        |l, c, w| l == "IN/A" && c == "cdn-a" && (2..5).contains(&w),
    );
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    assert!(
        alerts
            .iter()
            .all(|a| a.parent_id.is_none() && a.scope.cdn.is_some() && a.scope.location.is_some())
    );
}

#[test]
fn a_stable_offset_from_the_benchmark_is_learned_not_paged() {
    let mut e = Engine::new(Settings::default());
    let row = Expected {
        throughput_kbps: Some(5_000.0),
        ..Default::default()
    };
    e.on_benchmark("L", "c", 0, Some(row));
    let mut alerts = Vec::new();
    let mut i = 0;
    for w in 0..20 {
        // Clients see 40 % less than the probes (last mile) for 12 windows, then a real
        // drop to a third of that.
        let level = if w < 12 { 3_000.0 } else { 1_000.0 };
        for n in 0..90 {
            i += 1;
            let mut r = report("L", "c", w * W + n * 600, i, false);
            r.throughput_kbps = Some(level * (1.0 + ((i * 37) % 11) as f64 * 0.04));
            e.on_report(&r, None);
        }
        alerts.extend(e.close_ready());
    }
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a.metric, Metric::THROUGHPUT_KBPS);
    assert_eq!(a.started_at, 12 * W, "fires on the drop, not on the offset");
    let expected = a.expected.unwrap();
    assert!(
        (3_000.0..4_000.0).contains(&expected),
        "compared with what is normal: {expected}"
    );
}

#[test]
fn a_key_without_benchmark_is_watched_against_its_own_level() {
    let mut e = Engine::new(Settings::default());
    let mut alerts = Vec::new();
    let mut i = 0;
    for w in 0..16 {
        for n in 0..100 {
            i += 1;
            // 1 % failures for 10 windows, then 20 %.
            let failed = if w < 10 { i % 100 == 0 } else { n % 5 == 0 };
            e.on_report(
                &report("NEW/Place", "cdn-z", w * W + n * 500, i, failed),
                None,
            );
        }
        alerts.extend(e.close_ready());
    }
    assert_eq!(e.counters().join_hits, 0);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(a.rule, "failures_above_baseline");
    assert_eq!(a.started_at, 10 * W);
    assert!((a.expected.unwrap() - 0.01).abs() < 0.005, "{a:?}");
}

#[test]
fn a_key_that_goes_silent_is_an_incident() {
    let mut e = Engine::new(Settings::default());
    let mut alerts = Vec::new();
    let mut i = 0;
    for w in 0..30 {
        for n in 0..100 {
            for loc in ["A", "B"] {
                // B stops reporting entirely in windows 8..12 (an outage sends nothing).
                if loc == "B" && (8..12).contains(&w) {
                    continue;
                }
                i += 1;
                e.on_report(&report(loc, "c", w * W + n * 500, i, false), None);
            }
        }
        alerts.extend(e.close_ready());
    }
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let (fire, res) = (&alerts[0], &alerts[1]);
    assert_eq!(fire.rule, "reports_below_usual");
    assert_eq!(fire.scope, Scope::pair("B", "c"));
    assert_eq!(fire.observed, 0.0);
    assert!((fire.expected.unwrap() - 100.0).abs() < 5.0, "{fire:?}");
    assert_eq!(fire.started_at, 8 * W);
    assert_eq!(res.id, fire.id);
    assert_eq!(res.resolved_at, Some(12 * W));
    assert_eq!(
        res.window_start,
        14 * W,
        "three clean windows after the return: {res:?}"
    );
}

#[test]
fn a_restored_snapshot_continues_exactly_like_the_original() {
    use crate::sim::{Event, SimConfig, Simulator};
    let start = 1_767_290_400_000;
    let cfg = Settings::default();
    let events: Vec<Event> = Simulator::new(SimConfig::demo(5, start, 60 * 60_000)).collect();
    let cut = events.len() / 2;
    let mut a = Engine::new(&cfg);
    let mut alerts_a = Vec::new();
    let mut seen_benchmarks = Vec::new();
    let feed = |e: &mut Engine, ev: &Event, out: &mut Vec<Alert>| match ev {
        Event::Benchmark(b) => {
            e.on_benchmark(&b.location, &b.cdn, b.ts, Some(Expected::from(b)));
        }
        Event::Report(r) => {
            e.on_report(r, Some((0, 0)));
            out.extend(e.close_ready());
        }
    };
    for ev in &events[..cut] {
        if let Event::Benchmark(b) = ev {
            seen_benchmarks.push(b.clone());
        }
        feed(&mut a, ev, &mut alerts_a);
    }
    let snap = a.snapshot().unwrap();
    let mut b = Engine::restore(&cfg, BenchmarkTable::new(), &snap)
        .map_err(|e| e.0)
        .unwrap();
    for bm in &seen_benchmarks {
        b.on_benchmark(&bm.location, &bm.cdn, bm.ts, Some(Expected::from(bm)));
    }
    assert_eq!(a.counters(), b.counters());
    let (mut rest_a, mut rest_b) = (Vec::new(), Vec::new());
    for ev in &events[cut..] {
        feed(&mut a, ev, &mut rest_a);
        feed(&mut b, ev, &mut rest_b);
    }
    rest_a.extend(a.close_until(start + 2 * 3_600_000));
    rest_b.extend(b.close_until(start + 2 * 3_600_000));
    assert!(
        !alerts_a.is_empty() && !rest_a.is_empty(),
        "incidents on both sides of the cut"
    );
    assert_eq!(rest_a, rest_b);
    assert_eq!(a.counters(), b.counters());
    // A snapshot taken with another window size is refused.
    let mut other = cfg.clone();
    other.window.size = std::time::Duration::from_secs(30);
    assert!(Engine::restore(&other, BenchmarkTable::new(), &snap).is_err());
}

/// 6 locations x 2 CDNs, quiet but for `incidents` (kind, location, CDN, first and last
/// minute), over `minutes`; the events and their end.
fn scenario(
    seed: u64,
    minutes: i64,
    incidents: &[(crate::sim::IncidentKind, &str, &str, i64, i64)],
) -> (Vec<crate::sim::Event>, i64) {
    use crate::sim::{Injected, SimConfig, Simulator};
    let start = 1_767_290_400_000;
    let min = 60_000;
    let mut c = SimConfig::quiet(seed, start, minutes * min);
    c.locations = 6;
    c.cdns = 2;
    c.peak_sessions = 600;
    c.incidents = incidents
        .iter()
        .map(|(kind, location, cdn, from, to)| Injected {
            kind: *kind,
            location: (*location).into(),
            cdn: (*cdn).into(),
            start: start + from * min,
            end: start + to * min,
            asn: None,
        })
        .collect();
    (Simulator::new(c).collect(), start + minutes * min)
}

/// The crash test's scenario, shorter: three location+CDN incidents.
fn partitioned_scenario() -> (Vec<crate::sim::Event>, i64) {
    use crate::sim::IncidentKind::{Degradation, FailureSpike};
    let names = crate::sim::location_names(6);
    scenario(
        23,
        70,
        &[
            (FailureSpike, &names[0], "cdn-a", 10, 25),
            (Degradation, &names[1], "cdn-b", 30, 45),
            (FailureSpike, &names[2], "cdn-b", 50, 62),
        ],
    )
}

/// A location+CDN incident, then a CDN degrading across the three "IN/" locations, which
/// [`partition_of`] spreads over partitions 0, 2 and 3.
fn cdn_wide_scenario() -> (Vec<crate::sim::Event>, i64) {
    use crate::sim::IncidentKind::{FailureSpike, RegionalCdnDegradation};
    let names = crate::sim::location_names(6);
    scenario(
        29,
        60,
        &[
            (FailureSpike, &names[3], "cdn-b", 10, 22),
            (RegionalCdnDegradation, "IN/", "cdn-a", 30, 45),
        ],
    )
}

/// Which of 4 test partitions a location's reports go to.
fn partition_of(location: &str) -> usize {
    let h = location
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (h % 4) as usize
}

/// Runs `events` with reports split over 4 partitions by location; `next` picks the
/// partition whose next record is read (among those with records left).
fn run_partitioned(
    events: &[crate::sim::Event],
    end: i64,
    mut next: impl FnMut(&[usize]) -> usize,
) -> Vec<Alert> {
    use crate::sim::Event;
    let mut e = Engine::new(Settings::default());
    let mut queues: Vec<std::collections::VecDeque<&Report>> = vec![Default::default(); 4];
    for ev in events {
        match ev {
            Event::Benchmark(b) => {
                e.on_benchmark(&b.location, &b.cdn, b.ts, Some(Expected::from(b)))
            }
            Event::Report(r) => queues[partition_of(&r.location)].push_back(r),
        }
    }
    for p in 0..4 {
        e.add_partition(p);
    }
    let mut out = Vec::new();
    let mut offsets = [0i64; 4];
    loop {
        let left: Vec<usize> = (0..4).filter(|p| !queues[*p].is_empty()).collect();
        if left.is_empty() {
            break;
        }
        let p = next(&left);
        let r = queues[p]
            .pop_front()
            .expect("a partition with records left");
        offsets[p] += 1;
        e.on_report(r, Some((p as i32, offsets[p])));
        if e.has_ready() {
            out.extend(e.close_ready());
        }
        if queues[p].is_empty() {
            // Read to its end: the daemon stops waiting for such a partition.
            e.set_partition_idle(p as i32);
            out.extend(e.close_ready());
        }
    }
    out.extend(e.close_until(end + 10 * W));
    out
}

#[test]
fn alerts_do_not_depend_on_how_reads_of_partitions_interleave() {
    let (events, end) = partitioned_scenario();
    // Reports in event-time order across partitions, as a live run reads them: the
    // partition whose next report is oldest goes first.
    let in_order = {
        let mut queues_ts: Vec<std::collections::VecDeque<i64>> = vec![Default::default(); 4];
        for ev in &events {
            if let crate::sim::Event::Report(r) = ev {
                queues_ts[partition_of(&r.location)].push_back(r.ts);
            }
        }
        run_partitioned(&events, end, |left| {
            let p = *left
                .iter()
                .min_by_key(|p| queues_ts[**p].front().copied().unwrap_or(i64::MAX))
                .expect("a partition");
            queues_ts[p].pop_front();
            p
        })
    };
    let fired = in_order
        .iter()
        .filter(|a| a.status == crate::incident::Status::Firing)
        .count();
    assert!(fired >= 3, "the incidents fire: {in_order:#?}");
    // Whole alerts: ids, and the evidence in them (observed, p-values, samples) too.
    let ids = |alerts: &[Alert]| -> Vec<String> {
        let mut v: Vec<_> = alerts.iter().map(|a| format!("{a:?}")).collect();
        v.sort();
        v
    };
    // A catch-up reads partitions in bursts of different sizes, one far behind the others.
    for seed in [1u64, 2, 3] {
        let mut rng = crate::sim::Rng::new(seed);
        let mut burst = (0usize, 0u64);
        let shuffled = run_partitioned(&events, end, |left| {
            if burst.1 == 0 || !left.contains(&burst.0) {
                // Partition 0 is read least often: it falls far behind.
                let pick = left[rng.below(left.len() as u64) as usize];
                let pick = if pick == 0 && rng.below(3) > 0 {
                    left[left.len() - 1]
                } else {
                    pick
                };
                burst = (pick, 1 + rng.below(5_000));
            }
            burst.1 -= 1;
            burst.0
        });
        assert_eq!(ids(&shuffled), ids(&in_order), "seed {seed}");
    }
}

/// Reads the owned partitions' reports in event-time order, up to event time `until`;
/// `on_close` sees the engine and the read positions after every close.
fn read_owned(
    e: &mut Engine,
    queues: &[Vec<&Report>],
    pos: &mut [usize],
    owned: &[usize],
    until: i64,
    mut on_close: impl FnMut(&Engine, &[usize], &[Alert]),
) -> Vec<Alert> {
    let mut out = Vec::new();
    loop {
        let next = owned
            .iter()
            .filter(|p| pos[**p] < queues[**p].len())
            .min_by_key(|p| queues[**p][pos[**p]].ts)
            .copied();
        let Some(p) = next.filter(|p| queues[*p][pos[*p]].ts < until) else {
            break;
        };
        let r = queues[p][pos[p]];
        pos[p] += 1;
        e.on_report(r, Some((p as i32, pos[p] as i64)));
        if pos[p] == queues[p].len() {
            e.set_partition_idle(p as i32);
        }
        if e.has_ready() {
            let alerts = e.close_ready();
            on_close(e, pos, &alerts);
            out.extend(alerts);
        }
    }
    out
}

#[test]
fn a_partition_taken_over_from_its_last_share_alerts_as_if_never_moved() {
    let (events, end) = partitioned_scenario();
    let cfg = Settings::default();
    let fresh = || {
        let mut e = Engine::new(&cfg);
        for ev in &events {
            if let crate::sim::Event::Benchmark(b) = ev {
                e.on_benchmark(&b.location, &b.cdn, b.ts, Some(Expected::from(b)));
            }
        }
        e
    };
    let mut queues: Vec<Vec<&Report>> = vec![Vec::new(); 4];
    for ev in &events {
        if let crate::sim::Event::Report(r) = ev {
            queues[partition_of(&r.location)].push(r);
        }
    }
    let ids = |alerts: &[Alert]| -> Vec<(String, String)> {
        let mut v: Vec<_> = alerts
            .iter()
            .map(|a| (a.id.clone(), format!("{:?}", a.status)))
            .collect();
        v.sort();
        v
    };
    let all = [0, 1, 2, 3];
    let mut single = fresh();
    for p in all {
        single.add_partition(p as i32);
    }
    let mut want = read_owned(
        &mut single,
        &queues,
        &mut [0; 4],
        &all,
        i64::MAX,
        |_, _, _| {},
    );
    want.extend(single.close_until(end + 10 * W));
    assert!(
        want.iter()
            .filter(|a| a.status == crate::incident::Status::Firing)
            .count()
            >= 3,
        "{want:#?}"
    );
    let start = end - 70 * W;
    // The victim dies early and the survivor is ahead, then the other way round.
    for (victim_until, survivor_until) in [(20, 50), (50, 20), (35, 35)] {
        let (mut a, mut b) = (fresh(), fresh());
        let (mut pos_a, mut pos_b) = ([0usize; 4], [0usize; 4]);
        for p in [0, 1] {
            a.add_partition(p);
        }
        for p in [2, 3] {
            b.add_partition(p);
        }
        // The victim's last checkpoint: its shares and positions, and the alerts emitted
        // up to it (those decided after it die with it, as in the daemon).
        let mut last = None;
        let mut emitted = 0;
        let mut a_alerts = Vec::new();
        let got_a = read_owned(
            &mut a,
            &queues,
            &mut pos_a,
            &[0, 1],
            start + victim_until * W,
            |e, pos, alerts| {
                a_alerts.extend(alerts.iter().cloned());
                emitted = a_alerts.len();
                let shares: Vec<_> = [0, 1]
                    .iter()
                    .map(|p| e.export_partition(*p).unwrap().unwrap())
                    .collect();
                last = Some((shares, pos.to_vec()));
            },
        );
        assert_eq!(got_a.len(), a_alerts.len());
        let mut got = a_alerts[..emitted].to_vec();
        got.extend(read_owned(
            &mut b,
            &queues,
            &mut pos_b,
            &[2, 3],
            start + survivor_until * W,
            |_, _, _| {},
        ));
        let (shares, pos) = last.expect("the victim checkpointed");
        for (p, share) in [0, 1].iter().zip(&shares) {
            b.absorb_partition(*p, share).unwrap();
            pos_b[*p as usize] = pos[*p as usize];
        }
        got.extend(read_owned(
            &mut b,
            &queues,
            &mut pos_b,
            &all,
            i64::MAX,
            |_, _, _| {},
        ));
        got.extend(b.close_until(end + 10 * W));
        assert_eq!(
            ids(&got),
            ids(&want),
            "victim killed at minute {victim_until}, survivor at {survivor_until}"
        );
    }
}

/// Two engines, each owning some of the 4 partitions, peered through an in-memory
/// summaries log that both read; reports are read in event-time order.
fn run_peered(events: &[crate::sim::Event], end: i64, owners: [usize; 4]) -> Vec<Alert> {
    use crate::sim::Event;
    let cfg = Settings::default();
    let mut engines: Vec<(Engine, usize)> = (0..2)
        .map(|_| {
            let mut e = Engine::new(&cfg);
            e.share_with_peers(4);
            (e, 0)
        })
        .collect();
    let mut queues: Vec<std::collections::VecDeque<&Report>> = vec![Default::default(); 4];
    for ev in events {
        match ev {
            Event::Benchmark(b) => {
                for (e, _) in &mut engines {
                    e.on_benchmark(&b.location, &b.cdn, b.ts, Some(Expected::from(b)));
                }
            }
            Event::Report(r) => queues[partition_of(&r.location)].push_back(r),
        }
    }
    for (p, o) in owners.iter().enumerate() {
        engines[*o].0.add_partition(p as i32);
    }
    let mut log: Vec<Vec<u8>> = Vec::new();
    let mut out = Vec::new();
    // Until nothing moves: every engine reads the log on, decides, and publishes.
    let pump =
        |engines: &mut Vec<(Engine, usize)>, log: &mut Vec<Vec<u8>>, out: &mut Vec<Alert>| loop {
            let mut moved = false;
            for (e, read) in engines.iter_mut() {
                while *read < log.len() {
                    e.on_summary(*read as i64, &log[*read]).expect("a summary");
                    *read += 1;
                }
                if e.has_ready() {
                    out.extend(e.close_ready());
                }
                let sent = e.take_summaries().expect("encodes");
                moved |= !sent.is_empty();
                log.extend(sent.into_iter().map(|(_, b)| b));
            }
            if !moved {
                break;
            }
        };
    let mut offsets = [0i64; 4];
    loop {
        let next = (0..4)
            .filter(|p| !queues[*p].is_empty())
            .min_by_key(|p| queues[*p].front().map(|r| r.ts));
        let Some(p) = next else { break };
        let r = queues[p]
            .pop_front()
            .expect("a partition with records left");
        offsets[p] += 1;
        let e = &mut engines[owners[p]].0;
        e.on_report(r, Some((p as i32, offsets[p])));
        if queues[p].is_empty() {
            e.set_partition_idle(p as i32);
        }
        pump(&mut engines, &mut log, &mut out);
    }
    for (e, _) in &mut engines {
        out.extend(e.close_until(end + 10 * W));
    }
    pump(&mut engines, &mut log, &mut out);
    out
}

#[test]
fn instances_sharing_partitions_raise_the_cdn_wide_incidents_one_instance_would() {
    let (events, end) = cdn_wide_scenario();
    let mut queues_ts: Vec<std::collections::VecDeque<i64>> = vec![Default::default(); 4];
    for ev in &events {
        if let crate::sim::Event::Report(r) = ev {
            queues_ts[partition_of(&r.location)].push_back(r.ts);
        }
    }
    let single = run_partitioned(&events, end, |left| {
        let p = *left
            .iter()
            .min_by_key(|p| queues_ts[**p].front().copied().unwrap_or(i64::MAX))
            .expect("a partition");
        queues_ts[p].pop_front();
        p
    });
    let cdn_wide: Vec<&Alert> = single
        .iter()
        .filter(|a| a.scope.location.is_none())
        .collect();
    assert!(
        cdn_wide
            .iter()
            .any(|a| a.status == crate::incident::Status::Firing)
            && cdn_wide
                .iter()
                .any(|a| a.status == crate::incident::Status::Resolved),
        "the scenario has a CDN-wide incident: {single:#?}"
    );
    // Whole alerts (ids, parents, evidence), each once.
    let all = |alerts: &[Alert]| -> Vec<String> {
        let mut v: Vec<_> = alerts.iter().map(|a| format!("{a:?}")).collect();
        v.sort();
        v
    };
    // The "IN/" locations' partitions (0, 2, 3) on both instances; partition 0's owner
    // sends the CDN-wide alerts: either instance.
    for owners in [[0, 0, 1, 1], [1, 0, 0, 1]] {
        let peered = run_peered(&events, end, owners);
        assert_eq!(all(&peered), all(&single), "owners {owners:?}");
    }
}

/// State written before each metric had its own file (named sums per accumulator, usual
/// report counts apart from the other levels) restores, and the engine then carries on as
/// one that ran through: the same alerts, the same counters. The fixture is the first half
/// of the run below, snapshotted by that earlier version.
#[test]
fn a_checkpoint_of_the_earlier_layout_restores_and_continues() {
    use crate::sim::{Event, SimConfig, Simulator};
    let old: &[u8] = include_bytes!("../../tests/data/state/engine-before-metric-files.cbor");
    let start = 1_767_290_400_000;
    let cfg = Settings::default();
    let events: Vec<Event> = Simulator::new(SimConfig::demo(5, start, 60 * 60_000)).collect();
    let cut = events.len() / 2;
    let feed = |e: &mut Engine, ev: &Event, out: &mut Vec<Alert>| match ev {
        Event::Benchmark(b) => {
            e.on_benchmark(&b.location, &b.cdn, b.ts, Some(Expected::from(b)));
        }
        Event::Report(r) => {
            e.on_report(r, Some((0, 0)));
            out.extend(e.close_ready());
        }
    };
    let mut a = Engine::new(&cfg);
    let mut before = Vec::new();
    for ev in &events[..cut] {
        feed(&mut a, ev, &mut before);
    }
    let mut b = Engine::restore(&cfg, BenchmarkTable::new(), old)
        .map_err(|e| e.0)
        .unwrap();
    for ev in &events[..cut] {
        if let Event::Benchmark(bm) = ev {
            b.on_benchmark(&bm.location, &bm.cdn, bm.ts, Some(Expected::from(bm)));
        }
    }
    assert_eq!(a.counters(), b.counters());
    let (mut rest_a, mut rest_b) = (Vec::new(), Vec::new());
    for ev in &events[cut..] {
        feed(&mut a, ev, &mut rest_a);
        feed(&mut b, ev, &mut rest_b);
    }
    rest_a.extend(a.close_until(start + 2 * 3_600_000));
    rest_b.extend(b.close_until(start + 2 * 3_600_000));
    assert!(!rest_a.is_empty(), "incidents after the cut");
    assert_eq!(rest_a, rest_b);
    assert_eq!(a.counters(), b.counters());
}
