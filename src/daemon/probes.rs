//! What the daemon measures besides the engine: broker reachability (a thread of its own),
//! consumer lag, and the engine's gauges.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::engine::Engine;
use crate::http::{Live, Readiness};
use crate::kafka;
use crate::metrics::Metrics;

/// Asks the cluster for the reports topic's metadata every 2 s on a thread of its own (the
/// main loop may be busy retrying a produce while the broker is away) and keeps
/// `broker_reachable` and the `qos_sentinel_ready` gauge current.
pub(super) fn spawn_broker_probe(
    cfg: &Config,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use rdkafka::producer::Producer;
    let producer = kafka::metadata_client(&cfg.kafka)?;
    let topic = cfg.kafka.reports_topic.clone();
    Ok(std::thread::Builder::new()
        .name("broker-probe".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let ok = producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .is_ok_and(|m| !m.brokers().is_empty());
                if ok != readiness.broker_reachable.swap(ok, Ordering::AcqRel) {
                    if ok {
                        info!("Broker reachable again.");
                    } else {
                        warn!("Broker unreachable: not ready.");
                    }
                }
                metrics.ready.set(i64::from(readiness.ready()));
                for _ in 0..20 {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })?)
}

/// What the lag probe needs from the engine's loop, handed over at each probe: the partitions
/// assigned and the next offset to read of each.
#[derive(Default, Clone)]
pub(super) struct LagView {
    pub assigned: Vec<i32>,
    pub next: HashMap<i32, i64>,
}

/// Keeps the lag gauge of every assigned partition (high watermark minus the next offset to
/// read) on a thread and a client of its own, from what the loop last handed over in `view`:
/// the watermarks of all partitions come in two list-offsets requests per leader every
/// [`super::PROBE_EVERY`], and the loop never waits for them. (It did, two round trips per
/// partition in turn: at 256 partitions on a busy broker, seconds of every five.) Series of
/// partitions no longer assigned are removed; a partition whose watermarks cannot be read
/// keeps its last value (the gauge is never reset as a whole: a scrape during the reads would
/// find no series).
pub(super) fn spawn_lag_probe(
    cfg: &Config,
    view: Arc<Mutex<LagView>>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let client = kafka::plain_consumer(&cfg.kafka, &format!("{}-lag", cfg.kafka.group_id))?;
    let topic = cfg.kafka.reports_topic.clone();
    Ok(std::thread::Builder::new()
        .name("lag-probe".into())
        .spawn(move || {
            let mut shown = HashSet::new();
            // Every PROBE_EVERY, and at once when the assignment changed (the first one
            // included): new partitions get their series without waiting.
            let mut probed: Option<(std::time::Instant, Vec<i32>)> = None;
            while !stop.load(Ordering::Acquire) {
                // Copied only when a probe is due, not at every look.
                let due = view.lock().ok().and_then(|v| {
                    probed
                        .as_ref()
                        .is_none_or(|(at, assigned)| {
                            at.elapsed() >= super::PROBE_EVERY || *assigned != v.assigned
                        })
                        .then(|| v.clone())
                });
                if let Some(v) = due {
                    probe_lag(&client, &topic, &v, &metrics, &mut shown);
                    probed = Some((std::time::Instant::now(), v.assigned));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })?)
}

/// One probe: the gauges from both watermarks of every assigned partition.
fn probe_lag(
    client: &BaseConsumer,
    topic: &str,
    view: &LagView,
    metrics: &Metrics,
    shown: &mut HashSet<i32>,
) {
    let assigned: HashSet<i32> = view.assigned.iter().copied().collect();
    for p in shown.iter().filter(|p| !assigned.contains(p)) {
        let _ = metrics
            .consumer_lag
            .remove_label_values(&[p.to_string().as_str()]);
    }
    shown.retain(|p| assigned.contains(p));
    if assigned.is_empty() {
        return;
    }
    let (Some(low), Some(high)) = (
        watermarks(client, topic, &view.assigned, Offset::Beginning),
        watermarks(client, topic, &view.assigned, Offset::End),
    ) else {
        return;
    };
    for (p, high) in high {
        let low = low.get(&p).copied().unwrap_or(0);
        let at = view.next.get(&p).copied().unwrap_or(low).max(low);
        metrics
            .consumer_lag
            .with_label_values(&[p.to_string().as_str()])
            .set((high - at).max(0));
        shown.insert(p);
    }
}

/// The low (`Offset::Beginning`) or high (`Offset::End`) watermark of each partition that
/// answered, in one list-offsets request per leader; `None` when the request failed.
fn watermarks(
    client: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    which: Offset,
) -> Option<HashMap<i32, i64>> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, which).ok()?;
    }
    match client.offsets_for_times(tpl, Duration::from_secs(10)) {
        Ok(got) => Some(
            got.elements()
                .iter()
                .filter(|e| e.error().is_ok())
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect(),
        ),
        Err(e) => {
            debug!(error = %e, "Cannot read the reports partitions' watermarks.");
            None
        }
    }
}

pub(super) fn publish_gauges(metrics: &Metrics, engine: &Engine, live: &Live) {
    metrics.set_quality(engine.quality());
    live.set_quality(engine.quality(), engine.watermark());
    metrics.sync_engine(engine.counters());
    metrics.incidents_firing.set(engine.firing() as i64);
    if let Some(wm) = engine.watermark() {
        metrics.watermark.set(wm / 1000);
    }
    metrics.benchmark_versions.set(engine.table().len() as i64);
    metrics.benchmark_keys.set(engine.table().keys() as i64);
    metrics.learned_entries.set(engine.learned_entries() as i64);
    metrics.session_levels.set(engine.session_levels() as i64);
    metrics.open_keys.set(engine.open_stats().1 as i64);
    metrics.run_windows.set(engine.run_windows() as i64);
}
