//! What a key has learned to be normal for it, per metric: its offset from the benchmark
//! (log-scale metrics) or, where it is the reference, its own level.

use crate::time::Millis;

/// Windows of history a key's own level needs before it is trusted.
pub const OWN_LEVEL_WARMUP: u32 = 5;

/// Windows a baseline needs before it is trusted; until then only critical deviations fire.
pub const BASELINE_WARMUP: u32 = 3;

/// Largest offset learned: clients 3x worse (or better) than the probes is not "normal".
const MAX_OFFSET: f64 = 1.0986; // ln 3

/// What is normal for one key relative to its benchmark, learned from its clean windows (or,
/// used as an own level, the key's own level).
///
/// Clients see a CDN somewhat differently from its probes (last mile), by an amount that
/// differs per key but is stable. For the log-scale metrics the learned offset
/// `ln(observed) - ln(benchmark)` shifts the expectation, so a stable offset never fires and a
/// deviation from what is normal for the key does. Bad windows are not learned from, so an
/// incident is not absorbed while it lasts (a slow drift over many windows is).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    pub offset: f64,
    pub windows: u32,
    pub last_seen: Millis,
}

impl Baseline {
    /// Learns from one clean window whose raw log ratio to the benchmark was `x`.
    pub fn learn(&mut self, x: f64, at: Millis) {
        self.track(x.clamp(-MAX_OFFSET, MAX_OFFSET), at);
    }

    pub fn warm(&self) -> bool {
        self.windows >= BASELINE_WARMUP
    }

    /// Whether it is warm enough to be a key's own level.
    pub fn warm_level(&self) -> bool {
        self.windows >= OWN_LEVEL_WARMUP
    }

    /// Follows a level slowly even through bad windows, so that a lasting change (traffic
    /// steered away for good) becomes the new normal after a few dozen windows.
    pub fn drift(&mut self, x: f64) {
        self.offset += 0.03 * (x - self.offset);
    }

    /// Tracks a key's own level (no clamping: levels are not ratios): a running mean while
    /// warming up, then an EWMA over about ten windows.
    pub fn track(&mut self, x: f64, at: Millis) {
        let a = if self.windows < 10 {
            1.0 / (self.windows as f64 + 1.0)
        } else {
            0.1
        };
        self.offset += a * (x - self.offset);
        self.windows = self.windows.saturating_add(1);
        self.last_seen = at;
    }
}
