//! A real Prometheus Alertmanager (Debian package prometheus-alertmanager) takes qos-sentinel's
//! alerts through its v2 API, lists the firing one, routes it to its own webhook receiver,
//! then shows it resolved.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::receiver::{self, Sink};
use qos_sentinel::config::NotifyConfig;
use qos_sentinel::detect::{Metric, Severity};
use qos_sentinel::incident::{Alert, Scope, Status};
use qos_sentinel::notify::deliver::{Dispatcher, now_ms};

const BIN: &str = "prometheus-alertmanager";

fn alert(status: Status, started_at: i64) -> Alert {
    Alert {
        id: format!("{:016x}", started_at),
        status,
        rule: "failure_rate_above_benchmark".into(),
        severity: Severity::Critical,
        scope: Scope::pair("IN/MH/Mumbai", "cdn-a"),
        metric: Metric::FAILURE_RATE,
        observed: 0.25,
        expected: Some(0.01),
        samples: 320,
        p_value: Some(1e-12),
        window_start: started_at + 60_000,
        window_end: started_at + 120_000,
        started_at,
        resolved_at: (status == Status::Resolved).then_some(started_at + 180_000),
        summary: "Playback failures at 25 % against a 1 % benchmark".into(),
        parent_id: None,
        cohort: None,
        impact: None,
        silenced_by: Vec::new(),
    }
}

async fn am_alerts(base: &str) -> Vec<serde_json::Value> {
    match reqwest::get(format!("{base}/api/v2/alerts")).await {
        Ok(r) => r.json::<Vec<serde_json::Value>>().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A real Alertmanager routing every alert to `hook_addr`, ready; killed when dropped.
async fn start_alertmanager(dir: &std::path::Path, hook_addr: &str) -> (common::Killed, String) {
    start_alertmanager_with(dir, hook_addr, "5m").await
}

/// [`start_alertmanager`] with a `resolve_timeout` of its own: how long Alertmanager keeps an
/// alert without `endsAt` active unless it is posted again.
async fn start_alertmanager_with(
    dir: &std::path::Path,
    hook_addr: &str,
    resolve_timeout: &str,
) -> (common::Killed, String) {
    let am_config = dir.join("alertmanager.yml");
    std::fs::write(
        &am_config,
        format!(
            "global:\n  resolve_timeout: {resolve_timeout}\n\
             route:\n  receiver: hook\n  group_by: ['incident_id']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: hook\n    webhook_configs:\n      - url: http://{hook_addr}/am\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    let am_addr = common::free_addr();
    let child = common::Killed(
        Command::new(BIN)
            .arg(format!("--config.file={}", am_config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={am_addr}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let am = format!("http://{am_addr}");
    wait_for("Alertmanager ready", || async {
        reqwest::get(format!("{am}/-/ready"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    (child, am)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_lists_the_firing_alert_routes_it_and_resolves_it() {
    common::need(BIN, "prometheus-alertmanager");
    let dir = tempfile::tempdir().unwrap();
    let hook_addr = common::free_addr();
    let sink = Sink::default();
    receiver::serve(&hook_addr, sink.clone()).await;
    let (_am, am) = start_alertmanager(dir.path(), &hook_addr).await;

    let cfg: NotifyConfig = toml::from_str(&format!(
        "[[receivers]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"{am}\"\n\
         link_template = \"http://grafana/d/qos-viewer?var-location={{location}}\"\n"
    ))
    .unwrap();
    let registry = prometheus::Registry::new();
    let d = Dispatcher::start(&cfg, &dir.path().join("state"), &registry, None).unwrap();
    let started = now_ms() - 300_000;
    let firing = alert(Status::Firing, started);
    d.enqueue(std::slice::from_ref(&firing)).unwrap();

    let id = firing.id.clone();
    wait_for("Alertmanager lists the alert as active", || {
        let (am, id) = (am.clone(), id.clone());
        async move {
            am_alerts(&am).await.iter().any(|a| {
                a["labels"]["incident_id"] == id.as_str() && a["status"]["state"] == "active"
            })
        }
    })
    .await;
    let listed = am_alerts(&am).await;
    let a = listed
        .iter()
        .find(|a| a["labels"]["incident_id"] == id.as_str())
        .unwrap();
    assert_eq!(a["labels"]["alertname"], "failure_rate_above_benchmark");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["location"], "IN/MH/Mumbai");
    assert_eq!(a["labels"]["cdn"], "cdn-a");
    assert!(
        a["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("25 %")
    );
    assert_eq!(
        a["generatorURL"],
        "http://grafana/d/qos-viewer?var-location=IN%2FMH%2FMumbai"
    );

    let notified = |state: &'static str| {
        let (sink, id) = (sink.clone(), id.clone());
        move || {
            let (sink, id) = (sink.clone(), id.clone());
            async move {
                sink.received().iter().any(|r| {
                    let v = r.json();
                    v["status"] == state
                        && v["alerts"].as_array().is_some_and(|l| {
                            l.iter().any(|a| {
                                a["labels"]["incident_id"] == id.as_str() && a["status"] == state
                            })
                        })
                })
            }
        }
    };
    wait_for("Alertmanager routes the firing alert", notified("firing")).await;

    d.enqueue(&[alert(Status::Resolved, started)]).unwrap();
    wait_for("Alertmanager sends it resolved", notified("resolved")).await;
    wait_for("Alertmanager no longer lists it active", || {
        let (am, id) = (am.clone(), id.clone());
        async move {
            !am_alerts(&am).await.iter().any(|a| {
                a["labels"]["incident_id"] == id.as_str() && a["status"]["state"] == "active"
            })
        }
    })
    .await;
    assert_eq!(d.shutdown(Duration::from_secs(1)).await, 0);
}

/// Active alerts Alertmanager lists for an incident, by their severity label.
async fn active_severities(am: &str, id: &str) -> Vec<String> {
    am_alerts(am)
        .await
        .iter()
        .filter(|a| a["labels"]["incident_id"] == id && a["status"]["state"] == "active")
        .filter_map(|a| a["labels"]["severity"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_replaces_the_warning_in_alertmanager() {
    common::need(BIN, "prometheus-alertmanager");
    let dir = tempfile::tempdir().unwrap();
    let hook_addr = common::free_addr();
    receiver::serve(&hook_addr, Sink::default()).await;
    let (_am, am) = start_alertmanager(dir.path(), &hook_addr).await;
    let cfg: NotifyConfig = toml::from_str(&format!(
        "[[receivers]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"{am}\"\n"
    ))
    .unwrap();
    let registry = prometheus::Registry::new();
    let d = Dispatcher::start(&cfg, &dir.path().join("state"), &registry, None).unwrap();
    let started = now_ms() - 300_000;
    let mut warning = alert(Status::Firing, started);
    warning.severity = Severity::Warning;
    let id = warning.id.clone();
    d.enqueue(std::slice::from_ref(&warning)).unwrap();
    wait_for("the warning is active", || {
        let (am, id) = (am.clone(), id.clone());
        async move { active_severities(&am, &id).await == ["warning"] }
    })
    .await;

    // Severity is an Alertmanager label: the critical alert is another alert there, and the
    // warning must end with it, not linger until Alertmanager's resolve_timeout.
    let mut critical = alert(Status::Firing, started);
    critical.window_start += 180_000;
    critical.window_end += 180_000;
    d.enqueue(std::slice::from_ref(&critical)).unwrap();
    wait_for("only the critical alert is active", || {
        let (am, id) = (am.clone(), id.clone());
        async move { active_severities(&am, &id).await == ["critical"] }
    })
    .await;

    d.enqueue(&[alert(Status::Resolved, started)]).unwrap();
    wait_for("nothing of the incident is active", || {
        let (am, id) = (am.clone(), id.clone());
        async move { active_severities(&am, &id).await.is_empty() }
    })
    .await;
    assert_eq!(d.shutdown(Duration::from_secs(1)).await, 0);
}

/// Whether Alertmanager lists an active alert of `id`.
async fn active(am: &str, id: &str) -> bool {
    !active_severities(am, id).await.is_empty()
}

/// Refreshes come from the engine's restored incidents, not from memory: the daemon is
/// killed (SIGKILL) while an incident fires and comes back only after Alertmanager's
/// `resolve_timeout` has resolved the alert by itself; the restarted daemon posts it again
/// before any new input, and ends it when the incident resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_the_resolve_timeout_lists_the_firing_incident_again() {
    common::need(BIN, "prometheus-alertmanager");
    let dir = tempfile::tempdir().unwrap();
    let hook_addr = common::free_addr();
    let sink = Sink::default();
    receiver::serve(&hook_addr, sink.clone()).await;
    let (_am, am) = start_alertmanager_with(dir.path(), &hook_addr, "4s").await;

    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.http.listen = common::free_addr();
    let cluster = common::mock_cluster(&mut cfg, 1);
    let k = cfg.kafka.clone();
    let p = common::producer(&cluster.bootstrap_servers());
    common::mumbai_benchmarks(&p, &k.benchmarks_topic);
    common::mumbai_windows(&p, &k.reports_topic, 0..3, false);
    common::mumbai_windows(&p, &k.reports_topic, 3..10, true);
    let receivers = format!(
        "[[notify.receivers]]\nname = \"am\"\nkind = \"alertmanager\"\nurl = \"{am}\"\nrepeat_interval = \"1s\"\n"
    );
    let config = common::write_config(dir.path(), &cfg, &receivers);
    let log = dir.path().join("daemon.log");
    let spawn = || common::Killed(common::spawn_daemon(&config, &[("RUST_LOG", "info")], &log));
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    let mut daemon = spawn();
    let alerts = common::tail(&k.brokers, &k.alerts_topic);
    let first = tokio::task::block_in_place(|| {
        common::read_until(&alerts, Duration::from_secs(90), |r| !r.is_empty())
    });
    let fired: Alert = serde_json::from_slice(first[0].value.as_deref().expect("alert")).unwrap();
    assert_eq!(fired.status, Status::Firing, "{}", logs());
    let id = fired.id.clone();
    wait_for("Alertmanager lists the incident", || active(&am, &id)).await;
    daemon.0.kill().unwrap(); // SIGKILL, while it fires
    daemon.0.wait().unwrap();

    // Nobody refreshes it: Alertmanager resolves it by itself.
    wait_for("Alertmanager times the alert out", || async {
        !active(&am, &id).await
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!active(&am, &id).await);

    // Back, with no new input: the incident is still firing in its restored state.
    let _daemon = spawn();
    wait_for(
        "the restarted daemon posts the firing incident again",
        || active(&am, &id),
    )
    .await;
    // And keeps it there past another timeout.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        active(&am, &id).await,
        "refreshed after the restart\n{}",
        logs()
    );

    common::mumbai_windows(&p, &k.reports_topic, 10..20, false);
    wait_for("the resolution ends it in Alertmanager", || async {
        !active(&am, &id).await
    })
    .await;
    let all = tokio::task::block_in_place(|| {
        common::read_until(&alerts, Duration::from_secs(30), |r| {
            r.iter().any(|m| {
                m.value.as_deref().is_some_and(|v| {
                    serde_json::from_slice::<Alert>(v).is_ok_and(|a| a.status == Status::Resolved)
                })
            })
        })
    });
    let changes: Vec<(String, Status)> = first
        .iter()
        .chain(&all)
        .filter_map(|m| serde_json::from_slice::<Alert>(m.value.as_deref()?).ok())
        .map(|a| (a.id, a.status))
        .collect();
    assert_eq!(
        changes,
        [(id.clone(), Status::Firing), (id, Status::Resolved)],
        "one firing, one resolution on the alerts topic: the restart raised nothing new\n{}",
        logs()
    );
}
