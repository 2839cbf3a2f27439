//! Feeds simulated traffic into Kafka (the `simulate` command and the demo).

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;

use super::{Event, Simulator};
use crate::time::Millis;

pub struct FeedOptions {
    pub reports_topic: String,
    pub benchmarks_topic: String,
    /// Simulated milliseconds per wall millisecond; 0 = as fast as the broker takes it.
    pub speed: f64,
    /// Every this many reports, also send one malformed message (0 = never).
    pub bad_every: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FeedStats {
    pub reports: u64,
    pub benchmarks: u64,
    pub bad: u64,
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    value: &[u8],
) -> Result<(), KafkaError> {
    loop {
        let record = FutureRecord::to(topic).key(key).payload(value);
        match producer.send_result(record) {
            Ok(_delivery) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Produces every event of `sim`, paced in event time, until it ends or `stop` turns true.
/// `progress` is called with the event time of each simulated minute boundary.
pub async fn feed(
    producer: &FutureProducer,
    sim: Simulator,
    opts: &FeedOptions,
    mut stop: Option<watch::Receiver<bool>>,
    mut progress: impl FnMut(Millis, FeedStats),
) -> Result<FeedStats, KafkaError> {
    let wall0 = Instant::now();
    let mut t0: Option<Millis> = None;
    let mut stats = FeedStats::default();
    let mut last_minute = Millis::MIN;
    for ev in sim {
        let ts = ev.ts();
        let start = *t0.get_or_insert(ts);
        if opts.speed > 0.0 {
            let due = Duration::from_secs_f64(((ts - start).max(0) as f64 / opts.speed) / 1000.0);
            let now = wall0.elapsed();
            if due > now + Duration::from_millis(20) {
                tokio::time::sleep(due - now).await;
            }
        }
        if let Some(s) = &mut stop
            && *s.borrow_and_update()
        {
            break;
        }
        if ts.div_euclid(60_000) != last_minute {
            last_minute = ts.div_euclid(60_000);
            progress(last_minute * 60_000, stats);
        }
        match ev {
            Event::Report(r) => {
                let value = serde_json::to_vec(&r).map_err(|_| KafkaError::Canceled)?;
                send(producer, &opts.reports_topic, r.location.as_bytes(), &value).await?;
                stats.reports += 1;
                if opts.bad_every > 0 && stats.reports % opts.bad_every == 0 {
                    let junk: &[u8] = if stats.bad % 2 == 0 {
                        b"{\"ts\": \"not a time\", \"location\": \"XX/broken\""
                    } else {
                        br#"{"ts":1,"session_id":"s","location":"XX/broken","cdn":"cdn-a","played_ms":-1,"rebuffer_ms":0}"#
                    };
                    send(producer, &opts.reports_topic, b"XX/broken", junk).await?;
                    stats.bad += 1;
                }
            }
            Event::Benchmark(b) => {
                let key = format!("{}|{}", b.location, b.cdn);
                let value = serde_json::to_vec(&b).map_err(|_| KafkaError::Canceled)?;
                send(producer, &opts.benchmarks_topic, key.as_bytes(), &value).await?;
                stats.benchmarks += 1;
            }
        }
    }
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(30)))
        .await
        .map_err(|_| KafkaError::Canceled)??;
    Ok(stats)
}
