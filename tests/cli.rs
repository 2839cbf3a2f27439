//! The command line as a user meets it: config checking and start-up refusal on a bad config.

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
        assert!(!out.status.success(), "{cmd} must refuse");
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
    assert!(!out.status.success());
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
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`rules_file`")
            && err.contains(&format!("{b}:2: `min_samles`"))
            && err.contains("2 more"),
        "{err}"
    );
}
