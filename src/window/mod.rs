//! Event-time tumbling windows per (location, cdn) with a watermark and allowed lateness.
//!
//! Pure and synchronous: [`Windows::record`] folds a report into its window's accumulator and
//! [`Windows::close_until`] hands back every window whose end the watermark has passed. Per
//! window only accumulators are kept, never reports, so memory is bounded by keys x open windows.

mod acc;
pub mod cohort;
mod config;
mod legacy;
pub mod sessions;

pub use acc::{Acc, AccNow, Exposure};
pub use config::WindowConfig;

use std::collections::{BTreeMap, HashMap};

pub use crate::hash::{FastMap, FastSet};
use std::sync::Arc;

use crate::time::Millis;

/// A (location, cdn) pair. Strings are interned so each distinct name is stored once.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Key {
    pub location: Arc<str>,
    pub cdn: Arc<str>,
}

/// What happened to a recorded report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Accepted,
    /// Its window had already closed (older than the watermark allows): counted, dropped.
    Late,
    /// Its window already holds `max_keys` keys and this is a new one: counted, dropped.
    KeyCapExceeded,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Open {
    keys: FastMap<Key, Acc>,
    /// Lowest source offset per partition that contributed to this window.
    min_offsets: HashMap<i32, i64>,
}

/// A window the watermark has passed.
#[derive(Debug)]
pub struct Closed {
    pub start: Millis,
    pub end: Millis,
    pub keys: FastMap<Key, Acc>,
    /// Lowest source offset per partition that contributed to it.
    pub min_offsets: HashMap<i32, i64>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(from = "WindowsRepr")]
pub struct Windows {
    size: Millis,
    lateness: Millis,
    max_keys: usize,
    open: BTreeMap<Millis, Open>,
    /// Newest event time recorded. The windows belong to one source partition (the engine
    /// keeps one per partition), so this is that partition's event time.
    newest: Option<Millis>,
    /// Every window ending at or before this has been closed.
    closed_until: Millis,
    /// Interned names; rebuilt as keys come in after a restore.
    #[serde(skip)]
    names: FastSet<Arc<str>>,
}

/// [`Windows`] as checkpoints hold it. Those written before one `Windows` served one
/// partition keep the newest event time per partition in `max_event_ts`: the newest of
/// them is the one that counts now.
#[derive(serde::Deserialize)]
struct WindowsRepr {
    size: Millis,
    lateness: Millis,
    max_keys: usize,
    open: BTreeMap<Millis, Open>,
    #[serde(default)]
    newest: Option<Millis>,
    #[serde(default)]
    max_event_ts: HashMap<i32, Option<Millis>>,
    closed_until: Millis,
}

impl From<WindowsRepr> for Windows {
    fn from(r: WindowsRepr) -> Self {
        let legacy = r.max_event_ts.into_values().flatten().max();
        Windows {
            size: r.size,
            lateness: r.lateness,
            max_keys: r.max_keys,
            open: r.open,
            newest: r.newest.max(legacy),
            closed_until: r.closed_until,
            names: FastSet::default(),
        }
    }
}

/// [`Windows`] without its keys' accumulators: what the state store keeps in a partition's
/// head record (each accumulator goes with its key's record).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WindowsHead {
    size: Millis,
    lateness: Millis,
    max_keys: usize,
    /// Per open window, the lowest source offset per partition that contributed to it.
    open: BTreeMap<Millis, HashMap<i32, i64>>,
    newest: Option<Millis>,
    closed_until: Millis,
}

impl Windows {
    /// The windows without their accumulators ([`Windows::accs`] has those).
    pub fn head(&self) -> WindowsHead {
        WindowsHead {
            size: self.size,
            lateness: self.lateness,
            max_keys: self.max_keys,
            open: self
                .open
                .iter()
                .map(|(s, w)| (*s, w.min_offsets.clone()))
                .collect(),
            newest: self.newest,
            closed_until: self.closed_until,
        }
    }

    /// Windows from a [`Windows::head`], without accumulators until [`Windows::put_acc`].
    pub fn from_head(h: WindowsHead) -> Self {
        Windows {
            size: h.size,
            lateness: h.lateness,
            max_keys: h.max_keys,
            open: h
                .open
                .into_iter()
                .map(|(s, min_offsets)| {
                    let keys = FastMap::default();
                    (s, Open { keys, min_offsets })
                })
                .collect(),
            newest: h.newest,
            closed_until: h.closed_until,
            names: FastSet::default(),
        }
    }

    /// Every open window's accumulators: (window start, key, accumulator).
    pub fn accs(&self) -> impl Iterator<Item = (Millis, &Key, &Acc)> {
        self.open
            .iter()
            .flat_map(|(s, w)| w.keys.iter().map(move |(k, a)| (*s, k, a)))
    }

    /// Puts back a key's accumulator of the open window starting at `start` (a restore).
    pub fn put_acc(&mut self, start: Millis, key: Key, acc: Acc) {
        self.open.entry(start).or_default().keys.insert(key, acc);
    }
}

impl Windows {
    /// Whether `other` has the same window size and lateness.
    pub fn same_shape(&self, other: &Windows) -> bool {
        self.size == other.size && self.lateness == other.lateness
    }

    pub fn set_max_keys(&mut self, max_keys: usize) {
        self.max_keys = max_keys;
    }

    pub fn new(size: Millis, lateness: Millis, max_keys: usize) -> Self {
        assert!(size > 0, "window size must be positive");
        Self {
            size,
            lateness,
            max_keys,
            open: BTreeMap::new(),
            newest: None,
            closed_until: Millis::MIN,
            names: FastSet::default(),
        }
    }

    pub fn size(&self) -> Millis {
        self.size
    }

    /// Start of the window holding event time `ts`.
    pub fn start_of(&self, ts: Millis) -> Millis {
        ts.div_euclid(self.size) * self.size
    }

    /// Newest event time minus the allowed lateness; `None` before any input.
    pub fn watermark(&self) -> Option<Millis> {
        self.newest.map(|t| t.saturating_sub(self.lateness))
    }

    /// Newest event time recorded, if any.
    pub fn newest(&self) -> Option<Millis> {
        self.newest
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(a.clone());
        a
    }

    /// Key for (location, cdn), interning the names.
    pub fn key(&mut self, location: &str, cdn: &str) -> Key {
        Key {
            location: self.intern(location),
            cdn: self.intern(cdn),
        }
    }

    /// Folds one report at event time `ts` into its window with `update`.
    /// `source` is the (partition, offset) it was read from, for safe offset commits.
    pub fn record(
        &mut self,
        location: &str,
        cdn: &str,
        ts: Millis,
        source: Option<(i32, i64)>,
        update: impl FnOnce(&mut Acc),
    ) -> Recorded {
        self.record_keyed(location, cdn, None, ts, source, update)
    }

    /// [`Windows::record`] with the key, if the caller already interned it ([`Windows::key`]):
    /// the names are hashed once per report, not once per use.
    pub fn record_keyed(
        &mut self,
        location: &str,
        cdn: &str,
        key: Option<Key>,
        ts: Millis,
        source: Option<(i32, i64)>,
        update: impl FnOnce(&mut Acc),
    ) -> Recorded {
        let start = self.start_of(ts);
        let end = start + self.size;
        let wm = self.watermark();
        if end <= self.closed_until || wm.is_some_and(|wm| end <= wm) {
            return Recorded::Late;
        }
        if let Some(w) = self.open.get(&start)
            && w.keys.len() >= self.max_keys
            && !key.as_ref().map_or_else(
                || self.lookup(start, location, cdn),
                |k| w.keys.contains_key(k),
            )
        {
            return Recorded::KeyCapExceeded;
        }
        let key = key.unwrap_or_else(|| self.key(location, cdn));
        let window = self.open.entry(start).or_default();
        update(window.keys.entry(key).or_default());
        if let Some((p, o)) = source {
            let m = window.min_offsets.entry(p).or_insert(o);
            *m = (*m).min(o);
        }
        self.newest = Some(self.newest.map_or(ts, |n| n.max(ts)));
        Recorded::Accepted
    }

    /// Whether the key cap refuses a report for (location, cdn) at `ts`: its window is open,
    /// full, and does not hold the key. Cheap (nothing interned), so that a flood of new keys
    /// costs two hash lookups per refused report.
    pub fn refuses(&self, location: &str, cdn: &str, ts: Millis) -> bool {
        let start = self.start_of(ts);
        let end = start + self.size;
        if end <= self.closed_until || self.watermark().is_some_and(|wm| end <= wm) {
            return false; // late: `record` says so
        }
        self.open
            .get(&start)
            .is_some_and(|w| w.keys.len() >= self.max_keys)
            && !self.lookup(start, location, cdn)
    }

    fn lookup(&self, start: Millis, location: &str, cdn: &str) -> bool {
        match (self.names.get(location), self.names.get(cdn)) {
            (Some(l), Some(c)) => self.open[&start].keys.contains_key(&Key {
                location: l.clone(),
                cdn: c.clone(),
            }),
            _ => false,
        }
    }

    /// Closes, in order, every open window ending at or before `watermark`.
    pub fn close_until(&mut self, watermark: Millis) -> Vec<Closed> {
        let mut out = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            let start = *entry.key();
            if start + self.size > watermark {
                break;
            }
            let w = entry.remove();
            out.push(Closed {
                start,
                end: start + self.size,
                keys: w.keys,
                min_offsets: w.min_offsets,
            });
        }
        let boundary = self.start_of(watermark);
        if boundary > self.closed_until {
            // Windows that got no report at all still close (as empty ones): silence is news.
            // Only after the first close, and at most a couple of hours of them at once.
            if self.closed_until != Millis::MIN {
                let mut s = self.closed_until.max(boundary - 120 * self.size);
                while s + self.size <= boundary {
                    if !out.iter().any(|c| c.start == s) {
                        out.push(Closed {
                            start: s,
                            end: s + self.size,
                            keys: FastMap::default(),
                            min_offsets: HashMap::new(),
                        });
                    }
                    s += self.size;
                }
                out.sort_by_key(|c| c.start);
            }
            self.closed_until = boundary;
        }
        if !out.is_empty() {
            // Names no open window (nor anything downstream) references any more can go, so a
            // flood of distinct ids does not grow the interner past what the windows hold.
            self.names.retain(|n| Arc::strong_count(n) > 1);
        }
        out
    }

    /// Closes what the current watermark allows.
    /// Whether [`Windows::close_ready`] would close anything (cheap: for every report).
    pub fn has_ready(&self) -> bool {
        match self.watermark() {
            Some(wm) => {
                self.open
                    .first_key_value()
                    .is_some_and(|(s, _)| s + self.size <= wm)
                    || self.start_of(wm) > self.closed_until
            }
            None => false,
        }
    }

    pub fn close_ready(&mut self) -> Vec<Closed> {
        match self.watermark() {
            Some(wm) => self.close_until(wm),
            None => Vec::new(),
        }
    }

    /// Lowest offset per partition still needed by an open window.
    pub fn pending_offsets(&self) -> HashMap<i32, i64> {
        let mut out: HashMap<i32, i64> = HashMap::new();
        for w in self.open.values() {
            for (p, o) in &w.min_offsets {
                let m = out.entry(*p).or_insert(*o);
                *m = (*m).min(*o);
            }
        }
        out
    }

    /// Number of open windows and of keys over all of them.
    pub fn open_stats(&self) -> (usize, usize) {
        (
            self.open.len(),
            self.open.values().map(|w| w.keys.len()).sum(),
        )
    }

    /// End of the newest window closed so far (every window ending at or before it is closed).
    pub fn closed_until(&self) -> Millis {
        self.closed_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(w: &mut Windows, loc: &str, ts: Millis) -> Recorded {
        w.record(loc, "c", ts, None, |a| a.reports += 1)
    }

    #[test]
    fn assigns_reports_to_tumbling_windows_and_closes_by_watermark() {
        let mut w = Windows::new(60_000, 10_000, 100);
        assert_eq!(rec(&mut w, "L", 5_000), Recorded::Accepted);
        assert_eq!(rec(&mut w, "L", 59_999), Recorded::Accepted);
        assert_eq!(rec(&mut w, "L", 60_000), Recorded::Accepted);
        // Watermark 60s - 10s = 50s: window [0, 60s) stays open.
        assert!(w.close_ready().is_empty());
        assert_eq!(rec(&mut w, "L", 70_000), Recorded::Accepted);
        let closed = w.close_ready();
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].start, closed[0].end), (0, 60_000));
        let acc = closed[0].keys.values().next().unwrap();
        assert_eq!(acc.reports, 2);
    }

    #[test]
    fn out_of_order_within_lateness_counts_and_beyond_is_late() {
        let mut w = Windows::new(60_000, 30_000, 100);
        rec(&mut w, "L", 80_000);
        // 80s - 30s = watermark 50s: a report at 10s is out of order but its window is open.
        assert_eq!(rec(&mut w, "L", 10_000), Recorded::Accepted);
        rec(&mut w, "L", 95_000);
        let closed = w.close_ready();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].keys.values().next().unwrap().reports, 1);
        // The [0, 60s) window has closed: anything for it now is late.
        assert_eq!(rec(&mut w, "L", 59_000), Recorded::Late);
        assert_eq!(rec(&mut w, "L", 61_000), Recorded::Accepted);
    }

    #[test]
    fn report_behind_the_watermark_of_a_never_opened_window_is_late() {
        let mut w = Windows::new(60_000, 0, 100);
        rec(&mut w, "L", 600_000);
        assert_eq!(rec(&mut w, "L", 1_000), Recorded::Late);
    }

    #[test]
    fn windows_from_a_checkpoint_with_per_partition_times_keep_their_watermark() {
        // The layout checkpoints had while one `Windows` kept event times per partition.
        #[derive(serde::Serialize)]
        struct Old {
            size: Millis,
            lateness: Millis,
            max_keys: usize,
            open: BTreeMap<Millis, Open>,
            max_event_ts: HashMap<i32, Option<Millis>>,
            idle: std::collections::HashSet<i32>,
            closed_until: Millis,
        }
        let mut w = Windows::new(60_000, 10_000, 100);
        rec(&mut w, "L", 130_000);
        let old = Old {
            size: 60_000,
            lateness: 10_000,
            max_keys: 100,
            open: std::mem::take(&mut w.open),
            max_event_ts: HashMap::from([(3, Some(130_000))]),
            idle: std::collections::HashSet::new(),
            closed_until: 60_000,
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&old, &mut bytes).expect("encodes");
        let mut back: Windows = ciborium::from_reader(&bytes[..]).expect("decodes");
        assert_eq!(back.watermark(), Some(120_000));
        assert_eq!(rec(&mut back, "L", 100_000), Recorded::Late);
        assert_eq!(rec(&mut back, "L", 125_000), Recorded::Accepted);
        let closed = back.close_until(180_000);
        let w = closed
            .iter()
            .find(|c| c.start == 120_000)
            .expect("its window");
        assert_eq!(w.keys.values().map(|a| a.reports).sum::<u64>(), 2);
    }

    #[test]
    fn key_cap_bounds_keys_per_window_but_known_keys_still_count() {
        let mut w = Windows::new(60_000, 0, 2);
        assert_eq!(rec(&mut w, "A", 1), Recorded::Accepted);
        assert_eq!(rec(&mut w, "B", 2), Recorded::Accepted);
        assert_eq!(rec(&mut w, "C", 3), Recorded::KeyCapExceeded);
        assert_eq!(rec(&mut w, "A", 4), Recorded::Accepted);
        assert_eq!(w.open_stats(), (1, 2));
    }

    #[test]
    fn a_flood_of_a_million_distinct_locations_stays_bounded() {
        let max_keys = 1_000;
        let mut w = Windows::new(60_000, 0, max_keys);
        let (mut accepted, mut capped) = (0u64, 0u64);
        let mut closed_keys = 0;
        for i in 0..1_000_000u64 {
            // 50 windows of 20,000 reports, every one from a location never seen before.
            let ts = (i / 20_000) as i64 * 60_000 + (i % 20_000) as i64;
            match w.record(
                &format!("XX/flood/{i}"),
                "cdn-a",
                ts,
                Some((0, i as i64)),
                |_| {},
            ) {
                Recorded::Accepted => accepted += 1,
                Recorded::KeyCapExceeded => capped += 1,
                Recorded::Late => {}
            }
            for c in w.close_ready() {
                closed_keys = closed_keys.max(c.keys.len());
            }
            assert!(
                w.names.len() <= 2 * max_keys + 1,
                "interner: {}",
                w.names.len()
            );
            assert!(w.open_stats().1 <= max_keys);
        }
        assert_eq!(accepted, 50 * max_keys as u64);
        assert_eq!(capped, 1_000_000 - accepted);
        assert_eq!(closed_keys, max_keys);
    }

    #[test]
    fn pending_offsets_track_the_oldest_record_of_open_windows() {
        let mut w = Windows::new(60_000, 0, 100);
        w.record("L", "c", 1_000, Some((0, 10)), |_| {});
        w.record("L", "c", 61_000, Some((0, 11)), |_| {});
        w.record("L", "c", 62_000, Some((1, 5)), |_| {});
        assert_eq!(w.pending_offsets()[&0], 10);
        w.close_ready();
        let p = w.pending_offsets();
        assert_eq!((p[&0], p[&1]), (11, 5));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the arrival order: every report is counted exactly once (accepted, late or
        /// capped); accepted ones come out of exactly one closed window, whose range holds
        /// their time; windows close in order and never twice.
        #[test]
        fn every_report_is_accounted_for_once(
            events in proptest::collection::vec((0i64..600_000, 0usize..5), 1..400),
            lateness in 0i64..120_000,
        ) {
            let mut w = Windows::new(60_000, lateness, 3);
            let (mut accepted, mut late, mut capped) = (0u64, 0u64, 0u64);
            let mut closed = Vec::new();
            for (ts, k) in &events {
                match w.record(&format!("L{k}"), "c", *ts, None, |a| {
                    a.reports += 1;
                    // Two slots carry the times through for the range check: sum and max.
                    let s = a.metrics.of_mut(crate::metric::Metric::FAILURE_RATE);
                    s[0] += *ts as f64;
                    s[1] = s[1].max(*ts as f64);
                }) {
                    Recorded::Accepted => accepted += 1,
                    Recorded::Late => late += 1,
                    Recorded::KeyCapExceeded => capped += 1,
                }
                closed.extend(w.close_ready());
            }
            closed.extend(w.close_until(i64::MAX / 2));
            prop_assert_eq!(accepted + late + capped, events.len() as u64);
            let out: u64 = closed.iter().flat_map(|c| c.keys.values()).map(|a| a.reports).sum();
            prop_assert_eq!(out, accepted);
            for c in &closed {
                prop_assert!(c.keys.len() <= 3);
                for a in c.keys.values() {
                    let s = a.metrics.of(crate::metric::Metric::FAILURE_RATE);
                    prop_assert!(s[1] < c.end as f64);
                    prop_assert!(s[0] >= c.start as f64 * a.reports as f64);
                }
            }
            prop_assert!(closed.windows(2).all(|p| p[0].end <= p[1].start));
        }
    }
}
