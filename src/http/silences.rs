//! `/api/silences`: list (GET, open like the other pages), create (POST) and expire
//! (DELETE `/api/silences/<id>`). The writes are off unless `http.token` is set, need
//! `Authorization: Bearer <token>` (compared in constant time), and each is logged with who
//! and why.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::AppState;
use crate::silence::{Request, Silence, SilenceError};
use crate::time::now_ms;

/// Whether `given` is `expected`, in time independent of where they differ (both are hashed
/// first, so their lengths do not show either).
pub fn same_token(given: &str, expected: &str) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn outcome(s: &AppState, what: &str) {
    s.metrics.silence_writes.with_label_values(&[what]).inc();
}

/// The answer that refuses the write, if it may not go ahead.
fn refused(s: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &s.token else {
        outcome(s, "off");
        return Some(
            (
                StatusCode::FORBIDDEN,
                "silences are read-only here: set http.token to allow writes\n",
            )
                .into_response(),
        );
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if given.is_empty() || !same_token(given, token.expose()) {
        outcome(s, "unauthorized");
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "Bearer")],
                "a valid bearer token is needed to write silences\n",
            )
                .into_response(),
        );
    }
    None
}

fn listed(s: &Silence, now: i64) -> serde_json::Value {
    let mut v = json!(s);
    if let Some(o) = v.as_object_mut() {
        o.insert("state".into(), s.state(now).into());
    }
    v
}

pub(super) async fn list(State(s): State<AppState>) -> Response {
    let Some(store) = &s.silences else {
        return (StatusCode::NOT_FOUND, "no silences here\n").into_response();
    };
    let now = now_ms();
    let all: Vec<serde_json::Value> = store.list().iter().map(|x| listed(x, now)).collect();
    axum::Json(json!({ "silences": all, "shared": store.shared() })).into_response()
}

fn failed(s: &AppState, e: SilenceError) -> Response {
    let code = match e {
        SilenceError::Unknown(_) => StatusCode::NOT_FOUND,
        SilenceError::Invalid(_) => StatusCode::BAD_REQUEST,
        SilenceError::Publish(_) => StatusCode::SERVICE_UNAVAILABLE,
        SilenceError::File { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    outcome(
        s,
        if code == StatusCode::NOT_FOUND {
            "invalid"
        } else {
            "failed"
        },
    );
    warn!(error = %e, "Silence not written.");
    (code, format!("{e}\n")).into_response()
}

pub(super) async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(store) = s.silences.clone() else {
        return (StatusCode::NOT_FOUND, "no silences here\n").into_response();
    };
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let now = now_ms();
    let silence = serde_json::from_slice::<Request>(&body)
        .map_err(|e| format!("not a silence: {e}"))
        .and_then(|r| r.into_silence(now));
    let silence = match silence {
        Ok(x) => x,
        Err(e) => {
            outcome(&s, "invalid");
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    match store.write(silence, now).await {
        Ok(x) => {
            outcome(&s, "created");
            info!(id = %x.id, matchers = ?x.matchers, starts_at = x.starts_at, ends_at = x.ends_at,
                  by = %x.created_by, comment = %x.comment, "Silence created.");
            (StatusCode::CREATED, axum::Json(listed(&x, now))).into_response()
        }
        Err(e) => failed(&s, e),
    }
}

pub(super) async fn expire(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(store) = s.silences.clone() else {
        return (StatusCode::NOT_FOUND, "no silences here\n").into_response();
    };
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let now = now_ms();
    match store.expire(&id, now).await {
        Ok(x) => {
            outcome(&s, "expired");
            info!(id = %x.id, matchers = ?x.matchers, by = %x.created_by, "Silence expired.");
            axum::Json(listed(&x, now)).into_response()
        }
        Err(e) => failed(&s, e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_whole() {
        use super::same_token;
        assert!(same_token("0123456789abcdef", "0123456789abcdef"));
        assert!(!same_token("0123456789abcdeF", "0123456789abcdef"));
        assert!(!same_token("0123456789abcde", "0123456789abcdef"));
        assert!(!same_token("", "0123456789abcdef"));
    }
}
