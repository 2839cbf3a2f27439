//! The daemon: a thin async shell around [`Engine`].
//!
//! ```text
//! reports topic ──► decode ──► engine (as-of join ─► windows ─► detect ─► incidents) ──► alerts topic
//!                     │                 ▲
//!                     └─► dead letters   └── benchmark table ◄── benchmarks topic (+ RocksDB cache)
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::checkpoint::CheckpointStore;
use crate::config::Config;
use crate::decode;
use crate::engine::Engine;
use crate::http::{Live, Readiness};
use crate::incident::{Alert, Status};
use crate::metrics::Metrics;
use crate::notify::deliver::Dispatcher;
use crate::notify::{self, AlertSink, DeadLetter, DeadLetters};
use crate::source::{self, BenchmarkUpdate};
use crate::table::store::TableStore;
use crate::time::Millis;

/// SIGHUPs as a channel (never fires when not wanted or not on Unix).
fn hangups(wanted: bool) -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    #[cfg(unix)]
    if wanted {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => warn!(error = %e, "Cannot listen for SIGHUP; rules reload disabled."),
        }
    }
    #[cfg(not(unix))]
    let _ = (wanted, tx);
    rx
}

/// How often consumer lag, broker reachability and database sizes are measured.
/// Most records handled between two looks at the other event sources (ticker, benchmarks,
/// signals).
const BATCH: u32 = 512;
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Options of a daemon run beyond the config file.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Print each alert as one line on stdout.
    pub print_alerts: bool,
    /// Serve /metrics, /healthz and /readyz.
    pub serve_http: bool,
    /// The config file: on SIGHUP its `[detect]` section (the rules) is read again and
    /// applied if valid.
    pub config_path: Option<std::path::PathBuf>,
    /// Register the metrics here instead of in a registry of the run's own (the benchmark
    /// watches the record counters).
    pub metrics: Option<Arc<Metrics>>,
}

/// Runs until `shutdown` turns true, then commits what is safe and returns.
pub async fn run(
    cfg: Config,
    opts: RunOptions,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // First: a SIGHUP before the handler exists would end the process.
    let mut hangup = hangups(opts.config_path.is_some());
    let metrics = opts
        .metrics
        .clone()
        .unwrap_or_else(|| Arc::new(Metrics::new()));
    let readiness = Arc::new(Readiness::default());
    let live = Arc::new(Live::default());
    if opts.serve_http {
        let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot listen on http.listen {}: {e}", cfg.http.listen)
            })?;
        info!(addr = %cfg.http.listen, "Serving /metrics, /healthz, /readyz.");
        let app = crate::http::router(metrics.clone(), readiness.clone(), live.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                error!(error = %e, "HTTP server stopped.");
            }
        });
    }

    std::fs::create_dir_all(&cfg.state.dir)
        .map_err(|e| anyhow::anyhow!("cannot create state.dir {}: {e}", cfg.state.dir.display()))?;
    let store = Arc::new(TableStore::open(&cfg.state.dir)?);
    let table = store.load()?;
    info!(versions = table.len(), "Loaded benchmark cache.");
    let ckpt_store = CheckpointStore::open(&cfg.state.dir)?;
    let week_ago = crate::notify::deliver::now_ms() - 7 * 24 * 3_600_000;
    if let Err(e) = ckpt_store.prune_emitted(week_ago) {
        warn!(error = %e, "Cannot prune the checkpoint's emitted alerts.");
    }
    let (mut engine, restored_next, emitted) = match ckpt_store.load(&cfg.kafka.reports_topic)? {
        Some(r) => match Engine::restore(&cfg, table, &r.engine) {
            Ok(e) => {
                info!(
                    partitions = ?r.next,
                    windows_closed = e.counters().windows_closed,
                    "Restored the engine from its checkpoint."
                );
                (e, r.next, r.emitted)
            }
            Err((why, table)) => {
                warn!(%why, "Checkpoint not usable: starting from the committed offsets.");
                (
                    Engine::with_table(&cfg, table),
                    HashMap::new(),
                    HashSet::new(),
                )
            }
        },
        None => (
            Engine::with_table(&cfg, table),
            HashMap::new(),
            HashSet::new(),
        ),
    };
    let mut ckpt = Checkpointer {
        store: ckpt_store,
        topic: cfg.kafka.reports_topic.clone(),
        emitted,
        interval: cfg.state.checkpoint_interval,
        last: None,
        dirty: false,
        committable: HashMap::new(),
        changelog: None,
        flush_first: None,
    };

    let dispatcher = Dispatcher::start(&cfg.notify, &cfg.state.dir, &metrics.registry)?;
    let producer = notify::producer(&cfg.kafka)?;
    let outputs = Outputs {
        alerts: AlertSink::new(producer.clone(), &cfg.kafka.alerts_topic),
        kafka: cfg.kafka.clone(),
        dispatcher: dispatcher.clone(),
        metrics: metrics.clone(),
        live: live.clone(),
        opts: opts.clone(),
    };
    let dlq = DeadLetters::new(producer.clone(), &cfg.kafka.dead_letter_topic);
    if let Some(topic) = &cfg.kafka.changelog_topic {
        check_changelog_topic(&cfg, &producer, topic)?;
        ckpt.changelog = Some(ChangelogWriter {
            producer: producer.clone(),
            topic: topic.clone(),
            reports_topic: cfg.kafka.reports_topic.clone(),
            owned: HashSet::new(),
        });
    }
    send_pending(&ckpt.store, &outputs).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (bench_tx, mut bench_rx) = mpsc::unbounded_channel::<BenchmarkUpdate>();
    let reader = source::spawn_benchmark_reader(
        &cfg,
        store.clone(),
        bench_tx,
        dlq.clone(),
        metrics.clone(),
        stop.clone(),
        tokio::runtime::Handle::current(),
    )?;

    // Joins must see the benchmarks valid at each report's time: read the table up to its end
    // before the first report.
    let started = Instant::now();
    while !reader.caught_up.load(Ordering::Acquire) {
        while let Ok(u) = bench_rx.try_recv() {
            engine.on_benchmark(&u.location, &u.cdn, u.ts, u.row);
        }
        if started.elapsed() > Duration::from_secs(60) {
            warn!("Benchmark table not caught up after 60s; starting anyway.");
            break;
        }
        if *shutdown.borrow() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while let Ok(u) = bench_rx.try_recv() {
        engine.on_benchmark(&u.location, &u.cdn, u.ts, u.row);
    }
    readiness.benchmarks_loaded.store(true, Ordering::Release);

    let consumer = source::reports_consumer(&cfg)?;
    let probe = spawn_broker_probe(&cfg, readiness.clone(), metrics.clone(), stop.clone())?;
    let limit = cfg.limits.max_message_bytes;
    let topic = cfg.kafka.reports_topic.clone();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Next offset to read per partition (one past the last processed). Records below it are
    // already in the engine's state (restored from the checkpoint, or read before a
    // rebalance or broker outage sent the consumer back to the committed offset): skipped.
    let mut next: HashMap<i32, i64> = restored_next;
    // A checkpoint from another cluster (or a recreated topic) claims positions past the
    // partitions' ends: it would skip everything. Start fresh instead. (Past the offset
    // lookup's answer, the partition is read to its end to be sure: some brokers, tansu
    // 0.6, answer it short of the last batch.)
    let past: Vec<(i32, i64)> = next
        .iter()
        .filter(|(p, n)| {
            let marks = tokio::task::block_in_place(|| {
                consumer.fetch_watermarks(&topic, **p, Duration::from_secs(10))
            });
            matches!(marks, Ok((_, high)) if **n > high)
        })
        .map(|(p, n)| (*p, *n))
        .collect();
    let short = tokio::task::block_in_place(|| {
        source::ends_before(&cfg.kafka, &topic, &past, Duration::from_secs(10))
    });
    if !short.is_empty() {
        warn!(positions = ?next, "Checkpoint is ahead of the reports topic (another cluster or a recreated topic?): ignoring it.");
        engine = Engine::with_table(&cfg, engine.into_table());
        next.clear();
    }
    ckpt.committable = committable(&engine, &next);
    let summaries = match &cfg.kafka.summaries_topic {
        Some(topic) => {
            let partitions = partition_count(&producer, &cfg.kafka.reports_topic)?;
            let restored = engine.summaries_next().is_some();
            engine.share_with_peers(i32::try_from(partitions).unwrap_or(i32::MAX));
            if !restored && let Some(changelog) = &cfg.kafka.changelog_topic {
                join_cdn_stage(&cfg, &mut engine, changelog);
            }
            let next = engine.summaries_next().unwrap_or(0);
            info!(topic = %topic, next, partitions, "CDN-wide stage over the summaries topic.");
            ckpt.flush_first = Some(producer.clone());
            Some(Summaries {
                consumer: source::summaries_consumer(&cfg.kafka, topic, next)?,
                producer: producer.clone(),
                topic: topic.clone(),
            })
        }
        None => None,
    };
    // Wall time of each partition's last record, to stop waiting for silent partitions.
    let mut last_seen: HashMap<i32, Instant> = HashMap::new();
    // When input goes idle, event time is advanced by wall-clock time so the last windows
    // close (a fully silent key is itself news, and alerts must not wait for the next record).
    let idle_grace = cfg.window.size + cfg.window.allowed_lateness;
    let mut last_progress = (Instant::now(), engine.watermark());
    let mut last_probe = Instant::now() - PROBE_EVERY;
    let mut lag_shown: HashSet<i32> = HashSet::new();
    info!(topic = %topic, group = %cfg.kafka.group_id, "Consuming reports.");

    let reports_in = metrics.records_in.with_label_values(&["reports"]);
    let summaries_in = metrics.records_in.with_label_values(&["summaries"]);
    // Partitions' read positions at the last tick: one that moved since is not idle.
    let mut seen_at: HashMap<i32, i64> = HashMap::new();
    // Partitions the consumer has read to their end since their last record.
    let mut at_end: HashSet<i32> = HashSet::new();
    loop {
        tokio::select! {
            // Benchmarks first: a report should join a row that has already arrived. The ticker
            // before the reports: under a steady stream it must still mark idle partitions.
            biased;
            _ = shutdown.changed() => break,
            Some(()) = hangup.recv() => {
                let Some(path) = &opts.config_path else { continue };
                match Config::load(path, std::env::vars()) {
                    Ok(new) => {
                        engine.set_detect(new.detect.clone());
                        metrics.config_reloads.with_label_values(&["ok"]).inc();
                        info!(path = %path.display(), detect = ?new.detect, "SIGHUP: reloaded the detection rules.");
                    }
                    Err(e) => {
                        metrics.config_reloads.with_label_values(&["error"]).inc();
                        error!(error = %e, "SIGHUP: config not reloaded; the old rules stay.");
                    }
                }
            }
            Some(u) = bench_rx.recv() => {
                engine.on_benchmark(&u.location, &u.cdn, u.ts, u.row);
            }
            m = next_summary(summaries.as_ref()) => {
                let mut m = Some(m);
                let mut budget = BATCH;
                while let Some(r) = m.take() {
                    match r {
                        Ok(msg) => {
                            summaries_in.inc();
                            if let Err(e) = engine.on_summary(msg.offset(), msg.payload().unwrap_or_default()) {
                                warn!(offset = msg.offset(), error = %e, "Unusable summary: skipped.");
                            }
                        }
                        Err(e) => warn!(error = %e, "Summaries consumer error."),
                    }
                    budget -= 1;
                    if budget > 0 {
                        m = ready_now(next_summary(summaries.as_ref()));
                    }
                }
                if engine.has_ready() {
                    let out = close(&mut engine, &metrics, None, summaries.as_ref());
                    finish(&mut ckpt, &engine, &next, &outputs, out).await;
                }
            }
            _ = ticker.tick() => {
                // Rebalances first: nothing is decided for a partition that has moved away.
                consumer.context().take_revoked();
                let a = sync_assignment(&consumer, &mut engine, &mut last_seen, &mut next, &mut ckpt);
                take_over(&cfg, &mut engine, &mut next, &mut ckpt, &outputs, &a.added).await;
                readiness.partitions_assigned.store(a.any, Ordering::Release);
                // Which partitions delivered since the last tick (cheaper than a clock read
                // per record).
                for (p, n) in &next {
                    if seen_at.insert(*p, *n) != Some(*n) {
                        last_seen.insert(*p, Instant::now());
                    }
                }
                for (p, seen) in &last_seen {
                    if seen.elapsed() > idle_grace {
                        engine.set_partition_idle(*p);
                    }
                }
                // A partition that has never delivered holds the watermark; if the consumer
                // has read it to its end (it is empty) there is nothing to wait for. (Its
                // end as fetching reports it: some brokers, tansu 0.6, answer offset lookups
                // short of the last batch.)
                for p in engine.silent_partitions() {
                    if at_end.contains(&p) {
                        debug!(partition = p, "Partition empty: not waiting for it.");
                        engine.set_partition_idle(p);
                    }
                }
                // Idle marking may have moved the watermark.
                let out = close(&mut engine, &metrics, None, summaries.as_ref());
                finish(&mut ckpt, &engine, &next, &outputs, out).await;
                let wm = engine.watermark();
                if wm != last_progress.1 {
                    last_progress = (Instant::now(), wm);
                } else if let Some(wm) = wm {
                    let idle = last_progress.0.elapsed();
                    if idle > idle_grace {
                        let advanced = wm + (idle - idle_grace).as_millis() as Millis;
                        let out = close(&mut engine, &metrics, Some(advanced), summaries.as_ref());
                        finish(&mut ckpt, &engine, &next, &outputs, out).await;
                    }
                }
                if let Err(e) = dispatcher.repeat_due() {
                    error!(error = %e, "Cannot queue repeats in the outbox.");
                }
                store_offsets(&consumer, &topic, &ckpt.committable);
                publish_gauges(&metrics, &engine, &live);
                if last_probe.elapsed() >= PROBE_EVERY {
                    last_probe = Instant::now();
                    probe_lag(&consumer, &topic, &next, &metrics, &mut lag_shown);
                    metrics.rocksdb_bytes.with_label_values(&["benchmarks"]).set(store.size_bytes() as i64);
                    metrics.rocksdb_bytes.with_label_values(&["outbox"]).set(dispatcher.outbox_bytes() as i64);
                    metrics.rocksdb_bytes.with_label_values(&["checkpoint"]).set(ckpt.store.size_bytes() as i64);
                }
            }
            msg = consumer.recv() => {
                // Then whatever else is already fetched, up to a batch, without going back
                // through the select (its futures cost more than a record's processing).
                let mut msg = Some(msg);
                let mut budget = BATCH;
                while let Some(m) = msg.take() {
                    'one: {
                        let msg = match m {
                            Ok(m) => m,
                            Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                                at_end.insert(p);
                                break 'one;
                            }
                            Err(e) => {
                                warn!(error = %e, "Report consumer error.");
                                break 'one;
                            }
                        };
                        reports_in.inc();
                        let (p, o) = (msg.partition(), msg.offset());
                        at_end.remove(&p);
                        if !engine.has_partition(p) || consumer.context().take_revoked() {
                            // First record of a partition: register everything assigned first, so
                            // windows wait for the partitions that have not delivered yet (and
                            // take over their state from the changelog, if there is one). After a
                            // revocation, at once: nothing is decided for a partition that has
                            // moved away.
                            let a = sync_assignment(&consumer, &mut engine, &mut last_seen, &mut next, &mut ckpt);
                            take_over(&cfg, &mut engine, &mut next, &mut ckpt, &outputs, &a.added).await;
                        }
                        if next.get(&p).is_some_and(|n| o < *n) {
                            last_seen.insert(p, Instant::now());
                            break 'one;
                        }
                        match msg.payload().map_or(Err(decode::DecodeError::Empty), |v| decode::decode_report(v, limit)) {
                            Ok(r) => {
                                engine.on_report(&r, Some((p, o)));
                            }
                            Err(e) => {
                                metrics.decode_failures.with_label_values(&[e.reason()]).inc();
                                debug!(reason = e.reason(), partition = p, offset = o, "Dead-lettered a report.");
                                // Wait for the dead letter to be durable before this offset can be committed.
                                match dlq.send(DeadLetter::from_message(&msg, &e)).await {
                                    Ok(()) => metrics.dead_letters.inc(),
                                    Err(e) => error!(error = %e, "Could not write to the dead-letter topic."),
                                }
                            }
                        }
                        next.insert(p, o + 1);
                        if engine.has_ready() {
                            let out = close(&mut engine, &metrics, None, summaries.as_ref());
                            finish(&mut ckpt, &engine, &next, &outputs, out).await;
                        }
                    }
                    budget -= 1;
                    if budget > 0 {
                        msg = ready_now(consumer.recv());
                    }
                }
            }
        }
    }

    let c = engine.counters();
    info!(
        accepted = c.accepted,
        late = c.late,
        windows = c.windows_closed,
        alerts = c.alerts,
        watermark = engine.watermark().map(crate::time::format_ms),
        partitions = ?engine.partition_state(),
        "Shutting down: committing offsets."
    );
    stop.store(true, Ordering::Release);
    if ckpt.dirty {
        ckpt.save(&engine, &next, &[]).await;
    }
    store_offsets(&consumer, &topic, &ckpt.committable);
    if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        // Nothing stored yet is not an error worth alarming about.
        debug!(error = %e, "Final commit.");
    }
    let _ = tokio::task::spawn_blocking(move || {
        let _ = reader.handle.join();
        let _ = probe.join();
    })
    .await;
    dispatcher.shutdown(cfg.notify.flush_timeout).await;
    Ok(())
}

/// Closes what the watermark (or `until`) allows and times the detection; sends the
/// summaries of the windows closed to the other instances.
fn close(
    engine: &mut Engine,
    metrics: &Metrics,
    until: Option<Millis>,
    summaries: Option<&Summaries>,
) -> Closing {
    let started = Instant::now();
    let before = engine.decisions();
    let alerts = match until {
        Some(t) => engine.close_until(t),
        None => engine.close_ready(),
    };
    if let Some(s) = summaries {
        s.publish(engine);
    }
    let decided = engine.decisions() > before;
    if decided {
        metrics
            .detection_seconds
            .observe(started.elapsed().as_secs_f64());
    }
    Closing {
        alerts,
        started,
        closed: decided,
    }
}

/// The summaries topic: this instance's partitions' summaries go out, everyone's come back.
struct Summaries {
    consumer: rdkafka::consumer::StreamConsumer,
    producer: rdkafka::producer::FutureProducer,
    topic: String,
}

impl Summaries {
    /// Queues the engine's new summaries (all to partition 0, so every reader sees one
    /// order; keyed by report partition). The idempotent producer keeps their order.
    fn publish(&self, engine: &mut Engine) {
        let out = match engine.take_summaries() {
            Ok(out) => out,
            Err(e) => {
                error!(error = %e, "Cannot encode partitions' summaries.");
                return;
            }
        };
        for (p, bytes) in out {
            let key = p.to_string();
            let record = rdkafka::producer::FutureRecord::to(&self.topic)
                .partition(0)
                .key(&key)
                .payload(&bytes);
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    tokio::spawn(async move {
                        if !matches!(delivery.await, Ok(Ok(_))) {
                            error!(
                                partition = p,
                                "A summary was not delivered: the CDN-wide stage of every instance waits for this partition's next one."
                            );
                        }
                    });
                }
                Err((e, _)) => {
                    error!(error = %e, partition = p, "Cannot queue a summary: the CDN-wide stage waits for this partition's next one.");
                }
            }
        }
    }
}

/// The next record of the summaries topic; never, without one.
async fn next_summary(
    summaries: Option<&Summaries>,
) -> rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>> {
    match summaries {
        Some(s) => s.consumer.recv().await,
        None => std::future::pending().await,
    }
}

/// Alerts of one close, with when the close began (for the latency metric).
struct Closing {
    alerts: Vec<Alert>,
    started: Instant,
    /// Whether any window closed (then the state is checkpointed).
    closed: bool,
}

/// Where alerts go.
struct Outputs {
    alerts: AlertSink,
    /// To look alerts up on their topic.
    kafka: crate::config::KafkaConfig,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    live: Arc<Live>,
    opts: RunOptions,
}

/// The checkpoint store and the alerts emitted so far (by `id:status`).
struct Checkpointer {
    store: CheckpointStore,
    topic: String,
    emitted: HashSet<String>,
    /// Closes without alerts checkpoint at most this often (catching up on a backlog closes
    /// many windows a second; each checkpoint encodes the whole state and syncs it).
    interval: Duration,
    last: Option<Instant>,
    /// Windows closed since the last checkpoint.
    dirty: bool,
    /// Per partition, the offset that is safe to commit given the last checkpoint: the
    /// lowest offset its open windows needed, or its next offset. Committing past it would
    /// lose records that a restore from that checkpoint needs.
    committable: HashMap<i32, i64>,
    /// Where each partition's state goes for its next owner, when several instances share.
    changelog: Option<ChangelogWriter>,
    /// Flushed before each checkpoint: the summaries of the windows in it must be out (a
    /// restore would not send them again).
    flush_first: Option<rdkafka::producer::FutureProducer>,
}

/// Writes owned partitions' state to the changelog topic.
struct ChangelogWriter {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    reports_topic: String,
    /// Report partitions assigned to this instance now.
    owned: HashSet<i32>,
}

impl ChangelogWriter {
    /// Writes every owned partition's state, with the alerts of `alerts` that are its own
    /// (CDN-wide ones go with the lowest owned partition). Must succeed when there are alerts
    /// (they are produced only after it); otherwise a failure only makes the next owner start
    /// from an older state. Returns whether every partition's state was written.
    async fn write(
        &self,
        engine: &Engine,
        next: &HashMap<i32, i64>,
        alerts: &[Alert],
        delivered: &HashMap<i32, i64>,
    ) -> bool {
        let mut owned: Vec<i32> = self.owned.iter().copied().collect();
        owned.sort_unstable();
        let home = |a: &Alert| {
            a.scope
                .location
                .as_deref()
                .and_then(|l| engine.home_of(l))
                .or_else(|| owned.first().copied())
        };
        let mut records = Vec::new();
        for p in &owned {
            let Some(n) = next.get(p) else { continue };
            let share = match engine.export_partition(*p) {
                Ok(Some(share)) => share,
                Ok(None) => continue,
                Err(e) => {
                    error!(error = %e, partition = p, "Cannot encode a partition's state.");
                    continue;
                }
            };
            let header = crate::changelog::Header {
                reports_topic: self.reports_topic.clone(),
                partition: *p,
                next: *n,
                pending: alerts
                    .iter()
                    .filter(|a| home(a) == Some(*p))
                    .cloned()
                    .collect(),
                delivered: delivered.clone(),
            };
            match crate::changelog::encode(&header, &share) {
                Ok(v) => records.push((*p, v)),
                Err(e) => error!(error = %e, partition = p, "Cannot encode a changelog record."),
            }
        }
        let mut delay = Duration::from_millis(100);
        loop {
            // Enqueue all, then wait for each: they are in flight together.
            let mut failed = 0;
            let mut futures = Vec::with_capacity(records.len());
            for (p, v) in &records {
                let key = p.to_string();
                let record = rdkafka::producer::FutureRecord::to(&self.topic)
                    .partition(*p)
                    .key(&key)
                    .payload(v);
                match self.producer.send_result(record) {
                    Ok(f) => futures.push(f),
                    Err((e, _)) => {
                        debug!(error = %e, partition = p, "Changelog record not queued.");
                        failed += 1;
                    }
                }
            }
            for f in futures {
                match f.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        debug!(error = %e, "Changelog record not written.");
                        failed += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            if failed == 0 {
                return true;
            }
            if alerts.is_empty() {
                warn!(
                    failed,
                    "Cannot write partition state to the changelog; the next checkpoint will."
                );
                return false;
            }
            error!(
                failed,
                retry_in_ms = delay.as_millis() as u64,
                "Cannot write partition state to the changelog before its alerts."
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

/// The changelog topic must exist with a partition for every report partition.
fn check_changelog_topic(
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
fn partition_count(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
) -> anyhow::Result<usize> {
    use rdkafka::producer::Producer;
    let md = tokio::task::block_in_place(|| {
        producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
    })
    .map_err(|e| anyhow::anyhow!("cannot read the metadata of {topic}: {e}"))?;
    Ok(md.topics().first().map_or(0, |m| m.partitions().len()))
}

/// An instance with no CDN-wide stage of its own (no checkpoint) starts it from report
/// partition 0's last changelog share, as the other instances had it, and reads the
/// summaries topic on from there; with no share yet, from the topic's start.
fn join_cdn_stage(cfg: &Config, engine: &mut Engine, changelog: &str) {
    let last = tokio::task::block_in_place(|| {
        crate::changelog::read_share(&cfg.kafka, changelog, 0, Duration::from_secs(10))
    });
    let adopted = last.and_then(|s| match s {
        Some((_, share)) => engine.adopt_cdn_stage(&share),
        None => Ok(None),
    });
    match adopted {
        Ok(Some(next)) => info!(
            next,
            "Joined the CDN-wide stage from partition 0's changelog share."
        ),
        Ok(None) => {}
        Err(e) => {
            warn!(error = %e, "Partition 0's changelog share unusable: the CDN-wide stage starts from the summaries topic's start.")
        }
    }
}

impl Checkpointer {
    /// Writes the state, the read positions and the newly decided alerts (retrying until the
    /// disk takes them), then moves the committable offsets up to this state.
    async fn save(&mut self, engine: &Engine, next: &HashMap<i32, i64>, alerts: &[Alert]) {
        if let Some(producer) = &self.flush_first {
            use rdkafka::producer::Producer;
            if let Err(e) = tokio::task::block_in_place(|| producer.flush(Duration::from_secs(10)))
            {
                error!(error = %e, "Summaries not all delivered before the checkpoint.");
            }
        }
        let mut decided = Vec::with_capacity(alerts.len());
        for a in alerts {
            match serde_json::to_vec(a) {
                Ok(v) => decided.push((notify::change_key(a), v)),
                Err(e) => error!(error = %e, id = %a.id, "Cannot encode an alert."),
            }
        }
        let state = engine
            .snapshot()
            .map_err(|e| error!(error = %e, "Cannot encode the engine state; only the alerts are checkpointed."))
            .ok();
        let now = crate::notify::deliver::now_ms();
        let mut delay = Duration::from_millis(100);
        while let Err(e) = self.store.save(
            &self.topic,
            state.as_deref().map(|s| (s, next)),
            &decided,
            now,
        ) {
            error!(error = %e, retry_in_ms = delay.as_millis() as u64, "Cannot write the checkpoint.");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        self.emitted.extend(decided.into_iter().map(|(k, _)| k));
        let mut shared = true;
        if let (Some(cl), Some(_)) = (&self.changelog, &state) {
            let delivered = self.store.delivered().unwrap_or_default();
            shared = cl.write(engine, next, alerts, &delivered).await;
        }
        // Offsets past what the changelog has would be lost to the partitions' next owner.
        if state.is_some() && shared {
            self.committable = committable(engine, next);
            self.last = Some(Instant::now());
            self.dirty = false;
        }
    }
}

/// Per partition: the lowest offset an open window still needs, or the next one to read.
fn committable(engine: &Engine, next: &HashMap<i32, i64>) -> HashMap<i32, i64> {
    let pending = engine.pending_offsets();
    next.iter()
        .map(|(p, n)| (*p, pending.get(p).map_or(*n, |o| (*o).min(*n))))
        .collect()
}

/// Emits a close's alerts that were not decided before (a replay after a restore regenerates
/// some) and checkpoints the state when windows closed.
///
/// Order, so that a kill at any point neither loses nor doubles an alert on the alerts topic:
/// outbox (receivers), then the checkpoint that marks them decided and pending, then the
/// produce, then the confirmation that clears pending. A restart finds the alerts of an
/// interrupted produce pending and sends those the topic does not have ([`send_pending`]).
async fn finish(
    ckpt: &mut Checkpointer,
    engine: &Engine,
    next: &HashMap<i32, i64>,
    out: &Outputs,
    mut closing: Closing,
) {
    closing
        .alerts
        .retain(|a| !ckpt.emitted.contains(&notify::change_key(a)));
    if !closing.closed {
        return;
    }
    ckpt.dirty = true;
    if closing.alerts.is_empty() {
        if ckpt.last.is_none_or(|t| t.elapsed() >= ckpt.interval) {
            ckpt.save(engine, next, &[]).await;
        }
        return;
    }
    announce(out, &closing).await;
    ckpt.save(engine, next, &closing.alerts).await;
    let landed = produce(out, &ckpt.store, &closing.alerts, closing.started).await;
    let keys: Vec<String> = closing.alerts.iter().map(notify::change_key).collect();
    if let Err(e) = ckpt.store.confirm(&keys, &landed) {
        // Still pending on disk: a restart looks them up on the topic and finds them.
        warn!(error = %e, "Cannot clear acknowledged alerts from the checkpoint.");
    }
}

/// Which of `wanted` (alert change keys) are on the alerts topic after the positions `from`.
/// None when the topic cannot be read to its end: sending again may double an alert, not
/// sending may lose one, and losing is worse.
async fn found_on_alerts_topic(
    out: &Outputs,
    from: HashMap<i32, i64>,
    wanted: HashSet<String>,
) -> HashSet<String> {
    let (k, topic) = (out.kafka.clone(), out.alerts.topic().to_string());
    let pending = wanted.len();
    let found = tokio::task::spawn_blocking(move || {
        notify::find_on_topic(&k, &topic, &from, &wanted, Duration::from_secs(60))
    })
    .await;
    match found {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            warn!(error = %e, pending, "Cannot read the alerts topic to its end: sending every pending alert.");
            HashSet::new()
        }
        Err(e) => {
            warn!(error = %e, pending, "Alerts topic lookup failed: sending every pending alert.");
            HashSet::new()
        }
    }
}

/// Sends the alerts a previous run decided but may not have produced: those not found on the
/// alerts topic after the positions of its last acknowledged produce. Runs before any report
/// is read.
async fn send_pending(store: &CheckpointStore, out: &Outputs) -> anyhow::Result<()> {
    let pending = store.pending()?;
    if pending.is_empty() {
        return Ok(());
    }
    let from = store.delivered()?;
    let wanted: HashSet<String> = pending.iter().map(|(k, _)| k.clone()).collect();
    let found = found_on_alerts_topic(out, from, wanted).await;
    let mut missing = Vec::new();
    for (key, json) in &pending {
        if found.contains(key) {
            continue;
        }
        match serde_json::from_slice::<Alert>(json) {
            Ok(a) => missing.push(a),
            Err(e) => {
                error!(error = %e, change = %key, "Pending alert in the checkpoint is corrupt; dropped.")
            }
        }
    }
    info!(
        pending = pending.len(),
        already_there = found.len(),
        sending = missing.len(),
        "Alerts decided before a restart, looked up on the alerts topic."
    );
    let landed = produce(out, store, &missing, Instant::now()).await;
    let keys: Vec<String> = pending.into_iter().map(|(k, _)| k).collect();
    store.confirm(&keys, &landed)?;
    Ok(())
}

/// Hands alerts to the receivers' outbox (synced), the live page, metrics, logs and stdout.
async fn announce(out: &Outputs, closing: &Closing) {
    let (dispatcher, metrics, live, opts) =
        (&*out.dispatcher, &*out.metrics, &*out.live, &out.opts);
    let alerts = &closing.alerts;
    let detected_ms =
        crate::notify::deliver::now_ms() - closing.started.elapsed().as_millis() as Millis;
    let mut delay = Duration::from_millis(100);
    while let Err(e) = dispatcher.enqueue_detected(alerts, detected_ms) {
        error!(error = %e, retry_in_ms = delay.as_millis() as u64, "Cannot write alerts to the outbox.");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    live.record(alerts);
    for a in alerts {
        let status = match a.status {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        };
        metrics.alerts.with_label_values(&[status]).inc();
        metrics
            .incidents
            .with_label_values(&[a.rule.as_str(), a.severity.as_str(), status])
            .inc();
        info!(id = %a.id, status, rule = %a.rule, scope = %a.scope, "Alert.");
        if opts.print_alerts {
            println!("{}", notify::render_line(a));
        }
    }
}

/// Produces alerts to the alerts topic until each is there (an alert is never dropped) and
/// returns where the acknowledged ones landed. After a failure the alerts in doubt are first
/// looked up on the topic (a produce whose acknowledgement was lost may have got there), so
/// none is doubled either.
async fn produce(
    out: &Outputs,
    store: &CheckpointStore,
    alerts: &[Alert],
    started: Instant,
) -> Vec<(i32, i64)> {
    let mut landed = Vec::with_capacity(alerts.len());
    let mut remaining = alerts.to_vec();
    let mut delay = Duration::from_millis(100);
    while !remaining.is_empty() {
        let results = out.alerts.send_each(&remaining).await;
        let mut failed = Vec::new();
        for (a, r) in remaining.into_iter().zip(results) {
            match r {
                Ok(at) => {
                    out.metrics.alerts_out.inc();
                    landed.push(at);
                }
                Err(e) => {
                    error!(error = %e, id = %a.id, retry_in_ms = delay.as_millis() as u64, "Could not produce an alert.");
                    failed.push(a);
                }
            }
        }
        remaining = failed;
        // Which of the failed ones got there anyway? Ask until the topic answers.
        while !remaining.is_empty() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
            let from = store.delivered().unwrap_or_default();
            let wanted: HashSet<String> = remaining.iter().map(notify::change_key).collect();
            let (k, topic) = (out.kafka.clone(), out.alerts.topic().to_string());
            let found = tokio::task::spawn_blocking(move || {
                notify::find_on_topic(&k, &topic, &from, &wanted, Duration::from_secs(20))
            })
            .await;
            match found {
                Ok(Ok(found)) => {
                    remaining.retain(|a| !found.contains(&notify::change_key(a)));
                    out.metrics.alerts_out.inc_by(found.len() as u64);
                    break;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "Cannot read the alerts topic yet; will look again.")
                }
                Err(e) => warn!(error = %e, "Alerts topic lookup failed; will look again."),
            }
        }
    }
    out.metrics
        .alert_ack_seconds
        .observe(started.elapsed().as_secs_f64());
    landed
}

/// Stores, per assigned partition, the offset the last checkpoint makes safe (see
/// [`Checkpointer::committable`]); auto-commit then commits it.
fn store_offsets(consumer: &source::ReportsConsumer, topic: &str, committable: &HashMap<i32, i64>) {
    let assigned: HashSet<i32> = match consumer.assignment() {
        Ok(a) => a.elements().iter().map(|e| e.partition()).collect(),
        Err(_) => return,
    };
    let mut tpl = TopicPartitionList::new();
    for (p, safe) in committable.iter().filter(|(p, _)| assigned.contains(p)) {
        if tpl
            .add_partition_offset(topic, *p, Offset::Offset(*safe))
            .is_err()
        {
            continue;
        }
    }
    if tpl.count() > 0
        && let Err(e) = consumer.store_offsets(&tpl)
    {
        // Partitions revoked in a rebalance can no longer be stored: expected, harmless.
        debug!(error = %e, "Could not store offsets.");
    }
}

/// What changed in the assignment.
struct Assignment {
    /// Whether any partition is assigned.
    any: bool,
    /// Newly assigned partitions.
    added: Vec<i32>,
}

/// Registers newly assigned report partitions with the engine and handles revoked ones:
/// with a changelog their state is dropped (their next owner takes it from there), without
/// one it stays and only stops holding windows back (the partition is probably coming back:
/// an assignment lost in a broker outage).
fn sync_assignment(
    consumer: &source::ReportsConsumer,
    engine: &mut Engine,
    last_seen: &mut HashMap<i32, Instant>,
    next: &mut HashMap<i32, i64>,
    ckpt: &mut Checkpointer,
) -> Assignment {
    let Ok(tpl) = consumer.assignment() else {
        return Assignment {
            any: false,
            added: Vec::new(),
        };
    };
    let assigned: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    let mut added = Vec::new();
    for p in &assigned {
        if !engine.has_partition(*p) {
            info!(partition = p, "Partition assigned.");
            engine.add_partition(*p);
            last_seen.entry(*p).or_insert_with(Instant::now);
            added.push(*p);
        }
    }
    let revoked: Vec<i32> = last_seen
        .keys()
        .filter(|p| !assigned.contains(p))
        .copied()
        .collect();
    for p in revoked {
        last_seen.remove(&p);
        if ckpt.changelog.is_some() {
            info!(
                partition = p,
                "Partition revoked: its state goes to its next owner."
            );
            engine.drop_partition(p);
            next.remove(&p);
            ckpt.committable.remove(&p);
        } else {
            info!(partition = p, "Partition revoked.");
            engine.remove_partition(p);
        }
    }
    if let Some(cl) = &mut ckpt.changelog {
        cl.owned = assigned.iter().copied().collect();
    }
    Assignment {
        any: !assigned.is_empty(),
        added,
    }
}

/// Takes newly assigned partitions' state over from the changelog (when there is one and its
/// state is newer than this instance's), then sends the alerts their last owner decided but
/// may not have produced.
async fn take_over(
    cfg: &Config,
    engine: &mut Engine,
    next: &mut HashMap<i32, i64>,
    ckpt: &mut Checkpointer,
    out: &Outputs,
    added: &[i32],
) {
    let Some(topic) = cfg.kafka.changelog_topic.as_deref() else {
        return;
    };
    let mut pending = Vec::new();
    let mut from: HashMap<i32, i64> = HashMap::new();
    for p in added {
        let last = tokio::task::block_in_place(|| {
            crate::changelog::read_share(&cfg.kafka, topic, *p, Duration::from_secs(10))
        });
        let (header, share) = match last {
            Ok(Some(s)) => s,
            Ok(None) => {
                info!(
                    partition = p,
                    "No state for this partition in the changelog: starting at the committed offset."
                );
                continue;
            }
            Err(e) => {
                warn!(partition = p, error = %e, "Changelog not usable: starting at the committed offset.");
                continue;
            }
        };
        if next.get(p).is_some_and(|n| *n >= header.next) {
            info!(
                partition = p,
                "This instance's state of the partition is as new as the changelog's."
            );
            continue;
        }
        if let Err(e) = engine.absorb_partition(*p, &share) {
            warn!(partition = p, error = %e, "Changelog state unusable: starting at the committed offset.");
            continue;
        }
        info!(
            partition = p,
            next = header.next,
            pending = header.pending.len(),
            "Took the partition's state over from the changelog."
        );
        next.insert(*p, header.next);
        for (ap, o) in header.delivered {
            let m = from.entry(ap).or_insert(o);
            *m = (*m).min(o);
        }
        pending.extend(header.pending);
    }
    if pending.is_empty() {
        return;
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
    finish(ckpt, engine, next, out, closing).await;
}

/// Asks the cluster for the reports topic's metadata every 2 s on a thread of its own (the
/// main loop may be busy retrying a produce while the broker is away) and keeps
/// `broker_reachable` and the `qos_sentinel_ready` gauge current.
fn spawn_broker_probe(
    cfg: &Config,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use rdkafka::producer::Producer;
    let producer: rdkafka::producer::BaseProducer = source::client_config(&cfg.kafka).create()?;
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
fn probe_lag(
    consumer: &source::ReportsConsumer,
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

fn publish_gauges(metrics: &Metrics, engine: &Engine, live: &Live) {
    metrics.set_quality(engine.quality());
    live.set_quality(engine.quality(), engine.watermark());
    metrics.sync_engine(engine.counters());
    metrics.incidents_firing.set(engine.firing() as i64);
    if let Some(wm) = engine.watermark() {
        metrics.watermark.set(wm / 1000);
    }
    metrics.benchmark_versions.set(engine.table().len() as i64);
    metrics.open_keys.set(engine.open_stats().1 as i64);
}

/// The output of `f` if it is ready at once, without waiting.
fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
