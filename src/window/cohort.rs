//! Drill-down: counts per client cohort (network ASN, device class) inside one key's window,
//! so an alert can say "AS64512 accounts for 90 % of the excess failures".
//!
//! Kept only for keys under suspicion (bad in the window before), so the common case costs
//! one `None` per key; at most [`MAX_COHORTS`] values per dimension, the rest pooled.

use serde::{Deserialize, Serialize};

use crate::decode::Report;
use crate::metric::{MAX_METRICS, Metric, Normals};
use crate::table::Expected;

/// Distinct values tracked per dimension and key; further values are pooled as "other".
pub const MAX_COHORTS: usize = 32;
/// Longest device name kept (client-supplied text).
const MAX_NAME: usize = 48;
/// Smallest share of a key's excess a cohort must carry to be named.
pub const MIN_SHARE: f64 = 0.6;
/// ...while carrying at most this share of the key's traffic: a cohort that is most of the
/// traffic explains nothing.
pub const MAX_TRAFFIC_SHARE: f64 = 0.5;

/// One cohort's sums: its reports, and per metric the (amount, exposure) its excess is
/// computed from ([`crate::metric::Kind::cohort`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CohortAcc {
    pub reports: u32,
    pub parts: [(f64, f64); MAX_METRICS],
}

impl CohortAcc {
    fn merge(&mut self, o: &CohortAcc) {
        self.reports += o.reports;
        for (a, b) in self.parts.iter_mut().zip(&o.parts) {
            a.0 += b.0;
            a.1 += b.1;
        }
    }

    /// How much worse than `expected` this cohort made the key on `metric`, in the metric's
    /// own units (extra failures, extra stalled ms, extra worse-than-normal reports).
    fn excess(&self, metric: Metric, expected: f64) -> f64 {
        let (amount, exposure) = self.parts[metric.index()];
        metric.kind().excess(amount, exposure, expected)
    }
}

/// Per-cohort sums of one key in one window. `None` values pool unknown and overflow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cohorts {
    pub asn: Vec<(Option<u32>, CohortAcc)>,
    pub device: Vec<(Option<String>, CohortAcc)>,
}

fn slot<K: PartialEq>(list: &mut Vec<(Option<K>, CohortAcc)>, key: Option<K>) -> &mut CohortAcc {
    // One place is kept for the pool, so the list never grows past MAX_COHORTS.
    let key = if list.len() >= MAX_COHORTS - 1 && !list.iter().any(|(k, _)| *k == key) {
        None
    } else {
        key
    };
    let i = match list.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            list.push((key, CohortAcc::default()));
            list.len() - 1
        }
    };
    &mut list[i].1
}

impl Cohorts {
    pub fn add(&mut self, r: &Report, expected: Option<&Expected>, normals: &Normals) {
        let mut one = CohortAcc {
            reports: 1,
            ..CohortAcc::default()
        };
        for m in Metric::all() {
            if let Some(p) = m.kind().cohort(r, expected, normals[m.index()]) {
                one.parts[m.index()] = p;
            }
        }
        slot(&mut self.asn, r.asn).merge(&one);
        let device = r.device.as_deref().map(|d| {
            let mut end = d.len().min(MAX_NAME);
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            d[..end].to_string()
        });
        slot(&mut self.device, device).merge(&one);
    }

    pub fn merge(&mut self, o: &Cohorts) {
        for (k, a) in &o.asn {
            slot(&mut self.asn, *k).merge(a);
        }
        for (k, a) in &o.device {
            slot(&mut self.device, k.clone()).merge(a);
        }
    }

    /// The one cohort, if any, that carries most of the excess of a finding on `metric`
    /// (expecting `expected`) while being a minority of the traffic.
    pub fn explain(&self, metric: Metric, expected: f64) -> Option<Cohort> {
        let best = |dim: &'static str, list: Vec<(Option<String>, CohortAcc)>| {
            let total: f64 = list.iter().map(|(_, a)| a.excess(metric, expected)).sum();
            let reports: u32 = list.iter().map(|(_, a)| a.reports).sum();
            if total <= 0.0 || reports == 0 {
                return None;
            }
            list.into_iter()
                .filter_map(|(k, a)| {
                    let share = a.excess(metric, expected) / total;
                    let traffic = a.reports as f64 / reports as f64;
                    Some((k?, share, traffic))
                })
                .filter(|(_, share, traffic)| *share >= MIN_SHARE && *traffic <= MAX_TRAFFIC_SHARE)
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(value, share, traffic)| Cohort {
                    dimension: dim.to_string(),
                    value,
                    share: share.min(1.0),
                    traffic_share: traffic,
                })
        };
        let asn = best(
            "asn",
            self.asn
                .iter()
                .map(|(k, a)| (k.map(|k| k.to_string()), *a))
                .collect(),
        );
        let device = best("device", self.device.clone());
        match (asn, device) {
            (Some(a), Some(d)) => Some(if d.share > a.share { d } else { a }),
            (a, d) => a.or(d),
        }
    }
}

/// The cohort an alert names: `{"dimension": "asn", "value": "64512", "share": 0.93,
/// "traffic_share": 0.2}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cohort {
    pub dimension: String,
    pub value: String,
    /// Share of the key's excess (extra failures, stalls, worse reports) in this cohort.
    pub share: f64,
    /// Share of the key's reports from this cohort.
    pub traffic_share: f64,
}

impl Cohort {
    /// "AS64512" or "device tv".
    pub fn label(&self) -> String {
        match self.dimension.as_str() {
            "asn" => format!("AS{}", self.value),
            d => format!("{d} {}", self.value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(asn: u32, device: &str, failed: bool) -> Report<'static> {
        Report {
            asn: Some(asn),
            device: Some(device.to_string().into()),
            error: failed.then(|| "E".into()),
            ..Report::new("L", "c", 0)
        }
    }

    #[test]
    fn names_the_asn_that_carries_the_failures() {
        let mut c = Cohorts::default();
        let devices = ["tv", "mobile", "desktop"];
        for i in 0..1000u32 {
            let asn = 64_500 + i % 5;
            // AS64502 fails 30 % of the time, everyone else 1 %.
            let failed = if asn == 64_502 {
                i % 10 < 3
            } else {
                i % 100 == 0
            };
            c.add(
                &report(asn, devices[i as usize % 3], failed),
                None,
                &Normals::default(),
            );
        }
        let got = c.explain(Metric::FAILURE_RATE, 0.01).expect("a cohort");
        assert_eq!(
            (got.dimension.as_str(), got.value.as_str()),
            ("asn", "64502")
        );
        assert!(
            got.share > 0.9 && (got.traffic_share - 0.2).abs() < 0.01,
            "{got:?}"
        );
        assert_eq!(got.label(), "AS64502");
    }

    #[test]
    fn names_nobody_when_every_cohort_is_bad() {
        let mut c = Cohorts::default();
        for i in 0..1000u32 {
            c.add(
                &report(64_500 + i % 5, "tv", i % 10 < 3),
                None,
                &Normals::default(),
            );
        }
        assert_eq!(c.explain(Metric::FAILURE_RATE, 0.01), None);
    }

    #[test]
    fn distinct_values_are_bounded() {
        let mut c = Cohorts::default();
        for i in 0..10_000u32 {
            c.add(
                &report(i, &format!("d{i}"), false),
                None,
                &Normals::default(),
            );
        }
        assert_eq!(c.asn.len(), MAX_COHORTS);
        assert_eq!(c.device.len(), MAX_COHORTS);
        let n: u32 = c.asn.iter().map(|(_, a)| a.reports).sum();
        assert_eq!(n, 10_000);
    }
}
