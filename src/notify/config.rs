//! `[notify]`: the HTTP receivers (Slack, webhooks, Alertmanager), their filters and limits,
//! and the outbox's bounds. Receiver URLs and keys are [`Secret`]s.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::field::{Invalid, human};

/// Why a secret could not be read; it names the variable or file, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    Unset(String),
    #[error("cannot read secret file {path}: {error}")]
    File { path: String, error: std::io::Error },
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
    pub fn resolve(spec: &str) -> Result<Self, SecretError> {
        if let Some(var) = spec.strip_prefix("env:") {
            std::env::var(var)
                .map(Secret)
                .map_err(|_| SecretError::Unset(var.to_string()))
        } else if let Some(path) = spec.strip_prefix("file:") {
            std::fs::read_to_string(path)
                .map(|v| Secret(v.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|error| SecretError::File {
                    path: path.to_string(),
                    error,
                })
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
    /// State changes whose window ended longer ago than this (a backlog read after an outage
    /// or on a first start from the earliest offset) are not sent here, only counted
    /// (`outcome="stale"`): nobody is paged for the past. They still go to the alerts topic
    /// and to Alertmanager (with their true `startsAt`/`endsAt`). Default 15m; 0s = send
    /// whatever their age. Alertmanager receivers take every change.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
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

    /// How old a state change may be and still be sent here; `None`: any age.
    pub fn max_age(&self) -> Option<Duration> {
        if self.kind == ReceiverKind::Alertmanager {
            return None;
        }
        let d = self.max_age.unwrap_or(Duration::from_secs(15 * 60));
        (!d.is_zero()).then_some(d)
    }

    pub fn rate_limit(&self) -> u32 {
        self.rate_limit_per_minute.unwrap_or(match self.kind {
            ReceiverKind::Slack => 60,
            _ => 0,
        })
    }
}

impl NotifyConfig {
    /// Checks values and every receiver; field paths are relative to `[notify]`. A receiver's
    /// URL is a secret: the message says what is wrong with it, not what it is.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_outbox == 0 {
            return Err(Invalid::new("max_outbox", "(0) must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(Invalid::new("timeout", "(0s) must be positive"));
        }
        if self.deadline < self.timeout {
            return Err(Invalid::new(
                "deadline",
                format!(
                    "({}) must be at least notify.timeout ({})",
                    human(self.deadline),
                    human(self.timeout)
                ),
            ));
        }
        for (i, r) in self.receivers.iter().enumerate() {
            if self.receivers[..i].iter().any(|o| o.name == r.name) {
                return Err(Invalid::new(
                    format!("receivers[{i}].name"),
                    format!("(\"{}\") is used by another receiver", r.name),
                ));
            }
            r.validate()
                .map_err(|e| Invalid::new(format!("receivers[{i}].{}", e.field), e.message))?;
        }
        Ok(())
    }
}

impl ReceiverConfig {
    /// Checks one receiver; field paths are relative to it.
    pub fn validate(&self) -> Result<(), Invalid> {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(Invalid::new(
                "name",
                format!(
                    "(\"{}\") must be non-empty letters, digits, '-', '_' or '.'",
                    self.name
                ),
            ));
        }
        let url = self.url.expose();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Invalid::new("url", "must start with http:// or https://"));
        }
        if reqwest::Url::parse(url).is_err() {
            return Err(Invalid::new("url", "is not a valid URL"));
        }
        if self.hmac_secret.is_some() && self.kind != ReceiverKind::Webhook {
            return Err(Invalid::new(
                "hmac_secret",
                "is only used by kind = \"webhook\"",
            ));
        }
        if let Some(s) = &self.hmac_secret
            && super::render::hmac_key(s.expose()).is_none()
        {
            return Err(Invalid::new(
                "hmac_secret",
                "starts with whsec_ (Standard Webhooks' form) but the rest is not base64 of a key",
            ));
        }
        for s in &self.severities {
            if s != "warning" && s != "critical" {
                return Err(Invalid::new(
                    "severities",
                    format!("(\"{s}\") must be \"warning\" or \"critical\""),
                ));
            }
        }
        if self.group_max == 0 {
            return Err(Invalid::new("group_max", "(0) must be at least 1"));
        }
        Ok(())
    }
}
