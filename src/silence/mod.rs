//! Silences and maintenance windows: while one holds over an incident's scope, its state
//! changes still go to the alerts topic (marked `silenced_by`) but not to chat, webhook or
//! Alertmanager receivers; when it ends on an incident still firing, they get it then.
//!
//! A silence is a set of scope patterns that must all match (`cdn=cdn-a`, `location=IN/*`,
//! the forms of an alert's key), a start and an end (wall-clock), who and why. The set is
//! kept in `<state.dir>/silences.json` (survives restarts) and, with `kafka.silences_topic`,
//! shared by every instance of a group through that compacted topic: a write goes to the topic
//! and each instance applies what it reads there, the newest `updated_at` of an id winning.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::time::{Millis, format_ms};

pub mod cli;
pub mod share;

/// Most silences kept; past it the one that ended first goes.
pub const MAX_SILENCES: usize = 10_000;
/// How long an ended silence is still listed (then forgotten).
pub const KEEP_ENDED_MS: Millis = 7 * 24 * 3_600_000;
/// Most patterns in one silence, and longest pattern or text.
const MAX_MATCHERS: usize = 16;
const MAX_TEXT: usize = 1_024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    /// Scope patterns (`*`, `?`), all of which must match an incident's scope or one of its
    /// parts: `cdn=cdn-a` holds that CDN's CDN-wide and location+CDN incidents.
    pub matchers: Vec<String>,
    #[serde(with = "crate::time")]
    pub starts_at: Millis,
    #[serde(with = "crate::time")]
    pub ends_at: Millis,
    pub created_by: String,
    pub comment: String,
    /// The last write: of two versions of one id, the later wins on every instance.
    #[serde(with = "crate::time")]
    pub updated_at: Millis,
}

impl Silence {
    pub fn matches(&self, scope: &str) -> bool {
        !self.matchers.is_empty()
            && self
                .matchers
                .iter()
                .all(|p| crate::glob::scope_matches(p, scope))
    }

    pub fn active(&self, now: Millis) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    pub fn state(&self, now: Millis) -> &'static str {
        if now < self.starts_at {
            "pending"
        } else if now < self.ends_at {
            "active"
        } else {
            "expired"
        }
    }
}

/// A silence as people ask for it: an end or a duration, a start (default now).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub matchers: Vec<String>,
    /// RFC 3339 or epoch ms; default now.
    #[serde(default)]
    pub starts_at: Option<String>,
    #[serde(default)]
    pub ends_at: Option<String>,
    /// `2h`, `30m`: from the start.
    #[serde(default)]
    pub duration: Option<String>,
    pub created_by: String,
    pub comment: String,
}

fn time(field: &str, v: &str) -> Result<Millis, String> {
    v.parse::<Millis>()
        .ok()
        .or_else(|| crate::time::parse_rfc3339(v))
        .ok_or_else(|| format!("{field} ({v}) must be RFC 3339 or epoch milliseconds"))
}

impl Request {
    /// The silence it asks for, as of `now`; errors name the field.
    pub fn into_silence(self, now: Millis) -> Result<Silence, String> {
        if self.matchers.is_empty() || self.matchers.len() > MAX_MATCHERS {
            return Err(format!("matchers: give 1 to {MAX_MATCHERS} scope patterns"));
        }
        for m in &self.matchers {
            let known = ["location=", "cdn=", "prefix="];
            if m.len() > MAX_TEXT || !known.iter().any(|k| m.starts_with(k)) {
                return Err(format!(
                    "matchers ({m}) must be a scope pattern like cdn=cdn-a or location=IN/*"
                ));
            }
        }
        for (field, v) in [("created_by", &self.created_by), ("comment", &self.comment)] {
            if v.trim().is_empty() || v.len() > MAX_TEXT {
                return Err(format!(
                    "{field} must say something (at most {MAX_TEXT} bytes)"
                ));
            }
        }
        let starts_at = match &self.starts_at {
            Some(v) => time("starts_at", v)?,
            None => now,
        };
        let ends_at = match (&self.ends_at, &self.duration) {
            (Some(v), None) => time("ends_at", v)?,
            (None, Some(d)) => {
                let d = humantime::parse_duration(d)
                    .map_err(|e| format!("duration ({d}) is not a duration like 2h: {e}"))?;
                starts_at.saturating_add(d.as_millis() as Millis)
            }
            _ => return Err("give ends_at or duration (one of them)".into()),
        };
        if ends_at <= starts_at || ends_at <= now {
            return Err(format!(
                "ends_at ({}) must be after the start ({}) and now",
                format_ms(ends_at),
                format_ms(starts_at)
            ));
        }
        let seed = format!(
            "{:?}{}{}{now}",
            self.matchers, self.created_by, self.comment
        );
        Ok(Silence {
            id: new_id(&seed),
            matchers: self.matchers,
            starts_at,
            ends_at,
            created_by: self.created_by,
            comment: self.comment,
            updated_at: now,
        })
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh id: FNV-1a of the request, the time and a per-process count and random state.
fn new_id(seed: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(seed.as_bytes());
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::process::id() as u128);
    format!("{:016x}", h.finish())
}

/// Hands a silence to the other instances (the silences topic); resolves once the broker has
/// it.
pub type Publish =
    Arc<dyn Fn(Silence) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    #[error("silences file {path}: {error}")]
    File { path: String, error: String },
    #[error("{0}")]
    Invalid(String),
    #[error("no silence {0}")]
    Unknown(String),
    #[error("cannot share the silence with the group: {0}")]
    Publish(String),
}

/// Every silence this instance knows.
pub struct Silences {
    all: Mutex<BTreeMap<String, Silence>>,
    path: PathBuf,
    publish: OnceLock<Publish>,
    /// Dropped by the cap since the last [`Silences::take_evicted`].
    evicted: AtomicU64,
}

impl Silences {
    /// Opens `<dir>/silences.json` (empty if there is none).
    pub fn open(dir: &Path) -> Result<Self, SilenceError> {
        let path = dir.join("silences.json");
        let err = |error: String| SilenceError::File {
            path: path.display().to_string(),
            error,
        };
        let all: BTreeMap<String, Silence> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Vec<Silence>>(&bytes)
                .map_err(|e| err(e.to_string()))?
                .into_iter()
                .map(|s| (s.id.clone(), s))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Silences {
            all: Mutex::new(all),
            path,
            publish: OnceLock::new(),
            evicted: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Silence>> {
        self.all.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shares writes through `p` from now on (the silences topic).
    pub fn share_with(&self, p: Publish) {
        let _ = self.publish.set(p);
    }

    /// Whether writes are shared with a group.
    pub fn shared(&self) -> bool {
        self.publish.get().is_some()
    }

    /// Takes in a version of a silence (a write here, or one read from the topic): kept if it
    /// is new or later than the one known. Returns whether it changed anything.
    pub fn apply(&self, s: Silence, now: Millis) -> Result<bool, SilenceError> {
        Ok(self.apply_all([s], now)? > 0)
    }

    /// [`Silences::apply`] for several (a batch read from the topic), written out once.
    /// Returns how many changed anything.
    pub fn apply_all(
        &self,
        versions: impl IntoIterator<Item = Silence>,
        now: Millis,
    ) -> Result<usize, SilenceError> {
        let mut all = self.lock();
        let mut changed = 0;
        for s in versions {
            if all.get(&s.id).is_some_and(|o| o.updated_at >= s.updated_at) {
                continue;
            }
            all.insert(s.id.clone(), s);
            changed += 1;
        }
        if changed == 0 {
            return Ok(0);
        }
        all.retain(|_, s| now - s.ends_at < KEEP_ENDED_MS);
        while all.len() > MAX_SILENCES {
            let first = all.values().min_by_key(|s| s.ends_at).map(|s| s.id.clone());
            let Some(id) = first else { break };
            all.remove(&id);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        self.save(&all)?;
        Ok(changed)
    }

    fn save(&self, all: &BTreeMap<String, Silence>) -> Result<(), SilenceError> {
        let list: Vec<&Silence> = all.values().collect();
        let err = |error: String| SilenceError::File {
            path: self.path.display().to_string(),
            error,
        };
        let bytes = serde_json::to_vec_pretty(&list).map_err(|e| err(e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| err(e.to_string()))
    }

    /// Writes a silence: to the group first (when shared), then here.
    pub async fn write(&self, s: Silence, now: Millis) -> Result<Silence, SilenceError> {
        if let Some(p) = self.publish.get() {
            p(s.clone()).await.map_err(SilenceError::Publish)?;
        }
        self.apply(s.clone(), now)?;
        Ok(s)
    }

    /// Ends silence `id` now.
    pub async fn expire(&self, id: &str, now: Millis) -> Result<Silence, SilenceError> {
        let Some(mut s) = self.lock().get(id).cloned() else {
            return Err(SilenceError::Unknown(id.to_string()));
        };
        s.ends_at = s.ends_at.min(now);
        s.starts_at = s.starts_at.min(s.ends_at);
        s.updated_at = now.max(s.updated_at + 1);
        self.write(s, now).await
    }

    /// The ids of the silences holding `scope` (an alert's key) at `now`.
    pub fn holding(&self, scope: &str, now: Millis) -> Vec<String> {
        self.lock()
            .values()
            .filter(|s| s.active(now) && s.matches(scope))
            .map(|s| s.id.clone())
            .collect()
    }

    /// Every silence known, by end (the one ending first first).
    pub fn list(&self) -> Vec<Silence> {
        let mut v: Vec<Silence> = self.lock().values().cloned().collect();
        v.sort_by_key(|s| (s.ends_at, s.id.clone()));
        v
    }

    /// Silences active at `now`.
    pub fn active(&self, now: Millis) -> usize {
        self.lock().values().filter(|s| s.active(now)).count()
    }

    pub fn take_evicted(&self) -> u64 {
        self.evicted.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Millis = 3_600_000;

    fn req(matchers: &[&str], duration: &str) -> Request {
        Request {
            matchers: matchers.iter().map(|m| m.to_string()).collect(),
            duration: Some(duration.into()),
            created_by: "ana".into(),
            comment: "CDN maintenance".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_silence_holds_the_scopes_its_patterns_all_match_while_it_lasts() {
        let now = 100 * H;
        let s = req(&["cdn=cdn-a", "location=IN/*"], "2h")
            .into_silence(now)
            .expect("valid");
        assert_eq!((s.starts_at, s.ends_at), (now, now + 2 * H));
        assert!(s.matches("location=IN/MH/Mumbai,cdn=cdn-a"));
        assert!(!s.matches("location=US/NY/NYC,cdn=cdn-a"));
        assert!(!s.matches("location=IN/MH/Mumbai,cdn=cdn-b"));
        assert!(
            !s.matches("cdn=cdn-a"),
            "a CDN-wide scope names no location"
        );
        let wide = req(&["cdn=cdn-a"], "1h").into_silence(now).expect("valid");
        assert!(wide.matches("cdn=cdn-a") && wide.matches("prefix=IN,cdn=cdn-a"));
        assert_eq!(
            (wide.state(now - 1), wide.state(now), wide.state(now + H)),
            ("pending", "active", "expired")
        );
        for (bad, field) in [
            (req(&[], "1h"), "matchers"),
            (req(&["cdn-a"], "1h"), "matchers (cdn-a)"),
            (req(&["cdn=a"], "soon"), "duration (soon)"),
            (
                Request {
                    created_by: " ".into(),
                    ..req(&["cdn=a"], "1h")
                },
                "created_by",
            ),
            (
                Request {
                    ends_at: Some("1970-01-01T00:00:01Z".into()),
                    duration: None,
                    ..req(&["cdn=a"], "1h")
                },
                "ends_at",
            ),
        ] {
            let e = bad.into_silence(now).expect_err(field);
            assert!(e.starts_with(field), "{e}");
        }
    }

    #[tokio::test]
    async fn silences_survive_a_reopen_and_the_latest_version_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 100 * H;
        let store = Silences::open(dir.path()).expect("open");
        let s = req(&["cdn=cdn-a"], "2h").into_silence(now).expect("valid");
        store.write(s.clone(), now).await.expect("write");
        assert_eq!(
            store.holding("location=X,cdn=cdn-a", now + H),
            vec![s.id.clone()]
        );
        let ended = store.expire(&s.id, now + H).await.expect("expire");
        assert!(store.holding("location=X,cdn=cdn-a", now + H).is_empty());
        // An older version read later (from the topic) does not bring it back.
        assert!(!store.apply(s.clone(), now + H).expect("apply"));
        drop(store);
        let store = Silences::open(dir.path()).expect("reopen");
        assert_eq!(store.list(), [ended]);
        assert!(matches!(
            store.expire("nope", now).await,
            Err(SilenceError::Unknown(_))
        ));
        // A week after they ended, silences are forgotten.
        let later = req(&["cdn=b"], "1h")
            .into_silence(now + 9 * 24 * H)
            .expect("valid");
        store.apply(later.clone(), now + 9 * 24 * H).expect("apply");
        assert_eq!(store.list(), [later]);
    }
}
