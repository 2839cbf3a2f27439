//! `qos-sentinel backtest`: the daemon's detection over recorded files, in event time
//! (docs/formats.md, `backtest`), and scoring against labelled incidents.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use crate::config::Config;
use crate::decode::{self, Benchmark, Report};
use crate::engine::{Counters, Engine};
use crate::incident::{Alert, Status};
use crate::sim::Labels;
use crate::table::Expected;
use crate::time::Millis;

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("cannot write {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("labels file {path}: {message}")]
    Labels { path: String, message: String },
}

/// What a backtest did.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub reports: u64,
    pub benchmarks: u64,
    pub bad_lines: u64,
    pub alerts: Vec<Alert>,
    pub counters: Counters,
}

impl Summary {
    pub fn line(&self) -> String {
        let firing = self
            .alerts
            .iter()
            .filter(|a| a.status == Status::Firing)
            .count();
        format!(
            "backtest: {} reports, {} benchmarks, {} bad lines, {} late, {} windows, {} alerts ({} firing, {} resolved)",
            self.reports,
            self.benchmarks,
            self.bad_lines,
            self.counters.late,
            self.counters.windows_closed,
            self.alerts.len(),
            firing,
            self.alerts.len() - firing
        )
    }
}

fn lines(path: &Path) -> Result<impl Iterator<Item = std::io::Result<String>>, BacktestError> {
    let f = std::fs::File::open(path).map_err(|error| BacktestError::Read {
        path: path.display().to_string(),
        error,
    })?;
    Ok(BufReader::new(f).lines())
}

fn read_all<T>(
    path: &Path,
    limit: usize,
    decode: impl Fn(&[u8], usize) -> Result<T, decode::DecodeError>,
    bad: &mut u64,
) -> Result<Vec<T>, BacktestError> {
    let mut out = Vec::new();
    for (i, line) in lines(path)?.enumerate() {
        let line = line.map_err(|error| BacktestError::Read {
            path: path.display().to_string(),
            error,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        match decode(line.as_bytes(), limit) {
            Ok(v) => out.push(v),
            Err(e) => {
                *bad += 1;
                if *bad <= 10 {
                    eprintln!("{}:{}: skipped: {e}", path.display(), i + 1);
                }
            }
        }
    }
    Ok(out)
}

/// Runs detection over already decoded input. Benchmarks are versioned by their own time, so
/// they are all loaded first; reports are replayed in event-time order, then every window is
/// closed.
pub fn run_events(cfg: &Config, benchmarks: &[Benchmark], reports: &mut [Report]) -> Summary {
    let mut engine = Engine::new(cfg);
    for b in benchmarks {
        engine.on_benchmark(&b.location, &b.cdn, b.ts, Some(Expected::from(b)));
    }
    reports.sort_by_key(|r| r.ts);
    let w = &cfg.window;
    let lo = reports.partition_point(|r| w.check_event_time(r.ts, None).is_err());
    let hi = lo + progress_end(&reports[lo..], w.max_clock_skew.as_millis() as Millis);
    // Why, for the first few: before the horizon, or ahead of the last report counted.
    let progress = hi
        .checked_sub(1)
        .filter(|i| *i >= lo)
        .map(|i| reports[i].ts);
    for r in reports[..lo].iter().chain(&reports[hi..]).take(10) {
        if let Err(why) = w.check_event_time(r.ts, progress) {
            eprintln!("skipped a report of {} / {}: {why}", r.location, r.cdn);
        }
    }
    let counted = &reports[lo..hi];
    let mut alerts = Vec::new();
    for r in counted {
        engine.on_report(r, None);
        alerts.extend(engine.close_ready());
    }
    if let Some(last) = counted.last() {
        // End of input: close everything, as the daemon does when input goes idle.
        alerts.extend(engine.close_until(last.ts + cfg.window_ms()));
    }
    Summary {
        reports: counted.len() as u64,
        benchmarks: benchmarks.len() as u64,
        bad_lines: (reports.len() - counted.len()) as u64,
        alerts,
        counters: engine.counters(),
    }
}

/// How many of the reports (sorted by event time) the recording's own progress reaches. A
/// recording has no wall clock to hold event times against; its reports are its clock. A
/// report more than `skew` after the one before it, with only a handful (under 10, or a
/// thousandth of the file) at or after it, ran ahead of every clock: it and those after it
/// are out of range, like a report that far ahead of the wall clock in the daemon.
fn progress_end(sorted: &[Report], skew: Millis) -> usize {
    let n = sorted.len();
    let support = (n / 1000).max(10);
    let mut end = n;
    for i in (1..n).rev() {
        if n - i >= support {
            break;
        }
        if sorted[i].ts.saturating_sub(sorted[i - 1].ts) > skew {
            end = i;
        }
    }
    end
}

/// Runs detection over an event stream in arrival order (the simulator's, which is ordered
/// within one report interval), without holding it in memory.
pub fn run_stream(cfg: &Config, events: impl Iterator<Item = crate::sim::Event>) -> Summary {
    let mut engine = Engine::new(cfg);
    let mut alerts = Vec::new();
    let (mut reports, mut benchmarks) = (0, 0);
    let mut last = None;
    for e in events {
        match e {
            crate::sim::Event::Benchmark(b) => {
                benchmarks += 1;
                engine.on_benchmark(&b.location, &b.cdn, b.ts, Some(Expected::from(&b)));
            }
            crate::sim::Event::Report(r) => {
                reports += 1;
                last = Some(last.map_or(r.ts, |l: i64| l.max(r.ts)));
                engine.on_report(&r, None);
                alerts.extend(engine.close_ready());
            }
        }
    }
    if let Some(last) = last {
        alerts.extend(engine.close_until(last + cfg.window_ms()));
    }
    Summary {
        reports,
        benchmarks,
        bad_lines: 0,
        alerts,
        counters: engine.counters(),
    }
}

/// The whole `backtest` command: read, detect, write alerts as JSON lines.
pub fn run(
    cfg: &Config,
    reports_path: &Path,
    benchmarks_path: &Path,
    out_path: &Path,
) -> Result<Summary, BacktestError> {
    let limit = cfg.limits.max_message_bytes;
    let mut bad = 0;
    let benchmarks = read_all(benchmarks_path, limit, decode::decode_benchmark, &mut bad)?;
    let mut reports = read_all(
        reports_path,
        limit,
        |b, l| decode::read_report(&cfg.input, b, l).map(Report::into_owned),
        &mut bad,
    )?;
    let mut summary = run_events(cfg, &benchmarks, &mut reports);
    summary.bad_lines += bad;
    write_alerts(out_path, &summary.alerts)?;
    Ok(summary)
}

pub fn write_alerts(path: &Path, alerts: &[Alert]) -> Result<(), BacktestError> {
    let werr = |error| BacktestError::Write {
        path: path.display().to_string(),
        error,
    };
    let f = std::fs::File::create(path).map_err(werr)?;
    let mut w = BufWriter::new(f);
    for a in alerts {
        let line = serde_json::to_string(a).map_err(|e| werr(std::io::Error::other(e)))?;
        writeln!(w, "{line}").map_err(werr)?;
    }
    w.flush().map_err(werr)
}

/// Detection quality against labelled incidents.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub incidents: usize,
    pub detected: usize,
    pub recall: f64,
    pub firing_alerts: usize,
    pub true_alerts: usize,
    pub precision: f64,
    /// Median of (first matching firing alert's window end - incident start), in windows.
    pub median_delay_windows: Option<f64>,
}

/// Matches firing alerts to labelled incidents: an alert is true when its scope is one the
/// incident should raise, its metric is one the incident moves, and it starts inside the
/// incident (plus one window of slack). An incident is detected when any of its alerts fired.
pub fn score(alerts: &[Alert], labels: &Labels) -> Score {
    let w = labels.window_ms;
    let firing: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.status == Status::Firing)
        .collect();
    let mut true_alerts = 0;
    let mut detected = 0;
    let mut delays = Vec::new();
    let matches = |a: &Alert, l: &crate::sim::LabelledIncident| {
        l.scopes.contains(&a.scope)
            && l.metrics.iter().any(|m| m == a.metric.as_str())
            && a.started_at >= l.injected.start - w
            && a.started_at < l.injected.end + w
    };
    for a in &firing {
        if labels.incidents.iter().any(|l| matches(a, l)) {
            true_alerts += 1;
        }
    }
    for l in &labels.incidents {
        let first = firing
            .iter()
            .filter(|a| matches(a, l))
            .map(|a| a.window_end)
            .min();
        if let Some(t) = first {
            detected += 1;
            delays.push((t - l.injected.start) as f64 / w as f64);
        }
    }
    delays.sort_by(f64::total_cmp);
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    Score {
        incidents: labels.incidents.len(),
        detected,
        recall: ratio(detected, labels.incidents.len()),
        firing_alerts: firing.len(),
        true_alerts,
        precision: ratio(true_alerts, firing.len()),
        median_delay_windows: (!delays.is_empty()).then(|| delays[delays.len() / 2]),
    }
}

pub fn read_labels(path: &Path) -> Result<Labels, BacktestError> {
    let text = std::fs::read_to_string(path).map_err(|error| BacktestError::Read {
        path: path.display().to_string(),
        error,
    })?;
    serde_json::from_str(&text).map_err(|e| BacktestError::Labels {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}
