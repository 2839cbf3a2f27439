//! Silences and maintenance windows through two running daemons (librdkafka's mock cluster,
//! real HTTP, the real CLI): writes need the token, a silence created on one instance holds on
//! the other (the silences topic), a silenced incident goes to the alerts topic marked but
//! pages no receiver, and pages when the silence ends if it still fires.

mod common;

use std::time::{Duration, Instant};

use common::receiver::{self, Sink};
use qos_sentinel::config::{ReceiverConfig, Secret};
use qos_sentinel::incident::{Alert, Status};
use qos_sentinel::sim::{IncidentKind, Injected, SimConfig, Simulator};

const TOKEN: &str = "s3cret-token-of-the-on-call";

fn cli(args: &[&str], token: &str) -> (bool, String) {
    common::cli(args, &[("QOS_SENTINEL_TOKEN", token)])
}

async fn post(base: &str, token: Option<&str>, body: &serde_json::Value) -> (u16, String) {
    let mut r = reqwest::Client::new()
        .post(format!("{base}/api/silences"))
        .json(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.expect("POST");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn listed(base: &str) -> serde_json::Value {
    reqwest::get(format!("{base}/api/silences"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

async fn wait_for(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn hooks_for(sink: &Sink, id: &str) -> Vec<serde_json::Value> {
    sink.accepted()
        .into_iter()
        .map(|r| r.json())
        .filter(|v| v["id"] == id)
        .collect()
}

/// The first firing alert at `location` on the alerts topic.
fn first_firing(brokers: &str, topic: &str, location: &str, limit: Duration) -> Option<Alert> {
    let c = common::tail(brokers, topic);
    let started = Instant::now();
    while started.elapsed() < limit {
        for m in common::read_until(&c, Duration::from_millis(500), |r| !r.is_empty()) {
            let a: Alert = serde_json::from_slice(m.value.as_deref().unwrap_or_default()).ok()?;
            if a.status == Status::Firing && a.scope.location.as_deref() == Some(location) {
                return Some(a);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_is_guarded_shared_and_pages_when_it_ends_on_a_firing_incident() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = common::test_config(&dir.path().join("a"));
    base.window.allowed_lateness = Duration::from_secs(10);
    let cluster = common::mock_cluster(&mut base, 2);
    let topic = format!("silences-{}", base.kafka.group_id);
    cluster.create_topic(&topic, 1, 1).expect("topic");
    base.kafka.silences_topic = Some(topic);

    // A: writes allowed (a token), no receivers. B: read-only, pages a webhook.
    let mut a = base.clone();
    a.http.listen = common::free_addr();
    a.http.token = Some(Secret::new(TOKEN));
    a.kafka.group_id = format!("{}-a", base.kafka.group_id);
    let mut b = base.clone();
    b.state.dir = dir.path().join("b");
    b.http.listen = common::free_addr();
    b.kafka.group_id = format!("{}-b", base.kafka.group_id);
    let hook_addr = common::free_addr();
    let sink = Sink::default();
    receiver::serve(&hook_addr, sink.clone()).await;
    let hook: ReceiverConfig = toml::from_str(&format!(
        "name = \"hook\"\nkind = \"webhook\"\nurl = \"http://{hook_addr}/hook\"\nmax_age = \"0s\""
    ))
    .expect("receiver");
    b.notify.receivers = vec![hook];
    let (url_a, url_b) = (
        format!("http://{}", a.http.listen),
        format!("http://{}", b.http.listen),
    );
    let da = common::start_daemon(&a);
    let db = common::start_daemon(&b);
    wait_for("both serve", Duration::from_secs(30), async || {
        reqwest::get(format!("{url_a}/api/silences")).await.is_ok()
            && reqwest::get(format!("{url_b}/api/silences")).await.is_ok()
    })
    .await;

    let start = 1_767_290_400_000;
    let mut sc = SimConfig::quiet(3, start, 20 * 60_000);
    sc.locations = 4;
    sc.cdns = 2;
    sc.peak_sessions = 600;
    let loc = qos_sentinel::sim::location_names(sc.locations)[2].clone();

    // Writes: without a token, with a wrong one, on an instance without one: refused.
    let ask = serde_json::json!({
        "matchers": ["cdn=cdn-b", format!("location={loc}")],
        "duration": "1h", "created_by": "ana", "comment": "CDN maintenance",
    });
    assert_eq!(post(&url_a, None, &ask).await.0, 401);
    assert_eq!(
        post(&url_a, Some("s3cret-token-of-the-on-cal1"), &ask)
            .await
            .0,
        401
    );
    let (code, body) = post(&url_b, Some(TOKEN), &ask).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("http.token"), "{body}");
    assert!(
        listed(&url_a).await["silences"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // A bad request names its field.
    let (code, body) = post(
        &url_a,
        Some(TOKEN),
        &serde_json::json!({
            "matchers": ["cdn-b"], "duration": "1h", "created_by": "ana", "comment": "x"
        }),
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.starts_with("matchers (cdn-b)"), "{body}");

    // With the token, through the CLI: a maintenance window of 30 s from now on cdn-b at loc.
    let (ok, out) = cli(
        &[
            "silence",
            "add",
            "--matcher",
            "cdn=cdn-b",
            "--matcher",
            &format!("location={loc}"),
            "--duration",
            "30s",
            "--by",
            "ana",
            "--comment",
            "CDN maintenance",
            "--url",
            &url_a,
        ],
        TOKEN,
    );
    assert!(ok, "{out}");
    let id = out.split_whitespace().next().unwrap().to_string();
    let ends = Instant::now() + Duration::from_secs(30);
    // A second silence, expired at once: listed as expired, holding nothing.
    let (ok, out) = cli(
        &[
            "silence",
            "add",
            "--matcher",
            "cdn=cdn-a",
            "--duration",
            "2h",
            "--by",
            "bo",
            "--comment",
            "test",
            "--url",
            &url_a,
        ],
        TOKEN,
    );
    assert!(ok, "{out}");
    let other = out.split_whitespace().next().unwrap().to_string();
    let (ok, out) = cli(&["silence", "expire", &other, "--url", &url_a], TOKEN);
    assert!(ok && out.contains("expired"), "{out}");
    let (ok, out) = cli(
        &["silence", "expire", &other, "--url", &url_a],
        "wrong-token-wrong-token",
    );
    assert!(!ok && out.contains("401"), "{out}");

    // B learns both from the topic.
    wait_for("B sees A's silences", Duration::from_secs(20), async || {
        let v = listed(&url_b).await;
        let s = v["silences"].as_array().unwrap();
        s.iter()
            .any(|x| x["id"] == id.as_str() && x["state"] == "active")
            && s.iter()
                .any(|x| x["id"] == other.as_str() && x["state"] == "expired")
    })
    .await;
    let (ok, out) = cli(&["silence", "list", "--url", &url_b], "");
    assert!(ok && out.contains(&id) && !out.contains(&other), "{out}");

    // A failure spike at loc on cdn-b, still going when the traffic ends: it keeps firing.
    sc.incidents = vec![Injected {
        kind: IncidentKind::FailureSpike,
        location: loc.clone(),
        cdn: "cdn-b".into(),
        start: start + 6 * 60_000,
        end: start + 60 * 60_000,
        asn: None,
    }];
    common::feed_sim(&b, Simulator::new(sc)).await;

    // It fires during the window: on the alerts topic, marked; no page.
    let (brokers, alerts_topic) = (b.kafka.brokers.clone(), b.kafka.alerts_topic.clone());
    let at = loc.clone();
    let fired: Alert = tokio::task::spawn_blocking(move || {
        first_firing(&brokers, &alerts_topic, &at, Duration::from_secs(25))
    })
    .await
    .unwrap()
    .expect("the incident fired");
    assert!(
        Instant::now() < ends,
        "the incident fired after the window ended: test too slow"
    );
    assert_eq!(fired.silenced_by, vec![id.clone()], "{fired:?}");
    assert!(
        hooks_for(&sink, &fired.id).is_empty(),
        "paged while silenced"
    );
    let live: serde_json::Value = reqwest::get(format!("{url_b}/api/incidents"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        live["firing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == fired.id.as_str())
    );
    tokio::time::sleep_until((ends - Duration::from_secs(1)).into()).await;
    assert!(
        hooks_for(&sink, &fired.id).is_empty(),
        "paged before the window ended"
    );

    // The window ends with the incident still firing: B pages it then, once.
    wait_for(
        "the page after the window",
        Duration::from_secs(20),
        async || !hooks_for(&sink, &fired.id).is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pages = hooks_for(&sink, &fired.id);
    assert_eq!(pages.len(), 1, "{pages:?}");
    assert_eq!(pages[0]["status"], "firing");
    assert!(pages[0]["silenced_by"].is_null(), "{}", pages[0]);
    assert!(
        pages[0]["link"]
            .as_str()
            .is_some_and(|l| l.ends_with(&format!("/incidents/{}", fired.id))),
        "{}",
        pages[0]
    );
    let scraped = common::scrape(&url_b).await;
    assert!(
        common::metric(
            &scraped,
            "qos_sentinel_deliveries_total{outcome=\"silenced\",receiver=\"hook\"}"
        ) >= 1.0
    );
    let scraped = common::scrape(&url_a).await;
    assert_eq!(
        common::metric(
            &scraped,
            "qos_sentinel_silence_writes_total{outcome=\"unauthorized\"}"
        ),
        3.0
    );

    // Silences persist across a restart.
    da.stop().await;
    let da = common::start_daemon(&a);
    wait_for("A lists them again", Duration::from_secs(20), async || {
        reqwest::get(format!("{url_a}/api/silences")).await.is_ok()
            && listed(&url_a).await["silences"].as_array().unwrap().len() == 2
    })
    .await;
    da.stop().await;
    db.stop().await;
}
