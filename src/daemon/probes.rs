//! What the daemon measures besides the engine: broker reachability (a thread of its own),
//! consumer lag, and the engine's gauges.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::Consumer;
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

/// Sets the lag gauge of every assigned partition (high watermark minus the next offset to
/// read) and removes the series of partitions no longer assigned; `shown` is the partitions
/// with a series. A partition whose watermarks cannot be read keeps its last value. (The
/// gauge is never reset as a whole: a scrape during the watermark reads would find no series.)
/// The broker's reachability is the probe thread's job.
pub(super) fn probe_lag(
    consumer: &kafka::ReportsConsumer,
    topic: &str,
    next: &HashMap<i32, i64>,
    metrics: &Metrics,
    shown: &mut HashSet<i32>,
) {
    let Ok(tpl) = consumer.assignment() else {
        return;
    };
    let assigned: HashSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    for p in shown.iter().filter(|p| !assigned.contains(p)) {
        let _ = metrics
            .consumer_lag
            .remove_label_values(&[p.to_string().as_str()]);
    }
    shown.retain(|p| assigned.contains(p));
    for p in assigned {
        let marks = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(topic, p, Duration::from_millis(1000))
        });
        match marks {
            Ok((low, high)) => {
                let at = next.get(&p).copied().unwrap_or(low).max(low);
                metrics
                    .consumer_lag
                    .with_label_values(&[p.to_string().as_str()])
                    .set((high - at).max(0));
                shown.insert(p);
            }
            Err(e) => {
                debug!(partition = p, error = %e, "Cannot read partition watermarks.");
                return;
            }
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
