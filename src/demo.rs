//! `qos-sentinel demo`: an in-process Kafka-protocol broker (librdkafka's mock cluster), the
//! simulator feeding it, the daemon watching it, and every alert printed as it arrives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::backtest::score;
use crate::config::Config;
use crate::daemon::{self, RunOptions};
use crate::incident::Alert;
use crate::notify::render_line;
use crate::sim::feed::{FeedOptions, feed};
use crate::sim::{Labels, SimConfig, Simulator};
use crate::time::{Millis, format_ms, now_ms};

pub struct DemoOptions {
    pub minutes: u64,
    pub speed: f64,
    pub seed: u64,
    /// Serve /metrics etc. on this address while the demo runs.
    pub http: Option<String>,
}

/// Creates the four topics on a mock cluster.
pub fn create_topics(
    cluster: &MockCluster<'_, impl rdkafka::ClientContext>,
    cfg: &Config,
    report_partitions: i32,
) -> anyhow::Result<()> {
    let k = &cfg.kafka;
    cluster.create_topic(&k.reports_topic, report_partitions, 1)?;
    cluster.create_topic(&k.benchmarks_topic, 1, 1)?;
    cluster.create_topic(&k.alerts_topic, 1, 1)?;
    cluster.create_topic(&k.dead_letter_topic, 1, 1)?;
    Ok(())
}

/// Prints each alert the alerts topic receives and keeps it in `seen`, until `stop`.
fn print_alerts(
    cfg: &Config,
    seen: Arc<Mutex<Vec<Alert>>>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tail = tail_consumer(&cfg.kafka, &cfg.kafka.alerts_topic)?;
    Ok(tokio::task::spawn_blocking(move || {
        while !*stop.borrow() {
            if let Some(Ok(m)) = tail.poll(Duration::from_millis(200)) {
                match m.payload().map(serde_json::from_slice::<Alert>) {
                    Some(Ok(a)) => {
                        println!("{}", render_line(&a));
                        if let Ok(mut s) = seen.lock() {
                            s.push(a);
                        }
                    }
                    _ => println!("(unreadable message on the alerts topic)"),
                }
            }
        }
    }))
}

/// Which injected incidents the alerts caught, and the score.
fn print_score(alerts: &[Alert], labels: &Labels) {
    let s = score(alerts, labels);
    for l in &labels.incidents {
        let caught = alerts.iter().any(|a| {
            l.scopes.contains(&a.scope)
                && l.metrics.iter().any(|m| m == a.metric.as_str())
                && a.started_at < l.injected.end
                && a.started_at >= l.injected.start - labels.window_ms
        });
        println!(
            "  {} {}",
            if caught { "CAUGHT " } else { "MISSED " },
            l.injected.describe()
        );
    }
    println!(
        "Detected {}/{} injected incidents; {} of {} firing alerts matched an injected incident (precision {:.2}); median delay {} windows.",
        s.detected,
        s.incidents,
        s.true_alerts,
        s.firing_alerts,
        s.precision,
        s.median_delay_windows
            .map_or("-".into(), |d| format!("{d:.1}"))
    );
}

fn tail_consumer(k: &crate::kafka::KafkaConfig, topic: &str) -> anyhow::Result<BaseConsumer> {
    let c = crate::kafka::plain_consumer(k, "qos-sentinel-demo-tail")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    c.assign(&tpl)?;
    Ok(c)
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let cluster = MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    let mut cfg = Config::default();
    cfg.kafka.brokers = brokers.clone();
    cfg.kafka.group_id = "qos-sentinel-demo".into();
    create_topics(&cluster, &cfg, 6)?;
    let state = std::env::temp_dir().join(format!("qos-sentinel-demo-{}", std::process::id()));
    cfg.state.dir = state.clone();
    if let Some(addr) = &opts.http {
        cfg.http.listen = addr.clone();
    }
    cfg.validate()?;

    let duration = opts.minutes as Millis * 60_000;
    // Yesterday's evening peak, whatever the time now: the story does not depend on when the
    // demo is run (thin night-time traffic makes startup regressions hard to see).
    let day = now_ms().div_euclid(86_400_000) * 86_400_000;
    let start = day - 86_400_000 + 18 * 3_600_000;
    let sim = Simulator::new(SimConfig::demo(opts.seed, start, duration));
    let labels = Labels::of(&sim, cfg.window_ms());
    println!("qos-sentinel demo: in-process Kafka at {brokers}");
    println!(
        "Simulating {} minutes of traffic ({} locations x {} CDNs) at {}x speed. Injected incidents:",
        opts.minutes,
        sim.locations().len(),
        sim.cdns().len(),
        opts.speed
    );
    for (i, inc) in sim.incidents().iter().enumerate() {
        println!("  {}. {}", i + 1, inc.describe());
    }
    println!();

    let (stop_tx, stop_rx) = watch::channel(false);
    let daemon = tokio::spawn(daemon::run(
        cfg.clone(),
        RunOptions {
            print_alerts: false,
            serve_http: opts.http.is_some(),
            config_path: None,
            metrics: None,
        },
        stop_rx.clone(),
    ));

    // Print alerts as the alerts topic receives them: the demo shows what a consumer of the
    // topic sees, not an in-process shortcut.
    let seen: Arc<Mutex<Vec<Alert>>> = Arc::default();
    let printer = print_alerts(&cfg, seen.clone(), stop_rx.clone())?;

    let producer = crate::kafka::producer(&cfg.kafka)?;
    let feed_opts = FeedOptions {
        reports_topic: cfg.kafka.reports_topic.clone(),
        benchmarks_topic: cfg.kafka.benchmarks_topic.clone(),
        speed: opts.speed,
        bad_every: 20_000,
    };
    let stats = feed(&producer, sim, &feed_opts, None, |minute, s| {
        if (minute - start) % (10 * 60_000) == 0 && minute > start {
            println!(
                "  [sim {}] {} reports, {} benchmarks, {} malformed messages sent",
                format_ms(minute),
                s.reports,
                s.benchmarks,
                s.bad
            );
        }
    })
    .await?;
    // Let the daemon drain the tail and the printer catch up.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop_tx.send(true);
    daemon.await??;
    let _ = printer.await;
    let _ = std::fs::remove_dir_all(&state);

    let alerts = seen.lock().map(|s| s.clone()).unwrap_or_default();
    println!();
    println!(
        "Sent {} reports, {} benchmark rows and {} malformed messages (they went to {}).",
        stats.reports, stats.benchmarks, stats.bad, cfg.kafka.dead_letter_topic
    );
    print_score(&alerts, &labels);
    Ok(())
}
