//! Notifications end to end, against real HTTP servers on loopback: the daemon reads simulated
//! incidents from a Kafka-protocol broker and delivers them through its outbox.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::receiver::{self, Sink};
use qos_sentinel::config::{ReceiverConfig, ReceiverKind, Secret};
use qos_sentinel::incident::{Alert, Status};
use qos_sentinel::notify::render;

/// A secret in Standard Webhooks' form (the specification's own example): its key is the
/// base64 after `whsec_`, for both signatures.
const HMAC_KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Standard Webhooks' verification, written from its specification (standard-webhooks.md,
/// "Verifying webhooks"), not from our code: the secret is base64 after an optional
/// `whsec_`; the signed content is `<webhook-id>.<webhook-timestamp>.<body>`;
/// `webhook-signature` is a space-separated list of `v1,<base64 of the HMAC-SHA256>`, any one
/// of which may match; the timestamp must be within the tolerance (5 minutes) of now.
fn standard_webhooks_verify(secret: &str, r: &receiver::Received, now: i64) -> bool {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::STANDARD;
    let header = |n: &str| r.header(n).unwrap_or_default();
    let Ok(key) = b64.decode(secret.strip_prefix("whsec_").unwrap_or(secret)) else {
        return false;
    };
    let Ok(ts) = header("webhook-timestamp").parse::<i64>() else {
        return false;
    };
    if (now - ts).abs() > 300 {
        return false;
    }
    let mut content = format!("{}.{ts}.", header("webhook-id")).into_bytes();
    content.extend_from_slice(&r.body);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(&content);
    let expected = b64.encode(mac.finalize().into_bytes());
    header("webhook-signature")
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

/// A receiver that takes state changes of any age (the tests' event times are simulated, long
/// past).
fn receiver(name: &str, kind: ReceiverKind, url: String) -> ReceiverConfig {
    let text = format!(
        "name = \"{name}\"\nkind = \"{kind}\"\nurl = \"{url}\"\nmax_age = \"0s\"\n",
        kind = match kind {
            ReceiverKind::Slack => "slack",
            ReceiverKind::Webhook => "webhook",
            ReceiverKind::Alertmanager => "alertmanager",
        }
    );
    toml::from_str(&text).unwrap()
}

/// Every state change on the alerts topic, as its idempotency key names it.
fn changes(alerts: &[Alert]) -> BTreeSet<String> {
    alerts
        .iter()
        .map(qos_sentinel::notify::change_key)
        .collect()
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_webhook_gets_every_change_exactly_once_signed_and_slack_gets_them_all() {
    let state = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(state.path());
    cfg.window.allowed_lateness = Duration::from_secs(10);
    cfg.http.listen = common::free_addr();
    let cluster = common::mock_cluster(&mut cfg, 4);
    let brokers = cluster.bootstrap_servers();

    let addr = common::free_addr();
    let sink = Sink::default();
    // 500s, then a 429 asking for a second's pause, then a 503: all retried.
    sink.script(&[(500, None), (500, None), (429, Some("1")), (503, None)]);
    receiver::serve(&addr, sink.clone()).await;
    let mut hook = receiver("hook", ReceiverKind::Webhook, format!("http://{addr}/hook"));
    hook.hmac_secret = Some(Secret::new(HMAC_KEY));
    let mut slack = receiver("slack", ReceiverKind::Slack, format!("http://{addr}/slack"));
    slack.link_template =
        Some("http://grafana/d/qos-viewer?var-location={location}&var-cdn={cdn}".into());
    cfg.notify.receivers = vec![hook, slack];

    let base = format!("http://{}", cfg.http.listen);
    let d = common::start_daemon(&cfg);
    common::feed_sim(&cfg, common::two_incident_sim()).await;

    let topic = cfg.kafka.alerts_topic.clone();
    let b = brokers.clone();
    let alerts = tokio::task::spawn_blocking(move || {
        common::settled_alerts(&b, &topic, Duration::from_secs(120), Duration::from_secs(3))
    })
    .await
    .unwrap();
    let want = changes(&alerts);
    assert!(
        want.iter().filter(|c| c.contains(":firing")).count() >= 2,
        "both incidents should fire: {want:?}"
    );

    let hook_keys = |s: &Sink| -> Vec<String> {
        s.accepted()
            .iter()
            .filter(|r| r.path == "/hook")
            .map(|r| {
                r.header(render::IDEMPOTENCY_HEADER)
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    wait_for(
        "every change at the webhook",
        Duration::from_secs(60),
        || hook_keys(&sink).into_iter().collect::<BTreeSet<_>>() == want,
    )
    .await;
    // Nothing more arrives for a while: no late duplicates from retries.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let got = hook_keys(&sink);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for k in &got {
        *counts.entry(k.as_str()).or_default() += 1;
    }
    assert!(
        counts.values().all(|n| *n == 1),
        "each change accepted exactly once: {counts:?}"
    );
    let hooks: Vec<_> = sink
        .received()
        .into_iter()
        .filter(|r| r.path == "/hook")
        .collect();
    let failed = hooks.iter().filter(|r| r.status >= 300).count();
    assert!(failed >= 1, "the script's errors hit the webhook");
    let now = qos_sentinel::notify::deliver::now_ms() / 1000;
    for r in &hooks {
        let ts = r
            .header(render::TIMESTAMP_HEADER)
            .expect("timestamp header");
        let sig = r
            .header(render::SIGNATURE_HEADER)
            .expect("signature header");
        let key = render::hmac_key(HMAC_KEY).expect("key");
        assert!(
            render::verify(&key, ts, sig, &r.body, now, 300),
            "signature verifies"
        );
        assert!(!render::verify(b"wrong key", ts, sig, &r.body, now, 300));
        // Standard Webhooks: the id it signs is the idempotency key; a verifier written from
        // the specification accepts it, and refuses another key, a changed body or id.
        assert_eq!(r.header("webhook-id"), r.header(render::IDEMPOTENCY_HEADER));
        assert!(
            standard_webhooks_verify(HMAC_KEY, r, now),
            "Standard Webhooks signature: {:?}",
            r.headers
        );
        assert!(!standard_webhooks_verify(
            "whsec_d3Jvbmcga2V5IGZvciB0ZXN0cw==",
            r,
            now
        ));
        let mut tampered = r.clone();
        tampered.body.push(b' ');
        assert!(!standard_webhooks_verify(HMAC_KEY, &tampered, now));
        for h in tampered.headers.iter_mut() {
            if h.0.eq_ignore_ascii_case("webhook-id") {
                h.1 = format!("{}:repeat-1", h.1);
            }
        }
        tampered.body.pop();
        assert!(!standard_webhooks_verify(HMAC_KEY, &tampered, now));
        // The body is the alert as on the alerts topic (docs/formats.md, Alerts).
        let a: Alert = serde_json::from_slice(&r.body).unwrap();
        assert!(alerts.contains(&a), "webhook body equals the topic's alert");
        assert_eq!(
            r.header(render::IDEMPOTENCY_HEADER),
            Some(qos_sentinel::notify::change_key(&a).as_str())
        );
    }
    // Per incident, firing is delivered before resolved.
    for id in alerts.iter().map(|a| &a.id) {
        let pos = |s: &str| got.iter().position(|k| k.starts_with(&format!("{id}:{s}")));
        if let (Some(f), Some(r)) = (pos("firing"), pos("resolved")) {
            assert!(f < r, "{id}: firing before resolved");
        }
    }

    // Slack: Block Kit messages, alerts that changed together in one message, all of them.
    let slack_msgs: Vec<_> = sink
        .accepted()
        .into_iter()
        .filter(|r| r.path == "/slack")
        .collect();
    let mut slack_seen = BTreeSet::new();
    for m in &slack_msgs {
        let v = m.json();
        assert!(
            v["text"]
                .as_str()
                .is_some_and(|t| t.contains("FIRING") || t.contains("RESOLVED"))
        );
        for att in v["attachments"].as_array().unwrap() {
            let ctx = att["blocks"][2]["elements"][0]["text"].as_str().unwrap();
            let id = ctx.split('`').nth(1).unwrap();
            let firing = att["color"] != "#2eb67d";
            slack_seen.insert(format!(
                "{id}:{}",
                if firing { "firing" } else { "resolved" }
            ));
            let url = att["blocks"][3]["elements"][0]["url"].as_str().unwrap();
            assert!(
                url.starts_with("http://grafana/d/qos-viewer?var-location="),
                "{url}"
            );
        }
    }
    let by_status: BTreeSet<String> = want
        .iter()
        .map(|c| c.replace(":firing:critical", ":firing"))
        .collect();
    assert_eq!(slack_seen, by_status, "Slack got every change");

    let m = common::scrape(&base).await;
    assert_eq!(
        common::metric(&m, "qos_sentinel_outbox_depth{receiver=\"hook\"}"),
        0.0,
        "{m}"
    );
    assert!(
        common::metric(
            &m,
            "qos_sentinel_deliveries_total{outcome=\"retried\",receiver=\"hook\"}"
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        common::metric(
            &m,
            "qos_sentinel_deliveries_total{outcome=\"delivered\",receiver=\"hook\"}"
        ),
        want.len() as f64
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_that_change_together_are_grouped_and_held_children_stay_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let addr = common::free_addr();
    let sink = Sink::default();
    receiver::serve(&addr, sink.clone()).await;
    let mut slack = receiver("slack", ReceiverKind::Slack, format!("http://{addr}/slack"));
    slack.hold_children = true;
    let hook = receiver("hook", ReceiverKind::Webhook, format!("http://{addr}/hook"));
    let cfg = qos_sentinel::config::NotifyConfig {
        receivers: vec![slack, hook],
        ..Default::default()
    };
    let registry = prometheus::Registry::new();
    let d = qos_sentinel::notify::deliver::Dispatcher::start(&cfg, dir.path(), &registry, None)
        .unwrap();
    // A CDN-wide incident and 44 location incidents under it, all in one close.
    let parent = Alert {
        id: "p".into(),
        scope: qos_sentinel::incident::Scope {
            prefix: None,
            location: None,
            cdn: Some("cdn-c".into()),
        },
        parent_id: None,
        cohort: None,
        impact: None,
        silenced_by: Vec::new(),
        ..child(0)
    };
    let mut batch = vec![parent.clone()];
    batch.extend((1..45).map(child));
    d.enqueue(&batch).unwrap();
    wait_for("all 45 at the webhook", Duration::from_secs(30), || {
        sink.accepted().iter().filter(|r| r.path == "/hook").count() == 45
    })
    .await;
    wait_for("Slack", Duration::from_secs(30), || {
        sink.accepted().iter().any(|r| r.path == "/slack")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slack_msgs: Vec<_> = sink
        .accepted()
        .into_iter()
        .filter(|r| r.path == "/slack")
        .collect();
    assert_eq!(
        slack_msgs.len(),
        1,
        "the parent alone: its children are held back"
    );
    assert_eq!(
        slack_msgs[0].json()["attachments"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Children resolve while the parent fires: held there too. Then the parent resolves and
    // a new batch of 45 unrelated changes arrives: Slack groups them 20 + 20 + 5.
    let resolved: Vec<Alert> = (1..45)
        .map(|i| Alert {
            status: Status::Resolved,
            ..child(i)
        })
        .collect();
    d.enqueue(&resolved).unwrap();
    d.enqueue(&[Alert {
        status: Status::Resolved,
        ..parent
    }])
    .unwrap();
    let fresh: Vec<Alert> = (100..145)
        .map(|i| Alert {
            parent_id: None,
            cohort: None,
            ..child(i)
        })
        .collect();
    d.enqueue(&fresh).unwrap();
    wait_for("Slack groups", Duration::from_secs(30), || {
        sink.accepted()
            .iter()
            .filter(|r| r.path == "/slack")
            .count()
            >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sizes: Vec<usize> = sink
        .accepted()
        .iter()
        .filter(|r| r.path == "/slack")
        .map(|r| r.json()["attachments"].as_array().unwrap().len())
        .collect();
    assert_eq!(
        sizes,
        vec![1, 1, 20, 20, 5],
        "parent, parent resolved, then the 45 in groups of 20"
    );
    assert_eq!(d.shutdown(Duration::from_secs(5)).await, 0);
}

fn child(i: usize) -> Alert {
    Alert {
        id: format!("c{i}"),
        status: Status::Firing,
        rule: "throughput_kbps_below_benchmark".into(),
        severity: qos_sentinel::detect::Severity::Warning,
        scope: qos_sentinel::incident::Scope::pair(&format!("IN/L{i}"), "cdn-c"),
        metric: qos_sentinel::detect::Metric::THROUGHPUT_KBPS,
        observed: 1200.0,
        expected: Some(5000.0),
        samples: 400,
        p_value: Some(1e-6),
        window_start: 1_767_290_400_000,
        window_end: 1_767_290_460_000,
        started_at: 1_767_290_340_000,
        resolved_at: None,
        summary: "Throughput a quarter of the benchmark".into(),
        parent_id: Some("p".into()),
        cohort: None,
        impact: None,
        silenced_by: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_kill_9_while_the_receiver_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.http.listen = common::free_addr();
    let cluster = common::mock_cluster(&mut cfg, 4);
    let brokers = cluster.bootstrap_servers();
    let addr = common::free_addr(); // nothing listens here yet
    let config = common::write_config(
        dir.path(),
        &cfg,
        &format!(
            "[[notify.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://{addr}/hook\"\nmax_age = \"0s\"\n"
        ),
    );
    let log = dir.path().join("daemon.log");
    let mut child = common::spawn_daemon(&config, &[("RUST_LOG", "info")], &log);
    common::feed_sim(&cfg, common::two_incident_sim()).await;
    let topic = cfg.kafka.alerts_topic.clone();
    let b = brokers.clone();
    let alerts = tokio::task::spawn_blocking(move || {
        common::settled_alerts(&b, &topic, Duration::from_secs(120), Duration::from_secs(2))
    })
    .await
    .unwrap();
    let want = changes(&alerts);
    assert!(!want.is_empty());
    let base = format!("http://{}", cfg.http.listen);
    let depth = common::metric(
        &common::scrape(&base).await,
        "qos_sentinel_outbox_depth{receiver=\"hook\"}",
    );
    assert!(
        depth >= 1.0,
        "deliveries wait in the outbox while the receiver is down ({depth})"
    );

    child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    child.wait().unwrap();

    let sink = Sink::default();
    receiver::serve(&addr, sink.clone()).await;
    let mut child = common::spawn_daemon(&config, &[("RUST_LOG", "info")], &log);
    let keys = || -> BTreeSet<String> {
        sink.accepted()
            .iter()
            .filter_map(|r| r.header(render::IDEMPOTENCY_HEADER).map(str::to_string))
            .collect()
    };
    let start = Instant::now();
    while !want.is_subset(&keys()) {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!(
                "after restart the receiver got {:?}, want {want:?}\n{}",
                keys(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_errors_or_metrics() {
    const URL_TOKEN: &str = "T0KEN-in-the-webhook-url";
    const SLACK_TOKEN: &str = "XOXB-slack-path-secret";
    const HMAC: &str = "hmac-secret-value-42";
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.http.listen = common::free_addr();
    let _cluster = common::mock_cluster(&mut cfg, 4);
    let addr = common::free_addr();
    let sink = Sink::default();
    sink.always(500);
    receiver::serve(&addr, sink.clone()).await;
    let closed = common::free_addr(); // connection refused: reqwest's error would name the URL
    let hmac_file = dir.path().join("hmac");
    std::fs::write(&hmac_file, format!("{HMAC}\n")).unwrap();
    let receivers = format!(
        "[[notify.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"env:HOOK_URL\"\nhmac_secret = \"file:{}\"\nmax_age = \"0s\"\n\
         [[notify.receivers]]\nname = \"slack\"\nkind = \"slack\"\nurl = \"http://{closed}/services/{SLACK_TOKEN}\"\nmax_age = \"0s\"\n",
        hmac_file.display()
    );
    let config = common::write_config(dir.path(), &cfg, &receivers);
    let hook_url = format!("http://{addr}/hook/{URL_TOKEN}");
    let log = dir.path().join("daemon.log");
    let envs = [("RUST_LOG", "debug"), ("HOOK_URL", hook_url.as_str())];
    let mut child = common::spawn_daemon(&config, &envs, &log);
    common::feed_sim(&cfg, common::two_incident_sim()).await;

    let base = format!("http://{}", cfg.http.listen);
    let start = Instant::now();
    let mut m = String::new();
    while start.elapsed() < Duration::from_secs(120) {
        m = common::scrape(&base).await;
        if common::metric(
            &m,
            "qos_sentinel_deliveries_total{outcome=\"retried\",receiver=\"hook\"}",
        ) >= 2.0
            && common::metric(
                &m,
                "qos_sentinel_deliveries_total{outcome=\"retried\",receiver=\"slack\"}",
            ) >= 2.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The webhook really got signed requests with the secret from the file.
    let r = sink
        .received()
        .into_iter()
        .next()
        .expect("the webhook was called");
    assert_eq!(r.path, format!("/hook/{URL_TOKEN}"));
    let now = qos_sentinel::notify::deliver::now_ms() / 1000;
    assert!(render::verify(
        HMAC.as_bytes(),
        r.header(render::TIMESTAMP_HEADER).unwrap(),
        r.header(render::SIGNATURE_HEADER).unwrap(),
        &r.body,
        now,
        300
    ));
    // SIGTERM: the shutdown path logs what is left in the outbox.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM: clean exit 0, got {status}");

    let check = Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args(["check-config"])
        .arg(&config)
        .env("HOOK_URL", &hook_url)
        .output()
        .unwrap();
    // A bad URL from the environment is reported without the URL.
    let bad = Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
        .args(["check-config"])
        .arg(&config)
        .env("HOOK_URL", format!("ftp://{URL_TOKEN}"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let bad_err = String::from_utf8_lossy(&bad.stderr).to_string();
    assert!(bad_err.contains("notify.receivers[0].url"), "{bad_err}");

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("retrying"),
        "the failures were logged:\n{logs}"
    );
    let everything = [
        logs,
        m,
        String::from_utf8_lossy(&check.stdout).to_string(),
        String::from_utf8_lossy(&check.stderr).to_string(),
        bad_err,
    ]
    .join("\n");
    for secret in [URL_TOKEN, SLACK_TOKEN, HMAC] {
        assert!(
            !everything.contains(secret),
            "secret {secret:?} leaked:\n{}",
            everything
                .lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_pages_nobody_for_the_past() {
    let dir = tempfile::tempdir().unwrap();
    let addr = common::free_addr();
    let sink = Sink::default();
    receiver::serve(&addr, sink.clone()).await;
    // The default max_age (15 min) on the webhook, as a user configures it.
    let text = format!("name = \"hook\"\nkind = \"webhook\"\nurl = \"http://{addr}/hook\"\n");
    let hook: ReceiverConfig = toml::from_str(&text).unwrap();
    let cfg = qos_sentinel::config::NotifyConfig {
        receivers: vec![hook],
        ..Default::default()
    };
    let registry = prometheus::Registry::new();
    let d = qos_sentinel::notify::deliver::Dispatcher::start(&cfg, dir.path(), &registry, None)
        .unwrap();
    let now = qos_sentinel::notify::deliver::now_ms();
    let at = |id: &str, status, window_end: i64| Alert {
        id: id.into(),
        status,
        window_start: window_end - 60_000,
        window_end,
        started_at: window_end - 120_000,
        parent_id: None,
        ..child(0)
    };
    let hour = 3_600_000;
    // Replayed hours: an incident that fired and resolved 3 h ago, one that fired 2 h ago and
    // resolves now (never paged: its resolution is not news either); then one of this minute.
    d.enqueue(&[at("old", Status::Firing, now - 3 * hour)])
        .unwrap();
    d.enqueue(&[at("old", Status::Resolved, now - 3 * hour + 300_000)])
        .unwrap();
    d.enqueue(&[at("long", Status::Firing, now - 2 * hour)])
        .unwrap();
    d.enqueue(&[at("long", Status::Resolved, now)]).unwrap();
    d.enqueue(&[at("fresh", Status::Firing, now - 30_000)])
        .unwrap();
    wait_for("the fresh alert", Duration::from_secs(30), || {
        !sink.accepted().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = sink
        .accepted()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, ["fresh"], "only this minute's change is sent");
    let m = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert_eq!(
        common::metric(
            &m,
            "qos_sentinel_deliveries_total{outcome=\"stale\",receiver=\"hook\"}"
        ),
        4.0,
        "{m}"
    );
    d.shutdown(Duration::from_secs(1)).await;
}
