//! Daemon configuration: one TOML file (default `config/qos-sentinel.toml`), every field
//! overridable by an environment variable `QOS_SENTINEL__<SECTION>__<FIELD>` (double
//! underscores separate the path, e.g. `QOS_SENTINEL__KAFKA__BROKERS=broker:9092`).
//!
//! Deserialisation rejects unknown fields and names the path of a field with a wrong type;
//! [`Config::validate`] checks values and cross-field rules and names the field and value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated `host:port`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Consumer group shared by all instances; report partitions are divided among them.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Topic of client quality reports (key: location).
    #[serde(default = "default_reports_topic")]
    pub reports_topic: String,
    /// Topic of CDN benchmarks (key: `location|cdn`, log-compacted). Read in full by every instance.
    #[serde(default = "default_benchmarks_topic")]
    pub benchmarks_topic: String,
    /// Topic alerts are produced to (key: scope).
    #[serde(default = "default_alerts_topic")]
    pub alerts_topic: String,
    /// Topic bad input is copied to, with the reason in headers.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Consumer group session timeout: how long a dead instance keeps its partitions.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Extra librdkafka properties passed through to every client (TLS, SASL, ...), e.g.
    /// `"security.protocol" = "SASL_SSL"`. Values are never logged.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

fn default_brokers() -> String {
    "localhost:9092".into()
}
fn default_group_id() -> String {
    "qos-sentinel".into()
}
fn default_reports_topic() -> String {
    "qos.client-reports".into()
}
fn default_benchmarks_topic() -> String {
    "qos.cdn-benchmarks".into()
}
fn default_alerts_topic() -> String {
    "qos.alerts".into()
}
fn default_dead_letter_topic() -> String {
    "qos.dead-letter".into()
}
const fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: default_brokers(),
            group_id: default_group_id(),
            reports_topic: default_reports_topic(),
            benchmarks_topic: default_benchmarks_topic(),
            alerts_topic: default_alerts_topic(),
            dead_letter_topic: default_dead_letter_topic(),
            session_timeout: default_session_timeout(),
            options: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Length of the event-time tumbling windows.
    #[serde(default = "default_window_size", with = "humantime_serde")]
    pub size: Duration,
    /// How far behind the newest event time a report may arrive and still count. The watermark
    /// is the newest event time seen minus this; a window closes when the watermark passes its end.
    #[serde(default = "default_lateness", with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Most (location, cdn) keys held in one window; reports for new keys beyond it are dropped
    /// and counted, so a flood of bogus locations cannot exhaust memory.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

const fn default_window_size() -> Duration {
    Duration::from_secs(60)
}
const fn default_lateness() -> Duration {
    Duration::from_secs(30)
}
const fn default_max_keys() -> usize {
    200_000
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            size: default_window_size(),
            allowed_lateness: default_lateness(),
            max_keys: default_max_keys(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectConfig {
    /// False discovery rate across all the tests of one window (Benjamini-Hochberg).
    #[serde(default = "default_fdr")]
    pub fdr: f64,
    /// Fewest reports in a window before a key's metric is tested at all.
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    /// Smallest relative deviation from the expected value that counts (0.25 = 25 % worse).
    #[serde(default = "default_min_effect")]
    pub min_relative_effect: f64,
    /// Deviation at or beyond which an incident is critical rather than a warning (1.0 = 2x worse).
    #[serde(default = "default_critical_effect")]
    pub critical_relative_effect: f64,
    /// Consecutive bad windows before an incident fires.
    #[serde(default = "default_fire_after")]
    pub fire_after: u32,
    /// Consecutive clean windows before a firing incident resolves; windows without testable
    /// data (too few samples) count a third.
    #[serde(default = "default_resolve_after")]
    pub resolve_after: u32,
    /// When at least this many locations of one CDN are bad on the same metric in a window,
    /// one CDN-wide incident (scope `{cdn}`) is raised above the per-location ones.
    #[serde(default = "default_group_min_locations")]
    pub group_min_locations: usize,
}

const fn default_fdr() -> f64 {
    0.001
}
const fn default_min_samples() -> u64 {
    30
}
const fn default_min_effect() -> f64 {
    0.3
}
const fn default_critical_effect() -> f64 {
    1.0
}
const fn default_fire_after() -> u32 {
    2
}
const fn default_group_min_locations() -> usize {
    3
}
const fn default_resolve_after() -> u32 {
    3
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            fdr: default_fdr(),
            min_samples: default_min_samples(),
            min_relative_effect: default_min_effect(),
            critical_relative_effect: default_critical_effect(),
            fire_after: default_fire_after(),
            resolve_after: default_resolve_after(),
            group_min_locations: default_group_min_locations(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the RocksDB database (benchmark table and its consumed offsets).
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("./qos-sentinel-state")
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the /metrics, /healthz and /readyz endpoint. Loopback unless you mean it.
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "127.0.0.1:9464".into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted message value in bytes; larger ones go to the dead-letter topic.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

const fn default_max_message_bytes() -> usize {
    64 * 1024
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: default_max_message_bytes(),
        }
    }
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
        let mut doc: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.into(),
                    message: e.to_string(),
                })?;
        for (var, value) in env {
            if let Some(rest) = var.strip_prefix(ENV_PREFIX) {
                apply_override(&mut doc, &var, rest, &value)?;
            }
        }
        let cfg: Config =
            serde_path_to_error::deserialize(toml::Value::Table(doc)).map_err(|e| {
                let path = e.path().to_string();
                field(&path, e.into_inner().to_string())
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values and cross-field rules; the error names the field and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            return Err(field("kafka.brokers", "must name at least one broker"));
        }
        if k.group_id.trim().is_empty() {
            return Err(field("kafka.group_id", "must not be empty"));
        }
        let topics = [
            ("kafka.reports_topic", &k.reports_topic),
            ("kafka.benchmarks_topic", &k.benchmarks_topic),
            ("kafka.alerts_topic", &k.alerts_topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
        ];
        for (i, (name, topic)) in topics.iter().enumerate() {
            if topic.trim().is_empty() {
                return Err(field(name, "must not be empty"));
            }
            if let Some((other, _)) = topics[..i].iter().find(|(_, t)| t == topic) {
                return Err(field(
                    name,
                    format!("(\"{topic}\") must differ from {other} (\"{topic}\")"),
                ));
            }
        }
        if k.session_timeout < Duration::from_millis(1000) {
            return Err(field(
                "kafka.session_timeout",
                format!(
                    "({}) must be at least 1s",
                    humantime::format_duration(k.session_timeout)
                ),
            ));
        }
        let w = &self.window;
        if w.size < Duration::from_secs(1) || w.size.subsec_millis() != 0 {
            return Err(field(
                "window.size",
                format!(
                    "({}) must be a whole number of seconds, at least 1s",
                    humantime::format_duration(w.size)
                ),
            ));
        }
        if w.allowed_lateness > w.size * 10 {
            return Err(field(
                "window.allowed_lateness",
                format!(
                    "({}) must be at most 10 times window.size ({})",
                    humantime::format_duration(w.allowed_lateness),
                    humantime::format_duration(w.size)
                ),
            ));
        }
        if w.max_keys == 0 {
            return Err(field("window.max_keys", "(0) must be at least 1"));
        }
        let d = &self.detect;
        if !(d.fdr > 0.0 && d.fdr < 1.0) {
            return Err(field(
                "detect.fdr",
                format!("({}) must be in (0, 1)", d.fdr),
            ));
        }
        if !(d.min_relative_effect >= 0.0 && d.min_relative_effect.is_finite()) {
            return Err(field(
                "detect.min_relative_effect",
                format!("({}) must be a finite number >= 0", d.min_relative_effect),
            ));
        }
        if d.critical_relative_effect.is_nan() || d.critical_relative_effect < d.min_relative_effect
        {
            return Err(field(
                "detect.critical_relative_effect",
                format!(
                    "({}) must be at least detect.min_relative_effect ({})",
                    d.critical_relative_effect, d.min_relative_effect
                ),
            ));
        }
        if d.min_samples < 2 {
            return Err(field(
                "detect.min_samples",
                format!("({}) must be at least 2", d.min_samples),
            ));
        }
        if d.fire_after == 0 {
            return Err(field("detect.fire_after", "(0) must be at least 1"));
        }
        if d.resolve_after == 0 {
            return Err(field("detect.resolve_after", "(0) must be at least 1"));
        }
        if d.group_min_locations < 2 {
            return Err(field(
                "detect.group_min_locations",
                format!("({}) must be at least 2", d.group_min_locations),
            ));
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(field(
                "http.listen",
                format!(
                    "(\"{}\") is not an address like 127.0.0.1:9464",
                    self.http.listen
                ),
            ));
        }
        if self.limits.max_message_bytes < 256 {
            return Err(field(
                "limits.max_message_bytes",
                format!("({}) must be at least 256", self.limits.max_message_bytes),
            ));
        }
        Ok(())
    }

    pub fn window_ms(&self) -> i64 {
        self.window.size.as_millis() as i64
    }

    pub fn lateness_ms(&self) -> i64 {
        self.window.allowed_lateness.as_millis() as i64
    }
}

/// Sets `a.b.c` from `QOS_SENTINEL__A__B__C`. The value is read as a TOML value when it parses
/// as one (numbers, booleans, quoted strings), otherwise as a plain string.
fn apply_override(
    doc: &mut toml::Table,
    var: &str,
    path: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Env {
            var: var.into(),
            message: "empty path segment".into(),
        });
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.into()));
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
                "`detect.critical_relative_effect`: (0.2) must be at least detect.min_relative_effect (0.5)",
            ),
            (
                "[kafka]\nalerts_topic = \"qos.client-reports\"",
                "`kafka.alerts_topic`: (\"qos.client-reports\") must differ from kafka.reports_topic",
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
}
