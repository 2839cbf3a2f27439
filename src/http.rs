//! The operators' endpoint: /metrics (Prometheus text), /healthz (alive), /readyz (benchmark
//! table loaded and partitions assigned).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

#[derive(Default)]
pub struct Readiness {
    pub benchmarks_loaded: AtomicBool,
    pub partitions_assigned: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.benchmarks_loaded.load(Ordering::Acquire)
            && self.partitions_assigned.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { metrics, readiness })
}

async fn metrics_handler(State(s): State<AppState>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn ready_handler(State(s): State<AppState>) -> (StatusCode, String) {
    let r = &s.readiness;
    let b = r.benchmarks_loaded.load(Ordering::Acquire);
    let p = r.partitions_assigned.load(Ordering::Acquire);
    let code = if b && p {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        format!("benchmarks_loaded {b}\npartitions_assigned {p}\n"),
    )
}
