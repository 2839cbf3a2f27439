//! The CDN benchmark table, versioned in event time.
//!
//! Each (location, cdn) keeps its rows ordered by `ts`; a row is valid from its `ts` until the
//! next row of the key. A tombstone (`None`) ends validity. [`BenchmarkTable::as_of`] answers
//! "which benchmark was valid when this report happened", so a report joins the benchmark of its
//! own event time, not merely the newest. Old versions are pruned, keeping the newest one at or
//! before the pruning horizon so that lookups after it still answer correctly.

pub mod store;

use std::collections::HashMap;

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

#[derive(Debug, Default)]
pub struct BenchmarkTable {
    rows: HashMap<String, HashMap<String, Versions>>,
    versions: usize,
}

impl BenchmarkTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts a version valid from `ts` (a replay of an existing version overwrites it).
    pub fn upsert(&mut self, location: &str, cdn: &str, ts: Millis, row: Option<Expected>) {
        let versions = self
            .rows
            .entry(location.to_owned())
            .or_default()
            .entry(cdn.to_owned())
            .or_default();
        match versions.binary_search_by_key(&ts, |(t, _)| *t) {
            Ok(i) => versions[i].1 = row,
            Err(i) => {
                versions.insert(i, (ts, row));
                self.versions += 1;
            }
        }
    }

    /// The benchmark valid at event time `ts`, if any.
    pub fn as_of(&self, location: &str, cdn: &str, ts: Millis) -> Option<&Expected> {
        let versions = self.rows.get(location)?.get(cdn)?;
        let i = versions.partition_point(|(t, _)| *t <= ts);
        if i == 0 {
            return None;
        }
        versions[i - 1].1.as_ref()
    }

    /// Drops versions superseded before `horizon`, keeping for each key the newest version at
    /// or before it. Returns how many versions were removed.
    pub fn prune_before(&mut self, horizon: Millis) -> usize {
        let mut removed = 0;
        for cdns in self.rows.values_mut() {
            for versions in cdns.values_mut() {
                let i = versions.partition_point(|(t, _)| *t <= horizon);
                if i > 1 {
                    versions.drain(..i - 1);
                    removed += i - 1;
                }
            }
        }
        self.versions -= removed;
        removed
    }

    /// Number of stored versions over all keys.
    pub fn len(&self) -> usize {
        self.versions
    }

    pub fn is_empty(&self) -> bool {
        self.versions == 0
    }

    /// Every version, for persistence and inspection.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, Millis, Option<&Expected>)> {
        self.rows.iter().flat_map(|(loc, cdns)| {
            cdns.iter().flat_map(move |(cdn, vs)| {
                vs.iter()
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
}
