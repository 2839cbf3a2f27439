//! The thin async shell around the engine: [`run`] builds and wires the parts, then one
//! `select!` hands each event to the [`runner::Runner`].
//!
//! | file | concern |
//! |---|---|
//! | `runner.rs` | the running state, one method per event (reports, tick, summaries, SIGHUP) |
//! | `positions.rs` | read positions and committable offsets |
//! | `emit.rs` | the emission order (outbox, checkpoint, produce, confirm) and why |
//! | `state.rs` | the checkpoint and the changelog's records |
//! | `takeover.rs` | assignment changes, taking a partition's state over, joining the CDN-wide stage |
//! | `summaries.rs` | closing windows; the summaries topic to the other instances |
//! | `probes.rs` | broker reachability, consumer lag, gauges |

mod emit;
mod orphans;
mod positions;
mod probes;
mod runner;
mod state;
mod summaries;
mod takeover;
#[cfg(test)]
mod tests;

pub use state::ChangelogWriter;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::checkpoint::CheckpointStore;
use crate::config::Config;
use crate::engine::Engine;
use crate::http::{Live, Readiness};
use crate::kafka;
use crate::metrics::Metrics;
use crate::notify::AlertSink;
use crate::notify::deliver::Dispatcher;
use crate::source::DeadLetters;
use crate::source::{self, BenchmarkUpdate};
use crate::table::store::TableStore;

use emit::{Outputs, send_pending};
use positions::Positions;
use runner::Runner;
use state::Checkpointer;
use summaries::{Summaries, next_summary};

/// Most records handled between two looks at the other event sources (ticker, benchmarks,
/// signals).
const BATCH: u32 = 512;
/// How often consumer lag and database sizes are measured.
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
    readiness
        .stall_after_ms
        .store(cfg.http.stall_timeout.as_millis() as i64, Ordering::Release);
    let live = Arc::new(Live::default());
    let store = open_table(&cfg)?;
    let history = Arc::new(crate::history::History::open(&cfg.state.dir, &cfg.history)?);
    let recent = crate::history::Query {
        status: Some(crate::incident::Status::Resolved),
        limit: 20,
        ..Default::default()
    };
    match history.query(&recent) {
        Ok(page) => live.remember(&page.changes),
        Err(e) => warn!(error = %e, "Cannot read the recently resolved from the history."),
    }
    let silences = Arc::new(crate::silence::Silences::open(&cfg.state.dir)?);
    let producer = kafka::producer(&cfg.kafka)?;
    if let Some(topic) = &cfg.kafka.silences_topic {
        let publish = crate::silence::share::publisher(producer.clone(), topic.clone());
        silences.share_with(publish);
    }
    let pages = crate::http::Pages {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        live: live.clone(),
        history: Some(history.clone()),
        silences: Some(silences.clone()),
        token: cfg.http.token.clone(),
    };
    // Stops with the daemon: a daemon started again in the same process (tests, the bench)
    // binds the port and opens the history again.
    let http = if opts.serve_http {
        Some(serve_http(&cfg, pages, shutdown.clone()).await?)
    } else {
        None
    };
    let (mut engine, next, mut ckpt) = restore(&cfg, &store, &metrics.retries)?;

    let outputs = outputs(&cfg, &opts, &metrics, &live, &producer, &history)?;
    outputs.dispatcher.hold_with(silences.clone());
    let dispatcher = outputs.dispatcher.clone();
    let dlq = DeadLetters::new(producer.clone(), &cfg.kafka.dead_letter_topic);
    ckpt.changelog = changelog(&cfg, &producer)?;
    ckpt.writes = Some(metrics.state_writes.clone());
    if let Some(cl) = &mut ckpt.changelog {
        cl.count_in(metrics.state_writes.clone());
    }
    ckpt.dead_letters = Some(source::InFlight::new(dlq.clone(), &metrics));
    send_pending(&ckpt.store, &outputs).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let history_reader = crate::history::follow_alerts(
        &cfg.kafka,
        history.clone(),
        stop.clone(),
        metrics.retries.with_label_values(&["history_read"]),
    )?;
    let silence_reader = match &cfg.kafka.silences_topic {
        Some(topic) => Some(crate::silence::share::spawn_reader(
            &cfg.kafka,
            topic,
            silences.clone(),
            stop.clone(),
            metrics.retries.with_label_values(&["silences_read"]),
        )?),
        None => None,
    };
    let (bench_tx, mut bench_rx) = mpsc::unbounded_channel::<BenchmarkUpdate>();
    let reader = source::spawn_benchmark_reader(
        &cfg.kafka,
        &cfg.limits,
        store.clone(),
        bench_tx,
        dlq.clone(),
        metrics.clone(),
        stop.clone(),
        tokio::runtime::Handle::current(),
    )?;
    // Joins must see the benchmarks valid at each report's time: read the table up to its end
    // before the first report.
    catch_up_benchmarks(&reader.caught_up, &mut bench_rx, &mut engine, &shutdown).await;
    readiness.benchmarks_loaded.store(true, Ordering::Release);

    let consumer = kafka::reports_consumer(&cfg.kafka)?;
    let probe = probes::spawn_broker_probe(&cfg, readiness.clone(), metrics.clone(), stop.clone())?;
    let lag = Arc::new(std::sync::Mutex::new(probes::LagView::default()));
    let lag_probe = probes::spawn_lag_probe(&cfg, lag.clone(), metrics.clone(), stop.clone())?;
    let (mut engine, pos) = positions(&cfg, &consumer, engine, next);
    let (summaries, summaries_consumer) = peer(&cfg, &producer, &mut engine, &mut ckpt)?;
    engine.keep_evidence();
    info!(topic = %cfg.kafka.reports_topic, group = %cfg.kafka.group_id, "Consuming reports.");
    let mut runner = Runner {
        idle_grace: cfg.window.size + cfg.window.allowed_lateness,
        last_progress: (Instant::now(), engine.watermark()),
        last_probe: Instant::now() - PROBE_EVERY,
        lag,
        adopted: HashSet::new(),
        orphans: orphans::Orphans::default(),
        reports_in: metrics.records_in.with_label_values(&["reports"]),
        summaries_in: metrics.records_in.with_label_values(&["summaries"]),
        cfg: cfg.clone(),
        opts,
        engine,
        metrics,
        readiness,
        outputs,
        ckpt,
        pos,
        summaries,
        store,
    };
    let inputs = Inputs {
        reports: &consumer,
        summaries: summaries_consumer.as_ref(),
        benchmarks: &mut bench_rx,
        hangup: &mut hangup,
    };
    events(&mut runner, inputs, &mut shutdown).await;
    stop.store(true, Ordering::Release);
    runner.shutdown(&consumer).await;
    let _ = tokio::task::spawn_blocking(move || {
        let _ = reader.handle.join();
        let _ = probe.join();
        let _ = lag_probe.join();
        let _ = history_reader.join();
        if let Some(r) = silence_reader {
            let _ = r.join();
        }
    })
    .await;
    dispatcher.shutdown(cfg.notify.flush_timeout).await;
    if let Some(h) = http
        && tokio::time::timeout(std::time::Duration::from_secs(5), h)
            .await
            .is_err()
    {
        warn!("The HTTP server did not stop within 5 s.");
    }
    Ok(())
}

/// The benchmark table's RocksDB cache under `state.dir`, created if new.
fn open_table(cfg: &Config) -> anyhow::Result<Arc<TableStore>> {
    std::fs::create_dir_all(&cfg.state.dir)
        .map_err(|e| anyhow::anyhow!("cannot create state.dir {}: {e}", cfg.state.dir.display()))?;
    Ok(Arc::new(TableStore::open(&cfg.state.dir)?))
}

/// With a changelog topic (checked to match the reports topic): its writer.
fn changelog(
    cfg: &Config,
    producer: &rdkafka::producer::FutureProducer,
) -> anyhow::Result<Option<ChangelogWriter>> {
    let Some(topic) = &cfg.kafka.changelog_topic else {
        return Ok(None);
    };
    takeover::check_changelog_topic(cfg, producer, topic)?;
    Ok(Some(ChangelogWriter::new(
        producer.clone(),
        topic,
        &cfg.kafka,
    )))
}

/// Where alerts go: the alerts topic, the HTTP receivers (their outbox and workers started
/// here), the live page and stdout.
fn outputs(
    cfg: &Config,
    opts: &RunOptions,
    metrics: &Arc<Metrics>,
    live: &Arc<Live>,
    producer: &rdkafka::producer::FutureProducer,
    history: &Arc<crate::history::History>,
) -> anyhow::Result<Outputs> {
    // Receivers link to the incident's evidence page unless their own link_template says
    // where.
    let mut notify = cfg.notify.clone();
    for r in &mut notify.receivers {
        r.link_template
            .get_or_insert_with(|| cfg.http.evidence_link());
    }
    let dispatcher = Dispatcher::start(
        &notify,
        &cfg.state.dir,
        &metrics.registry,
        Some(&metrics.retries),
    )?;
    Ok(Outputs {
        alerts: AlertSink::new(producer.clone(), &cfg.kafka.alerts_topic),
        kafka: cfg.kafka.clone(),
        dispatcher,
        metrics: metrics.clone(),
        live: live.clone(),
        history: history.clone(),
        opts: opts.clone(),
    })
}

/// What the loop reads from.
struct Inputs<'a> {
    reports: &'a kafka::ReportsConsumer,
    summaries: Option<&'a rdkafka::consumer::StreamConsumer>,
    benchmarks: &'a mut mpsc::UnboundedReceiver<BenchmarkUpdate>,
    hangup: &'a mut mpsc::UnboundedReceiver<()>,
}

/// The loop: one event at a time to the runner, until `shutdown`.
async fn events(runner: &mut Runner, i: Inputs<'_>, shutdown: &mut watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // /healthz: a turn of the loop is progress; a handler stuck in a retry is not.
        runner.readiness.beat();
        // Each arm returns when its handler started: the turn's length is a stall of the
        // loop (`qos_sentinel_loop_turn_duration_seconds`).
        let started = tokio::select! {
            // Benchmarks first: a report should join a row that has already arrived. The ticker
            // before the reports: under a steady stream it must still mark idle partitions.
            biased;
            _ = shutdown.changed() => break,
            Some(()) = i.hangup.recv() => {
                let t = Instant::now();
                runner.on_hangup();
                t
            }
            Some(u) = i.benchmarks.recv() => {
                let t = Instant::now();
                runner.engine.on_benchmark(&u.location, &u.cdn, u.ts, u.row);
                t
            }
            m = next_summary(i.summaries) => {
                let t = Instant::now();
                runner.on_summaries(i.reports, i.summaries, m).await;
                t
            }
            _ = ticker.tick() => {
                let t = Instant::now();
                runner.on_tick(i.reports).await;
                t
            }
            msg = i.reports.recv() => {
                let t = Instant::now();
                runner.on_reports(i.reports, msg).await;
                t
            }
        };
        runner
            .metrics
            .loop_turn_seconds
            .observe(started.elapsed().as_secs_f64());
    }
}

/// With a summaries topic: joins the other instances (the engine learns the partitions and
/// where the topic stands) and returns the summaries producer and consumer; the checkpoint
/// then flushes the producer first.
fn peer(
    cfg: &Config,
    producer: &rdkafka::producer::FutureProducer,
    engine: &mut Engine,
    ckpt: &mut Checkpointer,
) -> anyhow::Result<(Option<Summaries>, Option<rdkafka::consumer::StreamConsumer>)> {
    let Some(topic) = &cfg.kafka.summaries_topic else {
        return Ok((None, None));
    };
    let next = join_peers(cfg, producer, engine)?;
    ckpt.flush_first = Some(producer.clone());
    let out = Summaries {
        producer: producer.clone(),
        topic: topic.clone(),
    };
    let consumer = kafka::summaries_consumer(&cfg.kafka, topic, next)?;
    Ok((Some(out), Some(consumer)))
}

/// Where reading starts: the checkpoint's positions, unless they are ahead of the topic
/// (another cluster, a recreated topic), when the state goes too.
fn positions(
    cfg: &Config,
    consumer: &kafka::ReportsConsumer,
    mut engine: Engine,
    next: HashMap<i32, i64>,
) -> (Engine, Positions) {
    let mut pos = Positions::new(next);
    if checkpoint_ahead(cfg, consumer, &pos.next) {
        warn!(positions = ?pos.next, "Checkpoint is ahead of the reports topic (another cluster or a recreated topic?): ignoring it.");
        engine = Engine::with_table(cfg, engine.into_table());
        pos.next.clear();
    }
    pos.checkpointed(&engine);
    (engine, pos)
}

/// Serves the live page, `/metrics`, `/healthz` and `/readyz` at `http.listen`.
async fn serve_http(
    cfg: &Config,
    pages: crate::http::Pages,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http.listen {}: {e}", cfg.http.listen))?;
    info!(addr = %cfg.http.listen, "Serving /metrics, /healthz, /readyz.");
    let app = crate::http::router(pages);
    Ok(tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            error!(error = %e, "HTTP server stopped.");
        }
    }))
}

/// The engine and read positions from the checkpoint (a fresh engine without a usable one),
/// and the checkpointer that goes on writing it.
fn restore(
    cfg: &Config,
    store: &TableStore,
    retries: &prometheus::IntCounterVec,
) -> anyhow::Result<(Engine, HashMap<i32, i64>, Checkpointer)> {
    let table = store.load()?;
    info!(versions = table.len(), "Loaded benchmark cache.");
    let ckpt_store = CheckpointStore::open(&cfg.state.dir)?;
    let week_ago = crate::notify::deliver::now_ms() - 7 * 24 * 3_600_000;
    if let Err(e) = ckpt_store.prune_emitted(week_ago) {
        warn!(error = %e, "Cannot prune the checkpoint's emitted alerts.");
    }
    let (engine, next, emitted) = match ckpt_store.load(&cfg.kafka.reports_topic)? {
        Some(r) => match ckpt_store.restore_engine(cfg, table, &r.engine) {
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
                let fresh = Engine::with_table(cfg, table);
                (fresh, HashMap::new(), HashSet::new())
            }
        },
        None => (
            Engine::with_table(cfg, table),
            HashMap::new(),
            HashSet::new(),
        ),
    };
    let ckpt = Checkpointer {
        store: ckpt_store,
        topic: cfg.kafka.reports_topic.clone(),
        emitted,
        written: Default::default(),
        interval: cfg.state.checkpoint_interval,
        last: None,
        dirty: false,
        changelog: None,
        flush_first: None,
        dead_letters: None,
        retries: retries.clone(),
        writes: None,
    };
    Ok((engine, next, ckpt))
}

/// Applies benchmark updates until the reader has caught up with the topic's end (at most
/// 60 s) or shutdown.
async fn catch_up_benchmarks(
    caught_up: &AtomicBool,
    updates: &mut mpsc::UnboundedReceiver<BenchmarkUpdate>,
    engine: &mut Engine,
    shutdown: &watch::Receiver<bool>,
) {
    let started = Instant::now();
    while !caught_up.load(Ordering::Acquire) {
        while let Ok(u) = updates.try_recv() {
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
    while let Ok(u) = updates.try_recv() {
        engine.on_benchmark(&u.location, &u.cdn, u.ts, u.row);
    }
}

/// Whether a checkpoint claims positions past the partitions' ends: one from another
/// cluster (or a recreated topic) would skip everything. (Past the offset lookup's answer,
/// the partition is read to its end to be sure: some brokers, tansu 0.6, answer it short of
/// the last batch.)
fn checkpoint_ahead(
    cfg: &Config,
    consumer: &kafka::ReportsConsumer,
    next: &HashMap<i32, i64>,
) -> bool {
    use rdkafka::consumer::Consumer;
    let topic = &cfg.kafka.reports_topic;
    let past: Vec<(i32, i64)> = next
        .iter()
        .filter(|(p, n)| {
            let marks = tokio::task::block_in_place(|| {
                consumer.fetch_watermarks(topic, **p, Duration::from_secs(10))
            });
            matches!(marks, Ok((_, high)) if **n > high)
        })
        .map(|(p, n)| (*p, *n))
        .collect();
    let short = tokio::task::block_in_place(|| {
        source::ends_before(&cfg.kafka, topic, &past, Duration::from_secs(10))
    });
    !short.is_empty()
}

/// Joins the CDN-wide stage over the summaries topic; returns the offset to read it from.
fn join_peers(
    cfg: &Config,
    producer: &rdkafka::producer::FutureProducer,
    engine: &mut Engine,
) -> anyhow::Result<i64> {
    let partitions = takeover::partition_count(producer, &cfg.kafka.reports_topic)?;
    let restored = engine.summaries_next().is_some();
    engine.share_with_peers(i32::try_from(partitions).unwrap_or(i32::MAX));
    if !restored && let Some(changelog) = &cfg.kafka.changelog_topic {
        takeover::join_cdn_stage(cfg, engine, changelog);
    }
    let next = engine.summaries_next().unwrap_or(0);
    info!(topic = ?cfg.kafka.summaries_topic, next, partitions, "CDN-wide stage over the summaries topic.");
    Ok(next)
}

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

/// The output of `f` if it is ready at once, without waiting.
fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
