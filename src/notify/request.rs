//! One HTTP attempt at a delivery: the request each receiver kind gets (body, headers,
//! signature), and what its answer means (done, retry, fail).

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};

use super::config::{ReceiverConfig, ReceiverKind};
use super::deliver::now_ms;
use super::outbox::Delivery;
use super::render;

/// What became of one attempt.
#[derive(Debug, PartialEq)]
pub(super) enum Attempt {
    Done,
    /// Retry, no sooner than this (Retry-After) when the receiver said so.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    Fail(String),
}

/// One attempt at a delivery. Webhooks get one POST per alert (a delivery for them holds
/// exactly one); Slack and Alertmanager one POST per group.
pub(super) async fn send(client: &reqwest::Client, r: &ReceiverConfig, d: &Delivery) -> Attempt {
    let (url, body, headers) = match request(r, d) {
        Ok(x) => x,
        Err(e) => return Attempt::Fail(e),
    };
    let result = client.post(url).headers(headers).body(body).send().await;
    match result {
        Ok(resp) => classify(resp.status(), resp.headers()),
        // reqwest errors name the URL, which is a secret (Slack and webhook URLs carry tokens).
        Err(e) => Attempt::Retry {
            after: None,
            why: e.without_url().to_string(),
        },
    }
}

fn request(r: &ReceiverConfig, d: &Delivery) -> Result<(String, Vec<u8>, HeaderMap), String> {
    let mut h = HeaderMap::new();
    h.insert(
        CONTENT_TYPE,
        "application/json".parse().map_err(|_| "header")?,
    );
    let link = r.link_template.as_deref();
    let base = r.url.expose();
    let encode = |v: &serde_json::Value| serde_json::to_vec(v).map_err(|e| e.to_string());
    match r.kind {
        ReceiverKind::Slack => Ok((
            base.to_string(),
            encode(&render::slack(&d.alerts, link))?,
            h,
        )),
        ReceiverKind::Alertmanager => {
            let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
            Ok((
                url,
                encode(&render::alertmanager(&d.alerts, link, now_ms()))?,
                h,
            ))
        }
        ReceiverKind::Webhook => {
            let [a] = d.alerts.as_slice() else {
                return Err(format!("webhook delivery holds {} alerts", d.alerts.len()));
            };
            let body = match link {
                // The alert, and where people see its evidence (or the receiver's own link).
                Some(t) => {
                    let mut v = serde_json::to_value(a).map_err(|e| e.to_string())?;
                    if let Some(o) = v.as_object_mut() {
                        o.insert("link".into(), render::link(t, a).into());
                    }
                    serde_json::to_vec(&v)
                }
                None => serde_json::to_vec(a),
            }
            .map_err(|e| e.to_string())?;
            let ts = now_ms() / 1000;
            let key = render::idempotency_key(a, d.repeat);
            let id: reqwest::header::HeaderValue = key.parse().map_err(|_| "idempotency key")?;
            h.insert(render::IDEMPOTENCY_HEADER, id.clone());
            h.insert(render::WEBHOOK_ID_HEADER, id);
            h.insert(render::TIMESTAMP_HEADER, ts.into());
            h.insert(render::WEBHOOK_TIMESTAMP_HEADER, ts.into());
            if let Some(at) = d.detected_ms {
                h.insert(render::DETECTED_HEADER, at.into());
            }
            if let Some(s) = &r.hmac_secret {
                // Validated at start-up (`ReceiverConfig::validate`).
                let k = render::hmac_key(s.expose()).ok_or("hmac_secret is not usable")?;
                let sig = render::sign(&k, ts, &body);
                h.insert(
                    render::SIGNATURE_HEADER,
                    sig.parse().map_err(|_| "signature")?,
                );
                let sig = render::standard_signature(&k, &key, ts, &body);
                h.insert(
                    render::WEBHOOK_SIGNATURE_HEADER,
                    sig.parse().map_err(|_| "signature")?,
                );
            }
            Ok((base.to_string(), body, h))
        }
    }
}

/// 2xx is done; 408, 429 and 5xx are retried (after Retry-After when given); any other status
/// is a failure that retrying will not fix.
fn classify(status: StatusCode, headers: &HeaderMap) -> Attempt {
    if status.is_success() {
        return Attempt::Done;
    }
    let retryable = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    if retryable {
        Attempt::Retry {
            after: headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after),
            why: format!("HTTP {status}"),
        }
    } else {
        Attempt::Fail(format!("HTTP {status}"))
    }
}

/// Retry-After as seconds or an HTTP date; capped at an hour.
fn retry_after(v: &str) -> Option<Duration> {
    let d = match v.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v.trim())
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    };
    Some(d.min(Duration::from_secs(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let h = HeaderMap::new();
        assert_eq!(classify(StatusCode::NO_CONTENT, &h), Attempt::Done);
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, &h),
            Attempt::Retry { after: None, .. }
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, &h),
            Attempt::Fail(_)
        ));
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, &h),
            Attempt::Retry { after: Some(d), .. } if d == Duration::from_secs(7)
        ));
    }

    #[test]
    fn retry_after_takes_http_dates() {
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        let d = retry_after(&in_a_minute).unwrap();
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(61),
            "{d:?}"
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
