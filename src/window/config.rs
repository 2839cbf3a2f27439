//! `[window]`: window size, allowed lateness, the key cap.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::field::{Invalid, human};
use crate::time::Millis;

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

impl WindowConfig {
    pub fn size_ms(&self) -> Millis {
        self.size.as_millis() as Millis
    }

    pub fn lateness_ms(&self) -> Millis {
        self.allowed_lateness.as_millis() as Millis
    }

    /// Checks values; field paths are relative to `[window]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.size < Duration::from_secs(1) || self.size.subsec_millis() != 0 {
            return Err(Invalid::new(
                "size",
                format!(
                    "({}) must be a whole number of seconds, at least 1s",
                    human(self.size)
                ),
            ));
        }
        if self.allowed_lateness > self.size * 10 {
            return Err(Invalid::new(
                "allowed_lateness",
                format!(
                    "({}) must be at most 10 times window.size ({})",
                    human(self.allowed_lateness),
                    human(self.size)
                ),
            ));
        }
        if self.max_keys == 0 {
            return Err(Invalid::new("max_keys", "(0) must be at least 1"));
        }
        Ok(())
    }
}
