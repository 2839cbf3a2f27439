//! The metric catalogue: every metric the daemon exports, in one place, with all label
//! combinations created at start so that series begin at zero.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::decode::DecodeError;
use crate::engine::{Counters, Quality};

/// The loops that retry until they succeed, as `qos_sentinel_retries_total` labels them.
pub const RETRY_LOOPS: [&str; 6] = [
    "checkpoint",
    "changelog",
    "outbox",
    "alerts_produce",
    "group_join",
    "changelog_read",
];

/// Where state records go, as the `store` label names them.
pub const STATE_STORES: [&str; 2] = ["checkpoint", "changelog"];

/// State records written and deleted, and their bytes, per store.
#[derive(Clone)]
pub struct StateWrites {
    pub records: IntCounterVec,
    pub deleted: IntCounterVec,
    pub bytes: IntCounterVec,
}

impl StateWrites {
    /// One write to `store`: records put, records deleted, bytes put.
    pub fn add(&self, store: &str, put: usize, deleted: usize, bytes: usize) {
        self.records.with_label_values(&[store]).inc_by(put as u64);
        self.deleted
            .with_label_values(&[store])
            .inc_by(deleted as u64);
        self.bytes.with_label_values(&[store]).inc_by(bytes as u64);
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub records_in: IntCounterVec,
    pub decode_failures: IntCounterVec,
    pub dead_letters: IntCounter,
    pub dead_letter_failures: IntCounter,
    pub partitions_started_empty: IntCounter,
    pub state_writes: StateWrites,
    pub orphaned_incidents: IntGauge,
    pub dead_letters_in_flight: IntGauge,
    pub join: IntCounterVec,
    pub dropped: IntCounterVec,
    pub windows_closed: IntCounter,
    pub tests: IntCounter,
    pub alerts: IntCounterVec,
    pub alerts_out: IntCounter,
    pub incidents_firing: IntGauge,
    pub ready: IntGauge,
    pub watermark: IntGauge,
    pub benchmark_versions: IntGauge,
    pub benchmark_keys: IntGauge,
    pub learned_entries: IntGauge,
    pub session_levels: IntGauge,
    pub keys_evicted: IntCounterVec,
    pub silences_active: IntGauge,
    pub silence_writes: IntCounterVec,
    pub open_keys: IntGauge,
    pub run_windows: IntGauge,
    pub detection_seconds: Histogram,
    pub alert_ack_seconds: Histogram,
    /// How long each turn of the engine's loop took (one event: a batch of reports, a tick,
    /// a summary): its stalls, checkpoints included.
    pub loop_turn_seconds: Histogram,
    pub incidents: IntCounterVec,
    pub config_reloads: IntCounterVec,
    /// Failed attempts of the loops that retry until they succeed, by loop.
    pub retries: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    pub rocksdb_bytes: IntGaugeVec,
    pub viewer_quality: GaugeVec,
    pub viewer_expected: GaugeVec,
    pub viewer_reports: GaugeVec,
    /// Per CDN and per country (a location's first part): observed and expected, bounded.
    pub cdn_quality: GaugeVec,
    pub cdn_expected: GaugeVec,
    pub country_quality: GaugeVec,
    pub country_expected: GaugeVec,
    pub quality_overall: GaugeVec,
    quality_window: std::sync::atomic::AtomicI64,
    last: std::sync::Mutex<Counters>,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("static metric definition");
    for v in values {
        c.with_label_values(&[*v]);
    }
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn vec_of<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: prometheus::Result<C>,
) -> C {
    let c = c.expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn group_gauge(r: &Registry, name: &str, help: &str, label: &str) -> GaugeVec {
    vec_of(r, GaugeVec::new(Opts::new(name, help), &[label, "metric"]))
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("static metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    /// Every metric the daemon exports, defined and registered. A table (one entry per
    /// metric, name and help side by side) reads better whole than split, so it stays one
    /// function however long the list grows.
    pub fn new() -> Self {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        {
            // process_cpu_seconds_total, process_resident_memory_bytes, open fds, ...
            let _ = r.register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ));
        }
        Metrics {
            records_in: counter_vec(
                &r,
                "qos_sentinel_records_in_total",
                "Messages read from Kafka, by input (`rekey`: by the rekey stage).",
                "input",
                &["reports", "benchmarks", "summaries", "rekey"],
            ),
            decode_failures: counter_vec(
                &r,
                "qos_sentinel_decode_failures_total",
                "Messages that could not be decoded, by reason; each goes to the dead-letter topic.",
                "reason",
                &DecodeError::REASONS,
            ),
            dead_letters: counter(
                &r,
                "qos_sentinel_dead_letters_total",
                "Messages written to the dead-letter topic.",
            ),
            dead_letter_failures: counter(
                &r,
                "qos_sentinel_dead_letter_failures_total",
                "Dead letters the broker did not take in time (logged; the input goes on).",
            ),
            partitions_started_empty: counter(
                &r,
                "qos_sentinel_partitions_started_empty_total",
                "Partitions taken over without their state (changelog unreadable after retries).",
            ),
            state_writes: StateWrites {
                records: counter_vec(
                    &r,
                    "qos_sentinel_state_records_written_total",
                    "State records written (only the changed ones), by store: the local checkpoint or the changelog topic.",
                    "store",
                    &STATE_STORES,
                ),
                deleted: counter_vec(
                    &r,
                    "qos_sentinel_state_records_deleted_total",
                    "State records deleted (keys gone; tombstones on the changelog), by store.",
                    "store",
                    &STATE_STORES,
                ),
                bytes: counter_vec(
                    &r,
                    "qos_sentinel_state_bytes_written_total",
                    "Bytes of state records written (keys and values), by store.",
                    "store",
                    &STATE_STORES,
                ),
            },
            orphaned_incidents: gauge(
                &r,
                "qos_sentinel_orphaned_incidents",
                "Incidents firing on the alerts topic watched for a lost partition's locations (at most 10,000).",
            ),
            dead_letters_in_flight: gauge(
                &r,
                "qos_sentinel_dead_letters_in_flight",
                "Dead letters sent and not yet acknowledged (at most 10,000 or 64 MiB).",
            ),
            join: counter_vec(
                &r,
                "qos_sentinel_join_total",
                "Reports joined with the benchmark valid at their event time, by result.",
                "result",
                &["hit", "miss"],
            ),
            dropped: counter_vec(
                &r,
                "qos_sentinel_dropped_records_total",
                "Reports not counted in any window, by reason.",
                "reason",
                &["late", "key_cap"],
            ),
            windows_closed: counter(
                &r,
                "qos_sentinel_windows_closed_total",
                "Event-time windows closed by the watermark.",
            ),
            tests: counter(
                &r,
                "qos_sentinel_detection_tests_total",
                "Statistical tests run on closed windows.",
            ),
            alerts: counter_vec(
                &r,
                "qos_sentinel_alerts_total",
                "Incident state changes raised, by status.",
                "status",
                &["firing", "resolved"],
            ),
            alerts_out: counter(
                &r,
                "qos_sentinel_alerts_produced_total",
                "Alerts acknowledged by the alerts topic.",
            ),
            incidents_firing: gauge(&r, "qos_sentinel_incidents_firing", "Incidents firing now."),
            ready: gauge(
                &r,
                "qos_sentinel_ready",
                "1 when /readyz is: benchmarks loaded, broker reachable, partitions owned or a standby in the group.",
            ),
            watermark: gauge(
                &r,
                "qos_sentinel_watermark_timestamp_seconds",
                "Event-time watermark, seconds since the epoch.",
            ),
            benchmark_versions: gauge(
                &r,
                "qos_sentinel_benchmark_versions",
                "Benchmark row versions held in the table.",
            ),
            benchmark_keys: gauge(
                &r,
                "qos_sentinel_benchmark_keys",
                "(location, cdn) keys in the benchmark table (at most window.max_benchmark_keys).",
            ),
            learned_entries: gauge(
                &r,
                "qos_sentinel_learned_entries",
                "Learned normals held, one per key and metric (keys at most window.max_learned_keys per partition).",
            ),
            session_levels: gauge(
                &r,
                "qos_sentinel_session_levels",
                "Live session histories held, one per session and metric that keeps one, to compare each report with its session's earlier ones (at most window.max_sessions per partition).",
            ),
            keys_evicted: counter_vec(
                &r,
                "qos_sentinel_keys_evicted_total",
                "Keys evicted, least recently seen first, to stay under a cap, by state.",
                "state",
                &["benchmarks", "learned", "sessions", "history", "silences"],
            ),
            silences_active: gauge(
                &r,
                "qos_sentinel_silences_active",
                "Silences holding incidents back from receivers now.",
            ),
            silence_writes: counter_vec(
                &r,
                "qos_sentinel_silence_writes_total",
                "Requests to create or expire silences, by outcome.",
                "outcome",
                &[
                    "created",
                    "expired",
                    "unauthorized",
                    "off",
                    "invalid",
                    "failed",
                ],
            ),
            open_keys: gauge(
                &r,
                "qos_sentinel_open_window_keys",
                "Keys held over all open windows.",
            ),
            run_windows: gauge(
                &r,
                "qos_sentinel_run_windows",
                "Earlier windows of small keys held so that their evidence adds up across windows (at most 3 per key).",
            ),
            detection_seconds: histogram(
                &r,
                "qos_sentinel_detection_duration_seconds",
                "Time to close ready windows and run detection on them, per close that closed any.",
                vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
            ),
            alert_ack_seconds: histogram(
                &r,
                "qos_sentinel_alert_ack_duration_seconds",
                "From the watermark closing a window to its alerts acknowledged by the alerts topic.",
                vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ],
            ),
            loop_turn_seconds: histogram(
                &r,
                "qos_sentinel_loop_turn_duration_seconds",
                "Time the engine's loop spent on one event (a batch of reports, a tick, a summary), checkpoints and alert produces included: how long it stalls.",
                vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            ),
            incidents: vec_of(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "qos_sentinel_incidents_total",
                        "Incident state changes, by rule, severity and status.",
                    ),
                    &["rule", "severity", "status"],
                ),
            ),
            config_reloads: counter_vec(
                &r,
                "qos_sentinel_config_reloads_total",
                "Rules reloads on SIGHUP, by result.",
                "result",
                &["ok", "error"],
            ),
            retries: counter_vec(
                &r,
                "qos_sentinel_retries_total",
                "Failed attempts of a loop that retries until it succeeds (checkpoint write, changelog write before its alerts, outbox write or read, alerts produce), by loop; HTTP deliveries count in qos_sentinel_deliveries_total{outcome=\"retried\"}.",
                "loop",
                &RETRY_LOOPS,
            ),
            consumer_lag: vec_of(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "qos_sentinel_consumer_lag_records",
                        "Reports not yet read, per assigned partition of the reports topic.",
                    ),
                    &["partition"],
                ),
            ),
            rocksdb_bytes: vec_of(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "qos_sentinel_rocksdb_size_bytes",
                        "Size of a RocksDB database (SST files plus memtables), by database.",
                    ),
                    &["db"],
                ),
            ),
            viewer_quality: vec_of(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "qos_sentinel_viewer_quality",
                        "Viewer quality in the last closed window for the worst location+CDN keys (at most 20), per metric: rebuffer_ratio and failure_rate as ratios, throughput_kbps, startup_ms (geometric means).",
                    ),
                    &["location", "cdn", "metric"],
                ),
            ),
            viewer_expected: vec_of(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "qos_sentinel_viewer_expected",
                        "What the benchmark expected for the keys in qos_sentinel_viewer_quality.",
                    ),
                    &["location", "cdn", "metric"],
                ),
            ),
            viewer_reports: vec_of(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "qos_sentinel_viewer_reports",
                        "Reports in the last closed window for the keys in qos_sentinel_viewer_quality.",
                    ),
                    &["location", "cdn"],
                ),
            ),
            cdn_quality: group_gauge(
                &r,
                "qos_sentinel_viewer_cdn_quality",
                "Viewer quality in the last closed window over each CDN's keys (at most 256 CDNs, the rest as \"other\"), per metric as in qos_sentinel_viewer_quality, and reports.",
                "cdn",
            ),
            cdn_expected: group_gauge(
                &r,
                "qos_sentinel_viewer_cdn_expected",
                "What the benchmarks expected over each CDN's keys in qos_sentinel_viewer_cdn_quality.",
                "cdn",
            ),
            country_quality: group_gauge(
                &r,
                "qos_sentinel_viewer_country_quality",
                "Viewer quality in the last closed window over each country's keys (a location's first /-separated part; at most 256, the rest as \"other\"), per metric, and reports.",
                "country",
            ),
            country_expected: group_gauge(
                &r,
                "qos_sentinel_viewer_country_expected",
                "What the benchmarks expected over each country's keys in qos_sentinel_viewer_country_quality.",
                "country",
            ),
            quality_overall: vec_of(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "qos_sentinel_viewer_quality_overall",
                        "Viewer quality over all keys in the last closed window: each viewer-quality metric (rebuffer_ratio, failure_rate, throughput_kbps, startup_ms), reports, keys.",
                    ),
                    &["metric"],
                ),
            ),
            quality_window: std::sync::atomic::AtomicI64::new(0),
            registry: r,
            last: std::sync::Mutex::new(Counters::default()),
        }
    }

    /// Exports what the engine counted since the previous call.
    pub fn sync_engine(&self, now: Counters) {
        let mut last = match self.last.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        let d = |a: u64, b: u64| a.saturating_sub(b);
        self.join
            .with_label_values(&["hit"])
            .inc_by(d(now.join_hits, last.join_hits));
        self.join
            .with_label_values(&["miss"])
            .inc_by(d(now.join_misses, last.join_misses));
        self.dropped
            .with_label_values(&["late"])
            .inc_by(d(now.late, last.late));
        self.dropped
            .with_label_values(&["key_cap"])
            .inc_by(d(now.key_cap, last.key_cap));
        self.windows_closed
            .inc_by(d(now.windows_closed, last.windows_closed));
        self.tests.inc_by(d(now.tests, last.tests));
        self.keys_evicted
            .with_label_values(&["benchmarks"])
            .inc_by(d(now.benchmark_evicted, last.benchmark_evicted));
        self.keys_evicted
            .with_label_values(&["learned"])
            .inc_by(d(now.learned_evicted, last.learned_evicted));
        self.keys_evicted
            .with_label_values(&["sessions"])
            .inc_by(d(now.sessions_evicted, last.sessions_evicted));
        *last = now;
    }

    /// Publishes the last closed window's quality: totals, and the worst keys only, so the
    /// label set stays bounded however many keys there are.
    pub fn set_quality(&self, q: &Quality) {
        use std::sync::atomic::Ordering;
        // Once per closed window (a scrape never sees the label set half rebuilt twice a second).
        if q.window_start == 0
            || self.quality_window.swap(q.window_start, Ordering::AcqRel) == q.window_start
        {
            return;
        }
        for (m, v) in &q.totals {
            self.quality_overall.with_label_values(&[m]).set(*v);
        }
        for (m, v) in [("reports", q.reports as f64), ("keys", q.keys as f64)] {
            self.quality_overall.with_label_values(&[m]).set(v);
        }
        self.viewer_quality.reset();
        self.viewer_expected.reset();
        self.viewer_reports.reset();
        let levels = [
            (&q.cdns, &self.cdn_quality, &self.cdn_expected),
            (&q.countries, &self.country_quality, &self.country_expected),
        ];
        for (groups, observed, expected) in levels {
            observed.reset();
            expected.reset();
            for g in groups {
                let name = g.name.as_str();
                observed
                    .with_label_values(&[name, "reports"])
                    .set(g.reports as f64);
                for (m, (obs, exp)) in &g.values {
                    if let Some(v) = obs {
                        observed.with_label_values(&[name, m]).set(*v);
                    }
                    if let Some(v) = exp {
                        expected.with_label_values(&[name, m]).set(*v);
                    }
                }
            }
        }
        for k in &q.worst {
            let (l, c) = (k.location.as_str(), k.cdn.as_str());
            self.viewer_reports
                .with_label_values(&[l, c])
                .set(k.reports as f64);
            for m in crate::metric::Metric::all() {
                let (obs, exp) = k.of(m);
                if let Some(v) = obs {
                    self.viewer_quality
                        .with_label_values(&[l, c, m.as_str()])
                        .set(v);
                }
                if let Some(v) = exp {
                    self.viewer_expected
                        .with_label_values(&[l, c, m.as_str()])
                        .set(v);
                }
            }
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        if enc.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
