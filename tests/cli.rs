//! The command line as a user meets it: config checking and start-up refusal on a bad config,
//! exit statuses (docs/formats.md), log formats.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qos-sentinel"))
}

#[test]
fn shipped_config_checks_out() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/config/qos-sentinel.toml");
    let out = bin().args(["check-config", cfg]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn bad_config_stops_start_up_naming_field_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[window]\nsize = \"90ms\"\n").unwrap();
    for cmd in ["check-config", "run"] {
        let mut c = bin();
        c.arg(cmd);
        if cmd == "run" {
            c.arg("--config");
        }
        let out = c.arg(&path).output().unwrap();
        // EX_CONFIG: the systemd unit does not restart on it.
        assert_eq!(out.status.code(), Some(78), "{cmd} must refuse with 78");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("`window.size`: (90ms)"), "{cmd}: {err}");
    }
}

#[test]
fn environment_overrides_are_validated_too() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/config/qos-sentinel.toml");
    let out = bin()
        .args(["check-config", cfg])
        .env("QOS_SENTINEL__DETECT__FDR", "1.5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`detect.fdr`: (1.5) must be in (0, 1)"),
        "{err}"
    );
}

#[test]
fn rules_lint_explains_every_mistake_with_its_line() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/alerts/rules.toml");
    let out = bin().args(["rules", "lint", shipped]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with(": ok\n"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "fdr = 0.001\nmin_samles = 30\n\n[metrics.failure_rate]\nmin_relative_effect = \"big\"\n\n[[overrides]]\ncdn = \"cdn-b\"\nmetrics = [\"startup\"]\n",
    )
    .unwrap();
    let out = bin().args(["rules", "lint"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let b = bad.display();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with(&format!(
            "{b}:2: `min_samles`: unknown field (did you mean `min_samples`?)"
        )),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{b}:5: `metrics.failure_rate.min_relative_effect`: must be a number"
        )),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "{b}:9: `overrides[0].metrics`: unknown metric \"startup\""
        )),
        "{stdout}"
    );

    // A config naming the file refuses to start, pointing at the same line.
    let cfg = dir.path().join("qos.toml");
    std::fs::write(&cfg, "rules_file = \"bad.toml\"\n").unwrap();
    let out = bin().arg("check-config").arg(&cfg).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(78),
        "a bad rules file is a config error"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`rules_file`")
            && err.contains(&format!("{b}:2: `min_samles`"))
            && err.contains("2 more"),
        "{err}"
    );
}

/// Bad usage exits 2, whether clap or the command finds it; 1 is left for failures.
#[test]
fn bad_usage_exits_2() {
    for args in [
        &["demo", "--minutes", "5"][..],
        &["demo", "--no-such-flag"],
        &["simulate", "--minutes", "1"],
        &["bench", "--reports", "0"],
        &["run", "--log-format", "yaml"],
    ] {
        let out = bin().args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = bin()
        .args(["backtest", "--reports", "/nonexistent/r.jsonl"])
        .args([
            "--benchmarks",
            "/nonexistent/b.jsonl",
            "--out",
            "/tmp/never",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreadable input is a failure"
    );
}

/// The daemon's stderr with `args` until a line contains `until` (20 s at most); the daemon
/// runs on the shipped config against a broker that is not there.
fn daemon_log(args: &[&str], until: &str) -> String {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/config/qos-sentinel.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = bin()
        .args(args)
        .args(["run", "--config", cfg])
        .env("QOS_SENTINEL__STATE__DIR", dir.path())
        .env("QOS_SENTINEL__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("QOS_SENTINEL__KAFKA__BROKERS", "127.0.0.1:1")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut text = String::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        text.push_str(&line);
        text.push('\n');
        if line.contains(until) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    text
}

/// `--log-format json`: every log line is one JSON object (tracing's format) for a log
/// shipper; text logs to a pipe carry no ANSI colour codes.
#[test]
fn logs_are_json_on_request_and_plain_text_off_a_terminal() {
    let json = daemon_log(&["--log-format", "json"], "Serving /metrics");
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.contains("Serving /metrics")),
        "{json}"
    );
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
    let text = daemon_log(&[], "Serving /metrics");
    assert!(text.contains("Serving /metrics"), "{text}");
    assert!(!text.contains('\u{1b}'), "ANSI codes in a pipe: {text:?}");
}

/// An `[input]` mapping that cannot work stops start-up naming the field, as any other.
#[test]
fn a_bad_input_mapping_stops_start_up_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    for (text, want) in [
        (
            "[input]\nplayed_ms = { path = \"p\", scale = -1 }\n",
            "config field `input.played_ms.scale`: (-1) must be a positive number",
        ),
        (
            "[input]\nplayed_ms = { path = \"p\", scael = 1000 }\n",
            "config field `input.played_ms.scael`: unknown field `scael` (did you mean `scale`?), expected one of `path`",
        ),
        (
            "# beacons\n[input]\nsesion_id = \"s\"\n",
            "config field `input.sesion_id`: unknown field `sesion_id` (did you mean `session_id`?)",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = bin().arg("check-config").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(78), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{text}: {err}");
        // An unknown field, as `rules lint` says it: a hint, the file and the line.
        if want.contains("did you mean") {
            let line = text.lines().count();
            assert!(
                err.contains(&format!("{} line {line})", path.display())),
                "{text}: {err}"
            );
        }
    }
}
