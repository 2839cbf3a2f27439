//! Detection rules as data: global settings, per-metric settings and overrides per location or
//! CDN pattern, resolved to one [`Tuning`] per (scope, metric); and `rules lint`, which checks a
//! rules file and names the line of every mistake.
//!
//! Resolution order, later wins: the global `[detect]` fields, then `[metrics.<metric>]`, then
//! each `[[overrides]]` entry whose patterns match, in file order.

use serde::{Deserialize, Serialize};
use toml::de::{DeTable, DeValue};

use super::DetectConfig;
use super::Metric;
use crate::glob::glob;
pub use crate::metric::Tuning;

/// Settings of one metric's test; unset fields keep the value from the level above.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricRule {
    /// `false` switches the test off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_relative_effect: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_relative_effect: Option<f64>,
}

/// Settings for the keys whose location and CDN match the patterns (`*`, `?`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Location pattern; unset matches every location, and CDN-wide incidents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// CDN pattern; unset matches every CDN, and location-wide incidents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdn: Option<String>,
    /// Metrics it applies to; unset means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<Metric>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_relative_effect: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_relative_effect: Option<f64>,
}

impl Override {
    fn settings(&self) -> MetricRule {
        MetricRule {
            enabled: self.enabled,
            min_samples: self.min_samples,
            min_relative_effect: self.min_relative_effect,
            critical_relative_effect: self.critical_relative_effect,
        }
    }

    /// Whether it applies to `metric` on a scope with this location and CDN (`None`: the
    /// scope spans all of them, which only an unset pattern matches).
    pub fn applies(&self, location: Option<&str>, cdn: Option<&str>, metric: Metric) -> bool {
        let matches = |pattern: &Option<String>, name: Option<&str>| match (pattern, name) {
            (None, _) => true,
            (Some(p), Some(n)) => glob(p, n),
            (Some(_), None) => false,
        };
        matches(&self.location, location)
            && matches(&self.cdn, cdn)
            && self.metrics.as_ref().is_none_or(|ms| ms.contains(&metric))
    }
}

impl Tuning {
    fn apply(&mut self, r: &MetricRule) {
        self.enabled = r.enabled.unwrap_or(self.enabled);
        self.min_samples = r.min_samples.unwrap_or(self.min_samples);
        self.min_relative_effect = r.min_relative_effect.unwrap_or(self.min_relative_effect);
        self.critical_relative_effect = r
            .critical_relative_effect
            .unwrap_or(self.critical_relative_effect);
    }
}

impl DetectConfig {
    /// The settings for `metric` on a scope (`None` = all locations or all CDNs).
    pub fn tuning(&self, location: Option<&str>, cdn: Option<&str>, metric: Metric) -> Tuning {
        let mut t = Tuning {
            enabled: metric.kind().enabled_by_default(),
            min_samples: self.min_samples,
            min_relative_effect: self.min_relative_effect,
            critical_relative_effect: self.critical_relative_effect,
        };
        if let Some(r) = self.metrics.get(&metric) {
            t.apply(r);
        }
        for o in &self.overrides {
            if o.applies(location, cdn, metric) {
                t.apply(&o.settings());
            }
        }
        t
    }

    /// Every value and cross-field mistake, as (field path, message); empty when valid.
    /// Paths are relative to the rules (`fdr`, `metrics.failure_rate.min_samples`,
    /// `overrides[2].cdn`).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut p = |path: String, msg: String| out.push((path, msg));
        if !(self.fdr > 0.0 && self.fdr < 1.0) {
            p("fdr".into(), format!("({}) must be in (0, 1)", self.fdr));
        }
        if self.fire_after == 0 {
            p("fire_after".into(), "(0) must be at least 1".into());
        }
        if self.resolve_after == 0 {
            p("resolve_after".into(), "(0) must be at least 1".into());
        }
        if self.group_min_locations < 2 {
            p(
                "group_min_locations".into(),
                format!("({}) must be at least 2", self.group_min_locations),
            );
        }
        if !(1..=16).contains(&self.run_windows) {
            p(
                "run_windows".into(),
                format!("({}) must be from 1 to 16", self.run_windows),
            );
        }
        let global = MetricRule {
            enabled: None,
            min_samples: Some(self.min_samples),
            min_relative_effect: Some(self.min_relative_effect),
            critical_relative_effect: Some(self.critical_relative_effect),
        };
        check_settings("", &global, &mut p);
        for (m, r) in &self.metrics {
            check_settings(&format!("metrics.{}.", m.as_str()), r, &mut p);
        }
        for (i, o) in self.overrides.iter().enumerate() {
            let at = format!("overrides[{i}].");
            if o.location.is_none() && o.cdn.is_none() {
                p(
                    format!("{at}location"),
                    "an override needs `location` or `cdn` (or both); settings for every key belong at the top or in [metrics.<metric>]".into(),
                );
            }
            for (name, pat) in [("location", &o.location), ("cdn", &o.cdn)] {
                if pat.as_deref().is_some_and(|s| s.trim().is_empty()) {
                    p(format!("{at}{name}"), "must not be empty".into());
                }
            }
            if o.metrics.as_ref().is_some_and(Vec::is_empty) {
                p(
                    format!("{at}metrics"),
                    "is empty, so the override applies to nothing; remove it to mean all metrics"
                        .into(),
                );
            }
            if o.settings() == MetricRule::default() {
                p(
                    format!("{at}location"),
                    "the override sets nothing (enabled, min_samples, min_relative_effect or critical_relative_effect)".into(),
                );
            }
            check_settings(&at, &o.settings(), &mut p);
        }
        // What the settings resolve to must be coherent wherever they combine.
        if out.is_empty() {
            for m in Metric::all() {
                let t = self.tuning(None, None, m);
                if t.critical_relative_effect < t.min_relative_effect {
                    out.push((
                        format!("metrics.{}.critical_relative_effect", m.as_str()),
                        format!(
                            "resolves to {} for {}, below its min_relative_effect {}",
                            t.critical_relative_effect,
                            m.as_str(),
                            t.min_relative_effect
                        ),
                    ));
                }
            }
        }
        out
    }
}

fn check_settings(at: &str, r: &MetricRule, p: &mut impl FnMut(String, String)) {
    if let Some(n) = r.min_samples
        && n < 2
    {
        p(
            format!("{at}min_samples"),
            format!("({n}) must be at least 2"),
        );
    }
    if let Some(x) = r.min_relative_effect
        && !(x >= 0.0 && x.is_finite())
    {
        p(
            format!("{at}min_relative_effect"),
            format!("({x}) must be a finite number >= 0"),
        );
    }
    if let Some(x) = r.critical_relative_effect {
        if !(x >= 0.0 && x.is_finite()) {
            p(
                format!("{at}critical_relative_effect"),
                format!("({x}) must be a finite number >= 0"),
            );
        } else if let Some(min) = r.min_relative_effect
            && x < min
        {
            p(
                format!("{at}critical_relative_effect"),
                format!("({x}) must be at least {at}min_relative_effect ({min})"),
            );
        }
    }
}

/// One mistake in a rules file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// 1-based line, 0 when the file as a whole is at fault.
    pub line: usize,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    /// `` `field`: message``, without the line (callers put `file:line: ` in front).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}`: {}", self.field, self.message)
        }
    }
}

const SETTINGS: [&str; 4] = [
    "enabled",
    "min_samples",
    "min_relative_effect",
    "critical_relative_effect",
];
const GLOBAL: [&str; 8] = [
    "fdr",
    "min_samples",
    "min_relative_effect",
    "critical_relative_effect",
    "fire_after",
    "resolve_after",
    "group_min_locations",
    "run_windows",
];

#[derive(Clone, Copy)]
enum Kind {
    Float,
    Count,
    Bool,
    Text,
    Metrics,
}

fn kind_of(key: &str) -> Option<Kind> {
    Some(match key {
        "fdr" | "min_relative_effect" | "critical_relative_effect" => Kind::Float,
        "min_samples" | "fire_after" | "resolve_after" | "group_min_locations" | "run_windows" => {
            Kind::Count
        }
        "enabled" => Kind::Bool,
        "location" | "cdn" => Kind::Text,
        "metrics" => Kind::Metrics,
        _ => return None,
    })
}

/// `rules lint FILE`: prints each problem of the rules file as `file:line: problem`, or
/// `file: ok`; an error if there is any.
pub fn lint_file(file: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read rules file {}", file.display()))?;
    let problems = lint(&text);
    for p in &problems {
        println!("{}:{}: {p}", file.display(), p.line);
    }
    if problems.is_empty() {
        println!("{}: ok", file.display());
        Ok(())
    } else {
        anyhow::bail!("{} problem(s) in {}", problems.len(), file.display())
    }
}

/// Checks a rules file: syntax, unknown or misspelt fields, types, values and cross-field
/// rules. Returns every problem found, each with its line; empty when the file is good.
pub fn lint(text: &str) -> Vec<Problem> {
    let mut l = Linter {
        text,
        out: Vec::new(),
    };
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for e in &errors {
            l.at_span(e.span(), e.message());
        }
        return l.out;
    }
    for (k, v) in doc.get_ref().iter() {
        match k.get_ref().as_ref() {
            "metrics" => l.metrics(v),
            "overrides" => l.overrides(v),
            k if GLOBAL.contains(&k) => l.check_value(k, k, v),
            k => {
                let hint = GLOBAL
                    .iter()
                    .find(|g| crate::field::edit_distance(g, k) <= 2)
                    .map(|g| format!(" (did you mean `{g}`?)"))
                    .unwrap_or_default();
                let msg = format!(
                    "unknown field{hint}; known: {}, metrics, overrides",
                    GLOBAL.join(", ")
                );
                l.bad(k_start(v, doc.get_ref(), k), k.to_string(), msg);
            }
        }
    }
    if l.out.is_empty() {
        // Structurally sound: the values themselves.
        l.values(doc.get_ref());
    }
    l.out.sort_by_key(|p| p.line);
    l.out
}

/// The problems found so far in one rules file.
struct Linter<'a> {
    text: &'a str,
    out: Vec<Problem>,
}

type Value<'a> = toml::Spanned<DeValue<'a>>;

impl Linter<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// A problem of the whole file at `span` (line 0 without one).
    fn at_span(&mut self, span: Option<std::ops::Range<usize>>, message: &str) {
        self.out.push(Problem {
            line: span.map_or(0, |s| self.line_of(s.start)),
            field: String::new(),
            message: message.to_string(),
        })
    }

    fn bad(&mut self, offset: usize, field: String, message: impl Into<String>) {
        self.out.push(Problem {
            line: self.line_of(offset),
            field,
            message: message.into(),
        })
    }

    /// `[metrics.<metric>]`: known metrics, known settings, their types.
    fn metrics(&mut self, v: &Value) {
        let Some(table) = v.get_ref().as_table() else {
            let msg = "must be a table: [metrics.<metric>]";
            return self.bad(v.span().start, "metrics".into(), msg);
        };
        for (mk, mv) in table.iter() {
            let name: &str = mk.get_ref();
            let path = format!("metrics.{name}");
            if Metric::named(name).is_none() {
                let msg = format!("unknown metric; known: {}", Metric::names());
                self.bad(mk.span().start, path, msg);
                continue;
            }
            let Some(settings) = mv.get_ref().as_table() else {
                self.bad(mv.span().start, path, "must be a table of settings");
                continue;
            };
            for (sk, sv) in settings.iter() {
                let s: &str = sk.get_ref();
                let path = format!("metrics.{name}.{s}");
                if SETTINGS.contains(&s) {
                    self.check_value(&path, s, sv);
                } else {
                    let msg = format!("unknown setting; a metric takes {}", SETTINGS.join(", "));
                    self.bad(sk.span().start, path, msg);
                }
            }
        }
    }

    /// `[[overrides]]`: tables of known settings and patterns, their types.
    fn overrides(&mut self, v: &Value) {
        let Some(items) = v.get_ref().as_array() else {
            let msg = "must be an array of tables: [[overrides]]";
            return self.bad(v.span().start, "overrides".into(), msg);
        };
        for (i, item) in items.iter().enumerate() {
            let Some(t) = item.get_ref().as_table() else {
                self.bad(
                    item.span().start,
                    format!("overrides[{i}]"),
                    "must be a table",
                );
                continue;
            };
            for (sk, sv) in t.iter() {
                let s: &str = sk.get_ref();
                let path = format!("overrides[{i}].{s}");
                if SETTINGS.contains(&s) || matches!(s, "location" | "cdn" | "metrics") {
                    self.check_value(&path, s, sv);
                } else {
                    let msg = format!(
                        "unknown setting; an override takes location, cdn, metrics, {}",
                        SETTINGS.join(", ")
                    );
                    self.bad(sk.span().start, path, msg);
                }
            }
        }
    }

    /// Whether the value of `key` (at `path`) has the type the field takes.
    fn check_value(&mut self, path: &str, key: &str, v: &Value) {
        let Some(kind) = kind_of(key) else { return };
        let ok = match (kind, v.get_ref()) {
            (Kind::Float, DeValue::Float(_) | DeValue::Integer(_)) => true,
            (Kind::Count, DeValue::Integer(i)) => !i.as_str().starts_with('-'),
            (Kind::Bool, DeValue::Boolean(_)) => true,
            (Kind::Text, DeValue::String(_)) => true,
            (Kind::Metrics, DeValue::Array(items)) => {
                for item in items.iter() {
                    let msg = match item.get_ref() {
                        DeValue::String(s) if Metric::named(s).is_some() => continue,
                        DeValue::String(s) => {
                            format!("unknown metric \"{s}\"; known: {}", Metric::names())
                        }
                        _ => "must be a metric name (a string)".into(),
                    };
                    self.bad(item.span().start, path.into(), msg);
                }
                true
            }
            _ => false,
        };
        if !ok {
            let want = match kind {
                Kind::Float => "a number",
                Kind::Count => "a whole number >= 0",
                Kind::Bool => "true or false",
                Kind::Text => "a string pattern",
                Kind::Metrics => "a list of metric names",
            };
            let msg = format!("must be {want}, found {}", v.get_ref().type_str());
            self.bad(v.span().start, path.into(), msg);
        }
    }

    /// The values and cross-field rules, once the file is structurally sound.
    fn values(&mut self, doc: &DeTable) {
        let rules: DetectConfig = match toml::from_str(self.text) {
            Ok(r) => r,
            Err(e) => return self.at_span(e.span(), e.message()),
        };
        for (field, message) in rules.problems() {
            let line = span_of(doc, &field).map_or(0, |o| self.line_of(o));
            self.out.push(Problem {
                line,
                field,
                message,
            });
        }
    }
}

fn k_start(v: &toml::Spanned<DeValue>, doc: &DeTable, key: &str) -> usize {
    doc.iter()
        .find(|(k, _)| {
            let s: &str = k.get_ref();
            s == key
        })
        .map_or(v.span().start, |(k, _)| k.span().start)
}

/// Byte offset of the value at `path` (`a.b`, `overrides[1].cdn`), or of the nearest
/// enclosing table that exists.
fn span_of(doc: &DeTable, path: &str) -> Option<usize> {
    let mut table = doc;
    let mut found = None;
    for part in path.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((_, v)) = table.iter().find(|(k, _)| {
            let s: &str = k.get_ref();
            s == name
        }) else {
            break;
        };
        let v = match index {
            Some(i) => match v.get_ref().as_array().and_then(|a| a.get(i)) {
                Some(item) => item,
                None => break,
            },
            None => v,
        };
        found = Some(v.span().start);
        match v.get_ref().as_table() {
            Some(t) => table = t,
            None => break,
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
fdr = 0.001
min_samples = 30

[metrics.startup_ms]
min_relative_effect = 0.5

[[overrides]]
location = "lab-*"
enabled = false

[[overrides]]
cdn = "cdn-b"
metrics = ["failure_rate"]
min_relative_effect = 1.0
critical_relative_effect = 3.0
"#;

    #[test]
    fn good_file_has_no_problems_and_resolves_in_order() {
        assert_eq!(lint(GOOD), vec![]);
        let r: DetectConfig = toml::from_str(GOOD).unwrap();
        let t = |l, c, m| r.tuning(l, c, m);
        let d = DetectConfig::default();
        assert_eq!(
            t(Some("x"), Some("cdn-a"), Metric::FAILURE_RATE).min_relative_effect,
            d.min_relative_effect
        );
        assert_eq!(
            t(Some("x"), Some("cdn-a"), Metric::STARTUP_MS).min_relative_effect,
            0.5
        );
        let b = t(Some("x"), Some("cdn-b"), Metric::FAILURE_RATE);
        assert_eq!(
            (b.min_relative_effect, b.critical_relative_effect),
            (1.0, 3.0)
        );
        assert_eq!(
            t(Some("x"), Some("cdn-b"), Metric::STARTUP_MS).min_relative_effect,
            0.5
        );
        assert!(!t(Some("lab-1"), Some("cdn-b"), Metric::FAILURE_RATE).enabled);
        // A location pattern does not reach a CDN-wide scope; an unset one does.
        assert!(t(None, Some("cdn-a"), Metric::FAILURE_RATE).enabled);
        assert_eq!(
            t(None, Some("cdn-b"), Metric::FAILURE_RATE).min_relative_effect,
            1.0
        );
    }

    #[test]
    fn every_mistake_is_reported_with_its_line() {
        // Structural mistakes first; once the structure is right, the values, also with lines.
        let cases: [(&str, &[(usize, &str)]); 2] = [
            (
                "fdr = 2.0\nfire_afterr = 3\n\n[metrics.bitrate]\nenabled = true\n\n[metrics.failure_rate]\nmin_samples = \"many\"\n\n[[overrides]]\nlocation = \"x\"\nmetrics = [\"failure\"]\ncolour = \"red\"\n",
                &[
                    (2, "fire_afterr"),
                    (4, "metrics.bitrate"),
                    (8, "metrics.failure_rate.min_samples"),
                    (12, "overrides[0].metrics"),
                    (13, "overrides[0].colour"),
                ],
            ),
            (
                "fdr = 2.0\n\n[[overrides]]\ncdn = \"c\"\nmin_relative_effect = 0.9\ncritical_relative_effect = 0.5\n\n[[overrides]]\nmetrics = [\"startup_ms\"]\nmin_samples = 1\n",
                &[
                    (1, "fdr"),
                    (6, "overrides[0].critical_relative_effect"),
                    (8, "overrides[1].location"),
                    (10, "overrides[1].min_samples"),
                ],
            ),
        ];
        for (text, want) in cases {
            let problems = lint(text);
            let got: Vec<(usize, &str)> = problems
                .iter()
                .map(|p| (p.line, p.field.as_str()))
                .collect();
            assert_eq!(got, want, "{problems:#?}");
        }
        let p = &lint(cases[0].0)[0];
        assert!(p.message.contains("did you mean `fire_after`"), "{p}");
    }

    #[test]
    fn syntax_errors_have_lines() {
        let p = lint("fdr = 0.001\nmin_samples = = 3\n");
        assert!(!p.is_empty());
        assert_eq!(p[0].line, 2, "{:?}", p);
    }

    #[test]
    fn shipped_rules_are_clean() {
        assert_eq!(lint(include_str!("../../alerts/rules.toml")), vec![]);
    }
}
