//! The live page in a real browser (headless Chromium, Debian package chromium): it renders
//! the firing incident and the worst keys from /api/incidents.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use qos_sentinel::sim::{IncidentKind, Injected, SimConfig, Simulator};

const BROWSER: &str = "chromium";

fn chromium(url: &str, extra: &[&str]) -> std::process::Output {
    Command::new(BROWSER)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium")
}

/// Pixels close to `rgb` in a decoded RGB(A) PNG.
fn pixels_like(path: &std::path::Path, rgb: [u8; 3]) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    assert!(step >= 3, "colour screenshot");
    buf[..info.buffer_size()]
        .chunks(step)
        .filter(|p| (0..3).all(|i| p[i].abs_diff(rgb[i]) <= 12))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_page_renders_the_firing_incident_in_a_real_browser() {
    common::need(BROWSER, "chromium");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::test_config(&dir.path().join("state"));
    cfg.window.allowed_lateness = Duration::from_secs(10);
    cfg.http.listen = common::free_addr();
    let _cluster = common::mock_cluster(&mut cfg, 2);
    let d = common::start_daemon(&cfg);

    // A failure spike that is still going on when the traffic ends: it stays firing.
    let start = 1_767_290_400_000;
    let mut sc = SimConfig::quiet(3, start, 20 * 60_000);
    sc.locations = 4;
    sc.cdns = 2;
    sc.peak_sessions = 600;
    let loc = qos_sentinel::sim::location_names(sc.locations)[2].clone();
    sc.incidents = vec![Injected {
        kind: IncidentKind::FailureSpike,
        location: loc.clone(),
        cdn: "cdn-b".into(),
        start: start + 6 * 60_000,
        end: start + 60 * 60_000,
        asn: None,
    }];
    common::feed_sim(&cfg, Simulator::new(sc)).await;

    let base = format!("http://{}", cfg.http.listen);
    let started = Instant::now();
    let api = loop {
        let v: serde_json::Value = reqwest::get(format!("{base}/api/incidents"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["firing"].as_array().is_some_and(|f| !f.is_empty())
            && v["quality"]["worst"]
                .as_array()
                .is_some_and(|w| !w.is_empty())
        {
            break v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no firing incident: {v}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let firing = &api["firing"][0];
    assert_eq!(firing["scope"]["location"], loc.as_str());
    assert_eq!(firing["rule"], "failures_above_benchmark");

    let dom = chromium(&format!("{base}/"), &["--dump-dom"]);
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        html.contains(&format!("{loc} · cdn-b")),
        "the incident's place is on the page:\n{html}"
    );
    assert!(html.contains("failures_above_benchmark"));
    assert!(
        html.contains("<span class=\"pill critical\">critical</span>")
            || html.contains("<span class=\"pill warning\">warning</span>")
    );
    assert!(
        html.contains("<div id=\"firing\"><table>"),
        "the firing table is filled"
    );
    // Beside what fires now: the silences (none here) and the last state changes.
    assert!(
        html.contains("<div id=\"silences\"><div class=\"empty\">None.</div>"),
        "{html}"
    );
    assert!(html.contains("<div id=\"history\"><table>"), "{html}");

    let shot = dir.path().join("live.png");
    let out = chromium(
        &format!("{base}/"),
        &[&format!("--screenshot={}", shot.display())],
    );
    assert!(
        shot.exists(),
        "screenshot written: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The severity pill and row marker of the firing incident are painted in its colour.
    let colour = if firing["severity"] == "critical" {
        [0xd4, 0x0e, 0x0d]
    } else {
        [0xec, 0xb2, 0x2e]
    };
    let n = pixels_like(&shot, colour);
    // Kept for people to look at (target/tmp/live-page.png).
    let _ = std::fs::copy(
        &shot,
        concat!(env!("CARGO_TARGET_TMPDIR"), "/live-page.png"),
    );
    assert!(
        n > 200,
        "only {n} pixels of the incident's colour in the screenshot"
    );

    // The live page links the incident to its evidence page: the windows since it began,
    // drawn as a chart.
    let id = firing["id"].as_str().expect("id").to_string();
    assert!(
        html.contains(&format!("href=\"incidents/{id}\"")),
        "the live page links to the evidence:\n{html}"
    );
    let evidence: serde_json::Value = reqwest::get(format!("{base}/api/incidents/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let windows = evidence["windows"].as_array().expect("windows");
    let bad = windows.iter().filter(|w| w["bad"] == true).count();
    assert!(windows.len() >= 3 && bad >= 2, "{evidence}");
    // And a few before it: the key's windows tested before its bad run began, clean.
    let started = evidence["incident"]["started_at"]
        .as_str()
        .expect("started_at");
    let before: Vec<_> = windows
        .iter()
        .filter(|w| w["window_start"].as_str().is_some_and(|t| t < started))
        .collect();
    assert!(
        !before.is_empty() && before.iter().all(|w| w["bad"] == false),
        "{evidence}"
    );
    assert_eq!(evidence["incident"]["id"], id.as_str());
    let impact = &evidence["incident"]["impact"];
    assert!(
        impact["sessions"].as_u64().is_some_and(|n| n > 0),
        "{evidence}"
    );
    let unknown = reqwest::get(format!("{base}/api/incidents/0000000000000000"))
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);

    let page = format!("{base}/incidents/{id}");
    let dom = chromium(&page, &["--dump-dom"]);
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(html.contains("<svg id=\"chart\""), "{html}");
    assert_eq!(
        html.matches("<circle ").count(),
        windows.len(),
        "one dot per window"
    );
    assert!(html.contains("sessions, "), "viewer impact on the page");
    let shot = dir.path().join("evidence.png");
    let out = chromium(&page, &[&format!("--screenshot={}", shot.display())]);
    assert!(
        shot.exists(),
        "screenshot written: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::copy(
        &shot,
        concat!(env!("CARGO_TARGET_TMPDIR"), "/evidence-page.png"),
    );
    // The observed line (blue) and the bad windows' dots (red) are painted.
    let line = pixels_like(&shot, [0x58, 0xa6, 0xff]);
    let dots = pixels_like(&shot, [0xd4, 0x0e, 0x0d]);
    assert!(
        line > 300 && dots > 30 * bad as usize,
        "line {line}, dots {dots} pixels"
    );
    d.stop().await;
}
