//! The multi-instance protocol of the CDN-wide stage. A CDN bad at many locations is bad in
//! many partitions, so with the report partitions spread over several instances no instance
//! sees all of its evidence. Every instance therefore publishes its partitions' [`Summary`]s
//! to one summaries topic and reads all of them back; every instance runs the CDN-wide stage
//! on that one stream (its own partitions included), so they all hold the same CDN-wide
//! incidents: a location+CDN incident finds its CDN-wide parent anywhere, and whoever owns
//! report partition 0 sends the CDN-wide alerts (as part of that partition's decisions, so
//! they move with it: its changelog share carries them).

use std::collections::BTreeMap;

use super::decide::Tested;
use super::{Engine, MAX_GAP_WINDOWS, StateError};
use crate::incident::Alert;
use crate::time::Millis;

/// One partition's news for the instances that share the report partitions, on the
/// summaries topic: how far it has closed windows, whether its owner stopped waiting for it
/// (idle), and the keys it found bad in the windows it closed (the evidence of CDN-wide
/// incidents; clean keys are not needed there).
///
/// A partition's news of one close goes in several summaries when its bad keys are more than
/// [`SUMMARY_KEYS`] (a large CDN incident): each message stays bounded, only the last one
/// moves the partition's progress (so no peer decides a window before all its keys are in),
/// and a part whose first window began in the part before says so (`continues`): its keys
/// are added to that window's, where a window's first part replaces what was there (a new
/// owner closing the window again).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Summary {
    partition: i32,
    closed_until: Millis,
    idle: bool,
    windows: Vec<(Millis, Vec<Tested>)>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    continues: bool,
}

/// Most bad keys in one summary message: a tested key with its evidence encodes to about 500
/// bytes (measured), so a message stays near 250 KB, far below the producer's 1,000,000.
pub(super) const SUMMARY_KEYS: usize = 500;

/// A partition's windows of bad keys in parts of at most `limit` keys: each part with
/// whether its first window continues the part before's last.
type Parts<T> = Vec<(bool, Vec<(Millis, Vec<T>)>)>;

fn split<T>(windows: Vec<(Millis, Vec<T>)>, limit: usize) -> Parts<T> {
    let limit = limit.max(1);
    let mut parts = Vec::new();
    let (mut current, mut continues, mut room) = (Vec::new(), false, limit);
    for (start, keys) in windows {
        let mut keys = keys.into_iter().peekable();
        let mut first = true;
        while keys.peek().is_some() {
            if room == 0 {
                parts.push((continues, std::mem::take(&mut current)));
                (continues, room) = (!first, limit);
            }
            let piece: Vec<T> = keys.by_ref().take(room).collect();
            room -= piece.len();
            current.push((start, piece));
            first = false;
        }
    }
    if !current.is_empty() {
        parts.push((continues, current));
    }
    parts
}

/// The peered CDN-wide stage: every partition's progress and bad keys, from the summaries.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Peers {
    /// Partitions of the reports topic: a window is decided once all have closed it.
    partitions: i32,
    /// Per partition, from its last summary: closed until, idle.
    pub(super) progress: BTreeMap<i32, (Millis, bool)>,
    /// Bad keys per window and partition, until the window is decided.
    bad: BTreeMap<Millis, BTreeMap<i32, Vec<Tested>>>,
    /// CDN-wide alerts per window, sent by partition 0's owner as it decides the window.
    cdn_alerts: BTreeMap<Millis, Vec<Alert>>,
    /// Next offset to read on the summaries topic.
    pub(super) next: i64,
    /// Bad keys of the windows owned partitions closed since the last summary.
    #[serde(skip)]
    outgoing: BTreeMap<i32, Vec<(Millis, Vec<Tested>)>>,
    /// What the last summary of each owned partition said (closed until, idle).
    #[serde(skip)]
    published: BTreeMap<i32, (Millis, bool)>,
    /// Summaries to send.
    #[serde(skip)]
    outbox: Vec<Summary>,
    /// Most bad keys in one summary ([`SUMMARY_KEYS`] unless a test sets it).
    #[serde(skip)]
    pub(super) summary_keys: Option<usize>,
}

impl Peers {
    /// `Some` once every partition has been heard of.
    pub(super) fn heard_of_all(&self) -> Option<()> {
        ((self.progress.len() as i32) >= self.partitions).then_some(())
    }

    /// An owned partition closed the window at `start` with these bad keys.
    pub(super) fn closed(&mut self, partition: i32, start: Millis, bad: Vec<Tested>) {
        if !bad.is_empty() {
            self.outgoing
                .entry(partition)
                .or_default()
                .push((start, bad));
        }
    }

    /// The first window with bad keys waiting for its decision.
    pub(super) fn first_window(&self) -> Option<Millis> {
        self.bad.keys().next().copied()
    }

    /// Every partition's bad keys of the window at `start`, as their summaries said.
    pub(super) fn take_bad(&mut self, start: Millis) -> Vec<Tested> {
        self.bad
            .remove(&start)
            .into_iter()
            .flat_map(|w| w.into_values())
            .flatten()
            .collect()
    }

    /// Keeps the CDN-wide alerts of the window at `start` for partition 0's owner.
    pub(super) fn hold_cdn_alerts(&mut self, start: Millis, alerts: Vec<Alert>) {
        if !alerts.is_empty() {
            self.cdn_alerts.insert(start, alerts);
        }
    }

    /// The CDN-wide alerts partition 0's owner sends as it decides `[start, end)`, having
    /// decided up to `decided_until` before (a part catching up sends the windows between).
    pub(super) fn cdn_alerts_for(
        &self,
        decided_until: Millis,
        start: Millis,
        end: Millis,
    ) -> Vec<Alert> {
        let from = if decided_until == Millis::MIN {
            start
        } else {
            decided_until
        };
        self.cdn_alerts
            .range(from..end)
            .flat_map(|(_, a)| a.iter().cloned())
            .collect()
    }

    /// Forgets what windows decided by now no longer need.
    pub(super) fn forget_decided(&mut self, decided: Millis, size: Millis) {
        let horizon = decided - MAX_GAP_WINDOWS * size;
        self.cdn_alerts.retain(|s, _| s + size > horizon);
        self.bad.retain(|s, _| s + size > decided);
    }

    /// A partition's state moved away.
    pub(super) fn forget_partition(&mut self, partition: i32) {
        self.published.remove(&partition);
        self.outgoing.remove(&partition);
    }

    /// Takes another instance's stage (from partition 0's share), keeping the partition count.
    pub(super) fn adopt(&mut self, other: Peers) {
        let partitions = self.partitions;
        *self = other;
        self.partitions = partitions;
    }
}

impl Engine {
    /// Spreads the CDN-wide stage over the instances sharing `partitions` report partitions
    /// (see [`Peers`]): from now on windows are decided as the summaries topic, read back
    /// through [`Engine::on_summary`], allows. Keeps what a restored checkpoint had.
    pub fn share_with_peers(&mut self, partitions: i32) {
        let peers = self.peers.get_or_insert_with(Peers::default);
        peers.partitions = partitions;
        peers.published.clear();
        self.ready = true;
    }

    /// The next offset to read on the summaries topic, when peered.
    pub fn summaries_next(&self) -> Option<i64> {
        self.peers.as_ref().map(|p| p.next)
    }

    /// One record of the summaries topic, at `offset` (records before the stage's position,
    /// read again after a restart, are skipped). [`Engine::close_ready`] then decides what
    /// it allows.
    pub fn on_summary(&mut self, offset: i64, bytes: &[u8]) -> Result<(), StateError> {
        let size = self.cfg.window_ms();
        let Some(peers) = &mut self.peers else {
            return Ok(());
        };
        if offset < peers.next {
            return Ok(());
        }
        peers.next = offset + 1;
        let s: Summary = super::codec::decode(bytes)?;
        if !(0..peers.partitions).contains(&s.partition) {
            return Err(StateError::UnknownPartition {
                partition: s.partition,
                partitions: peers.partitions,
            });
        }
        peers.progress.insert(s.partition, (s.closed_until, s.idle));
        for (i, (start, keys)) in s.windows.into_iter().enumerate() {
            // A window decided already (a new owner closing it again) keeps its decision.
            if start + size > self.decided_until {
                let window = peers.bad.entry(start).or_default();
                if i == 0 && s.continues {
                    window.entry(s.partition).or_default().extend(keys);
                } else {
                    window.insert(s.partition, keys);
                }
            }
        }
        self.ready = true;
        Ok(())
    }

    /// Summaries of the owned partitions to send to the summaries topic, in order, with
    /// their partition (the record key).
    pub fn take_summaries(&mut self) -> Result<Vec<(i32, Vec<u8>)>, StateError> {
        let Some(peers) = &mut self.peers else {
            return Ok(Vec::new());
        };
        peers
            .outbox
            .drain(..)
            .map(|s| Ok((s.partition, super::codec::encode(&s)?)))
            .collect()
    }

    /// Queues a summary for each owned partition whose progress changed or that closed
    /// windows with bad keys.
    pub(super) fn collect_summaries(&mut self) {
        let Some(peers) = &mut self.peers else {
            return;
        };
        for (p, part) in &self.parts {
            if self.frontier.is_revoked(*p) {
                continue;
            }
            let now = (part.windows.closed_until(), self.frontier.is_idle(*p));
            let windows = peers.outgoing.remove(p).unwrap_or_default();
            if windows.is_empty() && peers.published.get(p) == Some(&now) {
                continue;
            }
            let before = peers
                .published
                .insert(*p, now)
                .unwrap_or((Millis::MIN, false));
            let mut parts = split(windows, peers.summary_keys.unwrap_or(SUMMARY_KEYS));
            if parts.is_empty() {
                parts.push((false, Vec::new()));
            }
            let last = parts.len() - 1;
            for (i, (continues, windows)) in parts.into_iter().enumerate() {
                let (closed_until, idle) = if i == last { now } else { before };
                peers.outbox.push(Summary {
                    partition: *p,
                    closed_until,
                    idle,
                    windows,
                    continues,
                });
            }
        }
        peers.outgoing.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn a_close_splits_into_parts_of_at_most_the_limit_and_says_which_continue() {
        let windows = vec![(0, vec![1, 2, 3]), (60, vec![4]), (120, vec![5, 6])];
        assert_eq!(
            split(windows.clone(), 2),
            vec![
                (false, vec![(0, vec![1, 2])]),
                (true, vec![(0, vec![3]), (60, vec![4])]),
                (false, vec![(120, vec![5, 6])]),
            ]
        );
        assert_eq!(split(windows.clone(), 10), vec![(false, windows)]);
        assert!(split::<u8>(Vec::new(), 3).is_empty());
    }
}
