//! Rebalances: which report partitions this instance owns, taking a newly assigned
//! partition's state over from the changelog topic (with the alerts its last owner left
//! pending), and joining the CDN-wide stage of the other instances.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use tracing::{error, info, warn};

use super::emit::{Closing, Outputs, finish, found_on_alerts_topic};
use super::positions::Positions;
use super::state::Checkpointer;
use crate::changelog::{Records, State};
use crate::config::Config;
use crate::engine::Engine;
use crate::incident::Alert;
use crate::kafka;
use crate::notify;

/// What changed in the assignment.
pub(super) struct Assignment {
    /// Whether any partition is assigned.
    pub(super) any: bool,
    /// Newly assigned partitions.
    pub(super) added: Vec<i32>,
    /// Every partition assigned now.
    pub(super) assigned: Vec<i32>,
    /// Incidents of revoked partitions that were firing: this instance no longer speaks for
    /// them (no reminders, off the live page).
    pub(super) released: Vec<String>,
}

/// Registers newly assigned report partitions with the engine and handles revoked ones:
/// with a changelog their state is dropped (their next owner takes it from there), without
/// one it stays and only stops holding windows back (the partition is probably coming back:
/// an assignment lost in a broker outage).
pub(super) fn sync_assignment(
    consumer: &kafka::ReportsConsumer,
    engine: &mut Engine,
    pos: &mut Positions,
    ckpt: &mut Checkpointer,
) -> Assignment {
    let Ok(tpl) = consumer.assignment() else {
        return Assignment {
            any: false,
            added: Vec::new(),
            assigned: Vec::new(),
            released: Vec::new(),
        };
    };
    let assigned: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    let mut added = Vec::new();
    for p in &assigned {
        if !engine.has_partition(*p) {
            info!(partition = p, "Partition assigned.");
            engine.add_partition(*p);
            pos.last_seen.entry(*p).or_insert_with(Instant::now);
            added.push(*p);
        }
    }
    let revoked: Vec<i32> = pos
        .last_seen
        .keys()
        .filter(|p| !assigned.contains(p))
        .copied()
        .collect();
    let mut released = Vec::new();
    for p in revoked {
        pos.last_seen.remove(&p);
        released.extend(engine.firing_alerts_of(p).into_iter().map(|a| a.id));
        if p == 0 && engine.is_peered() {
            // Partition 0's owner speaks for the CDN-wide incidents.
            released.extend(engine.cdn_firing_alerts().into_iter().map(|a| a.id));
        }
        if ckpt.changelog.is_some() {
            info!(
                partition = p,
                "Partition revoked: its state goes to its next owner."
            );
            engine.drop_partition(p);
            pos.forget(p);
        } else {
            info!(partition = p, "Partition revoked.");
            engine.remove_partition(p);
        }
    }
    if let Some(cl) = &mut ckpt.changelog {
        cl.owned = assigned.iter().copied().collect();
        // A revoked partition's chunks and records are its next owner's.
        cl.chunks.retain(|p, _| assigned.contains(p));
        cl.written.retain(|p, _| assigned.contains(p));
    }
    Assignment {
        any: !assigned.is_empty(),
        added,
        assigned,
        released,
    }
}

/// Takes newly assigned partitions' state over from the changelog (when there is one and its
/// state is newer than this instance's), then sends the alerts their last owner decided but
/// may not have produced.
pub(super) async fn take_over(
    cfg: &Config,
    engine: &mut Engine,
    pos: &mut Positions,
    ckpt: &mut Checkpointer,
    out: &Outputs,
    added: &[i32],
) -> Vec<i32> {
    let Some(topic) = cfg.kafka.changelog_topic.as_deref() else {
        return Vec::new();
    };
    let mut lost = Vec::new();
    let mut pending = Vec::new();
    let mut from: HashMap<i32, i64> = HashMap::new();
    for p in added {
        let last = read_partition_retrying(cfg, topic, *p, &ckpt.retries).await;
        let (header, state) = match last {
            Ok(Some((mut header, mut state))) => {
                if let Some(cl) = &mut ckpt.changelog {
                    // Whoever writes the partition's state next deletes the chunks read here,
                    // and, taken or not, the records this state lacks: the next write sends
                    // what differs from the changelog's records as read.
                    cl.chunks.insert(*p, std::mem::take(&mut header.chunks));
                    if let State::Records(r) = &mut state {
                        cl.written.insert(*p, std::mem::take(&mut r.written));
                    }
                }
                (header, state)
            }
            Ok(None) => {
                info!(
                    partition = p,
                    "No state for this partition in the changelog: starting at the committed offset."
                );
                continue;
            }
            Err(e) => {
                error!(
                    partition = p,
                    error = %e,
                    "Changelog unreadable: the partition starts EMPTY at the committed offset; \
                     incidents its last owner had firing are resolved here as their locations \
                     show up."
                );
                out.metrics.partitions_started_empty.inc();
                lost.push(*p);
                continue;
            }
        };
        if pos.next.get(p).is_some_and(|n| *n >= header.next) {
            info!(
                partition = p,
                "This instance's state of the partition is as new as the changelog's."
            );
            continue;
        }
        let absorbed = match &state {
            State::Whole(share) => engine.absorb_partition(*p, share),
            State::Records(r) => engine.absorb_records(*p, &r.head, &r.sessions, &r.keys),
        };
        if let Err(e) = absorbed {
            error!(
                partition = p,
                error = %e,
                "Changelog state unusable: the partition starts EMPTY at the committed offset."
            );
            out.metrics.partitions_started_empty.inc();
            lost.push(*p);
            continue;
        }
        if let State::Records(r) = state
            && (r.ahead > 0 || r.missing > 0)
        {
            warn!(
                partition = p,
                unfinished = r.ahead,
                missing = r.missing,
                "Changelog records of an unfinished write taken (their keys may count \
                 some reports twice), or records missing (lost to retention: those keys \
                 start again)."
            );
        }
        info!(
            partition = p,
            next = header.next,
            pending = header.pending.len(),
            "Took the partition's state over from the changelog."
        );
        pos.next.insert(*p, header.next);
        for (ap, o) in header.delivered {
            let m = from.entry(ap).or_insert(o);
            *m = (*m).min(o);
        }
        pending.extend(header.pending);
    }
    if pending.is_empty() {
        return lost;
    }
    let wanted: HashSet<String> = pending.iter().map(notify::change_key).collect();
    let found = found_on_alerts_topic(out, from, wanted).await;
    let missing: Vec<Alert> = pending
        .into_iter()
        .filter(|a| !found.contains(&notify::change_key(a)))
        .collect();
    info!(
        sending = missing.len(),
        already_there = found.len(),
        "Alerts left pending by the partitions' last owner, looked up on the alerts topic."
    );
    let closing = Closing {
        alerts: missing,
        started: Instant::now(),
        closed: true,
    };
    finish(ckpt, engine, pos, out, closing).await;
    lost
}

/// Changelog reads attempted per partition before it starts empty.
const READ_ATTEMPTS: u32 = 4;

/// A partition's state on the changelog; what the broker failed to answer is read again (up to
/// [`READ_ATTEMPTS`], waiting 1, 2, 4 s, counted in `retries_total{loop="changelog_read"}`).
/// A record that cannot be decoded is not read again.
async fn read_partition_retrying(
    cfg: &Config,
    topic: &str,
    partition: i32,
    retries: &prometheus::IntCounterVec,
) -> Result<Option<(crate::changelog::Header, State)>, crate::changelog::ChangelogError> {
    let counter = retries.with_label_values(&["changelog_read"]);
    let policy = crate::retry::Policy {
        first: Duration::from_secs(1),
        max: Duration::from_secs(4),
        jitter: false,
    };
    let mut backoff = crate::retry::Backoff::with_policy(
        "read a partition's state from the changelog",
        Some(counter),
        policy,
    );
    let mut attempt = 1;
    loop {
        let read = tokio::task::block_in_place(|| {
            crate::changelog::read_partition(&cfg.kafka, topic, partition, Duration::from_secs(10))
        });
        match read {
            Err(e) if e.is_transient() && attempt < READ_ATTEMPTS => {
                attempt += 1;
                backoff.wait(format!("partition {partition}: {e}")).await;
            }
            other => return other,
        }
    }
}

/// An instance with no CDN-wide stage of its own (no checkpoint) starts it from report
/// partition 0's last changelog share, as the other instances had it, and reads the
/// summaries topic on from there; with no share yet, from the topic's start.
pub(super) fn join_cdn_stage(cfg: &Config, engine: &mut Engine, changelog: &str) {
    let last = tokio::task::block_in_place(|| {
        crate::changelog::read_partition(&cfg.kafka, changelog, 0, Duration::from_secs(10))
    });
    let unusable = |e: &dyn std::fmt::Display| warn!(error = %e, "Partition 0's changelog share unusable: the CDN-wide stage starts from the summaries topic's start.");
    match last {
        Ok(Some((_, State::Whole(share) | State::Records(Records { head: share, .. })))) => {
            match engine.adopt_cdn_stage(&share) {
                Ok(Some(next)) => info!(
                    next,
                    "Joined the CDN-wide stage from partition 0's changelog share."
                ),
                Ok(None) => {}
                Err(e) => unusable(&e),
            }
        }
        Ok(None) => {}
        Err(e) => unusable(&e),
    }
}

/// The changelog topic must exist with a partition for every report partition.
pub(super) fn check_changelog_topic(
    cfg: &Config,
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
) -> anyhow::Result<()> {
    let reports = partition_count(producer, &cfg.kafka.reports_topic)?;
    let changelog = partition_count(producer, topic)?;
    if changelog < reports {
        anyhow::bail!(
            "kafka.changelog_topic: {topic} has {changelog} partitions; it needs as many as {} ({reports})",
            cfg.kafka.reports_topic
        );
    }
    Ok(())
}

/// How many partitions `topic` has (0 if it does not exist).
pub(super) fn partition_count(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
) -> anyhow::Result<usize> {
    tokio::task::block_in_place(|| kafka::partition_count(producer, topic, Duration::from_secs(10)))
        .map_err(|e| anyhow::anyhow!("cannot read the metadata of {topic}: {e}"))
}
