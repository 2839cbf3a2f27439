//! A real HTTP receiver on loopback for notification tests: records every request and answers
//! with a scripted status sequence.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

/// One request as received, with the status it was answered with.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Default)]
struct Inner {
    /// Answers for the next requests, in order: (status, Retry-After); then 200.
    script: VecDeque<(u16, Option<String>)>,
    /// Answer every request with this status once the script is used up (default 200).
    otherwise: Option<u16>,
    log: Vec<Received>,
}

#[derive(Clone, Default)]
pub struct Sink(Arc<Mutex<Inner>>);

impl Sink {
    /// Answers the next requests with these statuses before answering 200.
    pub fn script(&self, answers: &[(u16, Option<&str>)]) {
        let mut g = self.0.lock().unwrap();
        g.script = answers
            .iter()
            .map(|(s, r)| (*s, r.map(str::to_string)))
            .collect();
    }

    /// Answers every request with `status` (after the script).
    pub fn always(&self, status: u16) {
        self.0.lock().unwrap().otherwise = Some(status);
    }

    pub fn received(&self) -> Vec<Received> {
        self.0.lock().unwrap().log.clone()
    }

    /// Requests answered with a 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }
}

async fn handle(
    State(sink): State<Sink>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut g = sink.0.lock().unwrap();
    let (status, retry_after) = g
        .script
        .pop_front()
        .unwrap_or((g.otherwise.unwrap_or(200), None));
    g.log.push(Received {
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
        status,
    });
    let code = StatusCode::from_u16(status).unwrap();
    match retry_after {
        Some(r) => (code, [("retry-after", r)]).into_response(),
        None => code.into_response(),
    }
}

/// Serves `sink` on `addr` (e.g. from `free_addr`) until the test ends.
pub async fn serve(addr: &str, sink: Sink) {
    let app = axum::Router::new()
        .fallback(axum::routing::any(handle))
        .with_state(sink);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind receiver");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}
