//! What receivers get: routing patterns, the Slack, Alertmanager and webhook bodies, and the
//! webhook signature.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::config::{ReceiverConfig, ReceiverKind};
use crate::detect::{Metric, Severity};
use crate::glob::glob;
use crate::incident::{Alert, Status};
use crate::time::{Millis, format_ms};

/// Header carrying the Unix time (seconds) the webhook request was signed at.
pub const TIMESTAMP_HEADER: &str = "X-QoS-Timestamp";
/// Header carrying `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "X-QoS-Signature";
/// Header carrying the wall-clock time (epoch ms) the window close that produced the alert
/// began: receipt time minus this is the detection-to-delivery latency.
pub const DETECTED_HEADER: &str = "X-QoS-Detected-At";
/// Header naming the state change, the same on every retry of it.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Standard Webhooks (standardwebhooks.com) headers, so that receivers can verify with that
/// specification's libraries: the message id (the idempotency key, so that the signature
/// covers it), the Unix time in seconds, and `v1,<base64 HMAC-SHA256 of
/// "<id>.<timestamp>.<body>">` ([`standard_signature`]).
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";

/// Whether `a` goes to receiver `r` by its severity, rule and scope patterns.
pub fn routes(r: &ReceiverConfig, a: &Alert) -> bool {
    let any = |pats: &[String], s: &str| pats.is_empty() || pats.iter().any(|p| glob(p, s));
    any(&r.severities, a.severity.as_str())
        && any(&r.rules, &a.rule)
        && any(&r.scopes, &a.scope.to_string())
}

/// Fills a link template from an alert: `{location}`, `{cdn}`, `{rule}`, `{id}`, `{from_ms}`,
/// `{to_ms}` (an hour before the start to the window's end, or the resolution).
pub fn link(template: &str, a: &Alert) -> String {
    let from = a.started_at - 3_600_000;
    let to = a.resolved_at.unwrap_or(a.window_end) + 600_000;
    template
        .replace(
            "{location}",
            &url_escape(a.scope.location.as_deref().unwrap_or("All")),
        )
        .replace(
            "{cdn}",
            &url_escape(a.scope.cdn.as_deref().unwrap_or("All")),
        )
        .replace("{rule}", &url_escape(&a.rule))
        .replace("{id}", &a.id)
        .replace("{from_ms}", &from.to_string())
        .replace("{to_ms}", &to.to_string())
}

fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A metric value with its unit, as people read it.
pub fn format_value(m: Metric, v: f64) -> String {
    m.kind().format(v)
}

fn where_(a: &Alert) -> String {
    match (&a.scope.location, &a.scope.cdn, &a.scope.prefix) {
        (Some(l), Some(c), _) => format!("{l} · {c}"),
        (Some(l), None, _) => format!("{l} · all CDNs"),
        (None, Some(c), Some(r)) => format!("{r}/* · {c}"),
        (None, Some(c), None) => format!("{c} · all locations"),
        (None, None, _) => "everywhere".into(),
    }
}

/// Text from data (locations, CDNs, devices, summaries) as Slack mrkdwn shows it literally:
/// `&`, `<` and `>` escaped as Slack asks, so that a location named `<!channel>` mentions no
/// one and `<https://x|Grafana>` is no link.
fn mrkdwn(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn colour(a: &Alert) -> &'static str {
    match (a.status, a.severity) {
        (Status::Resolved, _) => "#2eb67d",
        (Status::Firing, Severity::Critical) => "#d40e0d",
        (Status::Firing, Severity::Warning) => "#ecb22e",
    }
}

fn headline(a: &Alert) -> String {
    let state = match a.status {
        Status::Firing => "FIRING",
        Status::Resolved => "RESOLVED",
    };
    format!(
        "{state} {}: {} at {}",
        a.severity.as_str(),
        a.rule,
        where_(a)
    )
}

/// One Slack message (incoming webhook, Block Kit in coloured attachments) for a group of
/// alerts that changed together.
pub fn slack(alerts: &[Alert], link_template: Option<&str>) -> Value {
    let text = match alerts {
        [one] => mrkdwn(&headline(one)),
        [first, rest @ ..] => format!("{} (+{} more)", mrkdwn(&headline(first)), rest.len()),
        [] => String::new(),
    };
    let attachments: Vec<Value> = alerts
        .iter()
        .map(|a| {
            let expected = a
                .expected
                .map_or_else(|| "n/a".into(), |e| format_value(a.metric, e));
            let since = match a.resolved_at {
                Some(r) => format!("{} → {}", format_ms(a.started_at), format_ms(r)),
                None => format_ms(a.started_at),
            };
            let indent = if a.parent_id.is_some() { "↳ " } else { "" };
            let mut blocks = vec![
                json!({"type": "section", "text": {"type": "mrkdwn", "text":
                    format!("{indent}*{}*\n{}", mrkdwn(&headline(a)), mrkdwn(&a.summary))}}),
                json!({"type": "section", "fields": [
                    {"type": "mrkdwn", "text": format!("*Observed*\n{}", format_value(a.metric, a.observed))},
                    {"type": "mrkdwn", "text": format!("*Expected*\n{expected}")},
                    {"type": "mrkdwn", "text": format!("*Reports*\n{}", a.samples)},
                    {"type": "mrkdwn", "text": format!("*Since*\n{since}")},
                ]}),
                json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                    "incident `{}` · metric `{}` · window {} – {}{}",
                    mrkdwn(&a.id), a.metric.as_str(), format_ms(a.window_start), format_ms(a.window_end),
                    a.p_value.map(|p| format!(" · p = {p:.1e}")).unwrap_or_default())}]}),
            ];
            if let (Some(i), Some(fields)) = (&a.impact, blocks[1]["fields"].as_array_mut()) {
                fields.push(json!({"type": "mrkdwn", "text": format!("*Viewers*\n{}", mrkdwn(&i.describe()))}));
            }
            if let Some(t) = link_template {
                // The evidence page, unless the receiver links elsewhere (a dashboard).
                let label = if t.contains("/incidents/{id}") { "Evidence" } else { "Open dashboard" };
                blocks.push(json!({"type": "actions", "elements": [{"type": "button",
                    "text": {"type": "plain_text", "text": label}, "url": link(t, a)}]}));
            }
            json!({"color": colour(a), "fallback": mrkdwn(&headline(a)), "blocks": blocks})
        })
        .collect();
    json!({"text": text, "attachments": attachments})
}

/// Alertmanager v2 `postableAlerts` for a group. A firing alert has no `endsAt`: Alertmanager
/// keeps it until its resolve_timeout, and repeats refresh it. A resolved one ends at its
/// resolution (never later than `now`, so it reads as resolved at once).
pub fn alertmanager(alerts: &[Alert], link_template: Option<&str>, now: Millis) -> Value {
    Value::Array(
        alerts
            .iter()
            .map(|a| {
                let mut labels = serde_json::Map::new();
                labels.insert("alertname".into(), json!(a.rule));
                labels.insert("severity".into(), json!(a.severity.as_str()));
                labels.insert("metric".into(), json!(a.metric.as_str()));
                labels.insert("incident_id".into(), json!(a.id));
                labels.insert("service".into(), json!("qos-sentinel"));
                if let Some(l) = &a.scope.location {
                    labels.insert("location".into(), json!(l));
                }
                if let Some(c) = &a.scope.cdn {
                    labels.insert("cdn".into(), json!(c));
                }
                if let Some(r) = &a.scope.prefix {
                    labels.insert("location_prefix".into(), json!(r));
                }
                let expected = a
                    .expected
                    .map_or_else(|| "n/a".into(), |e| format_value(a.metric, e));
                let mut v = json!({
                    "labels": labels,
                    "annotations": {
                        "summary": a.summary,
                        "description": format!("observed {} vs expected {} over {} reports (window {} – {})",
                            format_value(a.metric, a.observed), expected, a.samples,
                            format_ms(a.window_start), format_ms(a.window_end)),
                    },
                    "startsAt": format_ms(a.started_at.min(now)),
                });
                if let Some(p) = &a.parent_id {
                    v["annotations"]["parent_id"] = json!(p);
                }
                if let Some(t) = link_template {
                    v["generatorURL"] = json!(link(t, a));
                }
                if a.status == Status::Resolved {
                    let end = a.resolved_at.unwrap_or(a.window_end).min(now);
                    v["endsAt"] = json!(format_ms(end.max(a.started_at.min(now))));
                }
                v
            })
            .collect(),
    )
}

/// The HMAC key of a webhook's `hmac_secret`: a secret in Standard Webhooks' form,
/// `whsec_<base64>`, is the base64 of its key (as that specification's libraries read it);
/// any other secret is its own bytes. `None`: a `whsec_` secret that is not base64.
pub fn hmac_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .filter(|k| !k.is_empty()),
        None => Some(secret.as_bytes().to_vec()),
    }
}

/// `sha256=<hex>` over `"<timestamp>.<body>"` with `key`.
pub fn sign(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(key, &[], timestamp, body).finalize().into_bytes();
    format!("sha256={}", hex::encode(tag))
}

/// The Standard Webhooks signature: `v1,<base64>` over `"<id>.<timestamp>.<body>"` with `key`.
pub fn standard_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine;
    let tag = mac(key, id.as_bytes(), timestamp, body)
        .finalize()
        .into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag)
    )
}

/// HMAC-SHA256 over `"<id>.<timestamp>.<body>"`, or `"<timestamp>.<body>"` without an id.
fn mac(key: &[u8], id: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    if !id.is_empty() {
        mac.update(id);
        mac.update(b".");
    }
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// What a receiver runs on a request: the signature matches the body and the timestamp is
/// within `tolerance_secs` of `now_secs` (so a captured request cannot be replayed later).
/// Compares in constant time.
pub fn verify(
    secret: &[u8],
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> bool {
    let Ok(ts) = timestamp_header.trim().parse::<i64>() else {
        return false;
    };
    if (now_secs - ts).abs() > tolerance_secs {
        return false;
    }
    let Some(hex_sig) = signature_header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    mac(secret, &[], ts, body).verify_slice(&sig).is_ok()
}

/// The state change a request carries; receivers drop repeats of it. `repeat` numbers the
/// reminders of a firing incident (0 = the change itself).
pub fn idempotency_key(a: &Alert, repeat: u32) -> String {
    let change = super::change_key(a);
    if repeat == 0 {
        change
    } else {
        format!("{change}:repeat-{repeat}")
    }
}

/// Whether a receiver kind takes several alerts in one request.
pub fn groups(kind: ReceiverKind) -> bool {
    !matches!(kind, ReceiverKind::Webhook)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::incident::Scope;

    pub(crate) fn alert(status: Status) -> Alert {
        Alert {
            id: "00000000000000aa".into(),
            status,
            rule: "rebuffer_ratio_above_benchmark".into(),
            severity: Severity::Critical,
            scope: Scope::pair("IN/MH/Mumbai", "cdn-a"),
            metric: Metric::REBUFFER_RATIO,
            observed: 0.08,
            expected: Some(0.02),
            samples: 1234,
            p_value: Some(1e-9),
            window_start: 1_700_000_000_000,
            window_end: 1_700_000_060_000,
            started_at: 1_699_999_940_000,
            resolved_at: (status == Status::Resolved).then_some(1_700_000_300_000),
            summary: "Rebuffering 4x the benchmark".into(),
            parent_id: None,
            cohort: None,
            impact: None,
            silenced_by: Vec::new(),
        }
    }

    #[test]
    fn routing_uses_all_three_filters() {
        let text = r#"
            [[receivers]]
            name = "r"
            kind = "webhook"
            url = "http://127.0.0.1:1/x"
            severities = ["critical"]
            rules = ["rebuffer_*"]
            scopes = ["location=IN/*"]
        "#;
        let cfg: crate::notify::config::NotifyConfig = toml::from_str(text).unwrap();
        cfg.validate().unwrap();
        let r = &cfg.receivers[0];
        let mut a = alert(Status::Firing);
        assert!(routes(r, &a));
        a.severity = Severity::Warning;
        assert!(!routes(r, &a));
        a.severity = Severity::Critical;
        a.scope = Scope::pair("US/CA/LA", "cdn-a");
        assert!(!routes(r, &a));
        a.scope = Scope::pair("IN/KA/Bengaluru", "cdn-a");
        a.rule = "failure_rate_above_benchmark".into();
        assert!(!routes(r, &a));
    }

    #[test]
    fn a_whsec_secret_is_the_base64_of_its_key_and_any_other_its_own_bytes() {
        assert_eq!(hmac_key("plain").as_deref(), Some(&b"plain"[..]));
        assert_eq!(hmac_key("whsec_aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(hmac_key("whsec_not base64!"), None);
        assert_eq!(hmac_key("whsec_"), None, "an empty key");
    }

    #[test]
    fn signature_verifies_and_rejects_tampering_and_replay() {
        let body: &[u8] = br#"{"id":"x"}"#;
        let sig = sign(b"k3y", 1_700_000_000, body);
        let now = 1_700_000_010;
        assert!(verify(b"k3y", "1700000000", &sig, body, now, 300));
        // (key, timestamp header, body, now): each differs from the signed request once.
        let tampered: [(&[u8], &str, &[u8], i64); 5] = [
            (b"other", "1700000000", body, now),
            (b"k3y", "1700000000", br#"{"id":"y"}"#, now),
            (b"k3y", "1700000001", body, now),
            (b"k3y", "1700000000", body, 1_700_001_000),
            (b"k3y", "x", body, now),
        ];
        for (key, ts, b, at) in tampered {
            assert!(!verify(key, ts, &sig, b, at, 300), "{ts} {at}");
        }
    }

    /// Location, CDN and summary come from report payloads: in mrkdwn they stay text.
    #[test]
    fn slack_text_from_data_is_escaped() {
        let mut a = alert(Status::Firing);
        a.scope.location = Some("<!channel>".into());
        a.scope.cdn = Some("a&b".into());
        a.summary = "device <https://evil.example|Grafana> carries 80% of it".into();
        let m = slack(&[a], None).to_string();
        for raw in ["<!channel>", "<https://evil", "a&b"] {
            assert!(!m.contains(raw), "{raw} unescaped in {m}");
        }
        for escaped in [
            "&lt;!channel&gt;",
            "&lt;https://evil.example|Grafana&gt;",
            "a&amp;b",
        ] {
            assert!(m.contains(escaped), "{escaped} missing in {m}");
        }
    }

    #[test]
    fn slack_message_is_readable_and_coloured() {
        let m = slack(
            &[alert(Status::Firing), alert(Status::Resolved)],
            Some("http://grafana/d/q?var-location={location}&var-cdn={cdn}&from={from_ms}"),
        );
        let text = m["text"].as_str().unwrap();
        assert!(text.starts_with(
            "FIRING critical: rebuffer_ratio_above_benchmark at IN/MH/Mumbai · cdn-a"
        ));
        assert!(text.ends_with("(+1 more)"));
        assert_eq!(m["attachments"][0]["color"], "#d40e0d");
        assert_eq!(m["attachments"][1]["color"], "#2eb67d");
        let fields = m["attachments"][0]["blocks"][1]["fields"].to_string();
        assert!(
            fields.contains("8.00 %") && fields.contains("2.00 %"),
            "{fields}"
        );
        let url = m["attachments"][0]["blocks"][3]["elements"][0]["url"]
            .as_str()
            .unwrap();
        assert_eq!(
            url,
            "http://grafana/d/q?var-location=IN%2FMH%2FMumbai&var-cdn=cdn-a&from=1699996340000"
        );
    }

    #[test]
    fn alertmanager_resolved_has_ends_at_not_after_now() {
        let v = alertmanager(
            &[alert(Status::Firing), alert(Status::Resolved)],
            None,
            1_700_000_100_000,
        );
        assert_eq!(
            v[0]["labels"]["alertname"],
            "rebuffer_ratio_above_benchmark"
        );
        assert_eq!(v[0]["labels"]["location"], "IN/MH/Mumbai");
        assert!(v[0].get("endsAt").is_none());
        assert_eq!(v[1]["endsAt"], "2023-11-14T22:15:00.000Z");
    }
}
