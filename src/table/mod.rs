//! The CDN benchmark table, versioned in event time.
//!
//! Each (location, cdn) keeps its rows ordered by `ts`; a row is valid from its `ts` until the
//! next row of the key. A tombstone (`None`) ends validity. [`BenchmarkTable::as_of`] answers
//! "which benchmark was valid when this report happened", so a report joins the benchmark of its
//! own event time, not merely the newest. Old versions are pruned, keeping the newest one at or
//! before the pruning horizon so that lookups after it still answer correctly.

pub mod store;

use crate::hash::FastMap;

use crate::decode::Benchmark;
use crate::time::Millis;

/// Expected values for one (location, cdn), as published by the CDN's probes.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Expected {
    pub throughput_kbps: Option<f64>,
    pub rebuffer_ratio: Option<f64>,
    pub startup_ms: Option<f64>,
    pub error_rate: Option<f64>,
}

impl From<&Benchmark> for Expected {
    fn from(b: &Benchmark) -> Self {
        Expected {
            throughput_kbps: b.throughput_kbps,
            rebuffer_ratio: b.rebuffer_ratio,
            startup_ms: b.startup_ms,
            error_rate: b.error_rate,
        }
    }
}

/// Versions of one key, ordered by valid-from time. `None` is a deletion.
type Versions = Vec<(Millis, Option<Expected>)>;

/// Most versions kept per key: a probe publishing every second keeps the last 17 minutes of
/// them (older ones go first; the pruning horizon usually removes them long before).
pub const MAX_VERSIONS_PER_KEY: usize = 1_024;

/// The keys kept when none is given (`window.max_benchmark_keys`).
pub const DEFAULT_MAX_KEYS: usize = 400_000;

#[derive(Debug, Default)]
struct Row {
    versions: Versions,
    /// The newest event time this key was written or joined at: the least recently seen
    /// keys are evicted first when the table is full.
    seen: Millis,
}

/// A version removed from the table (pruned, evicted or beyond the per-key cap).
pub type Removed = (String, String, Millis);

#[derive(Debug)]
pub struct BenchmarkTable {
    rows: FastMap<String, FastMap<String, Row>>,
    versions: usize,
    keys: usize,
    max_keys: usize,
    evicted: u64,
    /// Versions removed and not yet taken ([`BenchmarkTable::take_removed`]), for the cache
    /// behind the table to delete as well; `None` where nothing keeps a copy.
    removed: Option<Vec<Removed>>,
}

impl Default for BenchmarkTable {
    fn default() -> Self {
        Self {
            rows: FastMap::default(),
            versions: 0,
            keys: 0,
            max_keys: DEFAULT_MAX_KEYS,
            evicted: 0,
            removed: None,
        }
    }
}

impl BenchmarkTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// A table whose removals are kept for [`BenchmarkTable::take_removed`] (a copy of it is
    /// stored elsewhere: the RocksDB cache).
    pub fn tracked() -> Self {
        Self {
            removed: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// Holds at most `max_keys` (location, cdn) keys, evicting the least recently seen ones
    /// (now, if it holds more).
    pub fn set_max_keys(&mut self, max_keys: usize) {
        self.max_keys = max_keys.max(1);
        if self.keys > self.max_keys {
            self.evict();
        }
    }

    /// Inserts a version valid from `ts` (a replay of an existing version overwrites it).
    pub fn upsert(&mut self, location: &str, cdn: &str, ts: Millis, row: Option<Expected>) {
        let cdns = match self.rows.get_mut(location) {
            Some(c) => c,
            None => self.rows.entry(location.to_owned()).or_default(),
        };
        let key = match cdns.get_mut(cdn) {
            Some(k) => k,
            None => {
                self.keys += 1;
                cdns.entry(cdn.to_owned()).or_default()
            }
        };
        key.seen = key.seen.max(ts);
        let versions = &mut key.versions;
        match versions.binary_search_by_key(&ts, |(t, _)| *t) {
            Ok(i) => versions[i].1 = row,
            Err(i) => {
                versions.insert(i, (ts, row));
                self.versions += 1;
                if versions.len() > MAX_VERSIONS_PER_KEY {
                    let (t, _) = versions.remove(0);
                    self.versions -= 1;
                    if let Some(r) = &mut self.removed {
                        r.push((location.to_owned(), cdn.to_owned(), t));
                    }
                }
            }
        }
        if self.keys > self.max_keys {
            self.evict();
        }
    }

    /// Evicts the least recently seen keys, down to nine tenths of the cap (so that a flood
    /// of new keys pays for one selection per tenth of the cap, not one per key).
    fn evict(&mut self) {
        let keep = self.max_keys - self.max_keys / 10;
        let excess = self.keys.saturating_sub(keep);
        if excess == 0 {
            return;
        }
        let seen = self
            .rows
            .iter()
            .flat_map(|(l, c)| {
                c.iter()
                    .map(move |(cdn, r)| (r.seen, (l.as_str(), cdn.as_str())))
            })
            .collect();
        let gone: Vec<(String, String)> = crate::time::least_recent(seen, excess)
            .into_iter()
            .map(|(l, c)| (l.to_owned(), c.to_owned()))
            .collect();
        for (loc, cdn) in gone {
            let Some(cdns) = self.rows.get_mut(&loc) else {
                continue;
            };
            let Some(r) = cdns.remove(&cdn) else {
                continue;
            };
            if cdns.is_empty() {
                self.rows.remove(&loc);
            }
            self.keys -= 1;
            self.versions -= r.versions.len();
            self.evicted += 1;
            if let Some(out) = &mut self.removed {
                out.extend(
                    r.versions
                        .iter()
                        .map(|(t, _)| (loc.clone(), cdn.clone(), *t)),
                );
            }
        }
    }

    /// The benchmark valid at event time `ts`, if any.
    pub fn as_of(&self, location: &str, cdn: &str, ts: Millis) -> Option<&Expected> {
        let versions = &self.rows.get(location)?.get(cdn)?.versions;
        let i = versions.partition_point(|(t, _)| *t <= ts);
        if i == 0 {
            return None;
        }
        versions[i - 1].1.as_ref()
    }

    /// Like [`BenchmarkTable::as_of`], and the key counts as seen at `ts` (a report joined it).
    pub fn join(&mut self, location: &str, cdn: &str, ts: Millis) -> Option<&Expected> {
        let row = self.rows.get_mut(location)?.get_mut(cdn)?;
        row.seen = row.seen.max(ts);
        let i = row.versions.partition_point(|(t, _)| *t <= ts);
        if i == 0 {
            return None;
        }
        row.versions[i - 1].1.as_ref()
    }

    /// Drops versions superseded before `horizon`, keeping for each key the newest version at
    /// or before it. Returns how many versions were removed.
    pub fn prune_before(&mut self, horizon: Millis) -> usize {
        let mut removed = 0;
        for (loc, cdns) in &mut self.rows {
            for (cdn, row) in cdns.iter_mut() {
                let versions = &mut row.versions;
                let i = versions.partition_point(|(t, _)| *t <= horizon);
                if i > 1 {
                    let old = versions.drain(..i - 1);
                    removed += i - 1;
                    match &mut self.removed {
                        Some(out) => out.extend(old.map(|(t, _)| (loc.clone(), cdn.clone(), t))),
                        None => drop(old),
                    }
                }
            }
        }
        self.versions -= removed;
        removed
    }

    /// The versions removed since the last call, for the cache to delete (empty unless the
    /// table is [`BenchmarkTable::tracked`]).
    pub fn take_removed(&mut self) -> Vec<Removed> {
        self.removed
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Number of stored versions over all keys.
    pub fn len(&self) -> usize {
        self.versions
    }

    /// Number of (location, cdn) keys.
    pub fn keys(&self) -> usize {
        self.keys
    }

    /// Keys evicted so far to stay under the cap.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn is_empty(&self) -> bool {
        self.versions == 0
    }

    /// Every version, for persistence and inspection.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, Millis, Option<&Expected>)> {
        self.rows.iter().flat_map(|(loc, cdns)| {
            cdns.iter().flat_map(move |(cdn, r)| {
                r.versions
                    .iter()
                    .map(move |(t, e)| (loc.as_str(), cdn.as_str(), *t, e.as_ref()))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(tp: f64) -> Option<Expected> {
        Some(Expected {
            throughput_kbps: Some(tp),
            ..Default::default()
        })
    }

    #[test]
    fn as_of_returns_the_version_valid_at_event_time() {
        let mut t = BenchmarkTable::new();
        // Inserted out of order on purpose: the table orders by valid-from time.
        t.upsert("L", "c", 2_000, exp(2.0));
        t.upsert("L", "c", 1_000, exp(1.0));
        t.upsert("L", "c", 3_000, None);
        t.upsert("L", "c", 4_000, exp(4.0));
        let tp = |ts| t.as_of("L", "c", ts).and_then(|e| e.throughput_kbps);
        assert_eq!(tp(999), None, "before the first version");
        assert_eq!(tp(1_000), Some(1.0));
        assert_eq!(tp(1_999), Some(1.0));
        assert_eq!(tp(2_500), Some(2.0));
        assert_eq!(tp(3_500), None, "tombstone ends validity");
        assert_eq!(tp(9_999), Some(4.0));
        assert_eq!(t.as_of("L", "other", 2_500), None);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn pruning_keeps_the_version_valid_at_the_horizon() {
        let mut t = BenchmarkTable::new();
        for ts in [1_000, 2_000, 3_000] {
            t.upsert("L", "c", ts, exp(ts as f64));
        }
        assert_eq!(t.prune_before(2_500), 1);
        assert_eq!(
            t.as_of("L", "c", 2_600).unwrap().throughput_kbps,
            Some(2_000.0)
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn replayed_version_overwrites_instead_of_duplicating() {
        let mut t = BenchmarkTable::new();
        t.upsert("L", "c", 1_000, exp(1.0));
        t.upsert("L", "c", 1_000, exp(5.0));
        assert_eq!(t.len(), 1);
        assert_eq!(t.as_of("L", "c", 1_000).unwrap().throughput_kbps, Some(5.0));
    }

    #[test]
    fn a_flood_of_keys_evicts_the_least_recently_seen_and_keeps_what_reports_join() {
        let mut t = BenchmarkTable::tracked();
        t.set_max_keys(100);
        t.upsert("IN/Mumbai", "c", 1_000, exp(1.0));
        // Reports join it at later event times: it is seen then.
        for ts in [50_000, 90_000] {
            assert!(t.join("IN/Mumbai", "c", ts).is_some());
        }
        for i in 0..10_000 {
            t.upsert(&format!("FL/{i}"), "c", 10_000 + i, exp(2.0));
            assert!(t.keys() <= 100, "keys {} over the cap", t.keys());
        }
        assert!(
            t.as_of("IN/Mumbai", "c", 95_000).is_some(),
            "joined key kept"
        );
        assert!(
            t.as_of("FL/0", "c", 95_000).is_none(),
            "oldest flood key gone"
        );
        assert!(
            t.as_of("FL/9999", "c", 95_000).is_some(),
            "newest flood key kept"
        );
        assert_eq!(t.evicted() as usize + t.keys(), 10_001);
        assert_eq!(t.len(), t.keys(), "one version per key");
        // Every evicted version is handed over for the cache to delete, once.
        let removed = t.take_removed();
        assert_eq!(removed.len(), t.evicted() as usize);
        assert!(
            removed
                .iter()
                .any(|(l, _, ts)| l == "FL/0" && *ts == 10_000)
        );
        assert!(t.take_removed().is_empty());
    }

    #[test]
    fn versions_per_key_are_capped_and_pruned_ones_are_handed_over() {
        let mut t = BenchmarkTable::tracked();
        let n = MAX_VERSIONS_PER_KEY as i64 + 10;
        for ts in 0..n {
            t.upsert("L", "c", ts * 1_000, exp(ts as f64));
        }
        assert_eq!(t.len(), MAX_VERSIONS_PER_KEY);
        assert_eq!(t.take_removed().len(), 10, "the oldest went first");
        assert_eq!(
            t.as_of("L", "c", (n - 1) * 1_000).unwrap().throughput_kbps,
            Some((n - 1) as f64)
        );
        let pruned = t.prune_before((n - 5) * 1_000);
        assert_eq!(t.take_removed().len(), pruned);
        assert_eq!(t.len(), 5);
        // An untracked table keeps nothing for a cache it does not have.
        let mut u = BenchmarkTable::new();
        u.set_max_keys(1);
        u.upsert("A", "c", 1, exp(1.0));
        u.upsert("B", "c", 2, exp(1.0));
        assert_eq!(u.keys(), 1);
        assert!(u.take_removed().is_empty());
    }
}
