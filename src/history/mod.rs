//! Incident history: every state change this instance announced, kept in RocksDB
//! (`<state.dir>/history`) for `history.retention` of event time and at most
//! `history.max_bytes`, oldest out first, and queried by status, scope, incident and time,
//! newest first, a page at a time (`/api/incidents?...`, `qos-sentinel incidents`).
//! It survives restarts. In a group each instance keeps the changes of the partitions it
//! owned when they happened. Beside the changes, each incident's windows ([`evidence`]).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::field::{Invalid, human};
use crate::incident::{Alert, Status};
use crate::time::Millis;

pub mod evidence;

/// `[history]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// How long a state change is kept, in event time behind the newest one.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Most bytes of state changes kept; past it the oldest go first.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

const fn default_max_bytes() -> u64 {
    64 << 20
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            retention: default_retention(),
            max_bytes: default_max_bytes(),
        }
    }
}

impl HistoryConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.retention < Duration::from_secs(3600) {
            return Err(Invalid::new(
                "retention",
                format!("({}) must be at least 1h", human(self.retention)),
            ));
        }
        if self.max_bytes < 1 << 20 {
            return Err(Invalid::new(
                "max_bytes",
                format!("({}) must be at least 1048576 (1 MiB)", self.max_bytes),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history RocksDB at {path}: {error}")]
    Db { path: String, error: rocksdb::Error },
    #[error("{0}")]
    Query(String),
}

/// What to look for; every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub status: Option<Status>,
    /// A pattern on the scope as in the alert's key (`cdn=cdn-a`, `location=IN/*`), `*` and
    /// `?` wildcards.
    pub scope: Option<String>,
    pub id: Option<String>,
    /// Changes of the incidents under this one (their `parent_id`).
    pub parent: Option<String>,
    /// Event time of the change (its window's end), from and until (inclusive).
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// Most changes in the page (1 to [`MAX_PAGE`]).
    pub limit: usize,
    /// Where the previous page ended ([`Page::next`]).
    pub cursor: Option<String>,
}

/// Most changes in one page.
pub const MAX_PAGE: usize = 1_000;

/// One page of changes, newest first, and where the next page starts.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page {
    pub changes: Vec<Alert>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

pub struct History {
    db: DB,
    path: String,
    cfg: HistoryConfig,
    /// Bytes of the changes kept (keys and values).
    bytes: AtomicU64,
    /// Changes dropped by the retention or the size cap since start.
    pub evicted: AtomicU64,
}

use crate::glob::scope_matches;

/// A change's key: its event time (sign-flipped, big-endian, so keys sort by time) and a
/// hash of the change (FNV-1a of `id:status`), so that the same change kept twice (announced
/// here and read back from the alerts topic) is one. Written before 2026-12-07 with a
/// sequence number there: read the same way.
fn key(at: Millis, tag: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&((at as u64) ^ (1 << 63)).to_be_bytes());
    k[8..].copy_from_slice(&tag.to_be_bytes());
    k
}

fn change_tag(a: &Alert) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in crate::notify::change_key(a).bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn time_of(k: &[u8]) -> Option<Millis> {
    let t: [u8; 8] = k.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(t) ^ (1 << 63)) as Millis)
}

impl History {
    pub fn open(dir: &Path, cfg: &HistoryConfig) -> Result<Self, HistoryError> {
        let path = dir.join("history");
        let p = path.display().to_string();
        let err = |error| HistoryError::Db {
            path: p.clone(),
            error,
        };
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let families = ["default", evidence::POINTS, evidence::BY_TIME];
        let db = DB::open_cf(&opts, &path, families).map_err(err)?;
        let mut bytes = 0u64;
        for item in db.iterator(IteratorMode::Start) {
            let (k, v) = item.map_err(err)?;
            bytes += (k.len() + v.len()) as u64;
        }
        bytes += evidence::bytes_in(&db).map_err(err)?;
        Ok(History {
            db,
            path: p,
            cfg: cfg.clone(),
            bytes: AtomicU64::new(bytes),
            evicted: AtomicU64::new(0),
        })
    }

    fn err(&self, error: rocksdb::Error) -> HistoryError {
        HistoryError::Db {
            path: self.path.clone(),
            error,
        }
    }

    /// Changes evicted since the last call.
    pub fn take_evicted(&self) -> u64 {
        self.evicted.swap(0, Ordering::AcqRel)
    }

    /// Bytes of the changes kept.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Keeps `alerts` (at their window's end), then drops what is past the retention or the
    /// size cap, oldest first.
    pub fn record(&self, alerts: &[Alert]) -> Result<(), HistoryError> {
        if alerts.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let mut added = 0u64;
        let mut newest = Millis::MIN;
        let mut seen = std::collections::HashSet::new();
        for a in alerts {
            let k = key(a.window_end, change_tag(a));
            if !seen.insert(k) || self.db.get_pinned(k).ok().flatten().is_some() {
                continue; // kept already
            }
            let v = serde_json::to_vec(a).map_err(|e| HistoryError::Query(e.to_string()))?;
            added += (k.len() + v.len()) as u64;
            newest = newest.max(a.window_end);
            batch.put(k, v);
        }
        self.db.write(batch).map_err(|e| self.err(e))?;
        self.bytes.fetch_add(added, Ordering::AcqRel);
        self.keep_within(newest)
    }

    /// Drops what is past the retention behind the newest change (or `newest`) or over the
    /// size cap: the oldest evidence first, then the oldest changes.
    fn keep_within(&self, newest: Millis) -> Result<(), HistoryError> {
        let newest = self.newest().unwrap_or(newest).max(newest);
        let cut = newest.saturating_sub(self.cfg.retention.as_millis() as Millis);
        let max = self.cfg.max_bytes;
        self.evict_evidence(|at, bytes| at < cut || bytes > max)?;
        self.evict(|at, bytes| at < cut || bytes > max)
    }

    /// The newest change's time.
    fn newest(&self) -> Option<Millis> {
        let (k, _) = self.db.iterator(IteratorMode::End).next()?.ok()?;
        time_of(&k)
    }

    /// Deletes from the oldest change while `drop(time, bytes kept)` says so.
    fn evict(&self, drop: impl Fn(Millis, u64) -> bool) -> Result<(), HistoryError> {
        let mut batch = WriteBatch::default();
        let mut bytes = self.bytes();
        let mut n = 0;
        for item in self.db.iterator(IteratorMode::Start) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let Some(at) = time_of(&k) else { continue };
            if !drop(at, bytes) {
                break;
            }
            bytes = bytes.saturating_sub((k.len() + v.len()) as u64);
            batch.delete(k);
            n += 1;
        }
        if n > 0 {
            self.db.write(batch).map_err(|e| self.err(e))?;
            self.bytes.store(bytes, Ordering::Release);
            self.evicted.fetch_add(n, Ordering::AcqRel);
        }
        Ok(())
    }

    /// One page of the changes that match, newest first.
    pub fn query(&self, q: &Query) -> Result<Page, HistoryError> {
        let limit = q.limit.clamp(1, MAX_PAGE);
        let start = match &q.cursor {
            Some(c) => {
                let k = hex::decode(c)
                    .ok()
                    .filter(|k| k.len() == 16)
                    .ok_or_else(|| {
                        HistoryError::Query(format!("cursor ({c}) is not one of ours"))
                    })?;
                Some(k)
            }
            None => q.until.map(|u| key(u, u64::MAX).to_vec()),
        };
        let mode = match &start {
            Some(k) => IteratorMode::From(k, Direction::Reverse),
            None => IteratorMode::End,
        };
        let mut changes = Vec::new();
        let mut next = None;
        for item in self.db.iterator(mode) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if q.cursor.is_some() && start.as_deref() == Some(&k[..]) {
                continue; // the previous page's last
            }
            let Some(at) = time_of(&k) else { continue };
            if q.since.is_some_and(|s| at < s) {
                break;
            }
            let Ok(a) = serde_json::from_slice::<Alert>(&v) else {
                continue;
            };
            let fits = q.status.is_none_or(|s| a.status == s)
                && q.id.as_ref().is_none_or(|id| *id == a.id)
                && q.parent
                    .as_ref()
                    .is_none_or(|p| a.parent_id.as_ref() == Some(p))
                && q.scope
                    .as_ref()
                    .is_none_or(|p| scope_matches(p, &a.scope.to_string()));
            if !fits {
                continue;
            }
            if changes.len() == limit {
                break;
            }
            changes.push(a);
            next = Some(hex::encode(&k));
        }
        if changes.len() < limit {
            next = None;
        }
        Ok(Page { changes, next })
    }
}

/// Keeps every state change on the alerts topic as well, read from its start for as long as
/// the daemon runs: each instance of a group then holds the group's history, not only the
/// changes of the partitions it owned (a change kept already is not kept twice).
pub fn follow_alerts(
    k: &crate::kafka::KafkaConfig,
    history: std::sync::Arc<History>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    retries: prometheus::IntCounter,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let topic = k.alerts_topic.clone();
    crate::kafka::follow::spawn("history", k, &topic, stop, retries, move |batch| {
        let alerts: Vec<Alert> = batch
            .iter()
            .filter_map(|p| serde_json::from_slice(p).ok())
            .collect();
        if let Err(e) = history.record(&alerts) {
            tracing::warn!(error = %e, "Cannot keep the alerts topic's changes in the history.");
        }
    })
}

/// `qos-sentinel incidents list`: a page of a running daemon's history (`url`: its
/// `http.listen`), printed one change a line; where a next page starts, on stderr.
pub async fn print_list(url: &str, params: &[(&str, String)]) -> anyhow::Result<()> {
    let page = fetch(url, params).await?;
    for a in &page.changes {
        println!("{}", crate::notify::render_line(a));
    }
    if let Some(next) = page.next {
        eprintln!("more: --cursor {next}");
    }
    Ok(())
}

/// `qos-sentinel incidents show ID`: every state change of one incident, oldest first.
pub async fn print_incident(url: &str, id: &str) -> anyhow::Result<()> {
    let params = [("id", id.to_string()), ("limit", MAX_PAGE.to_string())];
    let page = fetch(url, &params).await?;
    anyhow::ensure!(
        !page.changes.is_empty(),
        "no incident {id} in the history at {url}"
    );
    for a in page.changes.iter().rev() {
        println!("{}", crate::notify::render_line(a));
        println!("    {}", serde_json::to_string(a)?);
    }
    Ok(())
}

async fn fetch(url: &str, params: &[(&str, String)]) -> anyhow::Result<Page> {
    let endpoint = format!("{}/api/incidents", url.trim_end_matches('/'));
    let r = reqwest::Client::new()
        .get(&endpoint)
        .query(params)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach {endpoint}: {e}"))?;
    let status = r.status();
    let text = r.text().await?;
    anyhow::ensure!(status.is_success(), "{endpoint}: {status}: {}", text.trim());
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{endpoint}: not a history page: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Severity;
    use crate::incident::Scope;

    fn alert(id: &str, status: Status, cdn: &str, at: Millis) -> Alert {
        Alert {
            id: id.into(),
            status,
            rule: "failures_above_benchmark".into(),
            severity: Severity::Warning,
            scope: Scope::pair("IN/MH/Mumbai", cdn),
            metric: crate::detect::Metric::FAILURE_RATE,
            observed: 0.2,
            expected: Some(0.01),
            samples: 100,
            p_value: Some(1e-9),
            window_start: at - 60_000,
            window_end: at,
            started_at: at - 60_000,
            resolved_at: (status == Status::Resolved).then_some(at),
            summary: "s".repeat(200),
            parent_id: None,
            cohort: None,
            impact: None,
            silenced_by: Vec::new(),
        }
    }

    const H: Millis = 3_600_000;

    #[test]
    fn changes_are_found_by_status_scope_id_and_time_page_by_page_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = HistoryConfig::default();
        {
            let h = History::open(dir.path(), &cfg).expect("open");
            for i in 0..30 {
                let cdn = if i % 2 == 0 { "cdn-a" } else { "cdn-b" };
                h.record(&[alert(&format!("i{i}"), Status::Firing, cdn, i * H)])
                    .expect("record");
                h.record(&[alert(
                    &format!("i{i}"),
                    Status::Resolved,
                    cdn,
                    i * H + 60_000,
                )])
                .expect("record");
            }
        }
        let h = History::open(dir.path(), &cfg).expect("reopen");
        let q = |f: &dyn Fn(&mut Query)| {
            let mut q = Query {
                limit: 100,
                ..Query::default()
            };
            f(&mut q);
            h.query(&q).expect("query")
        };
        assert_eq!(q(&|_| {}).changes.len(), 60, "all kept across the reopen");
        let firing_b = q(&|q| {
            q.status = Some(Status::Firing);
            q.scope = Some("*cdn=cdn-b".into());
        });
        assert_eq!(firing_b.changes.len(), 15);
        assert!(
            firing_b
                .changes
                .windows(2)
                .all(|w| w[0].window_end > w[1].window_end),
            "newest first"
        );
        let one = q(&|q| q.id = Some("i7".into()));
        assert_eq!(
            one.changes.iter().map(|a| a.status).collect::<Vec<_>>(),
            [Status::Resolved, Status::Firing]
        );
        let window = q(&|q| {
            q.since = Some(10 * H);
            q.until = Some(12 * H);
        });
        let ids: Vec<&str> = window.changes.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            ids,
            ["i12", "i11", "i11", "i10", "i10"],
            "since and until are inclusive: i12 fired at 12 h"
        );
        // Pages of 7: every change once, in order, then no cursor.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = q(&|q| {
                q.limit = 7;
                q.cursor = cursor.clone();
            });
            seen.extend(page.changes.iter().map(|a| (a.id.clone(), a.status)));
            match page.next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen.len(), 60);
        let unique: std::collections::HashSet<_> = seen
            .iter()
            .map(|(id, s)| (id, *s == Status::Firing))
            .collect();
        assert_eq!(unique.len(), 60);
        assert!(
            h.query(&Query {
                cursor: Some("zz".into()),
                limit: 1,
                ..Query::default()
            })
            .is_err()
        );
    }

    #[test]
    fn the_oldest_go_past_the_retention_and_the_size_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = HistoryConfig {
            retention: Duration::from_secs(24 * 3600),
            max_bytes: 1 << 20,
        };
        let h = History::open(dir.path(), &cfg).expect("open");
        for i in 0..48 {
            h.record(&[alert(&format!("i{i}"), Status::Firing, "cdn-a", i * H)])
                .expect("record");
        }
        let all = h
            .query(&Query {
                limit: MAX_PAGE,
                ..Query::default()
            })
            .expect("query");
        let oldest = all.changes.last().expect("some").window_end;
        assert_eq!(
            oldest,
            23 * H,
            "a day behind the newest (47 h) is kept, no more"
        );
        assert_eq!(h.evicted.load(Ordering::Acquire), 23);
        // The size cap: changes of ~700 bytes, 1 MiB holds ~1,500 of them.
        for i in 0..3_000 {
            h.record(&[alert(&format!("j{i}"), Status::Firing, "cdn-b", 48 * H + i)])
                .expect("record");
        }
        assert!(h.bytes() <= 1 << 20, "{}", h.bytes());
        let kept = h
            .query(&Query {
                limit: MAX_PAGE,
                scope: Some("*cdn-b".into()),
                ..Query::default()
            })
            .expect("query");
        assert_eq!(kept.changes[0].id, "j2999", "the newest stay");
        let reopened_bytes = {
            drop(h);
            History::open(dir.path(), &cfg).expect("reopen").bytes()
        };
        assert!(reopened_bytes <= 1 << 20 && reopened_bytes > (1 << 20) - 2_000);
    }
}
