//! The pure core of the pipeline: as-of join, windows, detection and incidents, with no I/O.
//!
//! The daemon, the backtest and the benchmarks all drive this same type, so the backtest runs
//! exactly the daemon's detection.

use crate::config::Config;
use crate::decode::Report;
use crate::detect::{self, Finding};
use crate::incident::{Alert, Incidents, Scope, Verdict};
use crate::table::{BenchmarkTable, Expected};
use crate::time::Millis;
use crate::window::{Closed, Recorded, Windows};

/// Plain counters of what the engine did; the shell exports them as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub accepted: u64,
    pub late: u64,
    pub key_cap: u64,
    pub join_hits: u64,
    pub join_misses: u64,
    pub windows_closed: u64,
    pub tests: u64,
    pub discoveries: u64,
    pub alerts: u64,
}

/// How many closed windows of benchmark history to keep behind the watermark.
const TABLE_HISTORY_WINDOWS: i64 = 120;

pub struct Engine {
    cfg: Config,
    table: BenchmarkTable,
    windows: Windows,
    incidents: Incidents,
    counters: Counters,
    closes_since_prune: u32,
}

impl Engine {
    pub fn new(cfg: &Config) -> Self {
        Self::with_table(cfg, BenchmarkTable::new())
    }

    /// Starts from a benchmark table loaded elsewhere (the RocksDB cache).
    pub fn with_table(cfg: &Config, table: BenchmarkTable) -> Self {
        Self {
            windows: Windows::new(cfg.window_ms(), cfg.lateness_ms(), cfg.window.max_keys),
            cfg: cfg.clone(),
            table,
            incidents: Incidents::new(),
            counters: Counters::default(),
            closes_since_prune: 0,
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn table(&self) -> &BenchmarkTable {
        &self.table
    }

    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    pub fn firing(&self) -> usize {
        self.incidents.firing()
    }

    /// Applies a benchmark row (or a tombstone, `None`) valid from `ts`.
    pub fn on_benchmark(&mut self, location: &str, cdn: &str, ts: Millis, row: Option<Expected>) {
        self.table.upsert(location, cdn, ts, row);
    }

    /// Joins a report with the benchmark valid at its event time and folds it into its window.
    pub fn on_report(&mut self, r: &Report, source: Option<(i32, i64)>) -> Recorded {
        let expected = self.table.as_of(&r.location, &r.cdn, r.ts);
        let joined = expected.is_some();
        let out = self
            .windows
            .record(&r.location, &r.cdn, r.ts, source, |acc| {
                acc.add(r, expected)
            });
        match out {
            Recorded::Accepted => {
                self.counters.accepted += 1;
                if joined {
                    self.counters.join_hits += 1;
                } else {
                    self.counters.join_misses += 1;
                }
            }
            Recorded::Late => self.counters.late += 1,
            Recorded::KeyCapExceeded => self.counters.key_cap += 1,
        }
        out
    }

    pub fn watermark(&self) -> Option<Millis> {
        self.windows.watermark()
    }

    /// Closes every window the watermark has passed and returns the alerts they caused.
    pub fn close_ready(&mut self) -> Vec<Alert> {
        let closed = self.windows.close_ready();
        self.detect(closed)
    }

    /// Closes every window ending at or before `watermark` (used when input is idle, and to
    /// flush at the end of a backtest).
    pub fn close_until(&mut self, watermark: Millis) -> Vec<Alert> {
        let closed = self.windows.close_until(watermark);
        self.detect(closed)
    }

    /// Lowest source offset per partition still needed by an open window.
    pub fn pending_offsets(&self) -> std::collections::HashMap<i32, i64> {
        self.windows.pending_offsets()
    }

    fn detect(&mut self, closed: Vec<Closed>) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for w in closed {
            self.counters.windows_closed += 1;
            let mut keys: Vec<_> = w.keys.into_iter().collect();
            // HashMap order is random; detection output must not be.
            keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let mut findings: Vec<(Scope, Finding)> = Vec::new();
            for (key, acc) in &keys {
                for f in detect::evaluate(acc, &self.cfg.detect) {
                    findings.push((Scope::pair(&key.location, &key.cdn), f));
                }
            }
            let p: Vec<f64> = findings.iter().map(|(_, f)| f.p_value).collect();
            let discovered = detect::benjamini_hochberg(&p, self.cfg.detect.fdr);
            self.counters.tests += findings.len() as u64;
            let verdicts: Vec<Verdict> = findings
                .into_iter()
                .zip(discovered)
                .map(|((scope, finding), disc)| {
                    let bad = disc && finding.eligible;
                    self.counters.discoveries += u64::from(bad);
                    Verdict {
                        scope,
                        finding,
                        bad,
                    }
                })
                .collect();
            let out = self
                .incidents
                .apply(w.start, w.end, verdicts, &self.cfg.detect);
            self.counters.alerts += out.len() as u64;
            alerts.extend(out);
            self.closes_since_prune += 1;
            if self.closes_since_prune >= 10 {
                self.closes_since_prune = 0;
                self.table
                    .prune_before(w.end - TABLE_HISTORY_WINDOWS * self.windows.size());
            }
        }
        alerts
    }
}
