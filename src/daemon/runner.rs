//! The daemon's running state and one method per event of its loop: reports, the ticker,
//! summaries, SIGHUP, and the assignment changes they reveal. `run` owns the `select!`;
//! the consumers stay outside (their messages borrow them while a handler runs).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use tracing::{debug, error, info, warn};

use super::emit::{Outputs, finish};
use super::positions::Positions;
use super::probes::{LagView, publish_gauges};
use super::state::Checkpointer;
use super::summaries::{Summaries, close, next_summary};
use super::takeover::{sync_assignment, take_over};
use super::{BATCH, PROBE_EVERY, RunOptions, ready_now};
use crate::config::Config;
use crate::decode;
use crate::engine::Engine;
use crate::http::Readiness;
use crate::kafka;
use crate::metrics::Metrics;

/// Shortest unsettled time before a member rejoins its group (see [`Runner::watch_group`]).
const REJOIN_AFTER_AT_LEAST: Duration = Duration::from_secs(30);
use crate::table::store::TableStore;
use crate::time::Millis;

pub(super) struct Runner {
    pub(super) cfg: Config,
    pub(super) opts: RunOptions,
    pub(super) engine: Engine,
    pub(super) metrics: Arc<Metrics>,
    pub(super) readiness: Arc<Readiness>,
    pub(super) outputs: Outputs,
    pub(super) ckpt: Checkpointer,
    pub(super) pos: Positions,
    /// Where this instance's partitions' summaries go, when instances share the partitions.
    pub(super) summaries: Option<Summaries>,
    /// The benchmark cache (its size is a gauge).
    pub(super) store: Arc<TableStore>,
    /// When input goes idle, event time is advanced by wall-clock time after this, so the
    /// last windows close (a fully silent key is itself news, and alerts must not wait for
    /// the next record).
    pub(super) idle_grace: Duration,
    /// When the watermark last moved, and where to.
    pub(super) last_progress: (Instant, Option<Millis>),
    pub(super) last_probe: Instant,
    /// What the lag probe's thread reads (see [`super::probes::spawn_lag_probe`]).
    pub(super) lag: Arc<std::sync::Mutex<LagView>>,
    /// Incidents left firing by partitions that started empty.
    pub(super) orphans: super::orphans::Orphans,
    /// Assigned partitions whose firing incidents were adopted (see [`Runner::adopt`]).
    pub(super) adopted: HashSet<i32>,
    pub(super) reports_in: IntCounter,
    pub(super) summaries_in: IntCounter,
}

impl Runner {
    /// SIGHUP: the `[detect]` section (the rules) is read again and applied if valid.
    pub(super) fn on_hangup(&mut self) {
        let Some(path) = &self.opts.config_path else {
            return;
        };
        match Config::load(path, std::env::vars()) {
            Ok(new) => {
                self.engine.set_detect(new.detect.clone());
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                info!(path = %path.display(), detect = ?new.detect, "SIGHUP: reloaded the detection rules.");
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                error!(error = %e, "SIGHUP: config not reloaded; the old rules stay.");
            }
        }
    }

    /// Closes what the watermark (or `until`) allows and emits what that decided. Every
    /// decision goes through here, and a revocation noted by the consumer is taken in first:
    /// nothing is decided for a partition that has moved away.
    async fn close(&mut self, consumer: &kafka::ReportsConsumer, until: Option<Millis>) {
        if consumer.context().take_revoked() {
            self.sync(consumer).await;
        }
        let out = close(
            &mut self.engine,
            &self.metrics,
            until,
            self.summaries.as_ref(),
        );
        let evidence = self.engine.take_evidence();
        if let Err(e) = self.outputs.history.record_evidence(&evidence) {
            // The evidence pages lose these windows; detection and alerts go on.
            warn!(error = %e, "Cannot keep incident evidence in the history.");
        }
        finish(
            &mut self.ckpt,
            &self.engine,
            &mut self.pos,
            &self.outputs,
            out,
        )
        .await;
        let orphans = self.orphans.placed(&self.engine, &self.outputs);
        if !orphans.is_empty() {
            info!(
                resolved = orphans.len(),
                "Incidents left firing by a lost partition's last owner: resolved."
            );
            let closing = super::emit::Closing {
                alerts: orphans,
                started: Instant::now(),
                closed: true,
            };
            finish(
                &mut self.ckpt,
                &self.engine,
                &mut self.pos,
                &self.outputs,
                closing,
            )
            .await;
        }
    }

    /// Registers what the consumer has assigned and takes new partitions' state over.
    /// Returns whether any partition is assigned.
    pub(super) async fn sync(&mut self, consumer: &kafka::ReportsConsumer) -> bool {
        let a = sync_assignment(consumer, &mut self.engine, &mut self.pos, &mut self.ckpt);
        if !a.released.is_empty() {
            let n = self.outputs.dispatcher.release(&a.released);
            self.outputs.live.forget(&a.released);
            info!(
                incidents = a.released.len(),
                reminded = n,
                "Partitions revoked: their firing incidents are their next owner's to remind."
            );
        }
        self.adopted.retain(|p| a.assigned.contains(p));
        let lost = take_over(
            &self.cfg,
            &mut self.engine,
            &mut self.pos,
            &mut self.ckpt,
            &self.outputs,
            &a.added,
        )
        .await;
        self.orphans.lost(&self.outputs, &self.engine, &lost).await;
        self.adopt(&a.assigned).await;
        a.any
    }

    /// Incidents firing in the state of partitions this instance now owns (restored from its
    /// checkpoint or taken over): their reminders and Alertmanager refreshes go on from here,
    /// and they are on the live page.
    async fn adopt(&mut self, assigned: &[i32]) {
        let mut firing = Vec::new();
        let mut new = false;
        for p in assigned {
            if self.adopted.insert(*p) {
                new = true;
                firing.extend(self.engine.firing_alerts_of(*p));
            }
        }
        if new {
            // Where this instance now speaks for them (known ones are skipped).
            firing.extend(self.engine.cdn_firing_alerts());
        }
        if firing.is_empty() {
            return;
        }
        let dispatcher = &self.outputs.dispatcher;
        let counter = self.metrics.retries.with_label_values(&["outbox"]);
        let adopted =
            crate::retry::until_ok("queue refreshes in the outbox", Some(counter), || {
                dispatcher.adopt(&firing)
            })
            .await;
        if adopted > 0 {
            info!(
                incidents = adopted,
                "Firing incidents in restored or taken-over state: reminding them from here."
            );
        }
        self.outputs.live.adopt(&firing);
    }

    /// A summary, then whatever else is already fetched, up to a batch.
    pub(super) async fn on_summaries(
        &mut self,
        reports: &kafka::ReportsConsumer,
        consumer: Option<&rdkafka::consumer::StreamConsumer>,
        first: KafkaResult<BorrowedMessage<'_>>,
    ) {
        let mut m = Some(first);
        let mut budget = BATCH;
        while let Some(r) = m.take() {
            match r {
                Ok(msg) => {
                    self.summaries_in.inc();
                    let bytes = msg.payload().unwrap_or_default();
                    if let Err(e) = self.engine.on_summary(msg.offset(), bytes) {
                        warn!(offset = msg.offset(), error = %e, "Unusable summary: skipped.");
                    }
                }
                Err(e) => warn!(error = %e, "Summaries consumer error."),
            }
            budget -= 1;
            if budget > 0 {
                m = ready_now(next_summary(consumer));
            }
        }
        if self.engine.has_ready() {
            self.close(reports, None).await;
        }
    }

    /// The ticker: assignment, idle partitions, event time advanced by the wall clock when
    /// input stopped, repeats due, offsets, gauges, probes.
    pub(super) async fn on_tick(&mut self, consumer: &kafka::ReportsConsumer) {
        // Rebalances first: nothing is decided for a partition that has moved away.
        consumer.context().take_revoked();
        self.sync(consumer).await;
        self.readiness
            .partitions
            .store(self.pos.last_seen.len(), Ordering::Release);
        self.readiness
            .in_group
            .store(consumer.context().steady(), Ordering::Release);
        self.pos.tick();
        if let Some(dlq) = &mut self.ckpt.dead_letters {
            dlq.collect();
        }
        for (p, seen) in &self.pos.last_seen {
            if seen.elapsed() > self.idle_grace {
                self.engine.set_partition_idle(*p);
            }
        }
        // A partition that has never delivered holds the watermark; if the consumer has read
        // it to its end (it is empty) there is nothing to wait for. (Its end as fetching
        // reports it: some brokers, tansu 0.6, answer offset lookups short of the last batch.)
        for p in self.engine.silent_partitions() {
            if self.pos.at_end.contains(&p) {
                debug!(partition = p, "Partition empty: not waiting for it.");
                self.engine.set_partition_idle(p);
            }
        }
        // Idle marking may have moved the watermark.
        self.close(consumer, None).await;
        let wm = self.engine.watermark();
        if wm != self.last_progress.1 {
            self.last_progress = (Instant::now(), wm);
        } else if let Some(wm) = wm {
            let idle = self.last_progress.0.elapsed();
            if idle > self.idle_grace {
                let advanced = wm + (idle - self.idle_grace).as_millis() as Millis;
                self.close(consumer, Some(advanced)).await;
            }
        }
        self.orphans.look_up(&self.outputs, &self.engine).await;
        if let Err(e) = self.outputs.dispatcher.repeat_due() {
            error!(error = %e, "Cannot queue repeats in the outbox.");
        }
        self.pos.store(consumer, &self.cfg.kafka.reports_topic);
        self.watch_group(consumer);
        publish_gauges(&self.metrics, &self.engine, &self.outputs.live);
        self.delete_removed_benchmarks();
        self.hand_over_lag_view(consumer);
        if self.last_probe.elapsed() >= PROBE_EVERY {
            self.last_probe = Instant::now();
            self.probe();
        }
    }

    /// A member whose join has not settled for four sessions (30 s at least) leaves the group
    /// and joins again as a new member: a coordinator that lost it (UNKNOWN_MEMBER_ID) or holds
    /// its join round would otherwise leave its partitions unread for good. Counted in
    /// `retries_total{loop="group_join"}`, logged at each rejoin.
    fn watch_group(&mut self, consumer: &kafka::ReportsConsumer) {
        let after = (self.cfg.kafka.session_timeout * 4).max(REJOIN_AFTER_AT_LEAST);
        let Some((unsettled, join_state)) = consumer.context().unsettled() else {
            return;
        };
        if unsettled < after {
            return;
        }
        warn!(
            join_state,
            seconds = unsettled.as_secs(),
            "The consumer group has not settled: leaving it and joining again as a new member."
        );
        self.metrics
            .retries
            .with_label_values(&["group_join"])
            .inc();
        if let Err(e) = kafka::rejoin(consumer, &self.cfg.kafka.reports_topic) {
            error!(error = %e, "Cannot subscribe to the reports topic again.");
        }
    }

    /// Deletes from the RocksDB cache the benchmark versions the table let go of (pruned,
    /// evicted), so that the cache is bounded like the table. A failed delete is logged and
    /// left: those rows come back at the next start and the table evicts them again.
    fn delete_removed_benchmarks(&mut self) {
        let gone = self.engine.take_table_removals();
        if gone.is_empty() {
            return;
        }
        let store = &self.store;
        if let Err(e) = tokio::task::block_in_place(|| store.delete_rows(&gone)) {
            warn!(error = %e, rows = gone.len(), "Cannot delete removed benchmark rows from the cache.");
        }
    }

    /// Where the loop is, for the lag probe's thread (which asks the broker; the loop never
    /// waits for it).
    fn hand_over_lag_view(&self, consumer: &kafka::ReportsConsumer) {
        if let (Ok(tpl), Ok(mut view)) = (consumer.assignment(), self.lag.lock()) {
            let mut assigned: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            assigned.sort_unstable();
            view.assigned = assigned;
            view.next.clone_from(&self.pos.next);
        }
    }

    fn probe(&mut self) {
        let sizes = [
            ("benchmarks", self.store.size_bytes()),
            ("outbox", self.outputs.dispatcher.outbox_bytes()),
            ("checkpoint", self.ckpt.store.size_bytes()),
            ("history", self.outputs.history.bytes()),
        ];
        for (db, bytes) in sizes {
            self.metrics
                .rocksdb_bytes
                .with_label_values(&[db])
                .set(bytes as i64);
        }
        self.metrics
            .keys_evicted
            .with_label_values(&["history"])
            .inc_by(self.outputs.history.take_evicted());
        if let Some(s) = self.outputs.dispatcher.silences() {
            let now = crate::notify::deliver::now_ms();
            self.metrics.silences_active.set(s.active(now) as i64);
            self.metrics
                .keys_evicted
                .with_label_values(&["silences"])
                .inc_by(s.take_evicted());
        }
    }

    /// A report, then whatever else is already fetched, up to a batch, without going back
    /// through the select (its futures cost more than a record's processing).
    pub(super) async fn on_reports(
        &mut self,
        consumer: &kafka::ReportsConsumer,
        first: KafkaResult<BorrowedMessage<'_>>,
    ) {
        let mut msg = Some(first);
        let mut budget = BATCH;
        // The wall clock event times are held against: once per batch, not per report.
        let now = crate::time::now_ms();
        while let Some(m) = msg.take() {
            match m {
                Ok(m) => self.on_report(consumer, &m, now).await,
                Err(KafkaError::PartitionEOF(p)) => {
                    self.pos.at_end.insert(p);
                }
                Err(e) => warn!(error = %e, "Report consumer error."),
            }
            budget -= 1;
            if budget > 0 {
                msg = ready_now(consumer.recv());
            }
        }
    }

    async fn on_report(
        &mut self,
        consumer: &kafka::ReportsConsumer,
        msg: &BorrowedMessage<'_>,
        now: Millis,
    ) {
        self.reports_in.inc();
        let (p, o) = (msg.partition(), msg.offset());
        self.pos.at_end.remove(&p);
        if !self.engine.has_partition(p) || consumer.context().take_revoked() {
            // First record of a partition: register everything assigned first, so windows
            // wait for the partitions that have not delivered yet (and take over their state
            // from the changelog, if there is one). After a revocation, at once: nothing is
            // decided for a partition that has moved away.
            self.sync(consumer).await;
        }
        if self.pos.seen(p, o) {
            self.pos.last_seen.insert(p, Instant::now());
            return;
        }
        let limit = self.cfg.limits.max_message_bytes;
        let window = &self.cfg.window;
        let input = &self.cfg.input;
        let decoded = msg
            .payload()
            .map_or(Err(decode::DecodeError::Empty), |v| {
                decode::read_report(input, v, limit)
            })
            .and_then(|r| {
                // A wild clock is bad input, not a jump of event time.
                match window.check_event_time(r.ts, Some(now)) {
                    Ok(()) => Ok(r),
                    Err(detail) => Err(decode::DecodeError::OutOfRange {
                        field: "ts",
                        detail,
                    }),
                }
            });
        match decoded {
            Ok(r) => {
                self.engine.on_report(&r, Some((p, o)));
            }
            Err(e) => {
                self.metrics
                    .decode_failures
                    .with_label_values(&[e.reason()])
                    .inc();
                debug!(
                    reason = e.reason(),
                    partition = p,
                    offset = o,
                    "Dead-lettered a report."
                );
                // In flight: the next checkpoint waits for it before this offset can be
                // committed.
                if let Some(dlq) = &mut self.ckpt.dead_letters {
                    dlq.push_message(msg, &e).await;
                }
            }
        }
        self.pos.next.insert(p, o + 1);
        if self.engine.has_ready() {
            self.close(consumer, None).await;
        }
    }

    /// Checkpoints what is not yet, stores and commits the offsets that covers.
    pub(super) async fn shutdown(mut self, consumer: &kafka::ReportsConsumer) {
        let c = self.engine.counters();
        info!(
            accepted = c.accepted,
            late = c.late,
            windows = c.windows_closed,
            alerts = c.alerts,
            watermark = self.engine.watermark().map(crate::time::format_ms),
            partitions = ?self.engine.partition_state(),
            "Shutting down: committing offsets."
        );
        self.delete_removed_benchmarks();
        if self.ckpt.dirty {
            self.ckpt.save(&self.engine, &mut self.pos, &[]).await;
        } else if let Some(dlq) = &mut self.ckpt.dead_letters {
            dlq.settle().await;
        }
        // What the memtables hold goes to disk now, not into the next start's log replay
        // (seconds at a million keys).
        if let Err(e) = self.ckpt.store.flush() {
            warn!(error = %e, "Cannot flush the checkpoint store.");
        }
        if let Err(e) = self.store.flush() {
            warn!(error = %e, "Cannot flush the benchmark cache.");
        }
        self.pos.store(consumer, &self.cfg.kafka.reports_topic);
        if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            // Nothing stored yet is not an error worth alarming about.
            debug!(error = %e, "Final commit.");
        }
    }
}
