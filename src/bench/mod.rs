//! `qos-sentinel bench`: the end-to-end benchmark (issue: throughput, alert latency, memory).
//!
//! One run, on one machine, through a real Kafka-protocol broker on loopback (librdkafka's
//! mock cluster in this process, or `--brokers` for an external one):
//! 1. produces N simulated reports (with the demo's incidents) to a fresh reports topic;
//! 2. reads the whole topic with a bare rdkafka consumer that only touches the payloads:
//!    the ceiling any consumer of this broker can reach;
//! 3. runs the daemon over the same topic and times it from its first record to its N-th:
//!    processing rate and its ratio to the ceiling; a webhook receiver records every alert
//!    with the `X-QoS-Detected-At` header, giving close-to-delivery latency (p50, p99);
//! 4. in a child process per size (so allocations of one do not hide in another's RSS), fills
//!    an engine with K active location+CDN keys (benchmarks, three windows of reports, so
//!    baselines exist) and reports resident bytes per key; at the largest size it also
//!    checkpoints to RocksDB and times a restart (open, load, restore) until ready.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::{Config, ReceiverConfig, ReceiverKind, Secret};
use crate::daemon::{self, RunOptions};
use crate::metrics::Metrics;
use crate::sim::{Event, SimConfig, Simulator};
use crate::time::{Millis, now_ms};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Reports to produce and consume.
    pub reports: u64,
    /// Partitions of the reports topic (the mock cluster keeps only the newest 5 MiB of each).
    pub partitions: i32,
    /// Active-key counts for the memory figure; the largest also gets the restart figure.
    pub keys: Vec<usize>,
    /// An external cluster instead of the in-process one (topics must not exist yet or
    /// must be empty: the run reads them from the beginning).
    pub brokers: Option<String>,
    pub seed: u64,
    /// Share of the reports topic's messages that are bad (truncated JSON), each one a dead
    /// letter: with 0.5, one bad message after each good report.
    pub bad_share: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Messages on the reports topic, bad ones included.
    pub reports: u64,
    /// Share of them that are bad, as asked.
    pub bad_share: f64,
    /// Bad messages produced.
    pub bad_messages: u64,
    /// Dead letters the daemon wrote.
    pub dead_letters: u64,
    pub partitions: i32,
    pub produce_per_s: f64,
    /// Bare rdkafka consumer, payloads touched, nothing else.
    pub ceiling_per_s: f64,
    /// The daemon, first record to last.
    pub daemon_per_s: f64,
    /// `daemon_per_s / ceiling_per_s`.
    pub ratio: f64,
    /// Alerts delivered to the webhook while the daemon ran.
    pub alerts_delivered: usize,
    pub alert_latency_p50_ms: Option<Millis>,
    pub alert_latency_p99_ms: Option<Millis>,
    pub alert_latency_max_ms: Option<Millis>,
    /// The engine loop's turns while the daemon ran (`qos_sentinel_loop_turn_duration_seconds`):
    /// how many, the bucket bound under which 99 % of them ended, and how many took over 1 s.
    #[serde(default)]
    pub loop_turns: Option<LoopTurns>,
    pub memory: Vec<MemoryFigures>,
    /// Share of CPU time the hypervisor took from this VM (`steal` in /proc/stat) during the
    /// ceiling and daemon phases: figures from a VM with much steal are low and noisy.
    pub steal_percent: Option<f64>,
}

/// The engine loop's turns, from its histogram.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LoopTurns {
    pub turns: u64,
    /// Upper bound of the bucket holding the 99th percentile, seconds.
    pub p99_at_most_s: f64,
    pub over_1s: u64,
}

impl LoopTurns {
    fn of(h: &prometheus::Histogram) -> LoopTurns {
        use prometheus::core::Collector;
        let mut buckets = Vec::new();
        let mut turns = 0;
        for family in h.collect() {
            for m in family.get_metric() {
                let hist = m.get_histogram();
                turns = hist.get_sample_count();
                buckets = hist
                    .get_bucket()
                    .iter()
                    .map(|b| (b.upper_bound(), b.cumulative_count()))
                    .collect();
            }
        }
        let p99 = buckets
            .iter()
            .find(|(_, n)| *n as f64 >= 0.99 * turns as f64)
            .map_or(f64::INFINITY, |(le, _)| *le);
        let within_1s = buckets
            .iter()
            .find(|(le, _)| (*le - 1.0).abs() < 1e-9)
            .map_or(turns, |(_, n)| *n);
        LoopTurns {
            turns,
            p99_at_most_s: p99,
            over_1s: turns - within_1s,
        }
    }
}

mod memory;
mod takeover;

use memory::memory_child;
pub use memory::{MemoryFigures, memory, rss_bytes};
pub use takeover::{TakeoverFigures, takeover};

const START: Millis = 1_767_297_600_000 + 18 * 3_600_000;

/// The whole benchmark; prints progress to stderr.
pub async fn run(opts: &BenchOptions) -> anyhow::Result<Figures> {
    let cluster = match opts.brokers {
        Some(_) => None,
        None => Some(MockCluster::new(1)?),
    };
    let brokers = match (&opts.brokers, &cluster) {
        (Some(b), _) => b.clone(),
        (None, Some(c)) => c.bootstrap_servers(),
        (None, None) => anyhow::bail!("no broker"),
    };
    let mut cfg = Config::default();
    cfg.kafka.brokers = brokers.clone();
    let run_id = now_ms();
    cfg.kafka.reports_topic = format!("bench.reports.{run_id}");
    cfg.kafka.benchmarks_topic = format!("bench.benchmarks.{run_id}");
    cfg.kafka.alerts_topic = format!("bench.alerts.{run_id}");
    cfg.kafka.dead_letter_topic = format!("bench.dead-letters.{run_id}");
    cfg.kafka.group_id = format!("bench-{run_id}");
    if let Some(c) = &cluster {
        crate::demo::create_topics(c, &cfg, opts.partitions)?;
    }

    eprintln!(
        "bench: producing {} reports to {} partitions at {brokers}",
        opts.reports, opts.partitions
    );
    let (sent, bad_messages, produce_per_s) = {
        let cfg = cfg.clone();
        let (n, seed, bad) = (opts.reports, opts.seed, opts.bad_share);
        tokio::task::spawn_blocking(move || produce(&cfg, n, seed, bad)).await??
    };
    eprintln!("bench: produced {sent} reports at {produce_per_s:.0}/s");

    let cpu0 = cpu_times();
    let ceiling_per_s = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || ceiling(&cfg, sent)).await??
    };
    eprintln!("bench: bare consumer read them at {ceiling_per_s:.0}/s");

    let (daemon_per_s, latencies, dead_letters, loop_turns) = daemon_rate(&cfg, sent).await?;
    let steal_percent = match (cpu0, cpu_times()) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
            Some(100.0 * (s1 - s0) as f64 / (t1 - t0) as f64)
        }
        _ => None,
    };
    eprintln!(
        "bench: the daemon processed them at {daemon_per_s:.0}/s ({:.0} % of the ceiling); {} alerts delivered",
        100.0 * daemon_per_s / ceiling_per_s,
        latencies.len()
    );

    let mut memory = Vec::new();
    let largest = opts.keys.iter().copied().max();
    for &k in &opts.keys {
        let restart = Some(k) == largest;
        eprintln!(
            "bench: memory with {k} active keys{}",
            if restart { " and restart" } else { "" }
        );
        memory.push(memory_child(k, restart).await?);
    }

    let q = |p: f64| quantile(&latencies, p);
    Ok(Figures {
        reports: sent,
        bad_share: opts.bad_share,
        bad_messages,
        dead_letters,
        partitions: opts.partitions,
        produce_per_s,
        ceiling_per_s,
        daemon_per_s,
        ratio: daemon_per_s / ceiling_per_s,
        alerts_delivered: latencies.len(),
        alert_latency_p50_ms: q(0.5),
        alert_latency_p99_ms: q(0.99),
        alert_latency_max_ms: latencies.iter().copied().max(),
        loop_turns: Some(loop_turns),
        memory,
        steal_percent,
    })
}

/// (steal, total) CPU jiffies of the machine, from /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Some((*v.get(7)?, v.iter().take(8).sum()))
}

/// Nearest-rank quantile.
fn quantile(sorted_or_not: &[Millis], p: f64) -> Option<Millis> {
    if sorted_or_not.is_empty() {
        return None;
    }
    let mut v = sorted_or_not.to_vec();
    v.sort_unstable();
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Produces simulated traffic until `n` messages are on the reports topic, a `bad_share` of
/// them bad: returns (messages, bad ones, messages/s).
fn produce(cfg: &Config, n: u64, seed: u64, bad_share: f64) -> anyhow::Result<(u64, u64, f64)> {
    anyhow::ensure!(
        (0.0..1.0).contains(&bad_share),
        "--bad-share must be at least 0 and below 1"
    );
    let producer = crate::kafka::bulk_producer(&cfg.kafka)?;
    // About three reports per session-minute at the evening peak: size the world so that n
    // reports span half an hour of event time, long enough for incidents to fire and resolve.
    let minutes = 30;
    let mut sc = SimConfig::demo(seed, START, minutes * 60_000);
    sc.locations = 2_000;
    let good = n as f64 * (1.0 - bad_share);
    sc.peak_sessions = ((good / (minutes as f64 * 3.0)) * 2.5) as usize + 1;
    let (mut reports, mut bad, started) = (0u64, 0u64, Instant::now());
    let send = |topic: &str, key: &[u8], value: &[u8]| -> anyhow::Result<()> {
        loop {
            match producer.send(BaseRecord::to(topic).key(key).payload(value)) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => std::thread::sleep(Duration::from_millis(1)),
                Err((e, _)) => return Err(e.into()),
            }
        }
    };
    for ev in Simulator::new(sc) {
        match ev {
            Event::Report(r) => {
                if reports == n {
                    break;
                }
                let json = serde_json::to_vec(&r)?;
                send(&cfg.kafka.reports_topic, r.location.as_bytes(), &json)?;
                reports += 1;
                // Bad messages in step with the good: truncated JSON, as a crashed writer leaves.
                while reports < n && (bad + 1) as f64 <= bad_share * reports as f64 {
                    let cut = json.len() / 2;
                    send(
                        &cfg.kafka.reports_topic,
                        r.location.as_bytes(),
                        &json[..cut],
                    )?;
                    reports += 1;
                    bad += 1;
                }
            }
            Event::Benchmark(b) => {
                let key = format!("{}|{}", b.location, b.cdn);
                send(
                    &cfg.kafka.benchmarks_topic,
                    key.as_bytes(),
                    &serde_json::to_vec(&b)?,
                )?;
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let rate = reports as f64 / started.elapsed().as_secs_f64();
    // The mock cluster silently keeps only the newest 5 MiB of each partition: check that
    // every record is still there, or say what to change.
    let meta = producer
        .client()
        .fetch_metadata(Some(&cfg.kafka.reports_topic), Duration::from_secs(10))?;
    let mut kept = 0i64;
    for t in meta.topics() {
        for p in t.partitions() {
            let (low, high) =
                producer
                    .client()
                    .fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))?;
            anyhow::ensure!(
                low == 0,
                "the broker dropped the oldest {low} records of partition {} (the in-process broker keeps 5 MiB per partition): use more --partitions or fewer --reports",
                p.id()
            );
            kept += high;
        }
    }
    anyhow::ensure!(
        kept as u64 == reports,
        "the reports topic holds {kept} records, {reports} were sent"
    );
    Ok((reports, bad, rate))
}

/// Reads every partition of the reports topic from the start with a bare consumer until `n`
/// records arrived: records/s from the first record to the last.
fn ceiling(cfg: &Config, n: u64) -> anyhow::Result<f64> {
    let group = format!("{}-ceiling", cfg.kafka.group_id);
    let consumer = crate::kafka::plain_consumer(&cfg.kafka, &group)?;
    let meta = consumer.fetch_metadata(Some(&cfg.kafka.reports_topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(t.name(), p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let (mut got, mut bytes, mut first) = (0u64, 0usize, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    while got < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "bare consumer read only {got} of {n} records in 10 minutes (did the broker drop data?)"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                bytes += m.payload().map_or(0, <[u8]>::len);
                got += 1;
            }
            Some(Err(e)) => eprintln!("bench: bare consumer: {e}"),
            None => {}
        }
    }
    std::hint::black_box(bytes);
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    Ok(n as f64 / secs.max(1e-9))
}

/// Runs the daemon over the topic: (records/s from its first record to the n-th, alert
/// latencies in ms from window close to webhook receipt, dead letters, the loop's turns).
async fn daemon_rate(cfg: &Config, n: u64) -> anyhow::Result<(f64, Vec<Millis>, u64, LoopTurns)> {
    let latencies: Arc<Mutex<Vec<Millis>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let lat = latencies.clone();
    let app = axum::Router::new().fallback(axum::routing::post(
        move |headers: axum::http::HeaderMap| {
            let received = now_ms();
            let detected = headers
                .get(crate::notify::render::DETECTED_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Millis>().ok());
            if let (Some(d), Ok(mut l)) = (detected, lat.lock()) {
                l.push(received - d);
            }
            async { "ok" }
        },
    ));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir()?;
    let mut cfg = cfg.clone();
    cfg.state.dir = dir.path().to_path_buf();
    cfg.window.max_keys = 1_000_000;
    cfg.notify.receivers = vec![ReceiverConfig {
        name: "bench".into(),
        kind: ReceiverKind::Webhook,
        url: Secret::new(format!("http://{addr}/alerts")),
        hmac_secret: None,
        severities: Vec::new(),
        rules: Vec::new(),
        scopes: Vec::new(),
        repeat_interval: None,
        rate_limit_per_minute: None,
        group_max: 1,
        hold_children: false,
        // Simulated event time, long past: the latency figure needs every alert sent.
        max_age: Some(Duration::ZERO),
        link_template: None,
    }];
    cfg.validate()?;
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let daemon = tokio::spawn(daemon::run(
        cfg,
        RunOptions {
            metrics: Some(metrics.clone()),
            ..Default::default()
        },
        stop_rx,
    ));
    let records = metrics.records_in.with_label_values(&["reports"]);
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first = None;
    let finished = loop {
        let got = records.get();
        if got > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if got >= n {
            break first.map(|f| f.elapsed());
        }
        if daemon.is_finished() || Instant::now() > deadline {
            let _ = stop_tx.send(true);
            anyhow::bail!("the daemon stopped or stalled after {got} of {n} records");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // Let the last deliveries land, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_tx.send(true);
    daemon.await??;
    server.abort();
    let secs = finished.map_or(0.0, |d| d.as_secs_f64());
    let l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    Ok((
        n as f64 / secs.max(1e-9),
        l,
        metrics.dead_letters.get(),
        LoopTurns::of(&metrics.loop_turn_seconds),
    ))
}

/// Prints the figures as a Markdown table (the README's format).
pub fn render(f: &Figures) -> String {
    let ms = |v: Option<Millis>| v.map_or("-".into(), |v| format!("{v} ms"));
    let mut s = String::new();
    s.push_str("| figure | value | target |\n|---|---|---|\n");
    s.push_str(&format!(
        "| reports (partitions) | {} ({}) | |\n| produce | {:.0}/s | |\n| bare consumer (ceiling) | {:.0}/s | |\n| qos-sentinel end to end | {:.0}/s | |\n| ratio to ceiling | {:.0} % | >= 90 % |\n",
        f.reports,
        f.partitions,
        f.produce_per_s,
        f.ceiling_per_s,
        f.daemon_per_s,
        100.0 * f.ratio
    ));
    s.push_str(&format!(
        "| alert latency, window close to webhook (n = {}) | p50 {}, p99 {}, max {} | p99 <= 250 ms |\n",
        f.alerts_delivered,
        ms(f.alert_latency_p50_ms),
        ms(f.alert_latency_p99_ms),
        ms(f.alert_latency_max_ms)
    ));
    if let Some(t) = &f.loop_turns {
        s.push_str(&format!(
            "| engine loop turns while consuming | {} turns, p99 <= {} s, {} over 1 s | p99 stall < 50 ms |\n",
            t.turns, t.p99_at_most_s, t.over_1s
        ));
    }
    if f.bad_share > 0.0 {
        s.push_str(&format!(
            "| bad messages (dead letters written) | {} of {} ({}) | rate >= 80 % of the clean run's |\n",
            f.bad_messages,
            f.reports,
            f.dead_letters
        ));
    }
    if let Some(steal) = f.steal_percent {
        s.push_str(&format!(
            "| CPU steal (hypervisor) while consuming | {steal:.0} % | |\n"
        ));
    }
    for m in &f.memory {
        s.push_str(&format!(
            "| memory at {} keys | {:.0} B/key state, {:.0} B/key with benchmark table | <= 300 B/key |\n",
            m.keys, m.state_bytes_per_key, m.with_table_bytes_per_key
        ));
        if let (Some(ms), Some(b)) = (m.restart_ms, m.checkpoint_bytes) {
            s.push_str(&format!(
                "| restart with {} keys ({:.0} MB checkpoint) | {ms} ms to ready | <= 5 s |\n",
                m.keys,
                b as f64 / 1e6
            ));
        }
        if let Some([first, window, unchanged]) = m.checkpoint_stall_ms {
            s.push_str(&format!(
                "| engine loop held by a checkpoint at {} keys (first, after a window, nothing changed) | {first} ms, {window} ms, {unchanged} ms | p99 stall < 50 ms |\n",
                m.keys
            ));
        }
    }
    s
}
