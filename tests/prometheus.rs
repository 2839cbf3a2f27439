//! The operators' view checked against the real thing: a real Prometheus (Debian package
//! prometheus) scrapes a daemon fed by the simulator with the rules from alerts/ loaded, and
//! every PromQL expression of every Grafana panel and every rule is run through its query API.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::receiver::{self, Sink};
use qos_sentinel::config::ReceiverConfig;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `promtool` with `args`, run in alerts/; panics with its output unless it succeeds.
fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut c = Command::new("promtool")
        .args(args)
        .current_dir(format!("{ROOT}/alerts"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    let out = c.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    common::need("promtool", "prometheus");
    promtool(&["check", "rules", "qos-sentinel.rules.yml"], None);
    let out = promtool(&["test", "rules", "qos-sentinel.rules.test.yml"], None);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Template variables set to "All".
fn all(e: &str) -> String {
    e.replace("$location", ".*")
        .replace("$country", ".*")
        .replace("$cdn", ".*")
        .replace("$instance", ".*")
        .replace("$__rate_interval", "1m")
}

/// Every `expr` in a Grafana dashboard's panels and variables, with template variables set
/// to "All"; and checks that the dashboard imports into any Grafana (every query on the
/// `datasource` variable, no fixed uid) and filters every panel by its `instance` variable.
fn dashboard_exprs(path: &str) -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "{path}: a Prometheus data source variable"
    );
    assert!(
        vars.iter().any(|v| v["name"] == "instance"),
        "{path}: an instance variable"
    );
    let uses_variable = |ds: &Value| ds["uid"] == "${datasource}";
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap();
        assert!(
            uses_variable(&p["datasource"]),
            "{path}: {title}: fixed data source"
        );
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            assert!(
                uses_variable(&t["datasource"]),
                "{path}: {title}: fixed data source"
            );
            assert!(
                e.contains("instance=~\"$instance\""),
                "{path}: {title}: {e} ignores $instance"
            );
            out.push((format!("{path}: {title}"), all(e)));
        }
    }
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert!(
            uses_variable(&v["datasource"]),
            "{path}: variable {}",
            v["name"]
        );
        // label_values(metric, label) → the metric must have series with that label.
        let q = v["query"]["query"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(m, _)| all(m.trim()))
            .unwrap();
        out.push((format!("{path}: variable {}", v["name"]), inner));
    }
    out
}

/// A dashboard's annotation queries, variables set to "All".
fn annotation_exprs(path: &str) -> Vec<(String, String)> {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    d["annotations"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| {
            assert_eq!(
                a["datasource"]["uid"], "${datasource}",
                "{path}: annotation"
            );
            Some((
                format!("{path}: annotation {}", a["name"]),
                all(a["expr"].as_str()?),
            ))
        })
        .collect()
}

/// Metric names an expression refers to (identifiers that are series, not functions).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut cur = String::new();
    for ch in expr.chars().chain(std::iter::once(' ')) {
        if ch.is_ascii_alphanumeric() || ch == '_' || ch == ':' {
            cur.push(ch);
        } else {
            if (cur.starts_with("qos_sentinel_") || cur.starts_with("process_") || cur == "up")
                && ch != '('
            {
                names.push(cur.clone());
            }
            cur.clear();
        }
    }
    names
}

async fn query(base: &str, expr: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_rule_expression_returns_data_in_a_real_prometheus() {
    common::need("prometheus", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.window.allowed_lateness = std::time::Duration::from_secs(10);
    cfg.http.listen = common::free_addr();
    let _cluster = common::mock_cluster(&mut cfg, 4);
    // A receiver, so delivery metrics have series; it fails once so failure panels do too.
    let hook_addr = common::free_addr();
    let sink = Sink::default();
    sink.script(&[(400, None)]);
    receiver::serve(&hook_addr, sink.clone()).await;
    let hook: ReceiverConfig = toml::from_str(&format!(
        "name = \"hook\"\nkind = \"webhook\"\nurl = \"http://{hook_addr}/\"\nmax_age = \"0s\"\n"
    ))
    .unwrap();
    cfg.notify.receivers = vec![hook];

    let prom_addr = common::free_addr();
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {ROOT}/alerts/qos-sentinel.rules.yml\n\
             scrape_configs:\n  - job_name: qos-sentinel\n    static_configs:\n      - targets: ['{}']\n",
            cfg.http.listen
        ),
    )
    .unwrap();
    let _prom = common::Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom = format!("http://{prom_addr}");

    let d = common::start_daemon(&cfg);
    common::feed_sim(&cfg, common::two_incident_sim()).await;
    let topic = cfg.kafka.alerts_topic.clone();
    let brokers = cfg.kafka.brokers.clone();
    tokio::task::spawn_blocking(move || {
        common::settled_alerts(
            &brokers,
            &topic,
            Duration::from_secs(120),
            Duration::from_secs(2),
        )
    })
    .await
    .unwrap();

    // The exposition passes promtool's linter.
    let text = common::scrape(&format!("http://{}", cfg.http.listen)).await;
    let lint = promtool(&["check", "metrics"], Some(&text));
    assert!(
        !lint.contains("counter metrics should have \"_total\""),
        "{lint}"
    );

    // Wait until Prometheus has a few scrapes of everything, and has loaded the rules.
    let start = Instant::now();
    loop {
        let r = query(&prom, "count_over_time(qos_sentinel_ready[1m])").await;
        let n = r["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if n >= 5.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Prometheus is not scraping: {r}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let viewer = format!("{ROOT}/grafana/dashboards/viewer-quality.json");
    let annotations = annotation_exprs(&viewer);
    assert!(
        !annotations.is_empty(),
        "incident annotations on the viewer timelines"
    );
    let mut exprs = dashboard_exprs(&viewer);
    exprs.extend(dashboard_exprs(&format!(
        "{ROOT}/grafana/dashboards/service-health.json"
    )));
    assert!(exprs.len() >= 30, "{} expressions", exprs.len());
    let mut failures = Vec::new();
    for (what, e) in &exprs {
        let r = query(&prom, e).await;
        if r["status"] != "success" {
            failures.push(format!("{what}: {e}: invalid: {r}"));
        } else if r["data"]["result"].as_array().is_none_or(|a| a.is_empty()) {
            failures.push(format!("{what}: {e}: returns nothing"));
        }
    }

    // Annotations mark when incidents fired: valid, on series that exist (whether one fires
    // at the moment of the query depends on the moment).
    for (what, e) in &annotations {
        let r = query(&prom, e).await;
        if r["status"] != "success" {
            failures.push(format!("{what}: {e}: invalid: {r}"));
        }
        for name in metric_names(e) {
            let q = query(&prom, &name).await;
            if q["data"]["result"].as_array().is_none_or(|a| a.is_empty()) {
                failures.push(format!("{what}: {name} has no series"));
            }
        }
    }

    // Rules as Prometheus loaded them: all healthy, every expression valid, and every series
    // each one reads exists (an alert's condition itself is false while all is well).
    let rules: Value = reqwest::get(format!("{prom}/api/v1/rules"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), 7, "all rules loaded: {rules}");
    for r in loaded {
        let (name, e) = (r["name"].as_str().unwrap(), r["query"].as_str().unwrap());
        if r["health"] == "err" {
            failures.push(format!("rule {name}: {}", r["lastError"]));
        }
        let q = query(&prom, e).await;
        if q["status"] != "success" {
            failures.push(format!("rule {name}: {e}: invalid: {q}"));
        }
        for m in metric_names(e) {
            let q = query(&prom, &format!("count({m})")).await;
            if q["data"]["result"].as_array().is_none_or(|a| a.is_empty()) {
                failures.push(format!("rule {name}: reads {m}, which has no series"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    d.stop().await;
}
