//! Partitions read in any order, a partition taken over from its last share, and instances
//! sharing the partitions through the summaries.

use super::*;

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

/// A partition's state as the changelog carries it: its head, session buckets and keys.
type Taken = (Vec<u8>, Vec<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>);

fn records_of_partition(e: &Engine, p: i32) -> Taken {
    let mut t = Taken::default();
    let has = e
        .partition_records(p, |r| match r {
            Record::Head(_, v) => t.0 = v,
            Record::Sessions(_, _, v) => t.1.push(v),
            Record::Key(_, k, v) => t.2.push((key_id(k), v)),
            Record::Engine(_) => {}
        })
        .unwrap();
    assert!(has, "partition {p}");
    t
}

/// The victim's partitions go over as the daemon's changelog carries them (records), in the
/// third case as the version before carried them (one whole share each).
#[test]
fn a_partition_taken_over_from_its_changelog_alerts_as_if_never_moved() {
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
                    .map(|p| {
                        (
                            records_of_partition(e, *p),
                            e.export_partition(*p).unwrap().unwrap(),
                        )
                    })
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
        for (p, (records, whole)) in [0, 1].iter().zip(&shares) {
            if victim_until == 35 {
                b.absorb_partition(*p, whole).unwrap();
            } else {
                let (head, sessions, keys) = records;
                b.absorb_records(*p, head, sessions, keys).unwrap();
            }
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
/// At most `summary_keys` bad keys in one summary.
fn run_peered(
    events: &[crate::sim::Event],
    end: i64,
    owners: [usize; 4],
    summary_keys: usize,
) -> Vec<Alert> {
    use crate::sim::Event;
    let cfg = Settings::default();
    let mut engines: Vec<(Engine, usize)> = (0..2)
        .map(|_| {
            let mut e = Engine::new(&cfg);
            e.share_with_peers(4);
            if let Some(p) = &mut e.peers {
                p.summary_keys = Some(summary_keys);
            }
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
                // Deciding after each summary, as a daemon may (a summary at a time).
                while *read < log.len() {
                    e.on_summary(*read as i64, &log[*read]).expect("a summary");
                    *read += 1;
                    if e.has_ready() {
                        out.extend(e.close_ready());
                    }
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
        let peered = run_peered(&events, end, owners, super::super::peers::SUMMARY_KEYS);
        assert_eq!(all(&peered), all(&single), "owners {owners:?}");
        // A close's bad keys in parts of one or two keys each (as a CDN incident over more
        // keys than one message holds would be): the same alerts.
        for keys in [1, 2] {
            let parted = run_peered(&events, end, owners, keys);
            assert_eq!(
                all(&parted),
                all(&single),
                "owners {owners:?}, {keys} keys a summary"
            );
        }
    }
}
