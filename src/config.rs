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

use crate::detect::Metric;
use crate::detect::rules::{MetricRule, Override, lint};

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

/// Reads and checks a detection rules file; the error names the file, line and field of the
/// first mistake and how many more there are.
pub fn load_rules(path: &Path) -> Result<DetectConfig, String> {
    toml::Value::Table(load_rules_table(path)?)
        .try_into()
        .map_err(|e: toml::de::Error| format!("rules file {}: {}", path.display(), e.message()))
}

/// [`load_rules`], as the checked TOML table (to merge under `[detect]`): read and parsed once.
fn load_rules_table(path: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read rules file {}: {e}", path.display()))?;
    let problems = lint(&text);
    if let Some(first) = problems.first() {
        let more = match problems.len() - 1 {
            0 => String::new(),
            n => format!(
                " ({n} more: `qos-sentinel rules lint {}` lists them)",
                path.display()
            ),
        };
        return Err(format!(
            "rules file {}:{}: {first}{more}",
            path.display(),
            first.line
        ));
    }
    text.parse()
        .map_err(|e: toml::de::Error| format!("rules file {}: {}", path.display(), e.message()))
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
    /// Topic each report partition's state is written to at every checkpoint (partition p's
    /// state to partition p: as many partitions as the reports topic; compacted). When set,
    /// an instance that is assigned a partition takes its state over from there, so several
    /// instances can share the work. Off (`None`) for a single instance.
    #[serde(default)]
    pub changelog_topic: Option<String>,
    /// Topic (one partition) where each instance publishes its partitions' per-window
    /// summaries (progress and bad keys) and reads everyone's back, so a CDN bad at
    /// locations owned by different instances is still one CDN-wide incident. Needs
    /// `changelog_topic`. Off (`None`): each instance groups over its own partitions.
    #[serde(default)]
    pub summaries_topic: Option<String>,
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
            changelog_topic: None,
            summaries_topic: None,
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
    /// Per-metric settings, `[detect.metrics.<metric>]`: enabled, min_samples,
    /// min_relative_effect, critical_relative_effect.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<Metric, MetricRule>,
    /// Settings for locations or CDNs matching patterns, `[[detect.overrides]]`; later
    /// entries win.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
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
            metrics: BTreeMap::new(),
            overrides: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the RocksDB database (benchmark table and its consumed offsets).
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Most often the engine state is checkpointed when windows close without alerts (a
    /// close with alerts always checkpoints). Offsets are committed only up to the last
    /// checkpoint, so a longer interval means a longer replay after a crash, never a loss.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("./qos-sentinel-state")
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
            checkpoint_interval: default_checkpoint_interval(),
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

/// A secret config value (webhook URL, token, HMAC key). Written in the file as the value
/// itself, as `env:NAME` (read from the environment at start) or as `file:/path` (read from a
/// file, trailing newline dropped). Debug and Serialize print `***`: a secret never reaches a
/// log line, an error or a metric through this type.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that must use it (an HTTP request).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Resolves `env:NAME` and `file:/path`; errors name the variable or file, never a value.
    pub fn resolve(spec: &str) -> Result<Self, String> {
        if let Some(var) = spec.strip_prefix("env:") {
            std::env::var(var)
                .map(Secret)
                .map_err(|_| format!("environment variable {var} is not set"))
        } else if let Some(path) = spec.strip_prefix("file:") {
            std::fs::read_to_string(path)
                .map(|v| Secret(v.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|e| format!("cannot read secret file {path}: {e}"))
        } else {
            Ok(Secret(spec.to_string()))
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spec = String::deserialize(d)?;
        Secret::resolve(&spec).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Give up retrying one delivery this long after it was queued; it is then counted as
    /// `expired` and logged.
    #[serde(default = "default_deadline", with = "humantime_serde")]
    pub deadline: Duration,
    /// Timeout of one HTTP request to a receiver (a timeout is retried).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most deliveries waiting per receiver in the outbox. Beyond it the oldest are dropped,
    /// counted (`outcome="dropped"`) and logged, so a dead receiver cannot fill the disk.
    #[serde(default = "default_max_outbox")]
    pub max_outbox: usize,
    /// On shutdown, how long to keep delivering before leaving the rest in the outbox for the
    /// next start.
    #[serde(default = "default_flush_timeout", with = "humantime_serde")]
    pub flush_timeout: Duration,
    /// Receivers of incident state changes, any number of each kind.
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
}

const fn default_deadline() -> Duration {
    Duration::from_secs(3600)
}
const fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_max_outbox() -> usize {
    10_000
}
const fn default_flush_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            deadline: default_deadline(),
            timeout: default_timeout(),
            max_outbox: default_max_outbox(),
            flush_timeout: default_flush_timeout(),
            receivers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverKind {
    /// Slack incoming webhook: Block Kit messages, one per group of alerts.
    Slack,
    /// Generic JSON webhook: one POST per alert, body as on the alerts topic, signed.
    Webhook,
    /// Prometheus Alertmanager: POST /api/v2/alerts.
    Alertmanager,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Unique name, used in metrics, logs and the outbox.
    pub name: String,
    pub kind: ReceiverKind,
    /// Where to POST: the Slack webhook URL, the webhook URL, or Alertmanager's base URL.
    pub url: Secret,
    /// Webhook only: key of the `X-QoS-Signature` HMAC-SHA256 header.
    #[serde(default)]
    pub hmac_secret: Option<Secret>,
    /// Only alerts of these severities (`warning`, `critical`); empty = all.
    #[serde(default)]
    pub severities: Vec<String>,
    /// Only alerts whose rule matches one of these patterns (`*` and `?` wildcards); empty = all.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Only alerts whose scope (`location=IN/MH/Mumbai,cdn=cdn-a`, `cdn=cdn-a`, ...) matches
    /// one of these patterns; empty = all.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Send a firing incident again this often while it keeps firing; 0s = never. Default:
    /// 1m for Alertmanager (which would otherwise resolve it after its resolve_timeout), 4h
    /// for the others.
    #[serde(default, with = "humantime_serde")]
    pub repeat_interval: Option<Duration>,
    /// Most messages per minute to this receiver; 0 = unlimited. Messages over the limit wait,
    /// they are not dropped. Default: 60 for Slack (its own limit is about one a second), 0
    /// for the others.
    #[serde(default)]
    pub rate_limit_per_minute: Option<u32>,
    /// Most alerts in one message (Slack, Alertmanager): alerts that change together are
    /// grouped. The webhook always sends one alert per request.
    #[serde(default = "default_group_max")]
    pub group_max: usize,
    /// Do not send a location+CDN alert while its CDN-wide or location-wide parent is firing
    /// to this receiver (the parent says it already).
    #[serde(default)]
    pub hold_children: bool,
    /// Link added to messages, e.g. a Grafana dashboard; `{location}`, `{cdn}`, `{rule}`,
    /// `{id}`, `{from_ms}` and `{to_ms}` are replaced.
    #[serde(default)]
    pub link_template: Option<String>,
}

const fn default_group_max() -> usize {
    20
}

impl ReceiverConfig {
    pub fn repeat(&self) -> Option<Duration> {
        let d = self.repeat_interval.unwrap_or(match self.kind {
            ReceiverKind::Alertmanager => Duration::from_secs(60),
            _ => Duration::from_secs(4 * 3600),
        });
        (!d.is_zero()).then_some(d)
    }

    pub fn rate_limit(&self) -> u32 {
        self.rate_limit_per_minute.unwrap_or(match self.kind {
            ReceiverKind::Slack => 60,
            _ => 0,
        })
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
        // The rules file is the base of [detect]; keys set in [detect] (or by environment
        // variables) win over it.
        if let Some(rel) = doc.get("rules_file") {
            let rel = rel
                .as_str()
                .ok_or_else(|| field("rules_file", "must be a path (a string)"))?;
            let file = path.parent().unwrap_or(Path::new("")).join(rel);
            let rules = load_rules_table(&file).map_err(|m| field("rules_file", m))?;
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
        let mut topics = vec![
            ("kafka.reports_topic", &k.reports_topic),
            ("kafka.benchmarks_topic", &k.benchmarks_topic),
            ("kafka.alerts_topic", &k.alerts_topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
        ];
        if let Some(changelog) = &k.changelog_topic {
            topics.push(("kafka.changelog_topic", changelog));
        }
        if let Some(summaries) = &k.summaries_topic {
            if k.changelog_topic.is_none() {
                return Err(field(
                    "kafka.summaries_topic",
                    "needs kafka.changelog_topic (partition 0's share carries the CDN-wide stage)",
                ));
            }
            topics.push(("kafka.summaries_topic", summaries));
        }
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
        if let Some((path, message)) = self.detect.problems().into_iter().next() {
            return Err(field(&format!("detect.{path}"), message));
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
        self.validate_notify()?;
        if self.limits.max_message_bytes < 256 {
            return Err(field(
                "limits.max_message_bytes",
                format!("({}) must be at least 256", self.limits.max_message_bytes),
            ));
        }
        Ok(())
    }

    fn validate_notify(&self) -> Result<(), ConfigError> {
        let n = &self.notify;
        if n.max_outbox == 0 {
            return Err(field("notify.max_outbox", "(0) must be at least 1"));
        }
        if n.timeout.is_zero() {
            return Err(field("notify.timeout", "(0s) must be positive"));
        }
        if n.deadline < n.timeout {
            return Err(field(
                "notify.deadline",
                format!(
                    "({}) must be at least notify.timeout ({})",
                    humantime::format_duration(n.deadline),
                    humantime::format_duration(n.timeout)
                ),
            ));
        }
        for (i, r) in n.receivers.iter().enumerate() {
            let at = |f: &str| format!("notify.receivers[{i}].{f}");
            let name_ok = !r.name.is_empty()
                && r.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !name_ok {
                return Err(field(
                    &at("name"),
                    format!(
                        "(\"{}\") must be non-empty letters, digits, '-', '_' or '.'",
                        r.name
                    ),
                ));
            }
            if n.receivers[..i].iter().any(|o| o.name == r.name) {
                return Err(field(
                    &at("name"),
                    format!("(\"{}\") is used by another receiver", r.name),
                ));
            }
            // The URL is a secret: say what is wrong with it, not what it is.
            let url = r.url.expose();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(field(&at("url"), "must start with http:// or https://"));
            }
            if reqwest::Url::parse(url).is_err() {
                return Err(field(&at("url"), "is not a valid URL"));
            }
            if r.hmac_secret.is_some() && r.kind != ReceiverKind::Webhook {
                return Err(field(
                    &at("hmac_secret"),
                    "is only used by kind = \"webhook\"",
                ));
            }
            for s in &r.severities {
                if s != "warning" && s != "critical" {
                    return Err(field(
                        &at("severities"),
                        format!("(\"{s}\") must be \"warning\" or \"critical\""),
                    ));
                }
            }
            if r.group_max == 0 {
                return Err(field(&at("group_max"), "(0) must be at least 1"));
            }
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
                .tuning(Some("l"), Some("cdn-x"), Metric::FailureRate)
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
            link_template: Some("l".into()),
        };
        let mut rkeys = Vec::new();
        leaves("", &toml::Value::try_from(receiver).unwrap(), &mut rkeys);
        assert!(keys.len() > 25 && rkeys.len() == 12, "{keys:?} {rkeys:?}");
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
