//! The Kubernetes base in `deploy/kubernetes`, checked as far as offline tools allow: it
//! renders with `kubectl kustomize`; it has the StatefulSet (with a volume at `state.dir`),
//! the Service, the ServiceMonitor, the PrometheusRule and the PodDisruptionBudget; its
//! config passes `check-config`; its command is one the binary accepts; its probes, ports and
//! mounts agree with that config; its PrometheusRule holds exactly the groups of
//! `alerts/qos-sentinel.rules.yml`; and every selector picks the pods it is meant to.

use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_qos-sentinel");

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/deps test installs it)"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// YAML documents as JSON (through ruamel.yaml, which check-jsonschema brings).
fn yaml(text: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.yaml");
    std::fs::write(&path, text).unwrap();
    let script = "import sys, json\nfrom ruamel.yaml import YAML\n\
                  json.dump(list(YAML(typ='safe').load_all(open(sys.argv[1]))), sys.stdout)";
    let json = run(Command::new("python3").args(["-c", script]).arg(&path));
    serde_json::from_str(&json).unwrap()
}

fn rendered() -> Vec<Value> {
    yaml(&run(Command::new("kubectl")
        .args(["kustomize"])
        .arg(format!("{ROOT}/deploy/kubernetes"))))
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let of: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(of.len(), 1, "one {kind}: {docs:#?}");
    of[0]
}

#[test]
fn the_kustomize_base_renders_a_deployment_that_agrees_with_itself() {
    let docs = rendered();
    let sts = one(&docs, "StatefulSet");
    let svc = one(&docs, "Service");
    let pdb = one(&docs, "PodDisruptionBudget");
    let monitor = one(&docs, "ServiceMonitor");
    let rule = one(&docs, "PrometheusRule");
    let cm = one(&docs, "ConfigMap");

    // The config passes check-config, and is what the container reads.
    let toml = cm["data"]["qos-sentinel.toml"].as_str().expect("config");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qos-sentinel.toml");
    std::fs::write(&path, toml).unwrap();
    run(Command::new(BIN).arg("check-config").arg(&path));
    let cfg = qos_sentinel::config::Config::load(&path, std::iter::empty()).expect("config");

    let pod = &sts["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    run(Command::new(BIN).args(&args).arg("--parse-only"));
    let config_arg = args[args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config")
        + 1];
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    let mount_of = |name: &str| {
        mounts
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("no mount {name}"))
    };
    assert_eq!(
        format!("{}/qos-sentinel.toml", mount_of("config")),
        config_arg
    );
    let config_volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "config")
        .expect("config volume");
    assert_eq!(
        config_volume["configMap"]["name"], cm["metadata"]["name"],
        "the pod mounts the generated ConfigMap"
    );
    // State on the claim's volume, where the config puts it.
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "state"
    );
    assert_eq!(
        std::path::Path::new(mount_of("state")),
        cfg.state.dir.as_path()
    );
    // Probes and ports on the port the daemon listens on.
    let port = cfg
        .http
        .listen
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert_eq!(c["ports"][0]["containerPort"], port);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(
        cfg.http.listen.starts_with("0.0.0.0:"),
        "reachable in the pod"
    );
    // More than one replica needs the changelog and the summaries topic.
    if sts["spec"]["replicas"].as_u64().unwrap_or(1) > 1 {
        assert!(cfg.kafka.changelog_topic.is_some() && cfg.kafka.summaries_topic.is_some());
    }
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    // Every selector picks the pods.
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    let picks = |sel: &Value| {
        sel.as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
    };
    assert!(picks(&sts["spec"]["selector"]["matchLabels"]), "{sts:#}");
    assert!(picks(&svc["spec"]["selector"]), "{svc:#}");
    assert!(picks(&pdb["spec"]["selector"]["matchLabels"]), "{pdb:#}");
    assert_eq!(sts["spec"]["serviceName"], svc["metadata"]["name"]);
    // The ServiceMonitor picks the Service, on its named port.
    let svc_labels = &svc["metadata"]["labels"];
    let sel = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector");
    assert!(!sel.is_empty() && sel.iter().all(|(k, v)| &svc_labels[k] == v));
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

    // The PrometheusRule is alerts/qos-sentinel.rules.yml.
    let rules = std::fs::read_to_string(format!("{ROOT}/alerts/qos-sentinel.rules.yml")).unwrap();
    let rules = &yaml(&rules)[0];
    assert_eq!(rule["spec"]["groups"], rules["groups"]);
}
