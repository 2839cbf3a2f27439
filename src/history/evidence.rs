//! Each incident's windows as tested ([`Point`]s), kept beside its state changes for the
//! evidence page (`/incidents/<id>`, `/api/incidents/<id>`): in the column family
//! [`POINTS`] by incident and window end, and indexed by window end in [`BY_TIME`] so that
//! the retention and the size cap drop the oldest first. Counted in the history's bytes.

use std::sync::atomic::Ordering;

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};

use super::{History, HistoryError};
use crate::incident::evidence::{Evidence, Point};
use crate::time::Millis;

/// Column family of the points: key = incident id, window end (sign-flipped, big-endian).
pub const POINTS: &str = "evidence";
/// Column family of the index: key = window end, incident id; value = the point's size.
pub const BY_TIME: &str = "evidence_by_time";

/// Most points one incident's page shows: its newest.
pub const MAX_POINTS: usize = 1_440;

fn time(at: Millis) -> [u8; 8] {
    ((at as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_of(k: &[u8]) -> Option<Millis> {
    let t: [u8; 8] = k.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(t) ^ (1 << 63)) as Millis)
}

fn point_key(id: &str, at: Millis) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 8);
    k.extend_from_slice(id.as_bytes());
    k.extend_from_slice(&time(at));
    k
}

/// Bytes the evidence holds in `db` (both column families), for the history's total.
pub(super) fn bytes_in(db: &DB) -> Result<u64, rocksdb::Error> {
    let mut bytes = 0u64;
    for name in [POINTS, BY_TIME] {
        let Some(cf) = db.cf_handle(name) else {
            continue;
        };
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            bytes += (k.len() + v.len()) as u64;
        }
    }
    Ok(bytes)
}

impl History {
    fn families(&self) -> Result<(&rocksdb::ColumnFamily, &rocksdb::ColumnFamily), HistoryError> {
        let get = |name: &str| {
            self.db
                .cf_handle(name)
                .ok_or_else(|| HistoryError::Query(format!("column family {name} missing")))
        };
        Ok((get(POINTS)?, get(BY_TIME)?))
    }

    /// Keeps the tested windows of incidents. A window kept already (a replay after a
    /// restart decides it again) is not written twice.
    pub fn record_evidence(&self, evidence: &[Evidence]) -> Result<(), HistoryError> {
        if evidence.is_empty() {
            return Ok(());
        }
        let (points, by_time) = self.families()?;
        let mut batch = WriteBatch::default();
        let (mut added, mut newest) = (0u64, Millis::MIN);
        for e in evidence {
            let k = point_key(&e.id, e.point.window_end);
            if self.db.get_pinned_cf(points, &k).ok().flatten().is_some() {
                continue;
            }
            let v = serde_json::to_vec(&e.point).map_err(|e| HistoryError::Query(e.to_string()))?;
            let mut t = time(e.point.window_end).to_vec();
            t.extend_from_slice(e.id.as_bytes());
            let size = ((k.len() + v.len()) as u32).to_be_bytes();
            added += (k.len() + v.len() + t.len() + size.len()) as u64;
            newest = newest.max(e.point.window_end);
            batch.put_cf(points, &k, v);
            batch.put_cf(by_time, t, size);
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.db.write(batch).map_err(|e| self.err(e))?;
        self.bytes.fetch_add(added, Ordering::AcqRel);
        self.keep_within(newest)
    }

    /// Deletes from the oldest point while `drop(time, bytes kept)` says so.
    pub(super) fn evict_evidence(
        &self,
        drop: impl Fn(Millis, u64) -> bool,
    ) -> Result<(), HistoryError> {
        let (points, by_time) = self.families()?;
        let mut batch = WriteBatch::default();
        let mut bytes = self.bytes();
        let mut n = 0;
        for item in self.db.iterator_cf(by_time, IteratorMode::Start) {
            let (t, size) = item.map_err(|e| self.err(e))?;
            let Some(at) = time_of(&t) else { continue };
            if !drop(at, bytes) {
                break;
            }
            let id = std::str::from_utf8(&t[8..]).unwrap_or_default();
            let point_bytes = size
                .get(..4)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map_or(0, u32::from_be_bytes);
            bytes = bytes.saturating_sub(u64::from(point_bytes) + (t.len() + size.len()) as u64);
            batch.delete_cf(points, point_key(id, at));
            batch.delete_cf(by_time, &t);
            n += 1;
        }
        if n > 0 {
            self.db.write(batch).map_err(|e| self.err(e))?;
            self.bytes.store(bytes, Ordering::Release);
            self.evicted.fetch_add(n, Ordering::AcqRel);
        }
        Ok(())
    }

    /// The incident's windows kept, oldest first: its newest [`MAX_POINTS`].
    pub fn evidence(&self, id: &str) -> Result<Vec<Point>, HistoryError> {
        let (points, _) = self.families()?;
        let last = point_key(id, Millis::MAX);
        let mut out = Vec::new();
        let mode = IteratorMode::From(&last, Direction::Reverse);
        for item in self.db.iterator_cf(points, mode) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(id.as_bytes()) || k.len() != id.len() + 8 {
                break;
            }
            if let Ok(p) = serde_json::from_slice::<Point>(&v) {
                out.push(p);
            }
            if out.len() == MAX_POINTS {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::detect::{Metric, Severity};
    use crate::history::HistoryConfig;

    fn point(end: Millis, observed: f64) -> Point {
        Point {
            window_start: end - 60_000,
            window_end: end,
            metric: Metric::FAILURE_RATE,
            observed,
            expected: 0.01,
            samples: 100,
            p_value: 1e-6,
            bad: observed > 0.05,
            severity: Severity::Critical,
            cohort: None,
            exposure: None,
        }
    }

    fn evidence(id: &str, end: Millis) -> Evidence {
        Evidence {
            id: id.into(),
            point: point(end, 0.2),
        }
    }

    #[test]
    fn points_are_kept_per_incident_once_and_dropped_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = HistoryConfig {
            retention: Duration::from_secs(3600),
            max_bytes: 1 << 20,
        };
        let h = History::open(dir.path(), &cfg).expect("open");
        const M: Millis = 60_000;
        let a: Vec<Evidence> = (1..=30)
            .map(|i| evidence("aaaaaaaaaaaaaaaa", i * M))
            .collect();
        let b: Vec<Evidence> = (1..=30)
            .map(|i| evidence("aaaaaaaaaaaaaaab", i * M))
            .collect();
        h.record_evidence(&a).expect("record");
        h.record_evidence(&b).expect("record");
        let before = h.bytes();
        // A replay decides the same windows again: nothing is written twice.
        h.record_evidence(&a[10..]).expect("record again");
        assert_eq!(h.bytes(), before);
        let got = h.evidence("aaaaaaaaaaaaaaaa").expect("evidence");
        assert_eq!(got.len(), 30, "its own points only, not its neighbour's");
        assert!(got.windows(2).all(|w| w[0].window_end < w[1].window_end));
        assert!(h.evidence("aaaaaaaaaaaaaaa").expect("prefix").is_empty());
        drop(h);
        let h = History::open(dir.path(), &cfg).expect("reopen");
        assert_eq!(h.bytes(), before, "its bytes are counted again on open");
        // An hour later: the retention drops the first 30 minutes of both.
        h.record_evidence(&[evidence("aaaaaaaaaaaaaaac", 90 * M)])
            .expect("record");
        let left = h.evidence("aaaaaaaaaaaaaaab").expect("evidence");
        assert!(left.iter().all(|p| p.window_end >= 30 * M), "{left:?}");
        assert_eq!(h.take_evicted(), 58);
        assert!(h.bytes() < before);
        // Past the size cap the oldest go first, whatever the incident.
        let many: Vec<Evidence> = (0..8_000)
            .map(|i| evidence(&format!("{:016x}", i % 50), 90 * M + i / 50))
            .collect();
        h.record_evidence(&many).expect("record");
        assert!(h.bytes() <= cfg.max_bytes, "{} bytes", h.bytes());
        assert!(h.take_evicted() > 0);
        assert!(h.evidence("aaaaaaaaaaaaaaab").expect("evidence").is_empty());
    }
}
