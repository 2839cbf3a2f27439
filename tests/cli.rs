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
