//! The viewer-quality view of a closed window: totals over every key, the worst keys, and
//! every CDN's and country's keys together (bounded), for the live page and the gauges.

use std::collections::BTreeMap;

use crate::metric::Metric;
use crate::time::Millis;
use crate::window::{Acc, Key};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyQuality {
    pub location: String,
    pub cdn: String,
    pub reports: u64,
    /// Every viewer-quality metric by name (`rebuffer_ratio`, `throughput_kbps`, ...: rates,
    /// geometric means) and the benchmark's as `expected_<name>`; `None` without data.
    #[serde(flatten)]
    pub values: BTreeMap<String, Option<f64>>,
    /// How much worse than expected its worst metric is (0.5 = 50 % worse); 0 when unknown.
    pub badness: f64,
}

impl KeyQuality {
    /// The key's value of `m` and the benchmark's, if it has them.
    pub fn of(&self, m: Metric) -> (Option<f64>, Option<f64>) {
        let get = |name: &str| self.values.get(name).copied().flatten();
        (get(m.as_str()), get(&format!("expected_{m}")))
    }
}

/// Viewer quality of one closed window: totals over all keys and the `top` worst keys.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Quality {
    #[serde(with = "crate::time")]
    pub window_start: Millis,
    pub keys: usize,
    pub reports: u64,
    /// Every viewer-quality metric over all keys, by name.
    #[serde(flatten)]
    pub totals: BTreeMap<String, f64>,
    pub worst: Vec<KeyQuality>,
    /// Every CDN's keys together (at most [`MAX_GROUPS`], the rest as `other`).
    pub cdns: Vec<GroupQuality>,
    /// Every country's keys together: a location's first `/`-separated part (`IN` of
    /// `IN/MH/Mumbai`), at most [`MAX_GROUPS`].
    pub countries: Vec<GroupQuality>,
}

/// Most CDNs, and most countries, with a quality of their own: the cap on those labels;
/// the rest are merged as [`OTHER`].
pub const MAX_GROUPS: usize = 256;
/// The name of the groups past [`MAX_GROUPS`].
pub const OTHER: &str = "other";

/// A CDN's, or a country's, keys of one window together.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupQuality {
    pub name: String,
    pub reports: u64,
    /// Each metric's (observed, expected), where known.
    pub values: BTreeMap<String, (Option<f64>, Option<f64>)>,
}

/// A location's country: its first `/`-separated part, or itself without one.
pub fn country_of(location: &str) -> &str {
    crate::incident::prefix_of(location).unwrap_or(location)
}

/// Merges `acc` (its sums, not its cohorts) into `name`'s group, or [`OTHER`]'s once there
/// are [`MAX_GROUPS`].
pub(super) fn group_into(groups: &mut BTreeMap<String, Acc>, name: &str, acc: &Acc) {
    let slot = match groups.get_mut(name) {
        Some(slot) => slot,
        None => {
            let key = if groups.len() >= MAX_GROUPS - 1 {
                OTHER
            } else {
                name
            };
            groups.entry(key.to_string()).or_default()
        }
    };
    slot.merge_sums(acc);
}

/// The quality of each group.
pub(super) fn groups_quality(groups: &BTreeMap<String, Acc>) -> Vec<GroupQuality> {
    groups
        .iter()
        .map(|(name, acc)| GroupQuality {
            name: name.clone(),
            reports: acc.reports,
            values: Metric::all()
                .filter_map(|m| Some((m.as_str().to_string(), acc.shown(m)?)))
                .collect(),
        })
        .collect()
}

/// Most keys kept in [`Quality::worst`]: the cap on per-key metric labels.
pub const WORST_KEYS: usize = 20;

pub(super) fn key_quality(key: &Key, acc: &Acc) -> KeyQuality {
    let mut values = BTreeMap::new();
    let mut badness: f64 = 0.0;
    for m in Metric::all() {
        let Some((observed, expected)) = acc.shown(m) else {
            continue;
        };
        if let (Some(o), Some(e)) = (observed, expected)
            && o > 0.0
            && e > 0.0
        {
            let worse = if m.kind().higher_is_worse() {
                o / e - 1.0
            } else {
                e / o - 1.0
            };
            badness = badness.max(worse);
        }
        values.insert(m.as_str().to_string(), observed);
        values.insert(format!("expected_{m}"), expected);
    }
    KeyQuality {
        location: key.location.to_string(),
        cdn: key.cdn.to_string(),
        reports: acc.reports,
        values,
        badness,
    }
}

/// Every viewer-quality metric over `acc` (all keys merged), where it has a value.
pub(super) fn totals(acc: &Acc) -> BTreeMap<String, f64> {
    Metric::all()
        .filter_map(|m| Some((m.as_str().to_string(), acc.shown(m)?.0?)))
        .collect()
}

/// Worst first, at most [`WORST_KEYS`] (ties broken by name, so the order does not depend on
/// which partition was merged first).
pub(super) fn sort_worst(worst: &mut Vec<KeyQuality>) {
    worst.sort_by(|a, b| {
        b.badness
            .total_cmp(&a.badness)
            .then(b.reports.cmp(&a.reports))
            .then_with(|| (&a.location, &a.cdn).cmp(&(&b.location, &b.cdn)))
    });
    worst.truncate(WORST_KEYS);
}
