//! The incident history of a running daemon (librdkafka's mock cluster, real HTTP, real
//! files): every state change on the alerts topic is kept and found again by status, scope,
//! incident and page, after a restart too, over `/api/incidents?...` and through
//! `qos-sentinel incidents list|show`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use qos_sentinel::history::Page;
use qos_sentinel::incident::Status;

async fn get(base: &str, query: &str) -> (u16, String) {
    let r = reqwest::get(format!("{base}/api/incidents?{query}"))
        .await
        .expect("GET");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn page(base: &str, query: &str) -> Page {
    let (code, body) = get(base, query).await;
    assert_eq!(code, 200, "{query}: {body}");
    serde_json::from_str(&body).expect("a page")
}

fn changes(p: &Page) -> BTreeSet<(String, Status)> {
    p.changes.iter().map(|a| (a.id.clone(), a.status)).collect()
}

fn cli(args: &[&str]) -> (bool, String) {
    common::cli(args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_change_is_kept_and_found_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.http.listen = common::free_addr();
    common::mock_cluster(&mut cfg, 4);
    let base = format!("http://{}", cfg.http.listen);
    let daemon = common::start_daemon(&cfg);
    common::feed_sim(&cfg, common::two_incident_sim()).await;
    let (b, t) = (cfg.kafka.brokers.clone(), cfg.kafka.alerts_topic.clone());
    let alerts = tokio::task::spawn_blocking(move || {
        common::settled_alerts(&b, &t, Duration::from_secs(120), Duration::from_secs(3))
    })
    .await
    .unwrap();
    let want: BTreeSet<(String, Status)> =
        alerts.iter().map(|a| (a.id.clone(), a.status)).collect();
    assert!(
        want.iter().filter(|(_, s)| *s == Status::Resolved).count() >= 2,
        "{want:?}"
    );

    let all = page(&base, "limit=1000").await;
    assert_eq!(
        changes(&all),
        want,
        "the history holds what the alerts topic holds"
    );
    assert!(all.next.is_none());
    let resolved = page(&base, "status=resolved").await;
    assert!(
        resolved
            .changes
            .iter()
            .all(|a| a.status == Status::Resolved)
    );
    assert_eq!(
        resolved.changes.len(),
        want.iter().filter(|(_, s)| *s == Status::Resolved).count()
    );
    let cdn = alerts[0].scope.cdn.clone().expect("a CDN");
    let of_cdn = page(&base, &format!("scope=cdn%3D{cdn}&limit=1000")).await;
    assert!(!of_cdn.changes.is_empty());
    assert!(
        of_cdn
            .changes
            .iter()
            .all(|a| a.scope.cdn.as_deref() == Some(cdn.as_str()))
    );
    // Page by page, one change each: all of them, once.
    let mut paged = BTreeSet::new();
    let mut query = "limit=1".to_string();
    loop {
        let p = page(&base, &query).await;
        assert!(p.changes.len() <= 1);
        paged.extend(changes(&p));
        match p.next {
            Some(c) => query = format!("limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, want);
    let (code, body) = get(&base, "status=burning").await;
    assert_eq!(
        (code, body.contains("status (burning)")),
        (400, true),
        "{body}"
    );
    let (code, body) = get(&base, "colour=red").await;
    assert_eq!(
        (code, body.contains("unknown parameter colour")),
        (400, true),
        "{body}"
    );
    // Without parameters: the live page's JSON, as before.
    let (code, live) = get(&base, "").await;
    assert!(code == 200 && live.contains("\"firing\""), "{live}");
    daemon.stop().await;

    // A restart on the same state: the same history.
    let daemon = common::start_daemon(&cfg);
    let start = std::time::Instant::now();
    let again = loop {
        if let Ok(r) = reqwest::get(format!("{base}/api/incidents?limit=1000")).await
            && r.status().is_success()
        {
            break r.json::<Page>().await.expect("page");
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(changes(&again), want, "kept across the restart");
    // The live page's recently resolved come back from it too.
    let (_, live) = get(&base, "").await;
    let live: serde_json::Value = serde_json::from_str(&live).expect("live JSON");
    let recent: BTreeSet<&str> = live["recently_resolved"]
        .as_array()
        .expect("recently_resolved")
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    let resolved_ids: BTreeSet<&str> = want
        .iter()
        .filter(|(_, s)| *s == Status::Resolved)
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(
        recent, resolved_ids,
        "the live page remembers the resolved after a restart"
    );

    // The command line, against the running daemon.
    let (ok, out) = cli(&["incidents", "list", "--url", &base, "--status", "resolved"]);
    assert!(ok, "{out}");
    for (id, _) in want.iter().filter(|(_, s)| *s == Status::Resolved) {
        assert!(out.contains(id.as_str()), "{id} missing:\n{out}");
    }
    assert!(!out.contains("FIRING"), "{out}");
    let id = &alerts[0].id;
    let (ok, out) = cli(&["incidents", "show", id, "--url", &base]);
    assert!(ok, "{out}");
    let firing = out.find("FIRING").expect(&out);
    let resolved_at = out.find("RESOLVED").expect(&out);
    assert!(firing < resolved_at, "oldest first:\n{out}");
    let (ok, out) = cli(&["incidents", "show", "0000000000000000", "--url", &base]);
    assert!(!ok && out.contains("no incident 0000000000000000"), "{out}");
    daemon.stop().await;
}

/// A group of two on one report partition: the owner announces every change, the other owns
/// nothing; both answer with the group's whole history (each follows the alerts topic), each
/// change once (the owner announced it and read it back). Before, the second's history was
/// empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_of_a_group_holds_the_groups_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("unused"));
    common::mock_cluster(&mut cfg, 1);
    let mut members = Vec::new();
    let mut bases = Vec::new();
    for name in ["a", "b"] {
        let mut c = cfg.clone();
        c.state.dir = dir.path().join(name);
        c.http.listen = common::free_addr();
        bases.push(format!("http://{}", c.http.listen));
        members.push(common::start_daemon(&c));
    }
    common::feed_sim(&cfg, common::two_incident_sim()).await;
    let (b, t) = (cfg.kafka.brokers.clone(), cfg.kafka.alerts_topic.clone());
    let alerts = tokio::task::spawn_blocking(move || {
        common::settled_alerts(&b, &t, Duration::from_secs(120), Duration::from_secs(3))
    })
    .await
    .unwrap();
    let want: BTreeSet<(String, Status)> =
        alerts.iter().map(|a| (a.id.clone(), a.status)).collect();
    assert!(want.len() >= 4, "{want:?}");
    for base in &bases {
        let start = std::time::Instant::now();
        loop {
            let p = page(base, "limit=1000").await;
            if changes(&p) == want {
                assert_eq!(p.changes.len(), alerts.len(), "each change once: {p:#?}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{base}: {:?} vs {want:?}",
                changes(&p)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    for m in members {
        m.stop().await;
    }
}
