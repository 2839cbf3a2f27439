//! `[detect]` (or the rules file): the test's tuning, per metric and per location or CDN.
//! How it resolves for one key and how a rules file is checked are in [`super::rules`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Metric;
use super::rules::{MetricRule, Override, lint};
use crate::field::Invalid;

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
    /// Windows a small key's test may span: a metric short of samples in one window is tested
    /// on the key's last `run_windows` windows together (keys of fewer than 4 x
    /// `min_samples` reports); 1 tests each window alone.
    #[serde(default = "default_run_windows")]
    pub run_windows: usize,
    /// Per-metric settings, `[detect.metrics.<metric>]`: enabled, min_samples,
    /// min_relative_effect, critical_relative_effect.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<Metric, MetricRule>,
    /// Settings for locations or CDNs matching patterns, `[[detect.overrides]]`; later
    /// entries win.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
}

const fn default_run_windows() -> usize {
    4
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
            run_windows: default_run_windows(),
            metrics: BTreeMap::new(),
            overrides: Vec::new(),
        }
    }
}

impl DetectConfig {
    /// The first problem of [`DetectConfig::problems`]; field paths are relative to `[detect]`.
    pub fn validate(&self) -> Result<(), Invalid> {
        match self.problems().into_iter().next() {
            Some((path, message)) => Err(Invalid::new(path, message)),
            None => Ok(()),
        }
    }
}

/// Why a rules file cannot be used; it names the file, and the line and field of the first
/// mistake with how many more there are.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("rules file {path}:{line}: {first}{}", more_hint(*.more, path))]
    Problems {
        path: String,
        line: usize,
        first: String,
        more: usize,
    },
    #[error("rules file {path}: {message}")]
    Syntax { path: String, message: String },
}

fn more_hint(more: usize, path: &str) -> String {
    match more {
        0 => String::new(),
        n => format!(" ({n} more: `qos-sentinel rules lint {path}` lists them)"),
    }
}

/// Reads and checks a detection rules file.
pub fn load_rules(path: &Path) -> Result<DetectConfig, RulesError> {
    toml::Value::Table(load_rules_table(path)?)
        .try_into()
        .map_err(|e: toml::de::Error| RulesError::Syntax {
            path: path.display().to_string(),
            message: e.message().to_string(),
        })
}

/// [`load_rules`], as the checked TOML table (to merge under `[detect]`): read and parsed once.
pub fn load_rules_table(path: &Path) -> Result<toml::Table, RulesError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| RulesError::Read {
        path: shown.clone(),
        error,
    })?;
    let problems = lint(&text);
    if let Some(first) = problems.first() {
        return Err(RulesError::Problems {
            line: first.line,
            first: first.to_string(),
            more: problems.len() - 1,
            path: shown,
        });
    }
    text.parse()
        .map_err(|e: toml::de::Error| RulesError::Syntax {
            path: shown,
            message: e.message().to_string(),
        })
}
