//! Incidents left firing by a partition's last owner when its state could not be taken over
//! (its changelog share unreadable, after retries): the partition starts empty, so nothing
//! here would ever resolve them. The alerts topic says which incidents are still firing;
//! each one whose location turns out to be the lost partition's (its reports arrive there) is
//! resolved, saying why. Detection on the partition starts afresh and raises a new incident
//! if the location is still bad. Incidents of other locations belong to other partitions and
//! are left to their owners.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::emit::Outputs;
use crate::engine::Engine;
use crate::incident::{Alert, Status};

/// Orphans kept at most (the newest firing ones; the rest are only logged).
pub(super) const MAX_ORPHANS: usize = 10_000;

/// A failed alerts-topic lookup is tried again after this.
const LOOKUP_AGAIN: Duration = Duration::from_secs(30);

#[derive(Default)]
pub(super) struct Orphans {
    /// Partitions that started empty.
    lost: HashSet<i32>,
    /// When the alerts topic is to be read (again) for the lost partitions' orphans.
    lookup: Option<Instant>,
    /// Incidents firing on the alerts topic that no state here knows, by id.
    firing: HashMap<String, Alert>,
}

impl Orphans {
    /// `parts` started empty: reads the alerts topic for the incidents still firing there
    /// that this instance's state does not hold.
    pub(super) async fn lost(&mut self, out: &Outputs, engine: &Engine, parts: &[i32]) {
        if parts.is_empty() {
            return;
        }
        self.lost.extend(parts.iter().copied());
        self.lookup = Some(Instant::now());
        self.look_up(out, engine).await;
    }

    /// Reads the alerts topic for the orphans, when a lookup is due (after a partition was
    /// lost, or 30 s after one failed).
    pub(super) async fn look_up(&mut self, out: &Outputs, engine: &Engine) {
        if self.lookup.is_none_or(|at| at > Instant::now()) {
            return;
        }
        self.lookup = Some(Instant::now() + LOOKUP_AGAIN);
        let (k, topic) = (out.kafka.clone(), out.alerts.topic().to_string());
        let read = tokio::task::spawn_blocking(move || {
            crate::notify::firing_on_topic(&k, &topic, Duration::from_secs(60))
        })
        .await;
        let firing = match read {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                warn!(error = %e, "Cannot read the alerts topic for incidents left firing by a lost partition; trying again in 30 s.");
                return;
            }
            Err(e) => {
                warn!(error = %e, "Alerts topic lookup failed.");
                return;
            }
        };
        let known: HashSet<String> = engine
            .partitions()
            .into_iter()
            .flat_map(|p| engine.firing_alerts_of(p))
            .chain(engine.cdn_firing_alerts())
            .map(|a| a.id)
            .collect();
        let mut candidates: Vec<Alert> = firing
            .into_iter()
            .filter(|a| a.scope.location.is_some() && !known.contains(&a.id))
            .collect();
        candidates.sort_by_key(|a| std::cmp::Reverse(a.window_end));
        if candidates.len() > MAX_ORPHANS {
            warn!(
                dropped = candidates.len() - MAX_ORPHANS,
                "More incidents firing on the alerts topic than are watched as orphans: the oldest are not."
            );
            candidates.truncate(MAX_ORPHANS);
        }
        self.lookup = None;
        for a in candidates {
            self.firing.insert(a.id.clone(), a);
        }
        out.metrics.orphaned_incidents.set(self.firing.len() as i64);
        info!(
            partitions = ?self.lost,
            watched = self.firing.len(),
            "Incidents firing on the alerts topic, watched for the lost partitions' locations."
        );
    }

    /// Resolutions of the orphans whose locations are now known to a lost partition.
    pub(super) fn placed(&mut self, engine: &Engine, out: &Outputs) -> Vec<Alert> {
        if self.firing.is_empty() {
            return Vec::new();
        }
        let now = engine
            .watermark()
            .unwrap_or_else(crate::notify::deliver::now_ms);
        // One walk over the lost partitions' keys, not one over every key per orphan.
        let known = engine.locations_of(&self.lost);
        let ids: Vec<String> = self
            .firing
            .values()
            .filter(|a| {
                a.scope
                    .location
                    .as_deref()
                    .is_some_and(|l| known.contains(l))
            })
            .map(|a| a.id.clone())
            .collect();
        let mut resolved = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(mut a) = self.firing.remove(&id) else {
                continue;
            };
            a.status = Status::Resolved;
            a.window_start = a.window_end.max(now - engine.window_ms());
            a.window_end = a.window_end.max(now);
            a.resolved_at = Some(a.window_end);
            a.summary = format!(
                "{}: resolved without evidence: its partition's state could not be taken \
                 over (changelog unreadable); detection there started afresh and raises a new \
                 incident if it is still bad.",
                a.scope
            );
            resolved.push(a);
        }
        out.metrics.orphaned_incidents.set(self.firing.len() as i64);
        resolved
    }
}
