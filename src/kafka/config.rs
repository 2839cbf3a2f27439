//! `[kafka]`: brokers, topics, the group, passthrough client options.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::field::{Invalid, human};

#[derive(Clone, Deserialize, Serialize)]
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
    /// Compacted topic through which the instances of a group share their silences (each
    /// reads it whole). Off (`None`): silences are this instance's only.
    #[serde(default)]
    pub silences_topic: Option<String>,
    /// Extra librdkafka properties passed through to every client (TLS, SASL, ...), e.g.
    /// `"security.protocol" = "SASL_SSL"`. Values are never logged.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Like every other secret, `options` values print as `***` (SASL passwords, TLS keys live
/// there); their names show.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: BTreeMap<&str, &str> =
            self.options.keys().map(|k| (k.as_str(), "***")).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("reports_topic", &self.reports_topic)
            .field("benchmarks_topic", &self.benchmarks_topic)
            .field("alerts_topic", &self.alerts_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("session_timeout", &self.session_timeout)
            .field("changelog_topic", &self.changelog_topic)
            .field("summaries_topic", &self.summaries_topic)
            .field("options", &options)
            .finish()
    }
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
            silences_topic: None,
            options: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Checks values and cross-field rules; field paths are relative to `[kafka]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.brokers.trim().is_empty() {
            return Err(Invalid::new("brokers", "must name at least one broker"));
        }
        if self.group_id.trim().is_empty() {
            return Err(Invalid::new("group_id", "must not be empty"));
        }
        let mut topics = vec![
            ("reports_topic", &self.reports_topic),
            ("benchmarks_topic", &self.benchmarks_topic),
            ("alerts_topic", &self.alerts_topic),
            ("dead_letter_topic", &self.dead_letter_topic),
        ];
        if let Some(changelog) = &self.changelog_topic {
            topics.push(("changelog_topic", changelog));
        }
        if let Some(summaries) = &self.summaries_topic {
            if self.changelog_topic.is_none() {
                return Err(Invalid::new(
                    "summaries_topic",
                    "needs kafka.changelog_topic (partition 0's share carries the CDN-wide stage)",
                ));
            }
            topics.push(("summaries_topic", summaries));
        }
        for (i, (name, topic)) in topics.iter().enumerate() {
            if topic.trim().is_empty() {
                return Err(Invalid::new(*name, "must not be empty"));
            }
            if let Some((other, _)) = topics[..i].iter().find(|(_, t)| t == topic) {
                return Err(Invalid::new(
                    *name,
                    format!("(\"{topic}\") must differ from kafka.{other} (\"{topic}\")"),
                ));
            }
        }
        if self.session_timeout < Duration::from_millis(1000) {
            return Err(Invalid::new(
                "session_timeout",
                format!("({}) must be at least 1s", human(self.session_timeout)),
            ));
        }
        Ok(())
    }
}
