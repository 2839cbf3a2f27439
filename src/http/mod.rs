//! The operators' endpoint: /metrics (Prometheus text), /healthz (alive), /readyz (benchmark
//! table loaded, partitions assigned, broker reachable), and for humans a live page at / with
//! the JSON behind it at /api/incidents.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;
use serde_json::json;

use crate::engine::Quality;
use crate::history::History;
use crate::incident::{Alert, Status};
use crate::metrics::Metrics;
use crate::time::{Millis, format_ms};
use serde::{Deserialize, Serialize};

use crate::field::Invalid;

pub mod evidence;
pub mod silences;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the /metrics, /healthz and /readyz endpoint. Loopback unless you mean it.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// /healthz fails once the engine's loop has made no turn for this long (a write
    /// retrying forever, a wedged read): a liveness probe then restarts the process.
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    pub stall_timeout: std::time::Duration,
    /// Where people reach this endpoint (`https://qos.example.com`): the base of the evidence
    /// links in Slack, webhooks and Alertmanager. Default: `http://` and `listen`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Bearer token for the write endpoints (silences); without one they are off. A secret:
    /// a value, `env:NAME` or `file:/path`.
    #[serde(default)]
    pub token: Option<crate::notify::config::Secret>,
}

fn default_listen() -> String {
    "127.0.0.1:9464".into()
}

const fn default_stall_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(120)
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            stall_timeout: default_stall_timeout(),
            public_url: None,
            token: None,
        }
    }
}

impl HttpConfig {
    /// The base of links to this endpoint's pages: `public_url`, or `http://` and `listen`.
    pub fn public_base(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }

    /// The evidence page of incident `{id}`, as a receiver's link template.
    pub fn evidence_link(&self) -> String {
        format!("{}/incidents/{{id}}", self.public_base())
    }

    /// Checks values; field paths are relative to `[http]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Invalid::new(
                "listen",
                format!(
                    "(\"{}\") is not an address like 127.0.0.1:9464",
                    self.listen
                ),
            ));
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(Invalid::new(
                "public_url",
                format!("(\"{u}\") must start with http:// or https://"),
            ));
        }
        if self.token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            return Err(Invalid::new(
                "token",
                "must be at least 16 characters (the value is not shown)",
            ));
        }
        if self.stall_timeout < std::time::Duration::from_secs(1) {
            return Err(Invalid::new(
                "stall_timeout",
                format!(
                    "({}) must be at least 1s",
                    crate::field::human(self.stall_timeout)
                ),
            ));
        }
        Ok(())
    }
}

pub struct Readiness {
    pub benchmarks_loaded: AtomicBool,
    /// Report partitions this instance owns now.
    pub partitions: AtomicUsize,
    /// The reports consumer is a settled member of its group (librdkafka's join state
    /// `steady`, from its statistics every 5 s), with or without partitions.
    pub in_group: AtomicBool,
    pub broker_reachable: AtomicBool,
    /// Wall-clock epoch ms of the engine loop's last turn; 0 before it starts (start-up:
    /// restore, benchmark table).
    heartbeat_ms: AtomicI64,
    /// How long without a turn makes /healthz fail (`http.stall_timeout`).
    pub stall_after_ms: AtomicI64,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            benchmarks_loaded: AtomicBool::new(false),
            partitions: AtomicUsize::new(0),
            in_group: AtomicBool::new(false),
            // Until a check says otherwise: start-up itself needs the broker.
            broker_reachable: AtomicBool::new(true),
            heartbeat_ms: AtomicI64::new(0),
            stall_after_ms: AtomicI64::new(default_stall_timeout().as_millis() as i64),
        }
    }
}

impl Readiness {
    /// The engine's loop made a turn.
    pub fn beat(&self) {
        self.heartbeat_ms
            .store(crate::time::now_ms(), Ordering::Release);
    }

    /// How long the loop has made no turn, once that is over the stall timeout.
    pub fn stalled(&self) -> Option<std::time::Duration> {
        let last = self.heartbeat_ms.load(Ordering::Acquire);
        let idle = crate::time::now_ms().saturating_sub(last);
        (last > 0 && idle > self.stall_after_ms.load(Ordering::Acquire))
            .then(|| std::time::Duration::from_millis(idle as u64))
    }

    /// Ready: the benchmark table loaded, the broker reachable, and report partitions owned,
    /// or none as a settled member of the group (a standby: more instances than partitions;
    /// it takes partitions over when a member leaves, so it belongs behind the Service).
    pub fn ready(&self) -> bool {
        self.reasons().is_empty()
    }

    /// Every reason it is not ready, in words (empty when ready).
    pub fn reasons(&self) -> Vec<&'static str> {
        let mut why = Vec::new();
        if !self.benchmarks_loaded.load(Ordering::Acquire) {
            why.push("the benchmark table is still loading from the benchmarks topic");
        }
        if !self.broker_reachable.load(Ordering::Acquire) {
            why.push("the broker did not answer the last probe (every 2 s)");
        }
        if self.partitions.load(Ordering::Acquire) == 0 && !self.in_group.load(Ordering::Acquire) {
            why.push("not yet a settled member of the consumer group, and no report partition");
        }
        why
    }

    /// The `/readyz` body: the verdict with its reasons, then one `name value` line each.
    pub fn explain(&self) -> String {
        let why = self.reasons();
        let partitions = self.partitions.load(Ordering::Acquire);
        let mut text = if !why.is_empty() {
            let mut t = String::from("not ready:\n");
            for w in &why {
                t.push_str(&format!("- {w}\n"));
            }
            t
        } else if partitions == 0 {
            "ready: standby, a settled member of the consumer group without a report partition \
             (more instances than partitions); it takes partitions over when a member leaves\n"
                .to_string()
        } else {
            format!("ready: consuming {partitions} report partition(s)\n")
        };
        text.push_str(&format!(
            "benchmarks_loaded {}\npartitions {partitions}\nin_group {}\nbroker_reachable {}\n",
            self.benchmarks_loaded.load(Ordering::Acquire),
            self.in_group.load(Ordering::Acquire),
            self.broker_reachable.load(Ordering::Acquire),
        ));
        text
    }
}

/// Recently resolved incidents kept for the live page.
const RECENT: usize = 20;

/// What the live page shows: firing incidents, the last resolved ones, the last window's
/// quality. Updated by the daemon as alerts are raised and windows close.
#[derive(Default)]
pub struct Live {
    inner: Mutex<LiveInner>,
}

#[derive(Default)]
struct LiveInner {
    firing: BTreeMap<String, Alert>,
    resolved: VecDeque<Alert>,
    quality: Quality,
    watermark: Option<Millis>,
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, LiveInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, alerts: &[Alert]) {
        let mut g = self.lock();
        for a in alerts {
            match a.status {
                Status::Firing => {
                    g.firing.insert(a.id.clone(), a.clone());
                }
                Status::Resolved => {
                    g.firing.remove(&a.id);
                    g.resolved.push_front(a.clone());
                    g.resolved.truncate(RECENT);
                }
            }
        }
    }

    /// The recently resolved of an earlier run (from the history, newest first), so that a
    /// restart does not empty the live page's list.
    pub fn remember(&self, resolved: &[Alert]) {
        let mut g = self.lock();
        for a in resolved.iter().filter(|a| a.status == Status::Resolved) {
            if g.resolved.len() < RECENT && !g.resolved.iter().any(|r| r.id == a.id) {
                g.resolved.push_back(a.clone());
            }
        }
    }

    /// Firing incidents of restored or taken-over state, unless listed already.
    pub fn adopt(&self, alerts: &[Alert]) {
        let mut g = self.lock();
        for a in alerts.iter().filter(|a| a.status == Status::Firing) {
            g.firing.entry(a.id.clone()).or_insert_with(|| a.clone());
        }
    }

    /// Incidents this instance no longer speaks for (their partition moved).
    pub fn forget(&self, ids: &[String]) {
        let mut g = self.lock();
        for id in ids {
            g.firing.remove(id);
        }
    }

    pub fn set_quality(&self, q: &Quality, watermark: Option<Millis>) {
        let mut g = self.lock();
        if q.window_start != g.quality.window_start {
            g.quality = q.clone();
        }
        g.watermark = watermark;
    }

    /// The firing incident `id`, as last announced.
    pub fn firing(&self, id: &str) -> Option<Alert> {
        self.lock().firing.get(id).cloned()
    }

    /// The /api/incidents document.
    pub fn snapshot(&self) -> serde_json::Value {
        let g = self.lock();
        let mut firing: Vec<&Alert> = g.firing.values().collect();
        // Critical first, then the oldest.
        firing.sort_by(|a, b| {
            (a.severity.as_str(), a.started_at).cmp(&(b.severity.as_str(), b.started_at))
        });
        json!({
            "watermark": g.watermark.map(format_ms),
            "firing": firing,
            "recently_resolved": g.resolved,
            "quality": g.quality,
        })
    }
}

/// What the endpoint serves from.
#[derive(Clone)]
pub struct Pages {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub live: Arc<Live>,
    /// Answers `/api/incidents?...` and the evidence pages.
    pub history: Option<Arc<History>>,
    /// `/api/silences`.
    pub silences: Option<Arc<crate::silence::Silences>>,
    /// `http.token`: without it the write endpoints are off.
    pub token: Option<crate::notify::config::Secret>,
}

impl Pages {
    /// Metrics and probes only.
    pub fn probes(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Self {
        Pages {
            metrics,
            readiness,
            live: Arc::default(),
            history: None,
            silences: None,
            token: None,
        }
    }
}

type AppState = Pages;

/// The endpoint's routes.
pub fn router(pages: Pages) -> Router {
    Router::new()
        .route("/", get(|| async { Html(include_str!("live.html")) }))
        .route("/api/incidents", get(incidents_handler))
        .route("/api/incidents/{id}", get(evidence::api))
        .route("/incidents/{id}", get(evidence::page))
        .route("/api/silences", get(silences::list).post(silences::create))
        .route(
            "/api/silences/{id}",
            axum::routing::delete(silences::expire),
        )
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .route("/readyz", get(ready_handler))
        .with_state(pages)
}

/// `/api/incidents`: what fires now and the last resolved (the live page's JSON); with any of
/// `status`, `scope`, `id`, `since`, `until`, `limit`, `cursor`: a page of the history, newest
/// first (`{"changes": [...], "next": "<cursor>"}`).
async fn incidents_handler(
    State(s): State<AppState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if params.is_empty() {
        return axum::Json(s.live.snapshot()).into_response();
    }
    let Some(history) = &s.history else {
        return (StatusCode::NOT_FOUND, "no history here\n").into_response();
    };
    let q = match history_query(&params) {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let h = history.clone();
    match tokio::task::spawn_blocking(move || h.query(&q)).await {
        Ok(Ok(page)) => axum::Json(page).into_response(),
        Ok(Err(e @ crate::history::HistoryError::Query(_))) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The query's parameters, each checked: a bad one is named.
fn history_query(p: &BTreeMap<String, String>) -> Result<crate::history::Query, String> {
    let time = |name: &str| -> Result<Option<Millis>, String> {
        p.get(name)
            .map(|v| {
                v.parse::<Millis>()
                    .ok()
                    .or_else(|| crate::time::parse_rfc3339(v))
                    .ok_or_else(|| format!("{name} ({v}) must be RFC 3339 or epoch milliseconds"))
            })
            .transpose()
    };
    for k in p.keys() {
        let known = [
            "status", "scope", "id", "parent", "since", "until", "limit", "cursor",
        ];
        if !known.contains(&k.as_str()) {
            return Err(format!("unknown parameter {k}: {}", known.join(", ")));
        }
    }
    let status = match p.get("status").map(String::as_str) {
        None => None,
        Some("firing") => Some(Status::Firing),
        Some("resolved") => Some(Status::Resolved),
        Some(other) => return Err(format!("status ({other}) must be firing or resolved")),
    };
    let limit = match p.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=crate::history::MAX_PAGE).contains(n))
            .ok_or_else(|| format!("limit ({v}) must be 1 to {}", crate::history::MAX_PAGE))?,
    };
    Ok(crate::history::Query {
        status,
        scope: p.get("scope").cloned(),
        id: p.get("id").cloned(),
        parent: p.get("parent").cloned(),
        since: time("since")?,
        until: time("until")?,
        limit,
        cursor: p.get("cursor").cloned(),
    })
}

async fn metrics_handler(State(s): State<AppState>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// Alive while the engine's loop turns: a loop stuck in a retry or a read fails it.
async fn health_handler(State(s): State<AppState>) -> (StatusCode, String) {
    match s.readiness.stalled() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(d) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stalled: the engine's loop has made no progress for {} s (http.stall_timeout)\n",
                d.as_secs()
            ),
        ),
    }
}

async fn ready_handler(State(s): State<AppState>) -> (StatusCode, String) {
    let r = &s.readiness;
    let code = if r.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, r.explain())
}
