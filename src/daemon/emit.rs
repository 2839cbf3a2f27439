//! The emission order: the one place that knows in which order a decided alert reaches the
//! checkpoint, the receivers' outbox and the alerts topic, so that a kill at any point
//! neither loses nor doubles an alert on the alerts topic (Kafka transactions are not used:
//! plain consumers see alerts at once, and brokers without transactions work), and no
//! receiver hears of a state change that the state a restart or a partition's next owner
//! starts from does not hold.
//!
//! 1. **Checkpoint** ([`Checkpointer::save`]): the engine state, the read positions and the
//!    alerts as *decided and pending*, in one synced batch (with a changelog, each owned
//!    partition's share, acknowledged by the broker). A restart from here does not decide
//!    them again (the replay's regenerated alerts are dropped as emitted).
//! 2. **Outbox** ([`announce`]): the receivers' RocksDB outbox gets the alerts, synced.
//! 3. **Produce** ([`produce`]) to the alerts topic, until the broker acknowledges each.
//! 4. **Confirm**: the acknowledgements clear pending and record where the alerts landed.
//!
//! A kill between 1 and 4 leaves alerts pending: the next start reads the alerts topic from
//! after the last acknowledged alert to its end, and hands the pending alerts that are not
//! there to the outbox and produces them ([`send_pending`]); those that are there passed 2
//! already. Receivers get every state change at least once (a kill between 2 and 3 repeats
//! one; `Idempotency-Key` lets them dedup). A produce that fails (broker away) is looked up
//! the same way before it is sent again, so a lost acknowledgement does not double it. A
//! partition's new owner does the same with the pending alerts its changelog share carries
//! ([`super::takeover`]). With the outbox first (until 2026-12-06) a member killed after a
//! webhook heard "resolved" and before the changelog held it left its next owner an incident
//! still firing, which it reminded as firing. Tests: `tests/crash.rs` (kill -9 at random
//! points), `tests/outage.rs`, `tests/scale_out.rs`, and
//! `daemon::tests::receivers_hear_of_an_alert_only_after_the_changelog_holds_it`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::retry::Backoff;

use super::RunOptions;
use super::positions::Positions;
use super::state::Checkpointer;
use crate::checkpoint::CheckpointStore;
use crate::engine::Engine;
use crate::http::Live;
use crate::incident::{Alert, Status};
use crate::metrics::Metrics;
use crate::notify::deliver::Dispatcher;
use crate::notify::{self, AlertSink};
use crate::time::Millis;

/// Alerts of one close, with when the close began (for the latency metric).
pub(super) struct Closing {
    pub(super) alerts: Vec<Alert>,
    pub(super) started: Instant,
    /// Whether any window closed (then the state is checkpointed).
    pub(super) closed: bool,
}

/// Where alerts go.
pub(super) struct Outputs {
    pub(super) alerts: AlertSink,
    /// To look alerts up on their topic.
    pub(super) kafka: crate::kafka::KafkaConfig,
    pub(super) dispatcher: Arc<Dispatcher>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) live: Arc<Live>,
    /// Every state change announced, for `/api/incidents?...`.
    pub(super) history: Arc<crate::history::History>,
    pub(super) opts: RunOptions,
}

/// Emits a close's alerts that were not decided before (a replay after a restore regenerates
/// some) and checkpoints the state when windows closed.
///
/// Order, so that a kill at any point neither loses nor doubles an alert on the alerts topic:
/// the checkpoint that marks them decided and pending, then the outbox (receivers), then the
/// produce, then the confirmation that clears pending. A restart finds the alerts of an
/// interrupted close pending and sends those the topic does not have ([`send_pending`]).
pub(super) async fn finish(
    ckpt: &mut Checkpointer,
    engine: &Engine,
    pos: &mut Positions,
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
            ckpt.save(engine, pos, &[]).await;
        }
        return;
    }
    // Marked as the silences hold them now: the alerts topic says so; receivers are held.
    let now = crate::notify::deliver::now_ms();
    for a in &mut closing.alerts {
        a.silenced_by = out.dispatcher.holding(a, now);
    }
    ckpt.save(engine, pos, &closing.alerts).await;
    announce(out, &closing).await;
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
pub(super) async fn found_on_alerts_topic(
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
/// alerts topic after the positions of its last acknowledged produce go to the receivers'
/// outbox (the run may have stopped before it) and to the topic. Runs before any report is
/// read.
pub(super) async fn send_pending(store: &CheckpointStore, out: &Outputs) -> anyhow::Result<()> {
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
    let closing = Closing {
        alerts: missing,
        started: Instant::now(),
        closed: true,
    };
    announce(out, &closing).await;
    let landed = produce(out, store, &closing.alerts, closing.started).await;
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
    let counter = out.metrics.retries.with_label_values(&["outbox"]);
    crate::retry::until_ok("write alerts to the outbox", Some(counter), || {
        dispatcher.enqueue_detected(alerts, detected_ms)
    })
    .await;
    live.record(alerts);
    if let Err(e) = out.history.record(alerts) {
        // The history is for people looking back; the alert itself goes on.
        warn!(error = %e, "Cannot keep state changes in the history.");
    }
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
    let counter = out.metrics.retries.with_label_values(&["alerts_produce"]);
    let mut backoff = Backoff::new("produce alerts to the alerts topic", Some(counter));
    while !remaining.is_empty() {
        let results = out.alerts.send_each(&remaining).await;
        let mut failed = Vec::new();
        let mut why = String::new();
        for (a, r) in remaining.into_iter().zip(results) {
            match r {
                Ok(at) => {
                    out.metrics.alerts_out.inc();
                    landed.push(at);
                }
                Err(e) => {
                    debug!(error = %e, id = %a.id, "Could not produce an alert.");
                    why = e.to_string();
                    failed.push(a);
                }
            }
        }
        remaining = failed;
        // Which of the failed ones got there anyway? Ask until the topic answers.
        while !remaining.is_empty() {
            backoff
                .wait(format!(
                    "{} alerts not acknowledged: {why}",
                    remaining.len()
                ))
                .await;
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
                Ok(Err(e)) => why = format!("the alerts topic cannot be read yet: {e}"),
                Err(e) => why = format!("the alerts topic lookup failed: {e}"),
            }
        }
    }
    backoff.succeeded();
    out.metrics
        .alert_ack_seconds
        .observe(started.elapsed().as_secs_f64());
    landed
}
