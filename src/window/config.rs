//! `[window]`: window size, allowed lateness, event-time bounds, the key caps.

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
    /// Most keys per source partition whose learned normals (levels, offsets from the
    /// benchmark, spreads) are kept; beyond it the least recently seen keys forget theirs.
    /// Keys unseen for 120 windows forget anyway.
    #[serde(default = "default_max_learned_keys")]
    pub max_learned_keys: usize,
    /// Most live session histories per source partition, one per session and metric that
    /// keeps one (throughput's own level, rebuffering's windows with a stall: two for a
    /// session that reports both), so that a report can be compared with its session's
    /// earlier ones; beyond it the least recently seen are forgotten. A session that sends
    /// nothing for a window is forgotten anyway. About 56 bytes each (32 of sums, 16 of key,
    /// the map's share).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Most (location, cdn) keys in the benchmark table (and its RocksDB cache); beyond it
    /// the keys least recently published or joined by a report are evicted.
    #[serde(default = "default_max_benchmark_keys")]
    pub max_benchmark_keys: usize,
    /// How far a report's event time may run ahead of the wall clock (the daemon) or of the
    /// recording's own progress (`backtest`). One report from a wild clock (2100, 9999) would
    /// otherwise close every window up to it: later ones are dead-lettered as out of range.
    #[serde(default = "default_max_clock_skew", with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Reports dated before this (RFC 3339) are dead-lettered as out of range: a clock reset
    /// to 1970 or year 1 is not an event time.
    #[serde(default = "default_earliest", with = "crate::time")]
    pub earliest_event_time: Millis,
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
const fn default_max_learned_keys() -> usize {
    400_000
}
const fn default_max_sessions() -> usize {
    500_000
}
const fn default_max_benchmark_keys() -> usize {
    crate::table::DEFAULT_MAX_KEYS
}
const fn default_max_clock_skew() -> Duration {
    Duration::from_secs(600)
}
/// 2000-01-01T00:00:00Z.
const fn default_earliest() -> Millis {
    946_684_800_000
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            size: default_window_size(),
            allowed_lateness: default_lateness(),
            max_keys: default_max_keys(),
            max_learned_keys: default_max_learned_keys(),
            max_sessions: default_max_sessions(),
            max_benchmark_keys: default_max_benchmark_keys(),
            max_clock_skew: default_max_clock_skew(),
            earliest_event_time: default_earliest(),
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

    /// Whether event time `ts` is one to count: not before `earliest_event_time` and, given
    /// the `clock` it is read against (the wall clock, a recording's progress), at most
    /// `max_clock_skew` ahead of it. The error says why, for the dead letter.
    pub fn check_event_time(&self, ts: Millis, clock: Option<Millis>) -> Result<(), String> {
        use crate::time::format_ms;
        if ts < self.earliest_event_time {
            return Err(format!(
                "event time {} is before window.earliest_event_time ({})",
                format_ms(ts),
                format_ms(self.earliest_event_time)
            ));
        }
        let skew = self.max_clock_skew.as_millis() as Millis;
        match clock {
            Some(c) if ts > c.saturating_add(skew) => Err(format!(
                "event time {} is more than window.max_clock_skew ({}) ahead of {}",
                format_ms(ts),
                human(self.max_clock_skew),
                format_ms(c)
            )),
            _ => Ok(()),
        }
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
        if self.max_clock_skew < self.size {
            return Err(Invalid::new(
                "max_clock_skew",
                format!(
                    "({}) must be at least window.size ({}): players' clocks run a little ahead",
                    human(self.max_clock_skew),
                    human(self.size)
                ),
            ));
        }
        for (field, n) in [
            ("max_keys", self.max_keys),
            ("max_learned_keys", self.max_learned_keys),
            ("max_sessions", self.max_sessions),
            ("max_benchmark_keys", self.max_benchmark_keys),
        ] {
            if n == 0 {
                return Err(Invalid::new(field, "(0) must be at least 1"));
            }
        }
        Ok(())
    }
}
