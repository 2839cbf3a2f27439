//! Incidents: the state machine from window verdicts to alerts (docs/formats.md, Alerts).
//!
//! Per (rule, scope): fire after `fire_after` consecutive bad windows, resolve after
//! `resolve_after` consecutive windows that are clean or have no data. The incident id is a
//! hash of rule, scope and start time, so it is the same across firing, repeats and resolved,
//! across restarts, and across instances that replay the same input.

use std::collections::BTreeMap;

pub mod evidence;

use serde::{Deserialize, Serialize};

use crate::detect::DetectConfig;
use crate::detect::{Finding, Metric, Severity};
use crate::time::{Millis, format_ms};
use crate::window::cohort::Cohort;
use evidence::{Evidence, Impact, MAX_PENDING, Point};

/// What an incident is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdn: Option<String>,
    /// A CDN at the locations under a prefix: their first `/`-separated segment (`IN` for
    /// `IN/MH/Mumbai`), with `cdn` set and `location` not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

impl Scope {
    pub fn pair(location: &str, cdn: &str) -> Self {
        Scope {
            location: Some(location.into()),
            cdn: Some(cdn.into()),
            prefix: None,
        }
    }

    /// One CDN at every location.
    pub fn cdn_wide(cdn: &str) -> Self {
        Scope {
            location: None,
            cdn: Some(cdn.into()),
            prefix: None,
        }
    }

    /// One CDN at the locations under `prefix`.
    pub fn cdn_under(prefix: &str, cdn: &str) -> Self {
        Scope {
            prefix: Some(prefix.into()),
            ..Scope::cdn_wide(cdn)
        }
    }

    /// Every CDN at one location.
    pub fn location_wide(location: &str) -> Self {
        Scope {
            location: Some(location.into()),
            cdn: None,
            prefix: None,
        }
    }
}

/// The prefix of a location: its first `/`-separated segment, when it has more than one.
pub fn prefix_of(location: &str) -> Option<&str> {
    location
        .split_once('/')
        .map(|(r, _)| r)
        .filter(|r| !r.is_empty())
}

impl std::fmt::Display for Scope {
    /// The alert's Kafka key, e.g. `location=IN/MH/Mumbai,cdn=cdn-a`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.location, &self.cdn, &self.prefix) {
            (Some(l), Some(c), _) => write!(f, "location={l},cdn={c}"),
            (Some(l), None, _) => write!(f, "location={l}"),
            (None, Some(c), Some(r)) => write!(f, "prefix={r},cdn={c}"),
            (None, Some(c), None) => write!(f, "cdn={c}"),
            (None, None, _) => write!(f, "global"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Firing,
    Resolved,
}

/// One incident state change (docs/formats.md, Alerts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub status: Status,
    pub rule: String,
    pub severity: Severity,
    pub scope: Scope,
    pub metric: Metric,
    pub observed: f64,
    pub expected: Option<f64>,
    pub samples: u64,
    pub p_value: Option<f64>,
    #[serde(with = "crate::time")]
    pub window_start: Millis,
    #[serde(with = "crate::time")]
    pub window_end: Millis,
    #[serde(with = "crate::time")]
    pub started_at: Millis,
    #[serde(with = "crate::time::option")]
    pub resolved_at: Option<Millis>,
    pub summary: String,
    /// For a location+CDN incident under a firing CDN-wide or location-wide one: the parent's
    /// id. Receivers may hold such alerts back while the parent fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// Drill-down: the client cohort (ASN or device) carrying most of the deviation, when one
    /// does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<Cohort>,
    /// Viewers reached so far, over the incident's bad windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impact: Option<Impact>,
    /// The silences holding this change back from receivers when it was emitted (it still
    /// goes to the alerts topic).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silenced_by: Vec<String>,
}

/// Stable 64-bit FNV-1a: unlike std's hasher its output is fixed across Rust releases.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.as_bytes().iter().chain([0u8].iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

pub fn incident_id(rule: &str, scope: &Scope, started_at: Millis) -> String {
    format!(
        "{:016x}",
        fnv1a(&[rule, &scope.to_string(), &started_at.to_string()])
    )
}

/// One window's verdict on one (metric, scope).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub scope: Scope,
    pub finding: Finding,
    /// Significant after the multiple-test correction and past every floor.
    pub bad: bool,
    /// From the size of the deviation and the scope's `critical_relative_effect`.
    pub severity: Severity,
    /// On a key's bad verdict: the key's last windows tested on the metric before this one
    /// (its evidence's "before", should this start an incident).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before: Vec<Point>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Track {
    bad_streak: u32,
    /// Clean windows since the last bad one (windows without data do not reset it).
    clean_streak: u32,
    /// Windows since the last bad one, clean or without testable data.
    quiet_streak: u32,
    streak_start: Millis,
    firing: Option<Firing>,
    /// Windows since this scope last had a verdict: the firing's `last` finding is that old.
    #[serde(default)]
    unseen: u32,
    /// The windows of a bad run that has not fired yet (at most [`MAX_PENDING`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<Point>,
}

impl Track {
    /// A bad window on this track: fires after `fire_after` in a row, escalates when it
    /// worsens; the alert, if the window is news.
    fn bad(
        &mut self,
        mut v: Verdict,
        parent_id: Option<String>,
        (window_start, window_end): (Millis, Millis),
        fire_after: u32,
        evidence: &mut Vec<Evidence>,
    ) -> Option<Alert> {
        if self.bad_streak == 0 {
            self.streak_start = window_start;
            // The run's evidence begins with the windows before it.
            self.pending = std::mem::take(&mut v.before);
        }
        let point = Point::of(&v.finding, true, v.severity, (window_start, window_end));
        self.bad_streak += 1;
        self.clean_streak = 0;
        self.quiet_streak = 0;
        self.unseen = 0;
        let sev = v.severity;
        match &mut self.firing {
            None if self.bad_streak >= fire_after => {
                let rule = v.finding.rule();
                let id = incident_id(rule, &v.scope, self.streak_start);
                let mut impact = Impact::default();
                for p in self.pending.drain(..).chain([point]) {
                    // The windows before the run (a bad one there was another run's) do not count.
                    if p.bad && p.window_start >= self.streak_start {
                        impact.add(&p);
                    }
                    evidence.push(Evidence {
                        id: id.clone(),
                        point: p,
                    });
                }
                let f = Firing {
                    rule: rule.to_string(),
                    parent_id,
                    id,
                    started_at: self.streak_start,
                    severity: sev,
                    last: v.finding,
                    alerted: None,
                    impact,
                };
                let a = alert(Status::Firing, &v.scope, &f, window_start, window_end, None);
                self.firing = Some(Firing {
                    alerted: Some(Box::new(a.clone())),
                    ..f
                });
                Some(a)
            }
            Some(f) => {
                f.impact.add(&point);
                evidence.push(Evidence {
                    id: f.id.clone(),
                    point,
                });
                f.last = v.finding;
                // Escalation is news; a repeat at the same severity is not.
                (sev > f.severity).then(|| {
                    f.severity = sev;
                    let a = alert(Status::Firing, &v.scope, f, window_start, window_end, None);
                    f.alerted = Some(Box::new(a.clone()));
                    a
                })
            }
            None => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.remove(0);
                }
                self.pending.push(point);
                None
            }
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Firing {
    id: String,
    /// The rule that fired (a key may lose or gain its benchmark while it fires).
    rule: String,
    parent_id: Option<String>,
    started_at: Millis,
    severity: Severity,
    last: Finding,
    /// The incident's last firing alert (its firing or its escalation), for the reminders and
    /// refreshes a restarted instance or a partition's next owner sends. Absent in state
    /// written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alerted: Option<Box<Alert>>,
    /// Viewers reached so far (absent in state written before it was kept: from then on).
    #[serde(default)]
    impact: Impact,
}

/// All incidents, open and forming.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Incidents {
    tracks: BTreeMap<(Metric, Scope), Track>,
    /// What is normal for the aggregates tested directly (a CDN's keys merged), per scope
    /// name and metric: their learned offset from the benchmark. Kept here so that it goes
    /// wherever these incidents go (checkpoint, changelog share).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baselines: BTreeMap<(String, Metric), crate::metric::Baseline>,
    /// The windows tested on firing (or just fired) incidents since the last
    /// [`Incidents::take_evidence`]; the last apply's only, if nobody takes them.
    #[serde(skip)]
    evidence: Vec<Evidence>,
}

/// Where an incident is, in words: `cdn-a at IN/MH/Mumbai`, `cdn-a across IN/*`.
fn place(scope: &Scope) -> String {
    match (&scope.location, &scope.cdn, &scope.prefix) {
        (Some(l), Some(c), _) => format!("{c} at {l}"),
        (Some(l), None, _) => format!("all CDNs at {l}"),
        (None, Some(c), Some(r)) => format!("{c} across {r}/*"),
        (None, Some(c), None) => format!("{c} across locations"),
        (None, None, _) => "everywhere".into(),
    }
}

fn summary(status: Status, scope: &Scope, f: &Finding, since: Millis) -> String {
    let what = f.metric.kind().describe(f.observed, f.expected);
    let where_ = place(scope);
    match status {
        Status::Firing if !f.metric.kind().counts_samples() => {
            format!("{where_}: {what} since {}.", format_ms(since))
        }
        Status::Firing => {
            let cohort = f.cohort.as_ref().map_or(String::new(), |c| {
                format!(
                    "; {} carries {:.0}% of it with {:.0}% of the reports",
                    c.label(),
                    c.share * 100.0,
                    c.traffic_share * 100.0
                )
            });
            format!(
                "{where_}: {what} over {} reports since {}{cohort}.",
                f.samples,
                format_ms(since)
            )
        }
        Status::Resolved => format!("{where_}: back to normal ({what})."),
    }
}

/// A resolution without a verdict in its window: a CDN-wide or location-wide scope whose keys
/// are no longer bad together, or a key too thin to test for `windows` windows.
fn untested_resolution(scope: &Scope, last: &Finding, windows: u32) -> String {
    let what = last.metric.kind().describe(last.observed, last.expected);
    let where_ = place(scope);
    if scope.location.is_none() || scope.cdn.is_none() {
        format!(
            "{where_}: back to normal: too few of its keys are bad together any more \
             (for {windows} windows; last tested together: {what})."
        )
    } else if last.metric.kind().follows_sessions() {
        // A small key's silence is tested only while it lasts (and not for ever).
        format!(
            "{where_}: resolved: reports again, or silent too long to tell, for {windows} \
             windows (last tested: {what})."
        )
    } else {
        format!(
            "{where_}: resolved without evidence: too few reports to test for {windows} \
             windows (last tested: {what})."
        )
    }
}

impl Incidents {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one closed window's verdicts; returns the state changes, in a stable order.
    /// Tracks absent from `verdicts` had no (testable) data in this window. Verdicts on
    /// CDN-wide or location-wide scopes come first, so that a location+CDN incident firing in
    /// the same window already finds its parent.
    pub fn apply(
        &mut self,
        window_start: Millis,
        window_end: Millis,
        verdicts: Vec<Verdict>,
        cfg: &DetectConfig,
    ) -> Vec<Alert> {
        self.apply_under(window_start, window_end, verdicts, cfg, None)
    }

    /// Like [`Incidents::apply`]; a location+CDN incident that fires also looks for its
    /// parent in `outer` (where the CDN-wide incidents are kept apart from a partition's).
    pub fn apply_under(
        &mut self,
        window_start: Millis,
        window_end: Millis,
        verdicts: Vec<Verdict>,
        cfg: &DetectConfig,
        outer: Option<&Incidents>,
    ) -> Vec<Alert> {
        let mut seen = std::collections::BTreeSet::new();
        let mut alerts = Vec::new();
        let mut evidence = Vec::new();
        for v in verdicts {
            let k = (v.finding.metric, v.scope.clone());
            seen.insert(k.clone());
            if !v.bad && !self.tracks.contains_key(&k) {
                continue; // Clean and nothing pending: keep no state.
            }
            let parent_id = if v.bad && v.scope.location.is_some() && v.scope.cdn.is_some() {
                parent_of(&self.tracks, v.finding.metric, &v.scope).or_else(|| {
                    outer.and_then(|o| parent_of(&o.tracks, v.finding.metric, &v.scope))
                })
            } else {
                None
            };
            let t = self.tracks.entry(k).or_insert(Track {
                bad_streak: 0,
                clean_streak: 0,
                quiet_streak: 0,
                streak_start: window_start,
                firing: None,
                unseen: 0,
                pending: Vec::new(),
            });
            if v.bad {
                let window = (window_start, window_end);
                if let Some(a) = t.bad(v, parent_id, window, cfg.fire_after, &mut evidence) {
                    alerts.push(a);
                }
            } else {
                t.bad_streak = 0;
                t.clean_streak += 1;
                t.quiet_streak += 1;
                t.unseen = 0;
                if let Some(f) = &mut t.firing {
                    let window = (window_start, window_end);
                    evidence.push(Evidence {
                        id: f.id.clone(),
                        point: Point::of(&v.finding, false, v.severity, window),
                    });
                    f.last = v.finding.clone();
                }
            }
        }
        // Tracks with no testable data this window: no evidence either way. Too few samples
        // must not resolve an incident as fast as clean ones do, so such windows count a third.
        // A CDN-wide or location-wide scope without a verdict means its keys were not bad
        // together: that is evidence of clean.
        for (k, t) in self.tracks.iter_mut() {
            if !seen.contains(k) {
                t.unseen += 1;
                // A thin window between two bad ones does not break the run; a longer gap does.
                t.quiet_streak += 1;
                if t.quiet_streak > 2 {
                    t.bad_streak = 0;
                }
                if k.1.location.is_none() || k.1.cdn.is_none() {
                    t.clean_streak += 1;
                }
            }
        }
        alerts.extend(self.resolve(window_start, window_end, cfg.resolve_after));
        self.evidence = evidence;
        alerts
    }

    /// The windows tested on firing incidents by the last [`Incidents::apply`] (each is
    /// handed out once).
    pub fn take_evidence(&mut self) -> Vec<Evidence> {
        std::mem::take(&mut self.evidence)
    }

    /// Resolves the firing incidents clean (or quiet) long enough, and forgets the tracks
    /// that hold nothing any more; the resolved alerts.
    fn resolve(
        &mut self,
        window_start: Millis,
        window_end: Millis,
        resolve_after: u32,
    ) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let mut done = Vec::new();
        for ((metric, scope), t) in self.tracks.iter() {
            match &t.firing {
                Some(f)
                    if t.clean_streak >= resolve_after || t.quiet_streak >= 3 * resolve_after =>
                {
                    let resolved_at =
                        window_end - (t.quiet_streak as i64) * (window_end - window_start);
                    let mut a = alert(
                        Status::Resolved,
                        scope,
                        f,
                        window_start,
                        window_end,
                        Some(resolved_at),
                    );
                    a.summary = if t.unseen == 0 {
                        summary(Status::Resolved, scope, &f.last, f.started_at)
                    } else {
                        // The last finding is of its last bad (or tested) window, not of the
                        // one that resolved it: say so, never "back to normal" with bad numbers.
                        untested_resolution(scope, &f.last, t.unseen)
                    };
                    alerts.push(a);
                    done.push((*metric, scope.clone()));
                }
                None if t.bad_streak == 0 => done.push((*metric, scope.clone())),
                _ => {}
            }
        }
        for k in done {
            self.tracks.remove(&k);
        }
        alerts
    }

    /// Incidents currently firing.
    pub fn firing(&self) -> usize {
        self.tracks.values().filter(|t| t.firing.is_some()).count()
    }

    /// The last firing alert of each incident firing now: what its receivers were last told.
    pub fn firing_alerts(&self) -> Vec<Alert> {
        self.tracks
            .iter()
            .filter_map(|((_, scope), t)| {
                let f = t.firing.as_ref()?;
                Some(match &f.alerted {
                    Some(a) => (**a).clone(),
                    None => alert(Status::Firing, scope, f, f.started_at, f.started_at, None),
                })
            })
            .collect()
    }
}

fn alert(
    status: Status,
    scope: &Scope,
    f: &Firing,
    window_start: Millis,
    window_end: Millis,
    resolved_at: Option<Millis>,
) -> Alert {
    Alert {
        id: f.id.clone(),
        status,
        rule: f.rule.clone(),
        severity: f.severity,
        scope: scope.clone(),
        metric: f.last.metric,
        observed: f.last.observed,
        expected: Some(f.last.expected),
        samples: f.last.samples,
        p_value: Some(f.last.p_value),
        window_start,
        window_end,
        started_at: f.started_at,
        resolved_at,
        summary: with_impact(
            summary(status, scope, &f.last, f.started_at),
            status,
            &f.impact,
        ),
        parent_id: f.parent_id.clone(),
        cohort: f.last.cohort.clone(),
        impact: f.impact.any().then_some(f.impact),
        silenced_by: Vec::new(),
    }
}

/// A firing summary with the viewers reached so far: `...; 120 sessions, 340 min of playback
/// affected so far.`
fn with_impact(mut s: String, status: Status, impact: &Impact) -> String {
    if status == Status::Firing && impact.any() && s.ends_with('.') {
        s.pop();
        s.push_str(&format!("; {}.", impact.describe()));
    }
    s
}

/// Id of a firing CDN-wide or location-wide incident above a location+CDN scope, if any.
fn parent_of(
    tracks: &BTreeMap<(Metric, Scope), Track>,
    metric: Metric,
    scope: &Scope,
) -> Option<String> {
    let cdn = scope.cdn.as_deref().unwrap_or_default();
    let location = scope.location.as_deref().unwrap_or_default();
    let cdn_wide = Scope::cdn_wide(cdn);
    let in_region = prefix_of(location).map(|r| Scope::cdn_under(r, cdn));
    let loc_wide = Scope::location_wide(location);
    let candidates = std::iter::once(cdn_wide).chain(in_region).chain([loc_wide]);
    candidates.into_iter().find_map(|s| {
        tracks
            .get(&(metric, s))
            .and_then(|t| t.firing.as_ref())
            .map(|f| f.id.clone())
    })
}

/// The firing alerts among `alerts` (for tests that expect a given number of them).
#[cfg(test)]
pub(crate) fn firing(alerts: &[Alert]) -> Vec<&Alert> {
    alerts
        .iter()
        .filter(|a| a.status == Status::Firing)
        .collect()
}

#[cfg(test)]
mod tests;
