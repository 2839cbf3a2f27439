//! Read positions per report partition, and the offsets that are safe to commit.
//!
//! Offsets are kept in the checkpointed state (as Arroyo does), the Kafka commit is advisory:
//! auto-commit is on, auto offset *store* is off, and only [`Positions::committable`] is ever
//! stored, the offsets the last checkpoint covers.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::debug;

use crate::engine::Engine;
use crate::kafka;

/// Per report partition: where reading goes on, what is safe to commit, when it last
/// delivered and whether the consumer has read it to its end.
#[derive(Debug, Default)]
pub(super) struct Positions {
    /// Next offset to read per partition (one past the last processed). Records below it are
    /// already in the engine's state (restored from the checkpoint, or read before a
    /// rebalance or broker outage sent the consumer back to the committed offset): skipped.
    pub next: HashMap<i32, i64>,
    /// Per partition, the offset that is safe to commit given the last checkpoint: the
    /// lowest offset its open windows needed, or its next offset. Committing past it would
    /// lose records that a restore from that checkpoint needs.
    pub committable: HashMap<i32, i64>,
    /// Wall time of each owned partition's last record, to stop waiting for silent ones.
    pub last_seen: HashMap<i32, Instant>,
    /// Read positions at the last tick: a partition that moved since is not idle.
    seen_at: HashMap<i32, i64>,
    /// Partitions the consumer has read to their end since their last record.
    pub at_end: HashSet<i32>,
}

impl Positions {
    pub(super) fn new(next: HashMap<i32, i64>) -> Self {
        Positions {
            next,
            ..Default::default()
        }
    }

    /// Whether the record at `offset` of `p` is in the state already (skip it).
    pub(super) fn seen(&self, p: i32, offset: i64) -> bool {
        self.next.get(&p).is_some_and(|n| offset < *n)
    }

    /// Notes which partitions delivered since the last tick (cheaper than a clock read per
    /// record).
    pub(super) fn tick(&mut self) {
        for (p, n) in &self.next {
            if self.seen_at.insert(*p, *n) != Some(*n) {
                self.last_seen.insert(*p, Instant::now());
            }
        }
    }

    /// A partition this instance no longer has state for.
    pub(super) fn forget(&mut self, p: i32) {
        self.next.remove(&p);
        self.committable.remove(&p);
    }

    /// Moves the committable offsets up to what the engine's state (just checkpointed) needs.
    pub(super) fn checkpointed(&mut self, engine: &Engine) {
        self.committable = committable(engine, &self.next);
    }

    /// Stores, per assigned partition, the offset the last checkpoint makes safe; auto-commit
    /// then commits it.
    pub(super) fn store(&self, consumer: &kafka::ReportsConsumer, topic: &str) {
        let assigned: HashSet<i32> = match consumer.assignment() {
            Ok(a) => a.elements().iter().map(|e| e.partition()).collect(),
            Err(_) => return,
        };
        let mut tpl = TopicPartitionList::new();
        for (p, safe) in self
            .committable
            .iter()
            .filter(|(p, _)| assigned.contains(p))
        {
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
}

/// Per partition: the lowest offset an open window still needs, or the next one to read.
fn committable(engine: &Engine, next: &HashMap<i32, i64>) -> HashMap<i32, i64> {
    let pending = engine.pending_offsets();
    next.iter()
        .map(|(p, n)| (*p, pending.get(p).map_or(*n, |o| (*o).min(*n))))
        .collect()
}
