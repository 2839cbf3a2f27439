//! `qos-sentinel receive`: a webhook receiver for trying notifications out. It prints every
//! alert POSTed to it and, given the HMAC secret, refuses requests whose signature does not
//! verify.

use anyhow::Context;
use axum::http::{HeaderMap, StatusCode};

use super::config::Secret;
use super::render;

/// Serves until the process ends.
pub async fn serve(listen: &str, secret: Option<Secret>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("receive: listening on {listen}");
    let app = axum::Router::new().fallback(axum::routing::post(
        move |headers: HeaderMap, body: axum::body::Bytes| {
            let secret = secret.clone();
            async move { receive_one(secret.as_ref(), &headers, &body) }
        },
    ));
    axum::serve(listener, app).await?;
    Ok(())
}

/// Prints one webhook request; refuses it when the signature does not verify.
fn receive_one(secret: Option<&Secret>, headers: &HeaderMap, body: &[u8]) -> StatusCode {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if let Some(s) = secret {
        let now = super::deliver::now_ms() / 1000;
        let key = render::hmac_key(s.expose()).unwrap_or_default();
        let ok = !key.is_empty()
            && render::verify(
                &key,
                header(render::TIMESTAMP_HEADER),
                header(render::SIGNATURE_HEADER),
                body,
                now,
                300,
            );
        if !ok {
            eprintln!("receive: refused a request with a bad or missing signature");
            return StatusCode::UNAUTHORIZED;
        }
    }
    match serde_json::from_slice::<crate::incident::Alert>(body) {
        Ok(a) => {
            println!(
                "{} [{}]",
                super::render_line(&a),
                header(render::IDEMPOTENCY_HEADER)
            );
            StatusCode::NO_CONTENT
        }
        Err(e) => {
            eprintln!("receive: not an alert: {e}");
            StatusCode::BAD_REQUEST
        }
    }
}
