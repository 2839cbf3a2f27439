//! Daemon configuration: one TOML file (default `config/qos-sentinel.toml`), every field
//! overridable by an environment variable `QOS_SENTINEL__<SECTION>__<FIELD>` (double
//! underscores separate the path, e.g. `QOS_SENTINEL__KAFKA__BROKERS=broker:9092`).
//!
//! Deserialisation rejects unknown fields and names the path of a field with a wrong type;
//! [`Config::validate`] checks values and cross-field rules and names the field and value.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::checkpoint::StateConfig;
pub use crate::decode::mapping::InputConfig;
pub use crate::detect::DetectConfig;
pub use crate::detect::config::load_rules;
use crate::detect::config::load_rules_table;
use crate::field::Invalid;
pub use crate::history::HistoryConfig;
pub use crate::http::HttpConfig;
pub use crate::kafka::KafkaConfig;
pub use crate::notify::config::{NotifyConfig, ReceiverConfig, ReceiverKind, Secret};
pub use crate::source::LimitsConfig;
pub use crate::window::WindowConfig;

/// Prefix of environment variables that override config fields.
pub const ENV_PREFIX: &str = "QOS_SENTINEL__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Field { field: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

fn field(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Detection rules file (TOML: the fields of `[detect]`, e.g. `alerts/rules.toml`),
    /// relative to this config file. It is the base of `[detect]`: keys set there or by
    /// environment variables win. SIGHUP re-reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_file: Option<PathBuf>,
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub window: WindowConfig,
    #[serde(default)]
    pub detect: DetectConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default)]
    pub history: HistoryConfig,
    /// Reports in the users' own JSON shape: where each field is (docs/formats.md).
    #[serde(default, skip_serializing_if = "InputConfig::is_empty")]
    pub input: InputConfig,
}

impl Config {
    /// Reads `path`, applies environment overrides from `env`, deserialises and validates.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.into(),
            error,
        })?;
        Self::from_toml(&text, path, env)
    }

    /// Like [`Config::load`] on text already read; `path` is only used in messages.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            // toml's Display quotes the offending line, which may hold a secret: the
            // description and the line number only.
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError::Syntax {
                path: path.into(),
                message: match line {
                    Some(l) => format!("line {l}: {}", e.message()),
                    None => e.message().to_string(),
                },
            }
        })?;
        let defaults = toml::Value::try_from(Config::default()).ok();
        let mut from_env: Vec<(String, String)> = Vec::new();
        for (var, value) in env {
            if let Some(rest) = var.strip_prefix(ENV_PREFIX) {
                let path = apply_override(&mut doc, defaults.as_ref(), &var, rest, &value)?;
                from_env.push((path, var.clone()));
            }
        }
        // The rules file is the base of [detect]; keys set in [detect] (or by environment
        // variables) win over it.
        if let Some(rel) = doc.get("rules_file") {
            let rel = rel
                .as_str()
                .ok_or_else(|| field("rules_file", "must be a path (a string)"))?;
            let file = path.parent().unwrap_or(Path::new("")).join(rel);
            let rules = load_rules_table(&file).map_err(|e| field("rules_file", e.to_string()))?;
            let detect = doc
                .entry("detect")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(detect) = detect.as_table_mut() else {
                return Err(field("detect", "must be a table"));
            };
            for (k, v) in rules {
                detect.entry(k).or_insert(v);
            }
        }
        let cfg: Config =
            serde_path_to_error::deserialize(toml::Value::Table(doc)).map_err(|e| {
                let field = |message: String| ConfigError::Field {
                    field: e.path().to_string(),
                    message,
                };
                let message = crate::field::with_hint(&e.inner().to_string());
                let path_text = e.path().to_string();
                if let Some((_, var)) = from_env.iter().find(|(p, _)| *p == path_text) {
                    // The value may be a secret: the error says what was expected, not it.
                    return field(format!("{} (set by {var})", unquoted(&message)));
                }
                // Where in the file, as `rules lint` says it.
                let key = path_text.rsplit('.').next().unwrap_or(&path_text);
                let key = key.split('[').next().unwrap_or(key);
                let at = crate::field::line_of(text, key)
                    .map(|line| format!(" ({} line {line})", path.display()))
                    .unwrap_or_default();
                if message.starts_with("invalid type") {
                    // A value of the wrong type in the file may be a secret written as a
                    // number (a password, a token): its type says enough.
                    field(format!("{}{at}", unquoted(&message)))
                } else {
                    field(format!("{message}{at}"))
                }
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every section (each section validates itself); the error names the field and
    /// the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sections: [(&str, Result<(), Invalid>); 9] = [
            ("kafka", self.kafka.validate()),
            ("window", self.window.validate()),
            ("detect", self.detect.validate()),
            ("state", self.state.validate()),
            ("http", self.http.validate()),
            ("notify", self.notify.validate()),
            ("limits", self.limits.validate()),
            ("input", self.input.validate()),
            ("history", self.history.validate()),
        ];
        for (name, checked) in sections {
            if let Err(e) = checked {
                let e = e.within(name);
                return Err(field(&e.field, e.message));
            }
        }
        Ok(())
    }

    pub fn window_ms(&self) -> i64 {
        self.window.size_ms()
    }

    pub fn lateness_ms(&self) -> i64 {
        self.window.lateness_ms()
    }
}
/// The settings the engine needs: the window shape and the detection tuning.
impl From<&Config> for crate::engine::Settings {
    fn from(cfg: &Config) -> Self {
        Self {
            window: cfg.window.clone(),
            detect: cfg.detect.clone(),
        }
    }
}

/// A serde message without the values it quotes (between backticks or double quotes):
/// "invalid type: integer `1234`, expected a string" -> "invalid type: integer, expected a
/// string".
fn unquoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    for c in message.chars() {
        match (quote, c) {
            (None, '`' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" ,", ",")
}

/// The type a field's default has, at `parts` under `defaults`; `None` where the default is
/// absent (an optional field) or the path unknown.
fn default_at<'a>(defaults: Option<&'a toml::Value>, parts: &[String]) -> Option<&'a toml::Value> {
    let mut v = defaults?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// Sets `a.b.c` from `QOS_SENTINEL__A__B__C`, typed by the field it sets: a field whose
/// default is a string (and every `kafka.options` value) takes the value as it is, so
/// `QOS_SENTINEL__KAFKA__GROUP_ID=1234` or a numeric password stays a string; numbers,
/// booleans and arrays are read as TOML. A field without a default (optional) reads a TOML
/// value where the text is one, else a string. Returns the field's path (`a.b.c`).
fn apply_override(
    doc: &mut toml::Table,
    defaults: Option<&toml::Value>,
    var: &str,
    path: &str,
    value: &str,
) -> Result<String, ConfigError> {
    let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Env {
            var: var.into(),
            message: "empty path segment".into(),
        });
    }
    let as_toml = || {
        format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    let string = toml::Value::String(value.into());
    let is_option = parts.len() == 3 && parts[0] == "kafka" && parts[1] == "options";
    let parsed = match default_at(defaults, &parts) {
        _ if is_option => string,
        Some(toml::Value::String(_)) => string,
        Some(_) => as_toml().unwrap_or(string),
        None => as_toml().unwrap_or(string),
    };
    let (last, parents) = parts.split_last().ok_or_else(|| ConfigError::Env {
        var: var.into(),
        message: "no field named".into(),
    })?;
    let mut table = doc;
    for p in parents {
        let entry = table
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::Env {
                    var: var.into(),
                    message: format!("`{p}` is not a section"),
                });
            }
        };
    }
    table.insert(last.clone(), parsed);
    Ok(parts.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Metric;
    use std::time::Duration;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            Path::new("test.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn shipped_config_is_valid_and_matches_defaults() {
        let text = include_str!("../config/qos-sentinel.toml");
        let cfg = load(text, &[]).unwrap();
        let def = Config::default();
        assert_eq!(cfg.kafka.reports_topic, def.kafka.reports_topic);
        assert_eq!(cfg.window.size, def.window.size);
        assert_eq!(cfg.detect.fire_after, def.detect.fire_after);
    }

    #[test]
    fn env_overrides_fields() {
        let cfg = load(
            "",
            &[
                ("QOS_SENTINEL__KAFKA__BROKERS", "b1:9092,b2:9092"),
                ("QOS_SENTINEL__WINDOW__SIZE", "30s"),
                ("QOS_SENTINEL__DETECT__FIRE_AFTER", "3"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.kafka.brokers, "b1:9092,b2:9092");
        assert_eq!(cfg.window.size, Duration::from_secs(30));
        assert_eq!(cfg.detect.fire_after, 3);
    }

    #[test]
    fn env_overrides_are_typed_by_their_field_and_secrets_never_show() {
        // A numeric group id and a numeric SASL password stay strings.
        let cfg = load(
            "",
            &[
                ("QOS_SENTINEL__KAFKA__GROUP_ID", "1234"),
                ("QOS_SENTINEL__KAFKA__OPTIONS__SASL.PASSWORD", "987654321"),
                ("QOS_SENTINEL__DETECT__MIN_SAMPLES", "12"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.kafka.group_id, "1234");
        assert_eq!(cfg.kafka.options["sasl.password"], "987654321");
        assert_eq!(cfg.detect.min_samples, 12);
        let debug = format!("{cfg:?}");
        assert!(
            !debug.contains("987654321") && debug.contains("sasl.password"),
            "kafka.options values are masked in Debug: {debug}"
        );
        // A value of the wrong type: the error names the field and the variable, not the value.
        let e = load(
            "",
            &[("QOS_SENTINEL__DETECT__MIN_SAMPLES", "\"s3cr3t-value\"")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("detect.min_samples")
                && e.contains("QOS_SENTINEL__DETECT__MIN_SAMPLES")
                && !e.contains("s3cr3t"),
            "{e}"
        );
        // A TOML syntax error on the line that holds a secret: the line is not quoted.
        let e = load(
            "[kafka]\nbrokers = \"b:9092\"\n[kafka.options]\n\"sasl.password\" = \"hunter2-secret\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 4") && !e.contains("hunter2"), "{e}");
        // A secret of the wrong type in the file: named by its field, never quoted.
        let e = load("[kafka.options]\n\"sasl.password\" = 55501234\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kafka.options") && e.contains("invalid type") && !e.contains("55501234"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let cases = [
            (
                "[window]\nsize = \"0s\"",
                "`window.size`: (0s) must be a whole number",
            ),
            ("[window]\nsize = 60", "`window.size`"),
            ("[kafka]\nbrokerz = \"x\"", "unknown field `brokerz`"),
            (
                "[detect]\nfdr = 1.5",
                "`detect.fdr`: (1.5) must be in (0, 1)",
            ),
            (
                "[detect]\nmin_relative_effect = 0.5\ncritical_relative_effect = 0.2",
                "`detect.critical_relative_effect`: (0.2) must be at least min_relative_effect (0.5)",
            ),
            (
                "[kafka]\nalerts_topic = \"qos.client-reports\"",
                "`kafka.alerts_topic`: (\"qos.client-reports\") must differ from kafka.reports_topic",
            ),
            (
                "[kafka]\nsummaries_topic = \"qos.sentinel-summaries\"",
                "`kafka.summaries_topic`: needs kafka.changelog_topic",
            ),
            (
                "[http]\nlisten = \"nowhere\"",
                "`http.listen`: (\"nowhere\")",
            ),
            (
                "[window]\nallowed_lateness = \"20m\"",
                "`window.allowed_lateness`: (20m) must be at most 10 times window.size (1m)",
            ),
        ];
        for (text, want) in cases {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
        let err = load("", &[("QOS_SENTINEL__DETECT__FIRE_AFTER", "0")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config field `detect.fire_after`: (0) must be at least 1"
        );
    }

    fn leaves(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) if !t.is_empty() && prefix != "kafka.options" => {
                for (k, v) in t {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&p, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }

    #[test]
    fn rules_file_is_the_base_of_detect_and_config_keys_win() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rules.toml"),
            "fire_after = 4\nfdr = 0.01\n\n[[overrides]]\ncdn = \"cdn-x\"\nenabled = false\n",
        )
        .unwrap();
        let path = dir.path().join("qos.toml");
        let text = "rules_file = \"rules.toml\"\n[detect]\nfdr = 0.002\n";
        let cfg = Config::from_toml(
            text,
            &path,
            [(
                "QOS_SENTINEL__DETECT__RESOLVE_AFTER".to_string(),
                "5".to_string(),
            )],
        )
        .unwrap();
        assert_eq!(cfg.detect.fire_after, 4);
        assert_eq!(cfg.detect.fdr, 0.002);
        assert_eq!(cfg.detect.resolve_after, 5);
        assert!(
            !cfg.detect
                .tuning(Some("l"), Some("cdn-x"), Metric::FAILURE_RATE)
                .enabled
        );
        let missing = Config::from_toml("rules_file = \"nope.toml\"\n", &path, []).unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("`rules_file`: cannot read rules file"),
            "{missing}"
        );
    }

    #[test]
    fn readme_documents_every_field() {
        let readme = include_str!("../README.md");
        let shipped = include_str!("../config/qos-sentinel.toml");
        let mut keys = Vec::new();
        leaves(
            "",
            &toml::Value::try_from(Config::default()).unwrap(),
            &mut keys,
        );
        let receiver = ReceiverConfig {
            name: "r".into(),
            kind: ReceiverKind::Webhook,
            url: Secret::new("http://x"),
            hmac_secret: Some(Secret::new("k")),
            severities: vec![],
            rules: vec![],
            scopes: vec![],
            repeat_interval: Some(Duration::from_secs(1)),
            rate_limit_per_minute: Some(1),
            group_max: 1,
            hold_children: false,
            max_age: Some(Duration::from_secs(60)),
            link_template: Some("l".into()),
        };
        let mut rkeys = Vec::new();
        leaves("", &toml::Value::try_from(receiver).unwrap(), &mut rkeys);
        assert!(keys.len() > 25 && rkeys.len() == 13, "{keys:?} {rkeys:?}");
        for k in keys.iter().filter(|k| *k != "notify.receivers") {
            assert!(
                readme.contains(&format!("| `{k}` |")),
                "README's table lacks `{k}`"
            );
            let field = k.rsplit('.').next().unwrap();
            assert!(
                shipped.contains(&format!("\n{field} =")) || shipped.contains(&format!("\n[{k}]")),
                "config/qos-sentinel.toml lacks `{k}`"
            );
        }
        for k in &rkeys {
            assert!(
                readme.contains(&format!("| `notify.receivers[].{k}` |")),
                "README's table lacks `notify.receivers[].{k}`"
            );
            assert!(
                shipped.contains(&format!("# {k} =")),
                "config/qos-sentinel.toml's receiver examples lack `{k}`"
            );
        }
    }
}
