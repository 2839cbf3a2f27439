//! The shipping files, checked without a Docker engine: docker-compose.yml against the Compose
//! Specification's JSON schema, every file it mounts exists, every qos-sentinel service's
//! command is one the binary accepts (its mounted config passes check-config), the Prometheus
//! and Alertmanager configs pass their own checkers, the Dockerfile copies files that exist,
//! and the systemd unit passes `systemd-analyze verify`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_qos-sentinel");

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/deps test installs the checkers)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// docker-compose.yml as JSON (through ruamel.yaml, which check-jsonschema brings).
fn compose() -> Value {
    let script = "import sys, json\nfrom ruamel.yaml import YAML\n\
                  json.dump(YAML(typ='safe').load(open(sys.argv[1])), sys.stdout)";
    let text = run(Command::new("python3")
        .args(["-c", script])
        .arg(format!("{ROOT}/docker-compose.yml")));
    serde_json::from_str(&text).unwrap()
}

/// `${VAR:-default}` as Compose would expand it with VAR unset.
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find('}').map(|e| i + e).unwrap();
        let inner = &rest[i + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, d)| d));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Bind mounts of a service: container path → host path (relative to the repo).
fn binds(service: &Value) -> BTreeMap<String, PathBuf> {
    let mut m = BTreeMap::new();
    for v in service["volumes"].as_array().into_iter().flatten() {
        let spec = v.as_str().expect("short volume syntax");
        let parts: Vec<&str> = spec.split(':').collect();
        if parts[0].starts_with("./") {
            m.insert(parts[1].to_string(), Path::new(ROOT).join(parts[0]));
        }
    }
    m
}

/// A container path resolved through the service's bind mounts.
fn host_path(binds: &BTreeMap<String, PathBuf>, container: &str) -> Option<PathBuf> {
    binds.iter().find_map(|(c, h)| {
        let rest = container.strip_prefix(c.as_str())?;
        if rest.is_empty() {
            Some(h.clone())
        } else {
            rest.strip_prefix('/').map(|r| h.join(r))
        }
    })
}

#[test]
fn compose_file_follows_the_compose_specification() {
    run(Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(format!("{ROOT}/docker-compose.yml")));
}

#[test]
fn compose_mounts_exist_and_commands_are_accepted() {
    let c = compose();
    let services = c["services"].as_object().unwrap();
    for want in [
        "kafka",
        "kafka-init",
        "qos-sentinel",
        "simulator",
        "webhook-receiver",
        "prometheus",
        "alertmanager",
        "grafana",
    ] {
        assert!(services.contains_key(want), "service {want} missing");
    }
    let named: Vec<&String> = c["volumes"]
        .as_object()
        .map(|v| v.keys().collect())
        .unwrap_or_default();
    let mut checked_configs = 0;
    for (name, s) in services {
        for v in s["volumes"].as_array().into_iter().flatten() {
            let src = v.as_str().unwrap().split(':').next().unwrap();
            if src.starts_with("./") {
                assert!(
                    Path::new(ROOT).join(src).exists(),
                    "{name} mounts missing {src}"
                );
            } else {
                assert!(
                    named.iter().any(|n| *n == src),
                    "{name}: volume {src} not declared"
                );
            }
        }
        for dep in s["depends_on"]
            .as_object()
            .map(|d| d.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_else(|| {
                s["depends_on"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|d| d.as_str().unwrap().to_string())
                    .collect()
            })
        {
            assert!(
                services.contains_key(&dep),
                "{name} depends on unknown {dep}"
            );
        }
        let ours = s["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("qos-sentinel"));
        if !ours {
            continue;
        }
        let args: Vec<String> = s["command"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: command as a list"))
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        run(Command::new(BIN).args(&args).arg("--parse-only"));
        if args.first().map(String::as_str) == Some("run") {
            let i = args.iter().position(|a| a == "--config").unwrap();
            let file = host_path(&binds(s), &args[i + 1])
                .unwrap_or_else(|| panic!("{name}: {} is not mounted", args[i + 1]));
            let mut cmd = Command::new(BIN);
            cmd.arg("check-config").arg(&file);
            for (k, v) in s["environment"].as_object().into_iter().flatten() {
                cmd.env(k, interpolate(v.as_str().unwrap()));
            }
            let out = run(&mut cmd);
            assert!(out.contains("receiver webhook-receiver"), "{out}");
            checked_configs += 1;
        }
    }
    assert_eq!(
        checked_configs, 1,
        "the qos-sentinel service's config was checked"
    );
    // The image's own default config is valid too.
    run(Command::new(BIN)
        .arg("check-config")
        .arg(format!("{ROOT}/config/container.toml")));
}

#[test]
fn prometheus_alertmanager_and_grafana_configs_check_out() {
    let c = compose();
    let prom = &c["services"]["prometheus"];
    let b = binds(prom);
    let cfg = host_path(&b, "/etc/prometheus/prometheus.yml").unwrap();
    // Point container paths at the files they are mounted from, then let promtool check
    // the config and the rule files it names.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    for (container, host) in &b {
        text = text.replace(container.as_str(), host.to_str().unwrap());
    }
    assert!(
        text.contains("qos-sentinel:9464"),
        "scrapes the qos-sentinel service"
    );
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("prometheus.yml");
    std::fs::write(&local, text).unwrap();
    let out = run(Command::new("promtool")
        .args(["check", "config"])
        .arg(&local));
    assert!(out.contains("7 rules found"), "{out}");

    let am = &c["services"]["alertmanager"];
    let am_cfg = host_path(&binds(am), "/etc/alertmanager/alertmanager.yml").unwrap();
    run(Command::new("amtool").arg("check-config").arg(am_cfg));

    // Grafana: the provider's path is where the dashboards are mounted, and the datasource
    // points at the prometheus service.
    let g = &c["services"]["grafana"];
    let gb = binds(g);
    let provider = std::fs::read_to_string(
        host_path(&gb, "/etc/grafana/provisioning/dashboards/qos-sentinel.yml").unwrap(),
    )
    .unwrap();
    let path = provider
        .lines()
        .find_map(|l| l.trim().strip_prefix("path:"))
        .unwrap()
        .trim();
    let dashboards = host_path(&gb, path).unwrap();
    assert!(dashboards.join("viewer-quality.json").exists());
    assert!(dashboards.join("service-health.json").exists());
    let ds = std::fs::read_to_string(
        host_path(&gb, "/etc/grafana/provisioning/datasources/prometheus.yml").unwrap(),
    )
    .unwrap();
    assert!(ds.contains("url: http://prometheus:9090"));
}

#[test]
fn dockerfile_copies_files_that_exist() {
    let text = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    let mut copies = 0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                Path::new(ROOT).join(src).exists(),
                "Dockerfile copies missing {src}"
            );
            copies += 1;
        }
    }
    assert!(copies >= 4);
    assert!(text.contains("USER 10001"), "runs as non-root");
}

#[test]
fn systemd_unit_verifies_and_runs_a_command_the_binary_accepts() {
    let unit =
        std::fs::read_to_string(format!("{ROOT}/deploy/systemd/qos-sentinel.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    run(Command::new(BIN).args(&args).arg("--parse-only"));
    // systemd's own checker, with the binary where the unit expects it.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("qos-sentinel.service");
    std::fs::write(&local, unit.replace("/usr/local/bin/qos-sentinel", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("qos-sentinel.service"))
        .collect();
    assert!(problems.is_empty(), "{err}");
}

/// The unit's documented install steps (its `#   install ...` lines), run under a scratch root:
/// the config they install is readable by the service's user. `DynamicUser=yes` runs it as
/// a uid that is neither the file's owner nor in its group (here: nobody). Before, the steps
/// installed it 0640 root:root and the service could not read its own config.
#[test]
fn the_units_install_steps_leave_the_config_readable_by_the_service() {
    use std::os::unix::fs::PermissionsExt;
    let unit =
        std::fs::read_to_string(format!("{ROOT}/deploy/systemd/qos-sentinel.service")).unwrap();
    assert!(
        unit.contains("DynamicUser=yes"),
        "the test assumes a dynamic user"
    );
    assert!(
        unit.lines().any(|l| l == "RestartPreventExitStatus=78"),
        "a configuration error (exit 78) is not restarted"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let steps: Vec<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("#   install "))
        .map(|l| {
            format!("install {l}")
                .replace(" /", &format!(" {}/", root.display()))
                .replace(" qos-sentinel ", &format!(" {BIN} "))
        })
        .collect();
    assert!(steps.len() >= 2, "{steps:?}");
    std::fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    for step in &steps {
        run(Command::new("sh").arg("-c").arg(step).current_dir(ROOT));
    }
    let config = root.join("etc/qos-sentinel/qos-sentinel.toml");
    assert!(config.exists(), "the steps install the config: {steps:?}");
    let is_root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    if is_root {
        // Read it as nobody, for real.
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(&config)
            .output()
            .expect("setpriv");
        assert!(
            out.status.success(),
            "the service user cannot read {}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        let mode = std::fs::metadata(&config).unwrap().permissions().mode();
        assert!(mode & 0o004 != 0, "not world-readable: {mode:o}");
    }
}
